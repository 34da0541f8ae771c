//! The terminal summary: the headline figures of a `Report` as a plain-text table.

use std::fmt::Write;

use super::compare::{Jsd, Report, Source, VersionFigures};
use super::stats::{Proportion, Spread};

const LABEL_WIDTH: usize = 26;
const COLUMN_WIDTH: usize = 22;

/// The summary table: source and guardrail policy, one row per figure with A and B side by
/// side, then the divergences, agreement and the judge's verdict.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    heading(&mut out, report);
    version_rows(&mut out, report);
    comparison_rows(&mut out, report);
    out
}

/// Where the requests came from, and which guardrail policy was counted.
fn heading(out: &mut String, report: &Report) {
    let blocked = report.versions[0].guardrails.blocked_input;
    let source = match &report.source {
        Source::Suite { path, cases } if blocked > 0 => format!(
            "suite {path} ({cases} requests · {blocked} blocked by an input guardrail · {} sent to each version)",
            cases.saturating_sub(blocked as usize)
        ),
        Source::Suite { path, cases } => format!("suite {path} ({cases} requests)"),
        Source::Rollout {
            id, route, pairs, ..
        } => format!("rollout {id} on route {route} ({pairs} shadow pairs)"),
    };
    let _ = writeln!(out, "\nsluice eval: {source}");
    match &report.guardrails {
        Some(g) => {
            let _ = writeln!(
                out,
                "guardrails: `{}` (chosen by {})",
                g.policy, g.chosen_by
            );
        }
        None => {
            let _ = writeln!(out, "guardrails: {}", super::guard::NONE_CHOSEN);
        }
    }
}

/// Each version's own figures, A and B in two columns.
fn version_rows(out: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    let mut row = |label: &str, f: &dyn Fn(&VersionFigures) -> String| {
        let _ = writeln!(out, "{label:<LABEL_WIDTH$}{:<COLUMN_WIDTH$}{}", f(a), f(b));
    };
    row("", &|v| {
        let side = if std::ptr::eq(v, a) { "A" } else { "B" };
        format!("{} ({side})", v.name)
    });
    if a.guardrails.blocked_input > 0 {
        row("blocked (input guardrail)", &|v| {
            v.guardrails.blocked_input.to_string()
        });
    }
    row("answered / sent", &|v| {
        format!("{}/{}", v.answered, v.requests)
    });
    row("errors", &|v| v.errors.to_string());
    row("schema pass", &|v| proportion(&v.schema));
    row("guardrail hits in / out", &|v| {
        let input: u64 = v.guardrails.input.values().sum();
        let output: u64 = v.guardrails.output.values().sum();
        format!("{input} / {output}")
    });
    row("prompt tokens / request", &|v| mean(&v.prompt_tokens, 1));
    row("completion tokens / req.", &|v| {
        mean(&v.completion_tokens, 1)
    });
    row("cost / request (USD)", &|v| {
        mean(&v.cost_usd_per_request, 6)
    });
    row("cost total (USD)", &|v| format!("{:.6}", v.cost_usd_total));
    row("latency p50 / p95 (ms)", &|v| {
        pair(&v.latency_ms, |s| (s.p50, s.p95))
    });
    row("length p50 / p90 (chars)", &|v| {
        pair(&v.length_chars, |s| (s.p50, s.p90))
    });
    if let Some(e) = &report.expectations {
        let _ = writeln!(
            out,
            "{:<LABEL_WIDTH$}{:<COLUMN_WIDTH$}{}",
            "expectations all met",
            proportion(&e.all_met[0]),
            proportion(&e.all_met[1])
        );
    }
}

/// Figures of the two versions together: divergences, agreement, the judge's preference.
fn comparison_rows(out: &mut String, report: &Report) {
    let d = &report.divergence;
    let _ = writeln!(
        out,
        "{:<LABEL_WIDTH$}length {}   finish reason {}   tool calls {}",
        format!("JSD (flag > {})", d.threshold),
        jsd(&d.length),
        jsd(&d.finish_reason),
        jsd(&d.tool_calls)
    );
    let _ = writeln!(
        out,
        "{:<LABEL_WIDTH$}{}{}",
        "agreement",
        proportion(&report.agreement),
        interval(&report.agreement)
    );
    if let Some(j) = &report.judge {
        let _ = writeln!(
            out,
            "{:<LABEL_WIDTH$}B wins {} · ties {} · losses {} · unreadable {}",
            format!("judge ({})", j.version),
            j.wins,
            j.ties,
            j.losses,
            j.invalid
        );
        let _ = writeln!(
            out,
            "{:<LABEL_WIDTH$}{}{}",
            "B win rate (ties out)",
            proportion(&j.win_rate),
            interval(&j.win_rate)
        );
    }
}

fn proportion(p: &Proportion) -> String {
    match p.rate {
        Some(rate) => format!("{}/{} {:.1} %", p.successes, p.trials, 100.0 * rate),
        None => "n/a".into(),
    }
}

fn interval(p: &Proportion) -> String {
    match p.ci95 {
        Some([lo, hi]) => format!("  [95 % CI {:.1}–{:.1} %]", 100.0 * lo, 100.0 * hi),
        None => String::new(),
    }
}

fn mean(s: &Option<Spread>, decimals: usize) -> String {
    s.map(|s| format!("{:.decimals$}", s.mean))
        .unwrap_or_else(|| "n/a".into())
}

fn pair(s: &Option<Spread>, pick: fn(&Spread) -> (f64, f64)) -> String {
    s.as_ref()
        .map(|s| {
            let (x, y) = pick(s);
            format!("{x:.0} / {y:.0}")
        })
        .unwrap_or_else(|| "n/a".into())
}

fn jsd(j: &Jsd) -> String {
    match j.jsd {
        Some(d) if j.flagged => format!("{d:.3} (!)"),
        Some(d) => format!("{d:.3}"),
        None => "n/a".into(),
    }
}
