//! `aisle.v1.DecisionService`: Decide and Track, for storefronts (scopes `decide`, `track`). A request's budget is
//! its `grpc-timeout`, capped at `max_budget_ms`, else its placement row's budget, else `decide_budget_ms` (Track:
//! at most 4 s). The work is the use cases' ([`crate::shopper::decide`], [`crate::shopper::track`]); on a store edge,
//! the edge role's ([`crate::edge::role`]).

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_server::DecisionService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::config::{Placements, Site};
use crate::edge::role::Role;
use crate::error::ApiError;
use crate::node::Node;
use crate::security::assertion::Asserted;
use crate::security::auth::Identity;
use crate::shopper::decide::DecideCall;
use crate::shopper::track::{Batch, TRACK_BUDGET};

/// The Decision service.
#[derive(Debug, Clone)]
pub struct DecisionApi {
    node: Arc<Node>,
    /// The store edge's role, on an edge.
    edge: Option<Arc<Role>>,
    /// Budgets and sites per surface and channel, resolved once.
    placements: Arc<Placements>,
}

impl DecisionApi {
    /// A service over `node` (a store edge's when `edge` is given).
    pub fn new(node: Arc<Node>, edge: Option<Arc<Role>>) -> Self {
        let placements = Arc::new(node.config.placements());
        Self {
            node,
            edge,
            placements,
        }
    }
}

#[tonic::async_trait]
impl DecisionService for DecisionApi {
    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let received = Instant::now();
        let config = &self.node.config;
        let r = request.get_ref();
        let placement = self.placements.row(r.surface, r.channel);
        let deadline = super::deadline(
            received,
            request.metadata(),
            Duration::from_millis(placement.map_or(config.decide_budget_ms, |p| p.budget_ms)),
            Duration::from_millis(config.max_budget_ms),
        );
        let at = placement.map_or(Site::Edge, |p| p.at);
        let identity = Identity::of(&request);
        let mut req = request.into_inner();
        if let Some(asserted) = &identity.asserted {
            bound(
                asserted,
                "shopper_id",
                &req.shopper_id,
                "store_id",
                &req.store_id,
            )?;
            // A shopper-bound caller's consent may narrow what the shopper recorded or the region's default allows,
            // never widen it: its `true` counts as no statement.
            if req.consent == Some(true) {
                req.consent = None;
            }
        }
        let client = identity.name;
        let call = DecideCall::new(&self.node, &req, &client, deadline)?;
        let answer = match &self.edge {
            Some(edge) => edge.decide(&self.node, &call, at).await?,
            None => call.run().await?,
        };
        Ok(Response::new(answer))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let received = Instant::now();
        // The caller's budget (at most TRACK_BUDGET): a quarter of it (at least 20 ms) is kept for queueing in the
        // outbox when the owner does not answer by then.
        let budget = super::budget(request.metadata(), TRACK_BUDGET, TRACK_BUDGET);
        let keep = (budget / 4).max(Duration::from_millis(20)).min(budget / 2);
        let asserted = Identity::of(&request).asserted;
        let req = request.into_inner();
        if let Some(asserted) = &asserted {
            for (i, e) in req.events.iter().enumerate() {
                bound(
                    asserted,
                    &format!("events[{i}].shopper_id"),
                    &e.shopper_id,
                    &format!("events[{i}].store_id"),
                    &e.store_id,
                )?;
            }
        }
        let batch = Batch::new(&self.node, &req, super::now_us())?;
        let outcome = match &self.edge {
            Some(edge) => edge.track(&self.node, batch, received + budget).await?,
            None => batch.run(received + budget - keep).await?,
        };
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.node.id().to_string(),
            queued: outcome.queued as u32,
            duplicates: 0,
        }))
    }
}

/// A shopper-bound caller's request must be about the shopper its assertion names (and, when the assertion names a
/// store, at that store; an empty store field is no store).
///
/// # Errors
/// PERMISSION_DENIED naming the field, never the value.
fn bound(
    asserted: &Asserted,
    shopper_field: &str,
    shopper_id: &str,
    store_field: &str,
    store_id: &str,
) -> Result<(), ApiError> {
    if shopper_id != asserted.sub {
        return Err(ApiError::PermissionDenied(format!(
            "{shopper_field}: not the shopper the x-aisle-shopper assertion names"
        )));
    }
    if let Some(store) = &asserted.store
        && !store_id.is_empty()
        && store_id != store
    {
        return Err(ApiError::PermissionDenied(format!(
            "{store_field}: not the store the x-aisle-shopper assertion names"
        )));
    }
    Ok(())
}
