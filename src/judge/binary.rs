//! Binary gates (error, schema failure, guardrail block): in, each randomized request's
//! arm, its canary probability `w` and whether it was bad; out, the tolerance e-value of
//! research §6.3, the conditional rate-ratio estimate and its confidence set.
//!
//! Only bad events carry information about the label under the tolerance null: given a bad
//! event at canary probability `w`, it is canary with probability at most
//! `p0 = wθ_tol/(1−w+wθ_tol)` when the canary's rate is at most θ_tol × stable. The
//! likelihood ratio against `q_j = wθ_j/(1−w+wθ_j)` is a product over events that depends
//! only on how many bad events each arm had at each `w`, so the state is a few counters
//! per step weight, and the e-value for any null θ can be computed at a look.

use serde::{Deserialize, Serialize};

/// Rate-ratio alternatives, as multiples of the tolerance θ_tol (§6.3).
pub(crate) const RATIO_GRID: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 8.0];

/// The range searched for ratio estimates and intervals; an interval ending at
/// `RATIO_MAX` is open above (JSON has no infinity).
pub(crate) const RATIO_MIN: f64 = 1e-3;
pub(crate) const RATIO_MAX: f64 = 1e3;

/// Bad events by arm at one canary probability (`w` in basis points).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cell {
    pub(crate) w_bp: u32,
    pub(crate) canary_bad: u64,
    pub(crate) stable_bad: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CountProcess {
    pub(crate) cells: Vec<Cell>,
    /// Randomized requests and bad ones, per arm (for rates and the data floor).
    pub(crate) n_canary: u64,
    pub(crate) n_stable: u64,
    pub(crate) bad_canary: u64,
    pub(crate) bad_stable: u64,
}

impl CountProcess {
    pub(crate) fn observe(&mut self, canary: bool, w: f64, bad: bool) {
        if canary {
            self.n_canary += 1;
            self.bad_canary += u64::from(bad);
        } else {
            self.n_stable += 1;
            self.bad_stable += u64::from(bad);
        }
        let w_bp = (w * 10_000.0).round() as u32;
        // At w = 0 or 1 the label is certain: no information either way.
        if !bad || w_bp == 0 || w_bp >= 10_000 {
            return;
        }
        let cell = match self.cells.iter().position(|c| c.w_bp == w_bp) {
            Some(i) => &mut self.cells[i],
            None => {
                self.cells.push(Cell {
                    w_bp,
                    ..Cell::default()
                });
                self.cells.last_mut().expect("just pushed")
            }
        };
        if canary {
            cell.canary_bad += 1;
        } else {
            cell.stable_bad += 1;
        }
    }

    /// log of the likelihood ratio of θ_alt against θ_null over all bad events so far.
    fn log_lr(&self, theta_null: f64, theta_alt: f64) -> f64 {
        self.cells
            .iter()
            .map(|c| {
                let w = f64::from(c.w_bp) / 10_000.0;
                let p0 = w * theta_null / (1.0 - w + w * theta_null);
                let q = w * theta_alt / (1.0 - w + w * theta_alt);
                c.canary_bad as f64 * (q / p0).ln()
                    + c.stable_bad as f64 * ((1.0 - q) / (1.0 - p0)).ln()
            })
            .sum()
    }

    /// The one-sided e-value against "canary rate ≤ θ_tol × stable": the mean over the
    /// grid of alternatives θ_tol·RATIO_GRID.
    pub(crate) fn e_value(&self, theta_tol: f64) -> f64 {
        mean_exp(RATIO_GRID.map(|g| self.log_lr(theta_tol, theta_tol * g)))
    }

    /// Two-sided e-value for the point null θ0 (alternatives above and below), used only
    /// to invert into a confidence set.
    fn e_two_sided(&self, theta0: f64) -> f64 {
        let up = RATIO_GRID.map(|g| self.log_lr(theta0, theta0 * g));
        let down = RATIO_GRID.map(|g| self.log_lr(theta0, theta0 / g));
        0.5 * (mean_exp(up) + mean_exp(down))
    }

    /// The conditional maximum-likelihood rate ratio (canary / stable) given the bad
    /// events and their `w`: robust to drift shared by the arms and to changing weights.
    pub(crate) fn ratio_estimate(&self) -> Option<f64> {
        let (c, s): (u64, u64) = self
            .cells
            .iter()
            .fold((0, 0), |(c, s), x| (c + x.canary_bad, s + x.stable_bad));
        if c + s == 0 {
            return None;
        }
        if c == 0 {
            return Some(0.0);
        }
        if s == 0 {
            // Unbounded; reported as the edge of the searched range (JSON has no ∞).
            return Some(RATIO_MAX);
        }
        // Newton on x = log θ; the log-likelihood is concave in x.
        let mut x = 0.0f64;
        for _ in 0..50 {
            let (mut d1, mut d2) = (0.0, 0.0);
            for cell in &self.cells {
                let w = f64::from(cell.w_bp) / 10_000.0;
                let n = (cell.canary_bad + cell.stable_bad) as f64;
                let q = w * x.exp() / (1.0 - w + w * x.exp());
                d1 += cell.canary_bad as f64 - n * q;
                d2 -= n * q * (1.0 - q);
            }
            // Damped: far from the optimum the curvature is tiny and a full step overshoots.
            let step = (d1 / d2).clamp(-1.0, 1.0);
            x = (x - step).clamp(-20.0, 20.0);
            if step.abs() < 1e-10 {
                break;
            }
        }
        Some(x.exp())
    }

    /// The confidence sequence for the rate ratio: every θ0 whose two-sided e-process has
    /// not reached 1/α. Found by bisection on each side of the estimate, assuming the
    /// e-value rises away from it (it does for these unimodal likelihoods).
    pub(crate) fn ratio_ci(&self, alpha: f64) -> Option<(f64, f64)> {
        let est = self.ratio_estimate()?;
        let limit = 1.0 / alpha;
        let centre = est.clamp(RATIO_MIN, RATIO_MAX).ln();
        let edge = |far: f64| {
            if self.e_two_sided(far.exp()) < limit {
                return far;
            }
            let (mut inside, mut outside) = (centre, far);
            for _ in 0..30 {
                let mid = 0.5 * (inside + outside);
                if self.e_two_sided(mid.exp()) < limit {
                    inside = mid;
                } else {
                    outside = mid;
                }
            }
            inside
        };
        let lo = edge(RATIO_MIN.ln());
        let hi = edge(RATIO_MAX.ln());
        let lo = if lo <= RATIO_MIN.ln() + 1e-9 {
            0.0
        } else {
            lo.exp()
        };
        Some((lo, hi.exp()))
    }
}

/// mean(exp(x)) without overflow.
pub(crate) fn mean_exp<const N: usize>(logs: [f64; N]) -> f64 {
    let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return 0.0;
    }
    let sum: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    // Capped so that reports stay finite JSON numbers.
    (max + (sum / N as f64).ln()).exp().min(1e300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_canary_error_at_five_percent_matches_the_hand_computation() {
        // One bad event, on the canary, w = 0.05, θ_tol = 1: p0 = 0.05 and for θ_j,
        // q_j = 0.05θ_j / (0.95 + 0.05θ_j). LR_j = q_j / 0.05 = θ_j / (0.95 + 0.05θ_j):
        // θ = 1.25 → 1.2346, 1.5 → 1.4634, 2 → 1.9048, 3 → 2.7273, 5 → 4.1667, 8 → 5.9259.
        // Mean = 17.4227 / 6 = 2.90378.
        let mut p = CountProcess::default();
        p.observe(true, 0.05, true);
        assert!(
            (p.e_value(1.0) - 2.90378).abs() < 1e-4,
            "{}",
            p.e_value(1.0)
        );
    }

    #[test]
    fn a_stable_error_with_a_tolerance_matches_the_hand_computation() {
        // One bad event on stable, w = 0.5, θ_tol = 2: p0 = 1/(0.5+1) = 2/3.
        // θ_j = 2·{1.25,…,8} = {2.5,3,4,6,10,16}; q_j = θ_j/(1+θ_j) =
        // {0.71429, 0.75, 0.8, 0.85714, 0.90909, 0.94118}; LR_j = (1−q_j)/(1/3) =
        // {0.85714, 0.75, 0.6, 0.42857, 0.27273, 0.17647}; mean = 3.08491/6 = 0.514152.
        let mut p = CountProcess::default();
        p.observe(false, 0.5, true);
        assert!(
            (p.e_value(2.0) - 0.514152).abs() < 1e-5,
            "{}",
            p.e_value(2.0)
        );
    }

    #[test]
    fn good_requests_and_certain_labels_carry_no_evidence() {
        let mut p = CountProcess::default();
        for _ in 0..100 {
            p.observe(true, 0.05, false);
            p.observe(true, 1.0, true);
        }
        assert_eq!(p.e_value(1.0), 1.0);
        assert_eq!(p.n_canary, 200);
    }

    #[test]
    fn the_estimate_recovers_the_ratio_and_the_interval_covers_it() {
        // At w = 0.5, 30 canary and 10 stable bad events: the conditional MLE solves
        // q = 30/40 = θ/(1+θ), so θ̂ = 3.
        let mut p = CountProcess::default();
        for i in 0..40 {
            p.observe(i < 30, 0.5, true);
        }
        assert!((p.ratio_estimate().unwrap() - 3.0).abs() < 1e-6);
        let (lo, hi) = p.ratio_ci(0.05).unwrap();
        assert!(lo < 3.0 && 3.0 < hi && lo > 1.0, "({lo}, {hi})");
    }

    #[test]
    fn events_at_two_weights_are_judged_each_at_its_own() {
        // θ_tol = 1; one canary bad event at w = 0.05 (LR_j = θ_j / (0.95 + 0.05θ_j)) and
        // one stable bad event at w = 0.5 (p0 = 0.5, q_j = θ_j / (1 + θ_j), so
        // LR_j = 2 / (1 + θ_j)). Products: 1.09739, 1.17073, 1.26984, 1.36364, 1.38889,
        // 1.31687; mean = 7.60736 / 6 = 1.267894. Both events in the w = 0.05 cell would
        // give 2.467.
        let mut p = CountProcess::default();
        p.observe(true, 0.05, true);
        p.observe(false, 0.5, true);
        assert!(
            (p.e_value(1.0) - 1.267894).abs() < 1e-5,
            "{}",
            p.e_value(1.0)
        );
        assert_eq!(p.cells.len(), 2);
    }

    #[test]
    fn requests_are_counted_by_arm_and_outcome() {
        let mut p = CountProcess::default();
        for (canary, bad) in [(true, true), (true, false), (false, true), (false, false)] {
            p.observe(canary, 0.25, bad);
        }
        p.observe(false, 0.25, false);
        assert_eq!(
            (p.n_canary, p.bad_canary, p.n_stable, p.bad_stable),
            (2, 1, 3, 1)
        );
    }

    #[test]
    fn the_estimate_at_the_edges() {
        let mut p = CountProcess::default();
        assert_eq!(p.ratio_estimate(), None, "no bad event");
        p.observe(true, 1.0, true);
        p.observe(false, 0.0, true);
        assert_eq!(
            p.ratio_estimate(),
            None,
            "only events whose arm was certain"
        );
        p.observe(false, 0.5, true);
        assert_eq!(p.ratio_estimate(), Some(0.0), "bad events on stable only");
        let mut q = CountProcess::default();
        q.observe(true, 0.5, true);
        assert_eq!(q.ratio_estimate(), Some(RATIO_MAX), "on the canary only");
    }

    #[test]
    fn the_interval_matches_an_independent_inversion() {
        // 30 canary and 10 stable bad events at w = 0.5: the θ0 where the two-sided
        // e-value reaches 1/α = 20, found by bisection to 1e-12 outside this code
        // (Python, the same formulas): 1.058460 and 10.668443.
        let mut p = CountProcess::default();
        for i in 0..40 {
            p.observe(i < 30, 0.5, true);
        }
        let (lo, hi) = p.ratio_ci(0.05).unwrap();
        assert!((lo - 1.058460).abs() < 1e-5, "{lo}");
        assert!((hi - 10.668443).abs() < 1e-4, "{hi}");
        assert!((p.e_two_sided(3.0) - 0.259359).abs() < 1e-5);
        // The mirror image, 10 canary and 30 stable: the reciprocal interval, below 1 at
        // both ends (a lower end under 1 is a bound, not the open 0).
        let mut m = CountProcess::default();
        for i in 0..40 {
            m.observe(i < 10, 0.5, true);
        }
        let (lo, hi) = m.ratio_ci(0.05).unwrap();
        assert!((lo - 0.093734).abs() < 1e-6, "{lo}");
        assert!((hi - 0.944769).abs() < 1e-6, "{hi}");
    }

    #[test]
    fn two_events_leave_the_interval_open_on_both_sides() {
        // One bad event per arm at w = 0.5: the two-sided e-value at either edge of the
        // searched range is 1.934 < 1/α = 20 (computed outside this code), so the interval
        // is the whole range, reported as from 0 to `RATIO_MAX`.
        let mut p = CountProcess::default();
        p.observe(true, 0.5, true);
        p.observe(false, 0.5, true);
        let (lo, hi) = p.ratio_ci(0.05).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - RATIO_MAX).abs() < 1e-6, "{hi}");
    }
}
