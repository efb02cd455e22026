//! The hand-off barrier, as pure state: which members have not yet handed this node the sessions of the current
//! view, and whether a shopper may be served now. Time is passed in, so the logic is tested without a cluster.
//!
//! A shopper this node owned under its previous view is served at once (its session never left). A newly owned
//! shopper waits for its previous owner — the member that owned it under this node's previous view or, right
//! after joining, the member that would own it without this node:
//! - a previous owner still in the view: until it is done handing off for this view. There is no timeout: a
//!   member that has not said it is done may not have seen the view yet and may still answer as the owner, so
//!   until then the shopper's requests are answered from the lower rungs (a Decide) or refused (a Track), never
//!   by two owners;
//! - a previous owner gone from the view: at once, unless this node promised it to hold its shoppers (it asked
//!   while cut off from etcd, see [`super::Cluster::grant_hold`]); then until the promise ends.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use super::SharedView;

/// Done markers kept for views not seen yet, before they are dropped.
const EARLY_VIEWS: usize = 64;

/// May a shopper be served now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Open,
    /// No: the view is not the barrier's (it changed, or began after the caller resolved it).
    Changed,
    /// Not yet: the previous owner has not handed off for this view (wait for its `done`).
    Awaiting,
    /// Not yet: the previous owner left the view, but this node promised to hold its shoppers until then.
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
    /// Done markers for views (by fingerprint) this node has not seen yet.
    early: HashMap<u64, HashSet<String>>,
    /// Members this node promised to leave their shoppers to until then (their view held through an etcd
    /// outage), by node id.
    promises: HashMap<String, Instant>,
}

impl Barrier {
    /// The barrier of a node that has seen no view.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            current: None,
            previous: None,
            awaiting: HashSet::new(),
            early: HashMap::new(),
            promises: HashMap::new(),
        }
    }

    /// Begins `view`: awaits every other member, less those already done for it. Returns whether nothing is
    /// awaited (the barrier is open at once). Beginning the current view again changes nothing.
    pub fn begin(&mut self, view: &SharedView) -> bool {
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
        } else if self.early.contains_key(&fingerprint) || self.early.len() < EARLY_VIEWS {
            // Senders are members (their certificates say so), so a view's set holds at most its members.
            self.early
                .entry(fingerprint)
                .or_default()
                .insert(from.to_string());
            false
        } else {
            // Markers for more unseen views than any churn produces: dropped (that view's barrier then waits for
            // its timeout instead), so the map stays bounded.
            metrics::counter!("aisle_handoff_early_done_dropped_total").increment(1);
            false
        }
    }

    /// Whether `shopper_id` may be served under `view` at `now`.
    pub fn gate(&self, shopper_id: &str, view: &SharedView, now: Instant) -> Gate {
        if self.fingerprint() != Some(view.fingerprint) {
            return Gate::Changed;
        }
        let previous_owner = match &self.previous {
            Some(prev) => prev.shopper_owner(shopper_id),
            None => view.owner_without("shopper", shopper_id, &self.node_id),
        };
        let Some(previous_owner) = previous_owner.map(|m| m.node_id.as_str()) else {
            return Gate::Open;
        };
        if previous_owner == self.node_id {
            return Gate::Open;
        }
        if view.member(previous_owner).is_some() {
            return if self.awaiting.contains(previous_owner) {
                Gate::Awaiting
            } else {
                Gate::Open
            };
        }
        match self.promises.get(previous_owner) {
            Some(until) if *until > now => Gate::WaitUntil(*until),
            _ => Gate::Open,
        }
    }

    /// Records a promise to `node_id` made at `now`: none of its shoppers is served here before `until`,
    /// whatever the view. Promises that ended are dropped.
    pub fn promise(&mut self, node_id: &str, until: Instant, now: Instant) {
        self.promises.retain(|_, until| *until > now);
        let held = self.promises.entry(node_id.to_string()).or_insert(until);
        *held = (*held).max(until);
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
    use std::time::Duration;

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
    fn a_first_view_waits_for_the_member_that_held_each_shopper() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a");
        let v = view(1, &["a", "b", "c"]);
        assert!(!b.begin(&v));
        assert_eq!(b.awaiting(), ["b", "c"]);
        // Right after joining every owned shopper is newly owned; it was held by the member that would own it
        // without this node, and waits for that member only, with no timeout.
        let from_b = (0..10_000)
            .map(|i| format!("s{i}"))
            .find(|s| {
                v.shopper_owner(s).unwrap().node_id == "a"
                    && v.owner_without("shopper", s, "a").unwrap().node_id == "b"
            })
            .unwrap();
        assert_eq!(b.gate(&from_b, &v, t0), Gate::Awaiting);
        assert!(!b.done_from("c", v.fingerprint));
        assert_eq!(
            b.gate(&from_b, &v, t0 + Duration::from_secs(60)),
            Gate::Awaiting
        );
        assert!(b.done_from("b", v.fingerprint));
        assert_eq!(b.gate(&from_b, &v, t0), Gate::Open);
        // A second marker from the same member changes nothing.
        assert!(!b.done_from("c", v.fingerprint));
    }

    #[test]
    fn early_markers_stay_bounded() {
        let mut b = Barrier::new("a");
        let v = view(1, &["a", "b", "c"]);
        // Markers for views not seen yet: a flood of fingerprints keeps at most EARLY_VIEWS of them.
        for f in 0..(EARLY_VIEWS as u64 * 10) {
            assert!(!b.done_from("b", 1_000_000 + f));
        }
        assert_eq!(b.early.len(), EARLY_VIEWS);
        // The view's own barrier then awaits every other member: the dropped markers are not counted.
        assert!(!b.begin(&v));
        assert_eq!(b.awaiting(), ["b", "c"]);
    }

    #[test]
    fn shoppers_kept_across_views_are_served_at_once() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a");
        let before = view(1, &["a", "b", "c"]);
        b.begin(&before);
        // b goes: a gains some of b's shoppers and keeps its own.
        let after = view(2, &["a", "c"]);
        assert!(!b.begin(&after));
        let kept = shopper_of(&after, &before, true);
        let moved_in = shopper_of(&after, &before, false);
        assert_eq!(b.gate(&kept, &after, t0), Gate::Open);
        // b is gone from the view: nothing is awaited from it (it fenced itself before its lease ended).
        assert_eq!(b.gate(&moved_in, &after, t0), Gate::Open);
    }

    #[test]
    fn a_promise_to_a_departed_member_holds_its_shoppers_until_it_ends() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a");
        let before = view(1, &["a", "b"]);
        b.begin(&before);
        b.promise("b", t0 + Duration::from_secs(5), t0);
        let after = view(2, &["a"]);
        b.begin(&after);
        let moved_in = shopper_of(&after, &before, false);
        assert_eq!(
            b.gate(&moved_in, &after, t0 + Duration::from_secs(1)),
            Gate::WaitUntil(t0 + Duration::from_secs(5))
        );
        assert_eq!(
            b.gate(&moved_in, &after, t0 + Duration::from_secs(5)),
            Gate::Open
        );
    }

    #[test]
    fn a_leaving_member_is_awaited_without_timeout() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a");
        let before = view(1, &["a", "b"]);
        b.begin(&before);
        // b is leaving: still a member, owning nothing, handing its shoppers off.
        let mut members = before.members.clone();
        members[1].leaving = true;
        let after: SharedView = std::sync::Arc::new(View::new(2, members));
        b.begin(&after);
        let s = shopper_of(&after, &before, false);
        assert_eq!(
            b.gate(&s, &after, t0 + Duration::from_secs(3600)),
            Gate::Awaiting
        );
        b.done_from("b", after.fingerprint);
        assert_eq!(b.gate(&s, &after, t0), Gate::Open);
    }

    #[test]
    fn markers_for_a_view_not_seen_yet_count_when_it_begins() {
        let mut b = Barrier::new("a");
        let v1 = view(1, &["a", "b"]);
        b.begin(&v1);
        let v2 = view(2, &["a", "b", "c"]);
        // b is faster than a's own view of the change.
        assert!(!b.done_from("b", v2.fingerprint));
        assert!(!b.begin(&v2));
        assert_eq!(b.awaiting(), ["c"]);
        assert!(b.done_from("c", v2.fingerprint));
    }

    #[test]
    fn a_different_view_is_reported_changed_and_a_reset_forgets_the_past() {
        let t0 = Instant::now();
        let mut b = Barrier::new("a");
        let v1 = view(1, &["a", "b"]);
        let v2 = view(2, &["a", "b", "c"]);
        assert_eq!(b.gate("s", &v1, t0), Gate::Changed);
        b.begin(&v1);
        assert_eq!(b.gate("s", &v2, t0), Gate::Changed);
        // Beginning the same view again keeps its progress.
        b.done_from("b", v1.fingerprint);
        assert!(b.begin(&v1));
        b.reset();
        assert!(b.previous().is_none());
        assert_eq!(b.gate("s", &v1, t0), Gate::Changed);
        // A node alone awaits nobody.
        let alone = view(3, &["a"]);
        assert!(b.begin(&alone));
        assert_eq!(b.gate("s", &alone, t0), Gate::Open);
    }
}
