//! The node's ports and what each serves, assembled in one place with its tower layers:
//!
//! | port | services | layers |
//! |---|---|---|
//! | client (`grpc_addr`) | Decide, Track, Subscribe, EdgeService on a cloud node, AdminService when there is no admin port, health, reflection | authentication, admission |
//! | admin (`admin_addr`) | AdminService, health, reflection | authentication, admission |
//! | peer (`peer_addr`, etcd mode) | PeerService, health | mutual TLS with the cluster CA, admission, members only |
//! | HTTP (`http_addr`) | `/metrics`, `/healthz`, `/readyz` | — |

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1::admin_service_server::AdminServiceServer;
use aisle_proto::v1::associate_service_server::AssociateServiceServer;
use aisle_proto::v1::decision_service_server::DecisionServiceServer;
use aisle_proto::v1::edge_service_server::EdgeServiceServer;
use aisle_proto::v1::peer_service_server::PeerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::{v1, v1alpha};
use tower::layer::util::{Identity, Stack};

use super::MAX_REQUEST_BYTES;
use super::admission::AdmissionLayer;
use crate::api::admin::AdminApi;
use crate::api::associate::AssociateApi;
use crate::api::decision::DecisionApi;
use crate::api::edge::EdgeApi;
use crate::api::peer::{MembersOnlyLayer, PeerApi};
use crate::cluster::handoff::Holdings;
use crate::config::{Config, Role};
use crate::edge::role::Role as EdgeRole;
use crate::node::Node;
use crate::security::Security;
use crate::security::auth::AuthLayer;
use crate::security::tls::incoming;

/// The bound listeners of a node: client gRPC always; admin and peer when configured.
pub(super) struct Ports {
    /// The client port.
    pub(super) grpc: TcpListener,
    /// The admin port, when it has its own.
    pub(super) admin: Option<TcpListener>,
    /// The peer port (etcd mode).
    pub(super) peer: Option<TcpListener>,
}

/// A running gRPC server.
pub(super) type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// gRPC server settings shared by every port: HTTP/2 stream cap and keepalive.
fn server_builder(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_secs.max(1))))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// Reflection in both protocol versions, when enabled: v1 for current grpcurl and grpcui, v1alpha for the clients
/// that still speak only it (Python grpcio's reflection client, Postman, older grpcurl).
#[allow(clippy::type_complexity)]
fn reflection(
    config: &Config,
) -> anyhow::Result<(
    Option<v1::ServerReflectionServer<impl v1::ServerReflection>>,
    Option<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>>,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aisle_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    if !config.reflection {
        return Ok((None, None));
    }
    Ok((
        Some(builder().build_v1()?),
        Some(builder().build_v1alpha()?),
    ))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What every port's server is built from.
struct Serving<'a> {
    node: &'a Arc<Node>,
    security: &'a Security,
    shutdown: watch::Receiver<bool>,
}

/// The tower layers in front of the client and admin ports: authentication, then admission.
type Layers = Stack<AdmissionLayer, Stack<AuthLayer, Identity>>;

impl Serving<'_> {
    fn config(&self) -> &Config {
        &self.node.config
    }

    fn layers(&self) -> Layers {
        tower::ServiceBuilder::new()
            .layer(AuthLayer::new(self.security.credentials.clone()))
            .layer(AdmissionLayer::new(self.config().max_inflight_requests))
            .into_inner()
    }

    fn admin(&self) -> AdminServiceServer<AdminApi> {
        AdminServiceServer::new(AdminApi::new(self.node.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The client port: Decide, Track, Subscribe; EdgeService on a cloud node; AdminService when it has no port
    /// of its own; health and reflection.
    fn client<H: Health>(
        &self,
        listener: TcpListener,
        edge: Option<Arc<EdgeRole>>,
        health: HealthServer<H>,
        with_admin: bool,
    ) -> anyhow::Result<ServerTask> {
        let (node, config) = (self.node, self.config());
        let decision = DecisionServiceServer::new(DecisionApi::new(node.clone(), edge))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let associate =
            AssociateServiceServer::new(AssociateApi::new(node.clone(), self.shutdown.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES);
        // Store edges call the cloud; an edge serves no edges. An upload wraps one shopper's events of a Track the
        // edge accepted (at most MAX_REQUEST_BYTES): room for the wrapper, so that no accepted event is refused for
        // its size on the way up.
        let edges = (config.role == Role::Cloud).then(|| {
            EdgeServiceServer::new(EdgeApi::new(node.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES + 16 * 1024)
        });
        let (r1, r1a) = reflection(config)?;
        let tls = self.security.client_tls.clone();
        let server = server_builder(config)
            .layer(self.layers())
            .add_service(decision)
            .add_service(associate)
            .add_optional_service(edges)
            .add_optional_service(with_admin.then(|| self.admin()))
            .add_service(health)
            .add_optional_service(r1)
            .add_optional_service(r1a)
            .serve_with_incoming_shutdown(
                incoming(listener, tls, config.max_connections, "client"),
                stopped(self.shutdown.clone()),
            );
        Ok(tokio::spawn(server))
    }

    /// The admin port: AdminService, health and reflection, behind the same layers as the client port.
    fn admin_port<H: Health>(
        &self,
        listener: TcpListener,
        health: HealthServer<H>,
    ) -> anyhow::Result<ServerTask> {
        let config = self.config();
        let (r1, r1a) = reflection(config)?;
        let tls = self.security.client_tls.clone();
        let server = server_builder(config)
            .layer(self.layers())
            .add_service(self.admin())
            .add_service(health)
            .add_optional_service(r1)
            .add_optional_service(r1a)
            .serve_with_incoming_shutdown(
                incoming(listener, tls, config.max_connections, "admin"),
                stopped(self.shutdown.clone()),
            );
        Ok(tokio::spawn(server))
    }

    /// The peer port: PeerService and health, mutual TLS only (no tokens: peers prove themselves by certificate).
    fn peer_port<H: Health>(
        &self,
        listener: TcpListener,
        holdings: Holdings,
        health: HealthServer<H>,
    ) -> ServerTask {
        let config = self.config();
        // Peer messages carry hand-off batches: allow them to be large (up to max_peer_message_bytes).
        let peer = PeerServiceServer::new(PeerApi::new(self.node.clone(), holdings))
            .max_decoding_message_size(config.max_peer_message_bytes)
            .max_encoding_message_size(config.max_peer_message_bytes);
        let tls = self.security.peer_tls.clone();
        let server = server_builder(config)
            .layer(AdmissionLayer::new(config.max_inflight_requests))
            .layer(MembersOnlyLayer::new(self.node.cluster.clone()))
            .add_service(peer)
            .add_service(health)
            .serve_with_incoming_shutdown(
                incoming(listener, tls, config.max_connections, "peer"),
                stopped(self.shutdown.clone()),
            );
        tokio::spawn(server)
    }
}

/// Serves gRPC on the node's ports until `shutdown` says stop. Returns the server tasks and the health reporter.
pub(super) fn serve_grpc(
    node: &Arc<Node>,
    edge: Option<Arc<EdgeRole>>,
    holdings: Holdings,
    ports: Ports,
    security: &Security,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<ServerTask>, tonic_health::server::HealthReporter)> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let serving = Serving {
        node,
        security,
        shutdown,
    };
    let with_admin = ports.admin.is_none();
    let mut tasks = vec![serving.client(ports.grpc, edge, health.clone(), with_admin)?];
    if let Some(listener) = ports.admin {
        tasks.push(serving.admin_port(listener, health.clone())?);
    }
    if let Some(listener) = ports.peer {
        tasks.push(serving.peer_port(listener, holdings, health));
    }
    Ok((tasks, health_reporter))
}

/// Serves the HTTP plane on `listener` until `shutdown` says stop.
pub(super) fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped(shutdown))
            .await
    })
}
