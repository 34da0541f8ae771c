//! The README's tutorial, run as written against a real `sluice serve`.
//!
//! Every fenced block in README.md that follows an HTML comment starting `<!-- tested` is
//! run in order, in a temporary folder holding the shipped `sluice.toml` and `policies/`
//! (so the database is a fresh SQLite file there), with the built `sluice` first on PATH:
//!
//! - `<!-- tested -->`: a `bash` block runs in `bash -e` and must exit 0; a `python` block
//!   runs with `python3` and must exit 0. Variables a shell block sets are passed on to the
//!   next blocks (each block is a terminal the reader keeps typing in).
//! - `<!-- tested: background -->`: a long-running command (a second terminal); started,
//!   kept running, stopped at the end. The test waits for sluice's `/healthz` after one.
//! - `<!-- tested; then: advanced VAR -->`: after the block, the rollout whose id is in
//!   `$VAR` must move past its first step (the test then promotes it through the admin API,
//!   which the reader gets by waiting about two minutes: that keeps this test short).
//! - `<!-- tested; then: rolled_back VAR -->`: after the block, the judge must revert it.
//!
//! The README's address `127.0.0.1:8080` is replaced by a free port everywhere. Python
//! blocks need the `openai` package: without it (or without python3) the test says so
//! and skips, except under CI (`CI` set and not `false`), where that is a failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const README_ADDRESS: &str = "127.0.0.1:8080";
const ADMIN_TOKEN: &str = "dev-admin-token";

#[derive(Debug, PartialEq)]
enum Kind {
    Run,
    Background,
    ThenAdvanced(String),
    ThenRolledBack(String),
}

#[derive(Debug)]
struct Block {
    kind: Kind,
    lang: String,
    code: String,
    line: usize,
}

/// The marked blocks of a Markdown text, in order.
fn tested_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(marker) = lines[i].trim().strip_prefix("<!-- tested") else {
            i += 1;
            continue;
        };
        let marker = marker.trim_end_matches("-->").trim();
        let kind = if marker == ":background" || marker == ": background" {
            Kind::Background
        } else if let Some(rest) = marker.strip_prefix("; then:") {
            let mut words = rest.split_whitespace();
            match (words.next(), words.next()) {
                (Some("advanced"), Some(var)) => Kind::ThenAdvanced(var.to_owned()),
                (Some("rolled_back"), Some(var)) => Kind::ThenRolledBack(var.to_owned()),
                _ => panic!("README line {}: unknown marker {marker}", i + 1),
            }
        } else if marker.is_empty() {
            Kind::Run
        } else {
            panic!("README line {}: unknown marker {marker}", i + 1)
        };
        let fence = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("```"))
            .unwrap_or_else(|| panic!("README line {}: a marker not before a fence", i + 1));
        let mut code = String::new();
        let mut j = i + 2;
        while j < lines.len() && !lines[j].starts_with("```") {
            code.push_str(lines[j]);
            code.push('\n');
            j += 1;
        }
        blocks.push(Block {
            kind,
            lang: fence.trim().to_owned(),
            code,
            line: i + 2,
        });
        i = j + 1;
    }
    blocks
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

fn has_python_openai() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Kills the background commands when the test ends, however it ends.
struct Background(Vec<(Child, PathBuf)>);

impl Drop for Background {
    fn drop(&mut self) {
        for (child, log) in &mut self.0 {
            // The block's shell and what it started (sluice serve, sluice load) share a
            // process group of their own: stop them all, as Ctrl-C in a terminal does.
            let _ = Command::new("kill")
                .args(["-INT", "--", &format!("-{}", child.id())])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- {} ---\n{}",
                    log.display(),
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
            }
        }
    }
}

struct Tutorial {
    dir: PathBuf,
    base: String,
    path: String,
    state: PathBuf,
    background: Background,
    http: reqwest::Client,
}

impl Tutorial {
    /// The variables the shell blocks exported so far.
    fn vars(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.dir.join(".tutorial-vars")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn command(&self, block: &Block) -> Command {
        let mut cmd = match block.lang.as_str() {
            "bash" | "sh" | "shell" => {
                // `set -a` exports what the block assigns; the variables are written out
                // for the next blocks, like a terminal that stays open.
                let script = format!(
                    "set -ea\n[ -f {state} ] && . {state}\n{code}\nexport -p > {state}\nenv > .tutorial-vars\n",
                    state = self.state.display(),
                    code = block.code,
                );
                let mut c = Command::new("bash");
                c.arg("-c").arg(script);
                c
            }
            "python" | "py" => {
                let file = self.dir.join(format!("block-{}.py", block.line));
                std::fs::write(&file, &block.code).unwrap();
                let mut c = Command::new("python3");
                c.arg(file);
                c
            }
            other => panic!("README line {}: cannot run a `{other}` block", block.line),
        };
        cmd.current_dir(&self.dir)
            .env("PATH", &self.path)
            .env("SLUICE_URL", &self.base)
            .env_remove("SLUICE_ADMIN_TOKEN")
            .env_remove("SLUICE_KEY");
        if block.lang.starts_with("py") {
            // After the removals: what the shell blocks exported is the Python block's env.
            cmd.envs(self.vars());
        }
        cmd
    }

    async fn run(&mut self, block: &Block) {
        let started = Instant::now();
        match &block.kind {
            Kind::Background => {
                let log = self.dir.join(format!("background-{}.log", block.line));
                let out = std::fs::File::create(&log).unwrap();
                let child = self
                    .command(block)
                    .process_group(0)
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .unwrap();
                self.background.0.push((child, log));
                self.wait_healthy().await;
            }
            _ => {
                let out = self.command(block).output().unwrap();
                assert!(
                    out.status.success(),
                    "README block at line {} failed ({}):\n{}\nstdout:\n{}\nstderr:\n{}",
                    block.line,
                    out.status,
                    block.code,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!(
                    "README line {} ok in {:.1}s:\n{}",
                    block.line,
                    started.elapsed().as_secs_f64(),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        match &block.kind {
            Kind::ThenAdvanced(var) => {
                let id = self.var(var, block);
                let v = self
                    .wait_rollout(&id, Duration::from_secs(120), |r| {
                        r["step"].as_u64() >= Some(1) || r["state"] == "promoted"
                    })
                    .await;
                assert_ne!(
                    v["state"], "rolled_back",
                    "the healthy canary was reverted: {v}"
                );
                if v["state"] != "promoted" {
                    let r = self
                        .http
                        .post(format!("{}/admin/v1/rollouts/{id}/promote", self.base))
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "promote: {}", r.status());
                }
            }
            Kind::ThenRolledBack(var) => {
                let id = self.var(var, block);
                let v = self
                    .wait_rollout(&id, Duration::from_secs(120), |r| {
                        r["state"] != "progressing" && r["state"] != "paused"
                    })
                    .await;
                assert_eq!(v["state"], "rolled_back", "{v}");
            }
            _ => {}
        }
    }

    fn var(&self, name: &str, block: &Block) -> String {
        self.vars().get(name).cloned().unwrap_or_else(|| {
            panic!(
                "README block at line {} did not set ${name}: {:?}",
                block.line,
                self.vars()
            )
        })
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sluice did not answer /healthz within 30 s");
    }

    async fn wait_rollout(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v: Value = self
                .http
                .get(format!("{}/admin/v1/rollouts/{id}", self.base))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {id} not there after {limit:?}: state {} step {}",
                v["state"],
                v["step"]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test]
async fn the_readme_tutorial_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let blocks = tested_blocks(&readme.replace(README_ADDRESS, &address));
    assert!(
        blocks.iter().any(|b| b.lang.starts_with("py")),
        "the tutorial has a Python block"
    );
    assert!(blocks.iter().any(|b| b.kind == Kind::Background));
    if !has_python_openai() {
        let why = "python3 with the `openai` package is missing (pip install openai)";
        assert!(!ci(), "{why}: required under CI");
        println!("SKIPPED the_readme_tutorial_runs_as_written: {why}");
        eprintln!("SKIPPED the_readme_tutorial_runs_as_written: {why}");
        return;
    }

    // reqwest here is built without a default crypto provider; sluice installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(root.join("sluice.toml"))
        .unwrap()
        .replace(README_ADDRESS, &address);
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    copy_dir(&root.join("policies"), &dir.path().join("policies"));
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut tutorial = Tutorial {
        dir: dir.path().to_owned(),
        base: format!("http://{address}"),
        path,
        state: dir.path().join(".tutorial-state.sh"),
        background: Background(Vec::new()),
        http: reqwest::Client::new(),
    };
    let started = Instant::now();
    for block in &blocks {
        tutorial.run(block).await;
    }
    eprintln!(
        "the tutorial's {} blocks ran in {:.0}s",
        blocks.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

#[test]
fn markers_are_read_with_their_kind_and_language() {
    let md = "text\n<!-- tested -->\n```bash\necho hi\n```\n<!-- tested: background -->\n```bash\nsluice serve\n```\n<!-- tested; then: advanced ROLLOUT -->\n```bash\nx\n```\n```bash\nnot tested\n```\n<!-- tested -->\n```python\nprint(1)\n```\n";
    let blocks = tested_blocks(md);
    let kinds: Vec<&Kind> = blocks.iter().map(|b| &b.kind).collect();
    assert_eq!(
        kinds,
        [
            &Kind::Run,
            &Kind::Background,
            &Kind::ThenAdvanced("ROLLOUT".into()),
            &Kind::Run
        ]
    );
    assert_eq!(blocks[0].code, "echo hi\n");
    assert_eq!(blocks[3].lang, "python");
}
