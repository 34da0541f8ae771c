//! Per-workspace limits: a request rate with a burst, tokens per minute and USD per day,
//! each answered with 429, `Retry-After` and OpenAI's error shape, one workspace at a time.

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn statuses(app: &TestApp, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            app.chat_raw(key, chat_body("chat", json!({})))
                .await
                .status()
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn a_request_rate_answers_429_for_its_workspace_only() {
    let app = TestApp::spawn().await;
    let acme = app.key("acme").await;
    let globex = app.key("globex").await;
    // One request per 100 s after a burst of 3: the six requests below are sure to come
    // before the next one is allowed, however slow the machine.
    let (status, body) = app
        .admin(
            Method::PUT,
            "/workspaces/acme/limits",
            Some(json!({"requests_per_second": 0.01, "burst": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"]["burst"], 3);
    let started = Instant::now();
    assert_eq!(statuses(&app, &acme, 5).await, [200, 200, 200, 429, 429]);
    let limited = app.chat_raw(&acme, chat_body("chat", json!({}))).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The next request is allowed 100 s after the first: less the time these took.
    let least = (100.0 - started.elapsed().as_secs_f64()).floor();
    assert!(
        retry <= 100 && retry as f64 >= least,
        "Retry-After {retry} s, expected {least}..=100"
    );
    let err: Value = limited.json().await.unwrap();
    assert_eq!(
        (err["error"]["code"].as_str(), err["error"]["type"].as_str()),
        (Some("rate_limit_exceeded"), Some("requests"))
    );
    assert_eq!(
        statuses(&app, &globex, 5).await,
        [200; 5],
        "another workspace is untouched"
    );
}

#[tokio::test]
async fn token_and_spend_budgets_answer_429_once_spent() {
    let app = TestApp::spawn().await;
    let acme = app.key("acme").await;
    let globex = app.key("globex").await;
    // Each answer uses 11 + 3 = 14 tokens: the third request finds 28 ≥ 20.
    app.admin(
        Method::PUT,
        "/workspaces/acme/limits",
        Some(json!({"tokens_per_minute": 20})),
    )
    .await;
    assert_eq!(statuses(&app, &acme, 3).await, [200, 200, 429]);
    let limited = app.chat_raw(&acme, chat_body("chat", json!({}))).await;
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let err: Value = limited.json().await.unwrap();
    assert_eq!(err["error"]["type"], "tokens_per_minute");

    // One answer costs (11 × 2.5 + 3 × 10) / 1e6 = 0.0000575 USD.
    app.admin(
        Method::PUT,
        "/workspaces/globex/limits",
        Some(json!({"usd_per_day": 0.0001})),
    )
    .await;
    assert_eq!(statuses(&app, &globex, 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn limits_are_checked_and_kept() {
    let app = TestApp::spawn().await;
    app.key("acme").await;
    let (status, _) = app
        .admin(
            Method::PUT,
            "/workspaces/acme/limits",
            Some(json!({"requests_per_second": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .admin(
            Method::PUT,
            "/workspaces/acme/limits",
            Some(json!({"rps": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown field");
    let (status, _) = app
        .admin(
            Method::PUT,
            "/workspaces/ghost/limits",
            Some(json!({"burst": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.admin(
        Method::PUT,
        "/workspaces/acme/limits",
        Some(json!({"tokens_per_minute": 100000, "usd_per_day": 50})),
    )
    .await;
    let (_, got) = app
        .admin(Method::GET, "/workspaces/acme/limits", None)
        .await;
    assert_eq!(
        got["limits"],
        json!({"requests_per_second": null, "burst": null, "tokens_per_minute": 100000, "usd_per_day": 50.0})
    );
    // Stored with their values, so a restart keeps them; the refused updates left no trace.
    let stored = app.store().await.all_limits().await.unwrap();
    assert_eq!(stored.len(), 1, "stored, so a restart keeps them");
    let (workspace, limits) = &stored[0];
    assert_eq!(workspace, "acme");
    assert_eq!(
        (
            limits.requests_per_second,
            limits.burst,
            limits.tokens_per_minute,
            limits.usd_per_day
        ),
        (None, None, Some(100_000), Some(50.0))
    );
}
