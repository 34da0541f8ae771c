//! Rollouts, off the request path: policies, the state machine, and (later in this module)
//! the controller that feeds the judge and applies its decisions.

pub(crate) mod control;
pub(crate) mod error;
pub(crate) mod feed;
pub mod machine;
pub(crate) mod notify;
pub mod policy;
pub(crate) mod running;
pub(crate) mod sync;
pub(crate) mod view;

pub(crate) use error::RolloutError;
