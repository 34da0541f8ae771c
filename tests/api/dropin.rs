//! The rest of `/v1` as a drop-in: embeddings, models by route, forwarded operations,
//! passthrough, headers in and out, and Azure OpenAI.

use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice::types::Api;

use crate::helpers::*;
use crate::rollouts::start;

async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/{path}", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn embeddings_never_reach_the_canary_during_a_50_percent_rollout() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    start(&app, "embed", "emb-canary", "feedback").await;
    let client = app.openai(&key);
    for _ in 0..30 {
        let answer = client
            .embeddings()
            .create(
                CreateEmbeddingRequestArgs::default()
                    .model("embed")
                    .input(["first text", "second text"])
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.data.len(), 2);
        assert_eq!(
            answer.data[0].embedding.len(),
            4,
            "the stable model's vectors"
        );
    }
    let calls = app.upstream.calls.to("/v1/embeddings");
    assert_eq!(calls.len(), 30);
    assert!(calls.iter().all(|c| c.json()["model"] == "emb-small"));

    app.wait_written(30).await;
    let records = app.store().await.records(Some("embed"), 100).await.unwrap();
    assert_eq!(records.len(), 30);
    for r in &records {
        assert_eq!(r.api, Api::Embeddings);
        assert_eq!((r.version.as_str(), r.arm.as_str()), ("emb", "stable"));
        assert_eq!(r.rollout_id, None, "embeddings are not part of the rollout");
        assert_eq!((r.inputs, r.dimensions), (Some(2), Some(4)));
        assert_eq!(r.usage.prompt_tokens, 8);
        assert!((r.cost_usd - 8.0 * 0.02 / 1e6).abs() < 1e-15);
    }
}

#[tokio::test]
async fn a_rollout_shadow_copies_embeddings_to_the_canary_for_offline_comparison() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "embed", "emb-canary", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let answer = post(
        &app,
        &key,
        "embeddings",
        json!({"model": "embed", "input": ["mail jane@example.com", "b"]}),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let v: Value = answer.json().await.unwrap();
    assert_eq!(
        v["data"][0]["embedding"].as_array().unwrap().len(),
        4,
        "the stable vectors"
    );
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
    assert_eq!(pair["shadow_version"], "emb-canary");
    assert_eq!(pair["primary_answer"], "2 vectors × 4 dimensions");
    assert_eq!(pair["shadow_answer"], "2 vectors × 6 dimensions");
    assert_eq!(pair["shadow_record"]["prompt_tokens"], 8);
    assert_eq!(pair["request"]["input"][0], "mail [redacted:email]");
    let calls = app.upstream.calls.to("/v1/embeddings");
    assert_eq!(calls.len(), 2);
    let copy = calls
        .iter()
        .find(|c| c.json()["model"] == "emb-large")
        .expect("the copy went to the canary");
    assert!(
        copy.json().get("stream").is_none(),
        "no argument embeddings refuse"
    );
    // The copy is no request of the route: one record, the stable one.
    app.wait_written(1).await;
    let records = app.store().await.records(Some("embed"), 10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].version, "emb");
}

#[tokio::test]
async fn embeddings_spend_the_workspace_token_budget() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    app.admin(
        Method::PUT,
        "/workspaces/acme/limits",
        Some(json!({"tokens_per_minute": 20})),
    )
    .await;
    // Each request embeds three texts: 12 tokens, so the third finds 24 ≥ 20 spent.
    let body = json!({"model": "embed", "input": ["a", "b", "c"]});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            post(&app, &key, "embeddings", body.clone())
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The budget is the workspace's, whichever API spent it.
    let chat = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(chat.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_route_can_be_retrieved_as_a_model() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let model = app.openai(&key).models().retrieve("chat").await.unwrap();
    assert_eq!(model.id, "chat");
    assert_eq!(model.owned_by, "sluice");
    let missing = app
        .http
        .get(format!("{}/v1/models/nope", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn legacy_completions_and_moderations_go_to_the_stable_version_with_only_the_model_rewritten()
{
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    start(&app, "chat", "gpt-4-1", "feedback").await;
    for _ in 0..10 {
        let r = post(
            &app,
            &key,
            "completions",
            json!({"model": "chat", "prompt": "Say", "x_vendor": [1]}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(headers_of(&r)["x-sluice-version"], "gpt-4o");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["text"], OK_TEXT);
    }
    let r = post(
        &app,
        &key,
        "moderations",
        json!({"model": "chat", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let completions = app.upstream.calls.to("/v1/completions");
    assert_eq!(completions.len(), 10);
    assert_eq!(
        completions[0].json(),
        json!({"model": "ok", "prompt": "Say", "x_vendor": [1]})
    );
    assert_eq!(
        app.upstream.calls.to("/v1/moderations")[0].json()["model"],
        "ok"
    );
    app.wait_written(11).await;
    let records = app.store().await.records(Some("chat"), 100).await.unwrap();
    assert_eq!(records.len(), 11);
    assert!(
        records
            .iter()
            .all(|r| r.api == Api::Forwarded && r.version == "gpt-4o")
    );
    let completion = records.iter().find(|r| r.usage.prompt_tokens == 5).unwrap();
    assert_eq!(completion.usage.completion_tokens, 3);
}

#[tokio::test]
async fn audio_transcriptions_take_the_model_from_the_multipart_form() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let audio = b"RIFF\x00\x01\x02fake-wave-bytes";
    let mut body = Vec::new();
    body.extend_from_slice(b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n");
    body.extend_from_slice(audio);
    body.extend_from_slice(b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nspeech\r\n--b0undary--\r\n");
    let r = app
        .http
        .post(format!("{}/v1/audio/transcriptions", app.base))
        .bearer_auth(&key)
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(headers_of(&r)["x-sluice-version"], "whisper");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["text"], OK_TEXT);
    let call = &app.upstream.calls.to("/v1/audio/transcriptions")[0];
    assert_eq!(
        call.headers["content-type"],
        "multipart/form-data; boundary=b0undary"
    );
    let sent = String::from_utf8_lossy(&call.body).into_owned();
    let expected =
        String::from_utf8_lossy(&body).replace("\r\n\r\nspeech\r\n", "\r\n\r\nwhisper-1\r\n");
    assert_eq!(sent, expected, "byte for byte but the model");
    app.wait_written(1).await;
    let record = &app.store().await.records(Some("speech"), 1).await.unwrap()[0];
    assert_eq!(
        (record.usage.prompt_tokens, record.usage.completion_tokens),
        (14, 3)
    );
}

#[tokio::test]
async fn model_less_endpoints_are_off_by_default_with_a_404_that_says_how_to_enable_them() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app
        .http
        .get(format!("{}/v1/files", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[passthrough] provider"),
        "{v}"
    );
    assert!(app.upstream.calls.all().is_empty());

    let unknown = app
        .http
        .get(format!("{}/v1/no/such/thing", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let v: Value = unknown.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_passthrough_provider_serves_files_with_its_own_key() {
    let app = TestApp::spawn_with_config("[passthrough]\nprovider = \"up\"\n").await;
    let key = app.key("acme").await;
    let r = app
        .http
        .get(format!("{}/v1/files?purpose=batch", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let call = &app.upstream.calls.to("/v1/files")[0];
    assert_eq!(call.method, Method::GET);
    assert_eq!(call.query.as_deref(), Some("purpose=batch"));
    assert_eq!(
        call.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}"),
        "the provider's key, never the client's"
    );
}

#[tokio::test]
async fn headers_pass_in_and_out_as_the_operator_allows() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&key)
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .header("openai-beta", "assistants=v2")
        .header("x-tenant", "acme-eu")
        .header("x-private", "keep-me-here")
        .header("cookie", "session=secret")
        .json(&chat_body("headers", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let request_id = headers_of(&r)["x-request-id"].clone();
    let got = &app.upstream.received()[0].headers;
    assert_eq!(
        got["traceparent"], traceparent,
        "sluice does not trace here"
    );
    assert_eq!(got["tracestate"], "vendor=1");
    assert_eq!(got["openai-beta"], "assistants=v2");
    assert_eq!(got["x-tenant"], "acme-eu", "listed in forward_headers");
    assert!(got.get("x-private").is_none(), "not listed");
    assert!(got.get("cookie").is_none());
    assert_eq!(got["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(got["x-client-request-id"], request_id.as_str());
    assert_eq!(got["x-static"], "yes");
    assert_eq!(got["openai-organization"], "org-123");
    assert_eq!(got["openai-project"], "proj-9");
}

#[tokio::test]
async fn upstream_rate_limit_headers_reach_the_client() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = post(
        &app,
        &key,
        "responses",
        json!({"model": "limited", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = headers_of(&r);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-limit-requests"], "60");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn azure_chat_and_embeddings_use_deployment_urls_and_the_api_key_header() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app.chat_raw(&key, chat_body("azure", json!({}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], OK_TEXT);
    let r = post(
        &app,
        &key,
        "embeddings",
        json!({"model": "azure-emb", "input": "hello"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    let chat = &app.upstream.calls.to("/chat/completions")[0];
    assert_eq!(chat.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(chat.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(chat.headers["api-key"], AZURE_KEY);
    assert!(chat.headers.get("authorization").is_none());
    assert_eq!(chat.json()["model"], "gpt4o-prod");
    let emb = &app.upstream.calls.to("/embeddings")[0];
    assert_eq!(emb.path, "/openai/deployments/emb-prod/embeddings");
    assert_eq!(emb.headers["api-key"], AZURE_KEY);

    // The GA v1 surface with an Entra ID token: OpenAI's paths under /openai/v1.
    let r = post(
        &app,
        &key,
        "responses",
        json!({"model": "azure-v1", "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let call = &app.upstream.calls.to("/responses")[0];
    assert_eq!(call.path, "/openai/v1/responses");
    assert_eq!(call.query, None);
    assert_eq!(
        call.headers["authorization"],
        format!("Bearer {ENTRA_TOKEN}")
    );
    assert!(call.headers.get("api-key").is_none());
    assert_eq!(call.json()["model"], "gpt4o-v1");
}

#[tokio::test]
async fn azure_content_filter_refusals_count_as_guardrail_blocks_by_the_provider() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = app
        .chat_raw(&key, chat_body("azure-filtered", json!({})))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["code"], "content_filter",
        "Azure's error, unchanged"
    );
    app.wait_written(1).await;
    let record = &app
        .store()
        .await
        .records(Some("azure-filtered"), 1)
        .await
        .unwrap()[0];
    assert!(record.guardrail_blocked);
    let rows = app.state.guardrail_counts.rows();
    assert!(
        rows.iter().any(|row| row.version == "az-filtered"
            && row.rule == sluice::azure::PROVIDER_FILTER_RULE
            && row.count == 1),
        "{rows:?}"
    );
}
