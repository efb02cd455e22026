//! The node's configuration: typed, with documented defaults, from a TOML file, environment variables and flags
//! (flags win over the environment, which wins over the file). Unknown keys in the file are an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aisle_policy::{ConsentDefaults, MAX_REGION_BYTES};
use aisle_session::{AssistRules, SessionLimits, SessionSettings};
use serde::{Deserialize, Serialize};

/// How the node finds its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// A single node, alone: it owns every shopper. No etcd needed.
    Static,
    /// Membership in etcd; shoppers are spread over the live members.
    Etcd,
}

/// What a node is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A member of the cloud cluster, or a node alone (a laptop): it owns its bundles and shoppers.
    #[default]
    Cloud,
    /// A store's edge node: bundles come from the cloud (`upstream`), it owns the sessions of the shoppers in its
    /// store, queues their events for the cloud, and decides through WAN outages (docs/architecture.md, "Edge and
    /// cloud").
    Edge,
}

/// Where an edge decides a surface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Site {
    /// Here, with the local sessions and the last bundles.
    #[default]
    Edge,
    /// Forwarded to the cloud; answered here when the cloud does not answer within the budget.
    Cloud,
}

/// One row of the placement table: which requests it covers, where an edge decides them and their budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The surface, as named in the API without its prefix and in lower case (`home`, `product_page`,
    /// `store_aisle`, ...); absent: every surface.
    #[serde(default)]
    pub surface: Option<String>,
    /// The channel, likewise (`web`, `app`, `kiosk`, `pos`, `associate_handheld`, `email`); absent: every channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Where an edge decides it (default `edge`; a cloud node decides everything itself).
    #[serde(default)]
    pub at: Site,
    /// The budget of a decision whose caller sends no deadline (replaces `decide_budget_ms` for these requests).
    pub budget_ms: u64,
}

impl Placement {
    /// Whether the row covers a request for `surface` on `channel` (names as in [`Placement::surface`]).
    pub fn covers(&self, surface: &str, channel: &str) -> bool {
        self.surface.as_deref().is_none_or(|s| s == surface)
            && self.channel.as_deref().is_none_or(|c| c == channel)
    }
}

/// The lower-case name of a proto enum value without its prefix (`SURFACE_PRODUCT_PAGE` → `product_page`).
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// The placement table resolved once for every surface and channel value of the API: a request finds its row by
/// its two enum values, without building names (an unknown value counts as unspecified, as protobuf reads it).
#[derive(Debug, Clone, Default)]
pub struct Placements {
    /// Channel values per surface row.
    channels: usize,
    /// By `surface * channels + channel`: the covering row, if any.
    rows: Vec<Option<Placement>>,
}

impl Placements {
    /// The table of `config`'s rows.
    pub fn new(config: &Config) -> Self {
        use aisle_proto::v1 as pb;
        if config.placement.is_empty() {
            return Self::default();
        }
        let surfaces: Vec<String> = (0..)
            .map_while(|i| pb::Surface::try_from(i).ok())
            .map(|s| enum_name(s.as_str_name(), "SURFACE_"))
            .collect();
        let channels: Vec<String> = (0..)
            .map_while(|i| pb::Channel::try_from(i).ok())
            .map(|c| enum_name(c.as_str_name(), "CHANNEL_"))
            .collect();
        let rows = surfaces
            .iter()
            .flat_map(|s| channels.iter().map(move |c| (s, c)))
            .map(|(s, c)| config.placement_for(s, c).cloned())
            .collect();
        Self {
            channels: channels.len(),
            rows,
        }
    }

    /// The row covering a request for the surface and channel values given, if any.
    pub fn row(&self, surface: i32, channel: i32) -> Option<&Placement> {
        if self.rows.is_empty() {
            return None;
        }
        let index = |value: i32, count: usize| {
            usize::try_from(value)
                .ok()
                .filter(|&v| v < count)
                .unwrap_or(0)
        };
        let surfaces = self.rows.len() / self.channels;
        self.rows[index(surface, surfaces) * self.channels + index(channel, self.channels)].as_ref()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything a node needs to run. Every field has a default; see [`Config::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, reported as `served_by` (default: the host name, else "aisle-1").
    pub node_id: String,
    /// gRPC listen address (default 127.0.0.1:50051).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /metrics, /healthz, /readyz (default 127.0.0.1:9090).
    pub http_addr: SocketAddr,
    /// Directory for bundles not given explicitly (`catalog.json`, `model.bin`, `rules.json`, `experiments.json`
    /// are used when present) and the decision log. None: embedded demo data, no decision log.
    pub data_dir: Option<PathBuf>,
    /// Catalog bundle (JSON). None: the data dir's, else the demo world's.
    pub catalog: Option<PathBuf>,
    /// Model bundle. None: the data dir's, else a model trained at start-up on the demo history.
    pub model: Option<PathBuf>,
    /// A candidate model, served to the experiment variants that ask for `"candidate"`.
    pub candidate_model: Option<PathBuf>,
    /// Guardrail rules bundle (JSON). None: the data dir's, else the embedded defaults.
    pub rules: Option<PathBuf>,
    /// Experiments bundle (JSON). None: the data dir's, else the embedded defaults.
    pub experiments: Option<PathBuf>,
    /// How often bundle files are checked for a new version (0: never).
    pub bundle_poll_secs: u64,
    /// Budget of a decision when the caller sends no deadline (default 50 ms).
    pub decide_budget_ms: u64,
    /// Longest budget honoured, whatever the caller's deadline (default 1,000 ms).
    pub max_budget_ms: u64,
    /// Kept free at the end of a budget for the lower rungs and the response: at least this (default 2 ms), and
    /// at least a tenth of the budget.
    pub safety_margin_ms: u64,
    /// Session shard actors (default: 8 per core, at least 8).
    pub session_shards: usize,
    /// Ranking shard actors (default: one per core).
    pub ranking_shards: usize,
    /// A session idle this long is passivated (default 1,800 s).
    pub session_idle_ttl_secs: u64,
    /// Bounds per session.
    pub session_limits: SessionLimits,
    /// When session activity becomes an assist suggestion.
    pub assist: AssistRules,
    /// Cached decisions kept (the CACHED rung; default 200,000).
    pub cache_capacity: usize,
    /// How long a cached decision may be served (default 600 s).
    pub cache_ttl_secs: u64,
    /// Consent assumed when a request does not say (default false: no behavioural data).
    pub default_consent: bool,
    /// Consent assumed per region (`[consent_defaults]`, e.g. `EU = false`, `US = true`) for shoppers who stated
    /// none, in place of `default_consent`: markets differ (opt-in here, opt-out there). A region is looked up by
    /// its name, then by the part before its first `-` (`US-CA` → `US`); others get `default_consent`. Default:
    /// empty.
    pub consent_defaults: BTreeMap<String, bool>,
    /// Events timestamped further than this in the future are refused (default 300 s).
    pub max_future_skew_secs: u64,
    /// Assist events retained per store for resuming handhelds (default 4,096; at least 1,000).
    pub push_retention: usize,
    /// Decisions in flight beyond this answer at once from the GENERIC rung (0: no limit; default 64). At 5,000
    /// decisions/s a node holds 2–3 at once; 64 is reached only when the node cannot keep up, and then the excess
    /// is answered in microseconds instead of queueing behind the work it cannot do.
    pub max_inflight_decisions: usize,
    /// Requests in flight beyond this are refused with RESOURCE_EXHAUSTED (0: no limit; default 1,024).
    /// Subscribe streams count only while they open.
    pub max_inflight_requests: usize,
    /// Allow `AdminService/SetFault` (for drills and tests; default false).
    pub fault_injection: bool,
    /// The decision trail: a hash-chained JSON line per decision and per admin action (docs/privacy.md). None:
    /// no trail.
    pub decision_log: Option<PathBuf>,
    /// Write every applied, consented shopper event here as a JSON line (the format `aisle-train` reads), the
    /// shopper named by pseudonym. None: no log.
    pub event_log: Option<PathBuf>,
    /// A log segment is sealed and a new one begun at this size (default 64 MiB).
    pub log_segment_bytes: u64,
    /// ... or at this age (default 3,600 s).
    pub log_segment_secs: u64,
    /// Sealed segments are deleted this long after their last record (default 720 h: 30 days).
    pub log_retention_hours: u64,
    /// Sealed segments beyond this total size, per log, are deleted oldest first (default 8 GiB; 0: no limit).
    pub log_max_bytes: u64,
    /// Written records are made durable (fsync) at least this often (default 200 ms); admin actions are durable
    /// before their RPC returns.
    pub log_sync_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// The Track outbox (docs/architecture.md, "The Track outbox"): events whose owner cannot take them now are
    /// kept here, fsync'd, and delivered later. None: no outbox (such a Track fails with UNAVAILABLE). It must be
    /// writable and should outlive the process (a volume of the node's own).
    pub outbox_dir: Option<PathBuf>,
    /// Events the outbox holds at most (default 200,000); beyond it a Track that would queue gets
    /// RESOURCE_EXHAUSTED.
    pub outbox_max_events: usize,
    /// Bytes of entries the outbox holds at most (default 256 MiB).
    pub outbox_max_bytes: u64,
    /// What this node is (default `cloud`).
    pub role: Role,
    /// The store an edge serves (required with `role = "edge"`; at most 256 bytes).
    pub store_id: Option<String>,
    /// The cloud cluster's gRPC address an edge talks to, e.g. `https://aisle.example.com:443` (required with
    /// `role = "edge"`).
    pub upstream: Option<String>,
    /// File holding the bearer token an edge shows the cloud (a token with the `edge` scope there).
    pub upstream_token_file: Option<PathBuf>,
    /// PEM CA certificate that signs the cloud's certificate [default: the system's roots].
    pub upstream_ca: Option<PathBuf>,
    /// An edge's own directory: the last good bundles (`bundles/`) and, unless `outbox_dir` says otherwise, the
    /// queue of events for the cloud (`queue/`). Required with `role = "edge"`; it must outlive the process.
    pub edge_dir: Option<PathBuf>,
    /// How long an edge waits for the cloud's copy of a shopper's session when they enter the store (default
    /// 300 ms; the Track or the first Decide goes on without it after that).
    pub session_fetch_ms: u64,
    /// The placement table: the first row that covers a request gives its budget and, at an edge, where it is
    /// decided. A request no row covers is decided here within `decide_budget_ms`.
    pub placement: Vec<Placement>,
    /// Membership mode.
    pub cluster: ClusterMode,
    /// etcd endpoints (etcd mode), e.g. `http://etcd-0:2379`.
    pub etcd_endpoints: Vec<String>,
    /// Cluster name: members register under `/aisle/<cluster_name>/members/` (default "aisle").
    pub cluster_name: String,
    /// Address peers use to reach this node's gRPC port (default: the gRPC address, with the host name when it
    /// listens on all interfaces).
    pub advertise_addr: Option<String>,
    /// Membership lease TTL in seconds (default 5): a crashed node's shoppers move after about this long.
    pub lease_ttl_secs: u64,
    /// In a cluster, how often (ms) changed sessions are copied to the member that takes them over should this
    /// node fail (default 200; 0: no replication, a crash loses its shoppers' sessions).
    pub replication_ms: u64,
    /// PEM certificate chain of the client and admin ports. With `tls_key`, those ports speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates identify callers (their subject CN is looked up in the token file).
    pub tls_client_ca: Option<PathBuf>,
    /// The token file (TOML, see docs/security.md): callers then need a bearer token or a client certificate with
    /// the method's scope.
    pub auth_tokens: Option<PathBuf>,
    /// Serve without TLS or authentication on a non-loopback address or in a cluster. Logged at warn on every
    /// start and shown by `aisle_insecure` = 1.
    pub insecure: bool,
    /// A separate listener for `AdminService` (same TLS and tokens as the client port). None: admin calls are
    /// served on `grpc_addr`.
    pub admin_addr: Option<SocketAddr>,
    /// Listener for other nodes' calls (cluster = etcd only; default 127.0.0.1:50052). Mutual TLS with
    /// `peer_tls_ca` when `peer_tls_cert` is set.
    pub peer_addr: SocketAddr,
    /// PEM certificate chain this node presents to peers, as server and as client.
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of `peer_tls_cert`.
    pub peer_tls_key: Option<PathBuf>,
    /// PEM CA of the cluster: peers must present a certificate it signed, on both ends of every peer call.
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM CA that signs etcd's server certificate (use `https://` endpoints).
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with etcd's `--client-cert-auth`, its CN is the etcd user when no password
    /// is given).
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of `etcd_cert`.
    pub etcd_key: Option<PathBuf>,
    /// etcd user (with `etcd_password_file`).
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    pub etcd_password_file: Option<PathBuf>,
    /// Serve gRPC server reflection (default true; it needs an authenticated caller when tokens are on).
    pub reflection: bool,
    /// How often certificate, key, CA and token files are checked for a new version (default 5 s).
    pub credential_reload_secs: u64,
    /// Active sessions per node; beyond it the least recently active are passivated (default 500,000).
    pub max_sessions: usize,
    /// Subscribe streams open at once on this node (default 10,000).
    pub max_subscribe_streams: usize,
    /// Subscribe streams open at once per identity (default 256).
    pub max_subscribe_streams_per_caller: usize,
    /// Store edges' bundle feeds (`EdgeService/SyncBundles`) open at once on this node (default 1,000).
    pub max_edge_feeds: usize,
    /// Bundle feeds open at once per identity (default 4: an edge holds one, and a reconnect may briefly overlap
    /// with the old one until its dead connection is noticed).
    pub max_edge_feeds_per_caller: usize,
    /// Connections open at once per listener; beyond it new connections are closed (default 4,096).
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (default 256).
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval, seconds; a peer silent for 10 s more is dropped (default 30).
    pub keepalive_secs: u64,
    /// Largest message between nodes, bytes (default 64 MiB: hand-off batches).
    pub max_peer_message_bytes: usize,
    /// The pseudonym key file (hex keys, one per line, current first; docs/privacy.md). None: a key generated for
    /// this run (loopback only, unless `insecure`).
    pub pseudonym_key: Option<PathBuf>,
    /// Public keys bundles must be signed with (one base64 Ed25519 key a line; `bundles::signature`). None:
    /// bundle files are loaded unsigned.
    pub trusted_keys: Option<PathBuf>,
    /// How long a forgotten shopper's tombstone stops an older copy of their session from coming back (default
    /// 3,600 s; at least the session idle TTL plus two leases, after which no copy can be left).
    pub tombstone_ttl_secs: u64,
    /// How long the journal of erasures is kept for store edges that were offline for longer than the tombstone TTL
    /// (default 2,592,000 s = 30 days; at least `tombstone_ttl_secs`). An edge offline for longer is told that its
    /// catch-up is incomplete.
    pub erasure_journal_secs: u64,
    /// Stores with assist logs on this node when the catalog names no stores; beyond it the least recently used
    /// store without subscribers is dropped (default 10,000).
    pub max_stores: usize,
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "aisle-1".to_string())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            grpc_addr: "127.0.0.1:50051".parse().expect("valid"),
            http_addr: "127.0.0.1:9090".parse().expect("valid"),
            data_dir: None,
            catalog: None,
            model: None,
            candidate_model: None,
            rules: None,
            experiments: None,
            bundle_poll_secs: 2,
            decide_budget_ms: 50,
            max_budget_ms: 1_000,
            safety_margin_ms: 2,
            session_shards: (8 * cores()).max(8),
            ranking_shards: cores(),
            session_idle_ttl_secs: 30 * 60,
            session_limits: SessionLimits::default(),
            assist: AssistRules::default(),
            cache_capacity: 200_000,
            cache_ttl_secs: 600,
            default_consent: false,
            consent_defaults: BTreeMap::new(),
            max_future_skew_secs: 300,
            push_retention: 4_096,
            max_inflight_decisions: 64,
            max_inflight_requests: 1_024,
            fault_injection: false,
            decision_log: None,
            event_log: None,
            log_segment_bytes: 64 * 1024 * 1024,
            log_segment_secs: 3_600,
            log_retention_hours: 720,
            log_max_bytes: 8 * 1024 * 1024 * 1024,
            log_sync_ms: 200,
            log_format: LogFormat::Text,
            outbox_dir: None,
            outbox_max_events: 200_000,
            outbox_max_bytes: 256 * 1024 * 1024,
            role: Role::Cloud,
            store_id: None,
            upstream: None,
            upstream_token_file: None,
            upstream_ca: None,
            edge_dir: None,
            session_fetch_ms: 300,
            placement: Vec::new(),
            cluster: ClusterMode::Static,
            etcd_endpoints: Vec::new(),
            cluster_name: "aisle".to_string(),
            advertise_addr: None,
            lease_ttl_secs: 5,
            replication_ms: 200,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_tokens: None,
            insecure: false,
            admin_addr: None,
            peer_addr: "127.0.0.1:50052".parse().expect("valid"),
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
            reflection: true,
            credential_reload_secs: 5,
            max_sessions: 500_000,
            max_subscribe_streams: 10_000,
            max_subscribe_streams_per_caller: 256,
            max_edge_feeds: 1_000,
            max_edge_feeds_per_caller: 4,
            max_connections: 4_096,
            max_concurrent_streams: 256,
            keepalive_secs: 30,
            max_peer_message_bytes: 64 * 1024 * 1024,
            max_stores: 10_000,
            pseudonym_key: None,
            trusted_keys: None,
            tombstone_ttl_secs: 3_600,
            erasure_journal_secs: 30 * 86_400,
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape (unknown keys included).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Candidates up to which a decision is scored in its own task. Retrieval yields about 500; scoring them takes
/// tens of microseconds, less than scattering them to the ranking shards and gathering the results costs in
/// thread hand-offs. Larger sets (a storefront's long candidate lists) still spread over the shards.
pub const INLINE_SCORING_MAX: usize = 2_000;

impl Config {
    /// Reads a TOML file over the defaults.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or holds unknown keys.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// The first value out of range, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_basics()?;
        self.validate_placement()?;
        self.validate_edge()?;
        self.validate_cluster()?;
        self.validate_credentials()?;
        self.validate_limits()?;
        self.validate_exposure()
    }

    /// The node id, budgets, shards, etcd endpoints and the outbox.
    fn validate_basics(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id.is_empty() || self.node_id.len() > aisle_domain::MAX_ID_BYTES {
            return bad("node_id: must be 1 to 256 bytes");
        }
        if self.decide_budget_ms == 0 || self.decide_budget_ms > self.max_budget_ms {
            return bad("decide_budget_ms: must be positive and at most max_budget_ms");
        }
        if self.safety_margin_ms >= self.decide_budget_ms {
            return bad("safety_margin_ms: must be below decide_budget_ms");
        }
        if self.session_shards == 0 || self.ranking_shards == 0 {
            return bad("session_shards, ranking_shards: must be positive");
        }
        if self.cluster == ClusterMode::Etcd && self.etcd_endpoints.is_empty() {
            return bad("etcd_endpoints: required with cluster = etcd");
        }
        if self.outbox_max_events == 0 || self.outbox_max_bytes < 1024 * 1024 {
            return bad(
                "outbox_max_events: must be positive; outbox_max_bytes: at least 1048576 (1 MiB)",
            );
        }
        Ok(())
    }

    /// What a store edge needs: its store, its upstream, its directory.
    fn validate_edge(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.role == Role::Edge {
            if self.cluster == ClusterMode::Etcd {
                return bad(
                    "role = edge: an edge runs alone (cluster = static); the cloud cluster is its upstream",
                );
            }
            if self
                .store_id
                .as_ref()
                .is_none_or(|s| s.is_empty() || s.len() > aisle_domain::MAX_ID_BYTES)
            {
                return bad("store_id: required with role = edge, 1 to 256 bytes");
            }
            if self.upstream.is_none() {
                return bad("upstream: required with role = edge (the cloud's gRPC address)");
            }
            if let Some(upstream) = &self.upstream
                && !upstream.starts_with("https://")
                && !self.insecure
            {
                return bad(
                    "upstream: must be https:// (the edge sends its store's token and shoppers' events over it), \
                     or pass --insecure for a test bench",
                );
            }
            if self.edge_dir.is_none() {
                return bad(
                    "edge_dir: required with role = edge (bundles and the queue for the cloud)",
                );
            }
            if self.session_fetch_ms == 0 || self.session_fetch_ms > 5_000 {
                return bad("session_fetch_ms: 1 to 5000");
            }
        }
        Ok(())
    }

    /// Replication, leases, the cluster name, push retention, consent regions and session bounds.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.replication_ms > 10_000 {
            return bad("replication_ms: at most 10000 (0 turns replication off)");
        }
        if self.lease_ttl_secs < 2 {
            return bad("lease_ttl_secs: must be at least 2");
        }
        if self.cluster_name.is_empty() || self.cluster_name.contains('/') {
            return bad("cluster_name: must be non-empty and contain no '/'");
        }
        if self.push_retention < 1_000 {
            return bad("push_retention: must be at least 1000");
        }
        if let Some(region) = self
            .consent_defaults
            .keys()
            .find(|r| r.is_empty() || r.len() > MAX_REGION_BYTES)
        {
            return Err(ConfigError::Invalid(format!(
                "consent_defaults: region {region:?} must be 1 to {MAX_REGION_BYTES} bytes"
            )));
        }
        if self.session_limits.history == 0 || self.session_limits.affinity_half_life_ms <= 0 {
            return bad("session_limits: history and affinity_half_life_ms must be positive");
        }
        Ok(())
    }

    /// TLS, peer TLS and etcd credentials come whole or not at all.
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert, tls_key: give both or neither");
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return bad("tls_client_ca: needs tls_cert and tls_key");
        }
        let peer_tls = [&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca];
        if peer_tls.iter().any(|p| p.is_some()) && !peer_tls.iter().all(|p| p.is_some()) {
            return bad(
                "peer_tls_cert, peer_tls_key, peer_tls_ca: give all three (mutual TLS) or none",
            );
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return bad("etcd_cert, etcd_key: give both or neither");
        }
        if self.etcd_user.is_some() != self.etcd_password_file.is_some() {
            return bad("etcd_user, etcd_password_file: give both or neither");
        }
        Ok(())
    }

    /// Tombstones outlive session copies; logs, sessions, streams and peer messages within their ranges.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.tombstone_ttl_secs < self.session_idle_ttl_secs + 2 * self.lease_ttl_secs {
            return bad(
                "tombstone_ttl_secs: must be at least session_idle_ttl_secs plus two lease_ttl_secs (an old \
                 owner's copy of a session lives that long)",
            );
        }
        if self.erasure_journal_secs < self.tombstone_ttl_secs {
            return bad("erasure_journal_secs: must be at least tombstone_ttl_secs");
        }
        if self.log_segment_bytes < 4096 || self.log_segment_secs == 0 || self.log_sync_ms == 0 {
            return bad(
                "log_segment_bytes (at least 4096), log_segment_secs, log_sync_ms: out of range",
            );
        }
        if self.log_retention_hours == 0 {
            return bad("log_retention_hours: must be positive");
        }
        if self.credential_reload_secs == 0 {
            return bad("credential_reload_secs: must be positive");
        }
        if self.max_sessions < 1_000 || self.max_stores == 0 || self.max_concurrent_streams == 0 {
            return bad(
                "max_sessions (at least 1000), max_stores, max_concurrent_streams: out of range",
            );
        }
        if self.max_subscribe_streams == 0 || self.max_subscribe_streams_per_caller == 0 {
            return bad(
                "max_subscribe_streams, max_subscribe_streams_per_caller: must be positive",
            );
        }
        if self.max_edge_feeds == 0 || self.max_edge_feeds_per_caller == 0 {
            return bad("max_edge_feeds, max_edge_feeds_per_caller: must be positive");
        }
        if self.max_peer_message_bytes < 1024 * 1024 {
            return bad("max_peer_message_bytes: must be at least 1 MiB");
        }
        if self
            .admin_addr
            .is_some_and(|a| a.port() != 0 && (a == self.grpc_addr || a == self.http_addr))
        {
            return bad("admin_addr: must differ from grpc_addr and http_addr");
        }
        Ok(())
    }

    /// A node reachable from other hosts, or clustered, is secured unless told `insecure`.
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        let gaps = self.security_gaps();
        if !gaps.is_empty() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve {} without {}; configure them (docs/security.md), or pass --insecure to \
                 accept an open node",
                self.exposure(),
                gaps.join(", ")
            )));
        }
        Ok(())
    }

    fn validate_placement(&self) -> Result<(), ConfigError> {
        use aisle_proto::v1 as pb;
        let surfaces: Vec<String> = (1..)
            .map_while(|i| pb::Surface::try_from(i).ok())
            .map(|s| enum_name(s.as_str_name(), "SURFACE_"))
            .collect();
        let channels: Vec<String> = (1..)
            .map_while(|i| pb::Channel::try_from(i).ok())
            .map(|c| enum_name(c.as_str_name(), "CHANNEL_"))
            .collect();
        for (i, row) in self.placement.iter().enumerate() {
            let invalid =
                |what: String| Err(ConfigError::Invalid(format!("placement[{i}].{what}")));
            if let Some(s) = &row.surface
                && !surfaces.contains(s)
            {
                return invalid(format!(
                    "surface: {s:?} is not one of {}",
                    surfaces.join(", ")
                ));
            }
            if let Some(c) = &row.channel
                && !channels.contains(c)
            {
                return invalid(format!(
                    "channel: {c:?} is not one of {}",
                    channels.join(", ")
                ));
            }
            if row.budget_ms == 0 || row.budget_ms > self.max_budget_ms {
                return invalid(format!(
                    "budget_ms: must be positive and at most max_budget_ms ({})",
                    self.max_budget_ms
                ));
            }
            if row.budget_ms <= self.safety_margin_ms {
                return invalid("budget_ms: must be above safety_margin_ms".to_string());
            }
        }
        Ok(())
    }

    /// The placement row covering `surface` on `channel`, if any.
    pub fn placement_for(&self, surface: &str, channel: &str) -> Option<&Placement> {
        self.placement.iter().find(|p| p.covers(surface, channel))
    }

    /// The placement table resolved for every surface and channel of the API, once.
    pub fn placements(&self) -> Placements {
        Placements::new(self)
    }

    /// Why this node must be secured: it binds a non-loopback address or joins a cluster. None for the
    /// loopback demo.
    fn exposure(&self) -> String {
        let mut why = Vec::new();
        let mut addrs = vec![("grpc_addr", self.grpc_addr), ("http_addr", self.http_addr)];
        if let Some(a) = self.admin_addr {
            addrs.push(("admin_addr", a));
        }
        if self.cluster == ClusterMode::Etcd {
            addrs.push(("peer_addr", self.peer_addr));
            why.push("cluster = etcd".to_string());
        }
        for (name, a) in addrs {
            if !a.ip().is_loopback() {
                why.push(format!("{name} {a} (not loopback)"));
            }
        }
        why.join(", ")
    }

    /// What a node that is reachable from other hosts, or clustered, lacks to be secure: empty when it is
    /// secured, or when it is the loopback demo.
    pub fn security_gaps(&self) -> Vec<&'static str> {
        if self.exposure().is_empty() {
            return Vec::new();
        }
        let mut gaps = Vec::new();
        if self.tls_cert.is_none() || self.tls_key.is_none() {
            gaps.push("TLS (tls_cert and tls_key / --tls-cert --tls-key)");
        }
        if self.auth_tokens.is_none() {
            gaps.push("an auth file (auth_tokens / --auth-tokens)");
        }
        if self.pseudonym_key.is_none() {
            gaps.push("a pseudonym key file (pseudonym_key / --pseudonym-key)");
        }
        if self.cluster == ClusterMode::Etcd {
            if self.peer_tls_cert.is_none() {
                gaps.push("peer mutual TLS (peer_tls_cert, peer_tls_key, peer_tls_ca)");
            }
            if self.etcd_ca.is_none() {
                gaps.push("etcd TLS (etcd_ca, https:// endpoints)");
            }
            if self.etcd_cert.is_none() && self.etcd_user.is_none() {
                gaps.push("etcd authentication (etcd_cert and etcd_key, or etcd_user and etcd_password_file)");
            }
        }
        gaps
    }

    /// The consent defaults: per region, else `default_consent`.
    pub fn consent(&self) -> ConsentDefaults {
        ConsentDefaults {
            fallback: self.default_consent,
            regions: self.consent_defaults.clone(),
        }
    }

    /// Session actor settings.
    pub fn session_settings(&self) -> SessionSettings {
        let ttl = Duration::from_secs(self.session_idle_ttl_secs.max(1));
        SessionSettings {
            limits: self.session_limits,
            // The consent default travels with each event (resolved for its region when validated).
            assist: self.assist,
            idle_ttl: ttl,
            passivation_interval: (ttl / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
            max_sessions_per_shard: self.max_sessions.div_ceil(self.session_shards.max(1)),
        }
    }

    /// The bundle file of `name` in the data dir, if it exists there.
    pub fn data_file(&self, name: &str) -> Option<PathBuf> {
        let p = self.data_dir.as_ref()?.join(name);
        p.exists().then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.grpc_addr.port(), 50051);
        assert_eq!(c.http_addr.port(), 9090);
        assert_eq!(c.decide_budget_ms, 50);
        assert_eq!(c.session_idle_ttl_secs, 1_800);
        assert!(!c.default_consent);
        assert_eq!(c.cluster, ClusterMode::Static);
    }

    #[test]
    fn files_override_defaults_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("aisle-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "node_id = \"n7\"\ndecide_budget_ms = 30\n[assist]\ncart_value_threshold_cents = 100\n",
        )
        .unwrap();
        let c = Config::from_file(&good).unwrap();
        assert_eq!(c.node_id, "n7");
        assert_eq!(c.decide_budget_ms, 30);
        assert_eq!(c.assist.cart_value_threshold_cents, 100);
        assert_eq!(c.assist.linger_events, AssistRules::default().linger_events);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "node_idd = \"n7\"\n").unwrap();
        let err = Config::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("node_idd"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn out_of_range_values_are_named() {
        let c = Config {
            safety_margin_ms: 60,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("safety_margin_ms")
        );
        let c = Config {
            push_retention: 10,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("push_retention")
        );
        for region in [String::new(), "R".repeat(65)] {
            let c = Config {
                consent_defaults: [(region, true)].into_iter().collect(),
                ..Config::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("consent_defaults: region"), "{err}");
        }
    }

    #[test]
    fn consent_defaults_are_a_table_of_regions() {
        let c: Config = toml::from_str(
            "default_consent = false\n[consent_defaults]\nEU = false\nUS = true\n\"US-CA\" = false\n",
        )
        .unwrap();
        c.validate().unwrap();
        let consent = c.consent();
        assert!(consent.for_region("US-NY"));
        assert!(!consent.for_region("US-CA"));
        assert!(!consent.for_region("EU"));
        assert!(!consent.for_region("JP"));
        let err = toml::from_str::<Config>("[consent_defaults]\nEU = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("EU = \"no\"") && err.contains("boolean"),
            "{err}"
        );
    }

    #[test]
    fn a_placement_table_is_read_matched_first_row_first_and_checked() {
        let c: Config = toml::from_str(
            "[[placement]]\nsurface = \"home\"\nchannel = \"kiosk\"\nat = \"cloud\"\nbudget_ms = 200\n\n\
             [[placement]]\nsurface = \"home\"\nbudget_ms = 30\n\n\
             [[placement]]\nchannel = \"associate_handheld\"\nbudget_ms = 80\n",
        )
        .unwrap();
        c.validate().unwrap();
        let at = |surface: &str, channel: &str| {
            c.placement_for(surface, channel)
                .map(|p| (p.at, p.budget_ms))
        };
        assert_eq!(at("home", "kiosk"), Some((Site::Cloud, 200)));
        assert_eq!(at("home", "web"), Some((Site::Edge, 30)));
        assert_eq!(at("cart", "associate_handheld"), Some((Site::Edge, 80)));
        assert_eq!(at("cart", "web"), None);
        assert_eq!(
            enum_name("SURFACE_PRODUCT_PAGE", "SURFACE_"),
            "product_page"
        );

        let bad = |row: &str| {
            let c: Config = toml::from_str(&format!("[[placement]]\n{row}\n")).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let err = bad("surface = \"homepage\"\nbudget_ms = 30");
        assert!(
            err.contains("placement[0].surface: \"homepage\" is not one of home, product_page"),
            "{err}"
        );
        let err = bad("channel = \"fax\"\nbudget_ms = 30");
        assert!(err.contains("placement[0].channel"), "{err}");
        let err = bad("budget_ms = 0");
        assert!(
            err.contains("placement[0].budget_ms: must be positive"),
            "{err}"
        );
        let err = bad("budget_ms = 2");
        assert!(
            err.contains("placement[0].budget_ms: must be above safety_margin_ms"),
            "{err}"
        );
        assert!(toml::from_str::<Config>("[[placement]]\nat = \"moon\"\nbudget_ms = 9\n").is_err());
    }

    #[test]
    fn an_edge_needs_its_store_upstream_and_directory_and_runs_alone() {
        let edge = Config {
            role: Role::Edge,
            store_id: Some("store-1".into()),
            upstream: Some("https://aisle.example.com".into()),
            edge_dir: Some("/var/lib/aisle-edge".into()),
            ..Config::default()
        };
        edge.validate().unwrap();
        let err = |c: Config| c.validate().unwrap_err().to_string();
        assert!(
            err(Config {
                store_id: None,
                ..edge.clone()
            })
            .contains("store_id: required with role = edge")
        );
        assert!(
            err(Config {
                upstream: None,
                ..edge.clone()
            })
            .contains("upstream: required")
        );
        assert!(
            err(Config {
                edge_dir: None,
                ..edge.clone()
            })
            .contains("edge_dir: required")
        );
        let plain = Config {
            upstream: Some("http://aisle.example.com".into()),
            ..edge.clone()
        };
        assert!(err(plain.clone()).contains("upstream: must be https://"));
        Config {
            insecure: true,
            ..plain
        }
        .validate()
        .unwrap();
        assert!(
            err(Config {
                cluster: ClusterMode::Etcd,
                etcd_endpoints: vec!["http://etcd:2379".into()],
                insecure: true,
                ..edge.clone()
            })
            .contains("an edge runs alone")
        );
    }

    #[test]
    fn the_resolved_placement_table_finds_the_same_rows_as_the_names_do() {
        use aisle_proto::v1 as pb;
        let c: Config = toml::from_str(
            "[[placement]]\nsurface = \"home\"\nchannel = \"kiosk\"\nat = \"cloud\"\nbudget_ms = 200\n\n\
             [[placement]]\nsurface = \"home\"\nbudget_ms = 30\n\n\
             [[placement]]\nchannel = \"associate_handheld\"\nbudget_ms = 80\n",
        )
        .unwrap();
        let table = c.placements();
        for s in (0..).map_while(|i| pb::Surface::try_from(i).ok()) {
            for ch in (0..).map_while(|i| pb::Channel::try_from(i).ok()) {
                let by_name = c.placement_for(
                    &enum_name(s.as_str_name(), "SURFACE_"),
                    &enum_name(ch.as_str_name(), "CHANNEL_"),
                );
                assert_eq!(table.row(s as i32, ch as i32), by_name, "{s:?} {ch:?}");
            }
        }
        assert_eq!(
            table
                .row(pb::Surface::Home as i32, 999)
                .map(|p| p.budget_ms),
            Some(30),
            "an unknown channel reads as unspecified"
        );
        assert_eq!(Config::default().placements().row(1, 1), None);
    }
}
