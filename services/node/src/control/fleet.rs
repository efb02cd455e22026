//! What the fleet serves: the versions record (which model is default, which is candidate, which rules and
//! experiments) that every member of a cluster converges to, what each member publishes about itself, and the
//! pure decisions made from them — how a member converges ([`step`]), in what it differs ([`skew`]) and when it
//! records what it serves because nobody serves the record any more ([`adopted`]).
//!
//! A member converges only by the two moves it can make alone: promoting its candidate, or rolling back to its
//! default from before a promotion. Anything else — a version it has not loaded — is skew: it keeps serving what it
//! has and says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundles::{Bundles, Kind};

/// The versions a member serves, or that the fleet should serve. The models have their slots (promotion and
/// rollback move them); every other bundle kind with a fleet field in the registry is one entry of `bundles`,
/// written beside them in the record (`"rules": "…", "experiments": "…"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The default model.
    pub default_model: String,
    /// The candidate model (canary variants), if any.
    pub candidate_model: Option<String>,
    /// The default model before the last promotion (what a rollback restores), if any.
    pub previous_model: Option<String>,
    /// Every other kind's version, by its fleet field (`rules`, `experiments`, …).
    #[serde(flatten)]
    pub bundles: BTreeMap<String, String>,
}

/// The model slots, in the record: handled by promotion and rollback, not as plain bundles.
const MODEL_FIELDS: [&str; 2] = ["default_model", "candidate_model"];

/// Why the record cannot be promoted or rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// Promote without a candidate.
    #[error("the fleet's versions record names no candidate model to promote")]
    NoCandidate,
    /// Rollback without an earlier promotion.
    #[error("the fleet's versions record names no previous default model to roll back to")]
    NoPrevious,
}

impl Versions {
    /// What `bundles` serves now.
    pub fn of(bundles: &Bundles) -> Self {
        let world = bundles.world();
        let others = Kind::ALL.into_iter().filter_map(|kind| {
            let field = kind
                .spec()
                .fleet_field
                .filter(|f| !MODEL_FIELDS.contains(f))?;
            Some((field.to_string(), bundles.served(kind)?.version))
        });
        Self {
            default_model: world.default_model.version().to_string(),
            candidate_model: world.candidate.as_ref().map(|m| m.version().to_string()),
            previous_model: world.previous.as_ref().map(|m| m.version().to_string()),
            bundles: others.collect(),
        }
    }

    /// The version of a fleet field (`None`: nothing of it served).
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "default_model" => Some(&self.default_model),
            "candidate_model" => self.candidate_model.as_deref(),
            other => self.bundles.get(other).map(String::as_str),
        }
    }

    /// These versions after promoting the candidate (as the world keeper promotes).
    ///
    /// # Errors
    /// When there is no candidate.
    pub fn promoted(&self) -> Result<Self, SwitchError> {
        let candidate = self
            .candidate_model
            .clone()
            .ok_or(SwitchError::NoCandidate)?;
        Ok(Self {
            previous_model: Some(self.default_model.clone()),
            default_model: candidate,
            candidate_model: None,
            ..self.clone()
        })
    }

    /// These versions after rolling back (the demoted default becomes the candidate again).
    ///
    /// # Errors
    /// When there was no promotion.
    pub fn rolled_back(&self) -> Result<Self, SwitchError> {
        let previous = self.previous_model.clone().ok_or(SwitchError::NoPrevious)?;
        Ok(Self {
            candidate_model: Some(self.default_model.clone()),
            default_model: previous,
            previous_model: None,
            ..self.clone()
        })
    }

    /// Whether the models decisions use (default and candidate) are the same.
    fn serves_models_of(&self, other: &Versions) -> bool {
        self.default_model == other.default_model && self.candidate_model == other.candidate_model
    }
}

/// The fleet's versions record: what etcd holds under `/aisle/<cluster>/control/versions`, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// One more at every change.
    pub revision: u64,
    /// What the fleet should serve.
    #[serde(flatten)]
    pub versions: Versions,
    /// What made this revision: `seed`, `promote`, `rollback` or `adopt`.
    pub change: String,
    /// Who: a caller's identity, or `node <id>`.
    pub changed_by: String,
    /// When, ms since the Unix epoch.
    pub changed_at_ms: i64,
}

/// What a member publishes about itself under `/aisle/<cluster>/control/loaded/<node>` (rewritten when it
/// changes; not leased: only members of the current view are read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// The member.
    pub node_id: String,
    /// What it serves.
    #[serde(flatten)]
    pub versions: Versions,
    /// The modification revision in etcd of the kill-switch record it applies (0: none): how the node that
    /// changed the switches learns who applies them.
    pub kill_switch_revision: u64,
}

/// A move that brings a member closer to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Promote the candidate.
    Promote,
    /// Roll back to the default from before the last promotion.
    Rollback,
}

/// The move a member serving `loaded` makes towards `desired`, if one helps: first one that makes the default and
/// candidate models exactly the record's; else, while the default differs, promoting when the record's default is
/// the member's candidate and rolling back when it is the member's pre-promotion default.
pub fn step(loaded: &Versions, desired: &Versions) -> Option<Step> {
    if loaded.serves_models_of(desired) {
        return None;
    }
    let promoted = loaded.promoted().ok();
    let rolled_back = loaded.rolled_back().ok();
    if promoted
        .as_ref()
        .is_some_and(|p| p.serves_models_of(desired))
    {
        return Some(Step::Promote);
    }
    if rolled_back
        .as_ref()
        .is_some_and(|r| r.serves_models_of(desired))
    {
        return Some(Step::Rollback);
    }
    if loaded.default_model == desired.default_model {
        return None;
    }
    if loaded.candidate_model.as_ref() == Some(&desired.default_model) {
        return Some(Step::Promote);
    }
    if loaded.previous_model.as_ref() == Some(&desired.default_model) {
        return Some(Step::Rollback);
    }
    None
}

/// Every served field of the registry, models first (the previous model is not served).
pub fn fields() -> impl Iterator<Item = &'static str> {
    MODEL_FIELDS.into_iter().chain(
        Kind::ALL
            .into_iter()
            .filter_map(|k| k.spec().fleet_field)
            .filter(|f| !MODEL_FIELDS.contains(f)),
    )
}

/// The served fields in which `loaded` differs from `desired`.
pub fn skew(loaded: &Versions, desired: &Versions) -> Vec<&'static str> {
    fields()
        .filter(|f| loaded.field(f) != desired.field(f))
        .collect()
}

/// The record to write when no other member serves what it names: `desired` with the skewed fields replaced by
/// what this member serves (the default model with its previous one), or `None` when some other member still
/// serves the recorded version of every skewed field. `others` are the versions every other member of the view
/// published; a member that has not published counts as serving the record (the record is not changed on a
/// guess).
pub fn adopted(
    mine: &Versions,
    desired: &Versions,
    others: &[Option<&Versions>],
) -> Option<Versions> {
    let stale: Vec<&str> = skew(mine, desired)
        .into_iter()
        .filter(|f| {
            others
                .iter()
                .all(|o| o.is_some_and(|o| o.field(f) != desired.field(f)))
        })
        .collect();
    if stale.is_empty() {
        return None;
    }
    let mut next = desired.clone();
    for f in stale {
        match f {
            "default_model" => {
                next.default_model.clone_from(&mine.default_model);
                next.previous_model.clone_from(&mine.previous_model);
            }
            "candidate_model" => next.candidate_model.clone_from(&mine.candidate_model),
            other => match mine.bundles.get(other) {
                Some(version) => {
                    next.bundles.insert(other.to_string(), version.clone());
                }
                None => {
                    next.bundles.remove(other);
                }
            },
        }
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(default: &str, candidate: Option<&str>, previous: Option<&str>) -> Versions {
        Versions {
            default_model: default.into(),
            candidate_model: candidate.map(Into::into),
            previous_model: previous.map(Into::into),
            bundles: [("rules", "r1"), ("experiments", "e1")]
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .into(),
        }
    }

    #[test]
    fn promote_and_rollback_move_the_slots_as_the_world_keeper_does() {
        let start = v("m1", Some("m2"), None);
        let promoted = start.promoted().unwrap();
        assert_eq!(promoted, v("m2", None, Some("m1")));
        assert_eq!(promoted.promoted(), Err(SwitchError::NoCandidate));
        let back = promoted.rolled_back().unwrap();
        assert_eq!(back, v("m1", Some("m2"), None));
        assert_eq!(back.rolled_back(), Err(SwitchError::NoPrevious));
    }

    #[test]
    fn a_member_promotes_or_rolls_back_towards_the_record_and_otherwise_stays() {
        // Started from its files before a promotion was recorded: it promotes.
        assert_eq!(
            step(&v("m1", Some("m2"), None), &v("m2", None, Some("m1"))),
            Some(Step::Promote)
        );
        // Promoted, and the fleet rolled back: it rolls back.
        assert_eq!(
            step(&v("m2", None, Some("m1")), &v("m1", Some("m2"), None)),
            Some(Step::Rollback)
        );
        // Already there.
        assert_eq!(step(&v("m2", None, Some("m1")), &v("m2", None, None)), None);
        // The record's default is its candidate, though a later candidate was recorded since: promoting gets the
        // default right.
        assert_eq!(
            step(&v("m1", Some("m2"), None), &v("m2", Some("m3"), Some("m1"))),
            Some(Step::Promote)
        );
        // It has not loaded the recorded default: nothing to do but report skew.
        assert_eq!(
            step(&v("m1", Some("m3"), None), &v("m2", None, Some("m1"))),
            None
        );
        // Default and candidate of one version (one file for both): promoting empties the candidate slot as the
        // record says, and rolling back fills it again.
        assert_eq!(
            step(&v("m", Some("m"), None), &v("m", None, Some("m"))),
            Some(Step::Promote)
        );
        assert_eq!(
            step(&v("m", None, Some("m")), &v("m", Some("m"), None)),
            Some(Step::Rollback)
        );
    }

    #[test]
    fn skew_names_the_served_fields_that_differ() {
        let desired = v("m2", None, Some("m1"));
        assert!(skew(&v("m2", None, None), &desired).is_empty());
        let mut other = v("m1", Some("m2"), None);
        other.bundles.insert("rules".into(), "r2".into());
        assert_eq!(
            skew(&other, &desired),
            ["default_model", "candidate_model", "rules"]
        );
    }

    #[test]
    fn a_record_nobody_serves_any_more_takes_what_a_member_serves() {
        let desired = v("m1", None, None);
        let mine = v("m4", None, None);
        // Another member still serves m1: a rollout in progress, or this member is the odd one out.
        let old = v("m1", None, None);
        assert_eq!(adopted(&mine, &desired, &[Some(&old), Some(&mine)]), None);
        // A member that has not published may serve m1.
        assert_eq!(adopted(&mine, &desired, &[None, Some(&mine)]), None);
        // Nobody serves m1 any more (every node was restarted with new files).
        let mut rules = v("m5", None, None);
        rules.bundles.insert("rules".into(), "r9".into());
        assert_eq!(
            adopted(&mine, &desired, &[Some(&rules)]),
            Some(v("m4", None, None))
        );
        // Only the fields nobody serves are replaced.
        let mut mine_rules = mine.clone();
        mine_rules.bundles.insert("rules".into(), "r2".into());
        let mut next = desired.clone();
        next.bundles.insert("rules".into(), "r2".into());
        assert_eq!(adopted(&mine_rules, &desired, &[Some(&old)]), None);
        let mut old_new_rules = old.clone();
        old_new_rules.bundles.insert("rules".into(), "r2".into());
        assert_eq!(
            adopted(&mine_rules, &desired, &[Some(&old_new_rules)]),
            Some(next)
        );
        // A member alone in its view records what it serves.
        assert_eq!(adopted(&mine, &desired, &[]), Some(mine.clone()));
    }

    #[test]
    fn records_are_plain_json() {
        let d = Desired {
            revision: 2,
            versions: v("m2", None, Some("m1")),
            change: "promote".into(),
            changed_by: "token:ops".into(),
            changed_at_ms: 5,
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 2, "default_model": "m2", "candidate_model": null,
                "previous_model": "m1", "rules": "r1", "experiments": "e1", "change": "promote",
                "changed_by": "token:ops", "changed_at_ms": 5})
        );
        assert_eq!(serde_json::from_value::<Desired>(json).unwrap(), d);
    }
}
