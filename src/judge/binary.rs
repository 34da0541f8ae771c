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
//!
//! **Restarts (a mixture over change points).** A likelihood-ratio process that has run
//! under the null for an hour has spent its large-ratio components (each stable bad event
//! multiplies the θ = 8·θ_tol component by about 0.7), so a canary that turns bad suddenly,
//! say a provider incident on its arm alone, must first repay that hour. The gate's
//! e-value is therefore a mixture over start times:
//!
//! `E_t = π₀·M₀(t) + Σ_{k≥1} π_k·M_k(t)·1{t < τ_k + H}`, with `M_k(t) = 1` for `t < τ_k`,
//!
//! where `M_k` is the same grid mixture of likelihood ratios over the bad events after
//! `τ_k`, the first look (`Judge::tick`, on the controller's clock) at or after
//! `origin + k·RESTART_EVERY_MS`, where the counts are snapshotted; `π₀ = 1 −
//! RESTART_WEIGHT` and `π_k = RESTART_WEIGHT/(k(k+1))` (Σ_{k≥1} 1/(k(k+1)) = 1, so the
//! weights, fixed in advance, sum to 1). Looks, not observations, move this clock:
//! requests end in an order that can depend on their arm and outcome, so a restart begun
//! by a request's own time would not be a stopping time (a review measured E[E] =
//! 1.016–1.027 under the null that way). Validity: each
//! `M_k` is a test supermartingale from its start under "canary rate ≤ θ_tol × stable"
//! (the events after a stopping time, by the same argument as `M₀`), a restart whose time
//! passed unseen starts at the next call with the summed weight of the ones it stands
//! for, and dropping a term at the fixed age `H = RESTART_HORIZON_MS` only lowers the
//! sum. A fixed-weight average of test supermartingales is one, so Ville's inequality
//! gives `P(sup_t E_t ≥ 1/α) ≤ α`, however the looks fall. This is the e-detector
//! construction of Shin, Ramdas & Rinaldo (2024, "E-detectors: a nonparametric framework
//! for sequential change detection") with weights that sum to 1 instead of an unbounded
//! sum, which keeps a type-I guarantee over the whole rollout rather than an average run
//! length. The cost: `M₀` alone must reach `1/(π₀α)`, about 0.1 nats more evidence.

use serde::{Deserialize, Serialize};

/// Rate-ratio alternatives, as multiples of the tolerance θ_tol (§6.3).
pub(crate) const RATIO_GRID: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 8.0];

/// The range searched for ratio estimates and intervals; an interval ending at
/// `RATIO_MAX` is open above (JSON has no infinity).
pub(crate) const RATIO_MIN: f64 = 1e-3;
pub(crate) const RATIO_MAX: f64 = 1e3;

/// Time between restarts of the likelihood-ratio mixture (module doc): two minutes, so an
/// incident that starts anywhere is at most two minutes into a fresh process.
pub(crate) const RESTART_EVERY_MS: i64 = 120_000;
/// How long a restarted process is kept: an hour. Older evidence stays in `M₀` and in the
/// later restarts; the bound keeps a checkpoint small (at most 30 snapshots per gate).
pub(crate) const RESTART_HORIZON_MS: i64 = 3_600_000;
/// The prior weight on all restarts together, `1 − π₀`.
pub(crate) const RESTART_WEIGHT: f64 = 0.1;

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
    /// The time of the first [`CountProcess::advance_to`]: restarts are counted from it.
    #[serde(default)]
    pub(crate) origin_ms: Option<i64>,
    /// The live restarts, oldest first.
    #[serde(default)]
    pub(crate) restarts: Vec<Restart>,
    /// The highest restart index started so far (dropped ones included).
    #[serde(default)]
    pub(crate) restarted_through: u32,
}

/// A restarted process: where the counts stood when it began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Restart {
    /// Its index k: it began at the first call at or after `origin + k·RESTART_EVERY_MS`.
    pub(crate) k: u32,
    /// Its prior weight: the sum of `π_j` over the restart times it stands for.
    pub(crate) weight: f64,
    /// `cells` as they were at its start (a prefix of them: cells are only appended).
    pub(crate) base: Vec<Cell>,
}

/// `Σ_{j=a+1}^{b} RESTART_WEIGHT/(j(j+1)) = RESTART_WEIGHT·(1/(a+1) − 1/(b+1))`.
fn restart_weight(a: u32, b: u32) -> f64 {
    // In f64: `b` may be u32::MAX after a clock jump, and `b + 1` must not overflow.
    RESTART_WEIGHT * (1.0 / (f64::from(a) + 1.0) - 1.0 / (f64::from(b) + 1.0))
}

impl CountProcess {
    /// Moves the process's clock to `now_ms` (milliseconds, any epoch): starts the
    /// restarts that have come due and drops those older than `RESTART_HORIZON_MS`. An
    /// earlier time than before does nothing. Call at each look with the controller's
    /// clock, never with an observation's own time (module doc).
    pub(crate) fn advance_to(&mut self, now_ms: i64) {
        let origin = *self.origin_ms.get_or_insert(now_ms);
        let due = u32::try_from(now_ms.saturating_sub(origin).max(0) / RESTART_EVERY_MS)
            .unwrap_or(u32::MAX);
        if due > self.restarted_through {
            self.restarts.push(Restart {
                k: due,
                weight: restart_weight(self.restarted_through, due),
                base: self.cells.clone(),
            });
            self.restarted_through = due;
        }
        self.restarts.retain(|r| {
            now_ms.saturating_sub(origin.saturating_add(i64::from(r.k) * RESTART_EVERY_MS))
                < RESTART_HORIZON_MS
        });
    }

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
                let (up, down) = log_lr_terms(c.w_bp, theta_null, theta_alt);
                c.canary_bad as f64 * up + c.stable_bad as f64 * down
            })
            .sum()
    }

    /// The one-sided e-value against "canary rate ≤ θ_tol × stable": the mixture over
    /// restarts (module doc) of the mean over the grid of alternatives θ_tol·RATIO_GRID.
    pub(crate) fn e_value(&self, theta_tol: f64) -> f64 {
        // Per cell and alternative, the log-LR of one canary and of one stable bad event.
        let terms: Vec<[(f64, f64); RATIO_GRID.len()]> = self
            .cells
            .iter()
            .map(|c| RATIO_GRID.map(|g| log_lr_terms(c.w_bp, theta_tol, theta_tol * g)))
            .collect();
        let since = |base: &[Cell]| {
            let mut logs = [0.0; RATIO_GRID.len()];
            for (i, (cell, t)) in self.cells.iter().zip(&terms).enumerate() {
                let (c0, s0) = base.get(i).map_or((0, 0), |b| (b.canary_bad, b.stable_bad));
                // Saturating: a base never exceeds the counts it was taken from.
                let c = cell.canary_bad.saturating_sub(c0) as f64;
                let s = cell.stable_bad.saturating_sub(s0) as f64;
                for (l, (up, down)) in logs.iter_mut().zip(t) {
                    *l += c * up + s * down;
                }
            }
            mean_exp(logs)
        };
        let restarted: f64 = self
            .restarts
            .iter()
            .map(|r| r.weight * since(&r.base))
            .sum();
        // Restarts not begun yet stand at 1: Σ_{j>k} π_j = RESTART_WEIGHT/(k+1).
        let pending = RESTART_WEIGHT / (f64::from(self.restarted_through) + 1.0);
        ((1.0 - RESTART_WEIGHT) * since(&[]) + restarted + pending).min(1e300)
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

/// The log-likelihood ratio of θ_alt against θ_null of one bad event at `w_bp`: on the
/// canary, `ln(q/p0)`, and on stable, `ln((1−q)/(1−p0))`, with `p = wθ/(1−w+wθ)`.
fn log_lr_terms(w_bp: u32, theta_null: f64, theta_alt: f64) -> (f64, f64) {
    let w = f64::from(w_bp) / 10_000.0;
    let p0 = w * theta_null / (1.0 - w + w * theta_null);
    let q = w * theta_alt / (1.0 - w + w * theta_alt);
    ((q / p0).ln(), ((1.0 - q) / (1.0 - p0)).ln())
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
        // Mean = 17.4227 / 6 = 2.90378, at the whole history's weight π₀ = 0.9, plus the
        // restarts not begun (0.1, at 1): 2.71340.
        let mut p = CountProcess::default();
        p.observe(true, 0.05, true);
        assert!(
            (p.e_value(1.0) - (0.9 * 2.90378 + 0.1)).abs() < 1e-4,
            "{}",
            p.e_value(1.0)
        );
    }

    #[test]
    fn a_stable_error_with_a_tolerance_matches_the_hand_computation() {
        // One bad event on stable, w = 0.5, θ_tol = 2: p0 = 1/(0.5+1) = 2/3.
        // θ_j = 2·{1.25,…,8} = {2.5,3,4,6,10,16}; q_j = θ_j/(1+θ_j) =
        // {0.71429, 0.75, 0.8, 0.85714, 0.90909, 0.94118}; LR_j = (1−q_j)/(1/3) =
        // {0.85714, 0.75, 0.6, 0.42857, 0.27273, 0.17647}; mean = 3.08491/6 = 0.514152,
        // times π₀ = 0.9, plus the 0.1 of the restarts not begun (at 1).
        let mut p = CountProcess::default();
        p.observe(false, 0.5, true);
        assert!(
            (p.e_value(2.0) - (0.9 * 0.514152 + 0.1)).abs() < 1e-5,
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
        assert!((p.e_value(1.0) - 1.0).abs() < 1e-12, "{}", p.e_value(1.0));
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
        // 1.31687; mean = 7.60736 / 6 = 1.267894 (times π₀ = 0.9, plus 0.1 for the
        // restarts not begun). Both events in the w = 0.05 cell would give 2.467.
        let mut p = CountProcess::default();
        p.observe(true, 0.05, true);
        p.observe(false, 0.5, true);
        assert!(
            (p.e_value(1.0) - (0.9 * 1.267894 + 0.1)).abs() < 1e-5,
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

    #[test]
    fn a_restart_counts_only_the_bad_events_after_it() {
        // θ_tol = 1, w = 0.5, so p0 = 1/2 and q_j = θ_j/(1+θ_j): a canary event's LR is
        // 2q_j, a stable one's 2(1−q_j). Three stable bad events, then the clock passes
        // the first restart (k = 1, π₁ = 0.1/2 = 0.05), then two canary bad events:
        // M₀ = mean_j (2q_j)²(2(1−q_j))³ = 0.4249865, M₁ = mean_j (2q_j)² = 2.1067695,
        // and the restarts from k = 2 on, not begun, stand at 1 with weight 0.1/2:
        // E = 0.9·M₀ + 0.05·M₁ + 0.05 = 0.5378264 (Python, the same formulas).
        let mut p = CountProcess::default();
        p.advance_to(1_000);
        for _ in 0..3 {
            p.observe(false, 0.5, true);
        }
        p.advance_to(1_000 + RESTART_EVERY_MS - 1);
        assert!(p.restarts.is_empty(), "not due yet");
        p.advance_to(1_000 + RESTART_EVERY_MS);
        for _ in 0..2 {
            p.observe(true, 0.5, true);
        }
        assert_eq!(p.restarts.len(), 1);
        assert!((p.restarts[0].weight - 0.05).abs() < 1e-12);
        let e = p.e_value(1.0);
        assert!((e - 0.5378264).abs() < 1e-6, "{e}");
    }

    #[test]
    fn restarts_passed_unseen_start_once_with_their_summed_weight_and_age_out() {
        let mut p = CountProcess::default();
        p.advance_to(0);
        // Nothing for 21 minutes: restarts 1..=10 are due at once, weight
        // 0.1·(1 − 1/11).
        p.advance_to(21 * 60_000);
        assert_eq!(p.restarts.len(), 1);
        assert_eq!(p.restarts[0].k, 10);
        assert!((p.restarts[0].weight - 0.1 * (1.0 - 1.0 / 11.0)).abs() < 1e-12);
        // An earlier time changes nothing.
        p.advance_to(5 * 60_000);
        assert_eq!((p.restarts.len(), p.restarted_through), (1, 10));
        // Restart 10 began at 20 minutes; it is dropped at 80, and restart 11's weight
        // is π₁₁ = 0.1/(11·12) whether or not 10 is still live.
        p.advance_to(22 * 60_000);
        assert!((p.restarts[1].weight - 0.1 / 132.0).abs() < 1e-15);
        p.advance_to(80 * 60_000 - 1);
        assert_eq!(p.restarts.first().map(|r| r.k), Some(10));
        p.advance_to(80 * 60_000);
        assert_eq!(p.restarts.first().map(|r| r.k), Some(11));
        assert_eq!(p.restarted_through, 40);
        // Looked at every two minutes for two hours: the hour's 30 restarts are live.
        let mut q = CountProcess::default();
        for minute in (0..=120).step_by(2) {
            q.advance_to(minute * 60_000);
        }
        assert_eq!(q.restarts.len(), 30);
        assert_eq!(q.restarts.first().map(|r| r.k), Some(31));
    }

    #[test]
    fn a_clock_jump_to_the_end_of_time_neither_overflows_nor_keeps_a_restart() {
        let mut p = CountProcess::default();
        p.advance_to(0);
        p.observe(true, 0.5, true);
        p.advance_to(i64::MAX);
        assert_eq!(p.restarted_through, u32::MAX);
        // Restart u32::MAX is dated origin + u32::MAX · 2 min, long before i64::MAX ms:
        // aged out at once, and the restarts not begun weigh next to nothing.
        assert!(p.restarts.is_empty());
        let e = p.e_value(1.0);
        assert!(e.is_finite() && e > 0.0, "{e}");
        p.advance_to(i64::MAX);
        p.observe(true, 0.5, true);
        assert!(p.e_value(1.0).is_finite());
    }

    /// Every labelling of `n` bad events, each canary with probability `p`, with the clock
    /// moved by `step_ms` before each; returns E[e-value at the end] and the expectation
    /// the construction promises under the boundary null (1 less the weights of the
    /// restarts dropped: each term's expectation is its weight, a dropped term's is 0).
    fn exact_mean(n: u32, p: f64, w: f64, theta_tol: f64, step_ms: i64) -> (f64, f64) {
        let mut mean = 0.0;
        let mut promised = 0.0;
        for labels in 0u32..(1 << n) {
            let mut proc = CountProcess::default();
            let mut prob = 1.0;
            for i in 0..n {
                proc.advance_to(i64::from(i) * step_ms);
                let canary = labels >> i & 1 == 1;
                prob *= if canary { p } else { 1.0 - p };
                proc.observe(canary, w, true);
            }
            mean += prob * proc.e_value(theta_tol);
            let live: f64 = proc.restarts.iter().map(|r| r.weight).sum();
            let pending = RESTART_WEIGHT / (f64::from(proc.restarted_through) + 1.0);
            promised = 1.0 - RESTART_WEIGHT + live + pending;
        }
        (mean, promised)
    }

    #[test]
    fn the_mixture_over_restarts_is_a_martingale_under_the_null_and_a_supermartingale_below_it() {
        // w = 0.25, θ_tol = 1.2: at the boundary a bad event is canary with probability
        // p0 = 0.3/1.05. Twelve events, eleven minutes apart: restarts start (several at
        // once), and those older than an hour are dropped. Enumerating all 4 096
        // labellings gives the exact expectation.
        let (w, tol) = (0.25, 1.2);
        let p0 = w * tol / (1.0 - w + w * tol);
        let (mean, promised) = exact_mean(12, p0, w, tol, 11 * 60_000);
        assert!(promised < 1.0 && promised > 0.9, "{promised}");
        assert!((mean - promised).abs() < 1e-9, "{mean} vs {promised}");
        // Two minutes apart: no restart dropped, so the expectation is exactly 1.
        let (mean, promised) = exact_mean(12, p0, w, tol, RESTART_EVERY_MS);
        assert!((promised - 1.0).abs() < 1e-12, "{promised}");
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        // A canary better than the tolerance allows (equal rates): below 1.
        let (mean, _) = exact_mean(12, w, w, tol, RESTART_EVERY_MS);
        assert!(mean < 0.8, "{mean}");
    }

    #[test]
    fn a_sudden_burst_after_a_long_calm_is_caught_by_a_restart() {
        // The s16 scenario's shape at w = 0.05, θ_tol = 1.2: 20 minutes at equal rates
        // (6 canary and 114 stable bad events), then two minutes where the canary fails
        // far more (12 canary, 11 stable). The whole history's process alone reaches
        // 0.9·M₀ = 20.86, well short of the error gate's 1/(0.316·α) ≈ 317 at α = 0.01;
        // restart 10 (from minute 20, π = 0.1/110) adds 3 781.8 and the nine before it
        // 126.4, with 0.1/11 for those not begun: 3 929.1 (Python, the same formulas).
        let (w, tol) = (0.05, 1.2);
        let mut p = CountProcess::default();
        for i in 0..120 {
            p.advance_to(i * 10_000);
            p.observe(i % 20 == 0, w, true);
        }
        assert!(p.e_value(tol) < 1.0, "{}", p.e_value(tol));
        for i in 0..23 {
            p.advance_to(20 * 60_000 + i * 5_000);
            p.observe(i < 12, w, true);
        }
        let restart = p.restarts.iter().find(|r| r.k == 10).expect("restart 10");
        assert!((restart.weight - 0.1 / 110.0).abs() < 1e-15);
        let e = p.e_value(tol);
        assert!((e - 3929.1057).abs() < 0.01, "{e}");
    }
}
