//! Replay: one chat request sent to one version the way the gateway sends it (the same
//! provider code, no retries, never streamed), read back into an [`Answer`].
//!
//! In: a request body and a version. Out: the answer's text, tool calls, finish reason,
//! tokens (the upstream's usage, or counted with the version's tokenizer and marked as
//! estimated), cost at the version's price, wall-clock latency, and the schema verdict.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::catalog::Version;
use crate::eval::case::Answer;
use crate::measure::schema::{Expectation, SchemaChecker};
use crate::measure::tokens::count_prompt;
use crate::openai::completion::summarize_completion;
use crate::upstream::{Call, UpstreamError};

/// Characters of an error body kept in an answer's error message.
const ERROR_EXCERPT_CHARS: usize = 300;

/// The body a version gets: `model` set to its model, streaming off.
pub fn body_for(request: &Map<String, Value>, model: &str) -> Bytes {
    let mut body = request.clone();
    body.insert("model".into(), model.into());
    body.insert("stream".into(), false.into());
    body.remove("stream_options");
    Bytes::from(serde_json::to_vec(&body).expect("a JSON map serializes"))
}

/// The request's structured-output expectation, as the gateway reads it.
pub fn expectation_of(request: &Map<String, Value>) -> Expectation {
    let raw = |field: &str| request.get(field).map(Value::to_string);
    Expectation::from_request(raw("response_format").as_deref(), raw("tools").as_deref())
}

/// Sends `request` to `version` and measures the answer.
pub async fn call_version(
    version: &Version,
    request: &Map<String, Value>,
    request_id: &str,
    checker: &SchemaChecker,
) -> Answer {
    let body = body_for(request, &version.model);
    let started = Instant::now();
    let call = Call {
        endpoint: crate::upstream::endpoint::Endpoint::chat(),
        client_headers: None,
        content_type: None,
        body: body.clone(),
        stream: false,
        include_usage: false,
        model: &version.model,
        request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: None,
    };
    let read = async {
        let reply = version.provider.send(call).await?;
        let mut bytes = Vec::new();
        let mut stream = reply.body;
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok::<_, UpstreamError>((reply.status.as_u16(), bytes))
    };
    // The provider bounds the wait for headers; the body gets the same bound again.
    let limit = version.provider.timeout();
    let outcome = match tokio::time::timeout(limit * 2, read).await {
        Ok(outcome) => outcome,
        Err(_) => Err(UpstreamError::Timeout {
            after_ms: (limit * 2).as_millis() as u64,
        }),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, bytes) = match outcome {
        Ok(reply) => reply,
        Err(e) => {
            let kind = match e {
                UpstreamError::Unreachable(_) => "unreachable",
                UpstreamError::Timeout { .. } => "timeout",
                UpstreamError::Interrupted(_) => "interrupted",
            };
            return Answer {
                latency_ms,
                ..Answer::failed(&format!("{kind}: {e}"))
            };
        }
    };
    if !(200..300).contains(&status) {
        return Answer {
            status,
            latency_ms,
            ..Answer::failed(&format!("HTTP {status}: {}", error_message(&bytes)))
        };
    }
    let summary = match summarize_completion(&bytes) {
        Ok(summary) => summary,
        Err(why) => {
            return Answer {
                status,
                latency_ms,
                ..Answer::failed(&format!("not a chat completion: {why}"))
            };
        }
    };
    let text = summary.all_text();
    let tool_calls: Vec<_> = summary
        .choices
        .iter()
        .flat_map(|c| c.tool_calls.iter().cloned())
        .collect();
    let (prompt_tokens, completion_tokens, tokens_estimated) = match summary.usage {
        Some(u) => (u.prompt_tokens, u.completion_tokens, false),
        None => (
            count_prompt(version.encoding, &body),
            version.encoding.count(&text),
            true,
        ),
    };
    let verdict = checker.check(&expectation_of(request), &text, &tool_calls);
    Answer {
        status,
        error: None,
        cost_usd: version.price.cost_usd(prompt_tokens, completion_tokens),
        text,
        tool_calls: Some(tool_calls),
        finish_reason: summary.finish_reason,
        prompt_tokens,
        completion_tokens,
        tokens_estimated,
        latency_ms,
        schema_passed: verdict.failed().map(|failed| !failed),
    }
}

/// OpenAI's `error.message` of an error body, or the start of the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        .chars()
        .take(ERROR_EXCERPT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_version_model_and_never_streams() {
        let request: Map<String, Value> = serde_json::from_str(
            r#"{"model":"route","stream":true,"stream_options":{"include_usage":true},"messages":[],"seed":7}"#,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&body_for(&request, "gpt-x")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model":"gpt-x","stream":false,"messages":[],"seed":7})
        );
    }

    #[test]
    fn error_bodies_yield_their_message() {
        assert_eq!(
            error_message(br#"{"error":{"message":"slow down"}}"#),
            "slow down"
        );
        assert_eq!(error_message(b"<html>"), "<html>");
    }
}
