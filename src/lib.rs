//! sluice: an OpenAI-compatible gateway that routes chat requests to model versions,
//! measures every answer per version, and (in later stages) rolls new versions out.
//!
//! The path of one request, one module per stage:
//!
//! ```text
//! client ─► http (axum) ─► auth (key → workspace) ─► pipeline: parse (model, stream; rest raw)
//!        ─► resolve (route → version, arm) ─► upstream (mock | OpenAI-compatible HTTP)
//!        ─► measure (status, latency, TTFT, tokens, cost, length) ─► response (+ x-sluice-*)
//!                      └─► record sink (bounded queue) ─► store (SQLite | PostgreSQL)
//! ```
//!
//! `app` builds and runs all of it; `config` reads `sluice.toml`; `error` maps every error
//! to HTTP in one place.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod eval;
pub mod guardrails;
pub mod http;
pub mod judge;
pub mod limits;
pub mod measure;
pub mod pipeline;
pub mod resolve;
pub mod rollout;
pub mod secret;
pub mod shadow;
pub mod simulate;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod upstream;
