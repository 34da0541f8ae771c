//! The vocabulary of `DESIGN.md` as plain values: what every layer above speaks.
//!
//! This module sits at the bottom of the layer table in `lib.rs` and imports nothing of the
//! crate. A value of one of these types is valid once constructed (`RouteName::parse`,
//! `Weight::new`, `WorkspaceId::parse`); the stages above never re-check it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, the one clock reading records, limits and the store
/// share (a clock before 1970 reads 0).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// A workspace id: a tenant that owns API keys. 1 to 64 lowercase letters, digits, `-` or
/// `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkspaceId(Arc<str>);

impl WorkspaceId {
    /// Checks a workspace id against the rule above.
    ///
    /// # Errors
    /// A message naming the id when it breaks the rule above.
    pub(crate) fn parse(id: &str) -> Result<Self, String> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(id.into()))
        } else {
            Err(format!(
                "`{id}` is not a workspace id: use 1–64 lowercase letters, digits, - or _"
            ))
        }
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canary's share of randomized traffic in basis points, 0..=10 000 (DESIGN: "weight").
/// A sticky bucket in 0..10 000 goes to the canary when it is below the weight.
///
/// This is the one spelling inside sluice. The wire keeps its older shapes: policy files
/// and the admin API say percent, records and the `canary_weight` column a fraction in
/// [0, 1]; the conversions are [`Weight::percent`], [`Weight::fraction`] and
/// [`Weight::from_fraction`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl Weight {
    /// The largest weight: all randomized traffic on the canary.
    pub const FULL: Weight = Weight(10_000);
    /// No randomized traffic on the canary.
    pub const ZERO: Weight = Weight(0);

    /// A weight of `bp` basis points.
    ///
    /// # Errors
    /// When `bp` is above 10 000.
    pub fn new(bp: u32) -> Result<Self, String> {
        if bp <= 10_000 {
            Ok(Self(bp as u16))
        } else {
            Err(format!("{bp} basis points is more than 100 %"))
        }
    }

    /// The nearest weight to a fraction in [0, 1] (clamped), as records and the store keep it.
    pub fn from_fraction(f: f64) -> Self {
        let f = if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self((f * 10_000.0).round() as u16)
    }

    /// Basis points, 0..=10 000.
    pub fn bp(self) -> u32 {
        u32::from(self.0)
    }

    /// The weight as a fraction in [0, 1].
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// The weight in percent, 0..=100.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.percent())
    }
}

/// A route name: what clients put in `model`. Letters, digits and `-._:/`, 1 to 128 long.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    /// Checks a route name against the rule above.
    ///
    /// # Errors
    /// A message naming the value when it is empty, longer than 128 or has another character.
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c));
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(format!(
                "`{name}` is not a route name: use 1–128 letters, digits or -._:/"
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which side of a rollout served a request.
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
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    /// The version the route runs today.
    Stable,
    /// The new version a rollout is trying.
    Canary,
}

impl Arm {
    /// The lowercase name records, the store and the admin API use: `stable` or `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Arm> {
        match s {
            "stable" => Some(Arm::Stable),
            "canary" => Some(Arm::Canary),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Arm::Stable => 0,
            Arm::Canary => 1,
        }
    }
}

/// How a request ended, as counted in records and aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered 2xx with a whole answer.
    Ok,
    /// The upstream answered 4xx.
    Upstream4xx,
    /// The upstream answered 5xx.
    Upstream5xx,
    /// The upstream could not be reached (connection refused, DNS, TLS).
    UpstreamUnreachable,
    /// The upstream did not answer within the route's timeout.
    UpstreamTimeout,
    /// The upstream answered 2xx with a body that is not a chat completion, or with a
    /// status that is neither success nor error (a 3xx redirect, a 1xx, one past 599).
    UpstreamInvalid,
    /// The upstream broke off a stream midway.
    StreamInterrupted,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// sluice itself failed after the route was resolved.
    GatewayError,
    /// A guardrail blocked the input (the upstream was never called) or the output.
    GuardrailBlocked,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Upstream4xx,
        Outcome::Upstream5xx,
        Outcome::UpstreamUnreachable,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamInvalid,
        Outcome::StreamInterrupted,
        Outcome::ClientDisconnected,
        Outcome::GatewayError,
        Outcome::GuardrailBlocked,
    ];

    /// The snake_case name stored in a record's `outcome` column, e.g. `upstream_5xx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Upstream4xx => "upstream_4xx",
            Outcome::Upstream5xx => "upstream_5xx",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamInvalid => "upstream_invalid",
            Outcome::StreamInterrupted => "stream_interrupted",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::GatewayError => "gateway_error",
            Outcome::GuardrailBlocked => "guardrail_blocked",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether this counts against the version in an error rate. A client hanging up does
    /// not: it says nothing about the model; a guardrail block neither (it has its own
    /// gate). An upstream 4xx does: a new version that refuses what the old one took is a
    /// regression.
    pub(crate) fn is_error(self) -> bool {
        !matches!(
            self,
            Outcome::Ok | Outcome::ClientDisconnected | Outcome::GuardrailBlocked
        )
    }
}

/// The most tokens one call may report in either direction before sluice disbelieves it:
/// 10⁸, fifty times the largest context window offered today (2 M tokens). A larger count
/// is an upstream's bug, not a bill; it would overflow sums and spend a workspace's daily
/// budget at once, so it is read as absent and the tokens are estimated.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;

/// Token counts for one request, and whether they were counted by sluice (estimated) or
/// reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the request (messages, tools, instructions).
    pub prompt_tokens: u64,
    /// Tokens of the answer, reasoning tokens included.
    pub completion_tokens: u64,
    /// True when sluice counted the tokens itself because the upstream reported no usage.
    pub estimated: bool,
}

/// A token count an upstream reported, if at most [`MAX_REPORTED_TOKENS`]; `None` (to be
/// estimated) otherwise.
pub fn plausible_tokens(n: u64) -> Option<u64> {
    (n <= MAX_REPORTED_TOKENS).then_some(n)
}

impl Usage {
    /// The usage an upstream reported, if both counts are plausible ([`plausible_tokens`]);
    /// `None` (to be estimated) otherwise.
    pub fn plausible(self) -> Option<Usage> {
        plausible_tokens(self.prompt_tokens)?;
        plausible_tokens(self.completion_tokens)?;
        Some(self)
    }
}

/// What one request did: the unit of measurement everything downstream is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The request's id, as sent back in `x-request-id`.
    pub request_id: String,
    /// When the request arrived, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The workspace of the API key that made the request.
    pub workspace: String,
    /// The route the client named in `model`.
    pub route: String,
    /// The catalog version that served the request.
    pub version: String,
    /// Which side of the route's rollout that version was on (`Stable` when none is live).
    pub arm: Arm,
    /// Whether the client asked for a stream (`"stream": true`).
    pub stream: bool,
    /// The HTTP status the client got (0 when the client left before any).
    pub status: u16,
    /// How the request ended.
    pub outcome: Outcome,
    /// Time from the request's arrival to the end of the answer, in milliseconds.
    pub latency_ms: f64,
    /// Streams only: time to the first content token, in milliseconds (`None` if none came).
    pub ttft_ms: Option<f64>,
    /// The request's tokens, reported by the upstream or estimated.
    pub usage: Usage,
    /// What the request cost at the version's configured price, in US dollars.
    pub cost_usd: f64,
    /// Length of the answer's text, in characters (Unicode scalar values).
    pub response_chars: u64,
    /// The upstream's `finish_reason` (`stop`, `length`, `tool_calls`, …), if it gave one.
    pub finish_reason: Option<String>,
    /// The rollout live on the route when the request was assigned.
    pub rollout_id: Option<String>,
    /// The canary probability in force then.
    pub w: Option<f64>,
    /// False when a pin or a targeted step chose the arm.
    pub randomized: bool,
    /// The rollout's step then.
    pub step: Option<u32>,
    /// `Some(failed)` when the request asked for structured output.
    pub schema_failed: Option<bool>,
    /// A guardrail blocked the input or the output.
    pub guardrail_blocked: bool,
    /// Which OpenAI API the request used.
    pub api: Api,
    /// Reasoning tokens, as the upstream reported them apart (they are part of
    /// `completion_tokens` and its cost, as OpenAI bills them).
    pub reasoning_tokens: Option<u64>,
    /// Embeddings: how many inputs the request carried.
    pub inputs: Option<u32>,
    /// Embeddings: the length of the vectors answered.
    pub dimensions: Option<u32>,
}

/// The OpenAI APIs sluice routes and measures, as stored in a record's `api` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// Any other `/v1` operation with a `model` (completions, moderations, images, audio),
    /// forwarded byte for byte to the route's stable version.
    Forwarded,
}

impl Api {
    pub(crate) const ALL: [Api; 4] = [Api::Chat, Api::Responses, Api::Embeddings, Api::Forwarded];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::Forwarded => "forwarded",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub(crate) struct Price {
    pub(crate) input_per_mtok: f64,
    pub(crate) output_per_mtok: f64,
}

impl Price {
    pub(crate) fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// A workspace's limits; `None` is unlimited. In the admin API a missing or null key falls
/// back to `[limits]` in the config (none: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second, sustained (a token bucket refilled at this rate).
    #[schema(exclusive_minimum = 0)]
    pub requests_per_second: Option<f64>,
    /// Requests admitted at once before the rate applies; unset: the rate rounded up.
    #[schema(minimum = 1)]
    pub burst: Option<u32>,
    /// Prompt and completion tokens allowed per minute.
    pub tokens_per_minute: Option<u64>,
    /// Spend allowed per UTC day, in US dollars, counted from the records' costs.
    #[schema(minimum = 0)]
    pub usd_per_day: Option<f64>,
}

impl Limits {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self
            .requests_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err("requests_per_second must be greater than 0".into());
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        if self
            .usd_per_day
            .is_some_and(|u| !(u >= 0.0 && u.is_finite()))
        {
            return Err("usd_per_day must be zero or more".into());
        }
        Ok(())
    }

    /// These limits, with the defaults filling what they leave out.
    pub(crate) fn over(self, defaults: Limits) -> Limits {
        Limits {
            requests_per_second: self.requests_per_second.or(defaults.requests_per_second),
            burst: self.burst.or(defaults.burst),
            tokens_per_minute: self.tokens_per_minute.or(defaults.tokens_per_minute),
            usd_per_day: self.usd_per_day.or(defaults.usd_per_day),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
/// Where a rollout stands: live (progressing, paused) or ended (the other three).
pub enum RolloutState {
    /// Moving through its steps, judged as traffic comes.
    Progressing,
    /// Held at its step by an operator; the canary keeps its share of traffic.
    Paused,
    /// Ended with the canary made the route's stable version.
    Promoted,
    /// Ended with all traffic back on the stable version, by the judge or an operator.
    RolledBack,
    /// Ended by an operator without a verdict; traffic back on the stable version.
    Aborted,
}

impl RolloutState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::Progressing,
            Self::Paused,
            Self::Promoted,
            Self::RolledBack,
            Self::Aborted,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Live rollouts route traffic to a canary; ended ones never again.
    pub(crate) fn is_live(self) -> bool {
        matches!(self, RolloutState::Progressing | RolloutState::Paused)
    }
}

/// A secret string (an upstream API key, the admin token) that never prints itself:
/// `Debug` and `Display` show `*****`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to the value; call it where the secret leaves the process, nowhere else.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_stars() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?} {s}"), "***** *****");
        assert_eq!(s.expose(), "sk-live-123");
    }

    #[test]
    fn a_weight_above_ten_thousand_basis_points_is_refused() {
        assert!(Weight::new(10_001).is_err());
        let w = Weight::new(2_500).unwrap();
        assert_eq!((w.bp(), w.fraction(), w.percent()), (2_500, 0.25, 25.0));
        assert_eq!(Weight::from_fraction(0.05), Weight::new(500).unwrap());
    }

    #[test]
    fn a_workspace_id_must_start_with_a_letter_or_digit() {
        assert!(WorkspaceId::parse("acme-1").is_ok());
        assert!(WorkspaceId::parse("-acme").is_err());
        assert!(WorkspaceId::parse("Acme").is_err());
    }
}
