//! A store edge's link to the cloud: the connection (TLS, the edge's token), the calls an edge makes
//! (`EdgeService/SyncBundles`, `FetchSession`, `Upload`, `DecisionService/Decide`), what the link knows of its
//! health (when the cloud last answered, when the feed last said the edge is current), and the bundle files the
//! edge holds on its disk (`edge_dir/bundles/<kind>.bin`, each with its `<kind>.held.json` record).
//!
//! The link is a client: it knows nothing of the node it serves. What the edge does with it is [`super::role`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aisle_domain::bundle::sha256_hex;
use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use aisle_proto::v1::edge_service_client::EdgeServiceClient;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::bundles::Kind;
use crate::config::Config;
use crate::durable::{self, outbox::QueuedTrack};
use crate::error::RemoteError;

/// The link counts as up while the cloud answered within this time (the feed sends a mark every second).
pub const LINK_SILENCE: Duration = Duration::from_secs(3);
/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest bundle accepted from the feed.
pub const MAX_BUNDLE_BYTES: usize = 512 << 20;

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

/// What the link knows of the cloud.
#[derive(Debug, Default)]
struct State {
    /// Last time the cloud answered anything (feed message, upload, fetch).
    contact: Option<Instant>,
    /// Last `Synced` mark: the edge then held everything the cloud served.
    synced: Option<Instant>,
    /// A bundle the cloud serves that this edge refused, and since when.
    refused: Option<Instant>,
    held: BTreeMap<String, Held>,
    /// The cloud's time of the last `Synced` mark (0: never): the feed sends erasures since then on connecting.
    erasures_synced_ms: i64,
    /// When `erasures_synced_ms` was last written to disk.
    erasures_saved: Option<Instant>,
    /// The current feed has sent its first `Synced` mark: every erasure since the last one is applied, and queued
    /// events may go up.
    caught_up: bool,
}

/// How often the time of the last `Synced` mark is written to disk (an edge restarted offline asks for erasures
/// since up to this much earlier than needed).
const ERASURES_SAVE: Duration = Duration::from_secs(10);

/// The file holding the cloud's time of the last `Synced` mark (`edge_dir/bundles/erasures.synced`).
fn erasures_file(dir: &Path) -> PathBuf {
    dir.join("erasures.synced")
}

/// The edge's side of the link to the cloud.
pub struct Link {
    store_id: String,
    dir: PathBuf,
    endpoint: Endpoint,
    /// The connection to the cloud; replaced by a fresh one when the link seems stuck (a TLS handshake whose
    /// bytes were lost has no timeout of its own, and every call would wait behind it).
    channel: Mutex<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    started: Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("store_id", &self.store_id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The directory of an edge's bundle files.
pub fn bundles_dir(config: &Config) -> Option<PathBuf> {
    config.edge_dir.as_ref().map(|d| d.join("bundles"))
}

/// The file of a bundle kind.
pub fn bundle_file(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(format!("{}.bin", kind.name()))
}

fn held_file(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(format!("{}.held.json", kind.name()))
}

/// Reads what the edge holds on disk: each kind whose file matches its recorded digest.
pub fn held_on_disk(dir: &Path) -> BTreeMap<String, Held> {
    let mut held = BTreeMap::new();
    for kind in Kind::ALL {
        let Ok(meta) = std::fs::read(held_file(dir, kind)) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<Held>(&meta) else {
            continue;
        };
        match std::fs::read(bundle_file(dir, kind)) {
            Ok(bytes) if sha256_hex(&bytes) == meta.digest => {
                held.insert(kind.name().to_string(), meta);
            }
            _ => tracing::warn!(
                kind = kind.name(),
                "edge bundle file missing or not matching its digest: ignored"
            ),
        }
    }
    held
}

impl Link {
    /// The edge's link settings (the channel connects lazily: nothing is sent yet).
    ///
    /// # Errors
    /// When the upstream address, its CA or the token file is unusable.
    pub fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        let url = config.upstream.clone().expect("validated: upstream is set");
        let endpoint = endpoint(&url, config)?;
        let token = token(config)?;
        if token.is_none() {
            tracing::warn!(
                "no upstream_token_file: a cloud that authenticates its callers will refuse this edge"
            );
        }
        let dir = bundles_dir(config).expect("validated: edge_dir is set");
        let held = held_on_disk(&dir);
        let erasures_synced_ms = std::fs::read_to_string(erasures_file(&dir))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok(Arc::new(Self {
            store_id: config.store_id.clone().unwrap_or_default(),
            dir,
            channel: Mutex::new(endpoint.connect_lazy()),
            endpoint,
            token,
            started: Instant::now(),
            state: Mutex::new(State {
                held,
                erasures_synced_ms,
                ..State::default()
            }),
        }))
    }

    /// The store this edge serves.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The cloud answered.
    pub fn contact(&self) {
        self.state().contact = Some(Instant::now());
    }

    /// Whether the cloud was heard from lately.
    pub fn online(&self) -> bool {
        self.state()
            .contact
            .is_some_and(|t| t.elapsed() < LINK_SILENCE)
    }

    /// The feed said the edge holds everything the cloud serves, and (having sent them first) every erasure since
    /// the last mark: queued events may go up. Its time is kept (on disk every [`ERASURES_SAVE`]); a gap in the
    /// cloud's erasure journal is counted in `aisle_edge_erasure_gaps_total` and logged.
    pub fn synced(&self, mark: &pb::Synced) {
        let (asked, save) = {
            let mut state = self.state();
            state.synced = Some(Instant::now());
            let asked = (!state.caught_up).then_some(state.erasures_synced_ms);
            state.caught_up = true;
            state.erasures_synced_ms = state.erasures_synced_ms.max(mark.at_ms);
            let save = asked.is_some()
                || state
                    .erasures_saved
                    .is_none_or(|t| t.elapsed() >= ERASURES_SAVE);
            if save {
                state.erasures_saved = Some(Instant::now());
            }
            (asked, save.then_some(state.erasures_synced_ms))
        };
        if let Some(since) = asked.filter(|&s| s > 0)
            && mark.erasures_complete_since_ms > since
        {
            metrics::counter!("aisle_edge_erasure_gaps_total").increment(1);
            tracing::error!(since, complete_since = mark.erasures_complete_since_ms, node = %mark.node,
                "the cloud cannot list every erasure since this edge last synced (offline longer than its \
                 erasure_journal_secs, or the cloud restarted meanwhile): queued events of a shopper forgotten in \
                 that gap may bring them back; see docs/privacy.md");
        }
        if let Some(at) = save
            && let Err(e) =
                durable::replace(&erasures_file(&self.dir), format!("{at}\n").as_bytes())
        {
            tracing::warn!(error = %e, "cannot write the time of the last sync");
        }
    }

    /// The feed broke: queued events wait for the next feed's first `Synced` mark.
    pub fn feed_lost(&self) {
        self.state().caught_up = false;
    }

    /// Whether the current feed has caught up on erasures (queued events may go up).
    pub fn caught_up(&self) -> bool {
        self.state().caught_up
    }

    /// The edge refused a version the cloud serves (it stays behind until a good one arrives).
    pub fn refused(&self) {
        self.state().refused.get_or_insert_with(Instant::now);
    }

    /// What the edge holds, by kind.
    pub fn held(&self) -> BTreeMap<String, Held> {
        self.state().held.clone()
    }

    /// Opens the cloud's bundle feed, naming the digests the edge holds (the stream then sends only what differs).
    ///
    /// # Errors
    /// The cloud's refusal, or no answer within `timeout`.
    pub async fn open_feed(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<tonic::Streaming<pb::SyncUpdate>> {
        let request = {
            let state = self.state();
            pb::SyncBundlesRequest {
                store_id: self.store_id.clone(),
                held: state
                    .held
                    .iter()
                    .map(|(kind, h)| pb::HeldBundle {
                        kind: kind.clone(),
                        digest: h.digest.clone(),
                    })
                    .collect(),
                erasures_since_ms: state.erasures_synced_ms,
            }
        };
        let mut client = self.client();
        let stream =
            tokio::time::timeout(timeout, client.sync_bundles(self.request(request, None)))
                .await
                .context("no answer from the cloud")??;
        Ok(stream.into_inner())
    }

    /// Writes a bundle file and its record durably, and notes it as held; a version loaded from the feed clears a
    /// refusal.
    ///
    /// # Errors
    /// An unknown kind, or when the files cannot be written.
    pub fn store(&self, b: &pb::BundleVersion) -> std::io::Result<()> {
        let Some(kind) = Kind::parse(&b.kind) else {
            return Err(std::io::Error::other(format!(
                "unknown bundle kind {:?}",
                b.kind
            )));
        };
        let file = bundle_file(&self.dir, kind);
        // The signature first, then the file. A crash between the two leaves a pair that fails the signature
        // check, never a file loaded under a signature that is not its own. With trusted keys the edge then refuses
        // to start from that directory (the error names the file): remove its bundles to fetch a fresh set.
        let sig = crate::bundles::signature::sig_path(&file);
        if b.signature.is_empty() {
            match std::fs::remove_file(&sig) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&b.signature);
            durable::replace(&sig, format!("{text}\n").as_bytes())?;
        }
        durable::replace(&file, &b.payload)?;
        let held = Held {
            version: b.version.clone(),
            digest: b.digest.clone(),
            created_at_ms: b.created_at_ms,
        };
        durable::replace(
            &held_file(&self.dir, kind),
            &serde_json::to_vec(&held).expect("serialises"),
        )?;
        self.state().held.insert(b.kind.clone(), held);
        Ok(())
    }

    /// A version was loaded: the edge is no longer behind for a refused one.
    pub fn loaded(&self) {
        self.state().refused = None;
    }

    /// Asks the cloud for a copy of a shopper's session, within `timeout`.
    ///
    /// # Errors
    /// Why the cloud did not answer.
    pub async fn fetch_session(
        &self,
        shopper_id: &str,
        timeout: Duration,
    ) -> Result<pb::FetchSessionResponse, RemoteError> {
        let request = pb::FetchSessionRequest {
            shopper_id: shopper_id.to_string(),
            store_id: self.store_id.clone(),
        };
        let answer = self
            .client()
            .fetch_session(self.request(request, Some(timeout)))
            .await?;
        self.contact();
        Ok(answer.into_inner())
    }

    /// Asks the cloud to decide, within `timeout`.
    ///
    /// # Errors
    /// Why the cloud did not answer in time.
    pub async fn decide_in_cloud(
        &self,
        request: &pb::DecideRequest,
        timeout: Duration,
    ) -> Result<pb::DecideResponse, RemoteError> {
        let mut client = DecisionServiceClient::new(self.channel());
        let answer = tokio::time::timeout(
            timeout,
            client.decide(self.request(request.clone(), Some(timeout))),
        )
        .await
        .map_err(|_| RemoteError::Deadline("the cloud did not answer in time".into()))??;
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
    pub fn reconnect(&self) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = self.endpoint.connect_lazy();
    }

    fn client(&self) -> EdgeServiceClient<Channel> {
        EdgeServiceClient::new(self.channel()).max_decoding_message_size(MAX_BUNDLE_BYTES)
    }

    /// Uploads one queued entry; whether it leaves the queue (applied, a duplicate, or refused for good). Nothing
    /// goes up before the feed has caught up on erasures ([`Link::caught_up`]): an entry of a shopper forgotten
    /// meanwhile is purged by then.
    pub async fn upload(&self, entry: &QueuedTrack) -> bool {
        if !self.caught_up() {
            return false;
        }
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
        let answer = tokio::time::timeout(
            UPLOAD_TIMEOUT,
            client.upload(self.request(request, Some(UPLOAD_TIMEOUT))),
        )
        .await;
        let Ok(answer) = answer else {
            return false;
        };
        match answer.map_err(RemoteError::from) {
            Ok(answer) => {
                self.contact();
                let a = answer.into_inner();
                metrics::counter!("aisle_edge_uploaded_events_total", "result" => "applied")
                    .increment(u64::from(a.accepted));
                metrics::counter!("aisle_edge_uploaded_events_total", "result" => "duplicate")
                    .increment(u64::from(a.duplicates));
                true
            }
            Err(e) if e.is_final() => {
                self.contact();
                metrics::counter!("aisle_outbox_entries_dropped_total", "reason" => "refused")
                    .increment(1);
                tracing::error!(origin = %entry.origin, seq = entry.seq, error = %e,
                    "the cloud refused a queued entry for good; it is dropped");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "upload failed; kept");
                false
            }
        }
    }

    /// Updates the gauges operators watch (every second).
    pub fn publish(&self) {
        let state = self.state();
        let since = |t: Option<Instant>| {
            t.map_or(self.started.elapsed(), |t| t.elapsed())
                .as_secs_f64()
        };
        let offline = if state.contact.is_some_and(|t| t.elapsed() < LINK_SILENCE) {
            0.0
        } else {
            since(state.contact)
        };
        // While the feed confirms the edge holds what the cloud serves: 0. Otherwise the time since it last could
        // (the most the edge can be behind), or since it refused a version the cloud serves.
        let lag = match state.refused {
            Some(t) => t.elapsed().as_secs_f64(),
            None if state.synced.is_some_and(|t| t.elapsed() < LINK_SILENCE) => 0.0,
            None => since(state.synced),
        };
        metrics::gauge!("aisle_edge_offline_seconds").set(offline);
        metrics::gauge!("aisle_edge_model_freshness_lag_seconds").set(lag);
        if let Some(m) = state.held.get(Kind::Model.name()) {
            metrics::gauge!("aisle_edge_model_created_seconds")
                .set(m.created_at_ms as f64 / 1000.0);
        }
    }
}

/// The connection settings of the cloud at `url`.
fn endpoint(url: &str, config: &Config) -> anyhow::Result<Endpoint> {
    let mut endpoint = Channel::from_shared(url.to_string())
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
        let files = crate::security::tls::ClientTlsFiles {
            ca: config.upstream_ca.clone(),
            cert: None,
            key: None,
        };
        endpoint = endpoint.tls_config(files.tonic_config(None)?)?;
    } else if config.upstream_ca.is_some() {
        anyhow::bail!("upstream_ca: needs an https:// upstream (got {url})");
    }
    Ok(endpoint)
}

/// The `authorization` header of the edge's token, if it has one.
fn token(
    config: &Config,
) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    let Some(file) = &config.upstream_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read upstream_token_file {}", file.display()))?;
    let value = format!("Bearer {}", text.trim())
        .parse()
        .map_err(|_| anyhow::anyhow!("upstream_token_file: not a valid header value"))?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bundle_files_matching_their_recorded_digest_count_as_held() {
        let dir = std::env::temp_dir().join(format!("aisle-edge-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |kind: Kind, bytes: &[u8], digest: String| {
            durable::replace(&bundle_file(&dir, kind), bytes).unwrap();
            let held = Held {
                version: format!("{kind}-v1"),
                digest,
                created_at_ms: 7,
            };
            durable::replace(&held_file(&dir, kind), &serde_json::to_vec(&held).unwrap()).unwrap();
        };
        put(
            Kind::Catalog,
            b"{\"items\":[]}",
            sha256_hex(b"{\"items\":[]}"),
        );
        // A file torn or changed after its record: not held (the feed sends it again).
        put(Kind::Model, b"half a model", sha256_hex(b"the whole model"));
        // A record without its file: not held.
        put(Kind::Rules, b"{}", sha256_hex(b"{}"));
        std::fs::remove_file(bundle_file(&dir, Kind::Rules)).unwrap();
        let held = held_on_disk(&dir);
        assert_eq!(held.keys().collect::<Vec<_>>(), vec!["catalog"]);
        assert_eq!(held["catalog"].version, "catalog-v1");
        assert!(
            !dir.join("catalog.bin.tmp").exists(),
            "no temporary file is left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_bad_events_are_refused_for_good() {
        let refused = |s: tonic::Status| RemoteError::from(s).is_final();
        assert!(refused(tonic::Status::invalid_argument(
            "events[0]: required"
        )));
        for status in [
            tonic::Status::unavailable(""),
            tonic::Status::deadline_exceeded(""),
            tonic::Status::permission_denied(""),
            tonic::Status::unauthenticated(""),
            tonic::Status::failed_precondition(""),
            tonic::Status::resource_exhausted(""),
        ] {
            let code = status.code();
            assert!(!refused(status), "{code:?} keeps the entry");
        }
    }
}
