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

use super::{Call, Reply, UpstreamError};
use crate::measure::tokens::{Encoding, count_prompt};

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

pub struct MockProvider {
    pub timeout: Duration,
}

impl MockProvider {
    pub async fn send(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
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
            return Ok(reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                Bytes::from(body.to_string()),
            ));
        }
        let id = format!("chatcmpl-mock-{}", call.request_id);
        let model = call.model.to_owned();
        let tokens = ((f64::from(shape.output_tokens) * spread()).round() as usize).max(1);
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
            return Ok(reply(
                StatusCode::OK,
                "application/json",
                Bytes::from(body.to_string()),
            ));
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
        Ok(Reply {
            status: StatusCode::OK,
            headers: content_type("text/event-stream"),
            body: Box::pin(body),
        })
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
