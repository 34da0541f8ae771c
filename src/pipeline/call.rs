//! The upstream call: a shadow copy drawn, the call sent under its own span, a refused
//! `stream_options` retried once, and an upstream's error status handed to the client as
//! it came. Never retried otherwise (see [`crate::upstream`] for why).

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use opentelemetry::KeyValue;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::guardrails::Stage;
use crate::openai::completion::completion_as_events;
use crate::pipeline::ChatRequest;
use crate::pipeline::context::Ctx;
use crate::shadow::ShadowTicket;
use crate::traces;
use crate::upstream::endpoint::{Api, Endpoint};
use crate::upstream::{ByteStream, Call, Reply, UpstreamError, names_stream_options};

/// The largest non-streamed upstream answer sluice reads.
const MAX_UPSTREAM_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What goes upstream.
pub(crate) struct Outgoing {
    pub endpoint: Endpoint<'static>,
    pub body: Bytes,
    pub stream: bool,
    /// sluice asks for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// Draws a shadow copy of `body` for the request's rollout, when it has a shadow and the
/// sample takes this request; the copy is sent once the request has finished well.
pub(crate) fn draw_shadow(ctx: &mut Ctx<'_>, api: Api, body: &Bytes, has_tools: bool) {
    let meter = &mut ctx.meter;
    let Some(shadow) = meter
        .target()
        .rollout
        .as_ref()
        .and_then(|a| a.shadow.clone())
    else {
        return;
    };
    let arm = meter.target().arm;
    if shadow.draws(arm, &ctx.workspace, has_tools) {
        let ticket = ShadowTicket {
            shadow,
            api,
            body: body.clone(),
            trace_id: trace_id(ctx.headers),
            span: meter.span().cloned(),
            traces: ctx.app.traces.clone(),
        };
        meter.set_shadow(ticket, ctx.app.shadows.clone());
    }
}

/// Sends the request upstream under an `upstream {version}` span (ended with the status).
///
/// Errors: the upstream unreachable, or silent past the provider's timeout (recorded).
pub(crate) async fn send(ctx: &mut Ctx<'_>, out: Outgoing) -> Result<Reply, ApiError> {
    ctx.upstream_span = ctx.meter.span().and_then(|cx| {
        let attributes = vec![KeyValue::new(
            "gen_ai.request.model",
            ctx.version.model.to_string(),
        )];
        ctx.app
            .traces
            .start_child(cx, format!("upstream {}", ctx.version.name), attributes)
    });
    let sent = call(ctx, out).await;
    if let Some(cx) = &ctx.upstream_span {
        let status = sent
            .as_ref()
            .map(|r| i64::from(r.status.as_u16()))
            .unwrap_or(0);
        let error = sent.as_ref().err().map(|e| e.to_string());
        traces::end(
            cx,
            vec![KeyValue::new("http.response.status_code", status)],
            error,
        );
    }
    sent.map_err(|e| ctx.upstream_failed(e))
}

/// One call to the version's provider, with the trace context of the upstream span.
async fn call(ctx: &mut Ctx<'_>, out: Outgoing) -> Result<Reply, UpstreamError> {
    let provider = ctx.version.provider.clone();
    // Built apart: the meter is not `Sync`, so the future holds no `&Ctx` across the await.
    provider.send(call_of(ctx, out)).await
}

fn call_of<'c>(ctx: &'c Ctx<'_>, out: Outgoing) -> Call<'c> {
    let version = &ctx.version;
    Call {
        endpoint: out.endpoint,
        client_headers: Some(ctx.headers),
        content_type: None,
        body: out.body,
        stream: out.stream,
        include_usage: out.include_usage,
        model: &version.model,
        request_id: ctx.request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: ctx.upstream_span.as_ref().and_then(traces::traceparent),
    }
}

/// sluice's `stream_options.include_usage` on a streamed chat request.
pub(crate) struct UsageAsk {
    /// sluice asks the upstream for the usage chunk.
    pub ask: bool,
    /// sluice added the field, so the relay drops the usage chunk the client did not ask
    /// for.
    pub strip: bool,
    /// The client's own `stream_options`, to send again if the upstream refuses sluice's.
    client_options: Option<Box<RawValue>>,
}

impl UsageAsk {
    /// Whether to ask for usage: a streamed request to a provider that takes the field.
    pub fn plan(ctx: &Ctx<'_>, request: &ChatRequest) -> Self {
        let ask = request.stream && ctx.version.provider.streams_usage_on_request();
        let strip = ask && !request.client_wants_usage;
        let client_options = strip
            .then(|| request.raw("stream_options"))
            .flatten()
            .and_then(|raw| RawValue::from_string(raw.to_owned()).ok());
        Self {
            ask,
            strip,
            client_options,
        }
    }
}

/// A 400 that names the field sluice added fails only because of sluice: sends the
/// client's request as it was, once, and stops adding the field for this provider. Any
/// other reply comes back as it was (a 400's body read and put back).
pub(crate) async fn retry_without_usage(
    ctx: &mut Ctx<'_>,
    request: &mut ChatRequest,
    usage: &mut UsageAsk,
    reply: Reply,
) -> Result<Reply, ApiError> {
    if !(usage.strip && reply.status == StatusCode::BAD_REQUEST) {
        return Ok(reply);
    }
    // Boxed: a rare path, which would otherwise size every request's future by its own
    // upstream call (1.4 KB).
    Box::pin(retry_refused(ctx, request, usage, reply)).await
}

/// [`retry_without_usage`] once the upstream answered 400.
async fn retry_refused(
    ctx: &mut Ctx<'_>,
    request: &mut ChatRequest,
    usage: &mut UsageAsk,
    mut reply: Reply,
) -> Result<Reply, ApiError> {
    let provider = ctx.version.provider.clone();
    let body = read_body(reply.body, provider.timeout())
        .await
        .unwrap_or_default();
    if !names_stream_options(&body) {
        reply.body = Box::pin(futures_util::stream::iter([Ok(body)]));
        return Ok(reply);
    }
    if provider.refused_stream_usage() {
        tracing::warn!(
            version = %ctx.version.name,
            "the upstream refused stream_options.include_usage; retrying without it and no longer adding it for this provider (stream_usage = \"never\" says so in the config)"
        );
    }
    match usage.client_options.take() {
        Some(options) => request.set_raw("stream_options", options),
        None => request.fields.remove("stream_options"),
    }
    usage.strip = false;
    let out = Outgoing {
        endpoint: Endpoint::chat(),
        body: request.upstream_body(&ctx.version.model, false),
        stream: true,
        include_usage: false,
    };
    call(ctx, out).await.map_err(|e| ctx.upstream_failed(e))
}

/// Passes a successful reply on; an error status goes to the client as the upstream sent
/// it (a body that cannot be read is empty), and a provider's content filter refusing the
/// prompt counts as an input guardrail block.
///
/// Errors: [`ApiError::UpstreamStatus`] with the upstream's status, body and headers
/// (recorded).
pub(crate) async fn refuse_error_status(
    ctx: &mut Ctx<'_>,
    reply: Reply,
) -> Result<Reply, ApiError> {
    if reply.status.is_success() {
        return Ok(reply);
    }
    let body = read_body(reply.body, ctx.version.provider.timeout())
        .await
        .unwrap_or_default();
    if crate::azure::is_content_filter_error(&body) {
        crate::azure::count_filtered(&ctx.checks, Stage::Input);
        ctx.meter.observed.guardrail_blocked = true;
    }
    Err(ctx.fail(ApiError::UpstreamStatus {
        status: reply.status,
        body,
        headers: Box::new(crate::upstream::headers::to_client_on_error(&reply.headers)),
    }))
}

/// The upstream's answer to a streamed request as events: its event stream, or, when it
/// answered a whole completion, the events that completion would have streamed (so
/// measurement, checks and usage stripping treat it like any stream).
///
/// Errors: the body unreadable, or not a completion ([`ApiError::UpstreamInvalid`]);
/// recorded.
pub(crate) async fn event_stream(ctx: &mut Ctx<'_>, reply: Reply) -> Result<ByteStream, ApiError> {
    let is_event_stream = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if is_event_stream {
        return Ok(reply.body);
    }
    let bytes = ctx.read(reply.body).await?;
    match completion_as_events(&bytes) {
        Ok(events) => Ok(Box::pin(futures_util::stream::iter([Ok(events)]))),
        Err(reason) => Err(ctx.invalid(format!(
            "asked for a stream, it answered a whole body: {reason}"
        ))),
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// The client's error for a failed upstream call to `version`.
pub(crate) fn upstream_error(e: UpstreamError, version: &str) -> ApiError {
    let version = version.to_owned();
    match e {
        UpstreamError::Timeout { after_ms } => ApiError::UpstreamTimeout { version, after_ms },
        UpstreamError::Unreachable(reason) => {
            tracing::warn!(version = %version, reason = %reason, "upstream unreachable");
            ApiError::UpstreamUnreachable { version }
        }
        UpstreamError::Interrupted(reason) => ApiError::UpstreamInvalid { version, reason },
        e @ (UpstreamError::Encoded(_) | UpstreamError::Informational(_)) => {
            ApiError::UpstreamInvalid {
                version,
                reason: e.to_string(),
            }
        }
    }
}

/// Reads a whole upstream body, which must all arrive within `limit` (the provider's
/// `timeout_ms`, counted from its headers): an upstream that drips its body a byte at a
/// time is never silent, but holds the request no longer than a silent one.
pub(crate) async fn read_body(
    mut body: ByteStream,
    limit: Duration,
) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    after_ms: limit.as_millis() as u64,
                });
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > MAX_UPSTREAM_BODY_BYTES {
                    return Err(UpstreamError::Interrupted(format!(
                        "the answer is larger than {MAX_UPSTREAM_BODY_BYTES} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}
