//! Integration tests through the real HTTP surface: sluice on port 0, a real mock upstream,
//! async-openai as the caller, SQLite always and PostgreSQL when `SLUICE_TEST_PG_URL` is set.

mod helpers;
#[path = "../common/skip.rs"]
mod skip;
mod upstream_more;

mod chat;
mod cli;
mod dropin;
mod errors;
mod feedback;
mod health;
mod keys;
mod limits;
mod metrics;
mod network;
mod quality;
mod records;
mod responses;
mod restart;
mod rollouts;
mod server_limits;
mod shadow;
mod store;
mod streaming;
mod traces;
mod upstream_shapes;
