//! `TestApp::spawn()`: sluice on port 0 with a temporary SQLite file (or a fresh PostgreSQL
//! schema) in front of `MockUpstream`, a real HTTP server on port 0 that records what it got.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice::app::Server;
use sluice::state::AppState;
use sluice::store::Store;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-123";
pub const AZURE_KEY: &str = "azure-key-456";
pub const ENTRA_TOKEN: &str = "entra-token-789";

/// The answer every `ok` upstream call gives, in words.
pub const OK_TEXT: &str = "Hello world!";
pub const OK_USAGE: (u64, u64) = (11, 3);
/// What the `held` model answers once its gate opens: not `OK_TEXT`, so a test can tell the
/// arms' answers apart.
pub const HELD_TEXT: &str = "Held, then released.";

/// How long a test waits for a condition before it fails. Generous on purpose: on a busy
/// machine a test should get slower, never red.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 20 ms until it gives `Some`, and fails naming `what` after
/// [`PATIENCE`]. The way tests wait for something to happen, instead of a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "still waiting after {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The base URL of a `sluice serve` child that listens on port 0, read from its log once
/// it says where it listens. A port chosen beforehand and freed for the child could be taken
/// by anything in between; the port the kernel gives the child itself cannot. The child must
/// log at `info` (or lower) to the file `log`; fails with that log if it exits first.
pub async fn listening_base(child: &mut std::process::Child, log: &Path) -> String {
    eventually("sluice to say where it listens", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sluice exited ({status}) before listening; its log:\n{text}");
        }
        let address = text
            .lines()
            .filter(|l| l.contains("sluice is listening"))
            .find_map(|l| l.split_once(" address=").map(|(_, a)| a))
            .and_then(|a| a.split_whitespace().next())
            .map(|a| format!("http://{a}"));
        std::future::ready(address)
    })
    .await
}

/// What the mock upstream received in one call.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
pub struct UpstreamState {
    pub received: std::sync::Mutex<Vec<Received>>,
    /// Lets a `gated` stream go on past its first chunks.
    pub release: Notify,
    /// Streams whose body is still being produced (dropped when the gateway hangs up).
    pub open_streams: AtomicUsize,
    pub finished_streams: AtomicUsize,
    /// Calls of the `held` model that have arrived and wait at the gate.
    pub held: AtomicUsize,
    /// The gate of the `held` model: closed until `MockUpstream::open_gate`.
    gate_open: AtomicBool,
    gate: Notify,
}

impl UpstreamState {
    async fn pass_gate(&self) {
        loop {
            let opened = self.gate.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.gate_open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

pub struct MockUpstream {
    pub url: String,
    pub state: Arc<UpstreamState>,
    /// Every call to the paths beyond chat completions (see `upstream_more`).
    pub calls: Arc<crate::upstream_more::Calls>,
}

impl MockUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let calls = Arc::new(crate::upstream_more::Calls::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(upstream_chat))
            .with_state(state.clone())
            .merge(crate::upstream_more::router(calls.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        #[expect(
            clippy::disallowed_methods,
            reason = "the mock upstream lives as long as the test"
        )]
        let _serving = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state, calls }
    }

    /// Lets every `held` call, waiting or still to come, answer.
    pub fn open_gate(&self) {
        self.state.gate_open.store(true, Ordering::SeqCst);
        self.state.gate.notify_waiters();
    }

    /// Calls of the `held` model that have arrived so far.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn ok_events(model: &str, with_usage: bool) -> Vec<String> {
    let mut events = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for word in ["Hello", " world", "!"] {
        events.push(chunk(model, json!({"content": word}), None));
    }
    events.push(chunk(model, json!({}), Some("stop")));
    if with_usage {
        let (p, c) = OK_USAGE;
        let u = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
        events.push(format!("data: {u}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

fn sse(events: impl futures_util::Stream<Item = String> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let body = Body::from_stream(events.map(|e| Ok::<_, Infallible>(Bytes::from(e))));
    ([("content-type", "text/event-stream")], body).into_response()
}

/// Counts a stream as open until it is dropped or ends.
struct OpenStream(Arc<UpstreamState>);
impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn upstream_chat(
    State(state): State<Arc<UpstreamState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received {
        headers: headers.clone(),
        body: body.clone(),
    });
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let wants_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let (p, c) = OK_USAGE;
    let completion = |usage: bool| {
        let mut v = json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": OK_TEXT}, "finish_reason": "stop", "logprobs": null}]});
        if usage {
            v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
        }
        ([("x-request-id", "up-123")], axum::Json(v)).into_response()
    };
    match model.as_str() {
        "ok" | "ok-canary" if stream => sse(futures_util::stream::iter(ok_events(&model, wants_usage))),
        "ok" | "ok-canary" => completion(true),
        "err-canary" => {
            // Every other request fails.
            if state.received.lock().unwrap().len() % 2 == 0 {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {"message": "canary broke", "type": "server_error", "param": null, "code": null}})),
                )
                    .into_response();
            }
            completion(true)
        }
        "tokens-canary" => {
            let v = json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": OK_TEXT.repeat(3)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c * 3 + 20, "total_tokens": p + c * 3 + 20}});
            axum::Json(v).into_response()
        }
        "echo" | "schema-good" | "schema-bad" | "codename-canary" => {
            let answer = match model.as_str() {
                "schema-good" => r#"{"id": 7, "status": "open"}"#.to_owned(),
                "schema-bad" => r#"{"id": "seven", "status": "lost"}"#.to_owned(),
                "codename-canary" => "About the Project Nightingale launch.".to_owned(),
                _ => body["x_test_answer"].as_str().unwrap_or(OK_TEXT).to_owned(),
            };
            let tool_calls = body["x_test_tool_args"].as_str().map(|args| {
                json!([{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": args}}])
            });
            if stream {
                let pieces: Vec<String> = match body["x_test_pieces"].as_array() {
                    Some(p) => p.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                    None => vec![answer],
                };
                let mut events = vec![chunk(&model, json!({"role": "assistant", "content": ""}), None)];
                events.extend(pieces.iter().map(|p| chunk(&model, json!({"content": p}), None)));
                events.push(chunk(&model, json!({}), Some("stop")));
                events.push("data: [DONE]\n\n".into());
                return sse(futures_util::stream::iter(events));
            }
            let model = body["x_test_model"].as_str().unwrap_or(&model).to_owned();
            let mut message = json!({"role": "assistant", "content": answer});
            if let Some(calls) = tool_calls {
                message["tool_calls"] = calls;
            }
            let v = json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
            axum::Json(v).into_response()
        }
        "held" => {
            // Waits at the gate, then answers: lets a test hold calls in flight for as long
            // as it needs, with no clock involved.
            state.held.fetch_add(1, Ordering::SeqCst);
            state.pass_gate().await;
            if stream {
                return sse(futures_util::stream::iter(ok_events(&model, wants_usage)));
            }
            let v = json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": HELD_TEXT}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
            axum::Json(v).into_response()
        }
        "slow-canary" => {
            // Far slower than any stable answer on a busy machine (those take tens of ms).
            tokio::time::sleep(Duration::from_secs(1)).await;
            completion(true)
        }
        "nousage" if stream => sse(futures_util::stream::iter(ok_events(&model, false))),
        "nousage" => completion(false),
        "gated" => {
            // Two events, then wait for the test to say go on.
            let events = ok_events(&model, wants_usage);
            let s = state.clone();
            let stream = futures_util::stream::unfold((0usize, events), move |(i, events)| {
                let s = s.clone();
                async move {
                    if i == 2 {
                        s.release.notified().await;
                    }
                    if i == events.len() {
                        s.finished_streams.fetch_add(1, Ordering::SeqCst);
                        return None;
                    }
                    Some((events[i].clone(), (i + 1, events)))
                }
            });
            sse(stream)
        }
        "endless" => {
            state.open_streams.fetch_add(1, Ordering::SeqCst);
            let guard = OpenStream(state.clone());
            let stream = futures_util::stream::unfold(guard, move |guard| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((chunk("endless", json!({"content": " more"}), None), guard))
            });
            sse(stream)
        }
        "raw" if stream && body.get("x_test_sse").is_some() => {
            // The test writes the stream's exact bytes, sent `x_test_chunk` bytes at a time.
            let bytes = body["x_test_sse"].as_str().unwrap_or_default().as_bytes().to_vec();
            let size = body["x_test_chunk"].as_u64().unwrap_or(bytes.len() as u64).max(1) as usize;
            let pieces: Vec<Result<Bytes, Infallible>> =
                bytes.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            ([("content-type", "text/event-stream")], Body::from_stream(futures_util::stream::iter(pieces))).into_response()
        }
        "raw" if stream && body.get("x_test_body").is_none() => {
            // The test writes the events: each `x_test_events` string is one `data:` payload.
            let events: Vec<String> = body["x_test_events"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e.as_str()).map(|e| format!("data: {e}\n\n")).collect())
                .unwrap_or_default();
            sse(futures_util::stream::iter(events))
        }
        "raw" => {
            // The test writes the whole answer: `x_test_body`, with `x_test_status` and
            // `x_test_content_type` (200, application/json by default).
            let status = body["x_test_status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::OK);
            let content_type = body["x_test_content_type"].as_str().unwrap_or("application/json").to_owned();
            let text = body["x_test_body"].as_str().unwrap_or_default().to_owned();
            let mut response = (status, [("content-type", content_type)], text).into_response();
            if let Some(coding) = body["x_test_content_encoding"].as_str() {
                response.headers_mut().insert("content-encoding", coding.parse().unwrap());
            }
            for (name, value) in body["x_test_headers"].as_object().into_iter().flatten() {
                let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
                response.headers_mut().insert(name, value.as_str().unwrap().parse().unwrap());
            }
            response
        }
        "strict" if body.get("stream_options").is_some() => (
            // An upstream that refuses fields it does not know, as some do.
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "Unrecognized request argument supplied: stream_options", "type": "invalid_request_error", "param": null, "code": null}})),
        )
            .into_response(),
        "strict" => sse(futures_util::stream::iter(ok_events(&model, false))),
        "garbage" => (StatusCode::OK, "this is not json").into_response(),
        "error-500" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "upstream exploded", "type": "server_error", "param": null, "code": "boom"}})),
        )
            .into_response(),
        "error-429" => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"error": {"message": "rate limited upstream", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})),
        )
            .into_response(),
        "error-html" => (StatusCode::SERVICE_UNAVAILABLE, "<html>maintenance</html>").into_response(),
        "hang" => {
            tokio::time::sleep(2 * PATIENCE).await;
            completion(true)
        }
        other => (StatusCode::NOT_FOUND, format!("mock upstream has no model {other}")).into_response(),
    }
}

/// Which database a test app runs on.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite,
    Postgres(String),
}

/// The PostgreSQL URL for tests: `SLUICE_TEST_PG_URL`. Without it the PostgreSQL half of a
/// test is skipped, visibly (see `tests/common/skip.rs`), and under CI that is a failure.
pub fn pg_url() -> Option<String> {
    match std::env::var("SLUICE_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            crate::skip::skip("no PostgreSQL (set SLUICE_TEST_PG_URL=postgres://…)");
            None
        }
    }
}

/// A URL to a schema of its own in the test PostgreSQL, so tests never see each other's rows.
pub async fn fresh_pg_schema(base: &str) -> String {
    sqlx::any::install_default_drivers();
    let schema = format!("sluice_t_{:016x}", rand::random::<u64>());
    let pool = sqlx::AnyPool::connect(base)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Every database the store tests run on here: SQLite always, PostgreSQL when configured.
pub async fn databases() -> Vec<(&'static str, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut dbs = vec![("sqlite", sqlite, Some(dir))];
    if let Some(base) = pg_url() {
        dbs.push(("postgres", fresh_pg_schema(&base).await, None));
    }
    dbs
}

pub fn config_toml(upstream_url: &str, listen: &str, db_url: &str, extra: &str) -> String {
    let more = crate::upstream_more::config(upstream_url);
    format!(
        r#"
[server]
listen = "{listen}"
max_body_bytes = 65536
shutdown_grace_ms = 5000
shadow_queue = 4
# A test polls the admin API as fast as sluice answers, which outruns the default limit
# (20 a second from one address); the tests of that limit set their own.
admin_burst = 1000000
admin_requests_per_second = 1000000

[database]
url = "{db_url}"

[providers.up]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
# Generous: on a loaded 2-core machine, 40 concurrent answers from the in-process mock can
# take seconds; the tests of timeouts use `slowpoke`.
timeout_ms = 10000

[providers.slowpoke]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 300

[providers.patient]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 600000

[providers.nowhere]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
timeout_ms = 2000

[providers.strict]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 2000

[providers.plain]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 2000
stream_usage = "never"

[providers.sim]
kind = "mock"

[versions.gpt-4o]
provider = "up"
model = "ok"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}

[versions.counted]
provider = "up"
model = "nousage"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}

[versions.v-gated]
provider = "up"
model = "gated"
[versions.v-endless]
provider = "up"
model = "endless"
[versions.v-garbage]
provider = "up"
model = "garbage"
[versions.v-500]
provider = "up"
model = "error-500"
[versions.v-429]
provider = "up"
model = "error-429"
[versions.v-html]
provider = "up"
model = "error-html"
[versions.v-hang]
provider = "slowpoke"
model = "hang"
[versions.v-down]
provider = "nowhere"
model = "ok"
[versions.v-strict]
provider = "strict"
model = "strict"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.v-plain]
provider = "plain"
model = "strict"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.v-raw]
provider = "up"
model = "raw"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}

[versions.sim-small]
provider = "sim"
model = "sim-small"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
mock = {{ ttft_ms = 5, tokens_per_s = 2000, output_tokens = 20 }}

[versions.gpt-4-1]
provider = "up"
model = "ok-canary"
price = {{ input_per_mtok = 2.00, output_per_mtok = 8.00 }}
[versions.broken-canary]
provider = "up"
model = "err-canary"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.wordy-canary]
provider = "up"
model = "tokens-canary"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.slow-canary]
provider = "up"
model = "slow-canary"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.held-canary]
provider = "patient"
model = "held"
price = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}
[versions.pricey-canary]
provider = "up"
model = "ok-canary"
price = {{ input_per_mtok = 10.00, output_per_mtok = 40.00 }}

[versions.g-echo]
provider = "up"
model = "echo"
[versions.g-codename]
provider = "up"
model = "codename-canary"
[versions.st-good]
provider = "up"
model = "schema-good"
[versions.st-bad]
provider = "up"
model = "schema-bad"

[routes.guarded]
stable = "g-echo"
guardrails = "default"
[routes.strict]
stable = "g-echo"
on_schema_failure = "error"
[routes.structured]
stable = "st-good"

[routes.chat]
stable = "gpt-4o"
[routes.counted]
stable = "counted"
[routes.gated]
stable = "v-gated"
[routes.endless]
stable = "v-endless"
[routes.garbage]
stable = "v-garbage"
[routes.e500]
stable = "v-500"
[routes.e429]
stable = "v-429"
[routes.ehtml]
stable = "v-html"
[routes.hang]
stable = "v-hang"
[routes.down]
stable = "v-down"
[routes.raw]
stable = "v-raw"
[routes.picky]
stable = "v-strict"
[routes.plain]
stable = "v-plain"
[routes.demo]
stable = "sim-small"
{more}
{extra}
"#
    )
}

pub fn test_env(name: &str) -> Option<String> {
    match name {
        "SLUICE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "TEST_UPSTREAM_KEY" => Some(UPSTREAM_KEY.into()),
        "TEST_AZURE_KEY" => Some(AZURE_KEY.into()),
        "TEST_ENTRA_TOKEN" => Some(ENTRA_TOKEN.into()),
        _ => None,
    }
}

pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub upstream: MockUpstream,
    pub db_url: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The config text the gateway runs on (what `restart` starts again from).
    config: String,
    /// Holds the config, its policies folder and the SQLite file.
    pub dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_on(Db::Sqlite).await
    }

    pub async fn spawn_on(db: Db) -> Self {
        Self::spawn_with(db, sluice::traces::Traces::default()).await
    }

    /// With spans going to `traces` (an in-memory exporter in the trace tests).
    pub async fn spawn_with(db: Db, traces: sluice::traces::Traces) -> Self {
        Self::spawn_edited(db, traces, |text| text).await
    }

    /// With `extra` appended to the test config (e.g. a `[passthrough]` section).
    pub async fn spawn_with_config(extra: &str) -> Self {
        let extra = extra.to_owned();
        Self::spawn_edited(Db::Sqlite, sluice::traces::Traces::default(), move |text| {
            text + "\n" + &extra
        })
        .await
    }

    /// With the test config changed by `edit` first (a `[server]` setting, say).
    pub async fn spawn_edited(
        db: Db,
        traces: sluice::traces::Traces,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("sluice.db").display()),
            Db::Postgres(base) => fresh_pg_schema(&base).await,
        };
        let upstream = MockUpstream::start().await;
        let text = edit(config_toml(&upstream.url, "127.0.0.1:0", &db_url, ""));
        let config_path = dir.path().join("sluice.toml");
        let (base, state, stop, server) = launch(&config_path, &text, traces).await;
        Self {
            base,
            state,
            upstream,
            db_url,
            http: http_client(),
            stop: Some(stop),
            server: Some(server),
            config: text,
            dir,
        }
    }

    /// Stops the gateway as SIGTERM would, then starts a new one on the same config and
    /// database in front of the same mock upstream: nothing it held in memory survives, what
    /// it stored does. The new gateway listens on a new port (`base` changes).
    pub async fn restart(&mut self) {
        self.stop().await;
        let config_path = self.dir.path().join("sluice.toml");
        let (base, state, stop, server) = launch(
            &config_path,
            &self.config,
            sluice::traces::Traces::default(),
        )
        .await;
        self.base = base;
        self.state = state;
        self.stop = Some(stop);
        self.server = Some(server);
    }

    /// Stops the gateway as SIGTERM would and waits until it has flushed its records.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Waits (up to 10 s) for the gateway to stop on its own, and returns how it ended.
    pub async fn stopped_by_itself(&mut self) -> anyhow::Result<()> {
        let server = self.server.take().expect("the gateway runs");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the gateway stops within 10 s")
            .unwrap()
    }

    /// The gateway's router on a listener of its own, sharing this gateway's state: it keeps
    /// answering while the gateway itself shuts down. Returns its base URL.
    pub async fn serve_router(&self, router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        #[expect(
            clippy::disallowed_methods,
            reason = "a second server for the test, living as long as the test"
        )]
        let _serving = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        base
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A fresh key for `workspace`, creating the workspace when it does not exist.
    pub async fn key(&self, workspace: &str) -> String {
        let (status, _) = self
            .admin(
                reqwest::Method::POST,
                "/workspaces",
                Some(json!({"id": workspace})),
            )
            .await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::CONFLICT,
            "{status}"
        );
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/workspaces/{workspace}/keys"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    pub fn openai(&self, key: &str) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", self.base))
                .with_api_key(key),
        )
    }

    /// A raw chat call, for asserting on status and headers exactly.
    pub async fn chat_raw(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stats(&self, route: &str) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("/routes/{route}/stats"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the record writer has written at least `n` records.
    pub async fn wait_written(&self, n: u64) {
        let sink = &self.state.sink;
        eventually(&format!("{n} records written"), || async move {
            (sink.counters().written >= n).then_some(())
        })
        .await;
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.db_url).await.unwrap()
    }
}

/// The gateway built from `text` (read as if from `config_path`) and running on a task until
/// the returned sender fires: (base URL, state, stop, the task).
async fn launch(
    config_path: &Path,
    text: &str,
    traces: sluice::traces::Traces,
) -> (
    String,
    AppState,
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
) {
    let settings =
        sluice::settings::parse(config_path, text, &test_env).expect("test config is valid");
    let server = Server::build_with_traces(settings, traces)
        .await
        .expect("sluice starts");
    let base = format!("http://{}", server.local_addr());
    let state = server.state();
    let (stop_tx, stop_rx) = oneshot::channel();
    #[expect(
        clippy::disallowed_methods,
        reason = "the gateway under test, awaited by `stop`"
    )]
    let handle = tokio::spawn(server.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    (base, state, stop_tx, handle)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A chat request body with one user message.
pub fn chat_body(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the world"}]});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    body
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn headers_of(r: &reqwest::Response) -> BTreeMap<String, String> {
    r.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Policies for tests: quick looks, short holds, few requests per step.
pub const FAST_POLICY: &str = r#"
description = "tests: 20 → 50 %, quick"
alpha = 0.01
interval = "100ms"
max_step_hold = "1m"

[[steps]]
weight = 20
hold = "300ms"
min_requests = 15

[[steps]]
weight = 50
hold = "300ms"
min_requests = 15

[gates.error_rate]
max_ratio = 1.2
[gates.latency_p95]
max_ratio = 1.3
[gates.tokens_per_request]
max_ratio = 1.1
[gates.cost_per_request]
max_ratio = 1.1
[gates.response_length]
max_ratio = 1.5
min_ratio = 0.5
[gates.schema_failure_rate]
max_ratio = 1.2
[gates.guardrail_block_rate]
max_ratio = 1.2

[kill_switch]
error_rate = 0.5
min_requests = 20
window = "60s"
"#;

/// One step that never ends on its own: for split and pin tests.
pub const HOLD_POLICY: &str = r#"
description = "tests: 30 % and stay"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 30
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2
"#;

/// Sticky by user, two steps, for the monotonicity test.
pub const STICKY_POLICY: &str = r#"
description = "tests: sticky users, 20 → 60 %"
interval = "100ms"
max_step_hold = "1h"
sticky = "user"

[[steps]]
weight = 20
hold = "3s"
min_requests = 1

[[steps]]
weight = 60
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2
"#;

pub fn write_policies(dir: &Path) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(policies.join("guardrails")).unwrap();
    std::fs::write(
        policies.join("guardrails/default.toml"),
        include_str!("../../policies/guardrails/default.toml"),
    )
    .unwrap();
    for (name, text) in [
        ("fast", FAST_POLICY),
        // More canary requests per step: enough evidence even when load makes both arms noisy.
        (
            "thorough",
            &FAST_POLICY.replace("min_requests = 15", "min_requests = 40"),
        ),
        ("hold", HOLD_POLICY),
        ("sticky", STICKY_POLICY),
        ("shadow", SHADOW_POLICY),
        ("feedback", FEEDBACK_POLICY),
        (
            "shadowcap",
            &SHADOW_POLICY.replace("max_usd_per_hour = 100.0", "max_usd_per_hour = 0.00001"),
        ),
    ] {
        std::fs::write(policies.join(format!("{name}.toml")), text).unwrap();
    }
}

/// A reqwest client; reqwest is built without a TLS provider, so install sluice's first.
/// Creates `workspace` on a `sluice serve` process at `base` and returns a fresh key for it.
pub async fn subprocess_key(http: &reqwest::Client, base: &str, workspace: &str) -> String {
    let admin = |path: &str| {
        http.post(format!("{base}/admin/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    admin("/workspaces")
        .json(&json!({"id": workspace}))
        .send()
        .await
        .unwrap();
    let key: Value = admin(&format!("/workspaces/{workspace}/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["key"].as_str().unwrap().to_owned()
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Shadow-only: no canary traffic, every stable request copied to the canary.
pub const SHADOW_POLICY: &str = r#"
description = "tests: shadow only"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 0
hold = "1h"

[gates.error_rate]
max_ratio = 1.2

[shadow]
rate = 1.0
from = "stable"
to = "canary"
max_usd_per_hour = 100.0
keep = 5
skip_tools = true
"#;

/// A long first step that judges errors and a declared conversion metric.
pub const FEEDBACK_POLICY: &str = r#"
description = "tests: conversions"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 50
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2

[feedback.converted]
kind = "binary"
good = "higher"
"#;
