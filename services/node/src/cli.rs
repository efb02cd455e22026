//! The `aisle` command line: `serve` runs a node; the other commands are clients of a running node.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ClusterMode, Config, LogFormat};

/// Aisle: real-time decisioning for retail personalization.
#[derive(Debug, Parser)]
#[command(name = "aisle", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no bundles given: the embedded demo world).
    Serve(Box<ServeArgs>),
    /// Ask a node for a decision.
    Decide(crate::client::DecideArgs),
    /// Send a shopper event to a node.
    Track(crate::client::TrackArgs),
    /// Stream a store's assist events, as a handheld does.
    Subscribe(crate::client::SubscribeArgs),
    /// Erase what a node holds about a shopper.
    Forget(crate::client::ForgetArgs),
    /// List the bundles a node has loaded.
    Bundles(crate::client::AddrArgs),
    /// Inject a fault into a node's decide pipeline (the node must run with --fault-injection).
    Fault(crate::client::FaultArgs),
    /// Show what the shopper's owner holds about a shopper.
    Describe(crate::client::ForgetArgs),
    /// Show a node's view of the cluster (members, epoch, a shopper's owner).
    Cluster(crate::client::ClusterArgs),
    /// Switch models on every member: promote the candidate to default, or roll back.
    Model(crate::client::ModelArgs),
    /// Write the demo world's bundles (catalog.json, model.bin) to a directory, for nodes started with
    /// --data-dir (a cluster's nodes then serve identical data).
    ExportDemo {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

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
    /// Requests in flight beyond this get RESOURCE_EXHAUSTED (0: no limit) [default: 1024].
    #[arg(long, env = "AISLE_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,
    /// Decisions in flight beyond this answer from the GENERIC rung at once (0: no limit) [default: 64].
    #[arg(long, env = "AISLE_MAX_INFLIGHT_DECISIONS")]
    pub max_inflight_decisions: Option<usize>,
    /// Allow AdminService/SetFault (drills and tests).
    #[arg(long, env = "AISLE_FAULT_INJECTION")]
    pub fault_injection: bool,
    /// Write a JSON line per decision to this file.
    #[arg(long, env = "AISLE_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Write every applied shopper event to this file (JSON lines, for `aisle-train`).
    #[arg(long, env = "AISLE_EVENT_LOG")]
    pub event_log: Option<PathBuf>,
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
            peer_addr,
            reflection
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
            etcd_password_file
        );
        if self.fault_injection {
            c.fault_injection = true;
        }
        if self.insecure {
            c.insecure = true;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
