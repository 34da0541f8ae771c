//! Shadow traffic: copies in the background, never on the user's clock, bounded, capped,
//! stored as pairs and paged.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::rollouts::{start, view};

async fn wait_counters(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = view(app, id).await;
        if done(&v["shadow"]) {
            return v["shadow"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "shadow counters stuck at {}",
            v["shadow"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shadow_copies_never_delay_the_primary_and_are_stored_as_pairs() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    // The canary takes 150 ms; the primary (stable) answers at once.
    let r = start(&app, "chat", "slow-canary", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "mail me at jane@example.com"}]});
    for _ in 0..4 {
        let started = Instant::now();
        let response = app.chat_raw(&key, body.clone()).await;
        let took = started.elapsed();
        assert_eq!(
            headers_of(&response)["x-sluice-arm"],
            "stable",
            "weight 0: nobody gets the canary"
        );
        let _ = response.bytes().await;
        assert!(
            took < Duration::from_millis(120),
            "the primary waited for its shadow: {took:?}"
        );
    }
    // A request with tools is not copied (skip_tools).
    let tools = json!([{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]);
    let _ = app
        .chat_raw(&key, chat_body("chat", json!({"tools": tools})))
        .await
        .bytes()
        .await;

    let counters = wait_counters(&app, &id, |c| c["sent"].as_u64() >= Some(4)).await;
    assert_eq!(counters["sent"], 4, "{counters}");
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
        (Some("gpt-4o"), Some("slow-canary"))
    );
    assert_eq!(pair["primary_answer"], OK_TEXT);
    assert_eq!(pair["shadow_answer"], OK_TEXT);
    assert!(pair["shadow_record"]["latency_ms"].as_f64().unwrap() >= 150.0);
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
    for _ in 0..8 {
        let _ = app
            .chat_raw(&key, chat_body("chat", json!({})))
            .await
            .bytes()
            .await;
        // One at a time, so each copy is stored before the next.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_counters(&app, &id, |c| c["sent"].as_u64() >= Some(8)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
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
}

#[tokio::test]
async fn the_spend_cap_and_the_queue_bound_drop_copies_and_count_them() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let r = start(&app, "chat", "gpt-4-1", "shadowcap").await;
    let id = r["id"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        let _ = app
            .chat_raw(&key, chat_body("chat", json!({})))
            .await
            .bytes()
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = wait_counters(&app, &id, |c| {
        c["sent"].as_u64().unwrap_or(0) + c["dropped_budget"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    assert!(
        c["sent"].as_u64().unwrap() >= 1 && c["dropped_budget"].as_u64().unwrap() >= 5,
        "{c}"
    );

    // A shadow version that hangs for 300 ms: 8 copies in flight and a queue of 4 hold 12.
    let (status, _) = app
        .admin(Method::POST, &format!("/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200);
    let r = start(&app, "chat", "v-hang", "shadow").await;
    let id = r["id"].as_str().unwrap().to_owned();
    let calls = (0..40).map(|_| app.chat_raw(&key, chat_body("chat", json!({}))));
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
    }
    let c = wait_counters(&app, &id, |c| c["dropped_queue"].as_u64() > Some(0)).await;
    assert!(c["dropped_queue"].as_u64().unwrap() >= 20, "{c}");
}
