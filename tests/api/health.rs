//! `/healthz` and the process's life: a background loop that dies fails the health check
//! and stops the gateway; and authentication by exception: every route but the allowlist
//! needs a credential, including one added without thought.

use std::time::{Duration, Instant};

use axum::routing::get;
use sluice::http::extract::UNAUTHENTICATED_ROUTES;
use sluice::tasks::Stage;

use crate::helpers::*;

#[tokio::test]
async fn a_background_loop_that_panics_fails_healthz_and_stops_the_gateway() {
    let mut app = TestApp::spawn().await;
    // The same router and state on a second listener, which keeps answering while the
    // gateway itself drains and stops.
    let watch = app
        .serve_router(sluice::http::router(app.state.clone()))
        .await;
    let health = |base: String| {
        let http = app.http.clone();
        async move {
            let r = http.get(format!("{base}/healthz")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    assert_eq!(health(app.base.clone()).await, (200, "ok".to_owned()));

    app.state
        .tasks
        .spawn("test-loop", Stage::Control, |_| async {
            panic!("on purpose")
        });

    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = health(watch.clone()).await;
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "task_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`test-loop` panicked: on purpose"),
        "{message}"
    );

    let ended = app.stopped_by_itself().await;
    let error = ended.expect_err("a dead loop makes serve fail, so it is restarted");
    assert!(error.to_string().contains("test-loop"), "{error}");
    assert!(
        app.http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err(),
        "the gateway no longer listens"
    );
}

#[tokio::test]
async fn a_route_added_without_thought_needs_a_credential() {
    let app = TestApp::spawn().await;
    let routes = sluice::http::routes()
        .route("/added", get(|| async { "open" }))
        .route("/v1/added", get(|| async { "open" }));
    let base = app
        .serve_router(sluice::http::guarded(routes, app.state.clone()))
        .await;
    let get = |path: &str, token: Option<&str>| {
        let mut request = app.http.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/added", None).await, 401);
    assert_eq!(get("/added", Some("sk-sluice-wrong")).await, 401);
    assert_eq!(get("/added", Some(ADMIN_TOKEN)).await, 200);
    assert_eq!(get("/v1/added", None).await, 401);
    assert_eq!(get("/v1/added", Some(ADMIN_TOKEN)).await, 401);
    let key = app.key("acme").await;
    assert_eq!(get("/v1/added", Some(&key)).await, 200);
}

#[tokio::test]
async fn only_the_allowlist_answers_without_a_credential_and_unknown_paths_are_404() {
    let app = TestApp::spawn().await;
    for path in UNAUTHENTICATED_ROUTES {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for path in ["/v1/models", "/admin/v1/workspaces", "/admin/v1/routes"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app
        .http
        .get(format!("{}/nowhere", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Below /v1 too: a path sluice does not serve is a 404 before any credential is asked
    // for, while a passthrough endpoint (served only when configured) needs a key first.
    for (path, status) in [
        ("/v1/no/such/thing", 404),
        ("/v1/responses/resp_1/bogus", 404),
        ("/v1/files", 401),
        ("/v1/vector_stores/vs_1/files", 401),
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
    // A wrong method on an operation sluice serves is a 405, not a forward.
    let key = app.key("acme").await;
    for path in [
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses/resp_1/cancel",
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{path}");
    }
    assert!(app.upstream.calls.all().is_empty());
}
