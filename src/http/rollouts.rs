//! The rollout admin API under `/admin/v1/rollouts`, behind the admin token (checked by the
//! router's [`super::extract::authenticate`]): start, read, operate, pin, audit log.
//!
//! Each handler carries its `#[utoipa::path]` and each body its `ToSchema` type: the
//! OpenAPI document ([`super::openapi`]) is generated from them.

use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::sorted;
use super::extract::json_body;
use super::openapi::{
    BadRequest, Conflict, InternalError, NotFound, PayloadTooLarge, Unauthorized, Unprocessable,
};
use crate::error::ApiError;
use crate::rollout::control::Operation;
use crate::rollout::view::RolloutView;
use crate::shadow::ShadowCounters;
use crate::state::AppState;
use crate::store::{EventRow, ShadowPair};
use crate::types::Arm;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/rollouts", post(start).get(list))
        .route("/rollouts/{id}", get(show))
        .route("/rollouts/{id}/events", get(events))
        .route("/rollouts/{id}/shadow", get(shadow_pairs))
        .route("/rollouts/{id}/pins/{workspace}", put(pin).delete(unpin))
        .route("/rollouts/{id}/{operation}", post(operate))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRollout {
    /// The route to roll out.
    route: String,
    /// A configured version, not the route's stable one.
    canary: String,
    /// A policy file's stem in the policies folder.
    #[serde(default = "default_policy")]
    policy: String,
}

fn default_policy() -> String {
    "default".into()
}

/// `{id}` of the rollout routes.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct RolloutPath {
    /// A rollout id.
    #[param(example = "ro_0123456789ab")]
    #[allow(
        dead_code,
        reason = "read through axum's `Path`; here for the document"
    )]
    id: String,
}

/// Every rollout, newest first.
#[derive(Serialize, ToSchema)]
pub(super) struct RolloutList {
    data: Vec<RolloutView>,
}

/// The audit log, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct EventList {
    data: Vec<EventRow>,
}

/// Start a rollout
///
/// 201 the rollout; 409 if the route already has a live one; 404 unknown route; 422
/// unknown version or policy, a policy file with mistakes (each named by file and key), the
/// canary already stable, or a canary whose provider key is unset.
#[utoipa::path(
    post,
    path = "/admin/v1/rollouts",
    tag = "rollouts",
    operation_id = "startRollout",
    security(("adminToken" = [])),
    request_body(content = NewRollout, description = "`{\"route\", \"canary\", \"policy\"}`"),
    responses(
        (status = 201, description = "The rollout.", body = RolloutView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = InternalError),
    )
)]
async fn start(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewRollout = json_body(&app, body)?;
    let rollout = app
        .rollouts
        .start(&new.route, &new.canary, &new.policy)
        .await?;
    Ok((StatusCode::CREATED, Json(rollout)).into_response())
}

/// List the rollouts
///
/// Every rollout: state, step, weight, start times, pins, per-arm figures, the judge's last
/// report and decision.
#[utoipa::path(
    get,
    path = "/admin/v1/rollouts",
    tag = "rollouts",
    operation_id = "listRollouts",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollouts.", body = RolloutList),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
    )
)]
async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    let list = RolloutList {
        data: app.rollouts.list().await?,
    };
    Ok(sorted(&list).into_response())
}

/// Read a rollout
///
/// State, step, weight, start times, pins; per arm (since this process took the rollout up)
/// requests, error rate, p50/p95 latency and TTFT, tokens and cost per request, response
/// length; the judge's last report (`e_global` and its threshold 1/α, each gate's verdict,
/// e-value, effect estimate with its interval); the sample-ratio guard; the last decision;
/// shadow counters.
#[utoipa::path(
    get,
    path = "/admin/v1/rollouts/{id}",
    tag = "rollouts",
    operation_id = "getRollout",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.view(&id).await?).into_response())
}

/// A rollout's audit log
///
/// Every change with its actor (`judge` or `operator`), message and, for the judge's, the
/// evidence (the decision and the full report).
#[utoipa::path(
    get,
    path = "/admin/v1/rollouts/{id}/events",
    tag = "rollouts",
    operation_id = "rolloutEvents",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The events.", body = EventList),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn events(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let list = EventList {
        data: app.rollouts.events(&id).await?,
    };
    Ok(sorted(&list).into_response())
}

/// `POST /rollouts/{id}/{operation}`: one route for the four commands (an unknown one is a
/// 404 naming them); each is documented as its own operation below.
async fn operate(
    State(app): State<AppState>,
    Path((id, operation)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let op = Operation::parse(&operation).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no operation `{operation}`: use pause, resume, promote or abort"
        ))
    })?;
    match op {
        Operation::Pause => pause(State(app), Path(id)).await,
        Operation::Resume => resume(State(app), Path(id)).await,
        Operation::Promote => promote(State(app), Path(id)).await,
        Operation::Abort => abort(State(app), Path(id)).await,
    }
}

/// Pause a rollout
///
/// Stops advancing (the judge still reverts on harm: a kill switch must not wait for an
/// operator). 409 unless the rollout is progressing. 409 when the rollout has ended; no
/// request body.
#[utoipa::path(
    post,
    path = "/admin/v1/rollouts/{id}/pause",
    tag = "rollouts",
    operation_id = "pauseRollout",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout after the command.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
    )
)]
async fn pause(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.operate(&id, Operation::Pause).await?).into_response())
}

/// Resume a rollout
///
/// Goes on, and on an inconclusive step restarts its clock. 409 unless the rollout is
/// paused or inconclusive. 409 when the rollout has ended; no request body.
#[utoipa::path(
    post,
    path = "/admin/v1/rollouts/{id}/resume",
    tag = "rollouts",
    operation_id = "resumeRollout",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout after the command.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
    )
)]
async fn resume(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.operate(&id, Operation::Resume).await?).into_response())
}

/// Promote a rollout
///
/// Makes the canary the route's stable version at once (stored, so it survives restarts).
/// 409 when the rollout has ended; no request body.
#[utoipa::path(
    post,
    path = "/admin/v1/rollouts/{id}/promote",
    tag = "rollouts",
    operation_id = "promoteRollout",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout after the command.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
    )
)]
async fn promote(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.operate(&id, Operation::Promote).await?).into_response())
}

/// Abort a rollout
///
/// Sends all traffic back to stable; the canary stays off. 409 when the rollout has ended;
/// no request body.
#[utoipa::path(
    post,
    path = "/admin/v1/rollouts/{id}/abort",
    tag = "rollouts",
    operation_id = "abortRollout",
    params(RolloutPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout after the command.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
    )
)]
async fn abort(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.operate(&id, Operation::Abort).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// The id of the last pair already seen (0, the default, for the first page).
    #[serde(default)]
    #[param(default = 0)]
    after: i64,
    /// Pairs per page, clamped to 1–500.
    #[serde(default = "default_page")]
    #[param(default = 50, minimum = 1, maximum = 500)]
    limit: i64,
}

/// A page of a rollout's shadow pairs.
#[derive(Serialize, ToSchema)]
pub(super) struct ShadowPage {
    data: Vec<ShadowPair>,
    /// The `after` of the next page; null on the last page.
    #[schema(required = true)]
    next: Option<i64>,
    #[schema(required = true)]
    counters: Option<ShadowCounters>,
}

fn default_page() -> i64 {
    50
}

/// A page of shadow pairs
///
/// The rollout's shadow pairs, oldest first; `next` is the `after` of the next page.
#[utoipa::path(
    get,
    path = "/admin/v1/rollouts/{id}/shadow",
    tag = "rollouts",
    operation_id = "rolloutShadowPairs",
    params(RolloutPath, Page),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "A page.", body = ShadowPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn shadow_pairs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::InvalidRequest {
        message: e.body_text(),
        param: None,
    })?;
    let limit = page.limit.clamp(1, 500);
    let view = app.rollouts.view(&id).await?;
    let pairs = app.store.shadow_pairs(&id, page.after, limit).await?;
    let next = (pairs.len() as i64 == limit)
        .then(|| pairs.last().map(|p| p.id))
        .flatten();
    let counters = view.live.and_then(|live| live.shadow);
    let page = ShadowPage {
        data: pairs,
        next,
        counters,
    };
    Ok(sorted(&page).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPin {
    arm: Arm,
}

/// `{id}` and `{workspace}` of the pin routes.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "read through axum's `Path`; here for the document"
)]
pub(super) struct PinPath {
    /// A rollout id.
    #[param(example = "ro_0123456789ab")]
    id: String,
    /// The workspace to pin.
    #[param(example = "acme")]
    workspace: String,
}

/// Pin a workspace to an arm
///
/// Pins a workspace to an arm of a live rollout (a pin beats the percentage; pinned
/// requests are reported, never judged). 404 when the rollout is not live.
#[utoipa::path(
    put,
    path = "/admin/v1/rollouts/{id}/pins/{workspace}",
    tag = "rollouts",
    operation_id = "pinWorkspace",
    params(PinPath),
    security(("adminToken" = [])),
    request_body(content = NewPin, description = "`{\"arm\": \"canary\"}`"),
    responses(
        (status = 200, description = "The rollout after the change.", body = RolloutView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 500, response = InternalError),
    )
)]
async fn pin(
    State(app): State<AppState>,
    Path((id, workspace)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewPin = json_body(&app, body)?;
    Ok(Json(app.rollouts.pin(&id, &workspace, Some(new.arm)).await?).into_response())
}

/// Remove a workspace's pin
///
/// Removes the pin. 404 when the rollout is not live or the workspace has no pin on it.
#[utoipa::path(
    delete,
    path = "/admin/v1/rollouts/{id}/pins/{workspace}",
    tag = "rollouts",
    operation_id = "unpinWorkspace",
    params(PinPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The rollout after the change.", body = RolloutView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn unpin(
    State(app): State<AppState>,
    Path((id, workspace)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.pin(&id, &workspace, None).await?).into_response())
}
