//! Telemetry: `GET /metrics` in Prometheus text format, rendered at scrape time from the
//! aggregates the gateway keeps anyway, so the request path pays nothing for it.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions where they exist, in their
//! Prometheus form (`gen_ai.client.operation.duration` → `gen_ai_client_operation_duration_seconds`);
//! sluice's own series start with `sluice_`. The README lists every series.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::cluster::Cluster;
use crate::measure::aggregate::StatsSnapshot;
use crate::measure::histogram::Snapshot;
use crate::rollout::control::RolloutMetrics;
use crate::state::App;
use crate::types::{Outcome, RolloutState};

/// Bucket bounds, in seconds, for latency and time to first token.
const SECONDS_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Bucket bounds, in characters, for response length.
const CHARS_BOUNDS: [f64; 10] = [
    10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// A label value with `\`, `"` and newlines escaped.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A histogram from a log-bucket snapshot; `scale` converts its unit (ms → s).
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    snapshot: &Snapshot,
    bounds: &[f64],
    scale: f64,
) {
    for bound in bounds {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
            snapshot.count_le(bound / scale)
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
        snapshot.count()
    );
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        snapshot.approx_sum() * scale
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", snapshot.count());
}

/// The `/metrics` page: every series, in the order the README lists them.
pub(crate) async fn render(app: &App) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let stats = version_stats(app);
    render_request_series(&mut out, &stats);
    render_answer_series(&mut out, &stats);
    render_guardrail_actions(&mut out, app);
    let rollouts = app.rollouts.metrics().await;
    render_rollout_progress(&mut out, &rollouts);
    render_judge(&mut out, &rollouts);
    render_shadow_and_feedback(&mut out, &rollouts);
    render_upstream(&mut out, app);
    render_throttle(&mut out, app);
    render_records(&mut out, app);
    render_cluster(&mut out, &app.cluster);
    out
}

/// Each (route, version, arm)'s stats, with its label set already written out.
fn version_stats(app: &App) -> Vec<(String, StatsSnapshot)> {
    app.catalog
        .all_stats()
        .into_iter()
        .map(|(route, version, arm, s)| {
            let labels = format!(
                "route=\"{}\",version=\"{}\",arm=\"{}\"",
                esc(&route),
                esc(&version),
                arm.as_str()
            );
            (labels, s.snapshot())
        })
        .collect()
}

/// Requests by outcome, whole-request latency and time to first token.
fn render_request_series(out: &mut String, stats: &[(String, StatsSnapshot)]) {
    header(
        out,
        "sluice_requests_total",
        "counter",
        "Requests that reached a route, by how they ended.",
    );
    for (labels, s) in stats {
        for o in Outcome::ALL {
            let n = s.outcomes[o as usize];
            if n > 0 {
                let _ = writeln!(
                    out,
                    "sluice_requests_total{{{labels},outcome=\"{}\"}} {n}",
                    o.as_str()
                );
            }
        }
    }
    header(
        out,
        "gen_ai_client_operation_duration_seconds",
        "histogram",
        "Whole-request latency as the client saw it.",
    );
    for (labels, s) in stats {
        histogram(
            out,
            "gen_ai_client_operation_duration_seconds",
            labels,
            &s.latency_ms,
            &SECONDS_BOUNDS,
            1e-3,
        );
    }
    header(
        out,
        "gen_ai_server_time_to_first_token_seconds",
        "histogram",
        "Time to the first token of streamed answers.",
    );
    for (labels, s) in stats {
        histogram(
            out,
            "gen_ai_server_time_to_first_token_seconds",
            labels,
            &s.ttft_ms,
            &SECONDS_BOUNDS,
            1e-3,
        );
    }
}

/// What the answers held: tokens, cost, length and structured-output checks.
fn render_answer_series(out: &mut String, stats: &[(String, StatsSnapshot)]) {
    header(
        out,
        "gen_ai_client_token_usage_total",
        "counter",
        "Tokens used, by type (input = prompt, output = completion).",
    );
    for (labels, s) in stats {
        let _ = writeln!(
            out,
            "gen_ai_client_token_usage_total{{{labels},gen_ai_token_type=\"input\"}} {}",
            s.prompt_tokens
        );
        let _ = writeln!(
            out,
            "gen_ai_client_token_usage_total{{{labels},gen_ai_token_type=\"output\"}} {}",
            s.completion_tokens
        );
    }
    header(
        out,
        "sluice_cost_usd_total",
        "counter",
        "Cost in USD at the version's price.",
    );
    for (labels, s) in stats {
        let _ = writeln!(
            out,
            "sluice_cost_usd_total{{{labels}}} {}",
            s.cost_nano_usd as f64 / 1e9
        );
    }
    header(
        out,
        "sluice_response_chars",
        "histogram",
        "Answer length in characters (successful answers).",
    );
    for (labels, s) in stats {
        histogram(
            out,
            "sluice_response_chars",
            labels,
            &s.response_chars,
            &CHARS_BOUNDS,
            1.0,
        );
    }
    header(
        out,
        "sluice_schema_checks_total",
        "counter",
        "Structured-output checks of answers to requests that asked for structure.",
    );
    for (labels, s) in stats {
        let pass = s.schema_requests - s.schema_failures;
        let _ = writeln!(
            out,
            "sluice_schema_checks_total{{{labels},result=\"pass\"}} {pass}"
        );
        let _ = writeln!(
            out,
            "sluice_schema_checks_total{{{labels},result=\"fail\"}} {}",
            s.schema_failures
        );
    }
}

/// A serde enum's snake_case name, as the config spells it.
fn serde_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn render_guardrail_actions(out: &mut String, app: &App) {
    header(
        out,
        "sluice_guardrail_actions_total",
        "counter",
        "Guardrail blocks, redactions and flags.",
    );
    for row in app.guardrail_counts.rows() {
        let stage = serde_name(row.stage);
        let action = serde_name(row.action);
        let _ = writeln!(
            out,
            "sluice_guardrail_actions_total{{version=\"{}\",arm=\"{}\",stage=\"{stage}\",rule=\"{}\",action=\"{action}\"}} {}",
            esc(&row.version),
            esc(&row.arm),
            esc(&row.rule),
            row.count
        );
    }
}

/// Where each rollout stands: canary weight, step and state.
fn render_rollout_progress(out: &mut String, rollouts: &[RolloutMetrics]) {
    header(
        out,
        "sluice_rollout_weight_ratio",
        "gauge",
        "Canary weight of randomized traffic, 0 to 1.",
    );
    for r in rollouts {
        let _ = writeln!(
            out,
            "sluice_rollout_weight_ratio{{rollout=\"{}\",route=\"{}\"}} {}",
            r.id,
            esc(&r.route),
            r.weight
        );
    }
    header(
        out,
        "sluice_rollout_step",
        "gauge",
        "The rollout's current step (0-based).",
    );
    for r in rollouts {
        let _ = writeln!(
            out,
            "sluice_rollout_step{{rollout=\"{}\",route=\"{}\"}} {}",
            r.id,
            esc(&r.route),
            r.step
        );
    }
    header(
        out,
        "sluice_rollout_state",
        "gauge",
        "1 for the rollout's current state.",
    );
    for r in rollouts {
        for state in [RolloutState::Progressing, RolloutState::Paused] {
            let on = u8::from(r.state == state);
            let _ = writeln!(
                out,
                "sluice_rollout_state{{rollout=\"{}\",route=\"{}\",state=\"{}\"}} {on}",
                r.id,
                esc(&r.route),
                state.as_str()
            );
        }
    }
}

/// The judge's evidence at its last look, and the bar it reverts at.
fn render_judge(out: &mut String, rollouts: &[RolloutMetrics]) {
    header(
        out,
        "sluice_judge_e_value",
        "gauge",
        "Each gate's e-value at the judge's last look.",
    );
    for r in rollouts {
        for (gate, e) in &r.e_values {
            let _ = writeln!(
                out,
                "sluice_judge_e_value{{rollout=\"{}\",gate=\"{}\"}} {e}",
                r.id,
                esc(gate)
            );
        }
    }
    header(
        out,
        "sluice_judge_threshold",
        "gauge",
        "The judge reverts when the weighted average e-value reaches this (1/alpha).",
    );
    for r in rollouts {
        let _ = writeln!(
            out,
            "sluice_judge_threshold{{rollout=\"{}\"}} {}",
            r.id, r.threshold
        );
    }
}

fn render_shadow_and_feedback(out: &mut String, rollouts: &[RolloutMetrics]) {
    header(
        out,
        "sluice_shadow_copies_total",
        "counter",
        "Shadow copies by what became of them.",
    );
    for r in rollouts {
        if let Some(s) = &r.shadow {
            for (result, n) in [
                ("sent", s.sent),
                ("dropped_queue", s.dropped_queue),
                ("dropped_budget", s.dropped_budget),
                ("failed", s.failed),
            ] {
                let _ = writeln!(
                    out,
                    "sluice_shadow_copies_total{{rollout=\"{}\",result=\"{result}\"}} {n}",
                    r.id
                );
            }
        }
    }
    header(
        out,
        "sluice_shadow_spend_usd_total",
        "counter",
        "Spend of shadow copies (not workspace spend).",
    );
    for r in rollouts {
        if let Some(s) = &r.shadow {
            let _ = writeln!(
                out,
                "sluice_shadow_spend_usd_total{{rollout=\"{}\"}} {}",
                r.id, s.spent_usd
            );
        }
    }
    header(
        out,
        "sluice_feedback_total",
        "counter",
        "Feedback received on a live rollout's requests.",
    );
    for r in rollouts {
        for (key, n) in &r.feedback {
            let (metric, arm) = key.split_once('/').unwrap_or((key, ""));
            let _ = writeln!(
                out,
                "sluice_feedback_total{{rollout=\"{}\",metric=\"{}\",arm=\"{arm}\"}} {n}",
                r.id,
                esc(metric)
            );
        }
    }
}

/// How the upstreams behaved: moved aliases, unreadable fields, refused stream_options.
fn render_upstream(out: &mut String, app: &App) {
    header(
        out,
        "sluice_upstream_model_changes_total",
        "counter",
        "Times a version's upstream began answering with another model (an alias that moved).",
    );
    for v in app.catalog.versions() {
        let n = v.served_changes.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "sluice_upstream_model_changes_total{{version=\"{}\"}} {n}",
            esc(&v.name)
        );
    }

    header(
        out,
        "sluice_upstream_unreadable_fields_total",
        "counter",
        "Fields of upstream answers that measurement could not read (an unexpected shape): read as absent, never failing the request.",
    );
    for (field, n) in crate::openai::lenient::unreadable_counts() {
        let _ = writeln!(
            out,
            "sluice_upstream_unreadable_fields_total{{field=\"{}\"}} {n}",
            field.as_str()
        );
    }

    header(
        out,
        "sluice_stream_usage_retries_total",
        "counter",
        "Streamed requests sent again without the stream_options sluice added, because the upstream refused the field with a 400.",
    );
    let _ = writeln!(
        out,
        "sluice_stream_usage_retries_total {}",
        crate::upstream::STREAM_USAGE_RETRIES.load(Ordering::Relaxed)
    );
}

fn render_throttle(out: &mut String, app: &App) {
    let refusals = app.throttle.refusals();
    header(
        out,
        "sluice_client_throttled_total",
        "counter",
        "Requests answered 429 per client address: after too many failed authentications, or admin calls too fast.",
    );
    let _ = writeln!(
        out,
        "sluice_client_throttled_total{{reason=\"auth_failures\"}} {}",
        refusals.auth_failures
    );
    let _ = writeln!(
        out,
        "sluice_client_throttled_total{{reason=\"admin_calls\"}} {}",
        refusals.admin
    );
}

/// The measurement record sink: written, dropped and paced.
fn render_records(out: &mut String, app: &App) {
    let sink = app.sink.counters();
    header(
        out,
        "sluice_records_written_total",
        "counter",
        "Measurement records written to the database.",
    );
    let _ = writeln!(out, "sluice_records_written_total {}", sink.written);
    header(
        out,
        "sluice_records_dropped_total",
        "counter",
        "Measurement records dropped: queue full, or the database refused them.",
    );
    let _ = writeln!(
        out,
        "sluice_records_dropped_total {}",
        sink.dropped + sink.write_failed
    );
    header(
        out,
        "sluice_records_paced_total",
        "counter",
        "Requests that waited (at most 10 ms) for room in a nearly full record queue.",
    );
    let _ = writeln!(out, "sluice_records_paced_total {}", sink.paced);
}

/// A cluster's loops (PostgreSQL only: a single process shows none of these).
fn render_cluster(out: &mut String, cluster: &Cluster) {
    if !cluster.enabled {
        return;
    }
    header(
        out,
        "sluice_cluster_live_replicas",
        "gauge",
        "Live replicas at this replica's last heartbeat (the divisor of workspace limits).",
    );
    let _ = writeln!(
        out,
        "sluice_cluster_live_replicas {}",
        cluster.live_replicas()
    );
    header(
        out,
        "sluice_database_up",
        "gauge",
        "1 while the database answered this replica's last cluster call, 0 while it is away.",
    );
    let _ = writeln!(
        out,
        "sluice_database_up {}",
        u8::from(cluster.database_up())
    );
    if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(&cluster.counters) {
        for (name, value) in counters {
            let metric = format!("sluice_cluster_{name}_total");
            header(
                out,
                &metric,
                "counter",
                &format!("Cluster: {} (see docs/cluster.md).", name.replace('_', " ")),
            );
            let _ = writeln!(out, "{metric} {value}");
        }
    }
}
