//! Upstream: sends the rewritten request to the version's provider and hands back its
//! status, headers and body as a byte stream, untouched.
//!
//! Two kinds: `http::HttpProvider` for any OpenAI-compatible server or Azure OpenAI
//! (hyper-util's pooled client; no retries, bar HTTP/2's refusals of a request the server
//! never saw: a retry would hide the version's real latency and error rate from the judge), and `mock::MockProvider`, a built-in synthetic model for the demo, tests
//! and benchmarks. `endpoint` says where a call goes (which `/v1` path, and how Azure
//! spells it); `headers` says which headers go with it.

pub(crate) mod endpoint;
pub(crate) mod headers;
pub(crate) mod http;
pub(crate) mod mock;
pub(crate) mod mock_responses;

use std::pin::Pin;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::MockConfig;
use crate::types::Outcome;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// The upstream's answer before its body is read.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: ByteStream,
}

#[derive(Debug, Clone, thiserror::Error)]
/// Why an upstream call gave no usable answer; each maps to an [`Outcome`].
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    /// The connection failed (refused, DNS, TLS, reset before an answer); the cause.
    Unreachable(String),
    #[error("no answer within {after_ms} ms")]
    /// No answer within the provider's `timeout_ms`.
    Timeout {
        /// How long sluice waited, in milliseconds.
        after_ms: u64,
    },
    #[error("the answer broke off: {0}")]
    /// The body broke off after the status was read; the cause.
    Interrupted(String),
    /// The body came with a `Content-Encoding` other than `identity`, which sluice never
    /// asks for (it sends `Accept-Encoding: identity`) and would not be able to read.
    #[error(
        "the answer came with `Content-Encoding: {0}` although sluice asks for `identity`; configure the upstream (or a proxy in front of it) not to compress"
    )]
    Encoded(String),
    /// The upstream ended its answer with an informational status (in practice
    /// `101 Switching Protocols`, the one 1xx an HTTP client takes as final): no answer, and
    /// not a status sluice may pass on (HTTP/2 has no 101, and an HTTP/1 client would take
    /// the connection as upgraded).
    #[error("the upstream answered `{0}` as its final status")]
    Informational(StatusCode),
}

impl UpstreamError {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            UpstreamError::Unreachable(_) => Outcome::UpstreamUnreachable,
            UpstreamError::Timeout { .. } => Outcome::UpstreamTimeout,
            UpstreamError::Interrupted(_) => Outcome::StreamInterrupted,
            UpstreamError::Encoded(_) | UpstreamError::Informational(_) => Outcome::UpstreamInvalid,
        }
    }
}

/// One call to make: the body as it goes upstream, and what the provider needs to know of it.
pub(crate) struct Call<'a> {
    /// The API operation: chat completions, responses, embeddings, or another `/v1` path.
    pub(crate) endpoint: endpoint::Endpoint<'a>,
    /// The client's request headers; the provider forwards only those
    /// [`headers::forwarded_from_client`] allows. `None` for sluice's own calls (shadow, eval).
    pub(crate) client_headers: Option<&'a HeaderMap>,
    /// The body's content type when it is not JSON (a forwarded multipart form).
    pub(crate) content_type: Option<axum::http::HeaderValue>,
    pub(crate) body: Bytes,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) model: &'a str,
    pub(crate) request_id: &'a str,
    /// For the mock provider: the version's answer shape.
    pub(crate) mock: Option<std::sync::Arc<MockConfig>>,
    /// W3C trace context for the upstream, when tracing.
    pub(crate) traceparent: Option<String>,
}

/// Requests retried without the `stream_options` sluice added, because the upstream refused
/// it (`sluice_stream_usage_retries_total`).
pub(crate) static STREAM_USAGE_RETRIES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Whether a 400 body names the field sluice added to a streamed request.
pub(crate) fn names_stream_options(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("stream_options") || text.contains("include_usage")
}

pub(crate) enum Provider {
    Http(Box<http::HttpProvider>),
    Mock(mock::MockProvider),
}

impl Provider {
    /// The client for one configured provider; `key` is its API key when it has one.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (a bad base URL or TLS set-up).
    /// `config_dir` anchors a relative `ca_file`.
    pub(crate) fn from_config(
        config: &crate::config::ProviderConfig,
        key: Option<crate::types::Secret>,
        config_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let timeout = std::time::Duration::from_millis(config.timeout_ms);
        Ok(match config.kind {
            crate::config::ProviderKind::Openai | crate::config::ProviderKind::Azure => {
                Provider::Http(Box::new(http::HttpProvider::from_config(
                    config, key, config_dir,
                )?))
            }
            crate::config::ProviderKind::Mock => Provider::Mock(mock::MockProvider { timeout }),
        })
    }

    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        match self {
            Provider::Http(p) => p.send(call).await,
            // Boxed: the mock's future is the larger, and would size every request's.
            Provider::Mock(p) => Box::pin(p.send(call)).await,
        }
    }

    /// How long the upstream may stay silent: before its headers and between stream chunks.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        match self {
            Provider::Http(p) => p.timeout,
            Provider::Mock(p) => p.timeout,
        }
    }

    /// Whether the provider is Azure OpenAI (whose content-filter results sluice counts).
    pub(crate) fn is_azure(&self) -> bool {
        matches!(self, Provider::Http(p) if p.is_azure())
    }

    /// Whether sluice should ask this provider for the usage chunk of a stream
    /// (`stream_options.include_usage`): its `stream_usage` setting, until it refused the
    /// field once.
    pub(crate) fn streams_usage_on_request(&self) -> bool {
        match self {
            Provider::Http(p) => p.asks_stream_usage(),
            Provider::Mock(_) => true,
        }
    }

    /// Notes that the provider refused `stream_options` with a 400: sluice stops adding it
    /// for this provider (process-wide, until restart). Returns true the first time, so the
    /// caller logs once.
    pub(crate) fn refused_stream_usage(&self) -> bool {
        STREAM_USAGE_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self {
            Provider::Http(p) => p.stop_asking_stream_usage(),
            Provider::Mock(_) => false,
        }
    }
}
