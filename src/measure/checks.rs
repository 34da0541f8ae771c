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
use crate::error::ApiError;
use crate::guardrails::stream::{Released, StreamRedactor};
use crate::guardrails::{Action, GuardrailCounters, GuardrailSet, Stage, StageRules};
use crate::openai::chunk_scan::PlainChunk;
use crate::openai::completion::{ChoiceText, MAX_STREAM_INDEX};
use crate::types::Arm;

/// What one answer is checked against, and where the findings are counted: built per request
/// from the request's expectation and the route's output guardrails.
pub struct AnswerChecks {
    /// What the request asked of the answer (`response_format`, `tools`).
    pub expect: Expectation,
    /// The shared cache of compiled JSON schemas.
    pub schemas: Arc<SchemaChecker>,
    /// The route's guardrail set, whose output rules apply; `None` checks no guardrail.
    pub output: Option<Arc<GuardrailSet>>,
    /// Whether a schema failure is only counted or turns the answer into an error.
    pub on_schema_failure: OnSchemaFailure,
    /// Where fired rules are counted.
    pub counters: Arc<GuardrailCounters>,
    /// The version answering, as the counters label it.
    pub version: Arc<str>,
    /// The arm of that version, as the counters label it.
    pub arm: Arm,
}

/// What the checks found in a whole answer.
#[derive(Debug, Default)]
pub struct WholeVerdict {
    pub(crate) schema: Option<SchemaVerdict>,
    pub(crate) blocked_by: Option<String>,
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
    pub(crate) fn active(&self) -> bool {
        self.expect.asks() || self.output_rules().is_some()
    }

    /// The schema verdict over every choice (the first failure wins).
    pub(crate) fn schema_verdict(&self, choices: &[ChoiceText]) -> SchemaVerdict {
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
    pub(crate) fn schema_is_fatal(&self, verdict: &SchemaVerdict) -> bool {
        self.on_schema_failure == OnSchemaFailure::Error
            && matches!(verdict, SchemaVerdict::Fail { .. })
    }

    /// Checks a whole answer's choices: the schema verdict over all of them (the first failure
    /// wins), and each choice's output rules, counting what fired.
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

    pub(crate) fn count(&self, stage: Stage, fired: &[(String, Action)]) {
        self.counters
            .add(&self.version, self.arm.as_str(), stage, fired);
    }
}

/// Replaces each choice's `message.content` in a whole answer with its redacted text
/// (`redacted` is by position in `choices`, as `summarize_completion` reads them). Every
/// other value stays as the upstream wrote it (a number beyond f64 too); the last of
/// duplicate keys wins, as when the answer was read.
///
/// `None` when a redacted choice has no `message` object to write into, or the body is not
/// a JSON object: the caller must not send the answer unredacted then.
pub fn apply_redactions(body: &[u8], redacted: &[Option<String>]) -> Option<Vec<u8>> {
    use serde_json::value::{RawValue, to_raw_value};
    type Object = indexmap::IndexMap<String, Box<RawValue>>;
    // Bytes that are not UTF-8 (in fields the summary does not read) become U+FFFD.
    let mut whole: Object = serde_json::from_str(&String::from_utf8_lossy(body)).ok()?;
    let mut choices: Vec<Box<RawValue>> = serde_json::from_str(whole.get("choices")?.get()).ok()?;
    for (i, text) in redacted.iter().enumerate() {
        let Some(text) = text else { continue };
        let choice = choices.get_mut(i)?;
        let mut fields: Object = serde_json::from_str(choice.get()).ok()?;
        let mut message: Object = serde_json::from_str(fields.get("message")?.get()).ok()?;
        // The text checked was `content` and `refusal` joined: the redacted text replaces
        // both (in `refusal` when there was no `content`), so no unmasked part stays behind.
        let has = |m: &Object, k: &str| m.get(k).is_some_and(|v| v.get() != "null");
        let (content, refusal) = (has(&message, "content"), has(&message, "refusal"));
        if refusal && !content {
            message.insert("refusal".into(), to_raw_value(text).ok()?);
        } else {
            message.insert("content".into(), to_raw_value(text).ok()?);
            if refusal {
                message.insert("refusal".into(), RawValue::NULL.to_owned());
            }
        }
        fields.insert("message".into(), to_raw_value(&message).ok()?);
        *choice = to_raw_value(&fields).ok()?;
    }
    whole.insert("choices".into(), to_raw_value(&choices).ok()?);
    serde_json::to_vec(&whole).ok()
}

/// What to do with one event of a stream.
pub(crate) enum EventAction {
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
    pub(crate) blocked_by: Option<String>,
}

impl StreamChecks {
    /// Checks for one stream, before its first event.
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

    /// One complete event (its `data:` payload), after the observer has seen it; `plain`
    /// is its one-pass reading when it has the common shape (`openai::chunk_scan`), and
    /// `choices` is the answer so far.
    pub(crate) fn on_event(
        &mut self,
        data: &[u8],
        plain: Option<&PlainChunk<'_>>,
        choices: &[ChoiceText],
    ) -> EventAction {
        if data == b"[DONE]" {
            return self.at_done(choices);
        }
        if !self.rewrites() {
            return EventAction::Keep;
        }
        let Some(rules) = self.checks.output.clone() else {
            return EventAction::Keep;
        };
        if let Some(chunk) = plain
            && let Some(action) = self.on_plain_event(&rules.output, data, chunk)
        {
            return action;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return EventAction::Keep;
        };
        let mut changed = false;
        for choice in v["choices"].as_array_mut().into_iter().flatten() {
            match self.redact_choice(&rules.output, choice) {
                Ok(redacted) => changed |= redacted,
                Err(end) => return end,
            }
        }
        if changed {
            EventAction::Replace(format!("data: {v}\n\n").into_bytes())
        } else {
            EventAction::Keep
        }
    }

    /// The common chunk, its text read in one pass: the event goes out as it came with
    /// only the text's string replaced, so nothing is parsed or serialized again. `None`
    /// when the event needs the general path: a choice finishing with no text, whose held
    /// text needs a `content` key to go out in. The same answers as that path otherwise,
    /// which sees the same index, text and finish (the one-pass reading equals serde's).
    fn on_plain_event(
        &mut self,
        rules: &StageRules,
        data: &[u8],
        chunk: &PlainChunk<'_>,
    ) -> Option<EventAction> {
        let Some(c) = &chunk.choice else {
            return Some(EventAction::Keep);
        };
        let (Some(piece), Some(span)) = (&c.content, &c.content_span) else {
            return c.finish_reason.is_none().then_some(EventAction::Keep);
        };
        let i = match self.redactor_index(c.index as u64) {
            Ok(i) => i,
            Err(end) => return Some(end),
        };
        let released = self.release(rules, i, piece, c.finish_reason.is_some());
        if let Some(rule) = released.blocked_by {
            return Some(self.block(rule));
        }
        if released.text == **piece {
            return Some(EventAction::Keep);
        }
        let text = serde_json::to_string(&released.text).expect("a string serializes");
        let mut out = Vec::with_capacity(data.len() + text.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&data[..span.start]);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&data[span.end..]);
        out.extend_from_slice(b"\n\n");
        Some(EventAction::Replace(out))
    }

    /// The end of the stream: a fatal schema failure of the whole answer ends it with an
    /// error event instead of `[DONE]`.
    fn at_done(&self, choices: &[ChoiceText]) -> EventAction {
        let verdict = self.checks.schema_verdict(choices);
        if let (true, SchemaVerdict::Fail { path, reason }) =
            (self.checks.schema_is_fatal(&verdict), &verdict)
        {
            let error = ApiError::SchemaInvalid {
                version: self.checks.version.to_string(),
                path: path.clone(),
                reason: reason.clone(),
            };
            return EventAction::End {
                bytes: error.as_event().to_vec(),
                blocked: false,
            };
        }
        EventAction::Keep
    }

    /// Passes one chunk choice's text through its redactor (releasing what it holds at the
    /// choice's finish); whether the choice changed. `Err` ends the stream: a block, or an
    /// index beyond [`MAX_STREAM_INDEX`].
    fn redact_choice(
        &mut self,
        rules: &StageRules,
        choice: &mut Value,
    ) -> Result<bool, EventAction> {
        let i = self.redactor_index(choice["index"].as_u64().unwrap_or(0))?;
        let Some(piece) = choice["delta"]["content"].as_str().map(str::to_owned) else {
            if choice["finish_reason"].is_null() {
                return Ok(false);
            }
            let rest = self.redactors[i].finish(rules);
            if let Some(rule) = rest.blocked_by {
                return Err(self.block(rule));
            }
            if rest.text.is_empty() {
                return Ok(false);
            }
            // A `delta` of another shape (a string, a number) carries nothing sluice reads;
            // the held text needs an object to go out in.
            if !choice["delta"].is_object() {
                choice["delta"] = json!({});
            }
            choice["delta"]["content"] = Value::String(rest.text);
            return Ok(true);
        };
        let released = self.release(rules, i, &piece, !choice["finish_reason"].is_null());
        if let Some(rule) = released.blocked_by {
            return Err(self.block(rule));
        }
        if released.text == piece {
            return Ok(false);
        }
        choice["delta"]["content"] = Value::String(released.text);
        Ok(true)
    }

    /// The redactor of the choice at `index`; `Err` ends the stream for an index beyond
    /// [`MAX_STREAM_INDEX`].
    fn redactor_index(&mut self, index: u64) -> Result<usize, EventAction> {
        let Some(i) = usize::try_from(index)
            .ok()
            .filter(|&i| i < MAX_STREAM_INDEX)
        else {
            // The observer does not read such a choice, so its text cannot be checked:
            // it is not sent.
            let error = ApiError::UpstreamInvalid {
                version: self.checks.version.to_string(),
                reason: format!("a choice index of {index} (at most {MAX_STREAM_INDEX} choices)"),
            };
            return Err(EventAction::End {
                bytes: error.as_event().to_vec(),
                blocked: false,
            });
        };
        if self.redactors.len() <= i {
            self.redactors.resize_with(i + 1, StreamRedactor::default);
        }
        Ok(i)
    }

    /// Passes `piece` of choice `i` through its redactor, and at the choice's finish
    /// everything it still holds.
    fn release(&mut self, rules: &StageRules, i: usize, piece: &str, finished: bool) -> Released {
        let mut released = self.redactors[i].push(rules, piece);
        if finished && released.blocked_by.is_none() {
            let rest = self.redactors[i].finish(rules);
            released.text.push_str(&rest.text);
            released.blocked_by = rest.blocked_by;
        }
        released
    }

    fn block(&mut self, rule: String) -> EventAction {
        let error = ApiError::GuardrailBlocked {
            stage: "answer",
            rule: rule.clone(),
        };
        self.blocked_by = Some(rule);
        EventAction::End {
            bytes: error.as_event().to_vec(),
            blocked: true,
        }
    }

    /// Text still held back when the upstream ended without finishing its choices.
    pub(crate) fn flush(&mut self) -> Option<Vec<u8>> {
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
    pub(crate) fn conclude(&self, choices: &[ChoiceText]) -> SchemaVerdict {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails::CountRow;

    const ORDER: &str = r#"{"type":"json_schema","json_schema":{"name":"order","schema":{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}}}"#;

    /// The shipped default policy: output rules mask-emails (redact), no-codenames
    /// (block), long-answers (flag).
    fn default_set() -> Arc<GuardrailSet> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            include_str!("../../policies/guardrails/default.toml"),
        )
        .unwrap();
        crate::guardrails::load_dir(dir.path()).unwrap()["default"].clone()
    }

    fn checks(format: Option<&str>, output: bool, on_failure: OnSchemaFailure) -> AnswerChecks {
        AnswerChecks {
            expect: Expectation::from_request(format, None),
            schemas: Arc::default(),
            output: output.then(default_set),
            on_schema_failure: on_failure,
            counters: Arc::default(),
            version: "v1".into(),
            arm: Arm::Canary,
        }
    }

    fn choice(text: &str) -> ChoiceText {
        ChoiceText {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }

    fn counted(c: &AnswerChecks) -> Vec<(String, Action, u64)> {
        c.counters
            .rows()
            .into_iter()
            .map(|r: CountRow| {
                assert_eq!(
                    (r.version.as_str(), r.arm.as_str(), r.stage),
                    ("v1", "canary", Stage::Output)
                );
                (r.rule, r.action, r.count)
            })
            .collect()
    }

    /// The `data:` payloads of a stream's bytes.
    fn payloads(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(bytes)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn delta(i: usize, content: &str, finish: Option<&str>) -> Vec<u8> {
        json!({"choices": [{"index": i, "delta": {"content": content}, "finish_reason": finish}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn nothing_asked_and_no_rules_means_nothing_to_check() {
        let c = checks(None, false, OnSchemaFailure::Pass);
        assert!(!c.active());
        assert_eq!(
            c.schema_verdict(&[choice("anything")]),
            SchemaVerdict::NotAsked
        );
        assert!(checks(Some(ORDER), false, OnSchemaFailure::Pass).active());
        assert!(checks(None, true, OnSchemaFailure::Pass).active());
    }

    #[test]
    fn the_first_choice_that_does_not_fit_the_schema_decides() {
        let c = checks(Some(ORDER), false, OnSchemaFailure::Pass);
        assert_eq!(
            c.schema_verdict(&[choice(r#"{"id": 1}"#), choice(r#"{"id": 2}"#)]),
            SchemaVerdict::Pass
        );
        match c.schema_verdict(&[choice(r#"{"id": 1}"#), choice(r#"{"id": "x"}"#)]) {
            SchemaVerdict::Fail { path, .. } => assert_eq!(path, "/id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_schema_failure_is_fatal_only_when_the_route_says_error() {
        let fail = SchemaVerdict::Fail {
            path: "/id".into(),
            reason: "not an integer".into(),
        };
        let pass_route = checks(Some(ORDER), false, OnSchemaFailure::Pass);
        let error_route = checks(Some(ORDER), false, OnSchemaFailure::Error);
        assert!(!pass_route.schema_is_fatal(&fail));
        assert!(error_route.schema_is_fatal(&fail));
        assert!(!error_route.schema_is_fatal(&SchemaVerdict::Pass));
        assert!(!error_route.schema_is_fatal(&SchemaVerdict::NotAsked));
    }

    #[test]
    fn a_whole_answer_is_redacted_per_choice_blocked_and_counted() {
        let c = checks(None, true, OnSchemaFailure::Pass);
        let v = c.check_whole(&[
            choice("mail jane@example.com"),
            choice("plain"),
            choice("about Project Nightingale"),
        ]);
        assert_eq!(v.schema, Some(SchemaVerdict::NotAsked));
        assert_eq!(v.blocked_by.as_deref(), Some("no-codenames"));
        assert_eq!(
            v.redacted,
            [Some("mail [redacted:email]".to_owned()), None, None]
        );
        assert_eq!(
            counted(&c),
            [
                ("mask-emails".to_owned(), Action::Redact, 1),
                ("no-codenames".to_owned(), Action::Block, 1)
            ]
        );
        // The redacted texts replace the answer's contents, choice by choice.
        let body = json!({"choices": [
            {"index": 0, "message": {"content": "mail jane@example.com"}},
            {"index": 1, "message": {"content": "plain"}}]});
        let out = apply_redactions(body.to_string().as_bytes(), &v.redacted[..2]).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "mail [redacted:email]"
        );
        assert_eq!(out["choices"][1]["message"]["content"], "plain");
        assert_eq!(apply_redactions(b"not json", &v.redacted), None);
    }

    // Found by the `completion` fuzz target: a choice of another shape was skipped when the
    // answer was read, so the redactions after it were written one place too early (into
    // that element: a panic, or the wrong choice masked and the right one sent as it
    // was); and an answer serde_json's `Value` cannot hold (a number beyond f64) went out
    // unredacted.
    // Found by the `completion` fuzz target: the text checked is `content` and `refusal`
    // joined, but the redaction was written to `content` only, so a match in `refusal`
    // reached the client unmasked.
    #[test]
    fn a_redaction_covers_the_refusal_too() {
        let c = checks(None, true, OnSchemaFailure::Pass);
        let body = br#"{"choices":[{"message":{"refusal":"ask jane@example.com"}},{"message":{"content":"a ","refusal":"bob@example.com"}}]}"#;
        let summary = crate::openai::completion::summarize_completion(body).unwrap();
        let v = c.check_whole(&summary.choices);
        let out = apply_redactions(body, &v.redacted).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"choices":[{"message":{"refusal":"ask [redacted:email]"}},{"message":{"content":"a [redacted:email]","refusal":null}}]}"#
        );
    }

    #[test]
    fn redactions_land_on_the_choice_they_came_from_whatever_its_neighbours() {
        let c = checks(None, true, OnSchemaFailure::Pass);
        let body = br#"{"choices":[7,{"message":{"content":"mail jane@example.com"}}],"x":1e400,"model":"a","model":"b"}"#;
        let summary = crate::openai::completion::summarize_completion(body).unwrap();
        let v = c.check_whole(&summary.choices);
        assert_eq!(v.redacted, [None, Some("mail [redacted:email]".to_owned())]);
        let out = apply_redactions(body, &v.redacted).expect("redacted");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"choices":[7,{"message":{"content":"mail [redacted:email]"}}],"x":1e400,"model":"b"}"#
        );
    }

    #[test]
    fn a_clean_answer_fires_nothing() {
        let c = checks(None, true, OnSchemaFailure::Pass);
        let v = c.check_whole(&[choice("hello")]);
        assert_eq!((v.blocked_by, v.redacted), (None, vec![None]));
        assert!(counted(&c).is_empty());
    }

    /// An event through the checks as the relay passes it: read in one pass when it can be.
    fn on(s: &mut StreamChecks, data: &[u8], choices: &[ChoiceText]) -> EventAction {
        let plain = (data != b"[DONE]")
            .then(|| crate::openai::chunk_scan::scan(data))
            .flatten();
        s.on_event(data, plain.as_ref(), choices)
    }

    /// What an action sends, as the JSON of each event (`None` for an unchanged event).
    fn sent(action: &EventAction) -> (&'static str, Option<Vec<Value>>) {
        match action {
            EventAction::Keep => ("keep", None),
            EventAction::Replace(b) => ("replace", Some(payloads(b))),
            EventAction::End { bytes, blocked } => (
                if *blocked { "block" } else { "end" },
                Some(payloads(bytes)),
            ),
        }
    }

    // The one-pass path splices the redacted text into the event's bytes; the general
    // path parses and re-serializes the event. For every event both can read, the client
    // must get the same JSON from both, and the same end.
    #[test]
    fn the_spliced_redaction_sends_what_the_general_path_sends() {
        let streams: [&[&[u8]]; 5] = [
            &[
                br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
                br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"write to jane.doe@exa"},"finish_reason":null}]}"#,
                br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"mple.com t\u00f6day \"quoted\"\n"},"finish_reason":null}]}"#,
                br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":" and more text after it, long enough to pass the holdback of every rule here"},"finish_reason":null}]}"#,
                br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"."},"finish_reason":"stop"}]}"#,
            ],
            &[
                br#" { "choices" : [ { "index" : 1 , "delta" : { "content" : "mail a@example.com" } , "finish_reason" : "length" } ] } "#,
            ],
            &[
                br#"{"choices":[{"index":0,"delta":{"content":"It is Project "}}]}"#,
                br#"{"choices":[{"index":0,"delta":{"content":"Nightingale."}}]}"#,
                br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            ],
            &[
                br#"{"choices":[]}"#,
                br#"{"choices":[{"index":0,"delta":{"content":null},"finish_reason":null}]}"#,
                br#"{"choices":[{"index":0,"delta":{"content":"x@example.org"},"finish_reason":null}]}"#,
                br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            ],
            &[br#"{"choices":[{"index":4096,"delta":{"content":"x"}}]}"#],
        ];
        let mut spliced = 0;
        for events in streams {
            let mut fast = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
            let mut general = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
            for data in events {
                let a = on(&mut fast, data, &[]);
                let b = general.on_event(data, None, &[]);
                spliced += usize::from(matches!(a, EventAction::Replace(_)));
                assert_eq!(sent(&a), sent(&b), "{}", String::from_utf8_lossy(data));
            }
            assert_eq!(fast.flush(), general.flush());
            assert_eq!(fast.blocked_by, general.blocked_by);
        }
        assert!(
            spliced >= 4,
            "the one-pass path rewrote only {spliced} events"
        );
    }

    #[test]
    fn an_email_split_across_events_is_redacted_in_the_stream() {
        let mut s = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
        let mut relayed = String::new();
        let mut text = String::new();
        for (piece, finish) in [
            ("write to jane.doe@exa", None),
            ("mple.com today", Some("stop")),
        ] {
            text.push_str(piece);
            let data = delta(0, piece, finish);
            let bytes = match on(&mut s, &data, &[choice(&text)]) {
                EventAction::Keep => {
                    format!("data: {}\n\n", String::from_utf8(data).unwrap()).into_bytes()
                }
                EventAction::Replace(b) => b,
                EventAction::End { .. } => panic!("nothing blocks here"),
            };
            for p in payloads(&bytes) {
                relayed.push_str(p["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(relayed, "write to [redacted:email] today");
        assert!(matches!(
            on(&mut s, b"[DONE]", &[choice(&text)]),
            EventAction::Keep
        ));
        assert_eq!(s.conclude(&[choice(&text)]), SchemaVerdict::NotAsked);
        assert_eq!(s.blocked_by, None);
    }

    // Found while writing the `stream_relay` fuzz target: a finishing chunk whose `delta` is not an
    // object panicked when the redactor still held text; a huge index allocated without
    // bound.
    #[test]
    fn odd_chunks_from_the_upstream_end_the_stream_or_pass_never_panic() {
        let mut s = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
        let held = delta(0, "write to jane.doe@example.com", None);
        assert!(matches!(
            on(&mut s, &held, &[]),
            EventAction::Keep | EventAction::Replace(_)
        ));
        let odd = br#"{"choices":[{"index":0,"delta":"odd","finish_reason":"stop"}]}"#;
        match on(&mut s, odd, &[]) {
            EventAction::Replace(bytes) => {
                let content = &payloads(&bytes)[0]["choices"][0]["delta"]["content"];
                assert!(content.as_str().unwrap().ends_with("[redacted:email]"));
            }
            _ => panic!("the held text goes out in that chunk"),
        }
        let huge = br#"{"choices":[{"index":1000000000,"delta":{"content":"x"}}]}"#;
        match on(&mut s, huge, &[]) {
            EventAction::End { bytes, blocked } => {
                assert!(!blocked);
                assert!(
                    String::from_utf8(bytes)
                        .unwrap()
                        .contains("upstream_invalid_response")
                );
            }
            _ => panic!("a choice the checks cannot read ends the stream"),
        }
    }

    #[test]
    fn a_codename_in_a_stream_ends_it_with_an_error_event() {
        let mut s = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
        let data = delta(0, "It is Project Nightingale.", Some("stop"));
        match on(&mut s, &data, &[choice("It is Project Nightingale.")]) {
            EventAction::End { bytes, blocked } => {
                assert!(blocked);
                assert_eq!(payloads(&bytes)[0]["error"]["code"], "guardrail_blocked");
            }
            _ => panic!("the stream goes on"),
        }
        assert_eq!(s.blocked_by.as_deref(), Some("no-codenames"));
    }

    #[test]
    fn a_stream_whose_answer_misses_the_schema_ends_with_an_error_only_on_error_routes() {
        let answer = [choice(r#"{"id": "seven"}"#)];
        let mut lenient = StreamChecks::new(checks(Some(ORDER), false, OnSchemaFailure::Pass));
        assert!(matches!(
            on(&mut lenient, b"[DONE]", &answer),
            EventAction::Keep
        ));
        assert!(matches!(
            lenient.conclude(&answer),
            SchemaVerdict::Fail { .. }
        ));
        let mut strict = StreamChecks::new(checks(Some(ORDER), false, OnSchemaFailure::Error));
        match on(&mut strict, b"[DONE]", &answer) {
            EventAction::End { bytes, blocked } => {
                assert!(!blocked, "a schema failure is not a guardrail block");
                let e = &payloads(&bytes)[0]["error"];
                assert_eq!(e["code"], "schema_validation_failed");
                assert!(e["message"].as_str().unwrap().contains("/id"), "{e}");
            }
            _ => panic!("the stream ends normally"),
        }
        let fits = [choice(r#"{"id": 7}"#)];
        assert!(matches!(
            on(&mut strict, b"[DONE]", &fits),
            EventAction::Keep
        ));
    }

    #[test]
    fn text_held_back_at_an_unfinished_end_is_flushed() {
        let mut s = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
        // No finish_reason: the redactor may hold the tail back, waiting for more.
        let mut relayed = String::new();
        let data = delta(0, "reach me at jane@example.com", None);
        if let EventAction::Replace(b) =
            on(&mut s, &data, &[choice("reach me at jane@example.com")])
        {
            for p in payloads(&b) {
                relayed.push_str(p["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            }
        } else {
            relayed.push_str("reach me at jane@example.com");
        }
        if let Some(rest) = s.flush() {
            for p in payloads(&rest) {
                relayed.push_str(p["choices"][0]["delta"]["content"].as_str().unwrap());
            }
        }
        assert_eq!(relayed, "reach me at [redacted:email]");
        assert_eq!(s.flush(), None, "flushed once");
    }

    #[test]
    fn a_stream_counts_each_rule_once_at_its_end() {
        let s = StreamChecks::new(checks(None, true, OnSchemaFailure::Pass));
        let text = "a@example.com and b@example.com";
        s.conclude(&[choice(text), choice(text)]);
        assert_eq!(
            counted(&s.checks),
            [("mask-emails".to_owned(), Action::Redact, 1)]
        );
    }
}
