//! Zipf-distributed ranks: a few shoppers and items get most of the traffic, as in real retail.

use crate::rng::SplitMix64;

/// Samples ranks `0..n` with `P(k) ∝ 1 / (k + 1)^s` by inverting a precomputed cumulative table (exact, and
/// O(log n) per draw; the table costs 8 bytes per rank, under a megabyte for 100,000 shoppers).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
    exponent: f64,
}

impl Zipf {
    /// A sampler over `n` ranks (`n` ≥ 1) with exponent `s` (≥ 0; 0 is uniform, ~1 is typical of retail).
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n >= 1, "a zipf distribution needs at least one rank");
        assert!(
            s >= 0.0 && s.is_finite(),
            "zipf exponent must be finite and >= 0"
        );
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for p in &mut cdf {
            *p /= acc;
        }
        // Guard against rounding leaving the last bucket a hair below 1.
        cdf[n - 1] = 1.0;
        Self { cdf, exponent: s }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a sampler has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The exponent.
    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// Probability of rank `k`.
    pub fn probability(&self, k: usize) -> f64 {
        if k == 0 {
            self.cdf[0]
        } else {
            self.cdf[k] - self.cdf[k - 1]
        }
    }

    /// A rank in `0..n`, rank 0 the most likely.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&p| p <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_stay_in_range_and_are_deterministic() {
        let z = Zipf::new(10, 1.0);
        let mut a = SplitMix64::new(9);
        let mut b = SplitMix64::new(9);
        for _ in 0..10_000 {
            let k = z.sample(&mut a);
            assert!(k < 10);
            assert_eq!(k, z.sample(&mut b));
        }
        let one = Zipf::new(1, 1.0);
        assert_eq!(one.sample(&mut a), 0);
    }

    #[test]
    fn frequencies_follow_the_power_law() {
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
    fn exponent_zero_is_uniform() {
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
