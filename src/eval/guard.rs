//! Guardrails in an eval: which policy applies, and its input rules on a request.
//!
//! The policy is `--guardrails NAME` when given; otherwise the one the requests' route
//! names (the `model` of a suite's requests, the rollout's route); otherwise none: a
//! policy the user did not choose would count (and block) what nobody asked for. Input
//! rules run as the gateway runs them (over every text the client wrote: messages, or a
//! Responses request's instructions and input; masking `redact` matches in place; a
//! `block` means the versions are not called); output rules are counted on each version's
//! answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::bail;
use serde::Serialize;
use serde_json::Value;

use crate::guardrails::{Applied, GuardrailSet, StageRules};
use crate::openai::request::for_each_request_text;
use crate::settings::Settings;

/// The policy an eval uses, and why that one.
#[derive(Clone)]
pub(crate) struct Chosen {
    pub(crate) name: String,
    pub(crate) chosen_by: String,
    pub(crate) set: Arc<GuardrailSet>,
}

/// The choice as reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChosenReport {
    pub(crate) policy: String,
    pub(crate) chosen_by: String,
}

impl Chosen {
    pub(crate) fn report(&self) -> ChosenReport {
        ChosenReport {
            policy: self.name.clone(),
            chosen_by: self.chosen_by.clone(),
        }
    }
}

/// Picks the guardrail policy; `routes` are the route names the requests went to.
pub(crate) fn choose(
    settings: &Settings,
    explicit: Option<&str>,
    routes: &BTreeSet<String>,
) -> anyhow::Result<Option<Chosen>> {
    let sets = &settings.guardrails;
    if let Some(name) = explicit {
        let Some(set) = sets.get(name) else {
            let known: Vec<&str> = sets.keys().map(String::as_str).collect();
            bail!(
                "--guardrails: no guardrail policy `{name}` in {} (there are: {})",
                settings.policies_dir.join("guardrails").display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            );
        };
        return Ok(Some(Chosen {
            name: name.to_owned(),
            chosen_by: "--guardrails".into(),
            set: set.clone(),
        }));
    }
    let named: BTreeSet<(&String, &String)> = routes
        .iter()
        .filter_map(|r| {
            let policy = settings.config.routes.get(r)?.guardrails.as_ref()?;
            Some((r, policy))
        })
        .collect();
    let policies: BTreeSet<&String> = named.iter().map(|(_, p)| *p).collect();
    if policies.len() == 1 {
        let policy = policies.into_iter().next().expect("one element");
        let via: Vec<&str> = named.iter().map(|(r, _)| r.as_str()).collect();
        if let Some(set) = sets.get(policy) {
            return Ok(Some(Chosen {
                name: policy.clone(),
                chosen_by: format!("route {}", via.join(", ")),
                set: set.clone(),
            }));
        }
    }
    Ok(None)
}

/// Why no guardrail policy applies, for the summary.
pub(crate) const NONE_CHOSEN: &str =
    "none: no --guardrails, and no route of the requests names a policy";

/// Runs the input rules over every text of the request (its messages, or a Responses
/// request's instructions and input), masking in place.
pub(crate) fn apply_input(rules: &StageRules, request: &mut Value) -> Applied {
    let mut total = Applied::default();
    let mut visit = |text: &mut String| {
        let applied = rules.apply(text);
        total.fired.extend(applied.fired);
        if total.blocked_by.is_none() {
            total.blocked_by = applied.blocked_by;
        }
        if let Some(redacted) = applied.redacted {
            *text = redacted;
        }
    };
    for_each_request_text(request, &mut visit);
    total
}

/// The distinct rule names that fired, in order of first firing.
pub(crate) fn fired_rules(applied: &Applied) -> Vec<String> {
    let mut seen = BTreeSet::new();
    applied
        .fired
        .iter()
        .filter(|(rule, _)| seen.insert(rule.clone()))
        .map(|(rule, _)| rule.clone())
        .collect()
}

/// Output rules that fired on an answer, and whether one of them blocks.
pub(crate) fn apply_output(rules: &StageRules, text: &str) -> (Vec<String>, bool) {
    let applied = rules.apply(text);
    (fired_rules(&applied), applied.blocked_by.is_some())
}

/// Hits per rule, counted once per text a rule fired on.
pub(crate) fn tally(hits: impl IntoIterator<Item = String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for rule in hits {
        *counts.entry(rule).or_insert(0) += 1;
    }
    counts
}
