//! The hand-off barrier, as pure state: which members have not yet handed this node the sessions of the current
//! view, and whether a shopper may be served now. Time is passed in, so the logic is tested without a cluster.
//!
//! A shopper this node owned under its previous view is served at once (its session never left). A newly owned
//! shopper waits until every other member is done for the view, or until [`BARRIER_TIMEOUT`] after the view began
//! (a member that never answers cannot hold shoppers hostage).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::SharedView;

/// How long a node waits for the other members' hand-off before serving newly owned shoppers anyway.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(3);

/// Done markers kept for views not seen yet, before they are dropped.
const EARLY_VIEWS: usize = 64;

/// May a shopper be served now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Open,
    /// No: the view is not the barrier's (it changed, or began after the caller resolved it).
    Changed,
    /// Not yet: wait, at most until this instant, for the last members' hand-off.
    WaitUntil(Instant),
}

/// The barrier of the current view.
#[derive(Debug)]
pub struct Barrier {
    node_id: String,
    /// The current view.
    current: Option<SharedView>,
    /// The view this node served under before (none right after joining: it held no sessions).
    previous: Option<SharedView>,
    /// Members whose hand-off for the current view has not arrived.
    awaiting: HashSet<String>,
    /// When the current view began here.
    started: Instant,
    /// Done markers for views (by fingerprint) this node has not seen yet.
    early: HashMap<u64, HashSet<String>>,
}

impl Barrier {
    /// The barrier of a node that has seen no view.
    pub fn new(node_id: &str, now: Instant) -> Self {
        Self {
            node_id: node_id.to_string(),
            current: None,
            previous: None,
            awaiting: HashSet::new(),
            started: now,
            early: HashMap::new(),
        }
    }

    /// Begins `view`: awaits every other member, less those already done for it. Returns whether nothing is
    /// awaited (the barrier is open at once). Beginning the current view again changes nothing.
    pub fn begin(&mut self, view: &SharedView, now: Instant) -> bool {
        if self.fingerprint() == Some(view.fingerprint) {
            return self.awaiting.is_empty();
        }
        let mut awaiting: HashSet<String> = view
            .members
            .iter()
            .map(|m| m.node_id.clone())
            .filter(|id| *id != self.node_id)
            .collect();
        if let Some(early) = self.early.remove(&view.fingerprint) {
            awaiting.retain(|id| !early.contains(id));
        }
        if self.early.len() > EARLY_VIEWS {
            self.early.clear();
        }
        self.previous = self.current.replace(view.clone());
        self.awaiting = awaiting;
        self.started = now;
        self.awaiting.is_empty()
    }

    /// This node stopped being a member (fenced): it holds no sessions any more, so after rejoining every
    /// shopper it owns is newly owned.
    pub fn reset(&mut self) {
        self.current = None;
        self.previous = None;
    }

    /// Records that `from` is done handing sessions off for the view with `fingerprint`. Returns whether that
    /// opened the barrier of the current view.
    pub fn done_from(&mut self, from: &str, fingerprint: u64) -> bool {
        if self.fingerprint() == Some(fingerprint) {
            let removed = self.awaiting.remove(from);
            removed && self.awaiting.is_empty()
        } else {
            self.early
                .entry(fingerprint)
                .or_default()
                .insert(from.to_string());
            false
        }
    }

    /// Whether `shopper_id` may be served under `view` at `now`.
    pub fn gate(&self, shopper_id: &str, view: &SharedView, now: Instant) -> Gate {
        if self.fingerprint() != Some(view.fingerprint) {
            return Gate::Changed;
        }
        let newly_owned = self.previous.as_ref().is_none_or(|prev| {
            prev.shopper_owner(shopper_id)
                .is_none_or(|m| m.node_id != self.node_id)
        });
        let give_up = self.started + BARRIER_TIMEOUT;
        if !newly_owned || self.awaiting.is_empty() || now >= give_up {
            Gate::Open
        } else {
            Gate::WaitUntil(give_up)
        }
    }

    /// The fingerprint of the current view.
    pub fn fingerprint(&self) -> Option<u64> {
        self.current.as_ref().map(|v| v.fingerprint)
    }

    /// The view this node served under before the current one.
    pub fn previous(&self) -> Option<&SharedView> {
        self.previous.as_ref()
    }

    /// Members still awaited, sorted.
    pub fn awaiting(&self) -> Vec<String> {
        let mut v: Vec<String> = self.awaiting.iter().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::View;
    use crate::cluster::view::testing::view;

    /// A shopper `a` owns under `v`, and whether `a` owned it under `before` too.
    fn shopper_of(v: &View, before: &View, kept: bool) -> String {
        (0..10_000)
            .map(|i| format!("s{i}"))
            .find(|s| {
                v.shopper_owner(s).unwrap().node_id == "a"
                    && (before.shopper_owner(s).unwrap().node_id == "a") == kept
            })
            .expect("some shopper fits")
    }

    #[test]
    fn a_first_view_waits_for_every_other_member() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a", t0);
        let v = view(1, &["a", "b", "c"]);
        assert!(!b.begin(&v, t0));
        assert_eq!(b.awaiting(), ["b", "c"]);
        // Right after joining every owned shopper is newly owned.
        assert_eq!(b.gate("s1", &v, t0), Gate::WaitUntil(t0 + BARRIER_TIMEOUT));
        assert!(!b.done_from("b", v.fingerprint));
        assert!(b.done_from("c", v.fingerprint));
        assert_eq!(b.gate("s1", &v, t0), Gate::Open);
        // A second marker from the same member changes nothing.
        assert!(!b.done_from("c", v.fingerprint));
    }

    #[test]
    fn shoppers_kept_across_views_are_served_at_once() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a", t0);
        let before = view(1, &["a", "b", "c"]);
        b.begin(&before, t0);
        // c leaves: a gains some of c's shoppers and keeps its own.
        let after = view(2, &["a", "b"]);
        assert!(!b.begin(&after, t0));
        let kept = shopper_of(&after, &before, true);
        let moved_in = shopper_of(&after, &before, false);
        assert_eq!(b.gate(&kept, &after, t0), Gate::Open);
        assert!(matches!(b.gate(&moved_in, &after, t0), Gate::WaitUntil(_)));
    }

    #[test]
    fn the_barrier_opens_after_its_timeout() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a", t0);
        let v = view(1, &["a", "b"]);
        b.begin(&v, t0);
        let just_before = t0 + BARRIER_TIMEOUT - Duration::from_millis(1);
        assert!(matches!(b.gate("s", &v, just_before), Gate::WaitUntil(_)));
        assert_eq!(b.gate("s", &v, t0 + BARRIER_TIMEOUT), Gate::Open);
    }

    #[test]
    fn markers_for_a_view_not_seen_yet_count_when_it_begins() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a", t0);
        let v1 = view(1, &["a", "b"]);
        b.begin(&v1, t0);
        let v2 = view(2, &["a", "b", "c"]);
        // b is faster than a's own view of the change.
        assert!(!b.done_from("b", v2.fingerprint));
        assert!(!b.begin(&v2, t0));
        assert_eq!(b.awaiting(), ["c"]);
        assert!(b.done_from("c", v2.fingerprint));
    }

    #[test]
    fn a_different_view_is_reported_changed_and_a_reset_forgets_the_past() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a", t0);
        let v1 = view(1, &["a", "b"]);
        let v2 = view(2, &["a", "b", "c"]);
        assert_eq!(b.gate("s", &v1, t0), Gate::Changed);
        b.begin(&v1, t0);
        assert_eq!(b.gate("s", &v2, t0), Gate::Changed);
        // Beginning the same view again keeps its progress.
        b.done_from("b", v1.fingerprint);
        assert!(b.begin(&v1, t0));
        b.reset();
        assert!(b.previous().is_none());
        assert_eq!(b.gate("s", &v1, t0), Gate::Changed);
        // A node alone awaits nobody.
        let alone = view(3, &["a"]);
        assert!(b.begin(&alone, t0));
        assert_eq!(b.gate("s", &alone, t0), Gate::Open);
    }
}
