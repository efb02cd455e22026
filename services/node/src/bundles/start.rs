//! The bundles a node starts with: each kind's file ([`Kind::file`]: the configured one, else the data directory's),
//! parsed and validated once before any actor starts — a named bundle that is missing or invalid stops the start,
//! with the file and the reason. Rules and experiments fall back to the embedded defaults; with neither a catalog
//! nor a model the node builds the [`super::demo`] world and trains its model.

use std::sync::Arc;

use aisle_domain::bundle::BundleMeta;
use aisle_domain::catalog::Catalog;
use aisle_experiment::Experiments;
use aisle_policy::Rules;
use aisle_ranking::Model;
use anyhow::Context;

use super::Kind;
use super::signature::{self, TrustedKeys};
use crate::config::Config;

/// A bundle file as read: its bytes, where it came from, and its signature (`FILE.sig`) when it has one.
struct Read {
    bytes: Vec<u8>,
    source: String,
    signature: Option<Vec<u8>>,
}

/// A bundle's identity, its file and the file's signature.
pub type KeptFile = (BundleMeta, Arc<Vec<u8>>, Option<Arc<Vec<u8>>>);

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
    /// the bundle parsed from each and its signature: what the bundle feed sends to store edges.
    pub files: Vec<KeptFile>,
    /// The keys bundle files must be signed with (`trusted_keys`; None: not checked).
    pub trusted: Option<Arc<TrustedKeys>>,
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

/// A kind's file as the configuration names it, read with its signature; with `trusted` keys, refused unless one
/// of them signed it.
fn read_kind(
    kind: Kind,
    config: &Config,
    trusted: Option<&TrustedKeys>,
) -> anyhow::Result<Option<Read>> {
    let Some(path) = kind.file(config) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let signature = signature::read_for(&path)?;
    if let Some(trusted) = trusted {
        signature::refused(kind, trusted, &bytes, signature.as_deref())
            .with_context(|| format!("{} {}", kind.name(), path.display()))?;
    }
    Ok(Some(Read {
        bytes,
        source: path.display().to_string(),
        signature,
    }))
}

/// Loads the bundles the configuration names; with neither a catalog nor a model, builds the demo world and trains
/// its model.
///
/// # Errors
/// When a named bundle is missing or invalid (the message says which and why), or a catalog is given without a
/// model.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let trusted = config
        .trusted_keys
        .as_deref()
        .map(TrustedKeys::load)
        .transpose()?
        .map(Arc::new);
    let trusted_ref = trusted.as_deref();
    let mut files = Vec::new();
    let mut keep = |meta: &BundleMeta, bytes: Vec<u8>, signature: Option<Vec<u8>>| {
        files.push((meta.clone(), Arc::new(bytes), signature.map(Arc::new)));
    };
    // Rules and experiments fall back to the embedded defaults, built into the binary (trusted as it is).
    let read = read_kind(Kind::Rules, config, trusted_ref)?.unwrap_or_else(|| Read {
        bytes: embedded_rules_file(),
        source: EMBEDDED.into(),
        signature: None,
    });
    let rules = Rules::from_json(&read.bytes, &read.source)?;
    keep(&rules.meta, read.bytes, read.signature);
    let read = read_kind(Kind::Experiments, config, trusted_ref)?.unwrap_or_else(|| Read {
        bytes: embedded_experiments_file(),
        source: EMBEDDED.into(),
        signature: None,
    });
    let experiments = Experiments::from_json(&read.bytes, &read.source)?;
    keep(&experiments.meta, read.bytes, read.signature);
    let candidate = match read_kind(Kind::CandidateModel, config, trusted_ref)? {
        Some(read) => {
            let model = Model::from_bytes(&read.bytes)?;
            keep(&model.meta(&read.source), read.bytes, read.signature);
            Some((model, read.source))
        }
        None => None,
    };
    let (catalog, (model, source), model_file, catalog_file) =
        catalog_and_model(config, trusted_ref).await?;
    keep(&model.meta(&source), model_file.bytes, model_file.signature);
    // A catalog read from a file is sent to edges as that file, with its signature.
    if let (Some(catalog), Some(read)) = (&catalog, catalog_file) {
        keep(&catalog.meta, read.bytes, read.signature);
    }
    Ok(Prepared {
        catalog,
        model: (model, source),
        candidate,
        rules,
        experiments,
        files,
        trusted,
    })
}

/// The catalog and default model the configuration names, or the demo world's. The model's file comes third
/// (encoded here for the demo model), the catalog's fourth (when it was read from one).
async fn catalog_and_model(
    config: &Config,
    trusted: Option<&TrustedKeys>,
) -> anyhow::Result<(Option<Arc<Catalog>>, (Model, String), Read, Option<Read>)> {
    match read_kind(Kind::Model, config, trusted)? {
        Some(read) => {
            let model = Model::from_bytes(&read.bytes)?;
            let catalog_file = read_kind(Kind::Catalog, config, trusted)?;
            let catalog = match &catalog_file {
                Some(c) => Some(Arc::new(Catalog::from_json(&c.bytes, &c.source)?)),
                None => None,
            };
            let source = read.source.clone();
            Ok((catalog, (model, source), read, catalog_file))
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
            let model_file = Read {
                bytes: model.to_bytes(),
                source: String::new(),
                signature: None,
            };
            Ok((
                Some(catalog),
                (model, "embedded demo (trained at start-up)".to_string()),
                model_file,
                None,
            ))
        }
    }
}
