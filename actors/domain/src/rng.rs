//! A small seeded pseudo-random generator (SplitMix64) and a Zipf sampler, for everything that must draw the same
//! numbers from the same seed: the demo world, the trainer's sampling and tie-breaks, the load generator's
//! requests.
//!
//! Written out here rather than taken from a crate so that these streams stay identical across dependency
//! upgrades: a fixed seed must always give the same catalog, history, training sample and request stream. The
//! tests pin the first values of each stream, so a change that alters one fails there rather than in a benchmark
//! figure.

/// SplitMix64 (Steele, Lea & Flood, 2014): 64 bits of state, one multiply-xorshift chain per draw, passes BigCrush;
/// good enough for simulation, not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for stream number `stream` of `seed` (for per-task streams): the pair is mixed
    /// through one draw, so nearby seeds and stream numbers do not start nearby states.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self::new(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`: the top 53 bits, scaled by 2⁻⁵³ (exact, so every such float is equally likely).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0)");
        // Lemire's multiply-shift: one draw, and a bias of at most n / 2⁶⁴, irrelevant for simulation.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform integer in `[lo, hi]`.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi, "empty range");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// One of `items`, chosen with the given relative weights (which need not sum to 1); `items` must not be
    /// empty.
    pub fn weighted<'a, T>(&mut self, items: &'a [(T, f64)]) -> &'a T {
        let total: f64 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.next_f64() * total;
        for (item, w) in items {
            if x < *w {
                return item;
            }
            x -= w;
        }
        // Rounding can leave x a hair above the last weight: it is the last item's.
        &items[items.len() - 1].0
    }
}

/// Samples ranks `0..n` with `P(k) ∝ 1 / (k + 1)^s` (Zipf: a few shoppers and items get most of the traffic, as
/// in real retail) by inverting a precomputed cumulative table: exact, O(log n) per draw, 8 bytes per rank (under a
/// megabyte for 100,000 shoppers).
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
    exponent: f64,
}

impl Zipf {
    /// A sampler over `n` ranks with exponent `s` (0 is uniform, ~1 is typical of retail).
    ///
    /// # Panics
    /// When `n` is 0 or `s` is negative or not finite.
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n >= 1, "a zipf distribution needs at least one rank");
        assert!(
            s >= 0.0 && s.is_finite(),
            "zipf exponent must be finite and >= 0"
        );
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cumulative.push(total);
        }
        // The last entry becomes total / total, exactly 1: every draw in [0, 1) falls in some rank.
        for c in &mut cumulative {
            *c /= total;
        }
        Self {
            cumulative,
            exponent: s,
        }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// Always false: a sampler has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// The exponent.
    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// Probability of rank `k`.
    pub fn probability(&self, k: usize) -> f64 {
        if k == 0 {
            self.cumulative[0]
        } else {
            self.cumulative[k] - self.cumulative[k - 1]
        }
    }

    /// Draws a rank in `0..n`, rank 0 the most likely.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SplitMix64::new(42)`'s first three words.
    const PINNED_U64: [u64; 3] = [
        0xbdd7_3226_2feb_6e95,
        0x28ef_e333_b266_f103,
        0x4752_6757_130f_9f52,
    ];
    /// `SplitMix64::derive(42, 3)`'s first word.
    const PINNED_DERIVED: u64 = 0xb381_3d6c_d392_0241;
    /// The first eight ranks of `Zipf::new(1_000, 1.0)` drawn with `SplitMix64::new(7)`.
    const PINNED_ZIPF: [usize; 8] = [9, 0, 475, 43, 16, 3, 18, 6];

    #[test]
    fn streams_are_pinned() {
        // The first values for fixed seeds, as the demo world, the trainer and the load generator have always
        // drawn them: a change here changes every seeded world, model and request stream.
        let mut rng = SplitMix64::new(42);
        let words: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(words, PINNED_U64);
        let mut rng = SplitMix64::derive(42, 3);
        assert_eq!(rng.next_u64(), PINNED_DERIVED);
        let z = Zipf::new(1_000, 1.0);
        let mut rng = SplitMix64::new(7);
        let ranks: Vec<usize> = (0..8).map(|_| z.sample(&mut rng)).collect();
        assert_eq!(ranks, PINNED_ZIPF);
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(
            SplitMix64::derive(7, 1).next_u64(),
            SplitMix64::derive(7, 2).next_u64()
        );
    }

    #[test]
    fn ranges_hold() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..10_000 {
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(rng.below(7) < 7);
            let r = rng.range_inclusive(5, 30);
            assert!((5..=30).contains(&r));
        }
        assert_eq!(rng.range_inclusive(4, 4), 4);
    }

    #[test]
    fn weighted_follows_weights() {
        let mut rng = SplitMix64::new(3);
        let items = [('a', 3.0), ('b', 1.0)];
        let a = (0..40_000).filter(|_| *rng.weighted(&items) == 'a').count();
        let share = a as f64 / 40_000.0;
        assert!((0.73..0.77).contains(&share), "share of a: {share}");
    }

    #[test]
    fn zipf_ranks_stay_in_range() {
        let z = Zipf::new(10, 1.0);
        let mut rng = SplitMix64::new(9);
        for _ in 0..10_000 {
            assert!(z.sample(&mut rng) < 10);
        }
        let one = Zipf::new(1, 1.0);
        assert_eq!(one.sample(&mut rng), 0);
        assert_eq!((one.len(), one.is_empty(), one.exponent()), (1, false, 1.0));
    }

    #[test]
    fn zipf_frequencies_follow_the_power_law() {
        let n = 1_000;
        let z = Zipf::new(n, 1.0);
        let mut rng = SplitMix64::new(42);
        let draws = 200_000;
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(0) = 1 / H_1000 ≈ 0.1336.
        let harmonic: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        let p0 = counts[0] as f64 / draws as f64;
        assert!((p0 - 1.0 / harmonic).abs() < 0.005, "p0 {p0}");
        // With s = 1, rank 0 is drawn about twice as often as rank 1 and ten times as often as rank 9.
        let r01 = counts[0] as f64 / counts[1] as f64;
        let r09 = counts[0] as f64 / counts[9] as f64;
        assert!((1.8..2.2).contains(&r01), "ratio 0/1 {r01}");
        assert!((8.5..11.5).contains(&r09), "ratio 0/9 {r09}");
        // The tail is still reached.
        assert!(counts[500..].iter().sum::<u64>() > 0);
        assert!((z.probability(0) - 1.0 / harmonic).abs() < 1e-12);
    }

    #[test]
    fn zipf_exponent_zero_is_uniform() {
        let z = Zipf::new(4, 0.0);
        let mut rng = SplitMix64::new(5);
        let mut counts = [0u64; 4];
        for _ in 0..40_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        for c in counts {
            assert!((9_300..10_700).contains(&c), "{counts:?}");
        }
    }
}
