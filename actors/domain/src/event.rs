//! What shoppers do, as the session actor and the trainer see it.

use serde::{Deserialize, Serialize};

use crate::TimestampMs;
use crate::catalog::ItemIdx;

/// The kind of a shopper event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Looked at an item.
    View,
    /// Searched.
    Search,
    /// Put an item in the cart.
    AddToCart,
    /// Took an item out of the cart.
    RemoveFromCart,
    /// Bought an item.
    Purchase,
    /// Walked into a store.
    StoreEnter,
    /// Left a store.
    StoreExit,
    /// Scanned a shelf label or item in an aisle.
    AisleScan,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [EventKind] = &[
        EventKind::View,
        EventKind::Search,
        EventKind::AddToCart,
        EventKind::RemoveFromCart,
        EventKind::Purchase,
        EventKind::StoreEnter,
        EventKind::StoreExit,
        EventKind::AisleScan,
    ];

    /// The lowercase name used in logs, metrics and event files.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Search => "search",
            EventKind::AddToCart => "add_to_cart",
            EventKind::RemoveFromCart => "remove_from_cart",
            EventKind::Purchase => "purchase",
            EventKind::StoreEnter => "store_enter",
            EventKind::StoreExit => "store_exit",
            EventKind::AisleScan => "aisle_scan",
        }
    }

    /// Whether the event must name an item.
    pub fn requires_item(self) -> bool {
        matches!(
            self,
            EventKind::View
                | EventKind::AddToCart
                | EventKind::RemoveFromCart
                | EventKind::Purchase
        )
    }

    /// Whether the event is an interaction with an item that says something about the shopper's interest.
    pub fn is_item_interaction(self) -> bool {
        matches!(
            self,
            EventKind::View | EventKind::AddToCart | EventKind::Purchase | EventKind::AisleScan
        )
    }

    /// How much the event says about interest, relative to a view (used for affinities and training weights).
    pub fn interest_weight(self) -> f32 {
        match self {
            EventKind::View | EventKind::AisleScan => 1.0,
            EventKind::AddToCart => 3.0,
            EventKind::Purchase => 5.0,
            _ => 0.0,
        }
    }
}

/// An item reference inside the node: a catalog index, or an item the catalog does not know (kept so the
/// session's sequence stays true, but it carries no category or price signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemRef {
    /// A catalog item.
    Known(ItemIdx),
    /// An item id the catalog does not know.
    Unknown,
}

impl ItemRef {
    /// The catalog index, when known.
    pub fn known(self) -> Option<ItemIdx> {
        match self {
            ItemRef::Known(idx) => Some(idx),
            ItemRef::Unknown => None,
        }
    }
}

/// A validated shopper event, resolved against the catalog, as the session actor applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShopperEvent {
    /// What happened.
    pub kind: EventKind,
    /// The item, for item events.
    pub item: Option<ItemRef>,
    /// The search query, for searches.
    pub query: Option<Box<str>>,
    /// Quantity for cart and purchase events (at least 1).
    pub quantity: u32,
    /// Unit price in cents; 0 when not given (the catalog price applies).
    pub price_cents: i64,
    /// The store, for in-store events.
    pub store_id: Option<Box<str>>,
    /// The aisle, for aisle scans.
    pub aisle: Option<Box<str>>,
    /// When it happened.
    pub ts_ms: TimestampMs,
    /// When the node received it, microseconds since the Unix epoch (for push latency).
    pub received_at_us: i64,
    /// A consent statement carried by the event, if any: `Some(false)` revokes (the session drops what it holds
    /// about the shopper and ignores their events until a grant), `Some(true)` grants.
    pub consent: Option<bool>,
    /// Consent assumed for the shopper while no statement is recorded: the node's default for the event's region,
    /// resolved when the event is validated so the session actor needs no configuration. It decides whether the
    /// event may be logged and whether assist suggestions about the shopper may be raised.
    pub default_consent: bool,
}

/// One event of a logged session, as the trainer reads it (external item ids, no catalog needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// External item id.
    pub item: String,
    /// What happened (only item interactions are logged for training).
    pub kind: EventKind,
    /// When.
    pub ts_ms: TimestampMs,
}

/// A logged session: the events of one shopper visit, in time order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedSession {
    /// The session's id in its source.
    pub id: String,
    /// The events, in time order.
    pub events: Vec<LoggedEvent>,
}

/// One tracked event as the node's event log writes it (one JSON object per line) and the trainer reads it: the
/// fields of the API's `TrackEvent`, with the type as its lowercase name and the time in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The shopper.
    pub shopper_id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The item, when the event has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub item_id: String,
    /// The search query.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Quantity (cart and purchase events).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quantity: u32,
    /// Unit price in major units, when given.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub price: f64,
    /// The store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_id: String,
    /// The aisle.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aisle: String,
    /// When it happened.
    pub ts_ms: TimestampMs,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records_read_as_json_lines() {
        let line = r#"{"shopper_id":"s1","type":"add_to_cart","item_id":"sku-1","quantity":2,"ts_ms":1700000000000}"#;
        let r: EventRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.kind, EventKind::AddToCart);
        assert_eq!(r.quantity, 2);
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
    }
}
