//! The feed from the request path to a rollout's judge: dated assignments (for the
//! sample-ratio guard), per-arm live stats, and a bounded queue of observations.
//!
//! The request path only adds to atomics and `try_send`s; a full queue drops the
//! observation and counts it, which the judge's sample-ratio guard then sees as lost data.
//! A dropped assignment only hides its request from the guard (it can never look lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::judge::Observation;
use crate::measure::aggregate::VersionStats;
use crate::types::{Arm, Outcome, Record};

/// Observations (and, separately, assignments) buffered per rollout between two looks of
/// the judge.
pub(crate) const OBSERVATION_QUEUE: usize = 65_536;

/// One randomized assignment, as the judge's sample-ratio guard needs it
/// (`Judge::note_assignment`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Assigned {
    pub(crate) arm: Arm,
    /// The canary probability it was drawn under.
    pub(crate) w: f64,
    /// When (ms since the epoch); its record carries the same `at_ms`.
    pub(crate) at_ms: i64,
}

/// The controller's ends of a tap: observations and assignments since the last look.
pub(crate) struct TapReceivers {
    pub(crate) observations: mpsc::Receiver<Observation>,
    pub(crate) assignments: mpsc::Receiver<Assigned>,
}

pub(crate) struct RolloutTap {
    pub(crate) rollout_id: Arc<str>,
    tx: mpsc::Sender<Observation>,
    assign_tx: mpsc::Sender<Assigned>,
    dropped: AtomicU64,
    /// Live figures per arm (index by `Arm::index`), since this process took the rollout up.
    pub(crate) arms: [Arc<VersionStats>; 2],
}

impl RolloutTap {
    pub(crate) fn new(rollout_id: &str) -> (Arc<Self>, TapReceivers) {
        let (tx, observations) = mpsc::channel(OBSERVATION_QUEUE);
        let (assign_tx, assignments) = mpsc::channel(OBSERVATION_QUEUE);
        let tap = Self {
            rollout_id: rollout_id.into(),
            tx,
            assign_tx,
            dropped: AtomicU64::new(0),
            arms: Default::default(),
        };
        (
            Arc::new(tap),
            TapReceivers {
                observations,
                assignments,
            },
        )
    }

    /// A randomized request was assigned to `arm` at canary probability `w` at `at_ms`.
    pub(crate) fn note_assignment(&self, arm: Arm, w: f64, at_ms: i64) {
        let _ = self.assign_tx.try_send(Assigned { arm, w, at_ms });
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A finished request of this rollout; `unit` is its sticky unit's hash (`None` when
    /// the request is its own unit).
    pub(crate) fn observe(&self, record: &Record, unit: Option<u64>) {
        self.arms[record.arm.index()].observe(record);
        // A client that hung up says nothing about the version, and its latency is cut short.
        if record.outcome == Outcome::ClientDisconnected {
            return;
        }
        let observation = Observation {
            at_ms: record.at_ms,
            arm: record.arm,
            w: record.w.unwrap_or(0.0),
            randomized: record.randomized,
            error: record.outcome.is_error(),
            latency_ms: record.latency_ms,
            ttft_ms: record.ttft_ms,
            tokens: (record.usage.prompt_tokens + record.usage.completion_tokens) as f64,
            cost_usd: record.cost_usd,
            response_chars: record.response_chars as f64,
            schema_failed: record.schema_failed,
            guardrail_blocked: record.guardrail_blocked,
            unit,
        };
        if self.tx.try_send(observation).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one shipped batch carries for the judge (the `observations` column, as JSON): the
/// replica's observations, and its randomized assignments dated to the second, which the
/// judging replica gives the SRM guard as if they had happened in its own process.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Shipment {
    pub(crate) observations: Vec<Observation>,
    pub(crate) assignments: Vec<AssignedCount>,
    /// The replica's last batch of a clean stop: whatever it measured has been shipped.
    /// A replica that stops heart-beating without one (SIGKILL, a crash) took up to one
    /// flush interval of observations with it, which the judge counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) closing: bool,
}

/// `count` requests assigned to `arm` at canary probability `w` in the second `at_ms`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct AssignedCount {
    pub(crate) arm: Arm,
    pub(crate) w: f64,
    pub(crate) at_ms: i64,
    pub(crate) count: u32,
}

impl Shipment {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a batch; a batch shipped before assignments were dated (a plain array of
    /// observations) is read with none.
    pub(crate) fn from_json(text: &str) -> Self {
        serde_json::from_str::<Shipment>(text)
            .or_else(|_| {
                serde_json::from_str::<Vec<Observation>>(text).map(|observations| Shipment {
                    observations,
                    assignments: Vec::new(),
                    closing: false,
                })
            })
            .unwrap_or_default()
    }
}
