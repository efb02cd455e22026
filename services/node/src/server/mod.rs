//! The composition root: starting, serving and stopping a node. Nothing below imports it.
//!
//! - [`run`]: the binary's `aisle serve` — validate the configuration, bootstrap a store edge's bundles, prepare
//!   the bundles, bind, [`start`], wait for the shutdown signal, [`RunningNode::shutdown`].
//! - [`start`]: on listeners the caller bound (tests pass `127.0.0.1:0`): load the credentials, assemble the node
//!   context (`assemble`), serve its ports (`ports`), start its tasks (`tasks`).
//! - [`RunningNode::shutdown`]: leave the cluster (hand sessions off, revoke the lease), stop taking work, end push
//!   streams, let in-flight calls finish, close the logs, stop the actors.

mod admission;
mod assemble;
mod ports;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bundles::{Prepared, prepare};
use crate::config::{ClusterMode, Config};
use crate::http::readiness::Readiness;
use crate::node::Node;
use crate::security::Security;
use ports::{Ports, ServerTask};

/// The services whose health `grpc.health.v1` reports ("" is the server as a whole).
const SERVICES: [&str; 4] = [
    "aisle.v1.DecisionService",
    "aisle.v1.AssociateService",
    "aisle.v1.AdminService",
    "",
];

/// Largest request accepted, in bytes; larger ones are refused with OUT_OF_RANGE.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// How long in-flight calls get to finish at shutdown before connections are closed.
const DRAIN: Duration = Duration::from_secs(10);

/// A running node.
pub struct RunningNode {
    /// Where gRPC (the client port) listens.
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where the admin port listens, when it has its own.
    pub admin_addr: Option<SocketAddr>,
    /// Where the peer port listens (etcd mode).
    pub peer_addr: Option<SocketAddr>,
    /// The node's context (for in-process inspection by tests).
    pub node: Arc<Node>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    shutdown_tx: watch::Sender<bool>,
    grpc: Vec<ServerTask>,
    http: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops taking work, ends push streams (handhelds reconnect elsewhere), lets in-flight calls finish (up to
    /// 10 s), and stops the actors.
    pub async fn shutdown(self) {
        tracing::info!(node = %self.node.id(), "shutting down");
        self.readiness.stopping();
        leave(&self.node).await;
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
        let node = &self.node;
        node.logs.close().await;
        node.shoppers.sessions.stop().await;
        node.decider.stop().await;
        node.bundles.stop();
        tracing::info!(node = %node.id(), "stopped");
    }
}

/// Leaves the cluster gracefully (etcd mode): own nothing from the next view on, hand every session to its new
/// owner, then revoke the lease. Requests still arriving meanwhile are forwarded to the new owners.
async fn leave(node: &Node) {
    let cluster = &node.cluster;
    if !cluster.is_clustered() {
        return;
    }
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
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(elapsed_ms, "left the cluster");
}

/// Logs how the node is secured, and warns on every start of a node running `--insecure`.
fn announce_security(config: &Config, security: &Security) {
    metrics::gauge!("aisle_insecure").set(if config.insecure { 1.0 } else { 0.0 });
    if config.insecure {
        let gaps = config.security_gaps();
        let missing = if gaps.is_empty() {
            "nothing".to_string()
        } else {
            gaps.join("; ")
        };
        tracing::warn!(%missing,
            "running with --insecure: this node accepts callers without the protection it would otherwise require");
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
fn advertise_addr(config: &Config, grpc: SocketAddr) -> String {
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

async fn bind(addr: SocketAddr, name: &'static str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name})"))
}

/// The node's ports: the client port given, the admin and peer ports bound as configured.
async fn ports(config: &Config, grpc: TcpListener) -> anyhow::Result<Ports> {
    Ok(Ports {
        grpc,
        admin: match config.admin_addr {
            Some(a) => Some(bind(a, "admin_addr").await?),
            None => None,
        },
        peer: if config.cluster == ClusterMode::Etcd {
            Some(bind(config.peer_addr, "peer_addr").await?)
        } else {
            None
        },
    })
}

/// Starts a node on the given listeners.
///
/// # Errors
/// When the configuration is invalid, a credential, port, log or the outbox cannot be opened, or an actor cannot
/// be spawned.
pub async fn start(
    config: Config,
    prepared: Prepared,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let metrics = crate::http::metrics::install();
    crate::http::metrics::describe();
    crate::logs::journal::describe_metrics();
    let security = Security::load(&config)?;
    announce_security(&config, &security);
    let config = Arc::new(config);
    let readiness = Arc::new(if config.cluster == ClusterMode::Etcd {
        Readiness::new(&["bundles", "serving", "membership"])
    } else {
        Readiness::new(&["bundles", "serving"])
    });
    let ports = ports(&config, grpc_listener).await?;
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
    let assembled = assemble::assemble(config, prepared, &security, &advertise).await?;
    let node = assembled.node;
    readiness.met("bundles");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (grpc, health) = ports::serve_grpc(
        &node,
        assembled.edge.clone(),
        assembled.holdings.clone(),
        ports,
        &security,
        shutdown_rx.clone(),
    )?;
    let router = crate::http::router(
        metrics.clone(),
        readiness.clone(),
        node.shoppers.sessions.clone(),
    );
    let http = ports::serve_http(http_listener, router, shutdown_rx);
    let background = tasks::start(
        &node,
        assembled.edge,
        assembled.holdings,
        security,
        &readiness,
        metrics,
    )
    .await;
    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    readiness.met("serving");
    tracing::info!(node = %node.id(), grpc = %grpc_addr, http = %http_addr, "serving");
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

/// Runs a node until `shutdown` resolves (SIGTERM/SIGINT in the binary), then stops it gracefully.
///
/// # Errors
/// When bundles cannot be loaded or the addresses cannot be bound.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    crate::edge::role::bootstrap(&mut config).await?;
    let prepared = prepare(&config).await?;
    let grpc = bind(config.grpc_addr, "grpc_addr").await?;
    let http = bind(config.http_addr, "http_addr").await?;
    let node = start(config, prepared, grpc, http).await?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}
