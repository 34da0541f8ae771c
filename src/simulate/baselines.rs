//! The threshold judges the research note compares against (§8.1), replayed from
//! per-minute summaries of the same runs. In: each run's check values. Out: thresholds
//! tuned on A/A twins to a target false-rollback rate, and each run's detection point.
//!
//! - Flagger-style: every minute, the canary's value of the watched metric over that
//!   minute against an absolute threshold; a minute without canary data is a failed
//!   check (as in Flagger); roll back at the k-th failed check (k = `threshold`).
//! - Argo-style: every 5 minutes, canary minus stable (rates) or canary / stable
//!   (continuous metrics) over the window against a threshold; no data is not a
//!   failure; roll back when failures exceed `failureLimit` (k = failureLimit + 1).

use crate::judge::Observation;
use crate::judge::spec::Metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Flagger,
    Argo,
}

impl Family {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Flagger => "Flagger-style",
            Family::Argo => "Argo-style",
        }
    }
    /// The k values (failed checks needed) the tuning tries.
    pub(crate) fn ks(self) -> &'static [usize] {
        match self {
            Family::Flagger => &[1, 2, 3, 5],
            Family::Argo => &[1, 2, 3],
        }
    }
}

/// One arm's values of the watched metric within a window.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArmAgg {
    n: u64,
    sum: f64,
    values: Vec<f64>,
}

impl ArmAgg {
    fn merge(&mut self, o: &ArmAgg) {
        self.n += o.n;
        self.sum += o.sum;
        self.values.extend_from_slice(&o.values);
    }

    fn value(&mut self, metric: Metric) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        if metric.is_time() {
            let k =
                ((0.95 * self.values.len() as f64).ceil() as usize).clamp(1, self.values.len()) - 1;
            let (_, x, _) = self.values.select_nth_unstable_by(k, f64::total_cmp);
            Some(*x)
        } else {
            Some(self.sum / self.n as f64)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MinuteAgg {
    canary: ArmAgg,
    stable: ArmAgg,
}

impl MinuteAgg {
    fn add(&mut self, obs: &Observation, metric: Metric) {
        let Some(y) = crate::judge::value_of(metric, obs) else {
            return;
        };
        let arm = if obs.arm == crate::types::Arm::Canary {
            &mut self.canary
        } else {
            &mut self.stable
        };
        arm.n += 1;
        arm.sum += y;
        if metric.is_time() {
            arm.values.push(y);
        }
    }
}

/// One check: its value (∞ = failed for want of data) and the canary exposure so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Check {
    pub(crate) value: f64,
    pub(crate) canary_requests: u64,
    pub(crate) bad_canary: u64,
}

/// Both families' checks on one metric.
#[derive(Debug, Clone)]
pub(crate) struct MetricChecks {
    pub(crate) metric: Metric,
    pub(crate) flagger: Vec<Check>,
    pub(crate) argo: Vec<Check>,
    minute: MinuteAgg,
    window: Vec<MinuteAgg>,
}

/// The baselines' view of one run: per-minute checks on each watched metric.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checks {
    pub(crate) metrics: Vec<MetricChecks>,
}

impl Checks {
    pub(crate) fn new(metrics: &[Metric]) -> Self {
        Checks {
            metrics: metrics
                .iter()
                .map(|&metric| MetricChecks {
                    metric,
                    flagger: Vec::new(),
                    argo: Vec::new(),
                    minute: MinuteAgg::default(),
                    window: Vec::new(),
                })
                .collect(),
        }
    }

    /// Whether the run must go on for the baselines' sake.
    pub(crate) fn watching(&self) -> bool {
        !self.metrics.is_empty()
    }

    pub(crate) fn of(&self, family: Family, metric: Metric) -> &[Check] {
        let Some(m) = self.metrics.iter().find(|m| m.metric == metric) else {
            return &[];
        };
        match family {
            Family::Flagger => &m.flagger,
            Family::Argo => &m.argo,
        }
    }

    /// A randomized request, measured.
    pub(crate) fn add(&mut self, obs: &Observation) {
        for m in &mut self.metrics {
            m.minute.add(obs, m.metric);
        }
    }

    pub(crate) fn close_minute(&mut self, canary_requests: u64, bad_canary: u64) {
        for m in &mut self.metrics {
            let metric = m.metric;
            let mut minute = std::mem::take(&mut m.minute);
            let value = minute.canary.value(metric).unwrap_or(f64::INFINITY);
            m.flagger.push(Check {
                value,
                canary_requests,
                bad_canary,
            });
            m.window.push(minute);
            if m.window.len() == 5 {
                let mut all = MinuteAgg::default();
                for w in m.window.drain(..) {
                    all.canary.merge(&w.canary);
                    all.stable.merge(&w.stable);
                }
                let value = match (all.canary.value(metric), all.stable.value(metric)) {
                    (Some(c), Some(s)) if metric.is_binary() => c - s,
                    (Some(c), Some(s)) if s > 0.0 => c / s,
                    _ => f64::NEG_INFINITY,
                };
                m.argo.push(Check {
                    value,
                    canary_requests,
                    bad_canary,
                });
            }
        }
    }
}

/// The smallest threshold at which a run would not fire: its k-th largest check value.
fn critical(checks: &[Check], k: usize) -> f64 {
    let mut v: Vec<f64> = checks.iter().map(|c| c.value).collect();
    if v.len() < k {
        return f64::NEG_INFINITY;
    }
    v.sort_by(|a, b| b.total_cmp(a));
    v[k - 1]
}

/// The threshold that makes at most `target` of the A/A runs fire (fire iff value > T).
pub(crate) fn tune(null_runs: &[&[Check]], k: usize, target: f64) -> f64 {
    let mut crit: Vec<f64> = null_runs.iter().map(|c| critical(c, k)).collect();
    crit.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target * crit.len() as f64).floor() as usize;
    crit.get(allowed).copied().unwrap_or(f64::NEG_INFINITY)
}

/// The check at which a run fires with threshold `t` and k failed checks, if any.
pub(crate) fn fires(checks: &[Check], k: usize, t: f64) -> Option<Check> {
    let mut failed = 0;
    for c in checks {
        if c.value > t {
            failed += 1;
            if failed >= k {
                return Some(*c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[f64]) -> Vec<Check> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Check {
                value,
                canary_requests: 10 * (i as u64 + 1),
                bad_canary: 0,
            })
            .collect()
    }

    #[test]
    fn tuning_lets_exactly_the_target_share_of_null_runs_fire() {
        // Critical values for k = 1 are the maxima 5, 4, 3, 2; a target of 1/4 allows
        // one run to fire, so T = 4: only the run with a check at 5 fires.
        let runs = [run(&[1.0, 5.0]), run(&[4.0]), run(&[3.0, 0.0]), run(&[2.0])];
        let refs: Vec<&[Check]> = runs.iter().map(|r| r.as_slice()).collect();
        let t = tune(&refs, 1, 0.25);
        assert_eq!(t, 4.0);
        let fired = runs.iter().filter(|r| fires(r, 1, t).is_some()).count();
        assert_eq!(fired, 1);
        assert_eq!(fires(&runs[0], 1, t).unwrap().canary_requests, 20);
        assert!(
            fires(&run(&[f64::INFINITY, 0.0]), 1, 1e9).is_some(),
            "no data fails"
        );
    }
}
