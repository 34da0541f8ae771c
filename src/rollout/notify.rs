//! What a rollout tells the outside when it changes: the policy's webhook, and the event a
//! judge's decision is stored as.

use std::time::Duration;

use serde_json::json;

use super::machine::{Decision, Position};
use super::policy::Policy;
use super::running::Running;
use crate::judge::JudgeReport;
use crate::store::{Actor, NewEvent};
use crate::tasks::{Stage, Tasks};
use crate::types::now_ms;

const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts rollout events to the policy's webhook, in the background (awaited at shutdown).
pub(crate) struct Notifier {
    http: reqwest::Client,
    tasks: Tasks,
}

impl Notifier {
    /// # Errors
    /// The HTTP client cannot be built (no TLS provider).
    pub(crate) fn new(tasks: Tasks) -> reqwest::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .build()?,
            tasks,
        })
    }

    /// Posts `event` of `r` (as it stands after the event) to its policy's webhook, if any;
    /// a failed post is logged, never retried.
    pub(crate) fn send(&self, r: &Running, event: &NewEvent) {
        let Some(url) = r.policy.webhook.clone() else {
            return;
        };
        let body = json!({
            "rollout": r.row.id, "route": r.row.route, "stable": r.row.stable_version, "canary": r.row.canary_version,
            "event": event.kind, "actor": event.actor, "message": event.message,
            "state": r.row.position.state, "step": r.row.position.step, "weight": f64::from(r.row.position.weight_bp) / 100.0,
            "at_ms": now_ms(), "evidence": event.evidence,
        });
        let http = self.http.clone();
        self.tasks.spawn_job("webhook", Stage::Side, async move {
            if let Err(e) = http.post(&url).json(&body).send().await {
                tracing::warn!(url = %url, error = %e, "webhook failed");
            }
        });
    }
}

/// The event a judge's decision is stored as, with the decision and report as evidence.
pub(crate) fn decision_event(
    decision: &Decision,
    policy: &Policy,
    next: &Position,
    report: &JudgeReport,
) -> NewEvent {
    let weight = |bp: u32| format!("{} %", f64::from(bp) / 100.0);
    let (kind, message) = match decision {
        Decision::Advance { to_step, weight_bp } => (
            "advanced",
            format!(
                "step {} of {} passed; canary at {}",
                to_step,
                policy.steps.len(),
                weight(*weight_bp)
            ),
        ),
        Decision::Promote => (
            "promoted",
            "every step passed: the canary is the stable version now".to_owned(),
        ),
        Decision::Revert { reasons } => (
            "rolled_back",
            format!("rolled back: {}", reasons.join("; ")),
        ),
        Decision::Inconclusive { why } => (
            "inconclusive",
            format!("inconclusive, holding at {}: {why}", weight(next.weight_bp)),
        ),
        Decision::Hold { why } => ("held", why.clone()),
    };
    NewEvent {
        actor: Actor::Judge,
        kind,
        message,
        evidence: Some(json!({ "decision": decision, "report": report })),
    }
}
