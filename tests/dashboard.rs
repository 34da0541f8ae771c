//! The dashboard in a real browser: sluice in-process with two built-in mock versions, a
//! live rollout with traffic, gates and shadow pairs, and Debian's Chromium headless loading
//! `GET /dashboard#token=…`. Asserts what the page shows, takes a screenshot, and checks the
//! browser logged no console errors. Without Chromium the browser half is skipped, visibly
//! (`tests/common/skip.rs`), except under CI (`CI` set, not `false`), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::app::Server;
use tokio::sync::oneshot;

#[path = "common/skip.rs"]
mod skip;

const ADMIN_TOKEN: &str = "dash-admin-token";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 2000

[database]
url = "DB_URL"

[providers.sim]
kind = "mock"

[versions.sim-a]
provider = "sim"
model = "sim-a"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }
mock = { ttft_ms = 8, tokens_per_s = 4000, output_tokens = 20, jitter = 0.2 }

[versions.sim-b]
provider = "sim"
model = "sim-b"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }
mock = { ttft_ms = 8, tokens_per_s = 4000, output_tokens = 22, jitter = 0.2 }

[routes.chat]
stable = "sim-a"

[routes.batch]
stable = "sim-a"
"#;

/// 10 % until 10 canary requests, then 50 % for an hour: the weight chart has a step, and
/// the rollout stays live while the browser looks. Every stable request is shadowed.
const POLICY: &str = r#"
description = "dashboard test: 10 → 50 %"
alpha = 0.01
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 10
hold = "200ms"
min_requests = 5

[[steps]]
weight = 50
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2
[gates.latency_p95]
max_ratio = 2.0
[gates.response_length]
max_ratio = 1.5
min_ratio = 0.5

[shadow]
rate = 1.0
from = "stable"
to = "canary"
max_usd_per_hour = 100.0
keep = 50
skip_tools = true
"#;

fn env(name: &str) -> Option<String> {
    (name == "SLUICE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_owned())
}

/// The Chromium binary, or `None` (skip, visibly; a failure under CI) when it is absent.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(
        std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if path.exists() {
        return Some(path);
    }
    skip::skip(&format!(
        "no Chromium at {} (apt-get install -y chromium, or set SLUICE_CHROMIUM)",
        path.display()
    ));
    None
}

struct Gateway {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/dash.toml"), POLICY).unwrap();
        let db = format!("sqlite://{}", dir.path().join("sluice.db").display());
        let text = CONFIG.replace("DB_URL", &db);
        let path = dir.path().join("sluice.toml");
        let settings = sluice::settings::parse(&path, &text, &env).expect("test config is valid");
        let server = Server::build(settings).await.expect("sluice starts");
        let base = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel();
        #[expect(
            clippy::disallowed_methods,
            reason = "the gateway under test, stopped with the test"
        )]
        let _serving = tokio::spawn(server.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base,
            http: reqwest::Client::new(),
            stop: Some(stop),
            _dir: dir,
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn chat(&self, key: &str, i: usize) {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": format!("Question {i}: where does this request go?")}]});
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let _ = response.bytes().await.unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs Chromium headless on `url` with `args`; returns (stdout, stderr).
async fn run_chromium(bin: &Path, profile: &Path, url: &str, args: &[&str]) -> (String, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Lines in Chromium's log that come from the page's console. The dashboard writes nothing to
/// the console, and Chromium logs `console.error` as `INFO:CONSOLE` just like `console.log`,
/// so every console line counts: errors, uncaught exceptions, CSP refusals, failed loads.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains(":CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Content Security Policy")
                || l.contains("Failed to load resource")
        })
        .collect()
}

#[test]
fn console_lines_of_chromium_are_recognised() {
    // As Chromium 156 (Debian bookworm) writes them with --enable-logging=stderr --v=0.
    let log = "[1:1:1122/020202.058939:WARNING:ui/base/idle/idle_linux.cc:111] None of the known D-Bus ScreenSaver services could be used.\n\
        [1:1:1122/020202.421016:INFO:CONSOLE:1] \"boom\", source: http://127.0.0.1:1/dashboard (1)\n\
        [1:1:1122/020202.440565:INFO:CONSOLE:1] \"Uncaught TypeError: x\", source: http://127.0.0.1:1/dashboard (1)";
    assert_eq!(console_errors(log).len(), 2);
}

/// The text of the `<tr …>` element of the dumped DOM that carries `marker` in its tag.
fn row_with<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind("<tr")?;
    let end = dom[at..].find("</tr>")? + at;
    Some(&dom[start..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_rollout_in_chromium() {
    let gw = Gateway::start().await;

    // The page itself: no credential, self-contained, locked down.
    let response = gw
        .http
        .get(format!("{}/dashboard", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(
        html.contains("<script>") && html.contains("<style>"),
        "assets are inlined"
    );
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(
            !html.contains(external),
            "the page loads nothing external ({external})"
        );
    }
    // Its data is not public: the admin API still wants the token.
    let anonymous = gw
        .http
        .get(format!("{}/admin/v1/rollouts", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let Some(chromium) = chromium() else { return };

    // A workspace, a key, a past rollout (aborted) and a live one with traffic.
    gw.admin(
        reqwest::Method::POST,
        "/workspaces",
        Some(json!({"id": "acme"})),
    )
    .await;
    let key = gw
        .admin(reqwest::Method::POST, "/workspaces/acme/keys", None)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let past = gw
        .admin(
            reqwest::Method::POST,
            "/rollouts",
            Some(json!({"route": "batch", "canary": "sim-b", "policy": "dash"})),
        )
        .await;
    let past_id = past["id"].as_str().unwrap().to_owned();
    gw.admin(
        reqwest::Method::POST,
        &format!("/rollouts/{past_id}/abort"),
        None,
    )
    .await;
    let live = gw
        .admin(
            reqwest::Method::POST,
            "/rollouts",
            Some(json!({"route": "chat", "canary": "sim-b", "policy": "dash"})),
        )
        .await;
    let id = live["id"].as_str().unwrap().to_owned();

    // Traffic until both arms have figures, the judge has advanced to 50 % and reported on
    // every gate, and shadow pairs are stored.
    let started = Instant::now();
    let mut sent = 0usize;
    let view = loop {
        let batch: Vec<_> = (sent..sent + 8).map(|i| gw.chat(&key, i)).collect();
        futures_util::future::join_all(batch).await;
        sent += 8;
        let view = gw
            .admin(reqwest::Method::GET, &format!("/rollouts/{id}"), None)
            .await;
        let pairs = gw
            .admin(
                reqwest::Method::GET,
                &format!("/rollouts/{id}/shadow?limit=5"),
                None,
            )
            .await;
        let ready = view["step"] == 1
            && view["arms"]["canary"]["requests"].as_u64() >= Some(20)
            && view["arms"]["stable"]["requests"].as_u64() >= Some(20)
            && view["judge"]["gates"]
                .as_array()
                .is_some_and(|g| g.len() == 3)
            && pairs["data"].as_array().is_some_and(|p| !p.is_empty());
        if ready && sent >= 320 {
            break view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rollout never got figures: {view}"
        );
    };
    assert_eq!(view["state"], "progressing", "{view}");
    // Wait until the judge has looked at every request sent, so its report no longer
    // changes, then take that report as the expectation.
    let started = Instant::now();
    let view = loop {
        let view = gw
            .admin(reqwest::Method::GET, &format!("/rollouts/{id}"), None)
            .await;
        let seen = |arm: &str| view["judge"][format!("{arm}_requests")].as_u64();
        let served = |arm: &str| view["arms"][arm]["requests"].as_u64();
        if seen("stable") == served("stable") && seen("canary") == served("canary") {
            break view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the judge never caught up with the traffic: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gates: Vec<(String, String)> = view["judge"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["gate"].as_str().unwrap().to_owned(),
                g["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let tmp = tempfile::tempdir().unwrap();
    let url = format!("{}/dashboard#token={ADMIN_TOKEN}", gw.base);

    // 1. The DOM after the page has loaded and polled.
    let (dom, stderr) =
        run_chromium(&chromium, &tmp.path().join("p1"), &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-auth=\"ok\""),
        "the page took the token from #token=: {dom}"
    );
    assert!(
        dom.contains("updated "),
        "the page says when it last polled"
    );
    assert!(
        !dom.contains("data-state=\"error\""),
        "the page shows an error: {dom}"
    );
    // The live card: id, both arms' versions, each gate and its verdict, the event log, pairs.
    let card = &dom[dom
        .find(&format!("<article class=\"card\" data-rollout=\"{id}\""))
        .unwrap_or_else(|| panic!("no card for {id}: {dom}"))..];
    let card = &card[..card.find("</article>").unwrap()];
    assert!(
        card.contains(&format!(">{id}<")),
        "the card names the rollout"
    );
    for (arm, version) in [("stable", "sim-a"), ("canary", "sim-b")] {
        let th = &card[card.find(&format!("data-arm=\"{arm}\"")).expect(arm)..];
        assert!(
            th[..th.find("</th>").unwrap()].contains(version),
            "{arm} arm shows {version}"
        );
    }
    for (gate, verdict) in &gates {
        let row = row_with(card, &format!("data-gate=\"{gate}\""))
            .unwrap_or_else(|| panic!("no row for gate {gate}: {card}"));
        let label = verdict.replace('_', " ");
        assert!(
            row.contains(&format!("data-verdict=\"{verdict}\""))
                && row.contains(&format!(">{label}<")),
            "gate {gate} should show {verdict}: {row}"
        );
        assert!(
            row.contains("×") || row.contains("–"),
            "an effect cell: {row}"
        );
    }
    let started_row = row_with(card, "data-event=\"started\"").expect("the started event");
    assert!(started_row.contains("operator"), "{started_row}");
    assert!(
        row_with(card, "data-event=\"advanced\"").is_some(),
        "the advance to 50 %"
    );
    assert!(card.contains("<svg"), "the weight chart");
    assert!(card.contains("data-shadow-pair="), "recent shadow pairs");
    assert!(
        card.contains("where does this request go?"),
        "a pair's request"
    );
    // Routes and past rollouts.
    for route in ["data-route=\"chat\"", "data-route=\"batch\""] {
        assert!(dom.contains(route), "{route}");
    }
    let past_row =
        row_with(&dom, &format!("data-rollout=\"{past_id}\"")).expect("the past rollout");
    assert!(past_row.contains("aborted"), "{past_row}");
    // No console errors, uncaught exceptions, CSP refusals or failed loads.
    let errors = console_errors(&stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));

    // 2. A screenshot, for people.
    let shot = std::env::var_os("SLUICE_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("dashboard.png"));
    let (_, stderr) = run_chromium(
        &chromium,
        &tmp.path().join("p2"),
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1600",
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1400, 1600));
    assert!(
        png.len() > 30_000,
        "a page with content, not a blank: {} bytes",
        png.len()
    );
    let errors = console_errors(&stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));

    // 3. A wrong token sends the page back to its sign-in form.
    let bad = format!("{}/dashboard#token=wrong", gw.base);
    let (dom, stderr) =
        run_chromium(&chromium, &tmp.path().join("p3"), &bad, &["--dump-dom"]).await;
    assert!(dom.contains("data-auth=\"none\""), "{dom}");
    assert!(dom.contains("refused the token (401)"), "{dom}");
    let unexpected: Vec<_> = console_errors(&stderr)
        .into_iter()
        .filter(|l| !l.contains("status of 401"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "console errors besides the 401:\n{}",
        unexpected.join("\n")
    );
}
