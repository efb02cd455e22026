//! Training: build the candidate generators from shopping sessions and learn the ranker over their scores.
//!
//! The ranker learns from sessions it has not seen, split by time like serving will meet them: with T the last
//! event of the training data, the generators are built from the sessions that ended by T − `example_window_ms`
//! (popularity windows ending there), and every position of the sessions that ended after it becomes a ranking
//! problem — replay the prefix through the node's own `SessionContext`, retrieve candidates exactly as serving
//! does, label the item that really came next, sample negatives uniformly from the other candidates — solved by an
//! L2-regularised logistic regression (linfa) on standardised features. The served model then uses generators
//! rebuilt from all sessions (windows ending at T), with those learned weights. Features come from
//! [`crate::features`], so training sees what serving sees.

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
use crate::features::{FEATURE_NAMES, FEATURE_SCHEMA_VERSION, N_FEATURES};
use crate::model::{
    GeneratorParams, LogisticRanker, MODEL_FORMAT_VERSION, Model, ModelData, ModelHeader,
};
use crate::retrieve::{Query, retrieve};
use crate::served::ServedModel;

/// How to train. The defaults are the recipe measured on real click sessions (`docs/BENCHMARKS.md`).
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Generator settings.
    pub params: GeneratorParams,
    /// Version label of the model.
    pub version: String,
    /// Sessions that ended in this window before the end of the data make the ranker's examples (default 24 h).
    pub example_window_ms: i64,
    /// At most this many positions become examples (a uniform sample of them when there are more).
    pub max_positions: usize,
    /// Negatives sampled per position, uniformly without replacement from the other candidates.
    pub negatives: usize,
    /// L2 penalty of the logistic regression (linfa's `alpha`: Σ log-loss + alpha/2 ‖w‖², on standardised
    /// features; 100 is scikit-learn's C = 0.01).
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
            example_window_ms: 24 * 3600 * 1000,
            max_positions: 50_000,
            negatives: 50,
            l2: 100.0,
            max_iterations: 100,
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
    /// Positions processed so far / positions planned.
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
        default_consent: false,
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

/// The items of `sessions` in the order a model trained on them lists them (first appearance): build a catalog
/// with [`Catalog::plain`] over them to train and serve with the same item indices as a node given only the model.
pub fn vocabulary(sessions: &[LoggedSession]) -> Vec<String> {
    Vocabulary::of(sessions).ids
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

/// Rows of `(target, weight)`, each sorted strongest first (ties by target).
fn rows_to_csr(rows: Vec<HashMap<u32, f32>>) -> Csr {
    Csr::from_rows(rows.into_iter().map(|row| {
        let mut v: Vec<(u32, f32)> = row.into_iter().collect();
        v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }))
}

/// Builds the generator part of a model from sessions in time order (the ranker is left empty); popularity
/// windows end at `end_ms`.
fn build_generators(
    sessions: &[&LoggedSession],
    vocab: &Vocabulary,
    params: &GeneratorParams,
    end_ms: TimestampMs,
) -> ModelData {
    let n = vocab.ids.len();
    let mut counts = vec![0.0f32; n];
    let mut recent_counts = vec![0.0f32; n];
    let mut short_counts = vec![0.0f32; n];
    let mut ar: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    let mut sr: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    let mut session_rows: Vec<Vec<(u32, f32)>> = Vec::with_capacity(sessions.len());
    let mut item_sessions: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut seq: Vec<u32> = Vec::new();
    for (sid, s) in sessions.iter().enumerate() {
        seq.clear();
        for e in interactions(s) {
            if let Some(&i) = vocab.index.get(&e.item) {
                seq.push(i);
                counts[i as usize] += 1.0;
                if e.ts_ms > end_ms - params.recent_window_ms {
                    recent_counts[i as usize] += 1.0;
                }
                if e.ts_ms > end_ms - params.short_window_ms {
                    short_counts[i as usize] += 1.0;
                }
            }
        }
        for (j, &b) in seq.iter().enumerate() {
            // Association rules: every earlier event of the session, both ways (repeats included).
            for &a in &seq[..j] {
                *ar[a as usize].entry(b).or_default() += 1.0;
                *ar[b as usize].entry(a).or_default() += 1.0;
            }
            // Sequential rules: b follows a at distance d ≤ sr_steps, weighted 1/d.
            for d in 1..=params.sr_steps.min(j) {
                let a = seq[j - d];
                *sr[a as usize].entry(b).or_default() += 1.0 / d as f32;
            }
        }
        let mut distinct: Vec<u32> = Vec::with_capacity(seq.len());
        for &i in &seq {
            if !distinct.contains(&i) {
                distinct.push(i);
            }
        }
        for &i in &distinct {
            item_sessions[i as usize].push(sid as u32);
        }
        session_rows.push(distinct.into_iter().map(|i| (i, 1.0)).collect());
    }
    let item_sessions = Csr::from_rows(item_sessions.into_iter().map(|mut v| {
        v.reverse();
        v.truncate(params.sknn_sample);
        v.into_iter().map(|s| (s, 1.0)).collect::<Vec<_>>()
    }));
    ModelData {
        items: vocab.ids.clone(),
        counts,
        recent_counts,
        short_counts,
        ar: rows_to_csr(ar),
        sr: rows_to_csr(sr),
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

/// Builds a model whose generators come from all of `sessions` and whose ranker is empty (all weights 0) — for
/// tests and baselines.
pub fn generators_only(sessions: &[LoggedSession], config: &FitConfig) -> Model {
    let ordered = time_ordered(sessions);
    let vocab = Vocabulary::of(sessions);
    let end = ordered.last().map_or(0, |s| last_ts(s));
    Model {
        header: header(config, &ordered),
        data: build_generators(&ordered, &vocab, &config.params, end),
    }
}

/// Trains a model on `sessions`, whose items the `catalog` describes (categories, prices); items absent from the
/// catalog still feed the generators but give no catalog features.
///
/// # Errors
/// [`FitError::NotEnoughData`] when there are too few sessions or positive examples, or the example window holds
/// all or none of the sessions; [`FitError::Solver`] when the regression does not give finite weights.
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
    let end = last_ts(ordered.last().expect("not empty"));
    let cut = end - config.example_window_ms;
    let split = ordered.partition_point(|s| last_ts(s) <= cut);
    let (base, later) = ordered.split_at(split);
    if base.is_empty() || later.is_empty() {
        return Err(FitError::NotEnoughData(format!(
            "the example window ({} h before the last event) holds {} of the {} sessions; \
             the generators need earlier sessions and the ranker later ones: change the window",
            config.example_window_ms as f64 / 3_600_000.0,
            later.len(),
            ordered.len()
        )));
    }

    progress(Progress::Step(
        "building generators on the sessions before the example window",
    ));
    let base_model = Model {
        header: header(config, base),
        data: build_generators(base, &vocab, &config.params, cut),
    };
    let served = ServedModel::bind(&base_model, catalog.clone(), "training");

    progress(Progress::Step(
        "making ranking examples from the sessions in the example window",
    ));
    let examples = examples(&served, &catalog, later, config, progress)?;

    progress(Progress::Step("fitting the logistic regression (linfa)"));
    let ranker = train_logistic(&examples, config)?;

    progress(Progress::Step("building generators on all sessions"));
    let mut data = build_generators(&ordered, &vocab, &config.params, end);
    data.ranker = ranker;
    let mut header = header(config, &ordered);
    let m = &mut header.metrics;
    m.insert("fit.example_positions".into(), examples.positions as f64);
    m.insert("fit.example_rows".into(), examples.labels.len() as f64);
    m.insert(
        "fit.candidate_recall".into(),
        examples.decisions as f64 / examples.positions.max(1) as f64,
    );
    Ok(Model { header, data })
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

/// Ranking examples: feature rows (row-major) and labels.
struct Examples {
    rows: Vec<f32>,
    labels: Vec<bool>,
    /// Positions looked at.
    positions: usize,
    /// Of those, positions whose next item was among the candidates (each gave one positive).
    decisions: usize,
}

fn examples(
    served: &ServedModel,
    catalog: &Catalog,
    sessions: &[&LoggedSession],
    config: &FitConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Examples, FitError> {
    let total: usize = sessions
        .iter()
        .map(|s| interactions(s).count().saturating_sub(1))
        .sum();
    let keep_share = (config.max_positions as f64 / total.max(1) as f64).min(1.0);
    let planned = (total as f64 * keep_share).round() as usize;
    let mut rng = SplitMix64::new(config.seed);
    let limits = SessionLimits::default();
    let assist = AssistRules::default();
    let mut out = Examples {
        rows: Vec::new(),
        labels: Vec::new(),
        positions: 0,
        decisions: 0,
    };
    let mut others: Vec<usize> = Vec::new();
    for s in sessions {
        let mut context = SessionContext::new();
        let mut applied = 0usize;
        for (_, prefix, next) in positions(s) {
            for e in &prefix[applied..] {
                context.apply(&to_shopper_event(catalog, e), catalog, &limits, &assist);
            }
            applied = prefix.len();
            if keep_share < 1.0 && !rng.chance(keep_share) {
                continue;
            }
            out.positions += 1;
            if out.positions.is_multiple_of(2_000) {
                progress(Progress::Examples(out.positions, planned));
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
            out.decisions += 1;
            let (item, raw) = r.candidates[pos];
            out.rows
                .extend_from_slice(&served.features(&r.profile, item, &raw));
            out.labels.push(true);
            others.clear();
            others.extend((0..r.candidates.len()).filter(|&k| k != pos));
            let take = config.negatives.min(others.len());
            for k in 0..take {
                let j = k + rng.below((others.len() - k) as u64) as usize;
                others.swap(k, j);
                let (item, raw) = r.candidates[others[k]];
                out.rows
                    .extend_from_slice(&served.features(&r.profile, item, &raw));
                out.labels.push(false);
            }
        }
    }
    if out.decisions < 50 {
        return Err(FitError::NotEnoughData(format!(
            "only {} positions had the next item among the candidates",
            out.decisions
        )));
    }
    progress(Progress::Examples(out.positions, planned));
    Ok(out)
}

fn train_logistic(examples: &Examples, config: &FitConfig) -> Result<LogisticRanker, FitError> {
    let k = N_FEATURES;
    let rows = examples.labels.len();
    let x = &examples.rows;
    let mut mean = vec![0f64; k];
    for r in x.chunks_exact(k) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut scale = vec![0f64; k];
    for r in x.chunks_exact(k) {
        for j in 0..k {
            scale[j] += (r[j] as f64 - mean[j]).powi(2);
        }
    }
    scale.iter_mut().for_each(|s| {
        let var = *s / rows as f64;
        *s = if var > 1e-12 { var.sqrt() } else { 1.0 };
    });
    let z = Array2::from_shape_fn((rows, k), |(i, j)| {
        (x[i * k + j] as f64 - mean[j]) / scale[j]
    });
    let dataset = Dataset::new(z, Array1::from(examples.labels.clone()));
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
