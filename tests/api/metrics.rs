//! `GET /metrics`: Prometheus series that move as requests flow.

use std::collections::BTreeMap;

use serde_json::json;

use crate::helpers::*;
use crate::rollouts::start;

/// Series → value, from the text format.
async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "no credential needed");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (
                series.to_owned(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l}")),
            )
        })
        .collect()
}

#[tokio::test]
async fn metrics_move_as_requests_flow() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for _ in 0..3 {
        app.chat_raw(&key, chat_body("chat", json!({})))
            .await
            .bytes()
            .await
            .unwrap();
    }
    for _ in 0..2 {
        app.chat_raw(&key, chat_body("demo", json!({"stream": true})))
            .await
            .bytes()
            .await
            .unwrap();
    }
    app.chat_raw(
        &key,
        chat_body("guarded", json!({"x_test_answer": "mail a@b.com"})),
    )
    .await
    .bytes()
    .await
    .unwrap();

    let m = scrape(&app).await;
    let chat = r#"route="chat",version="gpt-4o",arm="stable""#;
    assert_eq!(
        m[&format!("sluice_requests_total{{{chat},outcome=\"ok\"}}")],
        3.0
    );
    assert_eq!(
        m[&format!("gen_ai_client_token_usage_total{{{chat},gen_ai_token_type=\"input\"}}")],
        3.0 * OK_USAGE.0 as f64
    );
    assert_eq!(
        m[&format!("gen_ai_client_token_usage_total{{{chat},gen_ai_token_type=\"output\"}}")],
        3.0 * OK_USAGE.1 as f64
    );
    assert_eq!(
        m[&format!("gen_ai_client_operation_duration_seconds_count{{{chat}}}")],
        3.0
    );
    assert_eq!(
        m[&format!("gen_ai_client_operation_duration_seconds_bucket{{{chat},le=\"+Inf\"}}")],
        3.0
    );
    assert!(m[&format!("sluice_cost_usd_total{{{chat}}}")] > 0.0);
    let demo = r#"route="demo",version="sim-small",arm="stable""#;
    assert_eq!(
        m[&format!("gen_ai_server_time_to_first_token_seconds_count{{{demo}}}")],
        2.0
    );
    assert_eq!(
        m[r#"sluice_guardrail_actions_total{version="g-echo",arm="stable",stage="output",rule="mask-emails",action="redact"}"#],
        1.0
    );

    // A rollout shows its weight, step and, after a look, the judge's e-values.
    let r = start(&app, "chat", "gpt-4-1", "hold").await;
    let id = r["id"].as_str().unwrap();
    for _ in 0..10 {
        app.chat_raw(&key, chat_body("chat", json!({})))
            .await
            .bytes()
            .await
            .unwrap();
    }
    // The judge's first look after the traffic: its e-values appear in the scrape.
    let e_value = format!("sluice_judge_e_value{{rollout=\"{id}\",gate=\"error_rate\"}}");
    let m = eventually("the judge's e-values in /metrics", || async {
        let m = scrape(&app).await;
        m.contains_key(&e_value).then_some(m)
    })
    .await;
    assert_eq!(
        m[&format!("sluice_rollout_weight_ratio{{rollout=\"{id}\",route=\"chat\"}}")],
        0.3
    );
    assert_eq!(
        m[&format!(
            "sluice_rollout_state{{rollout=\"{id}\",route=\"chat\",state=\"progressing\"}}"
        )],
        1.0
    );
    assert!(m.contains_key(&format!(
        "sluice_judge_e_value{{rollout=\"{id}\",gate=\"error_rate\"}}"
    )));
    assert_eq!(
        m[&format!("sluice_judge_threshold{{rollout=\"{id}\"}}")],
        100.0
    );
    let stable = m[&format!("sluice_requests_total{{{chat},outcome=\"ok\"}}")];
    let canary = m
        .get(r#"sluice_requests_total{route="chat",version="gpt-4-1",arm="canary",outcome="ok"}"#)
        .copied()
        .unwrap_or(0.0);
    assert_eq!(stable + canary, 13.0, "the series moved with the traffic");
    app.wait_written(16).await;
    assert!(scrape(&app).await["sluice_records_written_total"] >= 16.0);
}
