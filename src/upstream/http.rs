//! A provider reached over HTTP: any OpenAI-compatible server, or Azure OpenAI.
//!
//! One reqwest client per provider, built at start with the provider's private CA
//! (`ca_file`) and egress proxy (`proxy`; unset, reqwest honours `HTTPS_PROXY`, `HTTP_PROXY`
//! and `NO_PROXY`). Each call gets the URL of its [`Endpoint`], the provider's credential
//! (`Authorization: Bearer`, or Azure's `api-key` header), the headers of
//! [`super::headers`], and sluice's request id as `X-Client-Request-Id`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use futures_util::TryStreamExt;

use super::endpoint::Endpoint;
use super::headers::forwarded_from_client;
use super::{Call, Reply, UpstreamError};
use crate::config::{ProviderConfig, ProviderKind, StreamUsage};
use crate::types::Secret;

/// How URLs and credentials are spelled.
enum Flavor {
    /// `{base_url}/{path}`, `Authorization: Bearer <key>`.
    OpenAi { base_url: String },
    /// Azure's URL shapes; the key in `api-key`, or an Entra ID token as a bearer.
    Azure {
        endpoint: String,
        api_version: String,
        entra: bool,
    },
}

pub(crate) struct HttpProvider {
    client: reqwest::Client,
    flavor: Flavor,
    api_key: Option<Secret>,
    /// `headers`, `organization` and `project` from the config.
    static_headers: HeaderMap,
    /// The operator's `forward_headers`.
    forward: Vec<HeaderName>,
    pub(crate) timeout: Duration,
    stream_usage: StreamUsage,
    /// The upstream refused `stream_options` once: never add it again.
    refused_stream_usage: AtomicBool,
}

impl HttpProvider {
    /// The provider `config` describes; `config_dir` anchors a relative `ca_file`.
    pub(crate) fn from_config(
        config: &ProviderConfig,
        api_key: Option<Secret>,
        config_dir: &Path,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = client_builder(timeout);
        if let Some(ca) = &config.ca_file {
            let path = config_dir.join(ca);
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("cannot read ca_file {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(proxy) = &config.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy)?);
        }
        let flavor = match config.kind {
            ProviderKind::Azure => Flavor::Azure {
                endpoint: config.endpoint.clone().unwrap_or_default(),
                api_version: config.api_version.clone().unwrap_or_default(),
                entra: config.bearer_token_env.is_some(),
            },
            _ => Flavor::OpenAi {
                base_url: config.base_url.clone().unwrap_or_default(),
            },
        };
        let mut static_headers = HeaderMap::new();
        for (name, value) in &config.headers {
            static_headers.insert(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        if let Some(org) = &config.organization {
            static_headers.insert("openai-organization", HeaderValue::from_str(org)?);
        }
        if let Some(project) = &config.project {
            static_headers.insert("openai-project", HeaderValue::from_str(project)?);
        }
        let forward = config
            .forward_headers
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        Ok(Self {
            client: builder.build()?,
            flavor,
            api_key,
            static_headers,
            forward,
            timeout,
            stream_usage: config.stream_usage,
            refused_stream_usage: AtomicBool::new(false),
        })
    }

    /// Whether this provider is Azure OpenAI (whose content filter sluice counts).
    pub(crate) fn is_azure(&self) -> bool {
        matches!(self.flavor, Flavor::Azure { .. })
    }

    /// The URL of `endpoint` for the version whose upstream model is `model`.
    pub(crate) fn url(&self, endpoint: &Endpoint<'_>, model: &str) -> String {
        match &self.flavor {
            Flavor::OpenAi { base_url } => endpoint.openai_url(base_url),
            Flavor::Azure {
                endpoint: ep,
                api_version,
                ..
            } => endpoint.azure_url(ep, api_version, model),
        }
    }

    pub(crate) fn asks_stream_usage(&self) -> bool {
        self.stream_usage == StreamUsage::Ask && !self.refused_stream_usage.load(Ordering::Relaxed)
    }

    /// Returns true when this call is the one that stopped it.
    pub(crate) fn stop_asking_stream_usage(&self) -> bool {
        !self.refused_stream_usage.swap(true, Ordering::Relaxed)
    }

    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        let url = self.url(&call.endpoint, call.model);
        let mut request = self.client.request(call.endpoint.method.clone(), url);
        if let Some(client) = call.client_headers {
            request = request.headers(forwarded_from_client(
                client,
                &self.forward,
                call.traceparent.is_some(),
            ));
        }
        request = request.headers(self.static_headers.clone());
        let content_type = call
            .content_type
            .clone()
            .unwrap_or(HeaderValue::from_static("application/json"));
        if call.endpoint.method != axum::http::Method::GET {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request = request
            .header("x-client-request-id", call.request_id)
            .header("x-request-id", call.request_id);
        // Every body sluice reads (measurement, checks, redaction, usage stripping) must be
        // readable: ask for no coding, and refuse a coded answer below.
        request = request.header(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if !call.body.is_empty() {
            request = request.body(call.body);
        }
        if let Some(key) = &self.api_key {
            request = match self.flavor {
                Flavor::Azure { entra: false, .. } => request.header("api-key", key.expose()),
                _ => request.bearer_auth(key.expose()),
            };
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

fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        // Streams are relayed event by event; Nagle would hold small events back ~40 ms.
        .tcp_nodelay(true)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
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
