//! Turning session signals into assist events for store associates, with item suggestions that pass the
//! guardrails (in stock; nothing age-restricted, since the handheld cannot know the shopper's verified age).

use aisle_domain::catalog::{Catalog, ItemIdx};
use aisle_domain::hash::shopper_ref;
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_proto::v1::{AssistEvent, AssistKind, SuggestedItem};
use aisle_session::AssistSignal;

use crate::world::World;

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
    shopper_id: &str,
    world: &World,
    rules: &Rules,
    node_id: &str,
    received_at_us: i64,
) -> AssistEvent {
    let catalog = &world.catalog;
    let model = &world.default_model;
    let now = aisle_domain::now_ms();
    let ctx = PolicyContext {
        attributes: ShopperAttributes::default(),
        channel: Channel::AssociateHandheld,
        purchased: &[],
        now_ms: now,
        max_items_per_category: 0,
    };
    let guard = Guard::new(rules, catalog, ctx);
    let pick = |candidates: Vec<ItemIdx>, exclude: &[ItemIdx]| -> Vec<ItemIdx> {
        let filtered = candidates
            .into_iter()
            .filter(|i| !exclude.contains(i))
            .map(|i| (i, 0.0));
        guard
            .select(filtered, SUGGESTIONS, &mut ExclusionCounts::default())
            .into_iter()
            .map(|a| a.item)
            .collect()
    };
    let created_at = Some(prost_types::Timestamp {
        seconds: now.div_euclid(1000),
        nanos: (now.rem_euclid(1000) * 1_000_000) as i32,
    });
    let mut event = AssistEvent {
        created_at,
        produced_by: node_id.to_string(),
        source_received_at_us: received_at_us,
        ..Default::default()
    };
    match signal {
        AssistSignal::HighIntentCart {
            store_id,
            aisle,
            cart_value_cents,
            cart,
        } => {
            // Items bought together with what is in the cart.
            let mut candidates = Vec::new();
            for &c in cart {
                candidates.extend(model.ar.pairs(c as usize).map(|(t, _)| t));
            }
            let items = suggested(catalog, &pick(candidates, cart));
            let who = shopper_ref(shopper_id);
            let where_ = aisle
                .as_deref()
                .map(|a| format!(" in aisle {a}"))
                .unwrap_or_default();
            event.kind = AssistKind::HighIntentCart as i32;
            event.store_id = store_id.to_string();
            event.aisle = aisle.as_deref().unwrap_or_default().to_string();
            event.message = format!(
                "assist shopper {who}{where_}: cart worth ${:.2}; suggest {}",
                *cart_value_cents as f64 / 100.0,
                names(&items)
            );
            event.shopper_ref = who;
            event.suggested_items = items;
        }
        AssistSignal::Lingering {
            store_id,
            aisle,
            category,
            seen,
        } => {
            let top = model
                .category_top
                .get(*category as usize)
                .cloned()
                .unwrap_or_default();
            let items = suggested(catalog, &pick(top, seen));
            let who = shopper_ref(shopper_id);
            let where_ = aisle
                .as_deref()
                .map(|a| format!(" in aisle {a}"))
                .unwrap_or_default();
            event.kind = AssistKind::Lingering as i32;
            event.store_id = store_id.to_string();
            event.aisle = aisle.as_deref().unwrap_or_default().to_string();
            event.message = format!(
                "assist shopper {who}{where_}: browsing {} ({} items looked at); suggest {}",
                catalog.categories[*category as usize].name,
                seen.len(),
                names(&items)
            );
            event.shopper_ref = who;
            event.suggested_items = items;
        }
        AssistSignal::Replenish {
            store_id,
            item,
            stock,
        } => {
            let it = catalog.item(*item);
            event.kind = AssistKind::Replenish as i32;
            event.store_id = store_id.to_string();
            event.aisle = it.aisle.to_string();
            event.item_id = it.id.to_string();
            event.message = format!(
                "replenish {} ({}) in aisle {}: {stock} left",
                it.name, it.id, it.aisle
            );
        }
    }
    event
}
