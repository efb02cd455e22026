//! The store edge: a node with `role = "edge"` serves one store's channels next to the shopper, while the cloud
//! cluster (its `upstream`) keeps owning models, rules, experiments and the shoppers' sessions of record.
//!
//! - **Bundles flow down** ([`Edge::follow`]): the edge holds the cloud's `EdgeService/SyncBundles` stream open,
//!   naming the digests it holds; each bundle version it receives is checked against its SHA-256, loaded through
//!   its owner actor (an invalid one is refused and the last good one keeps serving), and only then written to
//!   `edge_dir/bundles/` (write, fsync, rename). An edge starts from those files, so it comes up with the WAN down;
//!   a new edge without them waits for the first full set ([`bootstrap`]).
//! - **Sessions follow the shopper**: on `STORE_ENTER`, or the first in-store call of a shopper this edge holds no
//!   session for, the edge copies the cloud's session (`EdgeService/FetchSession`, `session_fetch_ms`) so online
//!   browsing shapes the in-store answers. While the shopper is in store the edge decides from its own copy; on
//!   `STORE_EXIT` (or after `session_idle_ttl_secs`) it drops the copy: every event it took is on its way to the
//!   cloud, which applied (or will apply) them to the session of record.
//! - **Events flow up**: every Track is first appended to the edge's queue (the Track outbox, fsync'd, bounded) and
//!   then applied locally; the queue uploads each shopper's entries in order (`EdgeService/Upload`) under their
//!   delivery keys, and the cloud's owner applies each key once (`aisle_session::Delivery`).
//! - **Placement** (`placement` rows): surfaces placed in the cloud are forwarded within their budget; when the
//!   cloud does not answer in time, or the link is down, the edge answers itself (`decided_at = EDGE`).
//! - **Erasure**: tombstones come down the feed; the edge erases the matching shopper's session, queue entries and
//!   log lines (the edge must use the cloud's `pseudonym_key`).

pub mod feed;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_domain::bundle::sha256_hex;
use aisle_proto::v1 as pb;
use aisle_proto::v1::edge_service_client::EdgeServiceClient;
use aisle_session::{SessionContext, SessionTransfer};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::config::{Config, Role};
use crate::durable;
use crate::node::Node;
use crate::outbox::QueuedTrack;

/// The link counts as up while the feed spoke within this time (it sends a mark every second).
const LINK_SILENCE: Duration = Duration::from_secs(3);
/// Waits between attempts to reach the cloud.
const RETRY: Duration = Duration::from_millis(500);
/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest bundle accepted from the feed.
pub const MAX_BUNDLE_BYTES: usize = 512 << 20;
/// Shoppers remembered as "the cloud's session was asked for" (so that a shopper the cloud has no session for is
/// asked once per visit, not at every decision).
const FETCHED_REMEMBERED: usize = 100_000;
/// After a failed fetch, a shopper's first in-store Decide does not wait for the cloud's session for this long
/// (a `STORE_ENTER` still asks).
const FETCH_BACKOFF: Duration = Duration::from_secs(5);

/// What the edge holds of one bundle kind (the `.json` beside its file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Version label.
    pub version: String,
    /// SHA-256 of the file.
    pub digest: String,
    /// When it was built (ms since the epoch).
    pub created_at_ms: i64,
}

#[derive(Debug, Default)]
struct Link {
    /// Last time the cloud answered anything (feed message, upload, fetch).
    contact: Option<Instant>,
    /// Last `Synced` mark: the edge then held everything the cloud served.
    synced: Option<Instant>,
    /// A bundle the cloud serves that this edge refused, and since when.
    refused: Option<Instant>,
    held: BTreeMap<String, Held>,
}

/// The edge's side of the link to the cloud.
pub struct Edge {
    store_id: String,
    dir: PathBuf,
    endpoint: Endpoint,
    /// The connection to the cloud; replaced by a fresh one when the link seems stuck (a TLS handshake whose
    /// bytes were lost has no timeout of its own, and every call would wait behind it).
    channel: Mutex<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    fetch_timeout: Duration,
    started: Instant,
    link: Mutex<Link>,
    /// Shoppers whose cloud session was asked for, and when.
    fetched: Mutex<HashMap<String, Instant>>,
    /// The last fetch that failed (slow or broken link): first-call fetches pause for [`FETCH_BACKOFF`].
    fetch_failed: Mutex<Option<Instant>>,
    idle_ttl: Duration,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("store_id", &self.store_id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The directory of an edge's bundle files.
fn bundles_dir(config: &Config) -> Option<PathBuf> {
    config.edge_dir.as_ref().map(|d| d.join("bundles"))
}

/// The file of a bundle kind.
fn bundle_file(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{kind}.bin"))
}

/// Reads what the edge holds on disk: each kind whose file matches its recorded digest.
fn held_on_disk(dir: &Path) -> BTreeMap<String, Held> {
    let mut held = BTreeMap::new();
    for kind in feed::KINDS {
        let Ok(meta) = std::fs::read(dir.join(format!("{kind}.held.json"))) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<Held>(&meta) else {
            continue;
        };
        match std::fs::read(bundle_file(dir, kind)) {
            Ok(bytes) if sha256_hex(&bytes) == meta.digest => {
                held.insert(kind.to_string(), meta);
            }
            _ => tracing::warn!(
                kind,
                "edge bundle file missing or not matching its digest: ignored"
            ),
        }
    }
    held
}

/// The bundle kinds a node cannot start without.
const REQUIRED: [&str; 4] = ["catalog", "model", "rules", "experiments"];

/// Points the configuration's bundle files at the edge's own (`edge_dir/bundles/`); when they are not all there
/// yet (a new edge), first waits for the cloud's feed to deliver them, as long as it takes. Nothing for a cloud
/// node.
///
/// # Errors
/// When the directory cannot be written or the upstream settings are unusable.
pub async fn bootstrap(config: &mut Config) -> anyhow::Result<()> {
    if config.role != Role::Edge {
        return Ok(());
    }
    let dir = bundles_dir(config).expect("validated: edge_dir is set");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut held = held_on_disk(&dir);
    if !REQUIRED.iter().all(|k| held.contains_key(*k)) {
        tracing::info!(upstream = ?config.upstream, "no bundles on disk yet: waiting for the cloud's first full set");
        let edge = Edge::open(config)?;
        loop {
            match edge.first_sync(&dir).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "first bundle sync failed; retrying");
                    tokio::time::sleep(RETRY * 4).await;
                }
            }
        }
        held = held_on_disk(&dir);
    }
    let path = |kind: &str| held.contains_key(kind).then(|| bundle_file(&dir, kind));
    config.catalog = path("catalog");
    config.model = path("model");
    config.candidate_model = path("candidate_model");
    config.rules = path("rules");
    config.experiments = path("experiments");
    // Bundles change through the feed, not by polling files.
    config.bundle_poll_secs = 0;
    if config.outbox_dir.is_none() {
        config.outbox_dir = config.edge_dir.as_ref().map(|d| d.join("queue"));
    }
    Ok(())
}

impl Edge {
    /// The edge's link settings (the channel connects lazily: nothing is sent yet).
    ///
    /// # Errors
    /// When the upstream address, its CA or the token file is unusable.
    pub fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        let url = config.upstream.clone().expect("validated: upstream is set");
        let mut endpoint = Channel::from_shared(url.clone())
            .with_context(|| format!("upstream: invalid address {url}"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            // Bundles are megabytes: windows large enough for a WAN's bandwidth-delay product.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let files = crate::tls::ClientTlsFiles {
                ca: config.upstream_ca.clone(),
                cert: None,
                key: None,
            };
            endpoint = endpoint.tls_config(files.tonic_config(None)?)?;
        } else if config.upstream_ca.is_some() {
            anyhow::bail!("upstream_ca: needs an https:// upstream (got {url})");
        }
        let token = match &config.upstream_token_file {
            Some(file) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("cannot read upstream_token_file {}", file.display())
                })?;
                Some(format!("Bearer {}", text.trim()).parse().map_err(|_| {
                    anyhow::anyhow!("upstream_token_file: not a valid header value")
                })?)
            }
            None => None,
        };
        if token.is_none() {
            tracing::warn!(
                "no upstream_token_file: a cloud that authenticates its callers will refuse this edge"
            );
        }
        let dir = bundles_dir(config).expect("validated: edge_dir is set");
        let held = held_on_disk(&dir);
        Ok(Arc::new(Self {
            store_id: config.store_id.clone().unwrap_or_default(),
            dir,
            channel: Mutex::new(endpoint.connect_lazy()),
            endpoint,
            token,
            fetch_timeout: Duration::from_millis(config.session_fetch_ms),
            started: Instant::now(),
            link: Mutex::new(Link {
                held,
                ..Link::default()
            }),
            fetched: Mutex::new(HashMap::new()),
            fetch_failed: Mutex::new(None),
            idle_ttl: Duration::from_secs(config.session_idle_ttl_secs),
        }))
    }

    /// The store this edge serves.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    }

    fn contact(&self) {
        self.link().contact = Some(Instant::now());
    }

    /// Whether the cloud was heard from lately.
    pub fn online(&self) -> bool {
        self.link()
            .contact
            .is_some_and(|t| t.elapsed() < LINK_SILENCE)
    }

    /// What the edge holds, by kind.
    pub fn held(&self) -> BTreeMap<String, Held> {
        self.link().held.clone()
    }

    fn sync_request(&self) -> pb::SyncBundlesRequest {
        pb::SyncBundlesRequest {
            store_id: self.store_id.clone(),
            held: self
                .link()
                .held
                .iter()
                .map(|(kind, h)| pb::HeldBundle {
                    kind: kind.clone(),
                    digest: h.digest.clone(),
                })
                .collect(),
        }
    }

    /// Receives bundles until the first `Synced` mark and writes them (before the node runs).
    async fn first_sync(&self, dir: &Path) -> anyhow::Result<()> {
        let mut client = self.client();
        let mut stream = client
            .sync_bundles(self.request(self.sync_request(), None))
            .await?
            .into_inner();
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
                    self.store(dir, &b)?;
                }
                Some(pb::sync_update::Update::Synced(_)) => return Ok(()),
                _ => {}
            }
        }
    }

    /// Writes a bundle file and its record, and notes it as held.
    fn store(&self, dir: &Path, b: &pb::BundleVersion) -> std::io::Result<()> {
        if !feed::KINDS.contains(&b.kind.as_str()) {
            return Err(std::io::Error::other(format!(
                "unknown bundle kind {:?}",
                b.kind
            )));
        }
        durable::replace(&bundle_file(dir, &b.kind), &b.payload)?;
        let held = Held {
            version: b.version.clone(),
            digest: b.digest.clone(),
            created_at_ms: b.created_at_ms,
        };
        durable::replace(
            &dir.join(format!("{}.held.json", b.kind)),
            &serde_json::to_vec(&held).expect("serialises"),
        )?;
        self.link().held.insert(b.kind.clone(), held);
        Ok(())
    }

    /// Follows the cloud's feed for as long as the node runs: loads and stores each new bundle version, applies
    /// tombstones, and reconnects (naming what it holds) whenever the feed fails or goes silent.
    pub async fn follow(self: Arc<Self>, node: Arc<Node>) {
        let mut refused = false;
        loop {
            if let Err(e) = self.follow_once(&node).await {
                let code = e.downcast_ref::<tonic::Status>().map(tonic::Status::code);
                let now_refused = matches!(
                    code,
                    Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                );
                if now_refused && !refused {
                    // Said once per episode: the link works, the cloud refuses this edge's credentials.
                    tracing::error!(error = %e, "the cloud refuses this edge: check upstream_token_file (scopes edge \
                        and decide, stores including this store_id)");
                } else {
                    tracing::debug!(error = %e, "bundle feed from the cloud interrupted");
                }
                refused = now_refused;
                self.reconnect();
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn follow_once(&self, node: &Arc<Node>) -> anyhow::Result<()> {
        let mut client = self.client();
        let mut stream = tokio::time::timeout(
            LINK_SILENCE,
            client.sync_bundles(self.request(self.sync_request(), None)),
        )
        .await
        .context("no answer from the cloud")??
        .into_inner();
        loop {
            let update = tokio::time::timeout(LINK_SILENCE, stream.message())
                .await
                .context("the cloud's feed went silent")??
                .context("the cloud ended the feed")?;
            self.contact();
            match update.update {
                Some(pb::sync_update::Update::Bundle(b)) => self.apply_bundle(node, b).await,
                Some(pb::sync_update::Update::Synced(_)) => {
                    let mut link = self.link();
                    link.synced = Some(Instant::now());
                }
                Some(pb::sync_update::Update::Forgotten(t)) => {
                    self.apply_tombstone(node, &t).await;
                }
                None => {}
            }
        }
    }

    async fn apply_bundle(&self, node: &Arc<Node>, b: pb::BundleVersion) {
        let refuse = |why: String| {
            metrics::counter!("aisle_bundle_refused_total", "kind" => "edge_feed").increment(1);
            tracing::warn!(kind = %b.kind, version = %b.version, error = %why, "bundle from the cloud refused");
            self.link().refused.get_or_insert_with(Instant::now);
        };
        if sha256_hex(&b.payload) != b.digest {
            return refuse("digest mismatch".into());
        }
        let Some(kind) = crate::server::BundleKindOnFeed::parse(&b.kind) else {
            return refuse("unknown kind".into());
        };
        let source = format!("cloud {} {}", b.kind, b.version);
        let bytes = Arc::new(b.payload.clone());
        match crate::server::load_bundle(node.decider(), node.bundle_files(), kind, bytes, &source)
            .await
        {
            Ok(()) => {}
            Err(e) => return refuse(e),
        }
        if let Err(e) = self.store(&self.dir, &b) {
            tracing::error!(kind = %b.kind, error = %e, "cannot store a bundle on disk (serving it until restart)");
        }
        self.link().refused = None;
        tracing::info!(kind = %b.kind, version = %b.version, "bundle from the cloud loaded");
        let _ = node
            .decider()
            .audit_action(
                "bundle_loaded",
                "cloud",
                serde_json::json!({"kind": b.kind, "version": b.version, "digest": b.digest}),
            )
            .await;
    }

    async fn apply_tombstone(&self, node: &Arc<Node>, t: &pb::Tombstone) {
        let decider = node.decider();
        if !decider
            .tombstones()
            .record(&t.shopper_ref, t.forgotten_at_ms)
        {
            return;
        }
        let mut shoppers: Vec<String> = decider
            .sessions()
            .shoppers_now()
            .into_iter()
            .map(String::from)
            .collect();
        if let Some(outbox) = node.outbox() {
            shoppers.extend(outbox.shoppers());
        }
        shoppers.sort();
        shoppers.dedup();
        for shopper in shoppers {
            if !decider
                .pseudonyms()
                .all_of(&shopper)
                .contains(&t.shopper_ref)
            {
                continue;
            }
            match crate::erasure::erase_here(node, &shopper, t.forgotten_at_ms, "cloud").await {
                Ok(r) => {
                    tracing::info!(shopper_ref = %t.shopper_ref, queued = r.queued_events_removed,
                    "shopper forgotten in the cloud erased at this edge")
                }
                Err(e) => tracing::error!(shopper_ref = %t.shopper_ref, error = %e,
                    "erasing a shopper forgotten in the cloud failed (retried at the next feed)"),
            }
        }
    }

    /// Copies the cloud's session of `shopper_id` here, when the shopper has none here or `entering` the store
    /// with nothing of theirs waiting in the queue — at most once per visit, within `budget`. Whether a session
    /// was installed.
    pub async fn pull_session(
        &self,
        node: &Node,
        shopper_id: &str,
        entering: bool,
        budget: Duration,
    ) -> bool {
        let sessions = node.decider().sessions();
        let here = sessions.holds_now(shopper_id);
        if here && !entering {
            return false;
        }
        if node.outbox().is_some_and(|o| o.has_pending(shopper_id)) {
            return false;
        }
        {
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
        }
        let backing_off = || {
            self.fetch_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() < FETCH_BACKOFF)
        };
        if !self.online() || (!entering && backing_off()) {
            self.forget_fetch(shopper_id);
            return false;
        }
        let timeout = self.fetch_timeout.min(budget);
        let mut client = self.client();
        let request = pb::FetchSessionRequest {
            shopper_id: shopper_id.to_string(),
            store_id: self.store_id.clone(),
        };
        let answer = match client
            .fetch_session(self.request(request, Some(timeout)))
            .await
        {
            Ok(a) => a.into_inner(),
            Err(e) => {
                metrics::counter!("aisle_edge_session_fetches_total", "result" => "failed")
                    .increment(1);
                tracing::debug!(error = %e, "the cloud's session could not be fetched");
                return false;
            }
        };
        self.contact();
        if answer.session.is_empty() {
            metrics::counter!("aisle_edge_session_fetches_total", "result" => "none").increment(1);
            return false;
        }
        let Ok(portable) = serde_json::from_slice(&answer.session) else {
            metrics::counter!("aisle_edge_session_fetches_total", "result" => "invalid")
                .increment(1);
            return false;
        };
        // Events taken here meanwhile would be lost by replacing the session: keep the local one then.
        if node.outbox().is_some_and(|o| o.has_pending(shopper_id)) {
            return false;
        }
        let catalog = node.decider().worlds().current().catalog.clone();
        let transfer = SessionTransfer {
            shopper_id: shopper_id.into(),
            context: SessionContext::from_portable(portable, &catalog),
        };
        let installed = sessions
            .import(vec![transfer], Duration::from_secs(1))
            .await
            .is_ok_and(|n| n > 0);
        metrics::counter!("aisle_edge_session_fetches_total", "result" => "installed").increment(1);
        installed
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
            .decider()
            .sessions()
            .forget(shopper_id, Duration::from_secs(1))
            .await;
        metrics::counter!("aisle_edge_sessions_handed_back_total").increment(1);
    }

    /// Asks the cloud to decide, within `timeout`.
    ///
    /// # Errors
    /// The cloud's status (or DEADLINE_EXCEEDED) when it did not answer in time.
    pub async fn decide_in_cloud(
        &self,
        request: &pb::DecideRequest,
        timeout: Duration,
    ) -> Result<pb::DecideResponse, tonic::Status> {
        use aisle_proto::v1::decision_service_client::DecisionServiceClient;
        let mut client = DecisionServiceClient::new(self.channel());
        let answer = tokio::time::timeout(
            timeout,
            client.decide(self.request(request.clone(), Some(timeout))),
        )
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("the cloud did not answer in time"))??;
        self.contact();
        Ok(answer.into_inner())
    }

    fn channel(&self) -> Channel {
        // A clone of the channel shares its connection.
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the connection to the cloud for a fresh one (the next call connects again).
    fn reconnect(&self) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = self.endpoint.connect_lazy();
    }

    fn client(&self) -> EdgeServiceClient<Channel> {
        EdgeServiceClient::new(self.channel()).max_decoding_message_size(MAX_BUNDLE_BYTES)
    }

    /// Uploads one queued entry; whether it leaves the queue (applied, a duplicate, or refused for good).
    pub async fn upload(&self, entry: &QueuedTrack) -> bool {
        let request = pb::UploadRequest {
            store_id: self.store_id.clone(),
            request: Some(entry.request.clone()),
            delivery: Some(pb::DeliveryKey {
                origin: entry.origin.clone(),
                seq: entry.seq,
            }),
            received_at_us: entry.received_at_us,
        };
        let mut client = self.client();
        match tokio::time::timeout(
            UPLOAD_TIMEOUT,
            client.upload(self.request(request, Some(UPLOAD_TIMEOUT))),
        )
        .await
        {
            Ok(Ok(answer)) => {
                self.contact();
                let a = answer.into_inner();
                metrics::counter!("aisle_edge_uploaded_events_total", "result" => "applied")
                    .increment(u64::from(a.accepted));
                metrics::counter!("aisle_edge_uploaded_events_total", "result" => "duplicate")
                    .increment(u64::from(a.duplicates));
                true
            }
            Ok(Err(status)) if refused_for_good(status.code()) => {
                self.contact();
                metrics::counter!("aisle_outbox_entries_dropped_total", "reason" => "refused")
                    .increment(1);
                tracing::error!(origin = %entry.origin, seq = entry.seq, error = %status.message(),
                    "the cloud refused a queued entry for good; it is dropped");
                true
            }
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), error = %status.message(), "upload failed; kept");
                false
            }
            Err(_) => false,
        }
    }

    /// Updates the gauges operators watch (every second).
    pub fn publish(&self) {
        let link = self.link();
        let since = |t: Option<Instant>| {
            t.map_or(self.started.elapsed(), |t| t.elapsed())
                .as_secs_f64()
        };
        let offline = if link.contact.is_some_and(|t| t.elapsed() < LINK_SILENCE) {
            0.0
        } else {
            since(link.contact)
        };
        // While the feed confirms the edge holds what the cloud serves: 0. Otherwise the time since it last could
        // (the most the edge can be behind), or since it refused a version the cloud serves.
        let lag = match link.refused {
            Some(t) => t.elapsed().as_secs_f64(),
            None if link.synced.is_some_and(|t| t.elapsed() < LINK_SILENCE) => 0.0,
            None => since(link.synced),
        };
        metrics::gauge!("aisle_edge_offline_seconds").set(offline);
        metrics::gauge!("aisle_edge_model_freshness_lag_seconds").set(lag);
        if let Some(m) = link.held.get("model") {
            metrics::gauge!("aisle_edge_model_created_seconds")
                .set(m.created_at_ms as f64 / 1000.0);
        }
    }
}

/// Whether the cloud will never take an entry it refused with `code` (a bad event), rather than not now.
fn refused_for_good(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bundle_files_matching_their_recorded_digest_count_as_held() {
        let dir = std::env::temp_dir().join(format!("aisle-edge-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |kind: &str, bytes: &[u8], digest: String| {
            durable::replace(&bundle_file(&dir, kind), bytes).unwrap();
            let held = Held {
                version: format!("{kind}-v1"),
                digest,
                created_at_ms: 7,
            };
            durable::replace(
                &dir.join(format!("{kind}.held.json")),
                &serde_json::to_vec(&held).unwrap(),
            )
            .unwrap();
        };
        put("catalog", b"{\"items\":[]}", sha256_hex(b"{\"items\":[]}"));
        // A file torn or changed after its record: not held (the feed sends it again).
        put("model", b"half a model", sha256_hex(b"the whole model"));
        // A record without its file: not held.
        put("rules", b"{}", sha256_hex(b"{}"));
        std::fs::remove_file(bundle_file(&dir, "rules")).unwrap();
        let held = held_on_disk(&dir);
        assert_eq!(held.keys().collect::<Vec<_>>(), vec!["catalog"]);
        assert_eq!(held["catalog"].version, "catalog-v1");
        assert!(
            !durable::temp_path(&bundle_file(&dir, "catalog")).exists(),
            "no temporary file is left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_bad_events_are_refused_for_good() {
        assert!(refused_for_good(tonic::Code::InvalidArgument));
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::FailedPrecondition,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(!refused_for_good(code), "{code:?} keeps the entry");
        }
    }
}
