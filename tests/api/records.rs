//! Measurement records: live stats per version, batched writes, nothing lost on SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn route_stats_show_what_each_version_served() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    for _ in 0..3 {
        assert_eq!(
            app.chat_raw(&key, chat_body("chat", json!({})))
                .await
                .status(),
            200
        );
    }
    let stats = app.stats("chat").await;
    let v = &stats["versions"]["gpt-4o"];
    assert_eq!(v["requests"], 3);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["prompt_tokens"], 3 * OK_USAGE.0);
    assert_eq!(v["completion_tokens"], 3 * OK_USAGE.1);
    let cost = 3.0 * (OK_USAGE.0 as f64 * 2.5 + OK_USAGE.1 as f64 * 10.0) / 1e6;
    assert!((v["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9, "{v}");
    assert_eq!(v["latency_ms"]["count"], 3);
    assert!(v["latency_ms"]["p95"].as_f64().unwrap() > 0.0);
    assert_eq!(
        v["response_chars"]["p50"].as_f64().map(|c| c.round()),
        Some(OK_TEXT.len() as f64)
    );

    assert_eq!(
        app.chat_raw(&key, chat_body("e500", json!({})))
            .await
            .status(),
        500
    );
    let e = &app.stats("e500").await["versions"]["v-500"];
    assert_eq!(
        (e["requests"].as_u64(), e["errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(e["outcomes"]["upstream_5xx"], 1);
    let (status, _) = app.admin(Method::GET, "/routes/nope/stats", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn every_record_is_flushed_when_the_gateway_stops() {
    let mut app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let route = if i % 2 == 0 { "chat" } else { "demo" };
        let stream = i % 4 < 2;
        calls.push(app.chat_raw(&key, chat_body(route, json!({"stream": stream}))));
    }
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    app.stop().await;
    let store = app.store().await;
    assert_eq!(store.count_records().await.unwrap(), 40);
    let records = store.records(None, 100).await.unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.workspace == "acme" && r.outcome == sluice::types::Outcome::Ok)
    );
    assert_eq!(records.iter().filter(|r| r.stream).count(), 20);
    assert_eq!(
        records.iter().filter(|r| r.version == "sim-small").count(),
        20
    );
}

const SUBPROCESS_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 60000

[database]
url = "sqlite://DB_PATH"

[providers.sim]
kind = "mock"

[providers.real]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "SIGTERM_TEST_UPSTREAM_KEY"
timeout_ms = 2000

[providers.gated]
kind = "openai"
base_url = "UPSTREAM_URL"
api_key_env = "SIGTERM_TEST_UPSTREAM_KEY"
timeout_ms = 600000

[versions.slow]
provider = "gated"
model = "held"
price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }

[versions.unreachable]
provider = "real"
model = "gpt-4o"

[routes.slow]
stable = "slow"

[routes.unreachable]
stable = "unreachable"
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let config = dir.path().join("sluice.toml");
    // The slow route's calls wait at this mock's gate until the test opens it.
    let upstream = MockUpstream::start().await;
    std::fs::write(
        &config,
        SUBPROCESS_CONFIG
            .replace("DB_PATH", &db.display().to_string())
            .replace("UPSTREAM_URL", &upstream.url),
    )
    .unwrap();
    let port = free_port();
    let secret = "sk-upstream-never-logged-42";
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SIGTERM_TEST_UPSTREAM_KEY", secret)
        .env("SLUICE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = http_client();
    let health = format!("{base}/healthz");
    eventually("sluice to start", || async {
        http.get(&health).send().await.is_ok().then_some(())
    })
    .await;
    let admin = |m: Method, path: &str| {
        http.request(m, format!("{base}/admin/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    admin(Method::POST, "/workspaces")
        .json(&json!({"id": "acme"}))
        .send()
        .await
        .unwrap();
    let key: Value = admin(Method::POST, "/workspaces/acme/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();

    let status = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("unreachable", json!({})))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 502);

    // Ten requests in flight, held upstream, then SIGTERM.
    let mut in_flight = Vec::new();
    for i in 0..10 {
        let request = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("slow", json!({"stream": i % 2 == 0})));
        #[expect(
            clippy::disallowed_methods,
            reason = "the test's own clients, all awaited below"
        )]
        let client = tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            (status, body)
        });
        in_flight.push(client);
    }
    eventually("10 requests held upstream", || async {
        (upstream.held() >= 10).then_some(())
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Shutdown has begun once the listener is closed; only then let the requests finish.
    let addr = format!("127.0.0.1:{port}");
    eventually("the listener closed after SIGTERM", || async {
        tokio::net::TcpStream::connect(&addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    upstream.open_gate();

    for call in in_flight {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"held\""), "{body}");
    }
    let exit = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status, log)
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "exit {:?}\n{}", exit.0, exit.1);
    assert!(!exit.1.contains(secret), "the upstream key is in the log");
    assert!(!exit.1.contains(&key), "a gateway key is in the log");

    let store = sluice::store::Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(
        store.count_records().await.unwrap(),
        11,
        "10 slow + 1 unreachable"
    );
    let records = store.records(Some("slow"), 20).await.unwrap();
    assert!(records.iter().all(
        |r| r.outcome == sluice::types::Outcome::Ok && r.usage.completion_tokens == OK_USAGE.1
    ));
}
