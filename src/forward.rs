//! The rest of `/v1`: embeddings, the other operations with a `model`, and the model-less
//! endpoints an operator chooses to pass through.
//!
//! - `POST /v1/embeddings` goes to the route's **stable** version, always: vectors of two
//!   models never mix in one index, so a rollout never splits embeddings traffic. Measured:
//!   input tokens, cost at the version's price, latency, count of inputs, dimensions. A
//!   rollout's `[shadow]` (from the stable arm) may copy them to the canary.
//! - `POST /v1/completions`, `/v1/moderations`, `/v1/images/*`, `/v1/audio/*`: routed by
//!   `model` (read from the JSON body, or from the multipart form) to the stable version,
//!   forwarded byte for byte with only `model` rewritten, measured (status, latency, usage
//!   where the answer has one).
//! - Model-less endpoints (`/v1/files`, `/v1/batches`, `/v1/uploads`, `/v1/vector_stores`,
//!   …) go to the `[passthrough] provider` with its key, never to a URL a client chose;
//!   without one they are 404 with a message that says how to enable them.
//! - `GET|DELETE /v1/responses/{id}`, `…/input_items`, `POST …/cancel` go to the provider
//!   of the version that produced the Response (from the response book).
//!
//! Only a request that reached a route is measured; passthrough and stored-response
//! operations are relayed unmeasured.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use crate::auth::Caller;
use crate::catalog::Version;
use crate::error::ApiError;
use crate::measure::Meter;
use crate::measure::tokens::count_embedding_input;
use crate::pipeline::call::{read_body, trace_id, upstream_error};
use crate::pipeline::finish::fail;
use crate::pipeline::{Answer, Body, ChatRequest, Routed, new_request_id};
use crate::resolve::Target;
use crate::shadow::ShadowTicket;
use crate::types::{Outcome, Usage};

use crate::state::App;
use crate::upstream::endpoint::{Api, Endpoint};
use crate::upstream::{ByteStream, Call, Provider, Reply, UpstreamError};

/// Operations with a `model` that go to the route's stable version (below `/v1/`).
pub(crate) const MODEL_PATHS: [&str; 8] = [
    "completions",
    "moderations",
    "images/generations",
    "images/edits",
    "images/variations",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
];

/// First path segments of the model-less endpoints `[passthrough]` may serve.
const PASSTHROUGH_ROOTS: [&str; 11] = [
    "files",
    "batches",
    "uploads",
    "vector_stores",
    "conversations",
    "containers",
    "fine_tuning",
    "assistants",
    "threads",
    "evals",
    "realtime",
];

/// What a `/v1/…` path sluice does not route itself is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtherPath {
    /// An operation with a `model`: to the route's stable version.
    WithModel,
    /// A model-less endpoint: only through `[passthrough]`.
    Passthrough,
    Unknown,
}

/// Classifies `path` (below `/v1/`, no query).
pub(crate) fn classify(path: &str) -> OtherPath {
    if MODEL_PATHS.contains(&path) {
        return OtherPath::WithModel;
    }
    let root = path.split('/').next().unwrap_or_default();
    if PASSTHROUGH_ROOTS.contains(&root) {
        OtherPath::Passthrough
    } else {
        OtherPath::Unknown
    }
}

/// The 404 of a `/v1` path sluice does not serve.
pub(crate) fn unknown_path(method: &str, path: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {method} {path}; sluice serves /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models and the OpenAI operations that take a model"
    ))
}

fn error(request_id: String, routed: Option<Routed>, e: ApiError) -> Answer {
    Answer {
        request_id,
        routed,
        result: Err(e),
    }
}

fn routed(target: &Target) -> Routed {
    Routed {
        route: target.route.clone(),
        version: target.version.name.clone(),
        arm: target.arm,
    }
}

/// The route's stable target: embeddings and forwarded operations never join a rollout.
fn stable_target(app: &App, model: &str) -> Result<Target, ApiError> {
    let routing = app.routing.load();
    routing
        .route(model)
        .map(|entry| entry.stable.clone())
        .ok_or_else(|| ApiError::UnknownRoute(routing.explain_unknown(model)))
}

/// Serves one `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    app: &App,
    caller: Caller,
    headers: &HeaderMap,
    raw: Bytes,
) -> Answer {
    let request_id = new_request_id();
    let mut request = match ChatRequest::parse(&raw) {
        Ok(r) => r,
        Err(e) => return error(request_id, None, e),
    };
    let target = match stable_target(app, &request.model) {
        Ok(t) => t,
        Err(e) => return error(request_id, None, e),
    };
    let routed = routed(&target);
    let version = target.version.clone();
    let shadow = embeddings_shadow(app, routed.route.as_str(), &caller.workspace);
    let mut meter = embeddings_meter(app, &request_id, caller, target, &request);
    let body = request.upstream_body(&version.model, false);
    if let Some(shadow) = shadow {
        let ticket = ShadowTicket {
            shadow,
            api: Api::Embeddings,
            body: body.clone(),
            trace_id: trace_id(headers),
            span: meter.span().cloned(),
            traces: app.traces.clone(),
        };
        meter.set_shadow(ticket, app.shadows.clone());
    }
    let call = Call {
        endpoint: Endpoint::embeddings(),
        client_headers: Some(headers),
        content_type: None,
        body,
        stream: false,
        include_usage: false,
        model: &version.model,
        request_id: &request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: None,
    };
    let result = match version.provider.send(call).await {
        Ok(reply) => embeddings_answer(&mut meter, reply, &version).await,
        Err(e) => Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    Answer {
        request_id,
        routed: Some(routed),
        result,
    }
}

/// The meter of an embeddings request: its count of inputs, and their tokens counted when
/// the upstream does not.
fn embeddings_meter(
    app: &App,
    request_id: &str,
    caller: Caller,
    target: Target,
    request: &ChatRequest,
) -> Meter {
    let input: Value = request
        .raw("input")
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let inputs = crate::upstream::mock_responses::embedding_inputs(&input) as u32;
    let encoding = target.version.encoding;
    let mut meter = Meter::start(
        request_id.to_owned(),
        caller.workspace.to_string(),
        target,
        false,
        app.sink.clone(),
    );
    meter.set_api(Api::Embeddings);
    meter.observed.inputs = Some(inputs);
    meter.set_prompt_estimate(move || {
        count_embedding_input(encoding, &serde_json::json!({"input": input}))
    });
    meter
}

/// Reads and measures an embeddings answer (tokens, dimensions, the vectors' shape for a
/// shadow copy), and records it.
///
/// Errors: the upstream's error status, an unreadable body, or one that is not JSON;
/// each recorded.
async fn embeddings_answer(
    meter: &mut Meter,
    reply: Reply,
    version: &Version,
) -> Result<Body, ApiError> {
    let (status, out_headers, bytes) =
        read_reply(meter, reply, &version.provider, &version.name).await?;
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| {
        let error = ApiError::UpstreamInvalid {
            version: version.name.to_string(),
            reason: format!("not an embeddings answer: {e}"),
        };
        fail(meter, error)
    })?;
    let reported = answer["usage"]["prompt_tokens"]
        .as_u64()
        .and_then(crate::types::plausible_tokens);
    let usage = match reported {
        Some(prompt_tokens) => Usage {
            prompt_tokens,
            completion_tokens: 0,
            estimated: false,
        },
        None => Usage {
            prompt_tokens: meter.estimate_prompt(),
            completion_tokens: 0,
            estimated: true,
        },
    };
    meter.observed.usage = Some(usage);
    meter.observed.dimensions = dimensions(&answer["data"][0]["embedding"]);
    meter.observed.answer = crate::shadow::embeddings_summary(&answer);
    if let Some(model) = answer["model"].as_str() {
        meter.observed.response_model = Some(model.to_owned());
    }
    meter.status = status.as_u16();
    meter.finish(Outcome::Ok);
    Ok(Body::Whole {
        status,
        headers: out_headers,
        bytes,
    })
}

/// The route's live rollout's shadow, when it copies the stable arm's requests and draws
/// this one: embeddings all go to the stable version, so only `from = "stable"` copies them
/// (to the canary, for offline comparison; the primary still never reaches the canary).
fn embeddings_shadow(
    app: &App,
    route: &str,
    workspace: &str,
) -> Option<std::sync::Arc<crate::shadow::RolloutShadow>> {
    let routing = app.routing.load();
    let shadow = routing.route(route)?.rollout.as_ref()?.shadow.clone()?;
    shadow
        .draws(crate::types::Arm::Stable, workspace, false)
        .then_some(shadow)
}

/// The length of one embedding: a float array, or base64 of little-endian `f32`s.
fn dimensions(embedding: &Value) -> Option<u32> {
    match embedding {
        Value::Array(v) => Some(v.len() as u32),
        Value::String(b64) => {
            let padding = b64.bytes().rev().take_while(|b| *b == b'=').count();
            Some(((b64.len() / 4 * 3).saturating_sub(padding) / 4) as u32)
        }
        _ => None,
    }
}

/// Reads an upstream answer whole; an error status becomes the client's error, measured.
async fn read_reply(
    meter: &mut Meter,
    reply: Reply,
    provider: &Provider,
    version: &str,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let status = reply.status;
    let headers = reply.headers;
    let bytes = read_body(reply.body, provider.timeout())
        .await
        .map_err(|e| fail(meter, upstream_error(e, version)))?;
    if !status.is_success() {
        let error = ApiError::UpstreamStatus {
            status,
            body: bytes,
            headers: Box::new(crate::upstream::headers::to_client_on_error(&headers)),
        };
        return Err(fail(meter, error));
    }
    Ok((status, crate::upstream::headers::to_client(&headers), bytes))
}

/// One `/v1` request sluice forwards without reading it: its method, path and query,
/// content type and body.
pub(crate) struct Forward<'a> {
    pub(crate) method: Method,
    /// Below `/v1/`, without the query.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: Bytes,
}

impl Forward<'_> {
    fn endpoint(&self) -> Endpoint<'static> {
        let path = match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_owned(),
        };
        Endpoint::new(self.method.clone(), path)
    }

    fn content_type(&self) -> Option<HeaderValue> {
        self.headers.get(header::CONTENT_TYPE).cloned()
    }
}

/// Serves a `/v1` operation with a `model` (completions, moderations, images, audio).
pub(crate) async fn with_model(app: &App, caller: Caller, forward: Forward<'_>) -> Answer {
    let request_id = new_request_id();
    let (model, body) = match model_of(&forward) {
        Ok(found) => found,
        Err(e) => return error(request_id, None, e),
    };
    let target = match stable_target(app, &model) {
        Ok(t) => t,
        Err(e) => return error(request_id, None, e),
    };
    let routed = routed(&target);
    let version = target.version.clone();
    let upstream_body = body.apply(&forward.body, &version.model);
    let stream = matches!(&body, Rewrite::Json(r) if r.stream);
    let mut meter = Meter::start(
        request_id.clone(),
        caller.workspace.to_string(),
        target,
        stream,
        app.sink.clone(),
    );
    meter.set_api(Api::Forwarded);
    let call = Call {
        endpoint: forward.endpoint(),
        client_headers: Some(forward.headers),
        content_type: forward.content_type(),
        body: upstream_body,
        stream,
        include_usage: false,
        model: &version.model,
        request_id: &request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: None,
    };
    let result = match version.provider.send(call).await {
        Ok(reply) => forwarded_answer(meter, reply, &version).await,
        Err(e) => Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    Answer {
        request_id,
        routed: Some(routed),
        result,
    }
}

/// A forwarded request's `model` and how to replace it: a multipart form's field, or the
/// JSON body's.
///
/// Errors: a form without a `model` field, or a JSON body [`ChatRequest::parse`] refuses.
fn model_of(forward: &Forward<'_>) -> Result<(String, Rewrite), ApiError> {
    let multipart = forward
        .content_type()
        .and_then(|v| v.to_str().ok().and_then(multipart_boundary));
    match &multipart {
        Some(boundary) => match form_model(&forward.body, boundary) {
            Some((model, range)) => Ok((model, Rewrite::Form(range))),
            None => Err(ApiError::InvalidRequest {
                message: "you must provide a model parameter (a form field `model`)".into(),
                param: Some("model"),
            }),
        },
        None => {
            let request = ChatRequest::parse(&forward.body)?;
            Ok((request.model.clone(), Rewrite::Json(Box::new(request))))
        }
    }
}

/// A forwarded operation's answer: a JSON answer is read whole for its usage, an error for
/// its body; anything else (audio, a stream) is relayed byte for byte, measured as it goes.
async fn forwarded_answer(
    mut meter: Meter,
    reply: Reply,
    version: &Version,
) -> Result<Body, ApiError> {
    let json = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json && reply.status.is_success() {
        meter.status = reply.status.as_u16();
        return Ok(relay_measured(reply, meter));
    }
    let (status, headers, bytes) =
        read_reply(&mut meter, reply, &version.provider, &version.name).await?;
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        meter.observed.usage = usage_of(&v["usage"]);
    }
    meter.status = status.as_u16();
    meter.finish(Outcome::Ok);
    Ok(Body::Whole {
        status,
        headers,
        bytes,
    })
}

/// The usage object of a legacy completion (`prompt_tokens`, `completion_tokens`) or of
/// the newer shapes (`input_tokens`, `output_tokens`).
fn usage_of(u: &Value) -> Option<Usage> {
    let input = u["prompt_tokens"].as_u64().or(u["input_tokens"].as_u64())?;
    let output = u["completion_tokens"]
        .as_u64()
        .or(u["output_tokens"].as_u64())
        .unwrap_or(0);
    Usage {
        prompt_tokens: input,
        completion_tokens: output,
        estimated: false,
    }
    .plausible()
}

/// How `model` is replaced in a forwarded body.
enum Rewrite {
    Json(Box<ChatRequest>),
    /// The byte range of the form field's value.
    Form(std::ops::Range<usize>),
}

impl Rewrite {
    fn apply(&self, body: &Bytes, model: &str) -> Bytes {
        match self {
            Rewrite::Json(_) => {
                let mut request = ChatRequest::parse(body).expect("parsed before");
                request.upstream_body(model, false)
            }
            Rewrite::Form(range) => {
                let mut out = Vec::with_capacity(body.len() + model.len());
                out.extend_from_slice(&body[..range.start]);
                out.extend_from_slice(model.as_bytes());
                out.extend_from_slice(&body[range.end..]);
                Bytes::from(out)
            }
        }
    }
}

/// The boundary of a `multipart/form-data` content type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_owned())
    })
}

/// The `model` field of a multipart form: its value and the value's byte range.
fn form_model(body: &[u8], boundary: &str) -> Option<(String, std::ops::Range<usize>)> {
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut at = find(body, delimiter.as_bytes(), 0)?;
    loop {
        let headers_start = at + delimiter.len();
        let headers_end = find(body, b"\r\n\r\n", headers_start)?;
        let part_headers =
            String::from_utf8_lossy(&body[headers_start..headers_end]).to_ascii_lowercase();
        let value_start = headers_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), value_start)?;
        let is_model = part_headers
            .lines()
            .any(|l| l.starts_with("content-disposition:") && l.contains("name=\"model\""));
        if is_model {
            let value = std::str::from_utf8(&body[value_start..next])
                .ok()?
                .trim()
                .to_owned();
            return (!value.is_empty()).then_some((value, value_start..next));
        }
        at = next + 2;
    }
}

/// Relays an answer byte for byte and finishes its measurement when it ends.
fn relay_measured(reply: Reply, meter: Meter) -> Body {
    Body::Events {
        status: reply.status,
        headers: crate::upstream::headers::to_client(&reply.headers),
        events: Box::pin(Metered {
            upstream: reply.body,
            meter: Some(meter),
        }),
    }
}

struct Metered {
    upstream: ByteStream,
    meter: Option<Meter>,
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if let Some(m) = self.meter.as_mut() {
                    m.observed
                        .first_token
                        .get_or_insert_with(std::time::Instant::now);
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut m) = self.meter.take() {
                    m.finish(e.outcome());
                }
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => {
                if let Some(mut m) = self.meter.take() {
                    m.finish(Outcome::Ok);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Relays an unmeasured answer byte for byte.
fn relay_raw(reply: Reply) -> Body {
    let body = futures_util::StreamExt::map(reply.body, |chunk: Result<Bytes, UpstreamError>| {
        chunk.map_err(|e| std::io::Error::other(e.to_string()))
    });
    Body::Events {
        status: reply.status,
        headers: crate::upstream::headers::to_client(&reply.headers),
        events: Box::pin(body),
    }
}

/// Serves a model-less `/v1` endpoint through the `[passthrough]` provider.
pub(crate) async fn passthrough(app: &App, forward: Forward<'_>) -> Answer {
    let request_id = new_request_id();
    let Some(name) = app.settings.config.passthrough.provider.as_deref() else {
        let e = ApiError::NotFound(format!(
            "/v1/{} is not enabled on this gateway: it has no model to route by. An operator can pass such endpoints to one provider with `[passthrough] provider = \"<provider name>\"` in sluice.toml",
            forward.path
        ));
        return error(request_id, None, e);
    };
    let Some(provider) = app.catalog.provider(name).cloned() else {
        return error(
            request_id,
            None,
            ApiError::Internal(format!("no provider `{name}`")),
        );
    };
    let call = Call {
        endpoint: forward.endpoint(),
        client_headers: Some(forward.headers),
        content_type: forward.content_type(),
        body: forward.body.clone(),
        stream: false,
        include_usage: false,
        model: "",
        request_id: &request_id,
        mock: None,
        traceparent: None,
    };
    let result = match provider.send(call).await {
        Ok(reply) => Ok(relay_raw(reply)),
        Err(e) => Err(upstream_error(e, &format!("passthrough:{name}"))),
    };
    Answer {
        request_id,
        routed: None,
        result,
    }
}

/// Serves `GET|DELETE /v1/responses/{id}[/input_items]`, `POST /v1/responses/{id}/cancel`
/// at the provider of the version that produced the Response.
pub(crate) async fn stored_response(
    app: &App,
    caller: &Caller,
    response_id: &str,
    forward: Forward<'_>,
) -> Answer {
    let request_id = new_request_id();
    let Some(placement) = app
        .response_book
        .find(&app.store, &caller.workspace, response_id)
        .await
    else {
        let e = ApiError::NotFound(format!(
            "No response found with id '{response_id}' in this workspace."
        ));
        return error(request_id, None, e);
    };
    let Some(version) = app.catalog.version(&placement.version).cloned() else {
        let e = ApiError::NotFound(format!(
            "the response '{response_id}' was made by version `{}`, which this gateway no longer has",
            placement.version
        ));
        return error(request_id, None, e);
    };
    let stream = forward
        .query
        .is_some_and(|q| q.split('&').any(|kv| kv == "stream=true"));
    let call = Call {
        endpoint: forward.endpoint(),
        client_headers: Some(forward.headers),
        content_type: forward.content_type(),
        body: forward.body.clone(),
        stream,
        include_usage: false,
        model: &version.model,
        request_id: &request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: None,
    };
    let result = match version.provider.send(call).await {
        Ok(reply) => Ok(relay_raw(reply)),
        Err(e) => Err(upstream_error(e, &version.name)),
    };
    let routed = crate::types::RouteName::parse(&placement.route)
        .ok()
        .map(|route| Routed {
            route,
            version: version.name.clone(),
            arm: placement.arm,
        });
    Answer {
        request_id,
        routed,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_by_what_they_need() {
        assert_eq!(classify("audio/transcriptions"), OtherPath::WithModel);
        assert_eq!(classify("moderations"), OtherPath::WithModel);
        assert_eq!(classify("files"), OtherPath::Passthrough);
        assert_eq!(classify("vector_stores/vs_1/files"), OtherPath::Passthrough);
        assert_eq!(classify("nope"), OtherPath::Unknown);
    }

    #[test]
    fn the_model_of_a_multipart_form_is_found_and_replaced() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nspeech\r\n--XyZ--\r\n";
        let boundary = multipart_boundary("multipart/form-data; boundary=XyZ").unwrap();
        let (model, range) = form_model(body, &boundary).unwrap();
        assert_eq!(model, "speech");
        let out = Rewrite::Form(range).apply(&Bytes::from_static(body), "whisper-1");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--"),
            "{text}"
        );
        assert!(text.contains("RIFF...."));
        assert_eq!(multipart_boundary("application/json"), None);
    }

    #[test]
    fn embedding_dimensions_are_read_from_floats_or_base64() {
        assert_eq!(dimensions(&serde_json::json!([0.1, 0.2, 0.3])), Some(3));
        // 4 floats = 16 bytes = 24 base64 characters (with padding).
        assert_eq!(
            dimensions(&Value::String("AAAAAAAAAAAAAAAAAAAAAA==".into())),
            Some(4)
        );
    }
}
