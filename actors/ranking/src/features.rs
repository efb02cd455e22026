//! The feature schema: what the ranker knows about a (session, item, request) triple. The trainer and the node
//! both compute features here and nowhere else, so what a model learned from is exactly what it is served.
//!
//! Changing a feature, its order or its formula is a schema change: bump [`FEATURE_SCHEMA_VERSION`]; nodes refuse
//! models trained on another schema.

use aisle_domain::catalog::{BrandIdx, CategoryIdx, ItemIdx};

use crate::served::ServedModel;

/// Version of the schema below.
pub const FEATURE_SCHEMA_VERSION: u32 = 1;

/// Number of features.
pub const N_FEATURES: usize = 14;

/// Feature names, in order.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "ar_last",
    "ar_session",
    "sr_last",
    "sr_session",
    "sknn",
    "context",
    "popularity",
    "trending",
    "seen_recency",
    "seen_count",
    "category_affinity",
    "brand_affinity",
    "price_fit",
    "in_cart",
];

/// A feature vector.
pub type Features = [f32; N_FEATURES];

/// Raw generator scores of one candidate, gathered during retrieval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Raw {
    /// Association rules from the session's last item.
    pub ar_last: f32,
    /// Association rules from earlier session items (recency-weighted).
    pub ar_session: f32,
    /// Sequential rules from the last item.
    pub sr_last: f32,
    /// Sequential rules from earlier items (weighted by distance).
    pub sr_session: f32,
    /// Session-kNN score (normalised by the neighbours' total similarity).
    pub sknn: f32,
    /// Association rules from the items on screen.
    pub context: f32,
    /// Steps since the item was last seen in the session (0: it is the last item); `u16::MAX`: not seen.
    pub seen_steps: u16,
    /// Times seen in the session.
    pub seen_count: u16,
    /// Whether it is in the cart.
    pub in_cart: bool,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            ar_last: 0.0,
            ar_session: 0.0,
            sr_last: 0.0,
            sr_session: 0.0,
            sknn: 0.0,
            context: 0.0,
            seen_steps: u16::MAX,
            seen_count: 0,
            in_cart: false,
        }
    }
}

/// The request-level inputs of features (the same for every candidate of a decision).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Category affinities (normalised, strongest first).
    pub categories: Vec<(CategoryIdx, f32)>,
    /// Brand affinities (normalised, strongest first).
    pub brands: Vec<(BrandIdx, f32)>,
    /// Mean and deviation of log prices of the session's items.
    pub log_price: Option<(f32, f32)>,
}

fn lookup<K: PartialEq + Copy>(pairs: &[(K, f32)], key: K) -> f32 {
    pairs.iter().find(|p| p.0 == key).map_or(0.0, |p| p.1)
}

/// Computes the features of `item`.
#[inline]
pub fn compute(model: &ServedModel, profile: &Profile, item: ItemIdx, raw: &Raw) -> Features {
    let i = item as usize;
    let info = &model.items[i];
    let seen_recency = if raw.seen_steps == u16::MAX {
        0.0
    } else {
        1.0 / (1.0 + raw.seen_steps as f32)
    };
    let price_fit = match (profile.log_price, info.log_price) {
        (Some((mean, dev)), lp) if lp.is_finite() => {
            let z = (lp - mean) / dev.max(0.25);
            (-0.5 * z * z).exp()
        }
        _ => 0.0,
    };
    [
        raw.ar_last,
        raw.ar_session,
        raw.sr_last,
        raw.sr_session,
        raw.sknn,
        raw.context,
        info.popularity,
        info.trending,
        seen_recency,
        (1.0 + raw.seen_count as f32).ln(),
        lookup(&profile.categories, info.category),
        lookup(&profile.brands, info.brand),
        price_fit,
        f32::from(u8::from(raw.in_cart)),
    ]
}

/// The index of a feature by name (for reasons and reports).
pub fn index_of(name: &str) -> Option<usize> {
    FEATURE_NAMES.iter().position(|n| *n == name)
}
