//! Command-line clients of the admin API (`sluice workspaces …`, `sluice keys …`).

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
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

    pub async fn create_workspace(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/workspaces",
            Some(json!({"id": id})),
        )
        .await?;
        println!("workspace {id} created");
        Ok(())
    }

    pub async fn list_workspaces(&self) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/workspaces", None).await?;
        for w in v["data"].as_array().into_iter().flatten() {
            println!("{}", w["id"].as_str().unwrap_or_default());
        }
        Ok(())
    }

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
        println!("{}", v["key"].as_str().unwrap_or_default());
        Ok(())
    }

    pub async fn list_keys(&self, workspace: &str) -> anyhow::Result<()> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/workspaces/{workspace}/keys"),
                None,
            )
            .await?;
        println!("{:<20} {:<16} STATE", "ID", "PREFIX");
        for k in v["data"].as_array().into_iter().flatten() {
            let state = if k["revoked_at_ms"].is_null() {
                "live"
            } else {
                "revoked"
            };
            println!(
                "{:<20} {:<16} {state}",
                k["id"].as_str().unwrap_or_default(),
                k["prefix"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn revoke_key(&self, workspace: &str, key_id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/workspaces/{workspace}/keys/{key_id}"),
            None,
        )
        .await?;
        println!("key {key_id} revoked");
        Ok(())
    }
}

impl AdminClient {
    /// `sluice cluster status`: one line per replica, then who judges which rollout.
    pub async fn cluster_status(&self) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/cluster", None).await?;
        let now = crate::store::now_ms();
        println!(
            "mode: {}   this replica: {}",
            v["mode"].as_str().unwrap_or_default(),
            v["this_replica"].as_str().unwrap_or_default()
        );
        println!(
            "{:<18} {:<22} {:<8} {:<6} {:>14} {:>10}  JUDGES",
            "REPLICA", "ADDRESS", "VERSION", "STATE", "HEARTBEAT AGO", "UP"
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
            println!(
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

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, body).await
    }

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
        println!("{}", v["id"].as_str().unwrap_or_default());
        eprint!("{}", render_rollout(&v));
        Ok(())
    }

    pub async fn list_rollouts(&self) -> anyhow::Result<()> {
        let v = self.get("/rollouts").await?;
        println!(
            "{:<16} {:<12} {:<24} {:<12} {:>5} {:>8}",
            "ID", "ROUTE", "STABLE → CANARY", "STATE", "STEP", "WEIGHT"
        );
        for r in v["data"].as_array().into_iter().flatten() {
            let versions = format!("{} → {}", text(&r["stable"]), text(&r["canary"]));
            println!(
                "{:<16} {:<12} {:<24} {:<12} {:>5} {:>7}%",
                text(&r["id"]),
                text(&r["route"]),
                versions,
                text(&r["state"]),
                r["step"],
                r["weight"]
            );
        }
        Ok(())
    }

    pub async fn show_rollout(&self, id: &str) -> anyhow::Result<()> {
        let v = self.get(&format!("/rollouts/{id}")).await?;
        print!("{}", render_rollout(&v));
        let events = self.get(&format!("/rollouts/{id}/events")).await?;
        print!("{}", render_events(&events, 10));
        Ok(())
    }

    pub async fn operate_rollout(&self, id: &str, operation: &str) -> anyhow::Result<()> {
        let v = self
            .post(&format!("/rollouts/{id}/{operation}"), None)
            .await?;
        print!("{}", render_rollout(&v));
        Ok(())
    }

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
        println!(
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

/// A rollout as a person reads it: where it stands, both arms side by side, each gate's evidence.
pub fn render_rollout(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
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
        "state {}  step {}/{}  canary weight {}%{inconclusive}",
        text(&v["state"]),
        v["step"],
        v["steps"],
        num(&v["weight"], 2)
    );
    if v["arms"].is_object() {
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
            let a = &v["arms"][arm];
            let _ = writeln!(
                out,
                "  {:<8} {:<14} {:>8} {:>6}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                arm,
                text(&a["version"]),
                num(&a["requests"], 0),
                a["error_rate"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{:.1}", r * 100.0)),
                num(&a["latency_ms"]["p50"], 0),
                num(&a["latency_ms"]["p95"], 0),
                num(&a["ttft_ms"]["p95"], 0),
                num(&a["tokens_per_request"], 0),
                num(&a["cost_per_request_usd"], 6),
                num(&a["response_chars"]["p50"], 0),
            );
        }
    }
    let judge = &v["judge"];
    if judge.is_object() {
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
    out
}

/// The last `n` events of an events listing, oldest first.
pub fn render_events(v: &Value, n: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let events: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
    let start = events.len().saturating_sub(n);
    for e in &events[start..] {
        let _ = writeln!(
            out,
            "  event {:<12} by {:<8} step {} at {}%: {}",
            text(&e["kind"]),
            text(&e["actor"]),
            e["step"],
            e["weight_bp"]
                .as_f64()
                .map_or("-".into(), |w| format!("{}", w / 100.0)),
            text(&e["message"])
        );
    }
    out
}
