//! Moving sessions when ownership changes: seal → transfer → serve.
//!
//! On every new view, this node exports (removes) the sessions it no longer owns, sends each batch to the
//! shopper's new owner, and then tells every other member it is done for the epoch. A receiving node installs
//! the sessions it owns under its own view and passes on any it does not. Export and the session actors' owner
//! gate are checked in each shard's mailbox order, so once a session has been sealed here, no message already on
//! its way can re-create it here.
//!
//! When this node stops being a member (fenced), it keeps its sessions but serves none of them (the session
//! actors' owner gate refuses every shopper). When it rejoins, the hand-off barrier brings back, before it serves
//! again, the sessions of shoppers other nodes served meanwhile (replacing its own older copies); shoppers nobody
//! else served keep their sessions. A node that crashed has nothing to keep: its shoppers start afresh on their
//! new owners, which costs their session context and nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_session::{PortableSession, SessionContext, SessionTransfer, Sessions};
use tokio::time::Instant;

use super::{Cluster, SharedView};
use crate::cache::DecisionCache;
use crate::world::Worlds;

/// Sessions per hand-off message.
const BATCH: usize = 2_000;
/// How long exporting sessions from the shards may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What hand-off moves sessions out of and into: the session actors, the catalog their item indices refer to,
/// and the cached decisions that must not outlive a session's departure.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// The session actors.
    pub sessions: Sessions,
    /// The catalog (and models).
    pub worlds: Worlds,
    /// The CACHED rung.
    pub cache: Arc<DecisionCache>,
}

/// Follows view changes for the life of the node: starts each epoch's barrier and hands sessions off.
pub async fn follow_views(holdings: Holdings, cluster: Arc<Cluster>) {
    let mut views = cluster.views();
    let mut last: Option<u64> = None;
    loop {
        let view = views.borrow_and_update().clone();
        match view {
            Some(view) if Some(view.fingerprint) != last => {
                last = Some(view.fingerprint);
                cluster.begin_epoch(&view);
                hand_off(&holdings, &cluster, &view).await;
                cluster.handed_off(view.epoch);
            }
            Some(view) => cluster.handed_off(view.epoch),
            None if last.is_some() => {
                last = None;
                cluster.reset_epochs();
            }
            None => {}
        }
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// Exports the sessions this node no longer owns under `view` and sends them to their owners; then tells every
/// other member this node is done for the epoch.
pub async fn hand_off(holdings: &Holdings, cluster: &Cluster, view: &SharedView) -> usize {
    let started = Instant::now();
    let me = cluster.node_id.clone();
    let select_view = view.clone();
    let select_me = me.clone();
    let leaving = holdings
        .sessions
        .export(
            Arc::new(move |shopper: &str| {
                select_view
                    .shopper_owner(shopper)
                    .is_some_and(|m| m.node_id != select_me)
            }),
            EXPORT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not export sessions for hand-off");
            Vec::new()
        });
    let catalog = holdings.worlds.current().catalog.clone();
    let mut by_owner: HashMap<String, Vec<pb::SessionRecord>> = HashMap::new();
    for t in &leaving {
        holdings.cache.invalidate(&t.shopper_id);
        if let Some(owner) = view.shopper_owner(&t.shopper_id) {
            let portable = t.context.to_portable(&catalog);
            by_owner
                .entry(owner.addr.clone())
                .or_default()
                .push(pb::SessionRecord {
                    shopper_id: t.shopper_id.to_string(),
                    context: serde_json::to_vec(&portable).expect("sessions serialise"),
                });
        }
    }
    let moved = leaving.len();
    for (addr, records) in by_owner {
        for chunk in records.chunks(BATCH) {
            send(cluster, &addr, view, chunk.to_vec(), false).await;
        }
    }
    for m in view.members.iter().filter(|m| m.node_id != me) {
        send(cluster, &m.addr, view, Vec::new(), true).await;
    }
    metrics::counter!("aisle_handoff_sessions_sent_total").increment(moved as u64);
    if moved > 0 {
        tracing::info!(
            epoch = view.epoch,
            sessions = moved,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sessions handed off"
        );
    }
    moved
}

/// Sends one hand-off message, retrying briefly (a peer may be restarting).
async fn send(
    cluster: &Cluster,
    addr: &str,
    view: &SharedView,
    sessions: Vec<pb::SessionRecord>,
    done: bool,
) {
    let n = sessions.len();
    let request = pb::HandOffRequest {
        epoch: view.epoch,
        from_node: cluster.node_id.clone(),
        sessions,
        done,
        view_fingerprint: view.fingerprint,
    };
    for attempt in 0..3 {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(5));
        match cluster.peers.client(addr).hand_off(call).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(peer = addr, attempt, error = %e, sessions = n, "hand-off to peer failed");
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    if n > 0 {
        metrics::counter!("aisle_handoff_sessions_lost_total").increment(n as u64);
        tracing::error!(
            peer = addr,
            sessions = n,
            "sessions lost: their new owner is unreachable"
        );
    }
}

/// Installs received sessions this node owns; passes the others on to their owner under this node's view.
pub async fn receive(
    holdings: &Holdings,
    cluster: &Cluster,
    request: pb::HandOffRequest,
) -> (usize, usize) {
    let catalog = holdings.worlds.current().catalog.clone();
    let view = cluster.current();
    let mut mine = Vec::new();
    let mut elsewhere: HashMap<String, Vec<pb::SessionRecord>> = HashMap::new();
    for record in request.sessions {
        let owner = view
            .as_ref()
            .and_then(|v| v.shopper_owner(&record.shopper_id).cloned());
        match owner {
            Some(m) if m.node_id == cluster.node_id => {
                let Ok(portable) = serde_json::from_slice::<PortableSession>(&record.context)
                else {
                    tracing::warn!("undecodable session in hand-off; dropped");
                    continue;
                };
                mine.push(SessionTransfer {
                    shopper_id: record.shopper_id.into(),
                    context: SessionContext::from_portable(portable, &catalog),
                });
            }
            Some(m) => elsewhere.entry(m.addr).or_default().push(record),
            None => metrics::counter!("aisle_handoff_sessions_lost_total").increment(1),
        }
    }
    let installed = match holdings.sessions.import(mine, EXPORT_TIMEOUT).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "could not install handed-off sessions");
            0
        }
    };
    metrics::counter!("aisle_handoff_sessions_received_total").increment(installed as u64);
    let mut passed = 0;
    if let Some(view) = &view {
        for (addr, records) in elsewhere {
            passed += records.len();
            send(cluster, &addr, view, records, false).await;
        }
    }
    if request.done {
        cluster.done_from(&request.from_node, request.view_fingerprint);
    }
    (installed, passed)
}
