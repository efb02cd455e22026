//! Starting, serving and stopping a node.
//!
//! [`prepare`] loads the bundles (files, or the embedded demo world with a model trained on its history);
//! [`start`] spawns the actors and serves gRPC and HTTP on the given listeners (tests pass `127.0.0.1:0`);
//! [`RunningNode::shutdown`] stops taking work, ends push streams, finishes in-flight calls and stops the actors.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aisle_domain::catalog::Catalog;
use aisle_experiment::{Experiments, ExperimentsHandle};
use aisle_policy::{Policy, Rules};
use aisle_proto::v1::admin_service_server::AdminServiceServer;
use aisle_proto::v1::associate_service_server::AssociateServiceServer;
use aisle_proto::v1::decision_service_server::DecisionServiceServer;
use aisle_proto::v1::edge_service_server::EdgeServiceServer;
use aisle_proto::v1::peer_service_server::PeerServiceServer;
use aisle_ranking::{Model, Ranking};
use aisle_session::Sessions;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::AdmissionLayer;
use crate::api::admin::AdminApi;
use crate::api::associate::AssociateApi;
use crate::api::decision::DecisionApi;
use crate::api::edge::EdgeApi;
use crate::api::peer::PeerApi;
use crate::auth::{AuthLayer, Credentials};
use crate::cache::DecisionCache;
use crate::cluster::handoff::{self, Holdings};
use crate::cluster::peers::Peers;
use crate::cluster::replication::{self, Replication};
use crate::cluster::{Cluster, MembershipConfig};
use crate::config::{ClusterMode, Config};
use crate::control::Control;
use crate::decider::{Decider, DeciderParts};
use crate::edge::feed::{BundleFiles, file_key};
use crate::logs::journal::Journal;
use crate::node::Node;
use crate::outbox::{Outbox, OutboxLimits};
use crate::privacy::{Pseudonyms, Tombstones};
use crate::readiness::Readiness;
use crate::tls::{ClientCerts, ClientTlsFiles, ServerTls, TlsFiles, incoming, stamp};
use crate::world::{Initial, ModelRole, Worlds};

/// The services whose health `grpc.health.v1` reports ("" is the server as a whole).
const SERVICES: [&str; 4] = [
    "aisle.v1.DecisionService",
    "aisle.v1.AssociateService",
    "aisle.v1.AdminService",
    "",
];

/// Largest request accepted, in bytes; larger ones are refused with OUT_OF_RANGE.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The bundles a node starts with, parsed and validated once.
#[derive(Debug)]
pub struct Prepared {
    /// The catalog (`None`: derived from the model's items).
    pub catalog: Option<Arc<Catalog>>,
    /// The default model and its source.
    pub model: (Model, String),
    /// The candidate model, if any.
    pub candidate: Option<(Model, String)>,
    /// Guardrail rules.
    pub rules: Rules,
    /// Experiments.
    pub experiments: Experiments,
    /// The files the bundles were read from (or their encoded form, for bundles built here), by
    /// [`file_key`] of the parsed bundle: what the bundle feed sends to store edges.
    pub files: Vec<(String, Arc<Vec<u8>>)>,
}

/// The embedded default rules.
pub fn embedded_rules() -> Rules {
    Rules::from_json(&embedded_rules_file(), "embedded default")
        .expect("the embedded rules are valid")
}

fn embedded_rules_file() -> Vec<u8> {
    serde_json::to_vec(&aisle_policy::rules::default_rules_file()).expect("serialises")
}

/// The embedded default experiments.
pub fn embedded_experiments() -> Experiments {
    Experiments::from_json(&embedded_experiments_file(), "embedded default")
        .expect("the embedded experiments are valid")
}

fn embedded_experiments_file() -> Vec<u8> {
    serde_json::to_vec(&aisle_experiment::default_experiments_file()).expect("serialises")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The file to load for a bundle: the configured one, else the data dir's.
fn bundle_path(explicit: &Option<PathBuf>, config: &Config, name: &str) -> Option<PathBuf> {
    explicit.clone().or_else(|| config.data_file(name))
}

/// Loads the bundles the configuration names; with none, builds the demo world and trains its model.
///
/// # Errors
/// When a named bundle is missing or invalid (the message says which and why), or a catalog is given without a
/// model.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let mut files = Vec::new();
    let (rules_file, rules_source) = match bundle_path(&config.rules, config, "rules.json") {
        Some(p) => (read(&p)?, p.display().to_string()),
        None => (embedded_rules_file(), "embedded default".to_string()),
    };
    let rules = Rules::from_json(&rules_file, &rules_source)?;
    files.push((
        file_key(&rules.meta.version, &rules.meta.content_hash),
        Arc::new(rules_file),
    ));
    let (experiments_file, experiments_source) =
        match bundle_path(&config.experiments, config, "experiments.json") {
            Some(p) => (read(&p)?, p.display().to_string()),
            None => (embedded_experiments_file(), "embedded default".to_string()),
        };
    let experiments = Experiments::from_json(&experiments_file, &experiments_source)?;
    files.push((
        file_key(&experiments.meta.version, &experiments.meta.content_hash),
        Arc::new(experiments_file),
    ));
    let candidate = match &config.candidate_model {
        Some(p) => {
            let bytes = read(p)?;
            let model = Model::from_bytes(&bytes)?;
            files.push((
                file_key(&model.header.version, &model.header.content_hash),
                Arc::new(bytes),
            ));
            Some((model, p.display().to_string()))
        }
        None => None,
    };
    let (catalog, model, model_file) = catalog_and_model(config).await?;
    files.push((
        file_key(&model.0.header.version, &model.0.header.content_hash),
        Arc::new(model_file),
    ));
    Ok(Prepared {
        catalog,
        model,
        candidate,
        rules,
        experiments,
        files,
    })
}

/// The catalog and default model the configuration names, or the demo world's.
/// The model's file comes third (encoded here for the demo model).
async fn catalog_and_model(
    config: &Config,
) -> anyhow::Result<(Option<Arc<Catalog>>, (Model, String), Vec<u8>)> {
    let catalog_path = bundle_path(&config.catalog, config, "catalog.json");
    match (
        catalog_path,
        bundle_path(&config.model, config, "model.bin"),
    ) {
        (catalog, Some(m)) => {
            let model_file = read(&m)?;
            let model = (Model::from_bytes(&model_file)?, m.display().to_string());
            let catalog = match catalog {
                Some(c) => Some(Arc::new(Catalog::from_json(
                    &read(&c)?,
                    &c.display().to_string(),
                )?)),
                None => None,
            };
            Ok((catalog, model, model_file))
        }
        (Some(c), None) => anyhow::bail!(
            "catalog {} was given without a model: train one with `aisle-train fit` and pass --model",
            c.display()
        ),
        (None, None) => {
            tracing::info!("no bundles given: building the demo world and training its model");
            let started = std::time::Instant::now();
            let anchor = aisle_domain::now_ms();
            let (catalog, model) =
                tokio::task::spawn_blocking(move || crate::world::demo(anchor)).await??;
            tracing::info!(items = catalog.len(), elapsed_ms = started.elapsed().as_millis() as u64,
                model = %model.header.version, "demo world ready");
            let model_file = model.to_bytes();
            Ok((
                Some(catalog),
                (model, "embedded demo (trained at start-up)".to_string()),
                model_file,
            ))
        }
    }
}

/// A running node.
pub struct RunningNode {
    /// Where gRPC (the client port) listens.
    pub grpc_addr: std::net::SocketAddr,
    /// Where HTTP listens.
    pub http_addr: std::net::SocketAddr,
    /// Where the admin port listens, when it has its own.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Where the peer port listens (etcd mode).
    pub peer_addr: Option<std::net::SocketAddr>,
    /// The node's context (for in-process inspection by tests).
    pub node: Arc<Node>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    shutdown_tx: watch::Sender<bool>,
    grpc: Vec<ServerTask>,
    http: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

/// How long in-flight calls get to finish at shutdown before connections are closed.
const DRAIN: Duration = Duration::from_secs(10);

impl RunningNode {
    /// Stops taking work, ends push streams (handhelds reconnect elsewhere), lets in-flight calls finish (up to
    /// 10 s), and stops the actors.
    pub async fn shutdown(self) {
        tracing::info!(node = %self.node.id(), "shutting down");
        self.readiness.stopping();
        let cluster = self.node.cluster().clone();
        if cluster.is_clustered() {
            // Leave gracefully: own nothing from the next view on, hand every session to its new owner, then
            // revoke the lease. Requests still arriving here are forwarded to the new owners meanwhile.
            let started = tokio::time::Instant::now();
            cluster.mark_leaving(Duration::from_secs(5)).await;
            let epoch = cluster.epoch();
            if !cluster
                .wait_handed_off(epoch, Duration::from_secs(10))
                .await
            {
                tracing::warn!(epoch, "hand-off did not finish in time");
            }
            cluster.leave().await;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "left the cluster"
            );
        }
        let _ = self.shutdown_tx.send(true);
        for task in &self.background {
            task.abort();
        }
        let drained = tokio::time::timeout(DRAIN, async {
            for server in self.grpc {
                if let Ok(Err(e)) = server.await {
                    tracing::warn!(error = %e, "gRPC server ended with an error");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight calls did not finish within the drain time");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http).await;
        for log in self.node.decider().logs() {
            if let Err(e) = log.close().await {
                tracing::warn!(log = log.name(), error = %e, "could not close the log cleanly");
            }
        }
        self.node.decider().stop().await;
        tracing::info!(node = %self.node.id(), "stopped");
    }
}

/// How this node reaches etcd and appears in it (etcd mode): for its membership and its control records.
fn membership_config(config: &Config, advertise: &str) -> anyhow::Result<Option<MembershipConfig>> {
    if config.cluster != ClusterMode::Etcd {
        return Ok(None);
    }
    let user = match (&config.etcd_user, &config.etcd_password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read etcd_password_file {}", file.display()))?;
            Some((
                user.clone(),
                password.trim_end_matches(['\r', '\n']).to_string(),
            ))
        }
        _ => None,
    };
    Ok(Some(MembershipConfig {
        endpoints: config.etcd_endpoints.clone(),
        cluster: config.cluster_name.clone(),
        node_id: config.node_id.clone(),
        advertise_addr: advertise.to_string(),
        lease_ttl: Duration::from_secs(config.lease_ttl_secs),
        tls: config.etcd_ca.as_ref().map(|ca| ClientTlsFiles {
            ca: Some(ca.clone()),
            cert: config.etcd_cert.clone(),
            key: config.etcd_key.clone(),
        }),
        user,
    }))
}

/// The cluster handle the configuration asks for: membership in etcd when `membership` is given, else alone.
fn cluster(config: &Config, membership: Option<MembershipConfig>, advertise: &str) -> Arc<Cluster> {
    let Some(membership) = membership else {
        return Cluster::alone(&config.node_id, advertise);
    };
    let peer_tls = config.peer_tls_cert.as_ref().map(|cert| ClientTlsFiles {
        ca: config.peer_tls_ca.clone(),
        cert: Some(cert.clone()),
        key: config.peer_tls_key.clone(),
    });
    Cluster::with_etcd(
        membership,
        Peers::with_tls(&config.node_id, peer_tls, config.max_peer_message_bytes),
        Replication::new(
            (config.replication_ms > 0).then(|| Duration::from_millis(config.replication_ms)),
            config.max_sessions,
            Duration::from_secs(config.session_idle_ttl_secs),
        ),
    )
}

/// Spawns the actors and assembles the decider.
async fn decider(
    config: &Config,
    prepared: Prepared,
    cluster: &Arc<Cluster>,
    pseudonyms: Arc<Pseudonyms>,
) -> anyhow::Result<Decider> {
    let (trail, events) = crate::logs::audit::open_logs(config).await?;
    let worlds = Worlds::start(Initial {
        catalog: prepared.catalog,
        model: prepared.model,
        candidate: prepared.candidate,
    })
    .await?;
    let gate_cluster = cluster.clone();
    let sessions = Sessions::start_gated(
        config.session_shards,
        config.session_settings(),
        Arc::new(move |shopper: &str| gate_cluster.owns(shopper)),
    )
    .await?;
    let parts = DeciderParts {
        worlds,
        policy: Policy::start(prepared.rules).await?,
        experiments: ExperimentsHandle::start(prepared.experiments).await?,
        sessions,
        ranking: Ranking::start(config.ranking_shards).await?,
        cache: Arc::new(DecisionCache::new(
            config.cache_capacity,
            Duration::from_secs(config.cache_ttl_secs),
        )),
        audit: trail,
        event_log: events,
        pseudonyms,
        tombstones: Arc::new(Tombstones::new(Duration::from_secs(
            config.tombstone_ttl_secs,
        ))),
    };
    Ok(Decider::new(config.decider_settings(), parts))
}

/// The node's credentials: TLS of the client (and admin) port and of the peer port, and the token file. Each is
/// re-read when its files change.
#[derive(Debug, Clone)]
pub struct Security {
    /// TLS of the client and admin ports.
    pub client_tls: Option<Arc<ServerTls>>,
    /// Mutual TLS of the peer port.
    pub peer_tls: Option<Arc<ServerTls>>,
    /// Bearer tokens and client-certificate identities.
    pub credentials: Option<Arc<Credentials>>,
    /// The pseudonym keys (from `pseudonym_key`, else generated for this run).
    pub pseudonyms: Arc<Pseudonyms>,
}

impl Security {
    /// Loads what the configuration names.
    ///
    /// # Errors
    /// A missing or invalid certificate, key, CA or token file (named).
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(
                "client",
                TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                    client_certs: ClientCerts::Optional,
                },
            )?),
            _ => None,
        };
        let peer_tls = match (&config.peer_tls_cert, &config.peer_tls_key) {
            (Some(cert), Some(key)) if config.cluster == ClusterMode::Etcd => {
                Some(ServerTls::load(
                    "peer",
                    TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: config.peer_tls_ca.clone(),
                        client_certs: ClientCerts::Required,
                    },
                )?)
            }
            _ => None,
        };
        let credentials = match &config.auth_tokens {
            Some(p) => Some(Credentials::load(p)?),
            None => None,
        };
        let pseudonyms = Arc::new(match &config.pseudonym_key {
            Some(p) => Pseudonyms::from_file(p)?,
            None => Pseudonyms::generated().context("generating a pseudonym key")?,
        });
        Ok(Self {
            client_tls,
            peer_tls,
            credentials,
            pseudonyms,
        })
    }

    /// Re-reads every file that changed.
    fn reload(&self, peers: &Peers) {
        for tls in [&self.client_tls, &self.peer_tls].into_iter().flatten() {
            tls.reload_if_changed();
        }
        if let Some(c) = &self.credentials {
            c.reload_if_changed();
        }
        self.pseudonyms.reload_if_changed();
        peers.reload_if_changed();
    }
}

/// The bound listeners of a node: client gRPC and HTTP always; admin and peer when configured.
struct Ports {
    grpc: TcpListener,
    admin: Option<TcpListener>,
    peer: Option<TcpListener>,
}

/// gRPC server settings shared by every port: HTTP/2 stream cap and keepalive.
fn server_builder(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_secs.max(1))))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves gRPC on the node's ports until `shutdown` says stop:
/// - client port: Decide, Track, Subscribe, EdgeService on a cloud node (and admin calls when no admin port is configured), health,
///   reflection — behind authentication and admission;
/// - admin port: AdminService, health, reflection — behind the same;
/// - peer port (etcd mode): PeerService and health, mutual TLS only.
///
/// Returns the server tasks and the health reporter.
fn serve_grpc(
    node: &Arc<Node>,
    holdings: Holdings,
    ports: Ports,
    security: &Security,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<ServerTask>, tonic_health::server::HealthReporter)> {
    let config = node.config();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Reflection in both protocol versions: v1 for current grpcurl and grpcui, v1alpha for the clients that still
    // speak only it (Python grpcio's reflection client, Postman, older grpcurl).
    let reflection = || -> anyhow::Result<_> {
        if !config.reflection {
            return Ok((None, None));
        }
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(aisle_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        Ok((
            Some(builder().build_v1()?),
            Some(builder().build_v1alpha()?),
        ))
    };
    let admin = AdminServiceServer::new(AdminApi::new(node.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let layers = || {
        tower::ServiceBuilder::new()
            .layer(AuthLayer::new(security.credentials.clone()))
            .layer(AdmissionLayer::new(config.max_inflight_requests))
            .into_inner()
    };
    let mut tasks = Vec::new();

    let decision = DecisionServiceServer::new(DecisionApi::new(node.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let associate =
        AssociateServiceServer::new(AssociateApi::new(node.clone(), shutdown_rx.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    // Store edges call the cloud; an edge serves no edges.
    let edge = (config.role == crate::config::Role::Cloud).then(|| {
        // An upload wraps one shopper's events of a Track the edge accepted (at most MAX_REQUEST_BYTES): room
        // for the wrapper, so that no accepted event is refused for its size on the way up.
        EdgeServiceServer::new(EdgeApi::new(node.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES + 16 * 1024)
    });
    let (r1, r1a) = reflection()?;
    let client = server_builder(config)
        .layer(layers())
        .add_service(decision)
        .add_service(associate)
        .add_optional_service(edge)
        .add_optional_service(ports.admin.is_none().then(|| admin.clone()))
        .add_service(health.clone())
        .add_optional_service(r1)
        .add_optional_service(r1a)
        .serve_with_incoming_shutdown(
            incoming(
                ports.grpc,
                security.client_tls.clone(),
                config.max_connections,
                "client",
            ),
            stop(shutdown_rx.clone()),
        );
    tasks.push(tokio::spawn(client));

    if let Some(listener) = ports.admin {
        let (r1, r1a) = reflection()?;
        let server = server_builder(config)
            .layer(layers())
            .add_service(admin)
            .add_service(health.clone())
            .add_optional_service(r1)
            .add_optional_service(r1a)
            .serve_with_incoming_shutdown(
                incoming(
                    listener,
                    security.client_tls.clone(),
                    config.max_connections,
                    "admin",
                ),
                stop(shutdown_rx.clone()),
            );
        tasks.push(tokio::spawn(server));
    }

    if let Some(listener) = ports.peer {
        // Peer messages carry hand-off batches: allow them to be large (up to max_peer_message_bytes).
        let peer = PeerServiceServer::new(PeerApi::new(node.clone(), holdings))
            .max_decoding_message_size(config.max_peer_message_bytes)
            .max_encoding_message_size(config.max_peer_message_bytes);
        let server = server_builder(config)
            .layer(AdmissionLayer::new(config.max_inflight_requests))
            .add_service(peer)
            .add_service(health)
            .serve_with_incoming_shutdown(
                incoming(
                    listener,
                    security.peer_tls.clone(),
                    config.max_connections,
                    "peer",
                ),
                stop(shutdown_rx),
            );
        tasks.push(tokio::spawn(server));
    }
    Ok((tasks, health_reporter))
}

/// Serves the HTTP plane on `listener` until `shutdown` says stop.
fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
    })
}

/// Starts a node on the given listeners.
///
/// # Errors
/// When actors cannot be spawned or the decision log cannot be opened.
pub async fn start(
    config: Config,
    prepared: Prepared,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let metrics_handle = crate::metrics::install();
    crate::metrics::describe();
    let security = Security::load(&config)?;
    announce_security(&config, &security);
    let config = Arc::new(config);
    let clustered = config.cluster == ClusterMode::Etcd;
    let readiness = Arc::new(if clustered {
        Readiness::new(&["bundles", "serving", "membership"])
    } else {
        Readiness::new(&["bundles", "serving"])
    });
    let bind = |addr: std::net::SocketAddr, name: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({name})"))
    };
    let ports = Ports {
        grpc: grpc_listener,
        admin: match config.admin_addr {
            Some(a) => Some(bind(a, "admin_addr").await?),
            None => None,
        },
        peer: if clustered {
            Some(bind(config.peer_addr, "peer_addr").await?)
        } else {
            None
        },
    };
    let grpc_addr = ports.grpc.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let admin_addr = ports
        .admin
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let peer_addr = ports
        .peer
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let advertise = advertise_addr(&config, peer_addr.unwrap_or(grpc_addr));
    let membership = membership_config(&config, &advertise)?;
    let cluster = cluster(&config, membership.clone(), &advertise);
    let mut prepared = prepared;
    let files = Arc::new(BundleFiles::default());
    for (key, file) in std::mem::take(&mut prepared.files) {
        files.keep(&key, file);
    }
    let decider =
        Arc::new(decider(&config, prepared, &cluster, security.pseudonyms.clone()).await?);
    let control = match membership {
        Some(m) => Control::with_etcd(m, decider.clone(), cluster.clone()),
        None => Control::alone(&config.node_id, decider.clone()),
    };
    let holdings = Holdings {
        sessions: decider.sessions().clone(),
        worlds: decider.worlds().clone(),
        cache: decider.cache().clone(),
        pseudonyms: decider.pseudonyms().clone(),
        tombstones: decider.tombstones().clone(),
        replication: cluster.replication.clone(),
    };
    let outbox = match config.outbox_dir.clone() {
        Some(dir) => {
            let limits = OutboxLimits {
                max_events: config.outbox_max_events,
                max_bytes: config.outbox_max_bytes,
            };
            let outbox = Outbox::open(&dir, &config.node_id, limits)
                .with_context(|| format!("cannot open the outbox in {}", dir.display()))?;
            tracing::info!(
                dir = %dir.display(),
                origin = outbox.origin(),
                queued_events = outbox.len(),
                "Track outbox open"
            );
            Some(outbox)
        }
        None => {
            if clustered {
                tracing::warn!(
                    "no outbox_dir: a Track whose owner cannot take it fails with UNAVAILABLE instead of waiting \
                     in an outbox"
                );
            }
            None
        }
    };
    let edge = match config.role {
        crate::config::Role::Edge => Some(crate::edge::Edge::open(&config)?),
        crate::config::Role::Cloud => None,
    };
    let node = Arc::new(Node::new(
        config.clone(),
        decider.clone(),
        cluster.clone(),
        control.clone(),
        outbox.clone(),
        files,
        edge.clone(),
    ));
    readiness.met("bundles");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (grpc, health) = serve_grpc(
        &node,
        holdings.clone(),
        ports,
        &security,
        shutdown_rx.clone(),
    )?;

    let router = crate::http::router(
        metrics_handle.clone(),
        readiness.clone(),
        decider.sessions().clone(),
    );
    let http = serve_http(http_listener, router, shutdown_rx.clone());

    let mut background = vec![tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics_handle.run_upkeep();
        }
    })];
    let peers = cluster.peers.clone();
    let reload_every = Duration::from_secs(config.credential_reload_secs);
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(reload_every);
        loop {
            tick.tick().await;
            security.reload(&peers);
        }
    }));
    let logs = decider.logs();
    if !logs.is_empty() {
        background.push(tokio::spawn(watch_logs(logs, readiness.clone())));
    }
    if let Some(outbox) = outbox {
        // Alone, a node owns everything: entries wait only when its session actors failed to answer.
        background.push(tokio::spawn(crate::api::decision::deliver(
            node.clone(),
            outbox,
        )));
    }
    if config.bundle_poll_secs > 0 {
        background.push(tokio::spawn(watch_bundles(
            config.clone(),
            decider,
            node.bundle_files().clone(),
        )));
    }
    if let Some(edge) = edge {
        tracing::info!(store = edge.store_id(), upstream = ?config.upstream, "store edge: following the cloud");
        background.push(tokio::spawn(edge.clone().follow(node.clone())));
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                edge.publish();
            }
        }));
    }
    if clustered {
        background.push(tokio::spawn(replication::run(
            holdings.clone(),
            cluster.clone(),
        )));
        background.push(tokio::spawn(control.clone().follow()));
        // Kill switches before the first decision: wait (briefly) for the control records. A node that cannot read
        // etcd yet serves without switches and applies them once it can.
        if !control.wait_read(Duration::from_secs(2)).await {
            tracing::warn!(
                "control records not read within 2 s (etcd unreachable?): serving without kill switches until \
                 they are"
            );
        }
        tokio::spawn(handoff::follow_views(holdings, cluster.clone()));
        background.push(tokio::spawn(cluster.clone().hold_through_etcd_outages()));
        background.push(tokio::spawn(follow_membership(cluster, readiness.clone())));
    }

    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    readiness.met("serving");
    tracing::info!(node = %config.node_id, grpc = %grpc_addr, http = %http_addr, "serving");
    Ok(RunningNode {
        grpc_addr,
        http_addr,
        admin_addr,
        peer_addr,
        node,
        readiness,
        shutdown_tx,
        grpc,
        http,
        background,
    })
}

/// Logs how the node is secured, and warns on every start of a node running `--insecure`.
fn announce_security(config: &Config, security: &Security) {
    metrics::gauge!("aisle_insecure").set(if config.insecure { 1.0 } else { 0.0 });
    if config.insecure {
        let gaps = config.security_gaps();
        tracing::warn!(
            missing = if gaps.is_empty() {
                "nothing".to_string()
            } else {
                gaps.join("; ")
            },
            "running with --insecure: this node accepts callers without the protection it would otherwise require"
        );
    }
    tracing::info!(
        client_tls = security.client_tls.is_some(),
        client_certificates = config.tls_client_ca.is_some(),
        tokens = security.credentials.as_ref().map_or(0, |c| c.table().len()),
        peer_mtls = security.peer_tls.is_some(),
        etcd_tls = config.etcd_ca.is_some(),
        "security"
    );
    if security.pseudonyms.is_generated() {
        tracing::info!(
            "no pseudonym_key: generated a pseudonym key for this run; shopper pseudonyms in logs and push events \
             change at every start (docs/privacy.md)"
        );
    }
}

/// The address peers use to reach this node: the configured one, else the peer port's address (with the host
/// name when it listens on all interfaces).
fn advertise_addr(config: &Config, grpc: std::net::SocketAddr) -> String {
    if let Some(a) = &config.advertise_addr {
        return a.clone();
    }
    if grpc.ip().is_unspecified() {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", grpc.port())
    } else {
        grpc.to_string()
    }
}

/// Keeps the `membership` readiness condition true exactly while this node holds a current view.
async fn follow_membership(cluster: Arc<Cluster>, readiness: Arc<Readiness>) {
    let mut views = cluster.views();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        match cluster.current() {
            Some(v) => {
                if v.member(&cluster.node_id).is_some_and(|m| !m.leaving) {
                    readiness.met("membership");
                } else {
                    readiness.unmet("membership", "leaving");
                }
            }
            None => readiness.unmet("membership", "not joined, or fenced: no current view"),
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Keeps `/readyz` telling whether each log can be written (checked every second): a log that cannot is loud —
/// `degraded` in `/readyz`, a warning in the node's log — while the node keeps serving. It lives here, beside the
/// other readiness watchers, so that the logs need nothing of the HTTP plane.
async fn watch_logs(logs: Vec<Journal>, readiness: Arc<Readiness>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_failing = vec![false; logs.len()];
    loop {
        tick.tick().await;
        for (log, was) in logs.iter().zip(was_failing.iter_mut()) {
            let what = match log.name() {
                "decisions" => "decision trail",
                _ => "event log",
            };
            let health = log.health();
            match &health.failing {
                Some(f) => {
                    if !*was {
                        tracing::error!(log = log.name(), error = %f.error,
                            "cannot write the log; keeping records in memory and retrying (see /readyz)");
                    }
                    readiness.degrade(what, format!("write failing: {}", f.error));
                    *was = true;
                }
                None => {
                    if *was {
                        tracing::info!(log = log.name(), "the log is written again");
                    }
                    readiness.restore(what);
                    *was = false;
                }
            }
        }
    }
}

/// Runs a node until `shutdown` resolves (SIGTERM/SIGINT in the binary), then stops it gracefully.
///
/// # Errors
/// When bundles cannot be loaded or the addresses cannot be bound.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    crate::edge::bootstrap(&mut config).await?;
    let prepared = prepare(&config).await?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (grpc_addr)", config.grpc_addr))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (http_addr)", config.http_addr))?;
    let node = start(config, prepared, grpc, http).await?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}

/// A bundle file being watched.
struct Watched {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
    kind: WatchedKind,
}

/// A bundle slot: what a file or a version on the edge feed replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKindOnFeed {
    /// The catalog.
    Catalog,
    /// A model, in its role.
    Model(ModelRole),
    /// The guardrail rules.
    Rules,
    /// The experiments.
    Experiments,
}

impl BundleKindOnFeed {
    /// The slot of a kind named on the feed (`crate::edge::feed::KINDS`).
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "catalog" => Self::Catalog,
            "model" => Self::Model(ModelRole::Default),
            "candidate_model" => Self::Model(ModelRole::Candidate),
            "rules" => Self::Rules,
            "experiments" => Self::Experiments,
            _ => return None,
        })
    }
}

type WatchedKind = BundleKindOnFeed;

/// Polls the bundle files and loads new versions through their owners (invalid ones are refused and logged; the
/// last good version keeps serving).
async fn watch_bundles(config: Arc<Config>, decider: Arc<Decider>, files: Arc<BundleFiles>) {
    let mut watched = watched_files(&config);
    if watched.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(config.bundle_poll_secs));
    tick.tick().await;
    loop {
        tick.tick().await;
        for w in &mut watched {
            let now = stamp(&w.path);
            if now.is_none() || now == w.seen {
                continue;
            }
            w.seen = now;
            let Ok(bytes) = tokio::fs::read(&w.path).await else {
                continue;
            };
            let source = w.path.display().to_string();
            let (action, details) =
                match load_bundle(&decider, &files, w.kind, Arc::new(bytes), &source).await {
                    Ok(()) => ("bundle_loaded", serde_json::json!({"file": source})),
                    Err(error) => {
                        tracing::warn!(file = %source, %error, "new bundle version refused");
                        (
                            "bundle_refused",
                            serde_json::json!({"file": source, "error": error.to_string()}),
                        )
                    }
                };
            if let Err(e) = decider.audit_action(action, "node", details).await {
                tracing::warn!(error = %e, action, "the decision trail could not record a bundle change");
            }
        }
    }
}

/// The bundle files the configuration names, as first seen.
fn watched_files(config: &Config) -> Vec<Watched> {
    [
        (
            bundle_path(&config.catalog, config, "catalog.json"),
            WatchedKind::Catalog,
        ),
        (
            bundle_path(&config.model, config, "model.bin"),
            WatchedKind::Model(ModelRole::Default),
        ),
        (
            config.candidate_model.clone(),
            WatchedKind::Model(ModelRole::Candidate),
        ),
        (
            bundle_path(&config.rules, config, "rules.json"),
            WatchedKind::Rules,
        ),
        (
            bundle_path(&config.experiments, config, "experiments.json"),
            WatchedKind::Experiments,
        ),
    ]
    .into_iter()
    .filter_map(|(p, kind)| {
        p.map(|path| Watched {
            seen: stamp(&path),
            path,
            kind,
        })
    })
    .collect()
}

/// Loads a new version of a bundle through its owner, and keeps its file for the edge feed.
///
/// # Errors
/// Why the bundle was refused (the last good version keeps serving).
pub async fn load_bundle(
    decider: &Decider,
    files: &BundleFiles,
    kind: BundleKindOnFeed,
    file: Arc<Vec<u8>>,
    source: &str,
) -> Result<(), String> {
    let meta = load(decider, kind, file.as_ref().clone(), source).await?;
    files.keep(&file_key(&meta.version, &meta.content_hash), file);
    Ok(())
}

async fn load(
    decider: &Decider,
    kind: WatchedKind,
    bytes: Vec<u8>,
    source: &str,
) -> Result<aisle_domain::bundle::BundleMeta, String> {
    let timeout = Duration::from_secs(60);
    match kind {
        WatchedKind::Catalog => decider
            .worlds()
            .load_catalog(bytes, source)
            .await
            .map_err(|e| e.to_string()),
        WatchedKind::Model(role) => decider
            .worlds()
            .load_model(bytes, source, role)
            .await
            .map_err(|e| e.to_string()),
        WatchedKind::Rules => decider
            .policy()
            .load(bytes, source, timeout)
            .await
            .map_err(|e| e.to_string()),
        WatchedKind::Experiments => decider
            .experiments()
            .load(bytes, source, timeout)
            .await
            .map_err(|e| e.to_string()),
    }
}
