//! Scoring: features and ranker score for every candidate of one partition, the partition's best within the
//! category cap, and the merge of the partitions' bests into the decision's answer.
//!
//! A partition keeps, in score order, items that pass the guardrails' item rules and the per-category cap
//! *within the partition*, up to twice the limit (the limit alone when no cap applies). That is enough for the
//! merge to find exactly what one pass over all candidates would: an item the global cap admits is admitted
//! locally too, and the items ahead of it locally are either selected globally (fewer than the limit) or skipped
//! for a category already full of better items (no more of those than selected ones).

use aisle_domain::catalog::{CategoryIdx, ItemIdx};
use aisle_domain::session::SessionView;
use aisle_policy::{Admitted, ExclusionCounts, Guard};

use crate::features::{FEATURE_NAMES, Features, N_FEATURES, Profile, Raw};
use crate::order;
use crate::retrieve::{OnScreen, Query, Retrieved, retrieve};
use crate::served::{Anonymous, ServedModel};

/// A scored candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The item.
    pub item: ItemIdx,
    /// The ranker's score.
    pub score: f32,
    /// Its features (for reasons and audit).
    pub features: Features,
}

/// What one partition returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionResult {
    /// The partition's best, in score order.
    pub best: Vec<Scored>,
    /// Exclusions applied.
    pub exclusions: ExclusionCounts,
    /// Candidates scored.
    pub scored: usize,
}

/// Orders by score, best first; ties by item index, so the order is total and the same everywhere.
fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.item.cmp(&b.item))
}

/// How many items a partition keeps for an answer of `limit` items.
pub fn partition_keep(limit: usize, guard: &Guard<'_>) -> usize {
    if guard.category_cap() > 0 {
        2 * limit
    } else {
        limit
    }
}

/// Scores the candidates of partition `part` of `parts` (items with `item % parts == part`). `candidates` are in
/// ascending item order, as [`crate::retrieve`] gives them.
pub fn score_partition(
    model: &ServedModel,
    profile: &Profile,
    candidates: &[(ItemIdx, Raw)],
    part: usize,
    parts: usize,
    guard: &Guard<'_>,
    limit: usize,
) -> PartitionResult {
    debug_assert!(candidates.windows(2).all(|w| w[0].0 < w[1].0));
    let mut out = PartitionResult::default();
    // One key per scored candidate: score descending, then candidate index — the item order, as candidates are in
    // ascending item order. Small to select and sort; features are recomputed for the few kept.
    let mut all: Vec<u64> = Vec::with_capacity(candidates.len() / parts.max(1) + 1);
    for (k, (item, raw)) in candidates.iter().enumerate() {
        if *item as usize % parts != part {
            continue;
        }
        if let Err(e) = guard.admit(*item) {
            out.exclusions.add(e);
            continue;
        }
        let features = model.features(profile, *item, raw);
        all.push(order::descending_then_index(
            model.score(&features),
            k as u32,
        ));
    }
    out.scored = all.len();
    let keep = partition_keep(limit, guard);
    // Only the best few need an order: bring them to the front in chunks of four times what is kept, and order
    // another chunk only when the category cap skipped enough to need it.
    let chunk = (4 * keep).max(1);
    let mut ordered = 0;
    let mut idx = 0;
    let in_order = std::iter::from_fn(|| {
        if idx == all.len() {
            return None;
        }
        if idx == ordered {
            let len = all.len();
            let end = (ordered + chunk).min(len);
            let rest = &mut all[ordered..];
            if end < len {
                rest.select_nth_unstable(end - ordered - 1);
            }
            rest[..end - ordered].sort_unstable();
            ordered = end;
        }
        idx += 1;
        Some(all[idx - 1])
    });
    out.best = best_within_cap(
        model,
        guard,
        keep,
        in_order.map(|key| pick(key, candidates, profile)),
    );
    out
}

/// A scored candidate in order, with what its features are computed from (only if it is kept).
struct Pick<'a> {
    item: ItemIdx,
    score: f32,
    raw: &'a Raw,
    profile: &'a Profile,
}

/// The candidate of an [`order`] key over `candidates`.
fn pick<'a>(key: u64, candidates: &'a [(ItemIdx, Raw)], profile: &'a Profile) -> Pick<'a> {
    let (item, raw) = &candidates[order::index(key) as usize];
    Pick {
        item: *item,
        score: order::value(key),
        raw,
        profile,
    }
}

/// Walks scored candidates in order and keeps up to `keep` within the category cap.
fn best_within_cap<'a>(
    model: &ServedModel,
    guard: &Guard<'_>,
    keep: usize,
    in_order: impl Iterator<Item = Pick<'a>>,
) -> Vec<Scored> {
    let cap = guard.category_cap();
    let mut per_category: Vec<(CategoryIdx, usize)> = Vec::new();
    let mut best = Vec::with_capacity(keep);
    for p in in_order {
        if best.len() >= keep {
            break;
        }
        let category = model.items[p.item as usize].inputs.category;
        if guard.caps_category(category) {
            match per_category.iter_mut().find(|c| c.0 == category) {
                Some(c) if c.1 >= cap => continue,
                Some(c) => c.1 += 1,
                None => per_category.push((category, 1)),
            }
        }
        best.push(Scored {
            item: p.item,
            score: p.score,
            features: model.features(p.profile, p.item, p.raw),
        });
    }
    best
}

/// The anonymous query's candidates in score order ([`Query::is_anonymous`]; see [`Anonymous`]): retrieved and
/// scored on first use, then kept by the served model.
pub(crate) fn anonymous(model: &ServedModel) -> &Anonymous {
    model.anonymous.get_or_init(|| {
        let view = SessionView::default();
        let retrieved = retrieve(
            model,
            &Query {
                view: &view,
                context: &[],
                candidates: None,
            },
        );
        let mut order: Vec<u64> = retrieved
            .candidates
            .iter()
            .enumerate()
            .map(|(k, (item, raw))| {
                let features = model.features(&retrieved.profile, *item, raw);
                order::descending_then_index(model.score(&features), k as u32)
            })
            .collect();
        order.sort_unstable();
        let popular_index = model
            .popular
            .iter()
            .map(|item| {
                retrieved
                    .candidates
                    .binary_search_by_key(item, |c| c.0)
                    .map_or(u32::MAX, |k| k as u32)
            })
            .collect();
        Anonymous {
            candidates: retrieved.candidates,
            profile: retrieved.profile,
            order,
            popular_index,
        }
    })
}

/// Scores the anonymous query's candidates (see [`crate::served::Anonymous`]) from their precomputed order: the
/// same result as [`score_partition`] over all of them in one partition, without computing a feature of an item
/// that is not kept. Every candidate still passes the guardrails, so the exclusions counted are the same too.
pub(crate) fn score_anonymous(
    model: &ServedModel,
    guard: &Guard<'_>,
    limit: usize,
) -> PartitionResult {
    let anonymous = anonymous(model);
    let candidates = &anonymous.candidates;
    let mut exclusions = ExclusionCounts::default();
    let scored = guard.admit_all(candidates.iter().map(|c| c.0), &mut exclusions);
    let mut out = PartitionResult {
        scored,
        exclusions,
        ..PartitionResult::default()
    };
    let keep = partition_keep(limit, guard);
    let profile = &anonymous.profile;
    let in_order = anonymous
        .order
        .iter()
        .map(|&key| pick(key, candidates, profile))
        .filter(|p| guard.admit(p.item).is_ok());
    out.best = best_within_cap(model, guard, keep, in_order);
    out
}

/// Scores an on-screen-only query's candidates ([`OnScreen`]): the touched ones here, the untouched top sellers
/// from the anonymous query's precomputed order (their features are the same), merged in one order — the same
/// result as [`score_partition`] over all of them in one partition, with the same exclusions counted.
pub(crate) fn score_on_screen(
    model: &ServedModel,
    on: &OnScreen,
    guard: &Guard<'_>,
    limit: usize,
) -> PartitionResult {
    let anonymous = anonymous(model);
    let candidates = &anonymous.candidates;
    let mut exclusions = ExclusionCounts::default();
    let scored = guard.admit_all(
        candidates
            .iter()
            .zip(&on.untouched)
            .filter(|(_, u)| **u)
            .map(|(c, _)| c.0),
        &mut exclusions,
    );
    let mut out = PartitionResult {
        scored,
        exclusions,
        ..PartitionResult::default()
    };
    // Keys of the touched candidates (index: their place in `on.touched`, which is in item order too).
    let mut touched: Vec<u64> = Vec::with_capacity(on.touched.len());
    for (k, (item, raw)) in on.touched.iter().enumerate() {
        if let Err(e) = guard.admit(*item) {
            out.exclusions.add(e);
            continue;
        }
        let features = model.features(&on.profile, *item, raw);
        touched.push(order::descending_then_index(
            model.score(&features),
            k as u32,
        ));
    }
    out.scored += touched.len();
    touched.sort_unstable();
    let keep = partition_keep(limit, guard);
    let untouched = anonymous
        .order
        .iter()
        .filter(|&&key| on.untouched[order::index(key) as usize])
        .map(|&key| pick(key, candidates, &anonymous.profile))
        .filter(|p| guard.admit(p.item).is_ok());
    let touched = touched
        .iter()
        .map(|&key| pick(key, &on.touched, &on.profile));
    out.best = best_within_cap(model, guard, keep, merge_picks(touched, untouched));
    out
}

/// Merges two streams of picks, each in order (score descending, then item), into one in that order.
fn merge_picks<'a>(
    a: impl Iterator<Item = Pick<'a>>,
    b: impl Iterator<Item = Pick<'a>>,
) -> impl Iterator<Item = Pick<'a>> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || {
        let a_first = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => y
                .score
                .total_cmp(&x.score)
                .then(x.item.cmp(&y.item))
                .is_le(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if a_first { a.next() } else { b.next() }
    })
}

/// Scores every candidate of a decision in the calling thread and selects the answer under the guardrails: the
/// same answer as scoring the partitions on the ranking shards and merging them, without sending anything to
/// another thread. For a few hundred candidates the scoring takes tens of microseconds, less than the hand-offs of
/// a scatter and gather cost in CPU.
pub fn rank(
    model: &ServedModel,
    retrieved: &Retrieved,
    guard: &Guard<'_>,
    limit: usize,
    exclusions: &mut ExclusionCounts,
) -> Vec<RankedItem> {
    let part = score_partition(
        model,
        &retrieved.profile,
        &retrieved.candidates,
        0,
        1,
        guard,
        limit,
    );
    merge(
        model,
        vec![part],
        guard,
        limit,
        retrieved.last_item,
        exclusions,
    )
}

/// A ranked, guarded item of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedItem {
    /// The item, its score and its cleared offer.
    pub admitted: Admitted,
    /// Why it is here.
    pub reasons: Vec<String>,
}

/// Merges partition results into the answer: one order over all, then the guardrails' selection (cap, offers).
pub fn merge(
    model: &ServedModel,
    parts: Vec<PartitionResult>,
    guard: &Guard<'_>,
    limit: usize,
    last_item: Option<ItemIdx>,
    exclusions: &mut ExclusionCounts,
) -> Vec<RankedItem> {
    let mut all: Vec<Scored> = Vec::new();
    for p in parts {
        exclusions.merge(&p.exclusions);
        all.extend(p.best);
    }
    all.sort_unstable_by(better);
    let admitted = guard.select(all.iter().map(|s| (s.item, s.score)), limit, exclusions);
    admitted
        .into_iter()
        .map(|a| {
            let features = all
                .iter()
                .find(|s| s.item == a.item)
                .map(|s| s.features)
                .unwrap_or([0.0; FEATURE_NAMES.len()]);
            RankedItem {
                reasons: reasons(model, &features, last_item),
                admitted: a,
            }
        })
        .collect()
}

/// The reason code a feature gives, if any.
fn reason_of(feature: &str) -> Option<&'static str> {
    Some(match feature {
        "sr_norm" | "sr_lrank" | "sr_log" => "often_next:",
        "sr2_norm" | "sr2_log" | "ar2_norm" | "srall_norm" | "srall_lrank" => {
            "goes_with_your_session"
        }
        "vsknn_norm" | "vsknn_lrank" | "vsknn_log" | "vsknn_nbfrac" => "similar_shoppers",
        "context" => "goes_with_on_screen",
        "lpop" => "popular",
        "lrpop" | "lr6pop" => "trending",
        "count_in_session" | "in_session" | "is_last" | "recency" => "recently_viewed",
        "category_affinity" => "matches_interest",
        "brand_affinity" => "favourite_brand",
        "price_fit" => "in_your_price_range",
        "in_cart" => "in_cart",
        // A per-decision constant (how many neighbours were found): not a reason for this item.
        _ => return None,
    })
}

/// The two strongest positive contributions to the score, as reason codes.
pub fn reasons(
    model: &ServedModel,
    features: &Features,
    last_item: Option<ItemIdx>,
) -> Vec<String> {
    // Contributions in a fixed array, strongest first (ties by feature order: a total order, so an unstable sort
    // gives the one answer); only the reasons kept become strings.
    let mut contributions = [(0usize, 0f32); N_FEATURES];
    let mut n = 0;
    for (k, (f, w)) in features.iter().zip(model.weights).enumerate() {
        let c = f * w;
        if c > 0.0 {
            contributions[n] = (k, c);
            n += 1;
        }
    }
    let contributions = &mut contributions[..n];
    contributions.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut codes: [&'static str; 2] = [""; 2];
    let mut found = 0;
    for &(k, _) in contributions.iter() {
        let Some(code) = reason_of(FEATURE_NAMES[k]) else {
            continue;
        };
        if !codes[..found].contains(&code) {
            codes[found] = code;
            found += 1;
            if found == 2 {
                break;
            }
        }
    }
    if found == 0 {
        return vec!["popular".to_string()];
    }
    let catalog = &model.catalog;
    codes[..found]
        .iter()
        .map(|&code| {
            if code == "often_next:" {
                let last = last_item.map_or("", |i| &*catalog.item(i).id);
                let mut reason = String::with_capacity(code.len() + last.len());
                reason.push_str(code);
                reason.push_str(last);
                reason
            } else {
                code.to_string()
            }
        })
        .collect()
}
