//! The whole answer: a non-streamed chat completion read whole, measured, checked (schema,
//! output guardrails, the provider's content filter) and redacted before the client gets it.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;

use crate::error::ApiError;
use crate::guardrails::Stage;
use crate::measure::Meter;
use crate::measure::checks::{AnswerChecks, WholeVerdict, apply_redactions};
use crate::measure::schema::SchemaVerdict;
use crate::openai::completion::{CompletionSummary, summarize_completion};
use crate::pipeline::Body;
use crate::pipeline::context::Ctx;
use crate::pipeline::finish::{self, AnswerEnd, fail};
use crate::types::Outcome;

/// Measures and checks a whole chat completion (`bytes`, the upstream's body as read by
/// [`Ctx::read`]), and records it.
///
/// Not `async`: the read is awaited by the caller, so that the request's future holds the
/// context once (an `async fn` keeps its by-value arguments twice, as upvars and as locals,
/// and the context is 728 bytes).
///
/// Errors: the body not a completion, an answer that cannot be redacted
/// ([`ApiError::UpstreamInvalid`]), a guardrail block or a fatal schema failure (see
/// [`settle_whole_verdict`]); each recorded.
pub(crate) fn chat(
    mut ctx: Ctx<'_>,
    status: StatusCode,
    mut bytes: Bytes,
    mut headers: HeaderMap,
) -> Result<Body, ApiError> {
    let summary = match summarize_completion(&bytes) {
        Ok(summary) => summary,
        Err(reason) => return Err(ctx.invalid(reason.to_string())),
    };
    let end = AnswerEnd {
        usage: summary.usage,
        chars: summary.chars(),
        finish_reason: summary.finish_reason.clone(),
        model: summary.model.clone(),
    };
    finish::end_of_answer(&mut ctx.meter, end, || summary.all_text());
    count_content_filter(&mut ctx, &summary, &bytes);
    if ctx.checks.active() {
        let verdict = ctx.checks.check_whole(&summary.choices);
        let version = ctx.version.name.clone();
        settle_whole_verdict(
            &mut ctx.meter,
            &ctx.checks,
            &verdict,
            &version,
            &mut headers,
        )?;
        if verdict.redacted.iter().any(Option::is_some) {
            // An answer that cannot be redacted is not sent as it was.
            match apply_redactions(&bytes, &verdict.redacted) {
                Some(redacted) => bytes = Bytes::from(redacted),
                None => return Err(ctx.invalid("the answer could not be redacted".into())),
            }
        }
    }
    finish::record_after_reply(ctx.meter, status, Outcome::Ok);
    Ok(Body::Whole {
        status,
        headers,
        bytes,
    })
}

/// A provider's content filter (Azure OpenAI's) that cut the prompt or the answer counts
/// as a guardrail block at that stage.
fn count_content_filter(ctx: &mut Ctx<'_>, summary: &CompletionSummary, bytes: &Bytes) {
    if !ctx.version.provider.is_azure()
        && summary.finish_reason.as_deref() != Some("content_filter")
    {
        return;
    }
    let (prompt, answer) = serde_json::from_slice(bytes)
        .map(|v| crate::azure::filtered_in_completion(&v))
        .unwrap_or_default();
    for (stage, filtered) in [(Stage::Input, prompt), (Stage::Output, answer)] {
        if filtered {
            crate::azure::count_filtered(&ctx.checks, stage);
            ctx.meter.observed.guardrail_blocked = true;
        }
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
