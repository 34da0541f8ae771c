//! The rollout state machine: pure, driven by the judge's reports and operator commands.
//! (Interface fixed; bodies to be written.)

use serde::{Deserialize, Serialize};

use crate::judge::JudgeReport;
use crate::rollout::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Progressing, Self::Paused, Self::Promoted, Self::RolledBack, Self::Aborted]
            .into_iter()
            .find(|x| x.as_str() == s)
    }

    /// Live rollouts route traffic to a canary; ended ones never again.
    pub fn is_live(self) -> bool {
        matches!(self, RolloutState::Progressing | RolloutState::Paused)
    }
}

/// Where a rollout stands: everything the router and a restart need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub state: RolloutState,
    /// Index into `policy.steps`; `steps.len()` once promoted.
    pub step: usize,
    /// Canary weight for randomized traffic now, in basis points.
    pub weight_bp: u32,
    pub step_started_ms: i64,
    /// The step ran past `max_step_hold` undecided: holding and waiting for an operator.
    pub inconclusive: bool,
}

/// What the machine decided at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Stay where we are; `why` says what is missing (hold time, requests, evidence).
    Hold { why: String },
    Advance { to_step: usize, weight_bp: u32 },
    Promote,
    Revert { reasons: Vec<String> },
    /// Undecided past `max_step_hold` (or the design is broken): hold and notify, once.
    Inconclusive { why: String },
}

impl Position {
    pub fn start(policy: &Policy, now_ms: i64) -> Self {
        let _ = (policy, now_ms);
        unimplemented!("start")
    }

    /// The judge's look at `now_ms`, with the canary requests measured in the current step.
    pub fn decide(&self, policy: &Policy, report: &JudgeReport, canary_requests_in_step: u64, now_ms: i64) -> Decision {
        let _ = (policy, report, canary_requests_in_step, now_ms);
        unimplemented!("decide")
    }

    /// The position after `decision` (Hold leaves it as it is).
    pub fn apply(&self, policy: &Policy, decision: &Decision, now_ms: i64) -> Position {
        let _ = (policy, decision, now_ms);
        unimplemented!("apply")
    }
}
