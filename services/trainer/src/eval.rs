//! Evaluation with the next-item protocol of session-rec (Ludewig et al., UMUAI 2021): test events whose item the
//! training data does not know are dropped, then sessions with fewer than two events; for every position p of
//! every test session, the recommender gets the prefix up to p and the next item is looked up in its top k. The
//! model is evaluated through exactly what it serves (the [`Predictor`]: the node's ranking path with its
//! guardrails); the baselines through their scores, ties broken at random (seeded).

use std::time::Instant;

use aisle_domain::event::LoggedSession;
use aisle_domain::rng::SplitMix64;
use serde::Serialize;

use crate::baselines::{Baseline, Indexed};
use crate::metrics::{HitRate, rank_with_ties};
use crate::predict::Predictor;

/// Seed of the baselines' tie-breaking.
const TIE_SEED: u64 = 42;

/// One line of the evaluation table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodResult {
    /// The method.
    pub method: String,
    /// HR@k.
    pub hit_rate: f64,
    /// MRR@k.
    pub mrr: f64,
    /// Positions evaluated.
    pub predictions: usize,
    /// Time spent predicting, in seconds.
    pub seconds: f64,
}

/// Test sessions as the protocol evaluates them: item interactions with items known in training, sessions of at
/// least two such events.
pub fn protocol_sessions(test: &[LoggedSession], train: &Indexed) -> Vec<LoggedSession> {
    test.iter()
        .map(|s| LoggedSession {
            id: s.id.clone(),
            events: s
                .events
                .iter()
                .filter(|e| e.kind.is_item_interaction() && train.index.contains_key(&e.item))
                .cloned()
                .collect(),
        })
        .filter(|s| s.events.len() >= 2)
        .collect()
}

/// HR@`cut` and MRR@`cut` of the model behind `predictor` on protocol sessions.
pub fn evaluate_model(predictor: &Predictor, test: &[LoggedSession], cut: usize) -> HitRate {
    let mut m = HitRate::new(cut);
    for s in test {
        predictor.session(s, cut, |p| {
            let target = &s.events[p.position + 1].item;
            m.add(p.items.iter().position(|i| &i.0 == target).map(|r| r + 1));
        });
    }
    m
}

/// HR@`cut` and MRR@`cut` of a baseline on protocol sessions.
pub fn evaluate_baseline(
    baseline: &mut dyn Baseline,
    train: &Indexed,
    test: &[LoggedSession],
    cut: usize,
) -> HitRate {
    let mut m = HitRate::new(cut);
    let mut rng = SplitMix64::new(TIE_SEED);
    let mut scores = Vec::new();
    let mut items: Vec<u32> = Vec::new();
    for s in test {
        items.clear();
        items.extend(s.events.iter().map(|e| train.index[&e.item]));
        for p in 0..items.len() - 1 {
            baseline.scores(&items[..=p], &mut scores);
            m.add(rank_with_ties(&scores, items[p + 1], &mut rng));
        }
    }
    m
}

/// Evaluates the model and the baselines; the model first.
pub fn evaluate_all(
    model_name: &str,
    predictor: &Predictor,
    baselines: &mut [Box<dyn Baseline>],
    train: &Indexed,
    test: &[LoggedSession],
    cut: usize,
    progress: &mut dyn FnMut(&MethodResult),
) -> Vec<MethodResult> {
    let mut out = Vec::new();
    let started = Instant::now();
    let m = evaluate_model(predictor, test, cut);
    out.push(MethodResult {
        method: model_name.to_string(),
        hit_rate: m.hit_rate(),
        mrr: m.mrr(),
        predictions: m.count(),
        seconds: started.elapsed().as_secs_f64(),
    });
    progress(out.last().expect("pushed"));
    for b in baselines.iter_mut() {
        let started = Instant::now();
        let m = evaluate_baseline(b.as_mut(), train, test, cut);
        out.push(MethodResult {
            method: b.name().to_string(),
            hit_rate: m.hit_rate(),
            mrr: m.mrr(),
            predictions: m.count(),
            seconds: started.elapsed().as_secs_f64(),
        });
        progress(out.last().expect("pushed"));
    }
    out
}

/// The evaluation table as text.
pub fn table(results: &[MethodResult], cut: usize) -> String {
    let mut s = format!(
        "{:<28} {:>8} {:>8} {:>12} {:>9}\n",
        "method",
        format!("HR@{cut}"),
        format!("MRR@{cut}"),
        "predictions",
        "seconds"
    );
    for r in results {
        s.push_str(&format!(
            "{:<28} {:>8.4} {:>8.4} {:>12} {:>9.2}\n",
            r.method, r.hit_rate, r.mrr, r.predictions, r.seconds
        ));
    }
    s
}
