//! The demo world: a catalog and a history of shopping sessions generated deterministically, and a ranking model
//! trained on that history at start-up — what a node serves when it is given no bundles (`make run`).

use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::demo::DemoWorld;
use aisle_ranking::Model;
use aisle_ranking::fit::{FitConfig, fit};

/// Settings of the model trained at start-up on the demo history: small enough to train in about a second.
pub fn demo_fit_config() -> FitConfig {
    FitConfig {
        version: format!(
            "demo-{:x}-s{}",
            aisle_domain::demo::DEMO_SEED,
            aisle_ranking::features::FEATURE_SCHEMA_VERSION
        ),
        max_positions: 4_000,
        negatives: 10,
        max_iterations: 50,
        trained_by: concat!("aisle ", env!("CARGO_PKG_VERSION"), " (demo, at start-up)").into(),
        ..FitConfig::default()
    }
}

/// Writes the demo world's catalog and trained model to `dir` as `catalog.json` and `model.bin`.
///
/// # Errors
/// When training fails or the files cannot be written.
pub async fn export_demo(dir: &std::path::Path) -> anyhow::Result<()> {
    let anchor = aisle_domain::now_ms();
    let (catalog, model) = tokio::task::spawn_blocking(move || demo(anchor)).await??;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("catalog.json"),
        serde_json::to_vec(&catalog.to_file())?,
    )?;
    std::fs::write(dir.join("model.bin"), model.to_bytes())?;
    println!(
        "wrote {} and {}",
        dir.join("catalog.json").display(),
        dir.join("model.bin").display()
    );
    Ok(())
}

/// Builds the demo world and trains its model (CPU-heavy: call from a blocking thread).
///
/// # Errors
/// When training fails (it does not on the embedded demo data).
pub fn demo(anchor_ms: i64) -> Result<(Arc<Catalog>, Model), aisle_ranking::fit::FitError> {
    let world = DemoWorld::standard(anchor_ms);
    let catalog = Arc::new(world.load_catalog());
    let model = fit(
        &world.history,
        catalog.clone(),
        &demo_fit_config(),
        &mut |_| {},
    )?;
    Ok((catalog, model))
}
