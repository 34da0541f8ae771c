//! The controller keeps the judge's promises across a cluster: pinned traffic shipped by
//! every replica is reported, never evidence; a live rollout keeps the policy it started
//! with (its stored copy) on every replica, whatever each replica's file says now.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::PATIENCE;
use crate::rig::*;

/// Two steps: the first passes quickly on 5 canary requests, the second holds an hour.
const TWO_STEPS: &str = r#"
description = "tests: 20 % quickly, then 50 % for an hour"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 20
hold = "300ms"
min_requests = 5

[[steps]]
weight = 50
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2
"#;

async fn view(rig: &Rig, via: usize, id: &str) -> Value {
    let (status, v) = rig
        .admin(via, Method::GET, &format!("/rollouts/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_traffic_is_no_evidence_and_a_live_rollout_keeps_its_policy_on_every_replica() {
    let Some(base) = pg_base() else { return };
    let mut rig = Rig::start(2, &base).await;
    let policy_path = rig.dir.path().join("policies/twostep.toml");
    std::fs::write(&policy_path, TWO_STEPS).unwrap();
    let (vip, _) = rig.key(0, "vip").await;
    let (acme, _) = rig.key(0, "acme").await;
    let (status, r) = rig
        .admin(
            0,
            Method::POST,
            "/rollouts",
            Some(json!({"route": "chat", "canary": "gpt-4-1", "policy": "twostep"})),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    rig.wait_routed("chat", &id).await;
    let (status, _) = rig
        .admin(
            0,
            Method::PUT,
            &format!("/rollouts/{id}/pins/vip"),
            Some(json!({"arm": "canary"})),
        )
        .await;
    assert_eq!(status, 200);
    time_until(PATIENCE, "the pin on replica 1", || async {
        view(&rig, 1, &id).await["pins"] == json!({"vip": "canary"})
    })
    .await;

    // Only the pinned workspace sends, through both replicas: no randomized request at all.
    let started = Instant::now();
    let (judge, v) = loop {
        // At the top: a round without a judge (`continue` below) must not skip it.
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the judge never looked"
        );
        rig.drive(&[0, 1], &vip, "chat", 12).await;
        let Some(judge) = rig.judge_of(0, &id).await else {
            continue;
        };
        let v = view(&rig, judge, &id).await;
        let looked_past_hold = v["judge"]["at_ms"].as_i64().unwrap_or(0)
            - v["step_started_at_ms"].as_i64().unwrap()
            >= 300;
        if v["state"] != "progressing"
            || v["step"] != 0
            || (v["judge"]["canary_requests"].as_u64() >= Some(60) && looked_past_hold)
        {
            break (judge, v);
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the judge never looked: {v:#}"
        );
    };
    assert_eq!(
        (&v["state"], &v["step"]),
        (&json!("progressing"), &json!(0)),
        "pinned requests alone moved the rollout: {v:#}"
    );
    assert_eq!(v["canary_requests_in_step"], 0, "{v:#}");
    let why = v["last_decision"]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("0 of 5 randomized canary requests"),
        "replica {judge} holds and says why: {v:#}"
    );

    // Randomized traffic through both replicas passes the first step.
    let started = Instant::now();
    while view(&rig, 0, &id).await["step"] != 1 {
        rig.drive(&[0, 1], &acme, "chat", 12).await;
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "randomized traffic never passed the first step"
        );
    }

    // The file loses its second step; a new replica starts with it, and the two that
    // started the rollout die, so the new one judges.
    let one_step = TWO_STEPS.replace(
        "[[steps]]\nweight = 50\nhold = \"1h\"\nmin_requests = 1000000\n",
        "",
    );
    assert_ne!(one_step, TWO_STEPS);
    std::fs::write(&policy_path, &one_step).unwrap();
    let newcomer = rig.add_replica().await;
    rig.kill(0);
    rig.kill(1);
    let started = Instant::now();
    let v = loop {
        let v = view(&rig, newcomer, &id).await;
        let judging = rig.judge_of(newcomer, &id).await == Some(newcomer);
        if v["state"] != "progressing" || (judging && !v["last_decision"].is_null()) {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new replica never judged: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (&v["state"], &v["step"], &v["steps"], &v["weight"]),
        (&json!("progressing"), &json!(1), &json!(2), &json!(50.0)),
        "the rollout keeps the policy it started with: {v:#}"
    );
    assert_eq!(v["inconclusive"], false, "{v:#}");
    assert_eq!(v["last_decision"]["kind"], "hold", "{v:#}");
    let why = v["last_decision"]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("step 2 of 2"),
        "judged by the stored policy: {why}"
    );
    let log = rig.log(newcomer);
    assert!(
        !log.contains("using this replica's"),
        "the stored policy, not this replica's file: {log}"
    );
    // The edited file is what the next rollout runs under, on any replica.
    let (status, next) = rig
        .admin(
            newcomer,
            Method::POST,
            "/rollouts",
            Some(json!({"route": "counted", "canary": "gpt-4-1", "policy": "twostep"})),
        )
        .await;
    assert_eq!(status, 201, "{next}");
    assert_eq!(next["steps"], 1, "{next:#}");
}
