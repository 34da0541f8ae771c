//! The rollout state machine: pure. In: the current [`Position`], the policy, the judge's
//! report and the canary requests measured in the step. Out: a [`Decision`], and the
//! next `Position` once the caller has stored the decision. Operator commands are the
//! `paused` / `resumed` / `promoted` / `aborted` helpers.
//!
//! Rules, in order: an ended rollout only holds; a revert from the judge always wins, even
//! when paused (the kill switch and statistical failure must not wait for an operator);
//! a broken design (sample-ratio mismatch) is inconclusive and never advances; paused never
//! advances; a step advances (or, after the last step, promotes) only when its hold time has
//! passed and it has served its minimum canary requests; a step undecided past
//! `max_step_hold` turns inconclusive once and then waits for an operator.

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
        [
            Self::Progressing,
            Self::Paused,
            Self::Promoted,
            Self::RolledBack,
            Self::Aborted,
        ]
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
    Hold {
        why: String,
    },
    Advance {
        to_step: usize,
        weight_bp: u32,
    },
    Promote,
    Revert {
        reasons: Vec<String>,
    },
    /// Undecided past `max_step_hold` (or the design is broken): hold and notify, once.
    Inconclusive {
        why: String,
    },
}

impl Position {
    pub fn start(policy: &Policy, now_ms: i64) -> Self {
        Position {
            state: RolloutState::Progressing,
            step: 0,
            weight_bp: policy.steps.first().map_or(0, |s| s.weight_bp),
            step_started_ms: now_ms,
            inconclusive: false,
        }
    }

    /// The judge's look at `now_ms`, with the canary requests measured in the current step.
    pub fn decide(
        &self,
        policy: &Policy,
        report: &JudgeReport,
        canary_requests_in_step: u64,
        now_ms: i64,
    ) -> Decision {
        if !self.state.is_live() {
            return Decision::Hold {
                why: format!("the rollout has ended ({})", self.state.as_str()),
            };
        }
        if report.revert {
            return Decision::Revert {
                reasons: report.reasons.clone(),
            };
        }
        if report.srm.broken {
            let why = format!(
                "sample-ratio mismatch: canary records measured {}/{} assigned, stable {}/{} \
                 (e = {:.0}); the judge's design is broken and it will not decide",
                report.srm.measured_canary,
                report.srm.assigned_canary,
                report.srm.measured_stable,
                report.srm.assigned_stable,
                report.srm.e_value
            );
            return self.inconclusive_once(why);
        }
        if self.state == RolloutState::Paused {
            return Decision::Hold {
                why: "paused by an operator".into(),
            };
        }
        if self.inconclusive {
            return Decision::Hold {
                why: "inconclusive: waiting for an operator to promote, resume or abort".into(),
            };
        }
        let Some(step) = policy.steps.get(self.step) else {
            return Decision::Promote;
        };
        let elapsed_ms = (now_ms - self.step_started_ms).max(0) as u128;
        let hold_met = elapsed_ms >= step.hold.as_millis();
        let requests_met = canary_requests_in_step >= step.min_requests;
        if hold_met && requests_met {
            return match policy.steps.get(self.step + 1) {
                Some(next) => Decision::Advance {
                    to_step: self.step + 1,
                    weight_bp: next.weight_bp.max(self.weight_bp),
                },
                None => Decision::Promote,
            };
        }
        let missing = format!(
            "step {} held {} of {}, {} of {} canary requests",
            self.step,
            fmt_ms(elapsed_ms),
            fmt_ms(step.hold.as_millis()),
            canary_requests_in_step,
            step.min_requests
        );
        if elapsed_ms >= policy.max_step_hold.as_millis() {
            return self.inconclusive_once(format!(
                "undecided after max_step_hold ({}): {missing}",
                fmt_ms(policy.max_step_hold.as_millis())
            ));
        }
        Decision::Hold { why: missing }
    }

    /// The position after `decision` (Hold leaves it as it is).
    pub fn apply(&self, policy: &Policy, decision: &Decision, now_ms: i64) -> Position {
        match decision {
            Decision::Hold { .. } => self.clone(),
            Decision::Inconclusive { .. } => Position {
                inconclusive: true,
                ..self.clone()
            },
            Decision::Advance { to_step, weight_bp } => Position {
                state: self.state,
                step: *to_step,
                // Weights only rise inside a rollout, so cohorts stay nested.
                weight_bp: (*weight_bp).max(self.weight_bp),
                step_started_ms: now_ms,
                inconclusive: false,
            },
            Decision::Promote => self.promoted(policy, now_ms),
            Decision::Revert { .. } => Position {
                state: RolloutState::RolledBack,
                weight_bp: 0,
                inconclusive: false,
                ..self.clone()
            },
        }
    }

    /// An operator paused the rollout: the weight holds; reverts still happen.
    pub fn paused(&self) -> Position {
        Position {
            state: RolloutState::Paused,
            ..self.clone()
        }
    }

    /// An operator resumed (from paused, or from an inconclusive step): the step's clock
    /// restarts at `now_ms`, so its hold and `max_step_hold` count from here.
    pub fn resumed(&self, now_ms: i64) -> Position {
        Position {
            state: RolloutState::Progressing,
            step_started_ms: now_ms,
            inconclusive: false,
            ..self.clone()
        }
    }

    /// The canary takes all traffic and becomes the route's stable version.
    pub fn promoted(&self, policy: &Policy, now_ms: i64) -> Position {
        Position {
            state: RolloutState::Promoted,
            step: policy.steps.len(),
            weight_bp: 10_000,
            step_started_ms: now_ms,
            inconclusive: false,
        }
    }

    /// An operator ended the rollout: traffic back on stable.
    pub fn aborted(&self) -> Position {
        Position {
            state: RolloutState::Aborted,
            weight_bp: 0,
            inconclusive: false,
            ..self.clone()
        }
    }

    fn inconclusive_once(&self, why: String) -> Decision {
        if self.inconclusive {
            Decision::Hold { why }
        } else {
            Decision::Inconclusive { why }
        }
    }
}

fn fmt_ms(ms: u128) -> String {
    humantime::format_duration(std::time::Duration::from_secs((ms / 1000) as u64)).to_string()
}
