//! The stream relay: passes an upstream's server-sent events to the client as they arrive
//! and measures them on the way.
//!
//! Events are forwarded whole (a client never sees half an event), each as soon as its
//! closing blank line has arrived. On the way the relay stamps the first token, counts the
//! answer's characters, keeps the finish reason and the usage chunk, and drops that usage
//! chunk again when sluice asked for it on the client's behalf. The [`Meter`] lives inside
//! the relay, so a client that hangs up drops the relay, which ends the upstream call and
//! still yields a record.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use tokio::time::Sleep;

use super::Meter;
use super::checks::{EventAction, StreamChecks};
use super::schema::ToolCall;
use crate::openai::completion::{ChoiceText, UsageView};
use crate::types::{Outcome, Usage};
use crate::upstream::{ByteStream, UpstreamError};

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<UsageView>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: usize,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: usize,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// What an event told us.
enum EventKind {
    /// A chunk that carries only usage: the one `stream_options.include_usage` adds.
    UsageOnly,
    Other,
}

/// Accumulates what a stream said, event by event.
#[derive(Default)]
struct StreamObserver {
    /// Per choice index: its text and tool calls so far.
    choices: Vec<ChoiceText>,
    /// Characters of all choices' text so far.
    chars: u64,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    first_token: Option<Instant>,
    saw_error: bool,
    /// The `model` of the first chunk that named one.
    model: Option<String>,
}

impl StreamObserver {
    fn choice(&mut self, index: usize) -> &mut ChoiceText {
        if self.choices.len() <= index {
            self.choices.resize_with(index + 1, ChoiceText::default);
        }
        &mut self.choices[index]
    }

    fn observe(&mut self, data: &[u8]) -> EventKind {
        if data == b"[DONE]" {
            return EventKind::Other;
        }
        let Ok(chunk) = serde_json::from_slice::<ChunkView>(data) else {
            return EventKind::Other;
        };
        if chunk.error.is_some() {
            self.saw_error = true;
        }
        if self.model.is_none()
            && let Some(m) = &chunk.model
        {
            self.model = Some(m.to_string());
        }
        for c in &chunk.choices {
            if let Some(delta) = &c.delta {
                let mut carried_token = delta.tool_calls.is_some();
                for t in delta
                    .content
                    .as_deref()
                    .into_iter()
                    .chain(delta.refusal.as_deref())
                {
                    carried_token |= !t.is_empty();
                    self.chars += t.chars().count() as u64;
                    self.choice(c.index).text.push_str(t);
                }
                for call in delta.tool_calls.iter().flatten() {
                    let choice = self.choice(c.index);
                    if choice.tool_calls.len() <= call.index {
                        choice
                            .tool_calls
                            .resize_with(call.index + 1, ToolCall::default);
                    }
                    let slot = &mut choice.tool_calls[call.index];
                    if let Some(f) = &call.function {
                        slot.name.push_str(f.name.as_deref().unwrap_or_default());
                        slot.arguments
                            .push_str(f.arguments.as_deref().unwrap_or_default());
                    }
                }
                if carried_token && self.first_token.is_none() {
                    self.first_token = Some(Instant::now());
                }
            }
            if let Some(reason) = &c.finish_reason {
                self.finish_reason.get_or_insert_with(|| reason.to_string());
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
            if chunk.choices.is_empty() {
                return EventKind::UsageOnly;
            }
        }
        EventKind::Other
    }

    fn all_text(&self) -> String {
        self.choices.iter().map(|c| c.text.as_str()).collect()
    }
}

/// The payload of an event's `data:` lines (joined by newlines when there are several).
pub(crate) fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|l| l.strip_prefix(b" ").unwrap_or(l));
    let first = lines.next()?;
    match lines.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = first.to_vec();
            for line in std::iter::once(second).chain(lines) {
                joined.push(b'\n');
                joined.extend_from_slice(line);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// End (exclusive) of the first complete event in `buf`, i.e. just past its blank line.
pub(crate) fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + nl + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

pub struct StreamRelay {
    upstream: ByteStream,
    buf: BytesMut,
    observer: StreamObserver,
    meter: Meter,
    /// sluice added `include_usage`; the client did not ask for the usage chunk.
    strip_usage: bool,
    idle_limit: Duration,
    idle: Pin<Box<Sleep>>,
    /// A last event to send before ending (an error the client must see).
    trailer: Option<Bytes>,
    done: bool,
    /// Schema and output-guardrail checks, when the request or the route asks for any.
    checks: Option<StreamChecks>,
    /// The checks ended the stream early: with this outcome.
    cut: Option<Outcome>,
}

impl StreamRelay {
    pub fn new(
        upstream: ByteStream,
        meter: Meter,
        strip_usage: bool,
        idle_limit: Duration,
        checks: Option<StreamChecks>,
    ) -> Self {
        Self {
            upstream,
            buf: BytesMut::new(),
            observer: StreamObserver::default(),
            meter,
            strip_usage,
            idle_limit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            trailer: None,
            done: false,
            checks,
            cut: None,
        }
    }

    /// Cuts every complete event out of the buffer, observes (and checks) them, and returns
    /// what the client gets. Unchanged events go out as the very bytes that came in.
    fn take_events(&mut self) -> Option<Bytes> {
        let mut end = 0;
        let mut changed = false;
        let mut out = BytesMut::new();
        while let Some(len) = event_end(&self.buf[end..]) {
            let event = &self.buf[end..end + len];
            let data = event_data(event);
            let kind = match &data {
                Some(d) => self.observer.observe(d),
                None => EventKind::Other,
            };
            let action = match (&mut self.checks, &data) {
                (Some(checks), Some(d)) => checks.on_event(d, &self.observer.choices),
                _ => EventAction::Keep,
            };
            let dropped = self.strip_usage && matches!(kind, EventKind::UsageOnly);
            let replacement = match action {
                EventAction::Keep if !dropped => None,
                EventAction::Keep => Some(Vec::new()),
                EventAction::Replace(bytes) => Some(bytes),
                EventAction::End { bytes, blocked } => {
                    // The client gets the error and nothing after it.
                    if !changed {
                        out.extend_from_slice(&self.buf[..end]);
                    }
                    out.extend_from_slice(&bytes);
                    self.buf.clear();
                    self.cut = Some(if blocked {
                        Outcome::GuardrailBlocked
                    } else {
                        Outcome::UpstreamInvalid
                    });
                    return Some(out.freeze());
                }
            };
            match replacement {
                Some(bytes) => {
                    if !changed {
                        out.extend_from_slice(&self.buf[..end]);
                        changed = true;
                    }
                    out.extend_from_slice(&bytes);
                }
                None if changed => out.extend_from_slice(event),
                None => {}
            }
            end += len;
        }
        if end == 0 {
            return None;
        }
        let consumed = self.buf.split_to(end);
        let out = if changed { out } else { consumed };
        (!out.is_empty()).then(|| out.freeze())
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        // A partial last event (no closing blank line) is still part of the answer.
        if !self.buf.is_empty() {
            let rest = self.buf.split();
            if let Some(data) = event_data(&rest) {
                self.observer.observe(&data);
            }
        }
        let outcome = match self.cut {
            Some(cut) => cut,
            None if outcome == Outcome::Ok && self.observer.saw_error => Outcome::Upstream5xx,
            None => outcome,
        };
        let observer = std::mem::take(&mut self.observer);
        if let Some(checks) = &self.checks {
            let verdict = checks.conclude(&observer.choices);
            self.meter.observed.schema_failed = verdict.failed();
            self.meter.observed.guardrail_blocked = checks.blocked_by.is_some();
        }
        let usage = match observer.usage {
            Some(usage) => usage,
            None => Usage {
                prompt_tokens: self.meter.estimate_prompt(),
                completion_tokens: self
                    .meter
                    .target()
                    .version
                    .encoding
                    .count(&observer.all_text()),
                estimated: true,
            },
        };
        if self.meter.wants_answer() {
            self.meter.observed.answer = Some(observer.all_text());
        }
        if let Some(model) = &observer.model {
            self.meter.target().version.note_served_model(model);
        }
        self.meter.observed.response_model = observer.model.clone();
        let observed = &mut self.meter.observed;
        observed.usage = Some(usage);
        observed.response_chars = observer.chars;
        // The provider's own content filter cut the answer: a guardrail block by the provider.
        if observer.finish_reason.as_deref() == Some("content_filter") {
            observed.guardrail_blocked = true;
        }
        observed.finish_reason = observer.finish_reason;
        observed.first_token = observer.first_token;
        self.meter.finish(outcome);
    }

    fn fail(&mut self, error: UpstreamError) -> Option<Bytes> {
        let outcome = error.outcome();
        tracing::warn!(request_id = self.meter.request_id(), error = %error, "upstream stream broke off");
        let body = serde_json::json!({"error": {
            "message": format!("the upstream stream broke off: {error}"),
            "type": "upstream_error", "param": null, "code": outcome.as_str(),
        }});
        let event = format!("data: {body}\n\n");
        // Forward what complete events remain, then the error event.
        let pending = self.take_events();
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

impl Stream for StreamRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(this.trailer.take().map(Ok));
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    // Any bytes show the upstream is alive, even half an event.
                    let deadline = tokio::time::Instant::now() + this.idle_limit;
                    this.idle.as_mut().reset(deadline);
                    this.buf.extend_from_slice(&chunk);
                    if let Some(out) = this.take_events() {
                        if let Some(cut) = this.cut {
                            this.finish(cut);
                        }
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(this.fail(e).map(Ok)),
                Poll::Ready(None) => {
                    let out = this.take_events();
                    let rest = (!this.buf.is_empty()).then(|| this.buf.clone().freeze());
                    // Text a redactor still holds when the upstream never finished its choices.
                    let held = this
                        .checks
                        .as_mut()
                        .and_then(StreamChecks::flush)
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

impl Drop for StreamRelay {
    fn drop(&mut self) {
        if !self.done {
            // The client hung up: what it received so far is still measured.
            self.finish(Outcome::ClientDisconnected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries_accept_lf_and_crlf() {
        assert_eq!(event_end(b"data: a\n\ndata: b\n\n"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\nrest"), Some(11));
        assert_eq!(event_end(b"data: a\ndata: b\n"), None);
    }

    #[test]
    fn multi_line_data_is_joined() {
        assert_eq!(
            event_data(b"data: {\"a\":\ndata: 1}\n\n").unwrap().as_ref(),
            b"{\"a\":\n1}"
        );
        assert_eq!(event_data(b": comment\n\n"), None);
    }

    #[test]
    fn observer_reads_text_finish_and_usage() {
        let mut o = StreamObserver::default();
        o.observe(br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#);
        assert!(o.first_token.is_none(), "an empty delta is not a token");
        o.observe(br#"{"choices":[{"delta":{"content":"h\u00e9llo"}}]}"#);
        assert!(o.first_token.is_some());
        o.observe(br#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}"#);
        let kind = o.observe(
            br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
        );
        assert!(matches!(kind, EventKind::UsageOnly));
        assert_eq!(o.all_text(), "héllo");
        assert_eq!(o.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            o.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2,
                estimated: false
            })
        );
    }
}
