//! `aisle.v1.PeerService`: what the other nodes of the cluster ask of this one.

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_server::PeerService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::admin::DescribeCall;
use super::decision::{DecideCall, TrackBatchCall};
use crate::cluster::handoff::{self, Holdings};
use crate::error::ApiError;
use crate::node::Node;
use crate::push::{Inserted, catch_up, order_and_replicate};
use crate::routing::{AtOwner, Routed, Router, owned_at};

/// How long a forwarded describe or erasure may wait for the hand-off barrier.
const SHOPPER_CALL: Duration = Duration::from_secs(5);

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
}

impl PeerApi {
    /// Runs a forwarded describe or erasure here, provided the sender's view is this node's and names it the
    /// owner (after the hand-off barrier).
    ///
    /// # Errors
    /// FAILED_PRECONDITION when the views differ, ownership moved or the hand-off did not finish (the sender
    /// re-resolves); the request's own error otherwise.
    async fn run_here<C: AtOwner>(
        &self,
        call: &C,
        epoch: u64,
        fingerprint: u64,
    ) -> Result<C::Output, Status> {
        let cluster = self.node.cluster();
        let view = owned_at(cluster, call.shopper(), epoch, fingerprint)?;
        let until = call.barrier_deadline(Instant::now() + SHOPPER_CALL);
        match Router::new(cluster).here(call, &view, until).await {
            Ok(Routed::Answered(r)) => Ok(r),
            Ok(Routed::Failed(e)) => Err(e.into()),
            Ok(Routed::NoOwner(why)) | Err(why) => {
                Err(ApiError::FailedPrecondition(why.to_string()).into())
            }
        }
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn forward_decide(
        &self,
        request: Request<pb::ForwardDecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let received = Instant::now();
        let req = request.into_inner();
        let inner = req.request.ok_or_else(|| ApiError::required("request"))?;
        let view = owned_at(
            self.node.cluster(),
            &inner.shopper_id,
            req.epoch,
            req.view_fingerprint,
        )?;
        let max_us = self.node.config().max_budget_ms * 1_000;
        if req.budget_us > max_us {
            return Err(ApiError::ResourceExhausted(format!(
                "budget_us: {} is above max_budget_ms ({} ms)",
                req.budget_us,
                self.node.config().max_budget_ms
            ))
            .into());
        }
        let deadline = received + Duration::from_micros(req.budget_us);
        let call = DecideCall::new(&self.node, &inner, &req.client, deadline)?;
        let answer = match Router::new(self.node.cluster())
            .here(&call, &view, call.barrier_deadline(deadline))
            .await
        {
            Ok(Routed::Answered(r)) => r,
            Ok(Routed::Failed(e)) => return Err(e.into()),
            Ok(Routed::NoOwner(why)) | Err(why) => call.fallback(why).await,
        };
        Ok(Response::new(answer))
    }

    async fn forward_track(
        &self,
        request: Request<pb::ForwardTrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let req = request.into_inner();
        let inner = req.request.ok_or_else(|| ApiError::required("request"))?;
        let cluster = self.node.cluster();
        let mut view = None;
        for e in &inner.events {
            view = Some(owned_at(
                cluster,
                &e.shopper_id,
                req.epoch,
                req.view_fingerprint,
            )?);
        }
        let view = view
            .ok_or_else(|| ApiError::invalid("request.events", "at least one event is required"))?;
        let mut batch = TrackBatchCall::new(&self.node, &inner, req.received_at_us)?;
        if let Some(key) = req.delivery {
            batch = batch.queued(aisle_session::Delivery {
                origin: key.origin.into(),
                seq: key.seq,
            })?;
        }
        let outcome = batch.run_here(&view).await?;
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
        let req = request.into_inner();
        let shopper = super::admin::shopper_id(&req.shopper_id)?;
        Ok(Response::new(
            crate::erasure::held_here(&self.node, shopper).await?,
        ))
    }

    async fn erase_shopper(
        &self,
        request: Request<pb::EraseShopperRequest>,
    ) -> Result<Response<pb::ErasureReceipt>, Status> {
        let req = request.into_inner();
        let shopper = super::admin::shopper_id(&req.shopper_id)?;
        let caller = format!("{} via {}", req.caller, req.from_node);
        Ok(Response::new(
            crate::erasure::erase_here(&self.node, shopper, req.forgotten_at_ms, &caller).await?,
        ))
    }

    async fn forward_describe(
        &self,
        request: Request<pb::ForwardDescribeRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        let req = request.into_inner();
        let call = DescribeCall {
            node: &self.node,
            shopper_id: &req.shopper_id,
        };
        Ok(Response::new(
            self.run_here(&call, req.epoch, req.view_fingerprint)
                .await?,
        ))
    }

    async fn fetch_session(
        &self,
        request: Request<pb::ForwardDescribeRequest>,
    ) -> Result<Response<pb::FetchSessionResponse>, Status> {
        let req = request.into_inner();
        let call = super::edge::FetchSessionCall {
            node: &self.node,
            shopper_id: &req.shopper_id,
        };
        Ok(Response::new(
            self.run_here(&call, req.epoch, req.view_fingerprint)
                .await?,
        ))
    }

    async fn hand_off(
        &self,
        request: Request<pb::HandOffRequest>,
    ) -> Result<Response<pb::HandOffResponse>, Status> {
        let (installed, passed_on) =
            handoff::receive(&self.holdings, self.node.cluster(), request.into_inner())
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
        let cluster = self.node.cluster();
        let view = cluster
            .current()
            .ok_or_else(|| ApiError::FailedPrecondition("not a cluster member".into()))?;
        if view.fingerprint != req.view_fingerprint
            || view
                .store_owner(&event.store_id)
                .is_none_or(|m| m.node_id != cluster.node_id)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "not the orderer of this store under epoch {}",
                view.epoch
            ))
            .into());
        }
        let sequence = order_and_replicate(self.node.hub(), cluster, &view, event).await;
        Ok(Response::new(pb::PublishAssistResponse { sequence }))
    }

    async fn replicate_assist(
        &self,
        request: Request<pb::ReplicateAssistRequest>,
    ) -> Result<Response<pb::ReplicateAssistResponse>, Status> {
        let req = request.into_inner();
        let cluster = self.node.cluster();
        let hub = self.node.hub();
        let view = cluster
            .current()
            .ok_or_else(|| ApiError::FailedPrecondition("not a cluster member".into()))?;
        let from = view
            .member(&req.from_node)
            .map(|m| m.addr.clone())
            .ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "sender {:?} is not a member of this node's view",
                    req.from_node
                ))
            })?;
        let from = Some(from);
        for event in req.events {
            // Only a store's orderer under this view sequences its events: nobody else can claim a number.
            if view
                .store_owner(&event.store_id)
                .is_none_or(|o| o.node_id != req.from_node)
            {
                metrics::counter!("aisle_assist_replication_refused_total").increment(1);
                continue;
            }
            if let Inserted::Gap { .. } = hub.insert_sequenced(event.clone()) {
                if let Some(addr) = &from {
                    catch_up(hub, cluster, addr, &event.store_id).await;
                }
                // What the orderer still holds is now here; what it no longer holds stays a gap.
                hub.insert_past_gap(event);
            }
        }
        Ok(Response::new(pb::ReplicateAssistResponse {}))
    }

    async fn hold_view(
        &self,
        request: Request<pb::HoldViewRequest>,
    ) -> Result<Response<pb::HoldViewResponse>, Status> {
        let req = request.into_inner();
        let cluster = self.node.cluster();
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
        let req = request.into_inner();
        let cluster = self.node.cluster();
        let Some(view) = cluster.current() else {
            return Err(ApiError::FailedPrecondition("not a cluster member".into()).into());
        };
        if view.fingerprint != req.view_fingerprint {
            return Err(ApiError::FailedPrecondition(format!(
                "stale epoch: the sender's view (epoch {}) differs from this node's (epoch {})",
                req.epoch, view.epoch
            ))
            .into());
        }
        let me = cluster.node_id.as_str();
        let from = req.from_node.as_str();
        let tombstones = &self.holdings.tombstones;
        let pseudonyms = &self.holdings.pseudonyms;
        let check_tombstones = !tombstones.is_empty();
        let held = cluster.replication.accept(from, req.sessions, |r| {
            // Only the owner's copies, and only as its successor; never a copy of an erased shopper.
            view.shopper_owner(&r.shopper_id)
                .is_some_and(|m| m.node_id == from)
                && view
                    .owner_without("shopper", &r.shopper_id, from)
                    .is_some_and(|m| m.node_id == me)
                && !(check_tombstones
                    && tombstones.blocks(&pseudonyms.of(&r.shopper_id), r.version))
        });
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
            .hub()
            .since(&req.store_id, req.after)
            .into_iter()
            .map(|e| (*e).clone())
            .collect();
        Ok(Response::new(pb::FetchAssistResponse { events }))
    }
}
