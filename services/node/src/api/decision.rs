//! `aisle.v1.DecisionService`: Decide and Track, routed to the shopper's owner.
//!
//! Any node accepts any request. The [`Router`] sends it to the shopper's owner under the current view: this
//! node (then the engine decides), or a peer (forwarded over `PeerService` with the remaining budget and the
//! epoch). A peer that refuses the epoch or ownership makes the router re-resolve and retry once; an owner that
//! cannot be reached, or no owner at all, gets the request answered here by the fallback ladder — an answer, not
//! an error, and no session is created or read for a shopper this node does not own.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventRecord, ShopperEvent};
use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_server::DecisionService;
use aisle_session::SessionError;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::validate;
use crate::cluster::{Member, Route, SharedView};
use crate::engine::{DecideInput, Decision, Engine, Serve, Tier, TrackOutcome};
use crate::error::ApiError;
use crate::world::World;

/// How long a request may wait for a newer view before its single retry.
const VIEW_WAIT: Duration = Duration::from_millis(100);
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
        fallback_reason: d.fallback_reason,
        epoch: d.epoch,
    }
}

/// Why a forward did not produce an answer.
enum Forwarded<T> {
    Answer(T),
    /// The peer's view differs: re-resolve and retry.
    Stale(String),
    /// The peer could not be reached or did not answer in time.
    Unreachable(String),
}

fn classify<T>(result: Result<Response<T>, Status>) -> Result<Forwarded<T>, Status> {
    match result {
        Ok(r) => Ok(Forwarded::Answer(r.into_inner())),
        Err(s) if s.code() == Code::FailedPrecondition => {
            Ok(Forwarded::Stale(s.message().to_string()))
        }
        Err(s) if matches!(s.code(), Code::InvalidArgument | Code::OutOfRange) => Err(s),
        Err(s) => Ok(Forwarded::Unreachable(format!(
            "{:?}: {}",
            s.code(),
            s.message()
        ))),
    }
}

/// Routes requests to shoppers' owners.
#[derive(Debug, Clone)]
pub struct Router {
    engine: Arc<Engine>,
}

impl Router {
    /// A router over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    async fn wait_for_newer_view(&self, than: u64, deadline: Instant) {
        let mut views = self.engine.cluster.views();
        let until = deadline.min(Instant::now() + VIEW_WAIT);
        let _ = tokio::time::timeout_at(
            until,
            views.wait_for(|v| v.as_ref().is_some_and(|v| v.fingerprint != than)),
        )
        .await;
    }

    /// Decides, wherever the shopper's owner is.
    ///
    /// # Errors
    /// Invalid requests only; every other outcome is an answer.
    pub async fn decide(
        &self,
        req: pb::DecideRequest,
        deadline: Instant,
    ) -> Result<pb::DecideResponse, Status> {
        let world = self.engine.worlds.current();
        let input = validate::decide(&req, &world.catalog)?;
        let mut last_reason = String::new();
        for attempt in 0..2 {
            match self.engine.cluster.route(&input.shopper_id) {
                Route::Local(view) => {
                    return Ok(self.decide_as_owner(world, input, deadline, &view).await);
                }
                Route::Remote(view, owner) => {
                    match self.forward_decide(&req, &view, &owner, deadline).await? {
                        Forwarded::Answer(r) => {
                            metrics::counter!("aisle_forwarded_total", "rpc" => "decide", "result" => "ok").increment(1);
                            return Ok(r);
                        }
                        Forwarded::Stale(reason) => {
                            metrics::counter!("aisle_forwarded_total", "rpc" => "decide", "result" => "stale").increment(1);
                            last_reason = format!("owner: {reason}");
                            if attempt == 0 {
                                self.wait_for_newer_view(view.fingerprint, deadline).await;
                            }
                        }
                        Forwarded::Unreachable(reason) => {
                            metrics::counter!("aisle_forwarded_total", "rpc" => "decide", "result" => "unreachable")
                            .increment(1);
                            return Ok(self
                                .fallback(
                                    world,
                                    input,
                                    deadline,
                                    format!("owner: {} unreachable ({reason})", owner.node_id),
                                )
                                .await);
                        }
                    }
                }
                Route::Unowned(reason) => {
                    return Ok(self
                        .fallback(world, input, deadline, format!("membership: {reason}"))
                        .await);
                }
            }
        }
        Ok(self.fallback(world, input, deadline, last_reason).await)
    }

    async fn fallback(
        &self,
        world: Arc<World>,
        input: DecideInput,
        deadline: Instant,
        reason: String,
    ) -> pb::DecideResponse {
        let request_id = input.request_id.clone();
        let serve = Serve::Fallback {
            epoch: self.engine.cluster.epoch(),
            reason,
        };
        response(
            self.engine.decide(world, input, deadline, serve).await,
            &self.engine.node_id,
            request_id,
        )
    }

    async fn forward_decide(
        &self,
        req: &pb::DecideRequest,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<Forwarded<pb::DecideResponse>, Status> {
        // Keep the safety margin here: if the owner does not answer in time, this node still answers.
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.saturating_sub(self.engine.config.margin(left));
        if budget.is_zero() {
            return Ok(Forwarded::Unreachable("no budget left to forward".into()));
        }
        let mut call = tonic::Request::new(pb::ForwardDecideRequest {
            request: Some(req.clone()),
            epoch: view.epoch,
            from_node: self.engine.node_id.clone(),
            budget_us: budget.as_micros() as u64,
            view_fingerprint: view.fingerprint,
        });
        call.set_timeout(budget);
        let mut client = self.engine.cluster.peers.client(&owner.addr);
        classify(client.forward_decide(call).await)
    }

    /// Decides for a shopper this node owns under `view`: once the hand-off barrier lets it, as owner; if the
    /// barrier does not open before the deadline, from the fallback ladder.
    pub async fn decide_as_owner(
        &self,
        world: Arc<World>,
        input: DecideInput,
        deadline: Instant,
        view: &SharedView,
    ) -> pb::DecideResponse {
        let margin = self
            .engine
            .config
            .margin(deadline.saturating_duration_since(Instant::now()));
        let wait_until = deadline.checked_sub(margin).unwrap_or(deadline);
        let request_id = input.request_id.clone();
        let serve = if self
            .engine
            .cluster
            .ready_for(&input.shopper_id, view, wait_until)
            .await
        {
            Serve::Owner { epoch: view.epoch }
        } else {
            Serve::Fallback {
                epoch: view.epoch,
                reason: "handoff: session not yet handed over".into(),
            }
        };
        response(
            self.engine.decide(world, input, deadline, serve).await,
            &self.engine.node_id,
            request_id,
        )
    }

    /// Applies a validated batch, each shopper's events at their owner.
    ///
    /// # Errors
    /// UNAVAILABLE when some shopper's owner cannot be reached or this node is not a member; the message says
    /// how many events were applied.
    pub async fn track(
        &self,
        req: &pb::TrackRequest,
        batch: validate::TrackBatch,
        catalog: Arc<Catalog>,
        received_at_us: i64,
    ) -> Result<TrackOutcome, Status> {
        let deadline = Instant::now() + TRACK_BUDGET;
        let mut outcome = TrackOutcome::default();
        for ((shopper_id, events), records) in batch.groups.into_iter().zip(batch.records) {
            let original: Vec<pb::TrackEvent> = req
                .events
                .iter()
                .filter(|e| e.shopper_id == shopper_id)
                .cloned()
                .collect();
            let (n, unknown) = self
                                .track_one(&shopper_id, events, records, original, catalog.clone(), received_at_us, deadline)
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "events of shopper {shopper_id:?} were not applied ({e}); {} earlier events of this batch were",
                        outcome.accepted
                    ))
                })?;
            outcome.accepted += n;
            outcome.unknown_items += unknown;
        }
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    async fn track_one(
        &self,
        shopper_id: &str,
        events: Vec<ShopperEvent>,
        records: Vec<EventRecord>,
        original: Vec<pb::TrackEvent>,
        catalog: Arc<Catalog>,
        received_at_us: i64,
        deadline: Instant,
    ) -> Result<(usize, usize), String> {
        let mut last = String::new();
        for attempt in 0..2 {
            match self.engine.cluster.route(shopper_id) {
                Route::Local(view) => {
                    // Wait for the session to arrive if it is moving here (bounded by the barrier's own timeout).
                    if !self
                        .engine
                        .cluster
                        .ready_for(shopper_id, &view, deadline)
                        .await
                    {
                        last = "view changed or hand-off not finished".into();
                        continue;
                    }
                    match self
                        .engine
                        .apply_events(shopper_id, events.clone(), records.clone(), catalog.clone())
                        .await
                    {
                        Ok(r) => return Ok(r),
                        Err(SessionError::NotOwner) => last = "ownership moved".into(),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Route::Remote(view, owner) => {
                    let mut call = tonic::Request::new(pb::ForwardTrackRequest {
                        request: Some(pb::TrackRequest {
                            events: original.clone(),
                            request_id: String::new(),
                        }),
                        epoch: view.epoch,
                        from_node: self.engine.node_id.clone(),
                        received_at_us,
                        view_fingerprint: view.fingerprint,
                    });
                    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    let mut client = self.engine.cluster.peers.client(&owner.addr);
                    match classify(client.forward_track(call).await)
                        .map_err(|s| s.message().to_string())?
                    {
                        Forwarded::Answer(r) => {
                            metrics::counter!("aisle_forwarded_total", "rpc" => "track", "result" => "ok").increment(1);
                            return Ok((r.accepted as usize, r.unknown_items as usize));
                        }
                        Forwarded::Stale(reason) => last = reason,
                        Forwarded::Unreachable(reason) => {
                            metrics::counter!("aisle_forwarded_total", "rpc" => "track", "result" => "unreachable")
                                .increment(1);
                            return Err(format!("owner {} unreachable: {reason}", owner.node_id));
                        }
                    }
                    if attempt == 0 {
                        self.wait_for_newer_view(view.fingerprint, deadline).await;
                    }
                }
                Route::Unowned(reason) => return Err(reason.to_string()),
            }
        }
        Err(last)
    }

    /// Applies events of shoppers this node owns under `view` (a forwarded batch).
    ///
    /// # Errors
    /// FAILED_PRECONDITION when ownership moved meanwhile (the sender re-resolves); UNAVAILABLE otherwise.
    pub async fn track_as_owner(
        &self,
        batch: validate::TrackBatch,
        catalog: Arc<Catalog>,
        view: &SharedView,
    ) -> Result<TrackOutcome, Status> {
        let deadline = Instant::now() + TRACK_BUDGET;
        let mut outcome = TrackOutcome::default();
        for ((shopper_id, events), records) in batch.groups.into_iter().zip(batch.records) {
            if !self
                .engine
                .cluster
                .ready_for(&shopper_id, view, deadline)
                .await
            {
                return Err(Status::failed_precondition(
                    "view changed while waiting for the hand-off",
                ));
            }
            match self
                .engine
                .apply_events(&shopper_id, events, records, catalog.clone())
                .await
            {
                Ok((n, unknown)) => {
                    outcome.accepted += n;
                    outcome.unknown_items += unknown;
                }
                Err(SessionError::NotOwner) => {
                    return Err(Status::failed_precondition("ownership moved"));
                }
                Err(e) => return Err(ApiError::Unavailable(e.to_string()).into()),
            }
        }
        Ok(outcome)
    }

    /// Describes a shopper at their owner.
    ///
    /// # Errors
    /// UNAVAILABLE when the owner cannot be reached.
    pub async fn describe(&self, shopper_id: &str) -> Result<pb::DescribeShopperResponse, Status> {
        for _ in 0..2 {
            match self.engine.cluster.route(shopper_id) {
                Route::Local(_) => match self.engine.describe(shopper_id).await {
                    Err(ApiError::FailedPrecondition(_)) => continue,
                    other => return Ok(other?),
                },
                Route::Remote(view, owner) => {
                    let call = self.shopper_forward(shopper_id, &view);
                    let mut client = self.engine.cluster.peers.client(&owner.addr);
                    match classify(client.forward_describe(call).await)? {
                        Forwarded::Answer(r) => return Ok(r),
                        Forwarded::Stale(_) => {
                            self.wait_for_newer_view(view.fingerprint, Instant::now() + VIEW_WAIT)
                                .await
                        }
                        Forwarded::Unreachable(reason) => {
                            return Err(Status::unavailable(format!(
                                "the owner of the shopper ({}) is unreachable: {reason}",
                                owner.node_id
                            )));
                        }
                    }
                }
                Route::Unowned(reason) => return Err(Status::unavailable(reason)),
            }
        }
        Err(Status::unavailable("ownership is moving; retry"))
    }

    /// The request that forwards a per-shopper admin call (describe, forget) to the owner under `view`.
    fn shopper_forward(
        &self,
        shopper_id: &str,
        view: &SharedView,
    ) -> tonic::Request<pb::ForwardForgetRequest> {
        let mut call = tonic::Request::new(pb::ForwardForgetRequest {
            shopper_id: shopper_id.to_string(),
            epoch: view.epoch,
            from_node: self.engine.node_id.clone(),
            view_fingerprint: view.fingerprint,
        });
        call.set_timeout(Duration::from_secs(5));
        call
    }

    /// Erases a shopper at their owner.
    ///
    /// # Errors
    /// UNAVAILABLE when the owner cannot be reached.
    pub async fn forget(&self, shopper_id: &str) -> Result<pb::ForgetShopperResponse, Status> {
        for _ in 0..2 {
            match self.engine.cluster.route(shopper_id) {
                Route::Local(_) => break,
                Route::Remote(view, owner) => {
                    let call = self.shopper_forward(shopper_id, &view);
                    let mut client = self.engine.cluster.peers.client(&owner.addr);
                    match classify(client.forward_forget(call).await)? {
                        Forwarded::Answer(r) => {
                            // Whatever this node may still cache from when it owned the shopper goes too.
                            self.engine.cache.invalidate(shopper_id);
                            return Ok(pb::ForgetShopperResponse {
                                session_erased: r.session_erased,
                                cached_decisions_erased: r.cached_decisions_erased,
                                served_by: r.served_by,
                            });
                        }
                        Forwarded::Stale(_) => {
                            self.wait_for_newer_view(view.fingerprint, Instant::now() + VIEW_WAIT)
                                .await
                        }
                        Forwarded::Unreachable(reason) => {
                            return Err(Status::unavailable(format!(
                                "the owner of the shopper ({}) is unreachable: {reason}; retry",
                                owner.node_id
                            )));
                        }
                    }
                }
                Route::Unowned(reason) => return Err(Status::unavailable(reason)),
            }
        }
        let (session_erased, cached) = self.engine.forget(shopper_id).await?;
        Ok(pb::ForgetShopperResponse {
            session_erased,
            cached_decisions_erased: cached as u32,
            served_by: self.engine.node_id.clone(),
        })
    }
}

/// The Decision service.
#[derive(Debug, Clone)]
pub struct DecisionApi {
    engine: Arc<Engine>,
    router: Router,
}

impl DecisionApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            router: Router::new(engine.clone()),
            engine,
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
        let config = &self.engine.config;
        let deadline = super::deadline(
            received,
            request.metadata(),
            Duration::from_millis(config.decide_budget_ms),
            Duration::from_millis(config.max_budget_ms),
        );
        Ok(Response::new(
            self.router.decide(request.into_inner(), deadline).await?,
        ))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let req = request.into_inner();
        let world = self.engine.worlds.current();
        let received_at_us = super::now_us();
        let batch = validate::track(
            &req,
            &world.catalog,
            aisle_domain::now_ms(),
            received_at_us,
            Duration::from_secs(self.engine.config.max_future_skew_secs),
        )
        .inspect_err(|_| metrics::counter!("aisle_track_rejected_total").increment(1))?;
        let outcome = self
            .router
            .track(&req, batch, world.catalog.clone(), received_at_us)
            .await?;
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.engine.node_id.clone(),
        }))
    }
}
