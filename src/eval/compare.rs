//! The comparison: every figure of an eval, computed from its cases, per version and side
//! by side. [`Report`] is what the JSON file holds and what the HTML and the terminal
//! summary are drawn from.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::case::Expect;
use super::guard::{self, Chosen, ChosenReport};
use super::llm_judge::{Judged, Outcome, Verdict};
use super::stats::{
    self, JSD_FLAG_THRESHOLD, LengthBin, Proportion, Spread, Z_95, categorical_counts,
    jensen_shannon,
};
use crate::eval::case::{Answer, Case};
use crate::guardrails::StageRules;

/// Each expected property of one answer, named, and whether it held.
type PropertyResults = Vec<(String, bool)>;

/// Bumped when a field changes meaning or goes away.
pub(crate) const REPORT_FORMAT: u32 = 1;
/// The finish-reason category of an answer that gave none.
const NO_FINISH_REASON: &str = "(none)";
/// The tool-call category of an answer to a tool-offering request that called no tool.
const NO_TOOL_CALL: &str = "(no tool call)";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Source {
    Suite {
        path: String,
        cases: usize,
    },
    Rollout {
        id: String,
        route: String,
        state: String,
        pairs: usize,
    },
}

/// A version as the report names it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionLabel {
    pub(crate) name: String,
    /// The upstream model; `None` when the version is no longer configured.
    pub(crate) model: Option<String>,
}

/// The judge's work, one entry per case (`None` where the case was not judged).
pub(crate) struct JudgeRun {
    pub(crate) version: String,
    pub(crate) per_case: Vec<Option<Judged>>,
}

/// Everything the comparison needs.
pub(crate) struct Inputs<'a> {
    pub(crate) source: Source,
    pub(crate) versions: [VersionLabel; 2],
    pub(crate) cases: &'a [Case],
    pub(crate) guardrails: Option<&'a Chosen>,
    pub(crate) judge: Option<JudgeRun>,
    pub(crate) generated_at: String,
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) format: u32,
    pub(crate) generated_at: String,
    pub(crate) source: Source,
    /// Version A (the baseline) and version B (the candidate).
    pub(crate) versions: [VersionFigures; 2],
    pub(crate) guardrails: Option<ChosenReport>,
    pub(crate) divergence: Divergence,
    /// Both answers the same, over the cases both versions answered.
    pub(crate) agreement: Proportion,
    pub(crate) expectations: Option<ExpectationFigures>,
    pub(crate) judge: Option<JudgeFigures>,
    pub(crate) cases: Vec<CaseRow>,
    /// What the figures cannot say for this source.
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionFigures {
    pub(crate) name: String,
    pub(crate) model: Option<String>,
    /// Cases sent to the version (input-blocked cases are not).
    pub(crate) requests: u64,
    pub(crate) answered: u64,
    pub(crate) errors: u64,
    pub(crate) error_kinds: BTreeMap<String, u64>,
    /// Answers that fit the requested structure, over answered requests that asked for one.
    pub(crate) schema: Proportion,
    pub(crate) guardrails: GuardrailHits,
    pub(crate) prompt_tokens: Option<Spread>,
    pub(crate) completion_tokens: Option<Spread>,
    /// Answers whose tokens sluice counted because the upstream reported none.
    pub(crate) tokens_estimated: u64,
    pub(crate) cost_usd_total: f64,
    pub(crate) cost_usd_per_request: Option<Spread>,
    pub(crate) latency_ms: Option<Spread>,
    pub(crate) length_chars: Option<Spread>,
    pub(crate) finish_reasons: BTreeMap<String, u64>,
    /// Tool calls by name over answers to requests that offered tools; `None` when the
    /// source kept no tool calls for this version.
    pub(crate) tool_calls: Option<BTreeMap<String, u64>>,
}

/// Guardrail rules that fired, per rule: on how many requests (input, the same for both
/// versions) or answers (output).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GuardrailHits {
    pub(crate) input: BTreeMap<String, u64>,
    pub(crate) output: BTreeMap<String, u64>,
    /// Requests an input `block` rule stopped (neither version was called).
    pub(crate) blocked_input: u64,
    /// Answers an output `block` rule would have replaced by an error.
    pub(crate) blocked_output: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Divergence {
    /// A JSD above this is flagged.
    pub(crate) threshold: f64,
    pub(crate) length: Jsd,
    pub(crate) finish_reason: Jsd,
    pub(crate) tool_calls: Jsd,
    /// Both versions' answer lengths on the shared half-octave scale.
    pub(crate) length_histogram: Vec<LengthBin>,
}

/// One Jensen–Shannon divergence (bits, in [0, 1]) and the two distributions behind it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Jsd {
    pub(crate) jsd: Option<f64>,
    pub(crate) flagged: bool,
    pub(crate) categories: Vec<String>,
    pub(crate) counts: [Vec<u64>; 2],
    /// Why `jsd` is missing.
    pub(crate) note: Option<String>,
}

impl Jsd {
    fn of(categories: Vec<String>, a: Vec<u64>, b: Vec<u64>, empty_note: &str) -> Self {
        let jsd = jensen_shannon(&a, &b);
        Self {
            flagged: jsd.is_some_and(|d| d > JSD_FLAG_THRESHOLD),
            note: jsd.is_none().then(|| empty_note.to_owned()),
            jsd,
            categories,
            counts: [a, b],
        }
    }

    fn missing(note: &str) -> Self {
        Self {
            jsd: None,
            flagged: false,
            categories: Vec::new(),
            counts: [Vec::new(), Vec::new()],
            note: Some(note.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExpectationFigures {
    /// Cases that carry an `expect`.
    pub(crate) cases: u64,
    /// Cases whose every expected property held, per version.
    pub(crate) all_met: [Proportion; 2],
    /// Per property family (`contains`, `max_chars`, …), per version.
    pub(crate) by_property: BTreeMap<String, [Proportion; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct JudgeFigures {
    pub(crate) version: String,
    /// Cases both versions answered, each judged in both orders.
    pub(crate) judged: u64,
    pub(crate) wins: u64,
    pub(crate) ties: u64,
    pub(crate) losses: u64,
    /// Cases where an order failed or its verdict could not be read: left out.
    pub(crate) invalid: u64,
    /// B's wins over decisive cases: wins / (wins + losses), ties left out.
    pub(crate) win_rate: Proportion,
    /// (wins + ties / 2) / (wins + ties + losses), for reference.
    pub(crate) win_rate_ties_split: Option<f64>,
    /// Share of valid cases whose two orders agreed on the version (or both said tie).
    pub(crate) order_consistency: Option<f64>,
    /// Share of non-tie verdicts that picked the answer shown first (0.5 is unbiased).
    pub(crate) first_position_share: Option<f64>,
    pub(crate) cost_usd: f64,
    pub(crate) tokens: u64,
    pub(crate) method: String,
}

/// One case as the report lists it (no request or answer text: they may hold user data).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseRow {
    pub(crate) id: String,
    /// Both answers the same; `None` unless both versions answered.
    pub(crate) agree: Option<bool>,
    pub(crate) input_guardrails: Vec<String>,
    pub(crate) input_blocked_by: Option<String>,
    pub(crate) answers: [CaseAnswer; 2],
    pub(crate) judge: Option<Judged>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseAnswer {
    pub(crate) status: u16,
    pub(crate) error: Option<String>,
    pub(crate) chars: u64,
    pub(crate) finish_reason: Option<String>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) cost_usd: f64,
    pub(crate) latency_ms: f64,
    pub(crate) schema_passed: Option<bool>,
    pub(crate) output_guardrails: Vec<String>,
    /// Expected properties that did not hold.
    pub(crate) expectations_failed: Vec<String>,
}

/// Whether two answers say the same: equal JSON values when both texts parse as JSON,
/// else equal after normalizing (lower case, punctuation dropped, whitespace collapsed);
/// and the same tool calls (names and JSON arguments) where both sides kept them.
pub(crate) fn answers_agree(a: &Answer, b: &Answer) -> bool {
    let texts = match (parse_json(&a.text), parse_json(&b.text)) {
        (Some(x), Some(y)) => x == y,
        _ => normalize(&a.text) == normalize(&b.text),
    };
    let tools = match (&a.tool_calls, &b.tool_calls) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    p.name == q.name
                        && match (parse_json(&p.arguments), parse_json(&q.arguments)) {
                            (Some(u), Some(v)) => u == v,
                            _ => normalize(&p.arguments) == normalize(&q.arguments),
                        }
                })
        }
        _ => true,
    };
    texts && tools
}

fn parse_json(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    // Bare words such as `true` or `42` parse as JSON; only structures count as JSON answers.
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    serde_json::from_str(trimmed).ok()
}

/// Lower case, ASCII punctuation dropped, runs of whitespace made one space, trimmed.
pub(crate) fn normalize(text: &str) -> String {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_punctuation() { ' ' } else { c })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The report of `inputs`: each version's figures, the divergences and agreement between
/// them, expectations, the judge's figures, and one row per case.
pub(crate) fn build(inputs: Inputs<'_>) -> Report {
    let cases = inputs.cases;
    let output_hits = output_hits(cases, inputs.guardrails.map(|g| &g.set.output));
    let expectation_results: Vec<Option<[PropertyResults; 2]>> = cases
        .iter()
        .map(|c| {
            // A request the input rules blocked was never sent: nothing to expect of it.
            let expect = c.expect.as_ref().filter(|_| c.input_blocked_by.is_none())?;
            Some([0, 1].map(|v| expect.check(&c.answers[v])))
        })
        .collect();
    let [label_a, label_b] = inputs.versions;
    let versions = [
        version_figures(label_a, 0, cases, &output_hits),
        version_figures(label_b, 1, cases, &output_hits),
    ];
    let agreed: Vec<bool> = cases
        .iter()
        .filter(|c| c.both_answered())
        .map(|c| answers_agree(&c.answers[0], &c.answers[1]))
        .collect();
    let agreement = Proportion::new(
        agreed.iter().filter(|&&a| a).count() as u64,
        agreed.len() as u64,
    );
    let rows = cases
        .iter()
        .enumerate()
        .map(|(i, c)| CaseRow {
            id: c.id.clone(),
            agree: c
                .both_answered()
                .then(|| answers_agree(&c.answers[0], &c.answers[1])),
            input_guardrails: c.input_fired.clone(),
            input_blocked_by: c.input_blocked_by.clone(),
            answers: [0, 1].map(|v| {
                case_answer(
                    &c.answers[v],
                    &output_hits[i][v],
                    expectation_results[i].as_ref().map(|r| &r[v]),
                )
            }),
            judge: inputs
                .judge
                .as_ref()
                .and_then(|j| j.per_case.get(i).copied().flatten()),
        })
        .collect();
    Report {
        format: REPORT_FORMAT,
        generated_at: inputs.generated_at,
        source: inputs.source,
        versions,
        guardrails: inputs.guardrails.map(Chosen::report),
        divergence: divergence(cases),
        agreement,
        expectations: expectation_figures(&expectation_results),
        judge: inputs.judge.as_ref().map(judge_figures),
        cases: rows,
        notes: inputs.notes,
    }
}

/// One version's output guardrail result on one case: the rules that fired, and whether
/// one blocked the answer.
type OutputHits = (Vec<String>, bool);

/// Output guardrails per case and version (none fire on a failed answer or without rules).
fn output_hits(cases: &[Case], rules: Option<&StageRules>) -> Vec<[OutputHits; 2]> {
    cases
        .iter()
        .map(|c| {
            [0, 1].map(|v| match (rules, c.answers[v].is_ok()) {
                (Some(rules), true) => guard::apply_output(rules, &c.answers[v].text),
                _ => (Vec::new(), false),
            })
        })
        .collect()
}

/// One version's cell of a case row; `expectations` is absent when nothing was expected.
fn case_answer(
    a: &Answer,
    hits: &OutputHits,
    expectations: Option<&PropertyResults>,
) -> CaseAnswer {
    CaseAnswer {
        status: a.status,
        error: a.error.clone(),
        chars: a.chars(),
        finish_reason: a.finish_reason.clone(),
        prompt_tokens: a.prompt_tokens,
        completion_tokens: a.completion_tokens,
        cost_usd: a.cost_usd,
        latency_ms: a.latency_ms,
        schema_passed: a.schema_passed,
        output_guardrails: hits.0.clone(),
        expectations_failed: expectations
            .map(|r| {
                r.iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn version_figures(
    label: VersionLabel,
    v: usize,
    cases: &[Case],
    output_hits: &[[OutputHits; 2]],
) -> VersionFigures {
    let sent: Vec<&Case> = cases
        .iter()
        .filter(|c| c.input_blocked_by.is_none())
        .collect();
    let answered: Vec<&Answer> = sent
        .iter()
        .map(|c| &c.answers[v])
        .filter(|a| a.is_ok())
        .collect();
    let mut error_kinds = BTreeMap::new();
    for kind in sent.iter().filter_map(|c| c.answers[v].error_kind()) {
        *error_kinds.entry(kind).or_insert(0) += 1;
    }
    let schema_checked: Vec<bool> = answered.iter().filter_map(|a| a.schema_passed).collect();
    let schema = Proportion::new(
        schema_checked.iter().filter(|&&p| p).count() as u64,
        schema_checked.len() as u64,
    );
    let guardrails = GuardrailHits {
        input: guard::tally(cases.iter().flat_map(|c| c.input_fired.iter().cloned())),
        output: guard::tally(output_hits.iter().flat_map(|h| h[v].0.iter().cloned())),
        blocked_input: cases
            .iter()
            .filter(|c| c.input_blocked_by.is_some())
            .count() as u64,
        blocked_output: output_hits.iter().filter(|h| h[v].1).count() as u64,
    };
    let figures =
        |f: fn(&Answer) -> f64| Spread::of(&answered.iter().map(|a| f(a)).collect::<Vec<_>>());
    // Every call that reached the upstream costs what it reported (a failed call usually 0).
    let cost_usd_total = sent.iter().map(|c| c.answers[v].cost_usd).sum();
    let mut finish_reasons = BTreeMap::new();
    for a in &answered {
        let reason = a.finish_reason.as_deref().unwrap_or(NO_FINISH_REASON);
        *finish_reasons.entry(reason.to_owned()).or_insert(0) += 1;
    }
    let tool_labels = tool_call_labels(cases, v);
    VersionFigures {
        name: label.name,
        model: label.model,
        requests: sent.len() as u64,
        answered: answered.len() as u64,
        errors: (sent.len() - answered.len()) as u64,
        error_kinds,
        schema,
        guardrails,
        prompt_tokens: figures(|a| a.prompt_tokens as f64),
        completion_tokens: figures(|a| a.completion_tokens as f64),
        tokens_estimated: answered.iter().filter(|a| a.tokens_estimated).count() as u64,
        cost_usd_total,
        cost_usd_per_request: figures(|a| a.cost_usd),
        latency_ms: figures(|a| a.latency_ms),
        length_chars: figures(|a| a.chars() as f64),
        finish_reasons,
        tool_calls: tool_labels.map(guard::tally),
    }
}

/// The tool-call labels of version `v`'s answers to tool-offering requests: each tool
/// called, or [`NO_TOOL_CALL`]. `None` when the source kept no tool calls for `v`.
fn tool_call_labels(cases: &[Case], v: usize) -> Option<Vec<String>> {
    let answered = cases.iter().map(|c| &c.answers[v]).filter(|a| a.is_ok());
    if answered.clone().any(|a| a.tool_calls.is_none()) {
        return None;
    }
    let mut labels = Vec::new();
    for c in cases.iter().filter(|c| c.offers_tools()) {
        let a = &c.answers[v];
        if !a.is_ok() {
            continue;
        }
        let calls = a.tool_calls.as_ref()?;
        if calls.is_empty() {
            labels.push(NO_TOOL_CALL.to_owned());
        }
        labels.extend(calls.iter().map(|t| t.name.clone()));
    }
    Some(labels)
}

fn divergence(cases: &[Case]) -> Divergence {
    let answered = |v: usize| {
        cases
            .iter()
            .map(move |c| &c.answers[v])
            .filter(|a| a.is_ok())
    };
    let lengths = |v: usize| answered(v).map(Answer::chars).collect::<Vec<_>>();
    let (len_a, len_b) = (lengths(0), lengths(1));
    let histogram = stats::length_histogram(&len_a, &len_b);
    let length = Jsd::of(
        histogram
            .iter()
            .map(|b| format!("{:.0}–{:.0}", b.lo_chars, b.hi_chars))
            .collect(),
        histogram.iter().map(|b| b.counts[0]).collect(),
        histogram.iter().map(|b| b.counts[1]).collect(),
        "a version has no answers",
    );
    let reasons =
        |v: usize| answered(v).map(|a| a.finish_reason.as_deref().unwrap_or(NO_FINISH_REASON));
    let (categories, a, b) = categorical_counts(reasons(0), reasons(1));
    let finish_reason = Jsd::of(categories, a, b, "a version has no answers");
    let tool_calls = match (tool_call_labels(cases, 0), tool_call_labels(cases, 1)) {
        (Some(a), Some(b)) => {
            if cases.iter().any(Case::offers_tools) {
                let (categories, ca, cb) =
                    categorical_counts(a.iter().map(String::as_str), b.iter().map(String::as_str));
                Jsd::of(
                    categories,
                    ca,
                    cb,
                    "a version answered no request that offered tools",
                )
            } else {
                Jsd::missing("no request offered tools")
            }
        }
        _ => Jsd::missing("the source keeps no tool calls for one of the versions"),
    };
    Divergence {
        threshold: JSD_FLAG_THRESHOLD,
        length,
        finish_reason,
        tool_calls,
        length_histogram: histogram,
    }
}

fn expectation_figures(results: &[Option<[PropertyResults; 2]>]) -> Option<ExpectationFigures> {
    let with: Vec<&[PropertyResults; 2]> = results.iter().flatten().collect();
    if with.is_empty() {
        return None;
    }
    let all_met = [0, 1].map(|v| {
        let met = with
            .iter()
            .filter(|r| r[v].iter().all(|(_, ok)| *ok))
            .count();
        Proportion::new(met as u64, with.len() as u64)
    });
    let mut tallies: BTreeMap<String, [(u64, u64); 2]> = BTreeMap::new();
    for r in &with {
        for v in [0, 1] {
            for (property, ok) in &r[v] {
                let t = &mut tallies
                    .entry(Expect::family(property).to_owned())
                    .or_default()[v];
                t.0 += u64::from(*ok);
                t.1 += 1;
            }
        }
    }
    let by_property = tallies
        .into_iter()
        .map(|(family, t)| (family, t.map(|(k, n)| Proportion::new(k, n))))
        .collect();
    Some(ExpectationFigures {
        cases: with.len() as u64,
        all_met,
        by_property,
    })
}

fn judge_figures(run: &JudgeRun) -> JudgeFigures {
    let judged: Vec<&Judged> = run.per_case.iter().flatten().collect();
    let count = |o: Outcome| judged.iter().filter(|j| j.outcome == Some(o)).count() as u64;
    let (wins, ties, losses) = (
        count(Outcome::Win),
        count(Outcome::Tie),
        count(Outcome::Loss),
    );
    let valid = wins + ties + losses;
    let consistent = judged
        .iter()
        .filter(|j| match j.verdicts {
            // The same version in both orders: the shown position flipped with it.
            [Some(Verdict::First), Some(Verdict::Second)]
            | [Some(Verdict::Second), Some(Verdict::First)]
            | [Some(Verdict::Tie), Some(Verdict::Tie)] => true,
            _ => false,
        })
        .count() as u64;
    let picks: Vec<Verdict> = judged
        .iter()
        .flat_map(|j| j.verdicts.iter().flatten().copied())
        .filter(|v| *v != Verdict::Tie)
        .collect();
    let first = picks.iter().filter(|v| **v == Verdict::First).count();
    JudgeFigures {
        version: run.version.clone(),
        judged: judged.len() as u64,
        wins,
        ties,
        losses,
        invalid: judged.len() as u64 - valid,
        win_rate: Proportion::new(wins, wins + losses),
        win_rate_ties_split: (valid > 0).then(|| (wins as f64 + ties as f64 / 2.0) / valid as f64),
        order_consistency: (valid > 0).then(|| consistent as f64 / valid as f64),
        first_position_share: (!picks.is_empty()).then(|| first as f64 / picks.len() as f64),
        cost_usd: judged.iter().map(|j| j.cost_usd).sum(),
        tokens: judged.iter().map(|j| j.tokens).sum(),
        method: format!(
            "each case judged twice, A's answer shown first then B's; each order scores +1 for B, −1 for A, 0 for a tie, \
             and the sign of the sum is B's win, tie or loss; cases with a failed or unreadable order are left out. \
             Win rate = wins / (wins + losses), ties excluded, with a 95 % Wilson score interval (z = {Z_95:.4})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::schema::ToolCall;

    #[test]
    fn answers_agree_after_normalizing_or_as_equal_json() {
        let a = |t: &str| Answer::answered(t);
        assert!(answers_agree(&a("Paris."), &a("  paris ")));
        assert!(!answers_agree(&a("Paris"), &a("Lyon")));
        assert!(answers_agree(
            &a(r#"{"x": 1, "y": [2]}"#),
            &a(r#"{"y":[2],"x":1}"#)
        ));
        assert!(!answers_agree(&a(r#"{"x": 1}"#), &a(r#"{"x": 2}"#)));
        let mut with_tool = a("");
        with_tool.tool_calls = Some(vec![ToolCall {
            name: "track".into(),
            arguments: r#"{"id": 7}"#.into(),
        }]);
        assert!(!answers_agree(&with_tool, &a("")));
        let mut unknown = a("");
        unknown.tool_calls = None;
        assert!(
            answers_agree(&with_tool, &unknown),
            "unknown tool calls are not compared"
        );
    }
}
