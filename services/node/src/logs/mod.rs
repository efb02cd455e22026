//! The node's logs, written off the request path so that a request never waits on disk:
//!
//! - the **event log**: every shopper event applied with the shopper's consent, one JSON line each, in the format
//!   `aisle-train` reads, the shopper named by pseudonym;
//! - the **decision trail**: one hash-chained record per decision and per admin action, whose erasable subject is
//!   the shopper's pseudonym; `aisle audit verify` checks it offline.
//!
//! [`Logs`] is the part of the node context that writes them: what a decision, a Track, an erasure or an
//! operator's action leaves behind. The decider knows nothing of it: the use cases record what it decided.
//!
//! Modules:
//!
//! - [`journal`]: the segmented, durable log both are written to — the writer task, group commit, rotation,
//!   retention, the hash chain, erasure by rewriting, the verifier.
//! - [`audit`]: what the records hold, and opening both logs from the node's configuration.
//!
//! Watching whether the logs can be written (and saying so in `/readyz`) belongs to the node's start-up, in
//! `server`: the logs know nothing of the HTTP plane.

pub mod audit;
pub mod journal;

use std::sync::Arc;

use aisle_domain::event::EventRecord;

use self::audit::{AdminRecord, decision_entry};
use self::journal::{Entry, Journal};
use crate::engine::decision::{DecideInput, Decision};
use crate::security::pseudonyms::Pseudonyms;

/// What erasing a shopper from this node's logs did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErasedFromLogs {
    /// Event-log lines removed.
    pub event_records: u64,
    /// Decision-trail records whose shopper reference was redacted.
    pub decision_records: u64,
}

/// The logs one node writes (either may be off).
#[derive(Debug, Clone)]
pub struct Logs {
    node_id: Arc<str>,
    pseudonyms: Arc<Pseudonyms>,
    trail: Option<Journal>,
    events: Option<Journal>,
}

impl Logs {
    /// The logs of node `node_id`, naming shoppers by `pseudonyms`.
    pub fn new(
        node_id: &str,
        pseudonyms: Arc<Pseudonyms>,
        trail: Option<Journal>,
        events: Option<Journal>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            pseudonyms,
            trail,
            events,
        }
    }

    /// Records a decision in the trail (nothing, not even the shopper's pseudonym, is computed without one). The
    /// record is queued: a decision never waits on the disk.
    pub fn decision(&self, input: &DecideInput, decision: &Decision) {
        if let Some(trail) = &self.trail {
            let shopper_ref = self.pseudonyms.of(&input.shopper_id);
            trail.record(decision_entry(&self.node_id, shopper_ref, input, decision));
        }
    }

    /// Writes the event-log lines of one shopper's applied events: `records` in order, each only if the shopper
    /// consents to it being logged (`loggable`, from applying it); the others are only counted.
    pub fn events(&self, shopper_id: &str, records: Vec<EventRecord>, loggable: &[bool]) {
        let Some(log) = &self.events else {
            return;
        };
        let withheld = loggable.iter().filter(|&&l| !l).count();
        if withheld > 0 {
            metrics::counter!("aisle_track_events_unlogged_total", "reason" => "no_consent")
                .increment(withheld as u64);
        }
        let mut shopper_ref = None;
        for (mut record, _) in records.into_iter().zip(loggable).filter(|(_, l)| **l) {
            let shopper_ref = shopper_ref.get_or_insert_with(|| self.pseudonyms.of(shopper_id));
            record.shopper_id.clone_from(shopper_ref);
            log.record(Entry::new("event", Some(shopper_ref.clone()), record));
        }
    }

    /// Records an operator's (or this node's own) action in the trail, durably (nothing when there is no trail).
    ///
    /// # Errors
    /// When the record could not be made durable within the trail's sync timeout.
    pub async fn audit_action(
        &self,
        action: &'static str,
        caller: &str,
        details: serde_json::Value,
    ) -> std::io::Result<()> {
        let Some(trail) = &self.trail else {
            return Ok(());
        };
        trail
            .record_synced(Entry::new(
                "admin",
                None,
                AdminRecord {
                    action,
                    caller: caller.to_string(),
                    node: self.node_id.to_string(),
                    details,
                },
            ))
            .await
    }

    /// Removes the shopper's lines (under any of their pseudonyms `refs`, current first) from every segment of the
    /// event log and redacts their reference in every segment of the trail; then records the erasure, by `caller`,
    /// in the trail, durably.
    ///
    /// # Errors
    /// When a log could not be rewritten or the record made durable (erasure is idempotent: retry).
    pub async fn erase(&self, refs: &[String], caller: &str) -> std::io::Result<ErasedFromLogs> {
        let mut out = ErasedFromLogs::default();
        if let Some(log) = &self.events {
            out.event_records = log.erase(refs.to_vec()).await?.records();
        }
        if let Some(trail) = &self.trail {
            out.decision_records = trail.erase(refs.to_vec()).await?.records();
        }
        self.audit_action(
            "forget",
            caller,
            serde_json::json!({
                // The erasure record names the shopper by pseudonym in its body, not as its subject: asking again
                // must not redact the record of the first erasure.
                "shopper_ref": refs[0],
                "event_log_records_removed": out.event_records,
                "decision_records_redacted": out.decision_records,
            }),
        )
        .await?;
        Ok(out)
    }

    /// The decision trail, if written.
    pub fn trail(&self) -> Option<&Journal> {
        self.trail.as_ref()
    }

    /// The event log, if written.
    pub fn event_log(&self) -> Option<&Journal> {
        self.events.as_ref()
    }

    /// Every log this node writes.
    pub fn all(&self) -> Vec<Journal> {
        self.trail
            .iter()
            .chain(self.events.iter())
            .cloned()
            .collect()
    }

    /// Closes every log cleanly (what is queued is written and synced).
    pub async fn close(&self) {
        for log in self.all() {
            if let Err(e) = log.close().await {
                tracing::warn!(log = log.name(), error = %e, "could not close the log cleanly");
            }
        }
    }
}
