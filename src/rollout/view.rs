//! How a rollout reads in the admin API: its stored row, and while it runs in this process
//! its per-arm figures, pins, the judge's last report and decision, shadow and feedback.
//!
//! [`RolloutView`] is the body of `GET /admin/v1/rollouts/{id}` (and of every rollout
//! command's answer); the fields that only a running process knows are absent for a rollout
//! that ended elsewhere (or before a restart).

use std::collections::BTreeMap;

use serde::Serialize;

use super::machine::{Decision, Position};
use crate::judge::JudgeReport;
use crate::measure::aggregate::StatsSummary;
use crate::shadow::ShadowCounters;
use crate::store::{ArmTotals, RolloutRow};
use crate::types::{Arm, RolloutState};

/// One rollout as the admin API shows it: its stored row, and while it is live in this
/// process its arms, pins, the judge's last report and decision, shadow and feedback
/// counters.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Rollout)]
pub(crate) struct RolloutView {
    #[schema(pattern = "^ro_")]
    pub(crate) id: String,
    pub(crate) route: String,
    /// The stable version's name.
    pub(crate) stable: String,
    /// The canary version's name.
    pub(crate) canary: String,
    /// The policy's name.
    pub(crate) policy: String,
    pub(crate) state: RolloutState,
    /// Index of the current step; `steps` once promoted.
    pub(crate) step: usize,
    /// How many steps the policy has.
    pub(crate) steps: usize,
    /// Canary weight of randomized traffic, in percent (0–100).
    pub(crate) weight: f64,
    /// The step ran past `max_step_hold` undecided and waits for an operator.
    pub(crate) inconclusive: bool,
    /// Unix time in milliseconds.
    pub(crate) started_at_ms: i64,
    /// Unix time in milliseconds.
    pub(crate) step_started_at_ms: i64,
    /// Unix time in milliseconds.
    pub(crate) updated_at_ms: i64,
    /// `null` while the rollout is live.
    #[schema(required = true)]
    pub(crate) ended_at_ms: Option<i64>,
    /// The judge's last report, `null` before the first look.
    #[schema(required = true, value_type = Option<JudgeReport>)]
    pub(crate) judge: Option<JudgeView>,
    /// Per-arm figures since this process took the rollout up (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) arms: Option<ArmsView>,
    /// Workspace → pinned arm (absent when the rollout is not known to this process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pins: Option<BTreeMap<String, Arm>>,
    /// What only a live rollout has.
    #[serde(flatten)]
    #[schema(value_type = LiveView)]
    pub(crate) live: Option<LiveView>,
    /// In a cluster: every replica's figures, summed from what they shipped (`arms` are
    /// this replica's own). Absent for a single process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterFigures>,
}

/// A rollout's figures over every replica of a cluster.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct ClusterFigures {
    pub(crate) stable: ClusterArm,
    pub(crate) canary: ClusterArm,
    /// Requests of both arms.
    pub(crate) requests: i64,
    /// Observations replicas had to drop before shipping them (counted, never silent).
    pub(crate) observations_dropped: i64,
    /// Replicas that shipped any.
    pub(crate) replicas: i64,
    /// Replicas that left while the rollout was live without their closing batch (killed,
    /// crashed), as the judge last wrote it down.
    pub(crate) replicas_lost: Vec<String>,
    /// Observations estimated lost with them: per replica, its observations per batch (a
    /// moving average: one flush interval at its recent rate; the true loss is what it
    /// measured since its last flush).
    pub(crate) observations_lost_estimate: u64,
}

/// One arm over every replica.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct ClusterArm {
    pub(crate) requests: i64,
    pub(crate) errors: i64,
    /// Errors per request, 0 without requests.
    pub(crate) error_rate: f64,
    /// Milliseconds, 0 without requests.
    pub(crate) mean_latency_ms: f64,
}

impl ClusterFigures {
    /// Figures from the sums of every shipped batch, with the replicas lost and the
    /// observations estimated lost with them (as the judge's checkpoint has them).
    pub(crate) fn of(
        t: &ArmTotals,
        replicas_lost: Vec<String>,
        observations_lost_estimate: u64,
    ) -> Self {
        let arm = |i: usize| {
            let n = t.requests[i];
            let per = |x: f64| if n > 0 { x / n as f64 } else { 0.0 };
            ClusterArm {
                requests: n,
                errors: t.errors[i],
                error_rate: per(t.errors[i] as f64),
                mean_latency_ms: per(t.latency_ms_sum[i]),
            }
        };
        Self {
            stable: arm(0),
            canary: arm(1),
            requests: t.requests[0] + t.requests[1],
            observations_dropped: t.dropped,
            replicas: t.replicas,
            replicas_lost,
            observations_lost_estimate,
        }
    }
}

/// The judge's report: as this process holds it, or as the last checkpoint stored it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum JudgeView {
    Live(Box<JudgeReport>),
    /// Read back from the database as it was written (an older build's shape stays readable).
    Stored(serde_json::Value),
}

/// Both arms' figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ArmsView {
    pub(crate) stable: ArmView,
    pub(crate) canary: ArmView,
}

/// One arm: its version and its figures since the rollout was taken up here.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ArmFigures)]
pub(crate) struct ArmView {
    pub(crate) version: String,
    #[serde(flatten)]
    pub(crate) figures: StatsSummary,
}

/// The fields of a rollout live in this process (all absent otherwise, so none is
/// required in the document).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct LiveView {
    /// Randomized canary requests measured in the current step: what its `min_requests`
    /// counts (at a step without randomized traffic, `reported_…` is counted instead).
    #[schema(required = false)]
    pub(crate) canary_requests_in_step: u64,
    /// Canary requests of the current step that were not randomized (pinned, targeted,
    /// continuing a conversation): reported, never evidence.
    #[schema(required = false)]
    pub(crate) reported_canary_requests_in_step: u64,
    /// Observations the request path could not hand to the judge (its queue was full).
    #[schema(required = false)]
    pub(crate) observations_dropped: u64,
    pub(crate) last_decision: Option<Decision>,
    /// Null when the policy has no `[shadow]`.
    pub(crate) shadow: Option<ShadowCounters>,
    /// `metric/arm` → feedback received.
    #[schema(required = false)]
    pub(crate) feedback: BTreeMap<String, u64>,
    /// In a cluster, while the database is away: this replica's kill switch reverted the
    /// canary on its own (all its traffic goes to stable); the revert is written when the
    /// database returns. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reverted_locally: Option<LocalRevert>,
}

/// A kill-switch revert applied by one replica while the database was away.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct LocalRevert {
    /// When it was applied here (ms since the epoch).
    pub(crate) at_ms: i64,
    /// The kill switch's finding, as the event will say it.
    pub(crate) reason: String,
    /// The canary's (requests, errors) and stable's in the window, on this replica alone.
    pub(crate) canary: (u64, u64),
    pub(crate) stable: (u64, u64),
    /// The position it reverted from (as this replica last read it). The revert stands only
    /// while the rollout is still there: once the database shows it elsewhere (an operator
    /// or the judge moved it on), the revert was decided on a state that is gone and is
    /// dropped unwritten.
    #[serde(skip)]
    pub(crate) from: Position,
}

/// What is kept of a rollout that ended in this process: its last arms and pins.
#[derive(Debug, Clone)]
pub(crate) struct EndedFigures {
    pub(crate) arms: Option<ArmsView>,
    pub(crate) pins: Option<BTreeMap<String, Arm>>,
}

/// A rollout from its stored row alone.
pub(crate) fn view_row(row: &RolloutRow) -> RolloutView {
    let judge = row
        .last_report
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .filter(|v| !v.is_null())
        .map(JudgeView::Stored);
    let steps = serde_json::from_str::<serde_json::Value>(&row.policy_json)
        .ok()
        .and_then(|p| p["steps"].as_array().map(Vec::len))
        .unwrap_or(0);
    RolloutView {
        id: row.id.clone(),
        route: row.route.clone(),
        stable: row.stable_version.clone(),
        canary: row.canary_version.clone(),
        policy: row.policy.clone(),
        state: row.position.state,
        step: row.position.step,
        steps,
        weight: f64::from(row.position.weight_bp) / 100.0,
        inconclusive: row.position.inconclusive,
        started_at_ms: row.started_at_ms,
        step_started_at_ms: row.position.step_started_ms,
        updated_at_ms: row.updated_at_ms,
        ended_at_ms: row.ended_at_ms,
        judge,
        arms: None,
        pins: None,
        live: None,
        cluster: None,
    }
}

impl EndedFigures {
    /// What is kept of `view` once its rollout has ended here.
    pub(crate) fn of(view: &RolloutView) -> Self {
        Self {
            arms: view.arms.clone(),
            pins: view.pins.clone(),
        }
    }
}
