//! What a session tells the rest of the node: the read-only view the ranking and the fallback rules work from.

use crate::TimestampMs;
use crate::catalog::{BrandIdx, CategoryIdx, ItemIdx};
use crate::event::{EventKind, ItemRef};

/// One item interaction of a session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewedItem {
    /// The item (unknown items keep their place in the sequence).
    pub item: ItemRef,
    /// View, add-to-cart, purchase or aisle scan.
    pub kind: EventKind,
    /// When.
    pub ts_ms: TimestampMs,
}

/// A snapshot of a shopper's session, as ranking sees it. The default value is an anonymous shopper.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionView {
    /// Item interactions, oldest first (bounded by the session's history capacity).
    pub items: Vec<ViewedItem>,
    /// Decayed category affinities, normalised to sum 1, strongest first.
    pub category_affinity: Vec<(CategoryIdx, f32)>,
    /// Decayed brand affinities, normalised to sum 1, strongest first.
    pub brand_affinity: Vec<(BrandIdx, f32)>,
    /// Items in the cart now.
    pub cart: Vec<ItemIdx>,
    /// Items bought in this session (never recommended again).
    pub purchased: Vec<ItemIdx>,
    /// Recent search queries, oldest first.
    pub searches: Vec<Box<str>>,
    /// Mean and standard deviation of the natural log of the prices of the items interacted with.
    pub log_price: Option<(f32, f32)>,
    /// Time of the latest event.
    pub last_event_ms: TimestampMs,
    /// The latest consent statement the shopper's events recorded, if any. A decision reads it with the session:
    /// a recorded refusal makes every later decision anonymous, whatever its request says, until a new grant.
    pub consent: Option<bool>,
}

impl SessionView {
    /// Whether the view holds nothing about the shopper.
    pub fn is_anonymous(&self) -> bool {
        self.items.is_empty()
            && self.cart.is_empty()
            && self.purchased.is_empty()
            && self.searches.is_empty()
    }

    /// The known items interacted with, oldest first.
    pub fn known_items(&self) -> impl DoubleEndedIterator<Item = ItemIdx> + '_ {
        self.items.iter().filter_map(|v| v.item.known())
    }
}
