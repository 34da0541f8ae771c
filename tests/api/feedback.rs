//! Feedback: business metrics posted on requests, joined to their arm, judged as gates.

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::rollouts::{decision_report, start, view};

async fn post_feedback(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}/v1/feedback", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sends one request; returns its id and arm.
async fn one(app: &TestApp, key: &str) -> (String, String) {
    let r = app.chat_raw(key, chat_body("chat", json!({}))).await;
    let h = headers_of(&r);
    (h["x-request-id"].clone(), h["x-sluice-arm"].clone())
}

#[tokio::test]
async fn feedback_reaches_the_requests_arm_and_is_refused_across_workspaces() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let other = app.key("globex").await;
    let r = start(&app, "chat", "gpt-4-1", "feedback").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let mut seen = std::collections::BTreeMap::new();
    let started = Instant::now();
    while seen.len() < 2 {
        assert!(
            started.elapsed() < PATIENCE,
            "at 50 % both arms should have served by now: {seen:?}"
        );
        let (request_id, arm) = one(&app, &key).await;
        seen.entry(arm).or_insert(request_id);
    }
    for (arm, request_id) in &seen {
        // Right after the answer: the record may not be written yet.
        let (status, body) = post_feedback(
            &app,
            &key,
            json!({"request_id": request_id, "metric": "converted", "value": true}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["arm"], arm.as_str());
        assert_eq!(body["rollout"], id.as_str());
        assert_eq!(body["judged"], true);
    }
    let v = view(&app, &id).await;
    assert_eq!(
        v["feedback"],
        json!({"converted/canary": 1, "converted/stable": 1})
    );

    let request_id = &seen["stable"];
    let (status, _) = post_feedback(
        &app,
        &other,
        json!({"request_id": request_id, "metric": "converted", "value": true}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another workspace's request");
    let (status, _) = post_feedback(
        &app,
        &key,
        json!({"request_id": "req_nope", "metric": "converted", "value": true}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post_feedback(
        &app,
        &key,
        json!({"request_id": request_id, "metric": "revenue", "value": 3.5}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not declared in the policy: {body}"
    );
    let (status, _) = post_feedback(
        &app,
        &key,
        json!({"request_id": request_id, "metric": "converted", "value": "yes"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post_feedback(
        &app,
        "sk-sluice-wrong",
        json!({"request_id": request_id, "metric": "converted", "value": true}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Feedback on a request outside any rollout is stored, not judged.
    let (status, _) = app
        .admin(
            reqwest::Method::POST,
            &format!("/rollouts/{id}/abort"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (request_id, _) = one(&app, &key).await;
    let (status, body) = post_feedback(
        &app,
        &key,
        json!({"request_id": request_id, "metric": "rating", "value": 4}),
    )
    .await;
    assert_eq!(
        (status, body["judged"].as_bool()),
        (StatusCode::ACCEPTED, Some(false))
    );
}

#[tokio::test]
async fn the_judge_reverts_a_canary_whose_conversions_fall() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "feedback").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let v = loop {
        for _ in 0..10 {
            let (request_id, arm) = one(&app, &key).await;
            // Stable users convert; canary users do not.
            let (status, _) = post_feedback(
                &app,
                &key,
                json!({"request_id": request_id, "metric": "converted", "value": arm == "stable"}),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
        let v = view(&app, &id).await;
        if v["state"] != "progressing" {
            break v;
        }
        assert!(started.elapsed() < PATIENCE, "never reverted: {v:#}");
    };
    assert_eq!(v["state"], "rolled_back", "{v:#}");
    // The report that decided it, from the event: the view's may be an earlier look's.
    let report = decision_report(&app, &id, "rolled_back").await;
    let gate = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["feedback"] == "converted")
        .unwrap()
        .clone();
    assert_eq!(gate["verdict"], "fail", "{gate}");
}
