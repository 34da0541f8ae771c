//! Resolve: the request's route → pin | targeted step | sticky bucket → arm → version,
//! read from the routing table as it is now (one lock-free load).

use axum::http::HeaderMap;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::pipeline::ChatRequest;
use crate::resolve::{Target, Unit};
use crate::state::App;

/// Where a chat request goes.
///
/// Errors: [`ApiError::UnknownRoute`] when `model` names no route, with the routes there are.
pub(crate) fn route(
    app: &App,
    caller: &Caller,
    request: &ChatRequest,
    request_id: &str,
    headers: &HeaderMap,
) -> Result<Target, ApiError> {
    let unit = Unit {
        workspace: &caller.workspace,
        request_id,
        user: request.user.as_deref(),
        headers,
    };
    app.routing
        .load()
        .resolve(&request.model, &unit)
        .ok_or_else(|| unknown_route(app, &request.model))
}

/// The error for a `model` that names no route.
pub(crate) fn unknown_route(app: &App, model: &str) -> ApiError {
    ApiError::UnknownRoute(app.routing.load().explain_unknown(model))
}
