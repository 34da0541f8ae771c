//! Shadow pairs as eval cases: a rollout's stored pairs, paged through, each turned into a
//! request with the stable version's answer as A and the canary's as B.
//!
//! What a pair keeps decides what can be compared: both texts, tokens, cost, latency and
//! finish reasons; tool-call names only for the shadow side (the primary's record has
//! none); schema verdicts are recomputed on both texts from the request's
//! `response_format` (a Responses request's `text.format`) alone, the same way on both
//! sides (tool-call arguments are not kept).

use anyhow::{Context, bail};
use serde_json::Value;

use crate::eval::case::{Answer, Case};
use crate::measure::schema::{Expectation, SchemaChecker, ToolCall};
use crate::store::{RolloutRow, ShadowPair, Store};
use crate::types::Arm;

/// Pairs read per query.
const PAIRS_PER_PAGE: i64 = 500;

/// The rollout and all its pairs, oldest first.
pub(crate) async fn load(
    store: &Store,
    rollout_id: &str,
) -> anyhow::Result<(RolloutRow, Vec<ShadowPair>)> {
    let rollout = store
        .rollout(rollout_id)
        .await
        .context("reading the rollout")?;
    let Some(rollout) = rollout else {
        bail!("no rollout `{rollout_id}` in the database (`sluice rollout list` shows the ids)");
    };
    let mut pairs = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .shadow_pairs(rollout_id, after, PAIRS_PER_PAGE)
            .await
            .context("reading shadow pairs")?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let full = page.len() as i64 == PAIRS_PER_PAGE;
        pairs.extend(page);
        if !full {
            break;
        }
    }
    if pairs.is_empty() {
        bail!(
            "rollout `{rollout_id}` has no shadow pairs: its policy needs a [shadow] section with rate > 0, \
             and pairs are stored only while the rollout is live"
        );
    }
    Ok((rollout, pairs))
}

/// One pair as a case: A is the stable arm's answer, B the canary's.
pub(crate) fn to_case(pair: &ShadowPair, checker: &SchemaChecker) -> Case {
    let expect = response_format_only(&pair.request);
    let check = |text: &str| {
        checker
            .check(&expect, text, &[])
            .failed()
            .map(|failed| !failed)
    };
    let mut primary = primary_answer(pair);
    let mut shadow = shadow_answer(pair);
    for answer in [&mut primary, &mut shadow] {
        if answer.is_ok() {
            answer.schema_passed = check(&answer.text);
        }
    }
    let answers = match pair.primary_arm {
        Arm::Stable => [primary, shadow],
        Arm::Canary => [shadow, primary],
    };
    Case {
        id: pair.request_id.clone(),
        request: pair.request.clone(),
        expect: None,
        input_fired: Vec::new(),
        input_blocked_by: None,
        answers,
    }
}

fn response_format_only(request: &Value) -> Expectation {
    if request.get("input").is_some() && request.get("messages").is_none() {
        let raw = request.get("text").map(Value::to_string);
        return crate::openai::responses::expectation(raw.as_deref(), None);
    }
    let raw = request.get("response_format").map(Value::to_string);
    Expectation::from_request(raw.as_deref(), None)
}

/// The primary's answer, from its measurement record (a `measure::Record` as JSON).
fn primary_answer(pair: &ShadowPair) -> Answer {
    let r = &pair.primary_record;
    let status = r["status"].as_u64().unwrap_or(200) as u16;
    let error = (!(200..300).contains(&status)).then(|| format!("HTTP {status}"));
    Answer {
        status,
        error,
        text: pair.primary_answer.clone(),
        tool_calls: None,
        finish_reason: r["finish_reason"].as_str().map(str::to_owned),
        prompt_tokens: r["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: r["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        tokens_estimated: r["usage"]["estimated"].as_bool().unwrap_or(false),
        cost_usd: r["cost_usd"].as_f64().unwrap_or(0.0),
        latency_ms: r["latency_ms"].as_f64().unwrap_or(0.0),
        schema_passed: None,
    }
}

/// The shadow's answer, from the small record the shadow sender keeps.
fn shadow_answer(pair: &ShadowPair) -> Answer {
    let r = &pair.shadow_record;
    let status = r["status"].as_u64().unwrap_or(0) as u16;
    let error = (!(200..300).contains(&status)).then(|| {
        let excerpt: String = pair.shadow_answer.chars().take(200).collect();
        format!("HTTP {status}: {excerpt}")
    });
    let tool_calls = r["tool_calls"].as_array().map(|names| {
        names
            .iter()
            .filter_map(Value::as_str)
            .map(|name| ToolCall {
                name: name.to_owned(),
                arguments: String::new(),
            })
            .collect()
    });
    Answer {
        status,
        error,
        text: pair.shadow_answer.clone(),
        tool_calls,
        finish_reason: r["finish_reason"].as_str().map(str::to_owned),
        prompt_tokens: r["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: r["completion_tokens"].as_u64().unwrap_or(0),
        tokens_estimated: false,
        cost_usd: r["cost_usd"].as_f64().unwrap_or(0.0),
        latency_ms: r["latency_ms"].as_f64().unwrap_or(0.0),
        schema_passed: None,
    }
}
