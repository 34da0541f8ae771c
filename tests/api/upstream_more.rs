//! The mock upstream's side beyond chat completions: the Responses API (typed stream
//! events, usage with reasoning tokens, `previous_response_id`, stored responses), embeddings,
//! legacy completions, moderations, multipart audio, files, and Azure OpenAI's URL and header
//! shape. Every call is recorded with its method, path, query, headers and raw body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::helpers::{OK_TEXT, OK_USAGE};

/// Reasoning tokens the mock reports when a Responses request asks for `reasoning`.
pub const REASONING_TOKENS: u64 = 2;

/// What the canary's model (`ok-canary`) answers on the Responses API: not `OK_TEXT`, so a
/// test can tell which version's answer it holds.
pub const CANARY_TEXT: &str = "Hello from the canary!";

/// One call the mock got.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
pub struct Calls {
    pub calls: Mutex<Vec<Call>>,
    /// Responses made, by id: what GET /responses/{id} answers.
    stored: Mutex<BTreeMap<String, Value>>,
    /// Set by [`Calls::gate_streams`]: each streamed Response event waits for a permit.
    steps: Mutex<Option<Arc<Semaphore>>>,
}

impl Calls {
    /// From now on, a streamed Response sends each of its events only once it takes a permit
    /// of the returned semaphore (none at first): the test decides when each event goes.
    pub fn gate_streams(&self) -> Arc<Semaphore> {
        let steps = Arc::new(Semaphore::new(0));
        *self.steps.lock().unwrap() = Some(steps.clone());
        steps
    }

    pub fn all(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls to paths ending in `suffix`.
    pub fn to(&self, suffix: &str) -> Vec<Call> {
        self.all()
            .into_iter()
            .filter(|c| c.path.ends_with(suffix))
            .collect()
    }
}

/// The sluice config for the routes these tests use; `root` is the mock's `http://host:port`.
pub fn config(upstream_url: &str) -> String {
    let root = upstream_url.trim_end_matches("/v1");
    format!(
        r#"
[providers.azure]
kind = "azure"
endpoint = "{root}"
api_version = "2024-10-21"
api_key_env = "TEST_AZURE_KEY"
timeout_ms = 2000

[providers.azure-v1]
kind = "azure"
endpoint = "{root}"
api_version = "v1"
bearer_token_env = "TEST_ENTRA_TOKEN"
timeout_ms = 2000

[providers.hdr]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 2000
forward_headers = ["x-tenant"]
headers = {{ "x-static" = "yes" }}
organization = "org-123"
project = "proj-9"

[versions.az-4o]
provider = "azure"
model = "gpt-4o"
deployment = "gpt4o-prod"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.az-emb]
provider = "azure"
model = "text-embedding-3-small"
deployment = "emb-prod"
price = {{ input_per_mtok = 0.02, output_per_mtok = 0.0 }}
[versions.az-filtered]
provider = "azure"
model = "gpt-4o"
deployment = "filtered"
[versions.az-v1]
provider = "azure-v1"
model = "gpt-4o"
deployment = "gpt4o-v1"
[versions.emb]
provider = "up"
model = "emb-small"
price = {{ input_per_mtok = 0.02, output_per_mtok = 0.0 }}
[versions.emb-canary]
provider = "up"
model = "emb-large"
price = {{ input_per_mtok = 0.13, output_per_mtok = 0.0 }}
[versions.hdr]
provider = "hdr"
model = "ok"
[versions.limited]
provider = "up"
model = "limited"
[versions.whisper]
provider = "up"
model = "whisper-1"

[routes.azure]
stable = "az-4o"
[routes.azure-emb]
stable = "az-emb"
[routes.azure-v1]
stable = "az-v1"
[routes.azure-filtered]
stable = "az-filtered"
[routes.embed]
stable = "emb"
[routes.headers]
stable = "hdr"
[routes.limited]
stable = "limited"
[routes.speech]
stable = "whisper"
"#
    )
}

/// The mock's routes beyond `/v1/chat/completions`, as a fallback that records every call.
pub fn router(calls: Arc<Calls>) -> Router {
    Router::new().fallback(handle).with_state(calls)
}

async fn handle(
    State(calls): State<Arc<Calls>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    calls.calls.lock().unwrap().push(Call {
        method: method.clone(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers: headers.clone(),
        body: body.clone(),
    });
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(rest) = path.split("/responses/").nth(1) {
        return stored(&calls, &method, rest);
    }
    if path.ends_with("/responses") {
        return responses(&calls, &json);
    }
    if path.ends_with("/embeddings") {
        return embeddings(&json, &path);
    }
    if path.starts_with("/openai/") && path.ends_with("/chat/completions") {
        return azure_chat(&path, &json);
    }
    match path.as_str() {
        "/v1/completions" => axum::Json(json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": json["model"],
            "choices": [{"text": OK_TEXT, "index": 0, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}))
        .into_response(),
        "/v1/moderations" => axum::Json(json!({"id": "modr-1", "model": json["model"],
            "results": [{"flagged": false, "categories": {}, "category_scores": {}}]}))
        .into_response(),
        "/v1/audio/transcriptions" => axum::Json(json!({"text": OK_TEXT,
            "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17}}))
        .into_response(),
        "/v1/files" => axum::Json(json!({"object": "list", "data": [], "has_more": false})).into_response(),
        _ => (StatusCode::NOT_FOUND, format!("mock upstream has no {method} {path}")).into_response(),
    }
}

fn sse(events: Vec<String>) -> Response {
    let body = Body::from_stream(futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
    ));
    ([("content-type", "text/event-stream")], body).into_response()
}

/// A Response object with `text` as its one output text.
fn response_object(id: &str, model: &str, text: Option<&str>, request: &Value) -> Value {
    let (input, output) = OK_USAGE;
    let reasoning = if request.get("reasoning").is_some() {
        REASONING_TOKENS
    } else {
        0
    };
    let mut v = json!({"id": id, "object": "response", "created_at": 1, "model": model,
        "status": if text.is_some() { "completed" } else { "in_progress" },
        "previous_response_id": request["previous_response_id"], "output": []});
    if let Some(text) = text {
        v["output"] = json!([{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}]);
        // `x_test_call: {name, arguments}` adds a function call to the output.
        if let Some(call) = request.get("x_test_call") {
            v["output"].as_array_mut().unwrap().push(json!({"type": "function_call", "id": "fc_1",
                "call_id": "call_1", "name": call["name"], "arguments": call["arguments"], "status": "completed"}));
        }
        if model != "nousage" {
            v["usage"] = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output + reasoning, "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": input + output + reasoning});
        }
    }
    v
}

fn responses(calls: &Calls, request: &Value) -> Response {
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let n = calls.calls.lock().unwrap().len();
    let id = format!("resp_{}_{n}", model.replace(['-', '.'], ""));
    if model == "limited" {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("retry-after", "7"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-limit-requests", "60"),
            ],
            axum::Json(json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})),
        )
            .into_response();
    }
    let answer = match model.as_str() {
        "schema-good" => r#"{"id": 7, "status": "open"}"#.to_owned(),
        "schema-bad" => r#"{"id": "seven", "status": "lost"}"#.to_owned(),
        "echo" => request["x_test_answer"]
            .as_str()
            .unwrap_or(OK_TEXT)
            .to_owned(),
        "ok-canary" => CANARY_TEXT.to_owned(),
        _ => OK_TEXT.to_owned(),
    };
    let pieces: Vec<String> = match request["x_test_pieces"].as_array() {
        Some(p) => p
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        None if answer == OK_TEXT => ["Hello", " world", "!"].map(str::to_owned).to_vec(),
        None => vec![answer.clone()],
    };
    let done = response_object(&id, &model, Some(&answer), request);
    calls
        .stored
        .lock()
        .unwrap()
        .insert(id.clone(), done.clone());
    if !request["stream"].as_bool().unwrap_or(false) {
        return ([("x-request-id", "up-resp")], axum::Json(done)).into_response();
    }
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(events.len());
        events.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    let pending = response_object(&id, &model, None, request);
    push("response.created", json!({"response": pending}));
    push("response.in_progress", json!({"response": pending}));
    push(
        "response.output_item.added",
        json!({"output_index": 0,
        "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": "msg_1", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for piece in &pieces {
        push(
            "response.output_text.delta",
            json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": answer}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": "msg_1", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": answer, "annotations": []}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done["output"][0]}),
    );
    push("response.completed", json!({"response": done}));
    let Some(steps) = calls.steps.lock().unwrap().clone() else {
        return sse(events);
    };
    let gated = futures_util::stream::unfold(events.into_iter(), move |mut events| {
        let steps = steps.clone();
        async move {
            let event = events.next()?;
            steps.acquire().await.unwrap().forget();
            Some((Ok::<_, Infallible>(Bytes::from(event)), events))
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(gated),
    )
        .into_response()
}

/// GET/DELETE `…/responses/{id}`, GET `…/input_items`, POST `…/cancel`.
fn stored(calls: &Calls, method: &Method, rest: &str) -> Response {
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(response) = calls.stored.lock().unwrap().get(id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": format!("No response found with id '{id}'."), "type": "invalid_request_error", "param": null, "code": null}})),
        )
            .into_response();
    };
    match (method.as_str(), tail) {
        ("GET", "") => axum::Json(response).into_response(),
        ("DELETE", "") => {
            calls.stored.lock().unwrap().remove(id);
            axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
        }
        ("GET", "input_items") => axum::Json(json!({"object": "list", "data": [
            {"type": "message", "id": "msg_in", "role": "user", "status": "completed",
             "content": [{"type": "input_text", "text": "Say hello"}]}],
            "first_id": "msg_in", "last_id": "msg_in", "has_more": false}))
        .into_response(),
        ("POST", "cancel") => {
            let mut r = response;
            r["status"] = json!("cancelled");
            axum::Json(r).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "no such operation").into_response(),
    }
}

fn embeddings(request: &Value, path: &str) -> Response {
    let model = match path.split("/deployments/").nth(1) {
        Some(rest) => rest.split('/').next().unwrap_or_default().to_owned(),
        None => request["model"].as_str().unwrap_or_default().to_owned(),
    };
    let inputs = match &request["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let dims = if model == "emb-large" { 6 } else { 4 };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": vec![0.5f32; dims]}))
        .collect();
    axum::Json(json!({"object": "list", "model": model, "data": data,
        "usage": {"prompt_tokens": 4 * inputs, "total_tokens": 4 * inputs}}))
    .into_response()
}

/// Azure's chat completion: the deployment from the URL, filter results in the answer; the
/// deployment `filtered` refuses every prompt as Azure's content filter does.
fn azure_chat(path: &str, request: &Value) -> Response {
    let deployment = path
        .split("/deployments/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("v1");
    if deployment == "filtered" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {"violence": {"filtered": true, "severity": "high"}}}}})),
        )
            .into_response();
    }
    let (p, c) = OK_USAGE;
    let model = request["model"].as_str().unwrap_or(deployment);
    axum::Json(json!({"id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": model,
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}],
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
            "message": {"role": "assistant", "content": OK_TEXT},
            "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}))
    .into_response()
}
