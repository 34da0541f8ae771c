//! One seeded run of a scenario: synthetic requests in simulated time (no sleeping),
//! assigned by the rollout's weight, fed to the real [`Judge`] and [`Position`], and
//! summarized per minute for the threshold baselines. In: a scenario and a seed. Out: a
//! [`RunResult`]; the same seed always gives the same result.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::baselines::Checks;
use super::scenario::Scenario;
use crate::judge::{Judge, Observation};
use crate::rollout::machine::{Decision, InStep, Position};
use crate::types::{Arm, RolloutState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Reverted,
    Promoted,
    Inconclusive,
    /// The run's time ran out with the rollout still in a step.
    Undecided,
}

#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    pub(crate) outcome: Outcome,
    pub(crate) at_ms: i64,
    /// Canary requests served (measured) when the run ended or reverted.
    pub(crate) canary_requests: u64,
    /// Canary responses that were bad (error, schema failure, guardrail block).
    pub(crate) bad_canary: u64,
    pub(crate) kill_switch: bool,
    pub(crate) checks: Checks,
    /// The judge's global e-value every [`E_PATH_EVERY_MS`] until it decided (the
    /// report draws a few of these against 1/α).
    pub(crate) e_path: Vec<(i64, f64)>,
}

/// How often the e-value path is sampled, and at most how many points are kept.
pub(crate) const E_PATH_EVERY_MS: i64 = 30_000;
pub(crate) const E_PATH_POINTS: usize = 240;

fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random::<f64>().max(1e-300);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn exp_draw(rng: &mut StdRng, rate: f64) -> f64 {
    -rng.random::<f64>().max(1e-300).ln() / rate
}

/// Index into a cumulative distribution.
fn pick(rng: &mut StdRng, cumulative: &[f64]) -> usize {
    let u = rng.random::<f64>() * cumulative.last().copied().unwrap_or(1.0);
    cumulative
        .partition_point(|&c| c < u)
        .min(cumulative.len() - 1)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

/// The arrival rate's multiplier at `t_ms` (daily curve × bursts), and its maximum.
fn rate_factor(s: &Scenario, t_ms: i64) -> (f64, f64) {
    let r = s.traffic.daily_ratio.max(1.0);
    let a = (r - 1.0) / (r + 1.0);
    let period = s.daily_period.as_millis().max(1) as f64;
    // Starts at the trough, peaks half a period later.
    let daily = 1.0 - a * (std::f64::consts::TAU * t_ms as f64 / period).cos();
    let (burst, burst_max) = match s.burst {
        Some((every, len)) => {
            let every = every.as_millis().max(1) as i64;
            let on = t_ms.rem_euclid(every) < len.as_millis() as i64;
            let f = s.traffic.burst_factor;
            (if on { f } else { 1.0 }, f.max(1.0))
        }
        None => (1.0, 1.0),
    };
    (daily * burst, (1.0 + a) * burst_max)
}

/// A measured request on its way to the judge: it arrives when the request ends.
struct InFlight {
    obs: Observation,
}

/// One run; the baselines watch `watch` (a twin watches every metric its scenarios need).
pub(crate) fn run(s: &Scenario, watch: &[crate::judge::spec::Metric], seed: u64) -> RunResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = &s.policy;
    let t = &s.traffic;
    // Zipf(1.1) workspaces, each with its own error and size scale; the busiest
    // `heavy_workspaces` send long prompts.
    let ws_cum = cumulative((1..=t.workspaces.max(1)).map(|k| (k as f64).powf(-1.1)));
    let ws_err: Vec<f64> = (0..ws_cum.len())
        .map(|_| (0.4 * normal(&mut rng) - 0.08).exp())
        .collect();
    let ws_tok: Vec<f64> = (0..ws_cum.len())
        .map(|_| (0.3 * normal(&mut rng)).exp())
        .collect();
    let ws_heavy = |i: usize| {
        if i < t.heavy_workspaces {
            t.heavy_tokens_ratio
        } else {
            1.0
        }
    };
    // Sticky users: Pareto(1.2) activity, a salted bucket each, some clustered-bad.
    let users = t.sticky_users;
    let user_cum = cumulative((0..users).map(|_| rng.random::<f64>().max(1e-12).powf(-1.0 / 1.2)));
    let user_bucket: Vec<f64> = (0..users).map(|_| rng.random()).collect();
    let user_bad: Vec<bool> = (0..users)
        .map(|_| rng.random::<f64>() < t.bad_user_share)
        .collect();
    let feedback_name = policy.feedback.first().map(|f| f.name.clone());
    let feedback_delay_ms = s.feedback_delay.as_millis() as i64;

    let interval_ms = policy.interval.as_millis() as i64;
    let end_ms = s.duration.as_millis() as i64;
    let onset_ms = s.onset.as_millis() as i64;
    let c = &s.canary;
    // Stretch of the upper half of log TTFT so that its p95 moves by ttft_p95_ratio.
    let ttft_stretch = 1.0 + c.ttft_p95_ratio.ln() / (1.645 * s.stable.ttft_sigma);

    let mut judge = Judge::new(&policy.judge_spec());
    let mut pos = Position::start(policy, 0);
    let mut in_step = InStep::default();
    let mut next_look = interval_ms;
    let mut result: Option<RunResult> = None;
    let mut canary_requests = 0u64;
    let mut bad_canary = 0u64;
    let mut checks = Checks::new(watch);
    let mut minute_end = 60_000i64;
    // Requests in flight (measured when they end) and feedback on its way, by due time.
    let mut in_flight: BTreeMap<(i64, u64), InFlight> = BTreeMap::new();
    let mut feedback: BTreeMap<(i64, u64), (Arm, f64, bool)> = BTreeMap::new();
    let mut seq = 0u64;
    // Once the judge has decided, traffic keeps flowing at the last live weight so the
    // baselines see the same stream as far as they need.
    let mut weight_bp = pos.weight_bp;
    let mut now = 0.0f64;
    let (_, max_factor) = rate_factor(s, 0);
    let mut e_path: Vec<(i64, f64)> = Vec::new();
    loop {
        now += exp_draw(&mut rng, s.rps * max_factor) * 1000.0;
        let at_ms = now as i64;
        while result.is_none() && next_look <= at_ms.min(end_ms) {
            // Everything that ended by the look reaches the judge first.
            while let Some(entry) = in_flight.first_entry() {
                if entry.key().0 > next_look {
                    break;
                }
                let f = entry.remove();
                in_step.count(&f.obs, pos.step_started_ms);
                judge.observe(&f.obs);
            }
            while let Some(entry) = feedback.first_entry() {
                if entry.key().0 > next_look {
                    break;
                }
                let (arm, w, bad) = entry.remove();
                if let Some(name) = &feedback_name {
                    judge.observe_feedback(name, arm, w, true, if bad { 0.0 } else { 1.0 });
                }
            }
            judge.tick(next_look);
            let report = judge.look(next_look);
            let decision = pos.decide(policy, &report, in_step, next_look);
            let ended = match &decision {
                Decision::Revert { .. } => Some((Outcome::Reverted, report.kill_switch_fired)),
                Decision::Promote => Some((Outcome::Promoted, false)),
                Decision::Inconclusive { .. } => Some((Outcome::Inconclusive, false)),
                Decision::Advance { .. } => {
                    in_step = InStep::default();
                    None
                }
                Decision::Hold { .. } => None,
            };
            let next = pos.apply(policy, &decision, next_look);
            if next.state.is_live() {
                weight_bp = next.weight_bp;
            }
            pos = next;
            if e_path.len() < E_PATH_POINTS && (next_look % E_PATH_EVERY_MS == 0 || ended.is_some())
            {
                e_path.push((next_look, report.e_global));
            }
            if let Some((outcome, kill_switch)) = ended {
                result = Some(RunResult {
                    outcome,
                    at_ms: next_look,
                    canary_requests,
                    bad_canary,
                    kill_switch,
                    checks: Checks::default(),
                    e_path: Vec::new(),
                });
            }
            next_look += interval_ms;
        }
        while minute_end <= at_ms.min(end_ms) {
            checks.close_minute(canary_requests, bad_canary);
            minute_end += 60_000;
        }
        if at_ms >= end_ms || (result.is_some() && !checks.watching()) {
            break;
        }
        // Thinning: arrivals at the peak rate, kept with the curve's share.
        let (factor, _) = rate_factor(s, at_ms);
        if rng.random::<f64>() * max_factor >= factor {
            continue;
        }

        // One request.
        let ws = pick(&mut rng, &ws_cum);
        let internal = rng.random::<f64>() < t.internal_share;
        let user = (users > 0).then(|| pick(&mut rng, &user_cum));
        let w = f64::from(weight_bp) / 10_000.0;
        let live = pos.state.is_live();
        let targeted =
            internal && live && policy.targeted_workspaces(pos.step).contains(&"internal");
        let canary = if targeted {
            true
        } else {
            match user {
                Some(u) => user_bucket[u] < w,
                None => rng.random::<f64>() < w,
            }
        };
        let randomized = !targeted;
        let arm = if canary { Arm::Canary } else { Arm::Stable };
        if randomized && result.is_none() {
            judge.note_assignment(arm, w, at_ms);
        }
        let changed = canary && at_ms >= onset_ms;
        let ratio = |r: f64| if changed { r } else { 1.0 };

        let mut p_err = match user {
            Some(u) if user_bad[u] => t.bad_user_error_rate,
            _ => s.stable.error_rate * ws_err[ws],
        };
        for inc in &s.incidents {
            let hits = if canary { inc.canary } else { inc.stable };
            if hits && (inc.from_ms..inc.to_ms).contains(&at_ms) {
                p_err = p_err.max(inc.error_rate);
            }
        }
        let error = rng.random::<f64>() < (p_err * ratio(c.error_ratio)).min(1.0);
        let z = normal(&mut rng);
        let z = if changed && z > 0.0 {
            z * ttft_stretch
        } else {
            z
        };
        let mut ttft = s.stable.ttft_ms * (s.stable.ttft_sigma * z).exp();
        if rng.random::<f64>() < 0.02 {
            ttft *= 5.0;
        }
        let heavy = ws_heavy(ws);
        let tokens = if error {
            0.0
        } else {
            s.stable.tokens
                * ws_tok[ws]
                * heavy
                * (s.stable.tokens_sigma * normal(&mut rng)).exp()
                * ratio(c.tokens_ratio)
        };
        let latency = match t.stream_seconds {
            Some([a, b]) => 1000.0 * (a + (b - a) * rng.random::<f64>()),
            None => {
                ttft + s.stable.latency_ms
                    * heavy.sqrt()
                    * (0.4 * normal(&mut rng)).exp()
                    * ratio(c.latency_ratio)
            }
        };
        let schema_failed = (rng.random::<f64>() < t.schema_share).then(|| {
            rng.random::<f64>()
                < (s.stable.schema_failure_rate * ratio(c.schema_failure_ratio)).min(1.0)
        });
        let guardrail_blocked = rng.random::<f64>() < s.stable.guardrail_block_rate;
        let lost =
            canary && t.lost_canary_records > 0.0 && rng.random::<f64>() < t.lost_canary_records;
        let gets_feedback = randomized && rng.random::<f64>() < t.feedback_share;
        let feedback_bad =
            rng.random::<f64>() < (s.stable.feedback_bad_rate * ratio(c.feedback_ratio)).min(1.0);
        if lost {
            continue;
        }
        let bad = error || schema_failed == Some(true) || guardrail_blocked;
        let obs = Observation {
            at_ms,
            arm,
            w: if randomized { w } else { 1.0 },
            randomized,
            error,
            latency_ms: latency,
            ttft_ms: (!error).then_some(ttft),
            tokens,
            cost_usd: tokens * 2e-6 * ratio(c.cost_ratio),
            response_chars: tokens * 3.5 * ratio(c.length_ratio),
            schema_failed,
            guardrail_blocked,
            unit: user.map(|u| u as u64),
        };
        if canary {
            canary_requests += 1;
            bad_canary += u64::from(bad);
        }
        if result.is_none() {
            seq += 1;
            let done = at_ms + latency as i64;
            if gets_feedback {
                feedback.insert((done + feedback_delay_ms, seq), (arm, w, feedback_bad));
            }
            in_flight.insert((done, seq), InFlight { obs: obs.clone() });
        }
        if randomized {
            checks.add(&obs);
        }
    }
    let mut r = result.unwrap_or(RunResult {
        outcome: if pos.state == RolloutState::Promoted {
            Outcome::Promoted
        } else {
            Outcome::Undecided
        },
        at_ms: end_ms,
        canary_requests,
        bad_canary,
        kill_switch: false,
        checks: Checks::default(),
        e_path: Vec::new(),
    });
    r.checks = checks;
    r.e_path = e_path;
    r
}
