//! Request validation: every field checked before anything is applied, each error naming its field.
//!
//! Track batches are all-or-nothing: the whole batch is validated first, and if any event is invalid none is
//! applied.

use std::time::Duration;

use aisle_domain::MAX_ID_BYTES;
use aisle_domain::catalog::{Catalog, ItemIdx};
use aisle_domain::event::{EventKind, EventRecord, ItemRef, ShopperEvent};
use aisle_domain::request::{AgeBand, Channel, LoyaltyTier, ShopperAttributes, Surface};
use aisle_policy::{ConsentDefaults, MAX_REGION_BYTES};
use aisle_proto::v1 as pb;

use crate::engine::decision::DecideInput;
use crate::engine::kill_switch::{
    KillSwitch, MAX_REASON_BYTES, SwitchChange, SwitchKey, SwitchTier,
};
use crate::error::ApiError;

/// Default number of items in a decision.
pub const DEFAULT_LIMIT: usize = 10;
/// Most items in a decision.
pub const MAX_LIMIT: usize = 100;
/// Most candidates a storefront may give.
pub const MAX_CANDIDATES: usize = 1_000;
/// Most on-screen items.
pub const MAX_CONTEXT: usize = 100;
/// Most events in a Track batch.
pub const MAX_EVENTS: usize = 1_000;
/// Longest search query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Largest quantity in one event.
pub const MAX_QUANTITY: u32 = 10_000;
/// Earliest accepted event time: 2000-01-01T00:00:00Z.
const EARLIEST_MS: i64 = 946_684_800_000;

/// Checks an id: required or optional, at most 256 bytes, no control or bidi characters.
pub(crate) fn id(field: impl Fn() -> String, value: &str, required: bool) -> Result<(), ApiError> {
    if value.is_empty() && required {
        return Err(ApiError::invalid(field(), "required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid(
            field(),
            format!("longer than {MAX_ID_BYTES} bytes ({} bytes)", value.len()),
        ));
    }
    text(field, value)
}

/// Checks free text (and ids): no control characters (NUL, newlines, escapes) and no bidirectional controls.
pub(crate) fn text(field: impl Fn() -> String, value: &str) -> Result<(), ApiError> {
    match aisle_domain::forbidden_char(value) {
        None => Ok(()),
        Some(c) => Err(ApiError::invalid(
            field(),
            format!(
                "holds the control or bidirectional character U+{:04X}, which is not allowed",
                c as u32
            ),
        )),
    }
}

fn surface(value: i32) -> Result<Surface, ApiError> {
    Ok(match pb::Surface::try_from(value) {
        Ok(pb::Surface::Unspecified) => return Err(ApiError::invalid("surface", "required")),
        Ok(pb::Surface::Home) => Surface::Home,
        Ok(pb::Surface::ProductPage) => Surface::ProductPage,
        Ok(pb::Surface::Cart) => Surface::Cart,
        Ok(pb::Surface::Checkout) => Surface::Checkout,
        Ok(pb::Surface::Search) => Surface::Search,
        Ok(pb::Surface::StoreAisle) => Surface::StoreAisle,
        Ok(pb::Surface::KioskIdle) => Surface::KioskIdle,
        Ok(pb::Surface::CategoryPage) => Surface::CategoryPage,
        Ok(pb::Surface::Email) => Surface::Email,
        Err(_) => {
            return Err(ApiError::invalid(
                "surface",
                format!("unknown value {value}"),
            ));
        }
    })
}

fn channel(value: i32) -> Result<Channel, ApiError> {
    Ok(match pb::Channel::try_from(value) {
        Ok(pb::Channel::Unspecified) => Channel::Unspecified,
        Ok(pb::Channel::Web) => Channel::Web,
        Ok(pb::Channel::App) => Channel::App,
        Ok(pb::Channel::Kiosk) => Channel::Kiosk,
        Ok(pb::Channel::Pos) => Channel::Pos,
        Ok(pb::Channel::AssociateHandheld) => Channel::AssociateHandheld,
        Ok(pb::Channel::Email) => Channel::Email,
        Err(_) => {
            return Err(ApiError::invalid(
                "channel",
                format!("unknown value {value}"),
            ));
        }
    })
}

fn attributes(a: Option<&pb::ShopperAttributes>) -> Result<ShopperAttributes, ApiError> {
    let Some(a) = a else {
        return Ok(ShopperAttributes::default());
    };
    let age_band = match pb::AgeBand::try_from(a.age_band) {
        Ok(pb::AgeBand::Unspecified) => AgeBand::Unknown,
        Ok(pb::AgeBand::Under18) => AgeBand::Under18,
        Ok(pb::AgeBand::AgeBand18To20) => AgeBand::From18To20,
        Ok(pb::AgeBand::AgeBand21Plus) => AgeBand::From21,
        Err(_) => {
            return Err(ApiError::invalid(
                "attributes.age_band",
                format!("unknown value {}", a.age_band),
            ));
        }
    };
    let loyalty_tier = match pb::LoyaltyTier::try_from(a.loyalty_tier) {
        Ok(pb::LoyaltyTier::Unspecified | pb::LoyaltyTier::None) => LoyaltyTier::None,
        Ok(pb::LoyaltyTier::Silver) => LoyaltyTier::Silver,
        Ok(pb::LoyaltyTier::Gold) => LoyaltyTier::Gold,
        Ok(pb::LoyaltyTier::Platinum) => LoyaltyTier::Platinum,
        Err(_) => {
            return Err(ApiError::invalid(
                "attributes.loyalty_tier",
                format!("unknown value {}", a.loyalty_tier),
            ));
        }
    };
    Ok(ShopperAttributes {
        age_verified: a.age_verified,
        age_band,
        loyalty_tier,
    })
}

/// Resolves item ids (checked), returning the known ones and how many the catalog does not know.
fn items(
    field: &str,
    ids: &[String],
    max: usize,
    catalog: &Catalog,
) -> Result<(Vec<ItemIdx>, usize), ApiError> {
    if ids.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("at most {max} items, got {}", ids.len()),
        ));
    }
    let mut known = Vec::with_capacity(ids.len());
    let mut unknown = 0;
    for (i, item) in ids.iter().enumerate() {
        id(|| format!("{field}[{i}]"), item, true)?;
        match catalog.lookup(item) {
            Some(idx) => known.push(idx),
            None => unknown += 1,
        }
    }
    Ok((known, unknown))
}

/// Validates a Decide request against the catalog.
///
/// # Errors
/// The first invalid field.
pub fn decide(req: &pb::DecideRequest, catalog: &Catalog) -> Result<DecideInput, ApiError> {
    id(|| "shopper_id".into(), &req.shopper_id, true)?;
    let surface = surface(req.surface)?;
    let channel = channel(req.channel)?;
    let limit = match req.limit as usize {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(ApiError::invalid(
                "limit",
                format!("at most {MAX_LIMIT}, got {n}"),
            ));
        }
        n => n,
    };
    let (candidates, unknown_candidates) = if req.candidate_item_ids.is_empty() {
        (None, 0)
    } else {
        let (known, unknown) = items(
            "candidate_item_ids",
            &req.candidate_item_ids,
            MAX_CANDIDATES,
            catalog,
        )?;
        (Some(known), unknown)
    };
    let (context, _) = items(
        "context_item_ids",
        &req.context_item_ids,
        MAX_CONTEXT,
        catalog,
    )?;
    id(|| "store_id".into(), &req.store_id, false)?;
    id(|| "region".into(), &req.region, false)?;
    id(|| "device".into(), &req.device, false)?;
    id(|| "request_id".into(), &req.request_id, false)?;
    Ok(DecideInput {
        shopper_id: req.shopper_id.clone(),
        surface,
        channel,
        limit,
        candidates,
        unknown_candidates,
        context,
        consent: req.consent,
        attributes: attributes(req.attributes.as_ref())?,
        store_id: req.store_id.clone(),
        region: req.region.clone(),
        device: req.device.clone(),
        request_id: req.request_id.clone(),
        client: String::new(),
    })
}

fn event_kind(value: i32, field: impl Fn() -> String) -> Result<EventKind, ApiError> {
    Ok(match pb::EventType::try_from(value) {
        Ok(pb::EventType::Unspecified) => return Err(ApiError::invalid(field(), "required")),
        Ok(pb::EventType::View) => EventKind::View,
        Ok(pb::EventType::Search) => EventKind::Search,
        Ok(pb::EventType::AddToCart) => EventKind::AddToCart,
        Ok(pb::EventType::RemoveFromCart) => EventKind::RemoveFromCart,
        Ok(pb::EventType::Purchase) => EventKind::Purchase,
        Ok(pb::EventType::StoreEnter) => EventKind::StoreEnter,
        Ok(pb::EventType::StoreExit) => EventKind::StoreExit,
        Ok(pb::EventType::AisleScan) => EventKind::AisleScan,
        Err(_) => {
            return Err(ApiError::invalid(
                field(),
                format!("unknown event type {value}"),
            ));
        }
    })
}

/// A validated Track batch: events grouped by shopper (first-appearance order), each shopper's in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackBatch {
    /// (shopper, events).
    pub groups: Vec<(String, Vec<ShopperEvent>)>,
    /// The same events as event-log records, group by group.
    pub records: Vec<Vec<EventRecord>>,
}

/// Validates a whole Track batch against the catalog; nothing is applied unless every event is valid. Each event
/// carries the consent default of its region, from `consent`.
///
/// # Errors
/// The first invalid field, e.g. `events[3].item_id: required`.
pub fn track(
    req: &pb::TrackRequest,
    catalog: &Catalog,
    now_ms: i64,
    received_at_us: i64,
    max_future: Duration,
    consent: &ConsentDefaults,
) -> Result<TrackBatch, ApiError> {
    if req.events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "at least one event is required",
        ));
    }
    if req.events.len() > MAX_EVENTS {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_EVENTS} events, got {}", req.events.len()),
        ));
    }
    id(|| "request_id".into(), &req.request_id, false)?;
    let clock = Clock {
        now_ms,
        received_at_us,
        max_future,
    };
    let mut groups: Vec<(String, Vec<ShopperEvent>)> = Vec::new();
    let mut records: Vec<Vec<EventRecord>> = Vec::new();
    for (i, e) in req.events.iter().enumerate() {
        let (event, record) = track_event(i, e, catalog, &clock, consent)?;
        match groups.iter().position(|g| g.0 == e.shopper_id) {
            Some(k) => {
                groups[k].1.push(event);
                records[k].push(record);
            }
            None => {
                groups.push((e.shopper_id.clone(), vec![event]));
                records.push(vec![record]);
            }
        }
    }
    Ok(TrackBatch { groups, records })
}

/// The times a Track batch is checked against.
struct Clock {
    now_ms: i64,
    received_at_us: i64,
    max_future: Duration,
}

/// Validates event `i` of a batch: the event to apply and its event-log record.
fn track_event(
    i: usize,
    e: &pb::TrackEvent,
    catalog: &Catalog,
    clock: &Clock,
    consent: &ConsentDefaults,
) -> Result<(ShopperEvent, EventRecord), ApiError> {
    let f = |name: &str| format!("events[{i}].{name}");
    id(|| f("shopper_id"), &e.shopper_id, true)?;
    let kind = event_kind(e.r#type, || f("type"))?;
    id(|| f("item_id"), &e.item_id, kind.requires_item())?;
    let item = (!e.item_id.is_empty()).then(|| {
        catalog
            .lookup(&e.item_id)
            .map_or(ItemRef::Unknown, ItemRef::Known)
    });
    if kind == EventKind::Search && e.query.is_empty() {
        return Err(ApiError::invalid(f("query"), "required for SEARCH"));
    }
    if e.query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid(
            f("query"),
            format!("longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    text(|| f("query"), &e.query)?;
    let store_required = matches!(kind, EventKind::StoreEnter | EventKind::AisleScan);
    id(|| f("store_id"), &e.store_id, store_required)?;
    if kind == EventKind::AisleScan && e.aisle.is_empty() {
        return Err(ApiError::invalid(f("aisle"), "required for AISLE_SCAN"));
    }
    id(|| f("aisle"), &e.aisle, false)?;
    if e.region.len() > MAX_REGION_BYTES {
        return Err(ApiError::invalid(
            f("region"),
            format!(
                "longer than {MAX_REGION_BYTES} bytes ({} bytes)",
                e.region.len()
            ),
        ));
    }
    if e.quantity > MAX_QUANTITY {
        return Err(ApiError::invalid(
            f("quantity"),
            format!("at most {MAX_QUANTITY}, got {}", e.quantity),
        ));
    }
    if !e.price.is_finite() || e.price < 0.0 || e.price > 10_000_000.0 {
        return Err(ApiError::invalid(
            f("price"),
            "must be between 0 and 10,000,000",
        ));
    }
    let ts_ms = match &e.timestamp {
        None => clock.now_ms,
        Some(t) => event_time(t, clock, || f("timestamp"))?,
    };
    let event = ShopperEvent {
        kind,
        item,
        query: (!e.query.is_empty()).then(|| e.query.as_str().into()),
        quantity: e.quantity.max(1),
        price_cents: (e.price * 100.0).round() as i64,
        store_id: (!e.store_id.is_empty()).then(|| e.store_id.as_str().into()),
        aisle: (!e.aisle.is_empty()).then(|| e.aisle.as_str().into()),
        ts_ms,
        received_at_us: clock.received_at_us,
        consent: e.consent,
        default_consent: consent.for_region(&e.region),
    };
    let record = EventRecord {
        shopper_id: e.shopper_id.clone(),
        kind,
        item_id: e.item_id.clone(),
        query: e.query.clone(),
        quantity: e.quantity,
        price: e.price,
        store_id: e.store_id.clone(),
        aisle: e.aisle.clone(),
        ts_ms,
    };
    Ok((event, record))
}

/// An event's own time in milliseconds: not too far in the future, not before 2000.
fn event_time(
    t: &prost_types::Timestamp,
    clock: &Clock,
    field: impl Fn() -> String,
) -> Result<i64, ApiError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid(field(), "nanos out of range"));
    }
    let ms = t
        .seconds
        .checked_mul(1_000)
        .and_then(|s| s.checked_add(t.nanos as i64 / 1_000_000))
        .ok_or_else(|| ApiError::invalid(field(), "out of range"))?;
    if ms > clock.now_ms + clock.max_future.as_millis() as i64 {
        return Err(ApiError::invalid(
            field(),
            format!("more than {} s in the future", clock.max_future.as_secs()),
        ));
    }
    if ms < EARLIEST_MS {
        return Err(ApiError::invalid(field(), "before 2000-01-01"));
    }
    Ok(ms)
}

/// A name of `T` given as text (`surface`, `channel` of a kill switch): empty means any.
fn named<T: Copy>(
    field: &str,
    value: &str,
    parse: fn(&str) -> Option<T>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Option<T>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    parse(&value.to_ascii_lowercase()).map(Some).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
        let shown: String = value.chars().take(64).collect();
        ApiError::invalid(
            field,
            format!("unknown {field} {shown:?} (one of {})", names.join(", ")),
        )
    })
}

/// Validates a SetKillSwitch request from `caller` at `now_ms`.
///
/// # Errors
/// The first invalid field: an unknown surface, channel or tier, `all` missing or given with a surface or channel,
/// a missing or too long reason.
pub fn kill_switch(
    req: &pb::SetKillSwitchRequest,
    caller: &str,
    now_ms: i64,
) -> Result<SwitchChange, ApiError> {
    let key = SwitchKey {
        surface: named(
            "surface",
            &req.surface,
            Surface::parse,
            Surface::ALL,
            Surface::as_str,
        )?,
        channel: named(
            "channel",
            &req.channel,
            Channel::parse,
            Channel::ALL,
            Channel::as_str,
        )?,
    };
    let unscoped = key.surface.is_none() && key.channel.is_none();
    if req.all && !unscoped {
        return Err(ApiError::invalid(
            "all",
            "not with surface or channel (all means every surface and channel)",
        ));
    }
    if !req.all && unscoped {
        return Err(ApiError::invalid(
            "all",
            "required when neither surface nor channel is given (an explicit switch for every decision)",
        ));
    }
    if req.reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::invalid(
            "reason",
            format!(
                "longer than {MAX_REASON_BYTES} bytes ({} bytes)",
                req.reason.len()
            ),
        ));
    }
    text(|| "reason".into(), &req.reason)?;
    if !req.on {
        return Ok(if req.all {
            SwitchChange::AllOff
        } else {
            SwitchChange::Off(key)
        });
    }
    if req.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "required to turn a switch on (say why: decisions show it)",
        ));
    }
    let tier = match pb::FallbackTier::try_from(req.tier) {
        Ok(pb::FallbackTier::Unspecified | pb::FallbackTier::Rules) => SwitchTier::Rules,
        Ok(pb::FallbackTier::Generic) => SwitchTier::Generic,
        Ok(pb::FallbackTier::Fresh | pb::FallbackTier::Cached) => {
            return Err(ApiError::invalid(
                "tier",
                "must be FALLBACK_TIER_RULES or FALLBACK_TIER_GENERIC (a switch keeps decisions off the model)",
            ));
        }
        Err(_) => {
            return Err(ApiError::invalid(
                "tier",
                format!("unknown tier {}", req.tier),
            ));
        }
    };
    Ok(SwitchChange::On(KillSwitch {
        key,
        tier,
        reason: req.reason.clone(),
        caller: caller.to_string(),
        set_at_ms: now_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_switch_requests_are_checked_field_by_field() {
        let on = |surface: &str, channel: &str, all: bool, reason: &str| pb::SetKillSwitchRequest {
            on: true,
            surface: surface.into(),
            channel: channel.into(),
            all,
            reason: reason.into(),
            ..Default::default()
        };
        let field = |r: Result<SwitchChange, ApiError>| match r {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let ok = kill_switch(&on("HOME", "", false, "model drift"), "token:ops", 7).unwrap();
        assert_eq!(
            ok,
            SwitchChange::On(KillSwitch {
                key: SwitchKey {
                    surface: Some(Surface::Home),
                    channel: None
                },
                tier: SwitchTier::Rules,
                reason: "model drift".into(),
                caller: "token:ops".into(),
                set_at_ms: 7,
            })
        );
        assert_eq!(
            field(kill_switch(&on("attic", "", false, "x"), "c", 0)),
            "surface"
        );
        assert_eq!(
            field(kill_switch(&on("", "fax", false, "x"), "c", 0)),
            "channel"
        );
        assert_eq!(field(kill_switch(&on("", "", false, "x"), "c", 0)), "all");
        assert_eq!(
            field(kill_switch(&on("home", "", true, "x"), "c", 0)),
            "all"
        );
        assert_eq!(
            field(kill_switch(&on("home", "", false, " "), "c", 0)),
            "reason"
        );
        let long = "r".repeat(MAX_REASON_BYTES + 1);
        assert_eq!(
            field(kill_switch(&on("home", "", false, &long), "c", 0)),
            "reason"
        );
        let mut fresh = on("home", "web", false, "x");
        fresh.tier = pb::FallbackTier::Fresh as i32;
        assert_eq!(field(kill_switch(&fresh, "c", 0)), "tier");
        fresh.tier = 42;
        assert_eq!(field(kill_switch(&fresh, "c", 0)), "tier");
        // Off needs no reason; off with all turns every switch off.
        let off = pb::SetKillSwitchRequest {
            all: true,
            ..Default::default()
        };
        assert_eq!(kill_switch(&off, "c", 0).unwrap(), SwitchChange::AllOff);
    }

    fn catalog() -> Catalog {
        Catalog::plain("t", ["a".to_string(), "b".to_string()])
    }

    fn event(shopper: &str, kind: pb::EventType, item: &str) -> pb::TrackEvent {
        pb::TrackEvent {
            shopper_id: shopper.into(),
            r#type: kind as i32,
            item_id: item.into(),
            ..Default::default()
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn check(events: Vec<pb::TrackEvent>) -> Result<TrackBatch, ApiError> {
        track(
            &pb::TrackRequest {
                events,
                request_id: String::new(),
            },
            &catalog(),
            NOW,
            0,
            Duration::from_secs(300),
            &ConsentDefaults {
                fallback: false,
                regions: [("US".to_string(), true)].into_iter().collect(),
            },
        )
    }

    #[test]
    fn batches_group_by_shopper_in_order() {
        let b = check(vec![
            event("s1", pb::EventType::View, "a"),
            event("s2", pb::EventType::View, "b"),
            event("s1", pb::EventType::AddToCart, "zzz"),
        ])
        .unwrap();
        assert_eq!(b.groups.len(), 2);
        assert_eq!(b.groups[0].1.len(), 2);
        assert_eq!(b.groups[0].1[1].item, Some(ItemRef::Unknown));
        assert_eq!(b.groups[0].1[0].ts_ms, NOW);
    }

    #[test]
    fn each_event_carries_its_regions_consent_default() {
        let in_region = |region: &str| pb::TrackEvent {
            region: region.into(),
            ..event("s", pb::EventType::View, "a")
        };
        let b = check(vec![
            in_region("US-CA"),
            in_region("EU"),
            in_region(""),
            in_region(&"U".repeat(64)),
        ])
        .unwrap();
        let defaults: Vec<bool> = b.groups[0].1.iter().map(|e| e.default_consent).collect();
        assert_eq!(defaults, [true, false, false, false]);
    }

    #[test]
    fn every_invalid_event_names_its_field() {
        let long = "x".repeat(300);
        let mut future = event("s", pb::EventType::View, "a");
        future.timestamp = Some(prost_types::Timestamp {
            seconds: NOW / 1000 + 3_600,
            nanos: 0,
        });
        let cases: Vec<(pb::TrackEvent, &str)> = vec![
            (
                event("", pb::EventType::View, "a"),
                "events[1].shopper_id: required",
            ),
            (
                event("s", pb::EventType::Unspecified, "a"),
                "events[1].type: required",
            ),
            (
                pb::TrackEvent {
                    r#type: 42,
                    ..event("s", pb::EventType::View, "a")
                },
                "events[1].type: unknown event type 42",
            ),
            (
                event("s", pb::EventType::View, ""),
                "events[1].item_id: required",
            ),
            (
                event("s", pb::EventType::View, &long),
                "events[1].item_id: longer than 256 bytes",
            ),
            (
                event(&long, pb::EventType::View, "a"),
                "events[1].shopper_id: longer than 256 bytes",
            ),
            (
                event("s", pb::EventType::Search, ""),
                "events[1].query: required",
            ),
            (
                event("s", pb::EventType::StoreEnter, ""),
                "events[1].store_id: required",
            ),
            (future, "events[1].timestamp: more than 300 s in the future"),
            (
                pb::TrackEvent {
                    region: "R".repeat(65),
                    ..event("s", pb::EventType::View, "a")
                },
                "events[1].region: longer than 64 bytes (65 bytes)",
            ),
        ];
        for (bad, expected) in cases {
            let err = check(vec![event("ok", pb::EventType::View, "a"), bad]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().starts_with(expected), "{err} vs {expected}");
        }
        let err = check(
            (0..1_001)
                .map(|_| event("s", pb::EventType::View, "a"))
                .collect(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "events: at most 1000 events, got 1001");
    }

    fn decide_req() -> pb::DecideRequest {
        pb::DecideRequest {
            shopper_id: "s".into(),
            surface: pb::Surface::Home as i32,
            ..Default::default()
        }
    }

    #[test]
    fn decide_requests_are_checked_field_by_field() {
        let c = catalog();
        let ok = decide(&decide_req(), &c).unwrap();
        assert_eq!(ok.limit, DEFAULT_LIMIT);
        assert!(ok.candidates.is_none());
        let cases: Vec<(pb::DecideRequest, &str)> = vec![
            (
                pb::DecideRequest {
                    shopper_id: String::new(),
                    ..decide_req()
                },
                "shopper_id: required",
            ),
            (
                pb::DecideRequest {
                    surface: 0,
                    ..decide_req()
                },
                "surface: required",
            ),
            (
                pb::DecideRequest {
                    limit: 101,
                    ..decide_req()
                },
                "limit: at most 100, got 101",
            ),
            (
                pb::DecideRequest {
                    candidate_item_ids: vec!["a".into(); 1_001],
                    ..decide_req()
                },
                "candidate_item_ids: at most 1000 items, got 1001",
            ),
            (
                pb::DecideRequest {
                    shopper_id: "s".repeat(257),
                    ..decide_req()
                },
                "shopper_id: longer than 256 bytes",
            ),
            (
                pb::DecideRequest {
                    channel: 99,
                    ..decide_req()
                },
                "channel: unknown value 99",
            ),
        ];
        for (bad, expected) in cases {
            let err = decide(&bad, &c).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} vs {expected}");
        }
        let with_unknown = pb::DecideRequest {
            candidate_item_ids: vec!["a".into(), "nope".into()],
            ..decide_req()
        };
        let input = decide(&with_unknown, &c).unwrap();
        assert_eq!(input.candidates, Some(vec![0]));
        assert_eq!(input.unknown_candidates, 1);
    }
}
