//! The published session-based baselines, ported from session-rec (rn5l/session-rec `algorithms/baselines/pop.py`,
//! `spop.py`, `ar.py`, `sr.py`, `algorithms/knn/vsknn.py`) with its rsc15 settings, so the learned ranker is compared
//! with reference implementations computed under the same protocol:
//! - **POP**: pop/(1 + pop) over event counts;
//! - **S-POP**: +1 per occurrence in the session, plus POP for the 100 most popular items;
//! - **AR**: association rules of the last item, rows pruned to their 20 strongest;
//! - **SR**: sequential rules of the last item (8 steps, weight 1/distance), pruned to 20;
//! - **V-SKNN**: session-kNN with k = 100, the 1,000 most recent candidate sessions, quadratic position weights and
//!   quadratic decay (session-rec's `VMContextKNN`, remind on).
//!
//! These are independent of the ranking crate's generators (which are unpruned and shared with serving): each
//! scores items sparsely from its own indexes over the training sessions.

use std::collections::HashMap;

use aisle_domain::event::LoggedSession;

/// Training sessions as item indices, in file order, with each session's last event time.
#[derive(Debug, Clone, Default)]
pub struct Indexed {
    /// Item ids; index = position.
    pub ids: Vec<String>,
    /// Item id → index.
    pub index: HashMap<String, u32>,
    /// (items in event order, time of the last event)
    pub sessions: Vec<(Vec<u32>, i64)>,
}

impl Indexed {
    /// Indexes the item interactions of training sessions.
    pub fn of(sessions: &[LoggedSession]) -> Self {
        let mut out = Indexed::default();
        for s in sessions {
            let mut items = Vec::new();
            let mut last = i64::MIN;
            for e in s.events.iter().filter(|e| e.kind.is_item_interaction()) {
                let next = out.ids.len() as u32;
                let i = *out.index.entry(e.item.clone()).or_insert(next);
                if i == next {
                    out.ids.push(e.item.clone());
                }
                items.push(i);
                last = last.max(e.ts_ms);
            }
            if !items.is_empty() {
                out.sessions.push((items, last));
            }
        }
        out
    }

    /// Number of items.
    pub fn items(&self) -> usize {
        self.ids.len()
    }
}

/// A baseline: scores items for a session prefix.
pub trait Baseline {
    /// The name in reports.
    fn name(&self) -> &str;
    /// The items with a positive score for `prefix` (item indices, oldest first), in any order.
    fn scores(&mut self, prefix: &[u32], out: &mut Vec<(u32, f64)>);
}

fn event_counts(data: &Indexed) -> Vec<f64> {
    let mut counts = vec![0.0; data.items()];
    for (items, _) in &data.sessions {
        for &i in items {
            counts[i as usize] += 1.0;
        }
    }
    counts
}

/// POP.
#[derive(Debug)]
pub struct Pop {
    scores: Vec<(u32, f64)>,
}

impl Pop {
    /// Fits on training sessions.
    pub fn fit(data: &Indexed) -> Self {
        let scores = event_counts(data)
            .into_iter()
            .enumerate()
            .filter(|(_, c)| *c > 0.0)
            .map(|(i, c)| (i as u32, c / (c + 1.0)))
            .collect();
        Self { scores }
    }
}

impl Baseline for Pop {
    fn name(&self) -> &str {
        "POP"
    }

    fn scores(&mut self, _prefix: &[u32], out: &mut Vec<(u32, f64)>) {
        out.clear();
        out.extend_from_slice(&self.scores);
    }
}

/// S-POP.
#[derive(Debug)]
pub struct SessionPop {
    top: Vec<(u32, f64)>,
    dense: Vec<f64>,
    touched: Vec<u32>,
}

impl SessionPop {
    /// Fits on training sessions, keeping POP for the `top_n` most popular items.
    pub fn fit(data: &Indexed, top_n: usize) -> Self {
        let counts = event_counts(data);
        let mut order: Vec<u32> = (0..data.items() as u32).collect();
        order.sort_by(|&a, &b| counts[b as usize].total_cmp(&counts[a as usize]));
        let top = order
            .into_iter()
            .take(top_n)
            .map(|i| {
                let c = counts[i as usize];
                (i, c / (c + 1.0))
            })
            .collect();
        Self {
            top,
            dense: vec![0.0; data.items()],
            touched: Vec::new(),
        }
    }
}

impl Baseline for SessionPop {
    fn name(&self) -> &str {
        "S-POP"
    }

    fn scores(&mut self, prefix: &[u32], out: &mut Vec<(u32, f64)>) {
        let add = |i: u32, v: f64, dense: &mut Vec<f64>, touched: &mut Vec<u32>| {
            if dense[i as usize] == 0.0 {
                touched.push(i);
            }
            dense[i as usize] += v;
        };
        for &(i, v) in &self.top {
            add(i, v, &mut self.dense, &mut self.touched);
        }
        for &i in prefix {
            add(i, 1.0, &mut self.dense, &mut self.touched);
        }
        drain(&mut self.dense, &mut self.touched, out);
    }
}

fn drain(dense: &mut [f64], touched: &mut Vec<u32>, out: &mut Vec<(u32, f64)>) {
    out.clear();
    for &i in touched.iter() {
        out.push((i, dense[i as usize]));
        dense[i as usize] = 0.0;
    }
    touched.clear();
}

/// A rule row being counted: target → (weight, first-insertion order).
type RuleRow = HashMap<u32, (f64, u32)>;

fn add_rule(row: &mut RuleRow, target: u32, w: f64) {
    let next = row.len() as u32;
    row.entry(target).or_insert((0.0, next)).0 += w;
}

/// Keeps each row's `keep` strongest entries (ties: first inserted first, as Python's `Counter.most_common`).
fn prune(rows: Vec<RuleRow>, keep: usize) -> Vec<Vec<(u32, f64)>> {
    rows.into_iter()
        .map(|row| {
            let mut v: Vec<(u32, f64, u32)> =
                row.into_iter().map(|(t, (w, o))| (t, w, o)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
            if keep > 0 {
                v.truncate(keep);
            }
            v.into_iter().map(|(t, w, _)| (t, w)).collect()
        })
        .collect()
}

/// Rules of the last item (AR or SR).
#[derive(Debug)]
pub struct Rules {
    name: String,
    rows: Vec<Vec<(u32, f64)>>,
}

impl Rules {
    /// session-rec `AssociationRules(pruning)`: every pair of events of a session, both ways.
    pub fn association(data: &Indexed, pruning: usize) -> Self {
        let mut rows: Vec<RuleRow> = vec![HashMap::new(); data.items()];
        for (items, _) in &data.sessions {
            for (j, &b) in items.iter().enumerate() {
                for &a in &items[..j] {
                    add_rule(&mut rows[b as usize], a, 1.0);
                    add_rule(&mut rows[a as usize], b, 1.0);
                }
            }
        }
        Self {
            name: "AR".into(),
            rows: prune(rows, pruning),
        }
    }

    /// session-rec `SequentialRules(steps, weighting="div", pruning)`.
    pub fn sequential(data: &Indexed, steps: usize, pruning: usize) -> Self {
        let mut rows: Vec<RuleRow> = vec![HashMap::new(); data.items()];
        for (items, _) in &data.sessions {
            for (j, &b) in items.iter().enumerate() {
                for d in 1..=steps.min(j) {
                    add_rule(&mut rows[items[j - d] as usize], b, 1.0 / d as f64);
                }
            }
        }
        Self {
            name: "SR".into(),
            rows: prune(rows, pruning),
        }
    }
}

impl Baseline for Rules {
    fn name(&self) -> &str {
        &self.name
    }

    fn scores(&mut self, prefix: &[u32], out: &mut Vec<(u32, f64)>) {
        out.clear();
        if let Some(&last) = prefix.last() {
            out.extend_from_slice(&self.rows[last as usize]);
        }
    }
}

/// V-SKNN.
#[derive(Debug)]
pub struct Vsknn {
    k: usize,
    sample: usize,
    /// Per session: sorted distinct items.
    session_items: Vec<Vec<u32>>,
    session_time: Vec<i64>,
    /// Per item: sessions containing it, ascending.
    item_sessions: Vec<Vec<u32>>,
    dense: Vec<f64>,
    touched: Vec<u32>,
    mark: Vec<u32>,
    epoch: u32,
}

impl Vsknn {
    /// Fits on training sessions with `k` neighbours among the `sample` most recent candidate sessions.
    pub fn fit(data: &Indexed, k: usize, sample: usize) -> Self {
        let mut item_sessions = vec![Vec::new(); data.items()];
        let mut session_items = Vec::with_capacity(data.sessions.len());
        let mut session_time = Vec::with_capacity(data.sessions.len());
        for (j, (items, last)) in data.sessions.iter().enumerate() {
            let mut u = items.clone();
            u.sort_unstable();
            u.dedup();
            for &i in &u {
                item_sessions[i as usize].push(j as u32);
            }
            session_items.push(u);
            session_time.push(*last);
        }
        Self {
            k,
            sample,
            mark: vec![0; session_items.len()],
            session_items,
            session_time,
            item_sessions,
            dense: vec![0.0; data.items()],
            touched: Vec::new(),
            epoch: 0,
        }
    }
}

impl Baseline for Vsknn {
    fn name(&self) -> &str {
        "V-SKNN"
    }

    fn scores(&mut self, prefix: &[u32], out: &mut Vec<(u32, f64)>) {
        out.clear();
        let len = prefix.len();
        if len == 0 {
            return;
        }
        // Position weight (c/L)² of each distinct item's last occurrence.
        let mut weights: Vec<(u32, f64)> = Vec::new();
        for (c, &it) in prefix.iter().enumerate() {
            let w = ((c + 1) as f64 / len as f64).powi(2);
            match weights.iter_mut().find(|e| e.0 == it) {
                Some(e) => e.1 = w,
                None => weights.push((it, w)),
            }
        }
        self.epoch += 1;
        let mut relevant: Vec<u32> = Vec::new();
        for &(it, _) in &weights {
            for &s in &self.item_sessions[it as usize] {
                if self.mark[s as usize] != self.epoch {
                    self.mark[s as usize] = self.epoch;
                    relevant.push(s);
                }
            }
        }
        relevant.sort_unstable();
        if relevant.len() > self.sample {
            let time = &self.session_time;
            relevant.sort_by(|a, b| time[*b as usize].cmp(&time[*a as usize]));
            relevant.truncate(self.sample);
        }
        let distinct = weights.len() as f64;
        let mut neighbours: Vec<(u32, f64)> = Vec::new();
        for &s in &relevant {
            let items = &self.session_items[s as usize];
            let sim: f64 = weights
                .iter()
                .filter(|(it, _)| items.binary_search(it).is_ok())
                .map(|e| e.1)
                .sum::<f64>()
                / distinct;
            if sim > 0.0 {
                neighbours.push((s, sim));
            }
        }
        neighbours.sort_by(|a, b| b.1.total_cmp(&a.1));
        neighbours.truncate(self.k);
        for &(s, sim) in &neighbours {
            let items = &self.session_items[s as usize];
            let step = prefix
                .iter()
                .rev()
                .position(|it| items.binary_search(it).is_ok())
                .map_or(len + 1, |p| p + 1);
            let w = sim / (step * step) as f64;
            for &i in items {
                if self.dense[i as usize] == 0.0 {
                    self.touched.push(i);
                }
                self.dense[i as usize] += w;
            }
        }
        drain(&mut self.dense, &mut self.touched, out);
    }
}

/// The baselines of the evaluation table, with session-rec's rsc15 settings.
pub fn standard(data: &Indexed) -> Vec<Box<dyn Baseline>> {
    vec![
        Box::new(Pop::fit(data)),
        Box::new(SessionPop::fit(data, 100)),
        Box::new(Rules::association(data, 20)),
        Box::new(Rules::sequential(data, 8, 20)),
        Box::new(Vsknn::fit(data, 100, 1_000)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_domain::event::{EventKind, LoggedEvent};

    fn session(id: &str, items: &[&str], t0: i64) -> LoggedSession {
        LoggedSession {
            id: id.into(),
            events: items
                .iter()
                .enumerate()
                .map(|(k, i)| LoggedEvent {
                    item: i.to_string(),
                    kind: EventKind::View,
                    ts_ms: t0 + k as i64,
                })
                .collect(),
        }
    }

    /// s1: A B C · s2: A B D · s3: B C · s4: A C, in this time order.
    fn tiny() -> Indexed {
        Indexed::of(&[
            session("s1", &["A", "B", "C"], 100),
            session("s2", &["A", "B", "D"], 200),
            session("s3", &["B", "C"], 300),
            session("s4", &["A", "C"], 400),
        ])
    }

    fn by_id(data: &Indexed, scores: &[(u32, f64)]) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = scores
            .iter()
            .map(|(i, s)| (data.ids[*i as usize].clone(), *s))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn idx(data: &Indexed, id: &str) -> u32 {
        data.index[id]
    }

    #[test]
    fn pop_and_session_pop() {
        let d = tiny();
        let mut out = Vec::new();
        Pop::fit(&d).scores(&[], &mut out);
        // A 3, B 3, C 3, D 1 events.
        assert_eq!(
            by_id(&d, &out),
            [
                ("A".into(), 0.75),
                ("B".into(), 0.75),
                ("C".into(), 0.75),
                ("D".into(), 0.5)
            ]
        );
        let mut spop = SessionPop::fit(&d, 1);
        spop.scores(&[idx(&d, "D"), idx(&d, "D")], &mut out);
        // The single top item (A, first among equals) keeps POP; D counts twice in the session.
        assert_eq!(by_id(&d, &out), [("A".into(), 0.75), ("D".into(), 2.0)]);
    }

    #[test]
    fn association_and_sequential_rules() {
        let d = tiny();
        let mut out = Vec::new();
        Rules::association(&d, 0).scores(&[idx(&d, "A")], &mut out);
        assert_eq!(
            by_id(&d, &out),
            [("B".into(), 2.0), ("C".into(), 2.0), ("D".into(), 1.0)]
        );
        Rules::association(&d, 1).scores(&[idx(&d, "A")], &mut out);
        assert_eq!(
            by_id(&d, &out),
            [("B".into(), 2.0)],
            "pruned: first inserted wins the tie"
        );
        Rules::sequential(&d, 10, 0).scores(&[idx(&d, "A")], &mut out);
        // After A: B at distance 1 twice; C at 2 (s1) and 1 (s4); D at 2.
        assert_eq!(
            by_id(&d, &out),
            [("B".into(), 2.0), ("C".into(), 1.5), ("D".into(), 0.5)]
        );
        Rules::sequential(&d, 1, 0).scores(&[idx(&d, "A")], &mut out);
        assert_eq!(by_id(&d, &out), [("B".into(), 2.0), ("C".into(), 1.0)]);
    }

    #[test]
    fn vsknn_weighs_positions_and_decays_by_step() {
        let d = tiny();
        let mut v = Vsknn::fit(&d, 100, 1_000);
        let mut out = Vec::new();
        v.scores(&[idx(&d, "A"), idx(&d, "B")], &mut out);
        // Position weights: A (1/2)² = 0.25, B 1; 2 distinct items.
        // s1 {A,B,C}: sim 1.25/2 = 0.625, contains B (step 1) → 0.625 to A, B, C.
        // s2 {A,B,D}: 0.625 to A, B, D. s3 {B,C}: 0.5 to B, C. s4 {A,C}: sim 0.125, step 2 → 0.03125 to A, C.
        let got = by_id(&d, &out);
        let want = [
            ("A", 0.625 + 0.625 + 0.03125),
            ("B", 0.625 + 0.625 + 0.5),
            ("C", 0.625 + 0.5 + 0.03125),
            ("D", 0.625),
        ];
        for ((gid, g), (wid, w)) in got.iter().zip(want) {
            assert_eq!(gid, wid);
            assert!((g - w).abs() < 1e-12, "{gid}: {g} vs {w}");
        }
        // With k = 1 only the most similar session counts (s1 and s2 tie; the first found is kept).
        let mut one = Vsknn::fit(&d, 1, 1_000);
        one.scores(&[idx(&d, "A"), idx(&d, "B")], &mut out);
        assert_eq!(out.len(), 3);
        // With a sample of 1 only the most recent candidate session (s4) is compared.
        let mut recent = Vsknn::fit(&d, 100, 1);
        recent.scores(&[idx(&d, "A"), idx(&d, "B")], &mut out);
        assert_eq!(
            by_id(&d, &out),
            [("A".into(), 0.03125), ("C".into(), 0.03125)]
        );
    }
}
