//! Candidate retrieval: from a session (and what is on screen), gather ~500 candidate items with the raw score of
//! every generator — association rules, sequential rules, session-kNN, category top sellers, popular and trending
//! items, and the session's own items.
//!
//! Retrieval is request-level (it needs the whole catalog's indexes), so it runs once per decision before the
//! candidates are scattered to the ranking shards. It works in dense scratch arrays kept per thread and reset by
//! generation stamps, so a decision allocates only its output. The candidate set does not depend on how many
//! shards score it, which is what lets the trainer (one shard) and the node (N shards) agree exactly.

use std::cell::RefCell;

use aisle_domain::catalog::{CategoryIdx, ItemIdx};
use aisle_domain::session::SessionView;

use crate::features::{Profile, Raw};
use crate::served::ServedModel;

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

/// Per-thread dense scratch, sized to the catalog and the session index, reset by generation.
#[derive(Default)]
struct Scratch {
    generation: u32,
    item_stamp: Vec<u32>,
    candidate_stamp: Vec<u32>,
    raw: Vec<Raw>,
    touched: Vec<ItemIdx>,
    session_stamp: Vec<u32>,
    session_score: Vec<f32>,
    sessions_touched: Vec<u32>,
    candidates: Vec<ItemIdx>,
}

impl Scratch {
    fn prepare(&mut self, items: usize, sessions: usize) {
        if self.item_stamp.len() != items {
            self.item_stamp = vec![0; items];
            self.candidate_stamp = vec![0; items];
            self.raw = vec![Raw::default(); items];
        }
        if self.session_stamp.len() != sessions {
            self.session_stamp = vec![0; sessions];
            self.session_score = vec![0.0; sessions];
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
        self.sessions_touched.clear();
        self.candidates.clear();
    }

    #[inline]
    fn raw(&mut self, item: ItemIdx) -> &mut Raw {
        let i = item as usize;
        if self.item_stamp[i] != self.generation {
            self.item_stamp[i] = self.generation;
            self.raw[i] = Raw::default();
            self.touched.push(item);
        }
        &mut self.raw[i]
    }

    #[inline]
    fn nominate(&mut self, item: ItemIdx) {
        let i = item as usize;
        if self.candidate_stamp[i] != self.generation {
            self.candidate_stamp[i] = self.generation;
            self.candidates.push(item);
        }
    }

    fn raw_of(&self, item: ItemIdx) -> Raw {
        let i = item as usize;
        if self.item_stamp[i] == self.generation {
            self.raw[i]
        } else {
            Raw::default()
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

fn retrieve_with(model: &ServedModel, query: &Query<'_>, s: &mut Scratch) -> Retrieved {
    let p = &model.params;
    let n_items = model.items.len();
    s.prepare(n_items, model.sessions.rows());
    let view = query.view;

    // The session's own items: recency and counts (steps count every interaction, known or not).
    let len = view.items.len();
    let mut last_item = None;
    let mut sources: Vec<ItemIdx> = Vec::new();
    for (step, v) in view.items.iter().rev().enumerate() {
        let Some(item) = v.item.known() else { continue };
        if item as usize >= n_items {
            continue;
        }
        if last_item.is_none() {
            last_item = Some(item);
        }
        let raw = s.raw(item);
        if raw.seen_steps == u16::MAX {
            raw.seen_steps = step.min(u16::MAX as usize - 1) as u16;
        }
        raw.seen_count = raw.seen_count.saturating_add(1);
        s.nominate(item);
        if !sources.contains(&item) {
            sources.push(item);
        }
    }
    debug_assert!(len >= sources.len());
    for &item in &view.cart {
        if (item as usize) < n_items {
            s.raw(item).in_cart = true;
        }
    }

    // Rules from the last item, then from earlier items with decreasing weight.
    if let Some(last) = last_item {
        for (rank, (t, w)) in model.ar.pairs(last as usize).enumerate() {
            s.raw(t).ar_last += w;
            if rank < p.rule_candidates {
                s.nominate(t);
            }
        }
        for (rank, (t, w)) in model.sr.pairs(last as usize).enumerate() {
            s.raw(t).sr_last += w;
            if rank < p.rule_candidates {
                s.nominate(t);
            }
        }
    }
    for (k, &src) in sources.iter().enumerate().skip(1).take(p.session_sources) {
        let weight = 1.0 / (1.0 + k as f32);
        for (rank, (t, w)) in model.ar.pairs(src as usize).enumerate() {
            s.raw(t).ar_session += weight * w;
            if rank < p.rule_candidates / 2 {
                s.nominate(t);
            }
        }
        for (rank, (t, w)) in model.sr.pairs(src as usize).enumerate() {
            s.raw(t).sr_session += weight * w;
            if rank < p.rule_candidates / 2 {
                s.nominate(t);
            }
        }
    }
    for &c in query.context.iter().take(10) {
        if c as usize >= n_items {
            continue;
        }
        s.nominate(c);
        for (rank, (t, w)) in model.ar.pairs(c as usize).enumerate() {
            s.raw(t).context += w;
            if rank < p.rule_candidates / 2 {
                s.nominate(t);
            }
        }
    }

    session_knn(model, view, s);

    // Top sellers of the strongest categories (the session's, else the on-screen items').
    let mut categories: Vec<CategoryIdx> = view
        .category_affinity
        .iter()
        .take(p.top_categories)
        .map(|c| c.0)
        .collect();
    if categories.is_empty() {
        for &c in query.context {
            if let Some(info) = model.items.get(c as usize)
                && !categories.contains(&info.category)
                && categories.len() < p.top_categories
            {
                categories.push(info.category);
            }
        }
    }
    for c in categories {
        if let Some(top) = model.category_top.get(c as usize) {
            for &item in top.iter().take(p.category_candidates) {
                s.nominate(item);
            }
        }
    }
    for i in 0..p.popular_candidates {
        if let Some(&item) = model.popular.get(i) {
            s.nominate(item);
        }
        if let Some(&item) = model.trending.get(i) {
            s.nominate(item);
        }
    }

    let mut candidates: Vec<(ItemIdx, Raw)> = match query.candidates {
        Some(given) => {
            let mut given: Vec<ItemIdx> = given
                .iter()
                .copied()
                .filter(|&i| (i as usize) < n_items)
                .collect();
            given.sort_unstable();
            given.dedup();
            given.into_iter().map(|i| (i, s.raw_of(i))).collect()
        }
        None => s.candidates.iter().map(|&i| (i, s.raw_of(i))).collect(),
    };
    candidates.sort_unstable_by_key(|c| c.0);
    Retrieved {
        candidates,
        profile: Profile {
            categories: view.category_affinity.clone(),
            brands: view.brand_affinity.clone(),
            log_price: view.log_price,
        },
        last_item,
    }
}

/// Session-kNN: find past sessions that share the current session's items (recent items weigh more), keep the
/// `sknn_k` most similar among the `sknn_sample` most recent candidates, and score their items by similarity.
fn session_knn(model: &ServedModel, view: &SessionView, s: &mut Scratch) {
    let p = &model.params;
    let known: Vec<ItemIdx> = view
        .known_items()
        .filter(|&i| (i as usize) < model.items.len())
        .collect();
    if known.is_empty() || model.sessions.rows() == 0 {
        return;
    }
    let n = known.len() as f32;
    // Position weight of an item: of its latest occurrence, linear in position (the last item weighs 1).
    let mut weighted: Vec<(ItemIdx, f32)> = Vec::with_capacity(known.len());
    for (pos, &item) in known.iter().enumerate() {
        let w = (pos + 1) as f32 / n;
        match weighted.iter_mut().find(|e| e.0 == item) {
            Some(e) => e.1 = w,
            None => weighted.push((item, w)),
        }
    }
    let generation = s.generation;
    for &(item, w) in &weighted {
        let (sessions, _) = model.item_sessions.row(item as usize);
        for &sess in sessions.iter().take(p.sessions_per_item) {
            let i = sess as usize;
            if s.session_stamp[i] != generation {
                s.session_stamp[i] = generation;
                s.session_score[i] = 0.0;
                s.sessions_touched.push(sess);
            }
            s.session_score[i] += w;
        }
    }
    let mut pool = std::mem::take(&mut s.sessions_touched);
    if pool.len() > p.sknn_sample {
        // The most recent sessions: ids are in time order.
        pool.select_nth_unstable_by(p.sknn_sample, |a, b| b.cmp(a));
        pool.truncate(p.sknn_sample);
    }
    let score = |sess: u32, s: &Scratch| -> f32 {
        let len = model.sessions.row(sess as usize).0.len().max(1) as f32;
        s.session_score[sess as usize] / (n.sqrt() * len.sqrt())
    };
    let mut neighbours: Vec<(u32, f32)> = pool.iter().map(|&sess| (sess, score(sess, s))).collect();
    let by_similarity = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0));
    if neighbours.len() > p.sknn_k {
        neighbours.select_nth_unstable_by(p.sknn_k, by_similarity);
        neighbours.truncate(p.sknn_k);
    }
    neighbours.sort_unstable_by(by_similarity);
    s.sessions_touched = pool;
    let total: f32 = neighbours.iter().map(|n| n.1).sum();
    if total <= 0.0 {
        return;
    }
    let mut scored: Vec<ItemIdx> = Vec::new();
    for &(sess, sim) in &neighbours {
        let w = sim / total;
        for &item in model.sessions.row(sess as usize).0 {
            let raw = s.raw(item);
            if raw.sknn == 0.0 {
                scored.push(item);
            }
            raw.sknn += w;
        }
    }
    if scored.len() > p.sknn_candidates {
        let raw = &s.raw;
        scored.select_nth_unstable_by(p.sknn_candidates, |&a, &b| {
            raw[b as usize]
                .sknn
                .total_cmp(&raw[a as usize].sknn)
                .then(a.cmp(&b))
        });
        scored.truncate(p.sknn_candidates);
    }
    for item in scored {
        s.nominate(item);
    }
}
