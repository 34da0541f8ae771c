//! Rollouts, off the request path: policies, the state machine, and (later in this module)
//! the controller that feeds the judge and applies its decisions.

pub mod control;
pub mod error;
pub mod feed;
pub mod machine;
pub mod notify;
pub mod policy;
pub mod running;
pub mod sync;
pub mod view;

pub use error::RolloutError;
