//! The non-statistical kill switch and the sample-ratio guard. In: canary requests with
//! their time and error flag; assignments and measured requests per arm. Out: whether
//! the kill switch fires now, and the SRM e-value.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::binary::mean_exp;

/// Requests and errors per second and arm, for the kill switch's sliding window.
///
/// The kill switch compares the arms over the same seconds, so that a provider incident
/// that hits both arms (every week, somewhere) does not revert a harmless canary, while a
/// canary broken on its own is still reverted at the first look after it has
/// `min_requests` requests in the window. It fires when the canary has at least
/// `min_requests` requests and an error rate of at least `error_rate` in the window, and
/// one of:
/// - [`KillCause::NoStable`]: stable served nothing in the window (nothing to compare
///   with, e.g. pinned traffic only): today's absolute rule;
/// - [`KillCause::StableHealthy`]: stable's error rate in the window is at most
///   `error_rate / 5`, so the errors are the canary's own;
/// - [`KillCause::FarWorse`]: the canary's rate is at least twice stable's and, given the
///   errors of both arms in the window, the canary's share of them is improbable if each
///   error were canary with probability n_c/(n_c + n_s) (binomial upper tail below
///   [`KILL_P`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KillWindow {
    pub(crate) error_rate: f64,
    pub(crate) min_requests: u64,
    pub(crate) window_ms: i64,
    /// (second, canary requests, canary errors, stable requests, stable errors), oldest
    /// first.
    buckets: VecDeque<(i64, u64, u64, u64, u64)>,
}

/// The binomial tail below which the canary counts as far worse than stable.
pub(crate) const KILL_P: f64 = 1e-4;

/// Which rule of the kill switch fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KillCause {
    NoStable,
    StableHealthy,
    FarWorse,
}

/// The kill switch's finding: the cause and both arms' counts in the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KillFire {
    pub(crate) cause: KillCause,
    pub(crate) canary: (u64, u64),
    pub(crate) stable: (u64, u64),
    /// The binomial upper tail of the canary's share of the window's errors.
    pub(crate) tail: f64,
}

impl KillFire {
    /// One line for the event: which rule fired and why.
    pub(crate) fn describe(&self, window_ms: i64, error_rate: f64) -> String {
        let rate = |(n, e): (u64, u64)| 100.0 * e as f64 / n.max(1) as f64;
        let (cn, ce) = self.canary;
        let (sn, se) = self.stable;
        let head = format!(
            "kill switch: canary error rate {:.0} % ({ce} of {cn}) in the last {} s is at or above {:.0} %",
            rate(self.canary),
            window_ms / 1000,
            100.0 * error_rate
        );
        match self.cause {
            KillCause::NoStable => format!("{head}, and stable served nothing to compare with"),
            KillCause::StableHealthy => format!(
                "{head} while stable is healthy over the same seconds ({:.1} %, {se} of {sn})",
                rate(self.stable)
            ),
            KillCause::FarWorse => format!(
                "{head}, far worse than stable over the same seconds ({:.1} %, {se} of {sn}; \
                 binomial tail {:.1e}): not a provider incident on both arms",
                rate(self.stable),
                self.tail
            ),
        }
    }
}

impl KillWindow {
    pub(crate) fn new(error_rate: f64, min_requests: u64, window_ms: i64) -> Self {
        KillWindow {
            error_rate,
            min_requests,
            window_ms,
            buckets: VecDeque::new(),
        }
    }

    /// A measured request of either arm (pinned ones included: they are the canary's).
    pub(crate) fn observe(&mut self, at_ms: i64, canary: bool, error: bool) {
        let sec = at_ms.div_euclid(1000);
        let idx = match self.buckets.iter().rposition(|b| b.0 <= sec) {
            Some(i) if self.buckets[i].0 == sec => i,
            Some(i) => {
                self.buckets.insert(i + 1, (sec, 0, 0, 0, 0));
                i + 1
            }
            None => {
                self.buckets.push_front((sec, 0, 0, 0, 0));
                0
            }
        };
        let b = &mut self.buckets[idx];
        if canary {
            b.1 += 1;
            b.2 += u64::from(error);
        } else {
            b.3 += 1;
            b.4 += u64::from(error);
        }
        let newest = self.buckets.back().map_or(sec, |b| b.0);
        while let Some(front) = self.buckets.front() {
            if (front.0 + 1) * 1000 <= newest * 1000 - self.window_ms {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// ((canary requests, errors), (stable requests, errors)) in the window ending at
    /// `now_ms`, whole seconds.
    pub(crate) fn counts(&self, now_ms: i64) -> ((u64, u64), (u64, u64)) {
        self.buckets
            .iter()
            .filter(|b| (b.0 + 1) * 1000 > now_ms - self.window_ms && b.0 * 1000 <= now_ms)
            .fold(((0, 0), (0, 0)), |((cn, ce), (sn, se)), b| {
                ((cn + b.1, ce + b.2), (sn + b.3, se + b.4))
            })
    }

    pub(crate) fn fires(&self, now_ms: i64) -> Option<KillFire> {
        let ((cn, ce), (sn, se)) = self.counts(now_ms);
        if cn < self.min_requests || cn == 0 || (ce as f64 / cn as f64) < self.error_rate {
            return None;
        }
        let share = cn as f64 / (cn + sn) as f64;
        let tail = binomial_upper_tail(ce + se, ce, share);
        let fire = |cause| {
            Some(KillFire {
                cause,
                canary: (cn, ce),
                stable: (sn, se),
                tail,
            })
        };
        if sn == 0 {
            return fire(KillCause::NoStable);
        }
        let (rc, rs) = (ce as f64 / cn as f64, se as f64 / sn as f64);
        if rs <= self.error_rate / 5.0 {
            return fire(KillCause::StableHealthy);
        }
        if rc >= 2.0 * rs && tail < KILL_P {
            return fire(KillCause::FarWorse);
        }
        None
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p), summed in log space (n is at most a few thousand
/// errors per window).
pub(crate) fn binomial_upper_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // log C(n, i) built up incrementally from i = k.
    let mut log_c: f64 = (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum();
    let mut total = 0.0;
    for i in k..=n {
        total += (log_c + i as f64 * lp + (n - i) as f64 * lq).exp();
        log_c += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    total.min(1.0)
}

/// Ratios of loss (canary vs stable) the SRM guard looks for, both ways.
const LOSS_GRID: [f64; 8] = [1.0 / 16.0, 1.0 / 8.0, 0.25, 0.5, 2.0, 4.0, 8.0, 16.0];
/// Shifts of the measured canary share against the design `w`, both ways.
const SHARE_GRID: [f64; 6] = [0.5, 0.8, 0.9, 1.0 / 0.9, 1.0 / 0.8, 2.0];
/// The SRM guard's own false-alarm budget (§6.4).
pub(crate) const ALPHA_SRM: f64 = 0.001;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Srm {
    pub(crate) assigned_stable: u64,
    pub(crate) assigned_canary: u64,
    pub(crate) measured_stable: u64,
    pub(crate) measured_canary: u64,
    /// Measured randomized requests per canary probability: (w_bp, canary, stable).
    by_w: Vec<(u32, u64, u64)>,
    /// Per-request labels are independent only when the unit is the request.
    design_test: bool,
    /// Per second of assignment and canary probability: assigned and measured per arm,
    /// until the second is overdue.
    #[serde(default)]
    dated: Vec<DatedCell>,
    /// Requests found lost (still unmeasured [`OVERDUE_MS`] after their assignment), per
    /// canary probability: (w_bp, canary, stable).
    #[serde(default)]
    lost: Vec<(u32, u64, u64)>,
    /// Seconds before this one are folded into `lost`.
    #[serde(default)]
    folded_before: i64,
}

/// A request still unmeasured this long after its assignment is lost (a stream of a
/// minute is not; a record that never comes is).
pub(crate) const OVERDUE_MS: i64 = 300_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DatedCell {
    sec: i64,
    w_bp: u32,
    /// assigned canary, assigned stable, measured canary, measured stable
    n: [u64; 4],
}

impl Srm {
    pub(crate) fn new(design_test: bool) -> Self {
        Srm {
            design_test,
            ..Srm::default()
        }
    }

    fn assigned(&mut self, canary: bool) {
        if canary {
            self.assigned_canary += 1;
        } else {
            self.assigned_stable += 1;
        }
    }

    fn cell(&mut self, at_ms: i64, w_bp: u32) -> Option<&mut DatedCell> {
        let sec = at_ms.div_euclid(1000);
        // A record of a second already folded as overdue: too late to count.
        if sec < self.folded_before {
            return None;
        }
        let i = match self
            .dated
            .binary_search_by(|c| (c.sec, c.w_bp).cmp(&(sec, w_bp)))
        {
            Ok(i) => i,
            Err(i) => {
                self.dated.insert(
                    i,
                    DatedCell {
                        sec,
                        w_bp,
                        n: [0; 4],
                    },
                );
                i
            }
        };
        Some(&mut self.dated[i])
    }

    /// A randomized assignment with its canary probability and time: the guard then
    /// counts a request as lost only once it is overdue, and tests each lost request's
    /// arm against its own `w` (like with like: right after a step-up, the requests in
    /// flight are of the new weight, not the rollout's cumulative share).
    pub(crate) fn assigned_at(&mut self, canary: bool, w: f64, at_ms: i64) {
        self.assigned(canary);
        let w_bp = (w * 10_000.0).round() as u32;
        if let Some(c) = self.cell(at_ms, w_bp) {
            c.n[usize::from(!canary)] += 1;
        }
    }

    /// Moves every second older than `now_ms − OVERDUE_MS` into the lost counts.
    pub(crate) fn fold(&mut self, now_ms: i64) {
        self.folded_before = self
            .folded_before
            .max((now_ms - OVERDUE_MS).div_euclid(1000));
        let due = self
            .dated
            .partition_point(|c| (c.sec + 1) * 1000 + OVERDUE_MS <= now_ms);
        for c in self.dated.drain(..due) {
            let lost_c = c.n[0].saturating_sub(c.n[2]);
            let lost_s = c.n[1].saturating_sub(c.n[3]);
            if lost_c + lost_s == 0 || c.w_bp == 0 || c.w_bp >= 10_000 {
                continue;
            }
            match self.lost.iter_mut().find(|x| x.0 == c.w_bp) {
                Some(x) => {
                    x.1 += lost_c;
                    x.2 += lost_s;
                }
                None => self.lost.push((c.w_bp, lost_c, lost_s)),
            }
        }
    }

    /// Requests found lost so far: (canary, stable).
    pub(crate) fn lost_counts(&self) -> (u64, u64) {
        self.lost
            .iter()
            .fold((0, 0), |(c, s), x| (c + x.1, s + x.2))
    }

    /// Each lost request's arm against its own w: under "loss does not depend on the
    /// arm" a lost request is canary with probability w, independently of every other
    /// (per-request randomization), so the product over lost requests of the binomial
    /// likelihood ratios of a ρ-fold canary loss, averaged over [`LOSS_GRID`], is a test
    /// martingale in the order requests are found lost (Lindon & Malek's multinomial
    /// test, research §6.4).
    fn e_lost_dated(&self) -> f64 {
        mean_exp(LOSS_GRID.map(|rho| {
            self.lost
                .iter()
                .map(|&(w_bp, c, s)| {
                    let w = f64::from(w_bp) / 10_000.0;
                    let q = w * rho / (1.0 - w + w * rho);
                    c as f64 * (q / w).ln() + s as f64 * ((1.0 - q) / (1.0 - w)).ln()
                })
                .sum()
        }))
    }

    /// A measured randomized request, dated and weighted as its assignment was.
    pub(crate) fn measured_at(&mut self, canary: bool, w: f64, at_ms: i64) {
        self.measured(canary, w);
        let w_bp = (w * 10_000.0).round() as u32;
        if let Some(c) = self.cell(at_ms, w_bp) {
            c.n[2 + usize::from(!canary)] += 1;
        }
    }

    fn measured(&mut self, canary: bool, w: f64) {
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

    pub(crate) fn e_value(&self) -> f64 {
        let lost = self.e_lost_dated();
        if self.design_test {
            0.5 * (lost + self.e_design())
        } else {
            lost
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
            k.observe(t, true, true);
        }
        assert_eq!(k.fires(2_500), None, "three requests are below the minimum");
        k.observe(3_000, true, false);
        let fire = k.fires(3_500).expect("fires");
        assert_eq!((fire.cause, fire.canary), (KillCause::NoStable, (4, 3)));
        assert_eq!(
            k.counts(62_500),
            ((2, 1), (0, 0)),
            "the first two seconds left the window"
        );
    }

    #[test]
    fn the_binomial_tail_matches_the_hand_computation() {
        // P(X ≥ 2 | n = 3, p = 0.5) = (3 + 1)/8 = 0.5; P(X ≥ 3 | 3, 0.2) = 0.008.
        assert!((binomial_upper_tail(3, 2, 0.5) - 0.5).abs() < 1e-12);
        assert!((binomial_upper_tail(3, 3, 0.2) - 0.008).abs() < 1e-12);
        assert_eq!(binomial_upper_tail(5, 0, 0.1), 1.0);
    }

    #[test]
    fn an_incident_on_both_arms_does_not_fire_and_a_canary_failing_alone_does() {
        // 60 s, 20 canary and 380 stable requests, both arms at 60 % errors.
        let mut both = KillWindow::new(0.5, 20, 60_000);
        let mut alone = KillWindow::new(0.5, 20, 60_000);
        for i in 0..400i64 {
            let canary = i % 20 == 0;
            both.observe(i * 150, canary, (i * 37 + i / 20) % 10 < 6);
            alone.observe(i * 150, canary, canary || i % 100 == 1);
        }
        assert_eq!(both.fires(60_000), None, "{:?}", both.counts(60_000));
        let fire = alone.fires(60_000).expect("the canary fails alone");
        assert_eq!(fire.cause, KillCause::StableHealthy);
        assert!(fire.describe(60_000, 0.5).contains("stable is healthy"));
    }

    #[test]
    fn a_canary_far_worse_than_a_sick_stable_fires() {
        // Stable at 22 % errors (an incident), canary at 100 %: 40 canary errors of 40
        // against 80 of 360 stable; canary share of requests 0.1, of errors 40/120.
        let mut k = KillWindow::new(0.5, 20, 60_000);
        for i in 0..400i64 {
            let canary = i % 10 == 0;
            k.observe(i * 100, canary, canary || i % 5 == 1);
        }
        let fire = k.fires(40_000).expect("fires");
        assert_eq!(fire.cause, KillCause::FarWorse);
        assert!(fire.tail < KILL_P);
    }

    #[test]
    fn lost_canary_records_break_the_design_and_lost_stable_ones_in_proportion_do_not() {
        let mut srm = Srm::new(false);
        for i in 0..1000 {
            let canary = i % 20 == 0;
            srm.assigned_at(canary, 0.05, i * 100);
            srm.measured_at(canary, 0.05, i * 100);
        }
        srm.fold(100_000 + OVERDUE_MS);
        assert_eq!(srm.lost_counts(), (0, 0));
        assert!(srm.e_value() < 2.0);
        // Five canary assignments at w = 0.05 never measured. The ρ = 16 component alone
        // is (q/w)⁵ with q = 16w/(1 − w + 16w) = 0.8/1.75 = 0.457, i.e. 9.14⁵ ≈ 63 900;
        // averaged over the 8 components of LOSS_GRID that is 8 966.06 > 1/α_srm.
        for i in 0..5 {
            srm.assigned_at(true, 0.05, 100_000 + i);
        }
        srm.fold(100_999 + OVERDUE_MS);
        assert_eq!(srm.lost_counts(), (0, 0), "not yet overdue");
        srm.fold(101_000 + OVERDUE_MS);
        assert_eq!(srm.lost_counts(), (5, 0));
        assert!((srm.e_value() - 8966.064).abs() < 0.01, "{}", srm.e_value());
        assert!(srm.e_value() > 1.0 / ALPHA_SRM);
        let mut fair = Srm::new(false);
        let (mut c, mut st) = (0, 0);
        for i in 0..1000 {
            let canary = i % 20 == 0;
            fair.assigned_at(canary, 0.05, i * 100);
            // One in ten records of each arm lost alike.
            let k = if canary { &mut c } else { &mut st };
            *k += 1;
            if *k % 10 != 0 {
                fair.measured_at(canary, 0.05, i * 100);
            }
        }
        fair.fold(100_000 + OVERDUE_MS);
        assert_eq!(fair.lost_counts(), (5, 95));
        assert!(fair.e_value() < 10.0, "{}", fair.e_value());
    }

    #[test]
    fn requests_in_flight_across_a_step_up_are_not_lost() {
        // 950 stable and 50 canary at 5 %, then a step to 50 % where the last 200
        // requests (100 canary) are still in flight: nothing is overdue yet.
        let mut srm = Srm::new(false);
        for i in 0..1000 {
            let canary = i % 20 == 0;
            srm.assigned_at(canary, 0.05, i * 100);
            srm.measured_at(canary, 0.05, i * 100);
        }
        for i in 0..200 {
            srm.assigned_at(i % 2 == 0, 0.5, 100_000 + i * 10);
        }
        srm.fold(102_000);
        assert_eq!(srm.lost_counts(), (0, 0));
        assert!(srm.e_value() < 1.0 + 1e-9, "{}", srm.e_value());
        // They end well within five minutes.
        for i in 0..200 {
            srm.measured_at(i % 2 == 0, 0.5, 100_000 + i * 10);
        }
        srm.fold(103_000 + OVERDUE_MS);
        assert_eq!(srm.lost_counts(), (0, 0));
    }

    #[test]
    fn the_binomial_tail_sums_every_term_above_k() {
        // P(X ≥ 2 | n = 10, p = 0.1) = 1 − 0.9¹⁰ − 10·0.1·0.9⁹ = 0.2639010709.
        let t = binomial_upper_tail(10, 2, 0.1);
        assert!((t - 0.263_901_070_9).abs() < 1e-9, "{t}");
    }

    #[test]
    fn the_design_test_matches_the_hand_computation_and_only_for_per_request_units() {
        // Measured: 10 canary of 100 at w = 0.05 and 30 of 50 at w = 0.5, nothing lost.
        // Per ρ in SHARE_GRID, q = wρ/(1 − w + wρ) and the factor is the product over the
        // weights of (q/w)^canary·((1 − q)/(1 − w))^stable: ρ = 0.5 → 0.0000202, 0.8 →
        // 0.0704619, 0.9 → 0.3171115, 1/0.9 → 2.6039813, 1/0.8 → 6.0154928, 2 → 13.1131481
        // (python3); mean 3.6867026. The guard averages it with the lost-records test (1
        // here): 2.3433513.
        let mut per_request = Srm::new(true);
        let mut sticky = Srm::new(false);
        for srm in [&mut per_request, &mut sticky] {
            for i in 0..100 {
                srm.measured_at(i % 10 == 0, 0.05, i * 100);
            }
            for i in 0..50 {
                srm.measured_at(i < 30, 0.5, 10_000 + i * 100);
            }
        }
        assert_eq!(
            (per_request.measured_canary, per_request.measured_stable),
            (40, 110)
        );
        let e = per_request.e_value();
        assert!((e - 2.343_351_3).abs() < 1e-6, "{e}");
        assert_eq!(
            sticky.e_value(),
            1.0,
            "labels of sticky units are not independent"
        );
    }

    #[test]
    fn a_canary_worse_than_a_sick_stable_but_not_twice_as_bad_does_not_fire() {
        // 400 canary requests at 60 % errors, 4 000 stable at 40 % (an incident): the
        // canary's 240 of the 1 840 errors are improbable at its 1/11 share of requests
        // (binomial tail 1.5e-8, python3), but 60 % is less than twice 40 %.
        let mut k = KillWindow::new(0.5, 20, 60_000);
        for i in 0..4400i64 {
            let canary = i % 11 == 0;
            let error = if canary { (i / 11) % 5 < 3 } else { i % 5 < 2 };
            k.observe(i * 10, canary, error);
        }
        assert_eq!(k.counts(44_000), ((400, 240), (4000, 1600)));
        assert_eq!(k.fires(44_000), None);
    }

    #[test]
    fn requests_lost_at_a_weight_of_zero_or_one_say_nothing_about_the_design() {
        // At w = 0 (or 1) every request has one arm by design: losing some of them is no
        // evidence that loss depends on the arm.
        let mut srm = Srm::new(false);
        for i in 0..10 {
            srm.assigned_at(false, 0.0, i * 100);
            srm.assigned_at(true, 1.0, i * 100);
        }
        srm.fold(1_000 + OVERDUE_MS);
        assert_eq!(srm.lost_counts(), (0, 0));
        assert_eq!(srm.e_value(), 1.0);
    }

    #[test]
    fn each_lost_request_is_judged_at_its_own_weight() {
        // One canary lost at w = 0.05, one at w = 0.5. Per ρ in LOSS_GRID the factor is
        // (q₁/0.05)·(q₂/0.5) with q = wρ/(1 − w + wρ): 0.0077146, 0.0290487, 0.1038961,
        // 0.3418803, 2.5396825, 5.5652174, 10.5349794, 17.2100840; mean 4.5415629
        // (python3). Both at 0.05 would give 16.848.
        let mut srm = Srm::new(false);
        srm.assigned_at(true, 0.05, 0);
        srm.assigned_at(true, 0.5, 1_000);
        srm.fold(2_000 + OVERDUE_MS);
        assert_eq!((srm.assigned_canary, srm.assigned_stable), (2, 0));
        assert_eq!(srm.lost_counts(), (2, 0));
        let e = srm.e_value();
        assert!((e - 4.541_562_9).abs() < 1e-6, "{e}");
    }

    #[test]
    fn lost_stable_requests_are_evidence_of_a_loss_on_the_stable_side() {
        // Three stable requests lost at w = 0.25: per ρ the factor is ((1 − q)/0.75)³:
        // 2.2281872, 2.0971520, 1.8643605, 1.4927114, 0.512, 0.1865889, 0.0480841,
        // 0.0093308; mean 1.0548019 (python3).
        let mut srm = Srm::new(false);
        for i in 0..3 {
            srm.assigned_at(false, 0.25, i * 100);
        }
        srm.fold(1_000 + OVERDUE_MS);
        assert_eq!((srm.assigned_canary, srm.assigned_stable), (0, 3));
        assert_eq!(srm.lost_counts(), (0, 3));
        let e = srm.e_value();
        assert!((e - 1.054_801_9).abs() < 1e-6, "{e}");
    }

    #[test]
    fn each_rule_of_the_kill_switch_says_why_with_both_arms_rates() {
        let fire = |cause| KillFire {
            cause,
            canary: (40, 30),
            stable: (360, 80),
            tail: 2.5e-7,
        };
        let head =
            "kill switch: canary error rate 75 % (30 of 40) in the last 60 s is at or above 50 %";
        assert_eq!(
            fire(KillCause::NoStable).describe(60_000, 0.5),
            format!("{head}, and stable served nothing to compare with")
        );
        assert_eq!(
            fire(KillCause::StableHealthy).describe(60_000, 0.5),
            format!("{head} while stable is healthy over the same seconds (22.2 %, 80 of 360)")
        );
        assert_eq!(
            fire(KillCause::FarWorse).describe(60_000, 0.5),
            format!(
                "{head}, far worse than stable over the same seconds (22.2 %, 80 of 360; \
                 binomial tail 2.5e-7): not a provider incident on both arms"
            )
        );
    }

    #[test]
    fn the_kill_window_keeps_one_bucket_per_second_and_forgets_what_left_it() {
        // Ten requests a second for ten minutes, a 60 s window: the state holds only the
        // 61 seconds the window can still touch, and the counts are the last 60 s.
        let mut k = KillWindow::new(0.5, 20, 60_000);
        for i in 0..6000i64 {
            k.observe(i * 100, i % 10 == 0, false);
        }
        assert_eq!(k.buckets.len(), 61);
        assert_eq!(k.counts(600_000), ((60, 0), (540, 0)));
    }

    #[test]
    fn a_look_counts_no_request_after_it() {
        let mut k = KillWindow::new(0.5, 4, 60_000);
        for i in 0..10 {
            k.observe(i * 1000, true, true);
        }
        assert_eq!(k.counts(4_500), ((5, 5), (0, 0)));
    }

    #[test]
    fn a_canary_under_the_error_rate_never_fires() {
        // Stable healthy; the canary at 9 errors of 20 (45 %) is under the rate of 50 %
        // and does not fire; at 10 of 20 (exactly 50 %) it does.
        for errors in [9, 10] {
            let mut k = KillWindow::new(0.5, 20, 60_000);
            for i in 0..20i64 {
                k.observe(i * 100, true, i < errors);
                k.observe(i * 100, false, false);
            }
            assert_eq!(
                k.fires(2_000).map(|f| f.cause),
                (errors == 10).then_some(KillCause::StableHealthy),
                "{errors} of 20"
            );
        }
    }

    #[test]
    fn twice_a_sick_stable_rate_fires_only_when_the_canary_share_of_errors_is_improbable() {
        // Canary 12 errors of 20 (60 %), stable 25 of 100 (25 %, an incident): twice and
        // more, but 12 of the 37 errors at a 20/120 share of requests has a binomial tail
        // of 0.0140 (python3), far above 1e-4: not the canary's own fault.
        let mut k = KillWindow::new(0.5, 20, 60_000);
        for i in 0..20i64 {
            k.observe(i * 100, true, i < 12);
        }
        for i in 0..100i64 {
            k.observe(i * 10, false, i < 25);
        }
        assert_eq!(k.counts(2_000), ((20, 12), (100, 25)));
        assert_eq!(k.fires(2_000), None);
    }

    #[test]
    fn the_binomial_tail_is_zero_beyond_n_and_for_a_probability_of_zero() {
        // More successes than trials, or successes that cannot happen: P = 0.
        assert_eq!(binomial_upper_tail(3, 4, 0.5), 0.0);
        assert_eq!(binomial_upper_tail(3, 5, 0.5), 0.0);
        assert_eq!(binomial_upper_tail(3, 1, 0.0), 0.0);
        // and a certain success: P(X ≥ k) = 1 for any k ≤ n.
        assert_eq!(binomial_upper_tail(3, 3, 1.0), 1.0);
    }

    #[test]
    fn a_record_dated_in_a_second_already_folded_is_too_late_to_count() {
        // The fold at OVERDUE_MS + 10 s has judged every second before the tenth. An
        // assignment dated in the fifth second that arrives after it (a clock stepped
        // back, a restored checkpoint) is counted as assigned but never found lost.
        let mut srm = Srm::new(false);
        srm.fold(10_000 + OVERDUE_MS);
        srm.assigned_at(true, 0.05, 5_000);
        srm.fold(20_000 + OVERDUE_MS);
        assert_eq!(srm.assigned_canary, 1);
        assert_eq!(srm.lost_counts(), (0, 0));
        assert_eq!(srm.e_value(), 1.0);
    }

    #[test]
    fn requests_measured_at_a_weight_of_zero_or_one_say_nothing_about_the_design() {
        // Per-request units, every request at w = 0 (stable) or w = 1 (canary): each arm
        // is certain by design, so the measured labels are no evidence either way.
        let mut srm = Srm::new(true);
        for i in 0..10 {
            srm.measured_at(false, 0.0, i * 100);
            srm.measured_at(true, 1.0, i * 100);
        }
        assert_eq!((srm.measured_canary, srm.measured_stable), (10, 10));
        assert_eq!(srm.e_value(), 1.0);
    }
}
