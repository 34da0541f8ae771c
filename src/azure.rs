//! Provider-side content filters (Azure OpenAI's above all), counted as guardrail blocks
//! by the provider: a canary that trips the filter more often than stable is caught by
//! the `guardrail_block_rate` gate like one that trips sluice's own guardrails.
//!
//! Azure says so three ways: an HTTP 400 whose error `code` is `content_filter` (the
//! prompt was refused), `prompt_filter_results[].content_filter_results.*.filtered`, and a
//! choice with `finish_reason: "content_filter"` (or `content_filter_results.*.filtered`).
//! OpenAI itself uses the same finish reason, so that one counts for every provider. Each
//! is counted under the rule [`PROVIDER_FILTER_RULE`] with the action `block`.

use serde_json::Value;

use crate::guardrails::{Action, Stage};
use crate::measure::checks::AnswerChecks;

/// The rule name provider filter blocks are counted under.
pub const PROVIDER_FILTER_RULE: &str = "provider_content_filter";

/// Whether an upstream error body says the content filter refused the request.
pub(crate) fn is_content_filter_error(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let error = &v["error"];
    error["code"] == "content_filter"
        || error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
}

/// Whether any category of a `content_filter_results` object was filtered.
fn any_filtered(results: &Value) -> bool {
    results
        .as_object()
        .is_some_and(|o| o.values().any(|r| r["filtered"] == true))
}

/// What a whole chat completion says of the filter: (prompt filtered, answer filtered).
pub(crate) fn filtered_in_completion(v: &Value) -> (bool, bool) {
    let prompt = v["prompt_filter_results"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| any_filtered(&p["content_filter_results"])));
    let answer = v["choices"].as_array().is_some_and(|a| {
        a.iter().any(|c| {
            c["finish_reason"] == "content_filter" || any_filtered(&c["content_filter_results"])
        })
    });
    (prompt, answer)
}

/// Counts one provider filter block at `stage`.
pub(crate) fn count_filtered(checks: &AnswerChecks, stage: Stage) {
    checks.count(stage, &[(PROVIDER_FILTER_RULE.to_owned(), Action::Block)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn azure_filter_errors_and_results_are_recognised() {
        let refused = json!({"error": {"message": "filtered", "type": null, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation"}}});
        assert!(is_content_filter_error(refused.to_string().as_bytes()));
        assert!(!is_content_filter_error(
            br#"{"error":{"code":"rate_limit_exceeded"}}"#
        ));
        let answer = json!({"prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}],
            "choices": [{"index": 0, "finish_reason": "content_filter", "message": {"content": null},
                "content_filter_results": {"violence": {"filtered": true, "severity": "high"}}}]});
        assert_eq!(filtered_in_completion(&answer), (false, true));
        assert_eq!(
            filtered_in_completion(&json!({"choices": [{"finish_reason": "stop"}]})),
            (false, false)
        );
    }
}
