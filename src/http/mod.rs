//! HTTP: the axum router. Handlers extract, call the pipeline or the store, and respond.
//!
//! Every route needs a credential (a gateway key under `/v1`, the admin token under
//! `/admin/v1`) except the short allowlist here: `/healthz`, `/metrics`, the admin API's
//! OpenAPI document, and the dashboard page itself (its data calls carry the admin token).

mod admin;
mod dashboard;
mod openai;
mod openapi;
mod rollouts;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let max_body = state.settings.config.server.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/feedback", post(openai::feedback))
        .nest("/admin/v1", admin::router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/v1/openapi.json", get(openapi::document))
        .route("/dashboard", get(dashboard::page))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Readiness: 503 until this replica has loaded the routing state, so that a load balancer
/// (or a Kubernetes readiness probe) sends it nothing before it can route.
async fn healthz(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if app.cluster.is_ready() {
        "ok".into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the routing state is not loaded yet",
        )
            .into_response()
    }
}

/// Prometheus scrapes without a credential: `/metrics` holds aggregates, no prompts, keys or
/// workspace names. Restrict it at the network if that is too much.
async fn metrics(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = crate::telemetry::render(&app).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The bearer token of a request, if any.
fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    crate::auth::bearer(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Maps a body that could not be read (too large, broken off) to our error.
fn body_error(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::InvalidRequest {
            message: rejection.body_text(),
            param: None,
        }
    }
}
