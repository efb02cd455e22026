//! Experiments: deterministic A/B assignment with coverage and a global holdout.
//!
//! A shopper's variant in an experiment is a pure function of (shopper id, experiment key, salt): the stable hash
//! of [`aisle_domain::hash`] maps it to a point in `[0, 1)`, which falls into one variant's share of the weights.
//! No state, no I/O, no clock — so the same shopper gets the same variant on every channel, every node and every
//! restart, and changing one experiment never reshuffles another. Coverage uses an independent hash, so raising
//! coverage only adds shoppers. Shoppers in the global holdout get every experiment's control (its first variant)
//! and are reported as such.
//!
//! [`ExperimentActor`] owns the experiments bundle and swaps in validated versions; decisions read the current
//! snapshot without a message.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;

use aisle_domain::TimestampMs;
use aisle_domain::bundle::{BundleError, BundleKind, BundleMeta};
use aisle_domain::hash::unit_interval;
use aisle_domain::request::Surface;
use serde::{Deserialize, Serialize};

/// The experiments file format this build reads.
pub const EXPERIMENTS_FORMAT_VERSION: u32 = 1;

/// What a variant changes in a decision. Unset fields leave the default behaviour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantParams {
    /// Rank with this model: a loaded model's version, or "candidate" for the current candidate model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Per-category cap in the answer (diversity); overrides the rules' cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items_per_category: Option<usize>,
}

impl VariantParams {
    /// Overlays `other`'s set fields on these.
    fn overlay(&mut self, other: &VariantParams) {
        if other.model.is_some() {
            self.model.clone_from(&other.model);
        }
        if other.max_items_per_category.is_some() {
            self.max_items_per_category = other.max_items_per_category;
        }
    }
}

/// The experiments bundle as a file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentsFile {
    /// Must be [`EXPERIMENTS_FORMAT_VERSION`].
    pub format_version: u32,
    /// Version label, reported in every decision.
    pub version: String,
    /// When written.
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    /// The global holdout, if any.
    #[serde(default)]
    pub holdout: Option<HoldoutFile>,
    /// The experiments, applied in order (a later experiment's params override an earlier one's).
    #[serde(default)]
    pub experiments: Vec<ExperimentFile>,
}

/// The global holdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutFile {
    /// Share of shoppers held out, in percent (0 to 100).
    pub percent: f64,
    /// Salt; change it to draw a new holdout group.
    #[serde(default)]
    pub salt: String,
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Unique key, e.g. "diversity-2026-11".
    pub key: String,
    /// Salt; change it to reshuffle this experiment's assignment.
    #[serde(default)]
    pub salt: String,
    /// Share of shoppers enrolled, in percent (default 100).
    #[serde(default = "default_coverage")]
    pub coverage_percent: f64,
    /// Surfaces it runs on (names as in the API, e.g. "home"); empty: all.
    #[serde(default)]
    pub surfaces: Vec<String>,
    /// Variants; the first is the control.
    pub variants: Vec<VariantFile>,
}

fn default_coverage() -> f64 {
    100.0
}

/// One variant of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantFile {
    /// Name, unique in the experiment.
    pub name: String,
    /// Relative weight (the share is weight / sum of weights).
    pub weight: u32,
    /// What the variant changes.
    #[serde(default)]
    pub params: VariantParams,
}

#[derive(Debug)]
struct Variant {
    name: Arc<str>,
    /// Upper end of this variant's share of `[0, 1)`.
    upper: f64,
    params: VariantParams,
}

#[derive(Debug)]
struct Experiment {
    key: Arc<str>,
    salt: String,
    coverage: f64,
    surfaces: Vec<Surface>,
    variants: Vec<Variant>,
}

/// Loaded, validated experiments.
#[derive(Debug)]
pub struct Experiments {
    /// Identity of the bundle.
    pub meta: BundleMeta,
    holdout: Option<(f64, String)>,
    experiments: Vec<Experiment>,
}

/// A shopper's assignment for one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Whether the shopper is in the global holdout.
    pub in_holdout: bool,
    /// (experiment key, variant name) for every experiment the shopper is enrolled in on this surface.
    pub variants: Vec<(Arc<str>, Arc<str>)>,
    /// The combined parameters of the assigned variants.
    pub params: VariantParams,
}

impl Experiments {
    /// Validates an experiments file.
    ///
    /// # Errors
    /// Refuses another format version, duplicate keys or variant names, experiments without variants, zero total
    /// weight, unknown surfaces and percentages outside 0–100, naming the field.
    pub fn from_file(
        file: ExperimentsFile,
        bytes: &[u8],
        source: &str,
    ) -> Result<Self, BundleError> {
        let invalid = |reason: String| BundleError::invalid(BundleKind::Experiments, reason);
        if file.format_version != EXPERIMENTS_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat {
                kind: BundleKind::Experiments,
                found: file.format_version,
                supported: EXPERIMENTS_FORMAT_VERSION,
            });
        }
        if file.version.is_empty() {
            return Err(invalid("version: empty".into()));
        }
        let percent = |field: String, p: f64| {
            if (0.0..=100.0).contains(&p) {
                Ok(p / 100.0)
            } else {
                Err(invalid(format!("{field}: {p} is not between 0 and 100")))
            }
        };
        let holdout = match &file.holdout {
            Some(h) => Some((
                percent("holdout.percent".into(), h.percent)?,
                h.salt.clone(),
            )),
            None => None,
        };
        let mut experiments: Vec<Experiment> = Vec::with_capacity(file.experiments.len());
        for (i, e) in file.experiments.iter().enumerate() {
            if e.key.is_empty() {
                return Err(invalid(format!("experiments[{i}].key: empty")));
            }
            if experiments.iter().any(|x| *x.key == *e.key) {
                return Err(invalid(format!(
                    "experiments[{i}].key: duplicate {:?}",
                    e.key
                )));
            }
            if e.variants.is_empty() {
                return Err(invalid(format!("experiments[{i}].variants: none")));
            }
            let total: u64 = e.variants.iter().map(|v| v.weight as u64).sum();
            if total == 0 {
                return Err(invalid(format!(
                    "experiments[{i}].variants: weights sum to 0"
                )));
            }
            let mut variants: Vec<Variant> = Vec::with_capacity(e.variants.len());
            let mut acc = 0u64;
            for (j, v) in e.variants.iter().enumerate() {
                if variants.iter().any(|x| *x.name == *v.name) {
                    return Err(invalid(format!(
                        "experiments[{i}].variants[{j}].name: duplicate {:?}",
                        v.name
                    )));
                }
                acc += v.weight as u64;
                variants.push(Variant {
                    name: v.name.as_str().into(),
                    upper: acc as f64 / total as f64,
                    params: v.params.clone(),
                });
            }
            let surfaces = e
                .surfaces
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    Surface::parse(s).ok_or_else(|| {
                        invalid(format!("experiments[{i}].surfaces[{k}]: unknown {s:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            experiments.push(Experiment {
                key: e.key.as_str().into(),
                salt: e.salt.clone(),
                coverage: percent(
                    format!("experiments[{i}].coverage_percent"),
                    e.coverage_percent,
                )?,
                surfaces,
                variants,
            });
        }
        Ok(Self {
            meta: BundleMeta::computed(
                BundleKind::Experiments,
                file.format_version,
                &file.version,
                file.created_at_ms,
                bytes,
            )
            .with_source(source),
            holdout,
            experiments,
        })
    }

    /// Parses and validates an experiments bundle (JSON).
    ///
    /// # Errors
    /// See [`Experiments::from_file`]; also malformed JSON and unknown fields.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        let file: ExperimentsFile = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::invalid(
                BundleKind::Experiments,
                format!("not an experiments bundle: {e}"),
            )
        })?;
        Self::from_file(file, bytes, source)
    }

    /// The embedded defaults: a 5% global holdout and a diversity experiment (cap 3 vs cap 2 per category).
    pub fn embedded() -> Self {
        let file = default_experiments_file();
        let bytes = serde_json::to_vec(&file).expect("experiments serialise");
        Self::from_file(file, &bytes, "embedded default").expect("default experiments are valid")
    }

    /// Whether the shopper is in the global holdout.
    pub fn in_holdout(&self, shopper_id: &str) -> bool {
        match &self.holdout {
            Some((share, salt)) => unit_interval(&["holdout", salt, shopper_id]) < *share,
            None => false,
        }
    }

    /// Assigns the shopper for a decision on `surface`.
    pub fn assign(&self, shopper_id: &str, surface: Surface) -> Assignment {
        let in_holdout = self.in_holdout(shopper_id);
        let mut out = Assignment {
            in_holdout,
            ..Default::default()
        };
        for e in &self.experiments {
            if !e.surfaces.is_empty() && !e.surfaces.contains(&surface) {
                continue;
            }
            if unit_interval(&["coverage", &e.key, &e.salt, shopper_id]) >= e.coverage {
                continue;
            }
            let variant = if in_holdout {
                &e.variants[0]
            } else {
                let u = unit_interval(&["assign", &e.key, &e.salt, shopper_id]);
                e.variants
                    .iter()
                    .find(|v| u < v.upper)
                    .unwrap_or_else(|| e.variants.last().expect("validated non-empty"))
            };
            out.variants.push((e.key.clone(), variant.name.clone()));
            out.params.overlay(&variant.params);
        }
        out
    }
}

/// The embedded default experiments file.
pub fn default_experiments_file() -> ExperimentsFile {
    ExperimentsFile {
        format_version: EXPERIMENTS_FORMAT_VERSION,
        version: "experiments-default-1".into(),
        created_at_ms: 0,
        holdout: Some(HoldoutFile {
            percent: 5.0,
            salt: "holdout-1".into(),
        }),
        experiments: vec![ExperimentFile {
            key: "diversity".into(),
            salt: String::new(),
            coverage_percent: 100.0,
            surfaces: Vec::new(),
            variants: vec![
                VariantFile {
                    name: "control".into(),
                    weight: 50,
                    params: VariantParams::default(),
                },
                VariantFile {
                    name: "two-per-category".into(),
                    weight: 50,
                    params: VariantParams {
                        max_items_per_category: Some(2),
                        ..Default::default()
                    },
                },
            ],
        }],
    }
}

impl aisle_kit::snapshot::Versioned for Experiments {
    const KIND: BundleKind = BundleKind::Experiments;

    fn parse(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        Self::from_json(bytes, source)
    }

    fn meta(&self) -> &BundleMeta {
        &self.meta
    }
}

/// The actor owning the experiments.
pub type ExperimentActor =
    aisle_kit::snapshot::KeeperActor<aisle_kit::snapshot::SnapshotOwner<Experiments>>;
/// The typed handle to the [`ExperimentActor`]: lock-free reads, validated loads.
pub type ExperimentsHandle = aisle_kit::snapshot::Snapshot<Experiments>;

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [&str; 4] = ["b", "control", "b", "b"];

    fn three_way() -> Experiments {
        let json = br#"{
            "format_version": 1, "version": "e1",
            "experiments": [
                {"key": "ranker", "variants": [
                    {"name": "control", "weight": 50},
                    {"name": "b", "weight": 30, "params": {"model": "candidate"}},
                    {"name": "c", "weight": 20, "params": {"max_items_per_category": 1}}
                ]},
                {"key": "email-only", "surfaces": ["email"], "coverage_percent": 10,
                 "variants": [{"name": "control", "weight": 1}, {"name": "x", "weight": 1}]}
            ]
        }"#;
        Experiments::from_json(json, "test").unwrap()
    }

    #[test]
    fn variant_split_matches_the_weights_within_two_points() {
        let e = three_way();
        let mut counts = [0usize; 3];
        let n = 100_000;
        for i in 0..n {
            let a = e.assign(&format!("shopper-{i}"), Surface::Home);
            let variant = &*a.variants[0].1;
            counts[["control", "b", "c"]
                .iter()
                .position(|v| *v == variant)
                .unwrap()] += 1;
        }
        for (count, expected) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let share = *count as f64 / n as f64;
            assert!((share - expected).abs() <= 0.02, "{counts:?}");
        }
    }

    #[test]
    fn assignment_is_stable_and_independent_of_surface_and_channel() {
        let e = three_way();
        for i in 0..1_000 {
            let id = format!("s{i}");
            let home = e.assign(&id, Surface::Home);
            assert_eq!(home, e.assign(&id, Surface::Home));
            assert_eq!(home.variants[0], e.assign(&id, Surface::Cart).variants[0]);
        }
        // Pinned: a change to hashing would silently reshuffle every running experiment.
        let pinned: Vec<String> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|id| e.assign(id, Surface::Home).variants[0].1.to_string())
            .collect();
        assert_eq!(pinned, PINNED);
    }

    #[test]
    fn parameters_follow_the_variant() {
        let e = three_way();
        let b = (0..)
            .map(|i| format!("p{i}"))
            .find(|id| &*e.assign(id, Surface::Home).variants[0].1 == "b")
            .unwrap();
        assert_eq!(
            e.assign(&b, Surface::Home).params.model.as_deref(),
            Some("candidate")
        );
    }

    #[test]
    fn surfaces_and_coverage_limit_enrolment() {
        let e = three_way();
        let n = 20_000;
        let enrolled = (0..n)
            .filter(|i| e.assign(&format!("s{i}"), Surface::Email).variants.len() == 2)
            .count();
        assert!(
            (enrolled as f64 / n as f64 - 0.10).abs() < 0.01,
            "{enrolled}"
        );
        assert!((0..1000).all(|i| e.assign(&format!("s{i}"), Surface::Home).variants.len() == 1));
    }

    #[test]
    fn holdout_shoppers_get_control_everywhere() {
        let e = Experiments::embedded();
        let n = 100_000;
        let mut held = 0;
        for i in 0..n {
            let a = e.assign(&format!("h{i}"), Surface::Home);
            if a.in_holdout {
                held += 1;
                assert!(a.variants.iter().all(|(_, v)| &**v == "control"));
                assert_eq!(a.params, VariantParams::default());
            }
        }
        assert!((held as f64 / n as f64 - 0.05).abs() < 0.005, "{held}");
    }

    #[test]
    fn invalid_files_are_refused_naming_the_field() {
        let cases: [(&str, &str); 5] = [
            (
                r#"{"format_version":1,"version":"v","experiments":[{"key":"a","variants":[]}]}"#,
                "experiments[0].variants",
            ),
            (
                r#"{"format_version":1,"version":"v","experiments":[{"key":"a","variants":[{"name":"x","weight":0}]}]}"#,
                "weights sum to 0",
            ),
            (
                r#"{"format_version":1,"version":"v","experiments":[{"key":"a","surfaces":["moon"],"variants":[{"name":"x","weight":1}]}]}"#,
                "experiments[0].surfaces[0]",
            ),
            (
                r#"{"format_version":1,"version":"v","holdout":{"percent":150}}"#,
                "holdout.percent",
            ),
            (
                r#"{"format_version":1,"version":"v","experiments":[{"key":"a","variants":[{"name":"x","weight":1,"params":{"colour":1}}]}]}"#,
                "colour",
            ),
        ];
        for (json, needle) in cases {
            let err = Experiments::from_json(json.as_bytes(), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
