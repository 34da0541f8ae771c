//! sluice: an OpenAI-compatible gateway that routes chat requests to model versions,
//! measures every answer per version, and rolls new versions out step by step, reverting
//! them on its own when the evidence says they are worse.
//!
//! # The path of one request
//!
//! This is the one copy of the diagram; other modules link here.
//!
//! ```text
//! client ─► http (axum) ─► auth (key → workspace) + limits
//!        ─► pipeline, a file per stage: parse (model, stream; the rest kept raw)
//!        ─► resolve (route → pin | targeted step | sticky bucket → arm → catalog version)
//!        ─► guard: input guardrails ─► call: upstream (mock | OpenAI-compatible HTTP)
//!        ─► whole answer | stream relay ─► finish: shared end of answer
//!        ─► measure: one Record (status, latency, TTFT, tokens, cost, length, schema,
//!                    output guardrails) ─► response (+ x-request-id, x-sluice-*)
//!                └─► version stats, rollout tap (judge), shadow queue, record sink ─► store
//! ```
//!
//! Off the path: `rollout::control` drains each rollout's tap into the `judge`, lets
//! `rollout::machine` decide, writes the change to the `store` and only then publishes a
//! new routing table.
//!
//! # Layers
//!
//! A module imports only from its own layer or a lower one, and no two modules import each
//! other, directly or around a loop. `tests/layers.rs` reads this table and every
//! `crate::`/`super::` path in `src/` and fails otherwise. A file belongs to the longest
//! module listed here that contains it.
//!
//! | module | layer | owns |
//! |---|---|---|
//! | `types` | L0 | the DESIGN vocabulary as values: Arm, RouteName, WorkspaceId, Weight, Outcome, Usage, Record, Price, Limits, RolloutState, Secret, now_ms |
//! | `tasks` | L0 | the one place background tasks are spawned; shutdown order; a loop that dies stops the process |
//! | `config::issue` | L0 | ConfigIssue / ConfigErrors: a mistake located by file and dotted key |
//! | `config` | L1 | `sluice.toml` as plain serde data |
//! | `judge` | L1 | the pure sequential judge over two arms' observations, with its own JudgeSpec |
//! | `guardrails` | L1 | guardrail rules, their detection and redaction, and their loader |
//! | `traces` | L1 | OpenTelemetry spans for requests and upstream calls |
//! | `openai::sse` | L1 | server-sent events framed as the WHATWG standard reads them |
//! | `openai::lenient` | L1 | reading upstream fields as leniently as the SDKs: null is absent, odd shapes counted |
//! | `openai` | L1 | the OpenAI wire format, pure: a whole completion read, the Responses API read |
//! | `measure::histogram` | L1 | lock-free latency histograms |
//! | `measure::tokens` | L1 | token counting when an upstream gives no usage |
//! | `measure::schema` | L1 | structured-output and tool-call schema checks |
//! | `measure::aggregate` | L2 | live per-(route, version, arm) stats |
//! | `rollout::policy` | L2 | a rollout policy: steps, gates, stickiness, shadow and feedback; its loader; `judge_spec()` |
//! | `upstream` | L2 | providers: an OpenAI-compatible HTTP client and the mock; `Provider::from_config` |
//! | `rollout::machine` | L3 | the pure rollout state machine |
//! | `rollout::feed` | L3 | a rollout's tap: assignments and observations on their way to the judge |
//! | `settings` | L3 | config + secrets + policies + guardrail sets, checked together (`sluice config check`) |
//! | `store` | L3 | SQLite / PostgreSQL: keys, records, rollouts, events, shadow pairs |
//! | `rollout::error` | L4 | RolloutError: what a rollout command can fail with, in rollout terms |
//! | `error` | L4 | ApiError: every request-path error mapped to HTTP and OpenAI's shape |
//! | `cluster` | L4 | this replica in a cluster: its id, counters, liveness and the `/admin/v1/cluster` view |
//! | `catalog` | L4 | the configured versions (with their clients), route settings and live stats |
//! | `responses::book` | L4 | Response id → version that produced it (memory + `response_versions`) |
//! | `limits` | L5 | per-workspace rate, token and spend limits |
//! | `throttle` | L5 | per-client-address limits: failed authentications, admin calls |
//! | `auth` | L5 | API key → workspace (hash, cache, store fallback); admin token check |
//! | `shadow` | L5 | shadow copies: sampling, the bounded queue and the sender |
//! | `resolve` | L6 | the routing table: route → arm → version, sticky buckets |
//! | `azure` | L7 | provider content filters (Azure OpenAI's) counted as guardrail blocks |
//! | `responses::relay` | L7 | the Responses stream relay: typed events measured, checked, held back |
//! | `measure` | L7 | the Meter → one Record per request; answer checks; the record sink |
//! | `pipeline::finish` | L7 | the shared end of an answer (usage, served model, shadow text) and a failed request's record |
//! | `pipeline::relay` | L7 | the chat stream relay: events passed on as they come, measured, checked, usage chunk dropped |
//! | `rollout::running` | L8 | a rollout live in this process: its judge, tap and figures |
//! | `rollout::notify` | L8 | webhooks and decision events |
//! | `rollout::view` | L8 | RolloutView: how a rollout reads in the admin API |
//! | `rollout::sync` | L8 | the controller as one of several replicas: re-read, judge leases, shipping |
//! | `rollout` | L8 | the controller (the only writer of the routing table) |
//! | `state` | L8 | AppState: what handlers and the pipeline reach |
//! | `pipeline` | L9 | the chat path without axum, a file per stage: parse → resolve → guard → call → whole answer; the request context |
//! | `cluster::heartbeat` | L9 | the heartbeat loop: registry row, live count, limit shares |
//! | `cluster::listen` | L9 | LISTEN for changes and re-read the routing state (periodically too) |
//! | `cluster::ship` | L9 | shipping this replica's rollout observations to the database |
//! | `cluster::retention` | L9 | pruning old rows in small batches under the maintenance lease |
//! | `responses` | L9 | `POST /v1/responses` on the hot path: conversations stay where they began |
//! | `forward` | L9 | embeddings (stable only), other `/v1` operations with a model, passthrough, stored responses |
//! | `http` | L10 | everything that knows axum: routers and handlers |
//! | `telemetry` | L10 | the Prometheus page |
//! | `app` | L11 | build → bind → run until stopped |
//! | `cli` | L12 | the admin API client and its rendering |
//! | `load` | L12 | `sluice load`: try-out traffic at a fixed rate with a progress line |
//! | `demo` | L12 | `sluice demo`: a whole rollout against mock providers |
//! | `eval` | L12 | `sluice eval`: offline comparison of versions |
//! | `simulate` | L12 | `sluice simulate`: the judge against synthetic traffic |

#![warn(missing_docs)]
// No function over 80 lines of code (issue #8); clippy.toml sets the threshold.
#![warn(clippy::too_many_lines)]

pub mod app;
pub mod auth;
pub mod azure;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub mod eval;
pub(crate) mod forward;
pub mod guardrails;
pub mod http;
pub mod judge;
pub mod limits;
pub mod load;
pub mod measure;
pub mod openai;
pub mod pipeline;
pub mod resolve;
pub(crate) mod responses;
pub mod rollout;
pub mod settings;
pub(crate) mod shadow;
pub mod simulate;
pub mod state;
pub mod store;
pub mod tasks;
pub(crate) mod telemetry;
pub(crate) mod throttle;
pub mod traces;
pub mod types;
pub mod upstream;
