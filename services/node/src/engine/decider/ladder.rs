//! The rungs of the fallback ladder, as pure functions of what they rank from, the request and the decision's
//! [`Guard`]: no clock, no actor, no I/O. The decider chooses the rung ([`super::Decider`]); each rung here only
//! answers. Every rung passes the guardrails; the storefront's own candidates, when given, are the only items a
//! rung may answer with.
//!
//! - FRESH ([`fresh`]): retrieval and scoring with the model, in the calling thread.
//! - CACHED ([`cached`]): the shopper's last FRESH answer for the surface, re-guarded.
//! - RULES ([`rules`]): top sellers of the session's (or the on-screen items') categories, padded with the
//!   merchandising list.
//! - GENERIC ([`generic`]): the merchandising list; never empty-handed for want of a source.

use aisle_domain::catalog::{Catalog, CategoryIdx, ItemIdx};
use aisle_domain::session::SessionView;
use aisle_policy::{Admitted, ExclusionCounts, Guard};
use aisle_ranking::{Query, RankedItem, ServedModel, rank_local};

use crate::engine::cache::CachedDecision;
use crate::engine::decision::{DecideInput, DecidedItem};

/// The items of a ranking, as decided.
pub fn decided(ranked: Vec<RankedItem>) -> Vec<DecidedItem> {
    ranked
        .into_iter()
        .map(|r| DecidedItem {
            item: r.admitted.item,
            score: r.admitted.score,
            offer: r.admitted.offer,
            reasons: r.reasons,
        })
        .collect()
}

fn with_reasons(
    admitted: Vec<Admitted>,
    reasons: impl Fn(ItemIdx) -> Vec<String>,
) -> Vec<DecidedItem> {
    admitted
        .into_iter()
        .map(|a| DecidedItem {
            reasons: reasons(a.item),
            item: a.item,
            score: a.score,
            offer: a.offer,
        })
        .collect()
}

/// What retrieval is asked for a decision: the shopper's view, the items on screen, the storefront's candidates.
pub fn query<'a>(view: &'a SessionView, input: &'a DecideInput) -> Query<'a> {
    Query {
        view,
        context: &input.context,
        candidates: input.candidates.as_deref(),
    }
}

/// FRESH: retrieves candidates for the shopper's `view` and scores them with `model`, in this thread (a list of
/// up to a few thousand candidates costs less here than handed to other threads and back).
pub fn fresh(
    model: &ServedModel,
    view: &SessionView,
    input: &DecideInput,
    guard: &Guard<'_>,
    exclusions: &mut ExclusionCounts,
) -> Vec<DecidedItem> {
    let local = rank_local(model, &query(view, input), guard, input.limit);
    exclusions.merge(&local.exclusions);
    decided(local.items)
}

/// CACHED: the items of `hit` (the shopper's last FRESH answer for the surface) that the guardrails still admit and,
/// when the storefront gave candidates, are among them; with their reasons. `None` when nothing is left.
pub fn cached(
    hit: &CachedDecision,
    input: &DecideInput,
    guard: &Guard<'_>,
    exclusions: &mut ExclusionCounts,
) -> Option<Vec<DecidedItem>> {
    let allowed = |item: ItemIdx| input.candidates.as_ref().is_none_or(|c| c.contains(&item));
    let admitted = guard.select(
        hit.items
            .iter()
            .filter(|c| allowed(c.item))
            .map(|c| (c.item, c.score)),
        input.limit,
        exclusions,
    );
    if admitted.is_empty() {
        return None;
    }
    Some(with_reasons(admitted, |item| {
        hit.items
            .iter()
            .find(|c| c.item == item)
            .map(|c| c.reasons.clone())
            .unwrap_or_default()
    }))
}

/// The categories the RULES rung draws from: the session's top three, else those of the items on screen.
pub fn rung_categories(
    catalog: &Catalog,
    view: Option<&SessionView>,
    context: &[ItemIdx],
) -> Vec<CategoryIdx> {
    let mut categories: Vec<CategoryIdx> = view
        .map(|v| v.category_affinity.iter().take(3).map(|c| c.0).collect())
        .unwrap_or_default();
    if categories.is_empty() {
        for &c in context {
            let category = catalog.item(c).category;
            if !categories.contains(&category) && categories.len() < 3 {
                categories.push(category);
            }
        }
    }
    categories
}

/// RULES: the storefront's candidates best sellers first; else the top sellers of [`rung_categories`] in turn,
/// padded with the merchandising list when the category cap leaves places. `None` when there is nothing to draw
/// from (no candidates, no categories) or the guardrails admit nothing.
pub fn rules(
    model: &ServedModel,
    view: Option<&SessionView>,
    input: &DecideInput,
    guard: &Guard<'_>,
    exclusions: &mut ExclusionCounts,
) -> Option<Vec<DecidedItem>> {
    let popularity = |i: ItemIdx| model.items[i as usize].popularity;
    if let Some(given) = &input.candidates {
        let mut ordered = given.clone();
        ordered.sort_by(|&a, &b| popularity(b).total_cmp(&popularity(a)).then(a.cmp(&b)));
        let admitted = guard.select(
            ordered.into_iter().map(|i| (i, popularity(i))),
            input.limit,
            exclusions,
        );
        return (!admitted.is_empty())
            .then(|| with_reasons(admitted, |_| vec!["top_seller".into()]));
    }
    let categories = rung_categories(&model.catalog, view, &input.context);
    if categories.is_empty() {
        return None;
    }
    let lists: Vec<&Vec<ItemIdx>> = categories
        .iter()
        .map(|&c| &model.category_top[c as usize])
        .collect();
    let depth = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    let interleaved = (0..depth).flat_map(|d| lists.iter().filter_map(move |l| l.get(d).copied()));
    let padded = interleaved.chain(model.generic.iter().copied());
    let admitted = guard.select(padded.map(|i| (i, popularity(i))), input.limit, exclusions);
    let catalog = &model.catalog;
    (!admitted.is_empty()).then(|| {
        with_reasons(admitted, |item| {
            let category = catalog.item(item).category;
            if categories.contains(&category) {
                vec![format!(
                    "top_in_category:{}",
                    catalog.categories[category as usize].name
                )]
            } else {
                vec!["merchandising".into()]
            }
        })
    })
}

/// GENERIC, the last rung: the storefront's candidates in its order, else the merchandising list (computed when the
/// model was bound), under the guardrails.
pub fn generic(
    model: &ServedModel,
    input: &DecideInput,
    guard: &Guard<'_>,
    exclusions: &mut ExclusionCounts,
) -> Vec<DecidedItem> {
    let ranked = |n: usize| move |(k, &i): (usize, &ItemIdx)| (i, 1.0 - k as f32 / n.max(1) as f32);
    let admitted = match &input.candidates {
        Some(given) => guard.select(
            given.iter().enumerate().map(ranked(given.len())),
            input.limit,
            exclusions,
        ),
        None => guard.select(
            model
                .generic
                .iter()
                .enumerate()
                .map(ranked(model.generic.len())),
            input.limit,
            exclusions,
        ),
    };
    with_reasons(admitted, |_| vec!["merchandising".into()])
}

#[cfg(test)]
mod tests {
    use aisle_domain::catalog::ItemIdx;
    use aisle_domain::request::{Channel, ShopperAttributes, Surface};
    use aisle_policy::{ExclusionCounts, Guard, PolicyContext, Rules};
    use tokio::time::Instant;

    use super::*;
    use crate::engine::cache::CachedItem;
    use crate::testing::{served, viewed};

    fn input(limit: usize) -> DecideInput {
        DecideInput {
            shopper_id: "s1".into(),
            surface: Surface::Home,
            channel: Channel::Web,
            limit,
            candidates: None,
            unknown_candidates: 0,
            context: Vec::new(),
            consent: Some(true),
            attributes: ShopperAttributes::default(),
            store_id: String::new(),
            region: String::new(),
            device: String::new(),
            request_id: String::new(),
            client: String::new(),
        }
    }

    /// The guard of an anonymous web shopper (no verified age) under the embedded rules, with no category cap
    /// unless `cap` is given.
    fn guarded<T>(model: &ServedModel, cap: usize, f: impl FnOnce(&Guard<'_>) -> T) -> T {
        let rules = Rules::embedded();
        let ctx = PolicyContext {
            attributes: ShopperAttributes::default(),
            channel: Channel::Web,
            purchased: &[],
            now_ms: aisle_domain::now_ms(),
            max_items_per_category: cap,
        };
        f(&Guard::new(&rules, &model.catalog, ctx))
    }

    fn ids(items: &[DecidedItem]) -> Vec<ItemIdx> {
        items.iter().map(|i| i.item).collect()
    }

    /// Whether every item is one the guardrails admit.
    fn all_admitted(model: &ServedModel, items: &[DecidedItem]) -> bool {
        guarded(model, 0, |g| items.iter().all(|i| g.admit(i.item).is_ok()))
    }

    /// Items the guardrails refuse for this shopper (an age-restricted or an out-of-stock one), and one they admit.
    fn refused_and_admitted(model: &ServedModel) -> (Vec<ItemIdx>, ItemIdx) {
        guarded(model, 0, |g| {
            let all = 0..model.catalog.len() as ItemIdx;
            let refused: Vec<ItemIdx> = all
                .clone()
                .filter(|&i| g.admit(i).is_err())
                .take(3)
                .collect();
            let admitted = all.into_iter().find(|&i| g.admit(i).is_ok()).unwrap();
            (refused, admitted)
        })
    }

    #[test]
    fn generic_answers_the_merchandising_list_under_the_guardrails_or_the_storefronts_own_order() {
        let model = served();
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| generic(&model, &input(10), g, &mut ex));
        assert_eq!(items.len(), 10);
        assert!(all_admitted(&model, &items));
        assert!(items.iter().all(|i| i.reasons == ["merchandising"]));
        let merchandising: Vec<ItemIdx> = model
            .generic
            .iter()
            .copied()
            .filter(|&i| guarded(&model, 0, |g| g.admit(i).is_ok()))
            .take(10)
            .collect();
        assert_eq!(
            ids(&items),
            merchandising,
            "the list's order, refused items skipped"
        );
        // The storefront's candidates, in its order; refused ones are dropped and counted.
        let (refused, admitted) = refused_and_admitted(&model);
        let mut given = input(10);
        given.candidates = Some(vec![refused[0], admitted, refused[1]]);
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| generic(&model, &given, g, &mut ex));
        assert_eq!(ids(&items), [admitted]);
        assert_eq!(ex.iter().map(|(_, n)| n).sum::<u32>(), 2);
    }

    #[test]
    fn rules_answers_top_sellers_of_the_sessions_categories_and_otherwise_of_the_items_on_screen() {
        let model = served();
        let catalog = &model.catalog;
        let tea = model
            .category_top
            .iter()
            .position(|l| l.len() >= 3)
            .unwrap();
        let seen: Vec<ItemIdx> = model.category_top[tea][..3].to_vec();
        let view = viewed(catalog, &seen);
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| {
            rules(&model, Some(&view), &input(5), g, &mut ex)
        })
        .unwrap();
        assert!(all_admitted(&model, &items));
        let name = &catalog.categories[tea].name;
        let in_category = items
            .iter()
            .filter(|i| i.reasons == [format!("top_in_category:{name}")])
            .count();
        assert!(in_category >= 1, "{items:?}");
        assert_eq!(
            rung_categories(catalog, Some(&view), &[]),
            vec![tea as u16],
            "the session's category"
        );
        // No session: the categories of what is on screen.
        let mut on_screen = input(5);
        on_screen.context = vec![seen[0]];
        assert_eq!(
            rung_categories(catalog, None, &on_screen.context),
            vec![tea as u16]
        );
        let from_screen =
            guarded(&model, 0, |g| rules(&model, None, &on_screen, g, &mut ex)).unwrap();
        assert_eq!(from_screen, items, "the same categories, the same answer");
        // Nothing to draw from: no answer, the ladder goes on.
        assert!(guarded(&model, 0, |g| rules(&model, None, &input(5), g, &mut ex)).is_none());
    }

    #[test]
    fn rules_ranks_the_storefronts_candidates_best_sellers_first() {
        let model = served();
        let popular = &model.popular;
        let given = vec![popular[40], popular[2], popular[20]];
        let mut request = input(10);
        request.candidates = Some(given);
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| rules(&model, None, &request, g, &mut ex)).unwrap();
        let admitted: Vec<ItemIdx> = [popular[2], popular[20], popular[40]]
            .into_iter()
            .filter(|&i| guarded(&model, 0, |g| g.admit(i).is_ok()))
            .collect();
        assert_eq!(ids(&items), admitted);
        assert!(items.iter().all(|i| i.reasons == ["top_seller"]));
    }

    #[test]
    fn cached_serves_what_the_guardrails_still_admit_with_its_reasons() {
        let model = served();
        let (refused, admitted) = refused_and_admitted(&model);
        let hit = CachedDecision {
            items: [refused[0], admitted]
                .iter()
                .map(|&item| CachedItem {
                    item,
                    score: 0.5,
                    reasons: vec![format!("because:{item}")],
                })
                .collect(),
            model_version: "m".into(),
            catalog_hash: model.catalog.meta.content_hash.clone(),
            made_at: Instant::now(),
        };
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| cached(&hit, &input(10), g, &mut ex)).unwrap();
        assert_eq!(
            ids(&items),
            [admitted],
            "an item no longer admitted is not served"
        );
        assert_eq!(items[0].reasons, [format!("because:{admitted}")]);
        // The storefront's candidates bound the answer; nothing left is no answer.
        let mut other = input(10);
        other.candidates = Some(vec![refused[0]]);
        assert!(guarded(&model, 0, |g| cached(&hit, &other, g, &mut ex)).is_none());
    }

    #[test]
    fn fresh_ranks_for_the_session_within_the_limit_and_the_guardrails() {
        let model = served();
        let catalog = &model.catalog;
        let seen: Vec<ItemIdx> = model.popular[..5].to_vec();
        let view = viewed(catalog, &seen);
        let mut ex = ExclusionCounts::default();
        let items = guarded(&model, 0, |g| fresh(&model, &view, &input(8), g, &mut ex));
        assert_eq!(items.len(), 8);
        assert!(all_admitted(&model, &items));
        assert!(
            items.windows(2).all(|w| w[0].score >= w[1].score),
            "best first"
        );
        assert!(items.iter().all(|i| !i.reasons.is_empty()));
        // Deterministic: the same inputs, the same answer.
        let again = guarded(&model, 0, |g| fresh(&model, &view, &input(8), g, &mut ex));
        assert_eq!(again, items);
        // Given candidates: only those.
        let mut request = input(8);
        let given: Vec<ItemIdx> = model.popular[100..130].to_vec();
        request.candidates = Some(given.clone());
        let items = guarded(&model, 0, |g| fresh(&model, &view, &request, g, &mut ex));
        assert!(!items.is_empty() && items.iter().all(|i| given.contains(&i.item)));
        // A category cap holds.
        let capped = guarded(&model, 2, |g| fresh(&model, &view, &input(10), g, &mut ex));
        let mut per_category = std::collections::HashMap::new();
        for i in &capped {
            *per_category
                .entry(catalog.item(i.item).category)
                .or_insert(0) += 1;
        }
        assert!(per_category.values().all(|&n| n <= 2), "{per_category:?}");
    }
}
