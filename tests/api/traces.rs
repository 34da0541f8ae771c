//! Traces: the request span with its GenAI attributes, the upstream child span, the
//! client's traceparent honoured and passed on; and a moved upstream model counted.

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;

use crate::helpers::*;

fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn a_request_span_carries_the_gen_ai_attributes_and_the_clients_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let app =
        TestApp::spawn_with(Db::Sqlite, sluice::traces::Traces::with_provider(provider)).await;
    let key = app.key("acme").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let response = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .json(&chat_body("chat", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    // The span ends (and is exported) when the response's body is done, just after.
    let spans = eventually("the request span exported", || async {
        let spans = exporter.get_finished_spans().unwrap();
        spans.iter().any(|s| s.name == "chat chat").then_some(spans)
    })
    .await;
    let request = spans
        .iter()
        .find(|s| s.name == "chat chat")
        .expect("a request span");
    assert_eq!(
        request.span_context.trace_id(),
        TraceId::from_hex(trace_id).unwrap(),
        "the client's trace"
    );
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(parent_span).unwrap()
    );
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "chat"),
        ("gen_ai.response.model", "ok"),
        ("gen_ai.usage.input_tokens", "11"),
        ("gen_ai.usage.output_tokens", "3"),
        ("sluice.route", "chat"),
        ("sluice.version", "gpt-4o"),
        ("sluice.arm", "stable"),
        ("sluice.workspace", "acme"),
        ("sluice.outcome", "ok"),
    ] {
        assert_eq!(attr(request, k).as_deref(), Some(v), "{k}");
    }
    assert!(
        attr(request, "gen_ai.response.finish_reasons")
            .unwrap()
            .contains("stop")
    );

    let upstream = spans
        .iter()
        .find(|s| s.name == "upstream gpt-4o")
        .expect("an upstream span");
    assert_eq!(upstream.parent_span_id, request.span_context.span_id());
    let sent = &app.upstream.received()[0].headers["traceparent"];
    let sent = sent.to_str().unwrap();
    assert!(
        sent.starts_with(&format!("00-{trace_id}-")),
        "passed on upstream: {sent}"
    );
    assert!(sent.contains(&upstream.span_context.span_id().to_string()));
}

#[tokio::test]
async fn an_upstream_that_answers_with_another_model_is_counted() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for model in ["echo-2024-05", "echo-2024-05", "echo-2024-11"] {
        app.chat_raw(&key, chat_body("guarded", json!({"x_test_model": model})))
            .await
            .bytes()
            .await
            .unwrap();
    }
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sluice_upstream_model_changes_total{version=\"g-echo\"} 1"),
        "{text}"
    );
}
