//! `sluice demo`: a whole rollout in about a minute, on a temporary SQLite file and mock
//! versions, driven by sluice's own traffic and shown live in the terminal.
//!
//! Act 1: a canary that turns bad at its second step (errors 1 % → 8 %, answers 50 %
//! longer); the judge reverts it and the event log says why. Act 2: a healthy canary walks
//! every step to promotion. The admin API stays open at the printed URL throughout.
//!
//! The story stays on screen: the address, token and `curl` hint head every redraw, each
//! act's verdict stays (under that header) until the demo ends, and the end prints both
//! verdicts again with what to try next.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::app::Server;
use crate::cli::{render_events, render_rollout};
use crate::config::MockConfig;
use crate::state::AppState;

const ADMIN_TOKEN_VAR: &str = "SLUICE_ADMIN_TOKEN";
const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";
/// Concurrent simulated clients; each sends one request after another.
const CLIENTS: usize = 24;
/// How long each act may take before the demo gives up on it.
const ACT_LIMIT: Duration = Duration::from_secs(60);
/// On a terminal, how long act 1's verdict and event log stay before act 2 redraws.
const BETWEEN_ACTS: Duration = Duration::from_secs(5);

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 2000

[database]
url = "sqlite://DB_PATH"

[providers.sim]
kind = "mock"

[versions.assistant-v1]
provider = "sim"
model = "assistant-v1"
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }
mock = { ttft_ms = 30, tokens_per_s = 400, output_tokens = 40, error_rate = 0.01, jitter = 0.3 }

[versions.assistant-v2]
provider = "sim"
model = "assistant-v2"
price = { input_per_mtok = 2.00, output_per_mtok = 8.00 }
mock = { ttft_ms = 30, tokens_per_s = 400, output_tokens = 40, error_rate = 0.01, jitter = 0.3 }

[versions.assistant-v3]
provider = "sim"
model = "assistant-v3"
price = { input_per_mtok = 2.00, output_per_mtok = 8.00 }
mock = { ttft_ms = 28, tokens_per_s = 420, output_tokens = 40, error_rate = 0.01, jitter = 0.3 }

[routes.support]
stable = "assistant-v1"
"#;

const POLICY: &str = r#"
description = "demo: 10 → 25 → 50 %, short holds"
alpha = 0.01
interval = "1s"
max_step_hold = "2m"

[[steps]]
weight = 10
hold = "6s"
min_requests = 40

[[steps]]
weight = 25
hold = "6s"
min_requests = 80

[[steps]]
weight = 50
hold = "6s"
min_requests = 120

[gates.error_rate]
max_ratio = 1.2
[gates.latency_p95]
max_ratio = 1.3
max_ms = 5000
[gates.ttft_p95]
max_ratio = 1.3
[gates.tokens_per_request]
max_ratio = 1.1
[gates.cost_per_request]
max_ratio = 1.1
[gates.response_length]
max_ratio = 1.3
min_ratio = 0.5

[kill_switch]
error_rate = 0.5
min_requests = 20
window = "30s"
"#;

/// `sluice demo`: runs both acts on a temporary folder, drawing the progress in the terminal.
///
/// # Errors
/// When the temporary folder, its files or the server cannot be made.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let config_path = dir.path().join("sluice.toml");
    let db = dir.path().join("demo.db");
    std::fs::write(
        &config_path,
        CONFIG.replace("DB_PATH", &db.display().to_string()),
    )?;
    std::fs::create_dir(dir.path().join("policies"))?;
    std::fs::write(dir.path().join("policies/demo.toml"), POLICY)?;
    let env = |name: &str| match name {
        ADMIN_TOKEN_VAR => Some(DEMO_ADMIN_TOKEN.to_owned()),
        other => std::env::var(other).ok(),
    };
    let text = std::fs::read_to_string(&config_path)?;
    let settings =
        crate::settings::parse(&config_path, &text, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::build(settings).await?;
    let base = format!("http://{}", server.local_addr());
    let app = server.state();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    #[expect(
        clippy::disallowed_methods,
        reason = "the demo's own server; awaited when the demo ends"
    )]
    let serving = tokio::spawn(server.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let mut story = Story::new(&base);
    print!("{}", story.header());
    let http = reqwest::Client::new();
    let key = mint_key(&http, &base).await?;
    let traffic = Traffic::start(&http, &base, &key);

    let outcome = async {
        story.act("Act 1: assistant-v2 as the canary; it will turn bad at its second step.");
        println!("\n{}", story.acts.last().map_or("", String::as_str));
        let id = start_rollout(&http, &base, "assistant-v2").await?;
        let bad = watch(&http, &base, &id, &story, |view| {
            // The regression: once the rollout reaches its second step.
            if view["step"].as_u64() >= Some(1) && view["state"] == "progressing" {
                inject_regression(&app, "assistant-v2")
            } else {
                None
            }
        })
        .await?;
        story.verdict(verdict_line(1, "reverted", &bad));
        if bad["state"] != "rolled_back" {
            bail!("act 1 ended `{}` instead of rolled_back", bad["state"]);
        }
        println!(
            "\n{}\nIts event log:",
            story.verdicts.last().map_or("", String::as_str)
        );
        print!(
            "{}",
            render_events(
                &get(&http, &base, &format!("/rollouts/{id}/events")).await?,
                20
            )
        );
        if std::io::stdout().is_terminal() {
            println!(
                "\nAct 2 starts in {} s (the verdict stays at the top).",
                BETWEEN_ACTS.as_secs()
            );
            tokio::time::sleep(BETWEEN_ACTS).await;
        }

        story.act("Act 2: assistant-v3, a healthy canary, walks every step.");
        println!("\n{}", story.acts.last().map_or("", String::as_str));
        let id = start_rollout(&http, &base, "assistant-v3").await?;
        let good = watch(&http, &base, &id, &story, |_| None).await?;
        story.verdict(verdict_line(2, "promoted", &good));
        if good["state"] != "promoted" {
            bail!("act 2 ended `{}` instead of promoted", good["state"]);
        }
        println!("\nassistant-v3 is the stable version of `support` now. Its event log:");
        print!(
            "{}",
            render_events(
                &get(&http, &base, &format!("/rollouts/{id}/events")).await?,
                20
            )
        );
        Ok(())
    }
    .await;

    let sent = traffic.stop().await;
    let _ = stop_tx.send(());
    serving.await??;
    print!("{}", story.summary(sent, outcome.is_ok()));
    outcome
}

/// What stays on screen: the header, each act's title, and each act's verdict.
struct Story {
    base: String,
    acts: Vec<String>,
    verdicts: Vec<String>,
}

impl Story {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            acts: Vec::new(),
            verdicts: Vec::new(),
        }
    }

    fn act(&mut self, title: &str) {
        self.acts.push(title.to_owned());
    }

    fn verdict(&mut self, line: String) {
        self.verdicts.push(line);
    }

    /// The address, the token and a command to try, for the top of every screen.
    fn header(&self) -> String {
        let base = &self.base;
        format!(
            "sluice demo: gateway {base}/v1 · admin API {base}/admin/v1 · token {DEMO_ADMIN_TOKEN}\n\
             \x20 dashboard {base}/dashboard#token={DEMO_ADMIN_TOKEN}\n\
             \x20 try: curl -s '{base}/admin/v1/rollouts?pretty' -H 'Authorization: Bearer {DEMO_ADMIN_TOKEN}'\n"
        )
    }

    /// The header, then the verdicts so far and the act being played.
    fn top(&self) -> String {
        let mut out = self.header();
        for v in &self.verdicts {
            out.push_str(v);
            out.push('\n');
        }
        if let Some(act) = self.acts.get(self.verdicts.len()) {
            out.push_str(act);
            out.push('\n');
        }
        out.push('\n');
        out
    }

    /// The closing lines: both verdicts again, and what to try next.
    fn summary(&self, sent: u64, ok: bool) -> String {
        let mut out = format!(
            "\n── sluice demo: {} ──\n",
            if ok { "done" } else { "stopped" }
        );
        for v in &self.verdicts {
            out.push_str(v);
            out.push('\n');
        }
        // `cargo run` puts no `sluice` on PATH: name the binary that just ran.
        let bin = std::env::current_exe()
            .ok()
            .and_then(|p| {
                let cwd = std::env::current_dir().ok()?;
                let shown = p.strip_prefix(&cwd).map(|r| format!("./{}", r.display()));
                Some(shown.unwrap_or_else(|_| p.display().to_string()))
            })
            .unwrap_or_else(|| "sluice".into());
        out.push_str(&format!(
            "{sent} requests sent (the demo's gateway and its temporary database are gone now).\n\n\
             Try it yourself, with your own rollout of a healthy and a bad canary:\n\
             \x20 SLUICE_ADMIN_TOKEN=dev-admin-token {bin} serve      (then follow the tutorial in README.md)\n\
             \x20 {bin} load --route chat --rps 20 --key …\n\
             \x20 {bin} rollout start --route chat --canary chat-v2 --policy quickstart\n"
        ));
        out
    }
}

/// "Act 1 (expected: reverted): rolled_back after 23 s — errors 8.1 % vs 1.0 % …".
fn verdict_line(act: u8, expected: &str, view: &Value) -> String {
    let ran = match (view["started_at_ms"].as_i64(), view["ended_at_ms"].as_i64()) {
        (Some(a), Some(b)) if b >= a => format!(" after {} s", (b - a) / 1000),
        _ => String::new(),
    };
    let reasons: Vec<&str> = view["judge"]["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let why = if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    };
    format!(
        "Act {act} (expected: {expected}): {} {} → {}{ran}{why}",
        view["state"].as_str().unwrap_or("?"),
        view["stable"].as_str().unwrap_or("?"),
        view["canary"].as_str().unwrap_or("?"),
    )
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Value> {
    let r = http
        .get(format!("{base}/admin/v1{path}"))
        .bearer_auth(DEMO_ADMIN_TOKEN)
        .send()
        .await?;
    Ok(r.error_for_status()?.json().await?)
}

async fn mint_key(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let admin = |path: &str| {
        http.post(format!("{base}/admin/v1{path}"))
            .bearer_auth(DEMO_ADMIN_TOKEN)
    };
    admin("/workspaces")
        .json(&json!({"id": "demo"}))
        .send()
        .await?
        .error_for_status()?;
    let v: Value = admin("/workspaces/demo/keys")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["key"].as_str().unwrap_or_default().to_owned())
}

async fn start_rollout(http: &reqwest::Client, base: &str, canary: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/admin/v1/rollouts"))
        .bearer_auth(DEMO_ADMIN_TOKEN)
        .json(&json!({"route": "support", "canary": canary, "policy": "demo"}))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("starting the rollout failed: {status} {v}");
    }
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

/// Errors 1 % → 8 %, answers 50 % longer; the line to show when it was injected just now.
fn inject_regression(app: &AppState, version: &str) -> Option<String> {
    let v = app.catalog.version(version)?;
    let mock = v.mock.as_ref()?;
    let now = mock.load();
    if now.error_rate >= 0.08 {
        return None;
    }
    let worse = MockConfig {
        error_rate: 0.08,
        output_tokens: now.output_tokens * 3 / 2,
        ..(**now).clone()
    };
    mock.store(Arc::new(worse));
    Some(format!(
        ">>> injected a regression into {version}: errors 1 % → 8 %, answers 50 % longer"
    ))
}

/// Redraws the rollout every second until it ends; returns its final view.
async fn watch(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    story: &Story,
    mut on_view: impl FnMut(&Value) -> Option<String>,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut notes = String::new();
    loop {
        let view = get(http, base, &format!("/rollouts/{id}")).await?;
        if let Some(note) = on_view(&view) {
            if !tty {
                println!("{note}");
            }
            notes.push_str(&note);
            notes.push('\n');
        }
        let events = get(http, base, &format!("/rollouts/{id}/events")).await?;
        let mut out = std::io::stdout().lock();
        if tty {
            // Clear the screen and draw the story so far, then the live view.
            let _ = write!(
                out,
                "\x1b[2J\x1b[H{}{notes}{}",
                story.top(),
                render_rollout(&view)
            );
            let _ = write!(out, "{}", render_events(&events, 6));
        } else {
            let e = &view["judge"]["e_global"];
            let _ = writeln!(
                out,
                "  t={:>4.1}s state {} {} weight {}% E={} canary requests {}",
                started.elapsed().as_secs_f64(),
                view["state"].as_str().unwrap_or("?"),
                crate::cli::step_of(&view),
                view["weight"],
                e.as_f64().map_or("-".into(), |e| format!("{e:.2}")),
                view["arms"]["canary"]["requests"],
            );
        }
        let _ = out.flush();
        drop(out);
        if view["state"] != "progressing" && view["state"] != "paused" {
            return Ok(view);
        }
        if started.elapsed() > ACT_LIMIT {
            bail!(
                "rollout {id} did not end within {ACT_LIMIT:?}: {}",
                view["state"]
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Simulated clients sending chat requests, streamed and not, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(http: &reqwest::Client, base: &str, key: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        #[expect(
            clippy::disallowed_methods,
            reason = "the demo's traffic clients, stopped and awaited by `Traffic::stop`"
        )]
        let tasks = (0..CLIENTS)
            .map(|client| {
                let (http, url, key) = (
                    http.clone(),
                    format!("{base}/v1/chat/completions"),
                    key.to_owned(),
                );
                let (stop, sent) = (stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let body = json!({
                            "model": "support", "stream": (client + i as usize).is_multiple_of(3),
                            "user": format!("user-{}", (client as u64 * 7919 + i) % 500),
                            "messages": [{"role": "user", "content": "Where is my order?"}],
                        });
                        if let Ok(r) = http.post(&url).bearer_auth(&key).json(&body).send().await {
                            let _ = r.bytes().await;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self { stop, sent, tasks }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_demo_policy_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.toml");
        std::fs::write(&path, super::POLICY).unwrap();
        let policy = crate::rollout::policy::load_policy(Path::new(&path)).unwrap();
        assert_eq!(policy.steps.len(), 3);
        assert_eq!(policy.interval, std::time::Duration::from_secs(1));
    }
}
