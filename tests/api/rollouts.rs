//! Rollouts through the HTTP surface: split, stickiness, pins, the judge's advances and
//! reverts, operator commands and the audit log.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

pub async fn start(app: &TestApp, route: &str, canary: &str, policy: &str) -> Value {
    let (status, body) = app
        .admin(
            Method::POST,
            "/rollouts",
            Some(json!({"route": route, "canary": canary, "policy": policy})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

pub async fn view(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .admin(Method::GET, &format!("/rollouts/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The judge's report in the evidence of the rollout's latest `kind` event (`rolled_back`,
/// say): the report that decided it. The view's `judge` may be an earlier look's.
pub async fn decision_report(app: &TestApp, id: &str, kind: &str) -> Value {
    let (status, events) = app
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    events["data"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event: {events:#}"))["evidence"]["report"]
        .clone()
}

/// Polls the rollout until `done` holds, sending traffic meanwhile when `key` is given.
pub async fn wait_for(
    app: &TestApp,
    id: &str,
    key: Option<&str>,
    route: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let v = view(app, id).await;
        if done(&v) {
            return v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "timed out; rollout is now {v:#}"
        );
        match key {
            Some(key) => {
                drive(app, key, route, 20, json!({})).await;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Sends `n` requests (8 at a time) and counts the arms that served them.
pub async fn drive(
    app: &TestApp,
    key: &str,
    route: &str,
    n: usize,
    extra: Value,
) -> (usize, usize) {
    let mut stable = 0;
    let mut canary = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let calls = chunk
            .iter()
            .map(|_| app.chat_raw(key, chat_body(route, extra.clone())));
        for response in futures_util::future::join_all(calls).await {
            match headers_of(&response)
                .get("x-sluice-arm")
                .map(String::as_str)
            {
                Some("canary") => canary += 1,
                Some("stable") => stable += 1,
                other => panic!("no arm header: {other:?}"),
            }
            let _ = response.bytes().await;
        }
    }
    (stable, canary)
}

#[tokio::test]
async fn the_split_matches_the_weight_within_binomial_limits() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    assert_eq!(r["weight"], 30.0);
    let n = 400;
    let (stable, canary) = drive(&app, &key, "chat", n, json!({})).await;
    assert_eq!(stable + canary, n);
    // Binomial(400, 0.3): mean 120, sd 9.2; ±4 sd.
    assert!(
        (83..=157).contains(&canary),
        "canary served {canary} of {n}"
    );
    let received = app.upstream.received();
    assert_eq!(
        received
            .iter()
            .filter(|r| r.body["model"] == "ok-canary")
            .count(),
        canary
    );

    app.wait_written(n as u64).await;
    let records = app.store().await.records(Some("chat"), 1000).await.unwrap();
    assert_eq!(records.len(), n, "one record per request");
    let id = r["id"].as_str().unwrap();
    assert!(
        records
            .iter()
            .all(|rec| rec.rollout_id.as_deref() == Some(id)
                && rec.w == Some(0.3)
                && rec.randomized
                && rec.step == Some(0))
    );
}

#[tokio::test]
async fn sticky_users_stay_in_the_canary_when_the_weight_rises() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "sticky").await;
    let id = r["id"].as_str().unwrap().to_owned();
    // Paused, the weight holds however long the two passes take on a busy machine.
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let first = canary_users(&app, &key).await;
    assert_eq!(
        first,
        canary_users(&app, &key).await,
        "the same users, the same arm"
    );
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Resuming restarts the step: requests of the paused step that the controller had not
    // read before the resume are older than it and do not count, so the step gets its
    // minimum from traffic sent after the resume (without it the test raced the look).
    let v = wait_for(&app, &id, Some(&key), "chat", |v| v["step"] == 1).await;
    assert_eq!(v["weight"], 60.0);
    let second = canary_users(&app, &key).await;
    assert!(
        second.len() > first.len(),
        "{} then {}",
        first.len(),
        second.len()
    );
    for u in &first {
        assert!(
            second.contains(u),
            "user u{u} left the canary when the weight rose"
        );
    }
}

#[tokio::test]
async fn a_sticky_rollout_is_judged_per_user_and_a_per_request_one_per_request() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "sticky").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Three users send SETTLE_REQUESTS requests each: a user's last one settles its
    // segment at this weight, and only then does the judge learn that user's arm. A fourth
    // user's five requests stay open (the policy's one gate sees no errors here, so no
    // segment settles early on its evidence).
    let per_user = sluice::judge::units::SETTLE_REQUESTS as usize;
    let mut canary_users = 0;
    for u in 0..3 {
        let (stable, canary) = drive(
            &app,
            &key,
            "chat",
            per_user,
            json!({"user": format!("heavy{u}")}),
        )
        .await;
        assert!(
            stable == 0 || canary == 0,
            "one user, one arm: {stable}/{canary}"
        );
        canary_users += u64::from(canary > 0);
    }
    drive(&app, &key, "chat", 5, json!({"user": "light"})).await;
    // The heavy users' units may settle at a look before the light user's requests have
    // reached the judge: wait for both, not for the first alone.
    let v = wait_for(&app, &id, None, "chat", |v| {
        v["judge"]["units"]["settled"] == 3 && v["judge"]["units"]["open"] == 1
    })
    .await;
    let units = &v["judge"]["units"];
    assert_eq!(units["settled_canary"], canary_users, "{units}");
    let srm = &v["judge"]["srm"];
    assert_eq!(
        srm["assigned_canary"].as_u64().unwrap() + srm["assigned_stable"].as_u64().unwrap(),
        3 * per_user as u64 + 5,
        "every randomized request's assignment reached the judge: {srm}"
    );

    // A per-request rollout has no units: every request is its own.
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let v = wait_for(&app, &id, Some(&key), "chat", |v| {
        v["judge"]["srm"]["measured_stable"].as_u64() > Some(0)
    })
    .await;
    assert!(v["judge"].get("units").is_none(), "{:#}", v["judge"]);
}

/// Which of 120 users the canary serves.
async fn canary_users(app: &TestApp, key: &str) -> Vec<u32> {
    let mut canary = Vec::new();
    for u in 0..120 {
        let response = app
            .chat_raw(key, chat_body("chat", json!({"user": format!("u{u}")})))
            .await;
        if headers_of(&response)["x-sluice-arm"] == "canary" {
            canary.push(u);
        }
    }
    canary
}

#[tokio::test]
async fn pins_beat_the_percentage_and_are_logged() {
    let app = TestApp::spawn().await;
    let beta = app.key("beta").await;
    let legacy = app.key("legacy").await;
    let other = app.key("other").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap();
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/rollouts/{id}/pins/beta"),
            Some(json!({"arm": "canary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/rollouts/{id}/pins/legacy"),
            Some(json!({"arm": "stable"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(drive(&app, &beta, "chat", 40, json!({})).await, (0, 40));
    assert_eq!(drive(&app, &legacy, "chat", 40, json!({})).await, (40, 0));
    let (_, canary) = drive(&app, &other, "chat", 80, json!({})).await;
    assert!(canary > 0 && canary < 80);

    let (status, _) = app
        .admin(Method::DELETE, &format!("/rollouts/{id}/pins/beta"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (stable, _) = drive(&app, &beta, "chat", 60, json!({})).await;
    assert!(stable > 0, "an unpinned workspace is randomized again");

    app.wait_written(220).await;
    let records = app.store().await.records(Some("chat"), 1000).await.unwrap();
    let pinned: Vec<_> = records.iter().filter(|r| r.workspace == "legacy").collect();
    assert_eq!(pinned.len(), 40, "every pinned request is recorded");
    assert!(
        pinned.iter().all(|r| !r.randomized),
        "pinned requests are marked"
    );

    let (_, events) = app
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "pinned", "pinned", "unpinned"]);
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "fast").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let v = wait_for(&app, &id, Some(&key), "chat", |v| {
        v["state"] != "progressing"
    })
    .await;
    assert_eq!(v["state"], "promoted", "{v:#}");
    assert_eq!(v["weight"], 100.0);

    // The canary is the route's stable version now.
    let response = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    let headers = headers_of(&response);
    assert_eq!(
        (
            headers["x-sluice-version"].as_str(),
            headers["x-sluice-arm"].as_str()
        ),
        ("gpt-4-1", "stable")
    );
    let (_, events) = app
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "advanced", "promoted"]);
    let advanced = &events["data"][1];
    assert_eq!(advanced["actor"], "judge");
    assert!(
        advanced["evidence"]["report"]["gates"].is_array(),
        "every decision stores its evidence"
    );
}

/// Drives traffic until the judge reverts `canary`, and checks it did so for the right
/// reason: every failed gate is one of `causes` (or, for errors, the kill switch fired).
async fn assert_reverted(canary: &str, extra: Value, causes: &[&str]) {
    assert_reverted_under("fast", canary, extra, causes).await;
}

async fn assert_reverted_under(policy: &str, canary: &str, extra: Value, causes: &[&str]) {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", canary, policy).await;
    let id = r["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let v = loop {
        drive(&app, &key, "chat", 16, extra.clone()).await;
        let v = view(&app, &id).await;
        if v["state"] != "progressing" {
            break v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{canary} was never reverted: {v:#}"
        );
    };
    assert_eq!(v["state"], "rolled_back", "{canary}: {v:#}");
    assert_eq!(v["weight"], 0.0);
    // The revert is in the table at once: every request is on stable now.
    assert_eq!(
        drive(&app, &key, "chat", 24, extra).await,
        (24, 0),
        "{canary}"
    );
    let (_, events) = app
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await;
    let last = events["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["actor"].as_str()),
        (Some("rolled_back"), Some("judge"))
    );
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: "),
        "{last}"
    );
    let report = &last["evidence"]["report"];
    assert!(report["revert"].as_bool().unwrap());
    let failed: Vec<&str> = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["verdict"] == "fail")
        .map(|g| g["gate"].as_str().unwrap())
        .collect();
    let by_kill_switch = report["kill_switch_fired"] == true;
    assert!(
        failed.iter().all(|g| causes.contains(g)),
        "{canary} was reverted for {failed:?}, not for {causes:?}: {report}"
    );
    assert!(
        !failed.is_empty() || (by_kill_switch && causes.contains(&"error_rate")),
        "{canary} was reverted with no failed gate of {causes:?}: {report}"
    );
}

#[tokio::test]
async fn a_canary_that_raises_the_error_rate_is_reverted() {
    assert_reverted("broken-canary", json!({}), &["error_rate"]).await;
}

#[tokio::test]
async fn a_canary_that_uses_more_tokens_is_reverted() {
    // More tokens make a longer answer and a dearer one too.
    assert_reverted(
        "wordy-canary",
        json!({}),
        &["tokens_per_request", "cost_per_request", "response_length"],
    )
    .await;
}

#[tokio::test]
async fn a_canary_with_a_slower_tail_is_reverted() {
    assert_reverted_under("thorough", "slow-canary", json!({}), &["latency_p95"]).await;
}

#[tokio::test]
async fn a_canary_that_costs_more_is_reverted() {
    assert_reverted("pricey-canary", json!({}), &["cost_per_request"]).await;
}

#[tokio::test]
async fn operators_pause_resume_promote_and_abort_and_each_is_logged() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let op = |name: &'static str| {
        let id = id.clone();
        let app = &app;
        async move {
            app.admin(Method::POST, &format!("/rollouts/{id}/{name}"), None)
                .await
        }
    };
    let (status, v) = op("pause").await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let (status, _) = op("pause").await;
    assert_eq!(status, StatusCode::CONFLICT, "pausing twice");
    let (_, v) = op("resume").await;
    assert_eq!(v["state"], "progressing");
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/dance"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, v) = op("promote").await;
    assert_eq!(v["state"], "promoted");
    assert_eq!(drive(&app, &key, "chat", 10, json!({})).await, (10, 0));
    let response = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(headers_of(&response)["x-sluice-version"], "gpt-4-1");
    let (status, _) = op("abort").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an ended rollout takes no command"
    );

    // A new rollout on the same route, aborted: traffic back on the (new) stable.
    let r = start(&app, "chat", "gpt-4o", "hold").await;
    let second = r["id"].as_str().unwrap();
    let (status, _) = app
        .admin(
            Method::POST,
            "/rollouts",
            Some(json!({"route": "chat", "canary": "wordy-canary", "policy": "hold"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "one live rollout per route");
    let (_, v) = app
        .admin(Method::POST, &format!("/rollouts/{second}/abort"), None)
        .await;
    assert_eq!(v["state"], "aborted");
    assert_eq!(drive(&app, &key, "chat", 10, json!({})).await, (10, 0));

    // Each rollout's log: (kind, actor), oldest first.
    let log = |id: String| {
        let app = &app;
        async move {
            let (_, events) = app
                .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
                .await;
            events["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap().to_owned(),
                        e["actor"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<(String, String)>>()
        }
    };
    let by_operator = |kinds: &[&str]| -> Vec<(String, String)> {
        kinds
            .iter()
            .map(|k| (k.to_string(), "operator".to_owned()))
            .collect()
    };
    assert_eq!(
        log(id.clone()).await,
        by_operator(&["started", "paused", "resumed", "promoted"])
    );
    assert_eq!(
        log(second.to_owned()).await,
        by_operator(&["started", "aborted"])
    );
    let (_, list) = app.admin(Method::GET, "/rollouts", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_rollout_requests_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"route": "nope", "canary": "gpt-4-1", "policy": "fast"}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            json!({"route": "chat", "canary": "gpt-9", "policy": "fast"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "gpt-9",
        ),
        (
            json!({"route": "chat", "canary": "gpt-4-1", "policy": "yolo"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "yolo",
        ),
        (
            json!({"route": "chat", "canary": "gpt-4o", "policy": "fast"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already",
        ),
        (json!({"route": "chat"}), StatusCode::BAD_REQUEST, "canary"),
    ];
    for (body, status, needle) in cases {
        let (got, answer) = app
            .admin(Method::POST, "/rollouts", Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{answer}"
        );
    }
    let (status, _) = app.admin(Method::GET, "/rollouts/ro_missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unauth = app
        .http
        .get(format!("{}/admin/v1/rollouts", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
}

#[tokio::test]
async fn the_policy_webhook_hears_every_state_change() {
    use std::sync::{Arc, Mutex};
    let heard: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = heard.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(v) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    #[expect(
        clippy::disallowed_methods,
        reason = "the webhook receiver lives as long as the test"
    )]
    let _serving = tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let app = TestApp::spawn().await;
    // A policy written after start is read when the rollout names it.
    let policy = FAST_POLICY.replace(
        "max_step_hold = \"1m\"",
        &format!("max_step_hold = \"1m\"\nwebhook = \"{url}\""),
    );
    std::fs::write(app.dir.path().join("policies/hooked.toml"), policy).unwrap();
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "hooked").await;
    let id = r["id"].as_str().unwrap().to_owned();
    wait_for(&app, &id, Some(&key), "chat", |v| v["state"] == "promoted").await;
    eventually("three webhook calls", || async {
        (heard.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    // Each call is posted by a task of its own, so they may arrive in any order; `at_ms`
    // says when each was sent (the judge's looks are 100 ms and more apart).
    let mut heard = heard.lock().unwrap().clone();
    heard.sort_by_key(|v| v["at_ms"].as_i64());
    let events: Vec<&str> = heard.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["started", "advanced", "promoted"]);
    assert!(
        heard
            .iter()
            .all(|v| v["rollout"] == id.as_str() && v["route"] == "chat")
    );
    assert_eq!(heard[2]["state"], "promoted");
    assert!(heard[1]["evidence"]["report"]["gates"].is_array());
}

/// Two quick steps: for the test that pinned traffic is never evidence.
const TWO_STEPS: &str = r#"
description = "tests: 20 → 50 %, quick, few requests"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 20
hold = "300ms"
min_requests = 5

[[steps]]
weight = 50
hold = "300ms"
min_requests = 5

[gates.error_rate]
max_ratio = 1.2
"#;

#[tokio::test]
async fn pinned_requests_never_advance_or_promote_a_rollout() {
    let app = TestApp::spawn().await;
    write_file(app.dir.path(), "policies/twostep.toml", TWO_STEPS);
    let vip = app.key("vip").await;
    let acme = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "twostep").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .admin(
            Method::PUT,
            &format!("/rollouts/{id}/pins/vip"),
            Some(json!({"arm": "canary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Only the pinned workspace sends: every request is a canary request, none randomized.
    // Wait until the judge has counted 60 of them at a look past the step's hold (or has
    // moved, which is the bug).
    let started = Instant::now();
    let v = loop {
        assert_eq!(drive(&app, &vip, "chat", 10, json!({})).await, (0, 10));
        let v = view(&app, &id).await;
        let looked_past_hold = v["judge"]["at_ms"].as_i64().unwrap_or(0)
            - v["step_started_at_ms"].as_i64().unwrap()
            >= 300;
        if v["state"] != "progressing"
            || v["step"] != 0
            || (v["judge"]["canary_requests"].as_u64() >= Some(60) && looked_past_hold)
        {
            break v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the judge never looked: {v:#}"
        );
    };
    assert_eq!(
        (&v["state"], &v["step"]),
        (&json!("progressing"), &json!(0)),
        "pinned requests alone moved the rollout: {v:#}"
    );
    assert_eq!(v["canary_requests_in_step"], 0, "{v:#}");
    assert!(
        v["reported_canary_requests_in_step"].as_u64() >= Some(60),
        "pinned requests are reported: {v:#}"
    );
    let why = v["last_decision"]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("0 of 5 randomized canary requests"),
        "the hold says what is missing: {why}"
    );

    // Randomized traffic is evidence: the same rollout passes both steps on it.
    let v = wait_for(&app, &id, Some(&acme), "chat", |v| {
        v["state"] != "progressing"
    })
    .await;
    assert_eq!(v["state"], "promoted", "{v:#}");
}
