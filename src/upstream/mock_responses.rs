//! The built-in mock's Responses API and embeddings: bodies and typed stream events shaped
//! exactly as OpenAI sends them, so the Responses relay, `sluice demo` and `sluice eval`
//! run the same code against a mock as against a real provider.
//!
//! A Responses stream is `response.created`, `response.in_progress`,
//! `response.output_item.added`, `response.content_part.added`, one
//! `response.output_text.delta` per piece, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done` and `response.completed`
//! (whose response carries `usage` with `output_tokens_details.reasoning_tokens`), each
//! framed as `event: <type>` + `data: <json>` with a rising `sequence_number`. A stored
//! Response's operations (read, input items, cancel, delete) answer as if it were kept.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

/// What one mock Response says.
pub(crate) struct MockResponse<'a> {
    pub(crate) id: &'a str,
    pub(crate) model: &'a str,
    pub(crate) previous_response_id: Option<&'a str>,
    pub(crate) input_tokens: u64,
    /// Output tokens, reasoning tokens included (OpenAI bills them as output).
    pub(crate) output_tokens: u64,
    pub(crate) reasoning_tokens: u64,
}

impl MockResponse<'_> {
    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn usage(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    fn message(&self, text: &str, done: bool) -> Value {
        let content = if done {
            json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
        } else {
            json!([])
        };
        json!({"type": "message", "id": self.message_id(), "role": "assistant",
            "status": if done { "completed" } else { "in_progress" }, "content": content})
    }

    /// The Response object; `text` is `None` while it is still being written.
    pub(crate) fn object(&self, text: Option<&str>) -> Value {
        let mut v = json!({
            "id": self.id, "object": "response", "created_at": 1_700_000_000u64,
            "model": self.model, "status": if text.is_some() { "completed" } else { "in_progress" },
            "output": match text { Some(t) => json!([self.message(t, true)]), None => json!([]) },
            "previous_response_id": self.previous_response_id,
            "parallel_tool_calls": true, "store": true,
        });
        if text.is_some() {
            v["usage"] = self.usage();
        }
        v
    }

    /// Every event of a streamed answer made of `pieces`, framed as server-sent events.
    pub(crate) fn events(&self, pieces: &[&str]) -> Vec<Bytes> {
        let text: String = pieces.concat();
        let item = self.message_id();
        let mut out = Vec::with_capacity(pieces.len() + 8);
        let mut push = |kind: &str, mut data: Value| {
            data["type"] = Value::from(kind);
            data["sequence_number"] = Value::from(out.len());
            out.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
        };
        push("response.created", json!({"response": self.object(None)}));
        push(
            "response.in_progress",
            json!({"response": self.object(None)}),
        );
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": self.message("", false)}),
        );
        let part =
            |t: &str| json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []});
        push(
            "response.content_part.added",
            json!({"item_id": item, "output_index": 0, "content_index": 0, "part": part("")}),
        );
        for piece in pieces {
            push(
                "response.output_text.delta",
                json!({"item_id": item, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
            );
        }
        push(
            "response.output_text.done",
            json!({"item_id": item, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        push(
            "response.content_part.done",
            json!({"item_id": item, "output_index": 0, "content_index": 0, "part": part(&text)}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": self.message(&text, true)}),
        );
        push(
            "response.completed",
            json!({"response": self.object(Some(&text))}),
        );
        out
    }
}

/// The mock's answer to a stored-Response operation on `path` (`responses/{id}`,
/// `…/input_items`, `…/cancel`). The mock keeps nothing: a Response reads back as completed
/// with no output, its input items as an empty list, a cancel as cancelled, a delete as
/// deleted. Any other path or method is a 404 in OpenAI's shape.
pub(crate) fn stored(method: &Method, path: &str) -> (StatusCode, Value) {
    let rest = path.trim_start_matches("responses/");
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let response = |status: &str| {
        json!({"id": id, "object": "response", "created_at": 1_700_000_000u64, "status": status,
            "model": "mock", "output": [], "usage": null})
    };
    match (method.as_str(), tail) {
        ("GET", "") => (StatusCode::OK, response("completed")),
        ("DELETE", "") => (
            StatusCode::OK,
            json!({"id": id, "object": "response.deleted", "deleted": true}),
        ),
        ("GET", "input_items") => (
            StatusCode::OK,
            json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false}),
        ),
        ("POST", "cancel") => (StatusCode::OK, response("cancelled")),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("the mock provider does not serve {method} /v1/{path}"),
                "type": "invalid_request_error", "param": null, "code": "not_found"}}),
        ),
    }
}

/// An embeddings answer: one vector of `dimensions` floats per input, deterministic in the
/// input's position (so tests can compare answers).
pub(crate) fn embeddings(
    model: &str,
    inputs: usize,
    dimensions: usize,
    prompt_tokens: u64,
) -> Value {
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let vector: Vec<f32> = (0..dimensions)
                .map(|d| ((i * 31 + d * 7) % 100) as f32 / 100.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    json!({"object": "list", "model": model, "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
}

/// How many inputs an embeddings request carries: a string or a token array is one, an
/// array of strings (or of token arrays) is one each.
pub(crate) fn embedding_inputs(input: &Value) -> usize {
    match input {
        Value::Array(items) if items.iter().all(Value::is_number) => 1,
        Value::Array(items) => items.len(),
        Value::Null => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_response_operations_answer_like_openai_and_nothing_else_does() {
        let (status, v) = stored(&Method::GET, "responses/resp_1");
        assert_eq!(
            (status, v["id"].as_str(), v["object"].as_str()),
            (StatusCode::OK, Some("resp_1"), Some("response"))
        );
        let (_, v) = stored(&Method::DELETE, "responses/resp_1");
        assert_eq!(v["deleted"], true);
        let (_, v) = stored(&Method::GET, "responses/resp_1/input_items");
        assert_eq!(v["data"], json!([]));
        let (_, v) = stored(&Method::POST, "responses/resp_1/cancel");
        assert_eq!(v["status"], "cancelled");
        for (method, path) in [
            (Method::POST, "responses/resp_1"),
            (Method::GET, "responses/resp_1/other"),
        ] {
            let (status, v) = stored(&method, path);
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(v["error"]["code"], "not_found");
        }
    }

    #[test]
    fn a_stream_has_rising_sequence_numbers_and_ends_with_usage() {
        let r = MockResponse {
            id: "resp_1",
            model: "m",
            previous_response_id: None,
            input_tokens: 5,
            output_tokens: 3,
            reasoning_tokens: 1,
        };
        let events = r.events(&["Hel", "lo"]);
        assert_eq!(events.len(), 10);
        for (i, e) in events.iter().enumerate() {
            let text = std::str::from_utf8(e).unwrap();
            let data: Value =
                serde_json::from_str(text.lines().nth(1).unwrap().trim_start_matches("data: "))
                    .unwrap();
            assert_eq!(data["sequence_number"], i);
        }
        let last = std::str::from_utf8(events.last().unwrap()).unwrap();
        assert!(last.starts_with("event: response.completed\n"));
        assert!(last.contains(r#""reasoning_tokens":1"#));
    }

    #[test]
    fn embedding_inputs_are_counted_like_openai_does() {
        assert_eq!(embedding_inputs(&json!("a")), 1);
        assert_eq!(embedding_inputs(&json!(["a", "b"])), 2);
        assert_eq!(embedding_inputs(&json!([1, 2, 3])), 1);
        assert_eq!(embedding_inputs(&json!([[1], [2]])), 2);
    }
}
