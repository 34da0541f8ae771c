//! Input guardrails: the route's input rules run over the request's text before it goes
//! upstream; a rule may count, mask (in place) or block.

use crate::error::ApiError;
use crate::guardrails::{self, Stage, StageRules};
use crate::pipeline::ChatRequest;
use crate::pipeline::context::Ctx;

/// Runs the route's input rules, when it has any, through `apply` (which walks the
/// request's text and masks it in place) and counts what fired.
///
/// Errors: [`ApiError::GuardrailBlocked`] when a rule blocks; the request is then
/// recorded as blocked.
pub(crate) fn input(
    ctx: &mut Ctx<'_>,
    apply: impl FnOnce(&StageRules) -> guardrails::Applied,
) -> Result<(), ApiError> {
    let route = ctx.route.clone();
    let Some(rules) = route
        .guardrails
        .as_deref()
        .map(|g| &g.input)
        .filter(|r| !r.is_empty())
    else {
        return Ok(());
    };
    let applied = apply(rules);
    ctx.checks.count(Stage::Input, &applied.fired);
    if let Some(rule) = applied.blocked_by {
        ctx.meter.observed.guardrail_blocked = true;
        return Err(ctx.fail(ApiError::GuardrailBlocked {
            stage: "input",
            rule,
        }));
    }
    Ok(())
}

/// Runs the input rules over every text of a chat request's messages, masking in place.
pub(crate) fn messages(rules: &StageRules, request: &mut ChatRequest) -> guardrails::Applied {
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

/// Runs the input rules over a Responses request's `instructions` and every text of its
/// `input`, masking in place.
pub(crate) fn instructions_and_input(
    rules: &StageRules,
    request: &mut ChatRequest,
) -> guardrails::Applied {
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
