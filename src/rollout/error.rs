//! What can go wrong when an operator (or the feedback endpoint) acts on a rollout.
//!
//! The controller speaks rollouts, not HTTP: `crate::error` maps each variant to a status
//! (`impl From<RolloutError> for ApiError`), in the one place errors are mapped.

use crate::store::StoreError;

/// A refused or failed rollout command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RolloutError {
    /// The route is not in the config (404).
    #[error("no route `{0}`")]
    UnknownRoute(String),
    /// No rollout has this id (404).
    #[error("no rollout `{0}`")]
    UnknownRollout(String),
    /// No rollout with this id is live in this process (404).
    #[error("no live rollout `{0}`")]
    NotLive(String),
    /// Unpinning a workspace that has no pin (404).
    #[error("workspace `{workspace}` has no pin on {id}")]
    NoPin { id: String, workspace: String },
    /// The route already has a live rollout (409).
    #[error("route `{route}` already has a live rollout: {live}")]
    AlreadyLive { route: String, live: String },
    /// A command on a rollout that has ended (409).
    #[error("rollout {id} has ended ({state})")]
    Ended { id: String, state: &'static str },
    /// Pause or resume from a state that does not allow it (409).
    #[error("rollout {id} is {state}")]
    WrongState { id: String, state: &'static str },
    /// The canary cannot be rolled out: unknown version, no key, already stable (422).
    #[error("{0}")]
    BadCanary(String),
    /// The policy is unknown or its file has mistakes (422).
    #[error("{0}")]
    BadPolicy(String),
    /// Feedback names a metric the rollout's policy does not declare (422).
    #[error("metric `{metric}` is not declared in policy `{policy}` (declared: {declared})")]
    UndeclaredMetric {
        metric: String,
        policy: String,
        /// Comma-separated, or `none`.
        declared: String,
    },
    /// The database failed (500, or 409 for a duplicate).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The routing table could not be built (500).
    #[error("{0}")]
    Internal(String),
}
