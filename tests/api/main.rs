//! Integration tests through the real HTTP surface: sluice on port 0, a real mock upstream,
//! async-openai as the caller, SQLite always and PostgreSQL when `SLUICE_TEST_PG_URL` is set.

mod helpers;
#[path = "../common/skip.rs"]
mod skip;

mod chat;
mod cli;
mod errors;
mod feedback;
mod health;
mod keys;
mod limits;
mod metrics;
mod quality;
mod records;
mod restart;
mod rollouts;
mod shadow;
mod store;
mod streaming;
mod traces;
mod upstream_shapes;
