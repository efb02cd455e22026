//! Turning session signals into assist events for store associates, with item suggestions that pass the
//! guardrails (in stock; nothing age-restricted, since the handheld cannot know the shopper's verified age).

use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx};
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_proto::v1::{AssistEvent, AssistKind, SuggestedItem};
use aisle_session::AssistSignal;

use super::Origin;
use crate::bundles::World;

/// Suggestions per assist event.
const SUGGESTIONS: usize = 3;

fn suggested(catalog: &Catalog, items: &[ItemIdx]) -> Vec<SuggestedItem> {
    items
        .iter()
        .map(|&i| {
            let it = catalog.item(i);
            SuggestedItem {
                item_id: it.id.to_string(),
                name: it.name.to_string(),
                category: catalog.category_of(i).name.clone(),
                aisle: it.aisle.to_string(),
            }
        })
        .collect()
}

fn names(s: &[SuggestedItem]) -> String {
    s.iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the assist event for a signal (its sequence is assigned when published).
pub fn assist_event(
    signal: &AssistSignal,
    origin: Origin<'_>,
    world: &World,
    rules: &Rules,
) -> AssistEvent {
    let now = aisle_domain::now_ms();
    let event = AssistEvent {
        created_at: Some(prost_types::Timestamp {
            seconds: now.div_euclid(1000),
            nanos: (now.rem_euclid(1000) * 1_000_000) as i32,
        }),
        produced_by: origin.node_id.to_string(),
        source_received_at_us: origin.received_at_us,
        ..Default::default()
    };
    let suggest = || Suggest {
        world,
        guard: Guard::new(
            rules,
            &world.catalog,
            PolicyContext {
                attributes: ShopperAttributes::default(),
                channel: Channel::AssociateHandheld,
                purchased: &[],
                now_ms: now,
                max_items_per_category: 0,
            },
        ),
    };
    match signal {
        AssistSignal::HighIntentCart {
            store_id,
            aisle,
            cart_value_cents,
            cart,
        } => {
            let (what, items) = high_intent_cart(&suggest(), *cart_value_cents, cart);
            let at = Place::of(origin.shopper_ref, store_id, aisle);
            shopper_event(event, AssistKind::HighIntentCart, &at, &what, items)
        }
        AssistSignal::Lingering {
            store_id,
            aisle,
            category,
            seen,
        } => {
            let (what, items) = lingering(&suggest(), *category, seen);
            let at = Place::of(origin.shopper_ref, store_id, aisle);
            shopper_event(event, AssistKind::Lingering, &at, &what, items)
        }
        AssistSignal::Replenish {
            store_id,
            item,
            stock,
        } => replenish_event(event, world, store_id, *item, *stock),
    }
}

/// A cart worth following up: items bought together with what is in it.
fn high_intent_cart(
    suggest: &Suggest<'_>,
    cart_value_cents: i64,
    cart: &[ItemIdx],
) -> (String, Vec<SuggestedItem>) {
    let mut candidates = Vec::new();
    for &c in cart {
        candidates.extend(
            suggest
                .world
                .default_model
                .ar
                .pairs(c as usize)
                .map(|(t, _)| t),
        );
    }
    let items = suggest.items(candidates, cart);
    let what = format!(
        "cart worth ${:.2}; suggest {}",
        cart_value_cents as f64 / 100.0,
        names(&items)
    );
    (what, items)
}

/// A shopper lingering over one category: its top sellers they have not looked at.
fn lingering(
    suggest: &Suggest<'_>,
    category: CategoryIdx,
    seen: &[ItemIdx],
) -> (String, Vec<SuggestedItem>) {
    let world = suggest.world;
    let top = world
        .default_model
        .category_top
        .get(category as usize)
        .cloned()
        .unwrap_or_default();
    let items = suggest.items(top, seen);
    let what = format!(
        "browsing {} ({} items looked at); suggest {}",
        world.catalog.categories[category as usize].name,
        seen.len(),
        names(&items)
    );
    (what, items)
}

/// An item running out in a store: restock it.
fn replenish_event(
    event: AssistEvent,
    world: &World,
    store_id: &str,
    item: ItemIdx,
    stock: u32,
) -> AssistEvent {
    let it = world.catalog.item(item);
    AssistEvent {
        kind: AssistKind::Replenish as i32,
        store_id: store_id.to_string(),
        aisle: it.aisle.to_string(),
        item_id: it.id.to_string(),
        message: format!(
            "replenish {} ({}) in aisle {}: {stock} left",
            it.name, it.id, it.aisle
        ),
        ..event
    }
}

/// Where an in-store shopper is.
struct Place<'a> {
    /// The shopper's pseudonym.
    shopper_ref: &'a str,
    store_id: &'a str,
    aisle: Option<&'a str>,
}

impl<'a> Place<'a> {
    fn of(shopper_ref: &'a str, store_id: &'a str, aisle: &'a Option<Box<str>>) -> Self {
        Self {
            shopper_ref,
            store_id,
            aisle: aisle.as_deref(),
        }
    }
}

/// Picks suggestions that pass the guardrails.
struct Suggest<'a> {
    world: &'a World,
    guard: Guard<'a>,
}

impl Suggest<'_> {
    /// Up to [`SUGGESTIONS`] admitted items of `candidates`, none of `exclude`.
    fn items(&self, candidates: Vec<ItemIdx>, exclude: &[ItemIdx]) -> Vec<SuggestedItem> {
        let filtered = candidates
            .into_iter()
            .filter(|i| !exclude.contains(i))
            .map(|i| (i, 0.0));
        let picked: Vec<ItemIdx> = self
            .guard
            .select(filtered, SUGGESTIONS, &mut ExclusionCounts::default())
            .into_iter()
            .map(|a| a.item)
            .collect();
        suggested(&self.world.catalog, &picked)
    }
}

/// An event about a shopper in a store: who (a pseudonymous reference), where, what to do.
fn shopper_event(
    event: AssistEvent,
    kind: AssistKind,
    at: &Place<'_>,
    what: &str,
    items: Vec<SuggestedItem>,
) -> AssistEvent {
    // Handhelds show the first 8 hex digits; the event carries the whole pseudonym (erasure finds events by it).
    let who = at.shopper_ref;
    let short = who.get(..8).unwrap_or(who);
    let where_ = at
        .aisle
        .map(|a| format!(" in aisle {a}"))
        .unwrap_or_default();
    AssistEvent {
        kind: kind as i32,
        store_id: at.store_id.to_string(),
        aisle: at.aisle.unwrap_or_default().to_string(),
        message: format!("assist shopper {short}{where_}: {what}"),
        shopper_ref: who.to_string(),
        suggested_items: items,
        ..event
    }
}
