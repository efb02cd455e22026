//! Training: build the candidate generators from shopping sessions and learn the ranker over their scores.
//!
//! The ranker learns from sessions it has not seen: generators are first built from the earlier sessions
//! (`1 − example_share` of them, in time order), and every position of the later sessions becomes a ranking
//! problem — retrieve candidates exactly as serving does, label the item that really came next, sample negatives
//! from the other candidates — solved by a logistic regression (linfa). The served model then uses generators
//! rebuilt from all sessions, with those learned weights. Session views are built by replaying events through the
//! same `SessionContext` the node uses, and features come from [`crate::features`], so training sees what serving
//! sees.

use std::collections::HashMap;
use std::sync::Arc;

use aisle_domain::TimestampMs;
use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventKind, ItemRef, LoggedEvent, LoggedSession, ShopperEvent};
use aisle_domain::rng::SplitMix64;
use aisle_session::{AssistRules, SessionContext, SessionLimits};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use sha2::{Digest, Sha256};

use crate::csr::Csr;
use crate::features::{FEATURE_NAMES, FEATURE_SCHEMA_VERSION, N_FEATURES, compute};
use crate::model::{
    GeneratorParams, LogisticRanker, MODEL_FORMAT_VERSION, Model, ModelData, ModelHeader,
};
use crate::retrieve::{Query, retrieve};
use crate::served::ServedModel;

/// How to train.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Generator settings.
    pub params: GeneratorParams,
    /// Version label of the model.
    pub version: String,
    /// Share of sessions (the latest) used to make ranker training examples.
    pub example_share: f64,
    /// At most this many positions become examples.
    pub max_positions: usize,
    /// Negatives sampled per position.
    pub negatives: usize,
    /// L2 regularisation of the logistic regression.
    pub l2: f64,
    /// Solver iterations.
    pub max_iterations: u64,
    /// Seed for sampling.
    pub seed: u64,
    /// Recorded in the model header.
    pub trained_by: String,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            params: GeneratorParams::default(),
            version: "model-1".into(),
            example_share: 0.2,
            max_positions: 40_000,
            negatives: 20,
            l2: 1e-4,
            max_iterations: 200,
            seed: 7,
            trained_by: concat!("aisle-ranking ", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Not enough data.
    #[error("not enough training data: {0}")]
    NotEnoughData(String),
    /// The solver failed.
    #[error("logistic regression failed: {0}")]
    Solver(String),
}

/// Progress of a long step, for the caller to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A step started.
    Step(&'static str),
    /// Examples built so far / positions planned.
    Examples(usize, usize),
}

/// The item-interaction events of a session that training and evaluation use (views, carts, purchases, scans).
pub fn interactions(session: &LoggedSession) -> impl Iterator<Item = &LoggedEvent> {
    session
        .events
        .iter()
        .filter(|e| e.kind.is_item_interaction())
}

/// Converts a logged event to the event the session actor would have received.
pub fn to_shopper_event(catalog: &Catalog, e: &LoggedEvent) -> ShopperEvent {
    ShopperEvent {
        kind: e.kind,
        item: Some(
            catalog
                .lookup(&e.item)
                .map_or(ItemRef::Unknown, ItemRef::Known),
        ),
        query: None,
        quantity: 1,
        price_cents: 0,
        store_id: None,
        aisle: None,
        ts_ms: e.ts_ms,
        received_at_us: 0,
        consent: None,
    }
}

/// The items of the training data, in order of first appearance, with their index.
#[derive(Debug, Default)]
struct Vocabulary {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocabulary {
    fn of(sessions: &[LoggedSession]) -> Self {
        let mut v = Vocabulary::default();
        for s in sessions {
            for e in interactions(s) {
                if !v.index.contains_key(&e.item) {
                    v.index.insert(e.item.clone(), v.ids.len() as u32);
                    v.ids.push(e.item.clone());
                }
            }
        }
        v
    }
}

fn last_ts(s: &LoggedSession) -> TimestampMs {
    s.events.iter().map(|e| e.ts_ms).max().unwrap_or(0)
}

/// Sessions sorted by their last event (stable), so "later index" means "more recent".
pub fn time_ordered(sessions: &[LoggedSession]) -> Vec<&LoggedSession> {
    let mut v: Vec<&LoggedSession> = sessions.iter().collect();
    v.sort_by_key(|s| last_ts(s));
    v
}

/// Keeps each row's strongest `keep` entries, strongest first, weights divided by the row's strongest.
fn prune(rows: Vec<HashMap<u32, f32>>, keep: usize) -> Csr {
    Csr::from_rows(rows.into_iter().map(|row| {
        let mut v: Vec<(u32, f32)> = row.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(keep);
        let max = v.first().map_or(1.0, |e| e.1);
        v.into_iter().map(|(t, w)| (t, w / max)).collect::<Vec<_>>()
    }))
}

/// Builds the generator part of a model from sessions (the ranker is left empty).
fn build_generators(
    sessions: &[&LoggedSession],
    vocab: &Vocabulary,
    params: &GeneratorParams,
) -> ModelData {
    let n = vocab.ids.len();
    let mut popularity = vec![0.0f32; n];
    let mut trending = vec![0.0f32; n];
    let end = sessions.iter().map(|s| last_ts(s)).max().unwrap_or(0);
    let mut ar: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    let mut sr: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    let mut session_rows: Vec<Vec<(u32, f32)>> = Vec::with_capacity(sessions.len());
    let mut item_sessions: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (sid, s) in sessions.iter().enumerate() {
        let seq: Vec<u32> = interactions(s)
            .filter_map(|e| vocab.index.get(&e.item).copied())
            .collect();
        for e in interactions(s) {
            if let Some(&i) = vocab.index.get(&e.item) {
                let w = e.kind.interest_weight();
                popularity[i as usize] += w;
                if e.ts_ms >= end - params.trending_window_ms {
                    trending[i as usize] += w;
                }
            }
        }
        let mut distinct: Vec<u32> = Vec::new();
        for &i in &seq {
            if !distinct.contains(&i) {
                distinct.push(i);
            }
        }
        // Association rules over distinct items (bounded so a very long session cannot dominate the cost).
        let bounded = &distinct[..distinct.len().min(30)];
        for &a in bounded {
            for &b in bounded {
                if a != b {
                    *ar[a as usize].entry(b).or_default() += 1.0;
                }
            }
        }
        // Sequential rules: b follows a within `sr_steps`, weighted 1/distance.
        for (i, &b) in seq.iter().enumerate() {
            for d in 1..=params.sr_steps.min(i) {
                let a = seq[i - d];
                if a != b {
                    *sr[a as usize].entry(b).or_default() += 1.0 / d as f32;
                }
            }
        }
        for &i in &distinct {
            item_sessions[i as usize].push(sid as u32);
        }
        session_rows.push(distinct.into_iter().map(|i| (i, 1.0)).collect());
    }
    let item_sessions = Csr::from_rows(item_sessions.into_iter().map(|mut v| {
        v.reverse();
        v.truncate(params.sessions_per_item);
        v.into_iter().map(|s| (s, 1.0)).collect::<Vec<_>>()
    }));
    ModelData {
        items: vocab.ids.clone(),
        popularity,
        trending,
        ar: prune(ar, params.neighbours_per_item),
        sr: prune(sr, params.neighbours_per_item),
        sessions: Csr::from_rows(session_rows),
        item_sessions,
        params: *params,
        ranker: LogisticRanker {
            feature_names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            mean: vec![0.0; N_FEATURES],
            scale: vec![1.0; N_FEATURES],
            weights: vec![0.0; N_FEATURES],
            intercept: 0.0,
        },
    }
}

fn header(config: &FitConfig, sessions: &[&LoggedSession]) -> ModelHeader {
    let mut hasher = Sha256::new();
    let mut events = 0usize;
    for s in sessions {
        for e in &s.events {
            hasher.update(s.id.as_bytes());
            hasher.update([0xFF]);
            hasher.update(e.item.as_bytes());
            hasher.update([0xFF, e.kind as u8]);
            hasher.update(e.ts_ms.to_le_bytes());
            events += 1;
        }
    }
    let fingerprint: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ModelHeader {
        kind: aisle_domain::bundle::BundleKind::Model,
        format_version: MODEL_FORMAT_VERSION,
        version: config.version.clone(),
        created_at_ms: aisle_domain::now_ms(),
        content_hash: String::new(),
        feature_schema_version: FEATURE_SCHEMA_VERSION,
        feature_names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        training_fingerprint: fingerprint,
        training_sessions: sessions.len(),
        training_events: events,
        metrics: Default::default(),
        trained_by: config.trained_by.clone(),
    }
}

/// Builds a model whose generators come from `sessions` and whose ranker has the given weights — the untrained
/// baseline, used to make training examples and by tests.
pub fn generators_only(sessions: &[LoggedSession], config: &FitConfig) -> Model {
    let ordered = time_ordered(sessions);
    let vocab = Vocabulary::of(sessions);
    Model {
        header: header(config, &ordered),
        data: build_generators(&ordered, &vocab, &config.params),
    }
}

/// Trains a model on `sessions`, whose items the `catalog` describes (categories, prices); items absent from the
/// catalog still feed the generators but give no catalog features.
///
/// # Errors
/// [`FitError::NotEnoughData`] when there are too few sessions or positive examples; [`FitError::Solver`] when the
/// regression does not converge to finite weights.
pub fn fit(
    sessions: &[LoggedSession],
    catalog: Arc<Catalog>,
    config: &FitConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Model, FitError> {
    let ordered = time_ordered(sessions);
    if ordered.len() < 20 {
        return Err(FitError::NotEnoughData(format!(
            "{} sessions",
            ordered.len()
        )));
    }
    let vocab = Vocabulary::of(sessions);
    let split = ((ordered.len() as f64) * (1.0 - config.example_share)).round() as usize;
    let (base, later) = ordered.split_at(split.clamp(1, ordered.len() - 1));

    progress(Progress::Step(
        "building generators on the earlier sessions",
    ));
    let base_model = Model {
        header: header(config, base),
        data: build_generators(base, &vocab, &config.params),
    };
    let served = ServedModel::bind(&base_model, catalog.clone(), "training");

    progress(Progress::Step(
        "making ranking examples from the later sessions",
    ));
    let (x, y) = examples(&served, &catalog, later, config, progress)?;

    progress(Progress::Step("fitting the logistic regression"));
    let ranker = train_logistic(&x, &y, config)?;

    progress(Progress::Step("building generators on all sessions"));
    let mut data = build_generators(&ordered, &vocab, &config.params);
    data.ranker = ranker;
    Ok(Model {
        header: header(config, &ordered),
        data,
    })
}

/// Every (prefix, next item) position of `sessions`, in order: the session index, the position, the prefix's
/// events and the next item's id.
pub fn positions(
    session: &LoggedSession,
) -> impl Iterator<Item = (usize, &[LoggedEvent], &LoggedEvent)> {
    let events: Vec<&LoggedEvent> = interactions(session).collect();
    let all = &session.events;
    // Index in `all` of every interaction, so the prefix keeps non-item events (searches, store visits) too.
    let idx: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.is_item_interaction())
        .map(|(i, _)| i)
        .collect();
    (0..events.len().saturating_sub(1)).map(move |p| (p, &all[..=idx[p]], &all[idx[p + 1]]))
}

fn examples(
    served: &ServedModel,
    catalog: &Catalog,
    sessions: &[&LoggedSession],
    config: &FitConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Array2<f64>, Array1<bool>), FitError> {
    let total: usize = sessions
        .iter()
        .map(|s| interactions(s).count().saturating_sub(1))
        .sum();
    let keep_share = (config.max_positions as f64 / total.max(1) as f64).min(1.0);
    let mut rng = SplitMix64::new(config.seed);
    let limits = SessionLimits::default();
    let assist = AssistRules::default();
    let mut rows: Vec<[f32; N_FEATURES]> = Vec::new();
    let mut labels: Vec<bool> = Vec::new();
    let mut used = 0usize;
    for s in sessions {
        let mut context = SessionContext::new();
        let mut applied = 0usize;
        for (_, prefix, next) in positions(s) {
            for e in &prefix[applied..] {
                context.apply(&to_shopper_event(catalog, e), catalog, &limits, &assist);
            }
            applied = prefix.len();
            if !rng.chance(keep_share) {
                continue;
            }
            let Some(target) = catalog.lookup(&next.item) else {
                continue;
            };
            let view = context.view(&limits);
            let r = retrieve(
                served,
                &Query {
                    view: &view,
                    context: &[],
                    candidates: None,
                },
            );
            let Some(pos) = r.candidates.iter().position(|c| c.0 == target) else {
                continue;
            };
            let (item, raw) = r.candidates[pos];
            rows.push(compute(served, &r.profile, item, &raw));
            labels.push(true);
            let others = r.candidates.len() - 1;
            for _ in 0..config.negatives.min(others) {
                let mut k = rng.below(others as u64) as usize;
                if k >= pos {
                    k += 1;
                }
                let (item, raw) = r.candidates[k];
                rows.push(compute(served, &r.profile, item, &raw));
                labels.push(false);
            }
            used += 1;
            if used.is_multiple_of(5_000) {
                progress(Progress::Examples(
                    used,
                    (total as f64 * keep_share) as usize,
                ));
            }
        }
    }
    if used < 50 {
        return Err(FitError::NotEnoughData(format!(
            "only {used} positions had the next item among the candidates"
        )));
    }
    progress(Progress::Examples(used, used));
    let mut x = Array2::<f64>::zeros((rows.len(), N_FEATURES));
    for (r, row) in rows.iter().enumerate() {
        for (k, v) in row.iter().enumerate() {
            x[[r, k]] = *v as f64;
        }
    }
    Ok((x, Array1::from(labels)))
}

fn train_logistic(
    x: &Array2<f64>,
    y: &Array1<bool>,
    config: &FitConfig,
) -> Result<LogisticRanker, FitError> {
    let k = x.ncols();
    let rows = x.nrows() as f64;
    let mean: Vec<f64> = (0..k).map(|j| x.column(j).sum() / rows).collect();
    let scale: Vec<f64> = (0..k)
        .map(|j| {
            let var = x
                .column(j)
                .iter()
                .map(|v| (v - mean[j]).powi(2))
                .sum::<f64>()
                / rows;
            if var > 1e-12 { var.sqrt() } else { 1.0 }
        })
        .collect();
    let mut z = x.clone();
    for j in 0..k {
        z.column_mut(j).mapv_inplace(|v| (v - mean[j]) / scale[j]);
    }
    let dataset = Dataset::new(z, y.clone());
    let fitted = LogisticRegression::default()
        .alpha(config.l2)
        .max_iterations(config.max_iterations)
        .fit(&dataset)
        .map_err(|e| FitError::Solver(e.to_string()))?;
    // linfa-logistic 0.8 calls the more frequent label "positive": flip to P(next item) when that is `false`.
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let weights: Vec<f32> = fitted.params().iter().map(|w| (sign * w) as f32).collect();
    let intercept = (sign * fitted.intercept()) as f32;
    if weights.iter().any(|w| !w.is_finite()) || !intercept.is_finite() {
        return Err(FitError::Solver("non-finite weights".into()));
    }
    Ok(LogisticRanker {
        feature_names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        mean: mean.iter().map(|m| *m as f32).collect(),
        scale: scale.iter().map(|s| *s as f32).collect(),
        weights,
        intercept,
    })
}

/// Replays a session's events into a fresh context (what the node's session actor would hold).
pub fn replay(catalog: &Catalog, events: &[LoggedEvent]) -> SessionContext {
    let limits = SessionLimits::default();
    let assist = AssistRules::default();
    let mut context = SessionContext::new();
    for e in events {
        context.apply(&to_shopper_event(catalog, e), catalog, &limits, &assist);
    }
    context
}

/// Whether an event kind is one the trainer reads from event logs.
pub fn is_training_event(kind: EventKind) -> bool {
    kind.is_item_interaction()
}
