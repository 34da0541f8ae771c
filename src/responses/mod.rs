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

use crate::auth::Caller;
use crate::error::ApiError;
use crate::guardrails::Stage;
use crate::measure::tokens::count_input;
use crate::openai::responses::{ResponseSummary, summarize_response};
use crate::pipeline::call::{self, Outgoing};
use crate::pipeline::context::{Ctx, Start};
use crate::pipeline::finish::{self, AnswerEnd};
use crate::pipeline::resolve::unknown_route;
use crate::pipeline::whole::settle_whole_verdict;
use crate::pipeline::{Answer, Body, ChatRequest, Routed, guard, new_request_id};
use crate::resolve::{Assignment, Target, Unit};
use crate::state::App;
use crate::store::ResponsePlacement;
use crate::types::Outcome;
use crate::upstream::Reply;
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
        Err(e) => return Answer::refused(request_id, e),
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
        return Answer::refused(request_id, unknown_route(app, &request.model));
    };
    let routed = Routed::of(&target);
    // A conversation sluice has not seen yet is noted under its id when it starts here.
    let new_conversation = match (&continues, &placement) {
        (Some(id), None) if id.starts_with("conv") => Some(id.clone()),
        _ => None,
    };
    let incoming = Incoming {
        caller,
        request_id: &request_id,
        request: &mut request,
        raw,
        headers,
        target,
        continued: continues.is_some(),
        new_conversation,
    };
    let result = serve(app, incoming).await;
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

/// The chat path's stages with the Responses API's wire format, in order.
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
    let note = book_note(app, request, &caller, &target);
    if let (Some(id), Some(note)) = (&new_conversation, &note) {
        note.note(id);
    }
    let start = Start {
        request_id,
        headers,
        workspace: caller.workspace.to_string(),
        target,
        stream: request.stream,
        api: Api::Responses,
        expect: crate::openai::responses::expectation(request.raw("text"), request.raw("tools")),
    };
    let mut ctx = Ctx::start(app, start);
    ctx.estimate_prompt_with(count_input, raw);
    if app.traces.enabled() {
        ctx.open_span("responses", &request.model, request.stream, None);
    }
    guard::input(&mut ctx, |rules| {
        guard::instructions_and_input(rules, request)
    })?;

    let body = request.upstream_body(&ctx.version.model, false);
    if !continued {
        call::draw_shadow(
            &mut ctx,
            Api::Responses,
            &body,
            request.raw("tools").is_some(),
        );
    }
    let out = Outgoing {
        endpoint: Endpoint::responses(),
        body,
        stream: request.stream,
        include_usage: false,
    };
    let reply = call::send(&mut ctx, out).await?;
    let reply = call::refuse_error_status(&mut ctx, reply).await?;
    let headers = crate::upstream::headers::to_client(&reply.headers);

    if request.stream {
        ctx.meter.status = reply.status.as_u16();
        let timeout = ctx.version.provider.timeout();
        let checks = ctx.checks.active().then(|| ResponseChecks::new(ctx.checks));
        let relay = ResponsesRelay::new(reply.body, ctx.meter, timeout, checks, note);
        return Ok(Body::Events {
            status: reply.status,
            headers,
            events: Box::pin(relay),
        });
    }
    whole(ctx, reply, headers, note).await
}

/// Where to note the Response's id, unless the client asked not to store it (`store: false`).
fn book_note(
    app: &App,
    request: &ChatRequest,
    caller: &Caller,
    target: &Target,
) -> Option<BookNote> {
    let stored = request.raw("store") != Some("false");
    stored.then(|| BookNote {
        book: app.response_book.clone(),
        workspace: caller.workspace.to_string(),
        route: target.route.to_string(),
        version: target.version.name.to_string(),
        arm: target.arm,
    })
}

/// Reads, measures and checks a whole Response, notes its id, and records it (a Response
/// whose `status` is `failed` as the upstream's failure).
///
/// Errors: the body unreadable or not a Response ([`ApiError::UpstreamInvalid`]), a
/// guardrail block or a fatal schema failure; each recorded.
async fn whole(
    mut ctx: Ctx<'_>,
    reply: Reply,
    mut headers: HeaderMap,
    note: Option<BookNote>,
) -> Result<Body, ApiError> {
    let mut bytes = ctx.read(reply.body).await?;
    let parsed = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| summarize_response(&v).map(|s| (v, s)));
    let (mut value, summary) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => return Err(ctx.invalid(reason)),
    };
    if let (Some(id), Some(note)) = (&summary.id, &note) {
        note.note(id);
    }
    measure_whole(&mut ctx, &summary);
    if ctx.checks.active() {
        let verdict = ctx
            .checks
            .check_whole(std::slice::from_ref(&summary.output));
        let version = ctx.version.name.clone();
        settle_whole_verdict(
            &mut ctx.meter,
            &ctx.checks,
            &verdict,
            &version,
            &mut headers,
        )?;
        if verdict.redacted.iter().any(Option::is_some)
            && let Some(rules) = ctx.checks.output.as_deref().map(|g| &g.output)
        {
            let mut redact = |text: &str| rules.apply(text).redacted;
            if crate::openai::responses::redact_output(&mut value, &mut redact) {
                bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            }
        }
    }
    let failed = summary.status.as_deref() == Some("failed");
    let outcome = if failed {
        Outcome::Upstream5xx
    } else {
        Outcome::Ok
    };
    finish::record_after_reply(ctx.meter, reply.status, outcome);
    Ok(Body::Whole {
        status: reply.status,
        headers,
        bytes,
    })
}

/// The shared end of answer for a whole Response, its reasoning tokens, and a provider's
/// content filter that cut it counted as an output guardrail block.
fn measure_whole(ctx: &mut Ctx<'_>, summary: &ResponseSummary) {
    let end = AnswerEnd {
        usage: summary.usage,
        chars: summary.chars(),
        finish_reason: summary.finish_reason(),
        model: summary.model.clone(),
    };
    finish::end_of_answer(&mut ctx.meter, end, || summary.output.text.clone());
    ctx.meter.observed.reasoning_tokens = summary.reasoning_tokens;
    if summary.incomplete_reason.as_deref() == Some("content_filter")
        && ctx.version.provider.is_azure()
    {
        crate::azure::count_filtered(&ctx.checks, Stage::Output);
        ctx.meter.observed.guardrail_blocked = true;
    }
}
