//! Measurement records: live stats per version, batched writes, nothing lost on SIGTERM.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

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

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_loses_no_record() {
    sigterm_drains(false).await;
}

/// Pinned to one CPU, `sluice serve` runs tokio's single-threaded runtime (the bench rig's
/// set-up, and a container with a one-CPU quota): the same drain, streams and records.
#[tokio::test]
async fn on_one_cpu_the_single_threaded_runtime_serves_and_drains_the_same() {
    sigterm_drains(true).await;
}

async fn sigterm_drains(one_cpu: bool) {
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
    let secret = "sk-upstream-never-logged-42";
    let log = dir.path().join("sluice.log");
    let out = std::fs::File::create(&log).unwrap();
    // `taskset` execs sluice in its own process, so the pid stays sluice's. The first CPU
    // this test may run on (a container may not have CPU 0).
    let mut command = if one_cpu {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Linux names the CPUs a process may use");
        let first = allowed.trim().split([',', '-']).next().unwrap().to_owned();
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", &first, env!("CARGO_BIN_EXE_sluice")]);
        taskset
    } else {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SIGTERM_TEST_UPSTREAM_KEY", secret)
        .env("SLUICE_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let base = listening_base(&mut child, &log).await;
    let started = std::fs::read_to_string(&log).unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flavour = if one_cpu || cpus == 1 {
        "single-threaded"
    } else {
        "multi-threaded"
    };
    assert!(
        started.contains(flavour),
        "expected a {flavour} runtime ({cpus} CPUs):\n{started}"
    );
    let http = http_client();
    let health = format!("{base}/healthz");
    eventually("sluice to start", || async {
        http.get(&health).send().await.is_ok().then_some(())
    })
    .await;
    let key = subprocess_key(&http, &base, "acme").await;

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
    let addr = base.trim_start_matches("http://").to_owned();
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
        (status, std::fs::read_to_string(&log).unwrap())
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

/// A request still running when `shutdown_grace_ms` is over is cut, and its record is
/// still written (outcome `client_disconnected`) before the record writer stops.
#[tokio::test]
async fn a_request_cut_at_the_grace_limit_is_still_recorded() {
    cut_at_the_grace_limit(false).await;
}

/// The same over HTTP/2, where hyper runs each request in a task of its own: those tasks
/// must be cut and awaited too.
#[tokio::test]
async fn an_http2_request_cut_at_the_grace_limit_is_still_recorded() {
    cut_at_the_grace_limit(true).await;
}

async fn cut_at_the_grace_limit(http2: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let config = dir.path().join("sluice.toml");
    // The gate never opens: every call to the slow route outlives the grace period.
    let upstream = MockUpstream::start().await;
    std::fs::write(
        &config,
        SUBPROCESS_CONFIG
            .replace("shutdown_grace_ms = 60000", "shutdown_grace_ms = 300")
            .replace("DB_PATH", &db.display().to_string())
            .replace("UPSTREAM_URL", &upstream.url),
    )
    .unwrap();
    let log = dir.path().join("sluice.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SIGTERM_TEST_UPSTREAM_KEY", "sk-upstream")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let base = listening_base(&mut child, &log).await;
    let http = http_client();
    let http = if http2 {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    } else {
        http
    };
    let key = subprocess_key(&http, &base, "acme").await;
    let mut in_flight = Vec::new();
    for i in 0..6 {
        let request = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("slow", json!({"stream": i % 2 == 0})));
        #[expect(
            clippy::disallowed_methods,
            reason = "the test's own clients, all awaited below"
        )]
        let client = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
        in_flight.push(client);
    }
    eventually("6 requests held upstream", || async {
        (upstream.held() >= 6).then_some(())
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        (status, std::fs::read_to_string(&log).unwrap())
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "exit {:?}\n{}", exit.0, exit.1);
    assert!(exit.1.contains("grace period over"), "{}", exit.1);
    for call in in_flight {
        // Cut: the connection closes without an answer.
        assert!(call.await.unwrap().is_err());
    }
    let store = sluice::store::Store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let records = store.records(Some("slow"), 20).await.unwrap();
    assert_eq!(
        records.len(),
        6,
        "every cut request is recorded:\n{}",
        exit.1
    );
    assert!(
        records
            .iter()
            .all(|r| r.outcome == sluice::types::Outcome::ClientDisconnected)
    );
    assert!(!exit.1.contains("records dropped"), "{}", exit.1);
}

const STUCK_DB_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
record_queue = 16
shutdown_grace_ms = 5000

[database]
url = "DB_URL"

[providers.sim]
kind = "mock"

[versions.fast]
provider = "sim"
model = "sim-fast"
mock = { ttft_ms = 0, tokens_per_s = 1000000, output_tokens = 5 }

[routes.fast]
stable = "fast"
"#;

/// `sluice_records_written_total` and `sluice_records_dropped_total` from `/metrics`.
async fn record_counters(http: &reqwest::Client, base: &str) -> (u64, u64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    };
    (
        counter("sluice_records_written_total"),
        counter("sluice_records_dropped_total"),
    )
}

/// Polls `/metrics` until `done` holds, for at most 30 s.
async fn wait_for_counters(
    http: &reqwest::Client,
    base: &str,
    done: impl Fn((u64, u64)) -> bool,
) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counters = record_counters(http, base).await;
        if done(counters) || tokio::time::Instant::now() > deadline {
            return counters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_database_that_takes_no_writes_costs_records_but_never_requests() {
    sqlx::any::install_default_drivers();
    for (engine, db_url, _dir) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, STUCK_DB_CONFIG.replace("DB_URL", &db_url)).unwrap();
        let log = dir.path().join("sluice.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SLUICE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let base = listening_base(&mut child, &log).await;
        let http = http_client();
        let health = format!("{base}/healthz");
        eventually(&format!("sluice to answer on {engine}"), || async {
            http.get(&health).send().await.is_ok().then_some(())
        })
        .await;
        let key = subprocess_key(&http, &base, "acme").await;
        let chat = || {
            let request = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat_body("fast", json!({})));
            async move { request.send().await.unwrap().status() }
        };

        // One record through, so the writer is connected and idle.
        assert_eq!(chat().await, 200);
        assert_eq!(
            wait_for_counters(&http, &base, |(w, _)| w == 1).await,
            (1, 0),
            "{engine}"
        );

        // The database now takes no writes until we let go: the slowest disk there is.
        let mut holder = sqlx::AnyConnection::connect(&db_url).await.unwrap();
        let hold: &[&str] = if engine == "sqlite" {
            &["BEGIN IMMEDIATE"]
        } else {
            &["BEGIN", "LOCK TABLE requests IN EXCLUSIVE MODE"]
        };
        for sql in hold {
            sqlx::raw_sql(*sql).execute(&mut holder).await.unwrap();
        }

        // Every request is answered while the database is stuck: none waits for its record.
        const BURST: usize = 300;
        let statuses = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::stream::iter((0..BURST).map(|_| chat()))
                .buffer_unordered(16)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("requests waited for the stuck database");
        assert!(statuses.iter().all(|s| *s == 200), "{engine}");

        // The queue holds 16 and the writer's batch what it took before it got stuck (at most
        // a queueful when the batch began and another when it lingered); the rest are dropped
        // and counted, and nothing more was written.
        let (written, dropped) = record_counters(&http, &base).await;
        assert_eq!(written, 1, "{engine}: written while the database was stuck");
        assert!(
            dropped >= (BURST - 3 * 16) as u64 && dropped < BURST as u64,
            "{engine}: dropped {dropped} of {BURST} with a queue of 16"
        );

        // Let go: what was queued reaches the database, and every record is accounted for.
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .unwrap();
        let (written, dropped_after) =
            wait_for_counters(&http, &base, |(w, d)| w + d == BURST as u64 + 1).await;
        assert_eq!(dropped_after, dropped, "{engine}");
        assert_eq!(written + dropped, BURST as u64 + 1, "{engine}");
        let store = sluice::store::Store::connect(&db_url).await.unwrap();
        assert_eq!(store.count_records().await.unwrap(), written as i64);

        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exit.success(), "{engine}: exit {exit:?}");

        // The log says so, rate-limited: a handful of warnings (not one per record), whose
        // counts add up to the counter.
        let text = std::fs::read_to_string(&log).unwrap();
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("records dropped"))
            .collect();
        assert!(
            !warnings.is_empty() && warnings.len() <= 3,
            "{engine}: {} drop warnings:\n{text}",
            warnings.len()
        );
        let logged: u64 = warnings
            .iter()
            .map(|l| {
                let n = l.split(" dropped=").nth(1).expect("a dropped= field");
                n.split(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(logged, dropped, "{engine}: dropped as logged\n{text}");
        assert!(text.contains("server.record_queue"), "{engine}: {text}");
        store.close().await;
    }
}
