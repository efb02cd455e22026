//! Erasure of a shopper, cluster-wide (`ForgetShopper`), and the other half of a data-subject request: what every
//! member holds about them outside the session (`DescribeShopper`).
//!
//! The node that receives the request erases here and asks every other member of its view at once (a slow member
//! delays nobody else; the whole takes about one member's time); each member ([`erase_here`]):
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

use std::time::Duration;

use aisle_proto::v1 as pb;
use tonic::{Request, Response};

use crate::cluster::{Member, fanout};
use crate::error::{ApiError, RemoteError};
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
    let shoppers = &node.shoppers;
    let refs = shoppers.pseudonyms.all_of(shopper_id);
    let tombstones = &shoppers.tombstones;
    tombstones.record(&refs[0], at_ms);
    let (session_erased, cached) = shoppers.forget(shopper_id).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "erasing the session: {e}; retry (erasure is idempotent)"
        ))
    })?;
    // A replica kept for the shopper's owner is a copy of the session too.
    let session_erased = node.cluster.replication.forget(shopper_id) || session_erased;
    let assist = node.push.hub.redact(&refs);
    let logs = node.logs.erase(&refs, caller).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "erasing from the logs: {e}; retry (erasure is idempotent)"
        ))
    })?;
    let queued = match &node.outbox {
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
    let view = node.cluster.current().ok_or_else(|| {
        ApiError::Unavailable("this node is not a cluster member now; retry".into())
    })?;
    let at_ms = aisle_domain::now_ms();
    let request = pb::EraseShopperRequest {
        shopper_id: shopper_id.to_string(),
        forgotten_at_ms: at_ms,
        from_node: node.id().to_string(),
        caller: caller.to_string(),
    };
    // Here and on every other member at once.
    let (here, others) = tokio::join!(
        erase_here(node, shopper_id, at_ms, caller),
        fanout::ask_others(&node.cluster, &view, ERASE_CALL, |mut client, _| {
            let call = timed(request.clone());
            async move { client.erase_shopper(call).await.map(Response::into_inner) }
        })
    );
    let receipts = confirmed(here?, others)?;
    let owner = view
        .shopper_owner(shopper_id)
        .map_or_else(|| node.id().to_string(), |m| m.node_id.clone());
    let at_owner = receipts.iter().find(|r| r.node == owner);
    Ok(pb::ForgetShopperResponse {
        session_erased: receipts.iter().any(|r| r.session_erased),
        cached_decisions_erased: at_owner.map_or(0, |r| r.cached_decisions_erased),
        served_by: owner,
        shopper_ref: node.shoppers.pseudonyms.of(shopper_id),
        receipts,
    })
}

/// Every member's receipt, this node's first, when every member confirmed.
///
/// # Errors
/// UNAVAILABLE naming the members that did not confirm, and why.
fn confirmed(
    here: pb::ErasureReceipt,
    others: Vec<(Member, Result<pb::ErasureReceipt, RemoteError>)>,
) -> Result<Vec<pb::ErasureReceipt>, ApiError> {
    let mut receipts = vec![here];
    let mut failed = Vec::new();
    for (member, answer) in others {
        match answer {
            Ok(r) => receipts.push(r),
            Err(e) => {
                let member = &member.node_id;
                tracing::warn!(%member, error = %e, "member did not confirm an erasure");
                failed.push(format!("{member} ({e})"));
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
    Ok(receipts)
}

/// Lines returned per log and member in an access request (the totals count them all).
pub const HELD_LINES: usize = 1_000;

/// What this node holds about the shopper in its logs and push hub.
///
/// # Errors
/// When a log cannot be read.
pub async fn held_here(node: &Node, shopper_id: &str) -> Result<pb::HeldRecords, ApiError> {
    let refs = node.shoppers.pseudonyms.all_of(shopper_id);
    let unreadable = |e: std::io::Error| ApiError::Unavailable(format!("reading the logs: {e}"));
    let (event_log_records, event_log_total) = match node.logs.event_log() {
        Some(log) => log
            .find(refs.clone(), HELD_LINES)
            .await
            .map_err(unreadable)?,
        None => (Vec::new(), 0),
    };
    let (decision_records, decision_total) = match node.logs.trail() {
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
        assist_events: node.push.hub.about(&refs),
        error: String::new(),
        queued_events: node
            .outbox
            .as_ref()
            .map_or(0, |o| o.queued_events_of(shopper_id)) as u32,
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
    let Some(view) = node.cluster.current() else {
        return out;
    };
    let request = pb::DescribeHeldRequest {
        shopper_id: shopper_id.to_string(),
        from_node: node.id().to_string(),
    };
    let answers = fanout::ask_others(&node.cluster, &view, ERASE_CALL, |mut client, _| {
        let call = timed(request.clone());
        async move { client.describe_held(call).await.map(Response::into_inner) }
    })
    .await;
    out.extend(
        answers.into_iter().map(|(member, answer)| {
            answer.unwrap_or_else(|e| failed(&member.node_id, e.to_string()))
        }),
    );
    out
}

/// A peer call limited to [`ERASE_CALL`].
fn timed<T>(message: T) -> Request<T> {
    let mut call = Request::new(message);
    call.set_timeout(ERASE_CALL);
    call
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::cluster::view::testing::member;

    fn receipt(node: &str, session_erased: bool) -> pb::ErasureReceipt {
        pb::ErasureReceipt {
            node: node.into(),
            session_erased,
            ..Default::default()
        }
    }

    /// Members that each take `ms` to erase (as the peer call would), answering with their receipt.
    async fn erase_on(
        members: &[(&str, u64)],
    ) -> Vec<(Member, Result<pb::ErasureReceipt, RemoteError>)> {
        let times: Vec<(String, u64)> = members.iter().map(|(m, t)| (m.to_string(), *t)).collect();
        let members = members.iter().map(|(m, _)| member(m)).collect();
        fanout::ask(members, ERASE_CALL, move |m| {
            let ms = times
                .iter()
                .find(|(id, _)| *id == m.node_id)
                .map(|(_, t)| *t);
            let node = m.node_id.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
                Ok(receipt(&node, node == "b"))
            }
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn erasure_on_three_members_with_one_slow_takes_about_one_members_time() {
        let started = Instant::now();
        // Each member rewrites its logs; c's are large.
        let others = erase_on(&[("b", 800), ("c", 3_000), ("d", 900)]).await;
        assert_eq!(
            Instant::now() - started,
            Duration::from_millis(3_000),
            "the slowest member's time, not the sum (4.7 s)"
        );
        let receipts = confirmed(receipt("a", false), others).unwrap();
        let nodes: Vec<_> = receipts.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["a", "b", "c", "d"]);
        assert!(receipts.iter().any(|r| r.session_erased));
    }

    #[test]
    fn an_erasure_a_member_did_not_confirm_fails_naming_it_and_why() {
        let others = vec![
            (member("b"), Ok(receipt("b", true))),
            (
                member("c"),
                Err(RemoteError::Deadline("no answer within 20000 ms".into())),
            ),
        ];
        let e = confirmed(receipt("a", false), others).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(
            e.to_string(),
            "erased on 2 member(s), not confirmed by c (DeadlineExceeded: no answer within 20000 ms); retry \
             (erasure is idempotent)"
        );
    }
}
