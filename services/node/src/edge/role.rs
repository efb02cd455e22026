//! The store edge's role: what a node with `role = "edge"` does with its [`Link`] to the cloud.
//!
//! - **Bundles flow down** ([`Role::follow`]): the feed's versions are checked against their SHA-256, loaded
//!   through the bundle registry (an invalid one is refused and the last good one keeps serving), and only then
//!   written to `edge_dir/bundles/`. An edge starts from those files, so it comes up with the WAN down; a new
//!   edge without them waits for the first full set ([`bootstrap`]).
//! - **Sessions follow the shopper** ([`Role::pull_session`], [`Role::hand_back`]): on `STORE_ENTER`, or the
//!   first in-store call of a shopper this edge holds nothing for, the edge copies the cloud's session; it decides
//!   from its copy while the shopper is in the store, and drops it on `STORE_EXIT` (the cloud has every event).
//!   The cloud copies a session only to the store its session of record places the shopper in, so a Track first
//!   uploads its events (waiting up to a third of its budget) and then asks.
//! - **Decide** ([`Role::decide`]): surfaces the placement table sends to the cloud are forwarded within their
//!   budget less a reserve; the edge answers itself when the cloud is late, fails, refuses, or is away.
//! - **Track** ([`Role::track`]): every shopper's events are queued for the cloud first (fsync'd), then applied
//!   to the local copy; the queue uploads them in order (`Link::upload`).
//! - **Erasure**: tombstones come down the feed; the edge erases the matching shopper's session, queued events
//!   and log lines (it must use the cloud's `pseudonym_key`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_domain::bundle::sha256_hex;
use aisle_domain::event::EventKind;
use aisle_proto::v1 as pb;
use aisle_session::{SessionContext, SessionTransfer};
use anyhow::Context as _;
use tokio::time::Instant;

use super::link::{LINK_SILENCE, Link, bundle_file, bundles_dir, held_on_disk};
use crate::bundles::Kind;
use crate::cluster::{Routed, Router};
use crate::config::{Config, Role as NodeRole, Site};
use crate::durable::outbox::QueueError;
use crate::engine::decision::TrackOutcome;
use crate::error::{ApiError, RemoteError};
use crate::node::Node;
use crate::shopper::decide::DecideCall;
use crate::shopper::erase::erase_here;
use crate::shopper::track::Batch;

/// Waits between attempts to reach the cloud.
const RETRY: Duration = Duration::from_millis(500);
/// Shoppers remembered as "the cloud's session was asked for" (so that a shopper the cloud has no session for is
/// asked once per visit, not at every decision).
const FETCHED_REMEMBERED: usize = 100_000;
/// After a failed fetch, a shopper's first in-store Decide does not wait for the cloud's session for this long
/// (a `STORE_ENTER` still asks).
const FETCH_BACKOFF: Duration = Duration::from_secs(5);

/// Points the configuration's bundle files at the edge's own (`edge_dir/bundles/`); when they are not all there
/// yet (a new edge), first waits for the cloud's feed to deliver them, as long as it takes. Nothing for a cloud
/// node.
///
/// # Errors
/// When the directory cannot be written or the upstream settings are unusable.
pub async fn bootstrap(config: &mut Config) -> anyhow::Result<()> {
    if config.role != NodeRole::Edge {
        return Ok(());
    }
    let dir = bundles_dir(config).expect("validated: edge_dir is set");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut held = held_on_disk(&dir);
    let complete = |held: &std::collections::BTreeMap<String, _>| {
        Kind::ALL
            .into_iter()
            .all(|k| !k.spec().required || held.contains_key(k.name()))
    };
    if !complete(&held) {
        tracing::info!(upstream = ?config.upstream, "no bundles on disk yet: waiting for the cloud's first full set");
        let link = Link::open(config)?;
        while let Err(e) = first_sync(&link).await {
            tracing::warn!(error = %e, "first bundle sync failed; retrying");
            tokio::time::sleep(RETRY * 4).await;
        }
        held = held_on_disk(&dir);
    }
    for kind in Kind::ALL {
        *kind.setting_mut(config) = held
            .contains_key(kind.name())
            .then(|| bundle_file(&dir, kind));
    }
    // Bundles change through the feed, not by polling files.
    config.bundle_poll_secs = 0;
    if config.outbox_dir.is_none() {
        config.outbox_dir = config.edge_dir.as_ref().map(|d| d.join("queue"));
    }
    Ok(())
}

/// Receives bundles until the first `Synced` mark and writes them (before the node runs).
async fn first_sync(link: &Link) -> anyhow::Result<()> {
    let mut stream = link.open_feed(LINK_SILENCE * 10).await?;
    loop {
        let update = tokio::time::timeout(LINK_SILENCE * 10, stream.message())
            .await
            .context("the cloud's feed went silent")??
            .context("the cloud ended the feed")?;
        match update.update {
            Some(pb::sync_update::Update::Bundle(b)) => {
                if sha256_hex(&b.payload) != b.digest {
                    anyhow::bail!("bundle {} {}: digest mismatch", b.kind, b.version);
                }
                link.store(&b)?;
            }
            Some(pb::sync_update::Update::Synced(_)) => return Ok(()),
            _ => {}
        }
    }
}

/// What the edge does with its link, for the life of the node.
#[derive(Debug)]
pub struct Role {
    link: Arc<Link>,
    fetch_timeout: Duration,
    idle_ttl: Duration,
    /// Shoppers whose cloud session was asked for, and when.
    fetched: Mutex<HashMap<String, Instant>>,
    /// The last fetch that failed (slow or broken link): first-call fetches pause for [`FETCH_BACKOFF`].
    fetch_failed: Mutex<Option<Instant>>,
}

impl Role {
    /// The edge role of a node configured as one.
    ///
    /// # Errors
    /// When the upstream address, its CA or the token file is unusable.
    pub fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            link: Link::open(config)?,
            fetch_timeout: Duration::from_millis(config.session_fetch_ms),
            idle_ttl: Duration::from_secs(config.session_idle_ttl_secs),
            fetched: Mutex::new(HashMap::new()),
            fetch_failed: Mutex::new(None),
        }))
    }

    /// The link to the cloud.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Follows the cloud's feed for as long as the node runs: loads and stores each new bundle version, applies
    /// tombstones, and reconnects (naming what it holds) whenever the feed fails or goes silent.
    pub async fn follow(self: Arc<Self>, node: Arc<Node>) {
        let mut refused = false;
        loop {
            if let Err(e) = self.follow_once(&node).await {
                let now_refused = matches!(
                    e.downcast_ref::<tonic::Status>()
                        .map(|s| RemoteError::from(s.clone())),
                    Some(RemoteError::Denied(_))
                );
                if now_refused && !refused {
                    // Said once per episode: the link works, the cloud refuses this edge's credentials.
                    tracing::error!(error = %e, "the cloud refuses this edge: check upstream_token_file (scopes edge \
                        and decide, stores including this store_id)");
                } else {
                    tracing::debug!(error = %e, "bundle feed from the cloud interrupted");
                }
                refused = now_refused;
                self.link.feed_lost();
                self.link.reconnect();
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn follow_once(&self, node: &Node) -> anyhow::Result<()> {
        let mut stream = self.link.open_feed(LINK_SILENCE).await?;
        loop {
            let update = tokio::time::timeout(LINK_SILENCE, stream.message())
                .await
                .context("the cloud's feed went silent")??
                .context("the cloud ended the feed")?;
            self.link.contact();
            match update.update {
                Some(pb::sync_update::Update::Bundle(b)) => self.apply_bundle(node, b).await,
                Some(pb::sync_update::Update::Synced(mark)) => self.link.synced(&mark),
                Some(pb::sync_update::Update::Forgotten(t)) => apply_tombstone(node, &t).await,
                None => {}
            }
        }
    }

    async fn apply_bundle(&self, node: &Node, b: pb::BundleVersion) {
        let refuse = |why: String| {
            metrics::counter!("aisle_bundle_refused_total", "kind" => "edge_feed").increment(1);
            tracing::warn!(kind = %b.kind, version = %b.version, error = %why, "bundle from the cloud refused");
            self.link.refused();
        };
        if sha256_hex(&b.payload) != b.digest {
            return refuse("digest mismatch".into());
        }
        let Some(kind) = Kind::parse(&b.kind) else {
            return refuse("unknown kind".into());
        };
        let source = format!("cloud {} {}", b.kind, b.version);
        let signature = (!b.signature.is_empty()).then(|| Arc::new(b.signature.clone()));
        if let Err(e) = node
            .bundles
            .load(kind, Arc::new(b.payload.clone()), signature, &source)
            .await
        {
            let details = serde_json::json!({"kind": b.kind, "version": b.version, "digest": b.digest, "error": e});
            let _ = node
                .logs
                .audit_action("bundle_refused", "cloud", details)
                .await;
            return refuse(e);
        }
        if let Err(e) = self.link.store(&b) {
            tracing::error!(kind = %b.kind, error = %e, "cannot store a bundle on disk (serving it until restart)");
        }
        self.link.loaded();
        tracing::info!(kind = %b.kind, version = %b.version, "bundle from the cloud loaded");
        let details = serde_json::json!({"kind": b.kind, "version": b.version, "digest": b.digest});
        let _ = node
            .logs
            .audit_action("bundle_loaded", "cloud", details)
            .await;
    }

    /// Copies the cloud's session of `shopper_id` here, when the shopper has none here or is `entering` the store
    /// with nothing of theirs waiting in the queue — at most once per visit, within `budget`. Whether a session
    /// was installed. The cloud hands it out only when its session places the shopper in this store.
    pub async fn pull_session(
        &self,
        node: &Node,
        shopper_id: &str,
        entering: bool,
        budget: Duration,
    ) -> bool {
        self.asks(node, shopper_id, entering) && self.copy_session(node, shopper_id, budget).await
    }

    /// Whether the cloud's session of `shopper_id` is to be asked for now (the ask is recorded): the shopper has
    /// none here or is `entering`, nothing of theirs waits in the queue, it was not asked for in this visit yet,
    /// and the cloud is reachable.
    fn asks(&self, node: &Node, shopper_id: &str, entering: bool) -> bool {
        let sessions = &node.shoppers.sessions;
        if (sessions.holds_now(shopper_id) && !entering) || queued(node, shopper_id) {
            return false;
        }
        if !self.first_ask(shopper_id, entering) {
            return false;
        }
        if !self.link.online() || (!entering && self.backing_off()) {
            self.forget_fetch(shopper_id);
            return false;
        }
        true
    }

    /// Fetches the cloud's session of `shopper_id` within `budget` and installs it; whether it was installed.
    async fn copy_session(&self, node: &Node, shopper_id: &str, budget: Duration) -> bool {
        let answer = match self
            .link
            .fetch_session(shopper_id, self.fetch_timeout.min(budget))
            .await
        {
            Ok(a) => a,
            Err(RemoteError::Denied(why)) => {
                // The cloud does not place the shopper in this store (yet): the edge serves from its own copy.
                metrics::counter!("aisle_edge_session_fetches_total", "result" => "refused")
                    .increment(1);
                tracing::debug!(%why, "the cloud refused to copy a session to this store");
                return false;
            }
            Err(e) => {
                metrics::counter!("aisle_edge_session_fetches_total", "result" => "failed")
                    .increment(1);
                *self
                    .fetch_failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                tracing::debug!(error = %e, "the cloud's session could not be fetched");
                return false;
            }
        };
        install(node, shopper_id, &answer.session).await
    }

    /// Records that the shopper's cloud session is asked for now; false when it was asked for in this visit
    /// already (unless `entering`: a `STORE_ENTER` always asks).
    fn first_ask(&self, shopper_id: &str, entering: bool) -> bool {
        let mut fetched = self.fetched.lock().unwrap_or_else(PoisonError::into_inner);
        if !entering
            && fetched
                .get(shopper_id)
                .is_some_and(|t| t.elapsed() < self.idle_ttl)
        {
            return false;
        }
        if fetched.len() >= FETCHED_REMEMBERED {
            let ttl = self.idle_ttl;
            fetched.retain(|_, t| t.elapsed() < ttl);
            if fetched.len() >= FETCHED_REMEMBERED {
                fetched.clear();
            }
        }
        fetched.insert(shopper_id.to_string(), Instant::now());
        true
    }

    fn backing_off(&self) -> bool {
        self.fetch_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < FETCH_BACKOFF)
    }

    /// Lets the next in-store call of `shopper_id` ask for the cloud's session again.
    fn forget_fetch(&self, shopper_id: &str) {
        self.fetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(shopper_id);
    }

    /// The shopper left the store: the cloud has (or will have, in order) every event taken here, so the copy
    /// goes, and their next visit fetches the cloud's session again.
    pub async fn hand_back(&self, node: &Node, shopper_id: &str) {
        self.forget_fetch(shopper_id);
        let _ = node
            .shoppers
            .sessions
            .forget(shopper_id, Duration::from_secs(1))
            .await;
        metrics::counter!("aisle_edge_sessions_handed_back_total").increment(1);
    }

    /// A Decide at the edge: the cloud's session first when this is the shopper's first in-store call; then, for a
    /// surface placed in the cloud (`at`), the cloud's answer if it comes within the budget (less a reserve kept
    /// for answering here); else the edge's own answer.
    ///
    /// # Errors
    /// Only the request's own error (an invalid field): every other failure ends in the edge's answer.
    pub async fn decide(
        &self,
        node: &Node,
        call: &DecideCall<'_>,
        at: Site,
    ) -> Result<pb::DecideResponse, ApiError> {
        let left = || call.deadline().saturating_duration_since(Instant::now());
        let request = call.request();
        if request.consent != Some(false) {
            self.pull_session(node, &request.shopper_id, false, left() / 3)
                .await;
        }
        if at == Site::Cloud {
            match self.decide_in_cloud(request, left()).await {
                Ok(answer) => return Ok(answer),
                Err(why) => {
                    metrics::counter!("aisle_edge_cloud_fallbacks_total", "reason" => why)
                        .increment(1);
                }
            }
        }
        let answer = call.run().await?;
        metrics::counter!("aisle_edge_decisions_total", "at" => "edge").increment(1);
        Ok(answer)
    }

    /// The cloud's answer within `left` less a reserve (a third, at least 10 ms), or why not (a metric label).
    async fn decide_in_cloud(
        &self,
        request: &pb::DecideRequest,
        left: Duration,
    ) -> Result<pb::DecideResponse, &'static str> {
        let reserve = (left / 3).max(Duration::from_millis(10));
        let timeout = left.saturating_sub(reserve);
        if !self.link.online() {
            return Err("offline");
        }
        if timeout.is_zero() {
            return Err("no_budget");
        }
        match self.link.decide_in_cloud(request, timeout).await {
            Ok(mut answer) => {
                metrics::counter!("aisle_edge_decisions_total", "at" => "cloud").increment(1);
                answer.decided_at = pb::DecisionSite::Cloud as i32;
                Ok(answer)
            }
            Err(RemoteError::Deadline(_)) => Err("deadline"),
            Err(e @ RemoteError::Denied(_)) => {
                tracing::warn!(error = %e, "the cloud refused a forwarded decision: the edge's upstream token \
                    needs the decide scope");
                Err("denied")
            }
            Err(e) => {
                tracing::debug!(error = %e, "a forwarded decision failed");
                Err("failed")
            }
        }
    }

    /// A Track at the edge: each shopper's events are first queued for the cloud (fsync'd; the queue uploads them
    /// in order), then applied to the edge's own copy of the session. `STORE_ENTER` first copies the cloud's
    /// session here; `STORE_EXIT` drops the copy after its events are queued.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE when it cannot be written — saying how many events
    /// of the batch were accepted before.
    pub async fn track(
        &self,
        node: &Node,
        batch: Batch<'_>,
        deadline: Instant,
    ) -> Result<TrackOutcome, ApiError> {
        let outbox = node
            .outbox
            .clone()
            .ok_or_else(|| ApiError::Unavailable("this edge has no queue for the cloud".into()))?;
        let router = Router::new(&node.cluster);
        let mut outcome = TrackOutcome::default();
        for call in batch.calls() {
            let has = |kind: EventKind| call.events.iter().any(|e| e.kind == kind);
            // The shopper's first in-store call (or STORE_ENTER) brings their cloud session here — unless they just
            // refused consent: nothing of theirs is copied then. The cloud copies a session only to the store it
            // places the shopper in, so the call's events go up first.
            let asks = !call.events.iter().any(|e| e.consent == Some(false))
                && self.asks(node, &call.shopper_id, has(EventKind::StoreEnter));
            let request = call.as_received();
            let n = request.events.len();
            if let Err(e) = outbox
                .push(&call.shopper_id, call.received_at_us, request)
                .await
            {
                let why = format!(
                    "events of shopper {:?} were not accepted ({e}); {} earlier events of this batch were",
                    call.shopper_id, outcome.accepted
                );
                return Err(match e {
                    QueueError::Full(_) => ApiError::ResourceExhausted(why),
                    _ => ApiError::Unavailable(why),
                });
            }
            let left = || deadline.saturating_duration_since(Instant::now());
            // A copy taken after the events reached the cloud already holds them.
            let copied = asks
                && outbox.wait_delivered(&call.shopper_id, left() / 3).await
                && self.copy_session(node, &call.shopper_id, left() / 2).await;
            let applied = if copied {
                TrackOutcome::default()
            } else {
                match router.at_owner(&call, deadline).await {
                    Routed::Answered(o) => o,
                    Routed::NoOwner(why) => {
                        tracing::warn!(%why, "queued for the cloud but not applied here");
                        TrackOutcome::default()
                    }
                    Routed::Failed(e) => {
                        tracing::warn!(error = %e, "queued for the cloud but not applied here");
                        TrackOutcome::default()
                    }
                }
            };
            outcome += TrackOutcome {
                accepted: n,
                unknown_items: applied.unknown_items,
                queued: n,
                duplicates: 0,
            };
            if has(EventKind::StoreExit) {
                self.hand_back(node, &call.shopper_id).await;
            }
        }
        Ok(outcome)
    }
}

/// Whether events of the shopper wait in the edge's queue (the local copy is newer than the cloud's then).
fn queued(node: &Node, shopper_id: &str) -> bool {
    node.outbox
        .as_ref()
        .is_some_and(|o| o.has_pending(shopper_id))
}

/// Installs a session copy the cloud sent; whether one was installed.
async fn install(node: &Node, shopper_id: &str, session: &[u8]) -> bool {
    if session.is_empty() {
        metrics::counter!("aisle_edge_session_fetches_total", "result" => "none").increment(1);
        return false;
    }
    let Ok(portable) = serde_json::from_slice(session) else {
        metrics::counter!("aisle_edge_session_fetches_total", "result" => "invalid").increment(1);
        return false;
    };
    // Events taken here meanwhile would be lost by replacing the session: keep the local one then.
    if queued(node, shopper_id) {
        return false;
    }
    let catalog = node.bundles.world().catalog.clone();
    let transfer = SessionTransfer {
        shopper_id: shopper_id.into(),
        context: SessionContext::from_portable(portable, &catalog),
    };
    let installed = node
        .shoppers
        .sessions
        .import(vec![transfer], Duration::from_secs(1))
        .await
        .is_ok_and(|n| n > 0);
    metrics::counter!("aisle_edge_session_fetches_total", "result" => "installed").increment(1);
    installed
}

/// Erases, at this edge, the shopper a tombstone from the cloud names: their session, queued events and log lines.
async fn apply_tombstone(node: &Node, t: &pb::Tombstone) {
    let tombstones = &node.shoppers.tombstones;
    // An erasure older than the TTL (an edge catching up after a long cut) is no tombstone any more, but what the
    // edge holds of the shopper still goes.
    if !tombstones.record(&t.shopper_ref, t.forgotten_at_ms)
        && !tombstones.expired(t.forgotten_at_ms)
    {
        return;
    }
    let mut shoppers: Vec<String> = node
        .shoppers
        .sessions
        .shoppers_now()
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(outbox) = &node.outbox {
        shoppers.extend(outbox.shoppers());
    }
    shoppers.sort();
    shoppers.dedup();
    for shopper in shoppers {
        if !node
            .shoppers
            .pseudonyms
            .all_of(&shopper)
            .contains(&t.shopper_ref)
        {
            continue;
        }
        match erase_here(node, &shopper, t.forgotten_at_ms, "cloud").await {
            Ok(r) => {
                tracing::info!(shopper_ref = %t.shopper_ref, queued = r.queued_events_removed,
                    "shopper forgotten in the cloud erased at this edge")
            }
            Err(e) => tracing::error!(shopper_ref = %t.shopper_ref, error = %e,
                "erasing a shopper forgotten in the cloud failed (retried at the next feed)"),
        }
    }
}
