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
    let population = Population::draw(&s.traffic, &mut rng);
    let mut run = RunState::new(s, watch);
    let end_ms = s.duration.as_millis() as i64;
    let (_, max_factor) = rate_factor(s, 0);
    let mut now = 0.0f64;
    loop {
        now += exp_draw(&mut rng, s.rps * max_factor) * 1000.0;
        let at_ms = now as i64;
        run.look_until(at_ms.min(end_ms));
        run.close_minutes(at_ms.min(end_ms));
        if at_ms >= end_ms || (run.result.is_some() && !run.checks.watching()) {
            break;
        }
        // Thinning: arrivals at the peak rate, kept with the curve's share.
        let (factor, _) = rate_factor(s, at_ms);
        if rng.random::<f64>() * max_factor >= factor {
            continue;
        }
        let assignment = run.assign(&mut rng, &population, at_ms);
        let answer = draw_answer(s, &mut rng, &population, &assignment, at_ms);
        run.count(&assignment, answer, at_ms);
    }
    run.finish(end_ms)
}

/// Who sends the requests, drawn once per run before the first request.
struct Population {
    /// Zipf(1.1) workspaces, as a cumulative distribution.
    workspaces: Vec<f64>,
    /// Each workspace's error-rate scale.
    workspace_errors: Vec<f64>,
    /// Each workspace's answer-size scale.
    workspace_tokens: Vec<f64>,
    /// Sticky users' Pareto(1.2) activity, as a cumulative distribution (empty: none).
    users: Vec<f64>,
    /// Each user's salted bucket in [0, 1).
    user_bucket: Vec<f64>,
    /// Users whose requests fail more (clustered-bad).
    user_bad: Vec<bool>,
}

impl Population {
    fn draw(t: &super::scenario::Traffic, rng: &mut StdRng) -> Population {
        let workspaces = cumulative((1..=t.workspaces.max(1)).map(|k| (k as f64).powf(-1.1)));
        let workspace_errors = (0..workspaces.len())
            .map(|_| (0.4 * normal(rng) - 0.08).exp())
            .collect();
        let workspace_tokens = (0..workspaces.len())
            .map(|_| (0.3 * normal(rng)).exp())
            .collect();
        let n = t.sticky_users;
        let users = cumulative((0..n).map(|_| rng.random::<f64>().max(1e-12).powf(-1.0 / 1.2)));
        let user_bucket = (0..n).map(|_| rng.random()).collect();
        let user_bad = (0..n)
            .map(|_| rng.random::<f64>() < t.bad_user_share)
            .collect();
        Population {
            workspaces,
            workspace_errors,
            workspace_tokens,
            users,
            user_bucket,
            user_bad,
        }
    }
}

/// The busiest `heavy_workspaces` send long prompts.
fn heavy_ratio(t: &super::scenario::Traffic, workspace: usize) -> f64 {
    if workspace < t.heavy_workspaces {
        t.heavy_tokens_ratio
    } else {
        1.0
    }
}

/// Where one request goes.
struct Assignment {
    workspace: usize,
    user: Option<usize>,
    /// The canary weight it was assigned at, 0 to 1.
    w: f64,
    arm: Arm,
    /// Assigned by weight (not targeted by workspace).
    randomized: bool,
}

/// One request's answer as measured, before it is counted.
struct Answer {
    obs: Observation,
    /// An error, a schema failure or a guardrail block.
    bad: bool,
    /// Its record never reaches the gateway (`lost_canary_records`).
    lost: bool,
    gets_feedback: bool,
    feedback_bad: bool,
}

/// Draws one request's answer; the draws keep their order, so a seed gives the same run.
fn draw_answer(
    s: &Scenario,
    rng: &mut StdRng,
    population: &Population,
    a: &Assignment,
    at_ms: i64,
) -> Answer {
    let (t, c) = (&s.traffic, &s.canary);
    let canary = a.arm == Arm::Canary;
    let changed = canary && at_ms >= s.onset.as_millis() as i64;
    let ratio = |r: f64| if changed { r } else { 1.0 };
    let p_err = error_probability(s, population, a, at_ms);
    let error = rng.random::<f64>() < (p_err * ratio(c.error_ratio)).min(1.0);
    let ttft = draw_ttft(s, rng, changed);
    let heavy = heavy_ratio(t, a.workspace);
    let tokens = if error {
        0.0
    } else {
        s.stable.tokens
            * population.workspace_tokens[a.workspace]
            * heavy
            * (s.stable.tokens_sigma * normal(rng)).exp()
            * ratio(c.tokens_ratio)
    };
    let latency = match t.stream_seconds {
        Some([low, high]) => 1000.0 * (low + (high - low) * rng.random::<f64>()),
        None => {
            ttft + s.stable.latency_ms
                * heavy.sqrt()
                * (0.4 * normal(rng)).exp()
                * ratio(c.latency_ratio)
        }
    };
    let schema_failed = (rng.random::<f64>() < t.schema_share).then(|| {
        rng.random::<f64>()
            < (s.stable.schema_failure_rate * ratio(c.schema_failure_ratio)).min(1.0)
    });
    let guardrail_blocked = rng.random::<f64>() < s.stable.guardrail_block_rate;
    let lost = canary && t.lost_canary_records > 0.0 && rng.random::<f64>() < t.lost_canary_records;
    let gets_feedback = a.randomized && rng.random::<f64>() < t.feedback_share;
    let feedback_bad =
        rng.random::<f64>() < (s.stable.feedback_bad_rate * ratio(c.feedback_ratio)).min(1.0);
    let obs = Observation {
        at_ms,
        arm: a.arm,
        w: if a.randomized { a.w } else { 1.0 },
        randomized: a.randomized,
        error,
        latency_ms: latency,
        ttft_ms: (!error).then_some(ttft),
        tokens,
        cost_usd: tokens * 2e-6 * ratio(c.cost_ratio),
        response_chars: tokens * 3.5 * ratio(c.length_ratio),
        schema_failed,
        guardrail_blocked,
        unit: a.user.map(|u| u as u64),
    };
    Answer {
        obs,
        bad: error || schema_failed == Some(true) || guardrail_blocked,
        lost,
        gets_feedback,
        feedback_bad,
    }
}

/// The stable error rate for this user or workspace, raised by any incident under way.
fn error_probability(s: &Scenario, population: &Population, a: &Assignment, at_ms: i64) -> f64 {
    let mut p_err = match a.user {
        Some(u) if population.user_bad[u] => s.traffic.bad_user_error_rate,
        _ => s.stable.error_rate * population.workspace_errors[a.workspace],
    };
    let canary = a.arm == Arm::Canary;
    for inc in &s.incidents {
        let hits = if canary { inc.canary } else { inc.stable };
        if hits && (inc.from_ms..inc.to_ms).contains(&at_ms) {
            p_err = p_err.max(inc.error_rate);
        }
    }
    p_err
}

/// Log-normal time to first token with 2 % slow outliers; a changed canary's upper half
/// is stretched so that its p95 moves by `ttft_p95_ratio`.
fn draw_ttft(s: &Scenario, rng: &mut StdRng, changed: bool) -> f64 {
    let ttft_stretch = 1.0 + s.canary.ttft_p95_ratio.ln() / (1.645 * s.stable.ttft_sigma);
    let z = normal(rng);
    let z = if changed && z > 0.0 {
        z * ttft_stretch
    } else {
        z
    };
    let mut ttft = s.stable.ttft_ms * (s.stable.ttft_sigma * z).exp();
    if rng.random::<f64>() < 0.02 {
        ttft *= 5.0;
    }
    ttft
}

/// Everything one run carries from request to request.
struct RunState<'a> {
    s: &'a Scenario,
    judge: Judge,
    pos: Position,
    in_step: InStep,
    next_look: i64,
    result: Option<RunResult>,
    canary_requests: u64,
    bad_canary: u64,
    checks: Checks,
    minute_end: i64,
    /// Requests in flight (measured when they end) by due time.
    in_flight: BTreeMap<(i64, u64), InFlight>,
    /// Feedback on its way, by due time: (arm, weight, bad).
    feedback: BTreeMap<(i64, u64), (Arm, f64, bool)>,
    seq: u64,
    /// Once the judge has decided, traffic keeps flowing at the last live weight so the
    /// baselines see the same stream as far as they need.
    weight_bp: u32,
    e_path: Vec<(i64, f64)>,
}

impl<'a> RunState<'a> {
    fn new(s: &'a Scenario, watch: &[crate::judge::spec::Metric]) -> RunState<'a> {
        let policy = &s.policy;
        let pos = Position::start(policy, 0);
        RunState {
            s,
            judge: Judge::new(&policy.judge_spec()),
            weight_bp: pos.weight_bp,
            pos,
            in_step: InStep::default(),
            next_look: policy.interval.as_millis() as i64,
            result: None,
            canary_requests: 0,
            bad_canary: 0,
            checks: Checks::new(watch),
            minute_end: 60_000,
            in_flight: BTreeMap::new(),
            feedback: BTreeMap::new(),
            seq: 0,
            e_path: Vec::new(),
        }
    }

    /// Every look of the judge due by `until_ms`, until it decides.
    fn look_until(&mut self, until_ms: i64) {
        while self.result.is_none() && self.next_look <= until_ms {
            let at = self.next_look;
            self.deliver_due(at);
            self.look(at);
            self.next_look += self.s.policy.interval.as_millis() as i64;
        }
    }

    /// Everything that ended by the look reaches the judge first.
    fn deliver_due(&mut self, at: i64) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > at {
                break;
            }
            let f = entry.remove();
            self.in_step.count(&f.obs, self.pos.step_started_ms);
            self.judge.observe(&f.obs);
        }
        let feedback_name = self.s.policy.feedback.first().map(|f| &f.name);
        while let Some(entry) = self.feedback.first_entry() {
            if entry.key().0 > at {
                break;
            }
            let (arm, w, bad) = entry.remove();
            if let Some(name) = feedback_name {
                self.judge
                    .observe_feedback(name, arm, w, true, if bad { 0.0 } else { 1.0 });
            }
        }
    }

    /// One look: the judge's report, the machine's decision, and the run's end if decided.
    fn look(&mut self, at: i64) {
        let policy = &self.s.policy;
        self.judge.tick(at);
        let report = self.judge.look(at);
        let decision = self.pos.decide(policy, &report, self.in_step, at);
        let ended = match &decision {
            Decision::Revert { .. } => Some((Outcome::Reverted, report.kill_switch_fired)),
            Decision::Promote => Some((Outcome::Promoted, false)),
            Decision::Inconclusive { .. } => Some((Outcome::Inconclusive, false)),
            Decision::Advance { .. } => {
                self.in_step = InStep::default();
                None
            }
            Decision::Hold { .. } => None,
        };
        let next = self.pos.apply(policy, &decision, at);
        if next.state.is_live() {
            self.weight_bp = next.weight_bp;
        }
        self.pos = next;
        if self.e_path.len() < E_PATH_POINTS && (at % E_PATH_EVERY_MS == 0 || ended.is_some()) {
            self.e_path.push((at, report.e_global));
        }
        if let Some((outcome, kill_switch)) = ended {
            self.result = Some(RunResult {
                outcome,
                at_ms: at,
                canary_requests: self.canary_requests,
                bad_canary: self.bad_canary,
                kill_switch,
                checks: Checks::default(),
                e_path: Vec::new(),
            });
        }
    }

    /// Closes the baselines' minutes that ended by `until_ms`.
    fn close_minutes(&mut self, until_ms: i64) {
        while self.minute_end <= until_ms {
            self.checks
                .close_minute(self.canary_requests, self.bad_canary);
            self.minute_end += 60_000;
        }
    }

    /// Picks the request's workspace and user, and its arm: targeted, by the user's
    /// bucket, or at random by weight.
    fn assign(&mut self, rng: &mut StdRng, population: &Population, at_ms: i64) -> Assignment {
        let t = &self.s.traffic;
        let workspace = pick(rng, &population.workspaces);
        let internal = rng.random::<f64>() < t.internal_share;
        let user = (t.sticky_users > 0).then(|| pick(rng, &population.users));
        let w = f64::from(self.weight_bp) / 10_000.0;
        let live = self.pos.state.is_live();
        let targeted = internal
            && live
            && (self.s.policy)
                .targeted_workspaces(self.pos.step)
                .contains(&"internal");
        let canary = if targeted {
            true
        } else {
            match user {
                Some(u) => population.user_bucket[u] < w,
                None => rng.random::<f64>() < w,
            }
        };
        let randomized = !targeted;
        let arm = if canary { Arm::Canary } else { Arm::Stable };
        if randomized && self.result.is_none() {
            self.judge.note_assignment(arm, w, at_ms);
        }
        Assignment {
            workspace,
            user,
            w,
            arm,
            randomized,
        }
    }

    /// Counts a measured answer, and sends it (and its feedback) on its way to the judge
    /// while the judge has not decided.
    fn count(&mut self, a: &Assignment, answer: Answer, at_ms: i64) {
        if answer.lost {
            return;
        }
        if a.arm == Arm::Canary {
            self.canary_requests += 1;
            self.bad_canary += u64::from(answer.bad);
        }
        if self.result.is_none() {
            self.seq += 1;
            let done = at_ms + answer.obs.latency_ms as i64;
            if answer.gets_feedback {
                let due = done + self.s.feedback_delay.as_millis() as i64;
                self.feedback
                    .insert((due, self.seq), (a.arm, a.w, answer.feedback_bad));
            }
            self.in_flight.insert(
                (done, self.seq),
                InFlight {
                    obs: answer.obs.clone(),
                },
            );
        }
        if a.randomized {
            self.checks.add(&answer.obs);
        }
    }

    /// The run's result: the judge's decision, or where the rollout stood at the end.
    fn finish(self, end_ms: i64) -> RunResult {
        let mut r = self.result.unwrap_or(RunResult {
            outcome: if self.pos.state == RolloutState::Promoted {
                Outcome::Promoted
            } else {
                Outcome::Undecided
            },
            at_ms: end_ms,
            canary_requests: self.canary_requests,
            bad_canary: self.bad_canary,
            kill_switch: false,
            checks: Checks::default(),
            e_path: Vec::new(),
        });
        r.checks = self.checks;
        r.e_path = self.e_path;
        r
    }
}
