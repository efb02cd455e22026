//! The cluster as the rest of the node sees it: the current view (or none, while this node is not a member or is
//! fenced), who owns a shopper or a store, the hand-off barrier, and clients to the peers.
//!
//! - [`view`]: views and rendezvous placement (pure).
//! - [`membership`]: etcd membership — with the control records, the only modules that see etcd types.
//! - [`routing`]: running a request at its shopper's (or store's) owner, on both sides of a forward.
//! - [`fanout`]: asking every other member at once.
//! - [`peers`]: connections to the other nodes.
//! - [`barrier`], [`handoff`], [`replication`]: moving sessions when ownership changes, and keeping copies at the
//!   successors for when an owner fails.
//!
//! In static mode (the default) the view is this node alone at epoch 0, forever.
//!
//! **One owner per shopper.** A node answers FRESH for a shopper only while it holds its membership (before its
//! fence deadline) and owns the shopper under its current view; a forwarded request must carry the receiver's
//! epoch. Two nodes at the same epoch have the same view, hence the same owner.
//!
//! **Hand-off barrier.** After a view change, sessions move from their previous owners to their new ones
//! ("seal → transfer → serve"): every node exports the sessions it no longer owns, then tells every other member
//! it is done for that epoch. A node serves a shopper it did not own under its previous view only once that
//! shopper's previous owner is done, or has left the view (see [`barrier`]); until then, requests for such
//! shoppers wait, or are answered by the fallback ladder within their deadline.
//!
//! **Through an etcd outage.** A node that cannot renew its lease asks every other member of its view to hold
//! it ([`Cluster::hold_through_etcd_outages`]). A member grants the hold when it has the same view, and the grant
//! is a promise: should it adopt a view without the asker before the promise ends, it serves none of the asker's
//! shoppers until then. With every grant in hand the asker keeps its view — and ownership, FRESH — past its lease
//! deadline, for as long as the grants keep coming. A node that cannot reach etcd nor every peer fences itself as
//! before, and answers from the lower rungs.

pub mod barrier;
pub mod fanout;
pub mod handoff;
pub mod membership;
pub mod peers;
pub mod replication;
pub mod routing;
pub mod view;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use barrier::{Barrier, Gate};
pub use membership::{Membership, MembershipConfig};
pub use peers::Peers;
pub use replication::Replication;
pub use routing::{AtOwner, Key, LocalError, Routed, Router, Sender};
pub use view::{Member, SharedView, View};

/// Why nobody can own a shopper now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unowned {
    /// This node is not a cluster member (not joined yet, or fenced).
    NotMember,
    /// No member owns shoppers (every member is leaving).
    NoOwner,
}

/// Where a key's requests go.
#[derive(Debug, Clone)]
pub enum Route {
    /// This node owns the key.
    Local(SharedView),
    /// Another member owns the key.
    Remote(SharedView, Member),
    /// Nobody can own the key now.
    Unowned(Unowned),
}

/// The cluster handle.
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// The address peers reach this node at.
    pub advertise_addr: String,
    views: watch::Receiver<Option<SharedView>>,
    membership: Option<Arc<Membership>>,
    /// Views change (etcd membership, or views fed by a test): the hand-off barrier applies.
    dynamic: bool,
    /// Clients to the peers.
    pub peers: Arc<Peers>,
    /// Session copies sent to successors and kept for others.
    pub replication: Arc<Replication>,
    barrier: Mutex<Barrier>,
    barrier_done: Notify,
    /// The last epoch whose hand-off this node completed.
    handed_off: watch::Sender<u64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A node alone (static mode).
    pub fn alone(node_id: &str, addr: &str) -> Arc<Self> {
        let (_tx, views) = watch::channel(Some(Arc::new(View::alone(node_id, addr))));
        // The sender is dropped: the view never changes.
        Self::new(
            node_id,
            addr,
            views,
            None,
            false,
            Peers::new(node_id),
            Replication::off(),
        )
    }

    /// A node whose membership is kept in etcd.
    pub fn with_etcd(
        config: MembershipConfig,
        peers: Peers,
        replication: Arc<Replication>,
    ) -> Arc<Self> {
        let node_id = config.node_id.clone();
        let addr = config.advertise_addr.clone();
        let (membership, views) = Membership::start(config);
        Self::new(
            &node_id,
            &addr,
            views,
            Some(membership),
            true,
            peers,
            replication,
        )
    }

    /// A node whose views come from the given channel, with the hand-off barrier (routing tests feed views
    /// without etcd).
    pub fn with_views(
        node_id: &str,
        addr: &str,
        views: watch::Receiver<Option<SharedView>>,
    ) -> Arc<Self> {
        Self::new(
            node_id,
            addr,
            views,
            None,
            true,
            Peers::new(node_id),
            Replication::off(),
        )
    }

    fn new(
        node_id: &str,
        addr: &str,
        views: watch::Receiver<Option<SharedView>>,
        membership: Option<Arc<Membership>>,
        dynamic: bool,
        peers: Peers,
        replication: Arc<Replication>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id: node_id.to_string(),
            advertise_addr: addr.to_string(),
            views,
            membership,
            dynamic,
            peers: Arc::new(peers),
            replication,
            barrier: Mutex::new(Barrier::new(node_id)),
            barrier_done: Notify::new(),
            handed_off: watch::channel(0).0,
        })
    }

    /// Whether membership is in etcd.
    pub fn is_clustered(&self) -> bool {
        self.membership.is_some()
    }

    fn barrier(&self) -> std::sync::MutexGuard<'_, Barrier> {
        self.barrier.lock().expect("barrier lock")
    }

    /// The current view, if this node is a member and within its lease (never a view it could no longer vouch
    /// for: the fence deadline is checked against the clock on every call).
    pub fn current(&self) -> Option<SharedView> {
        if let Some(m) = &self.membership
            && !m.fence.holds()
        {
            return None;
        }
        self.views.borrow().clone()
    }

    /// A receiver of view changes.
    pub fn views(&self) -> watch::Receiver<Option<SharedView>> {
        self.views.clone()
    }

    /// The current epoch (0 when not a member).
    pub fn epoch(&self) -> u64 {
        self.current().map_or(0, |v| v.epoch)
    }

    /// Whether this node owns the shopper now.
    pub fn owns(&self, shopper_id: &str) -> bool {
        self.current()
            .and_then(|v| {
                v.shopper_owner(shopper_id)
                    .map(|m| m.node_id == self.node_id)
            })
            .unwrap_or(false)
    }

    /// Where a key's requests go now.
    pub fn route(&self, key: Key<'_>) -> Route {
        let Some(view) = self.current() else {
            return Route::Unowned(Unowned::NotMember);
        };
        match key.owner_in(&view) {
            Some(m) if m.node_id == self.node_id => Route::Local(view),
            Some(m) => {
                let m = m.clone();
                Route::Remote(view, m)
            }
            None => Route::Unowned(Unowned::NoOwner),
        }
    }

    /// Whether `node_id` is a member of this node's view, or of the view before it (a member that left still
    /// hands its sessions off). Waits up to `wait` for a view naming it: a joining node may send its first messages
    /// before this node sees the view that admits it.
    pub async fn knows_peer(&self, node_id: &str, wait: Duration) -> bool {
        let named =
            |v: &Option<SharedView>| v.as_ref().is_some_and(|v| v.member(node_id).is_some());
        if named(&self.views.borrow()) || named(&self.previous_view()) {
            return true;
        }
        let mut views = self.views.clone();
        tokio::time::timeout(wait, views.wait_for(named))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts the barrier of a new view (called by the view-change task before it hands sessions off).
    pub fn begin_epoch(&self, view: &SharedView) {
        self.barrier().begin(view);
        // Callers waiting for this view's barrier to begin, or for it to open, look again.
        self.barrier_done.notify_waiters();
    }

    /// This node stopped being a member (fenced): it holds no sessions any more, so after rejoining every
    /// shopper it owns is newly owned.
    pub fn reset_epochs(&self) {
        self.barrier().reset();
    }

    /// Records that `from` finished handing sessions off for the view with this fingerprint.
    pub fn done_from(&self, from: &str, fingerprint: u64) {
        if self.barrier().done_from(from, fingerprint) {
            self.barrier_done.notify_waiters();
        }
    }

    /// Whether the shopper can be served now under `view`, waiting (up to `deadline`) for the hand-off barrier
    /// when the shopper is newly owned. False when the deadline comes first or the view changed meanwhile.
    pub async fn ready_for(&self, shopper_id: &str, view: &SharedView, deadline: Instant) -> bool {
        if !self.dynamic {
            return true;
        }
        loop {
            let notified = self.barrier_done.notified();
            let until = match self.barrier().gate(shopper_id, view, Instant::now()) {
                Gate::Open => return true,
                // The view is current but its barrier has not begun yet (the view-change task is still busy
                // with the previous view): wait for it to begin rather than refuse.
                Gate::Changed
                    if self
                        .current()
                        .is_some_and(|c| c.fingerprint == view.fingerprint) =>
                {
                    deadline.min(Instant::now() + Duration::from_millis(100))
                }
                Gate::Changed => return false,
                Gate::Awaiting => deadline,
                Gate::WaitUntil(until) => until.min(deadline),
            };
            if Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// The view this node served under before the current one.
    pub fn previous_view(&self) -> Option<SharedView> {
        self.barrier().previous().cloned()
    }

    /// Members still awaited by the current barrier (for status reports).
    pub fn awaiting(&self) -> Vec<String> {
        self.barrier().awaiting()
    }

    /// Records that this node finished handing sessions off for `epoch`.
    pub fn handed_off(&self, epoch: u64) {
        self.handed_off.send_replace(epoch);
    }

    /// Waits (up to `timeout`) until this node has handed sessions off for `epoch` or later.
    pub async fn wait_handed_off(&self, epoch: u64, timeout: Duration) -> bool {
        let mut rx = self.handed_off.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|e| *e >= epoch))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Leaves gracefully: mark this node leaving and wait for the view to show it (the caller then hands its
    /// sessions off and calls [`Cluster::leave`]).
    pub async fn mark_leaving(&self, timeout: Duration) {
        if let Some(m) = &self.membership {
            let mut views = self.views.clone();
            m.mark_leaving(&mut views, timeout).await;
        }
    }

    /// Whether this node's writes are at risk (see [`Membership::at_risk`]): never on a node without etcd.
    pub fn writes_at_risk(&self) -> bool {
        self.membership.as_ref().is_some_and(|m| m.at_risk())
    }

    /// A member cut off from etcd asks this node to hold its view (`fingerprint`): granted, for how long, when
    /// this node is a member with the same view, `from` is another member of it, and this node cannot reach etcd
    /// either (its own keep-alives are late). A node that reaches etcd refuses: etcd is up, so the asker's lease
    /// will lapse and its shoppers move, as for any node cut off alone. The grant is a promise recorded in the
    /// barrier (none of `from`'s shoppers is served here before it ends).
    pub fn grant_hold(&self, from: &str, fingerprint: u64) -> Option<Duration> {
        let membership = self.membership.as_ref()?;
        let view = self.current()?;
        if view.fingerprint != fingerprint
            || from == self.node_id
            || view.member(from).is_none()
            || !membership.etcd_late()
        {
            return None;
        }
        let hold = membership.lease_ttl();
        let now = Instant::now();
        self.barrier().promise(from, now + hold, now);
        Some(hold)
    }

    /// Keeps this node's view through an etcd outage, for the life of the node: whenever its lease deadline is
    /// less than half a TTL ahead (keep-alives are not being acknowledged), it asks every other member of its
    /// view for a hold ([`Cluster::grant_hold`]), once per tenth of a TTL. When every one grants it, the fence is
    /// extended to the moment the request was sent plus the shortest grant, less the fence margin. A node alone
    /// in its view has nobody to vouch for it and fences as before.
    pub async fn hold_through_etcd_outages(self: Arc<Self>) {
        let Some(membership) = self.membership.clone() else {
            return;
        };
        let ttl = membership.lease_ttl();
        let mut tick = tokio::time::interval(ttl / 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = false;
        loop {
            tick.tick().await;
            let late = membership
                .fence
                .lease_remaining()
                .is_some_and(|r| r < ttl / 2);
            let view = self.current();
            let (Some(view), true) = (view, late) else {
                if held && !membership.fence.held_by_peers() {
                    held = false;
                    metrics::gauge!("aisle_cluster_view_held_by_peers").set(0.0);
                    tracing::info!(node = %self.node_id, "view held by etcd again");
                }
                continue;
            };
            let sent = Instant::now();
            match self.ask_for_holds(&view, ttl / 10).await {
                Ok(grant) => {
                    membership
                        .fence
                        .hold_by_peers(sent + grant.saturating_sub(membership.fence_margin()));
                    metrics::counter!("aisle_cluster_peer_holds_total", "result" => "granted")
                        .increment(1);
                    if !held {
                        held = true;
                        metrics::gauge!("aisle_cluster_view_held_by_peers").set(1.0);
                        tracing::warn!(node = %self.node_id, epoch = view.epoch,
                            "etcd unreachable: view held by every peer's promise");
                    }
                }
                Err(why) => {
                    metrics::counter!("aisle_cluster_peer_holds_total", "result" => "refused")
                        .increment(1);
                    tracing::info!(node = %self.node_id, epoch = view.epoch, reason = %why,
                        "keep-alives late and the peers do not all hold this view (yet)");
                }
            }
        }
    }

    /// Asks every other member of `view` for a hold, all at once, each within `timeout`: the shortest grant, or why
    /// not.
    async fn ask_for_holds(
        &self,
        view: &SharedView,
        timeout: Duration,
    ) -> Result<Duration, String> {
        if view.members.iter().all(|m| m.node_id == self.node_id) {
            return Err("no other member to vouch for the view".into());
        }
        let request = aisle_proto::v1::HoldViewRequest {
            from_node: self.node_id.clone(),
            epoch: view.epoch,
            view_fingerprint: view.fingerprint,
        };
        let answers = fanout::ask_others(self, view, timeout, |mut client, _| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(timeout);
            async move {
                client
                    .hold_view(call)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await;
        let mut shortest = Duration::MAX;
        for (member, answer) in answers {
            let node = &member.node_id;
            match answer {
                Ok(r) if r.granted => shortest = shortest.min(Duration::from_millis(r.hold_ms)),
                Ok(r) => return Err(format!("{node} holds another view (epoch {})", r.epoch)),
                Err(e) => return Err(format!("{node}: {e}")),
            }
        }
        Ok(shortest)
    }

    /// Revokes this node's membership.
    pub async fn leave(&self) {
        if let Some(m) = &self.membership {
            m.leave().await;
        }
    }
}
