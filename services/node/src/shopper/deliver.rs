//! Delivering queued Track events: an outbox's entries (this node's, or a store edge's uploads) applied at their
//! shoppers' owners, each exactly once and in order per shopper.
//!
//! An entry leaves the outbox when the owner answered (applied, or a duplicate of one applied before), or when it
//! can never apply: refused as invalid by the owner, or its shopper was forgotten after it was received.
//! Otherwise (no view, owner unreachable) it waits and is tried again. On a store edge the entries go to the
//! cloud instead: the same [`drain`], another `send`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_session::Delivery;
use tokio::time::Instant;

use super::track::{Batch, TRACK_BUDGET};
use crate::cluster::{Routed, Router};
use crate::durable::outbox::{Outbox, QueuedTrack};
use crate::engine::decision::TrackOutcome;
use crate::error::ApiError;
use crate::node::Node;

/// Entries delivered at once.
const DELIVERIES_IN_FLIGHT: usize = 32;

/// What became of one shopper's queued events sent to their owner.
#[derive(Debug)]
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
    let batch = match Batch::new(node, request, received_at_us).and_then(|b| b.queued(delivery)) {
        Ok(b) => b,
        Err(e) => return QueuedOutcome::Refused(e),
    };
    let Some(call) = batch.calls().next() else {
        return QueuedOutcome::Applied(TrackOutcome::default());
    };
    let deadline = Instant::now() + TRACK_BUDGET;
    match Router::new(&node.cluster).at_owner(&call, deadline).await {
        Routed::Answered(o) => QueuedOutcome::Applied(o),
        Routed::Failed(e) if e.is_the_callers() => QueuedOutcome::Refused(e),
        Routed::NoOwner(why) => QueuedOutcome::Later(why.to_string()),
        Routed::Failed(e) => QueuedOutcome::Later(e.to_string()),
    }
}

/// Delivers the outbox's entries for as long as the node runs, through `send` (which says whether an entry leaves
/// the outbox): each shopper's oldest entry, one per shopper at a time, up to `DELIVERIES_IN_FLIGHT` (32) at once.
pub async fn drain<F, Fut>(outbox: Arc<Outbox>, send: F)
where
    F: Fn(Arc<QueuedTrack>) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    loop {
        let heads = outbox.heads(DELIVERIES_IN_FLIGHT);
        if heads.is_empty() {
            outbox.wait_until_ready(Duration::from_secs(1)).await;
            continue;
        }
        let mut deliveries = tokio::task::JoinSet::new();
        for entry in heads {
            let seq = entry.seq;
            let sent = send(entry);
            deliveries.spawn(async move { sent.await.then_some(seq) });
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

/// Sends one entry of this node's outbox to its owner; whether it leaves the outbox.
pub async fn to_owner(node: Arc<Node>, entry: Arc<QueuedTrack>) -> bool {
    match apply_queued(
        &node,
        &entry.request,
        entry.received_at_us,
        entry.delivery(),
    )
    .await
    {
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
