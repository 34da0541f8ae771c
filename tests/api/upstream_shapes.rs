//! Upstream answers of every shape the official SDKs accept reach the client, and are
//! measured; measurement never decides whether the client gets its answer.

use serde_json::{Value, json};

use crate::helpers::*;

/// A non-streamed request to the `raw` route whose upstream answers `answer` as it is.
fn whole(answer: &str) -> Value {
    chat_body("raw", json!({"x_test_body": answer}))
}

/// A streamed request to the `raw` route whose upstream sends these `data:` payloads.
fn streamed(events: &[&str]) -> Value {
    chat_body("raw", json!({"stream": true, "x_test_events": events}))
}

#[tokio::test]
async fn odd_but_valid_shapes_are_answered_and_measured() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // tool_calls null, content as parts (thinking + text), completion_tokens null.
    let answer = r#"{"id":"c","object":"chat.completion","created":1,"model":"raw","choices":[{"index":0,"message":{"role":"assistant","content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"Hello world"}],"tool_calls":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":null}}"#;
    let response = app.chat_raw(&key, whole(answer)).await;
    assert_eq!(response.status(), 200);
    let got: Value = response.json().await.unwrap();
    assert_eq!(
        got["choices"][0]["message"]["content"][1]["text"],
        "Hello world"
    );

    // The same shapes in a stream: every chunk is measured.
    let events = [
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":null},"finish_reason":null}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":null}}"#,
        "[DONE]",
    ];
    let text = app
        .chat_raw(&key, streamed(&events))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(" world") && text.contains("[DONE]"), "{text}");

    app.wait_written(2).await;
    let records = app.store().await.records(Some("raw"), 2).await.unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.outcome.as_str(), "ok", "{r:?}");
        assert_eq!(r.response_chars, "Hello world".len() as u64, "{r:?}");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        // A null count is not zero: both counts are estimated, and said to be.
        assert!(r.usage.estimated && r.usage.completion_tokens > 0, "{r:?}");
        if r.stream {
            assert!(
                r.ttft_ms.is_some(),
                "the first delta stamps the TTFT: {r:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_200_error_envelope_passes_its_message() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let response = app
        .chat_raw(
            &key,
            whole(r#"{"error":{"message":"model is overloaded","type":"server_error"}}"#),
        )
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_invalid_response");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("model is overloaded"), "{message}");
}

#[tokio::test]
async fn a_stream_answered_with_a_whole_body_is_never_an_empty_ok() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // A whole completion: the client gets it as events, measured as usual.
    let completion = r#"{"id":"c","object":"chat.completion","created":1,"model":"raw","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
    let body = chat_body("raw", json!({"stream": true, "x_test_body": completion}));
    let response = app.chat_raw(&key, body).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("chat.completion.chunk") && text.contains("Hello world"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // An error envelope: the client sees the error, and the record is a failure.
    let body = chat_body(
        "raw",
        json!({"stream": true, "x_test_body": r#"{"error":{"message":"quota exhausted"}}"#}),
    );
    let response = app.chat_raw(&key, body).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quota exhausted"),
        "{error}"
    );
    app.wait_written(2).await;
    let records = app.store().await.records(Some("raw"), 2).await.unwrap();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert!(
        outcomes.contains(&"ok") && outcomes.contains(&"upstream_invalid"),
        "{outcomes:?}"
    );
    let ok = records.iter().find(|r| r.outcome.as_str() == "ok").unwrap();
    assert_eq!(ok.response_chars, "Hello world".len() as u64);
    assert_eq!(ok.usage.completion_tokens, 2);
    assert!(!ok.usage.estimated);
}

#[tokio::test]
async fn streams_are_read_as_the_event_stream_standard_says() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // A BOM, a comment, CR-only and CRLF line ends, event/id/retry fields, a `data` split
    // over two lines, and a last event the stream cuts off (no blank line after it).
    let sse = concat!(
        "\u{feff}: keep-alive\r\r",
        "event: message\rid: 1\rretry: 1000\r",
        "data: {\"choices\":[{\"index\":0,\r",
        "data: \"delta\":{\"content\":\"Hel\"}}]}\r\r",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" never\"}}]}\n",
    );
    for chunk in [1, 7, sse.len()] {
        let body = chat_body(
            "raw",
            json!({"stream": true, "x_test_sse": sse, "x_test_chunk": chunk}),
        );
        let got = app.chat_raw(&key, body).await.bytes().await.unwrap();
        assert_eq!(
            got.as_ref(),
            sse.as_bytes(),
            "the relay passes the upstream's bytes through (read {chunk} at a time)"
        );
    }
    app.wait_written(3).await;
    let records = app.store().await.records(Some("raw"), 3).await.unwrap();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.outcome.as_str(), "ok", "{r:?}");
        // "Hel" + "lo"; the cut-off last event is not part of the answer.
        assert_eq!(r.response_chars, 5, "{r:?}");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert!(r.ttft_ms.is_some());
    }
}

#[tokio::test]
async fn a_compressed_answer_is_refused_never_passed_on_unread() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let completion = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
    for (status, stream) in [(200, false), (200, true), (500, false)] {
        let body = chat_body(
            "raw",
            json!({"stream": stream, "x_test_body": completion, "x_test_status": status,
                   "x_test_content_encoding": "gzip"}),
        );
        let response = app.chat_raw(&key, body).await;
        assert_eq!(response.status(), 502, "{status} stream={stream}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "upstream_invalid_response");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("Content-Encoding: gzip"), "{message}");
    }
    // sluice asked for no coding at all.
    for received in app.upstream.received() {
        assert_eq!(received.headers["accept-encoding"], "identity");
    }
    app.wait_written(3).await;
    let records = app.store().await.records(Some("raw"), 3).await.unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.outcome.as_str() == "upstream_invalid"),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_upstream_that_refuses_stream_options_is_retried_once_and_remembered() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let stream = |route: &str| chat_body(route, json!({"stream": true}));
    let sent_options = |app: &TestApp| -> Vec<bool> {
        app.upstream
            .received()
            .iter()
            .filter(|r| r.body["model"] == "strict")
            .map(|r| r.body.get("stream_options").is_some())
            .collect()
    };
    // The first stream: refused because of sluice's field, sent again without it.
    let text = app
        .chat_raw(&key, stream("picky"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("Hello") && text.contains("[DONE]"), "{text}");
    assert_eq!(sent_options(&app), [true, false]);
    // The provider is remembered: the next stream goes once, without the field.
    let text = app
        .chat_raw(&key, stream("picky"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(sent_options(&app), [true, false, false]);
    // A client that asks for usage itself gets the upstream's refusal: it is the client's.
    let asked = chat_body(
        "picky",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(app.chat_raw(&key, asked).await.status(), 400);
    // `stream_usage = "never"`: the field is never added.
    let before = sent_options(&app).len();
    let text = app
        .chat_raw(&key, stream("plain"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(sent_options(&app)[before..], [false]);

    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_stream_usage_retries_total 1\n"),
        "{metrics}"
    );
    app.wait_written(4).await;
    let records = app.store().await.records(Some("picky"), 2).await.unwrap();
    let ok: Vec<_> = records
        .iter()
        .filter(|r| r.outcome.as_str() == "ok")
        .collect();
    assert!(!ok.is_empty());
    assert!(ok.iter().all(|r| r.usage.estimated), "{records:?}");
}

#[tokio::test]
async fn the_upstreams_advice_reaches_the_client_on_errors_too() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let advice = json!({
        "retry-after": "7",
        "retry-after-ms": "6500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "7s",
        "openai-processing-ms": "12",
    });
    let error = r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;
    for stream in [false, true] {
        let body = chat_body(
            "raw",
            json!({"stream": stream, "x_test_status": 429, "x_test_body": error, "x_test_headers": advice}),
        );
        let response = app.chat_raw(&key, body).await;
        assert_eq!(response.status(), 429, "stream={stream}");
        for (name, value) in advice.as_object().unwrap() {
            assert_eq!(
                response.headers().get(name).map(|v| v.to_str().unwrap()),
                value.as_str(),
                "{name} (stream={stream})"
            );
        }
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "one Content-Type, sluice's"
        );
        let got: Value = response.json().await.unwrap();
        assert_eq!(got["error"]["message"], "slow down");
    }
}

#[tokio::test]
async fn token_counts_no_call_could_use_are_estimated_not_billed() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // A budget one absurd count would exhaust for the rest of the minute.
    app.admin(
        axum::http::Method::PUT,
        "/workspaces/acme/limits",
        Some(json!({"tokens_per_minute": 100000})),
    )
    .await;
    // u64::MAX overflowed the sums (a panic that lost the answer in a debug build); 10¹⁵
    // fits in a u64 and spent the workspace's budget at once.
    let whole_answer = r#"{"id":"c","object":"chat.completion","created":1,"model":"raw","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#;
    let response = app.chat_raw(&key, whole(whole_answer)).await;
    assert_eq!(response.status(), 200);
    let events = [
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[{"index":0,"delta":{"content":"Hello world"},"finish_reason":"stop"}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"raw","choices":[],"usage":{"prompt_tokens":1000000000000000,"completion_tokens":2}}"#,
        "[DONE]",
    ];
    let text = app
        .chat_raw(&key, streamed(&events))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    // The budget is untouched: the next request is admitted.
    let next = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(next.status(), 200);

    app.wait_written(3).await;
    let records = app.store().await.records(Some("raw"), 2).await.unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.outcome.as_str(), "ok", "{r:?}");
        assert!(r.usage.estimated, "{r:?}");
        assert!(
            r.usage.prompt_tokens < 1000 && r.usage.completion_tokens < 1000,
            "{r:?}"
        );
    }
}
