//! The push hub: per store, a gapless sequence of assist events, the last `retention` of them kept for handhelds
//! that reconnect, and a broadcast to the live subscribers.
//!
//! Subscribing takes the store's lock once: the retained events after `resume_after` are copied and the live
//! receiver is registered under the same lock, so an event is either in the replay or in the live stream — never
//! both, never neither. A subscriber that falls so far behind that events it has not seen left the retention
//! window is ended with DATA_LOSS (it resumes from its last sequence and sees the gap in the numbers).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::AssistEvent;
use tokio::sync::{broadcast, mpsc};

use crate::cluster::{Cluster, SharedView};

/// Live-stream buffer per store before a slow subscriber has to catch up from the retained log.
const LIVE_BUFFER: usize = 1_024;

struct StoreInner {
    next_sequence: u64,
    retained: VecDeque<Arc<AssistEvent>>,
    live: broadcast::Sender<Arc<AssistEvent>>,
}

/// One store's log.
pub struct StoreLog {
    inner: Mutex<StoreInner>,
    retention: usize,
}

impl StoreLog {
    fn new(retention: usize) -> Self {
        Self {
            inner: Mutex::new(StoreInner {
                next_sequence: 1,
                retained: VecDeque::new(),
                live: broadcast::channel(LIVE_BUFFER).0,
            }),
            retention,
        }
    }

    /// Retained events with a sequence above `after`, oldest first, and whether `after + 1` is no longer retained
    /// (a gap).
    pub fn since(&self, after: u64) -> (Vec<Arc<AssistEvent>>, bool) {
        let inner = self.inner.lock().expect("store log lock");
        Self::since_locked(&inner, after)
    }

    fn since_locked(inner: &StoreInner, after: u64) -> (Vec<Arc<AssistEvent>>, bool) {
        let events: Vec<Arc<AssistEvent>> = inner
            .retained
            .iter()
            .filter(|e| e.sequence > after)
            .cloned()
            .collect();
        let first_retained = inner
            .retained
            .front()
            .map_or(inner.next_sequence, |e| e.sequence);
        (
            events,
            after + 1 < first_retained && after + 1 < inner.next_sequence,
        )
    }
}

/// A new subscription: what to replay, then the live receiver.
pub struct Subscription {
    /// Retained events after `resume_after`, oldest first.
    pub replay: Vec<Arc<AssistEvent>>,
    /// Whether events after `resume_after` were already dropped from retention.
    pub gap: bool,
    /// Live events.
    pub live: broadcast::Receiver<Arc<AssistEvent>>,
    /// The store's log, to catch up after lagging.
    pub log: Arc<StoreLog>,
}

/// Every store's log on this node.
pub struct PushHub {
    stores: RwLock<HashMap<Box<str>, Arc<StoreLog>>>,
    retention: usize,
    /// Store → epoch at which this node, as the store's orderer, caught up from the previous orderer.
    synced: Mutex<HashMap<String, u64>>,
}

/// What inserting a sequenced event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// It was the next one.
    Appended,
    /// Already held.
    Duplicate,
    /// Events between the last held and this one are missing.
    Gap {
        /// The last sequence held.
        last: u64,
    },
}

impl std::fmt::Debug for PushHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHub")
            .field("retention", &self.retention)
            .finish()
    }
}

impl PushHub {
    /// A hub retaining `retention` events per store.
    pub fn new(retention: usize) -> Self {
        Self {
            stores: RwLock::new(HashMap::new()),
            retention,
            synced: Mutex::new(HashMap::new()),
        }
    }

    fn store(&self, store_id: &str) -> Arc<StoreLog> {
        if let Some(log) = self.stores.read().expect("hub lock").get(store_id) {
            return log.clone();
        }
        self.stores
            .write()
            .expect("hub lock")
            .entry(store_id.into())
            .or_insert_with(|| Arc::new(StoreLog::new(self.retention)))
            .clone()
    }

    /// Appends an event to its store's log (assigning the next sequence) and sends it to live subscribers.
    /// Returns the sequenced event.
    pub fn publish(&self, mut event: AssistEvent) -> Arc<AssistEvent> {
        let log = self.store(&event.store_id);
        let mut inner = log.inner.lock().expect("store log lock");
        event.sequence = inner.next_sequence;
        let event = Arc::new(event);
        Self::append(&log, &mut inner, event.clone());
        metrics::counter!("aisle_assist_events_total", "kind" => kind_name(event.kind))
            .increment(1);
        event
    }

    fn append(log: &StoreLog, inner: &mut StoreInner, event: Arc<AssistEvent>) {
        inner.next_sequence = event.sequence + 1;
        if inner.retained.len() >= log.retention {
            inner.retained.pop_front();
        }
        inner.retained.push_back(event.clone());
        // No receivers is fine: the event is retained for handhelds that connect later.
        let _ = inner.live.send(event);
    }

    /// Appends an event sequenced by its store's orderer (this node holds a replica of the log).
    pub fn insert_sequenced(&self, event: AssistEvent) -> Inserted {
        let log = self.store(&event.store_id);
        let mut inner = log.inner.lock().expect("store log lock");
        let last = inner.next_sequence - 1;
        if event.sequence <= last {
            return Inserted::Duplicate;
        }
        if event.sequence > last + 1 {
            return Inserted::Gap { last };
        }
        Self::append(&log, &mut inner, Arc::new(event));
        Inserted::Appended
    }

    /// Retained events of a store after a sequence, oldest first.
    pub fn since(&self, store_id: &str, after: u64) -> Vec<Arc<AssistEvent>> {
        self.store(store_id).since(after).0
    }

    /// The epoch at which this node last synchronised a store's log from its previous orderer.
    pub fn synced_epoch(&self, store_id: &str) -> Option<u64> {
        self.synced
            .lock()
            .expect("synced lock")
            .get(store_id)
            .copied()
    }

    /// Records that a store's log is in sync for `epoch`.
    pub fn mark_synced(&self, store_id: &str, epoch: u64) {
        self.synced
            .lock()
            .expect("synced lock")
            .insert(store_id.to_string(), epoch);
    }

    /// Subscribes to a store: retained events after `resume_after` (none when `None`), then live ones.
    pub fn subscribe(&self, store_id: &str, resume_after: Option<u64>) -> Subscription {
        let log = self.store(store_id);
        let inner = log.inner.lock().expect("store log lock");
        let (replay, gap) = match resume_after {
            Some(after) => StoreLog::since_locked(&inner, after),
            None => (Vec::new(), false),
        };
        let live = inner.live.subscribe();
        drop(inner);
        Subscription {
            replay,
            gap,
            live,
            log,
        }
    }

    /// The last sequence assigned in a store (0 when none).
    pub fn last_sequence(&self, store_id: &str) -> u64 {
        self.store(store_id)
            .inner
            .lock()
            .expect("store log lock")
            .next_sequence
            - 1
    }
}

/// The metric label of an assist kind.
pub fn kind_name(kind: i32) -> &'static str {
    use aisle_proto::v1::AssistKind;
    match AssistKind::try_from(kind) {
        Ok(AssistKind::HighIntentCart) => "high_intent_cart",
        Ok(AssistKind::Lingering) => "lingering",
        Ok(AssistKind::Replenish) => "replenish",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(store: &str, message: &str) -> AssistEvent {
        AssistEvent {
            store_id: store.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sequences_are_per_store_and_gapless() {
        let hub = PushHub::new(1_000);
        assert_eq!(hub.publish(event("s1", "a")).sequence, 1);
        assert_eq!(hub.publish(event("s1", "b")).sequence, 2);
        assert_eq!(hub.publish(event("s2", "c")).sequence, 1);
        assert_eq!(hub.last_sequence("s1"), 2);
    }

    #[test]
    fn replicas_insert_in_sequence_and_report_gaps() {
        let orderer = PushHub::new(1_000);
        let replica = PushHub::new(1_000);
        let e1 = orderer.publish(event("s", "1"));
        let e2 = orderer.publish(event("s", "2"));
        let e3 = orderer.publish(event("s", "3"));
        assert_eq!(replica.insert_sequenced((*e1).clone()), Inserted::Appended);
        assert_eq!(replica.insert_sequenced((*e1).clone()), Inserted::Duplicate);
        assert_eq!(
            replica.insert_sequenced((*e3).clone()),
            Inserted::Gap { last: 1 }
        );
        assert_eq!(replica.insert_sequenced((*e2).clone()), Inserted::Appended);
        assert_eq!(replica.insert_sequenced((*e3).clone()), Inserted::Appended);
        assert_eq!(
            replica
                .since("s", 0)
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        // A replica that becomes the orderer continues the sequence.
        assert_eq!(replica.publish(event("s", "4")).sequence, 4);
    }

    #[test]
    fn resume_replays_after_the_sequence_then_goes_live_without_duplicates() {
        let hub = PushHub::new(1_000);
        for k in 0..5 {
            hub.publish(event("s", &k.to_string()));
        }
        let mut sub = hub.subscribe("s", Some(2));
        assert_eq!(
            sub.replay.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(!sub.gap);
        hub.publish(event("s", "live"));
        assert_eq!(sub.live.try_recv().unwrap().sequence, 6);
        assert!(sub.live.try_recv().is_err());
        // Without resume_after: live only.
        assert!(hub.subscribe("s", None).replay.is_empty());
    }

    #[test]
    fn retention_keeps_the_last_events_and_reports_gaps() {
        let hub = PushHub::new(1_000);
        for k in 0..1_500 {
            hub.publish(event("s", &k.to_string()));
        }
        let sub = hub.subscribe("s", Some(0));
        assert_eq!(sub.replay.len(), 1_000);
        assert_eq!(sub.replay[0].sequence, 501);
        assert!(sub.gap);
        let sub = hub.subscribe("s", Some(500));
        assert!(!sub.gap);
        assert_eq!(sub.replay.len(), 1_000);
        let sub = hub.subscribe("s", Some(1_500));
        assert!(sub.replay.is_empty() && !sub.gap);
    }
}

/// Where assist events go: the local hub on a single node; in a cluster, the node that orders the store's events
/// (rendezvous owner of the store), which sequences them and replicates them to every member, so a handheld can
/// read its store's log on any node.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<PushHub>,
    tx: Option<mpsc::UnboundedSender<AssistEvent>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("clustered", &self.tx.is_some())
            .finish()
    }
}

impl Publisher {
    /// A publisher for this node.
    pub fn start(hub: Arc<PushHub>, cluster: Arc<Cluster>) -> Self {
        if !cluster.is_clustered() {
            return Self { hub, tx: None };
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<AssistEvent>();
        let task_hub = hub.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                publish_clustered(&task_hub, &cluster, event).await;
            }
        });
        Self { hub, tx: Some(tx) }
    }

    /// Publishes an event (ordering happens on the store's orderer).
    pub fn publish(&self, event: AssistEvent) {
        match &self.tx {
            None => {
                self.hub.publish(event);
            }
            Some(tx) => {
                let _ = tx.send(event);
            }
        }
    }
}

async fn publish_clustered(hub: &PushHub, cluster: &Cluster, event: AssistEvent) {
    for attempt in 0..10u64 {
        let orderer = cluster
            .current()
            .and_then(|v| v.store_owner(&event.store_id).cloned().map(|o| (v, o)));
        match orderer {
            Some((view, o)) if o.node_id == cluster.node_id => {
                order_and_replicate(hub, cluster, &view, event).await;
                return;
            }
            Some((view, o)) => {
                let mut call = tonic::Request::new(pb::PublishAssistRequest {
                    event: Some(event.clone()),
                    epoch: view.epoch,
                    view_fingerprint: view.fingerprint,
                });
                call.set_timeout(Duration::from_secs(2));
                if cluster
                    .peers
                    .client(&o.addr)
                    .publish_assist(call)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    metrics::counter!("aisle_assist_events_dropped_total").increment(1);
    tracing::warn!(store = %event.store_id, "assist event dropped: no orderer for the store answered");
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

/// Fetches a store's events after the last one held here from the peer at `addr`.
pub async fn catch_up(hub: &PushHub, cluster: &Cluster, addr: &str, store: &str) {
    let mut call = tonic::Request::new(pb::FetchAssistRequest {
        store_id: store.to_string(),
        after: hub.last_sequence(store),
    });
    call.set_timeout(Duration::from_secs(2));
    match cluster.peers.client(addr).fetch_assist(call).await {
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
