//! What the judge is asked to judge: its own input type, built from a rollout policy by
//! `rollout::policy::Policy::judge_spec`, so the judge knows nothing of the policy file.
//!
//! In: a [`JudgeSpec`] (alpha, gates, feedback metrics, kill switch, whether units are
//! single requests). Out: nothing; [`crate::judge::Judge::new`] reads it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything [`crate::judge::Judge::new`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSpec {
    /// False-rollback budget for the whole rollout.
    pub(crate) alpha: f64,
    pub(crate) gates: Vec<Gate>,
    pub(crate) feedback: Vec<FeedbackMetric>,
    pub(crate) kill_switch: Option<KillSwitch>,
    /// True when the sticky unit is the request: then assignment is randomized per request
    /// and the sample-ratio-mismatch guard applies.
    pub(crate) per_request_units: bool,
}

/// The metrics a gate can watch.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Metric {
    ErrorRate,
    LatencyP95,
    TtftP95,
    TokensPerRequest,
    CostPerRequest,
    ResponseLength,
    SchemaFailureRate,
    GuardrailBlockRate,
    /// A business metric posted to `/v1/feedback` (declared under `[feedback.<name>]`;
    /// never a `[gates]` key).
    Feedback,
}

impl Metric {
    pub(crate) const ALL: [Metric; 8] = [
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
    pub(crate) fn key(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LatencyP95 => "latency_p95",
            Metric::TtftP95 => "ttft_p95",
            Metric::TokensPerRequest => "tokens_per_request",
            Metric::CostPerRequest => "cost_per_request",
            Metric::ResponseLength => "response_length",
            Metric::SchemaFailureRate => "schema_failure_rate",
            Metric::GuardrailBlockRate => "guardrail_block_rate",
            Metric::Feedback => "feedback",
        }
    }
}

impl Metric {
    /// Rates of a yes/no event per request (judged by counting events), as opposed to
    /// continuous per-request quantities (judged on a log scale).
    pub(crate) fn is_binary(self) -> bool {
        matches!(
            self,
            Metric::ErrorRate | Metric::SchemaFailureRate | Metric::GuardrailBlockRate
        )
    }

    /// Gates whose hard limit `max_ms` makes sense.
    pub(crate) fn is_time(self) -> bool {
        matches!(self, Metric::LatencyP95 | Metric::TtftP95)
    }

    pub(crate) fn parse(key: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.key() == key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Gate {
    pub(crate) metric: Metric,
    /// Tolerance: the canary may be up to this × stable before it counts as harm.
    pub(crate) max_ratio: Option<f64>,
    /// A fall below this × stable is harm too (two-sided gates such as response length).
    pub(crate) min_ratio: Option<f64>,
    /// Hard limit in ms (latency, TTFT): the canary's p95 above it reverts at once.
    pub(crate) max_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KillSwitch {
    pub(crate) error_rate: f64,
    pub(crate) min_requests: u64,
    #[serde(with = "humantime_serde_ms")]
    pub(crate) window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FeedbackKind {
    /// true / false (a conversion): judged like an error rate.
    Binary,
    /// A number (a rating, a revenue): judged like a continuous metric.
    Numeric,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeedbackMetric {
    pub(crate) name: String,
    pub(crate) kind: FeedbackKind,
    /// Whether a higher value is the good direction.
    pub(crate) higher_is_better: bool,
}

/// Durations serialize as milliseconds (and read back from them: a rollout's stored policy).
pub(crate) mod humantime_serde_ms {
    use serde::Deserialize;
    use std::time::Duration;
    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
