//! Continuous gates (latency, TTFT, tokens, cost, response length): in, each request's
//! value with its arm and `w`; out, the e-values of research §6.3 on a standardized log
//! scale, the tail process for p95 gates, effect estimates and the figures to report.
//!
//! The score of request i is `g = clip((z − m̂)/ŝ, −4, 4)` with `z = log y − δ_tol·A`
//! and m̂, ŝ the mean and standard deviation of log y over the stable arm's last
//! [`WINDOW`] randomized requests *before* request i (so g is predictable). The tail
//! score is `b = 1{z > t̂}` with t̂ the p95 of the stable arm's last [`TAIL_WINDOW`]
//! randomized log values before request i. Each one-sided process keeps a log-wealth per
//! alternative j and updates it with `ℓ_j += A·log r_j − log(1 − w + w·r_j)`, where
//! `r_j = exp(λ_j g − κ_j)` for the shift and `r_j = θ_j^b / (1 − p + p·θ_j)` (p = 5 %)
//! for the tail.
//!
//! **Why the tail process is valid** (any threshold, any prior, any number of looks).
//! Write request i's factor as `1 + (A_i − w_i)·h_ij` with
//! `h_ij = (r_ij − 1)/(1 − w_i + w_i·r_ij)`: for A = 1 that is `r/(1 − w + w r)`, for
//! A = 0 it is `1/(1 − w + w r)`. This is the betting capital of Waudby-Smith and Ramdas,
//! *Estimating means of bounded random variables by betting* (JRSS B, 2023), for the
//! mean w_i of the label A_i, with bet h_ij ∈ [−1/(1 − w_i), 1/w_i] fixed once t̂_i
//! (stable requests before i only) and request i's outcome are known. Let G_i be
//! everything before request i together with its outcome. Under "the canary changes
//! nothing beyond its tolerance" sluice's own coin makes `P(A_i = 1 | G_i) = w_i`, so
//! `E[1 + (A_i − w_i)h_ij | G_i] = 1`. Under the composite one-sided null "at each
//! threshold the judge uses, the canary exceeds `max_ratio × t` no more often than stable
//! exceeds t" (p_c ≤ p_s: the canary's p95 is within tolerance), the factor's mean given
//! the past is `1 + w(1 − w)(h(1) − h(0))(p_c − p_s) ≤ 1`, as `h(1) > h(0)` for every
//! θ_j > 1. So each product over requests is a nonnegative supermartingale starting at 1,
//! a [`TAIL_PRIOR`]-weighted average of them (weights fixed in advance, summing to 1) is
//! one too, and by Ville's inequality it ever reaches 1/α with probability at most α
//! (Ramdas, Grünwald, Vovk and Shafer, *Game-theoretic statistics and safe anytime-valid
//! inference*, Statistical Science 2023; Howard, Ramdas, McAuliffe and Sekhon,
//! *Time-uniform, nonparametric, nonasymptotic confidence sequences*, Annals of
//! Statistics 2021). Nothing in this argument asks t̂ to be the true p95 or the prior to
//! be right: they only shape power, which is why both were chosen on power alone.

use serde::{Deserialize, Serialize};

use super::binary::RATIO_GRID;

/// Stable requests in the trailing window that standardizes the score.
pub(crate) const WINDOW: usize = 256;
/// The score is undefined until the window has this many stable requests.
pub(crate) const MIN_WINDOW: usize = 32;
/// Canary requests kept for the canary's p95 and its hard limit.
pub(crate) const CANARY_WINDOW: usize = 256;
/// Standardized log-shift alternatives: 0.05 × these powers, so the tilts of a request
/// are powers of one exponential.
pub(crate) const LAMBDA_STEP: f64 = 0.05;
pub(crate) const LAMBDA_POWERS: [i32; 6] = [1, 2, 4, 7, 12, 20];
/// How many factors are multiplied before they are folded into the logs; each factor is
/// at most 1/w ≤ 10⁴, so 16 of them stay far inside f64.
const FOLD_EVERY: u32 = 16;
/// Nominal exceedance of the stable p95 (κ of the tail process).
pub(crate) const TAIL_P: f64 = 0.05;
/// Stable requests whose p95 is the tail process's threshold. The p95 of 256 values
/// leaves stable's own exceedance anywhere between about 3.6 % and 6.4 % (± one
/// standard deviation), which blurs a tail shift of a few points; 1024 halves that
/// (issue 12 point 5: on a model of the tail process alone, `evals/tail_model.py`, s06
/// goes from 68 % to 72 % reverted). It is the threshold only: m̂ and ŝ keep [`WINDOW`].
pub(crate) const TAIL_WINDOW: usize = 1024;
/// Prior weights of the tail process over [`RATIO_GRID`] (exceedance ratios 1.25 … 8),
/// fixed in advance and summing to 1. At a tolerance of 1.1 on a log-normal TTFT, a p95
/// up by 1.2, 1.3, 1.5, 2 × exceeds 1.1 × stable's p95 in about 1.3, 1.55, 2, 3 × 5 % of
/// requests: the small ratios are the regressions the shift process misses, and they
/// need every nat (their evidence grows by about 0.006 per canary request), while a
/// ratio of 5 or 8 gains about 0.2 per canary request and loses only a few requests to
/// a smaller weight. With the longer window, `sluice simulate --only s06 --runs 800`
/// reverts 79 % of s06 runs within the hour (72 % before; docs/judge.md).
pub(crate) const TAIL_PRIOR: [f64; 6] = [0.3, 0.3, 0.2, 0.1, 0.05, 0.05];

/// A ring buffer of recent values with running sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Window {
    capacity: usize,
    values: Vec<f64>,
    next: usize,
    sum: f64,
    sum_sq: f64,
    /// Cached upper quantile, refreshed every few pushes (it only shapes power).
    q95: f64,
    since_q: u32,
}

impl Window {
    pub(crate) fn new(capacity: usize) -> Self {
        Window {
            capacity,
            values: Vec::new(),
            next: 0,
            sum: 0.0,
            sum_sq: 0.0,
            // No tail scores before the window has a quantile (JSON has no ∞).
            q95: f64::MAX,
            since_q: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub(crate) fn push(&mut self, v: f64) {
        if self.values.len() < self.capacity {
            self.values.push(v);
        } else {
            let old = std::mem::replace(&mut self.values[self.next], v);
            self.sum -= old;
            self.sum_sq -= old * old;
            self.next = (self.next + 1) % self.capacity;
        }
        self.sum += v;
        self.sum_sq += v * v;
        self.since_q += 1;
        if self.since_q >= 16 || self.values.len() <= MIN_WINDOW {
            self.q95 = self.quantile(0.95);
            self.since_q = 0;
            // Running sums drift with rounding; recompute them now and then.
            self.sum = self.values.iter().sum();
            self.sum_sq = self.values.iter().map(|v| v * v).sum();
        }
    }

    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.values.len() as f64
    }

    /// The cached upper 95 % quantile (refreshed every 16 pushes).
    pub(crate) fn q95(&self) -> f64 {
        self.q95
    }

    pub(crate) fn sd(&self) -> f64 {
        let n = self.values.len() as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0).max(1.0);
        var.max(0.0).sqrt()
    }

    /// The empirical quantile (the value at rank ⌈p·n⌉).
    pub(crate) fn quantile(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        let mut v = self.values.clone();
        let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        let (_, x, _) = v.select_nth_unstable_by(k, f64::total_cmp);
        *x
    }
}

/// Log-wealth of six one-component processes, with pending products folded lazily.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Wealth {
    log: [f64; 6],
    pending: [f64; 6],
    n_pending: u32,
}

impl Default for Wealth {
    fn default() -> Self {
        Wealth {
            log: [0.0; 6],
            pending: [1.0; 6],
            n_pending: 0,
        }
    }
}

impl Wealth {
    /// Multiplies in one request's likelihood ratios, given the tilts r_j = exp(λ_j g − κ_j).
    pub(crate) fn update(&mut self, canary: bool, w: f64, r: [f64; 6]) {
        for (pending, r) in self.pending.iter_mut().zip(r) {
            let denom = 1.0 - w + w * r;
            *pending *= if canary { r / denom } else { 1.0 / denom };
        }
        self.n_pending += 1;
        if self.n_pending >= FOLD_EVERY {
            self.fold();
        }
    }

    fn fold(&mut self) {
        for j in 0..6 {
            self.log[j] += self.pending[j].ln();
            self.pending[j] = 1.0;
        }
        self.n_pending = 0;
    }

    pub(crate) fn logs(&self) -> [f64; 6] {
        std::array::from_fn(|j| self.log[j] + self.pending[j].ln())
    }

    /// The mixture e-value, π_j = 1/6.
    pub(crate) fn e_value(&self) -> f64 {
        super::binary::mean_exp(self.logs())
    }

    /// The mixture e-value with prior weights `prior` (non-negative, summing to 1).
    pub(crate) fn e_value_with(&self, prior: [f64; 6]) -> f64 {
        let logs = self.logs();
        let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return 0.0;
        }
        let sum: f64 = logs
            .iter()
            .zip(prior)
            .map(|(l, p)| p * (l - max).exp())
            .sum();
        // Capped so that reports stay finite JSON numbers.
        (max + sum.ln()).exp().min(1e300)
    }
}

/// Tilts for a standardized score: r_j = exp(λ_j g − λ_j²/2).
pub(crate) fn shift_tilts(g: f64) -> [f64; 6] {
    let u = (LAMBDA_STEP * g).exp();
    let u2 = u * u;
    let u4 = u2 * u2;
    let u7 = u4 * u2 * u;
    let u12 = u4 * u4 * u4;
    let u20 = u12 * u4 * u4;
    let pow = [u, u2, u4, u7, u12, u20];
    std::array::from_fn(|j| {
        let lambda = LAMBDA_STEP * f64::from(LAMBDA_POWERS[j]);
        pow[j] * (-lambda * lambda / 2.0).exp()
    })
}

/// Tilts for the tail indicator: λ_j = log θ_j, κ_j = log(1 − p + pθ_j).
pub(crate) fn tail_tilts(bad: bool) -> [f64; 6] {
    std::array::from_fn(|j| {
        let theta = RATIO_GRID[j];
        let kappa = 1.0 - TAIL_P + TAIL_P * theta;
        if bad { theta / kappa } else { 1.0 / kappa }
    })
}

/// Running n, Σx, Σx² of one arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Moments {
    pub(crate) n: u64,
    pub(crate) sum: f64,
    pub(crate) sum_sq: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }
    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }
    pub(crate) fn var(&self) -> f64 {
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0).max(1.0)).max(0.0)
    }
}

fn tail_window() -> Window {
    Window::new(TAIL_WINDOW)
}

/// One continuous gate's whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ContinuousGate {
    /// log(max_ratio): the process against "canary ≤ max_ratio × stable", if any.
    up_shift: Option<f64>,
    /// log(min_ratio): the mirrored process against "canary ≥ min_ratio × stable".
    down_shift: Option<f64>,
    tail: bool,
    stable: Window,
    /// The stable arm's last [`TAIL_WINDOW`] randomized log values: the tail threshold.
    /// A checkpoint from before it existed restores it empty (the threshold then comes
    /// from `stable` until it fills).
    #[serde(default = "tail_window")]
    tail_stable: Window,
    canary: Window,
    up: Wealth,
    down: Wealth,
    tail_up: Wealth,
    /// log y − m̂ at the time of each request, per arm: the drift-robust effect estimate.
    pub(crate) residual_stable: Moments,
    pub(crate) residual_canary: Moments,
    /// Raw values per arm (randomized), for means per request.
    pub(crate) raw_stable: Moments,
    pub(crate) raw_canary: Moments,
}

impl ContinuousGate {
    pub(crate) fn new(max_ratio: Option<f64>, min_ratio: Option<f64>, tail: bool) -> Self {
        ContinuousGate {
            up_shift: max_ratio.map(f64::ln),
            down_shift: min_ratio.map(f64::ln),
            tail: tail && max_ratio.is_some(),
            stable: Window::new(WINDOW),
            tail_stable: tail_window(),
            canary: Window::new(CANARY_WINDOW),
            up: Wealth::default(),
            down: Wealth::default(),
            tail_up: Wealth::default(),
            residual_stable: Moments::default(),
            residual_canary: Moments::default(),
            raw_stable: Moments::default(),
            raw_canary: Moments::default(),
        }
    }

    /// Whether this gate has a statistical test at all (a gate may be a hard limit only).
    pub(crate) fn is_judged(&self) -> bool {
        self.up_shift.is_some() || self.down_shift.is_some()
    }

    /// Every canary request, pinned or not: feeds the canary's p95 and hard limit.
    pub(crate) fn observe_canary_any(&mut self, y: f64) {
        self.canary.push(y);
    }

    /// A randomized request.
    pub(crate) fn observe(&mut self, canary: bool, w: f64, y: f64) {
        let ly = y.max(1e-9).ln();
        if canary {
            self.raw_canary.push(y);
        } else {
            self.raw_stable.push(y);
        }
        let informative = w > 0.0 && w < 1.0;
        if self.stable.len() >= MIN_WINDOW && informative {
            let m = self.stable.mean();
            let s = self.stable.sd().max(1e-3);
            let a = if canary { 1.0 } else { 0.0 };
            if canary {
                self.residual_canary.push(ly - m);
            } else {
                self.residual_stable.push(ly - m);
            }
            if let Some(delta) = self.up_shift {
                let z = ly - delta * a;
                let g = ((z - m) / s).clamp(-4.0, 4.0);
                self.up.update(canary, w, shift_tilts(g));
                if self.tail {
                    let bad = z > self.tail_threshold();
                    self.tail_up.update(canary, w, tail_tilts(bad));
                }
            }
            if let Some(delta) = self.down_shift {
                let z = ly - delta * a;
                let g = ((z - m) / s).clamp(-4.0, 4.0);
                self.down.update(canary, w, shift_tilts(-g));
            }
        }
        // Only after scoring: the windows hold data from before this request.
        if !canary {
            self.stable.push(ly);
            if self.tail {
                self.tail_stable.push(ly);
            }
        }
    }

    /// The tail process's threshold on the log scale: the p95 of [`TAIL_WINDOW`] stable
    /// requests (of `stable`'s shorter window while a restored checkpoint refills it).
    fn tail_threshold(&self) -> f64 {
        if self.tail_stable.len() >= MIN_WINDOW {
            self.tail_stable.q95()
        } else {
            self.stable.q95()
        }
    }

    /// The tail process's e-value alone (1 for a gate without one).
    pub(crate) fn tail_e_value(&self) -> f64 {
        if self.tail {
            self.tail_up.e_value_with(TAIL_PRIOR)
        } else {
            1.0
        }
    }

    /// The gate's e-value: the average of its one-sided processes (each an e-process, so
    /// the average is one too).
    pub(crate) fn e_value(&self) -> f64 {
        let mut parts = Vec::with_capacity(3);
        if self.up_shift.is_some() {
            parts.push(self.up.e_value());
            if self.tail {
                parts.push(self.tail_e_value());
            }
        }
        if self.down_shift.is_some() {
            parts.push(self.down.e_value());
        }
        if parts.is_empty() {
            return 1.0;
        }
        parts.iter().sum::<f64>() / parts.len() as f64
    }

    /// Ratio of geometric means, canary / stable, from residuals against the same
    /// predictable centre (so drift shared by the arms cancels).
    pub(crate) fn effect(&self) -> Option<f64> {
        if self.residual_canary.n < 2 || self.residual_stable.n < 2 {
            return None;
        }
        Some((self.residual_canary.mean() - self.residual_stable.mean()).exp())
    }

    /// A (1 − α) asymptotic confidence sequence for the effect (Waudby-Smith et al. 2024,
    /// normal mixture tuned to be tightest near 500 canary requests). It is a simpler,
    /// honest interval than inverting the e-processes over every tolerance.
    pub(crate) fn effect_ci(&self, alpha: f64) -> Option<(f64, f64)> {
        let d = self.effect()?.ln();
        let (c, s) = (&self.residual_canary, &self.residual_stable);
        let v = c.var() / c.n as f64 + s.var() / s.n as f64;
        let n = c.n.min(s.n) as f64;
        let rho2 = (-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / 500.0;
        let scale =
            (2.0 * (n * rho2 + 1.0) / (n * rho2) * ((n * rho2 + 1.0).sqrt() / alpha).ln()).sqrt();
        let h = v.sqrt() * scale;
        Some(((d - h).exp(), (d + h).exp()))
    }

    /// p95 of the stable window (original scale) and of the recent canary requests.
    pub(crate) fn p95s(&self) -> (Option<f64>, Option<f64>) {
        let s = (!self.stable.is_empty()).then(|| self.stable.quantile(0.95).exp());
        let c = (!self.canary.is_empty()).then(|| self.canary.quantile(0.95));
        (s, c)
    }

    pub(crate) fn canary_recent(&self) -> usize {
        self.canary.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn one_update_matches_the_hand_computation() {
        // Window: 32 stable values alternating log y = 0 and 2 → m̂ = 1, ŝ = sqrt(32/31).
        // Then one canary request with log y = 1 + ŝ at w = 0.5, no tolerance: g = 1.
        // r_j = exp(λ_j − λ_j²/2) and LR_j = r_j / (0.5 + 0.5 r_j):
        // λ = 0.05 → r = 1.04996, LR = 1.02437; 0.1 → 1.09966, 1.04746; 0.2 → 1.19722,
        // 1.08976; 0.35 → 1.33476, 1.14338; 0.6 → 1.52196, 1.20697; 1.0 → 1.64872, 1.24492.
        // Mean = 6.75686 / 6 = 1.126143.
        let mut gate = ContinuousGate::new(Some(1.0), None, false);
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        let s = (32.0f64 / 31.0).sqrt();
        gate.observe(true, 0.5, (1.0 + s).exp());
        assert!(
            (gate.e_value() - 1.126143).abs() < 1e-5,
            "{}",
            gate.e_value()
        );
    }

    #[test]
    fn the_window_only_holds_stable_requests_seen_before() {
        let mut gate = ContinuousGate::new(Some(1.0), None, true);
        for _ in 0..10 {
            gate.observe(true, 0.5, 100.0);
        }
        assert_eq!(
            gate.e_value(),
            1.0,
            "no stable window yet: no score, no evidence"
        );
        assert_eq!(gate.raw_canary.n, 10);
    }

    /// 32 stable values alternating log y = 0 and 2: the p95 of both windows is 2.
    fn gate_with_a_short_stable_history(max_ratio: f64) -> ContinuousGate {
        let mut gate = ContinuousGate::new(Some(max_ratio), None, true);
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        gate
    }

    #[test]
    fn one_tail_update_matches_the_hand_computation() {
        // Threshold 2 (rank ⌈0.95·32⌉ = 31 of sixteen 0s and sixteen 2s). A canary at
        // log y = 3 > 2 is a tail event at w = 0.5: κ_j = 0.95 + 0.05θ_j, r_j = θ_j/κ_j,
        // LR_j = r_j/(0.5 + 0.5 r_j) = 2θ_j/(κ_j + θ_j): θ = 1.25 → 1.10497, 1.5 → 1.18812,
        // 2 → 1.31148, 3 → 1.46341, 5 → 1.61290, 8 → 1.71123. Prior 0.3, 0.3, 0.2, 0.1,
        // 0.05, 0.05: 0.33149 + 0.35644 + 0.26230 + 0.14634 + 0.08065 + 0.08556 = 1.26277.
        let mut gate = gate_with_a_short_stable_history(1.0);
        gate.observe(true, 0.5, 3f64.exp());
        let e = gate.tail_e_value();
        assert!((e - 1.262771).abs() < 1e-5, "{e}");
        // A canary at log y = 1 is no tail event: LR_j = 2/(κ_j + 1) = 0.99379, 0.98765,
        // 0.97561, 0.95238, 0.90909, 0.85106; weighted 0.972801.
        let mut gate = gate_with_a_short_stable_history(1.0);
        gate.observe(true, 0.5, 1f64.exp());
        let e = gate.tail_e_value();
        assert!((e - 0.972801).abs() < 1e-5, "{e}");
    }

    #[test]
    fn the_tolerance_moves_the_canary_down_before_the_tail_test() {
        // max_ratio = e: the canary's log y = 3 scores as z = 2, not above the threshold 2.
        let mut gate = gate_with_a_short_stable_history(1f64.exp());
        gate.observe(true, 0.5, 3f64.exp());
        let e = gate.tail_e_value();
        assert!((e - 0.972801).abs() < 1e-5, "{e}");
    }

    #[test]
    fn the_tail_threshold_is_the_p95_of_the_last_1024_stable_requests() {
        // 768 stable values at log y = 5, then 256 alternating 0 and 2. The last 256 alone
        // have p95 2; all 1024 have p95 5 (rank 973 of 128 0s, 128 2s and 768 5s). A
        // canary at log y = 3 is therefore no tail event (LR weighted 0.972801 as above).
        let mut gate = ContinuousGate::new(Some(1.0), None, true);
        for _ in 0..768 {
            gate.observe(false, 0.0, 5f64.exp());
        }
        for i in 0..256 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        assert_eq!(gate.stable.q95(), 2.0);
        gate.observe(true, 0.5, 3f64.exp());
        let e = gate.tail_e_value();
        assert!((e - 0.972801).abs() < 1e-5, "{e}");
    }

    #[test]
    fn a_checkpoint_from_before_the_tail_window_still_restores() {
        // A rollout judged by an older sluice stored no `tail_stable`: it restores empty
        // and the threshold comes from the 256-request window until it has refilled.
        let gate = gate_with_a_short_stable_history(1.0);
        let mut json = serde_json::to_value(&gate).unwrap();
        json.as_object_mut().unwrap().remove("tail_stable");
        let mut restored: ContinuousGate = serde_json::from_value(json).unwrap();
        assert!(restored.tail_stable.is_empty());
        restored.observe(true, 0.5, 3f64.exp());
        let e = restored.tail_e_value();
        assert!((e - 1.262771).abs() < 1e-5, "{e}");
    }

    /// Log TTFT as the simulator draws it: log-normal (σ = 0.5) with 2 % of requests
    /// five times slower.
    fn log_ttft(rng: &mut StdRng) -> f64 {
        let u: f64 = rng.random::<f64>().max(1e-300);
        let v: f64 = rng.random();
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        let slow = if rng.random::<f64>() < 0.02 {
            5f64.ln()
        } else {
            0.0
        };
        300f64.ln() + 0.5 * z + slow
    }

    #[test]
    fn every_tail_update_is_a_martingale_step_at_the_tolerance_boundary() {
        // A canary exactly max_ratio × stable: given the outcome, the label is canary with
        // probability w, so w·E(after canary) + (1 − w)·E(after stable) = E(now) exactly.
        let mut rng = StdRng::seed_from_u64(11);
        let mut gate = ContinuousGate::new(Some(1.1), None, true);
        for i in 0..3000 {
            let w = [0.05, 0.25, 0.5][i / 1000];
            let canary = rng.random::<f64>() < w;
            let ly = log_ttft(&mut rng);
            if i % 97 == 96 {
                // Under the null an outcome z is log y − log 1.1 on the canary, log y on
                // stable; one below and one far above the threshold.
                for z in [ly, ly + 1.0] {
                    let now = gate.tail_e_value();
                    let mut c = gate.clone();
                    c.observe(true, w, (z + 1.1f64.ln()).exp());
                    let mut s = gate.clone();
                    s.observe(false, w, z.exp());
                    let expect = w * c.tail_e_value() + (1.0 - w) * s.tail_e_value();
                    assert!(
                        (expect - now).abs() < 1e-9 * now.max(1.0),
                        "{expect} vs {now}"
                    );
                }
            }
            let y = if canary { 1.1 * ly.exp() } else { ly.exp() };
            gate.observe(canary, w, y);
        }
    }

    #[test]
    fn a_a_tail_runs_average_one_and_rarely_cross() {
        // 400 seeded runs of 2 000 requests at w = 0.2, the canary exactly 1.1 × stable
        // with max_ratio = 1.1 (the boundary of the null). Ville: P(sup E ≥ 10) ≤ 0.1;
        // the Monte-Carlo bound is 0.1 + 3·sqrt(0.1·0.9/400) = 0.145. The mean of E
        // after 100 requests estimates E[E] = 1 (its standard deviation there is about 1,
        // so the mean of 400 runs is within 0.2 of 1 at four standard errors).
        let (runs, mut crossed, mut sum_early) = (400, 0, 0.0);
        for seed in 0..runs {
            let mut rng = StdRng::seed_from_u64(5000 + seed);
            let mut gate = ContinuousGate::new(Some(1.1), None, true);
            let mut hit = false;
            for i in 0..2000 {
                let canary = rng.random::<f64>() < 0.2;
                let y = log_ttft(&mut rng).exp() * if canary { 1.1 } else { 1.0 };
                gate.observe(canary, 0.2, y);
                let e = gate.tail_e_value();
                hit |= e >= 10.0;
                if i == 99 {
                    sum_early += e;
                }
            }
            crossed += u32::from(hit);
        }
        let rate = f64::from(crossed) / runs as f64;
        let mean = sum_early / runs as f64;
        assert!(rate <= 0.145, "sup E ≥ 10 in {rate} of A/A runs");
        assert!(
            (0.8..1.2).contains(&mean),
            "mean E after 100 requests = {mean}"
        );
    }

    #[test]
    fn the_window_forgets_the_oldest_value() {
        let mut w = Window::new(4);
        for v in [100.0, 1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.mean(), 2.5);
        assert_eq!(w.quantile(0.95), 4.0);
    }

    #[test]
    fn a_gate_with_both_sides_and_a_tail_averages_its_three_parts() {
        // max_ratio 1, min_ratio 0.5, tail on; the short history gives m̂ = 1, ŝ = √(32/31).
        // A canary at log y = 1 + ŝ, then a stable request at log y = 1 − ŝ, both at w = ½.
        // Up: g = 1 then −1. Tail: the canary is above the threshold 2, stable is not.
        // Down: z = log y − log 0.5 on the canary (g = 1 + log 2/ŝ), log y on stable
        // (g = −1), each scored as −g. Products of the per-request factors, averaged over
        // the six alternatives (the tail with its prior), by python3: up 1.4047020, tail
        // 1.3026706, down 0.6107995; the gate's e-value is their mean, 1.1060574.
        let mut gate = ContinuousGate::new(Some(1.0), Some(0.5), true);
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        let s = (32.0f64 / 31.0).sqrt();
        gate.observe(true, 0.5, (1.0 + s).exp());
        gate.observe(false, 0.5, (1.0 - s).exp());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            close(gate.up.e_value(), 1.404_702_0),
            "{}",
            gate.up.e_value()
        );
        assert!(
            close(gate.tail_e_value(), 1.302_670_6),
            "{}",
            gate.tail_e_value()
        );
        assert!(
            close(gate.down.e_value(), 0.610_799_5),
            "{}",
            gate.down.e_value()
        );
        assert!(close(gate.e_value(), 1.106_057_4), "{}", gate.e_value());
    }

    #[test]
    fn the_effect_and_its_interval_match_the_hand_computation() {
        // The short history (log y 0 and 2, m̂ = 1). Canary residuals log y − m̂ at w = ½:
        // 0.5, −0.5, 1.0; canary requests at w = 0 and w = 1 carry no information and are
        // left out. Stable at w = ½, each scored before it joins the window: log y 1.0
        // (m̂ = 1, residual 0), 1.4 (m̂ = 1, residual 0.4), 0.6 (m̂ = 34.4/34, residual
        // −0.4117647). Effect exp(1/3 − (−0.0039216)) = 1.4010962. Interval at α = 0.05
        // (n = 3, ρ² = (−2 log α + log(1 − 2 log α))/500, python3): 0.0044350 … 442.62969.
        let mut gate = ContinuousGate::new(Some(1.0), None, false);
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        for (w, ly) in [(0.5, 1.5), (0.5, 0.5), (0.5, 2.0), (0.0, 5.0), (1.0, 5.0)] {
            gate.observe(true, w, f64::exp(ly));
        }
        for ly in [1.0, 1.4, 0.6] {
            gate.observe(false, 0.5, f64::exp(ly));
        }
        assert_eq!((gate.residual_canary.n, gate.residual_stable.n), (3, 3));
        assert_eq!((gate.raw_canary.n, gate.raw_stable.n), (5, 35));
        let effect = gate.effect().unwrap();
        assert!((effect - 1.401_096_16).abs() < 1e-8, "{effect}");
        let (lo, hi) = gate.effect_ci(0.05).unwrap();
        assert!((lo / 0.004_435_018 - 1.0).abs() < 1e-6, "{lo}");
        assert!((hi / 442.629_686_1 - 1.0).abs() < 1e-6, "{hi}");
    }

    #[test]
    fn the_effect_needs_two_scored_requests_on_each_arm() {
        let mut gate = ContinuousGate::new(Some(1.0), None, false);
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        let (mut one_canary, mut one_stable) = (gate.clone(), gate.clone());
        for g in [&mut one_canary, &mut one_stable, &mut gate] {
            g.observe(true, 0.5, 1.0);
            g.observe(false, 0.5, 1.0);
        }
        one_canary.observe(false, 0.5, 1.0);
        one_stable.observe(true, 0.5, 1.0);
        assert_eq!(one_canary.effect(), None, "one canary, two stable");
        assert_eq!(one_stable.effect(), None, "two canary, one stable");
        gate.observe(true, 0.5, 1.0);
        gate.observe(false, 0.5, 1.0);
        assert!(gate.effect().is_some(), "two of each");
        assert!(gate.effect_ci(0.05).is_some());
    }

    #[test]
    fn the_reported_p95s_are_the_stable_window_and_the_recent_canary_requests() {
        let mut gate = ContinuousGate::new(Some(1.0), None, true);
        assert_eq!(gate.p95s(), (None, None), "nothing seen yet");
        for i in 0..32 {
            gate.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
        }
        // Every canary request counts, scored or not (pinned ones come this way).
        for ms in 1..=20 {
            gate.observe_canary_any(f64::from(ms));
        }
        // Stable: rank ⌈0.95·32⌉ = 31 of sixteen 0s and sixteen 2s on the log scale, so
        // e²; canary: rank ⌈0.95·20⌉ = 19 of 1 … 20 ms.
        let (stable, canary) = gate.p95s();
        assert!((stable.unwrap() - 2f64.exp()).abs() < 1e-12, "{stable:?}");
        assert_eq!(canary, Some(19.0));
        assert_eq!(gate.canary_recent(), 20);
    }

    #[test]
    fn a_gate_is_judged_when_it_bounds_a_ratio_either_way() {
        assert!(ContinuousGate::new(Some(1.5), None, true).is_judged());
        assert!(ContinuousGate::new(None, Some(0.5), false).is_judged());
        assert!(ContinuousGate::new(Some(1.5), Some(0.5), false).is_judged());
        assert!(
            !ContinuousGate::new(None, None, true).is_judged(),
            "a hard limit only"
        );
    }

    #[test]
    fn the_running_sums_follow_the_window_as_it_wraps() {
        // 38 values 0 … 37 into a window of 34: it holds 4 … 37 (mean 20.5, variance
        // 34·35/12), and the last six pushes were summed on the run, not recomputed.
        let mut w = Window::new(34);
        for v in 0..38 {
            w.push(f64::from(v));
        }
        assert_eq!(w.len(), 34);
        assert!((w.mean() - 20.5).abs() < 1e-12, "{}", w.mean());
        let sd = (34.0f64 * 35.0 / 12.0).sqrt();
        assert!((w.sd() - sd).abs() < 1e-9, "{} vs {sd}", w.sd());
        assert_eq!(w.quantile(0.0), 4.0);
        assert_eq!(w.quantile(1.0), 37.0);
    }

    #[test]
    fn the_cached_p95_is_current_up_to_the_minimum_window_then_every_sixteen_pushes() {
        // 30 zeros and two tens: p95 (rank 31 of 32) is 10, current at the 32nd push.
        let mut w = Window::new(256);
        for v in [0.0; 30].into_iter().chain([10.0, 10.0]) {
            w.push(v);
        }
        assert_eq!(w.q95(), 10.0);
        // Fifteen more zeros: the true p95 is 0 (rank 45 of 47), the cache still 10.
        for _ in 0..15 {
            w.push(0.0);
        }
        assert_eq!((w.q95(), w.quantile(0.95)), (10.0, 0.0));
        // The sixteenth push past the minimum refreshes it.
        w.push(0.0);
        assert_eq!(w.q95(), 0.0);
    }

    #[test]
    fn strong_evidence_stays_finite_on_the_log_scale() {
        // 2 000 canary tail events at w = ½: each factor is 2θ/(κ + θ), κ = 0.95 + 0.05θ,
        // so the log-wealth of θ = 8 is 2000·log(1.7112299) = 1074.4: as a product, far past
        // f64's largest number.
        let mut wealth = Wealth::default();
        for _ in 0..2000 {
            wealth.update(true, 0.5, tail_tilts(true));
        }
        // By python3, for θ = 1.25 … 8:
        let expect = [
            199.640_671,
            344.742_452,
            542.305_541,
            761.544_991,
            956.071_602,
            1_074.424_758,
        ];
        for (log, expect) in wealth.logs().into_iter().zip(expect) {
            assert!((log - expect).abs() < 1e-5, "{log} vs {expect}");
        }
        assert_eq!(wealth.e_value_with(TAIL_PRIOR), 1e300, "capped, finite");
    }

    #[test]
    fn a_restored_gate_takes_its_tail_threshold_from_the_new_window_once_it_holds_32() {
        // An older checkpoint with 256 stable requests at log y = 5 and no tail window;
        // then 31 or 32 stable requests alternating log y 0 and 2. The new window's p95
        // is 2, the old window's (224 fives of 256) is 5: a canary at log y = 3 is a tail
        // event by the new window only (LR weighted 1.262771 against 0.972801 as above).
        let mut gate = ContinuousGate::new(Some(1.0), None, true);
        for _ in 0..256 {
            gate.observe(false, 0.0, 5f64.exp());
        }
        let mut json = serde_json::to_value(&gate).unwrap();
        json.as_object_mut().unwrap().remove("tail_stable");
        for (n, expect) in [(31, 0.972801), (32, 1.262771)] {
            let mut restored: ContinuousGate = serde_json::from_value(json.clone()).unwrap();
            for i in 0..n {
                restored.observe(false, 0.0, if i % 2 == 0 { 1.0 } else { 2f64.exp() });
            }
            restored.observe(true, 0.5, 3f64.exp());
            let e = restored.tail_e_value();
            assert!((e - expect).abs() < 1e-5, "{n}: {e}");
        }
    }
}
