//! Session replication: each session a node owns is copied, asynchronously and in batches, to the member that
//! takes it over should the owner fail — the next in rendezvous order ([`super::View::owner_without`]). After a
//! crash, the new owner installs the copy before it serves the shopper, so what `Track` acknowledged survives.
//!
//! - **Sender.** Applying events (or installing a handed-off session) marks the shopper *pending*; every
//!   `interval` the replicator copies the pending sessions it still owns out of the session tables (no message to
//!   the session actors, no hop on the request path) and sends them, batched per successor, over the peer port.
//!   A failed send leaves them pending for the next round. After a view change every held session is pending
//!   again: successors change with the view.
//! - **Receiver.** It keeps a replica when the sender owns the shopper under the receiver's own view and the
//!   receiver is the successor; a replica never replaces one of a later version, and a tombstone (an erased
//!   shopper) refuses it. Replicas are bounded (`max_sessions`) and expire after the session idle TTL, as their
//!   sessions do.
//! - **Failover.** When a view drops a member, the new owner of each of its shoppers installs the replica it
//!   holds before the view's barrier begins ([`Replication::adopt`]); the usual import rule applies (a local copy
//!   of the same or a later version stays).
//!
//! What a replica can miss: the writes of the last `interval` (plus a send) before a crash or a pause past the
//! lease (SIGKILL, SIGSTOP, a frozen VM) — the lag, exported as `aisle_replication_lag_seconds` — and everything
//! when the owner and its successor fail together. A node that fences itself (cut off from etcd) sends one last
//! round under its last view first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_proto::v1 as pb;
use tokio::time::Instant;

use super::{Cluster, SharedView};
use crate::engine::shoppers::Shoppers;

/// Sessions per replication message.
const BATCH: usize = 500;
/// Sessions copied per round at most (the rest wait for the next round).
const ROUND: usize = 20_000;
/// How long a replication message may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often expired replicas are swept.
const SWEEP: Duration = Duration::from_secs(10);

/// A copy of a session owned by another member.
#[derive(Debug)]
struct Replica {
    /// The owner that sent it.
    from: String,
    version: u64,
    /// The portable session, serialized.
    context: Vec<u8>,
    /// When it was last refreshed.
    at: Instant,
}

/// This node's side of session replication: what it owes its successors, and the replicas it keeps for others.
#[derive(Debug)]
pub struct Replication {
    /// How often pending sessions are sent; `None`: replication off.
    interval: Option<Duration>,
    /// Shoppers whose session changed since it was last sent, with when it first did.
    pending: Mutex<HashMap<Box<str>, Instant>>,
    replicas: Mutex<HashMap<Box<str>, Replica>>,
    max_replicas: usize,
    /// A replica not refreshed for this long is dropped (its session was passivated by now).
    retention: Duration,
}

impl Replication {
    /// Replication every `interval` (`None`: off), keeping at most `max_replicas` for at most `retention` each.
    pub fn new(interval: Option<Duration>, max_replicas: usize, retention: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            pending: Mutex::default(),
            replicas: Mutex::default(),
            max_replicas,
            retention,
        })
    }

    /// Replication off (static mode).
    pub fn off() -> Arc<Self> {
        Self::new(None, 0, Duration::ZERO)
    }

    /// Whether sessions are replicated.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Instant>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn replicas(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Replica>> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shopper's session changed here: send it at the next round.
    pub fn mark(&self, shopper_id: &str) {
        if self.enabled() {
            self.pending()
                .entry(shopper_id.into())
                .or_insert_with(Instant::now);
        }
    }

    /// Every one of these sessions is to be sent again (their successors may have changed).
    pub fn mark_all(&self, shoppers: Vec<Box<str>>) {
        if self.enabled() {
            let now = Instant::now();
            let mut pending = self.pending();
            for s in shoppers {
                pending.entry(s).or_insert(now);
            }
        }
    }

    /// Erasure: drops what this node holds or owes of the shopper. Returns whether a replica was held.
    pub fn forget(&self, shopper_id: &str) -> bool {
        self.pending().remove(shopper_id);
        self.replicas().remove(shopper_id).is_some()
    }

    /// Replicas held now.
    pub fn held(&self) -> usize {
        self.replicas().len()
    }

    /// Takes up to `n` pending shoppers, oldest first.
    fn take_pending(&self, n: usize) -> Vec<(Box<str>, Instant)> {
        let mut pending = self.pending();
        if pending.len() <= n {
            return pending.drain().collect();
        }
        let mut all: Vec<(Box<str>, Instant)> = pending.drain().collect();
        all.sort_unstable_by_key(|(_, since)| *since);
        let rest = all.split_off(n);
        pending.extend(rest);
        all
    }

    /// Puts shoppers back as pending (their send failed), keeping when they first changed.
    fn restore(&self, shoppers: impl IntoIterator<Item = (Box<str>, Instant)>) {
        let mut pending = self.pending();
        for (s, since) in shoppers {
            let at = pending.entry(s).or_insert(since);
            *at = (*at).min(since);
        }
    }

    /// How long the oldest unsent change has waited.
    fn lag(&self) -> Duration {
        self.pending()
            .values()
            .min()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Stores replicas `from` sent, for the shoppers `keep` accepts (the receiver's checks: ownership under its
    /// view, tombstones). A replica of a later version than the record is kept. Returns how many were stored.
    pub fn accept(
        &self,
        from: &str,
        records: Vec<pb::SessionRecord>,
        keep: impl Fn(&pb::SessionRecord) -> bool,
    ) -> usize {
        let now = Instant::now();
        let mut replicas = self.replicas();
        let mut stored = 0;
        for r in records {
            if !keep(&r) {
                continue;
            }
            if let Some(held) = replicas.get_mut(r.shopper_id.as_str()) {
                if held.version <= r.version {
                    *held = Replica {
                        from: from.to_string(),
                        version: r.version,
                        context: r.context,
                        at: now,
                    };
                    stored += 1;
                }
                continue;
            }
            if replicas.len() >= self.max_replicas {
                metrics::counter!("aisle_replicas_refused_total", "reason" => "full").increment(1);
                continue;
            }
            replicas.insert(
                r.shopper_id.into(),
                Replica {
                    from: from.to_string(),
                    version: r.version,
                    context: r.context,
                    at: now,
                },
            );
            stored += 1;
        }
        metrics::gauge!("aisle_replicas_held").set(replicas.len() as f64);
        stored
    }

    /// At a new view: takes the replicas of the shoppers this node now owns whose owner left the view (to be
    /// installed before the view's barrier begins), and drops those this node is no longer the successor for.
    pub fn adopt(&self, view: &SharedView, me: &str) -> Vec<pb::SessionRecord> {
        let mut adopted = Vec::new();
        let mut replicas = self.replicas();
        replicas.retain(|shopper, r| {
            let owner = view.shopper_owner(shopper).map(|m| m.node_id.as_str());
            if owner == Some(me) && view.member(&r.from).is_none() {
                adopted.push(pb::SessionRecord {
                    shopper_id: shopper.to_string(),
                    context: std::mem::take(&mut r.context),
                    version: r.version,
                });
                return false;
            }
            owner == Some(r.from.as_str())
                && view
                    .owner_without("shopper", shopper, &r.from)
                    .is_some_and(|m| m.node_id == me)
        });
        metrics::gauge!("aisle_replicas_held").set(replicas.len() as f64);
        adopted
    }

    /// Drops replicas not refreshed within the retention.
    fn sweep(&self) {
        let retention = self.retention;
        let mut replicas = self.replicas();
        replicas.retain(|_, r| r.at.elapsed() < retention);
        metrics::gauge!("aisle_replicas_held").set(replicas.len() as f64);
    }
}

/// The successor's side: keeps the copies `from` sent of the sessions it owns under `view` (this node's view, the
/// sender's too) when this node is their successor — never a copy of a forgotten shopper. Returns how many were
/// kept.
pub fn receive(
    cluster: &Cluster,
    shoppers: &Shoppers,
    view: &SharedView,
    from: &str,
    records: Vec<pb::SessionRecord>,
) -> usize {
    let me = cluster.node_id.as_str();
    let check_tombstones = !shoppers.tombstones.is_empty();
    cluster.replication.accept(from, records, |r| {
        view.shopper_owner(&r.shopper_id)
            .is_some_and(|m| m.node_id == from)
            && view
                .owner_without("shopper", &r.shopper_id, from)
                .is_some_and(|m| m.node_id == me)
            && !(check_tombstones
                && shoppers
                    .tombstones
                    .blocks(&shoppers.pseudonyms.of(&r.shopper_id), r.version))
    })
}

/// Sends pending sessions to their successors every interval, for the life of the node (returns at once when
/// replication is off).
pub async fn run(holdings: super::handoff::Holdings, cluster: Arc<Cluster>) {
    let replication = cluster.replication.clone();
    let Some(interval) = replication.interval else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    // The view of the last round: when this node fences itself, one last round under it sends what changed since.
    // The fence comes a margin before the lease can lapse, so the successors still hold that view and accept it.
    let mut last: Option<SharedView> = None;
    loop {
        tick.tick().await;
        if swept.elapsed() >= SWEEP {
            replication.sweep();
            swept = Instant::now();
        }
        match cluster.current() {
            Some(view) => {
                round(&holdings, &cluster, &view).await;
                last = Some(view);
            }
            None => {
                if let Some(view) = last.take() {
                    round(&holdings, &cluster, &view).await;
                }
            }
        }
        metrics::gauge!("aisle_replication_lag_seconds").set(replication.lag().as_secs_f64());
    }
}

/// One round: copies the pending sessions this node owns and sends them, per successor.
async fn round(holdings: &super::handoff::Holdings, cluster: &Cluster, view: &SharedView) {
    let replication = &cluster.replication;
    let me = cluster.node_id.as_str();
    let catalog = holdings.bundles.world().catalog.clone();
    let mut by_successor: HashMap<&str, Vec<(pb::SessionRecord, Instant)>> = HashMap::new();
    for (shopper, since) in replication.take_pending(ROUND) {
        if view.shopper_owner(&shopper).is_none_or(|m| m.node_id != me) {
            continue;
        }
        let Some(successor) = view.owner_without("shopper", &shopper, me) else {
            continue;
        };
        // No session any more (passivated, erased): nothing to send; the replica expires or was erased.
        let Some(context) = holdings.shoppers.sessions.snapshot_now(&shopper) else {
            continue;
        };
        let record = pb::SessionRecord {
            shopper_id: shopper.to_string(),
            context: serde_json::to_vec(&context.to_portable(&catalog))
                .expect("sessions serialise"),
            version: context.version(),
        };
        by_successor
            .entry(successor.addr.as_str())
            .or_default()
            .push((record, since));
    }
    for (addr, records) in by_successor {
        for chunk in records.chunks(BATCH) {
            let request = pb::ReplicateSessionsRequest {
                from_node: me.to_string(),
                epoch: view.epoch,
                view_fingerprint: view.fingerprint,
                sessions: chunk.iter().map(|(r, _)| r.clone()).collect(),
            };
            let mut call = tonic::Request::new(request);
            call.set_timeout(SEND_TIMEOUT);
            let sent = match cluster.peers.client(addr) {
                Ok(mut client) => client.replicate_sessions(call).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    metrics::counter!("aisle_replication_sessions_total", "result" => "sent")
                        .increment(chunk.len() as u64);
                }
                Err(e) => {
                    metrics::counter!("aisle_replication_sessions_total", "result" => "failed")
                        .increment(chunk.len() as u64);
                    tracing::debug!(peer = addr, error = %e, sessions = chunk.len(),
                        "replication failed; sending again next round");
                    replication.restore(
                        chunk
                            .iter()
                            .map(|(r, since)| (r.shopper_id.as_str().into(), *since)),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::testing::view;

    fn record(shopper: &str, version: u64) -> pb::SessionRecord {
        pb::SessionRecord {
            shopper_id: shopper.into(),
            context: format!("v{version}").into_bytes(),
            version,
        }
    }

    #[test]
    fn a_replica_never_goes_back_in_version_and_the_bound_holds() {
        let r = Replication::new(Some(Duration::from_millis(200)), 2, Duration::from_secs(60));
        assert_eq!(r.accept("a", vec![record("s1", 5)], |_| true), 1);
        assert_eq!(r.accept("a", vec![record("s1", 4)], |_| true), 0);
        assert_eq!(r.accept("a", vec![record("s1", 6)], |_| true), 1);
        assert_eq!(r.replicas()["s1"].context, b"v6");
        assert_eq!(
            r.accept("a", vec![record("s2", 1), record("s3", 1)], |_| true),
            1
        );
        assert_eq!(r.held(), 2);
        assert_eq!(
            r.accept("a", vec![record("s4", 1)], |s| s.shopper_id != "s4"),
            0
        );
        assert!(r.forget("s1"));
        assert!(!r.forget("s1"));
    }

    #[test]
    fn pending_sessions_are_sent_oldest_first_and_a_failed_send_keeps_their_age() {
        let r = Replication::new(
            Some(Duration::from_millis(200)),
            10,
            Duration::from_secs(60),
        );
        r.mark("old");
        let old_since = r.pending()["old"];
        r.mark("new");
        r.mark("old");
        assert_eq!(
            r.pending()["old"],
            old_since,
            "a later write keeps the first mark"
        );
        let taken = r.take_pending(1);
        assert_eq!(taken[0].0.as_ref(), "old");
        assert_eq!(r.pending().len(), 1);
        r.restore(taken);
        assert_eq!(r.pending()["old"], old_since);
        // Off: nothing is tracked.
        let off = Replication::off();
        off.mark("s");
        assert!(off.pending().is_empty());
    }

    #[test]
    fn the_successor_adopts_a_departed_owners_replicas_and_drops_the_others() {
        let before = view(1, &["a", "b", "c"]);
        // Shoppers owned by a with b as successor, and one owned by c with b as successor.
        let of = |owner: &str| {
            (0..10_000)
                .map(|i| format!("s{i}"))
                .find(|s| {
                    before.shopper_owner(s).unwrap().node_id == owner
                        && before.owner_without("shopper", s, owner).unwrap().node_id == "b"
                })
                .unwrap()
        };
        let (from_a, from_c) = (of("a"), of("c"));
        let r = Replication::new(
            Some(Duration::from_millis(200)),
            10,
            Duration::from_secs(60),
        );
        r.accept("a", vec![record(&from_a, 3)], |_| true);
        r.accept("c", vec![record(&from_c, 3)], |_| true);
        // a crashes: b owns a's shopper now and adopts its replica; c's replica stays (c still owns it, b is still
        // its successor).
        let after = view(2, &["b", "c"]);
        let adopted = r.adopt(&after, "b");
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].shopper_id, from_a);
        assert_eq!(adopted[0].version, 3);
        assert_eq!(r.held(), 1);
        // d joins and becomes c's shopper's successor (or owner): b's replica goes once it is not the successor.
        let joined = view(3, &["b", "c", "d"]);
        let still_successor = joined.shopper_owner(&from_c).unwrap().node_id == "c"
            && joined
                .owner_without("shopper", &from_c, "c")
                .unwrap()
                .node_id
                == "b";
        assert!(r.adopt(&joined, "b").is_empty());
        assert_eq!(r.held(), usize::from(still_successor));
    }
}
