//! `aisle serve`'s options ([`ServeArgs`]) and their conversion to a [`Config`]: defaults, then the TOML file,
//! then environment variables and flags.

use std::path::PathBuf;

use clap::Args;

use crate::config::{ClusterMode, Config, LogFormat};

/// `aisle serve` options. Each has an environment variable; a TOML file (`--config`) may set any of them too.
/// Flags win over the environment, which wins over the file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in the configuration table of the README).
    #[arg(long, env = "AISLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (default: host name).
    #[arg(long, env = "AISLE_NODE_ID")]
    pub node_id: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "AISLE_GRPC_ADDR")]
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// HTTP listen address for /metrics, /healthz, /readyz [default: 127.0.0.1:9090].
    #[arg(long, env = "AISLE_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Directory holding catalog.json, model.bin, rules.json, experiments.json (each optional).
    #[arg(long, env = "AISLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Catalog bundle.
    #[arg(long, env = "AISLE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Model bundle (from `aisle-train fit`).
    #[arg(long, env = "AISLE_MODEL")]
    pub model: Option<PathBuf>,
    /// Candidate model bundle, for canary experiments.
    #[arg(long, env = "AISLE_CANDIDATE_MODEL")]
    pub candidate_model: Option<PathBuf>,
    /// Guardrail rules bundle.
    #[arg(long, env = "AISLE_RULES")]
    pub rules: Option<PathBuf>,
    /// Experiments bundle.
    #[arg(long, env = "AISLE_EXPERIMENTS")]
    pub experiments: Option<PathBuf>,
    /// Decision budget when callers send no deadline, ms [default: 50].
    #[arg(long, env = "AISLE_DECIDE_BUDGET_MS")]
    pub decide_budget_ms: Option<u64>,
    /// Session shard actors [default: 8 per core].
    #[arg(long, env = "AISLE_SESSION_SHARDS")]
    pub session_shards: Option<usize>,
    /// Ranking shard actors [default: one per core].
    #[arg(long, env = "AISLE_RANKING_SHARDS")]
    pub ranking_shards: Option<usize>,
    /// Idle time before a session is passivated, seconds [default: 1800].
    #[arg(long, env = "AISLE_SESSION_IDLE_TTL_SECS")]
    pub session_idle_ttl_secs: Option<u64>,
    /// Consent assumed when a request does not say [default: false].
    #[arg(long, env = "AISLE_DEFAULT_CONSENT")]
    pub default_consent: Option<bool>,
    /// Consent assumed in a region when neither a request nor the shopper's events say, REGION=BOOL (e.g.
    /// EU=false); repeatable, or comma-separated. Each overrides the file's entry for its region.
    #[arg(
        long = "consent-default",
        env = "AISLE_CONSENT_DEFAULTS",
        value_name = "REGION=BOOL",
        value_delimiter = ',',
        value_parser = region_consent
    )]
    pub consent_defaults: Vec<(String, bool)>,
    /// Requests in flight beyond this get RESOURCE_EXHAUSTED (0: no limit) [default: 1024].
    #[arg(long, env = "AISLE_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,
    /// Decisions in flight beyond this answer from the GENERIC rung at once (0: no limit) [default: 64].
    #[arg(long, env = "AISLE_MAX_INFLIGHT_DECISIONS")]
    pub max_inflight_decisions: Option<usize>,
    /// Allow AdminService/SetFault (drills and tests).
    #[arg(long, env = "AISLE_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// The decision trail (hash-chained JSON lines: decisions and admin actions); sealed segments beside it.
    #[arg(long, env = "AISLE_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Write every applied, consented shopper event to this file (JSON lines, for `aisle-train`).
    #[arg(long, env = "AISLE_EVENT_LOG")]
    pub event_log: Option<PathBuf>,
    /// Seal a log segment at this size, bytes [default: 67108864].
    #[arg(long, env = "AISLE_LOG_SEGMENT_BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// Seal a log segment at this age, seconds [default: 3600].
    #[arg(long, env = "AISLE_LOG_SEGMENT_SECS")]
    pub log_segment_secs: Option<u64>,
    /// Delete sealed segments this long after their last record, hours [default: 720].
    #[arg(long, env = "AISLE_LOG_RETENTION_HOURS")]
    pub log_retention_hours: Option<u64>,
    /// Delete the oldest sealed segments beyond this total per log, bytes (0: no limit) [default: 8 GiB].
    #[arg(long, env = "AISLE_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Make written records durable at least this often, ms [default: 200].
    #[arg(long, env = "AISLE_LOG_SYNC_MS")]
    pub log_sync_ms: Option<u64>,
    /// Keep a forgotten shopper's tombstone this long, seconds [default: 3600].
    #[arg(long, env = "AISLE_TOMBSTONE_TTL_SECS")]
    pub tombstone_ttl_secs: Option<u64>,
    /// Keep the journal of erasures that store edges catch up on this long, seconds [default: 2592000].
    #[arg(long, env = "AISLE_ERASURE_JOURNAL_SECS")]
    pub erasure_journal_secs: Option<u64>,
    /// Log format.
    #[arg(long, env = "AISLE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Membership mode [default: static].
    #[arg(long, env = "AISLE_CLUSTER", value_enum)]
    pub cluster: Option<ClusterMode>,
    /// etcd endpoints, comma-separated (etcd mode).
    #[arg(long, env = "AISLE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Cluster name (key prefix in etcd) [default: aisle].
    #[arg(long, env = "AISLE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Address peers use to reach this node's peer port, host:port [default: the peer address].
    #[arg(long, env = "AISLE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Membership lease TTL, seconds [default: 5].
    #[arg(long, env = "AISLE_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<u64>,
    /// How often changed sessions are copied to their successor, ms; 0: off [default: 200].
    #[arg(long, env = "AISLE_REPLICATION_MS")]
    pub replication_ms: Option<u64>,
    /// Directory of the Track outbox: events kept, on disk, while their owner cannot take them [default: none].
    #[arg(long, env = "AISLE_OUTBOX_DIR")]
    pub outbox_dir: Option<PathBuf>,
    /// Events the outbox holds at most [default: 200000].
    #[arg(long, env = "AISLE_OUTBOX_MAX_EVENTS")]
    pub outbox_max_events: Option<usize>,
    /// What this node is: `cloud` (a cluster member, or alone) or `edge` (a store's node) [default: cloud].
    #[arg(long, env = "AISLE_ROLE", value_enum)]
    pub role: Option<crate::config::Role>,
    /// The store an edge serves.
    #[arg(long, env = "AISLE_STORE_ID")]
    pub store_id: Option<String>,
    /// The cloud's gRPC address an edge talks to (`https://` with TLS).
    #[arg(long, env = "AISLE_UPSTREAM")]
    pub upstream: Option<String>,
    /// File holding the bearer token an edge shows the cloud (scope `edge` there).
    #[arg(long, env = "AISLE_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<PathBuf>,
    /// PEM CA certificate of the cloud's certificate [default: the system's roots].
    #[arg(long, env = "AISLE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// An edge's directory: last good bundles and the queue of events for the cloud.
    #[arg(long, env = "AISLE_EDGE_DIR")]
    pub edge_dir: Option<PathBuf>,
    /// PEM certificate chain for the client and admin ports (TLS).
    #[arg(long, env = "AISLE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "AISLE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates identify callers (CN looked up in the token file).
    #[arg(long, env = "AISLE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Token file (TOML): callers need a bearer token or client certificate with the method's scope.
    #[arg(long, env = "AISLE_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// Serve without TLS or authentication although reachable from other hosts or clustered.
    #[arg(long, env = "AISLE_INSECURE")]
    pub insecure: bool,
    /// Separate listener for AdminService [default: served on the gRPC address].
    #[arg(long, env = "AISLE_ADMIN_ADDR")]
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Listener for peer calls (etcd mode) [default: 127.0.0.1:50052].
    #[arg(long, env = "AISLE_PEER_ADDR")]
    pub peer_addr: Option<std::net::SocketAddr>,
    /// PEM certificate this node presents to peers (mutual TLS).
    #[arg(long, env = "AISLE_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key for --peer-tls-cert.
    #[arg(long, env = "AISLE_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM CA of the cluster: peers must present certificates it signed.
    #[arg(long, env = "AISLE_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM CA of etcd's server certificate (https:// endpoints).
    #[arg(long, env = "AISLE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd.
    #[arg(long, env = "AISLE_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key for --etcd-cert.
    #[arg(long, env = "AISLE_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (with --etcd-password-file).
    #[arg(long, env = "AISLE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "AISLE_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Pseudonym key file: hex keys, one per line, current first [default: a key generated for this run,
    /// loopback only].
    #[arg(long, env = "AISLE_PSEUDONYM_KEY")]
    pub pseudonym_key: Option<PathBuf>,
    /// Public keys every bundle file (catalog, models, rules, experiments) must be signed with: one base64
    /// Ed25519 key a line (`aisle bundle keygen`, `aisle bundle sign`) [default: bundles are not checked].
    #[arg(long, env = "AISLE_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Serve gRPC server reflection [default: true].
    #[arg(long, env = "AISLE_REFLECTION")]
    pub reflection: Option<bool>,
}

impl ServeArgs {
    /// The configuration: defaults, then the file, then these flags and variables.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or a value is out of range.
    pub fn to_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(v) = &self.$field { c.$field = v.clone(); })*
            };
        }
        set!(
            node_id,
            grpc_addr,
            http_addr,
            decide_budget_ms,
            session_shards,
            ranking_shards,
            session_idle_ttl_secs,
            default_consent,
            max_inflight_requests,
            max_inflight_decisions,
            log_format,
            cluster,
            etcd_endpoints,
            cluster_name,
            lease_ttl_secs,
            replication_ms,
            outbox_max_events,
            role,
            peer_addr,
            reflection,
            log_segment_bytes,
            log_segment_secs,
            log_retention_hours,
            log_max_bytes,
            log_sync_ms,
            tombstone_ttl_secs,
            erasure_journal_secs
        );
        macro_rules! set_opt {
            ($($field:ident),*) => {
                $(if self.$field.is_some() { c.$field = self.$field.clone(); })*
            };
        }
        set_opt!(
            data_dir,
            catalog,
            model,
            candidate_model,
            rules,
            experiments,
            decision_log,
            event_log,
            advertise_addr,
            outbox_dir,
            store_id,
            upstream,
            upstream_token_file,
            upstream_ca,
            edge_dir,
            tls_cert,
            tls_key,
            tls_client_ca,
            auth_tokens,
            admin_addr,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_ca,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
            pseudonym_key,
            trusted_keys
        );
        if self.fault_injection {
            c.fault_injection = true;
        }
        if self.insecure {
            c.insecure = true;
        }
        for (region, consent) in &self.consent_defaults {
            c.consent_defaults.insert(region.clone(), *consent);
        }
        c.validate()?;
        Ok(c)
    }
}

/// Parses `REGION=BOOL` (a `--consent-default`).
fn region_consent(s: &str) -> Result<(String, bool), String> {
    let (region, consent) = s
        .split_once('=')
        .ok_or_else(|| format!("expected REGION=BOOL (e.g. EU=false), got {s:?}"))?;
    let consent = consent
        .parse()
        .map_err(|_| format!("{region}: expected true or false, got {consent:?}"))?;
    Ok((region.to_string(), consent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("aisle-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "node_id = \"from-file\"\ndecide_budget_ms = 40\n").unwrap();
        let cli = Cli::try_parse_from([
            "aisle",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--node-id",
            "from-flag",
            "--fault-injection",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(c.decide_budget_ms, 40);
        assert!(c.fault_injection);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn consent_defaults_from_flags_override_the_files_regions() {
        let dir = std::env::temp_dir().join(format!("aisle-cli-consent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[consent_defaults]\nEU = false\nUS = false\n").unwrap();
        let parse = |extra: &[&str]| -> Result<Box<ServeArgs>, clap::Error> {
            let mut args = vec!["aisle", "serve", "--config", file.to_str().unwrap()];
            args.extend(extra);
            match Cli::try_parse_from(args)?.command {
                Command::Serve(a) => Ok(a),
                _ => panic!("serve"),
            }
        };
        let args = parse(&[
            "--consent-default",
            "US=true",
            "--consent-default",
            "CA=true,MX=false",
        ])
        .unwrap();
        let c = args.to_config().unwrap();
        let expected: Vec<(&str, bool)> =
            vec![("CA", true), ("EU", false), ("MX", false), ("US", true)];
        let got: Vec<(&str, bool)> = c
            .consent_defaults
            .iter()
            .map(|(r, &b)| (r.as_str(), b))
            .collect();
        assert_eq!(got, expected);
        for bad in ["US", "US=yes"] {
            let err = parse(&["--consent-default", bad]).unwrap_err().to_string();
            assert!(
                err.contains("REGION=BOOL") || err.contains("true or false"),
                "{err}"
            );
        }
        let err = parse(&["--consent-default", "=true"])
            .unwrap()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("consent_defaults: region"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The documented systemd unit and example configuration of a store edge are what `aisle serve` accepts.
    #[test]
    fn the_edge_unit_and_its_example_configuration_parse() {
        let unit = include_str!("../../../../deploy/edge/aisle-edge.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let dir = std::env::temp_dir().join(format!("aisle-cli-edge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("edge.toml");
        std::fs::write(&config, include_str!("../../../../deploy/edge/edge.toml")).unwrap();
        let args: Vec<String> = exec
            .split_whitespace()
            .skip(1)
            .map(|a| {
                if a == "/etc/aisle/edge.toml" {
                    config.display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let cli = Cli::try_parse_from(std::iter::once("aisle".to_string()).chain(args)).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.role, crate::config::Role::Edge);
        assert_eq!(c.store_id.as_deref(), Some("store-0042"));
        assert_eq!(c.placement.len(), 5);
        assert_eq!(
            c.placement_for("home", "app").map(|p| p.at),
            Some(crate::config::Site::Cloud)
        );
        assert!(c.security_gaps().is_empty(), "{:?}", c.security_gaps());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
