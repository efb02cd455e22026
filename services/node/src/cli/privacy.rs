//! A shopper's data rights from the command line, to the AdminService: `aisle describe` shows what the cluster
//! holds about a shopper (an access request), `aisle forget` erases it on every member.

use aisle_proto::v1 as pb;
use clap::Args;
use serde_json::{Value, json};

use super::connect::{AddrArgs, admin, print, status, with_token};

/// `aisle forget` and `aisle describe`: the shopper concerned.
#[derive(Debug, Args, Clone)]
pub struct ShopperArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Shopper id.
    #[arg(long)]
    shopper: String,
}

/// `aisle forget`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn forget(a: ShopperArgs) -> anyhow::Result<()> {
    let r = admin(&a.addr)
        .await?
        .forget_shopper(with_token(
            &a.addr,
            pb::ForgetShopperRequest {
                shopper_id: a.shopper.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    print(a.addr.json, &forget_json(&r), || {
        forget_text(&r, &a.shopper)
    });
    Ok(())
}

/// The JSON form of an erasure: the owner's answer and each member's receipt.
fn forget_json(r: &pb::ForgetShopperResponse) -> Value {
    let receipts: Vec<Value> = r
        .receipts
        .iter()
        .map(|m| {
            json!({
                "node": m.node,
                "session_erased": m.session_erased,
                "cached_decisions_erased": m.cached_decisions_erased,
                "assist_events_redacted": m.assist_events_redacted,
                "event_log_records_removed": m.event_log_records_removed,
                "decision_records_redacted": m.decision_records_redacted,
                "tombstone_until_ms": m.tombstone_until_ms,
                "queued_events_removed": m.queued_events_removed,
            })
        })
        .collect();
    json!({"session_erased": r.session_erased, "cached_decisions_erased": r.cached_decisions_erased,
        "served_by": r.served_by, "shopper_ref": r.shopper_ref, "receipts": receipts})
}

/// The summary of an erasure: the owner's line, then one line per member's receipt.
fn forget_text(r: &pb::ForgetShopperResponse, shopper: &str) -> String {
    let mut out = format!(
        "forgot {} (pseudonym {}): session {}, owner {}",
        shopper,
        r.shopper_ref,
        if r.session_erased {
            "erased"
        } else {
            "not held"
        },
        r.served_by
    );
    for m in &r.receipts {
        out.push_str(&format!(
            "\n  {}: session {}, {} cached decision(s), {} assist event(s) redacted, {} event-log line(s) \
             removed, {} decision record(s) redacted, {} queued event(s) removed",
            m.node,
            if m.session_erased { "erased" } else { "not held" },
            m.cached_decisions_erased,
            m.assist_events_redacted,
            m.event_log_records_removed,
            m.decision_records_redacted,
            m.queued_events_removed
        ));
    }
    out
}

/// `aisle describe`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn describe(a: ShopperArgs) -> anyhow::Result<()> {
    let r = admin(&a.addr)
        .await?
        .describe_shopper(with_token(
            &a.addr,
            pb::DescribeShopperRequest {
                shopper_id: a.shopper.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    print(a.addr.json, &describe_json(&r), || {
        describe_text(&r, &a.shopper)
    });
    Ok(())
}

/// The JSON form of what the cluster holds about a shopper, the held records included.
fn describe_json(r: &pb::DescribeShopperResponse) -> Value {
    json!({
        "has_session": r.has_session,
        "events_applied": r.events_applied,
        "recent_item_ids": r.recent_item_ids,
        "cart_item_ids": r.cart_item_ids,
        "purchased_item_ids": r.purchased_item_ids,
        "top_categories": r.top_categories,
        "searches": r.searches,
        "consent": r.consent,
        "store_id": r.store_id,
        "served_by": r.served_by,
        "shopper_ref": r.shopper_ref,
        // Log lines as the JSON they are, so an export is one document.
        "held": r.held.iter().map(|h| {
            let parsed = |lines: &[String]| lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| json!(l)))
                .collect::<Vec<_>>();
            json!({
                "node": h.node,
                "event_log_total": h.event_log_total,
                "event_log_records": parsed(&h.event_log_records),
                "decision_total": h.decision_total,
                "decision_records": parsed(&h.decision_records),
                "assist_events": h.assist_events.iter().map(|e| json!({
                    "store_id": e.store_id, "sequence": e.sequence, "message": e.message,
                })).collect::<Vec<_>>(),
                "queued_events": h.queued_events,
                "error": h.error,
            })
        }).collect::<Vec<_>>(),
    })
}

/// The summary of what the cluster holds about a shopper: the session, then counts per member (not the records).
fn describe_text(r: &pb::DescribeShopperResponse, shopper: &str) -> String {
    let mut out = if r.has_session {
        format!(
            "{} (pseudonym {}) on {}: {} events; recent {:?}; cart {:?}; purchased {:?}; categories {:?}; \
             consent {:?}",
            shopper,
            r.shopper_ref,
            r.served_by,
            r.events_applied,
            r.recent_item_ids,
            r.cart_item_ids,
            r.purchased_item_ids,
            r.top_categories,
            r.consent
        )
    } else {
        format!(
            "{} (pseudonym {}): no session held (owner {})",
            shopper, r.shopper_ref, r.served_by
        )
    };
    for h in &r.held {
        if h.error.is_empty() {
            out.push_str(&format!(
                "\n  {}: {} event-log line(s), {} decision record(s), {} assist event(s), {} queued event(s)",
                h.node,
                h.event_log_total,
                h.decision_total,
                h.assist_events.len(),
                h.queued_events
            ));
        } else {
            out.push_str(&format!("\n  {}: not answered ({})", h.node, h.error));
        }
    }
    out.push_str("\n  (--json for the records themselves)");
    out
}
