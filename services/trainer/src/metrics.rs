//! HR@k and MRR@k, the next-item metrics of the session-rec protocol: for every evaluated position, the hit rate
//! counts whether the next item is among the first k recommendations, and the reciprocal rank adds 1/rank when
//! it is (0 otherwise); both are averaged over the positions.

use aisle_domain::rng::SplitMix64;

/// Running HR@k and MRR@k.
#[derive(Debug, Clone, PartialEq)]
pub struct HitRate {
    /// The cut-off k.
    pub cut: usize,
    hits: usize,
    reciprocal: f64,
    count: usize,
}

impl HitRate {
    /// Nothing evaluated yet.
    pub fn new(cut: usize) -> Self {
        Self {
            cut,
            hits: 0,
            reciprocal: 0.0,
            count: 0,
        }
    }

    /// Adds one evaluated position where the next item came at `rank` (1-based), or was not recommended.
    pub fn add(&mut self, rank: Option<usize>) {
        self.count += 1;
        if let Some(r) = rank
            && r >= 1
            && r <= self.cut
        {
            self.hits += 1;
            self.reciprocal += 1.0 / r as f64;
        }
    }

    /// Positions evaluated.
    pub fn count(&self) -> usize {
        self.count
    }

    /// HR@k (0 when nothing was evaluated).
    pub fn hit_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.hits as f64 / self.count as f64
        }
    }

    /// MRR@k (0 when nothing was evaluated).
    pub fn mrr(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.reciprocal / self.count as f64
        }
    }
}

/// The 1-based rank of `target` in a list, best first.
pub fn rank_in_list<T: PartialEq>(list: &[T], target: &T) -> Option<usize> {
    list.iter().position(|x| x == target).map(|p| p + 1)
}

/// The 1-based rank of `target` among sparse scores (items absent score 0), ties broken uniformly at random with
/// `rng`, as session-rec's unstable sort does in effect; an item scoring 0 is never a hit.
pub fn rank_with_ties(scores: &[(u32, f64)], target: u32, rng: &mut SplitMix64) -> Option<usize> {
    let s = scores.iter().find(|e| e.0 == target)?.1;
    if s.is_nan() || s <= 0.0 {
        return None;
    }
    let greater = scores.iter().filter(|e| e.1 > s).count();
    let ties = scores.iter().filter(|e| e.1 == s).count() - 1;
    let ahead = if ties > 0 {
        rng.below(ties as u64 + 1) as usize
    } else {
        0
    };
    Some(greater + 1 + ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_and_mrr_on_known_ranks() {
        let mut m = HitRate::new(20);
        m.add(Some(1)); // hit, 1
        m.add(Some(4)); // hit, 0.25
        m.add(Some(21)); // beyond the cut
        m.add(None); // not recommended
        assert_eq!(m.count(), 4);
        assert!((m.hit_rate() - 0.5).abs() < 1e-12);
        assert!((m.mrr() - 1.25 / 4.0).abs() < 1e-12);
        assert_eq!(HitRate::new(20).mrr(), 0.0);
    }

    #[test]
    fn ranks_in_lists_and_among_scores() {
        assert_eq!(rank_in_list(&["a", "b", "c"], &"c"), Some(3));
        assert_eq!(rank_in_list(&["a"], &"z"), None);
        let mut rng = SplitMix64::new(1);
        let scores = [(1, 0.5), (2, 0.9), (3, 0.5), (4, 0.0)];
        assert_eq!(rank_with_ties(&scores, 2, &mut rng), Some(1));
        assert_eq!(
            rank_with_ties(&scores, 4, &mut rng),
            None,
            "zero scores never hit"
        );
        assert_eq!(rank_with_ties(&scores, 9, &mut rng), None);
        // Item 1 ties with item 3 behind item 2: rank 2 or 3, both drawn over many trials.
        let ranks: std::collections::BTreeSet<usize> = (0..50)
            .filter_map(|_| rank_with_ties(&scores, 1, &mut rng))
            .collect();
        assert_eq!(ranks.into_iter().collect::<Vec<_>>(), [2, 3]);
    }
}
