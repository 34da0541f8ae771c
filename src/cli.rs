//! Command-line clients of the admin API (`sluice workspaces …`, `sluice keys …`).

use std::fmt::Write;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Writes a command's output to stdout. A reader that stopped early (`| head -1`) closed
/// the pipe: the command then ends quietly with exit status 0, as `ls | head` does, where
/// `print!` would panic ("failed printing to stdout"). SIGPIPE stays ignored, as Rust sets
/// it: a signal would also kill a command on a write to a socket its peer closed (hyper
/// writes with `writev`, which does not take `MSG_NOSIGNAL`).
///
/// Exits the process with status 1 on any other write error (a full disk under a
/// redirect), after saying so on stderr.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`out`].
macro_rules! show {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

/// `println!` through [`out`].
macro_rules! say {
    ($($arg:tt)*) => { out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A client of one sluice's admin API (`/admin/v1`), printing what the CLI commands show.
///
/// Every call fails (an `anyhow` error with the reason) when no admin token was given, when the
/// server cannot be reached, or when it answers other than 2xx (with the answer's message).
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the server at `url` (e.g. `http://127.0.0.1:8080`), calling with `token` as a
    /// bearer token.
    pub fn new(url: &str, token: Option<String>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base: format!("{}/admin/v1", url.trim_end_matches('/')),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let Some(token) = &self.token else {
            bail!("no admin token: set SLUICE_ADMIN_TOKEN or pass --admin-token");
        };
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// `sluice workspaces create ID`: creates the workspace.
    ///
    /// # Errors
    /// As on [`AdminClient`]; a taken or malformed id is the server's 4xx.
    pub async fn create_workspace(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/workspaces",
            Some(json!({"id": id})),
        )
        .await?;
        say!("workspace {id} created");
        Ok(())
    }

    /// `sluice workspaces list`: prints the workspace ids, one a line.
    ///
    /// # Errors
    /// As on [`AdminClient`].
    pub async fn list_workspaces(&self) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/workspaces", None).await?;
        for w in v["data"].as_array().into_iter().flatten() {
            say!("{}", w["id"].as_str().unwrap_or_default());
        }
        Ok(())
    }

    /// `sluice keys create --workspace W`: creates an API key and prints it on stdout (the
    /// only time it is shown), its id on stderr.
    ///
    /// # Errors
    /// As on [`AdminClient`]; an unknown workspace is the server's 404.
    pub async fn create_key(&self, workspace: &str) -> anyhow::Result<()> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/workspaces/{workspace}/keys"),
                None,
            )
            .await?;
        eprintln!(
            "key {} for workspace {workspace} (shown once; store it now):",
            v["id"].as_str().unwrap_or_default()
        );
        say!("{}", v["key"].as_str().unwrap_or_default());
        Ok(())
    }

    /// `sluice keys list --workspace W`: one line per key: id, prefix, live or revoked.
    ///
    /// # Errors
    /// As on [`AdminClient`].
    pub async fn list_keys(&self, workspace: &str) -> anyhow::Result<()> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/workspaces/{workspace}/keys"),
                None,
            )
            .await?;
        say!("{:<20} {:<16} STATE", "ID", "PREFIX");
        for k in v["data"].as_array().into_iter().flatten() {
            let state = if k["revoked_at_ms"].is_null() {
                "live"
            } else {
                "revoked"
            };
            say!(
                "{:<20} {:<16} {state}",
                k["id"].as_str().unwrap_or_default(),
                k["prefix"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `sluice keys revoke --workspace W KEY_ID`: revokes the key; requests with it fail from
    /// then on.
    ///
    /// # Errors
    /// As on [`AdminClient`]; an unknown key is the server's 404.
    pub async fn revoke_key(&self, workspace: &str, key_id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/workspaces/{workspace}/keys/{key_id}"),
            None,
        )
        .await?;
        say!("key {key_id} revoked");
        Ok(())
    }
}

impl AdminClient {
    /// `sluice cluster status`: one line per replica, then who judges which rollout.
    ///
    /// # Errors
    /// As on [`AdminClient`].
    pub async fn cluster_status(&self) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/cluster", None).await?;
        let now = crate::types::now_ms();
        say!(
            "mode: {}   this replica: {}",
            v["mode"].as_str().unwrap_or_default(),
            v["this_replica"].as_str().unwrap_or_default()
        );
        say!(
            "{:<18} {:<22} {:<8} {:<6} {:>14} {:>10}  JUDGES",
            "REPLICA",
            "ADDRESS",
            "VERSION",
            "STATE",
            "HEARTBEAT AGO",
            "UP"
        );
        for r in v["replicas"].as_array().into_iter().flatten() {
            let ago = now - r["last_heartbeat_ms"].as_i64().unwrap_or(now);
            let up = now - r["started_at_ms"].as_i64().unwrap_or(now);
            let judges: Vec<&str> = r["judges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|j| j.as_str())
                .collect();
            say!(
                "{:<18} {:<22} {:<8} {:<6} {:>12}ms {:>9}s  {}",
                r["id"].as_str().unwrap_or_default(),
                r["address"].as_str().unwrap_or_default(),
                r["version"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
                ago.max(0),
                up.max(0) / 1000,
                if judges.is_empty() {
                    "-".to_owned()
                } else {
                    judges.join(",")
                }
            );
        }
        Ok(())
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, body).await
    }

    /// `sluice rollout start`: starts rolling version `canary` out on `route` under the policy
    /// named `policy`; prints the new rollout's id on stdout and its state on stderr.
    ///
    /// # Errors
    /// As on [`AdminClient`]; a live rollout on the route or an unknown name is the server's 4xx.
    pub async fn start_rollout(
        &self,
        route: &str,
        canary: &str,
        policy: &str,
    ) -> anyhow::Result<()> {
        let v = self
            .post(
                "/rollouts",
                Some(json!({"route": route, "canary": canary, "policy": policy})),
            )
            .await?;
        say!("{}", v["id"].as_str().unwrap_or_default());
        eprint!("{}", render_rollout(&v));
        Ok(())
    }

    /// `sluice rollout list`: one line per rollout.
    ///
    /// # Errors
    /// As on [`AdminClient`].
    pub async fn list_rollouts(&self) -> anyhow::Result<()> {
        let v = self.get("/rollouts").await?;
        show!("{}", render_rollout_list(&v));
        Ok(())
    }

    /// `sluice stats ROUTE`: the route's live figures per version and arm, as a table.
    ///
    /// # Errors
    /// As on [`AdminClient`]; an unknown route is the server's 404.
    pub async fn show_stats(&self, route: &str) -> anyhow::Result<()> {
        let v = self.get(&format!("/routes/{route}/stats")).await?;
        show!("{}", render_stats(&v));
        Ok(())
    }

    /// `sluice rollout status ID`: the rollout's state, then its last 10 events.
    ///
    /// # Errors
    /// As on [`AdminClient`]; an unknown id is the server's 404.
    pub async fn show_rollout(&self, id: &str) -> anyhow::Result<()> {
        let v = self.get(&format!("/rollouts/{id}")).await?;
        show!("{}", render_rollout(&v));
        let events = self.get(&format!("/rollouts/{id}/events")).await?;
        show!("{}", render_events(&events, 10));
        Ok(())
    }

    /// `sluice rollout pause|resume|promote|abort ID`: posts `operation` to the rollout
    /// and prints where it stands after.
    ///
    /// # Errors
    /// As on [`AdminClient`]; an operation the state does not allow is the server's 409.
    pub async fn operate_rollout(&self, id: &str, operation: &str) -> anyhow::Result<()> {
        let v = self
            .post(&format!("/rollouts/{id}/{operation}"), None)
            .await?;
        show!("{}", render_rollout(&v));
        Ok(())
    }

    /// `sluice rollout pin`: sends `workspace`'s requests on the rollout's route to `arm`
    /// (`stable` or `canary`), or lets them be randomized again when `arm` is `None`.
    ///
    /// # Errors
    /// As on [`AdminClient`].
    pub async fn pin_rollout(
        &self,
        id: &str,
        workspace: &str,
        arm: Option<&str>,
    ) -> anyhow::Result<()> {
        let path = format!("/rollouts/{id}/pins/{workspace}");
        match arm {
            Some(arm) => {
                self.call(reqwest::Method::PUT, &path, Some(json!({"arm": arm})))
                    .await?
            }
            None => self.call(reqwest::Method::DELETE, &path, None).await?,
        };
        say!(
            "{}",
            arm.map_or(format!("{workspace} unpinned"), |a| format!(
                "{workspace} pinned to {a}"
            ))
        );
        Ok(())
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| {
        if x != 0.0 && x.abs() < 10f64.powi(-(digits as i32)) {
            // Too small for the digits (a cost per request): keep it readable.
            format!("{x:.2e}")
        } else {
            format!("{x:.digits$}")
        }
    })
}

/// "step 2 of 4": steps are counted from 1, as on the dashboard and in the events (the
/// API's `step` is the 0-based index; after the last step it stays on the last one).
pub(crate) fn step_of(v: &Value) -> String {
    match (v["step"].as_u64(), v["steps"].as_u64()) {
        (Some(step), Some(steps)) if steps > 0 => {
            format!("step {} of {steps}", (step + 1).min(steps))
        }
        (Some(step), _) => format!("step {}", step + 1),
        _ => "step -".into(),
    }
}

/// Rows of cells printed in columns as wide as their widest cell (counted in characters,
/// so `→` is one); `right[i]` right-aligns column `i` (figures).
pub(crate) fn columns(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `sluice rollout list`: one rollout per line, newest first, in aligned columns.
pub(crate) fn render_rollout_list(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                text(&r["id"]).to_owned(),
                text(&r["route"]).to_owned(),
                format!("{} → {}", text(&r["stable"]), text(&r["canary"])),
                text(&r["policy"]).to_owned(),
                text(&r["state"]).to_owned(),
                step_of(r).trim_start_matches("step ").to_owned(),
                format!("{}%", num(&r["weight"], 0)),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no rollouts yet\n".into();
    }
    columns(
        &[
            "ID",
            "ROUTE",
            "STABLE → CANARY",
            "POLICY",
            "STATE",
            "STEP",
            "WEIGHT",
        ],
        &rows,
        &[false, false, false, false, false, false, true],
    )
}

/// `sluice stats ROUTE`: requests, errors, latency, tokens and cost per version and arm,
/// rounded for reading (the JSON keeps every digit).
pub(crate) fn render_stats(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "route {}  stable {}{}",
        text(&v["route"]),
        text(&v["stable"]),
        v["rollout"]
            .as_str()
            .map_or(String::new(), |r| format!("  rollout {r}"))
    );
    let row = |name: String, s: &Value| {
        vec![
            name,
            num(&s["requests"], 0),
            s["error_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
            num(&s["latency_ms"]["p50"], 0),
            num(&s["latency_ms"]["p95"], 0),
            num(&s["ttft_ms"]["p95"], 0),
            num(&s["tokens_per_request"], 1),
            num(&s["cost_per_request_usd"], 6),
            num(&s["cost_usd"], 4),
        ]
    };
    let mut rows = Vec::new();
    let mut arms: Vec<(&String, &Value)> = v["arms"]
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    arms.sort_by(|a, b| a.0.cmp(b.0));
    for (name, s) in arms {
        rows.push(row(name.clone(), s));
    }
    if v["total"].is_object() {
        rows.push(row("total".into(), &v["total"]));
    }
    let _ = write!(
        out,
        "{}",
        columns(
            &[
                "VERSION/ARM",
                "REQUESTS",
                "ERRORS",
                "P50 MS",
                "P95 MS",
                "TTFT P95",
                "TOKENS/REQ",
                "USD/REQ",
                "USD",
            ],
            &rows,
            &[false, true, true, true, true, true, true, true, true],
        )
    );
    let r = &v["records"];
    if r.is_object() {
        let _ = writeln!(
            out,
            "records: {} written, {} dropped, {} failed to write",
            num(&r["written"], 0),
            num(&r["dropped"], 0),
            num(&r["write_failed"], 0)
        );
    }
    out
}

/// A rollout as a person reads it: where it stands, both arms side by side, each gate's evidence.
pub(crate) fn render_rollout(v: &Value) -> String {
    let mut out = String::new();
    rollout_heading(&mut out, v);
    if v["arms"].is_object() {
        rollout_arms(&mut out, &v["arms"]);
    }
    if v["cluster"].is_object() {
        rollout_cluster(&mut out, &v["cluster"]);
    }
    if let Some(reason) = v["reverted_locally"]["reason"].as_str() {
        let _ = writeln!(
            out,
            "  reverted on this replica while the database is away (written when it returns): {reason}"
        );
    }
    if v["judge"].is_object() {
        rollout_judge(&mut out, &v["judge"]);
    }
    out
}

/// Which rollout, and where it stands: state, step, weight.
fn rollout_heading(out: &mut String, v: &Value) {
    let _ = writeln!(
        out,
        "rollout {}  route {}  {} → {}  policy {}",
        text(&v["id"]),
        text(&v["route"]),
        text(&v["stable"]),
        text(&v["canary"]),
        text(&v["policy"])
    );
    let inconclusive = if v["inconclusive"].as_bool() == Some(true) {
        "  (inconclusive: holding)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "state {}  {}  canary weight {}%{inconclusive}",
        text(&v["state"]),
        step_of(v),
        num(&v["weight"], 2)
    );
}

/// An error rate (0 to 1) as a percentage with one decimal, without the `%`.
fn percent(rate: &Value) -> String {
    rate.as_f64()
        .map_or("-".into(), |r| format!("{:.1}", r * 100.0))
}

/// Both arms side by side, as this replica measured them.
fn rollout_arms(out: &mut String, arms: &Value) {
    let _ = writeln!(
        out,
        "  {:<8} {:<14} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "arm",
        "version",
        "requests",
        "errors",
        "p50 ms",
        "p95 ms",
        "ttft p95",
        "tokens/r",
        "usd/req",
        "chars"
    );
    for arm in ["stable", "canary"] {
        let a = &arms[arm];
        let _ = writeln!(
            out,
            "  {:<8} {:<14} {:>8} {:>6}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            arm,
            text(&a["version"]),
            num(&a["requests"], 0),
            percent(&a["error_rate"]),
            num(&a["latency_ms"]["p50"], 0),
            num(&a["latency_ms"]["p95"], 0),
            num(&a["ttft_ms"]["p95"], 0),
            num(&a["tokens_per_request"], 0),
            num(&a["cost_per_request_usd"], 6),
            num(&a["response_chars"]["p50"], 0),
        );
    }
}

/// A cluster: the arms above are the answering replica's; these are every replica's.
fn rollout_cluster(out: &mut String, cluster: &Value) {
    let _ = writeln!(
        out,
        "  cluster ({} replicas shipped, {} observations dropped):",
        num(&cluster["replicas"], 0),
        num(&cluster["observations_dropped"], 0)
    );
    for arm in ["stable", "canary"] {
        let a = &cluster[arm];
        let _ = writeln!(
            out,
            "  {:<8} {:>8} requests {:>6}% errors {:>9} ms mean",
            arm,
            num(&a["requests"], 0),
            percent(&a["error_rate"]),
            num(&a["mean_latency_ms"], 0),
        );
    }
}

/// The judge's last look: the global e-value, sample ratio, each gate's evidence, reasons.
fn rollout_judge(out: &mut String, judge: &Value) {
    let _ = writeln!(
        out,
        "  judge: E = {} (revert at {}), SRM e = {}{}",
        num(&judge["e_global"], 2),
        num(&judge["threshold"], 0),
        num(&judge["srm"]["e_value"], 2),
        if judge["srm"]["broken"].as_bool() == Some(true) {
            " BROKEN"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  {:<22} {:<8} {:>10} {:>8} {:>20} {:>10} {:>10}",
        "gate", "verdict", "e-value", "effect", "ci", "stable", "canary"
    );
    for g in judge["gates"].as_array().into_iter().flatten() {
        let ci = match (g["ci"][0].as_f64(), g["ci"][1].as_f64()) {
            (Some(a), Some(b)) => format!("[{a:.2}, {b:.2}]"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<22} {:<8} {:>10} {:>8} {:>20} {:>10} {:>10}",
            text(&g["gate"]),
            text(&g["verdict"]),
            num(&g["e_value"], 2),
            num(&g["effect"], 2),
            ci,
            num(&g["stable_value"], 3),
            num(&g["canary_value"], 3),
        );
    }
    for reason in judge["reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  reason: {}", text(reason));
    }
}

/// The last `n` events of an events listing, oldest first.
pub(crate) fn render_events(v: &Value, n: usize) -> String {
    let mut out = String::new();
    let events: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
    let start = events.len().saturating_sub(n);
    for e in &events[start..] {
        let _ = writeln!(
            out,
            "  event {:<12} by {:<8} step {} at {}%: {}",
            text(&e["kind"]),
            text(&e["actor"]),
            // Steps count from 1; a promotion is recorded past the last step (its index is
            // the number of steps), which is the last step's number.
            e["step"].as_u64().map_or("-".into(), |s| {
                if e["kind"] == "promoted" {
                    s.max(1)
                } else {
                    s + 1
                }
                .to_string()
            }),
            e["weight_bp"]
                .as_f64()
                .map_or("-".into(), |w| format!("{}", w / 100.0)),
            text(&e["message"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_read_the_same_in_the_status_and_the_event_log() {
        // Three steps; a promotion is stored past the last one (index 3).
        let status = json!({"step": 3, "steps": 3, "state": "promoted"});
        assert_eq!(step_of(&status), "step 3 of 3");
        let events = json!({"data": [
            {"kind": "started", "actor": "operator", "step": 0, "weight_bp": 1000.0, "message": ""},
            {"kind": "advanced", "actor": "judge", "step": 2, "weight_bp": 5000.0, "message": ""},
            {"kind": "promoted", "actor": "judge", "step": 3, "weight_bp": 10000.0, "message": ""},
        ]});
        let lines = render_events(&events, 10);
        let steps: Vec<&str> = lines
            .lines()
            .map(|l| l.split(" step ").nth(1).unwrap().split(' ').next().unwrap())
            .collect();
        assert_eq!(steps, ["1", "3", "3"], "{lines}");
    }

    #[test]
    fn a_revert_applied_during_a_database_outage_is_shown_with_its_reason() {
        let mut view = json!({"id": "r1", "route": "chat", "stable": "a", "canary": "b",
            "state": "progressing", "step": 0, "steps": 2, "weight": 10.0});
        assert!(!render_rollout(&view).contains("database is away"));
        view["reverted_locally"] = json!({"at_ms": 1, "reason": "kill switch: canary error rate 100 %", "canary": [20, 20], "stable": [40, 0]});
        let text = render_rollout(&view);
        assert!(
            text.contains("reverted on this replica while the database is away")
                && text.contains("kill switch: canary error rate 100 %"),
            "{text}"
        );
    }
}
