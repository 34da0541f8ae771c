//! Replay: one chat or Responses request sent to one version the way the gateway sends it
//! (the same provider code, no retries, never streamed), read back into an [`Answer`].
//!
//! In: a request body (a Responses request when it has `input` and no `messages`, then sent
//! to `POST /v1/responses` with `store: false`) and a version. Out: the answer's text, tool calls, finish reason,
//! tokens (the upstream's usage, or counted with the version's tokenizer and marked as
//! estimated), cost at the version's price, wall-clock latency, and the schema verdict.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::catalog::Version;
use crate::eval::case::Answer;
use crate::measure::schema::{Expectation, SchemaChecker};
use crate::measure::tokens::count_input;
use crate::measure::tokens::count_prompt;
use crate::openai::completion::summarize_completion;
use crate::openai::responses::{self, summarize_response};
use crate::types::Api;
use crate::upstream::{Call, UpstreamError};

/// Characters of an error body kept in an answer's error message.
const ERROR_EXCERPT_CHARS: usize = 300;

/// Which API a request body is for: the Responses API when it has an `input` and no
/// `messages`, else chat completions.
pub(crate) fn api_of(request: &Map<String, Value>) -> Api {
    if request.contains_key("input") && !request.contains_key("messages") {
        Api::Responses
    } else {
        Api::Chat
    }
}

/// The body a version gets: `model` set to its model, streaming off; a Responses request
/// is not stored upstream (nobody continues an eval's answer).
pub(crate) fn body_for(request: &Map<String, Value>, model: &str) -> Bytes {
    let mut body = request.clone();
    body.insert("model".into(), model.into());
    body.insert("stream".into(), false.into());
    body.remove("stream_options");
    if api_of(request) == Api::Responses {
        body.insert("store".into(), false.into());
    }
    Bytes::from(serde_json::to_vec(&body).expect("a JSON map serializes"))
}

/// The request's structured-output expectation, as the gateway reads it: `response_format`
/// and `tools` of a chat request, `text.format` and function `tools` of a Responses request.
pub(crate) fn expectation_of(request: &Map<String, Value>) -> Expectation {
    let raw = |field: &str| request.get(field).map(Value::to_string);
    match api_of(request) {
        Api::Responses => responses::expectation(raw("text").as_deref(), raw("tools").as_deref()),
        _ => Expectation::from_request(raw("response_format").as_deref(), raw("tools").as_deref()),
    }
}

/// What an answer says, whichever API gave it.
struct Read {
    text: String,
    tool_calls: Vec<crate::measure::schema::ToolCall>,
    usage: Option<crate::types::Usage>,
    finish_reason: Option<String>,
}

/// Reads a 2xx body of `api`; the error says why it is not an answer of that API.
fn read_answer(api: Api, bytes: &[u8]) -> Result<Read, String> {
    match api {
        Api::Responses => {
            let v: Value =
                serde_json::from_slice(bytes).map_err(|e| format!("not a Response: {e}"))?;
            let s = summarize_response(&v).map_err(|why| format!("not a Response: {why}"))?;
            Ok(Read {
                finish_reason: s.finish_reason(),
                text: s.output.text,
                tool_calls: s.output.tool_calls,
                usage: s.usage,
            })
        }
        _ => {
            let s = summarize_completion(bytes)
                .map_err(|why| format!("not a chat completion: {why}"))?;
            Ok(Read {
                text: s.all_text(),
                tool_calls: s
                    .choices
                    .iter()
                    .flat_map(|c| c.tool_calls.iter().cloned())
                    .collect(),
                usage: s.usage,
                finish_reason: s.finish_reason,
            })
        }
    }
}

/// Sends `request` to `version` and measures the answer.
pub(crate) async fn call_version(
    version: &Version,
    request: &Map<String, Value>,
    request_id: &str,
    checker: &SchemaChecker,
) -> Answer {
    let api = api_of(request);
    let body = body_for(request, &version.model);
    let started = Instant::now();
    let outcome = send_whole(version, api, body.clone(), request_id).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, bytes) = match outcome {
        Ok(reply) => reply,
        Err(e) => {
            return Answer {
                latency_ms,
                ..Answer::failed(&format!("{}: {e}", error_kind(&e)))
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
    let reply = Reply {
        api,
        status,
        latency_ms,
    };
    match read_answer(api, &bytes) {
        Ok(read) => measure(version, request, &body, &reply, read, checker),
        Err(why) => Answer {
            status,
            latency_ms,
            ..Answer::failed(&why)
        },
    }
}

/// Sends `body` unstreamed and reads the whole reply: (HTTP status, body bytes).
async fn send_whole(
    version: &Version,
    api: Api,
    body: Bytes,
    request_id: &str,
) -> Result<(u16, Vec<u8>), UpstreamError> {
    let call = Call {
        endpoint: api.endpoint(),
        client_headers: None,
        content_type: None,
        body,
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
    match tokio::time::timeout(limit * 2, read).await {
        Ok(outcome) => outcome,
        Err(_) => Err(UpstreamError::Timeout {
            after_ms: (limit * 2).as_millis() as u64,
        }),
    }
}

/// The short name an answer's error message starts with.
fn error_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Unreachable(_) => "unreachable",
        UpstreamError::Timeout { .. } => "timeout",
        UpstreamError::Interrupted(_) => "interrupted",
        UpstreamError::Encoded(_) => "encoded",
        UpstreamError::Informational(_) => "informational",
    }
}

/// A successful reply as sent and timed.
struct Reply {
    api: Api,
    status: u16,
    latency_ms: f64,
}

/// The answer's figures: tokens (counted when the upstream gave no usage), cost at the
/// version's price, and the schema verdict against what the request asked for.
fn measure(
    version: &Version,
    request: &Map<String, Value>,
    body: &Bytes,
    reply: &Reply,
    read: Read,
    checker: &SchemaChecker,
) -> Answer {
    let Read {
        text,
        tool_calls,
        usage,
        finish_reason,
    } = read;
    let (prompt_tokens, completion_tokens, tokens_estimated) =
        match usage.and_then(crate::types::Usage::plausible) {
            Some(u) => (u.prompt_tokens, u.completion_tokens, false),
            None => (
                match reply.api {
                    Api::Responses => count_input(version.encoding, body),
                    _ => count_prompt(version.encoding, body),
                },
                version.encoding.count(&text),
                true,
            ),
        };
    let verdict = checker.check(&expectation_of(request), &text, &tool_calls);
    Answer {
        status: reply.status,
        error: None,
        cost_usd: version.price.cost_usd(prompt_tokens, completion_tokens),
        text,
        tool_calls: Some(tool_calls),
        finish_reason,
        prompt_tokens,
        completion_tokens,
        tokens_estimated,
        latency_ms: reply.latency_ms,
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
    fn a_responses_request_goes_to_responses_unstored_and_is_read_as_a_response() {
        let request: Map<String, Value> = serde_json::from_str(
            r#"{"model":"route","input":"hi","text":{"format":{"type":"json_object"}}}"#,
        )
        .unwrap();
        assert_eq!(api_of(&request), Api::Responses);
        assert_eq!(api_of(&Map::new()), Api::Chat);
        let body: Value = serde_json::from_slice(&body_for(&request, "gpt-x")).unwrap();
        assert_eq!(
            (&body["store"], &body["model"]),
            (&Value::Bool(false), &Value::from("gpt-x"))
        );
        assert!(expectation_of(&request).response != crate::measure::schema::ResponseFormat::Text);
        let answer = br#"{"object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},
            "output":[{"type":"message","content":[{"type":"output_text","text":"{}"}]},
                      {"type":"function_call","name":"f","arguments":"{}"}],
            "usage":{"input_tokens":3,"output_tokens":4}}"#;
        let read = read_answer(Api::Responses, answer).unwrap();
        assert_eq!(read.text, "{}");
        assert_eq!(read.tool_calls.len(), 1);
        assert_eq!(read.finish_reason.as_deref(), Some("max_output_tokens"));
        assert_eq!(
            read.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 4))
        );
        assert!(read_answer(Api::Responses, b"{}").is_err());
        assert!(read_answer(Api::Chat, answer).is_err());
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
