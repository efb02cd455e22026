//! `aisle.v1.PeerService`: what the other nodes of the cluster ask of this one.

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_server::PeerService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::decision::Router;
use crate::cluster::{SharedView, handoff};
use crate::engine::Engine;
use crate::push::{Inserted, catch_up, order_and_replicate};

/// The Peer service.
#[derive(Debug, Clone)]
pub struct PeerApi {
    engine: Arc<Engine>,
    router: Router,
}

impl PeerApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            router: Router::new(engine.clone()),
            engine,
        }
    }

    /// The view under which this node owns `shopper_id`, provided the sender's view is the same (by
    /// fingerprint); else the refusal the sender re-resolves on.
    fn owned_at(
        &self,
        shopper_id: &str,
        epoch: u64,
        fingerprint: u64,
    ) -> Result<SharedView, Status> {
        let cluster = &self.engine.cluster;
        let Some(view) = cluster.current() else {
            return Err(Status::failed_precondition("not a cluster member"));
        };
        if view.fingerprint != fingerprint {
            return Err(Status::failed_precondition(format!(
                "stale epoch: the sender's view (epoch {epoch}) differs from this node's (epoch {})",
                view.epoch
            )));
        }
        if view
            .shopper_owner(shopper_id)
            .is_none_or(|m| m.node_id != cluster.node_id)
        {
            return Err(Status::failed_precondition(format!(
                "not the owner under epoch {}",
                view.epoch
            )));
        }
        Ok(view)
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
        let inner = req
            .request
            .ok_or_else(|| Status::invalid_argument("request: required"))?;
        let view = self.owned_at(&inner.shopper_id, req.epoch, req.view_fingerprint)?;
        let deadline = received + Duration::from_micros(req.budget_us);
        let world = self.engine.worlds.current();
        let input = super::validate::decide(&inner, &world.catalog)?;
        Ok(Response::new(
            self.router
                .decide_as_owner(world, input, deadline, &view)
                .await,
        ))
    }

    async fn forward_track(
        &self,
        request: Request<pb::ForwardTrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let req = request.into_inner();
        let inner = req
            .request
            .ok_or_else(|| Status::invalid_argument("request: required"))?;
        for e in &inner.events {
            self.owned_at(&e.shopper_id, req.epoch, req.view_fingerprint)?;
        }
        let world = self.engine.worlds.current();
        let batch = super::validate::track(
            &inner,
            &world.catalog,
            aisle_domain::now_ms(),
            req.received_at_us,
            Duration::from_secs(self.engine.config.max_future_skew_secs),
        )?;
        let view = self
            .engine
            .cluster
            .current()
            .ok_or_else(|| Status::failed_precondition("not a cluster member"))?;
        let outcome = self
            .router
            .track_as_owner(batch, world.catalog.clone(), &view)
            .await?;
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.engine.node_id.clone(),
        }))
    }

    async fn forward_forget(
        &self,
        request: Request<pb::ForwardForgetRequest>,
    ) -> Result<Response<pb::ForwardForgetResponse>, Status> {
        let req = request.into_inner();
        self.owned_at(&req.shopper_id, req.epoch, req.view_fingerprint)?;
        let (erased, cached) = self.engine.forget(&req.shopper_id).await?;
        Ok(Response::new(pb::ForwardForgetResponse {
            session_erased: erased,
            cached_decisions_erased: cached as u32,
            served_by: self.engine.node_id.clone(),
        }))
    }

    async fn forward_describe(
        &self,
        request: Request<pb::ForwardForgetRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        let req = request.into_inner();
        self.owned_at(&req.shopper_id, req.epoch, req.view_fingerprint)?;
        Ok(Response::new(self.engine.describe(&req.shopper_id).await?))
    }

    async fn hand_off(
        &self,
        request: Request<pb::HandOffRequest>,
    ) -> Result<Response<pb::HandOffResponse>, Status> {
        let (installed, passed_on) =
            handoff::receive(&self.engine, &self.engine.cluster, request.into_inner()).await;
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
        let event = req
            .event
            .ok_or_else(|| Status::invalid_argument("event: required"))?;
        let cluster = &self.engine.cluster;
        let view = cluster
            .current()
            .ok_or_else(|| Status::failed_precondition("not a cluster member"))?;
        if view.fingerprint != req.view_fingerprint
            || view
                .store_owner(&event.store_id)
                .is_none_or(|m| m.node_id != cluster.node_id)
        {
            return Err(Status::failed_precondition(format!(
                "not the orderer of this store under epoch {}",
                view.epoch
            )));
        }
        let sequence = order_and_replicate(&self.engine.hub, cluster, &view, event).await;
        Ok(Response::new(pb::PublishAssistResponse { sequence }))
    }

    async fn replicate_assist(
        &self,
        request: Request<pb::ReplicateAssistRequest>,
    ) -> Result<Response<pb::ReplicateAssistResponse>, Status> {
        let req = request.into_inner();
        let cluster = &self.engine.cluster;
        let from = cluster
            .current()
            .and_then(|v| v.member(&req.from_node).map(|m| m.addr.clone()));
        for event in req.events {
            if let Inserted::Gap { .. } = self.engine.hub.insert_sequenced(event.clone()) {
                if let Some(addr) = &from {
                    catch_up(&self.engine.hub, cluster, addr, &event.store_id).await;
                }
                self.engine.hub.insert_sequenced(event);
            }
        }
        Ok(Response::new(pb::ReplicateAssistResponse {}))
    }

    async fn fetch_assist(
        &self,
        request: Request<pb::FetchAssistRequest>,
    ) -> Result<Response<pb::FetchAssistResponse>, Status> {
        let req = request.into_inner();
        let events = self
            .engine
            .hub
            .since(&req.store_id, req.after)
            .into_iter()
            .map(|e| (*e).clone())
            .collect();
        Ok(Response::new(pb::FetchAssistResponse { events }))
    }
}
