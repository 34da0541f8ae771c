//! The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models`.

use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::{bearer_of, body_error};
use crate::error::ApiError;
use crate::pipeline::{self, Answer, Body};
use crate::state::AppState;

pub async fn chat_completions(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match app.keys.authenticate(&app.store, bearer_of(&headers)).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return body_error(rejection, app.settings.config.server.max_body_bytes)
                .into_response();
        }
    };
    respond(pipeline::chat_completion(&app, caller, &headers, body).await)
}

fn respond(answer: Answer) -> Response {
    let mut response = match answer.result {
        Ok(Body::Whole {
            status,
            headers,
            bytes,
        }) => (status, headers, bytes).into_response(),
        Ok(Body::Stream {
            status,
            headers,
            relay,
        }) => (status, headers, HttpBody::from_stream(*relay)).into_response(),
        Err(e) => e.into_response(),
    };
    let out = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&answer.request_id) {
        out.insert(HeaderName::from_static("x-request-id"), id);
    }
    if let Some(routed) = answer.routed {
        let set = |out: &mut HeaderMap, name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(HeaderName::from_static(name), v);
            }
        };
        set(out, "x-sluice-route", routed.route.as_str());
        set(out, "x-sluice-version", &routed.version);
        set(out, "x-sluice-arm", routed.arm.as_str());
    }
    response
}

/// The routes, listed as models: what a client may put in `model`.
pub async fn models(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.keys
        .authenticate(&app.store, bearer_of(&headers))
        .await?;
    let routing = app.routing.load();
    let data: Vec<_> = routing
        .route_names()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}
