//! The hot path of one chat request, without HTTP-framework types:
//! parse → resolve → upstream → measure.
//!
//! The body is forwarded as the client sent it with two edits: `model` becomes the
//! version's model, and a streamed request asks for `stream_options.include_usage` (the
//! relay removes the extra chunk again when the client did not ask for it). Every other
//! field, known or not, goes upstream byte for byte.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::guardrails::{self, Stage, StageRules};
use crate::measure::Meter;
use crate::measure::checks::{AnswerChecks, StreamChecks, WholeVerdict, apply_redactions};
use crate::measure::schema::{Expectation, SchemaVerdict};
use crate::measure::sse::StreamRelay;
use crate::measure::tokens::count_prompt;
use crate::openai::completion::{completion_as_events, summarize_completion};
use crate::resolve::{Target, Unit};
use crate::shadow::ShadowTicket;
use crate::state::App;
use crate::traces;
use crate::types::{Arm, Outcome, RouteName, Usage};
use crate::upstream::{ByteStream, Call, UpstreamError, names_stream_options};
use opentelemetry::KeyValue;

/// The largest non-streamed upstream answer sluice reads.
const MAX_UPSTREAM_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A chat request with only what the gateway needs parsed; the rest stays raw JSON.
pub struct ChatRequest {
    fields: IndexMap<String, Box<RawValue>>,
    /// The `model` field: the route the client asks for.
    pub model: String,
    /// The `stream` field (absent or null is `false`).
    pub stream: bool,
    /// The `user` field, for `sticky = "user"`.
    pub user: Option<String>,
    /// The client asked for the usage chunk itself.
    pub(crate) client_wants_usage: bool,
}

impl ChatRequest {
    /// Reads a chat-completions body: `model` and `stream` parsed, every other field kept raw.
    ///
    /// # Errors
    /// `ApiError::InvalidJson` when the body is not a JSON object;
    /// `ApiError::InvalidRequest` when `model` is missing or not a non-empty string, or `stream`
    /// is not a boolean.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let fields: IndexMap<String, Box<RawValue>> =
            serde_json::from_slice(body).map_err(|e| {
                if e.is_data() {
                    ApiError::InvalidJson("the body must be a JSON object".into())
                } else {
                    ApiError::InvalidJson(e.to_string())
                }
            })?;
        let model = match fields
            .get("model")
            .map(|raw| serde_json::from_str::<String>(raw.get()))
        {
            Some(Ok(model)) if !model.is_empty() => model,
            Some(_) => {
                return Err(ApiError::InvalidRequest {
                    message: "`model` must be a non-empty string".into(),
                    param: Some("model"),
                });
            }
            None => {
                return Err(ApiError::InvalidRequest {
                    message: "you must provide a model parameter".into(),
                    param: Some("model"),
                });
            }
        };
        let stream = match fields
            .get("stream")
            .map(|raw| serde_json::from_str::<Option<bool>>(raw.get()))
        {
            None => false,
            Some(Ok(flag)) => flag.unwrap_or(false),
            Some(Err(_)) => {
                return Err(ApiError::InvalidRequest {
                    message: "`stream` must be a boolean".into(),
                    param: Some("stream"),
                });
            }
        };
        let client_wants_usage = fields
            .get("stream_options")
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
            .and_then(|v| v.get("include_usage").and_then(|u| u.as_bool()))
            .unwrap_or(false);
        let user = fields
            .get("user")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        Ok(Self {
            fields,
            model,
            stream,
            user,
            client_wants_usage,
        })
    }

    /// A field's raw JSON text, if the client sent it.
    pub(crate) fn raw(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(|raw| raw.get())
    }

    pub(crate) fn set_raw(&mut self, field: &str, value: Box<RawValue>) {
        self.fields.insert(field.to_owned(), value);
    }

    /// The body to send upstream: `model` replaced, and usage asked for when `ask_usage`.
    pub fn upstream_body(&mut self, model: &str, ask_usage: bool) -> Bytes {
        let model = serde_json::value::to_raw_value(model).expect("a string serializes");
        self.fields.insert("model".into(), model);
        if ask_usage {
            let mut options = self
                .fields
                .get("stream_options")
                .and_then(|raw| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                        .ok()
                })
                .unwrap_or_default();
            options.insert("include_usage".into(), true.into());
            let raw = serde_json::value::to_raw_value(&options).expect("a map serializes");
            self.fields.insert("stream_options".into(), raw);
        }
        Bytes::from(serde_json::to_vec(&self.fields).expect("raw JSON values serialize"))
    }
}

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

pub(crate) struct Answer {
    pub(crate) request_id: String,
    pub(crate) routed: Option<Routed>,
    pub(crate) result: Result<Body, ApiError>,
}

/// A new request id: `req_` and 32 hex digits, the first 12 the Unix time in milliseconds
/// and the other 20 random (80 bits, as unguessable as an id needs to be here).
///
/// Time first, so that ids sort in the order requests began: the `requests` primary key
/// then grows at its end and a batch of records dirties a few index pages. With fully
/// random ids every record dirtied its own leaf page of the key's index, so SQLite wrote a
/// 4 KiB page to its WAL (and again at checkpoint) per record; once the table outgrew the
/// page cache that was ~100 µs of writer time per record, and the writer fell behind and
/// dropped records (issue 13).
pub(crate) fn new_request_id() -> String {
    let ms = (crate::types::now_ms() as u64) & 0xffff_ffff_ffff;
    let random = rand::random::<u128>() & ((1 << 80) - 1);
    format!("req_{ms:012x}{random:020x}")
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
        Err(e) => {
            return Answer {
                request_id,
                routed: None,
                result: Err(e),
            };
        }
    };
    let unit = Unit {
        workspace: &caller.workspace,
        request_id: &request_id,
        user: request.user.as_deref(),
        headers,
    };
    let Some(target) = app.routing.load().resolve(&request.model, &unit) else {
        let error = ApiError::UnknownRoute(app.routing.load().explain_unknown(&request.model));
        return Answer {
            request_id,
            routed: None,
            result: Err(error),
        };
    };
    let routed = Routed {
        route: target.route.clone(),
        version: target.version.name.clone(),
        arm: target.arm,
    };
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

async fn serve(app: &App, incoming: Incoming<'_>) -> Result<Body, ApiError> {
    let Incoming {
        caller,
        request_id,
        request,
        raw,
        headers,
        target,
    } = incoming;
    let workspace = caller.workspace.clone();
    let version = target.version.clone();
    let provider = version.provider.clone();
    let route = target.settings.clone();
    let checks = AnswerChecks {
        expect: Expectation::from_request(request.raw("response_format"), request.raw("tools")),
        schemas: app.schemas.clone(),
        output: route.guardrails.clone(),
        on_schema_failure: route.on_schema_failure,
        counters: app.guardrail_counts.clone(),
        version: version.name.clone(),
        arm: target.arm,
    };

    let mut meter = Meter::start(
        request_id.to_owned(),
        caller.workspace,
        target,
        request.stream,
        app.sink.clone(),
    );
    let encoding = version.encoding;
    meter.set_prompt_estimate(move || count_prompt(encoding, &raw));
    if app.traces.enabled() {
        let t = meter.target();
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", request.model.clone()),
            KeyValue::new("sluice.route", t.route.to_string()),
            KeyValue::new("sluice.version", version.name.to_string()),
            KeyValue::new("sluice.arm", t.arm.as_str()),
            KeyValue::new("sluice.workspace", workspace.clone()),
            KeyValue::new("sluice.request_id", request_id.to_owned()),
            KeyValue::new("gen_ai.request.stream", request.stream),
        ];
        if let Some(a) = &t.rollout {
            attributes.push(KeyValue::new(
                "sluice.rollout",
                a.tap.rollout_id.to_string(),
            ));
        }
        let span = app
            .traces
            .start_request(headers, format!("chat {}", request.model), attributes);
        meter.set_span(span);
    }

    if let Some(rules) = route
        .guardrails
        .as_deref()
        .map(|g| &g.input)
        .filter(|r| !r.is_empty())
    {
        let applied = guard_input(rules, request);
        checks.count(Stage::Input, &applied.fired);
        if let Some(rule) = applied.blocked_by {
            meter.observed.guardrail_blocked = true;
            return Err(fail(
                &mut meter,
                ApiError::GuardrailBlocked {
                    stage: "input",
                    rule,
                },
            ));
        }
    }

    let ask_usage = request.stream && provider.streams_usage_on_request();
    let mut strip_usage = ask_usage && !request.client_wants_usage;
    // The client's own `stream_options`, to send again if the upstream refuses sluice's.
    let client_options = strip_usage
        .then(|| request.fields.get("stream_options").cloned())
        .flatten();
    let body = request.upstream_body(&version.model, strip_usage);
    if let Some(shadow) = meter
        .target()
        .rollout
        .as_ref()
        .and_then(|a| a.shadow.clone())
    {
        let arm = meter.target().arm;
        if shadow.draws(arm, &workspace, request.raw("tools").is_some()) {
            let ticket = ShadowTicket {
                shadow,
                api: crate::upstream::endpoint::Api::Chat,
                body: body.clone(),
                trace_id: trace_id(headers),
                span: meter.span().cloned(),
                traces: app.traces.clone(),
            };
            meter.set_shadow(ticket, app.shadows.clone());
        }
    }
    let upstream_span = meter.span().and_then(|cx| {
        let attributes = vec![KeyValue::new(
            "gen_ai.request.model",
            version.model.to_string(),
        )];
        app.traces
            .start_child(cx, format!("upstream {}", version.name), attributes)
    });
    let call = Call {
        endpoint: crate::upstream::endpoint::Endpoint::chat(),
        client_headers: Some(headers),
        content_type: None,
        body,
        stream: request.stream,
        include_usage: ask_usage,
        model: &version.model,
        request_id,
        mock: version.mock.as_ref().map(|m| m.load_full()),
        traceparent: upstream_span.as_ref().and_then(traces::traceparent),
    };
    let sent = provider.send(call).await;
    if let Some(cx) = &upstream_span {
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
    let mut reply = match sent {
        Ok(reply) => reply,
        Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    if strip_usage && reply.status == StatusCode::BAD_REQUEST {
        // A 400 that names the field sluice added fails only because of sluice: send the
        // client's request as it was, once, and stop adding the field for this provider.
        let body = read_body(reply.body, provider.timeout())
            .await
            .unwrap_or_default();
        if names_stream_options(&body) {
            if provider.refused_stream_usage() {
                tracing::warn!(
                    version = %version.name,
                    "the upstream refused stream_options.include_usage; retrying without it and no longer adding it for this provider (stream_usage = \"never\" says so in the config)"
                );
            }
            match client_options {
                Some(options) => request.set_raw("stream_options", options),
                None => {
                    request.fields.shift_remove("stream_options");
                }
            }
            strip_usage = false;
            let call = Call {
                endpoint: crate::upstream::endpoint::Endpoint::chat(),
                client_headers: Some(headers),
                content_type: None,
                body: request.upstream_body(&version.model, false),
                stream: true,
                include_usage: false,
                model: &version.model,
                request_id,
                mock: version.mock.as_ref().map(|m| m.load_full()),
                traceparent: upstream_span.as_ref().and_then(traces::traceparent),
            };
            reply = match provider.send(call).await {
                Ok(reply) => reply,
                Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
            };
        } else {
            reply.body = Box::pin(futures_util::stream::iter([Ok(body)]));
        }
    }
    let mut headers = crate::upstream::headers::to_client(&reply.headers);

    if !reply.status.is_success() {
        // The upstream's error goes to the client as it is; a body we cannot read is empty.
        let body = read_body(reply.body, provider.timeout())
            .await
            .unwrap_or_default();
        if crate::azure::is_content_filter_error(&body) {
            crate::azure::count_filtered(&checks, Stage::Input);
            meter.observed.guardrail_blocked = true;
        }
        return Err(fail(
            &mut meter,
            ApiError::UpstreamStatus {
                status: reply.status,
                body,
                headers: Box::new(crate::upstream::headers::to_client_on_error(&reply.headers)),
            },
        ));
    }

    if request.stream {
        meter.status = reply.status.as_u16();
        let is_event_stream = reply
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let upstream: crate::upstream::ByteStream = if is_event_stream {
            reply.body
        } else {
            // Asked for a stream, answered with a whole body: a completion is relayed as
            // the events it would have streamed (so measurement, checks and usage
            // stripping treat it like any stream); anything else is the upstream's failure.
            let bytes = match read_body(reply.body, provider.timeout()).await {
                Ok(bytes) => bytes,
                Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
            };
            match completion_as_events(&bytes) {
                Ok(events) => Box::pin(futures_util::stream::iter([Ok(events)])),
                Err(reason) => {
                    let error = ApiError::UpstreamInvalid {
                        version: version.name.to_string(),
                        reason: format!("asked for a stream, it answered a whole body: {reason}"),
                    };
                    return Err(fail(&mut meter, error));
                }
            }
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let checks = checks.active().then(|| StreamChecks::new(checks));
        let relay = Box::new(StreamRelay::new(
            upstream,
            meter,
            strip_usage,
            provider.timeout(),
            checks,
        ));
        return Ok(Body::Stream {
            status: reply.status,
            headers,
            relay,
        });
    }

    let mut bytes = match read_body(reply.body, provider.timeout()).await {
        Ok(bytes) => bytes,
        Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    let summary = match summarize_completion(&bytes) {
        Ok(summary) => summary,
        Err(reason) => {
            let error = ApiError::UpstreamInvalid {
                version: version.name.to_string(),
                reason: reason.to_string(),
            };
            return Err(fail(&mut meter, error));
        }
    };
    let usage = match summary.usage {
        Some(usage) => usage,
        None => Usage {
            prompt_tokens: meter.estimate_prompt(),
            completion_tokens: version.encoding.count(&summary.all_text()),
            estimated: true,
        },
    };
    meter.observed.usage = Some(usage);
    meter.observed.response_chars = summary.chars();
    meter.observed.finish_reason = summary.finish_reason.clone();
    if provider.is_azure() || summary.finish_reason.as_deref() == Some("content_filter") {
        let (prompt, answer) = serde_json::from_slice(&bytes)
            .map(|v| crate::azure::filtered_in_completion(&v))
            .unwrap_or_default();
        for (stage, filtered) in [(Stage::Input, prompt), (Stage::Output, answer)] {
            if filtered {
                crate::azure::count_filtered(&checks, stage);
                meter.observed.guardrail_blocked = true;
            }
        }
    }
    meter.observed.response_model = summary.model.clone();
    if let Some(model) = &summary.model {
        version.note_served_model(model);
    }
    if meter.wants_answer() {
        meter.observed.answer = Some(summary.all_text());
    }
    if checks.active() {
        let verdict = checks.check_whole(&summary.choices);
        settle_whole_verdict(&mut meter, &checks, &verdict, &version.name, &mut headers)?;
        if verdict.redacted.iter().any(Option::is_some) {
            // An answer that cannot be redacted is not sent as it was.
            match apply_redactions(&bytes, &verdict.redacted) {
                Some(redacted) => bytes = Bytes::from(redacted),
                None => {
                    let error = ApiError::UpstreamInvalid {
                        version: version.name.to_string(),
                        reason: "the answer could not be redacted".into(),
                    };
                    return Err(fail(&mut meter, error));
                }
            }
        }
    }
    meter.status = reply.status.as_u16();
    meter.finish(Outcome::Ok);
    Ok(Body::Whole {
        status: reply.status,
        headers,
        bytes,
    })
}

/// Runs the input rules over every text of the request's messages, masking in place.
fn guard_input(rules: &StageRules, request: &mut ChatRequest) -> guardrails::Applied {
    let mut total = guardrails::Applied::default();
    let Some(mut messages) = request
        .raw("messages")
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
    else {
        return total;
    };
    let mut changed = false;
    let visit = |text: &mut String| {
        let applied = rules.apply(text);
        total.fired.extend(applied.fired);
        if total.blocked_by.is_none() {
            total.blocked_by = applied.blocked_by;
        }
        if let Some(redacted) = applied.redacted {
            *text = redacted;
            changed = true;
        }
    };
    crate::openai::request::for_each_message_text(&mut messages, visit);
    if changed && let Ok(raw) = serde_json::value::to_raw_value(&messages) {
        request.set_raw("messages", raw);
    }
    total
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Records a failed request and hands its error back.
pub(crate) fn fail(meter: &mut Meter, error: ApiError) -> ApiError {
    meter.status = error.status().as_u16();
    meter.finish(error.outcome());
    error
}

pub(crate) fn upstream_error(e: UpstreamError, version: &str) -> ApiError {
    let version = version.to_owned();
    match e {
        UpstreamError::Timeout { after_ms } => ApiError::UpstreamTimeout { version, after_ms },
        UpstreamError::Unreachable(reason) => {
            tracing::warn!(version = %version, reason = %reason, "upstream unreachable");
            ApiError::UpstreamUnreachable { version }
        }
        UpstreamError::Interrupted(reason) => ApiError::UpstreamInvalid { version, reason },
        e @ UpstreamError::Encoded(_) => ApiError::UpstreamInvalid {
            version,
            reason: e.to_string(),
        },
    }
}

/// Applies the whole-answer checks' verdict (chat and Responses alike): the record's schema
/// and guardrail marks; a block or a fatal schema failure is the client's error (recorded
/// as failed); otherwise the `x-sluice-schema` header says pass or fail when a schema was
/// asked for. Redaction stays with the caller, which knows its body's shape.
pub(crate) fn settle_whole_verdict(
    meter: &mut Meter,
    checks: &AnswerChecks,
    verdict: &WholeVerdict,
    version: &str,
    headers: &mut HeaderMap,
) -> Result<(), ApiError> {
    let schema = verdict.schema.clone().unwrap_or(SchemaVerdict::NotAsked);
    meter.observed.schema_failed = schema.failed();
    if let Some(rule) = &verdict.blocked_by {
        meter.observed.guardrail_blocked = true;
        return Err(fail(
            meter,
            ApiError::GuardrailBlocked {
                stage: "answer",
                rule: rule.clone(),
            },
        ));
    }
    if let (true, SchemaVerdict::Fail { path, reason }) = (checks.schema_is_fatal(&schema), &schema)
    {
        let error = ApiError::SchemaInvalid {
            version: version.to_owned(),
            path: path.clone(),
            reason: reason.clone(),
        };
        return Err(fail(meter, error));
    }
    if let Some(failed) = schema.failed() {
        let value = HeaderValue::from_static(if failed { "fail" } else { "pass" });
        headers.insert(HeaderName::from_static("x-sluice-schema"), value);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_their_shape_sort_by_time_and_differ() {
        let before = crate::types::now_ms();
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            let hex = id.strip_prefix("req_").expect("req_ prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            let ms = i64::from_str_radix(&hex[..12], 16).unwrap();
            assert!(ms >= before && ms <= crate::types::now_ms(), "{id}");
        }
        assert_ne!(a, b);
        // An id of a later millisecond sorts after every id of an earlier one.
        let earlier = format!("req_{:012x}{}", before - 1, "f".repeat(20));
        assert!(earlier < a && earlier < b);
    }

    #[test]
    fn unknown_fields_survive_and_model_is_rewritten() {
        let raw = br#"{"model":"chat","messages":[],"seed":7,"x_vendor":{"deep":[1,2]},"n":2}"#;
        let mut req = ChatRequest::parse(raw).unwrap();
        assert_eq!(req.model, "chat");
        let body: serde_json::Value =
            serde_json::from_slice(&req.upstream_body("gpt-4o-2024-08-06", false)).unwrap();
        assert_eq!(body["model"], "gpt-4o-2024-08-06");
        assert_eq!(body["seed"], 7);
        assert_eq!(body["n"], 2);
        assert_eq!(body["x_vendor"]["deep"][1], 2);
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn usage_is_asked_for_without_losing_other_stream_options() {
        let raw = br#"{"model":"chat","stream":true,"stream_options":{"x":1}}"#;
        let mut req = ChatRequest::parse(raw).unwrap();
        assert!(req.stream && !req.client_wants_usage);
        let body: serde_json::Value =
            serde_json::from_slice(&req.upstream_body("m", true)).unwrap();
        assert_eq!(
            body["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(matches!(
            ChatRequest::parse(b"{"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            ChatRequest::parse(b"[1]"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            ChatRequest::parse(b"{}"),
            Err(ApiError::InvalidRequest {
                param: Some("model"),
                ..
            })
        ));
        assert!(matches!(
            ChatRequest::parse(br#"{"model":3}"#),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(matches!(
            ChatRequest::parse(br#"{"model":"m","stream":"yes"}"#),
            Err(ApiError::InvalidRequest {
                param: Some("stream"),
                ..
            })
        ));
    }

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
