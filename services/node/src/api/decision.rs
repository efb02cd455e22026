//! `aisle.v1.DecisionService`: Decide and Track.

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_server::DecisionService;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::validate;
use crate::engine::{Decision, Engine, Tier};

/// The Decision service.
#[derive(Debug, Clone)]
pub struct DecisionApi {
    engine: Arc<Engine>,
}

impl DecisionApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn tier(t: Tier) -> pb::FallbackTier {
    match t {
        Tier::Fresh => pb::FallbackTier::Fresh,
        Tier::Cached => pb::FallbackTier::Cached,
        Tier::Rules => pb::FallbackTier::Rules,
        Tier::Generic => pb::FallbackTier::Generic,
    }
}

/// The response of a decision.
pub fn response(
    d: Decision,
    served_by: &str,
    request_id: String,
    epoch: u64,
) -> pb::DecideResponse {
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
        epoch,
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
        let req = request.into_inner();
        let world = self.engine.worlds.current();
        let input = validate::decide(&req, &world.catalog)?;
        let request_id = input.request_id.clone();
        let decision = self.engine.decide(world, input, deadline).await;
        Ok(Response::new(response(
            decision,
            &self.engine.node_id,
            request_id,
            0,
        )))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let req = request.into_inner();
        let world = self.engine.worlds.current();
        let batch = validate::track(
            &req,
            &world.catalog,
            aisle_domain::now_ms(),
            super::now_us(),
            Duration::from_secs(self.engine.config.max_future_skew_secs),
        )
        .inspect_err(|_| metrics::counter!("aisle_track_rejected_total").increment(1))?;
        let outcome = self
            .engine
            .track(batch.groups, world.catalog.clone())
            .await?;
        Ok(Response::new(pb::TrackResponse {
            accepted: outcome.accepted as u32,
            unknown_items: outcome.unknown_items as u32,
            served_by: self.engine.node_id.clone(),
        }))
    }
}
