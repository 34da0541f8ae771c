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
