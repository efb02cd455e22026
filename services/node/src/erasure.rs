//! Erasure of a shopper, cluster-wide (`ForgetShopper`), and the other half of a data-subject request: what every
//! member holds about them outside the session (`DescribeShopper`).
//!
//! The node that receives the request fans it out to every member of its view, itself included; each member
//! ([`erase_here`]):
//! 1. records a tombstone (the shopper's pseudonym and the time of the request), so that a copy of the session
//!    written before it — in a hand-off batch still in flight, or kept by an old owner that was fenced — is
//!    dropped instead of installed (see `cluster::handoff`), for `tombstone_ttl_secs`;
//! 2. erases the session it holds (as owner, or as an old owner's copy) and its cached decisions;
//! 3. redacts retained assist events that name the shopper (their sequence numbers stay, for resuming handhelds);
//! 4. removes the shopper's lines from its event log and redacts their reference in its decision trail (every
//!    segment; see `logs::journal`), then records the erasure, with the caller, in the trail;
//! 5. removes the shopper's events waiting in its Track outbox, from memory and disk (see `outbox`).
//!
//! A member that was away (fenced) during the erasure learns its tombstone from the other members' hand-off
//! `done` messages when it rejoins, and erases its copy before it serves again. Erasure is idempotent: asking
//! again erases what is left (nothing) and answers the same way.

use std::future::Future;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::peer_service_client::PeerServiceClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cluster::View;
use crate::error::ApiError;
use crate::node::Node;

/// How long each member may take to erase.
const ERASE_CALL: Duration = Duration::from_secs(20);

/// Erases what this node holds about the shopper; `at_ms` is when the erasure was asked for.
///
/// # Errors
/// UNAVAILABLE when the session actors or a log could not be reached (erasure is idempotent: retry).
pub async fn erase_here(
    node: &Node,
    shopper_id: &str,
    at_ms: i64,
    caller: &str,
) -> Result<pb::ErasureReceipt, ApiError> {
    let decider = node.decider();
    let refs = decider.pseudonyms().all_of(shopper_id);
    let tombstones = decider.tombstones();
    tombstones.record(&refs[0], at_ms);
    let (session_erased, cached) = decider.forget_session(shopper_id).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "erasing the session: {e}; retry (erasure is idempotent)"
        ))
    })?;
    // A replica kept for the shopper's owner is a copy of the session too.
    let session_erased = node.cluster().replication.forget(shopper_id) || session_erased;
    let assist = node.hub().redact(&refs);
    let logs = decider.erase_logs(&refs, caller).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "erasing from the logs: {e}; retry (erasure is idempotent)"
        ))
    })?;
    let queued = match node.outbox() {
        Some(outbox) => outbox.purge(shopper_id).await.map_err(|e| {
            ApiError::Unavailable(format!(
                "erasing from the outbox: {e}; retry (erasure is idempotent)"
            ))
        })?,
        None => 0,
    };
    metrics::counter!("aisle_erasures_total").increment(1);
    tracing::info!(target: "aisle::admin", %caller, shopper_ref = %refs[0], session_erased,
        cached, assist_events = assist, event_log_records = logs.event_records,
        decision_records = logs.decision_records, queued_events = queued, "shopper erased on this node");
    Ok(pb::ErasureReceipt {
        node: node.id().to_string(),
        session_erased,
        cached_decisions_erased: cached as u32,
        assist_events_redacted: assist as u32,
        event_log_records_removed: logs.event_records,
        decision_records_redacted: logs.decision_records,
        tombstone_until_ms: tombstones.until_ms(at_ms),
        queued_events_removed: queued as u32,
    })
}

/// Erases the shopper on every member of this node's view (only here on a node alone).
///
/// # Errors
/// UNAVAILABLE when this node is not a member, or when a member did not confirm (named; what the others erased
/// stays erased, and asking again is safe).
pub async fn forget_everywhere(
    node: &Node,
    shopper_id: &str,
    caller: &str,
) -> Result<pb::ForgetShopperResponse, ApiError> {
    let cluster = node.cluster();
    let view = cluster.current().ok_or_else(|| {
        ApiError::Unavailable("this node is not a cluster member now; retry".into())
    })?;
    let at_ms = aisle_domain::now_ms();
    let mut receipts = vec![erase_here(node, shopper_id, at_ms, caller).await?];
    let mut failed = Vec::new();
    let request = pb::EraseShopperRequest {
        shopper_id: shopper_id.to_string(),
        forgotten_at_ms: at_ms,
        from_node: node.id().to_string(),
        caller: caller.to_string(),
    };
    let answers = ask_other_members(node, &view, |mut client| {
        let call = timed(request.clone());
        async move { client.erase_shopper(call).await }
    })
    .await;
    for (member, answer) in answers {
        match answer {
            Ok(r) => receipts.push(r),
            Err(e) => {
                tracing::warn!(%member, error = %e, "member did not confirm an erasure");
                failed.push(format!("{member} ({})", e.message()));
            }
        }
    }
    if !failed.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "erased on {} member(s), not confirmed by {}; retry (erasure is idempotent)",
            receipts.len(),
            failed.join(", ")
        )));
    }
    let owner = view
        .shopper_owner(shopper_id)
        .map_or_else(|| node.id().to_string(), |m| m.node_id.clone());
    let at_owner = receipts.iter().find(|r| r.node == owner);
    Ok(pb::ForgetShopperResponse {
        session_erased: receipts.iter().any(|r| r.session_erased),
        cached_decisions_erased: at_owner.map_or(0, |r| r.cached_decisions_erased),
        served_by: owner,
        shopper_ref: node.decider().pseudonyms().of(shopper_id),
        receipts,
    })
}

/// Lines returned per log and member in an access request (the totals count them all).
pub const HELD_LINES: usize = 1_000;

/// What this node holds about the shopper in its logs and push hub.
///
/// # Errors
/// When a log cannot be read.
pub async fn held_here(node: &Node, shopper_id: &str) -> Result<pb::HeldRecords, ApiError> {
    let decider = node.decider();
    let refs = decider.pseudonyms().all_of(shopper_id);
    let unreadable = |e: std::io::Error| ApiError::Unavailable(format!("reading the logs: {e}"));
    let (event_log_records, event_log_total) = match decider.event_log() {
        Some(log) => log
            .find(refs.clone(), HELD_LINES)
            .await
            .map_err(unreadable)?,
        None => (Vec::new(), 0),
    };
    let (decision_records, decision_total) = match decider.trail() {
        Some(log) => log
            .find(refs.clone(), HELD_LINES)
            .await
            .map_err(unreadable)?,
        None => (Vec::new(), 0),
    };
    Ok(pb::HeldRecords {
        node: node.id().to_string(),
        event_log_records,
        event_log_total,
        decision_records,
        decision_total,
        assist_events: node.hub().about(&refs),
        error: String::new(),
        queued_events: node.outbox().map_or(0, |o| o.queued_events_of(shopper_id)) as u32,
    })
}

/// What every member of this node's view holds about the shopper outside the session; a member that cannot answer
/// is listed with its error.
pub async fn held_everywhere(node: &Node, shopper_id: &str) -> Vec<pb::HeldRecords> {
    let failed = |node_id: &str, why: String| pb::HeldRecords {
        node: node_id.to_string(),
        error: why,
        ..Default::default()
    };
    let mut out = vec![
        held_here(node, shopper_id)
            .await
            .unwrap_or_else(|e| failed(node.id(), tonic::Status::from(e).message().to_string())),
    ];
    let Some(view) = node.cluster().current() else {
        return out;
    };
    let request = pb::DescribeHeldRequest {
        shopper_id: shopper_id.to_string(),
        from_node: node.id().to_string(),
    };
    let answers = ask_other_members(node, &view, |mut client| {
        let call = timed(request.clone());
        async move { client.describe_held(call).await }
    })
    .await;
    out.extend(answers.into_iter().map(|(member, answer)| {
        answer.unwrap_or_else(|e| failed(&member, e.message().to_string()))
    }));
    out
}

/// A peer call limited to [`ERASE_CALL`].
fn timed<T>(message: T) -> Request<T> {
    let mut call = Request::new(message);
    call.set_timeout(ERASE_CALL);
    call
}

/// Calls every member of `view` but this node, one after the other, through `call` given its peer client; each
/// member's id with its answer (or why there is none), in view order.
async fn ask_other_members<T, F, Fut>(
    node: &Node,
    view: &View,
    call: F,
) -> Vec<(String, Result<T, Status>)>
where
    F: Fn(PeerServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    let mut out = Vec::new();
    for m in view.members.iter().filter(|m| m.node_id != node.id()) {
        let answer = match node.cluster().peers.client(&m.addr) {
            Ok(client) => call(client).await.map(Response::into_inner),
            Err(e) => Err(e),
        };
        out.push((m.node_id.clone(), answer));
    }
    out
}
