//! The feature schema: what the ranker knows about a (session, item, request) triple. The trainer and the node
//! both compute features here and nowhere else, so what a model learned from is exactly what it is served.
//!
//! The first twenty features are the recipe found on real click sessions (`docs/BENCHMARKS.md`): the scores of
//! the generators (V-SKNN, sequential rules from the last item, session rules over the earlier items), three
//! popularity windows and the session's own items. The last five are retail signals (items on screen, category
//! and brand affinity, price fit, cart); they are constant on click data and help where a catalog describes items.
//!
//! Normalisations that need the whole candidate set — `x / max x` and log-ranks among the candidates — are
//! computed once per decision by [`crate::retrieve`] (into [`Raw`] and [`Profile`]) before candidates are
//! scattered to the shards, so a candidate's features never depend on which shard scores it.
//!
//! Changing a feature, its order or its formula is a schema change: bump [`FEATURE_SCHEMA_VERSION`]; nodes refuse
//! models trained on another schema.
//!
//! This module is the bottom of the crate: it is given plain inputs ([`ItemInputs`], [`Profile`], [`Raw`]) and knows
//! nothing of models, retrieval or catalogs, so the schema can be read, tested and versioned without a bound model,
//! and everything that computes features (serving, training, the anonymous order) goes through [`compute`] alone.

use aisle_domain::catalog::{BrandIdx, CategoryIdx};

/// Version of the schema below.
pub const FEATURE_SCHEMA_VERSION: u32 = 2;

/// Number of features.
pub const N_FEATURES: usize = 25;

/// Feature names, in order.
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "vsknn_norm",
    "vsknn_lrank",
    "vsknn_log",
    "vsknn_nbfrac",
    "log_neighbours",
    "sr_norm",
    "sr_lrank",
    "sr_log",
    "sr2_norm",
    "sr2_log",
    "ar2_norm",
    "srall_norm",
    "srall_lrank",
    "lpop",
    "lrpop",
    "lr6pop",
    "count_in_session",
    "in_session",
    "is_last",
    "recency",
    "context",
    "category_affinity",
    "brand_affinity",
    "price_fit",
    "in_cart",
];

/// A feature vector.
pub type Features = [f32; N_FEATURES];

/// What the features read of one catalog item, whatever the decision: its popularity in the training data and its
/// catalog attributes. A served model keeps one per catalog item, densely, so a candidate's lookup is one load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemInputs {
    /// ln(1 + interaction events in the training data).
    pub lpop: f32,
    /// ln(1 + interaction events in the recent window).
    pub lrpop: f32,
    /// ln(1 + interaction events in the short window).
    pub lr6pop: f32,
    /// Category.
    pub category: CategoryIdx,
    /// Brand.
    pub brand: BrandIdx,
    /// Natural log of the price in cents; NaN when unknown.
    pub log_price: f32,
}

/// Raw generator scores of one candidate, gathered during retrieval (log-ranks already taken among the
/// decision's candidates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Raw {
    /// V-SKNN score: Σ over the neighbour sessions containing the item of similarity / step².
    pub vsknn: f32,
    /// ln(1 + rank by `vsknn` among the candidates); `ln(2 + max_candidates)` when `vsknn` is 0.
    pub vsknn_lrank: f32,
    /// Number of V-SKNN neighbours containing the item.
    pub neighbours: f32,
    /// Sequential rules from the session's last item.
    pub sr_last: f32,
    /// Log-rank of `sr_last` among the candidates.
    pub sr_last_lrank: f32,
    /// Sequential rules from the 2nd–4th most recent distinct items, weighted 1/k.
    pub sr_session: f32,
    /// Association rules from the 2nd–4th most recent distinct items, weighted 1/k.
    pub ar_session: f32,
    /// Sequential rules from the last item plus every earlier distinct item, weighted 1/k.
    pub sr_all: f32,
    /// Log-rank of `sr_all` among the candidates.
    pub sr_all_lrank: f32,
    /// Association rules from the items on screen.
    pub context: f32,
    /// Known session items after the item's last occurrence (0: it is the last item); `u16::MAX`: not seen.
    pub seen_steps: u16,
    /// Times seen in the session.
    pub seen_count: u16,
    /// Whether it is in the cart.
    pub in_cart: bool,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            vsknn: 0.0,
            vsknn_lrank: 0.0,
            neighbours: 0.0,
            sr_last: 0.0,
            sr_last_lrank: 0.0,
            sr_session: 0.0,
            ar_session: 0.0,
            sr_all: 0.0,
            sr_all_lrank: 0.0,
            context: 0.0,
            seen_steps: u16::MAX,
            seen_count: 0,
            in_cart: false,
        }
    }
}

/// `1 / max` of every normalised generator score over all the items it scored (0 when it scored none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scale {
    /// Of [`Raw::vsknn`].
    pub vsknn: f32,
    /// Of [`Raw::sr_last`].
    pub sr_last: f32,
    /// Of [`Raw::sr_session`].
    pub sr_session: f32,
    /// Of [`Raw::ar_session`].
    pub ar_session: f32,
    /// Of [`Raw::sr_all`].
    pub sr_all: f32,
    /// Of [`Raw::context`].
    pub context: f32,
}

/// The request-level inputs of features (the same for every candidate of a decision).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Normalisers of the generator scores.
    pub scale: Scale,
    /// ln(1 + number of V-SKNN neighbours found).
    pub log_neighbours: f32,
    /// 1 / max(1, number of V-SKNN neighbours found).
    pub inv_neighbours: f32,
    /// Category affinities (normalised, strongest first).
    pub categories: Vec<(CategoryIdx, f32)>,
    /// Brand affinities (normalised, strongest first).
    pub brands: Vec<(BrandIdx, f32)>,
    /// Mean and deviation of log prices of the session's items.
    pub log_price: Option<(f32, f32)>,
}

/// ln(1 + x), exactly, without the library call for the zero most candidates have.
#[inline]
fn ln_1p(x: f32) -> f32 {
    if x == 0.0 { 0.0 } else { x.ln_1p() }
}

fn lookup<K: PartialEq + Copy>(pairs: &[(K, f32)], key: K) -> f32 {
    pairs.iter().find(|p| p.0 == key).map_or(0.0, |p| p.1)
}

/// Computes the features of one candidate: `info` is the item's own inputs, `profile` the decision's and `raw` the
/// candidate's generator scores in this decision.
#[inline]
pub fn compute(info: &ItemInputs, profile: &Profile, raw: &Raw) -> Features {
    let s = &profile.scale;
    let seen = raw.seen_steps != u16::MAX;
    let recency = if seen {
        1.0 / (1.0 + raw.seen_steps as f32)
    } else {
        0.0
    };
    let price_fit = match (profile.log_price, info.log_price) {
        (Some((mean, dev)), lp) if lp.is_finite() => {
            let z = (lp - mean) / dev.max(0.25);
            (-0.5 * z * z).exp()
        }
        _ => 0.0,
    };
    [
        raw.vsknn * s.vsknn,
        raw.vsknn_lrank,
        ln_1p(100.0 * raw.vsknn),
        raw.neighbours * profile.inv_neighbours,
        profile.log_neighbours,
        raw.sr_last * s.sr_last,
        raw.sr_last_lrank,
        ln_1p(raw.sr_last),
        raw.sr_session * s.sr_session,
        ln_1p(raw.sr_session),
        raw.ar_session * s.ar_session,
        raw.sr_all * s.sr_all,
        raw.sr_all_lrank,
        info.lpop,
        info.lrpop,
        info.lr6pop,
        ln_1p(raw.seen_count as f32),
        f32::from(u8::from(seen)),
        f32::from(u8::from(raw.seen_steps == 0)),
        recency,
        raw.context * s.context,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema is computed from plain inputs alone, no model or catalog needed.
    #[test]
    fn features_come_from_the_inputs_alone() {
        let info = ItemInputs {
            lpop: 2.0,
            lrpop: 1.0,
            lr6pop: 0.5,
            category: 3,
            brand: 7,
            log_price: 6.0,
        };
        let profile = Profile {
            scale: Scale {
                vsknn: 0.5,
                sr_last: 0.25,
                ..Scale::default()
            },
            log_neighbours: 1.5,
            inv_neighbours: 0.1,
            categories: vec![(1, 1.0), (3, 0.4)],
            brands: vec![(7, 0.8)],
            log_price: Some((6.0, 0.5)),
        };
        let raw = Raw {
            vsknn: 1.0,
            neighbours: 4.0,
            sr_last: 2.0,
            seen_steps: 1,
            seen_count: 2,
            in_cart: true,
            ..Raw::default()
        };
        let f = compute(&info, &profile, &raw);
        let at = |name: &str| f[index_of(name).expect("a feature of the schema")];
        assert_eq!(at("vsknn_norm"), 0.5);
        assert_eq!(at("vsknn_nbfrac"), 0.4);
        assert_eq!(at("log_neighbours"), 1.5);
        assert_eq!(at("sr_norm"), 0.5);
        assert_eq!(at("sr2_log"), 0.0, "no session rule score: exactly zero");
        assert_eq!((at("lpop"), at("lrpop"), at("lr6pop")), (2.0, 1.0, 0.5));
        assert_eq!(
            (at("in_session"), at("is_last"), at("recency")),
            (1.0, 0.0, 0.5)
        );
        assert_eq!(at("count_in_session"), 3f32.ln());
        assert_eq!(at("category_affinity"), 0.4);
        assert_eq!(at("brand_affinity"), 0.8);
        assert_eq!(at("price_fit"), 1.0, "the session's mean price");
        assert_eq!(at("in_cart"), 1.0);

        // An item the session has not seen, with no known price and no affinity.
        let unseen = Raw::default();
        let info = ItemInputs {
            log_price: f32::NAN,
            category: 9,
            ..info
        };
        let f = compute(&info, &profile, &unseen);
        let at = |name: &str| f[index_of(name).expect("a feature of the schema")];
        assert_eq!((at("in_session"), at("recency")), (0.0, 0.0));
        assert_eq!((at("price_fit"), at("category_affinity")), (0.0, 0.0));
    }
}
