//! The item universe requests are drawn from: ids `sku-{:06}` for `0..items`, shaped like the server's demo catalog
//! (63 categories of 170 items each in 9 departments, 10,710 items), so that generated sessions stay in one
//! category, visit the right aisles and put expensive items in carts when a scenario wants assist events.
//!
//! Only the catalog's shape is mirrored here (category blocks, aisles, base prices), as a copy of the demo world's
//! table (`aisle_domain::demo`) that is kept in step by hand. With another `--items` the same layout repeats over
//! the requested universe.

use aisle_domain::rng::{SplitMix64, Zipf};

/// Items per category in the demo catalog.
pub const ITEMS_PER_CATEGORY: usize = 170;

/// Items in the demo catalog (63 × 170).
pub const DEMO_ITEMS: usize = 10_710;

/// Base price (cents) from which a category counts as expensive: one or two of its items take an in-store cart
/// past the server's $150 high-intent threshold.
const EXPENSIVE_CENTS: i64 = 8_500;

/// (category name, aisle, base price in cents), in catalog order.
const DEMO_CATEGORIES: &[(&str, &str, i64)] = &[
    ("Coffee", "G01", 1_100),
    ("Tea", "G02", 600),
    ("Breakfast Cereal", "G03", 450),
    ("Snacks", "G04", 350),
    ("Chocolate", "G05", 400),
    ("Pasta", "G06", 250),
    ("Sauces", "G07", 380),
    ("Spices", "G08", 500),
    ("Baking", "G09", 420),
    ("Frozen Meals", "G10", 650),
    ("Wine", "B01", 1_600),
    ("Beer", "B02", 1_200),
    ("Spirits", "B03", 3_200),
    ("Soft Drinks", "B04", 300),
    ("Energy Drinks", "B05", 350),
    ("Juice", "B06", 420),
    ("Water", "B07", 150),
    ("Skincare", "H01", 2_200),
    ("Haircare", "H02", 1_200),
    ("Makeup", "H03", 1_800),
    ("Fragrance", "H04", 5_500),
    ("Vitamins", "H05", 1_500),
    ("Oral Care", "H06", 500),
    ("Shaving", "H07", 1_400),
    ("Sun Care", "H08", 1_300),
    ("Cookware", "M01", 4_500),
    ("Kitchen Knives", "M02", 3_500),
    ("Tableware", "M03", 2_400),
    ("Bedding", "M04", 6_000),
    ("Bath Towels", "M05", 2_500),
    ("Candles", "M06", 1_600),
    ("Storage", "M07", 1_900),
    ("Cleaning", "M08", 700),
    ("Headphones", "E01", 9_000),
    ("Phone Cases", "E02", 2_000),
    ("Chargers", "E03", 2_500),
    ("Smart Home", "E04", 6_500),
    ("Cameras", "E05", 45_000),
    ("Mature Video Games", "E06", 6_000),
    ("Laptops", "E07", 95_000),
    ("Running Shoes", "A01", 11_000),
    ("Sneakers", "A02", 8_500),
    ("Socks", "A03", 1_200),
    ("T-Shirts", "A04", 2_000),
    ("Jeans", "A05", 6_500),
    ("Jackets", "A06", 12_000),
    ("Dresses", "A07", 7_000),
    ("Kids Clothing", "A08", 2_500),
    ("Yoga", "S01", 3_000),
    ("Fitness Equipment", "S02", 7_500),
    ("Camping", "S03", 9_500),
    ("Cycling", "S04", 6_000),
    ("Swimwear", "S05", 3_500),
    ("Hiking Boots", "S06", 13_000),
    ("Toys", "T01", 2_500),
    ("Board Games", "T02", 3_000),
    ("Baby Care", "T03", 1_500),
    ("Diapers", "T04", 2_800),
    ("Garden Tools", "P01", 3_200),
    ("Plants", "P02", 1_800),
    ("Dog Food", "P03", 4_200),
    ("Cat Food", "P04", 3_600),
    ("Pet Toys", "P05", 1_100),
];

/// One category of the universe: a contiguous block of item indexes.
#[derive(Debug, Clone)]
pub struct CategoryInfo {
    /// Display name (lowercased, it doubles as a search query).
    pub name: &'static str,
    /// The aisle its items are in, e.g. `E05`.
    pub aisle: &'static str,
    /// Typical price in cents.
    pub base_price_cents: i64,
    /// First item index.
    pub first: usize,
    /// Number of items.
    pub len: usize,
}

/// The items requests name, with Zipf popularity over the whole universe and within each category.
#[derive(Debug, Clone)]
pub struct ItemUniverse {
    items: usize,
    categories: Vec<CategoryInfo>,
    expensive: Vec<usize>,
    /// Popularity over all items (rank → item via `scramble`).
    overall: Zipf,
    /// Popularity of categories (rank → category via `scramble`).
    category_popularity: Zipf,
    /// Popularity inside a category of `ITEMS_PER_CATEGORY` items.
    within: Zipf,
}

/// Maps a popularity rank to an index in `0..n` with a fixed pseudo-random bijection, so that the popular items
/// are spread over categories instead of all being the first ids.
fn scramble(rank: usize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // A multiplier coprime with n makes `rank * m mod n` a permutation.
    let mut m = 7_919 % n;
    while m == 0 || gcd(m, n) != 1 {
        m += 1;
    }
    (rank * m + n / 3) % n
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl ItemUniverse {
    /// A universe of `items` ids (≥ 1) with popularity exponent `s`.
    pub fn new(items: usize, s: f64) -> Self {
        assert!(items >= 1, "the item universe needs at least one item");
        let mut categories = Vec::new();
        let mut first = 0;
        let mut c = 0;
        while first < items {
            let (name, aisle, base_price_cents) = DEMO_CATEGORIES[c % DEMO_CATEGORIES.len()];
            let len = ITEMS_PER_CATEGORY.min(items - first);
            categories.push(CategoryInfo {
                name,
                aisle,
                base_price_cents,
                first,
                len,
            });
            first += len;
            c += 1;
        }
        let expensive = categories
            .iter()
            .enumerate()
            .filter(|(_, cat)| cat.base_price_cents >= EXPENSIVE_CENTS)
            .map(|(i, _)| i)
            .collect();
        Self {
            items,
            overall: Zipf::new(items, s),
            category_popularity: Zipf::new(categories.len(), 0.8),
            within: Zipf::new(ITEMS_PER_CATEGORY.min(items), s),
            categories,
            expensive,
        }
    }

    /// The demo catalog's universe: 10,710 items, exponent 1.0.
    pub fn demo() -> Self {
        Self::new(DEMO_ITEMS, 1.0)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Always false: a universe has at least one item.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The id of item `index`: `sku-{index:06}`.
    pub fn item_id(index: usize) -> String {
        format!("sku-{index:06}")
    }

    /// The categories, in catalog order.
    pub fn categories(&self) -> &[CategoryInfo] {
        &self.categories
    }

    /// The category of item `index`.
    pub fn category_of(&self, index: usize) -> usize {
        (index / ITEMS_PER_CATEGORY).min(self.categories.len() - 1)
    }

    /// Categories whose items are expensive enough for a high-intent cart (empty in tiny universes).
    pub fn expensive_categories(&self) -> &[usize] {
        &self.expensive
    }

    /// An item drawn by overall popularity.
    pub fn popular_item(&self, rng: &mut SplitMix64) -> usize {
        scramble(self.overall.sample(rng), self.items)
    }

    /// A category drawn by popularity.
    pub fn popular_category(&self, rng: &mut SplitMix64) -> usize {
        scramble(self.category_popularity.sample(rng), self.categories.len())
    }

    /// An item of `category` drawn by popularity within it.
    pub fn item_in(&self, category: usize, rng: &mut SplitMix64) -> usize {
        let cat = &self.categories[category];
        let rank = loop {
            let r = self.within.sample(rng);
            if r < cat.len {
                break r;
            }
        };
        cat.first + scramble(rank, cat.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_layout_matches_the_server_catalog() {
        let u = ItemUniverse::demo();
        assert_eq!(u.len(), 10_710);
        assert_eq!(u.categories().len(), 63);
        assert_eq!(ItemUniverse::item_id(42), "sku-000042");
        let cameras = &u.categories()[37];
        assert_eq!(
            (cameras.name, cameras.aisle, cameras.first),
            ("Cameras", "E05", 37 * 170)
        );
        assert_eq!(u.category_of(37 * 170 + 5), 37);
        assert!(u.expensive_categories().contains(&37));
        assert!(u.expensive_categories().contains(&39));
        assert!(!u.expensive_categories().contains(&0));
    }

    #[test]
    fn scramble_is_a_permutation() {
        for n in [1, 2, 10, 170, 7_919, 10_710] {
            let mut seen = vec![false; n];
            for r in 0..n {
                let i = scramble(r, n);
                assert!(!seen[i], "n {n}: {i} twice");
                seen[i] = true;
            }
        }
    }

    #[test]
    fn draws_stay_in_range_and_in_category() {
        let u = ItemUniverse::new(500, 1.0);
        let mut rng = SplitMix64::new(1);
        for _ in 0..5_000 {
            assert!(u.popular_item(&mut rng) < 500);
            let c = u.popular_category(&mut rng);
            let i = u.item_in(c, &mut rng);
            assert_eq!(u.category_of(i), c);
        }
    }
}
