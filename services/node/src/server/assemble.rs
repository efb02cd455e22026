//! Assembling a node's context from its configuration and bundles: the cluster handle (alone, or a member in
//! etcd), the bundle owners, the shopper state, the logs, the decider, the control records, the outbox and the push
//! side — each part built once, from the parts below it.

use std::sync::Arc;
use std::time::Duration;

use aisle_ranking::Ranking;
use aisle_session::Sessions;
use anyhow::Context;

use crate::bundles::{Bundles, Prepared};
use crate::cluster::handoff::Holdings;
use crate::cluster::peers::Peers;
use crate::cluster::replication::Replication;
use crate::cluster::{Cluster, MembershipConfig};
use crate::config::{ClusterMode, Config, Role};
use crate::control::{self, Control};
use crate::durable::outbox::{Outbox, OutboxLimits};
use crate::edge::role::Role as EdgeRole;
use crate::engine::cache::DecisionCache;
use crate::engine::decider::{Decider, DeciderSettings};
use crate::engine::shoppers::Shoppers;
use crate::engine::tombstones::Tombstones;
use crate::logs::Logs;
use crate::node::Node;
use crate::push::Push;
use crate::security::Security;
use crate::security::tls::ClientTlsFiles;

/// A node's context and what start-up needs beside it.
pub(super) struct Assembled {
    /// The context.
    pub(super) node: Arc<Node>,
    /// What hand-off and replication move.
    pub(super) holdings: Holdings,
    /// The store edge's role (an edge).
    pub(super) edge: Option<Arc<EdgeRole>>,
}

/// How this node reaches etcd and appears in it (etcd mode): for its membership and its control records.
fn membership_config(config: &Config, advertise: &str) -> anyhow::Result<Option<MembershipConfig>> {
    if config.cluster != ClusterMode::Etcd {
        return Ok(None);
    }
    let user = match (&config.etcd_user, &config.etcd_password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read etcd_password_file {}", file.display()))?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            Some((user.clone(), password))
        }
        _ => None,
    };
    Ok(Some(MembershipConfig {
        endpoints: config.etcd_endpoints.clone(),
        cluster: config.cluster_name.clone(),
        node_id: config.node_id.clone(),
        advertise_addr: advertise.to_string(),
        lease_ttl: Duration::from_secs(config.lease_ttl_secs),
        tls: config.etcd_ca.as_ref().map(|ca| ClientTlsFiles {
            ca: Some(ca.clone()),
            cert: config.etcd_cert.clone(),
            key: config.etcd_key.clone(),
        }),
        user,
    }))
}

/// The cluster handle the configuration asks for: membership in etcd when `membership` is given, else alone.
fn cluster(config: &Config, membership: Option<MembershipConfig>, advertise: &str) -> Arc<Cluster> {
    let Some(membership) = membership else {
        return Cluster::alone(&config.node_id, advertise);
    };
    let peer_tls = config.peer_tls_cert.as_ref().map(|cert| ClientTlsFiles {
        ca: config.peer_tls_ca.clone(),
        cert: Some(cert.clone()),
        key: config.peer_tls_key.clone(),
    });
    Cluster::with_etcd(
        membership,
        Peers::with_tls(&config.node_id, peer_tls, config.max_peer_message_bytes),
        Replication::new(
            (config.replication_ms > 0).then(|| Duration::from_millis(config.replication_ms)),
            config.max_sessions,
            Duration::from_secs(config.session_idle_ttl_secs),
        ),
    )
}

/// The shopper state: session shards that refuse shoppers this node does not own, the CACHED rung, tombstones.
async fn shoppers(
    config: &Config,
    cluster: &Arc<Cluster>,
    security: &Security,
) -> anyhow::Result<Shoppers> {
    let gate_cluster = cluster.clone();
    let sessions = Sessions::start_gated(
        config.session_shards,
        config.session_settings(),
        Arc::new(move |shopper: &str| gate_cluster.owns(shopper)),
    )
    .await?;
    Ok(Shoppers {
        sessions,
        cache: Arc::new(DecisionCache::new(
            config.cache_capacity,
            Duration::from_secs(config.cache_ttl_secs),
        )),
        pseudonyms: security.pseudonyms.clone(),
        tombstones: Arc::new(Tombstones::with_journal(
            Duration::from_secs(config.tombstone_ttl_secs),
            Duration::from_secs(config.erasure_journal_secs),
        )),
    })
}

/// The Track outbox the configuration names, opened (its queued entries read back).
fn outbox(config: &Config) -> anyhow::Result<Option<Arc<Outbox>>> {
    let Some(dir) = config.outbox_dir.clone() else {
        if config.cluster == ClusterMode::Etcd {
            tracing::warn!(
                "no outbox_dir: a Track whose owner cannot take it fails with UNAVAILABLE instead of waiting in \
                 an outbox"
            );
        }
        return Ok(None);
    };
    let limits = OutboxLimits {
        max_events: config.outbox_max_events,
        max_bytes: config.outbox_max_bytes,
    };
    let outbox = Outbox::open(&dir, &config.node_id, limits)
        .with_context(|| format!("cannot open the outbox in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), origin = outbox.origin(), queued_events = outbox.len(),
        "Track outbox open");
    Ok(Some(outbox))
}

/// Builds the node's context (spawning its actors) from `prepared` bundles; peers reach it at `advertise`.
///
/// # Errors
/// When an actor cannot be spawned, a log or the outbox cannot be opened, or the edge's upstream is unusable.
pub(super) async fn assemble(
    config: Arc<Config>,
    prepared: Prepared,
    security: &Security,
    advertise: &str,
) -> anyhow::Result<Assembled> {
    let membership = membership_config(&config, advertise)?;
    let cluster = cluster(&config, membership.clone(), advertise);
    let (trail, events) = crate::logs::audit::open_logs(&config).await?;
    let logs = Logs::new(&config.node_id, security.pseudonyms.clone(), trail, events);
    let bundles = Arc::new(Bundles::start(prepared).await?);
    let shoppers = shoppers(&config, &cluster, security).await?;
    let decider = Arc::new(Decider::new(
        DeciderSettings::from_config(&config),
        bundles.clone(),
        shoppers.clone(),
        Ranking::start(config.ranking_shards).await?,
    ));
    let parts = control::Parts {
        bundles: bundles.clone(),
        switchboard: decider.kill_switches().clone(),
        logs: logs.clone(),
    };
    let control = match membership {
        Some(m) => Control::with_etcd(m, parts, cluster.clone()),
        None => Control::alone(&config.node_id, parts),
    };
    let holdings = Holdings {
        shoppers: shoppers.clone(),
        bundles: bundles.clone(),
        replication: cluster.replication.clone(),
    };
    let edge = match config.role {
        Role::Edge => Some(EdgeRole::open(&config)?),
        Role::Cloud => None,
    };
    let node = Arc::new(Node {
        push: Push::start(&config, cluster.clone()),
        outbox: outbox(&config)?,
        config,
        decider,
        shoppers,
        logs,
        bundles,
        cluster,
        control,
    });
    Ok(Assembled {
        node,
        holdings,
        edge,
    })
}
