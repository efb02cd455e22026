//! `aisle.v1.DecisionService`: Decide and Track, each run at the shopper's owner through the [`Router`].
//!
//! Any node accepts any request. A Decide whose owner cannot serve it (unreachable, no owner, hand-off still
//! running at the deadline) is answered here by the fallback ladder — an answer, not an error, and no session is
//! created or read for a shopper this node does not own. A Track whose owner cannot be reached fails with
//! UNAVAILABLE, saying how many events of the batch were applied.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventRecord, ShopperEvent};
use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_server::DecisionService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::validate;
use crate::auth::Identity;
use crate::cluster::{Member, SharedView};
use crate::decision::{DecideInput, Decision, Fallback, Serve, Tier, TrackOutcome};
use crate::error::ApiError;
use crate::node::Node;
use crate::routing::{AtOwner, LocalError, Routed, Router};
use crate::world::World;

/// How long a Track may wait for the hand-off barrier and its owner.
const TRACK_BUDGET: Duration = Duration::from_secs(4);

fn tier(t: Tier) -> pb::FallbackTier {
    match t {
        Tier::Fresh => pb::FallbackTier::Fresh,
        Tier::Cached => pb::FallbackTier::Cached,
        Tier::Rules => pb::FallbackTier::Rules,
        Tier::Generic => pb::FallbackTier::Generic,
    }
}

/// The response of a decision.
pub fn response(d: Decision, served_by: &str, request_id: String) -> pb::DecideResponse {
    let fallback_reason = d.fallback_text();
    let catalog = &d.catalog;
    pb::DecideResponse {
        items: d
            .items
            .into_iter()
            .enumerate()
            .map(|(rank, i)| {
                let it = catalog.item(i.item);
                pb::RankedItem {
                    item_id: it.id.to_string(),
                    score: i.score,
                    rank: rank as u32 + 1,
                    offer: i.offer.map(|o| pb::Offer {
                        offer_id: o.offer_id.to_string(),
                        discount_percent: o.discount_percent,
                        price_cents: o.price_cents,
                        expires_at: Some(super::timestamp(o.expires_at_ms)),
                    }),
                    reasons: i.reasons,
                    name: it.name.to_string(),
                    category: catalog.category_of(i.item).name.clone(),
                    price_cents: it.price_cents,
                }
            })
            .collect(),
        decision_id: d.decision_id,
        fallback_tier: tier(d.tier) as i32,
        model_version: d.model_version,
        rules_version: d.rules_version,
        experiments: d
            .assignment
            .variants
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    pb::ExperimentAssignment {
                        variant: v.to_string(),
                        in_holdout: d.assignment.in_holdout,
                    },
                )
            })
            .collect(),
        served_by: served_by.to_string(),
        server_latency_us: d.latency.as_micros() as u64,
        request_id,
        experiments_version: d.experiments_version,
        catalog_version: catalog.meta.version.clone(),
        in_holdout: d.assignment.in_holdout,
        fallback_reason,
        epoch: d.epoch,
    }
}

/// A Decide at the shopper's owner.
pub struct DecideCall<'a> {
    node: &'a Node,
    /// The request as received (forwarded as is).
    request: &'a pb::DecideRequest,
    /// The world its items were resolved against.
    world: Arc<World>,
    input: DecideInput,
    deadline: Instant,
}

impl<'a> DecideCall<'a> {
    /// Validates a Decide request against the current catalog.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn new(
        node: &'a Node,
        request: &'a pb::DecideRequest,
        client: &str,
        deadline: Instant,
    ) -> Result<Self, ApiError> {
        let world = node.decider().worlds().current();
        let mut input = validate::decide(request, &world.catalog)?;
        input.client = client.to_string();
        Ok(Self {
            node,
            request,
            world,
            input,
            deadline,
        })
    }

    /// Decides here, at `epoch`, as `serve` allows.
    async fn decide(&self, serve: Serve) -> pb::DecideResponse {
        let decision = self
            .node
            .decider()
            .decide(self.world.clone(), self.input.clone(), self.deadline, serve)
            .await;
        response(decision, self.node.id(), self.input.request_id.clone())
    }

    /// Answers from the fallback ladder here: no owner could serve the request.
    pub async fn fallback(&self, why: Fallback) -> pb::DecideResponse {
        let epoch = self.node.cluster().epoch();
        self.decide(Serve::Fallback { epoch, why }).await
    }

    /// Decides wherever the shopper's owner is; the fallback ladder here when no owner can serve.
    pub async fn run(&self) -> Result<pb::DecideResponse, ApiError> {
        match Router::new(self.node.cluster())
            .at_owner(self, self.deadline)
            .await
        {
            Routed::Answered(r) => Ok(r),
            Routed::NoOwner(why) => Ok(self.fallback(why).await),
            Routed::Failed(e) => Err(e),
        }
    }
}

impl AtOwner for DecideCall<'_> {
    type Output = pb::DecideResponse;
    const RPC: &'static str = "decide";

    fn shopper(&self) -> &str {
        &self.input.shopper_id
    }

    /// The barrier may hold a decision until the safety margin, which is kept for the fallback ladder.
    fn barrier_deadline(&self, deadline: Instant) -> Instant {
        let left = deadline.saturating_duration_since(Instant::now());
        let margin = self.node.decider().settings().margin(left);
        deadline.checked_sub(margin).unwrap_or(deadline)
    }

    async fn local(&self, view: &SharedView) -> Result<pb::DecideResponse, LocalError> {
        Ok(self.decide(Serve::Owner { epoch: view.epoch }).await)
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<pb::DecideResponse, Status> {
        // Keep the safety margin here: if the owner does not answer in time, this node still answers.
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.saturating_sub(self.node.decider().settings().margin(left));
        if budget.is_zero() {
            return Err(Status::deadline_exceeded("no budget left to forward"));
        }
        let mut call = Request::new(pb::ForwardDecideRequest {
            request: Some(self.request.clone()),
            epoch: view.epoch,
            from_node: self.node.id().to_string(),
            budget_us: budget.as_micros() as u64,
            view_fingerprint: view.fingerprint,
            client: self.input.client.clone(),
        });
        call.set_timeout(budget);
        let mut client = self.node.cluster().peers.client(&owner.addr)?;
        client.forward_decide(call).await.map(Response::into_inner)
    }
}

/// One shopper's events of a Track batch, at the shopper's owner.
pub struct TrackCall<'a> {
    node: &'a Node,
    shopper_id: String,
    events: Vec<ShopperEvent>,
    records: Vec<EventRecord>,
    catalog: Arc<Catalog>,
    /// The batch as received: the shopper's events are forwarded as they came.
    request: &'a pb::TrackRequest,
    received_at_us: i64,
}

impl AtOwner for TrackCall<'_> {
    type Output = TrackOutcome;
    const RPC: &'static str = "track";

    fn shopper(&self) -> &str {
        &self.shopper_id
    }

    async fn local(&self, _view: &SharedView) -> Result<TrackOutcome, LocalError> {
        let applied = self
            .node
            .decider()
            .apply_events(
                &self.shopper_id,
                self.events.clone(),
                self.records.clone(),
                self.catalog.clone(),
            )
            .await?;
        self.node.cluster().replication.mark(&self.shopper_id);
        self.node.publish_assist(&self.shopper_id, &applied);
        Ok(applied.outcome)
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<TrackOutcome, Status> {
        let events = self
            .request
            .events
            .iter()
            .filter(|e| e.shopper_id == self.shopper_id)
            .cloned()
            .collect();
        let mut call = Request::new(pb::ForwardTrackRequest {
            request: Some(pb::TrackRequest {
                events,
                request_id: String::new(),
            }),
            epoch: view.epoch,
            from_node: self.node.id().to_string(),
            received_at_us: self.received_at_us,
            view_fingerprint: view.fingerprint,
        });
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut client = self.node.cluster().peers.client(&owner.addr)?;
        let r = client.forward_track(call).await?.into_inner();
        Ok(TrackOutcome {
            accepted: r.accepted as usize,
            unknown_items: r.unknown_items as usize,
        })
    }
}

/// A validated Track batch, applied shopper by shopper at each one's owner.
pub struct TrackBatchCall<'a> {
    node: &'a Node,
    request: &'a pb::TrackRequest,
    batch: validate::TrackBatch,
    catalog: Arc<Catalog>,
    received_at_us: i64,
}

impl<'a> TrackBatchCall<'a> {
    /// Validates a whole batch (all or nothing) against the current catalog.
    ///
    /// # Errors
    /// The first invalid field, e.g. `events[3].item_id: required`.
    pub fn new(
        node: &'a Node,
        request: &'a pb::TrackRequest,
        received_at_us: i64,
    ) -> Result<Self, ApiError> {
        let catalog = node.decider().worlds().current().catalog.clone();
        let batch = validate::track(
            request,
            &catalog,
            aisle_domain::now_ms(),
            received_at_us,
            Duration::from_secs(node.config().max_future_skew_secs),
            &node.decider().settings().consent,
        )
        .inspect_err(|_| metrics::counter!("aisle_track_rejected_total").increment(1))?;
        Ok(Self {
            node,
            request,
            batch,
            catalog,
            received_at_us,
        })
    }

    fn calls(self) -> impl Iterator<Item = TrackCall<'a>> {
        let Self {
            node,
            request,
            batch,
            catalog,
            received_at_us,
        } = self;
        batch
            .groups
            .into_iter()
            .zip(batch.records)
            .map(move |((shopper_id, events), records)| TrackCall {
                node,
                shopper_id,
                events,
                records,
                catalog: catalog.clone(),
                request,
                received_at_us,
            })
    }

    /// Applies each shopper's events at their owner, in batch order.
    ///
    /// # Errors
    /// UNAVAILABLE when some shopper's owner cannot be reached or this node is not a member; the message says
    /// how many events were applied.
    pub async fn run(self) -> Result<TrackOutcome, ApiError> {
        let deadline = Instant::now() + TRACK_BUDGET;
        let router = Router::new(self.node.cluster());
        let mut outcome = TrackOutcome::default();
        for call in self.calls() {
            let error = match router.at_owner(&call, deadline).await {
                Routed::Answered(o) => {
                    outcome += o;
                    continue;
                }
                Routed::NoOwner(why) => why.to_string(),
                // The request itself is wrong (here or at the owner): the caller is told so, not to retry.
                Routed::Failed(
                    e @ (ApiError::InvalidArgument { .. }
                    | ApiError::OutOfRange { .. }
                    | ApiError::Owner { .. }),
                ) => return Err(e),
                Routed::Failed(e) => e.to_string(),
            };
            return Err(ApiError::Unavailable(format!(
                "events of shopper {:?} were not applied ({error}); {} earlier events of this batch were",
                call.shopper_id, outcome.accepted
            )));
        }
        Ok(outcome)
    }

    /// Applies the events of shoppers this node owns under `view` (a forwarded batch).
    ///
    /// # Errors
    /// FAILED_PRECONDITION when ownership moved meanwhile or the hand-off did not finish (the sender
    /// re-resolves); UNAVAILABLE when a session actor failed.
    pub async fn run_here(self, view: &SharedView) -> Result<TrackOutcome, ApiError> {
        let deadline = Instant::now() + TRACK_BUDGET;
        let router = Router::new(self.node.cluster());
        let mut outcome = TrackOutcome::default();
        for call in self.calls() {
            match router
                .here(&call, view, call.barrier_deadline(deadline))
                .await
            {
                Ok(Routed::Answered(o)) => outcome += o,
                Ok(Routed::Failed(e)) => return Err(e),
                Ok(Routed::NoOwner(why)) | Err(why) => {
                    return Err(ApiError::FailedPrecondition(why.to_string()));
                }
            }
        }
        Ok(outcome)
    }
}

/// The Decision service.
#[derive(Debug, Clone)]
pub struct DecisionApi {
    node: Arc<Node>,
}

impl DecisionApi {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl DecisionService for DecisionApi {
    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let received = Instant::now();
        let config = self.node.config();
        let deadline = super::deadline(
            received,
            request.metadata(),
            Duration::from_millis(config.decide_budget_ms),
            Duration::from_millis(config.max_budget_ms),
        );
        let client = Identity::of(&request).name;
        let req = request.into_inner();
        let answer = DecideCall::new(&self.node, &req, &client, deadline)?
            .run()
            .await?;
        Ok(Response::new(answer))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let req = request.into_inner();
        let outcome = TrackBatchCall::new(&self.node, &req, super::now_us())?
            .run()
            .await?;
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.node.id().to_string(),
        }))
    }
}
