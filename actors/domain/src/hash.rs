//! Stable hashing: the same input hashes to the same value on every node, build and platform.
//!
//! Experiment assignment and shopper placement depend on it, so it must never change for a given input: it is
//! XXH3-64 with seed 0 over the UTF-8 bytes, with a 0xFF separator between parts (0xFF never occurs in UTF-8, so
//! `("ab", "c")` and `("a", "bc")` differ).

use xxhash_rust::xxh3::Xxh3;

/// Hashes the parts, separated, into a stable 64-bit value.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h = Xxh3::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(&[0xFF]);
        }
        h.update(part.as_bytes());
    }
    h.digest()
}

/// Maps the hash of `parts` to a uniform number in `[0, 1)`.
pub fn unit_interval(parts: &[&str]) -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    (stable_hash(parts) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: if these change, every shopper's experiment variant and owner node change with them.
        assert_eq!(stable_hash(&["s1"]), stable_hash(&["s1"]));
        assert_eq!(stable_hash(&[""]), 0x2d06800538d394c2);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }

    #[test]
    fn unit_interval_is_in_range_and_spread() {
        let mut below_half = 0;
        for i in 0..10_000 {
            let u = unit_interval(&["x", &i.to_string()]);
            assert!((0.0..1.0).contains(&u));
            if u < 0.5 {
                below_half += 1;
            }
        }
        assert!((4_800..5_200).contains(&below_half), "{below_half}");
    }
}
