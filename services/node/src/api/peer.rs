//! `aisle.v1.PeerService`: what the other members of the cluster ask of this one, on the peer port (mutual TLS with
//! the cluster CA). A forwarded per-shopper request runs here only when its sender's view is this node's and names
//! this node the owner ([`Router::receive`]); the sender re-resolves on FAILED_PRECONDITION.
//!
//! Who may call: a member. [`MembersOnlyLayer`] serves a PeerService call only when the client certificate is a
//! peer certificate (URI SAN `spiffe://<trust domain>/node/<id>`) naming a member of this node's view (or of the
//! view before it); a message's `from_node` must be that member ([`sent_by`]). Everything else gets
//! PERMISSION_DENIED. A peer port without TLS (an `--insecure` cluster) has no identities to check.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_server::PeerService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tower::{Layer, Service};

use crate::cluster::handoff::{self, Holdings};
use crate::cluster::replication;
use crate::cluster::routing::Router;
use crate::cluster::{Cluster, Sender};
use crate::engine::tombstones;
use crate::error::ApiError;
use crate::node::Node;
use crate::push::publisher;
use crate::security::tls::ConnInfo;
use crate::shopper::decide::DecideCall;
use crate::shopper::describe::DescribeCall;
use crate::shopper::fetch::FetchSessionCall;
use crate::shopper::track::Batch;
use crate::shopper::{SHOPPER_CALL, erase, shopper_id};

/// The Peer service.
#[derive(Debug, Clone)]
pub struct PeerApi {
    node: Arc<Node>,
    holdings: Holdings,
}

impl PeerApi {
    /// A service over `node`, installing handed-off sessions into `holdings`.
    pub fn new(node: Arc<Node>, holdings: Holdings) -> Self {
        Self { node, holdings }
    }

    fn router(&self) -> Router<'_> {
        Router::new(&self.node.cluster)
    }
}

fn sender(epoch: u64, fingerprint: u64) -> Sender {
    Sender { epoch, fingerprint }
}

/// How long a call from a node this one does not (yet) see as a member waits for a view naming it.
const STRANGER_WAIT: Duration = Duration::from_secs(1);

/// The member a PeerService call comes from, as its certificate proves (set by [`MembersOnlyLayer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode(pub Arc<str>);

/// Checks that a message's `from_node` is the member whose certificate carried it; returns who sent it (the
/// message's word on a peer port without TLS).
///
/// # Errors
/// PERMISSION_DENIED naming `from_node` when it names another node.
fn sent_by<'a, T>(request: &'a Request<T>, from_node: &'a str) -> Result<&'a str, Status> {
    match request.extensions().get::<PeerNode>() {
        Some(PeerNode(peer)) if **peer != *from_node => Err(Status::permission_denied(format!(
            "from_node: names another node than the peer certificate ({peer:?})"
        ))),
        Some(PeerNode(peer)) => Ok(peer),
        None => Ok(from_node),
    }
}

/// Admits a PeerService call: the node its peer certificate names, when that node is a member.
async fn admit(cluster: &Cluster, conn: Option<&ConnInfo>) -> Result<Option<PeerNode>, Status> {
    let Some(conn) = conn.filter(|c| c.client_certs.is_some()) else {
        // No client certificate: only a peer port without TLS lets a call this far.
        return Ok(None);
    };
    let Some(node) = &conn.peer_node else {
        return Err(refused(
            "not_peer",
            "the client certificate is not a peer certificate: it names no node in a URI SAN \
             spiffe://<trust domain>/node/<id>"
                .into(),
        ));
    };
    if !cluster.knows_peer(node, STRANGER_WAIT).await {
        return Err(refused(
            "not_member",
            format!("peer {node:?} is not a member of this node's view"),
        ));
    }
    Ok(Some(PeerNode(node.clone())))
}

fn refused(reason: &'static str, message: String) -> Status {
    metrics::counter!("aisle_peer_refused_total", "reason" => reason).increment(1);
    tracing::warn!(reason, "{message}");
    Status::permission_denied(message)
}

/// The tower layer running [`admit`] in front of the peer port's PeerService.
#[derive(Debug, Clone)]
pub struct MembersOnlyLayer {
    cluster: Arc<Cluster>,
}

impl MembersOnlyLayer {
    /// A layer admitting the members of `cluster`'s view.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

impl<S> Layer<S> for MembersOnlyLayer {
    type Service = MembersOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MembersOnly {
            inner,
            cluster: self.cluster.clone(),
        }
    }
}

/// The service of [`MembersOnlyLayer`].
#[derive(Debug, Clone)]
pub struct MembersOnly<S> {
    inner: S,
    cluster: Arc<Cluster>,
}

impl<S, B> Service<http::Request<B>> for MembersOnly<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cluster = self.cluster.clone();
        Box::pin(async move {
            // Health checks stay open to any holder of a cluster certificate; every PeerService method is checked.
            if req.uri().path().starts_with("/aisle.v1.PeerService/") {
                match admit(&cluster, req.extensions().get::<ConnInfo>()).await {
                    Err(status) => return Ok(status.into_http()),
                    Ok(Some(peer)) => {
                        req.extensions_mut().insert(peer);
                    }
                    Ok(None) => {}
                }
            }
            inner.call(req).await
        })
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn forward_decide(
        &self,
        request: Request<pb::ForwardDecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let received = Instant::now();
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let inner = req.request.ok_or_else(|| ApiError::required("request"))?;
        let max_us = self.node.config.max_budget_ms * 1_000;
        if req.budget_us > max_us {
            return Err(ApiError::ResourceExhausted(format!(
                "budget_us: {} is above max_budget_ms ({} ms)",
                req.budget_us, self.node.config.max_budget_ms
            ))
            .into());
        }
        let deadline = received + Duration::from_micros(req.budget_us);
        let call = DecideCall::new(&self.node, &inner, &req.client, deadline)?;
        let from = sender(req.epoch, req.view_fingerprint);
        Ok(Response::new(
            self.router().receive(&call, from, deadline).await?,
        ))
    }

    async fn forward_track(
        &self,
        request: Request<pb::ForwardTrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let inner = req.request.ok_or_else(|| ApiError::required("request"))?;
        if inner.events.is_empty() {
            return Err(
                ApiError::invalid("request.events", "at least one event is required").into(),
            );
        }
        let mut batch = Batch::new(&self.node, &inner, req.received_at_us)?;
        if let Some(key) = req.delivery {
            batch = batch.queued(aisle_session::Delivery {
                origin: key.origin.into(),
                seq: key.seq,
            })?;
        }
        let outcome = batch
            .receive(sender(req.epoch, req.view_fingerprint))
            .await?;
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.node.id().to_string(),
            queued: 0,
            duplicates: outcome.duplicates as u32,
        }))
    }

    async fn describe_held(
        &self,
        request: Request<pb::DescribeHeldRequest>,
    ) -> Result<Response<pb::HeldRecords>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let shopper = shopper_id(&req.shopper_id)?;
        Ok(Response::new(erase::held_here(&self.node, shopper).await?))
    }

    async fn erase_shopper(
        &self,
        request: Request<pb::EraseShopperRequest>,
    ) -> Result<Response<pb::ErasureReceipt>, Status> {
        let from = sent_by(&request, &request.get_ref().from_node)?.to_string();
        let req = request.into_inner();
        let shopper = shopper_id(&req.shopper_id)?;
        if tombstones::too_far_ahead(req.forgotten_at_ms) {
            return Err(ApiError::invalid(
                "forgotten_at_ms",
                format!(
                    "dated more than {} s ahead of this node's clock",
                    tombstones::MAX_FUTURE_MS / 1_000
                ),
            )
            .into());
        }
        // The trail names the member that carried the erasure (its certificate's node), and the caller on its word.
        let caller = format!("{} via {from}", req.caller);
        let receipt = erase::erase_here(&self.node, shopper, req.forgotten_at_ms, &caller).await?;
        Ok(Response::new(receipt))
    }

    async fn forward_describe(
        &self,
        request: Request<pb::ForwardDescribeRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let call = DescribeCall {
            node: &self.node,
            shopper_id: &req.shopper_id,
        };
        let from = sender(req.epoch, req.view_fingerprint);
        let deadline = Instant::now() + SHOPPER_CALL;
        Ok(Response::new(
            self.router().receive(&call, from, deadline).await?,
        ))
    }

    async fn fetch_session(
        &self,
        request: Request<pb::ForwardDescribeRequest>,
    ) -> Result<Response<pb::FetchSessionResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let call = FetchSessionCall {
            node: &self.node,
            shopper_id: &req.shopper_id,
            store_id: &req.store_id,
        };
        let from = sender(req.epoch, req.view_fingerprint);
        let deadline = Instant::now() + SHOPPER_CALL;
        Ok(Response::new(
            self.router().receive(&call, from, deadline).await?,
        ))
    }

    async fn hand_off(
        &self,
        request: Request<pb::HandOffRequest>,
    ) -> Result<Response<pb::HandOffResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let (installed, passed_on) =
            handoff::receive(&self.holdings, &self.node.cluster, request.into_inner())
                .await
                .map_err(|refused| {
                    metrics::counter!("aisle_handoff_refused_total").increment(1);
                    tracing::warn!(reason = %refused, "hand-off refused");
                    Status::from(ApiError::FailedPrecondition(refused.to_string()))
                })?;
        Ok(Response::new(pb::HandOffResponse {
            installed: installed as u32,
            passed_on: passed_on as u32,
        }))
    }

    async fn publish_assist(
        &self,
        request: Request<pb::PublishAssistRequest>,
    ) -> Result<Response<pb::PublishAssistResponse>, Status> {
        let req = request.into_inner();
        let event = req.event.ok_or_else(|| ApiError::required("event"))?;
        let from = sender(req.epoch, req.view_fingerprint);
        let node = &self.node;
        let sequence =
            publisher::order_forwarded(&node.push.hub, &node.cluster, from, &event).await?;
        Ok(Response::new(pb::PublishAssistResponse { sequence }))
    }

    async fn replicate_assist(
        &self,
        request: Request<pb::ReplicateAssistRequest>,
    ) -> Result<Response<pb::ReplicateAssistResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let node = &self.node;
        publisher::accept_replicated(&node.push.hub, &node.cluster, &req.from_node, req.events)
            .await?;
        Ok(Response::new(pb::ReplicateAssistResponse {}))
    }

    async fn hold_view(
        &self,
        request: Request<pb::HoldViewRequest>,
    ) -> Result<Response<pb::HoldViewResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let cluster = &self.node.cluster;
        let granted = cluster.grant_hold(&req.from_node, req.view_fingerprint);
        Ok(Response::new(pb::HoldViewResponse {
            granted: granted.is_some(),
            hold_ms: granted.map_or(0, |d| d.as_millis() as u64),
            epoch: cluster.epoch(),
        }))
    }

    async fn replicate_sessions(
        &self,
        request: Request<pb::ReplicateSessionsRequest>,
    ) -> Result<Response<pb::ReplicateSessionsResponse>, Status> {
        sent_by(&request, &request.get_ref().from_node)?;
        let req = request.into_inner();
        let view = self
            .router()
            .same_view(sender(req.epoch, req.view_fingerprint))?;
        let node = &self.node;
        let held = replication::receive(
            &node.cluster,
            &node.shoppers,
            &view,
            &req.from_node,
            req.sessions,
        );
        Ok(Response::new(pb::ReplicateSessionsResponse {
            held: held as u32,
        }))
    }

    async fn fetch_assist(
        &self,
        request: Request<pb::FetchAssistRequest>,
    ) -> Result<Response<pb::FetchAssistResponse>, Status> {
        let req = request.into_inner();
        let events = self
            .node
            .push
            .hub
            .since(&req.store_id, req.after)
            .into_iter()
            .map(|e| (*e).clone())
            .collect();
        Ok(Response::new(pb::FetchAssistResponse { events }))
    }
}
