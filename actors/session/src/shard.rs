//! Session actors: the ractor actors that own shoppers' sessions.
//!
//! Every active shopper has exactly one session, owned by exactly one `SessionShard` actor, picked by a stable
//! hash of the shopper id ("key-persistent routing"): all messages about one shopper go through one mailbox, so
//! a shopper's events apply in order and a decision reads a consistent session. Each session is a logical actor
//! inside its shard — created on its first event, passivated after an idle TTL — rather than a ractor actor of
//! its own: a ractor actor costs about 7.8 KB and 20 µs to spawn (measured here, see docs/architecture.md), which
//! puts a million active shoppers out of reach, while a session in a shard costs well under 2 KB.
//!
//! Supervision: a panic while applying an event to one session is caught inside the shard; that session is
//! dropped (the shopper starts afresh), the caller gets [`SessionError::Reset`], and every other session of the
//! shard is untouched. A panic anywhere else fails the shard; the pool supervisor (`aisle_kit::pool`) restarts it
//! empty at the same index, and the routing table points at the new actor.
//!
//! Reads without a message: each shard keeps its sessions in a [`SessionTable`] that only the shard writes and
//! that decisions read directly ([`crate::Sessions::view_now`]) under a read lock, so reading a session costs no
//! thread hand-off. A write (an event batch, a hand-off, passivation) happens inside the shard's message handling,
//! so reads still see each shopper's events whole and in order: a batch acknowledged to `Track` is visible to
//! every later read.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::ShopperEvent;
use aisle_domain::session::SessionView;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::context::{AssistRules, AssistSignal, SessionContext, SessionLimits};

/// Why a session operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session actor did not answer in time.
    #[error("session actor did not answer within {0:?}")]
    Timeout(Duration),
    /// The session actor is gone (shutting down or restarting).
    #[error("session actor unavailable")]
    Unavailable,
    /// Applying an event hit an internal error; the shopper's session was reset.
    #[error("session was reset after an internal error")]
    Reset,
    /// This node does not own the shopper (ownership moved to another node).
    #[error("this node does not own the shopper")]
    NotOwner,
}

/// Decides, at the moment a shard handles a message, whether this node owns a shopper. Checked in the shard's
/// mailbox order, so a session handed off to another node cannot be re-created here by a message that was
/// already on its way.
pub type OwnerGate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Settings shared by every shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionSettings {
    /// Bounds per session.
    pub limits: SessionLimits,
    /// When session activity becomes an assist suggestion.
    pub assist: AssistRules,
    /// A session with no activity for this long is passivated (dropped).
    pub idle_ttl: Duration,
    /// How often each shard looks for idle sessions.
    pub passivation_interval: Duration,
    /// Sessions one shard holds at most; beyond it the least recently active are passivated (the node sets it
    /// from its `max_sessions` over the shard count).
    pub max_sessions_per_shard: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            limits: SessionLimits::default(),
            assist: AssistRules::default(),
            idle_ttl: Duration::from_secs(30 * 60),
            passivation_interval: Duration::from_secs(30),
            max_sessions_per_shard: usize::MAX,
        }
    }
}

/// The result of applying one shopper's events.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Whether the session was created by these events.
    pub created: bool,
    /// What associates should hear about.
    pub signals: Vec<AssistSignal>,
    /// Per event, in order: whether it may be written to the event log — the shopper consents after applying it
    /// (the recorded statement, else the event's regional default).
    pub loggable: Vec<bool>,
    /// The events were a queue's entry that this session had already applied: nothing was applied again.
    pub duplicate: bool,
}

/// Where a batch of events comes from when a queue delivers it: entry `seq` of queue `origin`. A session applies
/// each queue's entries once: one whose `seq` is not above the highest it applied from `origin` is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue (a node's or store's outbox id).
    pub origin: Box<str>,
    /// The entry's sequence number in that queue.
    pub seq: u64,
}

/// A session being moved to another node: the shopper and their context.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTransfer {
    /// The shopper.
    pub shopper_id: Box<str>,
    /// Their session.
    pub context: SessionContext,
}

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Sessions held.
    pub sessions: usize,
    /// Approximate heap bytes of the sessions' contexts.
    pub heap_bytes: usize,
}

/// Messages of a [`SessionShard`].
pub enum SessionMsg {
    /// Apply events, in order, to one shopper's session (creating it on first use).
    Apply {
        /// The shopper.
        shopper_id: Box<str>,
        /// The events, in order.
        events: Vec<ShopperEvent>,
        /// The catalog the events were resolved against.
        catalog: Arc<Catalog>,
        /// Set when a queue delivers the events: applied only if this entry was not applied before.
        delivery: Option<Delivery>,
        /// The outcome.
        reply: RpcReplyPort<Result<Applied, SessionError>>,
    },
    /// Read a shopper's session; `None` when the shopper has no active session.
    View {
        /// The shopper.
        shopper_id: Box<str>,
        /// The view, or `NotOwner`.
        reply: RpcReplyPort<Result<Option<SessionView>, SessionError>>,
    },
    /// A copy of a shopper's whole session (data-access requests); `None` when there is none.
    Describe {
        /// The shopper.
        shopper_id: Box<str>,
        /// The session, or `NotOwner`.
        reply: RpcReplyPort<Result<Option<SessionContext>, SessionError>>,
    },
    /// Erase a shopper's session; replies whether one existed.
    Forget {
        /// The shopper.
        shopper_id: Box<str>,
        /// Whether a session existed.
        reply: RpcReplyPort<bool>,
    },
    /// Remove and return the sessions whose shopper matches (hand-off to another node).
    Export {
        /// Which shoppers leave.
        select: Box<dyn Fn(&str) -> bool + Send>,
        /// The sessions removed.
        reply: RpcReplyPort<Vec<SessionTransfer>>,
    },
    /// Install sessions handed over by another node (replacing any local session of the same shopper).
    Import {
        /// The sessions.
        sessions: Vec<SessionTransfer>,
        /// How many were installed.
        reply: RpcReplyPort<usize>,
    },
    /// Drop sessions idle for longer than the TTL.
    Passivate,
    /// Report counters.
    Stats(RpcReplyPort<ShardStats>),
    /// Panic while handling this message (supervision tests).
    #[cfg(test)]
    CrashShard,
    /// Panic while applying an event to this shopper's session (supervision tests).
    #[cfg(test)]
    CrashSession(Box<str>, RpcReplyPort<Result<Applied, SessionError>>),
}

/// One session of a shard.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) context: SessionContext,
    last_active: Instant,
}

/// The sessions of one shard: written by the shard actor only, read by anyone.
///
/// Lock poisoning is ignored: a write that panics (applying an event) is caught inside the lock and the session it
/// touched is dropped, so the table is never left half-updated by a panic.
#[derive(Debug, Default)]
pub struct SessionTable(RwLock<HashMap<Box<str>, Entry>>);

impl SessionTable {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Entry>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Entry>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The actor owning the sessions of one shard of shoppers.
#[derive(Debug, Clone, Copy)]
pub struct SessionShard;

/// State of a [`SessionShard`].
pub struct ShardState {
    index: usize,
    settings: SessionSettings,
    gate: OwnerGate,
    /// The sessions, shared with readers.
    table: Arc<SessionTable>,
    /// This shard's session count, read by the node for the `aisle_active_sessions` gauge.
    count: Arc<AtomicUsize>,
}

impl ShardState {
    fn publish_count(&self, sessions: usize) {
        self.count.store(sessions, Ordering::Relaxed);
    }

    fn remove(&mut self, shopper_id: &str) -> Option<Entry> {
        let mut sessions = self.table.write();
        let removed = sessions.remove(shopper_id);
        self.publish_count(sessions.len());
        removed
    }

    fn insert(&mut self, shopper_id: Box<str>, context: SessionContext) {
        let mut sessions = self.table.write();
        sessions.insert(
            shopper_id,
            Entry {
                context,
                last_active: Instant::now(),
            },
        );
        Self::bound(&mut sessions, self.settings.max_sessions_per_shard);
        self.publish_count(sessions.len());
    }

    /// Beyond `max` sessions, passivates the least recently active: down to seven eighths of `max` at once, so a
    /// flood of new shoppers costs amortised constant work per session.
    fn bound(sessions: &mut HashMap<Box<str>, Entry>, max: usize) {
        if sessions.len() <= max {
            return;
        }
        let keep = max - max / 8;
        let drop_n = sessions.len() - keep;
        let mut ages: Vec<Instant> = sessions.values().map(|e| e.last_active).collect();
        let (_, newest_dropped, _) = ages.select_nth_unstable(drop_n - 1);
        let newest_dropped = *newest_dropped;
        let mut dropped = 0;
        sessions.retain(|_, e| {
            let go = dropped < drop_n && e.last_active <= newest_dropped;
            dropped += usize::from(go);
            !go
        });
        metrics::counter!("aisle_sessions_evicted_total").increment(dropped as u64);
    }

    /// Installs a handed-off session unless the local copy was written at the same time or later. Returns whether it was installed.
    fn import(&mut self, shopper_id: Box<str>, mut context: SessionContext) -> bool {
        // A session from elsewhere is held to this node's limits, like every session applied here.
        context.bound(&self.settings.limits);
        let newer_here = self
            .table
            .read()
            .get(&shopper_id)
            .is_some_and(|e| e.context.version() >= context.version());
        if newer_here {
            metrics::counter!("aisle_handoff_sessions_stale_total").increment(1);
            return false;
        }
        self.insert(shopper_id, context);
        true
    }

    fn apply(
        &mut self,
        shopper_id: Box<str>,
        events: &[ShopperEvent],
        catalog: &Catalog,
        delivery: Option<&Delivery>,
    ) -> Result<Applied, SessionError> {
        let settings = self.settings;
        let mut sessions = self.table.write();
        if let Some(d) = delivery
            && sessions
                .get(&shopper_id)
                .is_some_and(|e| e.context.delivered(&d.origin) >= d.seq)
        {
            return Ok(Applied {
                created: false,
                signals: Vec::new(),
                loggable: vec![false; events.len()],
                duplicate: true,
            });
        }
        let created = !sessions.contains_key(&shopper_id);
        if created {
            sessions.insert(
                shopper_id.clone(),
                Entry {
                    context: SessionContext::new(),
                    last_active: Instant::now(),
                },
            );
        }
        let entry = sessions.get_mut(&shopper_id).expect("just inserted");
        entry.last_active = Instant::now();
        let context = &mut entry.context;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut signals = Vec::new();
            let mut loggable = Vec::with_capacity(events.len());
            for event in events {
                signals.extend(context.apply(event, catalog, &settings.limits, &settings.assist));
                loggable.push(context.consents(event.default_consent));
            }
            if let Some(d) = delivery {
                context.mark_delivered(&d.origin, d.seq);
            }
            context.stamp_version(aisle_domain::now_ms().max(0) as u64);
            (signals, loggable)
        }));
        if created {
            Self::bound(&mut sessions, settings.max_sessions_per_shard);
        }
        let len = sessions.len();
        drop(sessions);
        self.publish_count(len);
        match outcome {
            Ok((signals, loggable)) => Ok(Applied {
                created,
                signals,
                loggable,
                duplicate: false,
            }),
            Err(_) => {
                self.reset_after_panic(&shopper_id);
                Err(SessionError::Reset)
            }
        }
    }

    fn reset_after_panic(&mut self, shopper_id: &str) {
        // The context may be half-updated: drop it rather than serve from it.
        self.remove(shopper_id);
        metrics::counter!("aisle_session_resets_total").increment(1);
        tracing::error!(
            shard = self.index,
            "session reset after a panic while applying events"
        );
    }
}

impl Actor for SessionShard {
    type Msg = SessionMsg;
    type State = ShardState;
    type Arguments = (
        usize,
        SessionSettings,
        Arc<AtomicUsize>,
        OwnerGate,
        Arc<SessionTable>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (index, settings, count, gate, table): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(settings.passivation_interval, || SessionMsg::Passivate);
        // A shard restarted after a failure starts empty: what its predecessor held may be half-updated.
        table.write().clear();
        count.store(0, Ordering::Relaxed);
        Ok(ShardState {
            index,
            settings,
            gate,
            table,
            count,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Apply {
                shopper_id,
                events,
                catalog,
                delivery,
                reply,
            } => {
                let outcome = if (state.gate)(&shopper_id) {
                    state.apply(shopper_id, &events, &catalog, delivery.as_ref())
                } else {
                    Err(SessionError::NotOwner)
                };
                let _ = reply.send(outcome);
            }
            SessionMsg::View { shopper_id, reply } => {
                let view = if (state.gate)(&shopper_id) {
                    Ok(state
                        .table
                        .read()
                        .get(&shopper_id)
                        .map(|e| e.context.view(&state.settings.limits)))
                } else {
                    Err(SessionError::NotOwner)
                };
                let _ = reply.send(view);
            }
            SessionMsg::Describe { shopper_id, reply } => {
                let found = if (state.gate)(&shopper_id) {
                    Ok(state
                        .table
                        .read()
                        .get(&shopper_id)
                        .map(|e| e.context.clone()))
                } else {
                    Err(SessionError::NotOwner)
                };
                let _ = reply.send(found);
            }
            SessionMsg::Forget { shopper_id, reply } => {
                let _ = reply.send(state.remove(&shopper_id).is_some());
            }
            SessionMsg::Export { select, reply } => {
                let leaving: Vec<Box<str>> = state
                    .table
                    .read()
                    .keys()
                    .filter(|k| select(k))
                    .cloned()
                    .collect();
                let out = leaving
                    .into_iter()
                    .filter_map(|k| {
                        state.remove(&k).map(|e| SessionTransfer {
                            shopper_id: k,
                            context: e.context,
                        })
                    })
                    .collect();
                let _ = reply.send(out);
            }
            SessionMsg::Import { sessions, reply } => {
                let mut installed = 0;
                for s in sessions {
                    installed += usize::from(state.import(s.shopper_id, s.context));
                }
                let _ = reply.send(installed);
            }
            SessionMsg::Passivate => {
                let ttl = state.settings.idle_ttl;
                let now = Instant::now();
                let mut sessions = state.table.write();
                let before = sessions.len();
                // A refusal of consent outlives idleness: it must bind the shopper's next decision however late
                // it comes. What it keeps is the refusal and two counters; only the `max_sessions` cap (or
                // erasure) removes it.
                sessions.retain(|_, e| {
                    e.context.consent() == Some(false) || now.duration_since(e.last_active) < ttl
                });
                let after = sessions.len();
                drop(sessions);
                let passivated = before - after;
                if passivated > 0 {
                    state.publish_count(after);
                    metrics::counter!("aisle_sessions_passivated_total")
                        .increment(passivated as u64);
                }
            }
            SessionMsg::Stats(reply) => {
                let sessions = state.table.read();
                let stats = ShardStats {
                    sessions: sessions.len(),
                    heap_bytes: sessions.values().map(|e| e.context.heap_bytes()).sum(),
                };
                drop(sessions);
                let _ = reply.send(stats);
            }
            #[cfg(test)]
            SessionMsg::CrashShard => panic!("injected shard crash"),
            #[cfg(test)]
            SessionMsg::CrashSession(shopper_id, reply) => {
                let known = state.table.read().contains_key(&shopper_id);
                if !known {
                    state.insert(shopper_id.clone(), SessionContext::new());
                }
                let outcome = std::panic::catch_unwind(|| panic!("injected session crash"));
                let result: Result<Applied, SessionError> = match outcome {
                    Ok(()) => unreachable!(),
                    Err(_) => {
                        state.reset_after_panic(&shopper_id);
                        Err(SessionError::Reset)
                    }
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
