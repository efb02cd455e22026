//! The catalog: items, categories, brands and offers, indexed for serving.
//!
//! Items are addressed inside the node by a dense [`ItemIdx`] (their position in [`Catalog::items`]); external
//! string ids appear only at the edges (API, bundles, logs).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, BundleKind, BundleMeta};
use crate::request::{Channel, LoyaltyTier};
use crate::{MAX_ID_BYTES, TimestampMs};

/// Dense index of an item in its catalog.
pub type ItemIdx = u32;
/// Dense index of a category.
pub type CategoryIdx = u16;
/// Dense index of a brand.
pub type BrandIdx = u16;
/// Dense index of an offer.
pub type OfferIdx = u32;

/// The catalog file format this build reads and writes.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// A category of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Display name, unique in the catalog.
    pub name: String,
    /// Department the category belongs to (for merchandising and the demo's shopping missions).
    #[serde(default)]
    pub department: String,
    /// Minimum verified age to be shown items of this category (0: none). Guardrail rules may raise it.
    #[serde(default)]
    pub min_age: u8,
}

/// An item as the node serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// External id (SKU).
    pub id: Box<str>,
    /// Display name.
    pub name: Box<str>,
    /// Category.
    pub category: CategoryIdx,
    /// Brand.
    pub brand: BrandIdx,
    /// Regular price in cents (0: unknown).
    pub price_cents: i64,
    /// Units in stock across stores.
    pub stock: u32,
    /// Minimum verified age for this item (0: the category's).
    pub min_age: u8,
    /// Where it sits in stores (e.g. "A12").
    pub aisle: Box<str>,
    /// The item's current offer, if any.
    pub offer: Option<OfferIdx>,
    /// Listed in an earlier catalog version of this node but not in the current one: kept so that indices held
    /// by sessions stay valid, never served.
    pub delisted: bool,
}

/// A promotional offer on one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// External id.
    pub id: Box<str>,
    /// The item it applies to.
    pub item: ItemIdx,
    /// Discount in percent of the regular price.
    pub discount_percent: u32,
    /// Lowest loyalty tier eligible.
    pub min_loyalty: LoyaltyTier,
    /// Channels it may be shown on (empty: every channel).
    pub channels: Vec<Channel>,
    /// Valid from (inclusive).
    pub starts_at_ms: TimestampMs,
    /// Valid until (exclusive).
    pub expires_at_ms: TimestampMs,
}

/// A loaded catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Envelope of the bundle it was loaded from.
    pub meta: BundleMeta,
    /// Items by [`ItemIdx`].
    pub items: Vec<Item>,
    /// Categories by [`CategoryIdx`].
    pub categories: Vec<Category>,
    /// Brand names by [`BrandIdx`].
    pub brands: Vec<Box<str>>,
    /// Offers by [`OfferIdx`].
    pub offers: Vec<Offer>,
    index: HashMap<Box<str>, ItemIdx>,
    by_category: Vec<Vec<ItemIdx>>,
}

impl Catalog {
    /// Builds the indexes over already-validated parts.
    fn assemble(
        meta: BundleMeta,
        items: Vec<Item>,
        categories: Vec<Category>,
        brands: Vec<Box<str>>,
        offers: Vec<Offer>,
    ) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.id.clone(), i as ItemIdx))
            .collect();
        let mut by_category = vec![Vec::new(); categories.len()];
        for (i, item) in items.iter().enumerate() {
            if !item.delisted {
                by_category[item.category as usize].push(i as ItemIdx);
            }
        }
        Self {
            meta,
            items,
            categories,
            brands,
            offers,
            index,
            by_category,
        }
    }

    /// The index of the item with this external id.
    pub fn lookup(&self, id: &str) -> Option<ItemIdx> {
        self.index.get(id).copied()
    }

    /// The item at `idx`.
    pub fn item(&self, idx: ItemIdx) -> &Item {
        &self.items[idx as usize]
    }

    /// The category of the item at `idx`.
    pub fn category_of(&self, idx: ItemIdx) -> &Category {
        &self.categories[self.item(idx).category as usize]
    }

    /// The items of a category, in catalog order.
    pub fn items_in_category(&self, category: CategoryIdx) -> &[ItemIdx] {
        &self.by_category[category as usize]
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the catalog has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The minimum verified age needed to see the item: the larger of the item's and its category's.
    pub fn min_age(&self, idx: ItemIdx) -> u8 {
        let item = self.item(idx);
        item.min_age
            .max(self.categories[item.category as usize].min_age)
    }

    /// A catalog of plain items known only by id (no category, price or stock information beyond "available"):
    /// what a node serves when it is given a model trained on click data but no catalog.
    pub fn plain(version: &str, ids: impl IntoIterator<Item = String>) -> Self {
        let categories = vec![Category {
            name: UNCATEGORISED.to_string(),
            department: String::new(),
            min_age: 0,
        }];
        let items = ids
            .into_iter()
            .map(|id| Item {
                name: id.clone().into(),
                id: id.into(),
                category: 0,
                brand: 0,
                price_cents: 0,
                stock: PLAIN_ITEM_STOCK,
                min_age: 0,
                aisle: "".into(),
                offer: None,
                delisted: false,
            })
            .collect();
        let meta =
            BundleMeta::computed(BundleKind::Catalog, CATALOG_FORMAT_VERSION, version, 0, b"");
        Self::assemble(meta, items, categories, vec!["".into()], Vec::new())
    }

    /// Whether the category is the catch-all of a plain catalog (diversity caps do not apply to it).
    pub fn is_uncategorised(&self, category: CategoryIdx) -> bool {
        self.categories[category as usize].name == UNCATEGORISED
    }

    /// Parses and validates a catalog bundle (JSON, see [`CatalogFile`]).
    ///
    /// # Errors
    /// The bundle is refused when it is not valid JSON of the format, declares another format version, or is
    /// inconsistent (duplicate ids, unknown categories or items, ids too long).
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        let file: CatalogFile = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::invalid(BundleKind::Catalog, format!("not a catalog bundle: {e}"))
        })?;
        if file.format_version != CATALOG_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat {
                kind: BundleKind::Catalog,
                found: file.format_version,
                supported: CATALOG_FORMAT_VERSION,
            });
        }
        let invalid = |reason: String| BundleError::invalid(BundleKind::Catalog, reason);
        let mut category_index = HashMap::new();
        for (i, c) in file.categories.iter().enumerate() {
            if category_index
                .insert(c.name.as_str(), i as CategoryIdx)
                .is_some()
            {
                return Err(invalid(format!(
                    "categories[{i}].name: duplicate {:?}",
                    c.name
                )));
            }
        }
        if file.categories.len() > CategoryIdx::MAX as usize {
            return Err(invalid("categories: too many".into()));
        }
        let mut brands: Vec<Box<str>> = Vec::new();
        let mut brand_index: HashMap<String, BrandIdx> = HashMap::new();
        let mut items = Vec::with_capacity(file.items.len());
        let mut seen = HashMap::with_capacity(file.items.len());
        for (i, it) in file.items.iter().enumerate() {
            if it.id.is_empty() || it.id.len() > MAX_ID_BYTES {
                return Err(invalid(format!(
                    "items[{i}].id: must be 1 to {MAX_ID_BYTES} bytes"
                )));
            }
            if seen.insert(it.id.as_str(), i as ItemIdx).is_some() {
                return Err(invalid(format!("items[{i}].id: duplicate {:?}", it.id)));
            }
            let category = *category_index.get(it.category.as_str()).ok_or_else(|| {
                invalid(format!("items[{i}].category: unknown {:?}", it.category))
            })?;
            if brands.len() > BrandIdx::MAX as usize && !brand_index.contains_key(&it.brand) {
                return Err(invalid(format!("items[{i}].brand: too many brands")));
            }
            let next_brand = brands.len() as BrandIdx;
            let brand = *brand_index.entry(it.brand.clone()).or_insert_with(|| {
                brands.push(it.brand.as_str().into());
                next_brand
            });
            if it.price_cents < 0 {
                return Err(invalid(format!("items[{i}].price_cents: negative")));
            }
            items.push(Item {
                id: it.id.as_str().into(),
                name: it.name.as_str().into(),
                category,
                brand,
                price_cents: it.price_cents,
                stock: it.stock,
                min_age: it.min_age,
                aisle: it.aisle.as_str().into(),
                offer: None,
                delisted: false,
            });
        }
        let mut offers = Vec::with_capacity(file.offers.len());
        for (i, o) in file.offers.iter().enumerate() {
            let item = *seen.get(o.item_id.as_str()).ok_or_else(|| {
                invalid(format!("offers[{i}].item_id: unknown item {:?}", o.item_id))
            })?;
            if o.discount_percent > 100 {
                return Err(invalid(format!("offers[{i}].discount_percent: above 100")));
            }
            if o.expires_at_ms <= o.starts_at_ms {
                return Err(invalid(format!(
                    "offers[{i}].expires_at_ms: not after starts_at_ms"
                )));
            }
            let min_loyalty = match &o.min_loyalty {
                None => LoyaltyTier::None,
                Some(t) => LoyaltyTier::parse(t).ok_or_else(|| {
                    invalid(format!("offers[{i}].min_loyalty: unknown tier {t:?}"))
                })?,
            };
            let channels = o
                .channels
                .iter()
                .map(|c| {
                    Channel::parse(c).ok_or_else(|| {
                        invalid(format!("offers[{i}].channels: unknown channel {c:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let idx = offers.len() as OfferIdx;
            if items[item as usize].offer.replace(idx).is_some() {
                return Err(invalid(format!(
                    "offers[{i}].item_id: item {:?} has two offers",
                    o.item_id
                )));
            }
            offers.push(Offer {
                id: o.id.as_str().into(),
                item,
                discount_percent: o.discount_percent,
                min_loyalty,
                channels,
                starts_at_ms: o.starts_at_ms,
                expires_at_ms: o.expires_at_ms,
            });
        }
        let meta = BundleMeta::computed(
            BundleKind::Catalog,
            file.format_version,
            &file.version,
            file.created_at_ms,
            bytes,
        )
        .with_source(source);
        Ok(Self::assemble(meta, items, file.categories, brands, offers))
    }

    /// Parses a new catalog version so that every item, category and brand the `base` catalog knew keeps its
    /// index: new ones are appended, and items missing from the new version stay as delisted entries (out of
    /// stock, never served). Indices held elsewhere (sessions, caches) therefore stay valid across catalog
    /// updates for the life of the process.
    ///
    /// # Errors
    /// As [`Catalog::from_json`].
    pub fn from_json_over(bytes: &[u8], source: &str, base: &Catalog) -> Result<Self, BundleError> {
        Self::from_json(bytes, source)?.rebased(base)
    }

    /// This catalog re-indexed over `base` (see [`Catalog::from_json_over`]).
    ///
    /// # Errors
    /// When the union of categories overflows the category index.
    pub fn rebased(self, base: &Catalog) -> Result<Self, BundleError> {
        let fresh = self;
        // Categories and brands: base order first, then new names.
        let mut categories = base.categories.clone();
        let mut category_map = Vec::with_capacity(fresh.categories.len());
        for c in &fresh.categories {
            let idx = match categories.iter().position(|b| b.name == c.name) {
                Some(i) => {
                    categories[i] = c.clone();
                    i
                }
                None => {
                    categories.push(c.clone());
                    categories.len() - 1
                }
            };
            category_map.push(idx as CategoryIdx);
        }
        if categories.len() > CategoryIdx::MAX as usize {
            return Err(BundleError::invalid(
                BundleKind::Catalog,
                "categories: too many",
            ));
        }
        let mut brands = base.brands.clone();
        let mut brand_map = Vec::with_capacity(fresh.brands.len());
        for b in &fresh.brands {
            let idx = brands.iter().position(|x| x == b).unwrap_or_else(|| {
                brands.push(b.clone());
                brands.len() - 1
            });
            brand_map.push(idx as BrandIdx);
        }
        if brands.len() > BrandIdx::MAX as usize + 1 {
            return Err(BundleError::invalid(
                BundleKind::Catalog,
                "brands: too many",
            ));
        }
        // Items: base indices kept (delisted unless present again), new items appended.
        let mut items: Vec<Item> = base
            .items
            .iter()
            .map(|it| Item {
                stock: 0,
                offer: None,
                delisted: true,
                ..it.clone()
            })
            .collect();
        let mut item_map = Vec::with_capacity(fresh.items.len());
        for it in fresh.items {
            let mut it = Item {
                category: category_map[it.category as usize],
                brand: brand_map[it.brand as usize],
                offer: None,
                ..it
            };
            it.delisted = false;
            let idx = match base.lookup(&it.id) {
                Some(i) => {
                    items[i as usize] = it;
                    i
                }
                None => {
                    items.push(it);
                    (items.len() - 1) as ItemIdx
                }
            };
            item_map.push(idx);
        }
        let offers: Vec<Offer> = fresh
            .offers
            .into_iter()
            .enumerate()
            .map(|(k, o)| {
                let item = item_map[o.item as usize];
                items[item as usize].offer = Some(k as OfferIdx);
                Offer { item, ..o }
            })
            .collect();
        Ok(Self::assemble(
            fresh.meta, items, categories, brands, offers,
        ))
    }

    /// The catalog as a bundle file.
    pub fn to_file(&self) -> CatalogFile {
        CatalogFile {
            format_version: CATALOG_FORMAT_VERSION,
            version: self.meta.version.clone(),
            created_at_ms: self.meta.created_at_ms,
            categories: self.categories.clone(),
            items: self
                .items
                .iter()
                .filter(|it| !it.delisted)
                .map(|it| ItemRecord {
                    id: it.id.to_string(),
                    name: it.name.to_string(),
                    category: self.categories[it.category as usize].name.clone(),
                    brand: self.brands[it.brand as usize].to_string(),
                    price_cents: it.price_cents,
                    stock: it.stock,
                    min_age: it.min_age,
                    aisle: it.aisle.to_string(),
                })
                .collect(),
            offers: self
                .offers
                .iter()
                .map(|o| OfferRecord {
                    id: o.id.to_string(),
                    item_id: self.items[o.item as usize].id.to_string(),
                    discount_percent: o.discount_percent,
                    min_loyalty: Some(o.min_loyalty.as_str().to_string()),
                    channels: o.channels.iter().map(|c| c.as_str().to_string()).collect(),
                    starts_at_ms: o.starts_at_ms,
                    expires_at_ms: o.expires_at_ms,
                })
                .collect(),
        }
    }
}

/// Name of the one category of a [`Catalog::plain`] catalog.
pub const UNCATEGORISED: &str = "uncategorised";

/// Stock given to the items of a [`Catalog::plain`] catalog: the catalog says nothing about stock, so items count
/// as available.
const PLAIN_ITEM_STOCK: u32 = 1_000;

/// The catalog bundle as a file (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Must be [`CATALOG_FORMAT_VERSION`].
    pub format_version: u32,
    /// Version label, reported in every decision.
    pub version: String,
    /// When it was built.
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    /// Categories.
    pub categories: Vec<Category>,
    /// Items.
    pub items: Vec<ItemRecord>,
    /// Offers.
    #[serde(default)]
    pub offers: Vec<OfferRecord>,
}

/// An item in a catalog file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRecord {
    /// External id (SKU), unique.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Category name (must be listed in `categories`).
    pub category: String,
    /// Brand name.
    #[serde(default)]
    pub brand: String,
    /// Regular price in cents.
    #[serde(default)]
    pub price_cents: i64,
    /// Units in stock.
    #[serde(default)]
    pub stock: u32,
    /// Minimum verified age (0: the category's).
    #[serde(default)]
    pub min_age: u8,
    /// Aisle label.
    #[serde(default)]
    pub aisle: String,
}

/// An offer in a catalog file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferRecord {
    /// External id.
    pub id: String,
    /// The item it applies to.
    pub item_id: String,
    /// Discount in percent.
    pub discount_percent: u32,
    /// Lowest eligible loyalty tier ("none", "silver", "gold", "platinum"); absent: everyone.
    #[serde(default)]
    pub min_loyalty: Option<String>,
    /// Channels ("web", "app", ...); empty: all.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Valid from, ms since the epoch.
    pub starts_at_ms: TimestampMs,
    /// Valid until (exclusive), ms since the epoch.
    pub expires_at_ms: TimestampMs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        serde_json::json!({
            "format_version": 1,
            "version": "t1",
            "categories": [{"name": "Wine", "min_age": 21}, {"name": "Socks"}],
            "items": [
                {"id": "w1", "name": "Red", "category": "Wine", "brand": "B", "price_cents": 1500, "stock": 3},
                {"id": "s1", "name": "Wool", "category": "Socks", "brand": "C", "price_cents": 900, "stock": 0}
            ],
            "offers": [{"id": "o1", "item_id": "s1", "discount_percent": 10, "starts_at_ms": 0, "expires_at_ms": 10}]
        })
        .to_string()
    }

    #[test]
    fn parses_and_indexes() {
        let c = Catalog::from_json(sample().as_bytes(), "test").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup("s1"), Some(1));
        assert_eq!(c.min_age(0), 21);
        assert_eq!(c.item(1).offer, Some(0));
        assert_eq!(c.items_in_category(1), &[1]);
        assert_eq!(c.meta.version, "t1");
        assert_eq!(c.meta.content_hash.len(), 64);
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let c = Catalog::from_json(sample().as_bytes(), "test").unwrap();
        let bytes = serde_json::to_vec(&c.to_file()).unwrap();
        let d = Catalog::from_json(&bytes, "again").unwrap();
        assert_eq!(c.items, d.items);
        assert_eq!(c.offers, d.offers);
    }

    #[test]
    fn new_versions_keep_indices_of_known_items() {
        let base = Catalog::from_json(sample().as_bytes(), "v1").unwrap();
        let next = serde_json::json!({
            "format_version": 1,
            "version": "t2",
            "categories": [{"name": "Socks"}, {"name": "Hats"}],
            "items": [
                {"id": "h1", "name": "Cap", "category": "Hats", "brand": "Z", "price_cents": 500, "stock": 9},
                {"id": "s1", "name": "Wool", "category": "Socks", "brand": "C", "price_cents": 950, "stock": 4}
            ],
            "offers": [{"id": "o2", "item_id": "h1", "discount_percent": 5, "starts_at_ms": 0, "expires_at_ms": 10}]
        })
        .to_string();
        let c = Catalog::from_json_over(next.as_bytes(), "v2", &base).unwrap();
        // s1 keeps index 1 with its new price; w1 stays at 0, delisted and out of stock; h1 is appended.
        assert_eq!(c.lookup("s1"), Some(1));
        assert_eq!(c.item(1).price_cents, 950);
        assert!(c.item(0).delisted && c.item(0).stock == 0);
        assert_eq!(c.lookup("h1"), Some(2));
        assert_eq!(c.categories[c.item(1).category as usize].name, "Socks");
        assert_eq!(c.item(1).category, base.item(1).category);
        assert_eq!(c.categories[c.item(2).category as usize].name, "Hats");
        assert_eq!(c.item(2).offer, Some(0));
        assert_eq!(c.offers[0].item, 2);
        assert_eq!(c.items_in_category(c.item(0).category), &[] as &[u32]);
        assert_eq!(c.to_file().items.len(), 2);
    }

    /// Brand indices are 16 bits: a 65,537th brand used to wrap to index 0 and take the first brand's name (found
    /// while writing the `catalog` fuzz target). It is refused, like a 65,537th category.
    #[test]
    fn refuses_more_brands_than_an_index_holds() {
        let file = |brands: usize| {
            serde_json::json!({
                "format_version": 1,
                "version": "many",
                "categories": [{"name": "c"}],
                "items": (0..brands)
                    .map(|k| serde_json::json!({"id": format!("i{k}"), "name": "n", "category": "c", "brand": format!("b{k}")}))
                    .collect::<Vec<_>>(),
            })
            .to_string()
        };
        let most = BrandIdx::MAX as usize + 1;
        let c = Catalog::from_json(file(most).as_bytes(), "t").unwrap();
        assert_eq!(c.brands.len(), most);
        assert_eq!(
            &*c.brands[c.item(most as ItemIdx - 1).brand as usize],
            "b65535"
        );
        let err = Catalog::from_json(file(most + 1).as_bytes(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("items[65536].brand: too many brands"), "{err}");
        // Rebasing cannot exceed it either: the union of both versions' brands.
        let fresh = Catalog::from_json(
            file(2)
                .replace("\"b0\"", "\"new-0\"")
                .replace("\"b1\"", "\"new-1\"")
                .as_bytes(),
            "t",
        )
        .unwrap();
        let err = fresh.rebased(&c).unwrap_err().to_string();
        assert!(err.contains("brands: too many"), "{err}");
    }

    #[test]
    fn refuses_inconsistent_bundles_naming_the_field() {
        let bad = sample().replace("\"Socks\"}", "\"Sox\"}");
        let err = Catalog::from_json(bad.as_bytes(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("items[1].category"), "{err}");
        let bad = sample().replace("\"format_version\":1", "\"format_version\":9");
        let err = Catalog::from_json(bad.as_bytes(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format version 9"), "{err}");
        let bad = sample().replace("\"stock\":0", "\"stock\":0,\"colour\":\"red\"");
        assert!(Catalog::from_json(bad.as_bytes(), "t").is_err());
    }
}
