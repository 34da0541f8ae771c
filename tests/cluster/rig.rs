//! `Rig`: real `sluice serve` processes on one fresh PostgreSQL schema, in front of the
//! mock upstream of the API tests, with short cluster intervals so each test stays brief.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, AZURE_KEY, ENTRA_TOKEN, MockUpstream, PATIENCE, UPSTREAM_KEY, chat_body,
    config_toml, fresh_pg_schema, http_client, write_policies,
};

/// Short intervals for tests (the defaults are 1 s, 5 s, 250 ms, 5 s).
pub const HEARTBEAT_MS: u64 = 200;
pub const LEASE_MS: u64 = 1_500;
pub const FLUSH_MS: u64 = 100;
pub const REREAD_MS: u64 = 1_000;

/// Many small steps, each passed after a short hold: a rollout that keeps deciding.
pub const LADDER_POLICY: &str = r#"
description = "tests: a ladder of short steps"
alpha = 0.01
interval = "100ms"
max_step_hold = "1m"

[[steps]]
weight = 10
hold = "400ms"
min_requests = 5
[[steps]]
weight = 20
hold = "400ms"
min_requests = 5
[[steps]]
weight = 30
hold = "400ms"
min_requests = 5
[[steps]]
weight = 40
hold = "400ms"
min_requests = 5
[[steps]]
weight = 50
hold = "400ms"
min_requests = 5
[[steps]]
weight = 60
hold = "400ms"
min_requests = 5
[[steps]]
weight = 70
hold = "400ms"
min_requests = 5
[[steps]]
weight = 80
hold = "400ms"
min_requests = 5

[gates.error_rate]
max_ratio = 1.5
"#;

pub struct Replica {
    pub base: String,
    pub child: Child,
    pub log: PathBuf,
    /// Its id in the cluster, read from its own `/admin/v1/cluster`.
    pub id: String,
}

pub struct Rig {
    pub replicas: Vec<Replica>,
    pub upstream: MockUpstream,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    extra: String,
    /// `[cluster] heartbeat_ms` of the replicas this rig starts.
    heartbeat_ms: u64,
    /// `[cluster] reread_ms` of the replicas this rig starts.
    reread_ms: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The PostgreSQL base URL: in CI its absence fails the test, elsewhere it skips.
pub fn pg_base() -> Option<String> {
    crate::helpers::pg_url()
}

impl Rig {
    /// `n` replicas on a fresh schema of `base`, each ready (routing state loaded).
    pub async fn start(n: usize, base: &str) -> Self {
        let db_url = fresh_pg_schema(base).await;
        Self::start_on(n, db_url, "").await
    }

    /// `n` replicas on `db_url`, with `extra` appended to each one's config.
    pub async fn start_on(n: usize, db_url: String, extra: &str) -> Self {
        Self::start_with(n, db_url, extra, HEARTBEAT_MS).await
    }

    /// `n` replicas on `db_url` with `extra` appended to each one's config, beating every
    /// `heartbeat_ms`. A test whose subject is not liveness and that must not see a replica
    /// counted gone because a debug build stalled under load (three missed beats at
    /// `HEARTBEAT_MS` is 600 ms) takes a longer beat.
    pub async fn start_with(n: usize, db_url: String, extra: &str, heartbeat_ms: u64) -> Self {
        Self::start_rereading(n, db_url, extra, heartbeat_ms, REREAD_MS).await
    }

    /// As [`Rig::start_with`], re-reading the routing state every `reread_ms` without a
    /// notification.
    pub async fn start_rereading(
        n: usize,
        db_url: String,
        extra: &str,
        heartbeat_ms: u64,
        reread_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        std::fs::write(dir.path().join("policies/ladder.toml"), LADDER_POLICY).unwrap();
        let upstream = MockUpstream::start().await;
        let mut rig = Self {
            replicas: Vec::new(),
            upstream,
            db_url,
            dir,
            http: http_client(),
            extra: extra.to_owned(),
            heartbeat_ms,
            reread_ms,
        };
        for _ in 0..n {
            rig.add_replica().await;
        }
        rig
    }

    /// Starts one more replica and waits until it is ready.
    pub async fn add_replica(&mut self) -> usize {
        let i = self.replicas.len();
        let port = free_port();
        let cluster = format!(
            "\n[cluster]\nheartbeat_ms = {}\nlease_ms = {LEASE_MS}\nflush_ms = {FLUSH_MS}\nreread_ms = {}\n{}",
            self.heartbeat_ms, self.reread_ms, self.extra
        );
        // The tests poll the admin API every few milliseconds from one address; the test
        // config already lifts the per-address admin limit that would answer them 429.
        let text = config_toml(
            &self.upstream.url,
            &format!("127.0.0.1:{port}"),
            &self.db_url,
            &cluster,
        );
        let config = self.dir.path().join(format!("replica{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = self.dir.path().join(format!("replica{i}.log"));
        let child = spawn(&config, &log);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} never got ready; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.replicas.push(Replica {
            base,
            child,
            log,
            id: String::new(),
        });
        let (_, v) = self.admin(i, Method::GET, "/cluster", None).await;
        self.replicas[i].id = v["this_replica"].as_str().unwrap().to_owned();
        i
    }

    pub async fn admin(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.replicas[i].base))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A fresh key of `workspace` (created when missing), through replica `i`.
    pub async fn key(&self, i: usize, workspace: &str) -> (String, String) {
        let (status, _) = self
            .admin(
                i,
                Method::POST,
                "/workspaces",
                Some(json!({"id": workspace})),
            )
            .await;
        assert!(status == 201 || status == 409, "{status}");
        let (status, body) = self
            .admin(
                i,
                Method::POST,
                &format!("/workspaces/{workspace}/keys"),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["key"].as_str().unwrap().to_owned(),
            body["id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn chat(&self, i: usize, key: &str, route: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.replicas[i].base))
            .bearer_auth(key)
            .json(&chat_body(route, json!({})))
            .timeout(PATIENCE)
            .send()
            .await
            .unwrap()
    }

    /// Sends `n` requests round-robin over the replicas in `to`; returns the statuses seen.
    pub async fn drive(&self, to: &[usize], key: &str, route: &str, n: usize) -> Vec<u16> {
        let mut statuses = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(6) {
            let calls = chunk
                .iter()
                .map(|j| self.chat(to[j % to.len()], key, route));
            for r in futures_util::future::join_all(calls).await {
                statuses.push(r.status().as_u16());
                let _ = r.bytes().await;
            }
        }
        statuses
    }

    pub fn signal(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .args([
                &format!("-{signal}"),
                &self.replicas[i].child.id().to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self, i: usize) {
        let _ = self.replicas[i].child.kill();
        let _ = self.replicas[i].child.wait();
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
    }

    /// Waits until every replica routes `route` by `rollout` (its `/routes` names it): a
    /// rollout view answering 200 is not enough, as it may be read from the database
    /// before the replica has taken the rollout up into its routing table.
    pub async fn wait_routed(&self, route: &str, rollout: &str) {
        time_until(
            PATIENCE,
            &format!("every replica routing `{route}` by {rollout}"),
            || async {
                for i in 0..self.replicas.len() {
                    let (_, v) = self.admin(i, Method::GET, "/routes", None).await;
                    let routed = v["data"].as_array().is_some_and(|routes| {
                        routes
                            .iter()
                            .any(|r| r["route"] == route && r["rollout"] == rollout)
                    });
                    if !routed {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// Which replica (index) judges `rollout` now, per replica `asking`'s cluster view.
    pub async fn judge_of(&self, asking: usize, rollout: &str) -> Option<usize> {
        let (status, v) = self.admin(asking, Method::GET, "/cluster", None).await;
        if status != 200 {
            return None;
        }
        let holder = v["judges"]
            .as_array()?
            .iter()
            .find(|j| j["rollout"] == rollout)?["replica"]
            .as_str()?
            .to_owned();
        self.replicas.iter().position(|r| r.id == holder)
    }
}

fn spawn(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config)
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("TEST_AZURE_KEY", AZURE_KEY)
        .env("TEST_ENTRA_TOKEN", ENTRA_TOKEN)
        .env("SLUICE_LOG", "info")
        .env_remove("SLUICE_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("sluice starts")
}

impl Drop for Rig {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            // A stopped process ignores SIGKILL until continued on some kernels' accounting.
            let _ = Command::new("kill")
                .args(["-CONT", &r.child.id().to_string()])
                .status();
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// Polls `check` every 5 ms until it holds; returns how long that took. Panics after `limit`.
pub async fn time_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `check` every 5 ms until it gives a value; returns it and how long that took.
/// Panics after `limit`.
pub async fn wait_some<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The p-th percentile (0–100) of `lags`, nearest rank.
pub fn percentile(lags: &[Duration], p: f64) -> Duration {
    let mut sorted = lags.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
