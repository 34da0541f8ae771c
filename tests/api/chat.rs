//! Non-streamed chat completions with an unmodified OpenAI SDK.

use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn an_sdk_call_is_routed_to_the_routes_version_and_answered_as_the_upstream_sent_it() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let answer = app.openai(&key).chat().create(request).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some(OK_TEXT));
    assert_eq!(
        answer.model, "ok",
        "the upstream's model name comes back untouched"
    );
    let usage = answer.usage.unwrap();
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (OK_USAGE.0 as u32, OK_USAGE.1 as u32)
    );

    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body["model"], "ok",
        "model is rewritten to the version's model"
    );
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn unknown_and_advanced_fields_reach_the_upstream_untouched() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let extra = json!({
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "n": 2, "logprobs": true, "top_logprobs": 3, "seed": 42,
        "x_vendor_knob": {"nested": [1, 2.5, "three", null]},
    });
    let body = chat_body("chat", extra.clone());
    // The SDK's bring-your-own-types call sends the JSON exactly as given.
    let answer: Value = app
        .openai(&key)
        .chat()
        .create_byot(body.clone())
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], OK_TEXT);

    let got = &app.upstream.received()[0].body;
    for field in [
        "tools",
        "response_format",
        "n",
        "logprobs",
        "top_logprobs",
        "seed",
        "x_vendor_knob",
        "messages",
    ] {
        assert_eq!(got[field], body[field], "field {field} changed on the way");
    }
    assert_eq!(got["model"], "ok");
}

#[tokio::test]
async fn responses_carry_the_routing_headers() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let response = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(response.status(), 200);
    let headers = headers_of(&response);
    assert_eq!(headers["x-sluice-route"], "chat");
    assert_eq!(headers["x-sluice-version"], "gpt-4o");
    assert_eq!(headers["x-sluice-arm"], "stable");
    assert!(headers["x-request-id"].starts_with("req_"));
    assert_eq!(headers["x-upstream-request-id"], "up-123");
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn models_lists_the_routes() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let models = app.openai(&key).models().list().await.unwrap();
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&"chat") && ids.contains(&"demo"), "{ids:?}");
    assert!(
        !ids.contains(&"gpt-4o"),
        "versions are not models; routes are"
    );
}

#[tokio::test]
async fn the_built_in_mock_provider_answers_like_openai() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let answer: Value = app
        .openai(&key)
        .chat()
        .create_byot(chat_body("demo", json!({})))
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "sim-small");
    assert_eq!(answer["usage"]["completion_tokens"], 20);
    assert!(
        app.upstream.received().is_empty(),
        "a mock version makes no network call"
    );
}
