//! The node context: what every use case of a node shares, assembled once at start-up ([`crate::server`]) and
//! held by the gRPC services behind an `Arc`. It is a set of parts, each with one concern:
//!
//! | part | what |
//! |---|---|
//! | `config` | the configuration |
//! | `decider` | the decide pipeline |
//! | `shoppers` | sessions, the CACHED rung, pseudonyms, tombstones |
//! | `logs` | the decision trail and the event log |
//! | `bundles` | catalog, models, rules, experiments, and their files |
//! | `cluster` | membership, owner routing, peers, hand-off, replication |
//! | `control` | kill switches and the fleet's versions |
//! | `outbox` | where Track events wait for their owner (when configured) |
//! | `push` | assist events for store associates |
//!
//! A use case takes the parts it needs; nothing below this layer sees the whole.

use std::sync::Arc;

use crate::bundles::Bundles;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::Control;
use crate::durable::outbox::Outbox;
use crate::engine::decider::Decider;
use crate::engine::shoppers::Shoppers;
use crate::logs::Logs;
use crate::push::Push;

/// One node's shared context.
pub struct Node {
    /// The configuration.
    pub config: Arc<Config>,
    /// The decide pipeline.
    pub decider: Arc<Decider>,
    /// What this node holds about shoppers.
    pub shoppers: Shoppers,
    /// The decision trail and the event log.
    pub logs: Logs,
    /// The bundles served.
    pub bundles: Arc<Bundles>,
    /// Membership, placement, peers.
    pub cluster: Arc<Cluster>,
    /// The control records: kill switches and the fleet's versions.
    pub control: Arc<Control>,
    /// Where Track events wait while their owner cannot take them (`None`: no outbox configured).
    pub outbox: Option<Arc<Outbox>>,
    /// Assist events for store associates.
    pub push: Push,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.node_id
    }
}
