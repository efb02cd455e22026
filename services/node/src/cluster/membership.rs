//! Membership in etcd. Nothing outside this module sees etcd types: the rest of the node sees a stream of views
//! (`watch::Receiver<Option<SharedView>>`, `None` while this node is not a member) and a fence deadline.
//!
//! - Join: grant a lease (TTL 5 s by default), put `/aisle/<cluster>/members/<node>` = this node's address and
//!   incarnation under the lease, read the member list (linearizable), watch the prefix from revision + 1.
//!   Every request requires an etcd leader (`hasleader`), so an isolated etcd member cannot serve a stale view.
//! - Keep alive every TTL/4. Each acknowledged keep-alive proves the lease lives until at least the moment it
//!   was *sent* plus the TTL; the node stops acting as an owner (self-fences) a safety margin before that. The
//!   check is made by the request path against the clock, not by a timer, so a process paused past its deadline
//!   never answers as owner when it resumes.
//! - Watch: each event's revision must be above the last applied one, and a put or delete must follow the
//!   version of the key the view holds; a duplicate, backwards or missing revision, a compaction, a cancelled
//!   watch or a stream error all cause a fresh linearizable read. A periodic read double-checks the view.
//! - Unreachable etcd: while every other member of the view still holds the same view and promises to keep this
//!   node's shoppers (see [`super::Cluster::hold_through_etcd_outages`]), the fence holds on their word and the
//!   session waits for etcd to come back.
//! - Lost lease, or etcd and the peers unreachable: fence (the view becomes `None`), then rejoin with a new
//!   incarnation as soon as etcd answers — in a loop that never gives up.
//! - Leave (SIGTERM): mark the member `leaving` (it owns nothing from the next view on), let the caller hand
//!   sessions off, then revoke the lease (a dropped keeper does not remove the key).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::view::{Member, SharedView, View};

/// How membership is configured.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// Cluster name (key prefix).
    pub cluster: String,
    /// This node's id.
    pub node_id: String,
    /// Address peers use to reach this node.
    pub advertise_addr: String,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// TLS towards etcd: its CA and, for `--client-cert-auth`, this node's client certificate.
    pub tls: Option<crate::security::tls::ClientTlsFiles>,
    /// etcd user and password.
    pub user: Option<(String, String)>,
}

impl MembershipConfig {
    fn prefix(&self) -> String {
        format!("/aisle/{}/members/", self.cluster)
    }

    fn key(&self) -> String {
        format!("{}{}", self.prefix(), self.node_id)
    }

    /// Self-fence this long before the earliest moment the lease could expire.
    fn fence_margin(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(500))
    }
}

/// Shared state between the membership task and the request path: until when this node may act as a member.
///
/// Two deadlines: the lease's (from etcd keep-alives) and the peers' (granted by every other member of the view
/// while this node cannot reach etcd, see [`super::Cluster::hold_through_etcd_outages`]). The fence holds while
/// either is ahead.
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Fence deadline from the lease, µs since `origin`; 0: not joined.
    deadline_us: AtomicU64,
    /// Fence deadline from the peers' promises, µs since `origin`; 0: none.
    held_us: AtomicU64,
}

impl Fence {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            deadline_us: AtomicU64::new(0),
            held_us: AtomicU64::new(0),
        }
    }

    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros().max(1) as u64
    }

    fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }

    /// Sets the lease's deadline; `None` (not joined, fenced, left) also drops the peers' hold.
    fn set(&self, deadline: Option<Instant>) {
        if deadline.is_none() {
            self.held_us.store(0, Ordering::SeqCst);
        }
        self.deadline_us
            .store(deadline.map_or(0, |d| self.us(d)), Ordering::SeqCst);
    }

    /// Extends the fence to `until` on the peers' word (ignored when not joined: a lapsed fence is never revived).
    pub fn hold_by_peers(&self, until: Instant) {
        if self.holds() {
            self.held_us.fetch_max(self.us(until), Ordering::SeqCst);
        }
    }

    /// Whether this node may act as a member now: joined, and before one of its deadlines.
    pub fn holds(&self) -> bool {
        let d = self.deadline_us.load(Ordering::SeqCst);
        let now = self.now_us();
        d != 0 && (now < d || now < self.held_us.load(Ordering::SeqCst))
    }

    /// How long the lease's deadline is still ahead (`None` when not joined).
    pub fn lease_remaining(&self) -> Option<Duration> {
        let d = self.deadline_us.load(Ordering::SeqCst);
        (d != 0).then(|| Duration::from_micros(d.saturating_sub(self.now_us())))
    }

    /// Whether a promise of the peers is in force now (whatever the lease's deadline).
    pub fn peer_hold_active(&self) -> bool {
        self.now_us() < self.held_us.load(Ordering::SeqCst)
    }

    /// Whether the fence holds on the peers' word alone (the lease's deadline has passed).
    pub fn held_by_peers(&self) -> bool {
        self.holds() && self.lease_remaining().is_some_and(|r| r.is_zero())
    }

    /// Resolves once the fence no longer holds (checked every 100 ms).
    async fn lapsed(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if !self.holds() {
                return;
            }
        }
    }
}

/// The running membership of this node.
pub struct Membership {
    config: MembershipConfig,
    client: Mutex<Option<Client>>,
    lease: Mutex<Option<i64>>,
    /// The fence deadline.
    pub fence: Arc<Fence>,
    view_tx: watch::Sender<Option<SharedView>>,
    leaving: watch::Sender<bool>,
    incarnations: AtomicU64,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node", &self.config.node_id)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("lease lost")]
    Lease,
    #[error("fence deadline passed without a keep-alive")]
    Fenced,
    #[error(
        "joining took longer than twice the lease TTL (etcd unreachable or the connection stalled)"
    )]
    Stalled,
}

/// A joined membership session: the etcd client, the lease and its keep-alive, the watched members.
struct Held {
    client: Client,
    lease: i64,
    me: Member,
    /// Members by key, with their key's version.
    members: BTreeMap<String, (Member, u64)>,
    /// The last revision applied to `members`.
    applied: u64,
    /// `None` while the keep-alive stream is being re-established.
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// `None` while the watch is being re-established.
    watch: Option<WatchStream>,
    /// When the unacknowledged keep-alive was sent.
    pending_ack: Option<Instant>,
}

impl Held {
    /// Sends a keep-alive unless one is unacknowledged.
    async fn send_keep_alive(&mut self) {
        if let Some((k, _)) = self.keeper.as_mut()
            && self.pending_ack.is_none()
        {
            self.pending_ack = Some(Instant::now());
            if k.keep_alive().await.is_err() {
                self.keeper = None;
                self.pending_ack = None;
            }
        }
    }
}

/// Applies a watch response to the view: false when it is inconsistent with what the view holds (a duplicate,
/// backwards or missing revision), in which case the caller re-reads.
fn apply_events(
    resp: &WatchResponse,
    members: &mut BTreeMap<String, (Member, u64)>,
    applied: &mut u64,
) -> bool {
    for e in resp.events() {
        let Some(kv) = e.kv() else { continue };
        let rev = kv.mod_revision() as u64;
        if rev <= *applied {
            return false;
        }
        let key = String::from_utf8_lossy(kv.key()).to_string();
        let held = members.get(&key).map(|(_, r)| *r);
        if held != e.prev_kv().map(|p| p.mod_revision() as u64) {
            return false;
        }
        match (e.event_type(), parse_member(kv.key(), kv.value())) {
            (EventType::Put, Some(m)) => {
                members.insert(key, (m, rev));
            }
            _ => {
                members.remove(&key);
            }
        }
        *applied = rev;
    }
    true
}

/// The member record under `key`, if it is valid: a record that does not parse, names another node than its
/// key, or holds an address that is not `host:port` is logged, counted in `aisle_member_records_invalid_total`
/// and left out of the view (never a panic, and it cannot redirect anyone's calls).
fn parse_member(key: &[u8], value: &[u8]) -> Option<Member> {
    let key = String::from_utf8_lossy(key);
    let checked = serde_json::from_slice::<Member>(value)
        .map_err(|e| format!("not a member record: {e}"))
        .and_then(|m| {
            if !key.ends_with(&format!("/{}", m.node_id)) {
                return Err(format!("names node {:?}, not its key", m.node_id));
            }
            m.validate().map(|()| m)
        });
    match checked {
        Ok(m) => Some(m),
        Err(why) => {
            metrics::counter!("aisle_member_records_invalid_total").increment(1);
            tracing::warn!(key = %key, reason = %why, "invalid member record in etcd: skipped");
            None
        }
    }
}

/// A client of the cluster's etcd, as `config` says: leader required on every request, the lease TTL as the
/// request deadline, TLS and user when configured. The TLS files are read at each call, so rotated client
/// certificates are picked up at the next (re)connection.
pub(crate) async fn connect(config: &MembershipConfig) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_require_leader(true)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(config.lease_ttl)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(tls) = &config.tls {
        let tls = tls
            .tonic_config(None)
            .map_err(|e| etcd_client::Error::InvalidArgs(format!("etcd TLS: {e:#}")))?;
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.clone());
    }
    Client::connect(&config.endpoints, Some(options)).await
}

impl Membership {
    /// Starts membership: the task joins (and rejoins) in the background; watch the returned receiver.
    pub fn start(config: MembershipConfig) -> (Arc<Self>, watch::Receiver<Option<SharedView>>) {
        let (view_tx, view_rx) = watch::channel(None);
        let m = Arc::new(Self {
            config,
            client: Mutex::new(None),
            lease: Mutex::new(None),
            fence: Arc::new(Fence::new()),
            view_tx,
            leaving: watch::channel(false).0,
            incarnations: AtomicU64::new(0),
        });
        tokio::spawn(m.clone().run());
        (m, view_rx)
    }

    async fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.config).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = self.session().await;
            self.fence.set(None);
            self.view_tx.send_replace(None);
            metrics::gauge!("aisle_cluster_joined").set(0.0);
            if *self.leaving.borrow() {
                return;
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(node = %self.config.node_id, error = %e, "membership lost; fenced, rejoining");
                    metrics::counter!("aisle_cluster_fences_total").increment(1);
                }
            }
            // A broken connection is rebuilt on the next attempt.
            *self.client.lock().await = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One membership session: join, then keep alive and watch until the lease is lost or the fence deadline
    /// passes.
    async fn session(&self) -> Result<(), Lost> {
        // Every etcd call has its own deadline, but a connection whose TLS handshake stalls (packets dropped on the
        // path) can hold a call before any deadline applies: the join has an overall deadline, and the fence is
        // watched beside the session, so no stalled call keeps this node from fencing itself and rejoining.
        let held = tokio::time::timeout(self.config.lease_ttl * 2, self.join())
            .await
            .map_err(|_| Lost::Stalled)??;
        tokio::select! {
            outcome = self.hold(held) => outcome,
            () = self.fence.lapsed() => Err(Lost::Fenced),
        }
    }

    /// Keeps a joined session: keep-alives, the watch, repairs and re-checks, until the lease is lost.
    async fn hold(&self, mut held: Held) -> Result<(), Lost> {
        // Transient failures (etcd restarting, a broken stream) are ridden out: the streams are re-established
        // while the lease is provably alive. Only a lost lease or a passed fence deadline ends the session.
        let mut keepalive = tokio::time::interval(self.config.lease_ttl / 4);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repair = tokio::time::interval(Duration::from_millis(500));
        let mut recheck = tokio::time::interval(Duration::from_secs(30));
        recheck.tick().await;
        let mut leaving = self.leaving.subscribe();
        loop {
            tokio::select! {
                _ = keepalive.tick() => held.send_keep_alive().await,
                ack = async { match held.keeper.as_mut() { Some((_, acks)) => acks.message().await, None => std::future::pending().await } } => {
                    self.on_ack(&mut held, ack)?;
                }
                _ = repair.tick(), if held.keeper.is_none() || held.watch.is_none() => self.repair(&mut held).await,
                event = async { match held.watch.as_mut() { Some(w) => w.message().await, None => std::future::pending().await } } => {
                    self.on_watch(&mut held, event);
                }
                _ = recheck.tick() => self.recheck(&mut held).await,
                changed = leaving.changed() => {
                    if changed.is_ok() && *leaving.borrow() {
                        let mut me = held.members.get(&self.config.key()).map(|(m, _)| m.clone()).unwrap_or(held.me.clone());
                        me.leaving = true;
                        self.put_self(&mut held.client, held.lease, &me).await?;
                    }
                }
            }
        }
    }

    /// Joins: a new lease (revoking a previous one of ours), this node's key under it with a new incarnation,
    /// the fence deadline, the member list, the keep-alive and the watch.
    async fn join(&self) -> Result<Held, Lost> {
        let mut client = self.client().await?;
        // A previous lease of ours may still hold our key: revoke it so the new incarnation replaces it cleanly.
        if let Some(old) = self.lease.lock().await.take() {
            let _ = client.lease_revoke(old).await;
        }
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let sent = Instant::now();
        let lease = client.lease_grant(ttl, None).await?.id();
        *self.lease.lock().await = Some(lease);
        let incarnation = format!(
            "{:x}-{}",
            aisle_domain::now_ms(),
            self.incarnations.fetch_add(1, Ordering::Relaxed)
        );
        let me = Member {
            node_id: self.config.node_id.clone(),
            addr: self.config.advertise_addr.clone(),
            incarnation,
            leaving: *self.leaving.borrow(),
        };
        self.put_self(&mut client, lease, &me).await?;
        self.fence.set(Some(
            sent + self.config.lease_ttl - self.config.fence_margin(),
        ));
        let (members, revision) = self.read(&mut client).await?;
        self.publish(&members, revision);
        tracing::info!(node = %me.node_id, incarnation = %me.incarnation, epoch = revision,
            members = members.len(), "joined the cluster");
        metrics::gauge!("aisle_cluster_joined").set(1.0);
        let keeper = Some(client.lease_keep_alive(lease).await?);
        let watch = Some(self.watch_from(&mut client, revision).await?);
        Ok(Held {
            client,
            lease,
            me,
            members,
            applied: revision,
            keeper,
            watch,
            pending_ack: None,
        })
    }

    /// A keep-alive acknowledgement (or the end of their stream).
    fn on_ack(
        &self,
        held: &mut Held,
        ack: Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error>,
    ) -> Result<(), Lost> {
        match ack {
            Ok(Some(ack)) if ack.ttl() <= 0 => return Err(Lost::Lease),
            Ok(Some(_)) => {
                if let Some(sent) = held.pending_ack.take() {
                    self.fence.set(Some(
                        sent + self.config.lease_ttl - self.config.fence_margin(),
                    ));
                }
            }
            Ok(None) | Err(_) => {
                tracing::debug!("lease keep-alive stream broke; re-establishing");
                held.keeper = None;
                held.pending_ack = None;
            }
        }
        Ok(())
    }

    /// Re-establishes a broken keep-alive stream or watch (the watch after a fresh read).
    async fn repair(&self, held: &mut Held) {
        if held.keeper.is_none()
            && let Ok(k) = held.client.lease_keep_alive(held.lease).await
        {
            held.keeper = Some(k);
        }
        if held.watch.is_none() {
            self.reread(held).await;
        }
    }

    /// Reads the members afresh, publishes them and watches from there.
    async fn reread(&self, held: &mut Held) {
        if let Ok((fresh, rev)) = self.read(&mut held.client).await {
            held.members = fresh;
            held.applied = rev;
            self.publish(&held.members, held.applied);
            held.watch = self.watch_from(&mut held.client, held.applied).await.ok();
        }
    }

    /// A watch response (or the end of the stream): applied in order, else the watch is dropped for a re-read.
    fn on_watch(&self, held: &mut Held, event: Result<Option<WatchResponse>, etcd_client::Error>) {
        let resp = match event {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => {
                tracing::debug!("membership watch broke; re-reading");
                held.watch = None;
                return;
            }
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            tracing::warn!(
                compact_revision = resp.compact_revision(),
                reason = resp.cancel_reason(),
                "membership watch cancelled; re-reading"
            );
            held.watch = None;
            return;
        }
        if !apply_events(&resp, &mut held.members, &mut held.applied) {
            metrics::counter!("aisle_cluster_view_rereads_total").increment(1);
            tracing::warn!("membership watch out of order; re-reading");
            held.watch = None;
            return;
        }
        if !resp.events().is_empty() {
            self.publish(&held.members, held.applied);
        }
    }

    /// The periodic double check: a linearizable read that replaces the view when it differs.
    async fn recheck(&self, held: &mut Held) {
        let Ok((fresh, _)) = self.read(&mut held.client).await else {
            return;
        };
        let same = fresh
            .iter()
            .map(|(k, (m, _))| (k, m))
            .eq(held.members.iter().map(|(k, (m, _))| (k, m)));
        if !same {
            metrics::counter!("aisle_cluster_view_rereads_total").increment(1);
            tracing::warn!("periodic membership check found a different view; re-reading");
            self.reread(held).await;
        }
    }

    async fn watch_from(
        &self,
        client: &mut Client,
        revision: u64,
    ) -> Result<WatchStream, etcd_client::Error> {
        client
            .watch(
                self.config.prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(revision as i64 + 1),
                ),
            )
            .await
    }

    async fn put_self(&self, client: &mut Client, lease: i64, me: &Member) -> Result<(), Lost> {
        let value = serde_json::to_vec(me).expect("members serialise");
        client
            .put(
                self.config.key(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// A linearizable read of every member: key → (member, its mod revision), and the store revision.
    async fn read(
        &self,
        client: &mut Client,
    ) -> Result<(BTreeMap<String, (Member, u64)>, u64), Lost> {
        let resp = client
            .get(self.config.prefix(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision() as u64);
        let members = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                parse_member(kv.key(), kv.value()).map(|m| {
                    (
                        String::from_utf8_lossy(kv.key()).to_string(),
                        (m, kv.mod_revision() as u64),
                    )
                })
            })
            .collect();
        Ok((members, revision))
    }

    fn publish(&self, members: &BTreeMap<String, (Member, u64)>, revision: u64) {
        let view = View::new(revision, members.values().map(|(m, _)| m.clone()).collect());
        if self
            .view_tx
            .borrow()
            .as_ref()
            .is_some_and(|v| v.fingerprint == view.fingerprint)
        {
            // The same members (a write under the prefix that changed nobody, such as an invalid record that
            // was skipped): ownership and its epoch stay as they are.
            return;
        }
        metrics::gauge!("aisle_cluster_members").set(view.members.len() as f64);
        metrics::gauge!("aisle_cluster_epoch").set(revision as f64);
        self.view_tx.send_replace(Some(Arc::new(view)));
    }

    /// Marks this node leaving (it owns nothing from the next view on) and waits until this node's own view
    /// shows it, up to `timeout`.
    pub async fn mark_leaving(
        &self,
        view: &mut watch::Receiver<Option<SharedView>>,
        timeout: Duration,
    ) {
        self.leaving.send_replace(true);
        let node = self.config.node_id.clone();
        let _ = tokio::time::timeout(
            timeout,
            view.wait_for(|v| {
                v.as_ref()
                    .is_none_or(|v| v.member(&node).is_none_or(|m| m.leaving))
            }),
        )
        .await;
    }

    /// Whether this node's own keep-alives are late: none acknowledged for a keep-alive period (a quarter TTL)
    /// and a twentieth of a TTL more (it cannot reach etcd either, or its lease already rests on its peers'
    /// word). Safety does not depend on this threshold (a grant is a promise either way); it decides how fast a
    /// node cut off from etcd alone is let go.
    pub fn etcd_late(&self) -> bool {
        let ttl = self.config.lease_ttl;
        let on_time = ttl - self.config.fence_margin() - ttl / 4 - ttl / 20;
        self.fence.lease_remaining().is_some_and(|r| r < on_time)
    }

    /// Whether this node, though still a member, may be cut off from everything: its keep-alives are late and no
    /// peer promised to hold its view. Its writes would then be on this node alone until it fences (replication
    /// may not reach the successor either), so Track events are queued in the outbox instead of applied here.
    pub fn at_risk(&self) -> bool {
        self.etcd_late() && !self.fence.peer_hold_active()
    }

    /// The lease TTL: how long a peer's promise lasts.
    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// How long before the earliest moment the lease could expire this node fences itself.
    pub fn fence_margin(&self) -> Duration {
        self.config.fence_margin()
    }

    /// Revokes the lease (the member key disappears at once) and stops.
    pub async fn leave(&self) {
        self.leaving.send_replace(true);
        self.fence.set(None);
        if let Some(lease) = self.lease.lock().await.take()
            && let Ok(mut client) = self.client().await
        {
            match client.lease_revoke(lease).await {
                Ok(_) => {
                    tracing::info!(node = %self.config.node_id, "lease revoked; left the cluster")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the lease; it expires by itself")
                }
            }
        }
        self.view_tx.send_replace(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, addr: &str) -> Vec<u8> {
        serde_json::to_vec(&Member {
            node_id: node.into(),
            addr: addr.into(),
            incarnation: "i1".into(),
            leaving: false,
        })
        .unwrap()
    }

    #[test]
    fn invalid_member_records_are_skipped_not_trusted() {
        let key = b"/aisle/c/members/n1";
        assert!(parse_member(key, &record("n1", "10.0.0.7:50052")).is_some());
        assert!(parse_member(key, &record("n1", "aisle-0.aisle-peers.ns.svc:50052")).is_some());
        for bad in [
            "not an address",
            "host-without-port",
            "h:0",
            "h:99999",
            "http://h:1/path",
            "user@h:1",
            "",
            "h:1 ",
        ] {
            assert!(parse_member(key, &record("n1", bad)).is_none(), "{bad:?}");
        }
        // A record claiming another node's id under this key.
        assert!(parse_member(key, &record("n2", "10.0.0.7:50052")).is_none());
        assert!(parse_member(key, b"{not json").is_none());
    }
}
