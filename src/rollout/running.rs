//! A rollout live in this process, and the controller's in-memory state around it.
//!
//! The database holds the truth (position, pins, judge checkpoints); these hold what only a
//! running process has: the judge fed by the request path's tap, per-arm figures, the last
//! report and decision, shadow counters and feedback counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::feed::{RolloutTap, TapReceivers};
use super::machine::{Decision, InStep};
use super::policy::Policy;
use super::view::{
    ArmView, ArmsView, EndedFigures, JudgeView, LiveView, LocalRevert, RolloutView, view_row,
};
use crate::catalog::Catalog;
use crate::judge::guards::KillWindow;
use crate::judge::{Judge, JudgeReport, Observation};
use crate::shadow::RolloutShadow;
use crate::store::RolloutRow;
use crate::types::{Arm, now_ms};

/// A live rollout: its stored row, its policy and its judge, with what feeds them.
pub(crate) struct Running {
    pub(crate) row: RolloutRow,
    pub(crate) policy: Arc<Policy>,
    pub(crate) judge: Judge,
    /// Observations and randomized assignments from the request path.
    pub(crate) feed: TapReceivers,
    pub(crate) tap: Arc<RolloutTap>,
    /// Workspace → the arm it is pinned to.
    pub(crate) pins: BTreeMap<String, Arm>,
    /// Randomized canary requests measured since the current step began: the evidence a
    /// step's minimum counts.
    pub(crate) canary_in_step: u64,
    /// Canary requests of the step that were not randomized (pinned, targeted, continued
    /// conversations): reported, never evidence.
    pub(crate) reported_in_step: u64,
    pub(crate) last_look_ms: i64,
    pub(crate) last_report: Option<JudgeReport>,
    pub(crate) last_decision: Option<Decision>,
    pub(crate) shadow: Option<Arc<RolloutShadow>>,
    /// Feedback received, by `metric/arm`.
    pub(crate) feedback: BTreeMap<String, u64>,
    /// Cluster: the fence of this replica's judge lease on the rollout, while it holds one.
    /// Only the holder judges; every decision and checkpoint is written with this token.
    pub(crate) fence: Option<i64>,
    /// Cluster: the last shipped batch judged, per replica (stored with the checkpoint).
    pub(crate) cursor: BTreeMap<String, i64>,
    /// Cluster: what the judge knows of each replica's shipping (stored with the checkpoint).
    pub(crate) shippers: BTreeMap<String, Shipper>,
    /// Cluster: observations the tap dropped that were already reported in a shipped batch.
    pub(crate) dropped_seen: u64,
    /// Cluster: when to take or renew the judge lease next (ms).
    pub(crate) next_lead_ms: i64,
    /// Cluster: the kill switch's window over this replica's own requests (fed as they are
    /// shipped), which it applies on its own only while the database is away.
    pub(crate) own_kill: Option<KillWindow>,
    /// Cluster: a revert this replica's kill switch applied while the database was away,
    /// not yet written. The routing table leaves the rollout out (all traffic on stable)
    /// until it is written or the rollout is found ended or moved on elsewhere.
    pub(crate) local_revert: Option<LocalRevert>,
}

/// What the judge stores beside its state so that a successor resumes exactly where it
/// stopped: the last batch judged per replica, and the canary requests counted in the
/// current step (JSON in `rollouts.judge_cursor`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct JudgeCursor {
    /// Replica id → the `seq` of its last batch judged.
    pub(crate) cursor: BTreeMap<String, i64>,
    /// Replica id → what its batches said of it.
    #[serde(default)]
    pub(crate) shippers: BTreeMap<String, Shipper>,
    /// Randomized canary requests counted in the current step.
    pub(crate) canary_in_step: u64,
    /// Canary requests of the step that were not randomized (absent from a checkpoint
    /// written before they were told apart).
    #[serde(default)]
    pub(crate) reported_in_step: u64,
    /// The step `canary_in_step` counts in.
    pub(crate) step: usize,
}

/// One replica's shipping as the judge saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Shipper {
    /// Observations per batch, a moving average (weight 0.2 on the newest batch): one
    /// flush interval's worth at its recent rate. A last batch alone says too little: at a
    /// low rate it often carries the assignments of requests still running and no
    /// observation.
    pub(crate) per_batch: f64,
    /// Its closing batch arrived: it stopped cleanly, nothing was lost.
    pub(crate) closed: bool,
    /// When the judge first found it out of the live set (ms), if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) absent_since_ms: Option<i64>,
    /// What was counted lost for it (its estimate), once it was counted lost; taken
    /// back if it ships again (it was late, not dead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lost: Option<u64>,
}

impl JudgeCursor {
    /// The replicas counted lost, and the observations estimated lost with them: the sum of
    /// their observations per batch (a moving average: one flush interval at their recent
    /// rate; the true loss is what each measured since its last flush).
    pub(crate) fn lost(&self) -> (Vec<String>, u64) {
        let lost = self
            .shippers
            .iter()
            .filter_map(|(id, s)| Some((id, s.lost?)));
        let estimate = lost.clone().map(|(_, n)| n).sum();
        (lost.map(|(id, _)| id.clone()).collect(), estimate)
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The controller's state: every live rollout, promoted stables, and the last figures of
/// rollouts that ended here. Guarded by a plain mutex that is never held across I/O.
#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) running: BTreeMap<String, Running>,
    /// Route → stable version set by a promotion (wins over the config).
    pub(crate) stables: BTreeMap<String, String>,
    /// The last per-arm figures and pins of rollouts that ended in this process (they are
    /// not stored), newest last.
    pub(crate) ended: Vec<(String, EndedFigures)>,
}

impl Running {
    /// A rollout taken up by this process, with a fresh feed from the request path.
    pub(crate) fn new(
        row: RolloutRow,
        policy: Arc<Policy>,
        judge: Judge,
        pins: BTreeMap<String, Arm>,
        catalog: &Catalog,
    ) -> Self {
        let (tap, feed) = RolloutTap::new(&row.id);
        let shadow = policy.shadow.clone().and_then(|config| {
            let to = match config.to {
                Arm::Canary => &row.canary_version,
                Arm::Stable => &row.stable_version,
            };
            let version = catalog.version(to)?.clone();
            Some(Arc::new(RolloutShadow::new(&row.id, config, version)))
        });
        let last_report = row
            .last_report
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        let own_kill = policy
            .kill_switch
            .as_ref()
            .map(|k| KillWindow::new(k.error_rate, k.min_requests, k.window.as_millis() as i64));
        Self {
            last_look_ms: now_ms(),
            row,
            policy,
            judge,
            feed,
            tap,
            pins,
            canary_in_step: 0,
            reported_in_step: 0,
            last_report,
            last_decision: None,
            shadow,
            feedback: BTreeMap::new(),
            fence: None,
            cursor: BTreeMap::new(),
            shippers: BTreeMap::new(),
            dropped_seen: 0,
            next_lead_ms: 0,
            own_kill,
            local_revert: None,
        }
    }

    /// The judge's cursor as a checkpoint stores it.
    pub(crate) fn judge_cursor(&self) -> JudgeCursor {
        JudgeCursor {
            cursor: self.cursor.clone(),
            shippers: self.shippers.clone(),
            canary_in_step: self.canary_in_step,
            reported_in_step: self.reported_in_step,
            step: self.row.position.step,
        }
    }

    /// The step's canary requests, as the state machine counts them.
    pub(crate) fn in_step(&self) -> InStep {
        InStep {
            randomized: self.canary_in_step,
            reported: self.reported_in_step,
        }
    }

    /// Counts `obs` toward the current step ([`InStep::count`]).
    pub(crate) fn count(&mut self, obs: &Observation) {
        let mut in_step = self.in_step();
        in_step.count(obs, self.row.position.step_started_ms);
        self.canary_in_step = in_step.randomized;
        self.reported_in_step = in_step.reported;
    }

    /// A new step (or a position read from elsewhere at another step): nothing counted yet.
    pub(crate) fn new_step(&mut self) {
        self.canary_in_step = 0;
        self.reported_in_step = 0;
    }

    /// The judge's state and last report as stored by a checkpoint (JSON text each).
    pub(crate) fn checkpoint(&self) -> (String, String) {
        let judge = serde_json::to_string(&self.judge).unwrap_or_default();
        let report = self
            .last_report
            .as_ref()
            .map(|x| serde_json::to_string(x).unwrap_or_default())
            .unwrap_or_default();
        (judge, report)
    }
}

/// The policy live rollout `row` runs under: the copy stored with it when it started, on
/// every replica and after every restart, so that an edited file applies to the next
/// rollout and never moves a live one. `file` is the policy file of the same name as this
/// process reads it now: logged when it differs, and used only for a row whose stored copy
/// cannot be read (written by an older build), with an error in the log. `None` when
/// neither can be had (also logged): the rollout's canary then gets no traffic here.
pub(crate) fn policy_of(row: &RolloutRow, file: Option<Arc<Policy>>) -> Option<Arc<Policy>> {
    match Policy::from_stored(&row.policy_json) {
        Ok(stored) => {
            if file.is_some_and(|f| *f != stored) {
                tracing::info!(rollout = %row.id, policy = %row.policy, "the policy file has changed since this rollout started; the rollout keeps the policy it started with (stored with it) and the edit applies to the next rollout");
            }
            Some(Arc::new(stored))
        }
        Err(e) => match file {
            Some(f) => {
                tracing::error!(rollout = %row.id, policy = %row.policy, error = %e, "the policy stored with this rollout cannot be read; judging it by the policy file as it is now");
                Some(f)
            }
            None => {
                tracing::error!(rollout = %row.id, policy = %row.policy, error = %e, "neither the policy stored with this rollout nor its policy file can be read; its canary gets no traffic here until the file is back");
                None
            }
        },
    }
}

/// An ended rollout: its stored row, with the arms' figures when it ended in this process.
pub(crate) fn view_ended(inner: &Inner, row: &RolloutRow) -> RolloutView {
    let mut v = view_row(row);
    if let Some((_, last)) = inner.ended.iter().find(|(id, _)| *id == row.id) {
        v.arms = last.arms.clone();
        v.pins = last.pins.clone();
    }
    v
}

/// A rollout live in this process.
pub(crate) fn view_running(r: &Running) -> RolloutView {
    let mut v = view_row(&r.row);
    let arm = |a: Arm, version: &str| ArmView {
        version: version.to_owned(),
        figures: r.tap.arms[a.index()].snapshot().summary(),
    };
    v.arms = Some(ArmsView {
        stable: arm(Arm::Stable, &r.row.stable_version),
        canary: arm(Arm::Canary, &r.row.canary_version),
    });
    v.pins = Some(r.pins.clone());
    v.judge = r
        .last_report
        .clone()
        .map(|rep| JudgeView::Live(Box::new(rep)));
    v.live = Some(LiveView {
        canary_requests_in_step: r.canary_in_step,
        reported_canary_requests_in_step: r.reported_in_step,
        observations_dropped: r.tap.dropped(),
        last_decision: r.last_decision.clone(),
        shadow: r.shadow.as_ref().map(|s| s.counters()),
        feedback: r.feedback.clone(),
        reverted_locally: r.local_revert.clone(),
    });
    v
}
