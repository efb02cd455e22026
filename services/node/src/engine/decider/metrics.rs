//! The decision metrics, registered once: a decision then only increments handles, without building and hashing
//! label sets. Every label value comes from a closed set or from a loaded bundle's versions and keys, never from a
//! request or an error's text, so the number of series stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aisle_domain::request::Surface;
use aisle_policy::{Exclusion, ExclusionCounts};
use metrics::{Counter, Histogram};

use crate::engine::decision::{Decision, Reason, Stage, Tier};

/// The handles of the per-decision metrics, registered once: a decision then only increments, without building
/// and hashing label sets. Every label value comes from a closed set or from a loaded bundle's versions and keys,
/// never from a request or an error's text, so the number of series stays bounded.
pub(super) struct DecisionMetrics {
    /// Latency and count per surface × tier (`Surface::ALL` order, then tier).
    outcomes: Vec<(Histogram, Counter)>,
    /// Fallbacks per stage × reason (`Stage::ALL` order, then `Reason::ALL`).
    fallbacks: Vec<Counter>,
    /// Exclusions per code (`Exclusion::ALL` order).
    exclusions: Vec<Counter>,
    holdout: Counter,
    /// Decisions a kill switch sent to RULES, and to GENERIC.
    kill_switched: [Counter; 2],
    /// FRESH decisions per model version (a handful of versions over a node's life).
    models: RwLock<HashMap<String, Counter>>,
    /// Exposures per experiment and variant.
    exposures: RwLock<HashMap<Exposure, Counter>>,
}

/// An experiment's key and a variant's name.
type Exposure = (Arc<str>, Arc<str>);

const TIERS: [Tier; 4] = [Tier::Fresh, Tier::Cached, Tier::Rules, Tier::Generic];

fn index_of<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter()
        .position(|v| v == value)
        .expect("closed sets hold every value")
}

impl DecisionMetrics {
    /// Registers the handles (after the recorder is installed).
    pub(super) fn new() -> Self {
        let outcomes = Surface::ALL
            .iter()
            .flat_map(|s| TIERS.iter().map(move |t| (s.as_str(), t.as_str())))
            .map(|(surface, tier)| {
                (
                    metrics::histogram!("aisle_decide_latency_seconds", "surface" => surface, "tier" => tier),
                    metrics::counter!("aisle_decisions_total", "surface" => surface, "tier" => tier),
                )
            })
            .collect();
        let fallbacks = Stage::ALL
            .iter()
            .flat_map(|s| Reason::ALL.iter().map(move |r| (s.as_str(), r.as_str())))
            .map(|(stage, reason)| {
                metrics::counter!("aisle_fallbacks_total", "stage" => stage, "reason" => reason)
            })
            .collect();
        let exclusions = Exclusion::ALL
            .iter()
            .map(|e| metrics::counter!("aisle_policy_exclusions_total", "reason" => e.code()))
            .collect();
        Self {
            outcomes,
            fallbacks,
            exclusions,
            holdout: metrics::counter!("aisle_holdout_decisions_total"),
            kill_switched: [Tier::Rules, Tier::Generic].map(
                |t| metrics::counter!("aisle_kill_switch_decisions_total", "tier" => t.as_str()),
            ),
            models: RwLock::default(),
            exposures: RwLock::default(),
        }
    }

    pub(super) fn record(&self, surface: Surface, d: &Decision, exclusions: &ExclusionCounts) {
        let outcome = index_of(Surface::ALL, &surface) * TIERS.len() + index_of(&TIERS, &d.tier);
        let (latency, count) = &self.outcomes[outcome];
        latency.record(d.latency.as_secs_f64());
        count.increment(1);
        match (d.tier, &d.fallback) {
            (Tier::Fresh, _) => self.model(&d.model_version).increment(1),
            (_, Some(f)) => {
                let at = index_of(Stage::ALL, &f.stage) * Reason::ALL.len()
                    + index_of(Reason::ALL, &f.reason);
                self.fallbacks[at].increment(1);
                if f.reason == Reason::KillSwitch {
                    self.kill_switched[usize::from(d.tier == Tier::Generic)].increment(1);
                }
            }
            (_, None) => {}
        }
        for (e, n) in exclusions.iter() {
            self.exclusions[index_of(&Exclusion::ALL, &e)].increment(u64::from(n));
        }
        for (key, variant) in &d.assignment.variants {
            self.exposure(key, variant).increment(1);
        }
        if d.assignment.in_holdout {
            self.holdout.increment(1);
        }
    }

    fn model(&self, version: &str) -> Counter {
        if let Some(c) = self.models.read().expect("metrics lock").get(version) {
            return c.clone();
        }
        let c = metrics::counter!("aisle_model_decisions_total", "model" => version.to_string());
        self.models
            .write()
            .expect("metrics lock")
            .insert(version.to_string(), c.clone());
        c
    }

    fn exposure(&self, experiment: &Arc<str>, variant: &Arc<str>) -> Counter {
        let key = (experiment.clone(), variant.clone());
        if let Some(c) = self.exposures.read().expect("metrics lock").get(&key) {
            return c.clone();
        }
        let c = metrics::counter!(
            "aisle_experiment_exposures_total",
            "experiment" => experiment.to_string(),
            "variant" => variant.to_string()
        );
        self.exposures
            .write()
            .expect("metrics lock")
            .insert(key, c.clone());
        c
    }
}
