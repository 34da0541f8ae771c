//! Simulation scenarios: `evals/scenarios/*.toml` in, a checked [`Scenario`] out (or
//! every mistake with file and key, as for policies). The format is documented at the
//! top of `evals/scenarios/s00-aa-full-schedule.toml`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::issue::{ConfigErrors, ConfigIssue};
use crate::judge::spec::Metric;
use crate::rollout::policy::{Policy, load_policy, parse_policy_at};

/// What a scenario's canary is: harmless (reverts are false rollbacks), harmful (the
/// judge should revert), or a broken design (the judge must not decide on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Expect {
    Pass,
    Revert,
    NoDecision,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Traffic {
    #[serde(default = "d_workspaces")]
    pub(crate) workspaces: usize,
    /// Share of requests from the workspace `internal` (targeted by workspace steps).
    #[serde(default)]
    pub(crate) internal_share: f64,
    #[serde(default = "d_schema_share")]
    pub(crate) schema_share: f64,
    /// > 0: requests come from this many users with Pareto activity, assigned by user.
    #[serde(default)]
    pub(crate) sticky_users: usize,
    /// Share of users whose error rate is `bad_user_error_rate` on both arms.
    #[serde(default)]
    pub(crate) bad_user_share: f64,
    #[serde(default)]
    pub(crate) bad_user_error_rate: f64,
    /// Share of canary records that never reach the judge (a sample-ratio mismatch).
    #[serde(default)]
    pub(crate) lost_canary_records: f64,
    /// A provider incident on both arms: from `incident_at`, for `incident_for`.
    pub(crate) incident_at: Option<String>,
    pub(crate) incident_for: Option<String>,
    #[serde(default)]
    pub(crate) incident_error_rate: f64,
    /// More provider incidents, each on both arms or on one.
    #[serde(default)]
    pub(crate) incidents: Vec<RawIncident>,
    /// Traffic follows a sinusoidal daily curve with this peak / trough ratio (1 = flat)
    /// and this period (default: the run's duration), around the mean `rps`.
    #[serde(default = "one")]
    pub(crate) daily_ratio: f64,
    pub(crate) daily_period: Option<String>,
    /// Bursts: every `burst_every`, for `burst_for`, arrivals × `burst_factor`.
    pub(crate) burst_every: Option<String>,
    pub(crate) burst_for: Option<String>,
    #[serde(default = "one")]
    pub(crate) burst_factor: f64,
    /// The busiest this many workspaces send long prompts: tokens and latency ×
    /// `heavy_tokens_ratio` on both arms (a different prompt mix per workspace).
    #[serde(default)]
    pub(crate) heavy_workspaces: usize,
    #[serde(default = "d_heavy")]
    pub(crate) heavy_tokens_ratio: f64,
    /// Every request's latency (and so the time until it is measured) uniform in this
    /// range of seconds: long streams, in flight across step-ups.
    pub(crate) stream_seconds: Option<[f64; 2]>,
    /// Share of requests that get feedback on the policy's first `[feedback]` metric
    /// (binary: bad with `stable.feedback_bad_rate`), arriving `feedback_delay` late.
    #[serde(default)]
    pub(crate) feedback_share: f64,
    pub(crate) feedback_delay: Option<String>,
}

/// One provider incident as written in a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIncident {
    pub(crate) at: String,
    #[serde(rename = "for")]
    pub(crate) length: String,
    pub(crate) error_rate: f64,
    /// "both" (default), "canary" or "stable".
    #[serde(default = "d_both")]
    pub(crate) arms: String,
}

/// A provider incident: [from, to) in ms, its error rate, and the arms it hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Incident {
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    pub(crate) error_rate: f64,
    pub(crate) canary: bool,
    pub(crate) stable: bool,
}

fn d_heavy() -> f64 {
    4.0
}
fn d_both() -> String {
    "both".into()
}

impl Default for Traffic {
    fn default() -> Self {
        toml::from_str("").expect("every traffic key has a default")
    }
}

fn d_workspaces() -> usize {
    50
}
fn d_schema_share() -> f64 {
    0.2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Arm {
    #[serde(default = "d_error")]
    pub(crate) error_rate: f64,
    #[serde(default = "d_latency")]
    pub(crate) latency_ms: f64,
    #[serde(default = "d_ttft")]
    pub(crate) ttft_ms: f64,
    #[serde(default = "d_sigma")]
    pub(crate) ttft_sigma: f64,
    #[serde(default = "d_tokens")]
    pub(crate) tokens: f64,
    #[serde(default = "d_tokens_sigma")]
    pub(crate) tokens_sigma: f64,
    #[serde(default = "d_schema")]
    pub(crate) schema_failure_rate: f64,
    #[serde(default = "d_guard")]
    pub(crate) guardrail_block_rate: f64,
    #[serde(default = "d_feedback")]
    pub(crate) feedback_bad_rate: f64,
}

fn d_feedback() -> f64 {
    0.1
}

impl Default for Arm {
    fn default() -> Self {
        toml::from_str("").expect("every stable key has a default")
    }
}

fn d_error() -> f64 {
    0.01
}
fn d_latency() -> f64 {
    1500.0
}
fn d_ttft() -> f64 {
    300.0
}
fn d_sigma() -> f64 {
    0.5
}
fn d_tokens() -> f64 {
    600.0
}
fn d_tokens_sigma() -> f64 {
    0.9
}
fn d_schema() -> f64 {
    0.02
}
fn d_guard() -> f64 {
    0.01
}
fn one() -> f64 {
    1.0
}

/// How the canary differs from stable (1 = no difference), from `onset` on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    #[serde(default = "one")]
    pub(crate) error_ratio: f64,
    #[serde(default = "one")]
    pub(crate) tokens_ratio: f64,
    #[serde(default = "one")]
    pub(crate) latency_ratio: f64,
    /// The TTFT p95 moves by this factor while the median stays (the upper half of the
    /// log-normal is stretched).
    #[serde(default = "one")]
    pub(crate) ttft_p95_ratio: f64,
    #[serde(default = "one")]
    pub(crate) schema_failure_ratio: f64,
    #[serde(default = "one")]
    pub(crate) length_ratio: f64,
    /// Cost per request (at the same tokens), e.g. a pricier model.
    #[serde(default = "one")]
    pub(crate) cost_ratio: f64,
    #[serde(default = "one")]
    pub(crate) feedback_ratio: f64,
    pub(crate) onset: Option<String>,
}

impl Default for Change {
    fn default() -> Self {
        toml::from_str("").expect("every canary key has a default")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    expect: Expect,
    duration: String,
    rps: f64,
    /// The metric the threshold baselines watch (none: no baseline comparison).
    baseline_metric: Option<Metric>,
    policy: toml::Value,
    #[serde(default)]
    traffic: Traffic,
    #[serde(default)]
    stable: Arm,
    #[serde(default)]
    canary: Change,
}

#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) expect: Expect,
    pub(crate) duration: Duration,
    pub(crate) rps: f64,
    pub(crate) baseline_metric: Option<Metric>,
    pub(crate) policy: Policy,
    pub(crate) traffic: Traffic,
    pub(crate) stable: Arm,
    pub(crate) canary: Change,
    pub(crate) onset: Duration,
    #[expect(
        dead_code,
        reason = "set by the loader; `incidents` is what the run reads"
    )]
    pub(crate) incident: Option<(Duration, Duration)>,
    /// Every incident (the single `incident_*` keys included).
    pub(crate) incidents: Vec<Incident>,
    pub(crate) daily_period: Duration,
    pub(crate) burst: Option<(Duration, Duration)>,
    pub(crate) feedback_delay: Duration,
}

impl Scenario {
    /// The same setting with a canary identical to stable: the A/A run on which the
    /// baselines are tuned.
    pub(crate) fn null_twin(&self) -> Scenario {
        Scenario {
            name: format!("A/A twin of {}", self.name),
            expect: Expect::Pass,
            canary: Change::default(),
            traffic: Traffic {
                lost_canary_records: 0.0,
                ..self.traffic.clone()
            },
            // An incident on the canary alone is harm, not part of the setting.
            incidents: self
                .incidents
                .iter()
                .filter(|i| i.stable)
                .copied()
                .collect(),
            ..self.clone()
        }
    }

    /// Two scenarios share a twin when everything but the canary's change is the same.
    pub(crate) fn setting_key(&self) -> String {
        // The policy's name and description differ per file and change nothing.
        let policy = Policy {
            name: String::new(),
            description: String::new(),
            ..self.policy.clone()
        };
        format!(
            "{:?}|{}|{:?}|{:?}|{:?}|{:?}",
            self.duration, self.rps, policy, self.traffic, self.stable, self.incidents
        )
    }
}

pub(crate) fn load(path: &Path, policies_dir: &Path) -> Result<Scenario, ConfigErrors> {
    let mut issues = Issues {
        file: path,
        found: Vec::new(),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| issues.only("", format!("cannot read the file: {e}")))?;
    let raw: RawScenario = toml::from_str(&text)
        .map_err(|e: toml::de::Error| issues.only("", e.to_string().trim_end().into()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let policy = scenario_policy(&issues, policies_dir, &name, &raw.policy)?;
    let duration = issues.duration("duration", &raw.duration);
    let onset = (raw.canary.onset.as_deref())
        .map_or(Duration::ZERO, |s| issues.duration("canary.onset", s));
    let t = &raw.traffic;
    let incident = issues.pair(
        ("traffic.incident_at", t.incident_at.as_deref()),
        ("traffic.incident_for", t.incident_for.as_deref()),
        "set both incident_at and incident_for",
    );
    let incidents = incidents(&mut issues, incident, t);
    let daily_period = (t.daily_period.as_deref())
        .map_or(duration, |s| issues.duration("traffic.daily_period", s));
    let burst = issues.pair(
        ("traffic.burst_every", t.burst_every.as_deref()),
        ("traffic.burst_for", t.burst_for.as_deref()),
        "set both burst_every and burst_for",
    );
    let feedback_delay = (t.feedback_delay.as_deref()).map_or(Duration::ZERO, |s| {
        issues.duration("traffic.feedback_delay", s)
    });
    check_rates(&mut issues, &raw, &policy);
    if !issues.found.is_empty() {
        return Err(ConfigErrors(issues.found));
    }
    Ok(Scenario {
        name,
        description: raw.description,
        expect: raw.expect,
        duration,
        rps: raw.rps,
        baseline_metric: raw.baseline_metric,
        policy,
        traffic: raw.traffic,
        stable: raw.stable,
        canary: raw.canary,
        onset,
        incident,
        incidents,
        daily_period,
        burst,
        feedback_delay,
    })
}

/// The mistakes found in one scenario file so far, in the order they are reported.
struct Issues<'a> {
    file: &'a Path,
    found: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn issue(&self, key: &str, message: String) -> ConfigIssue {
        ConfigIssue {
            file: self.file.to_owned(),
            key: key.to_owned(),
            message,
        }
    }

    /// A mistake that stops the reading at once.
    fn only(&self, key: &str, message: String) -> ConfigErrors {
        ConfigErrors(vec![self.issue(key, message)])
    }

    fn push(&mut self, key: &str, message: String) {
        let issue = self.issue(key, message);
        self.found.push(issue);
    }

    /// A duration such as "90s"; 0 (and a mistake) when it is not one.
    fn duration(&mut self, key: &str, s: &str) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                self.push(key, format!("`{s}`: {e}"));
                Duration::ZERO
            }
        }
    }

    /// Two durations set together or not at all (a start and a length): `both` is the
    /// message, at the first key, when only one is set.
    fn pair(
        &mut self,
        (first_key, first): (&str, Option<&str>),
        (second_key, second): (&str, Option<&str>),
        both: &str,
    ) -> Option<(Duration, Duration)> {
        match (first, second) {
            (Some(a), Some(b)) => Some((self.duration(first_key, a), self.duration(second_key, b))),
            (None, None) => None,
            _ => {
                self.push(first_key, both.into());
                None
            }
        }
    }
}

/// The scenario's policy: a name in `policies_dir`, or a `[policy]` table of its own.
fn scenario_policy(
    issues: &Issues,
    policies_dir: &Path,
    name: &str,
    raw: &toml::Value,
) -> Result<Policy, ConfigErrors> {
    match raw {
        toml::Value::String(named) => load_policy(&policies_dir.join(format!("{named}.toml"))),
        toml::Value::Table(t) => {
            let inner = toml::to_string(t).map_err(|e| issues.only("policy", e.to_string()))?;
            parse_policy_at(issues.file, name, &inner, "policy.")
        }
        _ => Err(issues.only("policy", "a policy name or a [policy] table".into())),
    }
}

/// The incidents: the one of `incident_at`/`incident_for` on both arms, then the
/// `[[traffic.incidents]]`.
fn incidents(
    issues: &mut Issues,
    incident: Option<(Duration, Duration)>,
    t: &Traffic,
) -> Vec<Incident> {
    let mut incidents: Vec<Incident> = incident
        .map(|(a, l)| Incident {
            from_ms: a.as_millis() as i64,
            to_ms: (a + l).as_millis() as i64,
            error_rate: t.incident_error_rate,
            canary: true,
            stable: true,
        })
        .into_iter()
        .collect();
    for (i, x) in t.incidents.iter().enumerate() {
        let a = issues.duration(&format!("traffic.incidents[{i}].at"), &x.at);
        let l = issues.duration(&format!("traffic.incidents[{i}].for"), &x.length);
        let (canary, stable) = match x.arms.as_str() {
            "both" => (true, true),
            "canary" => (true, false),
            "stable" => (false, true),
            other => {
                issues.push(
                    &format!("traffic.incidents[{i}].arms"),
                    format!("`{other}` is not one of both, canary, stable"),
                );
                (false, false)
            }
        };
        incidents.push(Incident {
            from_ms: a.as_millis() as i64,
            to_ms: (a + l).as_millis() as i64,
            error_rate: x.error_rate,
            canary,
            stable,
        });
    }
    incidents
}

/// The traffic's shape and rate, and that feedback has a metric to post to.
fn check_rates(issues: &mut Issues, raw: &RawScenario, policy: &Policy) {
    if raw.traffic.daily_ratio < 1.0 || raw.traffic.burst_factor <= 0.0 {
        issues.push(
            "traffic.daily_ratio",
            "daily_ratio must be ≥ 1 and burst_factor > 0".into(),
        );
    }
    if raw.traffic.feedback_share > 0.0 && policy.feedback.is_empty() {
        issues.push(
            "traffic.feedback_share",
            "the policy declares no [feedback] metric to post to".into(),
        );
    }
    if raw.rps.is_nan() || raw.rps <= 0.0 {
        issues.push("rps", "must be greater than 0".into());
    }
}
