//! The bundles a node starts with: each kind's file ([`Kind::file`]: the configured one, else the data directory's),
//! parsed and validated once before any actor starts — a named bundle that is missing or invalid stops the start,
//! with the file and the reason. Rules and experiments fall back to the embedded defaults; with neither a catalog
//! nor a model the node builds the [`super::demo`] world and trains its model.

use std::path::Path;
use std::sync::Arc;

use aisle_domain::bundle::BundleMeta;
use aisle_domain::catalog::Catalog;
use aisle_experiment::Experiments;
use aisle_policy::Rules;
use aisle_ranking::Model;
use anyhow::Context;

use super::Kind;
use crate::config::Config;

/// The bundles a node starts with, parsed and validated once.
#[derive(Debug)]
pub struct Prepared {
    /// The catalog (`None`: derived from the model's items).
    pub catalog: Option<Arc<Catalog>>,
    /// The default model and its source.
    pub model: (Model, String),
    /// The candidate model, if any.
    pub candidate: Option<(Model, String)>,
    /// Guardrail rules.
    pub rules: Rules,
    /// Experiments.
    pub experiments: Experiments,
    /// The files the bundles were read from (or their encoded form, for bundles built here), with the identity of
    /// the bundle parsed from each: what the bundle feed sends to store edges.
    pub files: Vec<(BundleMeta, Arc<Vec<u8>>)>,
}

/// The embedded default rules.
pub fn embedded_rules() -> Rules {
    Rules::from_json(&embedded_rules_file(), EMBEDDED).expect("the embedded rules are valid")
}

fn embedded_rules_file() -> Vec<u8> {
    serde_json::to_vec(&aisle_policy::rules::default_rules_file()).expect("serialises")
}

/// The embedded default experiments.
pub fn embedded_experiments() -> Experiments {
    Experiments::from_json(&embedded_experiments_file(), EMBEDDED)
        .expect("the embedded experiments are valid")
}

fn embedded_experiments_file() -> Vec<u8> {
    serde_json::to_vec(&aisle_experiment::default_experiments_file()).expect("serialises")
}

const EMBEDDED: &str = "embedded default";

/// A kind's file as the configuration names it, read: its bytes and where they came from.
fn read_kind(kind: Kind, config: &Config) -> anyhow::Result<Option<(Vec<u8>, String)>> {
    kind.file(config)
        .map(|p| Ok((read(&p)?, p.display().to_string())))
        .transpose()
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads the bundles the configuration names; with neither a catalog nor a model, builds the demo world and trains
/// its model.
///
/// # Errors
/// When a named bundle is missing or invalid (the message says which and why), or a catalog is given without a
/// model.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let mut files = Vec::new();
    let mut keep = |meta: &BundleMeta, bytes: Vec<u8>| files.push((meta.clone(), Arc::new(bytes)));
    let (rules_file, source) =
        read_kind(Kind::Rules, config)?.unwrap_or_else(|| (embedded_rules_file(), EMBEDDED.into()));
    let rules = Rules::from_json(&rules_file, &source)?;
    keep(&rules.meta, rules_file);
    let (experiments_file, source) = read_kind(Kind::Experiments, config)?
        .unwrap_or_else(|| (embedded_experiments_file(), EMBEDDED.into()));
    let experiments = Experiments::from_json(&experiments_file, &source)?;
    keep(&experiments.meta, experiments_file);
    let candidate = match read_kind(Kind::CandidateModel, config)? {
        Some((bytes, source)) => {
            let model = Model::from_bytes(&bytes)?;
            keep(&model.meta(&source), bytes);
            Some((model, source))
        }
        None => None,
    };
    let (catalog, (model, source), model_file) = catalog_and_model(config).await?;
    keep(&model.meta(&source), model_file);
    Ok(Prepared {
        catalog,
        model: (model, source),
        candidate,
        rules,
        experiments,
        files,
    })
}

/// The catalog and default model the configuration names, or the demo world's. The model's file comes third
/// (encoded here for the demo model).
async fn catalog_and_model(
    config: &Config,
) -> anyhow::Result<(Option<Arc<Catalog>>, (Model, String), Vec<u8>)> {
    match read_kind(Kind::Model, config)? {
        Some((model_file, source)) => {
            let model = Model::from_bytes(&model_file)?;
            let catalog = match read_kind(Kind::Catalog, config)? {
                Some((bytes, source)) => Some(Arc::new(Catalog::from_json(&bytes, &source)?)),
                None => None,
            };
            Ok((catalog, (model, source), model_file))
        }
        None => {
            if let Some(catalog) = Kind::Catalog.file(config) {
                anyhow::bail!(
                    "catalog {} was given without a model: train one with `aisle-train fit` and pass --model",
                    catalog.display()
                );
            }
            tracing::info!("no bundles given: building the demo world and training its model");
            let started = std::time::Instant::now();
            let anchor = aisle_domain::now_ms();
            let (catalog, model) =
                tokio::task::spawn_blocking(move || super::demo::demo(anchor)).await??;
            tracing::info!(items = catalog.len(), elapsed_ms = started.elapsed().as_millis() as u64,
                model = %model.header.version, "demo world ready");
            let model_file = model.to_bytes();
            Ok((
                Some(catalog),
                (model, "embedded demo (trained at start-up)".to_string()),
                model_file,
            ))
        }
    }
}
