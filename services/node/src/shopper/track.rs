//! Track: a batch of shopper events, each shopper's applied at their owner, in order.
//!
//! The whole batch is validated first (all or nothing). Then each shopper's events go to their owner through the
//! router. With an outbox, they are first given a delivery key (the outbox's origin and a sequence number) so
//! that the owner applies them once; those whose owner cannot take them now (or did not answer), and those of a
//! shopper with a call in flight or entries waiting, are queued on this node's disk instead and acknowledged as
//! `queued`; the delivery task ([`super::deliver`]) sends them on. Without an outbox, a Track whose owner cannot
//! take it fails with UNAVAILABLE, saying how many events of the batch were accepted.
//!
//! At the owner, applying a shopper's events updates their session (dropping the answers cached for them), writes
//! the consented ones to the event log, marks the session for replication and publishes the assist events it
//! raised.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::{EventRecord, ShopperEvent};
use aisle_proto::v1 as pb;
use aisle_session::Delivery;
use tokio::time::Instant;
use tonic::Request;

use super::validate;
use crate::cluster::{AtOwner, Key, LocalError, Member, Routed, Router, Sender, SharedView};
use crate::durable::outbox::QueueError;
use crate::engine::decision::TrackOutcome;
use crate::error::{ApiError, RemoteError};
use crate::node::Node;
use crate::push::Origin;

/// How long a Track may wait for the hand-off barrier and its owner.
pub const TRACK_BUDGET: Duration = Duration::from_secs(4);

/// One shopper's events of a Track batch, at the shopper's owner.
pub struct TrackCall<'a> {
    node: &'a Node,
    /// The shopper.
    pub shopper_id: String,
    /// Their events, validated, in batch order.
    pub events: Vec<ShopperEvent>,
    records: Vec<EventRecord>,
    catalog: Arc<Catalog>,
    /// The batch as received: the shopper's events are forwarded and queued as they came.
    request: &'a pb::TrackRequest,
    /// When the batch was received (µs since the epoch).
    pub received_at_us: i64,
    /// Set when a queue delivers the events: the owner applies them once.
    delivery: Option<Delivery>,
}

impl TrackCall<'_> {
    /// The shopper's events of the batch, as received: what is forwarded and queued.
    pub fn as_received(&self) -> pb::TrackRequest {
        pb::TrackRequest {
            events: self
                .request
                .events
                .iter()
                .filter(|e| e.shopper_id == self.shopper_id)
                .cloned()
                .collect(),
            request_id: String::new(),
        }
    }
}

impl AtOwner for TrackCall<'_> {
    type Output = TrackOutcome;
    const RPC: &'static str = "track";

    fn key(&self) -> Key<'_> {
        Key::Shopper(&self.shopper_id)
    }

    async fn local(&self, _view: &SharedView) -> Result<TrackOutcome, LocalError> {
        let node = self.node;
        if self.delivery.is_some() && node.cluster.writes_at_risk() {
            // Applied here, the events could be on this node alone when it fences (it may be cut off from its
            // successor too). The sender has an outbox (the events carry its key): it queues them until this node
            // is safe again or another owns the shopper.
            return Err(LocalError::Failed(ApiError::Unavailable(
                "this owner's keep-alives are late and no peer holds its view: events wait in an outbox".into(),
            )));
        }
        if self.delivery.is_some()
            && node
                .shoppers
                .forgotten_since(&self.shopper_id, self.received_at_us)
        {
            // Queued before the shopper was forgotten: it must not bring them back.
            metrics::counter!("aisle_outbox_entries_dropped_total", "reason" => "erased")
                .increment(1);
            return Ok(TrackOutcome::default());
        }
        let applied = node
            .shoppers
            .apply(
                &self.shopper_id,
                self.events.clone(),
                self.catalog.clone(),
                self.delivery.clone(),
            )
            .await?;
        node.logs
            .events(&self.shopper_id, self.records.clone(), &applied.loggable);
        node.cluster.replication.mark(&self.shopper_id);
        if !applied.signals.is_empty() {
            let shopper_ref = node.shoppers.pseudonyms.of(&self.shopper_id);
            let origin = Origin {
                shopper_ref: &shopper_ref,
                node_id: node.id(),
                received_at_us: applied.received_at_us,
            };
            let (world, rules) = (node.bundles.world(), node.bundles.rules());
            node.push
                .publish_signals(&applied.signals, origin, &world, &rules);
        }
        Ok(applied.outcome)
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<TrackOutcome, RemoteError> {
        let mut call = Request::new(pb::ForwardTrackRequest {
            request: Some(self.as_received()),
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
        let mut client = self.node.cluster.peers.client(&owner.addr)?;
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
pub struct Batch<'a> {
    node: &'a Node,
    request: &'a pb::TrackRequest,
    batch: validate::TrackBatch,
    catalog: Arc<Catalog>,
    received_at_us: i64,
    delivery: Option<Delivery>,
}

/// What the answer to a Track says when an owner could not take a shopper's events.
fn not_accepted(shopper_id: &str, why: &str, outcome: &TrackOutcome) -> String {
    format!(
        "events of shopper {shopper_id:?} were not accepted ({why}); {} earlier events of this batch were",
        outcome.accepted
    )
}

impl<'a> Batch<'a> {
    /// Validates a whole batch (all or nothing) against the current catalog.
    ///
    /// # Errors
    /// The first invalid field, e.g. `events[3].item_id: required`.
    pub fn new(
        node: &'a Node,
        request: &'a pb::TrackRequest,
        received_at_us: i64,
    ) -> Result<Self, ApiError> {
        let catalog = node.bundles.world().catalog.clone();
        let batch = validate::track(
            request,
            &catalog,
            aisle_domain::now_ms(),
            received_at_us,
            Duration::from_secs(node.config.max_future_skew_secs),
            &node.decider.settings().consent,
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

    /// The batch is a queue's entry (one shopper's events, an outbox's or an edge's): the owner applies it once.
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

    /// The shoppers of the batch, in order of first appearance.
    pub fn shoppers(&self) -> impl Iterator<Item = &str> {
        self.batch.groups.iter().map(|(s, _)| s.as_str())
    }

    /// One call per shopper, in batch order.
    pub fn calls(self) -> impl Iterator<Item = TrackCall<'a>> {
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

    /// Applies each shopper's events at their owner, in batch order; the owner has until `deadline`, what is left
    /// after it is for queueing.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (or the owner's refusal) for a wrong event; RESOURCE_EXHAUSTED when the outbox is full;
    /// UNAVAILABLE when an owner cannot take them and there is no outbox, or it could not be written. The message
    /// says how many events of the batch were accepted before.
    pub async fn run(self, deadline: Instant) -> Result<TrackOutcome, ApiError> {
        let node = self.node;
        let router = Router::new(&node.cluster);
        let mut outcome = TrackOutcome::default();
        for mut call in self.calls() {
            let Some(outbox) = &node.outbox else {
                let why = match router.at_owner(&call, deadline).await {
                    Routed::Answered(o) => {
                        outcome += o;
                        continue;
                    }
                    Routed::Failed(e) if e.is_the_callers() => return Err(e),
                    Routed::NoOwner(why) => why.to_string(),
                    Routed::Failed(e) => e.to_string(),
                };
                return Err(ApiError::Unavailable(not_accepted(
                    &call.shopper_id,
                    &why,
                    &outcome,
                )));
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
            let request = call.as_received();
            let n = request.events.len();
            let committed = outbox
                .commit(&call.shopper_id, &ticket, call.received_at_us, request)
                .await;
            match committed {
                Ok(()) => {
                    tracing::debug!(shopper_events = n, why = %why, "queued in the outbox");
                    outcome += TrackOutcome {
                        accepted: n,
                        queued: n,
                        ..TrackOutcome::default()
                    };
                }
                Err(e @ QueueError::Full(_)) => {
                    let why = format!("{e}; their owner: {why}");
                    return Err(ApiError::ResourceExhausted(not_accepted(
                        &call.shopper_id,
                        &why,
                        &outcome,
                    )));
                }
                Err(e) => {
                    let why = format!("{why}; {e}");
                    return Err(ApiError::Unavailable(not_accepted(
                        &call.shopper_id,
                        &why,
                        &outcome,
                    )));
                }
            }
        }
        Ok(outcome)
    }

    /// The owner's side of a forwarded batch: applies the events of shoppers this node owns under `sender`'s view,
    /// which must be this node's. Every shopper is checked before any event is applied.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when the views differ, ownership moved or the hand-off did not finish (the sender
    /// re-resolves); UNAVAILABLE when a session actor failed.
    pub async fn receive(self, sender: Sender) -> Result<TrackOutcome, ApiError> {
        let router = Router::new(&self.node.cluster);
        for shopper in self.shoppers() {
            router.owned_at(Key::Shopper(shopper), sender)?;
        }
        let deadline = Instant::now() + TRACK_BUDGET;
        let mut outcome = TrackOutcome::default();
        for call in self.calls() {
            outcome += router.receive(&call, sender, deadline).await?;
        }
        Ok(outcome)
    }
}
