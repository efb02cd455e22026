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
use aisle_session::{PortableSession, SessionContext, SessionTransfer};
use tokio::time::Instant;

use super::{Cluster, Member, SharedView, fanout};
use crate::bundles::Bundles;
use crate::engine::shoppers::Shoppers;
use crate::error::RemoteError;

/// Sessions per hand-off message.
const BATCH: usize = 2_000;
/// How long exporting sessions from the shards may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the hand-off waits for its `done` messages to be sent (each retries a few times within about 16 s, then
/// goes on in the background).
const DONE_WITHIN: Duration = Duration::from_secs(30);

/// What hand-off moves sessions out of and into: the shopper state (sessions, the cached decisions that must not
/// outlive a session's departure, tombstones and the pseudonyms they name), the catalog the sessions' item indices
/// refer to, and the copies kept for successors.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// The shopper state.
    pub shoppers: Shoppers,
    /// The bundles (the catalog).
    pub bundles: Arc<Bundles>,
    /// Session copies for successors: installed sessions are copied on to theirs.
    pub replication: Arc<super::Replication>,
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
                // The replicas of shoppers whose owner left are installed before the barrier lets them through.
                let adopted = holdings.replication.adopt(&view, &cluster.node_id);
                if !adopted.is_empty() {
                    let n = adopted.len();
                    let installed = install(&holdings, adopted).await;
                    metrics::counter!("aisle_replicas_adopted_total").increment(installed as u64);
                    tracing::info!(
                        epoch = view.epoch,
                        replicas = n,
                        installed,
                        "took over a departed member's shoppers from their replicas"
                    );
                }
                cluster.begin_epoch(&view);
                hand_off(&holdings, &cluster, &view).await;
                cluster.handed_off(view.epoch);
                // Successors change with the view: every session held is copied again.
                holdings
                    .replication
                    .mark_all(holdings.shoppers.sessions.shoppers_now());
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
pub async fn hand_off(holdings: &Holdings, cluster: &Arc<Cluster>, view: &SharedView) -> usize {
    let started = Instant::now();
    let (moved, by_owner) = seal(holdings, &cluster.node_id, view).await;
    let mut refused = Vec::new();
    for (addr, records) in by_owner {
        for chunk in records.chunks(BATCH) {
            if let Err(back) = send(cluster, &addr, view, chunk.to_vec(), false).await {
                refused.extend(back);
            }
        }
    }
    if !refused.is_empty() {
        reroute(holdings, cluster, view, refused).await;
    }
    done_everywhere(holdings, cluster, view).await;
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

/// Exports (removes) the sessions `me` no longer owns under `view`, drops their cached decisions, and groups them,
/// in portable form, by their new owner's address. Returns how many were exported, and the groups.
async fn seal(
    holdings: &Holdings,
    me: &str,
    view: &SharedView,
) -> (usize, HashMap<String, Vec<pb::SessionRecord>>) {
    let (select_view, select_me) = (view.clone(), me.to_string());
    let leaving = holdings
        .shoppers
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
    let catalog = holdings.bundles.world().catalog.clone();
    let mut by_owner: HashMap<String, Vec<pb::SessionRecord>> = HashMap::new();
    for t in &leaving {
        holdings.shoppers.cache.invalidate(&t.shopper_id);
        if let Some(owner) = view.shopper_owner(&t.shopper_id) {
            let portable = t.context.to_portable(&catalog);
            by_owner
                .entry(owner.addr.clone())
                .or_default()
                .push(pb::SessionRecord {
                    shopper_id: t.shopper_id.to_string(),
                    context: serde_json::to_vec(&portable).expect("sessions serialise"),
                    version: t.context.version(),
                });
        }
    }
    (leaving.len(), by_owner)
}

/// Tells every other member of `view`, at once, that this node is done for it, with its live tombstones: one that
/// does not answer delays nobody else's barrier.
async fn done_everywhere(holdings: &Holdings, cluster: &Arc<Cluster>, view: &SharedView) {
    let tombstones: Vec<pb::Tombstone> = holdings
        .shoppers
        .tombstones
        .live()
        .into_iter()
        .map(|(shopper_ref, forgotten_at_ms)| pb::Tombstone {
            shopper_ref,
            forgotten_at_ms,
        })
        .collect();
    let others: Vec<Member> = view
        .members
        .iter()
        .filter(|m| m.node_id != cluster.node_id)
        .cloned()
        .collect();
    fanout::ask(others, DONE_WITHIN, |m| {
        let done = send_done(
            cluster.clone(),
            m.addr.clone(),
            view.clone(),
            tombstones.clone(),
        );
        async move {
            done.await;
            Ok::<(), RemoteError>(())
        }
    })
    .await;
}

/// How long sessions a peer refused (their views differed) keep being routed again before they count as lost.
const REROUTE_FOR: Duration = Duration::from_secs(10);
/// How long each round waits for this node's view to change before sending again under the same view (the peer
/// may have been the one behind).
const REROUTE_ROUND: Duration = Duration::from_millis(500);

/// Routes again sessions that their owner refused because its view differed from this node's. Each round waits
/// briefly for this node's next view, then sends every session to its owner under the view it then holds (the
/// same one, when the refusing peer was behind): those this node now owns are installed here. Sessions still
/// refused after [`REROUTE_FOR`] are counted as lost.
async fn reroute(
    holdings: &Holdings,
    cluster: &Cluster,
    first: &SharedView,
    mut records: Vec<pb::SessionRecord>,
) {
    let until = Instant::now() + REROUTE_FOR;
    let mut views = cluster.views();
    let mut last = first.fingerprint;
    while !records.is_empty() && Instant::now() < until {
        let _ = tokio::time::timeout(
            REROUTE_ROUND,
            views.wait_for(|v| v.as_ref().is_some_and(|v| v.fingerprint != last)),
        )
        .await;
        let Some(view) = cluster.current() else {
            continue;
        };
        last = view.fingerprint;
        let (mine, elsewhere) = split_by_owner(cluster, &view, std::mem::take(&mut records));
        install(holdings, mine).await;
        for (addr, batch) in elsewhere {
            if let Err(back) = send(cluster, &addr, &view, batch, false).await {
                records.extend(back);
            }
        }
    }
    if !records.is_empty() {
        metrics::counter!("aisle_handoff_sessions_lost_total").increment(records.len() as u64);
        tracing::error!(
            sessions = records.len(),
            "sessions lost: their owners kept refusing them (views did not converge)"
        );
    }
}

/// Splits records into those this node owns under `view` and those of each other owner (by address); records
/// with no owner are counted as lost.
fn split_by_owner(
    cluster: &Cluster,
    view: &SharedView,
    records: Vec<pb::SessionRecord>,
) -> (
    Vec<pb::SessionRecord>,
    HashMap<String, Vec<pb::SessionRecord>>,
) {
    let mut mine = Vec::new();
    let mut elsewhere: HashMap<String, Vec<pb::SessionRecord>> = HashMap::new();
    for record in records {
        match view.shopper_owner(&record.shopper_id) {
            Some(m) if m.node_id == cluster.node_id => mine.push(record),
            Some(m) => elsewhere.entry(m.addr.clone()).or_default().push(record),
            None => metrics::counter!("aisle_handoff_sessions_lost_total").increment(1),
        }
    }
    (mine, elsewhere)
}

/// Installs records into this node's sessions (a record whose local copy was written later is not installed).
/// Returns how many were installed.
async fn install(holdings: &Holdings, records: Vec<pb::SessionRecord>) -> usize {
    let catalog = holdings.bundles.world().catalog.clone();
    let check_tombstones = !holdings.shoppers.tombstones.is_empty();
    let sessions: Vec<SessionTransfer> = records
        .into_iter()
        .filter_map(|record| {
            let Ok(portable) = serde_json::from_slice::<PortableSession>(&record.context) else {
                metrics::counter!("aisle_handoff_sessions_undecodable_total").increment(1);
                tracing::warn!("undecodable session in hand-off; dropped");
                return None;
            };
            let context = SessionContext::from_portable(portable, &catalog);
            if check_tombstones
                && holdings.shoppers.tombstones.blocks(
                    &holdings.shoppers.pseudonyms.of(&record.shopper_id),
                    context.version(),
                )
            {
                metrics::counter!("aisle_handoff_sessions_tombstoned_total").increment(1);
                return None;
            }
            Some(SessionTransfer {
                shopper_id: record.shopper_id.into(),
                context,
            })
        })
        .collect();
    let shoppers: Vec<Box<str>> = sessions
        .iter()
        .map(|s: &SessionTransfer| s.shopper_id.clone())
        .collect();
    let installed = match holdings
        .shoppers
        .sessions
        .import(sessions, EXPORT_TIMEOUT)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "could not install handed-off sessions");
            0
        }
    };
    // Installed here, they are owned here: copied on to their successor.
    holdings.replication.mark_all(shoppers);
    metrics::counter!("aisle_handoff_sessions_received_total").increment(installed as u64);
    installed
}

/// Sends this node's `done` for the view, with its live tombstones: a few attempts here, then, should the member
/// still not have it, again in the background every second until it does or the view changes. The member serves
/// the shoppers this node held only once it has this `done` (the barrier has no timeout), so it must arrive.
async fn send_done(
    cluster: Arc<Cluster>,
    addr: String,
    view: SharedView,
    tombstones: Vec<pb::Tombstone>,
) {
    let request = pb::HandOffRequest {
        epoch: view.epoch,
        from_node: cluster.node_id.clone(),
        sessions: Vec::new(),
        done: true,
        view_fingerprint: view.fingerprint,
        tombstones,
    };
    if deliver_done(&cluster, &addr, &request, 3).await {
        return;
    }
    let fingerprint = view.fingerprint;
    tokio::spawn(async move {
        while cluster
            .current()
            .is_some_and(|v| v.fingerprint == fingerprint)
        {
            if deliver_done(&cluster, &addr, &request, 1).await {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Whether a `done` reached its member within `attempts`.
async fn deliver_done(
    cluster: &Cluster,
    addr: &str,
    request: &pb::HandOffRequest,
    attempts: u64,
) -> bool {
    for attempt in 0..attempts {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(5));
        let client = cluster.peers.client(addr);
        match async { client?.hand_off(call).await }.await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(peer = addr, attempt, error = %e, "hand-off done to peer failed");
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    false
}

/// Sends one hand-off message, retrying briefly (a peer may be restarting). Gives the sessions back when the
/// peer refused them because its view differs (they are then routed again under the next view); sessions that
/// cannot be delivered otherwise are counted as lost.
async fn send(
    cluster: &Cluster,
    addr: &str,
    view: &SharedView,
    sessions: Vec<pb::SessionRecord>,
    done: bool,
) -> Result<(), Vec<pb::SessionRecord>> {
    let request = pb::HandOffRequest {
        epoch: view.epoch,
        from_node: cluster.node_id.clone(),
        sessions,
        done,
        view_fingerprint: view.fingerprint,
        tombstones: Vec::new(),
    };
    deliver(cluster, addr, request).await
}

/// Delivers one hand-off message (see [`send`]).
async fn deliver(
    cluster: &Cluster,
    addr: &str,
    request: pb::HandOffRequest,
) -> Result<(), Vec<pb::SessionRecord>> {
    let n = request.sessions.len();
    for attempt in 0..3 {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(5));
        let client = cluster.peers.client(addr);
        match async { client?.hand_off(call).await }
            .await
            .map_err(RemoteError::from)
        {
            Ok(_) => return Ok(()),
            Err(RemoteError::Stale(reason)) if n > 0 => {
                tracing::info!(peer = addr, sessions = n, %reason,
                    "hand-off refused under this view; routing again under the next one");
                return Err(request.sessions);
            }
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
    Ok(())
}

/// Records tombstones a member sent, and erases the copies of sessions held here that they cover (those written
/// before the erasure). Returns how many sessions were erased.
pub async fn apply_tombstones(holdings: &Holdings, tombstones: &[pb::Tombstone]) -> usize {
    let refs: std::collections::HashSet<String> = tombstones
        .iter()
        .filter(|t| {
            holdings
                .shoppers
                .tombstones
                .record(&t.shopper_ref, t.forgotten_at_ms)
        })
        .map(|t| t.shopper_ref.clone())
        .collect();
    if refs.is_empty() {
        return 0;
    }
    let pseudonyms = holdings.shoppers.pseudonyms.clone();
    let covered = match holdings
        .shoppers
        .sessions
        .export(
            Arc::new(move |shopper: &str| refs.contains(&pseudonyms.of(shopper))),
            EXPORT_TIMEOUT,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not apply tombstones to the sessions held here");
            return 0;
        }
    };
    let mut keep = Vec::new();
    let mut erased = 0;
    for t in covered {
        if holdings.shoppers.tombstones.blocks(
            &holdings.shoppers.pseudonyms.of(&t.shopper_id),
            t.context.version(),
        ) {
            holdings.shoppers.cache.invalidate(&t.shopper_id);
            erased += 1;
        } else {
            keep.push(t);
        }
    }
    if !keep.is_empty()
        && let Err(e) = holdings
            .shoppers
            .sessions
            .import(keep, EXPORT_TIMEOUT)
            .await
    {
        tracing::error!(error = %e, "could not put back sessions written after their erasure");
    }
    if erased > 0 {
        metrics::counter!("aisle_sessions_erased_by_tombstone_total").increment(erased as u64);
        tracing::info!(
            sessions = erased,
            "erased copies of forgotten shoppers' sessions (tombstones from a member)"
        );
    }
    erased
}

/// Why a hand-off message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// This node holds no view.
    #[error("this node is not a cluster member")]
    NoView,
    /// The sender's view is not this node's.
    #[error("hand-off for view {sent:016x}, this node holds view {held:016x} (epoch {epoch})")]
    OtherView {
        /// The sender's fingerprint.
        sent: u64,
        /// This node's.
        held: u64,
        /// This node's epoch.
        epoch: u64,
    },
    /// The sender is not a member of this node's view.
    #[error("sender {0:?} is not a member of this node's view")]
    Stranger(String),
    /// The sender owns a session it hands off, under this very view.
    #[error("sender {sender:?} owns shopper record {index} under this view: it cannot hand it off")]
    SenderOwns {
        /// The sender.
        sender: String,
        /// The record's position.
        index: usize,
    },
}

/// Checks a hand-off message carrying sessions against this node's current view: it must be made under the same
/// view, by one of its members, for sessions that member no longer owns. Nothing is installed from a refused
/// message.
///
/// # Errors
/// Why the message is refused.
pub fn admit(view: Option<&SharedView>, request: &pb::HandOffRequest) -> Result<(), Refused> {
    let view = view.ok_or(Refused::NoView)?;
    if request.view_fingerprint != view.fingerprint {
        return Err(Refused::OtherView {
            sent: request.view_fingerprint,
            held: view.fingerprint,
            epoch: view.epoch,
        });
    }
    if view.member(&request.from_node).is_none() {
        return Err(Refused::Stranger(request.from_node.clone()));
    }
    if let Some(index) = request.sessions.iter().position(|r| {
        view.shopper_owner(&r.shopper_id)
            .is_some_and(|m| m.node_id == request.from_node)
    }) {
        return Err(Refused::SenderOwns {
            sender: request.from_node.clone(),
            index,
        });
    }
    Ok(())
}

/// Installs received sessions this node owns (unless a local copy was written later); passes the others on to
/// their owner under this node's view. The message must pass [`admit`].
///
/// # Errors
/// Why the message is refused (nothing is installed then).
pub async fn receive(
    holdings: &Holdings,
    cluster: &Cluster,
    request: pb::HandOffRequest,
) -> Result<(usize, usize), Refused> {
    if request.sessions.is_empty() {
        // A bare "done": recorded for the view it names, which may be one this node has not seen yet. The barrier
        // counts it only for a member of that view, and only for that view. Its tombstones are applied first, so
        // the barrier cannot complete before a copy of a forgotten shopper's session kept here is erased.
        if request.done {
            apply_tombstones(holdings, &request.tombstones).await;
            // A member's `done` carries every live tombstone it holds: this node's erasure journal now knows the
            // last TTL's erasures, from before it started too.
            holdings.shoppers.tombstones.inherited_live();
            cluster.done_from(&request.from_node, request.view_fingerprint);
        }
        return Ok((0, 0));
    }
    let view = cluster.current();
    admit(view.as_ref(), &request)?;
    let view = view.expect("admitted under a view");
    let from = request.from_node.clone();
    let fingerprint = request.view_fingerprint;
    let done = request.done;
    let (mine, elsewhere) = split_by_owner(cluster, &view, request.sessions);
    let installed = install(holdings, mine).await;
    let mut passed = 0;
    for (addr, records) in elsewhere {
        passed += records.len();
        if let Err(back) = send(cluster, &addr, &view, records, false).await {
            metrics::counter!("aisle_handoff_sessions_lost_total").increment(back.len() as u64);
        }
    }
    if done {
        cluster.done_from(&from, fingerprint);
    }
    Ok((installed, passed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::testing::view;

    fn record(shopper: &str) -> pb::SessionRecord {
        pb::SessionRecord {
            shopper_id: shopper.into(),
            context: Vec::new(),
            version: 1,
        }
    }

    /// A shopper `owner` owns under `v`.
    fn owned_by(v: &SharedView, owner: &str) -> String {
        (0..1_000)
            .map(|i| format!("s{i}"))
            .find(|s| v.shopper_owner(s).unwrap().node_id == owner)
            .unwrap()
    }

    fn batch(v: &SharedView, from: &str, sessions: Vec<pb::SessionRecord>) -> pb::HandOffRequest {
        pb::HandOffRequest {
            epoch: v.epoch,
            from_node: from.into(),
            sessions,
            done: false,
            view_fingerprint: v.fingerprint,
            tombstones: Vec::new(),
        }
    }

    #[test]
    fn a_batch_is_admitted_only_under_the_same_view_from_a_member_that_no_longer_owns_its_sessions()
    {
        let v = view(4, &["a", "b", "c"]);
        let theirs = owned_by(&v, "a");
        let ok = batch(&v, "b", vec![record(&theirs)]);
        assert_eq!(admit(Some(&v), &ok), Ok(()));
        assert_eq!(admit(None, &ok), Err(Refused::NoView));
        let other = view(5, &["a", "b"]);
        assert!(matches!(
            admit(Some(&other), &ok),
            Err(Refused::OtherView { epoch: 5, .. })
        ));
        let stranger = batch(&v, "z", vec![record(&theirs)]);
        assert_eq!(
            admit(Some(&v), &stranger),
            Err(Refused::Stranger("z".into()))
        );
        // b cannot hand off a session it owns under this very view: a confused or forged sender.
        let own = owned_by(&v, "b");
        let forged = batch(&v, "b", vec![record(&theirs), record(&own)]);
        assert_eq!(
            admit(Some(&v), &forged),
            Err(Refused::SenderOwns {
                sender: "b".into(),
                index: 1
            })
        );
    }
}
