//! Fixtures shared by the fuzz targets and the seed writer: a small catalog, a tiny model bound to it, a session,
//! and the checks every target runs on what a parser accepted.
//!
//! Everything here is deterministic (no clock in anything that ends up in a seed), so `seeds.sh` always writes the
//! same corpus.

use std::sync::{Arc, OnceLock};

use aisle_domain::bundle::{BinaryEnvelope, sha256_hex};
use aisle_domain::catalog::{Catalog, ItemIdx};
use aisle_domain::event::{EventKind, ItemRef, LoggedEvent, LoggedSession, ShopperEvent};
use aisle_domain::request::{AgeBand, Channel, LoyaltyTier, ShopperAttributes};
use aisle_domain::session::SessionView;
use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
use aisle_ranking::fit::{FitConfig, generators_only};
use aisle_ranking::{Model, Query, ServedModel, rank_local};
use aisle_session::{AssistRules, SessionContext, SessionLimits};

/// "Now" for every fixture and target (2027-01-15), so offers and event times are stable.
pub const NOW_MS: i64 = 1_800_000_000_000;

/// The fixture catalog as a bundle file: five categories (two age-restricted), a few brands, items in and out of
/// stock, and offers that are valid, expired, not started, tier- or channel-limited and above the discount cap.
pub fn catalog_json() -> String {
    let day = 86_400_000i64;
    serde_json::json!({
        "format_version": 1,
        "version": "fuzz-catalog-1",
        "created_at_ms": NOW_MS - day,
        "categories": [
            {"name": "Wine", "department": "Drinks"},
            {"name": "Beer", "department": "Drinks", "min_age": 21},
            {"name": "Socks", "department": "Clothing"},
            {"name": "Knives", "department": "Kitchen", "min_age": 18},
            {"name": "Hats", "department": "Clothing"}
        ],
        "items": [
            {"id": "wine-1", "name": "Red", "category": "Wine", "brand": "Vino", "price_cents": 1500, "stock": 30, "aisle": "A01"},
            {"id": "wine-2", "name": "White", "category": "Wine", "brand": "Vino", "price_cents": 1200, "stock": 12, "aisle": "A01"},
            {"id": "beer-1", "name": "Lager", "category": "Beer", "brand": "Hops", "price_cents": 299, "stock": 100, "aisle": "A02"},
            {"id": "sock-1", "name": "Wool", "category": "Socks", "brand": "Toes", "price_cents": 900, "stock": 50, "aisle": "B01"},
            {"id": "sock-2", "name": "Cotton", "category": "Socks", "brand": "Toes", "price_cents": 700, "stock": 50, "aisle": "B01"},
            {"id": "sock-3", "name": "Silk", "category": "Socks", "brand": "Luxe", "price_cents": 2500, "stock": 5, "aisle": "B01"},
            {"id": "sock-4", "name": "Sport", "category": "Socks", "brand": "Toes", "price_cents": 800, "stock": 40, "aisle": "B01"},
            {"id": "knife-1", "name": "Chef", "category": "Knives", "brand": "Edge", "price_cents": 6000, "stock": 8, "aisle": "C03"},
            {"id": "hat-1", "name": "Cap", "category": "Hats", "brand": "Luxe", "price_cents": 1800, "stock": 20, "aisle": "B02"},
            {"id": "hat-2", "name": "Beanie", "category": "Hats", "brand": "", "price_cents": 0, "stock": 20},
            {"id": "gone-1", "name": "Sold out", "category": "Hats", "brand": "Luxe", "price_cents": 1000, "stock": 0, "aisle": "B02"},
            {"id": "cheap-1", "name": "Low stock", "category": "Socks", "brand": "Toes", "price_cents": 20000, "stock": 2, "min_age": 0, "aisle": "B01"}
        ],
        "offers": [
            {"id": "ok", "item_id": "sock-1", "discount_percent": 20, "starts_at_ms": NOW_MS - day, "expires_at_ms": NOW_MS + day},
            {"id": "old", "item_id": "sock-2", "discount_percent": 10, "starts_at_ms": 0, "expires_at_ms": NOW_MS},
            {"id": "soon", "item_id": "sock-3", "discount_percent": 10, "starts_at_ms": NOW_MS + 1, "expires_at_ms": NOW_MS + day},
            {"id": "gold", "item_id": "wine-1", "discount_percent": 15, "min_loyalty": "gold",
             "starts_at_ms": 0, "expires_at_ms": NOW_MS + day},
            {"id": "app", "item_id": "hat-1", "discount_percent": 25, "channels": ["app", "kiosk"],
             "starts_at_ms": 0, "expires_at_ms": NOW_MS + day},
            {"id": "deep", "item_id": "knife-1", "discount_percent": 60, "starts_at_ms": 0, "expires_at_ms": NOW_MS + day}
        ]
    })
    .to_string()
}

/// A next version of the fixture catalog: one item gone, one new category and item, changed stock and offers.
pub fn next_catalog_json() -> String {
    serde_json::json!({
        "format_version": 1,
        "version": "fuzz-catalog-2",
        "categories": [
            {"name": "Socks", "department": "Clothing"},
            {"name": "Gloves", "department": "Clothing"},
            {"name": "Wine", "department": "Drinks", "min_age": 21}
        ],
        "items": [
            {"id": "glove-1", "name": "Mitt", "category": "Gloves", "brand": "Warm", "price_cents": 1100, "stock": 9},
            {"id": "sock-1", "name": "Wool", "category": "Socks", "brand": "Toes", "price_cents": 950, "stock": 4},
            {"id": "wine-1", "name": "Red", "category": "Wine", "brand": "Vino", "price_cents": 1500, "stock": 0}
        ],
        "offers": [
            {"id": "g", "item_id": "glove-1", "discount_percent": 5, "min_loyalty": "silver", "channels": ["web"],
             "starts_at_ms": 0, "expires_at_ms": NOW_MS + 10}
        ]
    })
    .to_string()
}

/// The fixture catalog, parsed once.
pub fn catalog() -> &'static Arc<Catalog> {
    static C: OnceLock<Arc<Catalog>> = OnceLock::new();
    C.get_or_init(|| {
        Arc::new(
            Catalog::from_json(catalog_json().as_bytes(), "fixture")
                .expect("the fixture catalog is valid"),
        )
    })
}

/// The embedded default rules, once.
pub fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(Rules::embedded)
}

fn logged(id: &str, events: &[(&str, EventKind)], start: i64) -> LoggedSession {
    LoggedSession {
        id: id.to_string(),
        events: events
            .iter()
            .enumerate()
            .map(|(k, (item, kind))| LoggedEvent {
                item: item.to_string(),
                kind: *kind,
                ts_ms: start + 60_000 * k as i64,
            })
            .collect(),
    }
}

/// A tiny model over the fixture catalog's items (and one item it does not know), with a non-trivial ranker.
pub fn tiny_model() -> Model {
    use EventKind::{AddToCart, Purchase, View};
    let h = 3_600_000;
    let t = NOW_MS - 48 * h;
    let sessions = vec![
        logged(
            "s1",
            &[
                ("sock-1", View),
                ("sock-2", View),
                ("sock-1", AddToCart),
                ("sock-1", Purchase),
            ],
            t,
        ),
        logged(
            "s2",
            &[
                ("wine-1", View),
                ("wine-2", View),
                ("beer-1", View),
                ("wine-1", AddToCart),
            ],
            t + h,
        ),
        logged(
            "s3",
            &[
                ("hat-1", View),
                ("sock-1", View),
                ("sock-3", View),
                ("hat-1", AddToCart),
            ],
            t + 2 * h,
        ),
        logged(
            "s4",
            &[("knife-1", View), ("ghost-1", View), ("knife-1", AddToCart)],
            t + 30 * h,
        ),
        logged(
            "s5",
            &[
                ("sock-2", View),
                ("sock-4", View),
                ("sock-2", View),
                ("cheap-1", View),
            ],
            t + 40 * h,
        ),
        logged(
            "s6",
            &[
                ("sock-1", View),
                ("hat-2", View),
                ("gone-1", View),
                ("sock-4", Purchase),
            ],
            t + 46 * h,
        ),
        logged(
            "s7",
            &[("wine-2", View), ("wine-1", View), ("wine-2", Purchase)],
            t + 47 * h,
        ),
    ];
    let config = FitConfig {
        version: "fuzz-model-1".into(),
        trained_by: "aisle-fuzz".into(),
        ..FitConfig::default()
    };
    let mut model = generators_only(&sessions, &config);
    model.header.created_at_ms = NOW_MS - h;
    let r = &mut model.data.ranker;
    let k = r.feature_names.len();
    r.mean = vec![0.0; k];
    r.scale = vec![1.0; k];
    r.weights = (0..k).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
    r.intercept = 0.5;
    model.data.validate().expect("the fixture model is valid");
    model
}

/// The tiny model bound to the fixture catalog, once.
pub fn served() -> &'static ServedModel {
    static S: OnceLock<ServedModel> = OnceLock::new();
    S.get_or_init(|| ServedModel::bind(&tiny_model(), catalog().clone(), "fixture"))
}

/// A model bundle around `payload` whose header is valid for it (the tiny model's header, with the payload's hash):
/// lets the fuzzer reach the payload decoder and the validation behind the hash check.
pub fn model_bundle(payload: &[u8]) -> Vec<u8> {
    static HEADER: OnceLock<aisle_ranking::model::ModelHeader> = OnceLock::new();
    let mut header = HEADER.get_or_init(|| tiny_model().header).clone();
    header.content_hash = sha256_hex(payload);
    BinaryEnvelope {
        header,
        payload: payload.to_vec(),
    }
    .to_bytes()
}

/// A shopper event.
pub fn event(kind: EventKind, item: Option<&str>, k: i64) -> ShopperEvent {
    let c = catalog();
    ShopperEvent {
        kind,
        item: item.map(|id| c.lookup(id).map_or(ItemRef::Unknown, ItemRef::Known)),
        query: None,
        quantity: 1,
        price_cents: 0,
        store_id: None,
        aisle: None,
        ts_ms: NOW_MS + 1_000 * k,
        received_at_us: 0,
        consent: None,
        default_consent: false,
    }
}

/// A visit to a store: enter with consent, look around, fill the cart, buy, search, scan, leave.
pub fn store_visit() -> Vec<ShopperEvent> {
    use EventKind::*;
    let mut enter = event(StoreEnter, None, 0);
    enter.store_id = Some("store-1".into());
    enter.consent = Some(true);
    let mut scan = event(AisleScan, Some("sock-2"), 2);
    scan.aisle = Some("B01".into());
    scan.store_id = Some("store-1".into());
    let mut cart = event(AddToCart, Some("cheap-1"), 6);
    cart.quantity = 2;
    let mut wine = event(AddToCart, Some("wine-1"), 7);
    wine.quantity = 3;
    wine.price_cents = 1400;
    let mut less = event(RemoveFromCart, Some("wine-1"), 8);
    less.quantity = 1;
    let mut search = event(Search, None, 10);
    search.query = Some("red socks".into());
    vec![
        enter,
        event(View, Some("sock-1"), 1),
        scan,
        event(View, Some("sock-3"), 3),
        event(View, Some("sock-4"), 4),
        event(View, Some("no-such-item"), 5),
        cart,
        wine,
        less,
        event(Purchase, Some("sock-1"), 9),
        search,
        event(View, Some("hat-1"), 11),
        event(StoreExit, None, 12),
    ]
}

/// A session after [`store_visit`] (minus the exit, so that it is still in the store).
pub fn sample_session() -> SessionContext {
    let mut s = SessionContext::new();
    let visit = store_visit();
    for e in &visit[..visit.len() - 1] {
        s.apply(
            e,
            catalog(),
            &SessionLimits::default(),
            &AssistRules::default(),
        );
    }
    s
}

/// The policy contexts a target evaluates under: an anonymous web shopper and a verified, platinum app shopper.
pub fn policy_contexts(purchased: &[ItemIdx]) -> [PolicyContext<'_>; 2] {
    [
        PolicyContext {
            attributes: ShopperAttributes::default(),
            channel: Channel::Web,
            purchased,
            now_ms: NOW_MS,
            max_items_per_category: 3,
        },
        PolicyContext {
            attributes: ShopperAttributes {
                age_verified: true,
                age_band: AgeBand::From21,
                loyalty_tier: LoyaltyTier::Platinum,
            },
            channel: Channel::App,
            purchased,
            now_ms: NOW_MS,
            max_items_per_category: 0,
        },
    ]
}

/// Ranks for an anonymous shopper and for `view` (with items on screen, and with candidates given), under `rules`,
/// and checks what every answer promises: at most `limit` items, no repeats, only admissible catalog items.
pub fn rank_all(served: &ServedModel, rules: &Rules, view: &SessionView) {
    let catalog = &served.catalog;
    let n = catalog.len() as ItemIdx;
    let on_screen: Vec<ItemIdx> = (0..n).step_by(3).collect();
    // As the node's validation gives them: known items only, repeats possible.
    let candidates: Vec<ItemIdx> = (0..n).rev().chain((0..n).take(2)).collect();
    let anonymous = SessionView::default();
    let queries = [
        (
            Query {
                view: &anonymous,
                context: &[],
                candidates: None,
            },
            10,
        ),
        (
            Query {
                view,
                context: &[],
                candidates: None,
            },
            10,
        ),
        (
            Query {
                view,
                context: &on_screen,
                candidates: None,
            },
            3,
        ),
        (
            Query {
                view,
                context: &[],
                candidates: Some(&candidates),
            },
            5,
        ),
    ];
    for ctx in policy_contexts(&view.purchased) {
        let guard = Guard::new(rules, catalog, ctx);
        for (query, limit) in &queries {
            let ranking = rank_local(served, query, &guard, *limit);
            check_answer(
                &guard,
                catalog,
                &ranking
                    .items
                    .iter()
                    .map(|r| r.admitted.item)
                    .collect::<Vec<_>>(),
                *limit,
            );
        }
    }
}

/// What every answer promises.
pub fn check_answer(guard: &Guard<'_>, catalog: &Catalog, items: &[ItemIdx], limit: usize) {
    assert!(
        items.len() <= limit,
        "{} items for a limit of {limit}",
        items.len()
    );
    for (k, &i) in items.iter().enumerate() {
        assert!(
            (i as usize) < catalog.len(),
            "item {i} is not in the catalog"
        );
        assert!(!items[..k].contains(&i), "item {i} repeated");
        assert_eq!(guard.admit(i), Ok(()), "item {i} is not admissible");
    }
}

/// Applies the guardrails to every item of `catalog` under `rules`.
pub fn evaluate_rules(rules: &Rules, catalog: &Catalog) {
    let n = catalog.len() as ItemIdx;
    for ctx in policy_contexts(&[3, 0]) {
        let guard = Guard::new(rules, catalog, ctx);
        for i in 0..n + 2 {
            if guard.admit(i).is_ok() {
                let _ = guard.offer(i);
            }
        }
        let mut counts = ExclusionCounts::default();
        let kept = guard.select(
            (0..n + 2).map(|i| (i, 1.0 / (1.0 + i as f32))),
            10,
            &mut counts,
        );
        check_answer(
            &guard,
            catalog,
            &kept.iter().map(|a| a.item).collect::<Vec<_>>(),
            10,
        );
        let cap = ctx.max_items_per_category;
        for c in 0..catalog.categories.len() {
            let in_c = kept
                .iter()
                .filter(|a| catalog.item(a.item).category as usize == c)
                .count();
            assert!(
                !guard.caps_category(c as u16) || in_c <= cap,
                "category cap exceeded"
            );
        }
    }
}

/// The internal consistency of a catalog: every index in range and every cross-reference pointing back.
pub fn check_catalog(c: &Catalog) {
    for (i, it) in c.items.iter().enumerate() {
        let i = i as ItemIdx;
        assert_eq!(c.lookup(&it.id), Some(i), "index of {:?}", it.id);
        assert!(
            (it.category as usize) < c.categories.len(),
            "category of {:?}",
            it.id
        );
        assert!((it.brand as usize) < c.brands.len(), "brand of {:?}", it.id);
        let _ = (c.category_of(i), c.min_age(i));
        if let Some(o) = it.offer {
            assert_eq!(c.offers[o as usize].item, i, "offer of {:?}", it.id);
        }
    }
    for (k, o) in c.offers.iter().enumerate() {
        assert_eq!(c.item(o.item).offer, Some(k as u32), "offer {k}");
    }
    for cat in 0..c.categories.len() {
        for &i in c.items_in_category(cat as u16) {
            assert_eq!(c.item(i).category as usize, cat);
            assert!(!c.item(i).delisted, "delisted item listed in its category");
        }
    }
    let listed: usize = (0..c.categories.len())
        .map(|k| c.items_in_category(k as u16).len())
        .sum();
    assert_eq!(listed, c.items.iter().filter(|it| !it.delisted).count());
}
