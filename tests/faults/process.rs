//! Misbehaving clients against a real `sluice serve` process, whose memory is read from
//! `/proc/<pid>/status` (VmRSS): a client that reads a stream one byte a second, and 5 000
//! connections that never send a byte.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{
    ADMIN_TOKEN, AZURE_KEY, ENTRA_TOKEN, MockUpstream, UPSTREAM_KEY, chat_body, config_toml,
    eventually, http_client, listening_base, write_policies,
};
use crate::rig::timed;
use crate::rogue::{self, Rogue};

struct Proc {
    base: String,
    child: Child,
    db_url: String,
    key: String,
    log: std::path::PathBuf,
    http: reqwest::Client,
    rogue: Rogue,
    _upstream: MockUpstream,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// `sluice serve` on a free port with `server` added to `[server]`, ready, with a key.
    async fn start(server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        let upstream = MockUpstream::start().await;
        let rogue = Rogue::start().await;
        let db_url = format!("sqlite://{}", dir.path().join("sluice.db").display());
        // On port 0: the port is the one its log names (`listening_base`).
        let text = config_toml(
            &upstream.url,
            "127.0.0.1:0",
            &db_url,
            &rogue::config(&rogue.url),
        )
        .replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("sluice.log");
        let mut child = spawn(&config, &log);
        let base = listening_base(&mut child, &log).await;
        // A fresh connection per request: a pooled one that the server closes for idleness
        // (after header_read_timeout_ms) just as it is reused would fail for the client.
        let _ = http_client();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline && matches!(child.try_wait(), Ok(None)),
                "sluice never got ready; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = |method: Method, path: &str, body: Option<Value>| {
            let mut r = http
                .request(method, format!("{base}/admin/v1{path}"))
                .bearer_auth(ADMIN_TOKEN);
            if let Some(body) = body {
                r = r.json(&body);
            }
            r.send()
        };
        admin(Method::POST, "/workspaces", Some(json!({"id": "faults"})))
            .await
            .unwrap();
        let key: Value = admin(Method::POST, "/workspaces/faults/keys", None)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = key["key"].as_str().unwrap().to_owned();
        Self {
            base,
            child,
            db_url,
            key,
            log,
            http,
            rogue,
            _upstream: upstream,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// The process's resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Fails if the process's log shows a panic.
    fn assert_no_panic(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "sluice panicked:\n{log}");
    }

    /// The process's open file descriptors (sockets included).
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// A normal chat request is answered 200 with the mock's text.
    async fn normal(&self) {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.key)
            .json(&chat_body("chat", json!({})))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("Hello world!"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        // Warnings, and the one line that says where it listens.
        .env("SLUICE_LOG", "warn,sluice=info")
        .env_remove("SLUICE_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("sluice starts")
}

#[tokio::test]
async fn a_client_reading_a_byte_a_second_holds_bounded_memory() {
    timed("slow reader", async {
        let p = Proc::start("").await;
        p.normal().await;
        let before = p.rss_kib();
        // A small receive window, so that the client's own kernel holds little.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut slow = socket.connect(p.addr().parse().unwrap()).await.unwrap();
        let body = chat_body("f-firehose", json!({"stream": true})).to_string();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            p.key,
            body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        // The firehose writes 16 KiB events as fast as it can; the client takes one byte a
        // second for ten seconds.
        let mut got = Vec::new();
        let mut at_3s = 0;
        for i in 0..10 {
            if i == 3 {
                at_3s = p.rss_kib();
            }
            let mut byte = [0u8; 1];
            let n = slow.read(&mut byte).await.unwrap();
            got.extend_from_slice(&byte[..n]);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(got.starts_with(b"HTTP/1.1 2"), "{got:?}");
        // Others are served meanwhile.
        p.normal().await;
        let after = p.rss_kib();
        let offered = p.rogue.counters.firehose_written.load(Ordering::Relaxed);
        eprintln!(
            "[faults] slow reader: VmRSS {before} KiB before, {at_3s} KiB after 3 s, {after} KiB after 10 s (+{} KiB); the upstream got {} KiB into the pipe",
            after.saturating_sub(before),
            offered / 1024
        );
        // What sluice holds for the reader is bounded by the socket buffers and one event
        // or so, not by what the upstream would send: it stops reading the upstream.
        assert!(
            after.saturating_sub(before) < 32 * 1024,
            "sluice grew by {} KiB for one slow reader",
            after - before
        );
        assert!(
            offered < 64 * 1024 * 1024,
            "sluice read {offered} bytes from the upstream for a client that took 10"
        );
        // The client leaves: the stream is recorded as the client's disconnect.
        drop(slow);
        let store = sluice::store::Store::connect(&p.db_url).await.unwrap();
        let record = eventually("the slow reader's record", || {
            let store = &store;
            async move {
                store
                    .records(Some("f-firehose"), 1)
                    .await
                    .ok()?
                    .into_iter()
                    .next()
            }
        })
        .await;
        assert_eq!(record.outcome, sluice::types::Outcome::ClientDisconnected);
        p.normal().await;
        p.assert_no_panic();
    })
    .await;
}

/// Raises this process's soft open-file limit to `want` (up to the hard limit), which the
/// spawned sluice inherits.
fn raise_nofile(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let soft: u64 = fields[3].parse().unwrap_or(u64::MAX);
    let hard: u64 = fields[4].parse().unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    assert!(
        hard >= want,
        "the hard open-file limit {hard} is below {want}"
    );
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:{hard}"),
        ])
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

#[tokio::test]
async fn five_thousand_idle_connections_are_held_cheaply_and_closed_after_the_header_timeout() {
    timed("5 000 idle connections", async {
        const IDLE: usize = 5_000;
        raise_nofile(IDLE as u64 + 1_000);
        // The header timeout must outlast taking all of them up, which on a loaded 2-core
        // machine has taken more than 15 s: a connection closed before the last batch is
        // counted would make the count below wait for ever.
        let p = Proc::start("header_read_timeout_ms = 60000").await;
        p.normal().await;
        let before = p.rss_kib();
        let fds_before = p.open_fds();
        let addr = p.addr();
        let mut idle: Vec<TcpStream> = Vec::with_capacity(IDLE);
        // In batches, each taken up by sluice before the next: a burst beyond the kernel's
        // accept queue would leave connections the client thinks open and sluice never saw.
        for _ in 0..IDLE / 250 {
            let batch = (0..250).map(|_| TcpStream::connect(&addr));
            for s in futures_util::future::join_all(batch).await {
                idle.push(s.expect("connected"));
            }
            let want = fds_before + idle.len();
            let p = &p;
            eventually("sluice to accept the batch", || async move {
                (p.open_fds() >= want).then_some(())
            })
            .await;
        }
        // Served while the idle ones are open.
        p.normal().await;
        let held = p.rss_kib();
        eprintln!(
            "[faults] idle connections: VmRSS {before} KiB before, {held} KiB with {IDLE} open (+{} B each)",
            held.saturating_sub(before) * 1024 / IDLE as u64
        );
        assert!(
            held.saturating_sub(before) < 64 * 1024,
            "{IDLE} idle connections cost {} KiB",
            held - before
        );
        // Each one is closed by the server once the header timeout has passed.
        let closed = idle.into_iter().map(|mut s| async move {
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(180), s.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            )
        });
        let closed = futures_util::future::join_all(closed).await;
        assert_eq!(
            closed.iter().filter(|c| **c).count(),
            IDLE,
            "idle connections still open after the header timeout"
        );
        assert!(p.open_fds() < fds_before + 50, "sluice still holds the sockets");
        p.normal().await;
        p.assert_no_panic();
    })
    .await;
}
