//! Several real `sluice serve` processes on one PostgreSQL schema, acting as one gateway:
//! the registry, propagation of every kind of change (with measured lag), one judge with
//! fencing, failover, cluster-wide counts, cluster limits, and the database going away.
//! They need PostgreSQL (`SLUICE_TEST_PG_URL`); in CI they run, never skip.

#[path = "../api/helpers.rs"]
#[allow(
    dead_code,
    reason = "shared with tests/api; this binary uses only part of it"
)]
mod helpers;
#[path = "../common/skip.rs"]
mod skip;
#[path = "../api/upstream_more.rs"]
#[allow(dead_code, reason = "the mock upstream the shared helpers start")]
mod upstream_more;

mod rig;

mod controller;
mod judge;
mod outage;
mod propagation;
mod registry;
mod retention;
