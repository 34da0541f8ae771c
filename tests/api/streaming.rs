//! Streamed chat completions: relayed as they arrive, measured on the way.

use std::sync::atomic::Ordering;

use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

fn stream_request(model: &str, usage: bool) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(model)
        .stream(true)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()]);
    if usage {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    }
    args.build().unwrap()
}

/// The `data:` payloads of a raw SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn chunks_reach_the_client_before_the_upstream_has_finished() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let mut stream = app
        .openai(&key)
        .chat()
        .create_stream(stream_request("gated", false))
        .await
        .unwrap();
    // The upstream sends two events and then waits; both reach the client meanwhile.
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("first chunk in time");
    assert!(first.unwrap().is_ok());
    let second = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("second chunk in time");
    assert_eq!(
        second.unwrap().unwrap().choices[0].delta.content.as_deref(),
        Some("Hello")
    );
    assert_eq!(
        app.upstream.state.finished_streams.load(Ordering::SeqCst),
        0,
        "upstream still open"
    );

    app.upstream.state.release.notify_one();
    let mut text = String::from("Hello");
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(c) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&c);
        }
    }
    assert_eq!(text, OK_TEXT);
    assert_eq!(
        app.upstream.state.finished_streams.load(Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn usage_is_asked_upstream_and_its_chunk_removed_when_the_client_did_not_ask() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let response = app
        .chat_raw(&key, chat_body("chat", json!({"stream": true})))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(headers_of(&response)["content-type"], "text/event-stream");
    assert_eq!(headers_of(&response)["x-sluice-version"], "gpt-4o");
    let body = response.text().await.unwrap();
    let events = events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(
            v["usage"].is_null(),
            "usage chunk leaked to a client that did not ask: {e}"
        );
    }
    assert_eq!(
        events.len(),
        6,
        "role, three words, finish, [DONE]: {events:?}"
    );
    let sent = &app.upstream.received()[0].body;
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Measured all the same, from the upstream's own count.
    app.wait_written(1).await;
    let records = app.store().await.records(Some("chat"), 10).await.unwrap();
    assert_eq!(
        (
            records[0].usage.prompt_tokens,
            records[0].usage.completion_tokens
        ),
        OK_USAGE
    );
    assert!(!records[0].usage.estimated);
}

#[tokio::test]
async fn a_client_that_asks_for_usage_gets_the_usage_chunk() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let mut stream = app
        .openai(&key)
        .chat()
        .create_stream(stream_request("chat", true))
        .await
        .unwrap();
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        if let Some(u) = chunk.unwrap().usage {
            usage = Some(u);
        }
    }
    let usage = usage.expect("the usage chunk arrives");
    assert_eq!(
        (usage.prompt_tokens as u64, usage.completion_tokens as u64),
        OK_USAGE
    );
}

#[tokio::test]
async fn usage_and_cost_of_a_stream_equal_those_of_the_same_answer_unstreamed() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for route in ["chat", "counted"] {
        let plain = app.chat_raw(&key, chat_body(route, json!({}))).await;
        assert_eq!(plain.status(), 200);
        let plain_text: Value = plain.json().await.unwrap();
        let streamed = app
            .chat_raw(&key, chat_body(route, json!({"stream": true})))
            .await
            .text()
            .await
            .unwrap();
        assert!(streamed.contains("[DONE]"));
        assert_eq!(plain_text["choices"][0]["message"]["content"], OK_TEXT);
    }
    app.wait_written(4).await;
    let store = app.store().await;
    for route in ["chat", "counted"] {
        let records = store.records(Some(route), 10).await.unwrap();
        assert_eq!(records.len(), 2);
        let (a, b) = (&records[0], &records[1]);
        assert_ne!(a.stream, b.stream);
        assert_eq!(a.usage, b.usage, "{route}");
        assert!((a.cost_usd - b.cost_usd).abs() < 1e-15, "{route}");
        assert_eq!(a.response_chars, OK_TEXT.chars().count() as u64);
        assert_eq!(a.response_chars, b.response_chars);
        assert_eq!(a.finish_reason.as_deref(), Some("stop"));
        assert!(a.cost_usd > 0.0);
    }
    // The `counted` upstream sends no usage: sluice counts with tiktoken (o200k) and says so.
    let counted = &store.records(Some("counted"), 1).await.unwrap()[0];
    assert!(counted.usage.estimated);
    let o200k = tiktoken_rs::o200k_base().unwrap();
    assert_eq!(
        counted.usage.completion_tokens,
        o200k.encode_ordinary(OK_TEXT).len() as u64
    );
    // 3 priming + one message of 3 framing + role "user" (1) + its text.
    let prompt = 3 + 3 + 1 + o200k.encode_ordinary("Say hello to the world").len() as u64;
    assert_eq!(counted.usage.prompt_tokens, prompt);
    let expected_cost = (prompt as f64 * 2.5 + counted.usage.completion_tokens as f64 * 10.0) / 1e6;
    assert!((counted.cost_usd - expected_cost).abs() < 1e-12);
}

#[tokio::test]
async fn time_to_first_token_is_measured_on_streams() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let body = app
        .chat_raw(&key, chat_body("demo", json!({"stream": true})))
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("[DONE]"));
    app.wait_written(1).await;
    let record = &app.store().await.records(Some("demo"), 1).await.unwrap()[0];
    let ttft = record.ttft_ms.expect("a stream has a TTFT");
    // The mock waits 5 ms before its first token and streams 20 tokens at 2000/s.
    assert!(
        ttft >= 5.0 && ttft <= record.latency_ms,
        "ttft {ttft} latency {}",
        record.latency_ms
    );
    assert_eq!(record.usage.completion_tokens, 20);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_ends_the_upstream_call_and_still_yields_a_record() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let mut stream = app
        .openai(&key)
        .chat()
        .create_stream(stream_request("endless", false))
        .await
        .unwrap();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(app.upstream.state.open_streams.load(Ordering::SeqCst), 1);
    drop(stream);

    let open = &app.upstream.state.open_streams;
    eventually(
        "the upstream stream closed after the client left",
        || async { (open.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
    app.wait_written(1).await;
    let record = &app.store().await.records(Some("endless"), 1).await.unwrap()[0];
    assert_eq!(record.outcome, sluice::types::Outcome::ClientDisconnected);
    assert!(
        record.response_chars >= 3 * " more".len() as u64,
        "what was relayed is measured"
    );
    assert!(record.usage.estimated);
}
