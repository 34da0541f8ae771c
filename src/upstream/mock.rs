//! The built-in mock provider: synthetic chat completions shaped by a version's `mock` table
//! (time to first token, tokens per second, answer length, error rate), no network.
//!
//! It answers exactly like an OpenAI server would, streamed or not, so everything after the
//! upstream stage runs the same code for a mock as for a real provider.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::stream;
use rand::Rng;
use serde_json::json;

use super::mock_responses::{self, MockResponse};
use super::{Call, Reply, UpstreamError};
use crate::config::MockConfig;
use crate::measure::tokens::{Encoding, count_embedding_input, count_input, count_prompt};

/// Vector length of the mock's embeddings unless the request asks for `dimensions`.
const EMBEDDING_DIMENSIONS: u64 = 8;

const WORDS: [&str; 12] = [
    " the",
    " gateway",
    " routes",
    " each",
    " request",
    " to",
    " a",
    " model",
    " version",
    " and",
    " measures",
    " it",
];

pub(crate) struct MockProvider {
    pub(crate) timeout: Duration,
}

impl MockProvider {
    /// Answers `call` as the version's `mock` shape says: after the time to first token, a
    /// server error at the error rate, else the operation's answer (chat completions,
    /// Responses, embeddings, stored Responses); another operation is a 404. Never fails.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let shape = call.mock.as_deref().cloned().unwrap_or_default();
        let fail = shape.error_rate > 0.0 && rand::rng().random_bool(shape.error_rate.min(1.0));
        let spread = || {
            if shape.jitter > 0.0 {
                rand::rng().random_range(1.0 - shape.jitter..=1.0 + shape.jitter)
            } else {
                1.0
            }
        };
        let ttft = Duration::from_millis(shape.ttft_ms).mul_f64(spread());
        if fail {
            tokio::time::sleep(ttft).await;
            let body = json!({"error": {"message": "mock upstream failure", "type": "server_error", "param": null, "code": "mock_error"}});
            return Ok(json_reply(StatusCode::INTERNAL_SERVER_ERROR, &body));
        }
        let tokens = ((f64::from(shape.output_tokens) * spread()).round() as usize).max(1);
        match call.endpoint.route() {
            "chat/completions" => Ok(chat(&call, &shape, ttft, tokens).await),
            "responses" => Ok(responses(&call, &shape, ttft, tokens).await),
            "embeddings" => {
                tokio::time::sleep(ttft).await;
                Ok(embeddings(&call))
            }
            other if other.starts_with("responses/") => {
                let (status, body) = mock_responses::stored(&call.endpoint.method, other);
                Ok(json_reply(status, &body))
            }
            other => {
                let body = json!({"error": {"message": format!("the mock provider does not serve /v1/{other}"), "type": "invalid_request_error", "param": null, "code": "not_found"}});
                Ok(json_reply(StatusCode::NOT_FOUND, &body))
            }
        }
    }
}

/// A JSON answer with `status`.
fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", Bytes::from(body.to_string()))
}

/// An embeddings answer: one vector per input, `dimensions` long (8 unless asked).
fn embeddings(call: &Call<'_>) -> Reply {
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
    let inputs = mock_responses::embedding_inputs(&body["input"]);
    let dimensions = body["dimensions"].as_u64().unwrap_or(EMBEDDING_DIMENSIONS);
    let prompt_tokens = count_embedding_input(Encoding::for_model(call.model), &body);
    let answer = mock_responses::embeddings(call.model, inputs, dimensions as usize, prompt_tokens);
    json_reply(StatusCode::OK, &answer)
}

/// A chat completion of `tokens` words: whole after the time it would take to stream, or
/// streamed at the shape's pace (with the usage chunk when asked for).
async fn chat(call: &Call<'_>, shape: &MockConfig, ttft: Duration, tokens: usize) -> Reply {
    let id = format!("chatcmpl-mock-{}", call.request_id);
    let model = call.model.to_owned();
    let prompt_tokens = count_prompt(Encoding::for_model(&model), &call.body);
    let per_token = Duration::from_secs_f64(1.0 / shape.tokens_per_s);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens as usize + tokens});
    if !call.stream {
        tokio::time::sleep(ttft + per_token * tokens.saturating_sub(1) as u32).await;
        let text: String = (0..tokens).map(|i| WORDS[i % WORDS.len()]).collect();
        let body = json!({
            "id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text.trim_start()}, "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
        });
        return json_reply(StatusCode::OK, &body);
    }
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events: Vec<(Duration, Bytes)> = Vec::with_capacity(tokens + 4);
    events.push((
        Duration::ZERO,
        chunk(json!({"role": "assistant", "content": ""}), None),
    ));
    for i in 0..tokens {
        let wait = if i == 0 { ttft } else { per_token };
        let word = if i == 0 {
            WORDS[0].trim_start()
        } else {
            WORDS[i % WORDS.len()]
        };
        events.push((wait, chunk(json!({"content": word}), None)));
    }
    events.push((Duration::ZERO, chunk(json!({}), Some("stop"))));
    if call.include_usage {
        let c = json!({"id": format!("chatcmpl-mock-{}", call.request_id), "object": "chat.completion.chunk", "created": 0, "model": call.model, "choices": [], "usage": usage});
        events.push((Duration::ZERO, Bytes::from(format!("data: {c}\n\n"))));
    }
    events.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    let body = stream::unfold(events.into_iter(), |mut events| async move {
        let (wait, bytes) = events.next()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some((Ok(bytes), events))
    });
    Reply {
        status: StatusCode::OK,
        headers: content_type("text/event-stream"),
        body: Box::pin(body),
    }
}

/// A Responses API answer, streamed as typed events or whole, timed like a chat answer.
/// A request that asks for `reasoning` reports a quarter of its output as reasoning tokens.
async fn responses(call: &Call<'_>, shape: &MockConfig, ttft: Duration, tokens: usize) -> Reply {
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
    let id = format!("resp_mock{}", call.request_id.trim_start_matches("req_"));
    let words: Vec<&str> = (0..tokens)
        .map(|i| {
            if i == 0 {
                WORDS[0].trim_start()
            } else {
                WORDS[i % WORDS.len()]
            }
        })
        .collect();
    let reasoning = if body.get("reasoning").is_some_and(|r| !r.is_null()) {
        tokens as u64 / 4
    } else {
        0
    };
    let answer = MockResponse {
        id: &id,
        model: call.model,
        previous_response_id: body["previous_response_id"].as_str(),
        input_tokens: count_input(Encoding::for_model(call.model), &call.body),
        output_tokens: tokens as u64 + reasoning,
        reasoning_tokens: reasoning,
    };
    let per_token = Duration::from_secs_f64(1.0 / shape.tokens_per_s);
    if !call.stream {
        tokio::time::sleep(ttft + per_token * tokens.saturating_sub(1) as u32).await;
        let v = answer.object(Some(&words.concat()));
        return reply(
            StatusCode::OK,
            "application/json",
            Bytes::from(v.to_string()),
        );
    }
    // Events before the first delta come at once, the first delta after the TTFT, each
    // further delta one token later.
    let events = answer.events(&words);
    let first_delta = 4;
    let timed: Vec<(Duration, Bytes)> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let wait = if i == first_delta {
                ttft
            } else if i > first_delta && i < first_delta + tokens {
                per_token
            } else {
                Duration::ZERO
            };
            (wait, e)
        })
        .collect();
    let body = stream::unfold(timed.into_iter(), |mut events| async move {
        let (wait, bytes) = events.next()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some((Ok(bytes), events))
    });
    Reply {
        status: StatusCode::OK,
        headers: content_type("text/event-stream"),
        body: Box::pin(body),
    }
}

fn content_type(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
    headers
}

fn reply(status: StatusCode, kind: &'static str, body: Bytes) -> Reply {
    Reply {
        status,
        headers: content_type(kind),
        body: Box::pin(stream::once(async move { Ok(body) })),
    }
}
