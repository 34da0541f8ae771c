//! A provider that is any OpenAI-compatible HTTP server.

use std::time::Duration;

use axum::http::{HeaderValue, header};
use futures_util::TryStreamExt;

use super::{Call, Reply, UpstreamError};
use crate::config::StreamUsage;
use crate::types::Secret;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct HttpProvider {
    client: reqwest::Client,
    completions_url: String,
    api_key: Option<Secret>,
    pub timeout: Duration,
    stream_usage: StreamUsage,
    /// The upstream refused `stream_options` once: never add it again.
    refused_stream_usage: AtomicBool,
}

impl HttpProvider {
    pub fn new(
        base_url: &str,
        api_key: Option<Secret>,
        timeout: Duration,
        stream_usage: StreamUsage,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // Streams are relayed event by event; Nagle would hold small events back ~40 ms.
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            client,
            completions_url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            timeout,
            stream_usage,
            refused_stream_usage: AtomicBool::new(false),
        })
    }

    pub fn asks_stream_usage(&self) -> bool {
        self.stream_usage == StreamUsage::Ask && !self.refused_stream_usage.load(Ordering::Relaxed)
    }

    /// Returns true when this call is the one that stopped it.
    pub fn stop_asking_stream_usage(&self) -> bool {
        !self.refused_stream_usage.swap(true, Ordering::Relaxed)
    }

    pub async fn send(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let mut request = self
            .client
            .post(&self.completions_url)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header("x-request-id", call.request_id)
            // Every body sluice reads (measurement, checks, redaction, usage stripping) must
            // be readable: ask for no coding, and refuse a coded answer below.
            .header(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            )
            .body(call.body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        if let Some(tp) = &call.traceparent {
            request = request.header("traceparent", tp);
        }
        if call.stream {
            request = request.header(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        let after_ms = self.timeout.as_millis() as u64;
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => return Err(UpstreamError::Timeout { after_ms }),
            Ok(Err(e)) if e.is_timeout() => return Err(UpstreamError::Timeout { after_ms }),
            // reqwest's error names the URL, never the key (the key is a header).
            Ok(Err(e)) => return Err(UpstreamError::Unreachable(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if let Some(coding) = response
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|c| !c.is_empty() && c != "identity")
        {
            return Err(UpstreamError::Encoded(coding));
        }
        let headers = response.headers().clone();
        let body = response
            .bytes_stream()
            .map_err(|e| UpstreamError::Interrupted(error_chain(&e)));
        Ok(Reply {
            status,
            headers,
            body: Box::pin(body),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
