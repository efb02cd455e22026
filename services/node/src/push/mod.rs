//! Assist events for store associates' handhelds: what a shopper's session signals (a high-intent cart, lingering
//! in an aisle, an item to replenish) becomes an event in their store's log, which handhelds subscribe to.
//!
//! - [`assist`]: a signal as an event, with suggestions that pass the guardrails.
//! - [`hub`]: every store's log on this node (gapless sequence, retention, live broadcast).
//! - [`publisher`]: where events go — the local hub, or the store's orderer in a cluster, which replicates them.

pub mod assist;
pub mod hub;
pub mod publisher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_domain::catalog::ItemIdx;
use aisle_policy::Rules;
use aisle_session::AssistSignal;
use tokio::time::Instant;

use crate::bundles::World;
use crate::cluster::Cluster;
use crate::config::Config;
use hub::PushHub;
use publisher::Publisher;

/// At most one replenish suggestion per store and item in this time.
const REPLENISH_COOLDOWN: Duration = Duration::from_secs(10 * 60);
/// Replenish suggestions remembered before the expired ones are swept.
const REPLENISH_REMEMBERED: usize = 100_000;

/// The push side of a node: its hub, where its events go, and what it suggested lately.
#[derive(Debug)]
pub struct Push {
    /// Every store's log on this node.
    pub hub: Arc<PushHub>,
    publisher: Publisher,
    /// When each (store, item) was last suggested for replenishment.
    replenish_sent: Mutex<HashMap<(Box<str>, ItemIdx), Instant>>,
}

/// Where the events of one shopper's applied batch come from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The shopper's pseudonym (events never carry the raw id).
    pub shopper_ref: &'a str,
    /// The node that produced them.
    pub node_id: &'a str,
    /// When the batch's first event was received (µs since the epoch).
    pub received_at_us: i64,
}

impl Push {
    /// The push side of a node (starts the publisher's task in a cluster).
    pub fn start(config: &Config, cluster: Arc<Cluster>) -> Self {
        let hub = Arc::new(PushHub::with_max_stores(
            config.push_retention,
            config.max_stores,
        ));
        Self {
            publisher: Publisher::start(hub.clone(), cluster),
            hub,
            replenish_sent: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes the assist events a shopper's applied events raised (replenish suggestions at most once per
    /// store and item in ten minutes).
    pub fn publish_signals(
        &self,
        signals: &[AssistSignal],
        origin: Origin<'_>,
        world: &World,
        rules: &Rules,
    ) {
        for signal in signals {
            if let AssistSignal::Replenish { store_id, item, .. } = signal
                && !self.replenish_due(store_id, *item)
            {
                continue;
            }
            self.publisher
                .publish(assist::assist_event(signal, origin, world, rules));
        }
    }

    /// Whether a replenish suggestion for the item may go out now (and records that it does).
    fn replenish_due(&self, store_id: &str, item: ItemIdx) -> bool {
        let mut sent = self.replenish_sent.lock().expect("replenish lock");
        let now = Instant::now();
        if sent.len() > REPLENISH_REMEMBERED {
            sent.retain(|_, at| now.duration_since(*at) < REPLENISH_COOLDOWN);
            if sent.len() > REPLENISH_REMEMBERED / 2 {
                // Still full within the cooldown (a flood of stores and items): keep the newest half, so memory
                // stays bounded; the oldest pairs may be suggested again early.
                let mut ages: Vec<Instant> = sent.values().copied().collect();
                let cut = ages.len() - REPLENISH_REMEMBERED / 2;
                let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
                let oldest_kept = *oldest_kept;
                sent.retain(|_, at| *at >= oldest_kept);
            }
        }
        let key = (Box::from(store_id), item);
        if sent
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPLENISH_COOLDOWN)
        {
            return false;
        }
        sent.insert(key, now);
        true
    }
}
