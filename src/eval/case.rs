//! What every figure of an eval is computed from: cases, each a request with one answer
//! per version, whatever the source (a replayed suite or stored shadow pairs).

use serde::Deserialize;
use serde_json::Value;

use crate::measure::schema::ToolCall;

/// The two versions' answers to one request: index 0 is version A, index 1 version B.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) id: String,
    /// The chat request as the versions got it (after input redaction).
    pub(crate) request: Value,
    pub(crate) expect: Option<Expect>,
    /// Input guardrail rules that fired on the request.
    pub(crate) input_fired: Vec<String>,
    /// The input rule that blocked the request: neither version was called, as the
    /// gateway would not have called one.
    pub(crate) input_blocked_by: Option<String>,
    pub(crate) answers: [Answer; 2],
}

impl Case {
    /// Whether the request offered tools (the denominator of tool-call figures).
    pub(crate) fn offers_tools(&self) -> bool {
        self.request
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
    }

    pub(crate) fn both_answered(&self) -> bool {
        self.answers.iter().all(Answer::is_ok)
    }
}

/// One version's answer to one request, and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Answer {
    /// The upstream's HTTP status; 0 when it was not reached or not called.
    pub(crate) status: u16,
    /// Why there is no usable answer (an upstream error, a status other than 2xx, a body
    /// that is not a chat completion, an input block). `None` for an answer.
    pub(crate) error: Option<String>,
    pub(crate) text: String,
    /// `None` when the source did not keep them (the primary side of a shadow pair).
    pub(crate) tool_calls: Option<Vec<ToolCall>>,
    pub(crate) finish_reason: Option<String>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    /// The upstream reported no usage; sluice counted the tokens.
    pub(crate) tokens_estimated: bool,
    pub(crate) cost_usd: f64,
    pub(crate) latency_ms: f64,
    /// `Some(passed)` when the request asked for structured output and it was checked.
    pub(crate) schema_passed: Option<bool>,
}

impl Answer {
    pub(crate) fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// Length of the answer's text in characters (what the gateway's length gate counts).
    pub(crate) fn chars(&self) -> u64 {
        self.text.chars().count() as u64
    }

    /// A bare successful answer, for tests of the pure parts.
    #[cfg(test)]
    pub(crate) fn answered(text: &str) -> Self {
        Self {
            status: 200,
            text: text.to_owned(),
            tool_calls: Some(Vec::new()),
            finish_reason: Some("stop".into()),
            ..Self::default()
        }
    }

    /// A call that produced no answer.
    pub(crate) fn failed(error: &str) -> Self {
        Self {
            error: Some(error.to_owned()),
            ..Self::default()
        }
    }

    /// The class of the failure, for counting: `http 500`, `unreachable`, `input blocked`…
    pub(crate) fn error_kind(&self) -> Option<String> {
        let error = self.error.as_deref()?;
        Some(if self.status != 0 {
            format!("http {}", self.status)
        } else {
            error
                .split(':')
                .next()
                .unwrap_or(error)
                .trim()
                .to_lowercase()
        })
    }
}

/// Properties an answer should have. Every one that is set is checked on both versions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Expect {
    /// Each of these appears in the answer (case-insensitive).
    #[serde(default)]
    pub(crate) contains: Vec<String>,
    /// None of these appears in the answer (case-insensitive).
    #[serde(default)]
    pub(crate) not_contains: Vec<String>,
    /// A regular expression the answer matches somewhere.
    pub(crate) matches: Option<String>,
    #[serde(skip)]
    pub(super) matches_compiled: Option<regex::Regex>,
    /// The answer parses as JSON.
    #[serde(default)]
    pub(crate) json_valid: bool,
    /// The answer fits the request's `response_format` and its tool calls fit their tools'
    /// `parameters` (the gateway's own schema check).
    #[serde(default)]
    pub(crate) json_schema_valid: bool,
    /// The answer has at most this many characters.
    pub(crate) max_chars: Option<u64>,
    /// The answer has at least this many characters.
    pub(crate) min_chars: Option<u64>,
    /// The answer calls the tool of this name.
    pub(crate) tool_call: Option<String>,
    /// The answer ends for this reason (`stop`, `length`, `tool_calls`, …).
    pub(crate) finish_reason: Option<String>,
}

impl Expect {
    /// Each set property of the expectation, named, and whether `answer` has it. A failed
    /// call has none of them.
    pub(crate) fn check(&self, answer: &Answer) -> Vec<(String, bool)> {
        let ok = answer.is_ok();
        let text = answer.text.to_lowercase();
        let mut results = Vec::new();
        for needle in &self.contains {
            results.push((
                format!("contains: {needle}"),
                ok && text.contains(&needle.to_lowercase()),
            ));
        }
        for needle in &self.not_contains {
            results.push((
                format!("not_contains: {needle}"),
                ok && !text.contains(&needle.to_lowercase()),
            ));
        }
        if let Some(re) = &self.matches_compiled {
            results.push(("matches".into(), ok && re.is_match(&answer.text)));
        }
        if self.json_valid {
            let parses = serde_json::from_str::<Value>(answer.text.trim()).is_ok();
            results.push(("json_valid".into(), ok && parses));
        }
        if self.json_schema_valid {
            results.push((
                "json_schema_valid".into(),
                ok && answer.schema_passed == Some(true),
            ));
        }
        if let Some(max) = self.max_chars {
            results.push(("max_chars".into(), ok && answer.chars() <= max));
        }
        if let Some(min) = self.min_chars {
            results.push(("min_chars".into(), ok && answer.chars() >= min));
        }
        if let Some(tool) = &self.tool_call {
            let called = answer
                .tool_calls
                .iter()
                .flatten()
                .any(|call| &call.name == tool);
            results.push(("tool_call".into(), ok && called));
        }
        if let Some(reason) = &self.finish_reason {
            let same = answer.finish_reason.as_deref() == Some(reason.as_str());
            results.push(("finish_reason".into(), ok && same));
        }
        results
    }

    /// The property's family, for pass rates across cases: `contains: refund` → `contains`.
    pub(crate) fn family(property: &str) -> &str {
        property.split(':').next().unwrap_or(property)
    }
}
