//! The shared end of an answer, and its record: what a whole answer and a stream relay
//! (chat completions and the Responses API alike) do once the answer is known, and how a
//! request that failed is recorded. `Meter::finish` then writes the one record (for a whole
//! answer, after its reply has gone out).

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::measure::Meter;
use crate::types::{Outcome, Usage};

/// What an answer said, as its record needs it.
pub struct AnswerEnd {
    /// The usage the upstream reported; `None` has sluice count the answer's text with the
    /// version's encoding (and the prompt with the request's estimator), marked estimated.
    pub usage: Option<Usage>,
    /// Characters (Unicode scalar values) of the answer's text.
    pub chars: u64,
    /// The first choice's `finish_reason` (`stop`, `length`, `tool_calls`, `content_filter`).
    pub finish_reason: Option<String>,
    /// The `model` the upstream says answered.
    pub model: Option<String>,
}

/// Marks the answer on the meter: usage (estimated when the upstream sent none), length,
/// finish reason, the served model (noted on the version), and the answer's text when a
/// shadow copy wants it. `text` is called at most once, and only when needed.
pub fn end_of_answer(meter: &mut Meter, end: AnswerEnd, text: impl FnOnce() -> String) {
    let reported = end.usage.and_then(|u| {
        let plausible = u.plausible();
        if plausible.is_none() {
            crate::openai::lenient::note_unreadable(crate::openai::lenient::Field::Usage);
        }
        plausible
    });
    let mut text = (reported.is_none() || meter.wants_answer()).then(text);
    let usage = match reported {
        Some(usage) => usage,
        None => Usage {
            prompt_tokens: meter.estimate_prompt(),
            completion_tokens: meter
                .target()
                .version
                .encoding
                .count(text.as_deref().unwrap_or_default()),
            estimated: true,
        },
    };
    if let Some(model) = &end.model {
        meter.target().version.note_served_model(model);
    }
    if meter.wants_answer() {
        meter.observed.answer = text.take();
    }
    let observed = &mut meter.observed;
    observed.usage = Some(usage);
    observed.response_chars = end.chars;
    observed.finish_reason = end.finish_reason;
    observed.response_model = end.model;
}

/// Records the request with the upstream's `status` and `outcome` once the reply the caller
/// returns has gone out ([`Meter::finish_after_reply`]): for a whole answer, redacted or
/// not.
pub(crate) fn record_after_reply(mut meter: Meter, status: StatusCode, outcome: Outcome) {
    meter.status = status.as_u16();
    meter.finish_after_reply(outcome);
}

/// Records a failed request (the error's status and outcome) and hands its error back.
pub fn fail(meter: &mut Meter, error: ApiError) -> ApiError {
    meter.status = error.status().as_u16();
    meter.finish(error.outcome());
    error
}
