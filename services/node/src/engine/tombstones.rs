//! Tombstones: forgotten shoppers, by pseudonym, with when they were forgotten. A copy of a session written before
//! that — kept by a fenced old owner, in a hand-off batch or a replica in flight, queued in an outbox or at a store
//! edge — is dropped instead of installed, for as long as any such copy can exist.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How far ahead of this node's clock a tombstone may be dated (clock skew between members, or between the cloud
/// and an edge). One dated later is refused: it would outlive its TTL by the difference, and a forged one would
/// never expire.
pub const MAX_FUTURE_MS: i64 = 60_000;

/// Whether a tombstone dated `at_ms` is dated too far in the future to accept.
pub fn too_far_ahead(at_ms: i64) -> bool {
    at_ms > aisle_domain::now_ms().saturating_add(MAX_FUTURE_MS)
}

/// Tombstones kept at once; beyond it the oldest go first (an erasure flood cannot grow memory without bound).
pub const MAX_TOMBSTONES: usize = 100_000;

/// Forgotten shoppers, by pseudonym, with when they were forgotten: a copy of a session written before that (on a
/// fenced old owner, or in a hand-off in flight) is dropped instead of installed. Kept for `ttl`, which must outlive
/// any copy: `tombstone_ttl_secs` is validated to exceed the session idle TTL (after which every kept copy has been
/// passivated) plus two leases.
///
/// Beside them, a journal of erasures kept longer (`erasure_journal_secs`, default 30 days): a store edge that was
/// offline for longer than the TTL asks for every erasure since it last synced ([`Tombstones::since`]) before its
/// queued events go up, so that they do not bring a forgotten shopper back. The journal holds at most
/// [`MAX_TOMBSTONES`] entries and only what this node learnt since it started (erasures fan out to every member, and
/// live tombstones travel with hand-offs, [`Tombstones::inherited_live`]); [`Tombstones::complete_since`] says from
/// when it is complete.
#[derive(Debug)]
pub struct Tombstones {
    ttl_ms: i64,
    by_ref: Mutex<HashMap<String, i64>>,
    /// How many the map holds, kept beside it so that the question asked on request paths — is any held? —
    /// takes no lock.
    held: AtomicUsize,
    journal: Mutex<Journal>,
}

/// Erasures by time, kept `keep_ms`.
#[derive(Debug)]
struct Journal {
    keep_ms: i64,
    entries: BTreeSet<(i64, String)>,
    /// From when this node learnt of erasures: its start, or earlier once a member's live tombstones came.
    known_since_ms: i64,
    /// Past the newest entry evicted for room (0: none evicted).
    evicted_before_ms: i64,
}

impl Tombstones {
    /// Tombstones kept for `ttl`, with no journal beyond them.
    pub fn new(ttl: Duration) -> Self {
        Self::with_journal(ttl, ttl)
    }

    /// Tombstones kept for `ttl`, and a journal of erasures kept for `journal` (at least `ttl`).
    pub fn with_journal(ttl: Duration, journal: Duration) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            ttl_ms: ms(ttl),
            by_ref: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            journal: Mutex::new(Journal {
                keep_ms: ms(journal.max(ttl)),
                entries: BTreeSet::new(),
                known_since_ms: aisle_domain::now_ms(),
                evicted_before_ms: 0,
            }),
        }
    }

    /// Whether a tombstone dated `at_ms` has expired (it no longer blocks copies; an edge that learns of it late
    /// still erases).
    pub fn expired(&self, at_ms: i64) -> bool {
        at_ms.saturating_add(self.ttl_ms) <= aisle_domain::now_ms()
    }

    fn journal(&self, shopper_ref: &str, at_ms: i64, now: i64) {
        let mut j = self.journal.lock().expect("journal lock");
        let horizon = now.saturating_sub(j.keep_ms);
        while j.entries.first().is_some_and(|(at, _)| *at <= horizon) {
            j.entries.pop_first();
        }
        j.entries.insert((at_ms, shopper_ref.to_string()));
        while j.entries.len() > MAX_TOMBSTONES {
            if let Some((at, _)) = j.entries.pop_first() {
                j.evicted_before_ms = j.evicted_before_ms.max(at.saturating_add(1));
                metrics::counter!("aisle_erasure_journal_evicted_total").increment(1);
            }
        }
        metrics::gauge!("aisle_erasure_journal_entries").set(j.entries.len() as f64);
    }

    /// A member's live tombstones were applied here: the journal is complete for the last TTL, whenever this node
    /// started.
    pub fn inherited_live(&self) {
        let since = aisle_domain::now_ms().saturating_sub(self.ttl_ms);
        let mut j = self.journal.lock().expect("journal lock");
        j.known_since_ms = j.known_since_ms.min(since);
    }

    /// The journal's erasures dated `since_ms` or later: (pseudonym, forgotten at ms), oldest first.
    pub fn since(&self, since_ms: i64) -> Vec<(String, i64)> {
        let j = self.journal.lock().expect("journal lock");
        j.entries
            .range((since_ms, String::new())..)
            .map(|(at, r)| (r.clone(), *at))
            .collect()
    }

    /// From when the journal holds every erasure this node learnt of: its start, the journal's retention, or past
    /// an entry evicted for room, whichever is latest.
    pub fn complete_since(&self) -> i64 {
        let j = self.journal.lock().expect("journal lock");
        j.known_since_ms
            .max(j.evicted_before_ms)
            .max(aisle_domain::now_ms().saturating_sub(j.keep_ms))
    }

    /// Records that the shopper named `shopper_ref` was forgotten at `at_ms`. Returns whether this is news (no
    /// tombstone as recent was held). One dated more than [`MAX_FUTURE_MS`] ahead is refused (counted in
    /// `aisle_tombstones_refused_total`).
    pub fn record(&self, shopper_ref: &str, at_ms: i64) -> bool {
        let now = aisle_domain::now_ms();
        if at_ms.saturating_add(self.ttl_ms) <= now {
            return false;
        }
        if at_ms > now.saturating_add(MAX_FUTURE_MS) {
            metrics::counter!("aisle_tombstones_refused_total", "reason" => "future").increment(1);
            tracing::warn!(at_ms, now, "tombstone dated in the future refused");
            return false;
        }
        let mut by_ref = self.by_ref.lock().expect("tombstones lock");
        if by_ref.len() >= MAX_TOMBSTONES {
            by_ref.retain(|_, at| at.saturating_add(self.ttl_ms) > now);
            while by_ref.len() >= MAX_TOMBSTONES {
                let oldest = by_ref
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(r, _)| r.clone())
                    .expect("non-empty");
                by_ref.remove(&oldest);
                metrics::counter!("aisle_tombstones_evicted_total").increment(1);
            }
        }
        let entry = by_ref.entry(shopper_ref.to_string()).or_insert(i64::MIN);
        let news = *entry < at_ms;
        *entry = (*entry).max(at_ms);
        self.held.store(by_ref.len(), Ordering::Release);
        metrics::gauge!("aisle_tombstones").set(by_ref.len() as f64);
        drop(by_ref);
        if news {
            self.journal(shopper_ref, at_ms, now);
        }
        news
    }

    /// Whether a session of the shopper named `shopper_ref` last written at `version` (ms, the writer's clock)
    /// must not be installed: it was forgotten at or after that.
    pub fn blocks(&self, shopper_ref: &str, version: u64) -> bool {
        self.blocks_at(shopper_ref, version, aisle_domain::now_ms())
    }

    fn blocks_at(&self, shopper_ref: &str, version: u64, now: i64) -> bool {
        let by_ref = self.by_ref.lock().expect("tombstones lock");
        by_ref.get(shopper_ref).is_some_and(|&at| {
            at.saturating_add(self.ttl_ms) > now && i64::try_from(version).unwrap_or(i64::MAX) <= at
        })
    }

    /// Whether any tombstone is held (installs skip the pseudonym computation when none is).
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Acquire) == 0
    }

    /// The live tombstones: (pseudonym, forgotten at ms).
    pub fn live(&self) -> Vec<(String, i64)> {
        let now = aisle_domain::now_ms();
        let mut by_ref = self.by_ref.lock().expect("tombstones lock");
        by_ref.retain(|_, at| at.saturating_add(self.ttl_ms) > now);
        self.held.store(by_ref.len(), Ordering::Release);
        by_ref.iter().map(|(r, at)| (r.clone(), *at)).collect()
    }

    /// Until when a tombstone recorded at `at_ms` is kept.
    pub fn until_ms(&self, at_ms: i64) -> i64 {
        at_ms.saturating_add(self.ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_lists_erasures_since_a_time_and_says_from_when_it_is_complete() {
        let t = Tombstones::with_journal(Duration::from_secs(60), Duration::from_secs(3_600));
        let now = aisle_domain::now_ms();
        let started = t.complete_since();
        assert!(
            started <= now && now - started < 5_000,
            "complete from the start"
        );
        assert!(t.record("a", now - 30_000));
        assert!(t.record("b", now - 10_000));
        assert!(
            !t.record("b", now - 20_000),
            "an older erasure of b is no news"
        );
        assert!(
            !t.record("old", now - 61_000),
            "older than the TTL: no tombstone, no entry"
        );
        assert_eq!(t.since(now - 20_000), vec![("b".to_string(), now - 10_000)]);
        assert_eq!(t.since(0).len(), 2);
        assert!(t.expired(now - 61_000) && !t.expired(now - 59_000));
        // A member's live tombstones make it complete for the last TTL.
        t.inherited_live();
        let inherited = t.complete_since();
        assert!(inherited < started && (now - 60_000 - inherited).abs() < 5_000);
        // A journal kept no longer than the TTL is complete only for the TTL.
        let short = Tombstones::new(Duration::from_secs(60));
        short.inherited_live();
        assert!(short.complete_since() >= now - 60_000);
    }

    #[test]
    fn tombstones_block_older_copies_until_they_expire() {
        let t = Tombstones::new(Duration::from_secs(60));
        let now = aisle_domain::now_ms();
        assert!(t.record("r1", now));
        assert!(!t.record("r1", now - 5), "an older erasure is no news");
        assert!(
            t.blocks("r1", (now - 1_000) as u64),
            "a copy from before the erasure"
        );
        assert!(t.blocks("r1", now as u64));
        assert!(
            !t.blocks("r1", (now + 1) as u64),
            "written after the erasure: a new session"
        );
        assert!(!t.blocks("r2", 0));
        assert!(!t.record("old", now - 61_000), "already expired");
        assert!(
            !t.record("future", now + MAX_FUTURE_MS + 10_000),
            "dated in the future"
        );
        assert!(!t.blocks("future", 1));
        assert!(t.record("skewed", now + 1_000), "within the clock skew");
        let mut live = t.live();
        live.sort();
        assert_eq!(
            live,
            vec![("r1".to_string(), now), ("skewed".to_string(), now + 1_000)]
        );
        assert!(
            !t.blocks_at("r1", 0, now + 60_000),
            "an expired tombstone blocks nothing"
        );
    }
}
