//! A provider reached over HTTP: any OpenAI-compatible server, or Azure OpenAI.
//!
//! One client per provider, built at start: hyper-util's pooled client over hyper-rustls
//! (HTTP/1.1, or HTTP/2 when TLS's ALPN picks it; `TCP_NODELAY`; a connect timeout of the
//! provider's `timeout_ms`, at most 10 s, over TCP and TLS together; idle connections kept
//! 90 s, 256 per host), trusting the platform's roots (rustls-platform-verifier, as reqwest
//! does) plus the provider's private CA (`ca_file`). A provider whose calls go through an
//! egress proxy (`proxy`; unset, `HTTPS_PROXY`, `HTTP_PROXY` or `ALL_PROXY` unless `NO_PROXY`
//! exempts its host) keeps a reqwest client with the same settings, which speaks CONNECT and
//! proxy credentials.
//!
//! The base URL's scheme and host are parsed once; each call adds the path of its
//! [`Endpoint`] (Azure's depends on the deployment), the provider's credential
//! (`Authorization: Bearer`, or Azure's `api-key` header, built once), the headers of
//! [`super::headers`], and sluice's request id as `X-Client-Request-Id`. A path with dot
//! segments or characters a URL escapes is normalized as a browser would (`url`), so the
//! upstream sees what it saw when reqwest sent it. Redirects are not followed (a 3xx is the
//! upstream's answer); the only retries are of a request an HTTP/2 server refused unseen
//! (`REFUSED_STREAM`, a graceful `GOAWAY`), at most twice, within the timeout.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::uri::{self, Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::endpoint::Endpoint;
use super::headers::forwarded_from_client;
use super::{Call, Reply, UpstreamError};
use crate::config::{ProviderConfig, ProviderKind, StreamUsage};
use crate::types::Secret;

const X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const API_KEY: HeaderName = HeaderName::from_static("api-key");
/// Retries of a request an HTTP/2 server refused before processing it (reqwest's default).
const MAX_REFUSED_RETRIES: u32 = 2;

/// How URLs and credentials are spelled. `base_path` is the path of the configured URL
/// without its trailing `/` (empty for a bare host).
enum Flavor {
    /// `{base_url}/{path}`, `Authorization: Bearer <key>`.
    OpenAi { base_path: String },
    /// Azure's URL shapes; the key in `api-key`, or an Entra ID token as a bearer.
    Azure {
        base_path: String,
        api_version: String,
    },
}

/// The provider's credential as a header, built once.
enum Auth {
    None,
    Header(HeaderName, HeaderValue),
    /// The key cannot be a header value (e.g. a stray newline): every call fails, as with
    /// reqwest, and the message never holds the key.
    Invalid,
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// How a provider's calls leave the process.
#[expect(
    clippy::large_enum_variant,
    reason = "one per provider, read on every call: no box to follow on the hot path"
)]
enum Transport {
    /// The common case: hyper-util's pooled client.
    Direct(Client<TimedConnector, Full<Bytes>>),
    /// Through an egress proxy: reqwest's client (CONNECT tunnels, proxy credentials).
    Proxied(reqwest::Client),
}

pub(crate) struct HttpProvider {
    transport: Transport,
    flavor: Flavor,
    scheme: Scheme,
    authority: Authority,
    auth: Auth,
    /// `headers`, `organization` and `project` from the config.
    static_headers: HeaderMap,
    /// The operator's `forward_headers`.
    forward: Vec<HeaderName>,
    pub(crate) timeout: Duration,
    stream_usage: StreamUsage,
    /// The upstream refused `stream_options` once: never add it again.
    refused_stream_usage: AtomicBool,
    /// The chat-completions URI of an OpenAI-flavoured provider, built once: building it
    /// per request (format, check, parse) cost ~2 % of a plain request (issue 13). Azure's
    /// depends on the deployment.
    chat_uri: Option<Uri>,
}

impl HttpProvider {
    /// The provider `config` describes; `config_dir` anchors a relative `ca_file`.
    ///
    /// # Errors
    /// An unreadable `ca_file` or one that is not PEM, a base URL that is not an http(s) URL
    /// or carries credentials, a bad static header, or a TLS set-up the platform refuses.
    pub(crate) fn from_config(
        config: &ProviderConfig,
        api_key: Option<Secret>,
        config_dir: &Path,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let roots = match &config.ca_file {
            Some(ca) => {
                let path = config_dir.join(ca);
                let pem = std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read ca_file {}: {e}", path.display()))?;
                ca_certificates(&pem).with_context(|| format!("ca_file {}", path.display()))?
            }
            None => Vec::new(),
        };
        let (base, flavor) = flavor(config);
        let (scheme, authority, base_path) = split_base(base)?;
        let flavor = match flavor {
            Flavor::OpenAi { .. } => Flavor::OpenAi { base_path },
            Flavor::Azure { api_version, .. } => Flavor::Azure {
                base_path,
                api_version,
            },
        };
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let transport = if config.proxy.is_some()
            || hyper_util::client::proxy::matcher::Matcher::from_system()
                .intercept(&origin)
                .is_some()
        {
            Transport::Proxied(proxied_client(config, timeout, &roots)?)
        } else {
            Transport::Direct(direct_client(timeout, roots)?)
        };
        let mut provider = Self {
            transport,
            auth: auth(config, api_key.as_ref()),
            flavor,
            scheme,
            authority,
            static_headers: static_headers(config)?,
            forward: config
                .forward_headers
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
            timeout,
            stream_usage: config.stream_usage,
            refused_stream_usage: AtomicBool::new(false),
            chat_uri: None,
        };
        if !provider.is_azure() {
            provider.chat_uri = Some(provider.uri(&Endpoint::chat(), "")?);
        }
        Ok(provider)
    }

    /// Whether this provider is Azure OpenAI (whose content filter sluice counts).
    pub(crate) fn is_azure(&self) -> bool {
        matches!(self.flavor, Flavor::Azure { .. })
    }

    pub(crate) fn asks_stream_usage(&self) -> bool {
        self.stream_usage == StreamUsage::Ask && !self.refused_stream_usage.load(Ordering::Relaxed)
    }

    /// Returns true when this call is the one that stopped it.
    pub(crate) fn stop_asking_stream_usage(&self) -> bool {
        !self.refused_stream_usage.swap(true, Ordering::Relaxed)
    }

    /// The URI of `endpoint` for the version whose upstream model is `model`.
    fn uri(&self, endpoint: &Endpoint<'_>, model: &str) -> Result<Uri, UpstreamError> {
        if let Some(chat) = &self.chat_uri
            && *endpoint == Endpoint::chat()
        {
            return Ok(chat.clone());
        }
        let path = match &self.flavor {
            Flavor::OpenAi { base_path } => endpoint.openai_url(base_path),
            Flavor::Azure {
                base_path,
                api_version,
            } => endpoint.azure_url(base_path, api_version, model),
        };
        let path_and_query = if plain(&path) {
            PathAndQuery::try_from(path).map_err(builder_error)?
        } else {
            let url = url::Url::parse(&format!("{}://{}{path}", self.scheme, self.authority))
                .map_err(builder_error)?;
            PathAndQuery::try_from(&url[url::Position::BeforePath..url::Position::AfterQuery])
                .map_err(builder_error)?
        };
        let mut parts = uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(builder_error)
    }

    /// The request `call` makes, its headers in reqwest's order and with its defaults: the
    /// client's forwarded ones, replaced by the provider's of the same name, then sluice's.
    fn request(&self, call: &Call<'_>) -> Result<Request<Bytes>, UpstreamError> {
        let uri = self.uri(&call.endpoint, call.model)?;
        let mut headers = match call.client_headers {
            Some(client) => {
                forwarded_from_client(client, &self.forward, call.traceparent.is_some())
            }
            None => HeaderMap::with_capacity(16),
        };
        for (name, value) in &self.static_headers {
            headers.insert(name.clone(), value.clone());
        }
        if call.endpoint.method != Method::GET {
            let content_type = call
                .content_type
                .clone()
                .unwrap_or(HeaderValue::from_static("application/json"));
            headers.append(header::CONTENT_TYPE, content_type);
        }
        let id = HeaderValue::from_str(call.request_id).map_err(builder_error)?;
        headers.append(X_CLIENT_REQUEST_ID, id.clone());
        headers.append(X_REQUEST_ID, id);
        // Every body sluice reads (measurement, checks, redaction, usage stripping) must be
        // readable: ask for no coding, and refuse a coded answer in `reply`.
        headers.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        match &self.auth {
            Auth::None => {}
            Auth::Header(name, value) => {
                headers.append(name.clone(), value.clone());
            }
            Auth::Invalid => {
                return Err(UpstreamError::Unreachable(
                    "builder error: the provider's key is not a valid header value".into(),
                ));
            }
        }
        if let Some(tp) = &call.traceparent {
            headers.append(
                TRACEPARENT,
                HeaderValue::from_str(tp).map_err(builder_error)?,
            );
        }
        if call.stream {
            headers.append(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        let mut request = Request::new(call.body.clone());
        *request.method_mut() = call.endpoint.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// One call, up to its answer's headers, within the provider's timeout.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block keeps `call` once, an async fn twice (as its upvar and its \
                  local): 408 bytes a request's future instead of 608"
    )]
    pub(crate) fn send<'a>(
        &'a self,
        call: Call<'a>,
    ) -> impl Future<Output = Result<Reply, UpstreamError>> + Send + 'a {
        async move {
            let after_ms = self.timeout.as_millis() as u64;
            match tokio::time::timeout(self.timeout, self.exchange(&call)).await {
                Err(_) => Err(UpstreamError::Timeout { after_ms }),
                Ok(result) => result,
            }
        }
    }

    /// One call, up to its answer's headers.
    async fn exchange(&self, call: &Call<'_>) -> Result<Reply, UpstreamError> {
        match &self.transport {
            Transport::Direct(client) => {
                let mut retries = 0;
                loop {
                    let request = self.request(call)?.map(Full::new);
                    match client.request(request).await {
                        Ok(response) => return reply(response),
                        Err(e) if retries < MAX_REFUSED_RETRIES && refused_unseen(&e) => {
                            retries += 1;
                        }
                        Err(e) => return Err(self.failure(&e, call)),
                    }
                }
            }
            Transport::Proxied(client) => {
                let request =
                    reqwest::Request::try_from(self.request(call)?.map(reqwest::Body::from))
                        .map_err(|e| UpstreamError::Unreachable(error_chain(&e)))?;
                match client.execute(request).await {
                    Ok(response) => reply(Response::from(response)),
                    Err(e) if e.is_timeout() => Err(UpstreamError::Timeout {
                        after_ms: self.timeout.as_millis() as u64,
                    }),
                    // reqwest's error names the URL, never the key (the key is a header).
                    Err(e) => Err(UpstreamError::Unreachable(error_chain(&e))),
                }
            }
        }
    }

    /// What a failed exchange is: a timeout (connect), or unreachable with the cause and the
    /// URL (never the key, which is a header), worded as reqwest worded it.
    fn failure(&self, e: &(dyn StdError + 'static), call: &Call<'_>) -> UpstreamError {
        if timed_out(e) {
            return UpstreamError::Timeout {
                after_ms: self.timeout.as_millis() as u64,
            };
        }
        let url = self
            .uri(&call.endpoint, call.model)
            .map(|u| u.to_string())
            .unwrap_or_default();
        UpstreamError::Unreachable(format!(
            "error sending request for url ({url}): {}",
            error_chain(e)
        ))
    }
}

/// The certificates of a PEM bundle (`ca_file`), read as reqwest reads them.
///
/// # Errors
/// When a PEM block is not a well-formed certificate; an input with no certificate at all
/// gives an empty list, which `sluice config check` reports.
pub(crate) fn ca_certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid certificate encoding: {e}"))
}

/// The configured base URL and the flavour (its path filled in by the caller).
fn flavor(config: &ProviderConfig) -> (&str, Flavor) {
    match config.kind {
        ProviderKind::Azure => (
            config.endpoint.as_deref().unwrap_or_default(),
            Flavor::Azure {
                base_path: String::new(),
                api_version: config.api_version.clone().unwrap_or_default(),
            },
        ),
        _ => (
            config.base_url.as_deref().unwrap_or_default(),
            Flavor::OpenAi {
                base_path: String::new(),
            },
        ),
    }
}

/// Scheme, host and path (no trailing `/`) of a base URL, normalized as reqwest's `url`
/// parse normalized it (IDNA host, escaped path).
fn split_base(raw: &str) -> anyhow::Result<(Scheme, Authority, String)> {
    let url = url::Url::parse(raw).with_context(|| format!("`{raw}` is not a URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.has_host(),
        "`{raw}` is not an http(s) URL"
    );
    if let Some(problem) = base_url_problem(&url) {
        anyhow::bail!("`{raw}` {problem}");
    }
    let parts = url[..url::Position::BeforePath]
        .parse::<Uri>()?
        .into_parts();
    let scheme = parts.scheme.context("a base URL has a scheme")?;
    let authority = parts.authority.context("a base URL has a host")?;
    Ok((
        scheme,
        authority,
        url.path().trim_end_matches('/').to_owned(),
    ))
}

/// What sluice cannot keep of a base URL when it spells a call's URL: credentials (the key
/// goes in a header) or a query or fragment (each call's path and query replace them).
/// `None` when the URL is usable; `config check` and start both ask.
pub(crate) fn base_url_problem(url: &url::Url) -> Option<&'static str> {
    if !url.username().is_empty() || url.password().is_some() {
        Some("carries credentials; give the key with api_key_env")
    } else if url.query().is_some() || url.fragment().is_some() {
        Some("has a query or fragment, which no call would carry; give scheme, host and path only")
    } else {
        None
    }
}

/// Whether `path` (with its query) reads the same to `url` and to `http::Uri`: no dot
/// segment, and only characters neither escapes.
fn plain(path: &str) -> bool {
    let route = path.split('?').next().unwrap_or_default();
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&()*+,;=:@/?%".contains(&b))
        && !route.contains("/.")
        && !route.contains("%2e")
        && !route.contains("%2E")
}

fn auth(config: &ProviderConfig, key: Option<&Secret>) -> Auth {
    let Some(key) = key else { return Auth::None };
    let (name, value) = match config.kind {
        ProviderKind::Azure if config.bearer_token_env.is_none() => {
            (API_KEY, HeaderValue::from_str(key.expose()))
        }
        _ => (
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", key.expose())),
        ),
    };
    match value {
        Ok(mut value) => {
            value.set_sensitive(true);
            Auth::Header(name, value)
        }
        Err(_) => Auth::Invalid,
    }
}

fn static_headers(config: &ProviderConfig) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        headers.insert(
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    if let Some(org) = &config.organization {
        headers.insert("openai-organization", HeaderValue::from_str(org)?);
    }
    if let Some(project) = &config.project {
        headers.insert("openai-project", HeaderValue::from_str(project)?);
    }
    Ok(headers)
}

/// The TLS set-up reqwest makes: the process's crypto provider (ring, see `app`), TLS 1.2
/// and 1.3, the platform's roots plus `extra_roots`.
fn tls_config(extra_roots: Vec<CertificateDer<'static>>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())?
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())?
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The TCP connector reqwest configures: keep-alive probes, `TCP_USER_TIMEOUT`, no Nagle.
fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Streams are relayed event by event; Nagle would hold small events back ~40 ms.
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    http
}

fn direct_client(
    timeout: Duration,
    roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<Client<TimedConnector, Full<Bytes>>> {
    let connect_timeout = connect_timeout(timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(roots)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp_connector(connect_timeout));
    let connector = TimedConnector {
        inner: https,
        limit: connect_timeout,
    };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector))
}

fn proxied_client(
    config: &ProviderConfig,
    timeout: Duration,
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        // As the direct client: a 3xx is the upstream's answer (reqwest would turn a POST
        // into a GET on 302 and relay what the other URL said).
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout(timeout))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256);
    for cert in roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(cert.as_ref())?);
    }
    if let Some(proxy) = &config.proxy {
        builder = builder.proxy(reqwest::Proxy::all(proxy)?);
    }
    Ok(builder.build()?)
}

fn connect_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(10))
}

/// hyper-rustls's connector under one deadline for TCP connect and TLS handshake together,
/// as reqwest's `connect_timeout` is. Runs only when the pool has no idle connection.
#[derive(Clone)]
struct TimedConnector {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

type Connection = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower::Service<Uri> for TimedConnector {
    type Response = Connection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {} ms", limit.as_millis()),
                )
                .into()),
            }
        })
    }
}

/// The answer, its headers moved; an answer with a content coding, or with a 1xx status
/// as its final one, is refused.
fn reply<B>(response: Response<B>) -> Result<Reply, UpstreamError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: StdError + 'static,
{
    let (parts, body) = response.into_parts();
    if parts.status.is_informational() {
        return Err(UpstreamError::Informational(parts.status));
    }
    if let Some(coding) = parts
        .headers
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
    let body = body
        .into_data_stream()
        .map_err(|e| UpstreamError::Interrupted(error_chain(&e)));
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: Box::pin(body),
    })
}

/// An HTTP/2 refusal of a request the server never processed, which reqwest retries: a
/// stream reset with `REFUSED_STREAM`, or a graceful `GOAWAY`.
fn refused_unseen(e: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = err.source();
    }
    false
}

/// Whether a cause in the chain is a timeout (reqwest's `is_timeout`).
fn timed_out(e: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn builder_error(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unreachable(format!("builder error: {e}"))
}

fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn provider(toml: &str) -> HttpProvider {
        let config: ProviderConfig = toml::from_str(toml).unwrap();
        HttpProvider::from_config(&config, Some(Secret::new("sk-secret-42")), Path::new(""))
            .unwrap()
    }

    fn call<'a>(endpoint: Endpoint<'a>, model: &'a str) -> Call<'a> {
        Call {
            endpoint,
            client_headers: None,
            content_type: None,
            body: Bytes::from_static(b"{\"model\":\"m\"}"),
            stream: false,
            include_usage: false,
            model,
            request_id: "req_1",
            mock: None,
            traceparent: None,
        }
    }

    /// One connection: reads a request head (and its body), answers `answer`, returns the head.
    async fn one_shot(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's one-connection upstream, ended with the test"
        )]
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                got.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (port, served)
    }

    #[test]
    fn paths_reach_the_upstream_as_a_parsed_url_spells_them() {
        let openai = provider("kind = \"openai\"\nbase_url = \"http://up.example:8080/v1/\"");
        for path in [
            "chat/completions",
            "responses/resp_1/input_items?limit=5&after=x",
            "files/../../admin",
            "files/%2E%2E/x",
            "files/a b?q=it's",
            "files/caf\u{e9}",
        ] {
            let endpoint = Endpoint::new(Method::GET, path);
            let want = url::Url::parse(&endpoint.openai_url("http://up.example:8080/v1/")).unwrap();
            assert_eq!(
                openai.uri(&endpoint, "m").unwrap().to_string(),
                want.as_str(),
                "{path}"
            );
        }
        let azure = provider(
            "kind = \"azure\"\nendpoint = \"https://res.openai.azure.com/\"\napi_version = \"2024-10-21\"",
        );
        let endpoint = Endpoint::chat();
        assert_eq!(
            azure.uri(&endpoint, "my deployment").unwrap().to_string(),
            endpoint.azure_url(
                "https://res.openai.azure.com",
                "2024-10-21",
                "my deployment"
            )
        );
    }

    #[tokio::test]
    async fn a_call_carries_the_credential_sluice_headers_and_moves_the_answer_headers() {
        let (port, served) = one_shot(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: up-7\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await;
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\norganization = \"org-1\""
        ));
        let reply = p.send(call(Endpoint::chat(), "m")).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["x-request-id"], "up-7");
        let body: Vec<Bytes> = reply.body.try_collect().await.unwrap();
        assert_eq!(body.concat(), b"{}");
        let head = served.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/chat/completions http/1.1\r\n"),
            "{head}"
        );
        for line in [
            "authorization: bearer sk-secret-42",
            "openai-organization: org-1",
            "content-type: application/json",
            "x-client-request-id: req_1",
            "x-request-id: req_1",
            "accept-encoding: identity",
            "accept: */*",
            &format!("host: 127.0.0.1:{port}"),
            "content-length: 13",
        ] {
            assert!(
                head.contains(&format!("\r\n{line}\r\n")),
                "{line} missing in {head}"
            );
        }
    }

    #[tokio::test]
    async fn azure_sends_its_key_as_api_key_and_a_coded_answer_is_refused() {
        let (port, served) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 0\r\n\r\n")
                .await;
        let p = provider(&format!(
            "kind = \"azure\"\nendpoint = \"http://127.0.0.1:{port}\"\napi_version = \"v1\""
        ));
        let err = p
            .send(call(Endpoint::responses(), "d"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, UpstreamError::Encoded(c) if c == "gzip"),
            "{err}"
        );
        let head = served.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /openai/v1/responses "), "{head}");
        assert!(head.contains("\r\napi-key: sk-secret-42\r\n"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_url_never_the_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\""
        ));
        let err = p.send(call(Endpoint::chat(), "m")).await.err().unwrap();
        let UpstreamError::Unreachable(text) = &err else {
            panic!("{err:?}")
        };
        assert!(
            text.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")),
            "{text}"
        );
        assert!(!text.contains("sk-secret"), "{text}");
    }

    #[tokio::test]
    async fn a_silent_upstream_is_a_timeout_after_the_providers_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's silent upstream, ended with the test"
        )]
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(socket);
        });
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\ntimeout_ms = 200"
        ));
        // Bounded from outside: a limit that is not applied fails here instead of hanging.
        let started = std::time::Instant::now();
        let sent =
            tokio::time::timeout(Duration::from_secs(30), p.send(call(Endpoint::chat(), "m")))
                .await
                .expect("the provider's 200 ms limit ends the call");
        let elapsed = started.elapsed();
        let err = sent.err().unwrap();
        assert!(
            matches!(err, UpstreamError::Timeout { after_ms: 200 }),
            "{err}"
        );
        assert!(
            elapsed >= Duration::from_millis(200),
            "gave up after {elapsed:?}, before the limit"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_interrupted() {
        let (port, _served) = one_shot(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\"",
        )
        .await;
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\""
        ));
        let reply = p.send(call(Endpoint::chat(), "m")).await.unwrap();
        let err = reply.body.try_collect::<Vec<_>>().await.err().unwrap();
        assert!(matches!(err, UpstreamError::Interrupted(_)), "{err}");
    }

    /// Reads one request (head and body, by content-length); `None` when the peer closed.
    async fn read_one(socket: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + length {
                    return Some(String::from_utf8_lossy(&got).into_owned());
                }
            }
            let n = socket.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn an_upstream_closing_each_connection_after_one_answer_serves_fifty_calls_in_a_row() {
        // Many servers close a keep-alive connection without `Connection: close` (an idle
        // timeout, a per-connection request cap): a pooled connection they closed must not
        // become the next call's 502.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's upstream and its connections, ended with the test"
        )]
        let _served = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    if read_one(&mut socket).await.is_some() {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                    }
                });
            }
        });
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\""
        ));
        for i in 0..50 {
            let reply = p
                .send(call(Endpoint::chat(), "m"))
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(reply.status, 200, "call {i}");
            let body: Vec<Bytes> = reply.body.try_collect().await.unwrap();
            assert_eq!(body.concat(), b"{}", "call {i}");
        }
    }

    #[tokio::test]
    async fn an_ipv6_upstream_is_reached_and_named_in_host() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here: nothing to test");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's one-connection upstream, ended with the test"
        )]
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let head = read_one(&mut socket).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            head
        });
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://[::1]:{port}/v1/\""
        ));
        let reply = p.send(call(Endpoint::chat(), "m")).await.unwrap();
        assert_eq!(reply.status, 200);
        let head = served.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/chat/completions http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: [::1]:{port}\r\n")),
            "{head}"
        );
    }

    /// A forward proxy (absolute-form requests) answering the first request with a redirect
    /// and any later one with 200; returns its port and the request lines it saw.
    async fn redirecting_proxy() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's proxy and its connections, ended with the test"
        )]
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    while let Some(request) = read_one(&mut socket).await {
                        let line = request.lines().next().unwrap_or_default().to_owned();
                        let first = {
                            let mut log = log.lock().unwrap();
                            log.push(line);
                            log.len() == 1
                        };
                        let answer: &[u8] = if first {
                            b"HTTP/1.1 302 Found\r\nlocation: http://up.example/v1/elsewhere\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                        };
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn a_redirect_is_the_answer_through_a_proxy_too() {
        // reqwest needs the process's provider, which `app` installs at start.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (port, seen) = redirecting_proxy().await;
        let p = provider(&format!(
            "kind = \"openai\"\nbase_url = \"http://up.example/v1\"\nproxy = \"http://127.0.0.1:{port}\""
        ));
        let reply = p.send(call(Endpoint::chat(), "m")).await.unwrap();
        let lines = seen.lock().unwrap().clone();
        assert_eq!(reply.status, 302, "{lines:?}");
        assert_eq!(
            lines,
            ["POST http://up.example/v1/chat/completions HTTP/1.1"]
        );
    }

    /// A TLS upstream speaking only HTTP/2 (ALPN `h2`) that resets its first `refuse`
    /// streams with `REFUSED_STREAM` and answers the others `{}`; its port, the CA's PEM
    /// and how many streams it saw.
    async fn h2_upstream(refuse: usize) -> (u16, String, Arc<std::sync::atomic::AtomicUsize>) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = streams.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's upstream and its connections, ended with the test"
        )]
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let mut conn = h2::server::handshake(tls).await.unwrap();
                    while let Some(Ok((_request, mut respond))) = conn.accept().await {
                        if count.fetch_add(1, Ordering::SeqCst) < refuse {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let answer = Response::builder().status(200).body(()).unwrap();
                        let mut send = respond.send_response(answer, false).unwrap();
                        send.send_data(Bytes::from_static(b"{}"), true).unwrap();
                    }
                });
            }
        });
        (port, ca.pem(), streams)
    }

    fn h2_provider(port: u16, ca_pem: &str, dir: &tempfile::TempDir) -> HttpProvider {
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        let config: ProviderConfig = toml::from_str(&format!(
            "kind = \"openai\"\nbase_url = \"https://127.0.0.1:{port}/v1\"\nca_file = \"ca.pem\""
        ))
        .unwrap();
        HttpProvider::from_config(&config, Some(Secret::new("sk-secret-42")), dir.path()).unwrap()
    }

    #[tokio::test]
    async fn http2_by_alpn_retries_a_refused_stream_twice_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let (port, ca, streams) = h2_upstream(2).await;
        let p = h2_provider(port, &ca, &dir);
        let reply = p.send(call(Endpoint::chat(), "m")).await.unwrap();
        assert_eq!(reply.status, 200);
        let body: Vec<Bytes> = reply.body.try_collect().await.unwrap();
        assert_eq!(body.concat(), b"{}");
        assert_eq!(streams.load(Ordering::SeqCst), 3);

        let (port, ca, streams) = h2_upstream(usize::MAX).await;
        let p = h2_provider(port, &ca, &dir);
        let err = p.send(call(Endpoint::chat(), "m")).await.err().unwrap();
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err}");
        assert_eq!(streams.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_base_url_with_a_query_or_credentials_is_refused_at_start() {
        // Its query would be dropped silently from every call (and reqwest, before, sent
        // `/v1?q=1` for chat, the route lost in the query).
        for base in [
            "http://up.example/v1?tenant=7",
            "http://up.example/v1#frag",
            "http://user:pw@up.example/v1",
        ] {
            let config: ProviderConfig =
                toml::from_str(&format!("kind = \"openai\"\nbase_url = \"{base}\"")).unwrap();
            let err = HttpProvider::from_config(&config, None, Path::new(""))
                .err()
                .unwrap_or_else(|| panic!("{base} accepted"));
            assert!(err.to_string().starts_with(&format!("`{base}` ")), "{err}");
        }
    }

    #[tokio::test]
    async fn the_connect_limit_bounds_a_stalled_tls_handshake_by_itself() {
        // Without the provider's overall timeout: the connector's own limit must end a TLS
        // server that accepts TCP and never answers the ClientHello (a limit on TCP alone,
        // HttpConnector's, would not).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[expect(
            clippy::disallowed_methods,
            reason = "a test's silent upstream, ended with the test"
        )]
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(socket);
        });
        let client = direct_client(Duration::from_millis(200), Vec::new()).unwrap();
        let request = Request::get(format!("https://127.0.0.1:{port}/v1/models"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .expect("the connect limit ended the handshake")
            .err()
            .unwrap();
        assert!(timed_out(&err), "{}", error_chain(&err));
    }

    #[test]
    fn a_ca_bundle_reads_its_certificates_and_refuses_a_broken_one() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let two = format!("{}\n{}", cert.pem(), cert.pem());
        assert_eq!(ca_certificates(two.as_bytes()).unwrap().len(), 2);
        assert!(ca_certificates(b"not a certificate").unwrap().is_empty());
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_certificates(broken.as_bytes()).is_err());
    }
}
