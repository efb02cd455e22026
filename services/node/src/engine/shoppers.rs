//! The shopper state of a node: the live sessions (session shard actors), each shopper's last decisions (the
//! CACHED rung), the pseudonyms that name shoppers outside this node's memory, and the tombstones of shoppers who
//! asked to be forgotten — one part of the node context, shared by the decider (which reads it), the use cases
//! (which change it) and the cluster (which moves it between nodes).
//!
//! What is done to one shopper's state in one step lives here: applying their events (and dropping the answers
//! cached for them), reading and copying a session, forgetting one.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{ItemRef, ShopperEvent};
use aisle_session::{AssistSignal, Delivery, SessionContext, SessionError, Sessions};

use super::cache::DecisionCache;
use super::decision::TrackOutcome;
use super::tombstones::Tombstones;
use crate::security::pseudonyms::Pseudonyms;

/// How long applying events, a describe or an erasure may wait for a session actor.
pub const SESSION_CALL: Duration = Duration::from_secs(2);

/// A node's shopper state (cheap to clone: every part is shared).
#[derive(Debug, Clone)]
pub struct Shoppers {
    /// The session shard actors and their tables.
    pub sessions: Sessions,
    /// Each shopper's last FRESH decision per surface.
    pub cache: Arc<DecisionCache>,
    /// What names shoppers outside this node's memory (logs, push events, tombstones).
    pub pseudonyms: Arc<Pseudonyms>,
    /// Forgotten shoppers whose older session copies must not come back.
    pub tombstones: Arc<Tombstones>,
}

/// What applying one shopper's events did.
#[derive(Debug)]
pub struct Applied {
    /// Counts.
    pub outcome: TrackOutcome,
    /// Signals the session raised for store associates.
    pub signals: Vec<AssistSignal>,
    /// Per event, in order: whether the shopper consents to it being logged (empty for a duplicate delivery).
    pub loggable: Vec<bool>,
    /// When the first event was received (µs since the epoch).
    pub received_at_us: i64,
}

impl Shoppers {
    /// Applies one shopper's validated events, in order, and drops the decisions cached for them (they no longer
    /// reflect the shopper). A `delivery` (an outbox or edge entry) is applied once: a resent one changes nothing
    /// and is counted as duplicates.
    ///
    /// # Errors
    /// The session actor's error: unavailable, timed out, reset, or [`SessionError::NotOwner`] when ownership
    /// moved away from this node (nothing was applied then).
    pub async fn apply(
        &self,
        shopper_id: &str,
        events: Vec<ShopperEvent>,
        catalog: Arc<Catalog>,
        delivery: Option<Delivery>,
    ) -> Result<Applied, SessionError> {
        let accepted = events.len();
        let unknown_items = events
            .iter()
            .filter(|e| matches!(e.item, Some(ItemRef::Unknown)))
            .count();
        let received_at_us = events.first().map_or(0, |e| e.received_at_us);
        let kinds: Vec<&'static str> = events.iter().map(|e| e.kind.as_str()).collect();
        let applied = self
            .sessions
            .apply(shopper_id, events, catalog, delivery, SESSION_CALL)
            .await?;
        if applied.duplicate {
            // An entry applied before (its answer was lost): nothing changed, nothing is logged again.
            metrics::counter!("aisle_outbox_duplicates_total").increment(accepted as u64);
            return Ok(Applied {
                outcome: TrackOutcome {
                    duplicates: accepted,
                    ..TrackOutcome::default()
                },
                signals: Vec::new(),
                loggable: Vec::new(),
                received_at_us,
            });
        }
        self.cache.invalidate(shopper_id);
        for kind in kinds {
            metrics::counter!("aisle_track_events_total", "type" => kind).increment(1);
        }
        Ok(Applied {
            outcome: TrackOutcome {
                accepted,
                unknown_items,
                ..TrackOutcome::default()
            },
            signals: applied.signals,
            loggable: applied.loggable,
            received_at_us,
        })
    }

    /// Whether events of the shopper received at `received_at_us` must not be applied: the shopper was forgotten
    /// after they were received (they were queued before the erasure). No pseudonym is computed while no
    /// tombstone is held.
    pub fn forgotten_since(&self, shopper_id: &str, received_at_us: i64) -> bool {
        !self.tombstones.is_empty()
            && self.tombstones.blocks(
                &self.pseudonyms.of(shopper_id),
                (received_at_us / 1000).max(0) as u64,
            )
    }

    /// The session this node holds for a shopper it owns (`None`: no session).
    ///
    /// # Errors
    /// The session actor's error; [`SessionError::NotOwner`] when this node does not own the shopper.
    pub async fn session(&self, shopper_id: &str) -> Result<Option<SessionContext>, SessionError> {
        self.sessions.describe(shopper_id, SESSION_CALL).await
    }

    /// Erases the session and cached decisions this node holds for a shopper, whether it owns them or keeps an
    /// old owner's copy. Returns whether a session was held and how many cached decisions were.
    ///
    /// # Errors
    /// The session actor's error (nothing is known to be erased then).
    pub async fn forget(&self, shopper_id: &str) -> Result<(bool, usize), SessionError> {
        // The shard's forget is not gated by ownership: it also erases a copy kept from an earlier view.
        let erased = self.sessions.forget(shopper_id, SESSION_CALL).await?;
        let cached = self.cache.invalidate(shopper_id);
        Ok((erased, cached))
    }
}
