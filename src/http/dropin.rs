//! The rest of the OpenAI surface: `POST /v1/responses` and its stored-response
//! operations, `POST /v1/embeddings`, `GET /v1/models/{route}`, and every other `/v1` path
//! (forwarded with a model, passed through without one, or a clear 404). The router's
//! layer has authenticated the caller (and admitted it, for the routes that spend tokens).

use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method};
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

pub async fn responses(
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

pub async fn embeddings(
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

/// `GET|DELETE /v1/responses/{id}`, `GET …/input_items`, `POST …/cancel`.
pub async fn stored_response(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rest): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let (id, tail) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let allowed = matches!(
        (&method, tail),
        (&Method::GET | &Method::DELETE, "")
            | (&Method::GET, "input_items")
            | (&Method::POST, "cancel")
    );
    if !allowed {
        return ApiError::NotFound(format!("no such endpoint: {method} {}", uri.path()))
            .into_response();
    }
    let raw = match body(&app, raw) {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let path = format!("responses/{rest}");
    let forward = Forward {
        method,
        path: &path,
        query: uri.query(),
        headers: &headers,
        body: raw,
    };
    respond(forward::stored_response(&app, &caller, id, forward).await)
}

/// `GET /v1/models/{route}`: the route as a model object.
pub async fn model(
    State(app): State<AppState>,
    Path(route): Path<String>,
) -> Result<Response, ApiError> {
    if app.routing.load().route(&route).is_none() {
        return Err(ApiError::UnknownRoute(route));
    }
    Ok(
        axum::Json(json!({"id": route, "object": "model", "created": 0, "owned_by": "sluice"}))
            .into_response(),
    )
}

/// Every other `/v1/…` path.
pub async fn other(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let kind = forward::classify(&path);
    if kind == OtherPath::Unknown {
        return forward::unknown_path(method.as_str(), uri.path()).into_response();
    }
    let raw = match body(&app, raw) {
        Ok(raw) => raw,
        Err(e) => return e.into_response(),
    };
    let forward = Forward {
        method: method.clone(),
        path: &path,
        query: uri.query(),
        headers: &headers,
        body: raw,
    };
    match kind {
        OtherPath::WithModel if method == Method::POST => {
            respond(forward::with_model(&app, caller, forward).await)
        }
        OtherPath::WithModel => {
            ApiError::NotFound(format!("no such endpoint: {method} {}", uri.path())).into_response()
        }
        _ => respond(forward::passthrough(&app, forward).await),
    }
}
