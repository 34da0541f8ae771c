//! Authentication by exception, and the helpers every handler shares to read a request.
//!
//! `authenticate` is one middleware the router puts on every route: a request is let
//! through without a credential only when its path is in [`UNAUTHENTICATED_ROUTES`]. Under
//! `/v1` it needs a gateway key (the `Caller` goes into the request's extensions, and the
//! workspace's limits are checked for the routes in `ADMITTED_ROUTES`); everywhere else it
//! needs the admin token (`Admin` goes into the extensions). A route added without
//! thought is therefore closed, not open.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, MatchedPath, OriginalUri, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Body as _;

pub(crate) use crate::auth::Caller;
use crate::auth::admin_token_matches;
use crate::error::ApiError;
use crate::state::AppState;

/// The only routes answered without a credential: health and metrics (aggregates, no
/// prompts, keys or workspace names), the admin API's OpenAPI document, and the dashboard
/// page itself (one self-contained document; its data calls carry the admin token).
pub const UNAUTHENTICATED_ROUTES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/admin/v1/openapi.json",
    "/dashboard",
];

/// The `/v1` routes that spend tokens, and so are refused once the workspace is over its
/// limits (429 with `Retry-After`). Listing models and sending feedback are not.
pub(crate) const ADMITTED_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
];

/// Proof that the request carried the admin token; in the extensions of every admin request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admin;

/// The answer of [`Authenticated`] and [`Edge`]: one boxed future per request.
pub(crate) type BoxedAnswer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// [`authenticate`] on every route of a router, as `Router::route_layer(AuthenticateLayer
/// { state })`.
///
/// Written by hand rather than with `axum::middleware::from_fn`, which on every request
/// boxes the route once more, wraps it in a `Next` whose call is boxed again, and runs the
/// `State` extractor: about 1 200 instructions a plain request (callgrind, c=64).
#[derive(Clone)]
pub(crate) struct AuthenticateLayer {
    pub(crate) state: AppState,
}

impl<S> tower::Layer<S> for AuthenticateLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A route behind [`authenticate`] (see [`AuthenticateLayer`]).
#[derive(Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for Authenticated<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedAnswer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The service made ready goes with the request; its clone waits for the next call
        // (tower's contract: `call` only on a service whose `poll_ready` said ready).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            match authenticate(&state, &mut request).await {
                None => inner.call(request).await,
                Some(refusal) => Ok(refusal),
            }
        })
    }
}

/// The check every route passes (see the module header): `None` lets `request` through,
/// with its [`Caller`] or [`Admin`] in its extensions; `Some` is the answer that refuses it
/// (401, 403, 404 for a path sluice does not serve, 429 for a locked-out address or a
/// workspace over its limits).
pub(crate) async fn authenticate(app: &AppState, request: &mut Request) -> Option<Response> {
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |o| o.0.path())
        .to_owned();
    if UNAUTHENTICATED_ROUTES.contains(&path.as_str()) {
        return None;
    }
    if let Some(not_found) = not_served(request, &path) {
        return Some(not_found);
    }
    let token = bearer_of(request.headers()).map(str::to_owned);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let gate = Gate { app, peer };
    // A locked-out address is refused before its credential is looked at.
    if let Some(wait) = peer.and_then(|ip| app.throttle.locked(ip)) {
        return Some(throttled("failed authentications", wait));
    }
    if path == "/v1" || path.starts_with("/v1/") {
        gate.key(request, &path, token.as_deref()).await
    } else {
        gate.admin(request, token.as_deref())
    }
}

/// The 404 of a path below `/v1` that sluice does not serve, answered without a
/// credential: the catch-all below /v1 (for the passthrough endpoints) matches every path
/// there, and such a path is as unknown as one that matches no route. Every other route,
/// even one added without thought, needs a credential.
fn not_served(request: &Request, path: &str) -> Option<Response> {
    let caught = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| m.as_str() == super::CATCH_ALL);
    // Classified only when caught: the `&str` pattern search is every chat request's cost
    // otherwise (270 instructions).
    let served = || {
        crate::forward::classify(path.trim_start_matches("/v1/"))
            == crate::forward::OtherPath::Passthrough
    };
    (caught && !served())
        .then(|| crate::forward::unknown_path(request.method().as_str(), path).into_response())
}

/// A 429 for a client address over a limit (`what`), retried after `wait`.
fn throttled(what: &'static str, wait: Duration) -> Response {
    ApiError::Throttled {
        what,
        retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
    .into_response()
}

/// The credential check of one request from `peer`.
struct Gate<'a> {
    app: &'a AppState,
    peer: Option<IpAddr>,
}

impl Gate<'_> {
    /// A refused credential, counted against the address (which it may lock out).
    fn refuse(&self, error: ApiError) -> Response {
        match self.peer.and_then(|ip| self.app.throttle.note_failure(ip)) {
            Some(wait) => throttled("failed authentications", wait),
            None => error.into_response(),
        }
    }

    /// A `/v1` request needs a gateway key: its [`Caller`] goes into the extensions, and a
    /// route that spends tokens is admitted under the workspace's limits. `Some`: refused.
    async fn key(
        &self,
        request: &mut Request,
        path: &str,
        token: Option<&str>,
    ) -> Option<Response> {
        let app = self.app;
        let caller = match app.keys.authenticate(&app.store, token).await {
            Ok(caller) => caller,
            Err(ApiError::InvalidKey) if admin_token_matches(&app.settings.admin_token, token) => {
                return Some(self.refuse(ApiError::AdminTokenAsKey));
            }
            Err(e @ (ApiError::InvalidKey | ApiError::MissingKey)) => return Some(self.refuse(e)),
            Err(e) => return Some(e.into_response()),
        };
        if ADMITTED_ROUTES.contains(&path) {
            if let Err(e) = app.limits.admit(&caller.workspace) {
                return Some(e.into_response());
            }
            // A request that will yield a record waits briefly while the record queue is
            // nearly full and the writer is keeping up (never for a failing database).
            app.sink.pace().await;
        }
        request.extensions_mut().insert(caller);
        None
    }

    /// Any other request needs the admin token ([`Admin`] goes into the extensions),
    /// within the address's admin-call limit. `Some`: refused.
    fn admin(&self, request: &mut Request, token: Option<&str>) -> Option<Response> {
        if admin_token_matches(&self.app.settings.admin_token, token) {
            if let Some(Err(wait)) = self.peer.map(|ip| self.app.throttle.admit_admin(ip)) {
                return Some(throttled("admin calls", wait));
            }
            request.extensions_mut().insert(Admin);
            None
        } else if token.is_some_and(|t| t.starts_with(crate::auth::KEY_PREFIX)) {
            Some(self.refuse(ApiError::KeyAsAdminToken))
        } else {
            Some(self.refuse(ApiError::AdminUnauthorized))
        }
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    crate::auth::bearer(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Maps a body that could not be read (too large, too slow, broken off) to our error.
pub(crate) fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(e) = source {
        if let Some(late) = e.downcast_ref::<BodyTimedOut>() {
            return ApiError::BodyTimeout {
                after_ms: late.after_ms,
            };
        }
        source = e.source();
    }
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::InvalidRequest {
            message: rejection.body_text(),
            param: None,
        }
    }
}

/// A JSON body of type `T`.
///
/// # Errors
/// [`ApiError::BodyTooLarge`] past `[server] max_body_bytes`, [`ApiError::InvalidRequest`]
/// when the body cannot be read or is not a `T`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| body_error(r, app.settings.config.server.max_body_bytes))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid body: {e}"),
        param: None,
    })
}

/// The error a [`DeadlineBody`] ends with when its deadline passes first.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {after_ms} ms")]
pub(crate) struct BodyTimedOut {
    /// `[server] body_read_timeout_ms`.
    pub(crate) after_ms: u64,
}

/// A request body that must be read whole before a deadline (`[server]
/// body_read_timeout_ms`, counted from when the head was read): past it, reading ends with
/// [`BodyTimedOut`], which [`body_error`] answers 408. A client that trickles its body
/// below any useful rate holds no request, and no handler, for ever.
pub(crate) struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    after_ms: u64,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let after_ms = self.after_ms;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut { after_ms }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses a request whose `Content-Length` is over `limit` bytes before any of its body is
/// read: a client that sent `Expect: 100-continue` is told 413 instead of being invited to
/// send a body that would be refused. A body without a length is held to the limit as it is
/// read (`DefaultBodyLimit`).
///
/// # Errors
/// [`ApiError::BodyTooLarge`] when the declared length is over `limit`.
pub(crate) fn declared_size_within(request: &Request, limit: usize) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(ApiError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// What every request passes first and every answer last, on every route and the
/// fallback, as `Router::layer(EdgeLayer { .. })`: a body declared larger than
/// `max_body_bytes` is refused (413) before it is read, the body is read under
/// `body_timeout` ([`body_deadline`]), and the router's own error answers get OpenAI's
/// shape ([`crate::error::openai_shaped`]).
///
/// Written by hand rather than as axum's `map_request` and `map_response`, which box a
/// future each on every request: this boxes one, and none when the request is refused.
#[derive(Clone, Copy)]
pub(crate) struct EdgeLayer {
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: Duration,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            limits: *self,
        }
    }
}

/// A router behind [`EdgeLayer`].
#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    limits: EdgeLayer,
}

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedAnswer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Err(e) = declared_size_within(&request, self.limits.max_body_bytes) {
            return Box::pin(std::future::ready(Ok(e.into_response())));
        }
        let answer = self
            .inner
            .call(body_deadline(request, self.limits.body_timeout));
        Box::pin(async move {
            let Ok(response) = answer.await;
            Ok(crate::error::openai_shaped(response).await)
        })
    }
}

/// Puts `request`'s body under a deadline of `limit` from now (see [`DeadlineBody`]); a
/// request without a body is left as it is.
pub(crate) fn body_deadline(request: Request, limit: Duration) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    let (parts, inner) = request.into_parts();
    let body = DeadlineBody {
        inner,
        deadline: Box::pin(tokio::time::sleep(limit)),
        after_ms: limit.as_millis() as u64,
    };
    Request::from_parts(parts, axum::body::Body::new(body))
}
