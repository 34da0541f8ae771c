//! Shadow traffic: a sample of one arm's requests is copied, in the background, to the
//! other arm's version; both answers are stored as a pair for offline comparison.
//!
//! In: a finished primary request (its body, answer and record) that drew a ticket. Out: a
//! stored pair, or a counted drop. The copy never runs on the user's clock: the primary
//! hands it to a bounded queue and returns; a full queue or a spent hourly budget drops the
//! copy and counts it. Copies are never streamed and their spend is kept apart from the
//! workspace's: it is not in the `requests` table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

use crate::catalog::Version;
use crate::guardrails::redact_pii;
use crate::measure::tokens::count_prompt;
use crate::openai::completion::{CompletionSummary, summarize_completion};
use crate::openai::responses::summarize_response;
use crate::rollout::policy::ShadowConfig;
use crate::store::{ShadowPair, Store};
use crate::tasks::{Stage, Tasks};
use crate::types::{Arm, Record, now_ms};
use crate::upstream::Call;
use crate::upstream::endpoint::Api;

/// Copies sent at once.
const SHADOW_CONCURRENCY: usize = 8;
const HOUR: Duration = Duration::from_secs(3600);

/// A primary request that drew a copy: carried by its meter until it finishes.
pub(crate) struct ShadowTicket {
    pub(crate) shadow: Arc<RolloutShadow>,
    /// The API of the primary: the copy goes to the same operation on the other version.
    pub(crate) api: crate::upstream::endpoint::Api,
    /// The body as sent upstream for the primary (model is replaced again for the copy).
    pub(crate) body: Bytes,
    pub(crate) trace_id: Option<String>,
    /// The primary's span: the copy's span is its child.
    pub(crate) span: Option<opentelemetry::Context>,
    pub(crate) traces: crate::traces::Traces,
}

/// One copy to send.
pub(crate) struct ShadowJob {
    ticket: ShadowTicket,
    primary: Record,
    primary_answer: String,
}

/// Per-rollout shadow state: its config, its target version, its budget and counters.
pub(crate) struct RolloutShadow {
    pub(crate) rollout_id: Arc<str>,
    pub(crate) config: ShadowConfig,
    pub(crate) to_version: Arc<Version>,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped_queue: AtomicU64,
    pub(crate) dropped_budget: AtomicU64,
    pub(crate) failed: AtomicU64,
    spent_nano_usd: AtomicU64,
    /// Spend in the current hour: (hour start, USD).
    window: std::sync::Mutex<(Instant, f64)>,
}

/// Shadow copies of a rollout since this process took it up.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ShadowCounters {
    pub(crate) sent: u64,
    pub(crate) dropped_queue: u64,
    pub(crate) dropped_budget: u64,
    pub(crate) failed: u64,
    pub(crate) spent_usd: f64,
}

impl RolloutShadow {
    pub(crate) fn new(rollout_id: &str, config: ShadowConfig, to_version: Arc<Version>) -> Self {
        Self {
            rollout_id: rollout_id.into(),
            config,
            to_version,
            sent: AtomicU64::new(0),
            dropped_queue: AtomicU64::new(0),
            dropped_budget: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            spent_nano_usd: AtomicU64::new(0),
            window: std::sync::Mutex::new((Instant::now(), 0.0)),
        }
    }

    /// Whether a request served by `arm` for `workspace` draws a copy.
    pub(crate) fn draws(&self, arm: Arm, workspace: &str, has_tools: bool) -> bool {
        arm == self.config.from
            && !(self.config.skip_tools && has_tools)
            && rand::random::<f64>() < self.config.rate_for(workspace)
    }

    pub(crate) fn counters(&self) -> ShadowCounters {
        ShadowCounters {
            sent: self.sent.load(Ordering::Relaxed),
            dropped_queue: self.dropped_queue.load(Ordering::Relaxed),
            dropped_budget: self.dropped_budget.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            spent_usd: self.spent_nano_usd.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Reserves room in this hour's budget; false when the hour's spend reached the cap.
    fn within_budget(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0.elapsed() >= HOUR {
            *window = (Instant::now(), 0.0);
        }
        window.1 < self.config.max_usd_per_hour
    }

    fn spend(&self, usd: f64) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.1 += usd;
        self.spent_nano_usd
            .fetch_add((usd * 1e9).round() as u64, Ordering::Relaxed);
    }
}

/// The queue from finished primaries to the shadow sender.
pub(crate) struct ShadowQueue {
    tx: mpsc::Sender<ShadowJob>,
}

impl ShadowQueue {
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<ShadowJob>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Hands a finished primary over; never waits.
    pub(crate) fn submit(&self, ticket: ShadowTicket, primary: Record, primary_answer: String) {
        let shadow = ticket.shadow.clone();
        let job = ShadowJob {
            ticket,
            primary,
            primary_answer,
        };
        if self.tx.try_send(job).is_err() {
            shadow.dropped_queue.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the workers that send queued copies (a few at a time) until shutdown: a copy in
/// flight then finishes (within the grace period, see [`crate::tasks`]); what is still
/// queued is dropped.
pub(crate) fn start_senders(tasks: &Tasks, rx: mpsc::Receiver<ShadowJob>, store: Store) {
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..SHADOW_CONCURRENCY {
        let (rx, store) = (rx.clone(), store.clone());
        tasks.spawn("shadow-worker", Stage::Side, move |stop| async move {
            loop {
                let job = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    job = async { rx.lock().await.recv().await } => job,
                };
                match job {
                    Some(job) => send_copy(job, &store).await,
                    None => break,
                }
            }
        });
    }
}

/// Sends one shadow copy to the other version, within the shadow's budget, and stores the
/// pair of answers; a copy that fails is counted, never retried.
async fn send_copy(job: ShadowJob, store: &Store) {
    let shadow = job.ticket.shadow.clone();
    if !shadow.within_budget() {
        shadow.dropped_budget.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let version = &shadow.to_version;
    let body = match copy_body(&job.ticket.body, &version.model, job.ticket.api) {
        Some(body) => body,
        None => {
            shadow.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let started = Instant::now();
    let Some((status, answer_bytes)) = call_copy(&job, version, body.clone()).await else {
        return;
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let copy = CopyCall {
        status,
        latency_ms,
        request: &body,
        answer: &answer_bytes,
    };
    let (answer, record) = if job.ticket.api == Api::Embeddings {
        embeddings_copy(&shadow, version, &copy)
    } else {
        answer_copy(&shadow, version, job.ticket.api, &copy)
    };
    store_pair(&job, store, version, answer, record).await;
}

/// A shadow copy's call as it went: its status, latency, what was sent and what came back.
struct CopyCall<'a> {
    status: u16,
    latency_ms: f64,
    request: &'a [u8],
    answer: &'a [u8],
}

/// Calls `version` with the copy under a `shadow {version}` span: the status and the whole
/// body (read until it ends or breaks off); `None` when the call failed (counted).
async fn call_copy(job: &ShadowJob, version: &Version, body: Bytes) -> Option<(u16, Vec<u8>)> {
    let shadow = &job.ticket.shadow;
    let span = job.ticket.span.as_ref().and_then(|cx| {
        let attributes = vec![opentelemetry::KeyValue::new(
            "gen_ai.request.model",
            version.model.to_string(),
        )];
        job.ticket
            .traces
            .start_child(cx, format!("shadow {}", version.name), attributes)
    });
    let call = Call {
        endpoint: job.ticket.api.endpoint(),
        client_headers: None,
        content_type: None,
        body,
        stream: false,
        include_usage: false,
        model: &version.model,
        request_id: &job.primary.request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: span.as_ref().and_then(crate::traces::traceparent),
    };
    let reply = version.provider.send(call).await;
    if let Some(cx) = &span {
        let error = reply.as_ref().err().map(|e| e.to_string());
        crate::traces::end(cx, Vec::new(), error);
    }
    match reply {
        Ok(reply) => {
            let status = reply.status.as_u16();
            let mut bytes = Vec::new();
            let mut body = reply.body;
            use futures_util::StreamExt;
            while let Some(Ok(chunk)) = body.next().await {
                bytes.extend_from_slice(&chunk);
            }
            Some((status, bytes))
        }
        Err(e) => {
            tracing::debug!(rollout = %shadow.rollout_id, error = %e, "shadow copy failed");
            shadow.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// An embeddings copy's answer and record. Vectors of two models are not comparable: the
/// pair keeps what can be compared (status, latency, tokens, cost) and the vectors' shape
/// as the answer.
fn embeddings_copy(
    shadow: &RolloutShadow,
    version: &Version,
    copy: &CopyCall<'_>,
) -> (String, serde_json::Value) {
    let answer: serde_json::Value = serde_json::from_slice(copy.answer).unwrap_or_default();
    let (answer_text, prompt_tokens) = match embeddings_summary(&answer) {
        Some(text) => (
            text,
            answer["usage"]["prompt_tokens"]
                .as_u64()
                .and_then(crate::types::plausible_tokens),
        ),
        None => (
            String::from_utf8_lossy(copy.answer)
                .chars()
                .take(2000)
                .collect(),
            None,
        ),
    };
    let prompt_tokens = prompt_tokens.unwrap_or_else(|| {
        let request: serde_json::Value = serde_json::from_slice(copy.request).unwrap_or_default();
        crate::measure::tokens::count_embedding_input(version.encoding, &request)
    });
    let cost_usd = version.price.cost_usd(prompt_tokens, 0);
    shadow.spend(cost_usd);
    if !(200..300).contains(&copy.status) {
        shadow.failed.fetch_add(1, Ordering::Relaxed);
    }
    let record = serde_json::json!({
        "status": copy.status, "latency_ms": copy.latency_ms, "prompt_tokens": prompt_tokens,
        "completion_tokens": 0, "cost_usd": cost_usd, "finish_reason": null, "tool_calls": null,
    });
    (answer_text, record)
}

/// A chat or Responses copy's answer text and record (tokens counted when the answer has
/// no usage, cost spent from the shadow's budget).
fn answer_copy(
    shadow: &RolloutShadow,
    version: &Version,
    api: Api,
    copy: &CopyCall<'_>,
) -> (String, serde_json::Value) {
    let summary = match api {
        Api::Responses => serde_json::from_slice::<serde_json::Value>(copy.answer)
            .ok()
            .and_then(|v| summarize_response(&v).ok())
            .map(|s| CompletionSummary {
                model: s.model.clone(),
                usage: s.usage,
                finish_reason: s.finish_reason(),
                choices: vec![s.output],
            }),
        _ => summarize_completion(copy.answer).ok(),
    };
    let (answer, usage) = match &summary {
        Some(s) => (s.all_text(), s.usage),
        None => (
            String::from_utf8_lossy(copy.answer)
                .chars()
                .take(2000)
                .collect(),
            None,
        ),
    };
    let (prompt_tokens, completion_tokens) = match usage.and_then(crate::types::Usage::plausible) {
        Some(u) => (u.prompt_tokens, u.completion_tokens),
        None => (
            count_prompt(version.encoding, copy.request),
            version.encoding.count(&answer),
        ),
    };
    let cost_usd = version.price.cost_usd(prompt_tokens, completion_tokens);
    shadow.spend(cost_usd);
    if !(200..300).contains(&copy.status) {
        shadow.failed.fetch_add(1, Ordering::Relaxed);
    }
    let record = serde_json::json!({
        "status": copy.status, "latency_ms": copy.latency_ms, "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens, "cost_usd": cost_usd,
        "finish_reason": summary.as_ref().and_then(|s| s.finish_reason.clone()),
        "tool_calls": summary.as_ref().map(|s| s.choices.iter().flat_map(|c| c.tool_calls.iter().map(|t| t.name.clone())).collect::<Vec<_>>()),
    });
    (answer, record)
}

/// Stores the pair of `job`'s primary and its copy's `answer` and `shadow_record`.
async fn store_pair(
    job: &ShadowJob,
    store: &Store,
    version: &Version,
    answer: String,
    shadow_record: serde_json::Value,
) {
    let shadow = &job.ticket.shadow;
    let request_text = stored_request(&job.ticket);
    let pair = ShadowPair {
        id: 0,
        rollout_id: shadow.rollout_id.to_string(),
        at_ms: now_ms(),
        request_id: job.primary.request_id.clone(),
        trace_id: job.ticket.trace_id.clone(),
        workspace: job.primary.workspace.clone(),
        request: request_text,
        primary_version: job.primary.version.clone(),
        primary_arm: job.primary.arm,
        primary_answer: job.primary_answer.clone(),
        primary_record: serde_json::to_value(&job.primary).unwrap_or_default(),
        shadow_version: version.name.to_string(),
        shadow_answer: answer,
        shadow_record,
    };
    if let Err(e) = store.insert_shadow_pair(&pair, shadow.config.keep).await {
        tracing::warn!(rollout = %shadow.rollout_id, error = %e, "storing a shadow pair failed");
    }
    // Counted once stored, so a reader who sees the count also sees the pair.
    shadow.sent.fetch_add(1, Ordering::Relaxed);
}

/// The answer of an embeddings request as a shadow pair keeps it: how many vectors of what
/// length (`"2 vectors × 1536 dimensions"`). `None` when `answer` is no embeddings list.
pub(crate) fn embeddings_summary(answer: &serde_json::Value) -> Option<String> {
    let data = answer.get("data")?.as_array()?;
    let dimensions = match data.first().map(|d| &d["embedding"]) {
        Some(serde_json::Value::Array(v)) => v.len().to_string(),
        Some(serde_json::Value::String(_)) => "base64".to_owned(),
        _ => "0".to_owned(),
    };
    Some(format!("{} vectors × {dimensions} dimensions", data.len()))
}

/// The primary's body with `model` set to the shadow version's and streaming off (an
/// embeddings body is left as it is otherwise); a Responses copy is not stored upstream
/// (nobody continues it).
fn copy_body(body: &[u8], model: &str, api: Api) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), model.into());
    if api == Api::Embeddings {
        // Embeddings never stream, and OpenAI refuses arguments it does not know.
        return serde_json::to_vec(&v).ok().map(Bytes::from);
    }
    v.insert("stream".into(), false.into());
    v.remove("stream_options");
    if api == Api::Responses {
        v.insert("store".into(), false.into());
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The request as stored: its body, with every text the client wrote (messages, or a
/// Responses request's instructions and input) masked by the guardrail PII detectors when
/// the policy says `redact = true`.
fn stored_request(ticket: &ShadowTicket) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&ticket.body).unwrap_or_default();
    if !ticket.shadow.config.redact {
        return v;
    }
    crate::openai::request::for_each_request_text(&mut v, |text| {
        *text = redact_pii(text);
    });
    v
}
