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

/// The model bundle format this build reads and writes.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// Settings of the candidate generators, stored with the model so serving retrieves exactly as training did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorParams {
    /// Item-to-item neighbours kept per item (association and sequential rules).
    pub neighbours_per_item: usize,
    /// Sequential rules look back this many steps.
    pub sr_steps: usize,
    /// Sessions indexed per item for session-kNN (the most recent).
    pub sessions_per_item: usize,
    /// Session-kNN considers at most this many candidate sessions (the most recent).
    pub sknn_sample: usize,
    /// Session-kNN neighbours.
    pub sknn_k: usize,
    /// Candidates taken from each rule generator.
    pub rule_candidates: usize,
    /// Candidates taken from session-kNN.
    pub sknn_candidates: usize,
    /// Earlier session items (before the last) that seed rule candidates.
    pub session_sources: usize,
    /// Top sellers taken per affine category.
    pub category_candidates: usize,
    /// Affine categories considered.
    pub top_categories: usize,
    /// Popular and trending items added to every candidate set.
    pub popular_candidates: usize,
    /// Window for "trending", before the end of the training data.
    pub trending_window_ms: i64,
}

impl Default for GeneratorParams {
    fn default() -> Self {
        Self {
            neighbours_per_item: 50,
            sr_steps: 10,
            sessions_per_item: 1_000,
            sknn_sample: 500,
            sknn_k: 100,
            rule_candidates: 50,
            sknn_candidates: 150,
            session_sources: 4,
            category_candidates: 20,
            top_categories: 3,
            popular_candidates: 20,
            trending_window_ms: 2 * 24 * 3600 * 1000,
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
    /// Interest-weighted interaction counts per item.
    pub popularity: Vec<f32>,
    /// Interaction counts in the trending window.
    pub trending: Vec<f32>,
    /// Association rules: items seen in the same session, weight normalised to the row's strongest.
    pub ar: Csr,
    /// Sequential rules: items that follow an item within `sr_steps`, weighted by 1/distance, normalised.
    pub sr: Csr,
    /// Session → its distinct items, sessions in time order (a higher id is a more recent session).
    pub sessions: Csr,
    /// Item → the sessions containing it, most recent first.
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
        if self.popularity.len() != n || self.trending.len() != n {
            return Err("popularity/trending: length differs from items".into());
        }
        self.ar.validate(n).map_err(|e| format!("ar: {e}"))?;
        self.sr.validate(n).map_err(|e| format!("sr: {e}"))?;
        self.sessions
            .validate(n)
            .map_err(|e| format!("sessions: {e}"))?;
        self.item_sessions
            .validate(self.sessions.rows())
            .map_err(|e| format!("item_sessions: {e}"))?;
        let r = &self.ranker;
        let k = r.feature_names.len();
        if r.mean.len() != k || r.scale.len() != k || r.weights.len() != k {
            return Err("ranker: vectors differ in length from feature_names".into());
        }
        if r.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || r.weights.iter().any(|w| !w.is_finite())
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
