//! The push hub: per store, a gapless sequence of assist events, the last `retention` of them kept for handhelds
//! that reconnect, and a broadcast to the live subscribers.
//!
//! Subscribing takes the store's lock once: the retained events after `resume_after` are copied and the live
//! receiver is registered under the same lock, so an event is either in the replay or in the live stream — never
//! both, never neither. A subscriber that falls so far behind that events it has not seen left the retention
//! window is ended with DATA_LOSS (it resumes from its last sequence and sees the gap in the numbers).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aisle_proto::v1::AssistEvent;
use tokio::sync::broadcast;

/// Live-stream buffer per store before a slow subscriber has to catch up from the retained log.
const LIVE_BUFFER: usize = 1_024;

struct StoreInner {
    next_sequence: u64,
    retained: VecDeque<Arc<AssistEvent>>,
    /// Made at the first subscription: a store nobody watches costs no broadcast buffer.
    live: Option<broadcast::Sender<Arc<AssistEvent>>>,
}

/// One store's log.
pub struct StoreLog {
    inner: Mutex<StoreInner>,
    retention: usize,
    /// Milliseconds since the hub started, at the last use (for evicting the least recently used store).
    used_ms: AtomicU64,
}

impl StoreLog {
    fn new(retention: usize, first_sequence: u64) -> Self {
        Self {
            inner: Mutex::new(StoreInner {
                next_sequence: first_sequence,
                retained: VecDeque::new(),
                live: None,
            }),
            retention,
            used_ms: AtomicU64::new(0),
        }
    }

    fn watched(&self) -> bool {
        self.inner
            .lock()
            .expect("store log lock")
            .live
            .as_ref()
            .is_some_and(|l| l.receiver_count() > 0)
    }

    /// Replaces the retained events about the shoppers named `refs` by redacted ones (same sequence, store and
    /// kind; no shopper, aisle, items or message). Returns how many were redacted.
    fn redact(&self, refs: &[String]) -> usize {
        let mut inner = self.inner.lock().expect("store log lock");
        let mut n = 0;
        for e in &mut inner.retained {
            if !e.shopper_ref.is_empty() && refs.contains(&e.shopper_ref) {
                *e = Arc::new(redacted(e));
                n += 1;
            }
        }
        n
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

/// What is left of an assist event about an erased shopper: its place in the store's sequence.
fn redacted(e: &AssistEvent) -> AssistEvent {
    AssistEvent {
        sequence: e.sequence,
        store_id: e.store_id.clone(),
        kind: e.kind,
        created_at: e.created_at,
        produced_by: e.produced_by.clone(),
        message: "redacted: the shopper asked to be forgotten".into(),
        ..AssistEvent::default()
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
    /// Store logs kept; beyond it the least recently used logs without subscribers are dropped.
    max_stores: usize,
    /// Above every sequence of a dropped log: a log made again sequences its first event after it, so a handheld
    /// resuming from an old sequence sees a gap, never a sequence used twice.
    dropped_floor: AtomicU64,
    started: std::time::Instant,
    /// Store → epoch at which this node, as the store's orderer, caught up from the previous orderer. Entries go
    /// with their store's log.
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
    /// A hub retaining `retention` events per store, for at most 10,000 stores.
    pub fn new(retention: usize) -> Self {
        Self::with_max_stores(retention, 10_000)
    }

    /// A hub retaining `retention` events per store, for at most `max_stores` stores (plus those with
    /// subscribers, which are never dropped; Subscribe streams are capped separately).
    pub fn with_max_stores(retention: usize, max_stores: usize) -> Self {
        Self {
            stores: RwLock::new(HashMap::new()),
            retention,
            max_stores: max_stores.max(1),
            dropped_floor: AtomicU64::new(0),
            started: std::time::Instant::now(),
            synced: Mutex::new(HashMap::new()),
        }
    }

    /// How many store logs the hub holds.
    pub fn stores(&self) -> usize {
        self.stores.read().expect("hub lock").len()
    }

    fn touch(&self, log: &StoreLog) {
        log.used_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A store's log, if the hub holds one.
    fn existing(&self, store_id: &str) -> Option<Arc<StoreLog>> {
        let log = self
            .stores
            .read()
            .expect("hub lock")
            .get(store_id)
            .cloned()?;
        self.touch(&log);
        Some(log)
    }

    /// A store's log, made when missing (dropping least recently used logs when the hub is full).
    fn store(&self, store_id: &str) -> Arc<StoreLog> {
        if let Some(log) = self.existing(store_id) {
            return log;
        }
        let mut stores = self.stores.write().expect("hub lock");
        if !stores.contains_key(store_id) && stores.len() >= self.max_stores {
            self.evict(&mut stores);
        }
        let log = stores
            .entry(store_id.into())
            .or_insert_with(|| Arc::new(StoreLog::new(self.retention, 1)))
            .clone();
        drop(stores);
        self.touch(&log);
        log
    }

    /// Drops the least recently used eighth of the logs that have no subscribers (at least one log), so that a
    /// stream of new stores costs amortised constant work.
    fn evict(&self, stores: &mut HashMap<Box<str>, Arc<StoreLog>>) {
        let mut idle: Vec<(u64, Box<str>)> = stores
            .iter()
            .filter(|(_, log)| !log.watched())
            .map(|(id, log)| (log.used_ms.load(Ordering::Relaxed), id.clone()))
            .collect();
        let n = (self.max_stores / 8).clamp(1, idle.len().max(1));
        if idle.is_empty() {
            return;
        }
        if n < idle.len() {
            idle.select_nth_unstable(n);
            idle.truncate(n);
        }
        let mut synced = self.synced.lock().expect("synced lock");
        for (_, id) in idle {
            if let Some(log) = stores.remove(&id) {
                let last = log.inner.lock().expect("store log lock").next_sequence - 1;
                self.dropped_floor.fetch_max(last, Ordering::Relaxed);
            }
            synced.remove(&*id);
        }
        metrics::counter!("aisle_store_logs_dropped_total").increment(n as u64);
    }

    /// Appends an event to its store's log (assigning the next sequence) and sends it to live subscribers.
    /// Returns the sequenced event.
    pub fn publish(&self, mut event: AssistEvent) -> Arc<AssistEvent> {
        let log = self.store(&event.store_id);
        let mut inner = log.inner.lock().expect("store log lock");
        if inner.next_sequence == 1 {
            // The first event this node orders for the store: after every sequence of a dropped log.
            inner.next_sequence = self.dropped_floor.load(Ordering::Relaxed) + 1;
        }
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
        if let Some(live) = &inner.live {
            let _ = live.send(event);
        }
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

    /// Appends a sequenced event past a gap that could not be filled (the orderer no longer holds the missing
    /// events): subscribers get it, and the jump in the sequence numbers shows what is missing.
    pub fn insert_past_gap(&self, event: AssistEvent) -> Inserted {
        match self.insert_sequenced(event.clone()) {
            Inserted::Gap { .. } => {
                let log = self.store(&event.store_id);
                let mut inner = log.inner.lock().expect("store log lock");
                if event.sequence < inner.next_sequence {
                    return Inserted::Duplicate;
                }
                metrics::counter!("aisle_assist_replication_gaps_total").increment(1);
                Self::append(&log, &mut inner, Arc::new(event));
                Inserted::Appended
            }
            other => other,
        }
    }

    /// Every store's log held now (taken out of the map's lock).
    fn logs(&self) -> Vec<Arc<StoreLog>> {
        self.stores
            .read()
            .expect("stores lock")
            .values()
            .cloned()
            .collect()
    }

    /// Redacts, in every store's retained events, those about the shoppers named `refs` (their pseudonyms under
    /// every key held). Returns how many were redacted.
    pub fn redact(&self, refs: &[String]) -> usize {
        self.logs().iter().map(|l| l.redact(refs)).sum()
    }

    /// The retained events about the shoppers named `refs`, in every store (a data-subject access request).
    pub fn about(&self, refs: &[String]) -> Vec<AssistEvent> {
        let mut out = Vec::new();
        for log in self.logs() {
            let inner = log.inner.lock().expect("store log lock");
            out.extend(
                inner
                    .retained
                    .iter()
                    .filter(|e| !e.shopper_ref.is_empty() && refs.contains(&e.shopper_ref))
                    .map(|e| (**e).clone()),
            );
        }
        out
    }

    /// Retained events of a store after a sequence, oldest first (none for a store the hub does not hold).
    pub fn since(&self, store_id: &str, after: u64) -> Vec<Arc<AssistEvent>> {
        self.existing(store_id)
            .map(|log| log.since(after).0)
            .unwrap_or_default()
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
        // Only for stores the hub holds: the map is bounded by the store logs.
        if self.existing(store_id).is_some() {
            self.synced
                .lock()
                .expect("synced lock")
                .insert(store_id.to_string(), epoch);
        }
    }

    /// Subscribes to a store: retained events after `resume_after` (none when `None`), then live ones.
    pub fn subscribe(&self, store_id: &str, resume_after: Option<u64>) -> Subscription {
        let log = self.store(store_id);
        let mut inner = log.inner.lock().expect("store log lock");
        let (replay, gap) = match resume_after {
            Some(after) => StoreLog::since_locked(&inner, after),
            None => (Vec::new(), false),
        };
        let live = inner
            .live
            .get_or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe();
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
        self.existing(store_id).map_or(0, |log| {
            log.inner.lock().expect("store log lock").next_sequence - 1
        })
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
    fn store_logs_are_capped_and_a_dropped_store_never_reuses_a_sequence() {
        let hub = PushHub::with_max_stores(1_000, 64);
        let watched = hub.subscribe("watched", None);
        for k in 0..10_000 {
            hub.publish(event(&format!("random-{k}"), "x"));
        }
        assert!(hub.stores() <= 64, "{} stores", hub.stores());
        // A store with a subscriber is never dropped.
        hub.publish(event("watched", "kept"));
        assert!(hub.existing("watched").is_some());
        drop(watched);
        // A dropped store made again continues above every dropped sequence: a handheld resuming from an old
        // sequence sees a gap.
        let again = hub.publish(event("random-0", "again"));
        assert!(again.sequence > 1, "{}", again.sequence);
        assert!(hub.subscribe("random-0", Some(0)).gap);
        // A replica's new log takes the orderer's sequence as it comes; past a gap nobody can fill, it goes on.
        let replica = PushHub::new(1_000);
        let mut e = event("r", "1");
        e.sequence = 1;
        assert_eq!(replica.insert_sequenced(e.clone()), Inserted::Appended);
        e.sequence = 40;
        assert_eq!(
            replica.insert_sequenced(e.clone()),
            Inserted::Gap { last: 1 }
        );
        assert_eq!(replica.insert_past_gap(e.clone()), Inserted::Appended);
        assert_eq!(replica.insert_past_gap(e), Inserted::Duplicate);
        assert_eq!(replica.last_sequence("r"), 40);
        // A handheld resuming after 1 gets 40 next: the jump in the numbers shows what is missing.
        let resumed = replica.subscribe("r", Some(1));
        assert_eq!(
            resumed
                .replay
                .iter()
                .map(|e| e.sequence)
                .collect::<Vec<_>>(),
            [40]
        );
        // Reads do not make stores.
        let before = hub.stores();
        assert!(hub.since("never-seen", 0).is_empty());
        assert_eq!(hub.last_sequence("never-seen-either"), 0);
        hub.mark_synced("never-seen-third", 3);
        assert_eq!(hub.stores(), before);
        assert_eq!(hub.synced_epoch("never-seen-third"), None);
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
