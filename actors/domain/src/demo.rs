//! The demo world: a deterministic catalog and shopping history that a node serves when it is given no data.
//!
//! Same seed, same world: 63 categories in 9 departments (some age-restricted), 170 items each (10,710 items)
//! with brands, prices, stock levels (some out of stock, some low) and offers (some expired, some for loyalty
//! members only, some app-only, some with discounts above the default cap), and a history of shopping sessions
//! with the structure real traffic has — a mission category, popular items viewed more, related items viewed in
//! sequence, complementary categories, carts and purchases, a few trending items — so that a model trained on it
//! ranks meaningfully. Times are anchored at `anchor_ms` (the moment the node builds the world), so offers expire
//! relative to it.

use crate::TimestampMs;
use crate::catalog::{
    CATALOG_FORMAT_VERSION, Catalog, CatalogFile, Category, ItemRecord, OfferRecord,
};
use crate::event::{EventKind, LoggedEvent, LoggedSession};
use crate::rng::{SplitMix64, Zipf};

/// Seed of the embedded demo world.
pub const DEMO_SEED: u64 = 0xA151E;

/// Items per category.
const ITEMS_PER_CATEGORY: usize = 170;
/// Brands per category.
const BRANDS_PER_CATEGORY: usize = 6;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// (category, minimum age, base price in cents)
type CategorySpec = (&'static str, u8, i64);

/// (department, aisle letter, categories)
const DEPARTMENTS: &[(&str, char, &[CategorySpec])] = &[
    (
        "Grocery",
        'G',
        &[
            ("Coffee", 0, 1_100),
            ("Tea", 0, 600),
            ("Breakfast Cereal", 0, 450),
            ("Snacks", 0, 350),
            ("Chocolate", 0, 400),
            ("Pasta", 0, 250),
            ("Sauces", 0, 380),
            ("Spices", 0, 500),
            ("Baking", 0, 420),
            ("Frozen Meals", 0, 650),
        ],
    ),
    (
        "Beverages",
        'B',
        &[
            ("Wine", 21, 1_600),
            ("Beer", 21, 1_200),
            ("Spirits", 21, 3_200),
            ("Soft Drinks", 0, 300),
            ("Energy Drinks", 18, 350),
            ("Juice", 0, 420),
            ("Water", 0, 150),
        ],
    ),
    (
        "Health & Beauty",
        'H',
        &[
            ("Skincare", 0, 2_200),
            ("Haircare", 0, 1_200),
            ("Makeup", 0, 1_800),
            ("Fragrance", 0, 5_500),
            ("Vitamins", 0, 1_500),
            ("Oral Care", 0, 500),
            ("Shaving", 0, 1_400),
            ("Sun Care", 0, 1_300),
        ],
    ),
    (
        "Home",
        'M',
        &[
            ("Cookware", 0, 4_500),
            ("Kitchen Knives", 18, 3_500),
            ("Tableware", 0, 2_400),
            ("Bedding", 0, 6_000),
            ("Bath Towels", 0, 2_500),
            ("Candles", 0, 1_600),
            ("Storage", 0, 1_900),
            ("Cleaning", 0, 700),
        ],
    ),
    (
        "Electronics",
        'E',
        &[
            ("Headphones", 0, 9_000),
            ("Phone Cases", 0, 2_000),
            ("Chargers", 0, 2_500),
            ("Smart Home", 0, 6_500),
            ("Cameras", 0, 45_000),
            ("Mature Video Games", 18, 6_000),
            ("Laptops", 0, 95_000),
        ],
    ),
    (
        "Apparel",
        'A',
        &[
            ("Running Shoes", 0, 11_000),
            ("Sneakers", 0, 8_500),
            ("Socks", 0, 1_200),
            ("T-Shirts", 0, 2_000),
            ("Jeans", 0, 6_500),
            ("Jackets", 0, 12_000),
            ("Dresses", 0, 7_000),
            ("Kids Clothing", 0, 2_500),
        ],
    ),
    (
        "Sports & Outdoors",
        'S',
        &[
            ("Yoga", 0, 3_000),
            ("Fitness Equipment", 0, 7_500),
            ("Camping", 0, 9_500),
            ("Cycling", 0, 6_000),
            ("Swimwear", 0, 3_500),
            ("Hiking Boots", 0, 13_000),
        ],
    ),
    (
        "Toys & Baby",
        'T',
        &[
            ("Toys", 0, 2_500),
            ("Board Games", 0, 3_000),
            ("Baby Care", 0, 1_500),
            ("Diapers", 0, 2_800),
        ],
    ),
    (
        "Garden & Pets",
        'P',
        &[
            ("Garden Tools", 0, 3_200),
            ("Plants", 0, 1_800),
            ("Dog Food", 0, 4_200),
            ("Cat Food", 0, 3_600),
            ("Pet Toys", 0, 1_100),
        ],
    ),
];

/// Pairs of categories that are often shopped together across departments.
const COMPLEMENTS: &[(&str, &str)] = &[
    ("Running Shoes", "Socks"),
    ("Laptops", "Chargers"),
    ("Cameras", "Chargers"),
    ("Headphones", "Phone Cases"),
    ("Pasta", "Sauces"),
    ("Wine", "Tableware"),
    ("Coffee", "Chocolate"),
    ("Camping", "Hiking Boots"),
    ("Dog Food", "Pet Toys"),
    ("Diapers", "Baby Care"),
    ("Yoga", "Swimwear"),
    ("Skincare", "Sun Care"),
    ("Cookware", "Kitchen Knives"),
    ("Beer", "Snacks"),
];

const BRAND_FIRST: &[&str] = &[
    "North", "Blue", "Bright", "Silver", "Oak", "Red", "Green", "Iron", "Cloud", "Harbor", "Stone",
    "Sun", "Wild", "Pine", "River", "Maple",
];
const BRAND_SECOND: &[&str] = &[
    "wind", "field", "crest", "line", "works", "leaf", "peak", "craft", "ridge", "bay", "well",
    "mark",
];

/// The demo world: its catalog bundle and its shopping history.
#[derive(Debug, Clone)]
pub struct DemoWorld {
    /// The catalog as a bundle file.
    pub catalog: CatalogFile,
    /// Shopping sessions, oldest first.
    pub history: Vec<LoggedSession>,
}

impl DemoWorld {
    /// Generates the world for `seed`, with times anchored at `anchor_ms`, and `sessions` history sessions.
    pub fn generate(seed: u64, anchor_ms: TimestampMs, sessions: usize) -> Self {
        let mut rng = SplitMix64::new(seed);
        let catalog = generate_catalog(&mut rng, anchor_ms);
        let history = generate_history(&mut rng, &catalog, anchor_ms, sessions);
        Self { catalog, history }
    }

    /// The default demo world: [`DEMO_SEED`], 25,000 sessions.
    pub fn standard(anchor_ms: TimestampMs) -> Self {
        Self::generate(DEMO_SEED, anchor_ms, 25_000)
    }

    /// The catalog, parsed and indexed.
    pub fn load_catalog(&self) -> Catalog {
        let bytes = serde_json::to_vec(&self.catalog).expect("demo catalog serialises");
        Catalog::from_json(&bytes, "embedded demo").expect("demo catalog is valid")
    }
}

fn generate_catalog(rng: &mut SplitMix64, anchor_ms: TimestampMs) -> CatalogFile {
    let mut categories = Vec::new();
    let mut items = Vec::new();
    let mut offers = Vec::new();
    for (department, aisle_letter, cats) in DEPARTMENTS {
        for (ci, (name, min_age, base_price)) in cats.iter().enumerate() {
            categories.push(Category {
                name: name.to_string(),
                department: department.to_string(),
                min_age: *min_age,
            });
            let brands: Vec<String> = (0..BRANDS_PER_CATEGORY)
                .map(|_| {
                    format!(
                        "{}{}",
                        BRAND_FIRST[rng.below(BRAND_FIRST.len() as u64) as usize],
                        BRAND_SECOND[rng.below(BRAND_SECOND.len() as u64) as usize]
                    )
                })
                .collect();
            for k in 0..ITEMS_PER_CATEGORY {
                let n = items.len();
                let brand = &brands[rng.below(BRANDS_PER_CATEGORY as u64) as usize];
                // Prices spread from about half to about three times the category's base.
                let factor = 0.5 * (1.0 + 5.0 * rng.next_f64() * rng.next_f64());
                let price_cents = ((*base_price as f64 * factor) as i64 / 10) * 10 + 9;
                let roll = rng.next_f64();
                let stock = if roll < 0.05 {
                    0
                } else if roll < 0.11 {
                    rng.range_inclusive(1, 4) as u32
                } else {
                    rng.range_inclusive(5, 400) as u32
                };
                let id = format!("sku-{n:06}");
                items.push(ItemRecord {
                    id: id.clone(),
                    name: format!("{brand} {name} {}", k + 1),
                    category: name.to_string(),
                    brand: brand.clone(),
                    price_cents,
                    stock,
                    min_age: 0,
                    aisle: format!("{aisle_letter}{:02}", ci + 1),
                });
                if rng.chance(0.08) {
                    offers.push(generate_offer(rng, &id, offers.len(), anchor_ms));
                }
            }
        }
    }
    CatalogFile {
        format_version: CATALOG_FORMAT_VERSION,
        version: format!("demo-{DEMO_SEED:x}"),
        created_at_ms: anchor_ms,
        categories,
        items,
        offers,
    }
}

fn generate_offer(
    rng: &mut SplitMix64,
    item_id: &str,
    n: usize,
    anchor_ms: TimestampMs,
) -> OfferRecord {
    const DISCOUNTS: &[u32] = &[5, 10, 10, 15, 15, 20, 20, 25, 30, 40, 50];
    let discount_percent = DISCOUNTS[rng.below(DISCOUNTS.len() as u64) as usize];
    let roll = rng.next_f64();
    let (starts_at_ms, expires_at_ms) = if roll < 0.2 {
        // Already expired.
        let end = anchor_ms - rng.range_inclusive(1, 10) as i64 * DAY_MS;
        (end - 14 * DAY_MS, end)
    } else if roll < 0.3 {
        // Not started yet.
        let start = anchor_ms + rng.range_inclusive(2, 10) as i64 * DAY_MS;
        (start, start + 14 * DAY_MS)
    } else {
        (
            anchor_ms - 7 * DAY_MS,
            anchor_ms + rng.range_inclusive(3, 30) as i64 * DAY_MS,
        )
    };
    let min_loyalty = match rng.below(10) {
        0 => Some("gold".to_string()),
        1 | 2 => Some("silver".to_string()),
        _ => None,
    };
    let channels = if rng.chance(0.2) {
        vec!["app".to_string()]
    } else {
        Vec::new()
    };
    OfferRecord {
        id: format!("offer-{n:05}"),
        item_id: item_id.to_string(),
        discount_percent,
        min_loyalty,
        channels,
        starts_at_ms,
        expires_at_ms,
    }
}

fn generate_history(
    rng: &mut SplitMix64,
    catalog: &CatalogFile,
    anchor_ms: TimestampMs,
    sessions: usize,
) -> Vec<LoggedSession> {
    let n_categories = catalog.categories.len();
    // Category popularity: a fixed random permutation ranked by Zipf.
    let mut category_order: Vec<usize> = (0..n_categories).collect();
    shuffle(rng, &mut category_order);
    let category_zipf = Zipf::new(n_categories, 0.8);
    // Item popularity inside a category: another permutation per category.
    let item_orders: Vec<Vec<usize>> = (0..n_categories)
        .map(|c| {
            let mut order: Vec<usize> =
                (c * ITEMS_PER_CATEGORY..(c + 1) * ITEMS_PER_CATEGORY).collect();
            shuffle(rng, &mut order);
            order
        })
        .collect();
    let item_zipf = Zipf::new(ITEMS_PER_CATEGORY, 1.1);
    let complement = complements(catalog);
    // A few trending items get extra attention in the last two days.
    let trending: Vec<usize> = (0..catalog.items.len() / 80)
        .map(|_| rng.below(catalog.items.len() as u64) as usize)
        .collect();

    let span_ms = 14 * DAY_MS;
    let mut starts: Vec<TimestampMs> = (0..sessions)
        .map(|_| anchor_ms - span_ms + (rng.next_f64() * span_ms as f64) as i64)
        .collect();
    starts.sort_unstable();

    let mut out = Vec::with_capacity(sessions);
    for (s, start) in starts.into_iter().enumerate() {
        let mut category = category_order[category_zipf.sample(rng)];
        let length = 2 + (rng.next_f64().ln() / (0.87f64).ln()) as usize;
        let length = length.min(40);
        let mut ts = start;
        let mut events = Vec::with_capacity(length + 2);
        let mut cart: Vec<usize> = Vec::new();
        let mut current: Option<usize> = None;
        let recent = anchor_ms - start < 2 * DAY_MS;
        for _ in 0..length {
            if rng.chance(0.12) {
                category = complement[category];
            }
            let item = match current {
                // Related item: a neighbour in the category's listing (similar price/brand band).
                Some(prev)
                    if rng.chance(0.45)
                        && catalog.items[prev].category == catalog.categories[category].name =>
                {
                    let base = category * ITEMS_PER_CATEGORY;
                    let offset = (prev - base) as i64 + rng.range_inclusive(0, 6) as i64 - 3;
                    base + offset.clamp(0, ITEMS_PER_CATEGORY as i64 - 1) as usize
                }
                _ if recent && rng.chance(0.15) => {
                    trending[rng.below(trending.len() as u64) as usize]
                }
                _ => item_orders[category][item_zipf.sample(rng)],
            };
            events.push(LoggedEvent {
                item: catalog.items[item].id.clone(),
                kind: EventKind::View,
                ts_ms: ts,
            });
            if rng.chance(0.12) {
                ts += rng.range_inclusive(5, 40) as i64 * 1000;
                events.push(LoggedEvent {
                    item: catalog.items[item].id.clone(),
                    kind: EventKind::AddToCart,
                    ts_ms: ts,
                });
                cart.push(item);
            }
            current = Some(item);
            ts += rng.range_inclusive(8, 120) as i64 * 1000;
        }
        for item in cart {
            if rng.chance(0.5) {
                events.push(LoggedEvent {
                    item: catalog.items[item].id.clone(),
                    kind: EventKind::Purchase,
                    ts_ms: ts,
                });
            }
        }
        out.push(LoggedSession {
            id: format!("demo-{s}"),
            events,
        });
    }
    out
}

/// For every category, the category shoppers move on to: an explicit complement, else the next one in its
/// department.
fn complements(catalog: &CatalogFile) -> Vec<usize> {
    let position = |name: &str| catalog.categories.iter().position(|c| c.name == name);
    let mut out: Vec<usize> = (0..catalog.categories.len())
        .map(|c| {
            let dept = &catalog.categories[c].department;
            let next = c + 1;
            if next < catalog.categories.len() && &catalog.categories[next].department == dept {
                next
            } else {
                // Wrap to the department's first category.
                catalog
                    .categories
                    .iter()
                    .position(|x| &x.department == dept)
                    .unwrap_or(c)
            }
        })
        .collect();
    for (a, b) in COMPLEMENTS {
        if let (Some(a), Some(b)) = (position(a), position(b)) {
            out[a] = b;
            out[b] = a;
        }
    }
    out
}

fn shuffle<T>(rng: &mut SplitMix64, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_is_deterministic_and_large_enough() {
        let a = DemoWorld::generate(DEMO_SEED, 1_700_000_000_000, 500);
        let b = DemoWorld::generate(DEMO_SEED, 1_700_000_000_000, 500);
        assert_eq!(a.history, b.history);
        assert_eq!(
            serde_json::to_string(&a.catalog).unwrap(),
            serde_json::to_string(&b.catalog).unwrap()
        );
        let catalog = a.load_catalog();
        assert!(catalog.len() >= 10_000, "{}", catalog.len());
        assert!(catalog.categories.len() >= 50);
        assert!(catalog.categories.iter().any(|c| c.min_age >= 18));
        assert!(catalog.items.iter().any(|i| i.stock == 0));
        assert!(catalog.items.iter().any(|i| (1..5).contains(&i.stock)));
        let anchor = 1_700_000_000_000;
        assert!(catalog.offers.iter().any(|o| o.expires_at_ms < anchor));
        assert!(
            catalog
                .offers
                .iter()
                .any(|o| o.starts_at_ms <= anchor && anchor < o.expires_at_ms)
        );
        assert!(a.history.iter().all(|s| !s.events.is_empty()));
        assert!(
            a.history
                .iter()
                .any(|s| s.events.iter().any(|e| e.kind == EventKind::Purchase))
        );
    }

    #[test]
    fn sessions_concentrate_on_a_mission_category() {
        let world = DemoWorld::generate(DEMO_SEED, 1_700_000_000_000, 2_000);
        let catalog = world.load_catalog();
        let mut same = 0usize;
        let mut pairs = 0usize;
        for s in &world.history {
            for w in s.events.windows(2) {
                let (a, b) = (
                    catalog.lookup(&w[0].item).unwrap(),
                    catalog.lookup(&w[1].item).unwrap(),
                );
                pairs += 1;
                same += usize::from(catalog.item(a).category == catalog.item(b).category);
            }
        }
        // Consecutive events stay in the category most of the time; uniform would be under 2%.
        assert!(same as f64 / pairs as f64 > 0.6, "{same}/{pairs}");
    }
}
