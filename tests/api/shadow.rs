//! Shadow traffic: copies in the background, never on the user's clock, bounded, capped,
//! stored as pairs and paged.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::rollouts::{start, view};

async fn wait_counters(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let done = &done;
    eventually("the shadow counters", || async move {
        let v = view(app, id).await;
        done(&v["shadow"]).then(|| v["shadow"].clone())
    })
    .await
}

#[tokio::test]
async fn shadow_copies_never_delay_the_primary_and_are_stored_as_pairs() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // The canary's copies wait at the mock's gate until the test opens it; the primary
    // (stable) answers at once. Had a primary waited for its copy, it would never finish.
    let r = start(&app, "chat", "held-canary", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    // A request with tools is not copied (skip_tools); sent first so a wrong copy of it
    // would have arrived by the time the others have.
    let tools = json!([{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]);
    let _ = app
        .chat_raw(&key, chat_body("chat", json!({"tools": tools})))
        .await
        .bytes()
        .await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "mail me at jane@example.com"}]});
    for _ in 0..4 {
        let response = app.chat_raw(&key, body.clone()).await;
        assert_eq!(
            headers_of(&response)["x-sluice-arm"],
            "stable",
            "weight 0: nobody gets the canary"
        );
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
    }
    // Every primary has answered while its copy is still held upstream.
    eventually("4 copies at the gate", || async {
        (app.upstream.held() >= 4).then_some(())
    })
    .await;
    assert_eq!(view(&app, &id).await["shadow"]["sent"], 0);
    app.upstream.open_gate();

    let counters = wait_counters(&app, &id, |c| c["sent"].as_u64() >= Some(4)).await;
    assert_eq!(counters["sent"], 4, "{counters}");
    assert_eq!(app.upstream.held(), 4, "the request with tools was copied");
    assert!(counters["spent_usd"].as_f64().unwrap() > 0.0);

    let (_, page) = app
        .admin(
            Method::GET,
            &format!("/rollouts/{id}/shadow?limit=10"),
            None,
        )
        .await;
    let pairs = page["data"].as_array().unwrap();
    assert_eq!(pairs.len(), 4);
    let pair = &pairs[0];
    assert_eq!(
        (
            pair["primary_version"].as_str(),
            pair["shadow_version"].as_str()
        ),
        (Some("gpt-4o"), Some("held-canary"))
    );
    // The mock answers the arms differently, so each answer is stored under its own arm.
    assert_eq!(pair["primary_answer"], OK_TEXT);
    assert_eq!(pair["shadow_answer"], HELD_TEXT);
    assert_eq!(pair["shadow_record"]["status"], 200);
    assert_eq!(pair["primary_record"]["arm"], "stable");
    assert_eq!(
        pair["request"]["messages"][0]["content"], "mail me at [redacted:email]",
        "PII masked before storing"
    );
    // Shadow spend is not workspace spend: no record of the copies.
    app.wait_written(5).await;
    let records = app.store().await.records(None, 100).await.unwrap();
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.version == "gpt-4o"));
}

#[tokio::test]
async fn pairs_are_paged_and_only_the_newest_are_kept() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    for i in 0..8u64 {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": format!("request {i}")}]});
        let _ = app.chat_raw(&key, body).await.bytes().await;
        // One at a time: each copy is stored before the next request, so "newest" is
        // well defined.
        wait_counters(&app, &id, |c| c["sent"].as_u64() > Some(i)).await;
    }
    let (_, first) = app
        .admin(Method::GET, &format!("/rollouts/{id}/shadow?limit=3"), None)
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let next = first["next"].as_i64().unwrap();
    let (_, second) = app
        .admin(
            Method::GET,
            &format!("/rollouts/{id}/shadow?limit=3&after={next}"),
            None,
        )
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 2, "keep = 5");
    assert!(second["next"].is_null());
    // The five kept are the last five sent, each once, across both pages.
    let mut kept: Vec<String> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|p| {
            p["request"]["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        (3..8).map(|i| format!("request {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_spend_cap_and_the_queue_bound_drop_copies_and_count_them() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "shadowcap").await;
    let id = r["id"].as_str().unwrap().to_owned();
    for i in 0..10u64 {
        let _ = app
            .chat_raw(&key, chat_body("chat", json!({})))
            .await
            .bytes()
            .await;
        // One copy at a time, so each sees the spend of the one before.
        wait_counters(&app, &id, |c| {
            c["sent"].as_u64().unwrap_or(0) + c["dropped_budget"].as_u64().unwrap_or(0) > i
        })
        .await;
    }
    let c = view(&app, &id).await["shadow"].clone();
    // The first copy costs more than the whole cap; every later one is over budget.
    assert_eq!(
        (c["sent"].as_u64(), c["dropped_budget"].as_u64()),
        (Some(1), Some(9)),
        "{c}"
    );

    // A shadow version held at the mock's gate: at most 8 copies in flight and 4 queued,
    // so at least 28 of 40 are dropped, and every copy is either sent or counted as dropped.
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200);
    let r = start(&app, "chat", "held-canary", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let calls = (0..40).map(|_| app.chat_raw(&key, chat_body("chat", json!({}))));
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
    }
    let c = wait_counters(&app, &id, |c| c["dropped_queue"].as_u64() >= Some(28)).await;
    assert_eq!(c["sent"], 0, "{c}");
    app.upstream.open_gate();
    let c = wait_counters(&app, &id, |c| {
        c["sent"].as_u64().unwrap_or(0) + c["dropped_queue"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    let (sent, dropped) = (
        c["sent"].as_u64().unwrap(),
        c["dropped_queue"].as_u64().unwrap(),
    );
    assert_eq!(sent + dropped, 40, "{c}");
    assert!((1..=12).contains(&sent), "{c}");
    assert_eq!(
        app.upstream.held() as u64,
        sent,
        "every copy that went out is counted"
    );
}
