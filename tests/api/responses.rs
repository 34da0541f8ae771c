//! The Responses API through sluice: routed, relayed event by event, measured, checked,
//! and conversations that continue where they began.

use async_openai::types::responses::{
    CreateResponse, CreateResponseArgs, Reasoning, ResponseStreamEvent,
};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice::types::Api;

use crate::helpers::*;
use crate::rollouts::start;
use crate::upstream_more::{CANARY_TEXT, REASONING_TOKENS};

fn request(model: &str, stream: bool) -> CreateResponse {
    CreateResponseArgs::default()
        .model(model)
        .input("Say hello")
        .reasoning(Reasoning::default())
        .stream(stream)
        .build()
        .unwrap()
}

/// A raw Responses call, for asserting on status and headers exactly.
async fn responses_raw(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/responses", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The (event type, data) pairs of a raw Responses stream.
fn typed_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let kind = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("null");
            (kind, serde_json::from_str(data).unwrap())
        })
        .collect()
}

async fn records(app: &TestApp, n: u64, route: &str) -> Vec<sluice::types::Record> {
    app.wait_written(n).await;
    app.store().await.records(Some(route), 100).await.unwrap()
}

#[tokio::test]
async fn a_responses_stream_is_relayed_event_by_event_with_the_usage_and_cost_of_the_unstreamed_answer()
 {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let client = app.openai(&key);

    let whole = client
        .responses()
        .create(request("chat", false))
        .await
        .unwrap();
    assert_eq!(whole.output_text().as_deref(), Some(OK_TEXT));

    // The mock sends each event only once the test has seen the one before: a relay that
    // held events back (or the whole stream) would leave the client waiting here.
    let steps = app.upstream.calls.gate_streams();
    steps.add_permits(1);
    let mut stream = client
        .responses()
        .create_stream(request("chat", true))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut completed = None;
    while let Some(event) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("each event reaches the client before the upstream sends the next")
    {
        steps.add_permits(1);
        match event.unwrap() {
            ResponseStreamEvent::ResponseCreated(_) => kinds.push("created"),
            ResponseStreamEvent::ResponseOutputTextDelta(d) => {
                kinds.push("delta");
                text.push_str(&d.delta);
            }
            ResponseStreamEvent::ResponseCompleted(c) => {
                kinds.push("completed");
                completed = Some(c.response);
            }
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        ["created", "delta", "delta", "delta", "completed"],
        "every event arrives, in order"
    );
    assert_eq!(text, OK_TEXT);
    let usage = completed.unwrap().usage.unwrap();
    assert_eq!(
        usage.output_tokens_details.reasoning_tokens as u64,
        REASONING_TOKENS
    );

    let records = records(&app, 2, "chat").await;
    assert_eq!(records.len(), 2);
    let (a, b) = (&records[0], &records[1]);
    assert_ne!(a.stream, b.stream);
    for r in [a, b] {
        assert_eq!(r.api, Api::Responses);
        assert_eq!(r.version, "gpt-4o");
        assert_eq!(r.usage.prompt_tokens, OK_USAGE.0);
        assert_eq!(r.usage.completion_tokens, OK_USAGE.1 + REASONING_TOKENS);
        assert!(!r.usage.estimated);
        assert_eq!(r.reasoning_tokens, Some(REASONING_TOKENS));
        assert_eq!(r.finish_reason.as_deref(), Some("completed"));
        assert_eq!(r.response_chars, OK_TEXT.chars().count() as u64);
        // gpt-4o: $2.50 in, $10 out per million tokens; reasoning tokens bill as output.
        let cost = (OK_USAGE.0 as f64 * 2.5 + (OK_USAGE.1 + REASONING_TOKENS) as f64 * 10.0) / 1e6;
        assert!((r.cost_usd - cost).abs() < 1e-12, "{}", r.cost_usd);
    }
    let streamed = if a.stream { a } else { b };
    let ttft = streamed.ttft_ms.expect("a stream has a TTFT");
    assert!(ttft <= streamed.latency_ms);
}

#[tokio::test]
async fn the_body_goes_upstream_with_only_the_model_rewritten() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let body = json!({"model": "chat", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "web_search"}], "include": ["reasoning.encrypted_content"], "store": true,
        "metadata": {"team": "support"}, "reasoning": {"effort": "low"}, "x_vendor": {"deep": [1, 2]}});
    let response = responses_raw(&app, &key, body.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = headers_of(&response);
    assert_eq!(headers["x-sluice-route"], "chat");
    assert_eq!(headers["x-sluice-version"], "gpt-4o");
    let calls = app.upstream.calls.to("/v1/responses");
    assert_eq!(calls.len(), 1);
    let mut expected = body;
    expected["model"] = json!("ok");
    assert_eq!(calls[0].json(), expected);
    assert_eq!(
        calls[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn a_text_format_schema_is_validated_like_response_format() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let schema = json!({"type": "object", "required": ["id", "status"],
        "properties": {"id": {"type": "integer"}, "status": {"enum": ["open", "closed"]}}});
    let text = json!({"format": {"type": "json_schema", "name": "ticket", "schema": schema, "strict": true}});

    let good = responses_raw(
        &app,
        &key,
        json!({"model": "structured", "input": "ticket?", "text": text}),
    )
    .await;
    assert_eq!(good.status(), StatusCode::OK);
    assert_eq!(headers_of(&good)["x-sluice-schema"], "pass");

    // `strict` turns a failure into a 502; the echo model answers with what we tell it.
    let bad = json!({"model": "strict", "input": "ticket?", "text": text, "x_test_answer": r#"{"id": "seven"}"#});
    let response = responses_raw(&app, &key, bad.clone()).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "schema_validation_failed");

    // Streamed, the failure ends the stream with an `error` event instead of `completed`.
    let mut streamed = bad;
    streamed["stream"] = json!(true);
    let body = responses_raw(&app, &key, streamed)
        .await
        .text()
        .await
        .unwrap();
    let events = typed_events(&body);
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "error", "{body}");
    assert_eq!(data["code"], "schema_validation_failed");
    assert!(events.iter().all(|(k, _)| k != "response.completed"));

    let records = records(&app, 3, "strict").await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.schema_failed == Some(true)));
}

#[tokio::test]
async fn function_call_arguments_are_checked_against_their_tools() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let tools = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object",
        "required": ["order"], "properties": {"order": {"type": "integer"}}}}]);
    let call = |arguments: &str| {
        json!({"model": "guarded", "input": "where is order 7?", "tools": tools,
            "x_test_call": {"name": "lookup", "arguments": arguments}})
    };
    let good = responses_raw(&app, &key, call(r#"{"order": 7}"#)).await;
    assert_eq!(good.status(), StatusCode::OK);
    assert_eq!(headers_of(&good)["x-sluice-schema"], "pass");
    let bad = responses_raw(&app, &key, call(r#"{"order": "seven"}"#)).await;
    assert_eq!(bad.status(), StatusCode::OK, "the route passes failures on");
    assert_eq!(headers_of(&bad)["x-sluice-schema"], "fail");
    let records = records(&app, 2, "guarded").await;
    let mut failed: Vec<Option<bool>> = records.iter().map(|r| r.schema_failed).collect();
    failed.sort();
    assert_eq!(failed, [Some(false), Some(true)]);
}

#[tokio::test]
async fn input_guardrails_read_instructions_and_input_items() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let card = "4111 1111 1111 1111";
    let bodies = [
        json!({"model": "guarded", "input": format!("my card is {card}")}),
        json!({"model": "guarded", "input": [{"role": "user", "content": [{"type": "input_text", "text": format!("card {card}")}]}]}),
        json!({"model": "guarded", "instructions": format!("Bill {card}."), "input": "hi"}),
    ];
    for body in bodies {
        let r = responses_raw(&app, &key, body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "guardrail_blocked", "{body}");
    }
    assert!(
        app.upstream.calls.to("/v1/responses").is_empty(),
        "a blocked request never reaches the upstream"
    );
    let records = records(&app, 3, "guarded").await;
    assert!(
        records
            .iter()
            .all(|r| r.guardrail_blocked && r.api == Api::Responses)
    );
}

#[tokio::test]
async fn an_output_redaction_spanning_two_delta_events_is_masked_everywhere_the_client_looks() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let body = json!({"model": "guarded", "input": "contact?", "stream": true,
        "x_test_answer": "Mail me at jane.doe@example.com today",
        "x_test_pieces": ["Mail me at jane.", "doe@example.com today"]});
    let text = responses_raw(&app, &key, body).await.text().await.unwrap();
    assert!(!text.contains("jane.doe@example.com"), "{text}");
    assert!(!text.contains("doe@example.com"), "{text}");
    let events = typed_events(&text);
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, "Mail me at [redacted:email] today");
    let done = events
        .iter()
        .find(|(k, _)| k == "response.output_text.done")
        .unwrap();
    assert_eq!(done.1["text"], deltas);
    let completed = events
        .iter()
        .find(|(k, _)| k == "response.completed")
        .unwrap();
    assert_eq!(
        completed.1["response"]["output"][0]["content"][0]["text"],
        deltas
    );

    // Whole, the same answer is masked in the Response object.
    let whole = responses_raw(
        &app,
        &key,
        json!({"model": "guarded", "input": "contact?", "x_test_answer": "Mail me at jane.doe@example.com today"}),
    )
    .await;
    let v: Value = whole.json().await.unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Mail me at [redacted:email] today"
    );
}

#[tokio::test]
async fn a_conversation_continued_with_previous_response_id_stays_on_its_version_after_its_bucket_changes()
 {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let pin = |arm: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let (status, _) = app
                .admin(
                    Method::PUT,
                    &format!("/rollouts/{id}/pins/acme"),
                    Some(json!({"arm": arm})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    pin("canary").await;
    let first = responses_raw(&app, &key, json!({"model": "chat", "input": "hello"})).await;
    assert_eq!(headers_of(&first)["x-sluice-version"], "gpt-4-1");
    let first: Value = first.json().await.unwrap();
    let response_id = first["id"].as_str().unwrap().to_owned();

    // The workspace's bucket now says stable; the conversation stays where it began.
    pin("stable").await;
    let fresh = responses_raw(&app, &key, json!({"model": "chat", "input": "new topic"})).await;
    assert_eq!(headers_of(&fresh)["x-sluice-version"], "gpt-4o");
    for stream in [false, true] {
        let next = responses_raw(
            &app,
            &key,
            json!({"model": "chat", "input": "and then?", "previous_response_id": response_id, "stream": stream}),
        )
        .await;
        assert_eq!(headers_of(&next)["x-sluice-version"], "gpt-4-1");
        assert_eq!(headers_of(&next)["x-sluice-arm"], "canary");
        let _ = next.bytes().await;
    }
    let continued: Vec<_> = app
        .upstream
        .calls
        .to("/v1/responses")
        .into_iter()
        .filter(|c| c.json()["previous_response_id"] == json!(response_id))
        .collect();
    assert_eq!(continued.len(), 2);
    assert!(continued.iter().all(|c| c.json()["model"] == "ok-canary"));

    // Reported, not judged: the continued requests are not randomized.
    let records = records(&app, 4, "chat").await;
    let canary: Vec<_> = records.iter().filter(|r| r.version == "gpt-4-1").collect();
    assert_eq!(canary.len(), 3);
    assert!(canary.iter().all(|r| !r.randomized));

    // Another workspace cannot continue it: routed as a fresh request (its own bucket).
    let other = app.key("other").await;
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/rollouts/{id}/pins/other"),
            Some(json!({"arm": "stable"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let theirs = responses_raw(
        &app,
        &other,
        json!({"model": "chat", "input": "x", "previous_response_id": response_id}),
    )
    .await;
    assert_eq!(headers_of(&theirs)["x-sluice-version"], "gpt-4o");
}

#[tokio::test]
async fn a_conversation_survives_a_restart_through_the_stored_book() {
    let mut app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap().to_owned();
    async fn pin(app: &TestApp, id: &str, arm: &str) {
        let (status, body) = app
            .admin(
                Method::PUT,
                &format!("/rollouts/{id}/pins/acme"),
                Some(json!({"arm": arm})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    pin(&app, &id, "canary").await;
    let first = responses_raw(&app, &key, json!({"model": "chat", "input": "hello"})).await;
    assert_eq!(headers_of(&first)["x-sluice-version"], "gpt-4-1");
    let first: Value = first.json().await.unwrap();
    let response_id = first["id"].as_str().unwrap().to_owned();

    // A new gateway on the same database: the book's memory is gone, its table is not.
    app.restart().await;
    pin(&app, &id, "stable").await;
    let fresh = responses_raw(&app, &key, json!({"model": "chat", "input": "new topic"})).await;
    assert_eq!(
        headers_of(&fresh)["x-sluice-version"],
        "gpt-4o",
        "the workspace's own requests follow the new pin"
    );
    let _ = fresh.bytes().await;
    let next = responses_raw(
        &app,
        &key,
        json!({"model": "chat", "input": "and then?", "previous_response_id": response_id}),
    )
    .await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(
        headers_of(&next)["x-sluice-version"],
        "gpt-4-1",
        "the conversation stays on the version that began it"
    );
    let next: Value = next.json().await.unwrap();
    assert_eq!(next["output"][0]["content"][0]["text"], CANARY_TEXT);
    let continued = app
        .upstream
        .calls
        .to("/v1/responses")
        .into_iter()
        .find(|c| c.json()["previous_response_id"] == json!(response_id))
        .expect("the continuation went upstream");
    assert_eq!(continued.json()["model"], "ok-canary");
}

#[tokio::test]
async fn stored_responses_are_read_listed_cancelled_and_deleted_at_their_provider() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let client = app.openai(&key);
    let created = client
        .responses()
        .create(request("chat", false))
        .await
        .unwrap();

    let again = client.responses().retrieve(&created.id).await.unwrap();
    assert_eq!(again.id, created.id);
    assert_eq!(again.output_text().as_deref(), Some(OK_TEXT));
    let items = app
        .http
        .get(format!(
            "{}/v1/responses/{}/input_items",
            app.base, created.id
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(items.status(), StatusCode::OK);
    let items: Value = items.json().await.unwrap();
    assert_eq!(items["object"], "list");
    let cancelled = client.responses().cancel(&created.id).await.unwrap();
    assert_eq!(cancelled.id, created.id);
    client.responses().delete(&created.id).await.unwrap();
    let paths: Vec<String> = app
        .upstream
        .calls
        .all()
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    for want in [
        format!("GET /v1/responses/{}", created.id),
        format!("GET /v1/responses/{}/input_items", created.id),
        format!("POST /v1/responses/{}/cancel", created.id),
        format!("DELETE /v1/responses/{}", created.id),
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }

    // An id this workspace never made is OpenAI's 404.
    let missing = app
        .http
        .get(format!("{}/v1/responses/resp_nope", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resp_nope")
    );
}

#[tokio::test]
async fn an_answer_without_usage_is_counted_with_tiktoken_and_marked_estimated() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for stream in [false, true] {
        let r = responses_raw(
            &app,
            &key,
            json!({"model": "counted", "input": "Say hello to the world", "stream": stream}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let _ = r.bytes().await;
    }
    let records = records(&app, 2, "counted").await;
    let o200k = tiktoken_rs::o200k_base().unwrap();
    let prompt = 3 + 3 + o200k.encode_ordinary("Say hello to the world").len() as u64;
    for r in &records {
        assert!(r.usage.estimated);
        assert_eq!(
            r.usage.completion_tokens,
            o200k.encode_ordinary(OK_TEXT).len() as u64
        );
        assert_eq!(r.usage.prompt_tokens, prompt);
        assert_eq!(r.reasoning_tokens, None);
    }
}

#[tokio::test]
async fn the_built_in_mock_answers_the_responses_api_streamed_and_not() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let client = app.openai(&key);
    let whole = client
        .responses()
        .create(request("demo", false))
        .await
        .unwrap();
    assert!(!whole.output_text().unwrap_or_default().is_empty());
    let usage = whole.usage.unwrap();
    assert_eq!(
        usage.output_tokens,
        20 + 5,
        "20 tokens, a quarter of them again as reasoning"
    );
    let mut stream = client
        .responses()
        .create_stream(request("demo", true))
        .await
        .unwrap();
    let mut deltas = 0;
    let mut completed = false;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ResponseStreamEvent::ResponseOutputTextDelta(_) => deltas += 1,
            ResponseStreamEvent::ResponseCompleted(_) => completed = true,
            _ => {}
        }
    }
    assert_eq!(deltas, 20);
    assert!(completed);
    let records = records(&app, 2, "demo").await;
    assert!(records.iter().all(|r| r.reasoning_tokens == Some(5)));
    assert!(records.iter().any(|r| r.ttft_ms.is_some_and(|t| t >= 5.0)));
}

#[tokio::test]
async fn shadow_copies_of_responses_requests_are_stored_as_pairs() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let response = responses_raw(
        &app,
        &key,
        json!({"model": "chat", "input": "mail me at jane@example.com"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let pair = eventually("a stored shadow pair", || async {
        let (_, page) = app
            .admin(
                Method::GET,
                &format!("/rollouts/{id}/shadow?limit=10"),
                None,
            )
            .await;
        page["data"].as_array().and_then(|p| p.first()).cloned()
    })
    .await;
    assert_eq!(pair["shadow_version"], "gpt-4-1");
    // The two versions answer differently: each side holds its own version's answer.
    assert_eq!(pair["primary_answer"], OK_TEXT);
    assert_eq!(pair["shadow_answer"], CANARY_TEXT);
    assert_eq!(pair["request"]["input"], "mail me at [redacted:email]");
    let copy = app
        .upstream
        .calls
        .to("/v1/responses")
        .into_iter()
        .find(|c| c.json()["model"] == "ok-canary")
        .expect("the copy went to the canary's Responses endpoint");
    assert_eq!(copy.json()["store"], false);
}

#[tokio::test]
async fn a_conversation_id_keeps_its_requests_on_the_version_that_first_served_it() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap().to_owned();
    for (arm, expected) in [("canary", "gpt-4-1"), ("stable", "gpt-4-1")] {
        let (status, _) = app
            .admin(
                Method::PUT,
                &format!("/rollouts/{id}/pins/acme"),
                Some(json!({"arm": arm})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let r = responses_raw(
            &app,
            &key,
            json!({"model": "chat", "input": "hi", "conversation": {"id": "conv_42"}}),
        )
        .await;
        assert_eq!(headers_of(&r)["x-sluice-version"], expected, "pinned {arm}");
        let _ = r.bytes().await;
    }
}
