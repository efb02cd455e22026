//! The types of one decision, shared by the decider that makes it, the router that places it, the API that
//! answers with it and the audit log that records it: the validated input, the answer, the rung that gave it and,
//! when that was not FRESH, why — as a stage and a reason code from a closed set.
//!
//! The closed set matters: `aisle_fallbacks_total{stage, reason}` is labelled by the two codes only, so its
//! series are bounded whatever happens in the cluster; free text (node ids, epochs, transport errors) travels in
//! [`Fallback::detail`] to the logs, the decision record and the response, never to a metric label.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::{Catalog, ItemIdx};
use aisle_domain::request::{Channel, ShopperAttributes, Surface};
use aisle_experiment::Assignment;
use aisle_policy::ServedOffer;

/// Which rung answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Ranked now.
    Fresh,
    /// The shopper's last decision.
    Cached,
    /// Category top sellers.
    Rules,
    /// Merchandising list.
    Generic,
}

impl Tier {
    /// The lowercase name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fresh => "fresh",
            Tier::Cached => "cached",
            Tier::Rules => "rules",
            Tier::Generic => "generic",
        }
    }
}

/// The step of a decision that could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Too many decisions in flight on this node.
    Admission,
    /// This node's cluster membership (not a member, fenced, nobody owns shoppers).
    Membership,
    /// The shopper's owner, another node.
    Owner,
    /// The hand-off barrier of a new view.
    Handoff,
    /// The shopper's session actor.
    Session,
    /// Retrieval and scoring.
    Ranking,
    /// An operator's control: a kill switch sends the decision to a lower rung.
    Control,
}

impl Stage {
    /// Every stage (metric label values are exactly these).
    pub const ALL: &'static [Stage] = &[
        Stage::Admission,
        Stage::Membership,
        Stage::Owner,
        Stage::Handoff,
        Stage::Session,
        Stage::Ranking,
        Stage::Control,
    ];

    /// The lowercase name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::Membership => "membership",
            Stage::Owner => "owner",
            Stage::Handoff => "handoff",
            Stage::Session => "session",
            Stage::Ranking => "ranking",
            Stage::Control => "control",
        }
    }
}

/// Why a stage could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The node is over its in-flight decision limit.
    Overload,
    /// The deadline came while the stage was working.
    Deadline,
    /// The budget was spent before the stage started.
    NoBudget,
    /// A fault was injected (drills).
    InjectedFailure,
    /// The actor or peer behind the stage did not answer.
    Unavailable,
    /// This node is not a cluster member (or is fenced).
    NotMember,
    /// No member owns shoppers.
    NoOwner,
    /// Ownership kept moving: the views of this node and the owner differed after a retry.
    StaleView,
    /// The shopper's session is still being handed over.
    Pending,
    /// A kill switch is on for the decision's surface and channel.
    KillSwitch,
}

impl Reason {
    /// Every reason (metric label values are exactly these).
    pub const ALL: &'static [Reason] = &[
        Reason::Overload,
        Reason::Deadline,
        Reason::NoBudget,
        Reason::InjectedFailure,
        Reason::Unavailable,
        Reason::NotMember,
        Reason::NoOwner,
        Reason::StaleView,
        Reason::Pending,
        Reason::KillSwitch,
    ];

    /// The snake-case code (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Overload => "overload",
            Reason::Deadline => "deadline",
            Reason::NoBudget => "no_budget",
            Reason::InjectedFailure => "injected_failure",
            Reason::Unavailable => "unavailable",
            Reason::NotMember => "not_member",
            Reason::NoOwner => "no_owner",
            Reason::StaleView => "stale_view",
            Reason::Pending => "pending",
            Reason::KillSwitch => "kill_switch",
        }
    }
}

/// Why a decision left FRESH: a stage, a reason code, and free-text detail for people (logs, decision records,
/// the response's `fallback_reason`), never for metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Where.
    pub stage: Stage,
    /// Why.
    pub reason: Reason,
    /// Anything more (which node, which error); may be empty.
    pub detail: String,
}

impl Fallback {
    /// A fallback without detail.
    pub fn new(stage: Stage, reason: Reason) -> Self {
        Self {
            stage,
            reason,
            detail: String::new(),
        }
    }

    /// A fallback with detail.
    pub fn with_detail(stage: Stage, reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            stage,
            reason,
            detail: detail.into(),
        }
    }
}

/// `stage: reason`, then ` (detail)` when there is detail.
impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.reason.as_str())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// A validated Decide request.
#[derive(Debug, Clone)]
pub struct DecideInput {
    /// The shopper.
    pub shopper_id: String,
    /// Where.
    pub surface: Surface,
    /// Who asks.
    pub channel: Channel,
    /// Items wanted.
    pub limit: usize,
    /// Items to rank (known ones), when the storefront gives them.
    pub candidates: Option<Vec<ItemIdx>>,
    /// Given candidates the catalog does not know (excluded: fail closed).
    pub unknown_candidates: usize,
    /// Items on screen (known ones).
    pub context: Vec<ItemIdx>,
    /// Consent stated by the request.
    pub consent: Option<bool>,
    /// Verified age, loyalty.
    pub attributes: ShopperAttributes,
    /// Store: recorded for audit.
    pub store_id: String,
    /// Region: recorded for audit.
    pub region: String,
    /// Device: recorded for audit.
    pub device: String,
    /// Caller's request id.
    pub request_id: String,
    /// The authenticated caller (`token:<name>`, `cert:<name>` or `anonymous`): recorded for audit.
    pub client: String,
}

/// An item of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedItem {
    /// The item.
    pub item: ItemIdx,
    /// Its score from the answering rung.
    pub score: f32,
    /// Its cleared offer.
    pub offer: Option<ServedOffer>,
    /// Why it is here.
    pub reasons: Vec<String>,
}

/// A decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Unique id.
    pub decision_id: String,
    /// Items, best first.
    pub items: Vec<DecidedItem>,
    /// The answering rung.
    pub tier: Tier,
    /// Why not FRESH (`None` when FRESH).
    pub fallback: Option<Fallback>,
    /// The catalog the items index.
    pub catalog: Arc<Catalog>,
    /// Model version.
    pub model_version: String,
    /// Rules version.
    pub rules_version: String,
    /// Experiments version.
    pub experiments_version: String,
    /// Experiment assignment.
    pub assignment: Assignment,
    /// Server time spent.
    pub latency: Duration,
    /// Membership epoch the decision was made under.
    pub epoch: u64,
}

impl Decision {
    /// The fallback as people read it (empty when FRESH).
    pub fn fallback_text(&self) -> String {
        self.fallback
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// How this node may serve a decision.
#[derive(Debug, Clone)]
pub enum Serve {
    /// It owns the shopper (and the hand-off barrier let it through) at this epoch: every rung.
    Owner {
        /// The epoch.
        epoch: u64,
    },
    /// It cannot serve as owner (owner unreachable, hand-off in progress, not a member): the fallback ladder
    /// only, without touching any session.
    Fallback {
        /// The epoch of this node's view (0 when none).
        epoch: u64,
        /// Why.
        why: Fallback,
    },
}

impl Serve {
    /// The epoch the decision is made under.
    pub fn epoch(&self) -> u64 {
        match self {
            Serve::Owner { epoch } | Serve::Fallback { epoch, .. } => *epoch,
        }
    }
}

/// What a Track batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackOutcome {
    /// Events accepted: applied, or queued in the outbox.
    pub accepted: usize,
    /// Of the applied, naming items the catalog does not know.
    pub unknown_items: usize,
    /// Of the accepted, queued in this node's outbox for their owner.
    pub queued: usize,
    /// Events of a redelivered outbox entry the owner had already applied (not applied again).
    pub duplicates: usize,
}

impl std::ops::AddAssign for TrackOutcome {
    fn add_assign(&mut self, other: Self) {
        self.accepted += other.accepted;
        self.unknown_items += other.unknown_items;
        self.queued += other.queued;
        self.duplicates += other.duplicates;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_read_as_stage_reason_and_detail() {
        assert_eq!(
            Fallback::new(Stage::Ranking, Reason::Deadline).to_string(),
            "ranking: deadline"
        );
        assert_eq!(
            Fallback::with_detail(Stage::Owner, Reason::Unavailable, "n2 at epoch 7").to_string(),
            "owner: unavailable (n2 at epoch 7)"
        );
    }

    #[test]
    fn label_values_are_distinct() {
        let stages: std::collections::HashSet<_> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(stages.len(), Stage::ALL.len());
        let reasons: std::collections::HashSet<_> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), Reason::ALL.len());
    }
}
