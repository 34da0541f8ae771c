//! The HTML report: one self-contained page (inline CSS, inline SVG charts, no script, no
//! external resource) drawn from a [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write;

use super::charts::{CHART_WIDTH, COLOR_A, COLOR_B, esc, grouped_bars, histogram, small_bars};
use super::compare::{CaseRow, Jsd, Report, Source, VersionFigures};
use super::stats::{Proportion, Spread};

/// A per-version figure chart: its caption, A's and B's value, and how to print one.
type MetricChart<'a> = (&'a str, [Vec<f64>; 2], fn(f64) -> String);
/// One cell of the side-by-side table, from a version's figures.
type VersionCell = fn(&VersionFigures) -> String;
/// Picks one stage's per-rule hits out of a version's figures.
type StageHits = fn(&VersionFigures) -> &BTreeMap<String, u64>;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.muted{color:#667085}.small{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:12px 16px;min-width:180px}
.card b{display:block;font-size:20px}
.flag{color:#b42318;font-weight:600}.ok{color:#067647}
table{border-collapse:collapse;background:#fff;border:1px solid #e3e6eb;margin:6px 0}
th,td{padding:5px 10px;border-bottom:1px solid #eef0f3;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{background:#f0f2f5}
.grid{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:8px}
figcaption{font-weight:600;margin:2px 4px 6px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
svg text{font:11px system-ui,sans-serif;fill:#344054}
";

/// The whole page: heading, headline cards, the side-by-side table, charts, the per-rule,
/// expectation, judge and per-request tables, and how the figures are computed.
pub(crate) fn render(report: &Report) -> String {
    let mut page = String::new();
    heading(&mut page, report);
    headline_cards(&mut page, report);
    side_by_side(&mut page, report);
    distributions(&mut page, report);
    per_request_charts(&mut page, report);
    guardrail_table(&mut page, report);
    expectation_table(&mut page, report);
    judge_section(&mut page, report);
    case_table(&mut page, report);
    method_notes(&mut page, report);
    page.push_str("</main></body></html>\n");
    page
}

/// The document head, the title, where the requests came from and the guardrail policy.
fn heading(page: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    let title = format!("sluice eval: {} vs {}", a.name, b.name);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>",
        esc(&title)
    );
    let _ = write!(page, "<h1>{}</h1>", esc(&title));
    let _ = write!(
        page,
        "<div class=\"muted\">{} · generated {} · {}</div>",
        source_line(report),
        esc(&report.generated_at),
        legend(a, b)
    );
    match &report.guardrails {
        Some(g) => {
            let _ = write!(
                page,
                "<div class=\"muted\">Guardrail policy <code>{}</code> (chosen by {})</div>",
                esc(&g.policy),
                esc(&g.chosen_by)
            );
        }
        None => {
            let _ = write!(
                page,
                "<div class=\"muted\">Guardrail policy: {}</div>",
                esc(super::guard::NONE_CHOSEN)
            );
        }
    }
}

/// Where the requests came from: a suite (and how many an input guardrail blocked) or a
/// rollout's shadow pairs.
fn source_line(report: &Report) -> String {
    match &report.source {
        Source::Suite { path, cases } => {
            let blocked = report.versions[0].guardrails.blocked_input;
            if blocked > 0 {
                format!(
                    "Eval suite <code>{}</code>, {cases} requests: {blocked} blocked by an input guardrail, {} sent to each version",
                    esc(path),
                    cases.saturating_sub(blocked as usize)
                )
            } else {
                format!("Eval suite <code>{}</code>, {cases} requests", esc(path))
            }
        }
        Source::Rollout {
            id,
            route,
            state,
            pairs,
        } => format!(
            "Shadow pairs of rollout <code>{}</code> on route <code>{}</code> ({}), {pairs} pairs",
            esc(id),
            esc(route),
            esc(state)
        ),
    }
}

/// Answer length, finish reasons and tool calls of both versions.
fn distributions(page: &mut String, report: &Report) {
    page.push_str("<h2>Distributions</h2><div class=\"grid\">");
    page.push_str(&figure(
        "Answer length (characters, half-octave bins)",
        &histogram(&report.divergence.length_histogram),
    ));
    let finish = &report.divergence.finish_reason;
    page.push_str(&figure(
        "Finish reasons (answers)",
        &grouped_bars(&finish.categories, &counts_as_f64(finish), |x| {
            format!("{x:.0}")
        }),
    ));
    let tools = &report.divergence.tool_calls;
    if !tools.categories.is_empty() {
        page.push_str(&figure(
            "Tool calls (answers to requests that offered tools)",
            &grouped_bars(&tools.categories, &counts_as_f64(tools), |x| {
                format!("{x:.0}")
            }),
        ));
    }
    page.push_str("</div>");
}

/// Cost, tokens and latency per request, one small bar chart each.
fn per_request_charts(page: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    page.push_str("<h2>Cost, tokens and latency per request</h2><div class=\"grid\">");
    let metric = |f: fn(&VersionFigures) -> Option<f64>| {
        [vec![f(a).unwrap_or(0.0)], vec![f(b).unwrap_or(0.0)]]
    };
    let charts: [MetricChart; 5] = [
        (
            "Cost per request (USD, mean)",
            metric(|v| v.cost_usd_per_request.map(|s| s.mean)),
            |x| format!("{x:.6}"),
        ),
        (
            "Prompt tokens per request (mean)",
            metric(|v| v.prompt_tokens.map(|s| s.mean)),
            |x| format!("{x:.1}"),
        ),
        (
            "Completion tokens per request (mean)",
            metric(|v| v.completion_tokens.map(|s| s.mean)),
            |x| format!("{x:.1}"),
        ),
        (
            "Latency p50 (ms)",
            metric(|v| v.latency_ms.map(|s| s.p50)),
            |x| format!("{x:.0}"),
        ),
        (
            "Latency p95 (ms)",
            metric(|v| v.latency_ms.map(|s| s.p95)),
            |x| format!("{x:.0}"),
        ),
    ];
    for (caption, values, fmt) in charts {
        page.push_str(&figure(caption, &small_bars(a, b, &values, fmt)));
    }
    page.push_str("</div>");
}

/// "How these figures are computed": the fixed notes, the report's own, the judge's method.
fn method_notes(page: &mut String, report: &Report) {
    page.push_str("<h2>How these figures are computed</h2><ul class=\"small\">");
    let method = [
        format!(
            "Jensen–Shannon divergence in bits (base 2, between 0 and 1) between the two versions' distributions, flagged above {}. Lengths are binned on a shared, fixed log scale: half-octave bins [2^((k−1)/2), 2^(k/2)) characters, and a bin of its own for empty answers.",
            report.divergence.threshold
        ),
        "Agreement: both answers equal as JSON values when both are JSON objects or arrays, else equal after lower-casing, dropping punctuation and collapsing whitespace; tool calls must match too where both sides kept them. Over requests both versions answered; 95 % Wilson interval.".to_owned(),
        "Schema pass rate: answers that fit the request's response_format (and tool calls that fit their tools' parameters), over answered requests that asked for structure.".to_owned(),
        "Guardrail hits count requests (input) or answers (output) on which a rule fired at least once.".to_owned(),
    ];
    for line in method.iter().chain(&report.notes) {
        let _ = write!(page, "<li>{}</li>", esc(line));
    }
    if let Some(j) = &report.judge {
        let _ = write!(page, "<li>Judge: {}.</li>", esc(&j.method));
    }
    page.push_str("</ul>");
}

fn legend(a: &VersionFigures, b: &VersionFigures) -> String {
    format!(
        "<span class=\"swatch\" style=\"background:{COLOR_A}\"></span>A = <b>{}</b>{} &nbsp; <span class=\"swatch\" style=\"background:{COLOR_B}\"></span>B = <b>{}</b>{}",
        esc(&a.name),
        model_note(a),
        esc(&b.name),
        model_note(b)
    )
}

fn model_note(v: &VersionFigures) -> String {
    v.model
        .as_ref()
        .map(|m| format!(" <span class=\"muted\">({})</span>", esc(m)))
        .unwrap_or_default()
}

fn headline_cards(page: &mut String, report: &Report) {
    page.push_str("<div class=\"cards\">");
    let card = |page: &mut String, title: &str, value: String, note: String| {
        let _ = write!(
            page,
            "<div class=\"card\"><span class=\"muted\">{}</span><b>{value}</b><span class=\"small\">{note}</span></div>",
            esc(title)
        );
    };
    card(
        page,
        "Agreement",
        pct(&report.agreement),
        ci(&report.agreement),
    );
    let d = &report.divergence;
    for (title, jsd) in [
        ("Length JSD", &d.length),
        ("Finish-reason JSD", &d.finish_reason),
        ("Tool-call JSD", &d.tool_calls),
    ] {
        card(page, title, jsd_value(jsd), jsd_note(jsd, d.threshold));
    }
    if let Some(j) = &report.judge {
        card(
            page,
            &format!("B win rate (judge {})", j.version),
            pct(&j.win_rate),
            format!(
                "{} W · {} T · {} L · {}",
                j.wins,
                j.ties,
                j.losses,
                ci(&j.win_rate)
            ),
        );
    }
    page.push_str("</div>");
}

fn side_by_side(page: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    page.push_str("<h2>Side by side</h2><table><thead><tr><th></th>");
    let _ = write!(
        page,
        "<th><span class=\"swatch\" style=\"background:{COLOR_A}\"></span>{} (A)</th><th><span class=\"swatch\" style=\"background:{COLOR_B}\"></span>{} (B)</th></tr></thead><tbody>",
        esc(&a.name),
        esc(&b.name)
    );
    for (label, f) in SIDE_BY_SIDE_ROWS {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(label),
            esc(&f(a)),
            esc(&f(b))
        );
    }
    if let Some(e) = &report.expectations {
        let _ = write!(
            page,
            "<tr><td>Expectations all met ({} cases)</td><td>{} {}</td><td>{} {}</td></tr>",
            e.cases,
            pct(&e.all_met[0]),
            esc(&frac(&e.all_met[0])),
            pct(&e.all_met[1]),
            esc(&frac(&e.all_met[1]))
        );
    }
    page.push_str("</tbody></table>");
}

/// The rows of the side-by-side table: a label and how to read its cell off a version.
const SIDE_BY_SIDE_ROWS: [(&str, VersionCell); 13] = [
    ("Requests sent", |v| v.requests.to_string()),
    ("Answered", |v| v.answered.to_string()),
    ("Errors", errors_cell),
    ("Schema pass rate", |v| {
        format!("{} {}", pct(&v.schema), frac(&v.schema))
    }),
    ("Prompt tokens / request (mean)", |v| {
        spread(&v.prompt_tokens, |s| format!("{:.1}", s.mean))
    }),
    ("Completion tokens / request (mean, p50, p95)", |v| {
        spread(&v.completion_tokens, |s| {
            format!("{:.1}, {:.0}, {:.0}", s.mean, s.p50, s.p95)
        })
    }),
    ("Tokens counted by sluice (no usage)", |v| {
        v.tokens_estimated.to_string()
    }),
    ("Cost / request (USD, mean)", |v| {
        spread(&v.cost_usd_per_request, |s| format!("{:.6}", s.mean))
    }),
    ("Cost total (USD)", |v| format!("{:.6}", v.cost_usd_total)),
    ("Latency ms (mean, p50, p95, max)", |v| {
        spread(&v.latency_ms, |s| {
            format!("{:.0}, {:.0}, {:.0}, {:.0}", s.mean, s.p50, s.p95, s.max)
        })
    }),
    ("Length chars (mean, p50, p90, max)", |v| {
        spread(&v.length_chars, |s| {
            format!("{:.0}, {:.0}, {:.0}, {:.0}", s.mean, s.p50, s.p90, s.max)
        })
    }),
    ("Guardrail hits, input / output", |v| {
        format!(
            "{} / {}",
            v.guardrails.input.values().sum::<u64>(),
            v.guardrails.output.values().sum::<u64>()
        )
    }),
    ("Output blocks (would be replaced)", |v| {
        v.guardrails.blocked_output.to_string()
    }),
];

/// The error count, with each kind's count when there are any.
fn errors_cell(v: &VersionFigures) -> String {
    let kinds: Vec<String> = v
        .error_kinds
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    if kinds.is_empty() {
        "0".into()
    } else {
        format!("{} ({})", v.errors, kinds.join(", "))
    }
}

fn guardrail_table(page: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    page.push_str("<h2>Guardrail hits per rule</h2>");
    if report.guardrails.is_none() {
        page.push_str("<p class=\"muted\">No guardrail policy applies (none named, and no <code>default</code>).</p>");
        return;
    }
    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    for (stage, pick) in [
        (
            "input",
            (|v: &VersionFigures| &v.guardrails.input) as StageHits,
        ),
        ("output", |v: &VersionFigures| &v.guardrails.output),
    ] {
        let mut rules: Vec<&String> = pick(a).keys().chain(pick(b).keys()).collect();
        rules.sort();
        rules.dedup();
        for rule in rules {
            let n = |v: &VersionFigures| pick(v).get(rule).copied().unwrap_or(0);
            rows.push((format!("{stage}: {rule}"), n(a), n(b)));
        }
    }
    if rows.is_empty() {
        page.push_str("<p class=\"muted\">No rule fired on any request or answer.</p>");
        return;
    }
    let _ = write!(
        page,
        "<table><thead><tr><th>Rule</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        esc(&a.name),
        esc(&b.name)
    );
    for (rule, x, y) in rows {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{x}</td><td>{y}</td></tr>",
            esc(&rule)
        );
    }
    let _ = write!(
        page,
        "</tbody></table><p class=\"small muted\">Requests an input rule blocked (neither version called): {}.</p>",
        a.guardrails.blocked_input
    );
}

fn expectation_table(page: &mut String, report: &Report) {
    let Some(e) = &report.expectations else {
        return;
    };
    let [a, b] = &report.versions;
    let _ = write!(
        page,
        "<h2>Expected properties</h2><table><thead><tr><th>Property</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        esc(&a.name),
        esc(&b.name)
    );
    for (family, [pa, pb]) in &e.by_property {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{} {}</td><td>{} {}</td></tr>",
            esc(family),
            pct(pa),
            esc(&frac(pa)),
            pct(pb),
            esc(&frac(pb))
        );
    }
    page.push_str("</tbody></table>");
}

fn judge_section(page: &mut String, report: &Report) {
    let Some(j) = &report.judge else {
        return;
    };
    let _ = write!(page, "<h2>Judge: {}</h2>", esc(&j.version));
    let valid = j.wins + j.ties + j.losses;
    let width = CHART_WIDTH;
    let mut svg =
        format!("<svg width=\"{width}\" height=\"70\" viewBox=\"0 0 {width} 70\" role=\"img\">");
    if valid > 0 {
        let mut x = 0.0;
        for (n, color, label) in [
            (j.wins, COLOR_B, "B wins"),
            (j.ties, "#98a2b3", "ties"),
            (j.losses, COLOR_A, "A wins"),
        ] {
            let w = width * n as f64 / valid as f64;
            if n > 0 {
                let _ = write!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"8\" width=\"{w:.1}\" height=\"30\" fill=\"{color}\"><title>{label}: {n}</title></rect>"
                );
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"56\" text-anchor=\"middle\">{label} {n}</text>",
                    x + w / 2.0
                );
            }
            x += w;
        }
    } else {
        svg.push_str(
            "<text x=\"0\" y=\"30\">No case got a readable verdict in both orders.</text>",
        );
    }
    svg.push_str("</svg>");
    page.push_str(&figure("Pairwise preference, both orders combined", &svg));
    let opt = |x: Option<f64>| {
        x.map(|x| format!("{:.1} %", 100.0 * x))
            .unwrap_or_else(|| "n/a".into())
    };
    let _ = write!(
        page,
        "<table><tbody>\
         <tr><td>Cases judged (both answered)</td><td>{}</td></tr>\
         <tr><td>B wins / ties / losses</td><td>{} / {} / {}</td></tr>\
         <tr><td>Unreadable or failed (left out)</td><td>{}</td></tr>\
         <tr><td>B win rate, ties excluded</td><td>{} {}</td></tr>\
         <tr><td>B win rate, ties split</td><td>{}</td></tr>\
         <tr><td>Orders agreeing on the version</td><td>{}</td></tr>\
         <tr><td>Non-tie verdicts for the first position</td><td>{}</td></tr>\
         <tr><td>Judge cost (USD) / tokens</td><td>{:.6} / {}</td></tr>\
         </tbody></table>",
        j.judged,
        j.wins,
        j.ties,
        j.losses,
        j.invalid,
        pct(&j.win_rate),
        esc(&ci(&j.win_rate)),
        opt(j.win_rate_ties_split),
        opt(j.order_consistency),
        opt(j.first_position_share),
        j.cost_usd,
        j.tokens
    );
}

fn case_table(page: &mut String, report: &Report) {
    let [a, b] = &report.versions;
    let _ = write!(
        page,
        "<h2>Requests</h2><table class=\"small\"><thead><tr><th>Case</th><th>Agree</th>\
         <th>{0} chars</th><th>{1} chars</th><th>{0} finish</th><th>{1} finish</th><th>Schema A/B</th>\
         <th>Guardrails</th><th>Unmet expectations</th><th>Judge</th></tr></thead><tbody>",
        esc(&a.name),
        esc(&b.name)
    );
    for c in &report.cases {
        case_row(page, c);
    }
    page.push_str("</tbody></table>");
}

/// One request's row of the case table.
fn case_row(page: &mut String, c: &CaseRow) {
    let (chars_a, finish_a) = answer_cells(c, 0);
    let (chars_b, finish_b) = answer_cells(c, 1);
    let schema = |i: usize| match c.answers[i].schema_passed {
        Some(true) => "pass",
        Some(false) => "fail",
        None => "–",
    };
    let mut guards: Vec<String> = c
        .input_guardrails
        .iter()
        .map(|r| format!("in: {r}"))
        .collect();
    for (i, side) in ["A", "B"].iter().enumerate() {
        guards.extend(
            c.answers[i]
                .output_guardrails
                .iter()
                .map(|r| format!("{side}: {r}")),
        );
    }
    let unmet: Vec<String> = ["A", "B"]
        .iter()
        .enumerate()
        .flat_map(|(i, side)| {
            c.answers[i]
                .expectations_failed
                .iter()
                .map(move |p| format!("{side}: {p}"))
        })
        .collect();
    let judge = c
        .judge
        .map(|j| match j.outcome {
            Some(o) => format!("{o:?}").to_lowercase(),
            None => "unreadable".into(),
        })
        .unwrap_or_default();
    let agree = match c.agree {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    };
    let _ = write!(
        page,
        "<tr><td>{}</td><td>{agree}</td><td>{chars_a}</td><td>{chars_b}</td><td>{finish_a}</td><td>{finish_b}</td>\
         <td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&c.id),
        schema(0),
        schema(1),
        esc(&guards.join(", ")),
        esc(&unmet.join("; ")),
        esc(&judge)
    );
}

/// Version `i`'s (characters, finish reason) cells, as HTML: an error or an input block
/// shows in the first.
fn answer_cells(c: &CaseRow, i: usize) -> (String, String) {
    let x = &c.answers[i];
    match &x.error {
        // Not an error of the version: the gateway's input rule stopped the
        // request before any version was called.
        Some(_) if c.input_blocked_by.is_some() => (
            format!(
                "<span class=\"muted\" title=\"input guardrail `{}`\">blocked</span>",
                esc(c.input_blocked_by.as_deref().unwrap_or_default())
            ),
            "".into(),
        ),
        Some(e) => (
            format!("<span class=\"flag\" title=\"{}\">error</span>", esc(e)),
            "".into(),
        ),
        None => (
            x.chars.to_string(),
            esc(x.finish_reason.as_deref().unwrap_or("(none)")),
        ),
    }
}

fn figure(caption: &str, svg: &str) -> String {
    format!(
        "<figure><figcaption>{}</figcaption>{svg}</figure>",
        esc(caption)
    )
}

fn counts_as_f64(j: &Jsd) -> [Vec<f64>; 2] {
    [0, 1].map(|v| j.counts[v].iter().map(|&c| c as f64).collect())
}

fn pct(p: &Proportion) -> String {
    p.rate
        .map(|r| format!("{:.1} %", 100.0 * r))
        .unwrap_or_else(|| "n/a".into())
}

fn frac(p: &Proportion) -> String {
    format!("({}/{})", p.successes, p.trials)
}

fn ci(p: &Proportion) -> String {
    match p.ci95 {
        Some([lo, hi]) => format!("95 % CI {:.1}–{:.1} %", 100.0 * lo, 100.0 * hi),
        None => String::new(),
    }
}

fn spread(s: &Option<Spread>, f: impl Fn(&Spread) -> String) -> String {
    s.as_ref().map(f).unwrap_or_else(|| "n/a".into())
}

fn jsd_value(j: &Jsd) -> String {
    match j.jsd {
        Some(d) if j.flagged => format!("<span class=\"flag\">{d:.3}</span>"),
        Some(d) => format!("<span class=\"ok\">{d:.3}</span>"),
        None => "n/a".into(),
    }
}

fn jsd_note(j: &Jsd, threshold: f64) -> String {
    match (j.jsd, &j.note) {
        (Some(_), _) if j.flagged => format!("above {threshold}: the distributions differ"),
        (Some(_), _) => format!("at or below {threshold}"),
        (None, Some(note)) => esc(note),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
