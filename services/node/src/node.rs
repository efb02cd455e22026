//! The node's context: what every service of a node shares — its configuration, the decider, the cluster, the
//! control records (kill switches, fleet versions), the Track outbox and the push side (hub and publisher of assist events). The API
//! services, the router and the peer service hold a [`Node`]; the decider below it knows nothing of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_domain::catalog::ItemIdx;
use aisle_session::AssistSignal;
use tokio::time::Instant;

use crate::assist::assist_event;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::Control;
use crate::decider::{Applied, Decider};
use crate::edge::Edge;
use crate::edge::feed::BundleFiles;
use crate::outbox::Outbox;
use crate::push::{Publisher, PushHub};

/// At most one replenish suggestion per store and item in this time.
const REPLENISH_COOLDOWN: Duration = Duration::from_secs(10 * 60);
/// Replenish suggestions remembered before the expired ones are swept.
const REPLENISH_REMEMBERED: usize = 100_000;

/// One node's shared context.
pub struct Node {
    config: Arc<Config>,
    decider: Arc<Decider>,
    cluster: Arc<Cluster>,
    control: Arc<Control>,
    /// Where Track events wait while their owner cannot take them (None: no outbox configured).
    outbox: Option<Arc<Outbox>>,
    /// The files of the bundles served (for the edge feed).
    files: Arc<BundleFiles>,
    /// The link to the cloud, on a store edge.
    edge: Option<Arc<Edge>>,
    hub: Arc<PushHub>,
    /// Where assist events go (the local hub, or their store's orderer in a cluster).
    publisher: Publisher,
    /// When each (store, item) was last suggested for replenishment.
    replenish_sent: Mutex<HashMap<(Box<str>, ItemIdx), Instant>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node's context (starts the assist publisher).
    pub fn new(
        config: Arc<Config>,
        decider: Arc<Decider>,
        cluster: Arc<Cluster>,
        control: Arc<Control>,
        outbox: Option<Arc<Outbox>>,
        files: Arc<BundleFiles>,
        edge: Option<Arc<Edge>>,
    ) -> Self {
        let hub = Arc::new(PushHub::with_max_stores(
            config.push_retention,
            config.max_stores,
        ));
        Self {
            publisher: Publisher::start(hub.clone(), cluster.clone()),
            hub,
            config,
            decider,
            cluster,
            control,
            outbox,
            files,
            edge,
            replenish_sent: Mutex::new(HashMap::new()),
        }
    }

    /// The files of the bundles this node serves.
    pub fn bundle_files(&self) -> &Arc<BundleFiles> {
        &self.files
    }

    /// The link to the cloud, on a store edge (None on a cloud node).
    pub fn edge(&self) -> Option<&Arc<Edge>> {
        self.edge.as_ref()
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The decider.
    pub fn decider(&self) -> &Arc<Decider> {
        &self.decider
    }

    /// Membership, placement and peers.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The control records: kill switches and the fleet's versions.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The Track outbox, if configured.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// The push hub (per-store assist logs).
    pub fn hub(&self) -> &Arc<PushHub> {
        &self.hub
    }

    /// Publishes the assist events a shopper's applied events raised (replenish suggestions at most once per
    /// store and item in ten minutes).
    pub fn publish_assist(&self, shopper_id: &str, applied: &Applied) {
        if applied.signals.is_empty() {
            return;
        }
        let world = self.decider.worlds().current();
        let rules = self.decider.policy().current();
        let shopper_ref = self.decider.pseudonyms().of(shopper_id);
        for signal in &applied.signals {
            if let AssistSignal::Replenish { store_id, item, .. } = signal
                && !self.replenish_due(store_id, *item)
            {
                continue;
            }
            self.publisher.publish(assist_event(
                signal,
                &shopper_ref,
                &world,
                &rules,
                self.id(),
                applied.received_at_us,
            ));
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
