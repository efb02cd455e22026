//! Where assist events go: the local hub on a node alone; in a cluster, the store's orderer — the owner of the
//! store's [`Key`], reached through the same router as a shopper's owner — which sequences each event and
//! replicates it to every member in order, so a handheld reads its store's log on any node. A new orderer first
//! catches up from the previous one.

use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::AssistEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::hub::{Inserted, PushHub};
use crate::cluster::{
    AtOwner, Cluster, Key, LocalError, Member, Routed, Router, Sender, SharedView,
};
use crate::error::{ApiError, RemoteError};

/// Attempts to reach a store's orderer before an event is dropped (with a growing pause between them).
const ATTEMPTS: u64 = 10;
/// How long one attempt may take.
const CALL: Duration = Duration::from_secs(2);
/// Assist events waiting for their orderer on this node; beyond it new ones are dropped
/// (`aisle_assist_events_dropped_total{reason="queue_full"}`): an orderer that is away for long must not grow memory
/// without bound.
pub const MAX_QUEUED: usize = 10_000;

/// Where this node's assist events go.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<PushHub>,
    tx: Option<mpsc::Sender<AssistEvent>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("clustered", &self.tx.is_some())
            .finish()
    }
}

impl Publisher {
    /// A publisher for this node (in a cluster, with the task that sends events to their orderers).
    pub fn start(hub: Arc<PushHub>, cluster: Arc<Cluster>) -> Self {
        if !cluster.is_clustered() {
            return Self { hub, tx: None };
        }
        let (tx, mut rx) = mpsc::channel::<AssistEvent>(MAX_QUEUED);
        let task_hub = hub.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                publish_clustered(&task_hub, &cluster, event).await;
            }
        });
        Self { hub, tx: Some(tx) }
    }

    /// Publishes an event (sequenced by its store's orderer).
    pub fn publish(&self, event: AssistEvent) {
        match &self.tx {
            None => {
                self.hub.publish(event);
            }
            Some(tx) => {
                if let Err(mpsc::error::TrySendError::Full(event)) = tx.try_send(event) {
                    metrics::counter!("aisle_assist_events_dropped_total", "reason" => "queue_full")
                        .increment(1);
                    tracing::warn!(store = %event.store_id, "assist event dropped: {MAX_QUEUED} wait for orderers");
                }
            }
        }
    }
}

/// One assist event, at its store's orderer: sequenced there and replicated to every member.
struct Publish<'a> {
    hub: &'a PushHub,
    cluster: &'a Cluster,
    event: &'a AssistEvent,
}

impl AtOwner for Publish<'_> {
    type Output = u64;
    const RPC: &'static str = "publish_assist";

    fn key(&self) -> Key<'_> {
        Key::Store(&self.event.store_id)
    }

    async fn local(&self, view: &SharedView) -> Result<u64, LocalError> {
        Ok(order_and_replicate(self.hub, self.cluster, view, self.event.clone()).await)
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<u64, RemoteError> {
        let mut call = tonic::Request::new(pb::PublishAssistRequest {
            event: Some(self.event.clone()),
            epoch: view.epoch,
            view_fingerprint: view.fingerprint,
        });
        call.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut client = self.cluster.peers.client(&owner.addr)?;
        Ok(client.publish_assist(call).await?.into_inner().sequence)
    }
}

async fn publish_clustered(hub: &PushHub, cluster: &Cluster, event: AssistEvent) {
    let call = Publish {
        hub,
        cluster,
        event: &event,
    };
    let router = Router::new(cluster);
    for attempt in 0..ATTEMPTS {
        if let Routed::Answered(_) = router.at_owner(&call, Instant::now() + CALL).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    metrics::counter!("aisle_assist_events_dropped_total", "reason" => "no_orderer").increment(1);
    tracing::warn!(store = %event.store_id, "assist event dropped: no orderer for the store answered");
}

/// The orderer's side of an event another member sent: sequenced and replicated here when `sender`'s view is this
/// node's and names this node the store's orderer. Returns the sequence.
///
/// # Errors
/// FAILED_PRECONDITION when the views differ or this node is not the store's orderer (the sender re-resolves).
pub async fn order_forwarded(
    hub: &PushHub,
    cluster: &Cluster,
    sender: Sender,
    event: &AssistEvent,
) -> Result<u64, ApiError> {
    let call = Publish {
        hub,
        cluster,
        event,
    };
    Router::new(cluster)
        .receive(&call, sender, Instant::now() + CALL)
        .await
}

/// On the store's orderer: catch up from the previous orderer if the view changed, sequence the event, and
/// replicate it to every other member. Returns the sequence.
pub async fn order_and_replicate(
    hub: &PushHub,
    cluster: &Cluster,
    view: &SharedView,
    event: AssistEvent,
) -> u64 {
    let store = event.store_id.clone();
    if hub.synced_epoch(&store) != Some(view.fingerprint) {
        if let Some(prev) = cluster
            .previous_view()
            .and_then(|p| p.store_owner(&store).cloned())
            && prev.node_id != cluster.node_id
            && view.member(&prev.node_id).is_some()
        {
            catch_up(hub, cluster, &prev.addr, &store).await;
        }
        hub.mark_synced(&store, view.fingerprint);
    }
    let sequenced = hub.publish(event);
    for m in view.members.iter().filter(|m| m.node_id != cluster.node_id) {
        cluster.peers.replicate(&m.addr, (*sequenced).clone());
    }
    sequenced.sequence
}

/// A replica's side: takes events sequenced by their store's orderer `from_node` under this node's view (events
/// of a store `from_node` does not order are refused and counted); when one leaves a gap, fetches what is missing
/// from the orderer first.
///
/// # Errors
/// FAILED_PRECONDITION when this node has no view or `from_node` is not in it.
pub async fn accept_replicated(
    hub: &PushHub,
    cluster: &Cluster,
    from_node: &str,
    events: Vec<AssistEvent>,
) -> Result<(), ApiError> {
    let view = cluster
        .current()
        .ok_or_else(|| ApiError::FailedPrecondition("not a cluster member".into()))?;
    let from = view
        .member(from_node)
        .map(|m| m.addr.clone())
        .ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "sender {from_node:?} is not a member of this node's view"
            ))
        })?;
    for event in events {
        // Only a store's orderer under this view sequences its events: nobody else can claim a number.
        if view
            .store_owner(&event.store_id)
            .is_none_or(|o| o.node_id != from_node)
        {
            metrics::counter!("aisle_assist_replication_refused_total").increment(1);
            continue;
        }
        if let Inserted::Gap { .. } = hub.insert_sequenced(event.clone()) {
            catch_up(hub, cluster, &from, &event.store_id).await;
            // What the orderer still holds is now here; what it no longer holds stays a gap.
            hub.insert_past_gap(event);
        }
    }
    Ok(())
}

/// Fetches a store's events after the last one held here from the peer at `addr`.
pub async fn catch_up(hub: &PushHub, cluster: &Cluster, addr: &str, store: &str) {
    let mut call = tonic::Request::new(pb::FetchAssistRequest {
        store_id: store.to_string(),
        after: hub.last_sequence(store),
    });
    call.set_timeout(CALL);
    let client = cluster.peers.client(addr);
    match async { client?.fetch_assist(call).await }.await {
        Ok(r) => {
            for e in r.into_inner().events {
                hub.insert_sequenced(e);
            }
        }
        Err(e) => {
            tracing::warn!(store, peer = addr, error = %e, "could not catch up a store's assist log")
        }
    }
}
