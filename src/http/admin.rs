//! The admin API under `/admin/v1`, behind the admin token (checked by the router's
//! [`super::extract::authenticate`]): workspaces, keys, routes, stats.
//!
//! Each handler carries its `#[utoipa::path]` and each body its `ToSchema` type: the
//! OpenAPI document ([`super::openapi`]) is generated from them.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::json_body;
use super::openapi::{
    BadRequest, Conflict, InternalError, NotFound, PayloadTooLarge, Unauthorized,
};
use crate::auth::generate_key;
use crate::error::ApiError;
use crate::guardrails::CountRow;
use crate::measure::aggregate::{StatsSnapshot, StatsSummary};
use crate::measure::sink::SinkCounters;
use crate::state::AppState;
use crate::store::{KeyInfo, RouteTotals, Workspace};
use crate::types::{Limits, WorkspaceId};

/// A typed view as the JSON body, its objects' keys in the order of their names: the order
/// these answers have always had (they were built as `serde_json::Value`s, whose maps are
/// sorted), so their bytes are unchanged.
pub(super) fn sorted<T: Serialize>(view: &T) -> Json<serde_json::Value> {
    Json(serde_json::to_value(view).expect("an admin view serializes"))
}

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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewWorkspace {
    /// 1–64 lowercase letters, digits, `-` or `_`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    id: String,
}

/// The workspaces.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkspaceList {
    data: Vec<Workspace>,
}

/// A key just created, with the key itself.
#[derive(Serialize, ToSchema)]
#[schema(as = NewKey)]
pub(super) struct CreatedKey<'a> {
    id: &'a str,
    workspace: &'a str,
    /// The gateway key: shown this once, stored only as a SHA-256 hash.
    #[schema(pattern = "^sk-sluice-")]
    key: &'a str,
    /// The key's first characters, to tell keys apart.
    prefix: &'a str,
    /// Unix time in milliseconds.
    created_at_ms: i64,
}

/// A workspace's keys, revoked ones included.
#[derive(Serialize, ToSchema)]
pub(super) struct KeyList {
    data: Vec<KeyInfo>,
}

/// Create a workspace
///
/// 201 the workspace; 409 if it exists; 400 for an id that is not 1–64 of `a-z 0-9 - _`.
#[utoipa::path(
    post,
    path = "/admin/v1/workspaces",
    tag = "workspaces",
    operation_id = "createWorkspace",
    security(("adminToken" = [])),
    request_body(content = NewWorkspace, description = "`{\"id\": \"acme\"}`"),
    responses(
        (status = 201, description = "The workspace.", body = Workspace),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 500, response = InternalError),
    )
)]
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

/// List the workspaces
///
/// The workspaces.
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces",
    tag = "workspaces",
    operation_id = "listWorkspaces",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The workspaces.", body = WorkspaceList),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
    )
)]
async fn list_workspaces(State(app): State<AppState>) -> Result<Response, ApiError> {
    let list = WorkspaceList {
        data: app.store.workspaces().await?,
    };
    Ok(sorted(&list).into_response())
}

/// Create a gateway key
///
/// 201 `{"id", "key": "sk-sluice-…", "prefix", …}`: the key is shown this once and stored
/// only as a SHA-256 hash; 404 for an unknown workspace. No request body.
#[utoipa::path(
    post,
    path = "/admin/v1/workspaces/{id}/keys",
    tag = "workspaces",
    operation_id = "createKey",
    params(WorkspacePath),
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The key, shown this once.", body = CreatedKey),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
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
    let body = CreatedKey {
        id: &info.id,
        workspace: &info.workspace,
        key: new.key.expose(),
        prefix: &info.prefix,
        created_at_ms: info.created_at_ms,
    };
    Ok((StatusCode::CREATED, sorted(&body)).into_response())
}

/// List a workspace's keys
///
/// Ids, prefixes, created and revoked times (never keys).
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces/{id}/keys",
    tag = "workspaces",
    operation_id = "listKeys",
    params(WorkspacePath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The keys.", body = KeyList),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn list_keys(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    let list = KeyList {
        data: app.store.keys(&id).await?,
    };
    Ok(sorted(&list).into_response())
}

/// Revoke a key
///
/// 204; the key stops working at once on this replica (the key cache refuses it from then
/// on); other replicas of a cluster forget it within a second, at the latest after 30 s.
/// 404 when the workspace has no live key with that id.
#[utoipa::path(
    delete,
    path = "/admin/v1/workspaces/{id}/keys/{key_id}",
    tag = "workspaces",
    operation_id = "revokeKey",
    params(
        WorkspacePath,
        ("key_id" = String, Path, description = "A key's id (not the key).", example = "key_0123456789ab"),
    ),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
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

/// `{id}` of the workspace routes.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct WorkspacePath {
    /// A workspace id.
    #[param(example = "acme")]
    #[allow(
        dead_code,
        reason = "read through axum's `Path<String>`; here for the document"
    )]
    id: String,
}

/// One route and its stable version.
#[derive(Serialize, ToSchema)]
pub(super) struct RouteSummary<'a> {
    /// What apps put in `model`.
    route: &'a str,
    /// The route's stable version (a promoted canary once promoted).
    stable: &'a str,
    /// The stable version's upstream model.
    model: &'a str,
    /// The id of the route's live rollout, if any.
    #[schema(required = true)]
    rollout: Option<&'a str>,
}

/// The routes and their stable version.
#[derive(Serialize, ToSchema)]
pub(super) struct RouteList<'a> {
    data: Vec<RouteSummary<'a>>,
}

/// List the routes
///
/// Routes and their stable version, with the upstream model and the live rollout.
#[utoipa::path(
    get,
    path = "/admin/v1/routes",
    tag = "routes",
    operation_id = "listRoutes",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The routes.", body = RouteList),
        (status = 401, response = Unauthorized),
    )
)]
async fn list_routes(State(app): State<AppState>) -> Result<Response, ApiError> {
    let routing = app.routing.load();
    let data = routing
        .route_names()
        .filter_map(|name| routing.route(name).map(|r| (name, r)))
        .map(|(name, r)| RouteSummary {
            route: name,
            stable: &r.stable.version.name,
            model: &r.stable.version.model,
            rollout: r.rollout.as_ref().map(|ro| &*ro.tap.rollout_id),
        })
        .collect();
    Ok(sorted(&RouteList { data }).into_response())
}

/// The replicas of the gateway
///
/// Every replica on this database (live, or gone after 3 missed heartbeats), its address,
/// version, start and last heartbeat, and which replica judges which rollout. On SQLite:
/// this one process.
#[utoipa::path(
    get,
    path = "/admin/v1/cluster",
    tag = "routes",
    operation_id = "cluster",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The replicas.", body = crate::cluster::ClusterView),
        (status = 401, response = Unauthorized),
    )
)]
async fn cluster(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(sorted(&app.cluster.view(&app.store).await?).into_response())
}

/// Whose figures `GET /routes/{route}/stats` answers with.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum Scope {
    /// This replica's live figures since it started.
    Replica,
    /// Every replica's stored records.
    Cluster,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// `replica` (the default): this replica's live figures since it started. `cluster`:
    /// every replica's, summed from the stored records.
    scope: Option<Scope>,
}

/// A route's figures on this replica since it started.
#[derive(Serialize, ToSchema)]
pub(super) struct RouteStats<'a> {
    route: &'a str,
    /// These figures are this replica's own, since it started: `replica`.
    scope: Scope,
    /// This replica's id in the cluster (`GET /admin/v1/cluster`).
    replica: &'a str,
    stable: &'a str,
    /// Guardrail blocks, redactions and flags of the versions served.
    guardrails: Vec<CountRow>,
    /// The route's live rollout, if any.
    #[schema(required = true)]
    rollout: Option<&'a str>,
    /// Per version.
    versions: std::collections::BTreeMap<String, StatsSummary>,
    /// Per `version/arm`.
    arms: std::collections::BTreeMap<String, StatsSummary>,
    total: StatsSummary,
    records: SinkCounters,
}

/// A route's figures over every replica, summed from the stored records (`?scope=cluster`).
#[derive(Serialize, ToSchema)]
pub(super) struct ClusterRouteStats<'a> {
    route: &'a str,
    /// `cluster`.
    scope: Scope,
    stable: &'a str,
    /// The route's live rollout, if any.
    #[schema(required = true)]
    rollout: Option<&'a str>,
    /// Per (version, arm).
    arms: Vec<RouteTotals>,
    total: ClusterTotal,
}

/// Requests of every arm of a route, over every replica.
#[derive(Serialize, ToSchema)]
pub(super) struct ClusterTotal {
    requests: i64,
}

/// A route's live figures
///
/// Live figures per version and per arm since start (counters and log-scale histograms),
/// guardrail counts, and the record writer's counters. With `?scope=cluster`, the figures
/// of every replica of a cluster, summed from the stored records.
#[utoipa::path(
    get,
    path = "/admin/v1/routes/{route}/stats",
    tag = "routes",
    operation_id = "routeStats",
    params(
        ("route" = String, Path, description = "A route name.", example = "chat"),
        StatsQuery,
    ),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The figures.", body = inline(StatsBody)),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
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
    let stable = &*entry.stable.version.name;
    let rollout = entry.rollout.as_ref().map(|ro| &*ro.tap.rollout_id);
    match query.scope {
        Some(Scope::Cluster) => cluster_route_stats(&app, &route, stable, rollout).await,
        _ => Ok(replica_route_stats(&app, &route, stable, rollout)),
    }
}

/// `scope=cluster`: the route's figures summed over every replica's shipped batches.
async fn cluster_route_stats(
    app: &AppState,
    route: &str,
    stable: &str,
    rollout: Option<&str>,
) -> Result<Response, ApiError> {
    let arms = app.store.route_totals(route).await?;
    let requests: i64 = arms.iter().map(|r| r.requests).sum();
    let body = ClusterRouteStats {
        route,
        scope: Scope::Cluster,
        stable,
        rollout,
        arms,
        total: ClusterTotal { requests },
    };
    Ok(sorted(&StatsBody::Cluster(body)).into_response())
}

/// This replica's live figures of the route: per version, per arm, in all, with the
/// guardrail counts of its versions and the record writer's counters.
fn replica_route_stats(
    app: &AppState,
    route: &str,
    stable: &str,
    rollout: Option<&str>,
) -> Response {
    let mut total = StatsSnapshot::default();
    let mut by_version: std::collections::BTreeMap<String, StatsSnapshot> = Default::default();
    let mut arms = std::collections::BTreeMap::new();
    for (version, arm, stats) in app.catalog.route_stats(route) {
        let snapshot = stats.snapshot();
        total.merge(&snapshot);
        by_version
            .entry(version.clone())
            .or_default()
            .merge(&snapshot);
        arms.insert(format!("{version}/{}", arm.as_str()), snapshot.summary());
    }
    let versions: std::collections::BTreeMap<String, StatsSummary> = by_version
        .into_iter()
        .map(|(v, s)| (v, s.summary()))
        .collect();
    let guardrails = app
        .guardrail_counts
        .rows()
        .into_iter()
        .filter(|row| versions.contains_key(&row.version))
        .collect();
    let body = RouteStats {
        route,
        scope: Scope::Replica,
        replica: app.cluster.id(),
        stable,
        guardrails,
        rollout,
        versions,
        arms,
        total: total.summary(),
        records: app.sink.counters(),
    };
    sorted(&StatsBody::Replica(Box::new(body))).into_response()
}

/// The body of `GET /routes/{route}/stats`: one replica's figures, or the cluster's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum StatsBody<'a> {
    Replica(Box<RouteStats<'a>>),
    Cluster(ClusterRouteStats<'a>),
}

/// A workspace's limits in force.
#[derive(Serialize, ToSchema)]
pub(super) struct WorkspaceLimits<'a> {
    workspace: &'a str,
    limits: Limits,
}

/// Set a workspace's limits
///
/// Stores the workspace's own request rate, burst, tokens per minute and USD per day (what
/// the body leaves out falls back to `[limits]`). A request over a limit gets 429 with
/// Retry-After.
#[utoipa::path(
    put,
    path = "/admin/v1/workspaces/{id}/limits",
    tag = "workspaces",
    operation_id = "setWorkspaceLimits",
    params(WorkspacePath),
    security(("adminToken" = [])),
    request_body = Limits,
    responses(
        (status = 200, description = "The limits in force.", body = WorkspaceLimits),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
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
    let body = WorkspaceLimits {
        workspace: &id,
        limits: app.limits.limits_of(&id),
    };
    Ok(sorted(&body).into_response())
}

/// The limits in force for a workspace
///
/// Its own limits over the config's defaults.
#[utoipa::path(
    get,
    path = "/admin/v1/workspaces/{id}/limits",
    tag = "workspaces",
    operation_id = "getWorkspaceLimits",
    params(WorkspacePath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The limits in force.", body = WorkspaceLimits),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
    )
)]
async fn get_limits(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_workspace(&app, &id).await?;
    let body = WorkspaceLimits {
        workspace: &id,
        limits: app.limits.limits_of(&id),
    };
    Ok(sorted(&body).into_response())
}
