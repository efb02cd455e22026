//! A handheld's stream from the command line: `aisle subscribe` prints a store's assist events as they come, to
//! the AssociateService.

use aisle_proto::v1 as pb;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use clap::Args;
use serde_json::{Value, json};

use super::connect::{AddrArgs, connect, print, status, with_token};

/// `aisle subscribe`.
#[derive(Debug, Args, Clone)]
pub struct SubscribeArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Store id.
    #[arg(long)]
    store: String,
    /// Associate id.
    #[arg(long, default_value = "cli")]
    associate: String,
    /// Replay retained events after this sequence first.
    #[arg(long)]
    resume_after: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

/// An assist event's kind as printed.
fn kind_name(k: i32) -> &'static str {
    match pb::AssistKind::try_from(k) {
        Ok(pb::AssistKind::HighIntentCart) => "HIGH_INTENT_CART",
        Ok(pb::AssistKind::Lingering) => "LINGERING",
        Ok(pb::AssistKind::Replenish) => "REPLENISH",
        _ => "UNSPECIFIED",
    }
}

/// `aisle subscribe`: until ctrl-c, the stream's end, or `--count` events.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn subscribe(a: SubscribeArgs) -> anyhow::Result<()> {
    let mut client = AssociateServiceClient::new(connect(&a.addr).await?);
    let mut stream = client
        .subscribe(with_token(
            &a.addr,
            pb::SubscribeRequest {
                store_id: a.store.clone(),
                associate_id: a.associate.clone(),
                kinds: Vec::new(),
                resume_after: a.resume_after,
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    if !a.addr.json {
        eprintln!("subscribed to store {} (ctrl-c to stop)", a.store);
    }
    let mut seen = 0;
    while let Some(event) = stream.message().await.map_err(status)? {
        print(a.addr.json, &event_json(&event), || {
            format!(
                "#{} {} {}",
                event.sequence,
                kind_name(event.kind),
                event.message
            )
        });
        seen += 1;
        if a.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// The JSON form of an assist event.
fn event_json(event: &pb::AssistEvent) -> Value {
    json!({
        "sequence": event.sequence,
        "store_id": event.store_id,
        "kind": kind_name(event.kind),
        "message": event.message,
        "shopper_ref": event.shopper_ref,
        "aisle": event.aisle,
        "item_id": event.item_id,
        "suggested_items": event.suggested_items.iter().map(|s| json!({"item_id": s.item_id, "name": s.name, "aisle": s.aisle})).collect::<Vec<_>>(),
        "produced_by": event.produced_by,
    })
}
