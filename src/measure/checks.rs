//! Answer checks: the structured-output verdict and the output guardrails, for a whole
//! answer and for a stream.
//!
//! In: what the request asked for ([`Expectation`]), the route's output rules, and the
//! answer (whole, or event by event). Out: the schema verdict and what fired, counted per
//! version, arm, stage and rule; for a stream also the events the client gets instead
//! (redacted text, or a final error event after a block or, with
//! `on_schema_failure = "error"`, a schema failure).

use std::sync::Arc;

use serde_json::{Value, json};

use super::schema::{Expectation, SchemaChecker, SchemaVerdict};
use crate::config::OnSchemaFailure;
use crate::guardrails::stream::StreamRedactor;
use crate::guardrails::{Action, GuardrailCounters, GuardrailSet, Stage};
use crate::openai::completion::ChoiceText;
use crate::types::Arm;

pub struct AnswerChecks {
    pub expect: Expectation,
    pub schemas: Arc<SchemaChecker>,
    pub output: Option<Arc<GuardrailSet>>,
    pub on_schema_failure: OnSchemaFailure,
    pub counters: Arc<GuardrailCounters>,
    pub version: Arc<str>,
    pub arm: Arm,
}

/// What the checks found in a whole answer.
#[derive(Debug, Default)]
pub struct WholeVerdict {
    pub schema: Option<SchemaVerdict>,
    pub blocked_by: Option<String>,
    /// Per choice: its redacted text, when a redaction fired in it.
    pub redacted: Vec<Option<String>>,
}

impl AnswerChecks {
    fn output_rules(&self) -> Option<&crate::guardrails::StageRules> {
        self.output
            .as_deref()
            .map(|g| &g.output)
            .filter(|r| !r.is_empty())
    }

    /// Whether anything is to be checked at all.
    pub fn active(&self) -> bool {
        self.expect.asks() || self.output_rules().is_some()
    }

    /// The schema verdict over every choice (the first failure wins).
    pub fn schema_verdict(&self, choices: &[ChoiceText]) -> SchemaVerdict {
        if !self.expect.asks() {
            return SchemaVerdict::NotAsked;
        }
        for c in choices {
            let v = self.schemas.check(&self.expect, &c.text, &c.tool_calls);
            if matches!(v, SchemaVerdict::Fail { .. }) {
                return v;
            }
        }
        SchemaVerdict::Pass
    }

    /// Whether a schema failure must turn the answer into an error.
    pub fn schema_is_fatal(&self, verdict: &SchemaVerdict) -> bool {
        self.on_schema_failure == OnSchemaFailure::Error
            && matches!(verdict, SchemaVerdict::Fail { .. })
    }

    pub fn check_whole(&self, choices: &[ChoiceText]) -> WholeVerdict {
        let mut verdict = WholeVerdict {
            schema: Some(self.schema_verdict(choices)),
            ..WholeVerdict::default()
        };
        if let Some(rules) = self.output_rules() {
            let mut fired = Vec::new();
            for c in choices {
                let applied = rules.apply(&c.text);
                fired.extend(applied.fired);
                if verdict.blocked_by.is_none() {
                    verdict.blocked_by = applied.blocked_by;
                }
                verdict.redacted.push(applied.redacted);
            }
            self.count(Stage::Output, &fired);
        }
        verdict
    }

    pub fn count(&self, stage: Stage, fired: &[(String, Action)]) {
        self.counters
            .add(&self.version, self.arm.as_str(), stage, fired);
    }
}

/// Replaces each choice's `message.content` in a whole answer with its redacted text.
pub fn apply_redactions(body: &[u8], redacted: &[Option<String>]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    for (i, text) in redacted.iter().enumerate() {
        if let Some(text) = text {
            v["choices"][i]["message"]["content"] = Value::String(text.clone());
        }
    }
    serde_json::to_vec(&v).ok()
}

/// An error event for a stream that must end here.
pub fn error_event(message: &str, code: &str) -> Vec<u8> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    format!("data: {body}\n\n").into_bytes()
}

/// What to do with one event of a stream.
pub enum EventAction {
    Keep,
    Replace(Vec<u8>),
    /// Send these bytes, then end the stream.
    End {
        bytes: Vec<u8>,
        blocked: bool,
    },
}

/// The checks of one stream: per-choice redactors and the end-of-answer verdicts.
pub struct StreamChecks {
    checks: AnswerChecks,
    redactors: Vec<StreamRedactor>,
    pub blocked_by: Option<String>,
}

impl StreamChecks {
    pub fn new(checks: AnswerChecks) -> Self {
        Self {
            checks,
            redactors: Vec::new(),
            blocked_by: None,
        }
    }

    fn rewrites(&self) -> bool {
        self.checks
            .output_rules()
            .is_some_and(|r| r.rules.iter().any(|rule| rule.action != Action::Flag))
    }

    /// One complete event (its `data:` payload), after the observer has seen it;
    /// `choices` is the answer so far.
    pub fn on_event(&mut self, data: &[u8], choices: &[ChoiceText]) -> EventAction {
        if data == b"[DONE]" {
            let verdict = self.checks.schema_verdict(choices);
            if let (true, SchemaVerdict::Fail { path, reason }) =
                (self.checks.schema_is_fatal(&verdict), &verdict)
            {
                let message =
                    format!("the answer does not fit the requested schema at {path}: {reason}");
                return EventAction::End {
                    bytes: error_event(&message, "schema_validation_failed"),
                    blocked: false,
                };
            }
            return EventAction::Keep;
        }
        if !self.rewrites() {
            return EventAction::Keep;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return EventAction::Keep;
        };
        let Some(rules) = self.checks.output.clone() else {
            return EventAction::Keep;
        };
        let mut changed = false;
        for choice in v["choices"].as_array_mut().into_iter().flatten() {
            let i = choice["index"].as_u64().unwrap_or(0) as usize;
            if self.redactors.len() <= i {
                self.redactors.resize_with(i + 1, StreamRedactor::default);
            }
            let Some(piece) = choice["delta"]["content"].as_str().map(str::to_owned) else {
                if !choice["finish_reason"].is_null() {
                    let rest = self.redactors[i].finish(&rules.output);
                    if let Some(rule) = rest.blocked_by {
                        return self.block(rule);
                    }
                    if !rest.text.is_empty() {
                        choice["delta"]["content"] = Value::String(rest.text);
                        changed = true;
                    }
                }
                continue;
            };
            let mut released = self.redactors[i].push(&rules.output, &piece);
            if !choice["finish_reason"].is_null() && released.blocked_by.is_none() {
                let rest = self.redactors[i].finish(&rules.output);
                released.text.push_str(&rest.text);
                released.blocked_by = rest.blocked_by;
            }
            if let Some(rule) = released.blocked_by {
                return self.block(rule);
            }
            if released.text != piece {
                choice["delta"]["content"] = Value::String(released.text);
                changed = true;
            }
        }
        if changed {
            EventAction::Replace(format!("data: {v}\n\n").into_bytes())
        } else {
            EventAction::Keep
        }
    }

    fn block(&mut self, rule: String) -> EventAction {
        let message = format!("the answer was blocked by guardrail `{rule}`");
        self.blocked_by = Some(rule);
        EventAction::End {
            bytes: error_event(&message, "guardrail_blocked"),
            blocked: true,
        }
    }

    /// Text still held back when the upstream ended without finishing its choices.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        let rules = self.checks.output.clone()?;
        let mut out = Vec::new();
        for (i, r) in self.redactors.iter_mut().enumerate() {
            let rest = r.finish(&rules.output);
            if !rest.text.is_empty() {
                let c = json!({"choices": [{"index": i, "delta": {"content": rest.text}, "finish_reason": null}]});
                out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The end of the stream: the schema verdict, and every rule that fired counted once.
    pub fn conclude(&self, choices: &[ChoiceText]) -> SchemaVerdict {
        if let Some(rules) = self.checks.output_rules() {
            let mut fired: Vec<(String, Action)> = Vec::new();
            for c in choices {
                for f in rules.apply(&c.text).fired {
                    if !fired.contains(&f) {
                        fired.push(f);
                    }
                }
            }
            self.checks.count(Stage::Output, &fired);
        }
        self.checks.schema_verdict(choices)
    }
}
