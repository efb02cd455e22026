//! The tasks a node runs beside its ports, for as long as it runs: each keeps one thing true (credentials re-read,
//! readiness following the logs and the membership, bundle files watched, queued events delivered, a store edge
//! following its cloud, a cluster member following its views and the control records).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::bundles::watch::Watcher;
use crate::cluster::handoff::{self, Holdings};
use crate::cluster::{Cluster, replication};
use crate::edge::role::Role as EdgeRole;
use crate::http::readiness::Readiness;
use crate::logs::journal::Journal;
use crate::node::Node;
use crate::security::Security;
use crate::shopper::deliver;

/// Starts the tasks of `node`; those that must stop with it are returned (the hand-off follower ends by itself
/// when the views end).
pub(super) async fn start(
    node: &Arc<Node>,
    edge: Option<Arc<EdgeRole>>,
    holdings: Holdings,
    security: Security,
    readiness: &Arc<Readiness>,
    metrics: PrometheusHandle,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(every(Duration::from_secs(5), move || metrics.run_upkeep())),
        tokio::spawn(reload_credentials(node, security)),
    ];
    let logs = node.logs.all();
    if !logs.is_empty() {
        tasks.push(tokio::spawn(watch_logs(logs, readiness.clone())));
    }
    if let Some(outbox) = node.outbox.clone() {
        // Alone, a node owns everything: entries wait only when its session actors failed to answer.
        tasks.push(match &edge {
            Some(edge) => {
                let link = edge.link().clone();
                tokio::spawn(deliver::drain(outbox, move |entry| {
                    let link = link.clone();
                    async move { link.upload(&entry).await }
                }))
            }
            None => {
                let node = node.clone();
                tokio::spawn(deliver::drain(outbox, move |entry| {
                    deliver::to_owner(node.clone(), entry)
                }))
            }
        });
    }
    if node.config.bundle_poll_secs > 0 {
        tasks.push(tokio::spawn(watch_bundles(node.clone())));
    }
    if let Some(edge) = edge {
        tracing::info!(store = edge.link().store_id(), upstream = ?node.config.upstream,
            "store edge: following the cloud");
        let link = edge.link().clone();
        tasks.push(tokio::spawn(edge.follow(node.clone())));
        tasks.push(tokio::spawn(every(Duration::from_secs(1), move || {
            link.publish()
        })));
    }
    if node.cluster.is_clustered() {
        tasks.extend(follow_cluster(node, holdings, readiness).await);
    }
    tasks
}

/// Runs `f` every `period`.
async fn every(period: Duration, f: impl Fn()) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        f();
    }
}

/// Re-reads the node's credentials (TLS, tokens, pseudonym keys, peer TLS) when their files change.
fn reload_credentials(
    node: &Node,
    security: Security,
) -> impl std::future::Future<Output = ()> + use<> {
    let peers = node.cluster.peers.clone();
    let period = Duration::from_secs(node.config.credential_reload_secs);
    every(period, move || {
        security.reload();
        peers.reload_if_changed();
    })
}

/// The cluster member's tasks: replication, the control records (read once before the first decision, briefly),
/// hand-off on view changes, holds through etcd outages, readiness following the membership.
async fn follow_cluster(
    node: &Arc<Node>,
    holdings: Holdings,
    readiness: &Arc<Readiness>,
) -> Vec<JoinHandle<()>> {
    let cluster = node.cluster.clone();
    let tasks = vec![
        tokio::spawn(replication::run(holdings.clone(), cluster.clone())),
        tokio::spawn(node.control.clone().follow()),
    ];
    // Kill switches before the first decision: wait (briefly) for the control records. A node that cannot read
    // etcd yet serves without switches and applies them once it can.
    if !node.control.wait_read(Duration::from_secs(2)).await {
        tracing::warn!(
            "control records not read within 2 s (etcd unreachable?): serving without kill switches until they are"
        );
    }
    tokio::spawn(handoff::follow_views(holdings, cluster.clone()));
    let mut tasks = tasks;
    tasks.push(tokio::spawn(cluster.clone().hold_through_etcd_outages()));
    tasks.push(tokio::spawn(follow_membership(cluster, readiness.clone())));
    tasks
}

/// Keeps the `membership` readiness condition true exactly while this node holds a current view.
async fn follow_membership(cluster: Arc<Cluster>, readiness: Arc<Readiness>) {
    let mut views = cluster.views();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        match cluster.current() {
            Some(v) => {
                if v.member(&cluster.node_id).is_some_and(|m| !m.leaving) {
                    readiness.met("membership");
                } else {
                    readiness.unmet("membership", "leaving");
                }
            }
            None => readiness.unmet("membership", "not joined, or fenced: no current view"),
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Polls the bundle files and loads new versions through their owners; every load and refusal goes to the
/// decision trail.
async fn watch_bundles(node: Arc<Node>) {
    let mut watcher = Watcher::new(&node.config);
    if watcher.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(node.config.bundle_poll_secs));
    tick.tick().await;
    loop {
        tick.tick().await;
        for change in watcher.poll(&node.bundles).await {
            let (action, details) = match change.outcome {
                Ok(_) => ("bundle_loaded", serde_json::json!({"file": change.file})),
                Err(error) => (
                    "bundle_refused",
                    serde_json::json!({"file": change.file, "error": error}),
                ),
            };
            if let Err(e) = node.logs.audit_action(action, "node", details).await {
                tracing::warn!(error = %e, action, "the decision trail could not record a bundle change");
            }
        }
    }
}

/// Keeps `/readyz` telling whether each log can be written (checked every second): a log that cannot is loud —
/// `degraded` in `/readyz`, a warning in the node's log — while the node keeps serving.
async fn watch_logs(logs: Vec<Journal>, readiness: Arc<Readiness>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_failing = vec![false; logs.len()];
    loop {
        tick.tick().await;
        for (log, was) in logs.iter().zip(was_failing.iter_mut()) {
            let what = match log.name() {
                "decisions" => "decision trail",
                _ => "event log",
            };
            match &log.health().failing {
                Some(f) => {
                    if !*was {
                        tracing::error!(log = log.name(), error = %f.error,
                            "cannot write the log; keeping records in memory and retrying (see /readyz)");
                    }
                    readiness.degrade(what, format!("write failing: {}", f.error));
                    *was = true;
                }
                None => {
                    if *was {
                        tracing::info!(log = log.name(), "the log is written again");
                    }
                    readiness.restore(what);
                    *was = false;
                }
            }
        }
    }
}
