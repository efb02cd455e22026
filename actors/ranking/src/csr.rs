//! Compressed sparse rows: the layout of every item-to-item and session-to-item index, so a lookup is one slice.

use serde::{Deserialize, Serialize};

/// Rows of `(target, weight)` pairs, stored contiguously.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<f32>,
}

impl Csr {
    /// Builds from one `(target, weight)` list per row.
    pub fn from_rows<I, R>(rows: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: IntoIterator<Item = (u32, f32)>,
    {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        for row in rows {
            for (t, w) in row {
                csr.targets.push(t);
                csr.weights.push(w);
            }
            csr.offsets.push(csr.targets.len() as u32);
        }
        csr
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of stored entries.
    pub fn entries(&self) -> usize {
        self.targets.len()
    }

    /// The targets and weights of row `r` (empty when `r` is out of range).
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        if r + 1 >= self.offsets.len() {
            return (&[], &[]);
        }
        let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        (&self.targets[a..b], &self.weights[a..b])
    }

    /// Iterates row `r` as pairs.
    pub fn pairs(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (t, w) = self.row(r);
        t.iter().copied().zip(w.iter().copied())
    }

    /// Checks the structure (offsets monotone and in range, targets below `target_bound`).
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn validate(&self, target_bound: usize) -> Result<(), String> {
        if self.offsets.first() != Some(&0) {
            return Err("offsets must start at 0".into());
        }
        if self.targets.len() != self.weights.len() {
            return Err("targets and weights differ in length".into());
        }
        if self.offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err("offsets decrease".into());
        }
        if *self.offsets.last().expect("non-empty") as usize != self.targets.len() {
            return Err("last offset is not the entry count".into());
        }
        if self.targets.iter().any(|&t| t as usize >= target_bound) {
            return Err(format!("a target is out of range (bound {target_bound})"));
        }
        if self.weights.iter().any(|w| !w.is_finite()) {
            return Err("a weight is not finite".into());
        }
        Ok(())
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.targets.capacity() * 4 + self.weights.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_validate() {
        let csr = Csr::from_rows(vec![vec![(1, 0.5), (2, 1.0)], vec![], vec![(0, 2.0)]]);
        assert_eq!(csr.rows(), 3);
        assert_eq!(csr.row(0), (&[1, 2][..], &[0.5, 1.0][..]));
        assert_eq!(csr.row(1).0.len(), 0);
        assert_eq!(csr.pairs(2).collect::<Vec<_>>(), vec![(0, 2.0)]);
        assert_eq!(csr.row(9).0.len(), 0);
        assert!(csr.validate(3).is_ok());
        assert!(csr.validate(2).is_err());
    }
}
