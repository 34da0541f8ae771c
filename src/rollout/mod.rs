//! Rollouts, off the request path: policies, the state machine, and (later in this module)
//! the controller that feeds the judge and applies its decisions.

pub mod control;
pub mod feed;
pub mod machine;
pub mod policy;
pub mod sync;
pub(crate) mod view;
