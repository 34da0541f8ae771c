//! Rollout policies: `policies/*.toml`, parsed and checked with errors that name file and key.
//! (Interface fixed; bodies to be written.)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::ConfigErrors;

/// How requests are bucketed for the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// Each request on its own (the default; best judge power).
    Request,
    /// Workspace + the request's `user` field.
    User,
    /// The value of this request header (`header:x-sluice-sticky-key`).
    Header(String),
    /// The `x-sluice-conversation-id` header.
    Conversation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Canary weight for randomized traffic, in basis points (1 % = 100); 0..=10 000.
    pub weight_bp: u32,
    /// Workspaces that get the canary at 100 % from this step on (targeting, not randomized).
    pub workspaces: Vec<String>,
    #[serde(with = "humantime_serde_ms")]
    pub hold: Duration,
    /// Canary requests needed in this step before it may advance.
    pub min_requests: u64,
}

/// The metrics a gate can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    LatencyP95,
    TtftP95,
    TokensPerRequest,
    CostPerRequest,
    ResponseLength,
    SchemaFailureRate,
    GuardrailBlockRate,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::ErrorRate,
        Metric::LatencyP95,
        Metric::TtftP95,
        Metric::TokensPerRequest,
        Metric::CostPerRequest,
        Metric::ResponseLength,
        Metric::SchemaFailureRate,
        Metric::GuardrailBlockRate,
    ];

    /// The key in `[gates.<key>]`.
    pub fn key(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LatencyP95 => "latency_p95",
            Metric::TtftP95 => "ttft_p95",
            Metric::TokensPerRequest => "tokens_per_request",
            Metric::CostPerRequest => "cost_per_request",
            Metric::ResponseLength => "response_length",
            Metric::SchemaFailureRate => "schema_failure_rate",
            Metric::GuardrailBlockRate => "guardrail_block_rate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    pub metric: Metric,
    /// Tolerance: the canary may be up to this × stable before it counts as harm.
    pub max_ratio: Option<f64>,
    /// A fall below this × stable is harm too (two-sided gates such as response length).
    pub min_ratio: Option<f64>,
    /// Hard limit in ms (latency, TTFT): the canary's p95 above it reverts at once.
    pub max_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillSwitch {
    pub error_rate: f64,
    pub min_requests: u64,
    #[serde(with = "humantime_serde_ms")]
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub name: String,
    pub description: String,
    /// False-rollback budget for the whole rollout.
    pub alpha: f64,
    #[serde(with = "humantime_serde_ms")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub max_step_hold: Duration,
    pub sticky: Sticky,
    pub webhook: Option<String>,
    pub steps: Vec<Step>,
    pub gates: Vec<Gate>,
    pub kill_switch: Option<KillSwitch>,
}

/// Durations serialize as milliseconds.
mod humantime_serde_ms {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Reads one policy file; its name is the file stem.
pub fn load_policy(path: &Path) -> Result<Policy, ConfigErrors> {
    let _ = path;
    unimplemented!("policy parsing")
}

/// Reads every `*.toml` directly in `dir` (not `guardrails/`), by name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Policy>, ConfigErrors> {
    let _ = dir;
    unimplemented!("policy directory")
}
