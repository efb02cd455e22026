//! A storefront's two calls from the command line, to the DecisionService: `aisle decide` asks for a decision,
//! `aisle track` sends one shopper event.

use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use clap::Args;
use serde_json::{Value, json};

use super::connect::{AddrArgs, connect, parse_enum, print, status, tier_name, with_token};

/// `aisle decide`.
#[derive(Debug, Args, Clone)]
pub struct DecideArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Shopper id.
    #[arg(long)]
    shopper: String,
    /// Surface: home, product_page, cart, checkout, search, store_aisle, kiosk_idle, category_page, email.
    #[arg(long, default_value = "home")]
    surface: String,
    /// Channel: web, app, kiosk, pos, associate_handheld, email.
    #[arg(long, default_value = "web")]
    channel: String,
    /// Items wanted.
    #[arg(long, default_value_t = 10)]
    limit: u32,
    /// Items to rank (comma-separated); default: the engine retrieves.
    #[arg(long, value_delimiter = ',')]
    candidates: Vec<String>,
    /// Items on screen (comma-separated).
    #[arg(long, value_delimiter = ',')]
    context: Vec<String>,
    /// Store id.
    #[arg(long, default_value = "")]
    store: String,
    /// The shopper's consent to behavioural data, `true` or `false` (false: ranked as an anonymous shopper).
    /// Absent: no statement is sent, and the shopper's recorded statement, else the region's default, applies.
    #[arg(long)]
    consent: Option<bool>,
    /// The shopper's region (e.g. EU, US-CA): picks the consent default when nothing is stated.
    #[arg(long, default_value = "")]
    region: String,
    /// The shopper's age is verified, in this band: under_18, 18_to_20, 21_plus.
    #[arg(long)]
    verified_age: Option<String>,
    /// Loyalty tier: none, silver, gold, platinum.
    #[arg(long)]
    loyalty: Option<String>,
    /// Deadline, ms (sent as the gRPC timeout).
    #[arg(long)]
    timeout_ms: Option<u64>,
}

/// `aisle track`: one event.
#[derive(Debug, Args, Clone)]
pub struct TrackArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Shopper id.
    #[arg(long)]
    shopper: String,
    /// Event type: view, search, add_to_cart, remove_from_cart, purchase, store_enter, store_exit, aisle_scan.
    #[arg(long = "type")]
    kind: String,
    /// Item id.
    #[arg(long, default_value = "")]
    item: String,
    /// Search query.
    #[arg(long, default_value = "")]
    query: String,
    /// Quantity.
    #[arg(long, default_value_t = 0)]
    quantity: u32,
    /// Unit price (major units).
    #[arg(long, default_value_t = 0.0)]
    price: f64,
    /// Store id.
    #[arg(long, default_value = "")]
    store: String,
    /// Aisle.
    #[arg(long, default_value = "")]
    aisle: String,
    /// The shopper's consent statement, `true` or `false`, if the event carries one (false revokes: the shopper's
    /// session is emptied and their events are ignored until a `true`).
    #[arg(long)]
    consent: Option<bool>,
    /// The shopper's region (e.g. EU, US-CA): picks the consent default while the shopper has stated none.
    #[arg(long, default_value = "")]
    region: String,
}

/// `aisle decide`.
///
/// # Errors
/// Connection failures, unknown enum names and error statuses.
pub(super) async fn decide(a: DecideArgs) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(connect(&a.addr).await?);
    let mut request = with_token(&a.addr, decide_request(&a)?)?;
    if let Some(ms) = a.timeout_ms {
        request.set_timeout(Duration::from_millis(ms));
    }
    let r = client.decide(request).await.map_err(status)?.into_inner();
    print(a.addr.json, &decision_json(&r), || {
        decision_text(&r, &a.shopper, &a.surface)
    });
    Ok(())
}

/// The request `aisle decide` sends: the flags, with surface, channel, age band and loyalty tier parsed by name.
///
/// # Errors
/// A name the API does not know (`unknown surface "hom"`).
fn decide_request(a: &DecideArgs) -> anyhow::Result<pb::DecideRequest> {
    let surface = parse_enum("surface", &a.surface, |s| {
        pb::Surface::from_str_name(&format!("SURFACE_{s}"))
    })?;
    let channel = parse_enum("channel", &a.channel, |s| {
        pb::Channel::from_str_name(&format!("CHANNEL_{s}"))
    })?;
    let attributes = pb::ShopperAttributes {
        age_verified: a.verified_age.is_some(),
        age_band: match &a.verified_age {
            Some(b) => parse_enum("age band", b, |s| {
                pb::AgeBand::from_str_name(&format!("AGE_BAND_{s}"))
            })? as i32,
            None => 0,
        },
        loyalty_tier: match &a.loyalty {
            Some(t) => parse_enum("loyalty tier", t, |s| {
                pb::LoyaltyTier::from_str_name(&format!("LOYALTY_TIER_{s}"))
            })? as i32,
            None => 0,
        },
    };
    Ok(pb::DecideRequest {
        shopper_id: a.shopper.clone(),
        surface: surface as i32,
        channel: channel as i32,
        limit: a.limit,
        candidate_item_ids: a.candidates.clone(),
        context_item_ids: a.context.clone(),
        store_id: a.store.clone(),
        region: a.region.clone(),
        consent: a.consent,
        attributes: Some(attributes),
        ..Default::default()
    })
}

/// Where a decision was made, as printed.
fn site_name(s: i32) -> &'static str {
    match pb::DecisionSite::try_from(s) {
        Ok(pb::DecisionSite::Cloud) => "cloud",
        Ok(pb::DecisionSite::Edge) => "edge",
        _ => "unspecified",
    }
}

/// The JSON form of a decision.
fn decision_json(r: &pb::DecideResponse) -> Value {
    json!({
        "decision_id": r.decision_id,
        "fallback_tier": tier_name(r.fallback_tier),
        "fallback_reason": r.fallback_reason,
        "model_version": r.model_version,
        "rules_version": r.rules_version,
        "experiments_version": r.experiments_version,
        "catalog_version": r.catalog_version,
        "experiments": r.experiments.iter().map(|(k, v)| (k.clone(), json!({"variant": v.variant, "in_holdout": v.in_holdout}))).collect::<serde_json::Map<_, _>>(),
        "in_holdout": r.in_holdout,
        "served_by": r.served_by,
        "decided_at": site_name(r.decided_at),
        "epoch": r.epoch,
        "server_latency_us": r.server_latency_us,
        "request_id": r.request_id,
        "items": r.items.iter().map(|i| json!({
            "rank": i.rank,
            "item_id": i.item_id,
            "name": i.name,
            "category": i.category,
            "price_cents": i.price_cents,
            "score": i.score,
            "offer": i.offer.as_ref().map(|o| json!({
                "offer_id": o.offer_id,
                "discount_percent": o.discount_percent,
                "price_cents": o.price_cents,
                "expires_at_unix": o.expires_at.as_ref().map(|t| t.seconds),
            })),
            "reasons": i.reasons,
        })).collect::<Vec<_>>(),
    })
}

/// The summary of a decision: a heading (tier, node, latency, versions), then one line per item.
fn decision_text(r: &pb::DecideResponse, shopper: &str, surface: &str) -> String {
    let mut out = format!(
        "decision {} for {} on {}: {} by {}{} in {} µs\nmodel {} · rules {} · experiments {}{}\n",
        r.decision_id,
        shopper,
        surface,
        tier_name(r.fallback_tier),
        r.served_by,
        if r.decided_at == pb::DecisionSite::Edge as i32 {
            " (at the store edge)"
        } else {
            ""
        },
        r.server_latency_us,
        r.model_version,
        r.rules_version,
        r.experiments
            .iter()
            .map(|(k, v)| format!("{k}={}", v.variant))
            .collect::<Vec<_>>()
            .join(" "),
        if r.in_holdout { " (holdout)" } else { "" },
    );
    for i in &r.items {
        let offer = i
            .offer
            .as_ref()
            .map(|o| format!("  offer {} -{}%", o.offer_id, o.discount_percent))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>3}. {:<12} {:<40} {:<20} {:>9.2} {:>7.3}  {}{}\n",
            i.rank,
            i.item_id,
            i.name,
            i.category,
            i.price_cents as f64 / 100.0,
            i.score,
            i.reasons.join(", "),
            offer
        ));
    }
    out.trim_end().to_string()
}

/// `aisle track`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn track(a: TrackArgs) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(connect(&a.addr).await?);
    let kind = parse_enum("event type", &a.kind, |s| {
        pb::EventType::from_str_name(&format!("EVENT_TYPE_{s}"))
    })?;
    let r = client
        .track(with_token(
            &a.addr,
            pb::TrackRequest {
                events: vec![pb::TrackEvent {
                    shopper_id: a.shopper.clone(),
                    r#type: kind as i32,
                    item_id: a.item.clone(),
                    query: a.query.clone(),
                    quantity: a.quantity,
                    price: a.price,
                    store_id: a.store.clone(),
                    aisle: a.aisle.clone(),
                    timestamp: None,
                    consent: a.consent,
                    region: a.region.clone(),
                }],
                request_id: String::new(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    print(
        a.addr.json,
        &json!({"accepted": r.accepted, "unknown_items": r.unknown_items, "served_by": r.served_by,
            "queued": r.queued}),
        || {
            let queued = if r.queued > 0 {
                format!(" ({} queued in its outbox for the owner)", r.queued)
            } else {
                String::new()
            };
            format!(
                "tracked {} event(s) for {} on {}{queued}",
                r.accepted, a.shopper, r.served_by
            )
        },
    );
    Ok(())
}
