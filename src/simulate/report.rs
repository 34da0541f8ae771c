//! Figures for the simulate table: in, every run's result per scenario (and the A/A twins
//! the baselines are tuned on); out, one [`Row`] per scenario, printed as markdown and
//! written as JSON.

use serde::Serialize;

use super::baselines::{self, Family};
use super::scenario::{Expect, Scenario};
use super::traffic::{Outcome, RunResult};

/// A rate with its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub k: usize,
    pub n: usize,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The rate k/n with its 95 % Wilson score interval (the formula lives in `eval::stats`).
pub fn wilson(k: usize, n: usize) -> Rate {
    let [lo, hi] = crate::eval::stats::wilson(k as u64, n as u64, crate::eval::stats::Z_95)
        .unwrap_or([0.0, 1.0]);
    let rate = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Rate { k, n, rate, lo, hi }
}

/// Quantile of a sample where `None` (never happened) counts as +∞.
fn quantile(values: &[Option<f64>], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].is_finite().then_some(v[i])
}

#[derive(Debug, Clone, Serialize)]
pub struct Delay {
    pub detected: Rate,
    /// Canary requests until revert: median and p90 over all runs (never = ∞).
    pub median: Option<f64>,
    pub p90: Option<f64>,
    /// Bad canary responses served before the revert (median over all runs).
    pub bad_median: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub family: &'static str,
    /// Failed checks needed to roll back.
    pub k: usize,
    pub threshold: f64,
    /// Its false-rollback rate on the A/A twin at that threshold.
    pub twin_false_rollbacks: Rate,
    pub delay: Delay,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub description: String,
    pub expect: &'static str,
    pub runs: usize,
    pub reverted: Rate,
    pub promoted: Rate,
    pub inconclusive: Rate,
    pub kill_switch: usize,
    pub delay: Delay,
    /// Minutes until the canary reached 100 % (median over promoted runs).
    pub time_to_100_min: Option<f64>,
    pub baselines: Vec<Baseline>,
    /// Our median canary requests ÷ the best tuned baseline's.
    pub ratio_to_best_baseline: Option<f64>,
}

fn delay_of(points: &[Option<(u64, u64)>]) -> Delay {
    let req: Vec<Option<f64>> = points.iter().map(|p| p.map(|(c, _)| c as f64)).collect();
    let bad: Vec<Option<f64>> = points.iter().map(|p| p.map(|(_, b)| b as f64)).collect();
    Delay {
        detected: wilson(points.iter().filter(|p| p.is_some()).count(), points.len()),
        median: quantile(&req, 0.5),
        p90: quantile(&req, 0.9),
        bad_median: quantile(&bad, 0.5),
    }
}

pub fn row(s: &Scenario, runs: &[RunResult], twin: Option<&[RunResult]>, target: f64) -> Row {
    let n = runs.len();
    let count = |o: Outcome| runs.iter().filter(|r| r.outcome == o).count();
    let points: Vec<Option<(u64, u64)>> = runs
        .iter()
        .map(|r| (r.outcome == Outcome::Reverted).then_some((r.canary_requests, r.bad_canary)))
        .collect();
    let promoted_min: Vec<Option<f64>> = runs
        .iter()
        .filter(|r| r.outcome == Outcome::Promoted)
        .map(|r| Some(r.at_ms as f64 / 60_000.0))
        .collect();
    let delay = delay_of(&points);
    let mut out_baselines = Vec::new();
    if let (Some(twin), Some(metric)) = (twin, s.baseline_metric) {
        for family in [Family::Flagger, Family::Argo] {
            let null: Vec<&[baselines::Check]> =
                twin.iter().map(|r| r.checks.of(family, metric)).collect();
            let best = family
                .ks()
                .iter()
                .map(|&k| {
                    let t = baselines::tune(&null, k, target);
                    let twin_fired = null
                        .iter()
                        .filter(|c| baselines::fires(c, k, t).is_some())
                        .count();
                    let pts: Vec<Option<(u64, u64)>> = runs
                        .iter()
                        .map(|r| {
                            baselines::fires(r.checks.of(family, metric), k, t)
                                .map(|c| (c.canary_requests, c.bad_canary))
                        })
                        .collect();
                    Baseline {
                        family: family.name(),
                        k,
                        threshold: t,
                        twin_false_rollbacks: wilson(twin_fired, null.len()),
                        delay: delay_of(&pts),
                    }
                })
                .min_by(|a, b| {
                    let key = |x: &Baseline| x.delay.median.unwrap_or(f64::INFINITY);
                    key(a).total_cmp(&key(b))
                });
            out_baselines.extend(best);
        }
    }
    let best = out_baselines
        .iter()
        .filter_map(|b| b.delay.median)
        .fold(f64::INFINITY, f64::min);
    let ratio = match delay.median {
        Some(ours) if best.is_finite() => Some(ours / best),
        _ => None,
    };
    Row {
        scenario: s.name.clone(),
        description: s.description.clone(),
        expect: match s.expect {
            Expect::Pass => "pass",
            Expect::Revert => "revert",
            Expect::NoDecision => "no decision",
        },
        runs: n,
        reverted: wilson(count(Outcome::Reverted), n),
        promoted: wilson(count(Outcome::Promoted), n),
        inconclusive: wilson(count(Outcome::Inconclusive), n),
        kill_switch: runs.iter().filter(|r| r.kill_switch).count(),
        delay,
        time_to_100_min: quantile(&promoted_min, 0.5),
        baselines: out_baselines,
        ratio_to_best_baseline: ratio,
    }
}

fn pct(r: &Rate) -> String {
    format!(
        "{:.2} % [{:.2}, {:.2}]",
        100.0 * r.rate,
        100.0 * r.lo,
        100.0 * r.hi
    )
}

fn num(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.0}"))
}

pub fn markdown(rows: &[Row], alpha_note: &str) -> String {
    let mut out = String::new();
    out.push_str(alpha_note);
    out.push_str("\n\n| scenario | expect | runs | reverted (95 % CI) | promoted | inconclusive | canary req. to revert, median / p90 | bad served before revert (median) | time to 100 % (median) | Flagger-style tuned: k, median / p90 | Argo-style tuned: k, median / p90 | ours ÷ best baseline |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let base = |fam: &str| {
            r.baselines
                .iter()
                .find(|b| b.family == fam)
                .map_or("—".into(), |b| {
                    format!(
                        "k={} (A/A {:.1} %): {} / {}",
                        b.k,
                        100.0 * b.twin_false_rollbacks.rate,
                        num(b.delay.median),
                        num(b.delay.p90)
                    )
                })
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % | {:.1} % | {} / {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.expect,
            r.runs,
            pct(&r.reverted),
            100.0 * r.promoted.rate,
            100.0 * r.inconclusive.rate,
            num(r.delay.median),
            num(r.delay.p90),
            num(r.delay.bad_median),
            r.time_to_100_min
                .map_or("—".into(), |m| format!("{m:.0} min")),
            base("Flagger-style"),
            base("Argo-style"),
            r.ratio_to_best_baseline
                .map_or("—".into(), |x| format!("{x:.2}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wilson_interval_matches_the_textbook_value() {
        // 10 of 100: centre (0.1 + 1.9208/100)/1.038415 = 0.114799, half-width
        // 1.96·sqrt(0.0009 + 0.0000960)/1.038415 = 0.059575 → [0.0552, 0.1744].
        let r = wilson(10, 100);
        assert!(
            (r.lo - 0.0552).abs() < 1e-3 && (r.hi - 0.1744).abs() < 1e-3,
            "{r:?}"
        );
    }

    #[test]
    fn runs_that_never_reverted_count_as_infinitely_slow() {
        let q = quantile(&[Some(1.0), None, None], 0.5);
        assert_eq!(q, None);
        assert_eq!(quantile(&[Some(1.0), Some(3.0), None], 0.5), Some(3.0));
    }
}
