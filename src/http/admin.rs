//! The admin API under `/admin/v1`, behind the admin token (checked by the router's
//! [`super::extract::authenticate`]): workspaces, keys, routes, stats.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::extract::json_body;
use crate::auth::generate_key;
use crate::error::ApiError;
use crate::measure::aggregate::StatsSnapshot;
use crate::state::AppState;
use crate::types::WorkspaceId;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces", post(create_workspace).get(list_workspaces))
        .route("/workspaces/{id}/keys", post(create_key).get(list_keys))
        .route("/workspaces/{id}/keys/{key_id}", delete(revoke_key))
        .route("/workspaces/{id}/limits", put(set_limits).get(get_limits))
        .route("/routes", get(list_routes))
        .route("/routes/{route}/stats", get(route_stats))
        .route("/cluster", get(cluster))
}

/// A workspace id: 1–64 lowercase letters, digits, `-` or `_`, starting with a letter or digit.
fn check_workspace_id(id: &str) -> Result<(), ApiError> {
    WorkspaceId::parse(id)
        .map(drop)
        .map_err(|_| ApiError::InvalidRequest {
            message: format!(
                "`{id}` is not a workspace id: use 1–64 lowercase letters, digits, - or _"
            ),
            param: Some("id"),
        })
}

async fn existing_workspace(app: &AppState, id: &str) -> Result<(), ApiError> {
    match app.store.workspace(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("no workspace `{id}`"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWorkspace {
    id: String,
}

async fn create_workspace(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewWorkspace = json_body(&app, body)?;
    check_workspace_id(&new.id)?;
    let workspace = app.store.create_workspace(&new.id).await?;
    tracing::info!(workspace = %workspace.id, "workspace created");
    Ok((StatusCode::CREATED, Json(workspace)).into_response())
}

async fn list_workspaces(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({"data": app.store.workspaces().await?})).into_response())
}

async fn create_key(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    let new = generate_key();
    let info = app
        .store
        .create_key(&id, &new.id, &new.hash, &new.prefix)
        .await?;
    tracing::info!(workspace = %id, key_id = %info.id, "key created");
    // The only time the key is ever shown.
    let body = json!({
        "id": info.id, "workspace": info.workspace, "key": new.key.expose(),
        "prefix": info.prefix, "created_at_ms": info.created_at_ms,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_keys(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    Ok(Json(json!({"data": app.store.keys(&id).await?})).into_response())
}

async fn revoke_key(
    State(app): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(hash) = app.store.revoke_key(&id, &key_id).await? else {
        return Err(ApiError::NotFound(format!(
            "workspace `{id}` has no live key `{key_id}`"
        )));
    };
    app.keys.forget(&hash).await;
    tracing::info!(workspace = %id, key_id = %key_id, "key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_routes(State(app): State<AppState>) -> Result<Response, ApiError> {
    let routing = app.routing.load();
    let data: Vec<_> = routing
        .route_names()
        .filter_map(|name| routing.route(name).map(|r| (name, r)))
        .map(|(name, r)| {
            json!({
                "route": name,
                "stable": &*r.stable.version.name,
                "model": &*r.stable.version.model,
                "rollout": r.rollout.as_ref().map(|ro| &*ro.tap.rollout_id),
            })
        })
        .collect();
    Ok(Json(json!({"data": data})).into_response())
}

/// The replicas of this gateway (live or gone), and which one judges which rollout.
async fn cluster(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(app.cluster.view(&app.store).await?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    /// This replica's live figures since it started.
    Replica,
    /// Every replica's stored records.
    Cluster,
}

#[derive(Deserialize)]
struct StatsQuery {
    scope: Option<Scope>,
}

/// Live figures per version of one route since this process started, plus the record
/// sink's counters (how many records were written, dropped or lost). With
/// `?scope=cluster`, the figures of every replica, summed from the stored records.
async fn route_stats(
    State(app): State<AppState>,
    Path(route): Path<String>,
    query: Result<axum::extract::Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        message: format!("{}: use scope=replica or scope=cluster", e.body_text()),
        param: Some("scope"),
    })?;
    let routing = app.routing.load();
    let entry = routing
        .route(&route)
        .ok_or_else(|| ApiError::NotFound(format!("no route `{route}`")))?;
    if let Some(Scope::Cluster) = query.scope {
        let rows = app.store.route_totals(&route).await?;
        let requests: i64 = rows.iter().map(|r| r.requests).sum();
        let body = json!({
            "route": route,
            "scope": "cluster",
            "stable": &*entry.stable.version.name,
            "rollout": entry.rollout.as_ref().map(|ro| &*ro.tap.rollout_id),
            "arms": rows,
            "total": {"requests": requests},
        });
        return Ok(Json(body).into_response());
    }
    let mut total = StatsSnapshot::default();
    let mut by_version: std::collections::BTreeMap<String, StatsSnapshot> = Default::default();
    let mut by_arm = serde_json::Map::new();
    for (version, arm, stats) in app.catalog.route_stats(&route) {
        let snapshot = stats.snapshot();
        total.merge(&snapshot);
        by_version
            .entry(version.clone())
            .or_default()
            .merge(&snapshot);
        let summary = serde_json::to_value(snapshot.summary()).unwrap_or_default();
        by_arm.insert(format!("{version}/{}", arm.as_str()), summary);
    }
    let versions: serde_json::Map<String, serde_json::Value> = by_version
        .into_iter()
        .map(|(v, s)| (v, serde_json::to_value(s.summary()).unwrap_or_default()))
        .collect();
    let served: Vec<String> = versions.keys().cloned().collect();
    let guardrails: Vec<_> = app
        .guardrail_counts
        .rows()
        .into_iter()
        .filter(|row| served.contains(&row.version))
        .collect();
    let body = json!({
        "route": route,
        "scope": "replica",
        "replica": app.cluster.id(),
        "stable": &*entry.stable.version.name,
        "guardrails": guardrails,
        "rollout": entry.rollout.as_ref().map(|ro| &*ro.tap.rollout_id),
        "versions": versions,
        "arms": by_arm,
        "total": total.summary(),
        "records": app.sink.counters(),
    });
    Ok(Json(body).into_response())
}

/// Sets a workspace's own limits; what the body leaves out falls back to `[limits]`.
async fn set_limits(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    let limits: crate::types::Limits = json_body(&app, body)?;
    limits.check().map_err(|message| ApiError::InvalidRequest {
        message,
        param: None,
    })?;
    app.store.set_limits(&id, &limits).await?;
    app.limits.set(&id, limits);
    tracing::info!(workspace = %id, "limits set");
    Ok(Json(json!({"workspace": id, "limits": app.limits.limits_of(&id)})).into_response())
}

async fn get_limits(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    Ok(Json(json!({"workspace": id, "limits": app.limits.limits_of(&id)})).into_response())
}
