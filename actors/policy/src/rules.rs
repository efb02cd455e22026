//! The guardrail rules bundle: what compliance and merchandising decide may never be shown.

use std::collections::HashMap;
use std::sync::Arc;

use aisle_domain::TimestampMs;
use aisle_domain::bundle::{BundleError, BundleKind, BundleMeta};
use aisle_domain::catalog::Catalog;
use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

/// The rules file format this build reads.
pub const RULES_FORMAT_VERSION: u32 = 1;

/// The rules bundle as a file (JSON). Every field but the envelope has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Must be [`RULES_FORMAT_VERSION`].
    pub format_version: u32,
    /// Version label, reported in every decision.
    pub version: String,
    /// When the rules were written.
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    /// Items with less stock than this are never shown (default 1: out-of-stock items are excluded).
    #[serde(default = "default_min_stock")]
    pub min_stock: u32,
    /// Minimum verified ages by category, on top of the catalog's own (the stricter applies).
    #[serde(default)]
    pub age_restrictions: Vec<AgeRestriction>,
    /// Offers above this discount are never served (default 30).
    #[serde(default = "default_max_discount")]
    pub max_discount_percent: u32,
    /// At most this many items of one category in an answer (default 3; 0: no cap). Experiments may lower or raise
    /// it per variant.
    #[serde(default = "default_max_per_category")]
    pub max_items_per_category: usize,
    /// Never recommend items the shopper bought in this session (default true).
    #[serde(default = "default_true")]
    pub exclude_purchased: bool,
}

fn default_min_stock() -> u32 {
    1
}
fn default_max_discount() -> u32 {
    30
}
fn default_max_per_category() -> usize {
    3
}
fn default_true() -> bool {
    true
}

/// A minimum verified age for one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRestriction {
    /// Category name, as in the catalog.
    pub category: String,
    /// Minimum verified age.
    pub min_age: u8,
}

/// The embedded default rules.
pub fn default_rules_file() -> RulesFile {
    RulesFile {
        format_version: RULES_FORMAT_VERSION,
        version: "rules-default-1".to_string(),
        created_at_ms: 0,
        min_stock: default_min_stock(),
        age_restrictions: vec![
            AgeRestriction {
                category: "Wine".into(),
                min_age: 21,
            },
            AgeRestriction {
                category: "Beer".into(),
                min_age: 21,
            },
            AgeRestriction {
                category: "Spirits".into(),
                min_age: 21,
            },
            AgeRestriction {
                category: "Energy Drinks".into(),
                min_age: 18,
            },
            AgeRestriction {
                category: "Kitchen Knives".into(),
                min_age: 18,
            },
            AgeRestriction {
                category: "Mature Video Games".into(),
                min_age: 18,
            },
        ],
        max_discount_percent: default_max_discount(),
        max_items_per_category: default_max_per_category(),
        exclude_purchased: true,
    }
}

/// Loaded, validated rules.
#[derive(Debug)]
pub struct Rules {
    /// Identity of the bundle.
    pub meta: BundleMeta,
    /// See [`RulesFile::min_stock`].
    pub min_stock: u32,
    /// See [`RulesFile::max_discount_percent`].
    pub max_discount_percent: u32,
    /// See [`RulesFile::max_items_per_category`].
    pub max_items_per_category: usize,
    /// See [`RulesFile::exclude_purchased`].
    pub exclude_purchased: bool,
    age_by_category: HashMap<String, u8>,
    /// What the guardrails read per candidate, resolved for the last catalog seen.
    resolved: ArcSwapOption<Resolved>,
}

/// The item rules that do not depend on the request, resolved once per catalog: a guardrail check per candidate
/// then reads one small dense array instead of the catalog's item records and the category table.
#[derive(Debug)]
pub struct Resolved {
    /// The catalog's content hash and item count, and the rules' minimum stock, when resolved: a catalog
    /// re-indexed over another version keeps its content hash but not its length, and `min_stock` is a public
    /// field.
    key: (String, usize, u32),
    /// Per item index: [`Resolved::UNKNOWN`] (delisted), [`Resolved::OUT_OF_STOCK`], else the verified age it
    /// needs (the strictest of the item's, its category's in the catalog and in the rules; 0: none).
    pub bars: Vec<u16>,
}

impl Resolved {
    /// The bar of a delisted item.
    pub const UNKNOWN: u16 = 0x200;
    /// The bar of an item whose stock is below the rules' minimum.
    pub const OUT_OF_STOCK: u16 = 0x100;
}

impl Rules {
    /// Validates a rules file.
    ///
    /// # Errors
    /// Refuses another format version, duplicate categories, or a discount cap above 100.
    pub fn from_file(file: RulesFile, bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        if file.format_version != RULES_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat {
                kind: BundleKind::Rules,
                found: file.format_version,
                supported: RULES_FORMAT_VERSION,
            });
        }
        if file.version.is_empty() {
            return Err(BundleError::invalid(BundleKind::Rules, "version: empty"));
        }
        if file.max_discount_percent > 100 {
            return Err(BundleError::invalid(
                BundleKind::Rules,
                "max_discount_percent: above 100",
            ));
        }
        let mut age_by_category = HashMap::new();
        for (i, r) in file.age_restrictions.iter().enumerate() {
            if age_by_category
                .insert(r.category.clone(), r.min_age)
                .is_some()
            {
                return Err(BundleError::invalid(
                    BundleKind::Rules,
                    format!("age_restrictions[{i}].category: duplicate {:?}", r.category),
                ));
            }
        }
        Ok(Self {
            meta: BundleMeta::computed(
                BundleKind::Rules,
                file.format_version,
                &file.version,
                file.created_at_ms,
                bytes,
            )
            .with_source(source),
            min_stock: file.min_stock,
            max_discount_percent: file.max_discount_percent,
            max_items_per_category: file.max_items_per_category,
            exclude_purchased: file.exclude_purchased,
            age_by_category,
            resolved: ArcSwapOption::empty(),
        })
    }

    /// Parses and validates a rules bundle (JSON).
    ///
    /// # Errors
    /// See [`Rules::from_file`]; also refuses malformed JSON and unknown fields.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        let file: RulesFile = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::invalid(BundleKind::Rules, format!("not a rules bundle: {e}"))
        })?;
        Self::from_file(file, bytes, source)
    }

    /// The embedded defaults.
    pub fn embedded() -> Self {
        let file = default_rules_file();
        let bytes = serde_json::to_vec(&file).expect("rules serialise");
        Self::from_file(file, &bytes, "embedded default").expect("default rules are valid")
    }

    /// The item rules resolved for `catalog` (computed on the first call for a catalog, then shared).
    pub fn resolved(&self, catalog: &Catalog) -> Arc<Resolved> {
        if let Some(r) = self.resolved.load_full()
            && r.key.0 == catalog.meta.content_hash
            && r.key.1 == catalog.items.len()
            && r.key.2 == self.min_stock
        {
            return r;
        }
        // Minimum verified age per category index (the stricter of catalog and rules).
        let ages: Vec<u8> = catalog
            .categories
            .iter()
            .map(|c| {
                c.min_age
                    .max(self.age_by_category.get(&c.name).copied().unwrap_or(0))
            })
            .collect();
        let bars = catalog
            .items
            .iter()
            .map(|it| {
                if it.delisted {
                    Resolved::UNKNOWN
                } else if it.stock < self.min_stock {
                    Resolved::OUT_OF_STOCK
                } else {
                    u16::from(it.min_age.max(ages[it.category as usize]))
                }
            })
            .collect();
        let r = Arc::new(Resolved {
            key: (
                catalog.meta.content_hash.clone(),
                catalog.items.len(),
                self.min_stock,
            ),
            bars,
        });
        self.resolved.store(Some(r.clone()));
        r
    }
}

impl aisle_kit::snapshot::Versioned for Rules {
    const KIND: BundleKind = BundleKind::Rules;

    fn parse(bytes: &[u8], source: &str) -> Result<Self, BundleError> {
        Self::from_json(bytes, source)
    }

    fn meta(&self) -> &BundleMeta {
        &self.meta
    }
}
