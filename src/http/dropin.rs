//! The rest of the OpenAI surface: `POST /v1/responses` and its stored-response
//! operations, `POST /v1/embeddings`, `GET /v1/models/{route}`, and every other `/v1` path
//! (forwarded with a model, passed through without one, or a clear 404). The router's
//! layer has authenticated the caller (and admitted it, for the routes that spend tokens).

use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use axum::Extension;

use super::extract::{Caller, body_error};
use super::openai::respond;
use crate::error::ApiError;
use crate::forward::{self, Forward, OtherPath};
use crate::state::AppState;

fn body(app: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| body_error(r, app.settings.config.server.max_body_bytes))
}

/// A request to forward: `path` below `/v1/`, the query of `uri`.
fn forward_of<'a>(
    method: Method,
    path: &'a str,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: Bytes,
) -> Forward<'a> {
    Forward {
        method,
        path,
        query: uri.query(),
        headers,
        body,
    }
}

/// `POST /v1/responses`: the Responses API, routed and measured like chat completions
/// (see [`crate::responses`]).
pub(crate) async fn responses(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    match body(&app, raw) {
        Ok(raw) => respond(crate::responses::create(&app, caller, &headers, raw).await),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/embeddings`: always to the route's stable version (see [`forward::embeddings`]).
pub(crate) async fn embeddings(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    match body(&app, raw) {
        Ok(raw) => respond(forward::embeddings(&app, caller, &headers, raw).await),
        Err(e) => e.into_response(),
    }
}

/// `GET|DELETE /v1/responses/{id}`, `GET …/input_items`, `POST …/cancel` (the router
/// admits only these methods).
pub(crate) async fn stored_response(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let raw = match body(&app, raw) {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let path = uri.path().trim_start_matches("/v1/");
    let forward = forward_of(method, path, &uri, &headers, raw);
    respond(forward::stored_response(&app, &caller, &id, forward).await)
}

/// `GET /v1/models/{route}`: the route as a model object.
pub(crate) async fn model(
    State(app): State<AppState>,
    Path(route): Path<String>,
) -> Result<Response, ApiError> {
    if app.routing.load().route(&route).is_none() {
        return Err(ApiError::UnknownRoute(
            app.routing.load().explain_unknown(&route),
        ));
    }
    Ok(
        axum::Json(json!({"id": route, "object": "model", "created": 0, "owned_by": "sluice"}))
            .into_response(),
    )
}

/// `POST /v1/completions`, `/v1/moderations`, `/v1/images/*`, `/v1/audio/*`: to the
/// route's stable version.
pub(crate) async fn with_model(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let raw = match body(&app, raw) {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let path = uri.path().trim_start_matches("/v1/");
    let forward = forward_of(Method::POST, path, &uri, &headers, raw);
    respond(forward::with_model(&app, caller, forward).await)
}

/// Every other `/v1/…` path: a passthrough endpoint (served only with `[passthrough]`), or
/// a 404 (which [`super::extract::authenticate`] already answers without a credential).
pub(crate) async fn other(
    State(app): State<AppState>,
    Path(path): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    if forward::classify(&path) != OtherPath::Passthrough {
        return forward::unknown_path(method.as_str(), uri.path()).into_response();
    }
    let raw = match body(&app, raw) {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let forward = forward_of(method, &path, &uri, &headers, raw);
    respond(forward::passthrough(&app, forward).await)
}
