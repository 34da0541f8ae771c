//! The non-statistical kill switch and the sample-ratio guard. In: canary requests with
//! their time and error flag; assignments and measured requests per arm. Out: whether
//! the kill switch fires now, and the SRM e-value.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::binary::mean_exp;

/// Canary requests and errors per second, for the kill switch's sliding window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KillWindow {
    pub error_rate: f64,
    pub min_requests: u64,
    pub window_ms: i64,
    /// (second, requests, errors), oldest first.
    buckets: VecDeque<(i64, u64, u64)>,
}

impl KillWindow {
    pub fn new(error_rate: f64, min_requests: u64, window_ms: i64) -> Self {
        KillWindow {
            error_rate,
            min_requests,
            window_ms,
            buckets: VecDeque::new(),
        }
    }

    pub fn observe(&mut self, at_ms: i64, error: bool) {
        let sec = at_ms.div_euclid(1000);
        match self.buckets.back_mut() {
            Some(b) if b.0 == sec => {
                b.1 += 1;
                b.2 += u64::from(error);
            }
            _ => self.buckets.push_back((sec, 1, u64::from(error))),
        }
        while let Some(front) = self.buckets.front() {
            if (front.0 + 1) * 1000 <= at_ms - self.window_ms {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// (requests, errors) in the window ending at `now_ms`, whole seconds.
    pub fn counts(&self, now_ms: i64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| (b.0 + 1) * 1000 > now_ms - self.window_ms)
            .fold((0, 0), |(n, e), b| (n + b.1, e + b.2))
    }

    pub fn fires(&self, now_ms: i64) -> Option<(u64, u64)> {
        let (n, e) = self.counts(now_ms);
        (n >= self.min_requests && n > 0 && e as f64 / n as f64 >= self.error_rate)
            .then_some((n, e))
    }
}

/// Ratios of loss (canary vs stable) the SRM guard looks for, both ways.
const LOSS_GRID: [f64; 8] = [1.0 / 16.0, 1.0 / 8.0, 0.25, 0.5, 2.0, 4.0, 8.0, 16.0];
/// Shifts of the measured canary share against the design `w`, both ways.
const SHARE_GRID: [f64; 6] = [0.5, 0.8, 0.9, 1.0 / 0.9, 1.0 / 0.8, 2.0];
/// The SRM guard's own false-alarm budget (§6.4).
pub const ALPHA_SRM: f64 = 0.001;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    pub assigned_stable: u64,
    pub assigned_canary: u64,
    pub measured_stable: u64,
    pub measured_canary: u64,
    /// Measured randomized requests per canary probability: (w_bp, canary, stable).
    by_w: Vec<(u32, u64, u64)>,
    /// Per-request labels are independent only when the unit is the request.
    design_test: bool,
}

impl Srm {
    pub fn new(design_test: bool) -> Self {
        Srm {
            design_test,
            ..Srm::default()
        }
    }

    pub fn assigned(&mut self, canary: bool) {
        if canary {
            self.assigned_canary += 1;
        } else {
            self.assigned_stable += 1;
        }
    }

    pub fn measured(&mut self, canary: bool, w: f64) {
        if canary {
            self.measured_canary += 1;
        } else {
            self.measured_stable += 1;
        }
        let w_bp = (w * 10_000.0).round() as u32;
        if w_bp == 0 || w_bp >= 10_000 {
            return;
        }
        let i = match self.by_w.iter().position(|c| c.0 == w_bp) {
            Some(i) => i,
            None => {
                self.by_w.push((w_bp, 0, 0));
                self.by_w.len() - 1
            }
        };
        if canary {
            self.by_w[i].1 += 1;
        } else {
            self.by_w[i].2 += 1;
        }
    }

    /// Lost records (assigned − measured): under no mismatch each lost record is canary
    /// with the assigned canary share p0, so the binomial mixture over loss ratios tests
    /// it. In-flight requests look lost for a moment; they are lost in proportion to the
    /// arms and cost nothing but a little noise.
    fn e_lost(&self) -> f64 {
        let assigned = self.assigned_canary + self.assigned_stable;
        if assigned == 0 || self.assigned_canary == 0 || self.assigned_stable == 0 {
            return 1.0;
        }
        let lost_c = self.assigned_canary.saturating_sub(self.measured_canary) as f64;
        let lost_s = self.assigned_stable.saturating_sub(self.measured_stable) as f64;
        let p0 = self.assigned_canary as f64 / assigned as f64;
        mean_exp(LOSS_GRID.map(|rho| {
            let q = p0 * rho / (1.0 - p0 + p0 * rho);
            lost_c * (q / p0).ln() + lost_s * ((1.0 - q) / (1.0 - p0)).ln()
        }))
    }

    /// Measured labels against the design: each randomized request is canary with
    /// probability w (exact only when every request is its own unit).
    fn e_design(&self) -> f64 {
        mean_exp(SHARE_GRID.map(|rho| {
            self.by_w
                .iter()
                .map(|&(w_bp, c, s)| {
                    let w = f64::from(w_bp) / 10_000.0;
                    let q = w * rho / (1.0 - w + w * rho);
                    c as f64 * (q / w).ln() + s as f64 * ((1.0 - q) / (1.0 - w)).ln()
                })
                .sum()
        }))
    }

    pub fn e_value(&self) -> f64 {
        if self.design_test {
            0.5 * (self.e_lost() + self.e_design())
        } else {
            self.e_lost()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_switch_counts_only_the_last_window() {
        let mut k = KillWindow::new(0.5, 4, 60_000);
        for t in [0, 1_000, 2_000] {
            k.observe(t, true);
        }
        assert_eq!(k.fires(2_500), None, "three requests are below the minimum");
        k.observe(3_000, false);
        assert_eq!(k.fires(3_500), Some((4, 3)));
        assert_eq!(
            k.counts(62_500),
            (2, 1),
            "the first two seconds left the window"
        );
    }

    #[test]
    fn lost_canary_records_break_the_design_and_lost_stable_ones_in_proportion_do_not() {
        let mut srm = Srm::new(false);
        for i in 0..1000 {
            let canary = i % 20 == 0;
            srm.assigned(canary);
            srm.measured(canary, 0.05);
        }
        assert!(srm.e_value() < 2.0);
        // Five canary assignments never measured: p0 = 55/1005, and the ρ = 16 component
        // alone is (q/p0)⁵ with q = 16p0/(1 − p0 + 16p0) ≈ 0.483, i.e. ≈ 8.83⁵ ≈ 53 700;
        // averaged over the 8 components that is ≈ 6 700 > 1/α_srm.
        for _ in 0..5 {
            srm.assigned(true);
        }
        assert!(srm.e_value() > 1.0 / ALPHA_SRM, "{}", srm.e_value());
        let mut fair = Srm::new(false);
        let (mut c, mut st) = (0, 0);
        for i in 0..1000 {
            let canary = i % 20 == 0;
            fair.assigned(canary);
            // One in ten records of each arm lost alike.
            let k = if canary { &mut c } else { &mut st };
            *k += 1;
            if *k % 10 != 0 {
                fair.measured(canary, 0.05);
            }
        }
        assert!(fair.e_value() < 10.0, "{}", fair.e_value());
    }
}
