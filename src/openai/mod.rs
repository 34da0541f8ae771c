//! The OpenAI wire format, pure (no I/O): what sluice reads of requests and answers.
//!
//! `completion` reads a whole chat completion; `chunk_scan` the common stream chunk in one pass; `request` walks a request's message text;
//! `responses` reads the Responses API (its expectations, a Response, its stream events).
//! (The request view, the SSE framing and the
//! error bodies still live in `pipeline`, `pipeline::relay` and `error`; see the layer table
//! in `lib.rs`.)

pub(crate) mod chunk_scan;
pub mod completion;
pub(crate) mod lenient;
pub mod request;
pub(crate) mod responses;
pub mod sse;
