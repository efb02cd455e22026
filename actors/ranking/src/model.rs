//! The model bundle: candidate-generator indexes built from shopping sessions and the learned ranker over their
//! scores, with everything needed to audit it (version, feature schema, training-data fingerprint, metrics).
//!
//! On disk a model is a [`BinaryEnvelope`]: a JSON header line ([`ModelHeader`]) and a postcard-encoded
//! [`ModelData`] payload whose SHA-256 the header declares. Items are referred to by their external ids, so a
//! model trained anywhere can be served against any catalog (see [`crate::served`]).

use std::collections::BTreeMap;

use aisle_domain::TimestampMs;
use aisle_domain::bundle::{BinaryEnvelope, BundleError, BundleKind, BundleMeta, sha256_hex};
use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::features::{FEATURE_NAMES, FEATURE_SCHEMA_VERSION};

/// The model bundle format this build reads and writes (2: session-rec generators with raw counts, three
/// popularity windows).
pub const MODEL_FORMAT_VERSION: u32 = 2;

const HOUR_MS: i64 = 3600 * 1000;

/// The most candidates a model may ask retrieval for ([`GeneratorParams::max_candidates`]): serving sizes buffers by
/// it for every decision, so an unbounded value in a bundle would be an unbounded allocation.
pub const MAX_MODEL_CANDIDATES: usize = 100_000;

/// Settings of the candidate generators, stored with the model so serving retrieves exactly as training did.
/// The defaults are session-rec's rsc15 settings and the candidate union of the ranking recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorParams {
    /// Sequential rules look back this many steps, weighting a pair at distance k by 1/k (session-rec `steps`).
    pub sr_steps: usize,
    /// V-SKNN neighbours kept (session-rec `k`).
    pub sknn_k: usize,
    /// V-SKNN compares the current session with at most this many past sessions sharing an item, the most recent
    /// (session-rec `sample_size`); also the sessions indexed per item, which loses nothing: the most recent of
    /// the union are among each item's most recent.
    pub sknn_sample: usize,
    /// Earlier distinct session items (before the last) that feed the session rules `sr2`/`ar2`.
    pub session_rule_items: usize,
    /// Candidates per decision: generated ones by priority, then filled with top sellers.
    pub max_candidates: usize,
    /// Top sellers taken per affine category when filling (before the overall top sellers).
    pub category_candidates: usize,
    /// Affine categories considered when filling.
    pub top_categories: usize,
    /// Window of "recent" popularity, before the end of the training data.
    pub recent_window_ms: i64,
    /// Window of "very recent" popularity, before the end of the training data.
    pub short_window_ms: i64,
}

impl Default for GeneratorParams {
    fn default() -> Self {
        Self {
            sr_steps: 10,
            sknn_k: 100,
            sknn_sample: 1_000,
            session_rule_items: 3,
            max_candidates: 500,
            category_candidates: 20,
            top_categories: 3,
            recent_window_ms: 24 * HOUR_MS,
            short_window_ms: 6 * HOUR_MS,
        }
    }
}

/// A logistic ranker over standardised features: `score = intercept + Σ weight_i (x_i − mean_i) / scale_i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticRanker {
    /// Feature names, in order (must equal the serving schema).
    pub feature_names: Vec<String>,
    /// Training means.
    pub mean: Vec<f32>,
    /// Training standard deviations (1 where a feature was constant).
    pub scale: Vec<f32>,
    /// Coefficients, for the positive class ("the next item").
    pub weights: Vec<f32>,
    /// Intercept.
    pub intercept: f32,
}

impl LogisticRanker {
    /// Weights and bias folded over the standardisation, so scoring is one dot product.
    pub fn folded(&self) -> (Vec<f32>, f32) {
        let w: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.scale)
            .map(|(w, s)| w / s)
            .collect();
        let b = self.intercept - w.iter().zip(&self.mean).map(|(w, m)| w * m).sum::<f32>();
        (w, b)
    }
}

/// The payload of a model bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelData {
    /// External item ids; model-local index = position.
    pub items: Vec<String>,
    /// Interaction events per item over all the training data.
    pub counts: Vec<f32>,
    /// Interaction events per item in the last `recent_window_ms` of the training data.
    pub recent_counts: Vec<f32>,
    /// Interaction events per item in the last `short_window_ms` of the training data.
    pub short_counts: Vec<f32>,
    /// Association rules (session-rec): for every pair of events of a session, +1 both ways (repeats included, so
    /// an item re-viewed in a session has a self-rule). Raw counts; each row strongest first.
    pub ar: Csr,
    /// Sequential rules (session-rec): +1/k from an item to the item k ≤ `sr_steps` events after it. Raw
    /// weights; each row strongest first.
    pub sr: Csr,
    /// Session → its distinct items, sessions in order of their last event (a higher id is more recent).
    pub sessions: Csr,
    /// Item → the sessions containing it, most recent first (at most `sknn_sample`).
    pub item_sessions: Csr,
    /// Generator settings.
    pub params: GeneratorParams,
    /// The learned ranker.
    pub ranker: LogisticRanker,
}

impl ModelData {
    /// Checks internal consistency.
    ///
    /// # Errors
    /// A description of the first inconsistency, naming the part.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.items.len();
        if self.counts.len() != n || self.recent_counts.len() != n || self.short_counts.len() != n {
            return Err("counts: length differs from items".into());
        }
        if [&self.counts, &self.recent_counts, &self.short_counts]
            .iter()
            .any(|c| c.iter().any(|v| !(v.is_finite() && *v >= 0.0)))
        {
            return Err("counts: negative or non-finite".into());
        }
        self.ar.validate(n).map_err(|e| format!("ar: {e}"))?;
        self.sr.validate(n).map_err(|e| format!("sr: {e}"))?;
        self.sessions
            .validate(n)
            .map_err(|e| format!("sessions: {e}"))?;
        self.item_sessions
            .validate(self.sessions.rows())
            .map_err(|e| format!("item_sessions: {e}"))?;
        // One row per item: binding to a catalog re-keys the rows by item.
        for (name, csr) in [
            ("ar", &self.ar),
            ("sr", &self.sr),
            ("item_sessions", &self.item_sessions),
        ] {
            if csr.rows() != n {
                return Err(format!("{name}: {} rows for {n} items", csr.rows()));
            }
        }
        let p = &self.params;
        if p.max_candidates == 0 || p.sknn_k == 0 || p.sknn_sample == 0 {
            return Err("params: max_candidates, sknn_k and sknn_sample must be positive".into());
        }
        if p.max_candidates > MAX_MODEL_CANDIDATES {
            return Err(format!(
                "params: max_candidates {} is above {MAX_MODEL_CANDIDATES}",
                p.max_candidates
            ));
        }
        let r = &self.ranker;
        let k = r.feature_names.len();
        if r.mean.len() != k || r.scale.len() != k || r.weights.len() != k {
            return Err("ranker: vectors differ in length from feature_names".into());
        }
        if r.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || r.weights.iter().any(|w| !w.is_finite())
            || r.mean.iter().any(|m| !m.is_finite())
            || !r.intercept.is_finite()
        {
            return Err("ranker: non-finite or non-positive values".into());
        }
        Ok(())
    }
}

/// The header of a model bundle file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// Always "model".
    pub kind: BundleKind,
    /// [`MODEL_FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// Model version label.
    pub version: String,
    /// When trained.
    pub created_at_ms: TimestampMs,
    /// SHA-256 of the payload.
    pub content_hash: String,
    /// Feature schema version the ranker was trained on.
    pub feature_schema_version: u32,
    /// Feature names the ranker was trained on.
    pub feature_names: Vec<String>,
    /// SHA-256 over the training sessions (ids, items, kinds, times).
    pub training_fingerprint: String,
    /// Training sessions and events.
    pub training_sessions: usize,
    /// Training events.
    pub training_events: usize,
    /// Metrics measured at training time (e.g. validation HR@20, MRR@20), by name.
    pub metrics: BTreeMap<String, f64>,
    /// What trained it (tool and version).
    pub trained_by: String,
}

/// A model read from a bundle, ready to bind to a catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The header.
    pub header: ModelHeader,
    /// The data.
    pub data: ModelData,
}

impl Model {
    /// Encodes the model as a bundle file (the header's hash is set from the payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = postcard::to_stdvec(&self.data).expect("model data serialises");
        let mut header = self.header.clone();
        header.content_hash = sha256_hex(&payload);
        BinaryEnvelope { header, payload }.to_bytes()
    }

    /// Decodes and validates a model bundle.
    ///
    /// # Errors
    /// Refuses, saying why: a file that is not a model bundle or is corrupt (hash mismatch), a format version or
    /// feature schema this build does not serve, or inconsistent data.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        let env = BinaryEnvelope::<ModelHeader>::from_bytes(BundleKind::Model, bytes)?;
        let header = env.header;
        if header.format_version != MODEL_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat {
                kind: BundleKind::Model,
                found: header.format_version,
                supported: MODEL_FORMAT_VERSION,
            });
        }
        let serving: Vec<String> = FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
        if header.feature_schema_version != FEATURE_SCHEMA_VERSION
            || header.feature_names != serving
        {
            return Err(BundleError::invalid(
                BundleKind::Model,
                format!(
                    "feature schema: the model was trained on schema {} {:?}, this build serves schema {} {:?}",
                    header.feature_schema_version,
                    header.feature_names,
                    FEATURE_SCHEMA_VERSION,
                    serving
                ),
            ));
        }
        let data: ModelData = postcard::from_bytes(&env.payload)
            .map_err(|e| BundleError::invalid(BundleKind::Model, format!("payload: {e}")))?;
        if data.ranker.feature_names != header.feature_names {
            return Err(BundleError::invalid(
                BundleKind::Model,
                "ranker.feature_names: differ from the header's",
            ));
        }
        data.validate()
            .map_err(|e| BundleError::invalid(BundleKind::Model, e))?;
        Ok(Self { header, data })
    }

    /// The bundle identity for status reports.
    pub fn meta(&self, source: &str) -> BundleMeta {
        BundleMeta {
            kind: BundleKind::Model,
            format_version: self.header.format_version,
            version: self.header.version.clone(),
            created_at_ms: self.header.created_at_ms,
            content_hash: self.header.content_hash.clone(),
            source: source.to_string(),
            loaded_at_ms: aisle_domain::now_ms(),
        }
    }
}
