//! The feed from the request path to a rollout's judge: assignment counters (for the
//! sample-ratio guard), per-arm live stats, and a bounded queue of observations.
//!
//! The request path only adds to atomics and `try_send`s; a full queue drops the
//! observation and counts it, which the judge's sample-ratio guard then sees as lost data.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::judge::Observation;
use crate::measure::aggregate::VersionStats;
use crate::types::{Arm, Outcome, Record};

/// Observations buffered per rollout between two looks of the judge.
pub const OBSERVATION_QUEUE: usize = 65_536;

pub struct RolloutTap {
    pub rollout_id: Arc<str>,
    tx: mpsc::Sender<Observation>,
    assigned: [AtomicU64; 2],
    dropped: AtomicU64,
    /// Live figures per arm (index by `Arm::index`), since this process took the rollout up.
    pub arms: [Arc<VersionStats>; 2],
}

impl RolloutTap {
    pub fn new(rollout_id: &str) -> (Arc<Self>, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(OBSERVATION_QUEUE);
        let tap = Self {
            rollout_id: rollout_id.into(),
            tx,
            assigned: Default::default(),
            dropped: AtomicU64::new(0),
            arms: Default::default(),
        };
        (Arc::new(tap), rx)
    }

    pub fn note_assigned(&self, arm: Arm) {
        self.assigned[arm.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Randomized assignments so far, per arm.
    pub fn assigned(&self) -> [u64; 2] {
        [0, 1].map(|i| self.assigned[i].load(Ordering::Relaxed))
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A finished request of this rollout.
    pub fn observe(&self, record: &Record) {
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
            // TODO(lead): the sticky unit's hash once `Record` carries it (judge::units).
            unit: None,
        };
        if self.tx.try_send(observation).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
