//! Durability: SIGKILL a real `sluice serve` mid-rollout and start it again, on SQLite and
//! PostgreSQL; the rollout is where it was and an aborted canary stays aborted.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[database]
url = "sqlite://DB_PATH"

[providers.sim]
kind = "mock"

[versions.v1]
provider = "sim"
model = "sim-v1"
mock = { ttft_ms = 1, tokens_per_s = 10000, output_tokens = 5 }
[versions.v2]
provider = "sim"
model = "sim-v2"
mock = { ttft_ms = 1, tokens_per_s = 10000, output_tokens = 5 }

[routes.chat]
stable = "v1"
[routes.other]
stable = "v1"
"#;

const POLICY: &str = r#"
interval = "100ms"
max_step_hold = "1h"
sticky = "user"

[[steps]]
weight = 10
hold = "200ms"
min_requests = 1

[[steps]]
weight = 40
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2
"#;

struct Sluice {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Sluice {
    /// On port 0 (the config's `listen`): the port is the one its log names.
    async fn start(dir: &std::path::Path, db_url: Option<&str>) -> Self {
        // Emptied first: what a killed predecessor logged names its own port.
        let log = dir.join("sluice.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["serve", "--config"])
            .arg(dir.join("sluice.toml"))
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SLUICE_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(url) = db_url {
            command.env("SLUICE_DATABASE_URL", url);
        }
        let mut child = command.spawn().unwrap();
        let base = listening_base(&mut child, &log).await;
        let http = http_client();
        let health = format!("{base}/healthz");
        eventually("sluice to answer", || async {
            http.get(&health).send().await.is_ok().then_some(())
        })
        .await;
        Self { child, base, http }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let response = r.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// The arm each of 60 users gets on `route`.
    async fn arms(&self, key: &str, route: &str) -> Vec<String> {
        let mut arms = Vec::new();
        for u in 0..60 {
            let r = self
                .http
                .post(format!("{}/v1/chat/completions", self.base))
                .bearer_auth(key)
                .json(&chat_body(route, json!({"user": format!("user-{u}")})))
                .send()
                .await
                .unwrap();
            arms.push(headers_of(&r)["x-sluice-arm"].clone());
        }
        arms
    }

    fn kill(mut self) {
        // SIGKILL: no graceful shutdown, no flush.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// sluice started on a fresh directory (config, `policies/steps.toml`) and database, with
/// workspace `acme`, a key of it, and a rollout of `chat` to `v2` under `steps`:
/// (the directory, the process, the key, the rollout id).
async fn started(db_url: Option<&str>) -> (tempfile::TempDir, Sluice, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    std::fs::write(
        dir.path().join("sluice.toml"),
        CONFIG.replace("DB_PATH", &db.display().to_string()),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/steps.toml"), POLICY).unwrap();
    let s = Sluice::start(dir.path(), db_url).await;
    s.admin(Method::POST, "/workspaces", Some(json!({"id": "acme"})))
        .await;
    let key = s.admin(Method::POST, "/workspaces/acme/keys", None).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .admin(
            Method::POST,
            "/rollouts",
            Some(json!({"route": "chat", "canary": "v2", "policy": "steps"})),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_owned();
    (dir, s, key, id)
}

async fn rollout_survives_sigkill(db_url: Option<String>) {
    let (dir, s, key, id) = started(db_url.as_deref()).await;
    let other = s
        .admin(
            Method::POST,
            "/rollouts",
            Some(json!({"route": "other", "canary": "v2", "policy": "steps"})),
        )
        .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    s.admin(Method::POST, &format!("/rollouts/{other_id}/abort"), None)
        .await;
    s.admin(
        Method::PUT,
        &format!("/rollouts/{id}/pins/vip"),
        Some(json!({"arm": "canary"})),
    )
    .await;

    // Let the judge move it to its second step.
    let started = Instant::now();
    let before = loop {
        s.arms(&key, "chat").await;
        let v = s.admin(Method::GET, &format!("/rollouts/{id}"), None).await;
        if v["step"] == 1 {
            break v;
        }
        assert!(started.elapsed() < PATIENCE, "never advanced: {v:#}");
    };
    let arms_before = s.arms(&key, "chat").await;
    assert!(arms_before.iter().any(|a| a == "canary") && arms_before.iter().any(|a| a == "stable"));
    s.kill();

    let s = Sluice::start(dir.path(), db_url.as_deref()).await;
    let after = s.admin(Method::GET, &format!("/rollouts/{id}"), None).await;
    for field in [
        "state",
        "step",
        "weight",
        "started_at_ms",
        "step_started_at_ms",
        "stable",
        "canary",
    ] {
        assert_eq!(
            after[field], before[field],
            "{field} changed across the restart"
        );
    }
    assert_eq!(after["pins"], json!({"vip": "canary"}));
    assert_eq!(
        s.arms(&key, "chat").await,
        arms_before,
        "same salt: every user keeps its arm"
    );
    let aborted = s
        .admin(Method::GET, &format!("/rollouts/{other_id}"), None)
        .await;
    assert_eq!(aborted["state"], "aborted");
    assert!(
        s.arms(&key, "other").await.iter().all(|a| a == "stable"),
        "an aborted canary stays off"
    );
    let events = s
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "pinned", "advanced"]);
    s.kill();
}

/// The rollout's policy edited from two steps to one while it stands at its second step,
/// then a restart: the rollout keeps the policy it started with (stored with it), and the
/// edit applies to the next rollout.
async fn an_edited_policy_waits_for_the_next_rollout(db_url: Option<String>) {
    let (dir, s, key, id) = started(db_url.as_deref()).await;
    let policy_path = dir.path().join("policies/steps.toml");
    let started = Instant::now();
    let before = loop {
        s.arms(&key, "chat").await;
        let v = s.admin(Method::GET, &format!("/rollouts/{id}"), None).await;
        if v["step"] == 1 {
            break v;
        }
        assert!(started.elapsed() < PATIENCE, "never advanced: {v:#}");
    };
    assert_eq!(
        (&before["steps"], &before["weight"]),
        (&json!(2), &json!(40.0))
    );

    // The second step (an hour's hold) is cut from the file while the rollout stands on it.
    let one_step = POLICY.replace(
        "[[steps]]\nweight = 40\nhold = \"1h\"\nmin_requests = 1000000\n",
        "",
    );
    assert_ne!(one_step, POLICY);
    std::fs::write(&policy_path, &one_step).unwrap();
    s.kill();

    let s = Sluice::start(dir.path(), db_url.as_deref()).await;
    // Wait for the restored rollout's first look (or for it to end, which is the bug).
    let started = Instant::now();
    let after = loop {
        let v = s.admin(Method::GET, &format!("/rollouts/{id}"), None).await;
        if v["state"] != "progressing" || !v["last_decision"].is_null() {
            break v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the judge never looked: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (
            &after["state"],
            &after["step"],
            &after["steps"],
            &after["weight"]
        ),
        (&json!("progressing"), &json!(1), &json!(2), &json!(40.0)),
        "the rollout keeps the policy it started with: {after:#}"
    );
    assert_eq!(after["inconclusive"], false, "{after:#}");
    assert_eq!(after["last_decision"]["kind"], "hold", "{after:#}");
    let why = after["last_decision"]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("step 2 of 2"),
        "judged by the stored policy: {why}"
    );
    let kinds: Vec<String> = s
        .admin(Method::GET, &format!("/rollouts/{id}/events"), None)
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["started", "advanced"]);

    // The edited file is what the next rollout runs under.
    let next = s
        .admin(
            Method::POST,
            "/rollouts",
            Some(json!({"route": "other", "canary": "v2", "policy": "steps"})),
        )
        .await;
    assert_eq!(next["steps"], 1, "{next:#}");
    s.kill();
}

#[tokio::test]
async fn an_edited_policy_waits_for_the_next_rollout_on_sqlite() {
    an_edited_policy_waits_for_the_next_rollout(None).await;
}

#[tokio::test]
async fn an_edited_policy_waits_for_the_next_rollout_on_postgres() {
    if let Some(base) = pg_url() {
        an_edited_policy_waits_for_the_next_rollout(Some(fresh_pg_schema(&base).await)).await;
    }
}

#[tokio::test]
async fn a_rollout_survives_sigkill_on_sqlite() {
    rollout_survives_sigkill(None).await;
}

#[tokio::test]
async fn a_rollout_survives_sigkill_on_postgres() {
    if let Some(base) = pg_url() {
        rollout_survives_sigkill(Some(fresh_pg_schema(&base).await)).await;
    }
}
