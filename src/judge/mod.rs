//! The judge: design-based e-processes per gate over the arm labels given the outcomes
//! (research note §6), a weighted average across gates, a kill switch and an SRM guard.
//! Pure: no I/O, no clock (time comes in as milliseconds).
//! (Interface fixed; bodies to be written.)

use serde::{Deserialize, Serialize};

use crate::resolve::Arm;
use crate::rollout::policy::{Metric, Policy};

/// One measured request as the judge sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub at_ms: i64,
    pub arm: Arm,
    /// The canary probability in force when the request was assigned.
    pub w: f64,
    /// False for pinned / targeted requests: those are reported, never judged.
    pub randomized: bool,
    /// An error attributable to the version (`Outcome::is_error`).
    pub error: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    /// Prompt + completion tokens.
    pub tokens: f64,
    pub cost_usd: f64,
    pub response_chars: f64,
    /// `Some(failed)` when the request asked for a schema, `None` otherwise.
    pub schema_failed: Option<bool>,
    pub guardrail_blocked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateVerdict {
    /// Evidence of harm beyond the tolerance: revert.
    Fail,
    /// Enough data and no evidence of harm.
    Pass,
    /// Not enough data to say.
    NotYet,
}

/// One gate's evidence at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub gate: Metric,
    pub verdict: GateVerdict,
    /// The gate's e-value (mixture over its alternatives; the largest of its one-sided parts).
    pub e_value: f64,
    /// Its weight π_k in the global average.
    pub weight: f64,
    /// The canary's effect estimate: a rate ratio (binary gates) or a ratio of geometric
    /// means (continuous gates), canary / stable.
    pub effect: Option<f64>,
    /// Confidence interval (1 − α) for `effect`, when there is one.
    pub ci: Option<(f64, f64)>,
    pub stable_value: Option<f64>,
    pub canary_value: Option<f64>,
    /// Randomized observations this gate used, per arm.
    pub n_stable: u64,
    pub n_canary: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmReport {
    pub assigned_stable: u64,
    pub assigned_canary: u64,
    pub measured_stable: u64,
    pub measured_canary: u64,
    pub e_value: f64,
    /// The design is broken (e ≥ 1/α_srm): the verdict must be inconclusive.
    pub broken: bool,
}

/// The judge's word at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    pub at_ms: i64,
    pub alpha: f64,
    /// Σ π_k E_k.
    pub e_global: f64,
    /// 1/α.
    pub threshold: f64,
    /// E_global ≥ 1/α, a hard limit crossed, or the kill switch fired.
    pub revert: bool,
    /// Why, in words, one line per cause (empty when not reverting).
    pub reasons: Vec<String>,
    pub kill_switch_fired: bool,
    pub gates: Vec<GateReport>,
    pub srm: SrmReport,
    /// Observations seen, per arm (randomized and not).
    pub canary_requests: u64,
    pub stable_requests: u64,
}

/// The judge's running state for one rollout; serializable so it survives a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judge {
    // fields to be written
}

impl Judge {
    pub fn new(policy: &Policy) -> Self {
        let _ = policy;
        unimplemented!("judge")
    }

    /// A request was assigned to `arm` by randomization (for the SRM guard).
    pub fn note_assigned(&mut self, arm: Arm) {
        let _ = arm;
    }

    /// A measured request.
    pub fn observe(&mut self, obs: &Observation) {
        let _ = obs;
    }

    /// The verdict now.
    pub fn report(&self, now_ms: i64) -> JudgeReport {
        let _ = now_ms;
        unimplemented!("judge report")
    }
}
