//! The push hub: per store, a gapless sequence of assist events, the last `retention` of them kept for handhelds
//! that reconnect, and a broadcast to the live subscribers.
//!
//! Subscribing takes the store's lock once: the retained events after `resume_after` are copied and the live
//! receiver is registered under the same lock, so an event is either in the replay or in the live stream — never
//! both, never neither. A subscriber that falls so far behind that events it has not seen left the retention
//! window is ended with DATA_LOSS (it resumes from its last sequence and sees the gap in the numbers).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use aisle_proto::v1::AssistEvent;
use tokio::sync::broadcast;

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
    pub fn publish(&self, mut event: AssistEvent) -> u64 {
        let log = self.store(&event.store_id);
        let mut inner = log.inner.lock().expect("store log lock");
        event.sequence = inner.next_sequence;
        inner.next_sequence += 1;
        let event = Arc::new(event);
        if inner.retained.len() >= log.retention {
            inner.retained.pop_front();
        }
        inner.retained.push_back(event.clone());
        // No receivers is fine: the event is retained for handhelds that connect later.
        let _ = inner.live.send(event.clone());
        metrics::counter!("aisle_assist_events_total", "kind" => kind_name(event.kind))
            .increment(1);
        event.sequence
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
        assert_eq!(hub.publish(event("s1", "a")), 1);
        assert_eq!(hub.publish(event("s1", "b")), 2);
        assert_eq!(hub.publish(event("s2", "c")), 1);
        assert_eq!(hub.last_sequence("s1"), 2);
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
