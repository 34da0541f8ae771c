//! An in-process sluice in front of both the shared mock upstream (route `chat`, the
//! well-behaved traffic) and the rogue upstream (routes `f-<fault>`), with a key.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice::types::Record;

use crate::helpers::{Db, OK_TEXT, TestApp, chat_body, eventually};
use crate::rogue::{self, Rogue};

pub struct FaultApp {
    pub app: TestApp,
    pub rogue: Rogue,
    pub key: String,
}

/// What a client got.
pub struct Got {
    pub status: u16,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Got {
    /// The `data:` payloads of a streamed answer, in order.
    pub fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }

    /// The `error.code` of a whole error body, or of a stream's last event.
    pub fn error_code(&self) -> Option<String> {
        let text = if self.body.starts_with(b"{") {
            String::from_utf8_lossy(&self.body).into_owned()
        } else {
            self.events().last().cloned().unwrap_or_default()
        };
        let v: Value = serde_json::from_str(&text).ok()?;
        v["error"]["code"].as_str().map(str::to_owned)
    }
}

impl FaultApp {
    /// sluice with `server` added to its `[server]` section.
    pub async fn start(server: &str) -> Self {
        let rogue = Rogue::start().await;
        let extra = rogue::config(&rogue.url);
        let server = server.to_owned();
        let app = TestApp::spawn_edited(Db::Sqlite, Default::default(), move |text| {
            text.replace("shadow_queue = 4", &format!("shadow_queue = 4\n{server}")) + &extra
        })
        .await;
        let key = app.key("faults").await;
        Self { app, rogue, key }
    }

    /// A chat call to `route`, read to its end (at most 60 s).
    pub async fn chat(&self, route: &str, stream: bool) -> Got {
        let started = Instant::now();
        let response = self
            .app
            .http
            .post(format!("{}/v1/chat/completions", self.app.base))
            .bearer_auth(&self.key)
            .json(&chat_body(route, json!({"stream": stream})))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("sluice answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Got {
            status,
            body,
            elapsed: started.elapsed(),
        }
    }

    /// A normal request, plain and streamed, is answered in full.
    pub async fn unaffected(&self) {
        for stream in [false, true] {
            let got = self.chat("chat", stream).await;
            assert_eq!(got.status, 200, "a normal request failed: {:?}", got.body);
            let text: String = if stream {
                got.events()
                    .iter()
                    .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                    .filter_map(|v| {
                        v["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .collect()
            } else {
                let v: Value = serde_json::from_slice(&got.body).unwrap();
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(text, OK_TEXT);
        }
    }

    /// The records of `route`, once there are `n` of them, newest first.
    pub async fn records(&self, route: &str, n: usize) -> Vec<Record> {
        let store = self.app.store().await;
        eventually(&format!("{n} records of {route}"), || {
            let store = &store;
            async move {
                let records = store.records(Some(route), 100).await.ok()?;
                (records.len() >= n).then_some(records)
            }
        })
        .await
    }
}

/// Runs `f`, printing how long it took as `[faults] <name>: <ms> ms`.
pub async fn timed<T>(name: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    eprintln!("[faults] {name}: {} ms", started.elapsed().as_millis());
    out
}
