//! Quality signals: structured-output validation and guardrails, counted per version and
//! arm, and judged as gates.

use std::time::Instant;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::rollouts::{decision_report, start, view};

fn order_schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "order", "schema": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "status": {"enum": ["open", "shipped"]}},
        "required": ["id", "status"]}}})
}

#[tokio::test]
async fn schema_failures_are_marked_counted_and_passed_through() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let good = app
        .chat_raw(&key, chat_body("guarded", json!({"response_format": order_schema(), "x_test_answer": r#"{"id": 1, "status": "open"}"#})))
        .await;
    assert_eq!(headers_of(&good)["x-sluice-schema"], "pass");
    let bad = app
        .chat_raw(
            &key,
            chat_body(
                "guarded",
                json!({"response_format": order_schema(), "x_test_answer": r#"{"id": "one"}"#}),
            ),
        )
        .await;
    assert_eq!(bad.status(), 200, "passed through by default");
    assert_eq!(headers_of(&bad)["x-sluice-schema"], "fail");
    let body: Value = bad.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], r#"{"id": "one"}"#,
        "answer unchanged"
    );
    let plain = app.chat_raw(&key, chat_body("guarded", json!({}))).await;
    assert!(!headers_of(&plain).contains_key("x-sluice-schema"));

    // Tool-call arguments against the tool's parameters.
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let call = app
        .chat_raw(
            &key,
            chat_body(
                "guarded",
                json!({"tools": tools, "x_test_tool_args": "{\"q\": 42}"}),
            ),
        )
        .await;
    assert_eq!(headers_of(&call)["x-sluice-schema"], "fail");

    let stats = app.stats("guarded").await;
    let v = &stats["versions"]["g-echo"];
    assert_eq!(
        (
            v["requests"].as_u64(),
            v["schema_requests"].as_u64(),
            v["schema_failures"].as_u64()
        ),
        (Some(4), Some(3), Some(2))
    );
    app.wait_written(4).await;
    let records = app
        .store()
        .await
        .records(Some("guarded"), 10)
        .await
        .unwrap();
    let mut marks: Vec<Option<bool>> = records.iter().map(|r| r.schema_failed).collect();
    marks.sort();
    assert_eq!(marks, [None, Some(false), Some(true), Some(true)]);
}

#[tokio::test]
async fn a_route_that_says_error_turns_a_schema_failure_into_a_502() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app
        .chat_raw(&key, chat_body("strict", json!({"response_format": order_schema(), "x_test_answer": r#"{"id": 3, "status": "lost"}"#})))
        .await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "schema_validation_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/status"),
        "{body}"
    );

    // A stream: validated once complete, then a final error event instead of [DONE].
    let text = app
        .chat_raw(&key, chat_body("strict", json!({"stream": true, "response_format": order_schema(), "x_test_pieces": ["{\"id\": ", "\"x\"}"]})))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("schema_validation_failed"), "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn an_input_block_answers_400_without_calling_the_upstream() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let body = json!({"model": "guarded", "messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}]});
    let r = app.chat_raw(&key, body).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "guardrail_blocked");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-card-numbers")
    );
    assert!(app.upstream.received().is_empty());
    let fake = json!({"model": "guarded", "messages": [{"role": "user", "content": "order 4111 1111 1111 1112"}]});
    assert_eq!(
        app.chat_raw(&key, fake).await.status(),
        200,
        "a number that fails Luhn is not a card"
    );
}

#[tokio::test]
async fn output_redaction_masks_matches_even_across_stream_chunks() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app
        .chat_raw(
            &key,
            chat_body(
                "guarded",
                json!({"x_test_answer": "Write to jane.doe@example.com today."}),
            ),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Write to [redacted:email] today."
    );

    let pieces = [
        "Write to jane.",
        "doe@exam",
        "ple.com today, ",
        "then ask bob@example.org.",
    ];
    let text = app
        .chat_raw(
            &key,
            chat_body("guarded", json!({"stream": true, "x_test_pieces": pieces})),
        )
        .await
        .text()
        .await
        .unwrap();
    let mut answer = String::new();
    for data in text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
    {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        answer.push_str(
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        answer,
        "Write to [redacted:email] today, then ask [redacted:email]."
    );
    assert!(text.ends_with("data: [DONE]\n\n"));

    let stats = app.stats("guarded").await;
    let rows = stats["guardrails"].as_array().unwrap();
    let redactions = rows
        .iter()
        .find(|r| r["rule"] == "mask-emails" && r["stage"] == "output")
        .unwrap();
    assert_eq!(
        (redactions["count"].as_u64(), redactions["arm"].as_str()),
        (Some(2), Some("stable"))
    );
}

#[tokio::test]
async fn an_output_block_replaces_the_answer_and_ends_a_stream() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app
        .chat_raw(
            &key,
            chat_body(
                "guarded",
                json!({"x_test_answer": "Status of project  nightingale: green"}),
            ),
        )
        .await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "guardrail_blocked");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-codenames")
    );

    let text = app
        .chat_raw(&key, chat_body("guarded", json!({"stream": true, "x_test_pieces": ["All fine. Project ", "Nightingale ships soon"]})))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("guardrail_blocked"), "{text}");
    assert!(
        !text.to_lowercase().contains("nightingale ships"),
        "the blocked text never reaches the client"
    );
    assert!(!text.contains("[DONE]"));
    app.wait_written(2).await;
    let records = app
        .store()
        .await
        .records(Some("guarded"), 10)
        .await
        .unwrap();
    assert_eq!(records.len(), 2, "one record per request");
    assert!(
        records
            .iter()
            .all(|r| r.guardrail_blocked && r.outcome == sluice::types::Outcome::GuardrailBlocked)
    );
}

async fn assert_reverted_on(route: &str, canary: &str, extra: Value) -> Value {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, route, canary, "fast").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        for _ in 0..16 {
            let _ = app
                .chat_raw(&key, chat_body(route, extra.clone()))
                .await
                .bytes()
                .await;
        }
        let mut v = view(&app, &id).await;
        if v["state"] != "progressing" {
            assert_eq!(v["state"], "rolled_back", "{v:#}");
            // The decision's own report, from its event: the view's stored report may be
            // an earlier look's.
            v["judge"] = decision_report(&app, &id, "rolled_back").await;
            return v;
        }
        assert!(started.elapsed() < PATIENCE, "never reverted: {v:#}");
    }
}

#[tokio::test]
async fn the_judge_reverts_a_canary_whose_schema_failures_rise() {
    let v = assert_reverted_on(
        "structured",
        "st-bad",
        json!({"response_format": order_schema()}),
    )
    .await;
    let gate = v["judge"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "schema_failure_rate")
        .unwrap_or_else(|| panic!("no schema gate in the decision: {v:#}"))
        .clone();
    assert_eq!(gate["verdict"], "fail", "{gate}");
    assert!(v["arms"]["canary"]["schema_failures"].as_u64().unwrap() > 0);
    assert_eq!(v["arms"]["stable"]["schema_failures"], 0);
}

#[tokio::test]
async fn the_judge_reverts_a_canary_whose_guardrail_blocks_rise() {
    // The stable answer is as long as the canary's, so only the blocks tell them apart.
    let v = assert_reverted_on(
        "guarded",
        "g-codename",
        json!({"x_test_answer": "About the Project Blackbird launch.."}),
    )
    .await;
    let gate = v["judge"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "guardrail_block_rate")
        .unwrap_or_else(|| panic!("no guardrail gate in the decision: {v:#}"))
        .clone();
    assert_eq!(gate["verdict"], "fail", "{gate}");
    assert!(v["arms"]["canary"]["guardrail_blocks"].as_u64().unwrap() > 0);
}
