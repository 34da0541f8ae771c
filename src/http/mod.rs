//! HTTP: the axum router. Handlers extract, call the pipeline or the store, and respond.
//!
//! Every route needs a credential (a gateway key under `/v1`, the admin token elsewhere):
//! [`guarded`] puts `extract::authenticate` on every route, and the only exceptions are
//! the visible allowlist [`extract::UNAUTHENTICATED_ROUTES`]: `/healthz`, `/metrics`, the
//! admin API's OpenAPI document, and the dashboard page itself (its data calls carry the
//! admin token). Paths that match no route answer 404 without a credential.

mod admin;
mod dashboard;
mod dropin;
pub mod extract;
mod openai;
pub mod openapi;
mod pretty;
mod rollouts;
pub(crate) mod server;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// The gateway's router: [`routes`] behind [`guarded`].
pub fn router(state: AppState) -> Router {
    guarded(routes(), state)
}

/// Every route the gateway serves, without authentication (see [`guarded`]).
pub fn routes() -> Router<AppState> {
    let routes = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*route}", get(dropin::model))
        .route("/v1/responses", post(dropin::responses))
        .route(
            "/v1/responses/{id}",
            get(dropin::stored_response).delete(dropin::stored_response),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(dropin::stored_response),
        )
        .route("/v1/responses/{id}/cancel", post(dropin::stored_response))
        .route("/v1/embeddings", post(dropin::embeddings))
        .route("/v1/feedback", post(openai::feedback))
        .nest(
            "/admin/v1",
            admin::router()
                .merge(rollouts::router())
                .layer(axum::middleware::from_fn(pretty::layer)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/v1/openapi.json", get(openapi::document))
        .route("/dashboard", get(dashboard::page));
    // The operations with a model, each its own route (so a wrong method is a 405), and
    // the catch-all below `/v1` for the passthrough endpoints and a clear 404.
    let routes = crate::forward::MODEL_PATHS
        .iter()
        .fold(routes, |routes, path| {
            routes.route(&format!("/v1/{path}"), post(dropin::with_model))
        });
    routes.route(CATCH_ALL, any(dropin::other))
}

/// The route that catches every other path below `/v1` (see [`extract::authenticate`]).
pub(crate) const CATCH_ALL: &str = "/v1/{*path}";

/// `routes` with authentication on every route but the allowlist, the 404 fallback and the
/// body limit: a route added to `routes` is closed until it is added to the allowlist.
pub fn guarded(routes: Router<AppState>, state: AppState) -> Router {
    let max_body = state.settings.config.server.max_body_bytes;
    let body_timeout =
        std::time::Duration::from_millis(state.settings.config.server.body_read_timeout_ms);
    routes
        .route_layer(extract::AuthenticateLayer {
            state: state.clone(),
        })
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // One layer of two, not two layers: `Router::layer` boxes each route once per
        // layer, and every request clones its route's boxes (each clone cloning the boxes
        // under it); three layers cost 14 allocations a request more than one (callgrind,
        // 136 -> 122 a plain request). The first is the outermost, as if each were added
        // with `.layer` in reverse.
        .layer(
            tower::ServiceBuilder::new()
                .layer(extract::EdgeLayer {
                    max_body_bytes: max_body,
                    body_timeout,
                })
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .with_state(state)
}

/// `GET /healthz`: `ok` while every background task runs and the routing state is loaded.
/// 503 with an OpenAI-shaped error before this replica has read the routing state (so that
/// a load balancer or a Kubernetes readiness probe sends it nothing it cannot route yet),
/// and once a background task has died (the process is then stopping, see
/// [`crate::tasks`]). A database that is away does not make it fail: the replica routes on
/// its last table.
async fn healthz(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> Result<&'static str, ApiError> {
    if let Some(failure) = app.tasks.failure() {
        return Err(ApiError::Unavailable(failure.to_string()));
    }
    if !app.cluster.is_ready() {
        return Err(ApiError::NotReady(
            "the routing state is not loaded yet".into(),
        ));
    }
    Ok("ok")
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
