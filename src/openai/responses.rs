//! The Responses API on the wire, as far as the gateway reads it: what a request expects
//! (`text.format`, function `tools`), what a Response says (id, status, usage with
//! reasoning tokens, output text and function calls), and the typed stream events.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::measure::schema::{Expectation, ResponseFormat, ToolCall};
use crate::openai::completion::ChoiceText;
use crate::types::Usage;

/// What a Responses request expects of its answer: `text.format` (`json_schema` with a
/// flat `schema`, or `json_object`) and each function tool's `parameters`.
pub(crate) fn expectation(text: Option<&str>, tools: Option<&str>) -> Expectation {
    let response = text
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
        .map(|v| match v["format"]["type"].as_str() {
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => match v["format"].get("schema") {
                Some(schema) => ResponseFormat::JsonSchema(schema.to_string().into()),
                None => ResponseFormat::Text,
            },
            _ => ResponseFormat::Text,
        })
        .unwrap_or_default();
    let tools = tools
        .and_then(|raw| serde_json::from_str::<Vec<Value>>(raw).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["type"] == "function")
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?.to_owned();
            let params = t.get("parameters")?;
            Some((name, Arc::from(params.to_string())))
        })
        .collect();
    Expectation { response, tools }
}

/// The `usage` of a Response.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub(crate) struct ResponseUsageView {
    #[serde(default)]
    pub(crate) input_tokens: u64,
    #[serde(default)]
    pub(crate) output_tokens: u64,
    #[serde(default)]
    pub(crate) output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub(crate) struct OutputDetails {
    #[serde(default)]
    pub(crate) reasoning_tokens: u64,
}

/// What a Response object says, for measurement and checks.
#[derive(Debug, Default, Clone)]
pub(crate) struct ResponseSummary {
    pub(crate) id: Option<String>,
    pub(crate) model: Option<String>,
    /// `completed`, `incomplete`, `failed`, `cancelled`, `in_progress`, `queued`.
    pub(crate) status: Option<String>,
    /// `incomplete_details.reason`, e.g. `max_output_tokens` or `content_filter`.
    pub(crate) incomplete_reason: Option<String>,
    pub(crate) usage: Option<Usage>,
    pub(crate) reasoning_tokens: Option<u64>,
    /// Every `output_text` and `refusal` of the output in order, and the function calls.
    pub(crate) output: ChoiceText,
}

impl ResponseSummary {
    /// The finish reason recorded: the incomplete reason when there is one, else the status.
    pub(crate) fn finish_reason(&self) -> Option<String> {
        self.incomplete_reason
            .clone()
            .or_else(|| self.status.clone())
    }

    /// Length of the output text in characters (what the length gate counts).
    pub(crate) fn chars(&self) -> u64 {
        self.output.text.chars().count() as u64
    }
}

/// Reads a Response object (a whole answer, or the `response` of a terminal stream event).
/// An error means it is not a Response.
pub(crate) fn summarize_response(v: &Value) -> Result<ResponseSummary, String> {
    if v["object"] != "response" && v.get("output").is_none() {
        return Err("the body is not a Response (no `object: response`, no `output`)".into());
    }
    let usage = v
        .get("usage")
        .filter(|u| !u.is_null())
        .and_then(|u| ResponseUsageView::deserialize(u).ok());
    let mut output = ChoiceText::default();
    for item in v["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    let text = part["text"].as_str().or_else(|| part["refusal"].as_str());
                    output.text.push_str(text.unwrap_or_default());
                }
            }
            Some("function_call") => output.tool_calls.push(ToolCall {
                name: item["name"].as_str().unwrap_or_default().to_owned(),
                arguments: item["arguments"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => {}
        }
    }
    let text = |x: &Value| x.as_str().map(str::to_owned);
    Ok(ResponseSummary {
        id: text(&v["id"]),
        model: text(&v["model"]),
        status: text(&v["status"]),
        incomplete_reason: text(&v["incomplete_details"]["reason"]),
        usage: usage.map(|u| Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            estimated: false,
        }),
        reasoning_tokens: usage.and_then(|u| u.output_tokens_details.map(|d| d.reasoning_tokens)),
        output,
    })
}

/// Replaces the text of each `output_text` part of a Response object with `redact(text)`
/// where it returns a new text; says whether anything changed.
pub(crate) fn redact_output(v: &mut Value, redact: &mut dyn FnMut(&str) -> Option<String>) -> bool {
    let mut changed = false;
    for item in v["output"].as_array_mut().into_iter().flatten() {
        for part in item["content"].as_array_mut().into_iter().flatten() {
            if let Some(new) = part["text"].as_str().and_then(&mut *redact) {
                part["text"] = Value::String(new);
                changed = true;
            }
        }
    }
    changed
}

/// The parts of one stream event the relay reads on every event (borrowed, no allocation
/// for the common delta events).
#[derive(Deserialize)]
pub(crate) struct EventView<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) delta: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) output_index: Option<usize>,
    #[serde(default)]
    pub(crate) content_index: Option<usize>,
}

/// Event types whose delta is answer output: the first one stamps the TTFT.
pub(crate) fn is_output_delta(kind: &str) -> bool {
    matches!(
        kind,
        "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
    )
}

/// Event types that end a Response and carry it whole.
pub(crate) fn is_terminal(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_format_and_flat_function_tools_become_an_expectation() {
        let text = json!({"format": {"type": "json_schema", "name": "t", "schema": {"type": "object"}, "strict": true}}).to_string();
        let tools = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}, {"type": "web_search"}]).to_string();
        let e = expectation(Some(&text), Some(&tools));
        assert_eq!(
            e.response,
            ResponseFormat::JsonSchema(r#"{"type":"object"}"#.into())
        );
        assert_eq!(e.tools.len(), 1);
        assert_eq!(e.tools[0].0, "lookup");
        assert!(!expectation(Some(r#"{"format":{"type":"text"}}"#), None).asks());
    }

    #[test]
    fn a_response_summary_keeps_reasoning_tokens_apart_and_reads_incomplete_details() {
        let v = json!({"id": "resp_1", "object": "response", "model": "m", "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [{"type": "reasoning", "summary": []},
                {"type": "message", "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text", "text": "lo"}]},
                {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}],
            "usage": {"input_tokens": 9, "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 32}}});
        let s = summarize_response(&v).unwrap();
        assert_eq!(s.output.text, "Hello");
        assert_eq!(s.output.tool_calls.len(), 1);
        assert_eq!(s.usage.unwrap().completion_tokens, 40);
        assert_eq!(s.reasoning_tokens, Some(32));
        assert_eq!(s.finish_reason().as_deref(), Some("max_output_tokens"));
        assert!(summarize_response(&json!({"choices": []})).is_err());
    }
}
