//! `POST /v1/responses`: the Responses API as a first-class, canaried, measured citizen.
//!
//! The same path as a chat completion — parse → resolve → input guardrails → upstream →
//! measure — with the Responses API's own wire format ([`crate::openai::responses`]), its own stream relay
//! ([`relay`]), and one rule of its own: a request that continues a stored conversation
//! (`previous_response_id`, or a `conversation` sluice has seen) goes to the version that
//! produced it, found in the [`book::ResponseBook`], whatever its bucket says; such a
//! request is reported and not judged, like a pinned one. The body goes upstream with only
//! `model` rewritten (`tools`, `reasoning`, `include`, `store`, `metadata` and unknown
//! fields untouched). Usage always comes in the Response (`response.completed` when
//! streamed), so nothing is added to the request.

pub(crate) mod book;
pub(crate) mod relay;

use axum::http::HeaderMap;
use bytes::Bytes;
use opentelemetry::KeyValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::guardrails::{self, Stage, StageRules};
use crate::measure::Meter;
use crate::measure::checks::AnswerChecks;
use crate::measure::tokens::count_input;
use crate::openai::responses::summarize_response;
use crate::pipeline::{
    Answer, Body, ChatRequest, Routed, fail, new_request_id, read_body, trace_id, upstream_error,
};
use crate::resolve::{Assignment, Target, Unit};
use crate::shadow::ShadowTicket;
use crate::state::App;
use crate::store::ResponsePlacement;
use crate::traces;
use crate::types::{Outcome, Usage};
use crate::upstream::Call;
use crate::upstream::endpoint::{Api, Endpoint};
use relay::{BookNote, ResponseChecks, ResponsesRelay};

/// What ties a request to an earlier one: its `previous_response_id`, else its
/// `conversation` (a string id or `{"id": …}`).
fn continuation(request: &ChatRequest) -> Option<String> {
    let field = |name: &str| {
        request
            .raw(name)
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
    };
    let previous = field("previous_response_id").and_then(|v| v.as_str().map(str::to_owned));
    previous.or_else(|| {
        field("conversation").and_then(|v| match v {
            serde_json::Value::String(id) => Some(id),
            serde_json::Value::Object(o) => o.get("id").and_then(|i| i.as_str()).map(str::to_owned),
            _ => None,
        })
    })
}

/// The target of a request that continues `placement`: its version on the route, with
/// the live rollout's assignment marked not randomized (reported, not judged).
fn continued_target(app: &App, model: &str, placement: &ResponsePlacement) -> Option<Target> {
    let routing = app.routing.load();
    let entry = routing.route(model)?;
    if let Some(rollout) = &entry.rollout {
        for target in [&rollout.canary, &entry.stable] {
            if *target.version.name == *placement.version {
                let mut target = target.clone();
                target.rollout = Some(Assignment {
                    tap: rollout.tap.clone(),
                    w: rollout.weight,
                    randomized: false,
                    step: rollout.step,
                    shadow: None,
                    at_ms: crate::types::now_ms(),
                    unit: None,
                });
                return Some(target);
            }
        }
    } else if *entry.stable.version.name == *placement.version {
        return Some(entry.stable.clone());
    }
    // The version left the route (a rollback): the conversation's state lives there still.
    app.catalog
        .target(&entry.stable.route, &placement.version, placement.arm)
}

/// Serves one `POST /v1/responses` for an authenticated caller.
pub(crate) async fn create(app: &App, caller: Caller, headers: &HeaderMap, raw: Bytes) -> Answer {
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
    let continues = continuation(&request);
    let placement = match &continues {
        Some(id) => {
            app.response_book
                .find(&app.store, &caller.workspace, id)
                .await
        }
        None => None,
    };
    let target = match &placement {
        Some(p) => continued_target(app, &request.model, p),
        None => {
            let unit = Unit {
                workspace: &caller.workspace,
                request_id: &request_id,
                user: request.user.as_deref(),
                headers,
            };
            app.routing.load().resolve(&request.model, &unit)
        }
    };
    let Some(target) = target else {
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
    // A conversation sluice has not seen yet is noted under its id when it starts here.
    let new_conversation = match (&continues, &placement) {
        (Some(id), None) if id.starts_with("conv") => Some(id.clone()),
        _ => None,
    };
    let result = serve(
        app,
        Incoming {
            caller,
            request_id: &request_id,
            request: &mut request,
            raw,
            headers,
            target,
            continued: continues.is_some(),
            new_conversation,
        },
    )
    .await;
    Answer {
        request_id,
        routed: Some(routed),
        result,
    }
}

struct Incoming<'a> {
    caller: Caller,
    request_id: &'a str,
    request: &'a mut ChatRequest,
    raw: Bytes,
    headers: &'a HeaderMap,
    target: Target,
    /// The request continues an earlier Response or a conversation: never shadowed (the
    /// other version does not know that state).
    continued: bool,
    new_conversation: Option<String>,
}

async fn serve(app: &App, incoming: Incoming<'_>) -> Result<Body, ApiError> {
    let Incoming {
        caller,
        request_id,
        request,
        raw,
        headers,
        target,
        continued,
        new_conversation,
    } = incoming;
    let workspace = caller.workspace.clone();
    let version = target.version.clone();
    let provider = version.provider.clone();
    let route = target.settings.clone();
    let checks = AnswerChecks {
        expect: crate::openai::responses::expectation(request.raw("text"), request.raw("tools")),
        schemas: app.schemas.clone(),
        output: route.guardrails.clone(),
        on_schema_failure: route.on_schema_failure,
        counters: app.guardrail_counts.clone(),
        version: version.name.clone(),
        arm: target.arm,
    };
    let stored = request.raw("store") != Some("false");
    let note = stored.then(|| BookNote {
        book: app.response_book.clone(),
        workspace: workspace.clone(),
        route: target.route.to_string(),
        version: version.name.to_string(),
        arm: target.arm,
    });
    if let (Some(id), Some(note)) = (&new_conversation, &note) {
        note.note(id);
    }

    let mut meter = Meter::start(
        request_id.to_owned(),
        caller.workspace,
        target,
        request.stream,
        app.sink.clone(),
    );
    meter.set_api(Api::Responses);
    let encoding = version.encoding;
    meter.set_prompt_estimate(move || count_input(encoding, &raw));
    if app.traces.enabled() {
        let t = meter.target();
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "responses"),
            KeyValue::new("gen_ai.request.model", request.model.clone()),
            KeyValue::new("sluice.route", t.route.to_string()),
            KeyValue::new("sluice.version", version.name.to_string()),
            KeyValue::new("sluice.arm", t.arm.as_str()),
            KeyValue::new("sluice.workspace", workspace.clone()),
            KeyValue::new("sluice.request_id", request_id.to_owned()),
            KeyValue::new("gen_ai.request.stream", request.stream),
        ];
        let span =
            app.traces
                .start_request(headers, format!("responses {}", request.model), attributes);
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

    let body = request.upstream_body(&version.model, false);
    if let Some(shadow) = meter
        .target()
        .rollout
        .as_ref()
        .and_then(|a| a.shadow.clone())
    {
        let arm = meter.target().arm;
        if !continued && shadow.draws(arm, &workspace, request.raw("tools").is_some()) {
            let ticket = ShadowTicket {
                shadow,
                api: Api::Responses,
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
        endpoint: Endpoint::responses(),
        client_headers: Some(headers),
        content_type: None,
        body,
        stream: request.stream,
        include_usage: false,
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
    let reply = match sent {
        Ok(reply) => reply,
        Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    let mut out_headers = crate::upstream::headers::to_client(&reply.headers);

    if !reply.status.is_success() {
        let body = read_body(reply.body, provider.timeout())
            .await
            .unwrap_or_default();
        if crate::azure::is_content_filter_error(&body) {
            crate::azure::count_filtered(&checks, Stage::Input);
            meter.observed.guardrail_blocked = true;
        }
        let error = ApiError::UpstreamStatus {
            status: reply.status,
            body,
            headers: Box::new(crate::upstream::headers::to_client_on_error(&reply.headers)),
        };
        return Err(fail(&mut meter, error));
    }

    if request.stream {
        meter.status = reply.status.as_u16();
        let checks = checks.active().then(|| ResponseChecks::new(checks));
        let relay = ResponsesRelay::new(reply.body, meter, provider.timeout(), checks, note);
        return Ok(Body::Events {
            status: reply.status,
            headers: out_headers,
            events: Box::pin(relay),
        });
    }

    let bytes = match read_body(reply.body, provider.timeout()).await {
        Ok(bytes) => bytes,
        Err(e) => return Err(fail(&mut meter, upstream_error(e, &version.name))),
    };
    let parsed = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| summarize_response(&v).map(|s| (v, s)));
    let (mut value, summary) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => {
            let error = ApiError::UpstreamInvalid {
                version: version.name.to_string(),
                reason,
            };
            return Err(fail(&mut meter, error));
        }
    };
    if let (Some(id), Some(note)) = (&summary.id, &note) {
        note.note(id);
    }
    let usage = match summary.usage {
        Some(usage) => usage,
        None => Usage {
            prompt_tokens: meter.estimate_prompt(),
            completion_tokens: version.encoding.count(&summary.output.text),
            estimated: true,
        },
    };
    meter.observed.usage = Some(usage);
    meter.observed.reasoning_tokens = summary.reasoning_tokens;
    meter.observed.response_chars = summary.chars();
    meter.observed.finish_reason = summary.finish_reason();
    meter.observed.response_model = summary.model.clone();
    if summary.incomplete_reason.as_deref() == Some("content_filter") && provider.is_azure() {
        crate::azure::count_filtered(&checks, Stage::Output);
        meter.observed.guardrail_blocked = true;
    }
    if let Some(model) = &summary.model {
        version.note_served_model(model);
    }
    if meter.wants_answer() {
        meter.observed.answer = Some(summary.output.text.clone());
    }
    let mut bytes = bytes;
    if checks.active() {
        let verdict = checks.check_whole(std::slice::from_ref(&summary.output));
        crate::pipeline::settle_whole_verdict(
            &mut meter,
            &checks,
            &verdict,
            &version.name,
            &mut out_headers,
        )?;
        if verdict.redacted.iter().any(Option::is_some)
            && let Some(rules) = checks.output.as_deref().map(|g| &g.output)
        {
            let mut redact = |text: &str| rules.apply(text).redacted;
            if crate::openai::responses::redact_output(&mut value, &mut redact) {
                bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            }
        }
    }
    let failed = summary.status.as_deref() == Some("failed");
    meter.status = reply.status.as_u16();
    meter.finish(if failed {
        Outcome::Upstream5xx
    } else {
        Outcome::Ok
    });
    Ok(Body::Whole {
        status: reply.status,
        headers: out_headers,
        bytes,
    })
}

/// Runs the input rules over `instructions` and every text of `input`, masking in place.
fn guard_input(rules: &StageRules, request: &mut ChatRequest) -> guardrails::Applied {
    let mut total = guardrails::Applied::default();
    let mut visit = |text: &mut String| -> bool {
        let applied = rules.apply(text);
        total.fired.extend(applied.fired);
        if total.blocked_by.is_none() {
            total.blocked_by = applied.blocked_by;
        }
        match applied.redacted {
            Some(redacted) => {
                *text = redacted;
                true
            }
            None => false,
        }
    };
    for field in ["instructions", "input"] {
        let Some(mut value) = request
            .raw(field)
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
        else {
            continue;
        };
        let mut changed = false;
        crate::openai::request::for_each_input_text(&mut value, |text| changed |= visit(text));
        if changed && let Ok(raw) = serde_json::value::to_raw_value(&value) {
            request.set_raw(field, raw);
        }
    }
    total
}
