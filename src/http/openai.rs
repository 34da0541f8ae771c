//! The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models`.

use axum::Extension;
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::extract::{Caller, body_error};
use crate::error::ApiError;
use crate::pipeline::{self, Answer, Body};
use crate::state::AppState;

/// `POST /v1/chat/completions`; the router's layer has authenticated the caller and
/// admitted it under its workspace's limits.
pub(crate) async fn chat_completions(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return body_error(rejection, app.settings.config.server.max_body_bytes)
                .into_response();
        }
    };
    respond(pipeline::chat_completion(&app, caller, &headers, body).await)
}

pub(super) fn respond(answer: Answer) -> Response {
    let mut response = match answer.result {
        Ok(Body::Whole {
            status,
            headers,
            bytes,
        }) => whole(status, headers, bytes),
        Ok(Body::Stream {
            status,
            headers,
            relay,
        }) => (status, headers, HttpBody::from_stream(*relay)).into_response(),
        Ok(Body::Events {
            status,
            headers,
            events,
        }) => (status, headers, HttpBody::from_stream(events)).into_response(),
        Err(e) => e.into_response(),
    };
    let out = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&answer.request_id) {
        out.insert(X_REQUEST_ID, id);
    }
    if let Some(routed) = answer.routed {
        let set = |out: &mut HeaderMap, name: HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(name, v);
            }
        };
        set(out, X_SLUICE_ROUTE, routed.route.as_str());
        set(out, X_SLUICE_VERSION, &routed.version);
        let arm = match routed.arm {
            crate::types::Arm::Stable => ARM_STABLE,
            crate::types::Arm::Canary => ARM_CANARY,
        };
        out.insert(X_SLUICE_ARM, arm);
    }
    response
}

// Constants, not `HeaderName::from_static` at the call: that validates the name on every
// request unless evaluated in a const context.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_SLUICE_ROUTE: HeaderName = HeaderName::from_static("x-sluice-route");
const X_SLUICE_VERSION: HeaderName = HeaderName::from_static("x-sluice-version");
const X_SLUICE_ARM: HeaderName = HeaderName::from_static("x-sluice-arm");
// The arm's names as values, for the same reason (and no copy into a new buffer).
const ARM_STABLE: HeaderValue = HeaderValue::from_static("stable");
const ARM_CANARY: HeaderValue = HeaderValue::from_static("canary");

/// A whole answer: the upstream's headers become the response's as they are (merging them
/// into a new map re-hashed every one), unless they lack a content type, which axum then
/// supplies.
fn whole(status: axum::http::StatusCode, headers: HeaderMap, bytes: Bytes) -> Response {
    if !headers.contains_key(axum::http::header::CONTENT_TYPE) {
        return (status, headers, bytes).into_response();
    }
    let mut response = Response::new(HttpBody::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The routes, listed as models: what a client may put in `model`.
pub(crate) async fn models(State(app): State<AppState>) -> Result<Response, ApiError> {
    let routing = app.routing.load();
    let data: Vec<_> = routing
        .route_names()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    request_id: String,
    metric: String,
    value: serde_json::Value,
}

/// `POST /v1/feedback`: a business metric on a request this workspace made
/// (`{"request_id", "metric", "value": true | number}`), joined to the request's arm and,
/// when its rollout's policy declares the metric, judged.
pub(crate) async fn feedback(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| body_error(r, app.settings.config.server.max_body_bytes))?;
    let f: Feedback = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid feedback: {e}"),
        param: None,
    })?;
    let value = f.checked_value()?;
    let body = record_feedback(&app, &caller, f, value).await?;
    Ok((axum::http::StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

impl Feedback {
    /// The value as a number (true is 1, false 0).
    ///
    /// Errors: [`ApiError::InvalidRequest`] for a metric name that is not 1–64 of
    /// `a-z 0-9 _ . -`, or a value that is not a boolean or a finite number.
    fn checked_value(&self) -> Result<f64, ApiError> {
        let metric_ok = !self.metric.is_empty()
            && self.metric.len() <= 64
            && self
                .metric
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if !metric_ok {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "`{}` is not a metric name: use 1–64 of a-z 0-9 _ . -",
                    self.metric
                ),
                param: Some("metric"),
            });
        }
        let value = match &self.value {
            serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
            serde_json::Value::Number(n) => {
                n.as_f64().filter(|x| x.is_finite()).unwrap_or(f64::NAN)
            }
            _ => f64::NAN,
        };
        if value.is_nan() {
            return Err(ApiError::InvalidRequest {
                message: "`value` must be a boolean or a number".into(),
                param: Some("value"),
            });
        }
        Ok(value)
    }
}

/// Joins feedback to its request's placement, has the rollout judge it (the first value
/// per request and metric), stores it, and gives the body of the 202.
///
/// Errors: [`ApiError::NotFound`] for a request this workspace did not make; store errors.
async fn record_feedback(
    app: &AppState,
    caller: &Caller,
    f: Feedback,
    value: f64,
) -> Result<serde_json::Value, ApiError> {
    let placement = match app.sink.recent(&f.request_id) {
        Some(p) => Some(p),
        None => app.store.request_placement(&f.request_id).await?,
    };
    // Another workspace's request is as unknown as a request that never was.
    let placement = placement
        .filter(|p| *p.workspace == *caller.workspace)
        .ok_or_else(|| {
            ApiError::NotFound(format!("no request `{}` in this workspace", f.request_id))
        })?;
    let first = !app.store.feedback_exists(&f.request_id, &f.metric).await?;
    let judged = match &placement.rollout_id {
        Some(rollout) => {
            app.rollouts
                .feedback(rollout, &f.metric, &placement, value, first)
                .await?
        }
        None => false,
    };
    app.store
        .insert_feedback(&f.request_id, &placement, &f.metric, value)
        .await?;
    Ok(json!({
        "request_id": f.request_id, "metric": f.metric, "value": value,
        "rollout": placement.rollout_id, "arm": placement.arm, "judged": judged,
    }))
}
