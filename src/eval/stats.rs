//! The statistics of `sluice eval`, each written from its formula: Jensen–Shannon
//! divergence (base 2), the shared log-scale length bins it is computed on, the Wilson
//! score interval, and linear-interpolation quantiles.
//!
//! Pure functions over counts and samples; every one is checked against values worked out
//! by hand in the tests below.

use std::collections::BTreeMap;

use serde::Serialize;

/// z for a two-sided 95 % interval: Φ⁻¹(0.975).
pub(crate) const Z_95: f64 = 1.959_963_984_540_054;

/// The JSD above which people start to look (the seed threshold of the issue).
pub(crate) const JSD_FLAG_THRESHOLD: f64 = 0.05;

/// Length bins per doubling of the answer's length: √2-wide bins, so a change of
/// length by 41 % or more always moves an answer to another bin.
pub(crate) const LENGTH_BINS_PER_OCTAVE: f64 = 2.0;

/// Jensen–Shannon divergence in bits between two count vectors over the same categories.
///
/// JSD(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M), M = ½ (P + Q), with 0 · log 0 = 0. It lies in
/// [0, 1] with base-2 logarithms. `None` when either side has no observations.
pub(crate) fn jensen_shannon(p_counts: &[u64], q_counts: &[u64]) -> Option<f64> {
    assert_eq!(
        p_counts.len(),
        q_counts.len(),
        "same categories on both sides"
    );
    let p_total: u64 = p_counts.iter().sum();
    let q_total: u64 = q_counts.iter().sum();
    if p_total == 0 || q_total == 0 {
        return None;
    }
    let mut divergence = 0.0;
    for (&pc, &qc) in p_counts.iter().zip(q_counts) {
        let p = pc as f64 / p_total as f64;
        let q = qc as f64 / q_total as f64;
        let m = 0.5 * (p + q);
        if p > 0.0 {
            divergence += 0.5 * p * (p / m).log2();
        }
        if q > 0.0 {
            divergence += 0.5 * q * (q / m).log2();
        }
    }
    // Rounding can leave a hair outside [0, 1].
    Some(divergence.clamp(0.0, 1.0))
}

/// Two labelled samples as count vectors over the union of their labels (sorted).
pub(crate) fn categorical_counts<'a>(
    a: impl IntoIterator<Item = &'a str>,
    b: impl IntoIterator<Item = &'a str>,
) -> (Vec<String>, Vec<u64>, Vec<u64>) {
    let mut table: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for label in a {
        table.entry(label).or_default().0 += 1;
    }
    for label in b {
        table.entry(label).or_default().1 += 1;
    }
    let labels = table.keys().map(|k| k.to_string()).collect();
    let (ca, cb) = table.values().copied().unzip();
    (labels, ca, cb)
}

/// The bin of a length on the shared log scale: bin 0 holds empty answers, bin k ≥ 1 holds
/// lengths in [2^((k−1)/2), 2^(k/2)). The scale is fixed (not fitted to the data), so both
/// versions, and two runs of the same suite, bin alike.
pub(crate) fn length_bin(chars: u64) -> usize {
    if chars == 0 {
        return 0;
    }
    let k = ((chars as f64).log2() * LENGTH_BINS_PER_OCTAVE).floor() as usize + 1;
    // Guard against log2 rounding just below an exact power (e.g. 2^(k/2) itself).
    let (lo, hi) = length_bin_bounds(k);
    if (chars as f64) < lo {
        k - 1
    } else if (chars as f64) >= hi {
        k + 1
    } else {
        k
    }
}

/// The half-open range [lo, hi) of characters in bin `k` (bin 0 is [0, 1)).
pub(crate) fn length_bin_bounds(k: usize) -> (f64, f64) {
    if k == 0 {
        return (0.0, 1.0);
    }
    let edge = |i: usize| 2f64.powf(i as f64 / LENGTH_BINS_PER_OCTAVE);
    (edge(k - 1), edge(k))
}

/// One bin of a shared length histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LengthBin {
    /// Inclusive lower bound, in characters.
    pub(crate) lo_chars: f64,
    /// Exclusive upper bound, in characters.
    pub(crate) hi_chars: f64,
    /// Answers of version A and of version B in the bin.
    pub(crate) counts: [u64; 2],
}

/// Both samples binned on the shared scale, from the lowest occupied bin to the highest.
pub(crate) fn length_histogram(a: &[u64], b: &[u64]) -> Vec<LengthBin> {
    let bins_a: Vec<usize> = a.iter().map(|&c| length_bin(c)).collect();
    let bins_b: Vec<usize> = b.iter().map(|&c| length_bin(c)).collect();
    let (Some(lo), Some(hi)) = (
        bins_a.iter().chain(&bins_b).min().copied(),
        bins_a.iter().chain(&bins_b).max().copied(),
    ) else {
        return Vec::new();
    };
    (lo..=hi)
        .map(|k| {
            let (lo_chars, hi_chars) = length_bin_bounds(k);
            let count = |bins: &[usize]| bins.iter().filter(|&&b| b == k).count() as u64;
            LengthBin {
                lo_chars,
                hi_chars,
                counts: [count(&bins_a), count(&bins_b)],
            }
        })
        .collect()
}

/// A proportion with its 95 % Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Proportion {
    pub(crate) successes: u64,
    pub(crate) trials: u64,
    /// `None` when there were no trials.
    pub(crate) rate: Option<f64>,
    pub(crate) ci95: Option<[f64; 2]>,
}

impl Proportion {
    pub(crate) fn new(successes: u64, trials: u64) -> Self {
        Self {
            successes,
            trials,
            rate: (trials > 0).then(|| successes as f64 / trials as f64),
            ci95: wilson(successes, trials, Z_95),
        }
    }
}

/// The Wilson score interval for k successes in n trials:
/// (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n).
pub(crate) fn wilson(k: u64, n: u64, z: f64) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

/// Mean and the quantiles a report shows, of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    pub(crate) n: usize,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p95: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` for an empty sample.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            n: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: quantile(&sorted, 0.5),
            p90: quantile(&sorted, 0.9),
            p95: quantile(&sorted, 0.95),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The q-quantile of a sorted, non-empty sample by linear interpolation between order
/// statistics (Hyndman & Fan type 7, the default of R and NumPy).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let below = h.floor() as usize;
    let above = h.ceil() as usize;
    sorted[below] + (h - below as f64) * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn identical_distributions_have_zero_divergence() {
        assert_eq!(jensen_shannon(&[3, 1, 0], &[6, 2, 0]), Some(0.0));
    }

    #[test]
    fn disjoint_distributions_have_divergence_one() {
        assert_eq!(jensen_shannon(&[5, 0], &[0, 7]), Some(1.0));
    }

    #[test]
    fn divergence_matches_a_hand_computed_value() {
        // P = (½, ½), Q = (1, 0), M = (¾, ¼):
        // KL(P‖M) = ½ log2(⅔) + ½ log2(2) = 0.207519; KL(Q‖M) = log2(4/3) = 0.415037;
        // JSD = ½ (0.207519 + 0.415037) = 0.311278.
        let jsd = jensen_shannon(&[1, 1], &[2, 0]).unwrap();
        assert!(close(jsd, 0.311278), "{jsd}");
        // P = (0.8, 0.2), Q = (0.2, 0.8): H(M) = 1, H(P) = H(Q) = 0.721928 → 0.278072.
        let jsd = jensen_shannon(&[8, 2], &[2, 8]).unwrap();
        assert!(close(jsd, 0.278072), "{jsd}");
    }

    #[test]
    fn divergence_is_undefined_for_an_empty_side() {
        assert_eq!(jensen_shannon(&[0, 0], &[1, 2]), None);
    }

    #[test]
    fn categorical_counts_align_both_sides_on_the_union_of_labels() {
        let (labels, a, b) = categorical_counts(["stop", "stop", "length"], ["stop", "tool_calls"]);
        assert_eq!(labels, ["length", "stop", "tool_calls"]);
        assert_eq!(a, [1, 2, 0]);
        assert_eq!(b, [0, 1, 1]);
    }

    #[test]
    fn length_bins_are_half_octaves() {
        assert_eq!(length_bin(0), 0);
        assert_eq!(length_bin(1), 1); // [1, 1.41)
        assert_eq!(length_bin(2), 3); // [2, 2.83)
        assert_eq!(length_bin(3), 4); // [2.83, 4)
        assert_eq!(length_bin(4), 5); // [4, 5.66)
        assert_eq!(length_bin(256), 17); // [256, 362)
        assert_eq!(length_bin(361), 17);
        assert_eq!(length_bin(363), 18);
        for chars in 1..5000 {
            let (lo, hi) = length_bin_bounds(length_bin(chars));
            assert!(lo <= chars as f64 && (chars as f64) < hi, "{chars}");
        }
    }

    #[test]
    fn the_histogram_spans_the_occupied_bins_of_both_samples() {
        let h = length_histogram(&[4, 5], &[8]);
        // 4 and 5 are in bin 5 [4, 5.66); 8 is in bin 7 [8, 11.3).
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].counts, [2, 0]);
        assert_eq!(h[1].counts, [0, 0]);
        assert_eq!(h[2].counts, [0, 1]);
        assert!(close(h[0].lo_chars, 4.0) && close(h[2].lo_chars, 8.0));
    }

    #[test]
    fn the_wilson_interval_matches_hand_computed_values() {
        // 4 of 5: p̂ = 0.8, z² = 3.841459, centre = 1.184146 / 1.768292 = 0.669655,
        // half = 1.959964 · √(0.032 + 0.038415) / 1.768292 = 0.294117.
        let [lo, hi] = wilson(4, 5, Z_95).unwrap();
        assert!(close(lo, 0.375_5) && close(hi, 0.963_8), "{lo} {hi}");
        // 0 of 10: [0, z²/(n + z²)] = [0, 3.841459 / 13.841459] = [0, 0.277533].
        let [lo, hi] = wilson(0, 10, Z_95).unwrap();
        assert!(close(lo, 0.0) && close(hi, 0.277533), "{lo} {hi}");
        // 50 of 100: 0.5 ± 1.959964 · √(0.0025 + 0.000096) / 1.038415 = [0.403832, 0.596168].
        let [lo, hi] = wilson(50, 100, Z_95).unwrap();
        assert!(close(lo, 0.403832) && close(hi, 0.596168), "{lo} {hi}");
        assert_eq!(wilson(0, 0, Z_95), None);
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert!(close(quantile(&sorted, 0.5), 2.5));
        assert!(close(quantile(&sorted, 0.9), 3.7));
        assert!(close(quantile(&[7.0], 0.95), 7.0));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.n, s.mean, s.max), (4, 2.5, 4.0));
        assert!(Spread::of(&[]).is_none());
    }
}
