//! The judge: design-based e-processes per gate over the arm labels given the outcomes
//! (research note §6), a weighted average across gates, a kill switch and an SRM guard.
//! In: a policy, then every measured request as an `Observation` (and every randomized
//! assignment for the SRM guard). Out: a `JudgeReport` at any look. Pure: no I/O, no
//! clock (time comes in as milliseconds); the state serializes so a restart resumes the
//! e-processes where they stood.
//!
//! Choices the research note leaves open, fixed here:
//! - gate weights π_k (§6.4): error 0.30, guardrail 0.15, schema 0.15, TTFT 0.10,
//!   latency 0.10, tokens 0.10, cost 0.10, length 0.10, renormalized over the policy's
//!   judged gates (a gate with only `max_ms` is a hard limit and has no weight);
//! - a gate passes once it has `MIN_PER_ARM_FOR_PASS` randomized requests per arm and
//!   does not fail; before that it is "not yet";
//! - a hard limit needs `HARD_LIMIT_MIN_CANARY` canary requests before it can fire;
//! - continuous gates skip errored requests (the error gate judges those), except for
//!   the latency hard limit, which sees every canary request;
//! - the revert is decided on the current e-value at each look (anytime-valid, so looking
//!   every `interval` keeps the α guarantee).

use serde::{Deserialize, Serialize};

pub(crate) mod binary;
pub(crate) mod continuous;
pub(crate) mod guards;
pub(crate) mod spec;
pub mod units;

use binary::CountProcess;
use continuous::ContinuousGate;
use guards::{ALPHA_SRM, KillWindow, Srm};
use units::{Input, UnitBook, UnitGate};

use crate::types::Arm;
use spec::{FeedbackKind, FeedbackMetric, Gate, JudgeSpec, Metric};

/// One measured request as the judge sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Observation {
    pub(crate) at_ms: i64,
    pub(crate) arm: Arm,
    /// The canary probability in force when the request was assigned.
    pub(crate) w: f64,
    /// False for pinned / targeted requests: those are reported, never judged.
    pub(crate) randomized: bool,
    /// An error attributable to the version (`Outcome::is_error`).
    pub(crate) error: bool,
    pub(crate) latency_ms: f64,
    pub(crate) ttft_ms: Option<f64>,
    /// Prompt + completion tokens.
    pub(crate) tokens: f64,
    pub(crate) cost_usd: f64,
    pub(crate) response_chars: f64,
    /// `Some(failed)` when the request asked for a schema, `None` otherwise.
    pub(crate) schema_failed: Option<bool>,
    pub(crate) guardrail_blocked: bool,
    /// The sticky unit this request was assigned by (a stable hash of the user,
    /// conversation or header value), for the per-unit analysis of sticky rollouts;
    /// `None` when the request is its own unit (`sticky = "request"`, or no key).
    #[serde(default)]
    pub(crate) unit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GateVerdict {
    /// Evidence of harm beyond the tolerance: revert.
    Fail,
    /// Enough data and no evidence of harm.
    Pass,
    /// Not enough data to say.
    NotYet,
}

/// One gate's evidence at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct GateReport {
    pub(crate) gate: Metric,
    /// For a feedback gate: the metric's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) feedback: Option<String>,
    pub(crate) verdict: GateVerdict,
    /// The gate's e-value: the mixture over its alternatives, averaged over its one-sided
    /// parts (shift up, tail, shift down), so that it is itself an e-value.
    pub(crate) e_value: f64,
    /// Its weight π_k in the global average.
    pub(crate) weight: f64,
    /// The canary's effect estimate: a rate ratio (binary gates) or a ratio of geometric
    /// means (continuous gates), canary / stable.
    #[schema(required = true)]
    pub(crate) effect: Option<f64>,
    /// Confidence interval (1 − α) for `effect`, when there is one: for binary gates the
    /// ratios θ0 whose two-sided e-process has not reached 1/α (a confidence sequence);
    /// for continuous gates an asymptotic normal-mixture confidence sequence.
    #[schema(required = true)]
    pub(crate) ci: Option<(f64, f64)>,
    #[schema(required = true)]
    pub(crate) stable_value: Option<f64>,
    #[schema(required = true)]
    pub(crate) canary_value: Option<f64>,
    /// Randomized observations this gate used, per arm.
    pub(crate) n_stable: u64,
    pub(crate) n_canary: u64,
}

/// The sample-ratio guard: assigned against measured canary share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct SrmReport {
    pub(crate) assigned_stable: u64,
    pub(crate) assigned_canary: u64,
    pub(crate) measured_stable: u64,
    pub(crate) measured_canary: u64,
    /// Randomized requests still unmeasured [`guards::OVERDUE_MS`] after their
    /// assignment (`Judge::note_assignment`): the guard's evidence.
    #[serde(default)]
    pub(crate) lost_canary: u64,
    #[serde(default)]
    pub(crate) lost_stable: u64,
    pub(crate) e_value: f64,
    /// The design is broken (e ≥ 1/α_srm): the verdict must be inconclusive.
    pub(crate) broken: bool,
}

/// The per-unit analysis of a sticky rollout at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct UnitsReport {
    /// Units with requests not yet settled (their labels are still hidden from the
    /// statistic).
    pub(crate) open: u64,
    /// Segments (one unit's requests at one weight) settled with information, i.e. with a
    /// canary probability strictly between 0 and 1 given what was known of the unit.
    pub(crate) settled: u64,
    /// Of those, the canary ones.
    pub(crate) settled_canary: u64,
}

/// The judge's word at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct JudgeReport {
    pub(crate) at_ms: i64,
    pub(crate) alpha: f64,
    /// Σ π_k E_k.
    pub(crate) e_global: f64,
    /// 1/α.
    pub(crate) threshold: f64,
    /// E_global ≥ 1/α, a hard limit crossed, or the kill switch fired.
    pub(crate) revert: bool,
    /// Why, in words, one line per cause (empty when not reverting).
    pub(crate) reasons: Vec<String>,
    pub(crate) kill_switch_fired: bool,
    /// Which rule of the kill switch fired (it compares the arms over the same seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kill_cause: Option<guards::KillCause>,
    pub(crate) gates: Vec<GateReport>,
    pub(crate) srm: SrmReport,
    /// Sticky rollouts only: how far the per-unit analysis (module `units`) has got. Its
    /// gates' e-values are the per-unit ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) units: Option<UnitsReport>,
    /// Observations seen, per arm (randomized and not).
    pub(crate) canary_requests: u64,
    pub(crate) stable_requests: u64,
}

/// Randomized requests per arm a gate needs before it can pass.
pub(crate) const MIN_PER_ARM_FOR_PASS: u64 = 100;
/// Canary requests a hard limit needs before it can fire (one slow request is no p95).
pub(crate) const HARD_LIMIT_MIN_CANARY: usize = 20;

/// π_k before renormalization (research §6.4).
pub(crate) fn default_weight(metric: Metric) -> f64 {
    match metric {
        Metric::ErrorRate => 0.30,
        Metric::GuardrailBlockRate | Metric::SchemaFailureRate | Metric::Feedback => 0.15,
        Metric::TtftP95
        | Metric::LatencyP95
        | Metric::TokensPerRequest
        | Metric::CostPerRequest
        | Metric::ResponseLength => 0.10,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Process {
    Binary {
        theta_tol: f64,
        counts: CountProcess,
    },
    Continuous(Box<ContinuousGate>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JudgedGate {
    metric: Metric,
    weight: f64,
    max_ms: Option<f64>,
    process: Process,
    /// For a feedback gate: the metric's name and which way is good.
    #[serde(default)]
    feedback: Option<FeedbackGate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FeedbackGate {
    name: String,
    higher_is_better: bool,
}

impl JudgedGate {
    fn e_value(&self) -> f64 {
        match &self.process {
            Process::Binary { theta_tol, counts } => counts.e_value(*theta_tol),
            Process::Continuous(c) => c.e_value(),
        }
    }
}

/// The value of `metric` in one observation, if it applies to it (the simulator's
/// baselines read observations the same way).
pub(crate) fn value_of(metric: Metric, obs: &Observation) -> Option<f64> {
    match metric {
        Metric::ErrorRate => Some(f64::from(u8::from(obs.error))),
        Metric::SchemaFailureRate => obs.schema_failed.map(|f| f64::from(u8::from(f))),
        Metric::GuardrailBlockRate => Some(f64::from(u8::from(obs.guardrail_blocked))),
        _ if obs.error => None,
        Metric::LatencyP95 => Some(obs.latency_ms),
        Metric::TtftP95 => obs.ttft_ms,
        Metric::TokensPerRequest => Some(obs.tokens),
        Metric::CostPerRequest => Some(obs.cost_usd),
        Metric::ResponseLength => Some(obs.response_chars),
        // Feedback arrives on its own (`Judge::observe_feedback`), never with the request.
        Metric::Feedback => None,
    }
}

/// A gate is judged (has a weight) when it bounds a ratio; `max_ms` alone is a hard limit.
fn is_judged(g: &Gate) -> bool {
    g.max_ratio.is_some() || g.min_ratio.is_some()
}

/// The sum of the default weights of the judged gates and feedback metrics, which the
/// weights are renormalized by.
fn judged_weight_total(spec: &JudgeSpec) -> f64 {
    spec.gates
        .iter()
        .filter(|g| is_judged(g))
        .map(|g| default_weight(g.metric))
        .sum::<f64>()
        + spec.feedback.len() as f64 * default_weight(Metric::Feedback)
}

/// A policy gate's process, weighted by its share of `total`.
fn metric_gate(g: &Gate, total: f64) -> JudgedGate {
    JudgedGate {
        metric: g.metric,
        weight: if is_judged(g) && total > 0.0 {
            default_weight(g.metric) / total
        } else {
            0.0
        },
        max_ms: g.max_ms,
        process: if g.metric.is_binary() {
            Process::Binary {
                theta_tol: g.max_ratio.unwrap_or(1.0),
                counts: CountProcess::default(),
            }
        } else {
            Process::Continuous(Box::new(ContinuousGate::new(
                g.max_ratio,
                g.min_ratio,
                g.metric.is_time(),
            )))
        },
        feedback: None,
    }
}

/// One gate per declared feedback metric, with no tolerance: any harm in the bad
/// direction counts. A binary metric is judged like an error rate (a bad answer is the
/// bad value), a numeric one like a continuous metric on the log scale.
fn feedback_gate(f: &FeedbackMetric, total: f64) -> JudgedGate {
    let process = match f.kind {
        FeedbackKind::Binary => Process::Binary {
            theta_tol: 1.0,
            counts: CountProcess::default(),
        },
        FeedbackKind::Numeric => {
            let (up, down) = if f.higher_is_better {
                (None, Some(1.0))
            } else {
                (Some(1.0), None)
            };
            Process::Continuous(Box::new(ContinuousGate::new(up, down, false)))
        }
    };
    JudgedGate {
        metric: Metric::Feedback,
        weight: default_weight(Metric::Feedback) / total,
        max_ms: None,
        process,
        feedback: Some(FeedbackGate {
            name: f.name.clone(),
            higher_is_better: f.higher_is_better,
        }),
    }
}

/// The per-unit processes of a sticky rollout, one per gate (off for feedback gates and
/// for gates that are only a hard limit).
fn unit_book(spec: &JudgeSpec, gates: &[JudgedGate]) -> UnitBook {
    UnitBook::new(
        gates
            .iter()
            .map(|g| match (&g.process, &g.feedback) {
                (_, Some(_)) => UnitGate::Off,
                (Process::Binary { theta_tol, .. }, None) => UnitGate::binary(*theta_tol),
                (Process::Continuous(c), None) if c.is_judged() => {
                    let gate = spec.gates.iter().find(|x| x.metric == g.metric);
                    UnitGate::continuous(
                        gate.and_then(|x| x.max_ratio),
                        gate.and_then(|x| x.min_ratio),
                        g.metric.is_time(),
                    )
                }
                _ => UnitGate::Off,
            })
            .collect(),
    )
}

/// Why a canary p95 above a hard limit is the canary's own fault, or `None` when it is not.
/// Like the kill switch, a hard limit compares the arms: when stable is over the limit too
/// (a slow provider), only a canary twice as slow as stable is the canary's own fault.
fn hard_limit_cause(stable_p95: Option<f64>, limit: f64, canary_p95: f64) -> Option<String> {
    match stable_p95 {
        None => Some("no stable requests to compare with".to_string()),
        Some(s) if s <= limit => Some(format!("stable p95 is {s:.0} ms")),
        Some(s) if canary_p95 >= 2.0 * s => Some(format!(
            "twice stable's p95 of {s:.0} ms over the same period"
        )),
        Some(_) => None,
    }
}

/// The statistical evidence at one look.
#[derive(Clone, Copy)]
struct Evidence<'a> {
    /// Each gate's e-value.
    e: &'a [f64],
    /// Their weighted average.
    e_global: f64,
    /// 1/α: the judge reverts when `e_global` reaches it.
    threshold: f64,
}

/// The judge's running state for one rollout; serializable so it survives a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Judge {
    alpha: f64,
    gates: Vec<JudgedGate>,
    kill: Option<KillWindow>,
    srm: Srm,
    canary_requests: u64,
    stable_requests: u64,
    /// Sticky rollouts: the per-unit processes that replace the per-request e-values
    /// (module `units`). The per-request processes still run for effects and reports.
    #[serde(default)]
    units: Option<UnitBook>,
}

impl Judge {
    /// A judge with no evidence yet, for the gates and feedback metrics `spec` names.
    pub(crate) fn new(spec: &JudgeSpec) -> Self {
        let total = judged_weight_total(spec);
        let mut gates: Vec<JudgedGate> = spec.gates.iter().map(|g| metric_gate(g, total)).collect();
        gates.extend(spec.feedback.iter().map(|f| feedback_gate(f, total)));
        let units = (!spec.per_request_units).then(|| unit_book(spec, &gates));
        Judge {
            alpha: spec.alpha,
            units,
            gates,
            kill: spec.kill_switch.as_ref().map(|k| {
                KillWindow::new(k.error_rate, k.min_requests, k.window.as_millis() as i64)
            }),
            srm: Srm::new(spec.per_request_units),
            canary_requests: 0,
            stable_requests: 0,
        }
    }

    /// A request was assigned to `arm` by randomization at canary probability `w` at
    /// `at_ms` (the same `at_ms` and `w` its observation will carry). With these the SRM
    /// guard counts a request as lost only once it is [`guards::OVERDUE_MS`] overdue
    /// and tests it against its own `w`.
    pub(crate) fn note_assignment(&mut self, arm: Arm, w: f64, at_ms: i64) {
        self.srm.assigned_at(arm == Arm::Canary, w, at_ms);
    }

    /// A measured request.
    pub(crate) fn observe(&mut self, obs: &Observation) {
        let canary = obs.arm == Arm::Canary;
        if let Some(kill) = &mut self.kill {
            kill.observe(obs.at_ms, canary, obs.error);
        }
        if canary {
            self.canary_requests += 1;
        } else {
            self.stable_requests += 1;
        }
        if obs.randomized {
            self.srm.measured_at(canary, obs.w, obs.at_ms);
            if let Some(book) = &mut self.units {
                book.tick(obs.at_ms);
                let inputs: Vec<Input> = self
                    .gates
                    .iter()
                    .map(|g| match value_of(g.metric, obs) {
                        None => Input::None,
                        Some(v) if g.metric.is_binary() => Input::Bad(v > 0.5),
                        Some(v) => Input::Value(v),
                    })
                    .collect();
                book.observe(obs.unit, obs.at_ms, canary, obs.w, &inputs);
            }
        }
        for gate in &mut self.gates {
            match &mut gate.process {
                Process::Binary { counts, .. } => {
                    // No `advance_to(obs.at_ms)` here: requests end (and arrive) in an
                    // order that can depend on their arm, so a restart begun by an
                    // observation's own time would not be a stopping time. Looks
                    // (`tick`) carry the controller's clock instead.
                    if obs.randomized
                        && let Some(bad) = value_of(gate.metric, obs)
                    {
                        counts.observe(canary, obs.w, bad > 0.5);
                    }
                }
                Process::Continuous(c) => {
                    if canary && gate.metric.is_time() {
                        let any = match gate.metric {
                            Metric::LatencyP95 => Some(obs.latency_ms),
                            _ => obs.ttft_ms,
                        };
                        if let Some(y) = any {
                            c.observe_canary_any(y);
                        }
                    }
                    if obs.randomized
                        && let Some(y) = value_of(gate.metric, obs)
                    {
                        c.observe(canary, obs.w, y);
                    }
                }
            }
        }
    }

    /// Feedback on a request (`true` = 1, `false` = 0 for binary metrics), joined to the arm
    /// and canary probability the request was assigned with. Only randomized requests are
    /// judged, each request at most once per metric (the caller sees to that).
    pub(crate) fn observe_feedback(
        &mut self,
        metric: &str,
        arm: Arm,
        w: f64,
        randomized: bool,
        value: f64,
    ) {
        if !randomized {
            return;
        }
        let canary = arm == Arm::Canary;
        for gate in &mut self.gates {
            let Some(f) = &gate.feedback else { continue };
            if f.name != metric {
                continue;
            }
            match &mut gate.process {
                Process::Binary { counts, .. } => {
                    let high = value >= 0.5;
                    counts.observe(canary, w, high != f.higher_is_better);
                }
                // The log scale needs a positive value: ratings and amounts are.
                Process::Continuous(c) => c.observe(canary, w, value.max(1e-9)),
            }
        }
    }

    /// Moves the judge's clock to `now_ms`: per-unit segments that have come of age are
    /// settled (sticky rollouts) and the binary gates' restarts that are due begin. Call
    /// before each look, with the controller's clock; observations move only the units'.
    pub(crate) fn tick(&mut self, now_ms: i64) {
        self.srm.fold(now_ms);
        for gate in &mut self.gates {
            if let Process::Binary { counts, .. } = &mut gate.process {
                counts.advance_to(now_ms);
            }
        }
        if let Some(book) = &mut self.units {
            book.tick(now_ms);
        }
    }

    /// Each gate's e-value: per unit for sticky rollouts, per request otherwise.
    fn gate_e_values(&self) -> Vec<f64> {
        self.gates
            .iter()
            .enumerate()
            .map(|(i, g)| match self.units.as_ref().map(|b| &b.gates[i]) {
                Some(UnitGate::Off) | None => g.e_value(),
                Some(u) => u.e_value(),
            })
            .collect()
    }

    /// The verdict now.
    pub(crate) fn report(&self, now_ms: i64) -> JudgeReport {
        self.report_inner(now_ms, true)
    }

    /// The same verdicts as [`Judge::report`] without the confidence intervals, which cost
    /// a few thousand e-value evaluations: for the simulator's millions of looks.
    pub(crate) fn look(&self, now_ms: i64) -> JudgeReport {
        self.report_inner(now_ms, false)
    }

    fn report_inner(&self, now_ms: i64, with_ci: bool) -> JudgeReport {
        let threshold = 1.0 / self.alpha;
        let e = self.gate_e_values();
        let e_global: f64 = self.gates.iter().zip(&e).map(|(g, e)| g.weight * e).sum();
        let mut reasons = Vec::new();
        let kill = self
            .kill
            .as_ref()
            .and_then(|k| k.fires(now_ms).map(|f| (k, f)));
        if let Some((k, fire)) = kill {
            reasons.push(fire.describe(k.window_ms, k.error_rate));
        }
        let hard_failed = self.hard_limits(&mut reasons);
        let evidence = Evidence {
            e: &e,
            e_global,
            threshold,
        };
        let failed = self.failed_gates(&evidence, hard_failed, &mut reasons);
        let gates = self
            .gates
            .iter()
            .zip(&e)
            .zip(&failed)
            .map(|((g, &e_value), &failed)| self.gate_report(g, e_value, failed, with_ci))
            .collect();
        JudgeReport {
            at_ms: now_ms,
            alpha: self.alpha,
            e_global,
            threshold,
            revert: !reasons.is_empty(),
            reasons,
            kill_switch_fired: kill.is_some(),
            kill_cause: kill.map(|(_, f)| f.cause),
            gates,
            srm: self.srm_report(),
            units: self.units.as_ref().map(|b| UnitsReport {
                open: b.open_units() as u64,
                settled: b.settled,
                settled_canary: b.settled_canary,
            }),
            canary_requests: self.canary_requests,
            stable_requests: self.stable_requests,
        }
    }

    /// Which gates' hard limits (`max_ms`) fired, each with its reason added to `reasons`.
    fn hard_limits(&self, reasons: &mut Vec<String>) -> Vec<bool> {
        let mut hard_failed = vec![false; self.gates.len()];
        for (i, gate) in self.gates.iter().enumerate() {
            let (Some(limit), Process::Continuous(c)) = (gate.max_ms, &gate.process) else {
                continue;
            };
            if c.canary_recent() < HARD_LIMIT_MIN_CANARY {
                continue;
            }
            let (stable_p95, canary_p95) = c.p95s();
            if let Some(p95) = canary_p95
                && p95 > limit
                && let Some(why) = hard_limit_cause(stable_p95, limit, p95)
            {
                hard_failed[i] = true;
                reasons.push(format!(
                    "{}: canary p95 {p95:.0} ms over the last {} canary requests is above the hard limit {limit:.0} ms ({why})",
                    gate.metric.key(),
                    c.canary_recent()
                ));
            }
        }
        hard_failed
    }

    /// Which gates fail. A gate fails when its own share crosses 1/α (weighted Bonferroni
    /// inside the average); when only the sum crosses, the largest share is named as the
    /// cause, and the judge's reason is added to `reasons`.
    fn failed_gates(
        &self,
        evidence: &Evidence,
        hard_failed: Vec<bool>,
        reasons: &mut Vec<String>,
    ) -> Vec<bool> {
        let Evidence {
            e,
            e_global,
            threshold,
        } = *evidence;
        let mut failed: Vec<bool> = self
            .gates
            .iter()
            .zip(e)
            .enumerate()
            .map(|(i, (g, e))| hard_failed[i] || (g.weight > 0.0 && g.weight * e >= threshold))
            .collect();
        if e_global < threshold {
            return failed;
        }
        let cause = self
            .gates
            .iter()
            .zip(e)
            .enumerate()
            .max_by(|a, b| (a.1.0.weight * a.1.1).total_cmp(&(b.1.0.weight * b.1.1)))
            .map(|(i, _)| i);
        if let Some(i) = cause {
            failed[i] = true;
        }
        let named: Vec<String> = self
            .gates
            .iter()
            .zip(e)
            .filter(|(g, e)| g.weight * **e >= 0.05 * e_global)
            .map(|(g, e)| {
                format!(
                    "{} {:.0} %",
                    g.metric.key(),
                    100.0 * g.weight * e / e_global
                )
            })
            .collect();
        reasons.push(format!(
            "judge: evidence of harm E = {e_global:.1} ≥ 1/α = {threshold:.0} (shares: {})",
            named.join(", ")
        ));
        failed
    }

    fn srm_report(&self) -> SrmReport {
        let srm_e = self.srm.e_value();
        SrmReport {
            assigned_stable: self.srm.assigned_stable,
            assigned_canary: self.srm.assigned_canary,
            measured_stable: self.srm.measured_stable,
            measured_canary: self.srm.measured_canary,
            lost_canary: self.srm.lost_counts().0,
            lost_stable: self.srm.lost_counts().1,
            e_value: srm_e,
            broken: srm_e >= 1.0 / ALPHA_SRM,
        }
    }

    fn gate_report(&self, g: &JudgedGate, e_value: f64, failed: bool, with_ci: bool) -> GateReport {
        let (n_stable, n_canary, effect, ci, stable_value, canary_value) = match &g.process {
            Process::Binary { counts, .. } => {
                let rate = |bad: u64, n: u64| (n > 0).then(|| bad as f64 / n as f64);
                (
                    counts.n_stable,
                    counts.n_canary,
                    counts.ratio_estimate(),
                    if with_ci {
                        counts.ratio_ci(self.alpha)
                    } else {
                        None
                    },
                    rate(counts.bad_stable, counts.n_stable),
                    rate(counts.bad_canary, counts.n_canary),
                )
            }
            Process::Continuous(c) => {
                let (stable_value, canary_value) = if g.metric.is_time() {
                    c.p95s()
                } else {
                    let mean = |m: &continuous::Moments| (m.n > 0).then(|| m.mean());
                    (mean(&c.raw_stable), mean(&c.raw_canary))
                };
                (
                    c.raw_stable.n,
                    c.raw_canary.n,
                    c.effect(),
                    if with_ci {
                        c.effect_ci(self.alpha)
                    } else {
                        None
                    },
                    stable_value,
                    canary_value,
                )
            }
        };
        let verdict = if failed {
            GateVerdict::Fail
        } else if n_stable >= MIN_PER_ARM_FOR_PASS && n_canary >= MIN_PER_ARM_FOR_PASS {
            GateVerdict::Pass
        } else {
            GateVerdict::NotYet
        };
        GateReport {
            feedback: g.feedback.as_ref().map(|f| f.name.clone()),
            gate: g.metric,
            verdict,
            e_value,
            weight: g.weight,
            effect,
            ci,
            stable_value,
            canary_value,
            n_stable,
            n_canary,
        }
    }
}

#[cfg(test)]
mod tests;
