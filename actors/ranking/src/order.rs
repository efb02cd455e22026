//! Sort keys for the hot paths: a score and a tie-breaking index packed into one `u64`, so that selections and
//! sorts compare plain integers instead of calling `f32::total_cmp` and a tie-break through a closure.

/// A key of `x` that sorts in `f32::total_cmp` order as an unsigned integer (the same bit transformation
/// `total_cmp` makes).
#[inline]
fn ascending(x: f32) -> u32 {
    let bits = x.to_bits();
    // Negative values: flip every bit; positive ones: flip the sign bit.
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The inverse of [`ascending`].
#[inline]
fn from_ascending(key: u32) -> f32 {
    if key >> 31 == 1 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// A key that sorts by `x` descending (in `total_cmp` order), then by `index` ascending.
#[inline]
pub(crate) fn descending_then_index(x: f32, index: u32) -> u64 {
    (u64::from(!ascending(x)) << 32) | u64::from(index)
}

/// The value of a [`descending_then_index`] key.
#[inline]
pub(crate) fn value(key: u64) -> f32 {
    from_ascending(!((key >> 32) as u32))
}

/// The index of a [`descending_then_index`] key.
#[inline]
pub(crate) fn index(key: u64) -> u32 {
    key as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_total_cmp_and_round_trip() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            0.25,
            0.25,
            7.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut by_key: Vec<u64> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| descending_then_index(v, i as u32))
            .collect();
        by_key.sort_unstable();
        let mut by_cmp: Vec<(f32, u32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u32))
            .collect();
        by_cmp.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (key, (v, i)) in by_key.iter().zip(&by_cmp) {
            assert_eq!(index(*key), *i);
            assert_eq!(value(*key).to_bits(), v.to_bits());
        }
    }
}
