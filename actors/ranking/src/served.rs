//! A model bound to a catalog: every index re-keyed by catalog item index, item features laid out densely, and the
//! lists the lower fallback rungs serve from (category top sellers, the generic merchandising list).
//!
//! Binding happens once per (model, catalog) pair, off the decision path; a decision then only reads.

use std::sync::{Arc, OnceLock};

use aisle_domain::bundle::BundleMeta;
use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx};

use crate::csr::Csr;
use crate::features::{Features, ItemInputs, N_FEATURES, Profile, Raw, compute};
use crate::model::{GeneratorParams, Model, ModelHeader};

/// Dense per-item data of a served model (24 bytes per catalog item).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemInfo {
    /// Log popularity, normalised to [0, 1] (the fallback rungs' order).
    pub popularity: f32,
    /// What the features read of the item.
    pub inputs: ItemInputs,
}

/// Top sellers kept per category (for retrieval and the RULES rung).
const CATEGORY_TOP: usize = 100;
/// Length of the generic merchandising list.
const GENERIC_LEN: usize = 300;

/// A model bound to a catalog, ready to rank.
#[derive(Debug)]
pub struct ServedModel {
    /// Bundle identity (version, hash, source).
    pub meta: BundleMeta,
    /// The model's header (feature schema, training fingerprint, metrics).
    pub header: ModelHeader,
    /// The catalog it is bound to.
    pub catalog: Arc<Catalog>,
    /// Per catalog item.
    pub items: Vec<ItemInfo>,
    /// Association rules (raw counts, rows strongest first), catalog indices.
    pub ar: Csr,
    /// Sequential rules (raw weights, rows strongest first), catalog indices.
    pub sr: Csr,
    /// Session → its distinct items (catalog indices); sessions in time order.
    pub sessions: Csr,
    /// Catalog item → sessions, most recent first.
    pub item_sessions: Csr,
    /// Items by popularity, most popular first (enough to fill a candidate set).
    pub popular: Vec<ItemIdx>,
    /// Top sellers per category.
    pub category_top: Vec<Vec<ItemIdx>>,
    /// The generic merchandising list: top sellers, alternating over categories.
    pub generic: Vec<ItemIdx>,
    /// Generator settings.
    pub params: GeneratorParams,
    /// Ranker weights folded over standardisation.
    pub weights: [f32; N_FEATURES],
    /// Ranker bias.
    pub bias: f32,
    /// Model items the catalog does not know (ignored).
    pub unmatched_items: usize,
    /// The ranking of a query that carries nothing about the shopper, made on first use by scoring
    /// ([`crate::score`], which retrieves and scores it: the model only keeps it, one per model, dropped with it).
    pub(crate) anonymous: OnceLock<Anonymous>,
}

/// What ranking does for a query that carries nothing about the shopper (an empty session, nothing on screen, no
/// candidates given): the same candidates with the same features every time, so they are retrieved and scored once
/// per served model and kept in score order. Only the guardrails, which depend on the request, are applied per
/// decision.
#[derive(Debug)]
pub(crate) struct Anonymous {
    /// The candidates with their raw generator scores, in ascending item order, as retrieval gives them for such a
    /// query.
    pub(crate) candidates: Vec<(ItemIdx, Raw)>,
    /// The request-level feature inputs retrieval gives for such a query.
    pub(crate) profile: Profile,
    /// Every candidate's order key (score descending, then candidate index), sorted.
    pub(crate) order: Vec<u64>,
    /// Per entry of [`ServedModel::popular`]: its index among the candidates (`u32::MAX`: not one), so that an
    /// on-screen-only query can mark its untouched top sellers (see [`crate::retrieve::OnScreen`]).
    pub(crate) popular_index: Vec<u32>,
}

fn log_norm(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(0.0f32, f32::max);
    let denom = (1.0 + max).ln();
    values
        .iter()
        .map(|v| {
            if denom > 0.0 {
                (1.0 + v.max(0.0)).ln() / denom
            } else {
                0.0
            }
        })
        .collect()
}

fn remap(
    csr: &Csr,
    rows: usize,
    row_of: impl Fn(usize) -> Option<usize>,
    target: impl Fn(u32) -> Option<u32>,
) -> Csr {
    // Invert row_of: for each new row, which old row feeds it.
    let mut source: Vec<Option<usize>> = vec![None; rows];
    for old in 0..csr.rows() {
        if let Some(new) = row_of(old) {
            source[new] = Some(old);
        }
    }
    Csr::from_rows(source.into_iter().map(|old| {
        old.map(|o| {
            csr.pairs(o)
                .filter_map(|(t, w)| target(t).map(|t| (t, w)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    }))
}

fn ranked_by(values: &[f32], items: impl Iterator<Item = ItemIdx>, keep: usize) -> Vec<ItemIdx> {
    let mut v: Vec<ItemIdx> = items.collect();
    v.sort_by(|&a, &b| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(a.cmp(&b))
    });
    v.truncate(keep);
    v
}

impl ServedModel {
    /// Binds `model` to `catalog`.
    pub fn bind(model: &Model, catalog: Arc<Catalog>, source: &str) -> Self {
        let data = &model.data;
        let to_catalog: Vec<Option<ItemIdx>> =
            data.items.iter().map(|id| catalog.lookup(id)).collect();
        let unmatched_items = to_catalog.iter().filter(|m| m.is_none()).count();
        let n = catalog.len();
        let mut popularity = vec![0.0f32; n];
        let mut recent = vec![0.0f32; n];
        let mut short = vec![0.0f32; n];
        for (local, cat_idx) in to_catalog.iter().enumerate() {
            if let Some(c) = cat_idx {
                popularity[*c as usize] = data.counts[local];
                recent[*c as usize] = data.recent_counts[local];
                short[*c as usize] = data.short_counts[local];
            }
        }
        let pop_feature = log_norm(&popularity);
        let items: Vec<ItemInfo> = catalog
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| ItemInfo {
                popularity: pop_feature[i],
                inputs: ItemInputs {
                    lpop: popularity[i].ln_1p(),
                    lrpop: recent[i].ln_1p(),
                    lr6pop: short[i].ln_1p(),
                    category: it.category,
                    brand: it.brand,
                    log_price: if it.price_cents > 0 {
                        (it.price_cents as f32).ln()
                    } else {
                        f32::NAN
                    },
                },
            })
            .collect();
        let map_target = |t: u32| to_catalog[t as usize];
        let map_row = |r: usize| to_catalog[r].map(|c| c as usize);
        let ar = remap(&data.ar, n, map_row, map_target);
        let sr = remap(&data.sr, n, map_row, map_target);
        let sessions = Csr::from_rows((0..data.sessions.rows()).map(|s| {
            data.sessions
                .pairs(s)
                .filter_map(|(t, w)| map_target(t).map(|t| (t, w)))
                .collect::<Vec<_>>()
        }));
        let item_sessions = remap(&data.item_sessions, n, map_row, Some);

        let popular = ranked_by(
            &popularity,
            (0..n as ItemIdx).filter(|&i| popularity[i as usize] > 0.0),
            data.params.max_candidates.max(1_000),
        );
        let category_top: Vec<Vec<ItemIdx>> = (0..catalog.categories.len())
            .map(|c| {
                ranked_by(
                    &popularity,
                    catalog.items_in_category(c as CategoryIdx).iter().copied(),
                    CATEGORY_TOP,
                )
            })
            .collect();
        let generic = generic_list(&catalog, &popularity, &category_top);
        let (w, bias) = model.data.ranker.folded();
        let mut weights = [0.0f32; N_FEATURES];
        weights.copy_from_slice(&w);
        Self {
            meta: model.meta(source),
            header: model.header.clone(),
            catalog,
            items,
            ar,
            sr,
            sessions,
            item_sessions,
            popular,
            category_top,
            generic,
            params: data.params,
            weights,
            bias,
            unmatched_items,
            anonymous: OnceLock::new(),
        }
    }

    /// The features of candidate `item` of a decision (`profile`, `raw`: what retrieval gave for it): the one
    /// feature computation, fed this model's inputs for the item.
    #[inline]
    pub fn features(&self, profile: &Profile, item: ItemIdx, raw: &Raw) -> Features {
        compute(&self.items[item as usize].inputs, profile, raw)
    }

    /// The model's version label.
    pub fn version(&self) -> &str {
        &self.meta.version
    }

    /// The ranker's score of a feature vector.
    #[inline]
    pub fn score(&self, f: &[f32; N_FEATURES]) -> f32 {
        self.bias + self.weights.iter().zip(f).map(|(w, x)| w * x).sum::<f32>()
    }

    /// Approximate heap bytes held by the bound indexes.
    pub fn heap_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<ItemInfo>()
            + self.ar.heap_bytes()
            + self.sr.heap_bytes()
            + self.sessions.heap_bytes()
            + self.item_sessions.heap_bytes()
    }
}

/// Top sellers, taking categories in turn (strongest category first), so the list is varied.
fn generic_list(
    catalog: &Catalog,
    popularity: &[f32],
    category_top: &[Vec<ItemIdx>],
) -> Vec<ItemIdx> {
    let mut order: Vec<usize> = (0..category_top.len()).collect();
    let strength = |c: usize| -> f32 {
        category_top[c]
            .iter()
            .map(|&i| popularity[i as usize])
            .sum()
    };
    order.sort_by(|&a, &b| strength(b).total_cmp(&strength(a)).then(a.cmp(&b)));
    let mut out = Vec::with_capacity(GENERIC_LEN);
    let deepest = category_top.iter().map(Vec::len).max().unwrap_or(0);
    'fill: for depth in 0..deepest {
        for &c in &order {
            if let Some(&item) = category_top[c].get(depth) {
                out.push(item);
                if out.len() >= GENERIC_LEN.min(catalog.len()) {
                    break 'fill;
                }
            }
        }
    }
    out
}
