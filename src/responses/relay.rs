//! The Responses stream relay: passes typed events (`event: response.output_text.delta`
//! + `data: {…}`) to the client as they arrive, measures them, and applies the checks.
//!
//! Measured on the way: the TTFT at the first output delta (text, refusal or function
//! arguments), the answer's characters, the Response id (noted in the book at
//! `response.created`), and from the terminal event (`response.completed`, `.incomplete`,
//! `.failed`) the usage with its reasoning tokens, the status and `incomplete_details`.
//! Output guardrails hold text back per (output, content) part across delta events, as
//! for chat; the `done` events and the terminal Response then carry exactly the text the
//! client was sent. A block or a fatal schema failure ends the stream with an `error` event.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::time::Sleep;

use super::book::ResponseBook;
use crate::guardrails::stream::StreamRedactor;
use crate::guardrails::{Action, Stage, StageRules};
use crate::measure::Meter;
use crate::measure::checks::{AnswerChecks, EventAction};
use crate::measure::schema::SchemaVerdict;
use crate::openai::responses::{
    EventView, ResponseSummary, is_output_delta, is_terminal, summarize_response,
};
use crate::openai::sse::{event_end_streaming, parse_event};
use crate::pipeline::finish::{self, AnswerEnd};
use crate::pipeline::relay::MAX_PENDING_EVENT_BYTES;
use crate::store::ResponsePlacement;
use crate::types::Outcome;
use crate::types::now_ms;
use crate::upstream::{ByteStream, UpstreamError};

/// One output text part: (output index, content index).
type PartKey = (usize, usize);

/// Where to note the Response id once the stream names it.
pub(crate) struct BookNote {
    pub(crate) book: Arc<ResponseBook>,
    pub(crate) workspace: String,
    pub(crate) route: String,
    pub(crate) version: String,
    pub(crate) arm: crate::types::Arm,
}

impl BookNote {
    /// Notes that `response_id` was produced by this request's version.
    pub(crate) fn note(&self, response_id: &str) {
        self.book.note(ResponsePlacement {
            response_id: response_id.to_owned(),
            workspace: self.workspace.clone(),
            route: self.route.clone(),
            version: self.version.clone(),
            arm: self.arm,
            at_ms: now_ms(),
        });
    }
}

#[derive(Default)]
struct Observer {
    first_token: Option<Instant>,
    chars: u64,
    /// The text of each part as the upstream sent it.
    texts: BTreeMap<PartKey, String>,
    summary: Option<ResponseSummary>,
    terminal: Option<String>,
    model: Option<String>,
    saw_error: bool,
    last_sequence: u64,
}

impl Observer {
    /// Reads one event; returns its type.
    fn observe(&mut self, data: &[u8], note: Option<&BookNote>) -> Option<String> {
        let view: EventView = serde_json::from_slice(data).ok()?;
        let kind = view.kind.to_string();
        self.last_sequence += 1;
        if is_output_delta(&kind) {
            let piece = view.delta.as_deref().unwrap_or_default();
            if !piece.is_empty() && self.first_token.is_none() {
                self.first_token = Some(Instant::now());
            }
            if kind != "response.function_call_arguments.delta" {
                self.chars += piece.chars().count() as u64;
                let key = (
                    view.output_index.unwrap_or(0),
                    view.content_index.unwrap_or(0),
                );
                self.texts.entry(key).or_default().push_str(piece);
            }
        } else if kind == "response.created" {
            let v: Value = serde_json::from_slice(data).ok()?;
            self.model = v["response"]["model"].as_str().map(str::to_owned);
            if let (Some(id), Some(note)) = (v["response"]["id"].as_str(), note) {
                note.note(id);
            }
        } else if is_terminal(&kind) {
            let v: Value = serde_json::from_slice(data).ok()?;
            self.summary = summarize_response(&v["response"]).ok();
            self.terminal = Some(kind.clone());
        } else if kind == "error" {
            self.saw_error = true;
        }
        Some(kind)
    }

    fn all_text(&self) -> String {
        match &self.summary {
            Some(s) => s.output.text.clone(),
            None => self.texts.values().map(String::as_str).collect(),
        }
    }
}

/// The checks of one Responses stream.
pub(crate) struct ResponseChecks {
    checks: AnswerChecks,
    redactors: BTreeMap<PartKey, StreamRedactor>,
    /// What the client was sent of each part.
    sent: BTreeMap<PartKey, String>,
    pub(crate) blocked_by: Option<String>,
}

/// The (output, content) part an event is about.
fn part_key(v: &Value) -> PartKey {
    (
        v["output_index"].as_u64().unwrap_or(0) as usize,
        v["content_index"].as_u64().unwrap_or(0) as usize,
    )
}

fn frame(kind: &str, data: &Value) -> Vec<u8> {
    format!("event: {kind}\ndata: {data}\n\n").into_bytes()
}

/// An `error` event for a stream that must end here.
pub(crate) fn error_event(sequence: u64, message: &str, code: &str) -> Vec<u8> {
    frame(
        "error",
        &json!({"type": "error", "sequence_number": sequence, "code": code, "message": message, "param": null}),
    )
}

impl ResponseChecks {
    /// Checks with nothing held back or sent yet.
    pub(crate) fn new(checks: AnswerChecks) -> Self {
        Self {
            checks,
            redactors: BTreeMap::new(),
            sent: BTreeMap::new(),
            blocked_by: None,
        }
    }

    fn output_rules(&self) -> Option<&StageRules> {
        self.checks
            .output
            .as_deref()
            .map(|g| &g.output)
            .filter(|r| !r.is_empty())
    }

    fn rewrites(&self) -> bool {
        self.output_rules()
            .is_some_and(|r| r.rules.iter().any(|rule| rule.action != Action::Flag))
    }

    fn on_event(&mut self, kind: &str, data: &[u8], observer: &Observer) -> EventAction {
        if self.rewrites() {
            match self.rewrite(kind, data, observer.last_sequence) {
                Ok(Some(bytes)) if is_terminal(kind) => {
                    return self.at_end(observer).unwrap_or(EventAction::Replace(bytes));
                }
                Ok(Some(bytes)) => return EventAction::Replace(bytes),
                Ok(None) => {}
                Err(action) => return action,
            }
        }
        if is_terminal(kind)
            && let Some(end) = self.at_end(observer)
        {
            return end;
        }
        EventAction::Keep
    }

    /// A fatal schema failure at the terminal event.
    fn at_end(&self, observer: &Observer) -> Option<EventAction> {
        let output = observer.summary.as_ref().map(|s| s.output.clone())?;
        let verdict = self.checks.schema_verdict(std::slice::from_ref(&output));
        if let (true, SchemaVerdict::Fail { path, reason }) =
            (self.checks.schema_is_fatal(&verdict), &verdict)
        {
            let message =
                format!("the answer does not fit the requested schema at {path}: {reason}");
            return Some(EventAction::End {
                bytes: error_event(observer.last_sequence, &message, "schema_validation_failed"),
                blocked: false,
            });
        }
        None
    }

    /// The event as the client gets it when redaction rewrites it; `Err` ends the stream.
    fn rewrite(
        &mut self,
        kind: &str,
        data: &[u8],
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, EventAction> {
        let rules = match self.checks.output.clone() {
            Some(g) => g,
            None => return Ok(None),
        };
        // Only these kinds carry text; the rest go out untouched, unparsed.
        let rewritten = matches!(
            kind,
            "response.output_text.delta"
                | "response.output_text.done"
                | "response.content_part.done"
                | "response.output_item.done"
        ) || is_terminal(kind);
        if !rewritten {
            return Ok(None);
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return Ok(None);
        };
        match kind {
            "response.output_text.delta" => self.delta(&rules.output, &mut v, sequence),
            "response.output_text.done" => self.text_done(&rules.output, &mut v, sequence),
            "response.content_part.done" => {
                let Some(text) = self.sent.get(&part_key(&v)) else {
                    return Ok(None);
                };
                v["part"]["text"] = Value::String(text.clone());
                Ok(Some(frame(kind, &v)))
            }
            "response.output_item.done" => {
                let oi = v["output_index"].as_u64().unwrap_or(0) as usize;
                let changed = self.restore_parts(oi, &mut v["item"]);
                Ok(changed.then(|| frame(kind, &v)))
            }
            k if is_terminal(k) => {
                let mut changed = false;
                for (oi, item) in v["response"]["output"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    changed |= self.restore_parts(oi, item);
                }
                Ok(changed.then(|| frame(kind, &v)))
            }
            _ => Ok(None),
        }
    }

    /// A text delta through its part's redactor: what it releases goes out.
    fn delta(
        &mut self,
        rules: &StageRules,
        v: &mut Value,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, EventAction> {
        let k = part_key(v);
        let piece = v["delta"].as_str().unwrap_or_default().to_owned();
        let released = self.redactors.entry(k).or_default().push(rules, &piece);
        if let Some(rule) = released.blocked_by {
            return Err(self.block(rule, sequence));
        }
        self.sent.entry(k).or_default().push_str(&released.text);
        if released.text == piece {
            return Ok(None);
        }
        v["delta"] = Value::String(released.text);
        Ok(Some(frame("response.output_text.delta", v)))
    }

    /// A part's text is done: what its redactor still holds goes out as one more delta, and
    /// the `done` event carries exactly the text the client was sent.
    fn text_done(
        &mut self,
        rules: &StageRules,
        v: &mut Value,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, EventAction> {
        let k = part_key(v);
        let rest = self.redactors.entry(k).or_default().finish(rules);
        if let Some(rule) = rest.blocked_by {
            return Err(self.block(rule, sequence));
        }
        let mut out = Vec::new();
        if !rest.text.is_empty() {
            let delta = json!({"type": "response.output_text.delta",
                "sequence_number": v["sequence_number"], "item_id": v["item_id"],
                "output_index": k.0, "content_index": k.1, "delta": rest.text, "logprobs": []});
            out.extend(frame("response.output_text.delta", &delta));
            self.sent.entry(k).or_default().push_str(&rest.text);
        }
        v["text"] = Value::String(self.sent.get(&k).cloned().unwrap_or_default());
        out.extend(frame("response.output_text.done", v));
        Ok(Some(out))
    }

    /// Puts the text the client was sent into output item `oi`'s content parts; whether
    /// any changed.
    fn restore_parts(&self, oi: usize, item: &mut Value) -> bool {
        let mut changed = false;
        for (ci, part) in item["content"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(text) = self.sent.get(&(oi, ci)) {
                part["text"] = Value::String(text.clone());
                changed = true;
            }
        }
        changed
    }

    fn block(&mut self, rule: String, sequence: u64) -> EventAction {
        let message = format!("the answer was blocked by guardrail `{rule}`");
        self.blocked_by = Some(rule);
        EventAction::End {
            bytes: error_event(sequence, &message, "guardrail_blocked"),
            blocked: true,
        }
    }

    /// Text still held back when the upstream ended without its `done` events.
    fn flush(&mut self) -> Option<Vec<u8>> {
        let rules = self.checks.output.clone()?;
        let mut out = Vec::new();
        for ((oi, ci), r) in &mut self.redactors {
            let rest = r.finish(&rules.output);
            if !rest.text.is_empty() {
                let delta = json!({"type": "response.output_text.delta", "sequence_number": 0,
                    "item_id": "", "output_index": oi, "content_index": ci, "delta": rest.text});
                out.extend(frame("response.output_text.delta", &delta));
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Counts every output rule that fired once, and gives the schema verdict.
    fn conclude(&self, text: &crate::openai::completion::ChoiceText) -> SchemaVerdict {
        if let Some(rules) = self.output_rules() {
            let fired = rules.apply(&text.text).fired;
            let mut once: Vec<(String, Action)> = Vec::new();
            for f in fired {
                if !once.contains(&f) {
                    once.push(f);
                }
            }
            self.checks.count(Stage::Output, &once);
        }
        self.checks.schema_verdict(std::slice::from_ref(text))
    }
}

/// The client's body of a streamed Response: the upstream's typed events passed on one by
/// one, measured into the meter, checked (schema, output guardrails holding text back across
/// deltas) and the Response id noted in the book.
pub(crate) struct ResponsesRelay {
    upstream: ByteStream,
    buf: BytesMut,
    observer: Observer,
    meter: Meter,
    idle_limit: Duration,
    idle: Pin<Box<Sleep>>,
    /// The relay is waiting on the upstream for its next whole event: `idle` runs. It does
    /// not while the client has not asked for more (a slow reader is not a slow upstream).
    waiting: bool,
    /// How much of `buf` is known to hold no event end, so a long event is scanned once.
    searched: usize,
    trailer: Option<Bytes>,
    done: bool,
    checks: Option<ResponseChecks>,
    cut: Option<Outcome>,
    note: Option<BookNote>,
}

impl ResponsesRelay {
    /// A relay of `upstream` that ends the measurement when the stream ends (or after
    /// `idle_limit` of silence, or when dropped).
    pub(crate) fn new(
        upstream: ByteStream,
        meter: Meter,
        idle_limit: Duration,
        checks: Option<ResponseChecks>,
        note: Option<BookNote>,
    ) -> Self {
        Self {
            upstream,
            buf: BytesMut::new(),
            observer: Observer::default(),
            meter,
            idle_limit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            waiting: false,
            searched: 0,
            trailer: None,
            done: false,
            checks,
            cut: None,
            note,
        }
    }

    /// Cuts every complete event out of the buffer, observes and checks it, and returns
    /// what the client gets. Unchanged events go out as the very bytes that came in.
    /// `more`: the upstream may still send bytes (see [`event_end_streaming`]).
    fn take_events(&mut self, more: bool) -> Option<Bytes> {
        let mut end = 0;
        let mut changed = false;
        let mut out = BytesMut::new();
        while let Some(len) = event_end_streaming(
            &self.buf[end..],
            if end == 0 { self.searched } else { 0 },
            more,
        ) {
            let raw = &self.buf[end..end + len];
            // The standard decodes a stream as UTF-8 with U+FFFD for each byte that is not;
            // so does the relay, for measurement and for what the client gets (as for chat).
            let decoded = std::str::from_utf8(raw)
                .is_err()
                .then(|| String::from_utf8_lossy(raw).into_owned().into_bytes());
            let event = decoded.as_deref().unwrap_or(raw);
            let data = parse_event(event).data;
            let kind = data
                .as_deref()
                .and_then(|d| self.observer.observe(d, self.note.as_ref()));
            let action = match (&mut self.checks, &data, &kind) {
                (Some(checks), Some(d), Some(kind)) => checks.on_event(kind, d, &self.observer),
                _ => EventAction::Keep,
            };
            let action = match (action, &decoded) {
                (EventAction::Keep, Some(bytes)) => EventAction::Replace(bytes.clone()),
                (action, _) => action,
            };
            match action {
                EventAction::Keep if changed => out.extend_from_slice(event),
                EventAction::Keep => {}
                EventAction::Replace(bytes) => {
                    if !changed {
                        out.extend_from_slice(&self.buf[..end]);
                        changed = true;
                    }
                    out.extend_from_slice(&bytes);
                }
                EventAction::End { bytes, blocked } => {
                    if !changed {
                        out.extend_from_slice(&self.buf[..end]);
                    }
                    out.extend_from_slice(&bytes);
                    self.buf.clear();
                    self.searched = 0;
                    self.cut = Some(if blocked {
                        Outcome::GuardrailBlocked
                    } else {
                        Outcome::UpstreamInvalid
                    });
                    return Some(out.freeze());
                }
            }
            end += len;
        }
        // What is left holds no event end: the next read resumes the search at its last
        // byte (a closing CR waits there for a possible LF).
        self.searched = (self.buf.len() - end).saturating_sub(1);
        if end == 0 {
            return None;
        }
        // A whole event came (even one the client does not get): the upstream is alive.
        self.restart_idle();
        let consumed = self.buf.split_to(end);
        let out = if changed { out } else { consumed };
        (!out.is_empty()).then(|| out.freeze())
    }

    fn restart_idle(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle_limit;
        self.idle.as_mut().reset(deadline);
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        // An event the stream cut off (no blank line after it) is discarded, as standard
        // clients discard it (see `openai::sse`).
        self.buf.clear();
        let failed =
            self.observer.saw_error || self.observer.terminal.as_deref() == Some("response.failed");
        let outcome = match self.cut {
            Some(cut) => cut,
            None if outcome == Outcome::Ok && failed => Outcome::Upstream5xx,
            None => outcome,
        };
        let observer = std::mem::take(&mut self.observer);
        let text = observer.all_text();
        if let Some(checks) = &self.checks {
            let output = observer
                .summary
                .as_ref()
                .map(|s| s.output.clone())
                .unwrap_or_else(|| crate::openai::completion::ChoiceText {
                    text: text.clone(),
                    tool_calls: Vec::new(),
                });
            let verdict = checks.conclude(&output);
            self.meter.observed.schema_failed = verdict.failed();
            self.meter.observed.guardrail_blocked = checks.blocked_by.is_some();
        }
        let summary = observer.summary.unwrap_or_default();
        let end = AnswerEnd {
            usage: summary.usage,
            chars: observer.chars,
            finish_reason: summary.finish_reason(),
            model: summary.model.clone().or(observer.model),
        };
        finish::end_of_answer(&mut self.meter, end, || text);
        self.meter.observed.reasoning_tokens = summary.reasoning_tokens;
        self.meter.observed.first_token = observer.first_token;
        self.meter.finish(outcome);
    }

    fn fail(&mut self, error: UpstreamError) -> Option<Bytes> {
        let pending = self.take_events(false);
        self.fail_after(error, pending)
    }

    /// Finishes with `error`'s outcome and sends `pending` (complete events still held),
    /// then the error event, the last thing the client gets.
    fn fail_after(&mut self, error: UpstreamError, pending: Option<Bytes>) -> Option<Bytes> {
        let outcome = error.outcome();
        tracing::warn!(request_id = self.meter.request_id(), error = %error, "upstream stream broke off");
        let event = error_event(
            self.observer.last_sequence,
            &format!("the upstream stream broke off: {error}"),
            outcome.as_str(),
        );
        self.finish(outcome);
        match pending {
            Some(p) => {
                self.trailer = Some(Bytes::from(event));
                Some(p)
            }
            None => Some(Bytes::from(event)),
        }
    }
}

impl Stream for ResponsesRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(this.trailer.take().map(Ok));
        }
        // `idle_limit` bounds the wait for the next whole event, counted from when the
        // client asks for more: bytes that never finish an event (an upstream dripping a
        // byte a second) do not keep the stream alive.
        if !this.waiting {
            this.waiting = true;
            this.restart_idle();
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.buf.extend_from_slice(&chunk);
                    if this.buf.len() > MAX_PENDING_EVENT_BYTES + chunk.len() {
                        // Bytes that never close an event would be held without bound.
                        let error = UpstreamError::Interrupted(format!(
                            "an event grew past {MAX_PENDING_EVENT_BYTES} bytes without ending"
                        ));
                        return Poll::Ready(this.fail(error).map(Ok));
                    }
                    if let Some(out) = this.take_events(true) {
                        if let Some(cut) = this.cut {
                            this.finish(cut);
                        }
                        this.waiting = false;
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(this.fail(e).map(Ok)),
                Poll::Ready(None) => {
                    let out = this.take_events(false);
                    // A body without length or chunks ends cleanly wherever the connection
                    // closes: without a terminal event (or an error) the answer was cut.
                    if this.cut.is_none()
                        && this.observer.terminal.is_none()
                        && !this.observer.saw_error
                    {
                        let error = UpstreamError::Interrupted(
                            "the connection closed before a terminal event".into(),
                        );
                        return Poll::Ready(this.fail_after(error, out).map(Ok));
                    }
                    let rest = (!this.buf.is_empty()).then(|| this.buf.clone().freeze());
                    let held = this
                        .checks
                        .as_mut()
                        .and_then(ResponseChecks::flush)
                        .map(Bytes::from);
                    this.finish(Outcome::Ok);
                    let parts: Vec<Bytes> = [out, held, rest].into_iter().flatten().collect();
                    let last = (!parts.is_empty()).then(|| Bytes::from(parts.concat()));
                    return Poll::Ready(last.map(Ok));
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let error = UpstreamError::Timeout {
                            after_ms: this.idle_limit.as_millis() as u64,
                        };
                        return Poll::Ready(this.fail(error).map(Ok));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for ResponsesRelay {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::ClientDisconnected);
        }
    }
}
