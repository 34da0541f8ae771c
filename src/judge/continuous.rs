//! Continuous gates (latency, TTFT, tokens, cost, response length): in, each request's
//! value with its arm and `w`; out, the e-values of research §6.3 on a standardized log
//! scale, the tail process for p95 gates, effect estimates and the figures to report.
//!
//! The score of request i is `g = clip((z − m̂)/ŝ, −4, 4)` with `z = log y − δ_tol·A`
//! and m̂, ŝ the mean and standard deviation of log y over the stable arm's last
//! [`WINDOW`] randomized requests *before* request i (so g is predictable). The tail
//! score is `1{z > q̂95}` with q̂95 from the same window. Each one-sided process keeps
//! a log-wealth per alternative λ_j and updates it with
//! `ℓ_j += A(λ_j g − κ_j) − log(1 − w + w·exp(λ_j g − κ_j))`.

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

/// One continuous gate's whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ContinuousGate {
    /// log(max_ratio): the process against "canary ≤ max_ratio × stable", if any.
    up_shift: Option<f64>,
    /// log(min_ratio): the mirrored process against "canary ≥ min_ratio × stable".
    down_shift: Option<f64>,
    tail: bool,
    stable: Window,
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
                    self.tail_up
                        .update(canary, w, tail_tilts(z > self.stable.q95));
                }
            }
            if let Some(delta) = self.down_shift {
                let z = ly - delta * a;
                let g = ((z - m) / s).clamp(-4.0, 4.0);
                self.down.update(canary, w, shift_tilts(-g));
            }
        }
        // Only after scoring: the window holds data from before this request.
        if !canary {
            self.stable.push(ly);
        }
    }

    /// The gate's e-value: the average of its one-sided processes (each an e-process, so
    /// the average is one too).
    pub(crate) fn e_value(&self) -> f64 {
        let mut parts = Vec::with_capacity(3);
        if self.up_shift.is_some() {
            parts.push(self.up.e_value());
            if self.tail {
                parts.push(self.tail_up.e_value());
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

    #[test]
    fn the_window_forgets_the_oldest_value() {
        let mut w = Window::new(4);
        for v in [100.0, 1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert_eq!(w.mean(), 2.5);
        assert_eq!(w.quantile(0.95), 4.0);
    }
}
