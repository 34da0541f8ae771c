//! Rollout policies: `policies/*.toml` in, a checked [`Policy`] out (steps, gates, kill
//! switch), or every mistake at once, each naming the file and the dotted key
//! (`steps.2.weight`, `gates.latency_p95.max_ms`). Steps are numbered from 0, as
//! `serde_ignored` numbers them. Defaults for absent keys live in one place below.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::issue::{ConfigErrors, ConfigIssue, read_toml, struct_fields};
use crate::judge::spec::{FeedbackKind, FeedbackMetric, Gate, JudgeSpec, KillSwitch, Metric};

/// How requests are bucketed for the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Sticky {
    /// Each request on its own (the default; best judge power).
    Request,
    /// Workspace + the request's `user` field.
    User,
    /// The value of this request header (`header:x-sluice-sticky-key`).
    Header(String),
    /// The `x-sluice-conversation-id` header.
    Conversation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    /// Canary weight for randomized traffic, in basis points (1 % = 100); 0..=10 000.
    pub(crate) weight_bp: u32,
    /// Workspaces that get the canary at 100 % from this step on (targeting, not randomized).
    #[serde(default)]
    pub(crate) workspaces: Vec<String>,
    #[serde(with = "humantime_serde_ms")]
    pub(crate) hold: Duration,
    /// Canary requests needed in this step before it may advance.
    pub(crate) min_requests: u64,
}

/// A checked policy. It serializes as JSON into the rollout's row (`policy_json`) when a
/// rollout starts, and a live rollout is judged by that stored copy on every replica and
/// after every restart (`Policy::from_stored`): an edited file applies to the next rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) description: String,
    /// False-rollback budget for the whole rollout.
    pub(crate) alpha: f64,
    #[serde(with = "humantime_serde_ms")]
    pub(crate) interval: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub(crate) max_step_hold: Duration,
    pub(crate) sticky: Sticky,
    #[serde(default)]
    pub(crate) webhook: Option<String>,
    pub(crate) steps: Vec<Step>,
    pub(crate) gates: Vec<Gate>,
    #[serde(default)]
    pub(crate) kill_switch: Option<KillSwitch>,
    /// `[shadow]`: copy a sample of one arm's traffic to the other version.
    #[serde(default)]
    pub(crate) shadow: Option<ShadowConfig>,
    /// `[feedback.<metric>]`: business metrics posted to `/v1/feedback`, judged as gates.
    #[serde(default)]
    pub(crate) feedback: Vec<FeedbackMetric>,
}

/// A rollout policy's `[shadow]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShadowConfig {
    /// Share of the source arm's requests that are copied.
    pub(crate) rate: f64,
    /// Per-workspace overrides of `rate`.
    pub(crate) workspace_rates: std::collections::BTreeMap<String, f64>,
    pub(crate) from: crate::types::Arm,
    pub(crate) to: crate::types::Arm,
    pub(crate) max_usd_per_hour: f64,
    /// Pairs kept per rollout (older ones are deleted).
    pub(crate) keep: u64,
    /// Requests that carry tools are not copied (their tools may have side effects).
    pub(crate) skip_tools: bool,
    /// Mask the request's text with the route's guardrail PII rules before storing it.
    pub(crate) redact: bool,
}

impl ShadowConfig {
    pub(crate) fn rate_for(&self, workspace: &str) -> f64 {
        self.workspace_rates
            .get(workspace)
            .copied()
            .unwrap_or(self.rate)
    }
}

use crate::judge::spec::humantime_serde_ms;

/// Defaults for keys a policy leaves out; `policies/default.toml` documents them.
pub(crate) const DEFAULT_ALPHA: f64 = 0.01;
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_MAX_STEP_HOLD: Duration = Duration::from_secs(6 * 3600);
/// Without a `[gates]` table the judge still watches errors: any more than 1.2 × stable.
pub(crate) const DEFAULT_ERROR_RATE_MAX_RATIO: f64 = 1.2;
/// Without a `[kill_switch]` table the research note's default still guards the canary.
pub(crate) const DEFAULT_KILL_SWITCH: KillSwitch = KillSwitch {
    error_rate: 0.5,
    min_requests: 20,
    window: Duration::from_secs(60),
};

impl Sticky {
    pub(crate) fn parse(s: &str) -> Result<Sticky, String> {
        match s {
            "request" => Ok(Sticky::Request),
            "user" => Ok(Sticky::User),
            "conversation" => Ok(Sticky::Conversation),
            other => match other.strip_prefix("header:") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Ok(Sticky::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "`{other}` is not one of request, user, conversation, header:<name>"
                )),
            },
        }
    }
}

impl Policy {
    /// The policy a rollout started with, from its row's `policy_json` (what
    /// `serde_json::to_string(&policy)` wrote at the start).
    ///
    /// # Errors
    /// The text is not a policy (empty, or written by a build whose policy had another
    /// shape); the message says what serde could not read.
    pub(crate) fn from_stored(json: &str) -> Result<Policy, String> {
        let policy: Policy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if policy.steps.is_empty() {
            return Err("the stored policy has no steps".into());
        }
        Ok(policy)
    }

    /// What the judge needs of this policy, in the judge's own terms.
    pub fn judge_spec(&self) -> JudgeSpec {
        JudgeSpec {
            alpha: self.alpha,
            gates: self.gates.clone(),
            feedback: self.feedback.clone(),
            kill_switch: self.kill_switch.clone(),
            per_request_units: self.sticky == Sticky::Request,
        }
    }

    /// The gate watching `metric`, if the policy has one.
    #[cfg(test)]
    pub(crate) fn gate(&self, metric: Metric) -> Option<&Gate> {
        self.gates.iter().find(|g| g.metric == metric)
    }

    /// Workspaces targeted (canary at 100 %) at `step`: every step's list up to it, since a
    /// workspace once given the canary keeps it while the rollout lives.
    pub(crate) fn targeted_workspaces(&self, step: usize) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.steps.iter().take(step + 1) {
            for w in &s.workspaces {
                if !out.contains(&w.as_str()) {
                    out.push(w);
                }
            }
        }
        out
    }
}

// The file as written; every key optional here so that each absence is one clear message.
#[derive(Deserialize)]
struct RawPolicy {
    description: Option<String>,
    alpha: Option<f64>,
    interval: Option<String>,
    max_step_hold: Option<String>,
    sticky: Option<String>,
    webhook: Option<String>,
    steps: Option<Vec<RawStep>>,
    gates: Option<BTreeMap<String, RawGate>>,
    kill_switch: Option<RawKillSwitch>,
    shadow: Option<RawShadow>,
    feedback: Option<BTreeMap<String, RawFeedback>>,
}

#[derive(Deserialize)]
struct RawShadow {
    rate: Option<f64>,
    from: Option<String>,
    to: Option<String>,
    max_usd_per_hour: Option<f64>,
    keep: Option<u64>,
    skip_tools: Option<bool>,
    redact: Option<bool>,
    workspaces: Option<BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
struct RawFeedback {
    kind: Option<String>,
    good: Option<String>,
}

#[derive(Deserialize)]
struct RawStep {
    weight: Option<f64>,
    workspaces: Option<Vec<String>>,
    hold: Option<String>,
    min_requests: Option<u64>,
}

#[derive(Deserialize)]
struct RawGate {
    max_ratio: Option<f64>,
    min_ratio: Option<f64>,
    max_ms: Option<f64>,
}

#[derive(Deserialize)]
struct RawKillSwitch {
    error_rate: Option<f64>,
    min_requests: Option<u64>,
    window: Option<String>,
}

/// Reads one policy file; its name is the file stem.
/// The known keys of each table of a policy file, for "did you mean".
fn policy_fields(parent: &[&str]) -> Option<&'static [&'static str]> {
    Some(match parent {
        [] => struct_fields::<RawPolicy>(),
        ["steps", _] => struct_fields::<RawStep>(),
        ["gates", _] => struct_fields::<RawGate>(),
        ["kill_switch"] => struct_fields::<RawKillSwitch>(),
        ["shadow"] => struct_fields::<RawShadow>(),
        ["feedback", _] => struct_fields::<RawFeedback>(),
        _ => return None,
    })
}

pub(crate) fn load_policy(path: &Path) -> Result<Policy, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            file: path.to_owned(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_policy(path, &name, &text)
}

/// Reads every `*.toml` directly in `dir` (not `guardrails/`), by name.
pub(crate) fn load_dir(dir: &Path) -> Result<BTreeMap<String, Policy>, ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            file: dir.to_owned(),
            key: String::new(),
            message: format!("cannot read the policies folder: {e}"),
        }])
    })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut policies = BTreeMap::new();
    let mut issues = Vec::new();
    for path in paths {
        match load_policy(&path) {
            Ok(policy) => {
                policies.insert(policy.name.clone(), policy);
            }
            Err(ConfigErrors(mut more)) => issues.append(&mut more),
        }
    }
    if issues.is_empty() {
        Ok(policies)
    } else {
        Err(ConfigErrors(issues))
    }
}

/// Parses and checks one policy text; `file` only labels the messages.
///
/// # Errors
/// Every mistake in the text at once ([`ConfigErrors`]), each located by its dotted key.
pub fn parse_policy(file: &Path, name: &str, text: &str) -> Result<Policy, ConfigErrors> {
    parse_policy_at(file, name, text, "")
}

/// As [`parse_policy`], for a policy nested under `prefix` in a larger file (a simulation
/// scenario's `[policy]` table): keys in messages start with `prefix`.
pub(crate) fn parse_policy_at(
    file: &Path,
    name: &str,
    text: &str,
    prefix: &str,
) -> Result<Policy, ConfigErrors> {
    let mut issues = Issues {
        file,
        prefix,
        found: Vec::new(),
    };
    let (raw, found) = read_toml::<RawPolicy>(file, text, &policy_fields);
    for i in found {
        issues.push(&i.key, i.message);
    }
    let Some(raw) = raw else {
        return Err(ConfigErrors(issues.found));
    };
    let interval = issues.duration("interval", raw.interval.as_ref(), Some(DEFAULT_INTERVAL));
    let max_step_hold = issues.duration(
        "max_step_hold",
        raw.max_step_hold.as_ref(),
        Some(DEFAULT_MAX_STEP_HOLD),
    );
    // Every step's hold is read here, before the other checks, so that the messages keep
    // the order they have always had.
    let holds: Vec<Option<Duration>> = (raw.steps.iter().flatten().enumerate())
        .map(|(i, s)| issues.duration(&format!("steps.{i}.hold"), s.hold.as_ref(), None))
        .collect();
    let alpha = check_alpha(&mut issues, raw.alpha);
    let sticky = parse_sticky(&mut issues, raw.sticky.as_deref());
    check_webhook(&mut issues, raw.webhook.as_deref());
    let rules = StepRules {
        has_shadow: raw.shadow.is_some(),
        max_step_hold,
    };
    let steps = parse_steps(&mut issues, raw.steps.as_deref(), &holds, &rules);
    let gates = parse_gates(&mut issues, raw.gates.as_ref());
    let kill_switch = parse_kill_switch(&mut issues, raw.kill_switch.as_ref());
    let shadow = (raw.shadow.as_ref()).and_then(|s| parse_shadow(&mut issues, s));
    let feedback = parse_feedback(&mut issues, raw.feedback.as_ref());
    if !issues.found.is_empty() {
        return Err(ConfigErrors(issues.found));
    }
    Ok(Policy {
        name: name.to_owned(),
        description: raw.description.unwrap_or_default(),
        alpha,
        interval: interval.expect("checked above"),
        max_step_hold: max_step_hold.expect("checked above"),
        sticky,
        webhook: raw.webhook,
        steps,
        gates,
        kill_switch,
        shadow,
        feedback,
    })
}

/// The mistakes found in one policy text so far, in the order they are reported.
struct Issues<'a> {
    file: &'a Path,
    /// Put before every key (a scenario's `policy.`).
    prefix: &'a str,
    found: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn push(&mut self, key: &str, message: String) {
        self.found.push(ConfigIssue {
            file: self.file.to_owned(),
            key: format!("{}{key}", self.prefix),
            message,
        });
    }

    /// A duration longer than 0 at `key`, or `default` when the key is absent.
    fn duration(
        &mut self,
        key: &str,
        raw: Option<&String>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(text) = raw else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.push(key, "must be longer than 0".into());
                None
            }
            Err(e) => {
                self.push(
                    key,
                    format!("`{text}` is not a duration such as \"5s\", \"10m\" or \"6h\": {e}"),
                );
                None
            }
        }
    }
}

fn check_alpha(issues: &mut Issues, raw: Option<f64>) -> f64 {
    let alpha = raw.unwrap_or(DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha < 0.5) {
        issues.push("alpha", format!("{alpha} is not in (0, 0.5)"));
    }
    alpha
}

fn parse_sticky(issues: &mut Issues, raw: Option<&str>) -> Sticky {
    match raw.map(Sticky::parse) {
        None => Sticky::Request,
        Some(Ok(s)) => s,
        Some(Err(why)) => {
            issues.push("sticky", why);
            Sticky::Request
        }
    }
}

fn check_webhook(issues: &mut Issues, raw: Option<&str>) {
    if let Some(hook) = raw {
        match url::Url::parse(hook) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => issues.push("webhook", format!("`{hook}` is not an http(s) URL")),
        }
    }
}

/// What checking one step needs from the rest of the policy.
struct StepRules {
    /// A `[shadow]` table makes a step of weight 0 valid (copies only).
    has_shadow: bool,
    max_step_hold: Option<Duration>,
}

/// The steps, each with its hold read earlier (`holds`, one per raw step).
fn parse_steps(
    issues: &mut Issues,
    raw: Option<&[RawStep]>,
    holds: &[Option<Duration>],
    rules: &StepRules,
) -> Vec<Step> {
    if raw.is_none_or(<[RawStep]>::is_empty) {
        issues.push("steps", "a policy needs at least one [[steps]]".into());
    }
    let mut steps = Vec::new();
    let mut last_weight_bp = 0u32;
    for (i, (s, &hold)) in raw.into_iter().flatten().zip(holds).enumerate() {
        let key = format!("steps.{i}");
        let workspaces = s.workspaces.clone().unwrap_or_default();
        if workspaces.iter().any(|w| w.trim().is_empty()) {
            issues.push(
                &format!("{key}.workspaces"),
                "workspace names must not be empty".into(),
            );
        }
        let weight_bp = step_weight_bp(issues, &key, s.weight, workspaces.is_empty(), rules);
        if let Some(bp) = weight_bp {
            check_weight_rises(issues, &key, bp, last_weight_bp);
            last_weight_bp = last_weight_bp.max(bp);
        }
        check_hold(issues, &key, s.hold.is_some(), hold, rules.max_step_hold);
        let shadow_only = s.weight == Some(0.0) && rules.has_shadow;
        let min_requests = step_min_requests(issues, &key, s.min_requests, shadow_only);
        if let (Some(weight_bp), Some(hold), Some(min_requests)) = (weight_bp, hold, min_requests) {
            steps.push(Step {
                weight_bp,
                workspaces,
                hold,
                min_requests,
            });
        }
    }
    steps
}

/// A step's weight, a percentage, in basis points.
fn step_weight_bp(
    issues: &mut Issues,
    key: &str,
    weight: Option<f64>,
    no_workspaces: bool,
    rules: &StepRules,
) -> Option<u32> {
    match weight {
        None if no_workspaces => {
            issues.push(
                &format!("{key}.weight"),
                "a step needs a weight (percent), workspaces, or both".into(),
            );
            None
        }
        None => Some(0),
        // Shadow-only: no live canary traffic, copies only (needs a [shadow] table).
        Some(0.0) if rules.has_shadow => Some(0),
        Some(w) if !(w > 0.0 && w <= 100.0) => {
            issues.push(
                &format!("{key}.weight"),
                format!("{w} is not a percentage in (0, 100]"),
            );
            None
        }
        Some(w) => {
            let bp = w * 100.0;
            if (bp - bp.round()).abs() > 1e-6 {
                issues.push(
                    &format!("{key}.weight"),
                    format!("{w} % is finer than 0.01 %"),
                );
                None
            } else {
                Some(bp.round() as u32)
            }
        }
    }
}

/// Weights only rise inside a rollout, so a unit once on the canary stays there.
fn check_weight_rises(issues: &mut Issues, key: &str, bp: u32, last_weight_bp: u32) {
    if bp < last_weight_bp {
        issues.push(
            &format!("{key}.weight"),
            format!(
                "{} % is below the step before ({} %): weights must not fall",
                bp as f64 / 100.0,
                last_weight_bp as f64 / 100.0
            ),
        );
    }
}

fn check_hold(
    issues: &mut Issues,
    key: &str,
    written: bool,
    hold: Option<Duration>,
    max_step_hold: Option<Duration>,
) {
    if !written {
        issues.push(&format!("{key}.hold"), "is required (e.g. \"10m\")".into());
    }
    if let (Some(hold), Some(max)) = (hold, max_step_hold)
        && hold > max
    {
        issues.push(
            &format!("{key}.hold"),
            format!(
                "{} is longer than max_step_hold ({}): the step could never pass",
                humantime::format_duration(hold),
                humantime::format_duration(max)
            ),
        );
    }
}

fn step_min_requests(
    issues: &mut Issues,
    key: &str,
    raw: Option<u64>,
    shadow_only: bool,
) -> Option<u64> {
    match raw {
        // A shadow-only step serves no canary request: it passes on its hold, and its
        // evidence is offline (`sluice eval --rollout`).
        Some(0) | None if shadow_only => Some(0),
        Some(0) | None => {
            issues.push(
                &format!("{key}.min_requests"),
                "is required and must be at least 1: a step passes only on evidence".into(),
            );
            None
        }
        Some(n) => Some(n),
    }
}

/// The gates, sorted by metric; without a `[gates]` table, the default error-rate gate.
fn parse_gates(issues: &mut Issues, raw: Option<&BTreeMap<String, RawGate>>) -> Vec<Gate> {
    let mut gates = Vec::new();
    match raw {
        None => gates.push(Gate {
            metric: Metric::ErrorRate,
            max_ratio: Some(DEFAULT_ERROR_RATE_MAX_RATIO),
            min_ratio: None,
            max_ms: None,
        }),
        Some(table) if table.is_empty() => issues.push(
            "gates",
            "an empty [gates] table judges nothing; leave it out for the default error_rate gate"
                .into(),
        ),
        Some(table) => {
            for (k, g) in table {
                let key = format!("gates.{k}");
                let Some(metric) = Metric::parse(k) else {
                    let known: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
                    issues.push(
                        &key,
                        format!("unknown gate; known gates: {}", known.join(", ")),
                    );
                    continue;
                };
                gates.extend(parse_gate(issues, &key, metric, g));
            }
        }
    }
    gates.sort_by_key(|g| g.metric);
    gates
}

/// One `[gates.<metric>]` table, or `None` when it has a mistake.
fn parse_gate(issues: &mut Issues, key: &str, metric: Metric, g: &RawGate) -> Option<Gate> {
    let before = issues.found.len();
    if let Some(r) = g.max_ratio
        && !(r >= 1.0 && r.is_finite())
    {
        issues.push(
            &format!("{key}.max_ratio"),
            format!("{r} must be at least 1 (1 = no tolerance)"),
        );
    }
    if let Some(r) = g.min_ratio {
        if metric.is_binary() {
            issues.push(
                &format!("{key}.min_ratio"),
                "a fall in a failure rate is not harm; only max_ratio applies".into(),
            );
        } else if !(r > 0.0 && r <= 1.0) {
            issues.push(
                &format!("{key}.min_ratio"),
                format!("{r} must be in (0, 1]"),
            );
        }
    }
    if let Some(ms) = g.max_ms {
        if !metric.is_time() {
            issues.push(
                &format!("{key}.max_ms"),
                "only latency_p95 and ttft_p95 take a hard limit in ms".into(),
            );
        } else if !(ms > 0.0 && ms.is_finite()) {
            issues.push(
                &format!("{key}.max_ms"),
                format!("{ms} must be greater than 0"),
            );
        }
    }
    if g.max_ratio.is_none() && g.min_ratio.is_none() && g.max_ms.is_none() {
        issues.push(
            key,
            "the gate watches nothing: set max_ratio, min_ratio or max_ms".into(),
        );
    }
    (issues.found.len() == before).then_some(Gate {
        metric,
        max_ratio: g.max_ratio,
        min_ratio: g.min_ratio,
        max_ms: g.max_ms,
    })
}

/// The `[kill_switch]` table; without one, [`DEFAULT_KILL_SWITCH`].
fn parse_kill_switch(issues: &mut Issues, raw: Option<&RawKillSwitch>) -> Option<KillSwitch> {
    let Some(k) = raw else {
        return Some(DEFAULT_KILL_SWITCH);
    };
    let error_rate = k.error_rate.unwrap_or(DEFAULT_KILL_SWITCH.error_rate);
    if !(error_rate > 0.0 && error_rate <= 1.0) {
        issues.push(
            "kill_switch.error_rate",
            format!("{error_rate} is not a rate in (0, 1]"),
        );
    }
    let min_requests = k.min_requests.unwrap_or(DEFAULT_KILL_SWITCH.min_requests);
    if min_requests == 0 {
        issues.push("kill_switch.min_requests", "must be at least 1".into());
    }
    let window = match &k.window {
        None => Some(DEFAULT_KILL_SWITCH.window),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                issues.push(
                    "kill_switch.window",
                    format!("`{text}` is not a duration longer than 0, such as \"60s\""),
                );
                None
            }
        },
    };
    window.map(|window| KillSwitch {
        error_rate,
        min_requests,
        window,
    })
}

/// `shadow.from` or `shadow.to`: `default` when absent.
fn shadow_arm(
    issues: &mut Issues,
    key: &str,
    value: Option<&str>,
    default: crate::types::Arm,
) -> Option<crate::types::Arm> {
    match value {
        None => Some(default),
        Some(v) => crate::types::Arm::parse(v).or_else(|| {
            issues.push(
                &format!("shadow.{key}"),
                format!("`{v}` is not stable or canary"),
            );
            None
        }),
    }
}

/// The `[shadow]` table, with its defaults (5 %, stable → canary, $1/hour, 10 000 pairs).
fn parse_shadow(issues: &mut Issues, s: &RawShadow) -> Option<ShadowConfig> {
    let from = shadow_arm(issues, "from", s.from.as_deref(), crate::types::Arm::Stable);
    let to = shadow_arm(issues, "to", s.to.as_deref(), crate::types::Arm::Canary);
    if from.is_some() && from == to {
        issues.push("shadow.to", "must be the other arm than `from`".into());
    }
    let rate = s.rate.unwrap_or(0.05);
    let rates_ok = std::iter::once(rate)
        .chain(s.workspaces.iter().flat_map(|w| w.values().copied()))
        .all(|r| (0.0..=1.0).contains(&r));
    if !rates_ok {
        issues.push("shadow.rate", "rates must be between 0 and 1".into());
    }
    let max_usd_per_hour = s.max_usd_per_hour.unwrap_or(1.0);
    if max_usd_per_hour.is_nan() || max_usd_per_hour < 0.0 {
        issues.push("shadow.max_usd_per_hour", "must be zero or more".into());
    }
    Some(ShadowConfig {
        rate,
        workspace_rates: s.workspaces.clone().unwrap_or_default(),
        from: from?,
        to: to?,
        max_usd_per_hour,
        keep: s.keep.unwrap_or(10_000),
        skip_tools: s.skip_tools.unwrap_or(true),
        redact: s.redact.unwrap_or(true),
    })
}

/// The `[feedback.<metric>]` tables, in metric-name order.
fn parse_feedback(
    issues: &mut Issues,
    raw: Option<&BTreeMap<String, RawFeedback>>,
) -> Vec<FeedbackMetric> {
    let mut feedback = Vec::new();
    for (metric, f) in raw.into_iter().flatten() {
        let kind = match f.kind.as_deref() {
            Some("binary") => Some(FeedbackKind::Binary),
            Some("numeric") => Some(FeedbackKind::Numeric),
            other => {
                issues.push(
                    &format!("feedback.{metric}.kind"),
                    format!("{other:?} is not \"binary\" or \"numeric\""),
                );
                None
            }
        };
        let higher = match f.good.as_deref() {
            Some("higher") => Some(true),
            Some("lower") => Some(false),
            other => {
                issues.push(
                    &format!("feedback.{metric}.good"),
                    format!("{other:?} is not \"higher\" or \"lower\""),
                );
                None
            }
        };
        if let (Some(kind), Some(higher_is_better)) = (kind, higher) {
            feedback.push(FeedbackMetric {
                name: metric.clone(),
                kind,
                higher_is_better,
            });
        }
    }
    feedback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Policy {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(format!("{name}.toml"));
        load_policy(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_issue_policy_parses_as_written() {
        let p = shipped("internal-first");
        assert_eq!(p.name, "internal-first");
        assert_eq!(p.alpha, 0.01);
        assert_eq!(p.interval, Duration::from_secs(5));
        assert_eq!(p.max_step_hold, Duration::from_secs(6 * 3600));
        assert_eq!(p.sticky, Sticky::Request);
        assert_eq!(p.webhook.as_deref(), Some("http://127.0.0.1:9999/hook"));
        let weights: Vec<u32> = p.steps.iter().map(|s| s.weight_bp).collect();
        assert_eq!(weights, [0, 100, 500, 2500, 5000]);
        assert_eq!(p.steps[0].workspaces, ["internal"]);
        assert_eq!(p.steps[3].hold, Duration::from_secs(1800));
        assert_eq!(p.steps[2].min_requests, 500);
        assert_eq!(p.gates.len(), 6);
        let latency = p.gate(Metric::LatencyP95).unwrap();
        assert_eq!(
            (latency.max_ratio, latency.max_ms),
            (Some(1.3), Some(10000.0))
        );
        let length = p.gate(Metric::ResponseLength).unwrap();
        assert_eq!((length.max_ratio, length.min_ratio), (Some(1.5), Some(0.5)));
        assert_eq!(
            p.kill_switch,
            Some(KillSwitch {
                error_rate: 0.5,
                min_requests: 20,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(p.targeted_workspaces(3), ["internal"]);
    }

    #[test]
    fn the_default_policy_parses_and_the_folder_loads_both() {
        let p = shipped("default");
        let weights: Vec<u32> = p.steps.iter().map(|s| s.weight_bp).collect();
        assert_eq!(weights, [100, 500, 2500, 5000]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let all = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains_key("default") && all.contains_key("internal-first"));
    }

    #[test]
    fn absent_keys_take_the_documented_defaults() {
        let p = parse_policy(
            Path::new("p/min.toml"),
            "min",
            "[[steps]]\nweight = 0.5\nhold = \"1m\"\nmin_requests = 10\n",
        )
        .unwrap();
        assert_eq!(p.alpha, DEFAULT_ALPHA);
        assert_eq!(p.interval, DEFAULT_INTERVAL);
        assert_eq!(p.max_step_hold, DEFAULT_MAX_STEP_HOLD);
        assert_eq!(p.steps[0].weight_bp, 50);
        assert_eq!(
            p.gates,
            [Gate {
                metric: Metric::ErrorRate,
                max_ratio: Some(1.2),
                min_ratio: None,
                max_ms: None
            }]
        );
        assert_eq!(p.kill_switch, Some(DEFAULT_KILL_SWITCH));
    }

    #[test]
    fn every_mistake_is_reported_once_with_file_and_key() {
        let text = r#"
alpha = 2
interval = "soon"
sticky = "cookie"
colour = "blue"

[[steps]]
weight = 5
hold = "10m"
min_requests = 100

[[steps]]
weight = 1
hold = "10m"
min_requests = 100
speed = 3

[[steps]]
weight = 150
min_requests = 0

[gates.error_rate]
min_ratio = 0.5
[gates.happiness]
max_ratio = 2
[gates.tokens_per_request]
max_ms = 100

[kill_switch]
error_rate = 0
"#;
        let errors = parse_policy(Path::new("policies/bad.toml"), "bad", text).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|i| i.to_string()).collect();
        let expect = [
            "policies/bad.toml: colour: unknown key",
            "policies/bad.toml: steps.1.speed: unknown key",
            "policies/bad.toml: interval: `soon` is not a duration",
            "policies/bad.toml: alpha: 2 is not in (0, 0.5)",
            "policies/bad.toml: sticky: `cookie` is not one of",
            "policies/bad.toml: steps.1.weight: 1 % is below the step before (5 %)",
            "policies/bad.toml: steps.2.weight: 150 is not a percentage",
            "policies/bad.toml: steps.2.hold: is required",
            "policies/bad.toml: steps.2.min_requests: is required",
            "policies/bad.toml: gates.error_rate.min_ratio: a fall in a failure rate",
            "policies/bad.toml: gates.happiness: unknown gate",
            "policies/bad.toml: gates.tokens_per_request.max_ms: only latency_p95",
            "policies/bad.toml: kill_switch.error_rate: 0 is not a rate",
        ];
        for want in expect {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "missing `{want}` in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    }

    #[test]
    fn a_type_error_names_the_file() {
        let errors = parse_policy(Path::new("p/t.toml"), "t", "alpha = \"high\"\n").unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(
            errors.0[0].to_string().starts_with("p/t.toml: "),
            "{errors}"
        );
        assert!(errors.0[0].message.contains("alpha"), "{errors}");
    }

    #[test]
    fn a_workspace_only_step_has_no_randomized_weight_and_sticky_headers_parse() {
        let text = "sticky = \"header:X-Team\"\n[[steps]]\nworkspaces = [\"a\"]\nhold = \"1m\"\nmin_requests = 1\n[[steps]]\nweight = 100\nhold = \"1m\"\nmin_requests = 1\n";
        let p = parse_policy(Path::new("p.toml"), "p", text).unwrap();
        assert_eq!(p.steps[0].weight_bp, 0);
        assert_eq!(p.steps[1].weight_bp, 10_000);
        assert_eq!(p.sticky, Sticky::Header("x-team".into()));
    }
    #[test]
    fn a_stored_policy_reads_back_as_it_was_started() {
        let shadow = parse_policy(
            Path::new("s.toml"),
            "s",
            "[[steps]]\nweight = 0\nhold = \"1m\"\n[[steps]]\nworkspaces = [\"a\"]\nweight = 5\nhold = \"2m\"\nmin_requests = 3\n[shadow]\nrate = 0.5\nfrom = \"stable\"\nto = \"canary\"\n[feedback.converted]\nkind = \"binary\"\ngood = \"higher\"\n",
        )
        .unwrap();
        for p in [
            shipped("default"),
            shipped("internal-first"),
            shipped("quickstart"),
            shadow,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(Policy::from_stored(&json).unwrap(), p, "{json}");
        }
        assert!(Policy::from_stored("").is_err());
        assert!(Policy::from_stored("{}").is_err());
    }
}
