//! A lock-free, mergeable histogram on a log scale.
//!
//! Buckets grow by `GROWTH` (2 %), so a quantile read back is within 1 % of the true
//! value for anything between `MIN_VALUE` and `MAX_VALUE`. The request path records with
//! one atomic add; readers copy the counts into a `Snapshot`, and snapshots from several
//! arms or replicas merge by adding counts.

use std::sync::atomic::{AtomicU64, Ordering};

const GROWTH: f64 = 1.02;
const MIN_VALUE: f64 = 1e-3;
const MAX_VALUE: f64 = 1e9;
/// Bucket 0 holds values below `MIN_VALUE` (zero included); the last holds values above `MAX_VALUE`.
const BUCKETS: usize = 1 + 1397 + 1;

fn bucket_of(value: f64) -> usize {
    if value.is_nan() || value < MIN_VALUE {
        return 0;
    }
    if value >= MAX_VALUE {
        return BUCKETS - 1;
    }
    let index = ((value / MIN_VALUE).ln() / GROWTH.ln()) as usize;
    (1 + index).min(BUCKETS - 2)
}

/// The value a bucket stands for: the geometric middle of its bounds.
fn value_of(bucket: usize) -> f64 {
    match bucket {
        0 => 0.0,
        b if b == BUCKETS - 1 => MAX_VALUE,
        b => MIN_VALUE * GROWTH.powf((b - 1) as f64 + 0.5),
    }
}

/// Counts per log-scale bucket, shared between threads; see the module header for the error
/// bound.
pub struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AtomicHistogram {
    /// Counts one value (any unit, e.g. milliseconds): NaN and values below 0.001 fall in the
    /// lowest bucket, values from 1e9 up in the highest.
    pub fn record(&self, value: f64) {
        self.counts[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    counts: Vec<u64>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }
}

impl Snapshot {
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn merge(&mut self, other: &Snapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// Observations at or below `bound`, to the bucket (within 2 %): for Prometheus buckets.
    pub(crate) fn count_le(&self, bound: f64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|(b, _)| value_of(*b) <= bound)
            .map(|(_, c)| c)
            .sum()
    }

    /// The sum of the observations, from the buckets' middles (within 1 %).
    pub(crate) fn approx_sum(&self) -> f64 {
        self.counts
            .iter()
            .enumerate()
            .map(|(b, &c)| c as f64 * value_of(b))
            .sum()
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), or `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // Rank of the smallest value with at least q of the mass at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(value_of(bucket));
            }
        }
        Some(value_of(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let h = AtomicHistogram::default();
        for v in 1..=1000 {
            h.record(v as f64);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        for (q, exact) in [
            (0.5, 500.0),
            (0.95, 950.0),
            (0.99, 990.0),
            (1.0, 1000.0),
            (0.0, 1.0),
        ] {
            let got = s.quantile(q).unwrap();
            assert!((got / exact - 1.0).abs() <= 0.01, "q{q}: {got} vs {exact}");
        }
    }

    #[test]
    fn zero_nan_and_huge_values_are_counted_and_huge_ones_clamped_to_the_top() {
        let h = AtomicHistogram::default();
        h.record(0.0);
        h.record(f64::NAN);
        h.record(1e12);
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.quantile(0.0), Some(0.0));
        assert_eq!(s.quantile(1.0), Some(MAX_VALUE));
    }

    #[test]
    fn snapshots_merge_by_adding_counts() {
        let a = AtomicHistogram::default();
        let b = AtomicHistogram::default();
        for _ in 0..90 {
            a.record(10.0);
        }
        for _ in 0..10 {
            b.record(1000.0);
        }
        let mut merged = a.snapshot();
        merged.merge(&b.snapshot());
        assert_eq!(merged.count(), 100);
        assert!((merged.quantile(0.9).unwrap() / 10.0 - 1.0).abs() < 0.01);
        assert!((merged.quantile(0.95).unwrap() / 1000.0 - 1.0).abs() < 0.01);
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        assert_eq!(Snapshot::default().quantile(0.5), None);
    }
}
