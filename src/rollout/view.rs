//! How a rollout reads in the admin API: its stored row, and while it runs in this process
//! its per-arm figures, pins, the judge's last report and decision, shadow and feedback.

use serde::Serialize;
use serde_json::{Value, json};

use super::control::{Inner, Running};
use crate::store::RolloutRow;
use crate::types::Arm;

#[derive(Serialize)]
struct ArmView {
    version: String,
    #[serde(flatten)]
    figures: crate::measure::aggregate::StatsSummary,
}

pub(super) fn view_row(row: &RolloutRow) -> Value {
    let report: Option<Value> = row
        .last_report
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    let steps = serde_json::from_str::<Value>(&row.policy_json)
        .ok()
        .and_then(|p| p["steps"].as_array().map(Vec::len))
        .unwrap_or(0);
    json!({
        "id": row.id, "route": row.route, "stable": row.stable_version, "canary": row.canary_version,
        "policy": row.policy, "state": row.position.state, "step": row.position.step, "steps": steps,
        "weight": f64::from(row.position.weight_bp) / 100.0, "inconclusive": row.position.inconclusive,
        "started_at_ms": row.started_at_ms, "step_started_at_ms": row.position.step_started_ms,
        "updated_at_ms": row.updated_at_ms, "ended_at_ms": row.ended_at_ms,
        "judge": report,
    })
}

/// An ended rollout: its stored row, with the arms' figures when it ended in this process.
pub(super) fn view_ended(inner: &Inner, row: &RolloutRow) -> Value {
    let mut v = view_row(row);
    if let Some((_, last)) = inner.ended.iter().find(|(id, _)| *id == row.id) {
        v["arms"] = last["arms"].clone();
        v["pins"] = last["pins"].clone();
    }
    v
}

pub(super) fn view_running(r: &Running) -> Value {
    let mut v = view_row(&r.row);
    let arm = |a: Arm, version: &str| ArmView {
        version: version.to_owned(),
        figures: r.tap.arms[a.index()].snapshot().summary(),
    };
    v["arms"] = json!({
        "stable": arm(Arm::Stable, &r.row.stable_version),
        "canary": arm(Arm::Canary, &r.row.canary_version),
    });
    v["pins"] = json!(r.pins);
    v["canary_requests_in_step"] = json!(r.canary_in_step);
    v["observations_dropped"] = json!(r.tap.dropped());
    v["judge"] = json!(r.last_report);
    v["last_decision"] = json!(r.last_decision);
    v["shadow"] = json!(r.shadow.as_ref().map(|s| s.counters()));
    v["feedback"] = json!(r.feedback);
    v
}
