//! Fault injection (issue 11, item 8): sluice between a misbehaving upstream and a
//! misbehaving client. The upstream is a raw TCP server writing exact bytes (`rogue`); the
//! clients are raw sockets, a slow reader, thousands of idle connections, a slow body and
//! one HTTP/2 connection carrying a thousand requests. Each test checks that the client
//! gets the right status or event, that the right record is written, that sluice's memory
//! stays bounded where that is the question, and that a normal request alongside is served.
//!
//! Slow headers are covered by `tests/api/server_limits.rs`
//! (`a_client_that_sends_its_headers_too_slowly_is_cut_off`).
//!
//! Each test prints `[faults] <name>: <ms> ms` (and the memory figures) on stderr; run with
//! `cargo test --test faults -- --nocapture` to see them.

#[path = "../api/helpers.rs"]
#[allow(
    dead_code,
    reason = "shared with tests/api; this binary uses only part of it"
)]
mod helpers;
#[path = "../common/skip.rs"]
#[allow(dead_code, reason = "the shared helpers' skip notice")]
mod skip;
#[path = "../api/upstream_more.rs"]
#[allow(dead_code, reason = "the mock upstream the shared helpers start")]
mod upstream_more;

mod rig;
mod rogue;

mod clients;
mod process;
mod upstreams;
