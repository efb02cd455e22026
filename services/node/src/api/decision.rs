//! `aisle.v1.DecisionService`: Decide and Track, each run at the shopper's owner through the [`Router`].
//!
//! Any node accepts any request. A Decide whose owner cannot serve it (unreachable, no owner, hand-off still
//! running at the deadline) is answered here by the fallback ladder — an answer, not an error, and no session is
//! created or read for a shopper this node does not own. A Track whose owner cannot take it is queued in the
//! node's outbox ([`crate::outbox`]) and delivered by [`deliver`]; without an outbox it fails with UNAVAILABLE,
//! saying how many events of the batch were accepted.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventRecord, ShopperEvent};
use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_server::DecisionService;
use aisle_session::Delivery;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::validate;
use crate::auth::Identity;
use crate::cluster::{Member, SharedView};
use crate::config::{Role, Site, enum_name};
use crate::decision::{DecideInput, Decision, Fallback, Serve, Tier, TrackOutcome};
use crate::edge::Edge;
use crate::error::ApiError;
use crate::node::Node;
use crate::outbox::{Outbox, QueueError, QueuedTrack};
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

/// The response of a decision made at `site`.
pub fn response(
    d: Decision,
    served_by: &str,
    request_id: String,
    site: pb::DecisionSite,
) -> pb::DecideResponse {
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
        decided_at: site as i32,
    }
}

/// Where this node decides: at a store's edge, or in the cloud.
pub fn site(node: &Node) -> pb::DecisionSite {
    match node.config().role {
        Role::Edge => pb::DecisionSite::Edge,
        Role::Cloud => pb::DecisionSite::Cloud,
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
        response(
            decision,
            self.node.id(),
            self.input.request_id.clone(),
            site(self.node),
        )
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
    /// Set when an outbox delivers the events: the owner applies them once.
    delivery: Option<Delivery>,
}

impl TrackCall<'_> {
    /// The shopper's events of the batch, as received.
    fn events_as_received(&self) -> Vec<pb::TrackEvent> {
        self.request
            .events
            .iter()
            .filter(|e| e.shopper_id == self.shopper_id)
            .cloned()
            .collect()
    }
}

impl AtOwner for TrackCall<'_> {
    type Output = TrackOutcome;
    const RPC: &'static str = "track";

    fn shopper(&self) -> &str {
        &self.shopper_id
    }

    async fn local(&self, _view: &SharedView) -> Result<TrackOutcome, LocalError> {
        if self.delivery.is_some() && self.node.cluster().writes_at_risk() {
            // Applied here, the events could be on this node alone when it fences (it may be cut off from its
            // successor too). The sender has an outbox (the events carry its key): it queues them until this node
            // is safe again or another owns the shopper.
            return Err(LocalError::Failed(ApiError::Unavailable(
                "this owner's keep-alives are late and no peer holds its view: events wait in an outbox".into(),
            )));
        }
        let decider = self.node.decider();
        if self.delivery.is_some()
            && !decider.tombstones().is_empty()
            && decider.tombstones().blocks(
                &decider.pseudonyms().of(&self.shopper_id),
                (self.received_at_us / 1000).max(0) as u64,
            )
        {
            // Queued before the shopper was forgotten: it must not bring them back.
            metrics::counter!("aisle_outbox_entries_dropped_total", "reason" => "erased")
                .increment(1);
            return Ok(TrackOutcome::default());
        }
        let applied = decider
            .apply_events(
                &self.shopper_id,
                self.events.clone(),
                self.records.clone(),
                self.catalog.clone(),
                self.delivery.clone(),
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
        let mut call = Request::new(pb::ForwardTrackRequest {
            request: Some(pb::TrackRequest {
                events: self.events_as_received(),
                request_id: String::new(),
            }),
            epoch: view.epoch,
            from_node: self.node.id().to_string(),
            received_at_us: self.received_at_us,
            view_fingerprint: view.fingerprint,
            delivery: self.delivery.as_ref().map(|d| pb::DeliveryKey {
                origin: d.origin.to_string(),
                seq: d.seq,
            }),
        });
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut client = self.node.cluster().peers.client(&owner.addr)?;
        let r = client.forward_track(call).await?.into_inner();
        Ok(TrackOutcome {
            accepted: r.accepted as usize,
            unknown_items: r.unknown_items as usize,
            queued: r.queued as usize,
            duplicates: r.duplicates as usize,
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
    delivery: Option<Delivery>,
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
            delivery: None,
        })
    }

    /// The batch is an outbox's entry (one shopper's events): the owner applies it once.
    ///
    /// # Errors
    /// INVALID_ARGUMENT when the batch holds events of more than one shopper.
    pub fn queued(mut self, delivery: Delivery) -> Result<Self, ApiError> {
        if self.batch.groups.len() != 1 {
            return Err(ApiError::invalid(
                "queued",
                "an outbox entry holds the events of one shopper",
            ));
        }
        self.delivery = Some(delivery);
        Ok(self)
    }

    fn calls(self) -> impl Iterator<Item = TrackCall<'a>> {
        let Self {
            node,
            request,
            batch,
            catalog,
            received_at_us,
            delivery,
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
                delivery: delivery.clone(),
            })
    }

    /// Applies each shopper's events at their owner, in batch order.
    ///
    /// With an outbox, each shopper's events are numbered by it first and sent with that number; those whose owner
    /// cannot take them now (or did not answer), and those of a shopper with a call in flight or entries waiting,
    /// are queued instead (see [`crate::outbox`]).
    ///
    /// # Errors
    /// INVALID_ARGUMENT (or the owner's refusal) for a wrong event; RESOURCE_EXHAUSTED when the outbox is full;
    /// UNAVAILABLE when an owner cannot take them and there is no outbox, or it could not be written. The message
    /// says how many events of the batch were accepted before.
    /// The owner has until `deadline`; what is left after it is for queueing.
    pub async fn run(self, deadline: Instant) -> Result<TrackOutcome, ApiError> {
        let router = Router::new(self.node.cluster());
        let outbox = self.node.outbox().cloned();
        let mut outcome = TrackOutcome::default();
        for mut call in self.calls() {
            let not_accepted = |why: String, outcome: &TrackOutcome| {
                format!(
                    "events of shopper {:?} were not accepted ({why}); {} earlier events of this batch were",
                    call.shopper_id, outcome.accepted
                )
            };
            let Some(outbox) = &outbox else {
                let why = match router.at_owner(&call, deadline).await {
                    Routed::Answered(o) => {
                        outcome += o;
                        continue;
                    }
                    Routed::NoOwner(why) => why.to_string(),
                    Routed::Failed(e) if e.is_the_callers() => return Err(e),
                    Routed::Failed(e) => e.to_string(),
                };
                return Err(ApiError::Unavailable(not_accepted(why, &outcome)));
            };
            let ticket = outbox.ticket(&call.shopper_id);
            let why = if ticket.behind {
                "earlier events of the shopper are on their way".to_string()
            } else {
                call.delivery = Some(ticket.delivery.clone());
                match router.at_owner(&call, deadline).await {
                    Routed::Answered(o) => {
                        outbox.release(&call.shopper_id, &ticket);
                        outcome += o;
                        continue;
                    }
                    Routed::Failed(e) if e.is_the_callers() => {
                        outbox.release(&call.shopper_id, &ticket);
                        return Err(e);
                    }
                    Routed::NoOwner(why) => why.to_string(),
                    // The owner may have applied them (an answer lost): queued under the same number, a resend is
                    // answered as a duplicate.
                    Routed::Failed(e) => e.to_string(),
                }
            };
            let events = call.events_as_received();
            let n = events.len();
            let request = pb::TrackRequest {
                events,
                request_id: String::new(),
            };
            match outbox
                .commit(&call.shopper_id, &ticket, call.received_at_us, request)
                .await
            {
                Ok(()) => {
                    tracing::debug!(shopper_events = n, why = %why, "queued in the outbox");
                    outcome += TrackOutcome {
                        accepted: n,
                        queued: n,
                        ..TrackOutcome::default()
                    };
                }
                Err(e @ QueueError::Full(_)) => {
                    return Err(ApiError::ResourceExhausted(not_accepted(
                        format!("{e}; their owner: {why}"),
                        &outcome,
                    )));
                }
                Err(e) => {
                    return Err(ApiError::Unavailable(not_accepted(
                        format!("{why}; {e}"),
                        &outcome,
                    )));
                }
            }
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
        let r = request.get_ref();
        // Names are built only when a table is configured: no allocation on a node without one.
        let placement = if config.placement.is_empty() {
            None
        } else {
            config.placement_for(
                &enum_name(r.surface().as_str_name(), "SURFACE_"),
                &enum_name(r.channel().as_str_name(), "CHANNEL_"),
            )
        };
        let deadline = super::deadline(
            received,
            request.metadata(),
            Duration::from_millis(placement.map_or(config.decide_budget_ms, |p| p.budget_ms)),
            Duration::from_millis(config.max_budget_ms),
        );
        let at = placement.map_or(Site::Edge, |p| p.at);
        let client = Identity::of(&request).name;
        let req = request.into_inner();
        let call = DecideCall::new(&self.node, &req, &client, deadline)?;
        let answer = match self.node.edge() {
            Some(edge) => decide_at_edge(&self.node, edge, &call, at).await?,
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
        let req = request.into_inner();
        let batch = TrackBatchCall::new(&self.node, &req, super::now_us())?;
        let outcome = match self.node.edge() {
            Some(edge) => track_at_edge(&self.node, edge, batch, received + budget).await?,
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

/// A Decide at a store edge: the cloud's session first when this is the shopper's first in-store call; then,
/// for a surface placed in the cloud, the cloud's answer if it comes within the budget (less a reserve kept for
/// answering here); else the edge's own answer.
async fn decide_at_edge(
    node: &Node,
    edge: &Edge,
    call: &DecideCall<'_>,
    at: Site,
) -> Result<pb::DecideResponse, ApiError> {
    let left = || call.deadline.saturating_duration_since(Instant::now());
    if call.request.consent != Some(false) {
        edge.pull_session(node, &call.request.shopper_id, false, left() / 3)
            .await;
    }
    if at == Site::Cloud {
        let reserve = (left() / 3).max(Duration::from_millis(10));
        let timeout = left().saturating_sub(reserve);
        let why = if !edge.online() {
            "offline"
        } else if timeout.is_zero() {
            "no_budget"
        } else {
            match edge.decide_in_cloud(call.request, timeout).await {
                Ok(mut answer) => {
                    metrics::counter!("aisle_edge_decisions_total", "at" => "cloud").increment(1);
                    answer.decided_at = pb::DecisionSite::Cloud as i32;
                    return Ok(answer);
                }
                Err(e) if e.code() == tonic::Code::DeadlineExceeded => "deadline",
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    ) =>
                {
                    tracing::warn!(error = %e.message(), "the cloud refused a forwarded decision: the edge's \
                        upstream token needs the decide scope");
                    "denied"
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a forwarded decision failed");
                    "failed"
                }
            }
        };
        metrics::counter!("aisle_edge_cloud_fallbacks_total", "reason" => why).increment(1);
    }
    let answer = call.run().await?;
    metrics::counter!("aisle_edge_decisions_total", "at" => "edge").increment(1);
    Ok(answer)
}

/// A Track at a store edge: each shopper's events are first queued for the cloud (fsync'd; the queue uploads
/// them in order), then applied to the edge's own copy of the session. `STORE_ENTER` first copies the cloud's
/// session here; `STORE_EXIT` drops the copy after its events are queued.
///
/// # Errors
/// INVALID_ARGUMENT for a wrong event (nothing applied); RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE
/// when it cannot be written — saying how many events of the batch were accepted before.
async fn track_at_edge(
    node: &Node,
    edge: &Edge,
    batch: TrackBatchCall<'_>,
    deadline: Instant,
) -> Result<TrackOutcome, ApiError> {
    use aisle_domain::event::EventKind;
    let outbox = node
        .outbox()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("this edge has no queue for the cloud".into()))?;
    let router = Router::new(node.cluster());
    let mut outcome = TrackOutcome::default();
    for call in batch.calls() {
        let has = |kind: EventKind| call.events.iter().any(|e| e.kind == kind);
        // The shopper's first in-store call (or STORE_ENTER) brings their cloud session here — unless they just
        // refused consent: nothing of theirs is copied then.
        if !call.events.iter().any(|e| e.consent == Some(false)) {
            let left = deadline.saturating_duration_since(Instant::now());
            edge.pull_session(node, &call.shopper_id, has(EventKind::StoreEnter), left / 2)
                .await;
        }
        let events = call.events_as_received();
        let n = events.len();
        let request = pb::TrackRequest {
            events,
            request_id: String::new(),
        };
        if let Err(e) = outbox
            .push(&call.shopper_id, call.received_at_us, request)
            .await
        {
            let why = format!(
                "events of shopper {:?} were not accepted ({e}); {} earlier events of this batch were",
                call.shopper_id, outcome.accepted
            );
            return Err(match e {
                QueueError::Full(_) => ApiError::ResourceExhausted(why),
                _ => ApiError::Unavailable(why),
            });
        }
        let applied = match router.at_owner(&call, deadline).await {
            Routed::Answered(o) => o,
            Routed::NoOwner(why) => {
                tracing::warn!(%why, "queued for the cloud but not applied here");
                TrackOutcome::default()
            }
            Routed::Failed(e) => {
                tracing::warn!(error = %e, "queued for the cloud but not applied here");
                TrackOutcome::default()
            }
        };
        outcome += TrackOutcome {
            accepted: n,
            unknown_items: applied.unknown_items,
            queued: n,
            duplicates: 0,
        };
        if has(EventKind::StoreExit) {
            edge.hand_back(node, &call.shopper_id).await;
        }
    }
    Ok(outcome)
}

/// Entries delivered at once.
const DELIVERIES_IN_FLIGHT: usize = 32;

/// Delivers the outbox's entries to their shoppers' owners, each shopper's one at a time and in order, for as long
/// as the node runs. An entry leaves the outbox when the owner answered (applied, or a duplicate of one applied
/// before), or when it can never apply: refused as invalid by the owner, or its shopper was forgotten after it
/// was received. Otherwise (no view, owner unreachable) it waits and is tried again.
pub async fn deliver(node: Arc<Node>, outbox: Arc<Outbox>) {
    loop {
        let heads = outbox.heads(DELIVERIES_IN_FLIGHT);
        if heads.is_empty() {
            outbox.wait_until_ready(Duration::from_secs(1)).await;
            continue;
        }
        let mut deliveries = tokio::task::JoinSet::new();
        for entry in heads {
            let node = node.clone();
            deliveries.spawn(async move { deliver_one(&node, &entry).await.then_some(entry.seq) });
        }
        let mut delivered = 0;
        while let Some(done) = deliveries.join_next().await {
            if let Ok(Some(seq)) = done {
                outbox.delivered(seq);
                delivered += 1;
            }
        }
        if delivered == 0 {
            // Nothing could be delivered (no view yet, owners unreachable): wait before trying again.
            outbox.wait_until_ready(Duration::from_millis(250)).await;
        }
        outbox.publish();
    }
}

/// What became of one shopper's queued events sent to their owner.
pub enum QueuedOutcome {
    /// The owner has them (applied now, or counted as duplicates of a delivery applied before).
    Applied(TrackOutcome),
    /// They can never be applied (invalid): the sender drops them.
    Refused(ApiError),
    /// The owner cannot take them now: the sender keeps them and tries again.
    Later(String),
}

/// Sends one shopper's queued events, numbered `delivery`, to their owner (an outbox entry of this node, or an
/// edge's upload).
pub async fn apply_queued(
    node: &Node,
    request: &pb::TrackRequest,
    received_at_us: i64,
    delivery: Delivery,
) -> QueuedOutcome {
    let batch =
        match TrackBatchCall::new(node, request, received_at_us).and_then(|b| b.queued(delivery)) {
            Ok(b) => b,
            Err(e) => return QueuedOutcome::Refused(e),
        };
    let Some(call) = batch.calls().next() else {
        return QueuedOutcome::Applied(TrackOutcome::default());
    };
    let deadline = Instant::now() + TRACK_BUDGET;
    match Router::new(node.cluster()).at_owner(&call, deadline).await {
        Routed::Answered(o) => QueuedOutcome::Applied(o),
        Routed::Failed(e) if e.is_the_callers() => QueuedOutcome::Refused(e),
        Routed::NoOwner(why) => QueuedOutcome::Later(why.to_string()),
        Routed::Failed(e) => QueuedOutcome::Later(e.to_string()),
    }
}

/// Sends one entry to its owner (to the cloud, on an edge); whether it leaves the outbox.
async fn deliver_one(node: &Node, entry: &QueuedTrack) -> bool {
    if let Some(edge) = node.edge() {
        return edge.upload(entry).await;
    }
    match apply_queued(node, &entry.request, entry.received_at_us, entry.delivery()).await {
        QueuedOutcome::Applied(o) => {
            metrics::counter!("aisle_outbox_delivered_events_total", "result" => "applied")
                .increment(o.accepted as u64);
            metrics::counter!("aisle_outbox_delivered_events_total", "result" => "duplicate")
                .increment(o.duplicates as u64);
            true
        }
        QueuedOutcome::Refused(e) => {
            metrics::counter!("aisle_outbox_entries_dropped_total", "reason" => "refused")
                .increment(1);
            tracing::error!(
                origin = %entry.origin,
                seq = entry.seq,
                error = %e,
                "an outbox entry cannot be applied and is dropped"
            );
            true
        }
        QueuedOutcome::Later(_) => false,
    }
}
