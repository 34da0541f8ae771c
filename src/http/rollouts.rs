//! The rollout admin API under `/admin/v1/rollouts`, behind the admin token (checked by the
//! router's [`super::extract::authenticate`]): start, read, operate, pin, audit log.

use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::extract::json_body;
use crate::error::ApiError;
use crate::rollout::control::Operation;
use crate::state::AppState;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRollout {
    route: String,
    canary: String,
    #[serde(default = "default_policy")]
    policy: String,
}

fn default_policy() -> String {
    "default".into()
}

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

async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({"data": app.rollouts.list().await?})).into_response())
}

async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.view(&id).await?).into_response())
}

async fn events(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(json!({"data": app.rollouts.events(&id).await?})).into_response())
}

async fn operate(
    State(app): State<AppState>,
    Path((id, operation)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let op = Operation::parse(&operation).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no operation `{operation}`: use pause, resume, promote or abort"
        ))
    })?;
    Ok(Json(app.rollouts.operate(&id, op).await?).into_response())
}

#[derive(Deserialize)]
struct Page {
    /// The id of the last pair already seen (0 for the first page).
    #[serde(default)]
    after: i64,
    #[serde(default = "default_page")]
    limit: i64,
}

fn default_page() -> i64 {
    50
}

/// A page of the rollout's shadow pairs, oldest first; `next` is the `after` of the next page.
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
    Ok(Json(json!({"data": pairs, "next": next, "counters": counters})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPin {
    arm: Arm,
}

async fn pin(
    State(app): State<AppState>,
    Path((id, workspace)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewPin = json_body(&app, body)?;
    Ok(Json(app.rollouts.pin(&id, &workspace, Some(new.arm)).await?).into_response())
}

async fn unpin(
    State(app): State<AppState>,
    Path((id, workspace)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(app.rollouts.pin(&id, &workspace, None).await?).into_response())
}
