//! Errors come back in OpenAI's shape with the statuses the SDKs map to their exceptions.

use async_openai::error::OpenAIError;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(UPSTREAM_KEY),
        "the upstream key leaked into an error"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    for field in ["message", "type", "param", "code"] {
        assert!(
            body["error"].get(field).is_some(),
            "error without `{field}`: {body}"
        );
    }
    (status, body)
}

#[tokio::test]
async fn bad_requests_are_400() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let url = format!("{}/v1/chat/completions", app.base);
    let send = |body: &'static str| app.http.post(&url).bearer_auth(&key).body(body).send();
    let (status, body) = error_of(send("{not json").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
    let (status, body) = error_of(send(r#"{"messages":[]}"#).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "model");
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let app = TestApp::spawn().await;
    let url = format!("{}/v1/chat/completions", app.base);
    let (status, body) = error_of(
        app.http
            .post(&url)
            .json(&chat_body("chat", json!({})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_api_key");
    let (status, _) = error_of(
        app.chat_raw("sk-sluice-notarealkey", chat_body("chat", json!({})))
            .await,
    )
    .await;
    assert_eq!(status, 401);
    // The SDK sees its usual authentication error.
    let err = app
        .openai("sk-sluice-nope")
        .chat()
        .create_byot::<_, Value>(chat_body("chat", json!({})))
        .await
        .unwrap_err();
    match err {
        OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code, 401);
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_route_is_404_model_not_found() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let err = app
        .openai(&key)
        .chat()
        .create_byot::<_, Value>(chat_body("gpt-9", json!({})))
        .await
        .unwrap_err();
    let OpenAIError::ApiError(e) = err else {
        panic!("expected an API error")
    };
    assert_eq!(e.status_code, 404);
    assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
    assert!(e.api_error.message.contains("gpt-9"));
    // The routes the caller could have meant are listed.
    assert!(
        e.api_error.message.contains("routes: ") && e.api_error.message.contains("chat"),
        "{}",
        e.api_error.message
    );
    assert!(!e.api_error.message.contains("is a version of"));
}

#[tokio::test]
async fn a_version_name_sent_as_the_model_names_its_route() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let (status, body) = error_of(app.chat_raw(&key, chat_body("gpt-4o", json!({}))).await).await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`gpt-4o` is a version of route `chat`")
            && message.contains(r#"send "model": "chat""#),
        "{message}"
    );
}

#[tokio::test]
async fn the_admin_token_and_an_api_key_swapped_are_named() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let (status, body) = error_of(
        app.chat_raw(ADMIN_TOKEN, chat_body("chat", json!({})))
            .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this is the admin token"),
        "{body}"
    );
    let response = app
        .http
        .get(format!("{}/admin/v1/rollouts", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_admin_token");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this is a gateway API key"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let big = "x".repeat(70_000); // the test config allows 65 536 bytes
    let (status, body) = error_of(
        app.chat_raw(&key, chat_body("chat", json!({"pad": big})))
            .await,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let (status, body) = error_of(app.chat_raw(&key, chat_body("down", json!({}))).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream_unreachable"))
    );
    let (status, body) = error_of(app.chat_raw(&key, chat_body("garbage", json!({}))).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream_invalid_response"))
    );
    let started = std::time::Instant::now();
    let response = app.chat_raw(&key, chat_body("hang", json!({}))).await;
    assert_eq!(headers_of(&response)["x-sluice-version"], "v-hang");
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("upstream_timeout"))
    );
    // The mock hangs for two minutes; only the 300 ms timeout can end the call within one.
    assert!(
        started.elapsed() < PATIENCE,
        "the 300 ms timeout was not applied"
    );

    app.wait_written(3).await;
    let records = app.store().await.records(None, 10).await.unwrap();
    let outcome = |route: &str| {
        records
            .iter()
            .find(|r| r.route == route)
            .map(|r| (r.outcome.as_str(), r.status))
    };
    assert_eq!(outcome("down"), Some(("upstream_unreachable", 502)));
    assert_eq!(outcome("garbage"), Some(("upstream_invalid", 502)));
    assert_eq!(outcome("hang"), Some(("upstream_timeout", 504)));
}

#[tokio::test]
async fn upstream_error_statuses_are_passed_on_with_their_body() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for (route, status, code) in [("e500", 500, "boom"), ("e429", 429, "rate_limit_exceeded")] {
        let response = app.chat_raw(&key, chat_body(route, json!({}))).await;
        assert_eq!(headers_of(&response)["x-sluice-arm"], "stable");
        let (got, body) = error_of(response).await;
        assert_eq!(got.as_u16(), status);
        assert_eq!(
            body["error"]["code"], code,
            "the upstream's own error is passed on"
        );
    }
    let (status, body) = error_of(app.chat_raw(&key, chat_body("ehtml", json!({}))).await).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["error"]["message"],
        "upstream error: <html>maintenance</html>"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_in_openai_shape() {
    let app = TestApp::spawn().await;
    let (status, body) = error_of(
        app.http
            .get(format!("{}/v1/nothing", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_wrong_method_is_405_in_openai_shape_with_allow() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let response = app
        .http
        .get(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let allow = response.headers().get("allow").cloned();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 405);
    assert_eq!(allow.as_ref().and_then(|v| v.to_str().ok()), Some("POST"));
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // The admin API too, with its own credential.
    let response = app
        .http
        .delete(format!("{}/admin/v1/workspaces", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn guessing_keys_is_locked_out_per_address_before_the_guess_is_checked() {
    let app = TestApp::spawn_edited(Db::Sqlite, Default::default(), |text| {
        text.replace(
            "shadow_queue = 4",
            "shadow_queue = 4\nauth_failure_burst = 3\nauth_failures_per_minute = 1",
        )
    })
    .await;
    let key = app.key("acme").await;
    for _ in 0..3 {
        let (status, _) = error_of(
            app.chat_raw("sk-sluice-guess", chat_body("chat", json!({})))
                .await,
        )
        .await;
        assert_eq!(status, 401);
    }
    // The fourth failure locks the address out, with the time to wait.
    let response = app
        .chat_raw("sk-sluice-guess", chat_body("chat", json!({})))
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // While locked, even the right key is refused: a guess learns nothing.
    let (status, _) = error_of(app.chat_raw(&key, chat_body("chat", json!({}))).await).await;
    assert_eq!(status, 429);
    // Wrong admin tokens count against the same address.
    let response = app
        .http
        .get(format!("{}/admin/v1/rollouts", app.base))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sluice_client_throttled_total{reason=\"auth_failures\"}"))
        .expect("the counter is exported");
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3, "{line}");
}

#[tokio::test]
async fn admin_calls_are_limited_per_address() {
    let app = TestApp::spawn_edited(Db::Sqlite, Default::default(), |text| {
        text.replace(
            "admin_burst = 1000000\nadmin_requests_per_second = 1000000",
            "admin_burst = 5\nadmin_requests_per_second = 1",
        )
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, _) = app.admin(reqwest::Method::GET, "/rollouts", None).await;
        statuses.push(status.as_u16());
    }
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
}
