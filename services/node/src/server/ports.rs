//! The node's ports and what each serves, assembled in one place with its tower layers:
//!
//! | port | services | layers |
//! |---|---|---|
//! | client (`grpc_addr`) | Decide, Track, Subscribe, EdgeService on a cloud node, AdminService when there is no admin port, health, reflection | authentication, admission |
//! | admin (`admin_addr`) | AdminService, health, reflection | authentication, admission |
//! | peer (`peer_addr`, etcd mode) | PeerService, health | mutual TLS with the cluster CA, admission |
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
use tonic_reflection::server::{v1, v1alpha};

use super::MAX_REQUEST_BYTES;
use super::admission::AdmissionLayer;
use crate::api::admin::AdminApi;
use crate::api::associate::AssociateApi;
use crate::api::decision::DecisionApi;
use crate::api::edge::EdgeApi;
use crate::api::peer::PeerApi;
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

/// Serves gRPC on the node's ports until `shutdown_rx` says stop. Returns the server tasks and the health
/// reporter.
pub(super) fn serve_grpc(
    node: &Arc<Node>,
    edge: Option<Arc<EdgeRole>>,
    holdings: Holdings,
    ports: Ports,
    security: &Security,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<ServerTask>, tonic_health::server::HealthReporter)> {
    let config = &node.config;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let admin = AdminServiceServer::new(AdminApi::new(node.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let layers = || {
        tower::ServiceBuilder::new()
            .layer(AuthLayer::new(security.credentials.clone()))
            .layer(AdmissionLayer::new(config.max_inflight_requests))
            .into_inner()
    };
    let mut tasks = Vec::new();
    let decision = DecisionServiceServer::new(DecisionApi::new(node.clone(), edge))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let associate =
        AssociateServiceServer::new(AssociateApi::new(node.clone(), shutdown_rx.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
    // Store edges call the cloud; an edge serves no edges. An upload wraps one shopper's events of a Track the
    // edge accepted (at most MAX_REQUEST_BYTES): room for the wrapper, so that no accepted event is refused for its
    // size on the way up.
    let edges = (config.role == Role::Cloud).then(|| {
        EdgeServiceServer::new(EdgeApi::new(node.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES + 16 * 1024)
    });
    let (r1, r1a) = reflection(config)?;
    let client = server_builder(config)
        .layer(layers())
        .add_service(decision)
        .add_service(associate)
        .add_optional_service(edges)
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
            stopped(shutdown_rx.clone()),
        );
    tasks.push(tokio::spawn(client));
    if let Some(listener) = ports.admin {
        let (r1, r1a) = reflection(config)?;
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
                stopped(shutdown_rx.clone()),
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
                stopped(shutdown_rx),
            );
        tasks.push(tokio::spawn(server));
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
