//! How a rollout reads in the admin API: its stored row, and while it runs in this process
//! its per-arm figures, pins, the judge's last report and decision, shadow and feedback.

use serde::Serialize;
use serde_json::{Value, json};

use super::control::{Inner, Running};
use crate::resolve::Arm;
use crate::store::RolloutRow;

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

/// Cluster-wide per-arm figures of a rollout, summed over every replica's shipped batches.
pub(crate) fn cluster_figures(t: &crate::store::ArmTotals) -> Value {
    let arm = |i: usize| {
        let n = t.requests[i];
        json!({
            "requests": n,
            "errors": t.errors[i],
            "error_rate": if n > 0 { t.errors[i] as f64 / n as f64 } else { 0.0 },
            "mean_latency_ms": if n > 0 { t.latency_ms_sum[i] / n as f64 } else { 0.0 },
        })
    };
    json!({
        "stable": arm(0),
        "canary": arm(1),
        "requests": t.requests[0] + t.requests[1],
        "observations_dropped": t.dropped,
        "replicas": t.replicas,
    })
}
