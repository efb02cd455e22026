//! The client commands of the `aisle` CLI: decide, track, subscribe, forget, describe, bundles, fault, cluster,
//! model, kill-switch. Each prints a readable summary, or with `--json` one JSON object per answer (per event for
//! `subscribe`).

use std::path::PathBuf;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// The node to talk to, and the credentials to show it.
#[derive(Debug, Args, Clone)]
pub struct AddrArgs {
    /// The node's gRPC address (`https://` for a node with TLS).
    #[arg(long, env = "AISLE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token (never printed or logged).
    #[arg(long, env = "AISLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signs the node's certificate [default: the system's roots].
    #[arg(long, env = "AISLE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for nodes that identify callers by certificate (with --client-key).
    #[arg(long, env = "AISLE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "AISLE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A request carrying the bearer token of `a`, if any.
///
/// # Errors
/// When the token cannot be sent as a header value.
fn with_token<T>(a: &AddrArgs, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &a.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

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

/// `aisle forget`.
#[derive(Debug, Args, Clone)]
pub struct ForgetArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Shopper id.
    #[arg(long)]
    shopper: String,
}

/// `aisle fault`.
#[derive(Debug, Args, Clone)]
pub struct FaultArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Stage: session, ranking, cache, rules.
    #[arg(long)]
    stage: String,
    /// Mode: none, fail, stall.
    #[arg(long)]
    mode: String,
}

async fn connect(a: &AddrArgs) -> anyhow::Result<Channel> {
    let addr = &a.addr;
    let mut endpoint = Channel::from_shared(addr.to_string())
        .with_context(|| format!("invalid address {addr}"))?
        .connect_timeout(Duration::from_secs(5));
    if addr.starts_with("https://") {
        let files = crate::tls::ClientTlsFiles {
            ca: a.ca_cert.clone(),
            cert: a.client_cert.clone(),
            key: a.client_key.clone(),
        };
        endpoint = endpoint.tls_config(files.tonic_config(None)?)?;
    } else if a.ca_cert.is_some() || a.client_cert.is_some() {
        anyhow::bail!("--ca-cert and --client-cert need an https:// address (got {addr})");
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn parse_enum<T>(what: &str, value: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    parse(&value.to_ascii_uppercase()).ok_or_else(|| anyhow::anyhow!("unknown {what} {value:?}"))
}

fn print(json_out: bool, value: &Value, text: impl FnOnce() -> String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn tier_name(t: i32) -> &'static str {
    match pb::FallbackTier::try_from(t) {
        Ok(pb::FallbackTier::Fresh) => "FRESH",
        Ok(pb::FallbackTier::Cached) => "CACHED",
        Ok(pb::FallbackTier::Rules) => "RULES",
        Ok(pb::FallbackTier::Generic) => "GENERIC",
        _ => "UNSPECIFIED",
    }
}

fn site_name(s: i32) -> &'static str {
    match pb::DecisionSite::try_from(s) {
        Ok(pb::DecisionSite::Cloud) => "cloud",
        Ok(pb::DecisionSite::Edge) => "edge",
        _ => "unspecified",
    }
}

/// The JSON form of a decision.
pub fn decision_json(r: &pb::DecideResponse) -> Value {
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

/// `aisle decide`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn decide(a: DecideArgs) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(connect(&a.addr).await?);
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
    let mut request = tonic::Request::new(pb::DecideRequest {
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
    });
    if let Some(token) = &a.addr.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    if let Some(ms) = a.timeout_ms {
        request.set_timeout(Duration::from_millis(ms));
    }
    let r = client.decide(request).await.map_err(status)?.into_inner();
    print(a.addr.json, &decision_json(&r), || {
        let mut out = format!(
            "decision {} for {} on {}: {} by {}{} in {} µs\nmodel {} · rules {} · experiments {}{}\n",
            r.decision_id,
            a.shopper,
            a.surface,
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
    });
    Ok(())
}

/// `aisle track`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn track(a: TrackArgs) -> anyhow::Result<()> {
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

fn kind_name(k: i32) -> &'static str {
    match pb::AssistKind::try_from(k) {
        Ok(pb::AssistKind::HighIntentCart) => "HIGH_INTENT_CART",
        Ok(pb::AssistKind::Lingering) => "LINGERING",
        Ok(pb::AssistKind::Replenish) => "REPLENISH",
        _ => "UNSPECIFIED",
    }
}

/// `aisle subscribe`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn subscribe(a: SubscribeArgs) -> anyhow::Result<()> {
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
        let value = json!({
            "sequence": event.sequence,
            "store_id": event.store_id,
            "kind": kind_name(event.kind),
            "message": event.message,
            "shopper_ref": event.shopper_ref,
            "aisle": event.aisle,
            "item_id": event.item_id,
            "suggested_items": event.suggested_items.iter().map(|s| json!({"item_id": s.item_id, "name": s.name, "aisle": s.aisle})).collect::<Vec<_>>(),
            "produced_by": event.produced_by,
        });
        print(a.addr.json, &value, || {
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

/// `aisle forget`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn forget(a: ForgetArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a.addr).await?);
    let r = client
        .forget_shopper(with_token(
            &a.addr,
            pb::ForgetShopperRequest {
                shopper_id: a.shopper.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    let receipts: Vec<serde_json::Value> = r
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
    print(
        a.addr.json,
        &json!({"session_erased": r.session_erased, "cached_decisions_erased": r.cached_decisions_erased,
            "served_by": r.served_by, "shopper_ref": r.shopper_ref, "receipts": receipts}),
        || {
            let mut out = format!(
                "forgot {} (pseudonym {}): session {}, owner {}",
                a.shopper,
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
        },
    );
    Ok(())
}

/// `aisle bundles`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn bundles(a: AddrArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a).await?);
    let r = client
        .bundle_status(with_token(&a, pb::BundleStatusRequest {})?)
        .await
        .map_err(status)?
        .into_inner();
    let value = json!({
        "served_by": r.served_by,
        "bundles": r.bundles.iter().map(|b| json!({
            "kind": b.kind, "role": b.role, "version": b.version, "content_hash": b.content_hash, "source": b.source,
            "loaded_at_unix": b.loaded_at.as_ref().map(|t| t.seconds),
        })).collect::<Vec<_>>(),
    });
    print(a.json, &value, || {
        r.bundles
            .iter()
            .map(|b| {
                format!(
                    "{:<12} {:<10} {:<32} {}  {}",
                    b.kind,
                    b.role,
                    b.version,
                    &b.content_hash[..b.content_hash.len().min(12)],
                    b.source
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `aisle fault`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn fault(a: FaultArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a.addr).await?);
    let stage = parse_enum("stage", &a.stage, |s| {
        pb::FaultStage::from_str_name(&format!("FAULT_STAGE_{s}"))
    })?;
    let mode = parse_enum("mode", &a.mode, |s| {
        pb::FaultMode::from_str_name(&format!("FAULT_MODE_{s}"))
    })?;
    client
        .set_fault(with_token(
            &a.addr,
            pb::SetFaultRequest {
                stage: stage as i32,
                mode: mode as i32,
            },
        )?)
        .await
        .map_err(status)?;
    print(
        a.addr.json,
        &json!({"stage": a.stage, "mode": a.mode}),
        || format!("fault set: {} {}", a.stage, a.mode),
    );
    Ok(())
}

/// `aisle cluster`.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Also name this shopper's owner.
    #[arg(long, default_value = "")]
    shopper: String,
}

/// What `aisle model` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModelAction {
    /// Make the candidate model the default on every member.
    Promote,
    /// Restore the default model from before the last promotion on every member.
    Rollback,
}

/// `aisle model`.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// promote or rollback.
    #[arg(value_enum)]
    action: ModelAction,
    #[command(flatten)]
    addr: AddrArgs,
}

/// What `aisle kill-switch` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SwitchAction {
    /// Turn the switch on (or change its tier or reason).
    On,
    /// Turn it off (with --all: every switch).
    Off,
}

/// The rung a switched decision answers from.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SwitchTierArg {
    /// Category top sellers.
    Rules,
    /// The merchandising list.
    Generic,
}

/// `aisle kill-switch`.
#[derive(Debug, Args, Clone)]
#[command(group(ArgGroup::new("scope").required(true).multiple(true).args(["surface", "channel", "all"])))]
pub struct KillSwitchArgs {
    /// on or off.
    #[arg(value_enum)]
    action: SwitchAction,
    #[command(flatten)]
    addr: AddrArgs,
    /// The surface (home, product_page, cart, checkout, search, store_aisle, kiosk_idle, category_page, email).
    #[arg(long)]
    surface: Option<String>,
    /// The channel (web, app, kiosk, pos, associate_handheld, email, unspecified).
    #[arg(long)]
    channel: Option<String>,
    /// Every surface and channel (off --all: turn every switch off).
    #[arg(long, conflicts_with_all = ["surface", "channel"])]
    all: bool,
    /// The rung decisions answer from [default: RULES].
    #[arg(long, value_enum, ignore_case = true)]
    tier: Option<SwitchTierArg>,
    /// Why (required with on; at most 500 bytes; decisions show it).
    #[arg(long, required_if_eq("action", "on"), default_value = "")]
    reason: String,
}

/// The JSON form of a kill switch.
fn switch_json(s: &pb::KillSwitch) -> Value {
    json!({
        "surface": s.surface, "channel": s.channel, "tier": tier_name(s.tier), "reason": s.reason,
        "caller": s.caller, "set_at_ms": s.set_at_ms,
    })
}

/// One line per kill switch.
fn switch_lines(switches: &[pb::KillSwitch]) -> String {
    if switches.is_empty() {
        return "  (none)".into();
    }
    let or_any = |s: &str| if s.is_empty() { "any" } else { s }.to_string();
    switches
        .iter()
        .map(|s| {
            format!(
                "  surface {:<14} channel {:<18} -> {:<7} {:?} (by {})",
                or_any(&s.surface),
                or_any(&s.channel),
                tier_name(s.tier),
                s.reason,
                s.caller
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `aisle kill-switch on|off`: prints the switches in force afterwards.
///
/// # Errors
/// Connection failures and error statuses (an invalid request names its field).
pub async fn kill_switch(a: KillSwitchArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a.addr).await?);
    let tier = match a.tier {
        None => pb::FallbackTier::Unspecified,
        Some(SwitchTierArg::Rules) => pb::FallbackTier::Rules,
        Some(SwitchTierArg::Generic) => pb::FallbackTier::Generic,
    };
    let r = client
        .set_kill_switch(with_token(
            &a.addr,
            pb::SetKillSwitchRequest {
                on: a.action == SwitchAction::On,
                surface: a.surface.clone().unwrap_or_default(),
                channel: a.channel.clone().unwrap_or_default(),
                all: a.all,
                tier: tier as i32,
                reason: a.reason.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    let value = json!({
        "changed": r.changed,
        "revision": r.revision,
        "scope": r.scope,
        "served_by": r.served_by,
        "applied_by": r.applied_by,
        "pending": r.pending,
        "active": r.active.iter().map(switch_json).collect::<Vec<_>>(),
    });
    print(a.addr.json, &value, || {
        let mut out = format!(
            "kill switches in force (revision {}{}):\n{}",
            r.revision,
            if r.changed { "" } else { ", unchanged" },
            switch_lines(&r.active)
        );
        if r.scope == "node" {
            out.push_str(&format!(
                "\nstatic mode: applied on {} only, in memory (lost at restart)",
                r.served_by
            ));
        } else {
            out.push_str(&format!("\napplied by: {}", r.applied_by.join(", ")));
            if !r.pending.is_empty() {
                out.push_str(&format!(
                    "\nnot confirmed yet (they apply it when their etcd watch delivers it): {}",
                    r.pending.join(", ")
                ));
            }
        }
        out
    });
    Ok(())
}

/// `aisle describe`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn describe(a: ForgetArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a.addr).await?);
    let r = client
        .describe_shopper(with_token(
            &a.addr,
            pb::DescribeShopperRequest {
                shopper_id: a.shopper.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    let value = json!({
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
    });
    print(a.addr.json, &value, || {
        let mut out = if r.has_session {
            format!(
                "{} (pseudonym {}) on {}: {} events; recent {:?}; cart {:?}; purchased {:?}; categories {:?}; \
                 consent {:?}",
                a.shopper,
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
                a.shopper, r.shopper_ref, r.served_by
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
    });
    Ok(())
}

async fn cluster_status(a: &AddrArgs, shopper: &str) -> anyhow::Result<pb::ClusterStatusResponse> {
    let mut client = AdminServiceClient::new(connect(a).await?);
    Ok(client
        .cluster_status(with_token(
            a,
            pb::ClusterStatusRequest {
                shopper_id: shopper.to_string(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner())
}

/// `aisle cluster`.
///
/// # Errors
/// Connection failures and error statuses.
pub async fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let r = cluster_status(&a.addr, &a.shopper).await?;
    let versions_json = |v: &Option<pb::FleetVersions>| {
        v.as_ref().map(|v| {
            json!({
                "default_model": v.default_model, "candidate_model": v.candidate_model,
                "previous_model": v.previous_model, "rules": v.rules, "experiments": v.experiments,
            })
        })
    };
    let value = json!({
        "node_id": r.node_id,
        "mode": r.mode,
        "member": r.member,
        "epoch": r.epoch,
        "members": r.members.iter().map(|m| json!({
            "node_id": m.node_id, "addr": m.addr, "incarnation": m.incarnation, "leaving": m.leaving,
            "versions": versions_json(&m.versions), "skew": m.skew,
        })).collect::<Vec<_>>(),
        "shopper_owner": r.shopper_owner,
        "awaiting_handoff": r.awaiting_handoff,
        "desired": r.desired.as_ref().map(|d| json!({
            "versions": versions_json(&d.versions), "revision": d.revision, "change": d.change,
            "changed_by": d.changed_by, "changed_at_ms": d.changed_at_ms,
        })),
        "version_skew": r.version_skew,
        "kill_switches": r.kill_switches.iter().map(switch_json).collect::<Vec<_>>(),
        "kill_switch_revision": r.kill_switch_revision,
    });
    print(a.addr.json, &value, || {
        let mut out = format!(
            "{} ({}): {} at epoch {}\n",
            r.node_id,
            r.mode,
            if r.member {
                "member"
            } else {
                "NOT a member (joining or fenced)"
            },
            r.epoch
        );
        for m in &r.members {
            out.push_str(&format!(
                "  {:<16} {:<28} incarnation {}{}\n",
                m.node_id,
                m.addr,
                m.incarnation,
                if m.leaving { " (leaving)" } else { "" }
            ));
        }
        if !a.shopper.is_empty() {
            out.push_str(&format!("owner of {}: {}\n", a.shopper, r.shopper_owner));
        }
        out.push_str(&versions_table(&r));
        out.push_str(&format!(
            "kill switches (revision {}):\n{}\n",
            r.kill_switch_revision,
            switch_lines(&r.kill_switches)
        ));
        out.trim_end().to_string()
    });
    Ok(())
}

/// What every member serves, side by side with the fleet's record; skewed fields marked `*`.
fn versions_table(r: &pb::ClusterStatusResponse) -> String {
    let row = |name: &str, v: Option<&pb::FleetVersions>, skew: &[String]| {
        let cell = |field: &str, value: Option<&str>| {
            let value = match value {
                Some("") => "-",
                Some(v) => v,
                None => "?",
            };
            let mark = if skew.iter().any(|s| s == field || s == "unknown") {
                "*"
            } else {
                ""
            };
            format!("{value}{mark}")
        };
        format!(
            "  {:<16} {:<28} {:<28} {:<24} {}\n",
            name,
            cell("default_model", v.map(|v| v.default_model.as_str())),
            cell("candidate_model", v.map(|v| v.candidate_model.as_str())),
            cell("rules", v.map(|v| v.rules.as_str())),
            cell("experiments", v.map(|v| v.experiments.as_str())),
        )
    };
    let mut out = format!(
        "versions:\n  {:<16} {:<28} {:<28} {:<24} {}\n",
        "", "default model", "candidate model", "rules", "experiments"
    );
    if let Some(d) = &r.desired {
        out.push_str(&row(
            &format!("(record #{})", d.revision),
            d.versions.as_ref(),
            &[],
        ));
    }
    for m in &r.members {
        out.push_str(&row(&m.node_id, m.versions.as_ref(), &m.skew));
    }
    if r.version_skew {
        out.push_str(if r.desired.is_some() {
            "  SKEW: members marked * serve other versions than the record\n"
        } else {
            "  SKEW: members marked * serve other versions than this node\n"
        });
    }
    out
}

/// `aisle model promote|rollback`: in etcd mode, changes the fleet's versions record, which every member follows
/// (prints where each member is); in static mode, switches the node at `--addr`.
///
/// # Errors
/// Connection failures and error statuses (members already switched stay switched; the message says which).
pub async fn model(a: ModelArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(&a.addr).await?);
    let r = match a.action {
        ModelAction::Promote => {
            client
                .promote_model(with_token(&a.addr, pb::PromoteModelRequest {})?)
                .await
        }
        ModelAction::Rollback => {
            client
                .rollback_model(with_token(&a.addr, pb::RollbackModelRequest {})?)
                .await
        }
    }
    .map_err(status)?
    .into_inner();
    let value = json!({
        "default_model": r.default_model,
        "switched": r.members.iter().map(|m| json!({
            "node_id": m.node_id, "default_model": m.default_model, "converged": m.converged,
        })).collect::<Vec<_>>(),
    });
    print(a.addr.json, &value, || {
        r.members
            .iter()
            .map(|m| {
                format!(
                    "{}: default model {}{}",
                    m.node_id,
                    m.default_model,
                    if m.converged {
                        ""
                    } else {
                        " (not following the fleet's record yet: see `aisle cluster`)"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `aisle audit verify`: checks decision trails offline.
///
/// # Errors
/// The first bad record (file, line, seq and what is wrong), or an unreadable path.
pub fn audit_verify(paths: &[std::path::PathBuf], as_json: bool) -> anyhow::Result<()> {
    let report =
        crate::logs::journal::verify(paths).map_err(|e| anyhow::anyhow!("chain broken: {e}"))?;
    for c in &report.chains {
        let text = format!(
            "{}: intact, {} record(s) in {} segment(s), seq {}..={}{}{}{}",
            c.log.display(),
            c.records,
            c.segments,
            c.first_seq.unwrap_or(0),
            c.last_seq.unwrap_or(0),
            c.starts_at
                .map(|s| format!("; starts at seq {s} (earlier segments expired or removed)"))
                .unwrap_or_default(),
            if c.gaps > 0 {
                format!(
                    "; {} record(s) shed under load, stated in gap records",
                    c.gaps
                )
            } else {
                String::new()
            },
            if c.redacted > 0 {
                format!("; {} subject(s) erased", c.redacted)
            } else {
                String::new()
            },
        );
        let value = json!({
            "log": c.log.display().to_string(),
            "intact": true,
            "records": c.records,
            "segments": c.segments,
            "first_seq": c.first_seq,
            "last_seq": c.last_seq,
            "starts_at": c.starts_at,
            "gaps": c.gaps,
            "redacted": c.redacted,
            "head": c.head,
            "incidents": c.incidents.iter().map(|i| json!({
                "seq": i.seq, "file": i.file.display().to_string(), "reason": i.reason, "detail": i.detail,
            })).collect::<Vec<_>>(),
        });
        if as_json {
            println!("{value}");
        } else {
            println!("{text}");
            for i in &c.incidents {
                println!("  incident at seq {}: {} ({})", i.seq, i.reason, i.detail);
            }
        }
    }
    for s in &report.skipped {
        eprintln!("{}: not a chained log; skipped", s.display());
    }
    anyhow::ensure!(
        !report.chains.is_empty(),
        "no decision trail found in {paths:?}"
    );
    Ok(())
}
