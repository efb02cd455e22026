//! Decide: a decision made at the shopper's owner, wherever the request arrived.
//!
//! Any node accepts any Decide. The router runs it at the owner (here, or forwarded with what is left of the
//! budget less the safety margin); when no owner can serve it (unreachable, no owner, hand-off still running at the
//! deadline) it is answered here from the fallback ladder — an answer, not an error, and no session is read or
//! created for a shopper this node does not own. Every decision made here is recorded in the decision trail.

use std::sync::Arc;

use aisle_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Request;

use super::validate;
use crate::bundles::World;
use crate::cluster::{AtOwner, Key, LocalError, Member, Router, SharedView};
use crate::config::Role;
use crate::engine::decision::{DecideInput, Decision, Fallback, Serve, Tier};
use crate::error::{ApiError, RemoteError};
use crate::node::Node;

fn tier(t: Tier) -> pb::FallbackTier {
    match t {
        Tier::Fresh => pb::FallbackTier::Fresh,
        Tier::Cached => pb::FallbackTier::Cached,
        Tier::Rules => pb::FallbackTier::Rules,
        Tier::Generic => pb::FallbackTier::Generic,
    }
}

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn items(d: &mut Decision) -> Vec<pb::RankedItem> {
    let catalog = &d.catalog;
    std::mem::take(&mut d.items)
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
                    expires_at: Some(timestamp(o.expires_at_ms)),
                }),
                reasons: i.reasons,
                name: it.name.to_string(),
                category: catalog.category_of(i.item).name.clone(),
                price_cents: it.price_cents,
            }
        })
        .collect()
}

/// The response of a decision made at `site` by `served_by`.
pub fn response(
    mut d: Decision,
    served_by: &str,
    request_id: String,
    site: pb::DecisionSite,
) -> pb::DecideResponse {
    let fallback_reason = d.fallback_text();
    let items = items(&mut d);
    let in_holdout = d.assignment.in_holdout;
    pb::DecideResponse {
        items,
        decision_id: d.decision_id,
        fallback_tier: tier(d.tier) as i32,
        model_version: d.model_version,
        rules_version: d.rules_version,
        experiments: d
            .assignment
            .variants
            .iter()
            .map(|(k, v)| {
                let variant = v.to_string();
                (
                    k.to_string(),
                    pb::ExperimentAssignment {
                        variant,
                        in_holdout,
                    },
                )
            })
            .collect(),
        served_by: served_by.to_string(),
        server_latency_us: d.latency.as_micros() as u64,
        request_id,
        experiments_version: d.experiments_version,
        catalog_version: d.catalog.meta.version.clone(),
        in_holdout,
        fallback_reason,
        epoch: d.epoch,
        decided_at: site as i32,
    }
}

/// Where this node decides: at a store's edge, or in the cloud.
pub fn site(node: &Node) -> pb::DecisionSite {
    match node.config.role {
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
    /// Validates a Decide request from `client` against the current catalog, to answer by `deadline`.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn new(
        node: &'a Node,
        request: &'a pb::DecideRequest,
        client: &str,
        deadline: Instant,
    ) -> Result<Self, ApiError> {
        let world = node.bundles.world();
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

    /// The request as received.
    pub fn request(&self) -> &pb::DecideRequest {
        self.request
    }

    /// When it must be answered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Decides here, as `serve` allows, and records the decision.
    async fn decide(&self, serve: Serve) -> pb::DecideResponse {
        let node = self.node;
        let decision = node
            .decider
            .decide(self.world.clone(), &self.input, self.deadline, serve)
            .await;
        node.logs.decision(&self.input, &decision);
        response(
            decision,
            node.id(),
            self.input.request_id.clone(),
            site(node),
        )
    }

    /// Answers from the fallback ladder here: no owner could serve the request.
    pub async fn fallback(&self, why: Fallback) -> pb::DecideResponse {
        let epoch = self.node.cluster.epoch();
        self.decide(Serve::Fallback { epoch, why }).await
    }

    /// Decides wherever the shopper's owner is; the fallback ladder here when no owner can serve.
    ///
    /// # Errors
    /// The owner refused the request itself (an invalid field it saw).
    pub async fn run(&self) -> Result<pb::DecideResponse, ApiError> {
        Router::new(&self.node.cluster)
            .run(self, self.deadline)
            .await
    }
}

impl AtOwner for DecideCall<'_> {
    type Output = pb::DecideResponse;
    const RPC: &'static str = "decide";

    fn key(&self) -> Key<'_> {
        Key::Shopper(&self.input.shopper_id)
    }

    /// The barrier may hold a decision until the safety margin, which is kept for the fallback ladder.
    fn barrier_deadline(&self, deadline: Instant) -> Instant {
        let left = deadline.saturating_duration_since(Instant::now());
        let margin = self.node.decider.settings().margin(left);
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
    ) -> Result<pb::DecideResponse, RemoteError> {
        // Keep the safety margin here: if the owner does not answer in time, this node still answers.
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.saturating_sub(self.node.decider.settings().margin(left));
        if budget.is_zero() {
            return Err(RemoteError::NoBudget);
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
        let mut client = self.node.cluster.peers.client(&owner.addr)?;
        Ok(client.forward_decide(call).await?.into_inner())
    }

    /// No owner could serve it: the fallback ladder here.
    async fn unserved(&self, why: Fallback) -> Result<pb::DecideResponse, ApiError> {
        Ok(self.fallback(why).await)
    }

    /// At the owner, the barrier stayed closed until the safety margin: the fallback ladder here.
    async fn pending_here(&self, why: Fallback) -> Result<pb::DecideResponse, ApiError> {
        Ok(self.fallback(why).await)
    }
}
