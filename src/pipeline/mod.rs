//! The hot path of one chat request, without HTTP-framework types, in stages, one file
//! each, in the order of the diagram in the [crate] docs (the one copy):
//!
//! [`parse`] → `resolve` → `guard` (input guardrails) → `call` (upstream) →
//! `whole` answer | stream [`relay`] → [`finish`] (shared end of answer, record).
//! `context` holds what the stages after resolve share; this module runs them in order.
//!
//! The body is forwarded as the client sent it with two edits: `model` becomes the
//! version's model, and a streamed request asks for `stream_options.include_usage` (the
//! relay removes the extra chunk again when the client did not ask for it). Every other
//! field, known or not, goes upstream byte for byte.

pub(crate) mod call;
pub(crate) mod context;
pub mod finish;
pub(crate) mod guard;
pub mod parse;
pub mod relay;
pub(crate) mod resolve;
pub(crate) mod whole;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use opentelemetry::KeyValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::measure::checks::StreamChecks;
use crate::measure::schema::Expectation;
use crate::measure::tokens::count_prompt;
use crate::resolve::Target;
use crate::state::App;
use crate::types::{Api, Arm, RouteName};
use crate::upstream::ByteStream;
use call::{Outgoing, UsageAsk};
use context::{Ctx, Start};
pub use parse::ChatRequest;
pub(crate) use parse::new_request_id;
use relay::StreamRelay;

/// What the client gets back.
pub(crate) enum Body {
    Whole {
        status: StatusCode,
        headers: HeaderMap,
        bytes: Bytes,
    },
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        relay: Box<StreamRelay>,
    },
    /// A stream of another API (the Responses API's typed events), relayed as it comes.
    Events {
        status: StatusCode,
        headers: HeaderMap,
        events: EventStream,
    },
}

/// Bytes for the client, event by event.
pub(crate) type EventStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static>,
>;

/// Where a request was routed, for the `x-sluice-*` headers.
pub(crate) struct Routed {
    pub(crate) route: RouteName,
    pub(crate) version: Arc<str>,
    pub(crate) arm: Arm,
}

impl Routed {
    /// Where `target` sends a request.
    pub(crate) fn of(target: &Target) -> Self {
        Self {
            route: target.route.clone(),
            version: target.version.name.clone(),
            arm: target.arm,
        }
    }
}

/// One request's answer: its id, where it went (once resolved) and its body or error.
pub(crate) struct Answer {
    pub(crate) request_id: String,
    pub(crate) routed: Option<Routed>,
    pub(crate) result: Result<Body, ApiError>,
}

impl Answer {
    /// The answer to a request refused before it reached a route (unparsable, unknown
    /// route): not measured.
    pub(crate) fn refused(request_id: String, error: ApiError) -> Self {
        Self {
            request_id,
            routed: None,
            result: Err(error),
        }
    }
}

/// Serves one `POST /v1/chat/completions` for an authenticated caller.
pub(crate) async fn chat_completion(
    app: &App,
    caller: Caller,
    headers: &HeaderMap,
    raw: Bytes,
) -> Answer {
    let request_id = new_request_id();
    let mut request = match ChatRequest::parse(&raw) {
        Ok(r) => r,
        Err(e) => return Answer::refused(request_id, e),
    };
    let target = match resolve::route(app, &caller, &request, &request_id, headers) {
        Ok(target) => target,
        Err(e) => return Answer::refused(request_id, e),
    };
    let routed = Routed::of(&target);
    let incoming = Incoming {
        caller,
        request_id: &request_id,
        request: &mut request,
        raw,
        headers,
        target,
    };
    let result = serve(app, incoming).await;
    Answer {
        request_id,
        routed: Some(routed),
        result,
    }
}

/// One resolved request on its way upstream.
struct Incoming<'a> {
    caller: Caller,
    request_id: &'a str,
    request: &'a mut ChatRequest,
    /// The body as the client sent it.
    raw: Bytes,
    headers: &'a HeaderMap,
    target: Target,
}

/// The stages after resolve, in order.
async fn serve(app: &App, incoming: Incoming<'_>) -> Result<Body, ApiError> {
    let Incoming {
        caller,
        request_id,
        request,
        raw,
        headers,
        target,
    } = incoming;
    let start = Start {
        request_id,
        headers,
        workspace: caller.workspace.to_string(),
        target,
        stream: request.stream,
        api: Api::Chat,
        expect: Expectation::from_request(request.raw("response_format"), request.raw("tools")),
    };
    let mut ctx = Ctx::start(app, start);
    ctx.estimate_prompt_with(count_prompt, raw);
    if app.traces.enabled() {
        let rollout = ctx.meter.target().rollout.as_ref();
        let rollout =
            rollout.map(|a| KeyValue::new("sluice.rollout", a.tap.rollout_id.to_string()));
        ctx.open_span("chat", &request.model, request.stream, rollout);
    }
    guard::input(&mut ctx, |rules| guard::messages(rules, request))?;

    let mut usage = UsageAsk::plan(&ctx, request);
    let body = request.upstream_body(&ctx.version.model, usage.strip);
    call::draw_shadow(&mut ctx, Api::Chat, &body, request.raw("tools").is_some());
    let out = Outgoing {
        endpoint: crate::upstream::endpoint::Endpoint::chat(),
        body,
        stream: request.stream,
        include_usage: usage.ask,
    };
    let reply = call::send(&mut ctx, out).await?;
    let reply = call::retry_without_usage(&mut ctx, request, &mut usage, reply).await?;
    let reply = call::refuse_error_status(&mut ctx, reply).await?;
    let headers = crate::upstream::headers::to_client(&reply.headers);

    if request.stream {
        ctx.meter.status = reply.status.as_u16();
        let status = reply.status;
        let upstream = call::event_stream(&mut ctx, reply).await?;
        return Ok(stream(ctx, status, headers, upstream, usage.strip));
    }
    let bytes = ctx.read(reply.body).await?;
    whole::chat(ctx, reply.status, bytes, headers)
}

/// Hands the upstream's events to a [`StreamRelay`], which measures and checks them on
/// the way to the client and finishes the record when the stream ends.
fn stream(
    ctx: Ctx<'_>,
    status: StatusCode,
    mut headers: HeaderMap,
    upstream: ByteStream,
    strip_usage: bool,
) -> Body {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    let idle_limit = ctx.version.provider.timeout();
    let checks = ctx.checks.active().then(|| StreamChecks::new(ctx.checks));
    let relay = StreamRelay::new(upstream, ctx.meter, strip_usage, idle_limit, checks);
    Body::Stream {
        status,
        headers,
        relay: Box::new(relay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive".parse().unwrap());
        h.insert("content-length", "10".parse().unwrap());
        h.insert("x-request-id", "up-1".parse().unwrap());
        h.insert("openai-processing-ms", "12".parse().unwrap());
        let out = crate::upstream::headers::to_client(&h);
        assert!(out.get("connection").is_none() && out.get("content-length").is_none());
        assert_eq!(out["x-upstream-request-id"], "up-1");
        assert_eq!(out["openai-processing-ms"], "12");
        assert_eq!(out["content-type"], "application/json");
    }
}
