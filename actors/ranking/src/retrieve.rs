//! Candidate retrieval: from a session (and what is on screen), gather up to `max_candidates` items with the raw
//! score of every generator — V-SKNN, sequential and association rules from the last item, session rules from the
//! earlier items, rules from the items on screen — and the session's own items, then fill with top sellers.
//!
//! The generators follow session-rec (`docs/BENCHMARKS.md` has the references and the measured quality):
//! - **V-SKNN** (session-rec `VMContextKNN`, rsc15 settings): the past sessions sharing an item with the current
//!   one, the `sknn_sample` most recent of them; similarity = Σ over shared items of (c/L)² (c: 1-based position of
//!   the item's last occurrence in the session of L items) / number of distinct session items; the `sknn_k` most
//!   similar; an item scores Σ similarity / step² over the neighbours containing it, where step is how far back
//!   the most recent session item the neighbour contains is.
//! - **Rules**: SR and AR rows of the last item; `sr2`/`ar2` = Σ_{k=1..3} row(d_k)/k over the 2nd–4th most recent
//!   distinct items; `srall` = SR of the last item + Σ_{k≥1} SR(d_k)/k.
//! - **Union**: every item with a V-SKNN, AR-last, SR-last, `sr2` or on-screen score, and every session item. Over
//!   `max_candidates`, the highest priority (the largest of those scores, each divided by its maximum; session
//!   items always) are kept; under it, the set is filled with the top sellers of the session's categories, then
//!   overall.
//!
//! Retrieval is request-level: the normalisers and the log-ranks among the candidates are computed here, once per
//! decision, before the candidates are scattered to the ranking shards, so nothing depends on the shard count. It
//! works in dense scratch arrays kept per thread and reset by generation stamps, so a decision allocates only its
//! output.

use std::cell::RefCell;

use aisle_domain::catalog::ItemIdx;
use aisle_domain::session::SessionView;

use crate::features::{Profile, Raw, Scale};
use crate::order;
use crate::served::{Anonymous, ServedModel};

/// What to rank for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The session (the default, empty view for an anonymous shopper or without consent).
    pub view: &'a SessionView,
    /// Items on screen.
    pub context: &'a [ItemIdx],
    /// Items the storefront asks to rank; `None`: retrieve.
    pub candidates: Option<&'a [ItemIdx]>,
}

impl Query<'_> {
    /// Whether the query carries nothing about the shopper that retrieval or the features use: no known item in
    /// the session, no cart, no affinities, no price profile, nothing on screen, no candidates given. Every such
    /// query gets the same candidates with the same features (see [`crate::rank_local`]).
    pub fn is_anonymous(&self) -> bool {
        self.context.is_empty() && self.is_on_screen_only()
    }

    /// Whether the items on screen (if any) are all the query carries about the shopper: an anonymous query but
    /// for its context. Only the on-screen rules then touch candidates; every other candidate is a top seller
    /// with the anonymous query's features (see [`crate::rank_local`]).
    pub fn is_on_screen_only(&self) -> bool {
        let v = self.view;
        self.candidates.is_none()
            && v.known_items().next().is_none()
            && v.cart.is_empty()
            && v.category_affinity.is_empty()
            && v.brand_affinity.is_empty()
            && v.log_price.is_none()
    }
}

/// The candidates of one decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retrieved {
    /// Candidates with their raw generator scores, in ascending item order.
    pub candidates: Vec<(ItemIdx, Raw)>,
    /// Request-level feature inputs.
    pub profile: Profile,
    /// The session's last known item (the source of the "last item" rules).
    pub last_item: Option<ItemIdx>,
}

/// The candidates of an on-screen-only query ([`Query::is_on_screen_only`]), split in two: those a generator
/// touched, with their raw scores, and the untouched top sellers, whose raw scores are the default ones — exactly
/// those of the anonymous query's candidates, which are scored once per served model.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct OnScreen {
    /// Candidates a generator touched (their log-ranks set), in ascending item order.
    pub(crate) touched: Vec<(ItemIdx, Raw)>,
    /// Per candidate of the anonymous query (its index): whether it is an untouched candidate here too.
    pub(crate) untouched: Vec<bool>,
    /// Candidates in all: the touched ones and the untouched top sellers.
    pub(crate) candidates: usize,
    /// Request-level feature inputs of the touched candidates.
    pub(crate) profile: Profile,
}

/// On-screen items considered.
const MAX_CONTEXT: usize = 10;

/// What retrieval knows about one item during a decision.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    raw: Raw,
    /// Association rules from the last item (only a source of candidates, not a feature).
    ar_last: f32,
    /// V-SKNN position weight (c/L)² of a session item.
    position_weight: f32,
    /// 1-based position of the item's last occurrence in the session; 0: not in the session.
    last_position: u32,
}

/// Per-thread dense scratch, sized to the catalog and the session index, reset by generation.
#[derive(Default)]
struct Scratch {
    generation: u32,
    item_stamp: Vec<u32>,
    slots: Vec<Slot>,
    candidate_stamp: Vec<u32>,
    touched: Vec<ItemIdx>,
    session_stamp: Vec<u32>,
    /// Per session (valid when stamped): Σ of the shared items' position weights, and the most recent shared
    /// item's position.
    session_similarity: Vec<f32>,
    session_latest: Vec<u32>,
    pool: Vec<u32>,
    /// (session, similarity, step)
    neighbours: Vec<(u32, f32, u32)>,
    prefix: Vec<ItemIdx>,
    distinct: Vec<ItemIdx>,
    /// Generated candidates as priority keys.
    generated: Vec<u64>,
    candidates: Vec<ItemIdx>,
    ranked: Vec<u64>,
    /// `ln(k)` for k in 0..=max_candidates + 2 (the log-ranks' values, computed once per thread).
    ln: Vec<f32>,
}

impl Scratch {
    fn prepare(&mut self, items: usize, sessions: usize, max_candidates: usize) {
        if self.ln.len() < max_candidates + 3 {
            self.ln = (0..max_candidates + 3).map(|k| (k as f32).ln()).collect();
        }
        if self.item_stamp.len() != items {
            self.item_stamp = vec![0; items];
            self.candidate_stamp = vec![0; items];
            self.slots = vec![Slot::default(); items];
        }
        if self.session_stamp.len() != sessions {
            self.session_stamp = vec![0; sessions];
            self.session_similarity = vec![0.0; sessions];
            self.session_latest = vec![0; sessions];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stamps from 2^32 decisions ago could collide; clear them.
            self.item_stamp.fill(0);
            self.candidate_stamp.fill(0);
            self.session_stamp.fill(0);
            self.generation = 1;
        }
        self.touched.clear();
        self.pool.clear();
        self.neighbours.clear();
        self.prefix.clear();
        self.distinct.clear();
        self.candidates.clear();
    }

    #[inline]
    fn slot(&mut self, item: ItemIdx) -> &mut Slot {
        let i = item as usize;
        if self.item_stamp[i] != self.generation {
            self.item_stamp[i] = self.generation;
            self.slots[i] = Slot::default();
            self.touched.push(item);
        }
        &mut self.slots[i]
    }

    /// The item's slot if it was touched in this decision.
    #[inline]
    fn peek(&self, item: ItemIdx) -> Option<&Slot> {
        let i = item as usize;
        (self.item_stamp[i] == self.generation).then(|| &self.slots[i])
    }

    #[inline]
    fn nominate(&mut self, item: ItemIdx) {
        let i = item as usize;
        if self.candidate_stamp[i] != self.generation {
            self.candidate_stamp[i] = self.generation;
            self.candidates.push(item);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Gathers the candidates of one decision.
pub fn retrieve(model: &ServedModel, query: &Query<'_>) -> Retrieved {
    SCRATCH.with(|s| retrieve_with(model, query, &mut s.borrow_mut()))
}

fn inverse(max: f32) -> f32 {
    if max > 0.0 { 1.0 / max } else { 0.0 }
}

fn retrieve_with(model: &ServedModel, query: &Query<'_>, s: &mut Scratch) -> Retrieved {
    let generated = generate(model, query, s);
    match query.candidates {
        Some(given) => {
            for &i in given {
                if (i as usize) < model.items.len() {
                    s.nominate(i);
                }
            }
        }
        None => union(
            model,
            query.view,
            s,
            &generated.scale,
            generated.inv_ar_last,
        ),
    }
    let candidates = finish(model, s, |s, i| {
        s.peek(i).map_or_else(Raw::default, |slot| slot.raw)
    });
    Retrieved {
        candidates,
        profile: profile(query.view, &generated),
        last_item: generated.last_item,
    }
}

/// Retrieves the candidates of an on-screen-only query ([`Query::is_on_screen_only`]) without materialising the
/// untouched top sellers: the same candidate set as [`retrieve`], in two parts (see [`OnScreen`]).
///
/// `None` when a normaliser is not finite (a generator's largest score is subnormal): an untouched candidate's
/// zero score times it would not be zero, so its features would differ from the anonymous query's; [`retrieve`]
/// handles that case.
pub(crate) fn retrieve_on_screen(
    model: &ServedModel,
    anonymous: &Anonymous,
    query: &Query<'_>,
) -> Option<OnScreen> {
    debug_assert!(query.is_on_screen_only());
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let generated = generate(model, query, s);
        let sc = &generated.scale;
        if ![
            sc.vsknn,
            sc.sr_last,
            sc.sr_session,
            sc.ar_session,
            sc.sr_all,
            sc.context,
        ]
        .iter()
        .all(|x| x.is_finite())
        {
            return None;
        }
        // The union as `union` makes it (no session, so no categories to draw from): the generated items, then
        // top sellers until the set is full. Only touched items are kept in `s.candidates`; the untouched top
        // sellers are marked by their index among the anonymous query's candidates.
        let max = model.params.max_candidates;
        select_generated(model, s, &generated.scale, generated.inv_ar_last);
        let mut untouched = vec![false; anonymous.candidates.len()];
        let mut count = s.candidates.len();
        for (k, &item) in model.popular.iter().enumerate() {
            if count >= max {
                break;
            }
            let i = item as usize;
            if s.candidate_stamp[i] == s.generation {
                continue;
            }
            s.candidate_stamp[i] = s.generation;
            count += 1;
            if s.item_stamp[i] == s.generation {
                s.candidates.push(item);
            } else {
                // The anonymous query's candidates are the top sellers its own fill walked, which reaches at
                // least as far as this one (it starts from no generated item).
                untouched[anonymous.popular_index[k] as usize] = true;
            }
        }
        let touched = finish(model, s, |s, i| {
            s.peek(i).map_or_else(Raw::default, |slot| slot.raw)
        });
        Some(OnScreen {
            touched,
            untouched,
            candidates: count,
            profile: profile(query.view, &generated),
        })
    })
}

/// What the generators found, before the union.
struct Generated {
    scale: Scale,
    inv_ar_last: f32,
    n_neighbours: usize,
    last_item: Option<ItemIdx>,
}

fn profile(view: &SessionView, g: &Generated) -> Profile {
    Profile {
        scale: g.scale,
        log_neighbours: (g.n_neighbours as f32).ln_1p(),
        inv_neighbours: 1.0 / g.n_neighbours.max(1) as f32,
        categories: view.category_affinity.clone(),
        brands: view.brand_affinity.clone(),
        log_price: view.log_price,
    }
}

/// Orders the nominated candidates (`s.candidates`) by item, takes their raw scores and sets their log-ranks.
fn finish(
    model: &ServedModel,
    s: &mut Scratch,
    raw: impl Fn(&Scratch, ItemIdx) -> Raw,
) -> Vec<(ItemIdx, Raw)> {
    s.candidates.sort_unstable();
    let mut candidates: Vec<(ItemIdx, Raw)> = Vec::with_capacity(s.candidates.len());
    for &i in &s.candidates {
        candidates.push((i, raw(s, i)));
    }
    let missing = ((model.params.max_candidates + 2) as f32).ln();
    log_ranks(
        &mut s.ranked,
        &s.ln,
        &mut candidates,
        missing,
        |r| r.vsknn,
        |r, v| r.vsknn_lrank = v,
    );
    log_ranks(
        &mut s.ranked,
        &s.ln,
        &mut candidates,
        missing,
        |r| r.sr_last,
        |r, v| r.sr_last_lrank = v,
    );
    log_ranks(
        &mut s.ranked,
        &s.ln,
        &mut candidates,
        missing,
        |r| r.sr_all,
        |r, v| r.sr_all_lrank = v,
    );
    candidates
}

/// Runs the generators over the session and the items on screen, filling the scratch's slots.
fn generate(model: &ServedModel, query: &Query<'_>, s: &mut Scratch) -> Generated {
    let p = &model.params;
    let n_items = model.items.len();
    s.prepare(n_items, model.sessions.rows(), p.max_candidates);
    let view = query.view;

    // The session's known items, their counts, recency and V-SKNN position weights.
    s.prefix
        .extend(view.known_items().filter(|&i| (i as usize) < n_items));
    let len = s.prefix.len();
    for pos in 0..len {
        let item = s.prefix[pos];
        let c = (pos + 1) as f32 / len as f32;
        let slot = s.slot(item);
        slot.raw.seen_count = slot.raw.seen_count.saturating_add(1);
        slot.raw.seen_steps = (len - 1 - pos).min(u16::MAX as usize - 1) as u16;
        slot.last_position = (pos + 1) as u32;
        slot.position_weight = c * c;
    }
    // Distinct items, most recent first.
    for pos in (0..len).rev() {
        let item = s.prefix[pos];
        if s.slots[item as usize].last_position == (pos + 1) as u32 {
            s.distinct.push(item);
        }
    }
    for &item in &view.cart {
        if (item as usize) < n_items {
            s.slot(item).raw.in_cart = true;
        }
    }

    let n_neighbours = session_knn(model, s, len);

    // Rules from the last item, the earlier distinct items and the items on screen.
    let last_item = s.distinct.first().copied();
    if let Some(last) = last_item {
        for (t, w) in model.sr.pairs(last as usize) {
            let raw = &mut s.slot(t).raw;
            raw.sr_last += w;
            raw.sr_all += w;
        }
        for (t, w) in model.ar.pairs(last as usize) {
            s.slot(t).ar_last += w;
        }
    }
    for k in 1..s.distinct.len() {
        let source = s.distinct[k] as usize;
        let weight = 1.0 / k as f32;
        let near = k <= p.session_rule_items;
        for (t, w) in model.sr.pairs(source) {
            let raw = &mut s.slot(t).raw;
            raw.sr_all += weight * w;
            if near {
                raw.sr_session += weight * w;
            }
        }
        if near {
            for (t, w) in model.ar.pairs(source) {
                s.slot(t).raw.ar_session += weight * w;
            }
        }
    }
    for &c in query.context.iter().take(MAX_CONTEXT) {
        if (c as usize) < n_items {
            for (t, w) in model.ar.pairs(c as usize) {
                s.slot(t).raw.context += w;
            }
        }
    }

    // Normalisers over every item scored.
    let (
        mut vsknn,
        mut sr_last,
        mut ar_last,
        mut sr_session,
        mut ar_session,
        mut sr_all,
        mut context,
    ) = (0f32, 0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
    for &i in &s.touched {
        let slot = &s.slots[i as usize];
        let r = &slot.raw;
        vsknn = vsknn.max(r.vsknn);
        sr_last = sr_last.max(r.sr_last);
        ar_last = ar_last.max(slot.ar_last);
        sr_session = sr_session.max(r.sr_session);
        ar_session = ar_session.max(r.ar_session);
        sr_all = sr_all.max(r.sr_all);
        context = context.max(r.context);
    }
    Generated {
        scale: Scale {
            vsknn: inverse(vsknn),
            sr_last: inverse(sr_last),
            sr_session: inverse(sr_session),
            ar_session: inverse(ar_session),
            sr_all: inverse(sr_all),
            context: inverse(context),
        },
        inv_ar_last: inverse(ar_last),
        n_neighbours,
        last_item,
    }
}

/// The candidate union: generated items by priority, else filled with top sellers.
fn union(
    model: &ServedModel,
    view: &SessionView,
    s: &mut Scratch,
    scale: &Scale,
    inv_ar_last: f32,
) {
    let p = &model.params;
    let max = p.max_candidates;
    select_generated(model, s, scale, inv_ar_last);
    'categories: for &(category, _) in view.category_affinity.iter().take(p.top_categories) {
        if let Some(top) = model.category_top.get(category as usize) {
            for &item in top.iter().take(p.category_candidates) {
                if s.candidates.len() >= max {
                    break 'categories;
                }
                s.nominate(item);
            }
        }
    }
    for &item in &model.popular {
        if s.candidates.len() >= max {
            break;
        }
        s.nominate(item);
    }
}

/// Nominates the generated items of highest priority, at most `max_candidates`.
fn select_generated(model: &ServedModel, s: &mut Scratch, scale: &Scale, inv_ar_last: f32) {
    let max = model.params.max_candidates;
    s.generated.clear();
    for &i in &s.touched {
        let slot = &s.slots[i as usize];
        let r = &slot.raw;
        let priority = if slot.last_position > 0 {
            2.0
        } else {
            (r.vsknn * scale.vsknn)
                .max(slot.ar_last * inv_ar_last)
                .max(r.sr_last * scale.sr_last)
                .max(r.sr_session * scale.sr_session)
                .max(r.context * scale.context)
        };
        if priority > 0.0 {
            // Highest priority first; among equals, the lower item.
            s.generated.push(order::descending_then_index(priority, i));
        }
    }
    if s.generated.len() > max {
        s.generated.select_nth_unstable(max - 1);
        s.generated.truncate(max);
    }
    for k in 0..s.generated.len() {
        let item = order::index(s.generated[k]);
        s.nominate(item);
    }
}

/// Sets, for every candidate, ln(1 + its competition rank by `value` among the candidates with a positive
/// value); candidates without one get `missing`.
fn log_ranks(
    ranked: &mut Vec<u64>,
    ln: &[f32],
    candidates: &mut [(ItemIdx, Raw)],
    missing: f32,
    value: impl Fn(&Raw) -> f32,
    set: impl Fn(&mut Raw, f32),
) {
    ranked.clear();
    for (k, (_, raw)) in candidates.iter_mut().enumerate() {
        let v = value(raw);
        if v > 0.0 {
            ranked.push(order::descending_then_index(v, k as u32));
        } else {
            set(raw, missing);
        }
    }
    // Equal values share a rank, so the order among them does not matter.
    ranked.sort_unstable();
    let mut rank = 1usize;
    for j in 0..ranked.len() {
        if j > 0 && ranked[j] >> 32 != ranked[j - 1] >> 32 {
            rank = j + 1;
        }
        set(
            &mut candidates[order::index(ranked[j]) as usize].1,
            ln.get(rank + 1)
                .copied()
                .unwrap_or_else(|| ((rank + 1) as f32).ln()),
        );
    }
}

/// V-SKNN over the session's `len` known items; returns the number of neighbours found.
///
/// One pass over the sessions of the session's distinct items both gathers the candidate neighbours and
/// accumulates their similarity (Σ of the shared items' position weights) and their most recent shared item — the
/// same values as scoring each candidate session's items afterwards, without a second, cache-unfriendly walk over
/// them.
fn session_knn(model: &ServedModel, s: &mut Scratch, len: usize) -> usize {
    let p = &model.params;
    if s.distinct.is_empty() || model.sessions.rows() == 0 {
        return 0;
    }
    let generation = s.generation;
    for d in 0..s.distinct.len() {
        let item = s.distinct[d];
        let slot = &s.slots[item as usize];
        let (weight, position) = (slot.position_weight, slot.last_position);
        let (sessions, _) = model.item_sessions.row(item as usize);
        for &sess in sessions {
            let i = sess as usize;
            if s.session_stamp[i] != generation {
                s.session_stamp[i] = generation;
                s.session_similarity[i] = 0.0;
                s.session_latest[i] = 0;
                s.pool.push(sess);
            }
            s.session_similarity[i] += weight;
            s.session_latest[i] = s.session_latest[i].max(position);
        }
    }
    if s.pool.len() > p.sknn_sample {
        // The most recent sessions: ids are in time order.
        s.pool
            .select_nth_unstable_by(p.sknn_sample - 1, |a, b| b.cmp(a));
        s.pool.truncate(p.sknn_sample);
    }
    let distinct = s.distinct.len() as f32;
    for &sess in &s.pool {
        let i = sess as usize;
        let similarity = s.session_similarity[i];
        if similarity > 0.0 {
            let step = len as u32 - s.session_latest[i] + 1;
            s.neighbours.push((sess, similarity / distinct, step));
        }
    }
    // Most similar first; among equals, the more recent.
    let by_similarity =
        |a: &(u32, f32, u32), b: &(u32, f32, u32)| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0));
    if s.neighbours.len() > p.sknn_k {
        s.neighbours
            .select_nth_unstable_by(p.sknn_k - 1, by_similarity);
        s.neighbours.truncate(p.sknn_k);
    }
    let found = s.neighbours.len();
    for k in 0..found {
        let (sess, similarity, step) = s.neighbours[k];
        let w = similarity / (step * step) as f32;
        for &i in model.sessions.row(sess as usize).0 {
            let raw = &mut s.slot(i).raw;
            raw.vsknn += w;
            raw.neighbours += 1.0;
        }
    }
    found
}
