//! The stream relay: passes an upstream's server-sent events (a streamed chat completion)
//! to the client as they arrive and measures them on the way.
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
use tokio::time::Sleep;

use super::finish::{self, AnswerEnd};
use crate::error::ApiError;
use crate::measure::Meter;
use crate::measure::checks::{EventAction, StreamChecks};
use crate::measure::schema::ToolCall;
use crate::openai::chunk_scan::{self, PlainChunk};
use crate::openai::completion::{ChoiceText, MAX_STREAM_INDEX};
use crate::openai::lenient::{self, Field};
use crate::openai::sse::{BOM, event_end_streaming, parse_event};
use crate::types::{Outcome, Usage};
use crate::upstream::{ByteStream, UpstreamError};

// Every field is raw JSON read on its own by `openai::lenient`: an odd field is counted
// and skipped, never the chunk; the last of duplicate keys wins.
lenient::object! {
    struct ChunkView<'a> {
        choices: "choices",
        model: "model",
        usage: "usage",
        error: "error",
    }
}

lenient::object! {
    struct ChunkChoice<'a> {
        index: "index",
        delta: "delta",
        finish_reason: "finish_reason",
    }
}

lenient::object! {
    struct Delta<'a> {
        content: "content",
        refusal: "refusal",
        tool_calls: "tool_calls",
    }
}

lenient::object! {
    struct ToolCallDelta<'a> {
        index: "index",
        function: "function",
    }
}

lenient::object! {
    struct FunctionDelta<'a> {
        name: "name",
        arguments: "arguments",
    }
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
    /// The `[DONE]` event came: with a finish reason, what tells a whole answer from one
    /// that a connection closed early (a body without a length ends at any byte).
    saw_done: bool,
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

    /// One event's `data`, read the way the relay reads it.
    #[cfg(test)]
    fn observe(&mut self, data: &[u8]) -> EventKind {
        let plain = (data != b"[DONE]")
            .then(|| chunk_scan::scan(data))
            .flatten();
        self.observe_read(data, plain.as_ref())
    }

    /// One event's `data`; `plain` is its one-pass reading when it has the common shape.
    fn observe_read(&mut self, data: &[u8], plain: Option<&PlainChunk<'_>>) -> EventKind {
        if data == b"[DONE]" {
            self.saw_done = true;
            return EventKind::Other;
        }
        match plain {
            Some(chunk) => {
                self.observe_plain(chunk);
                EventKind::Other
            }
            None => self.observe_lenient(data),
        }
    }

    /// The common chunk, read in one pass: the same reading as [`Self::observe_lenient`]
    /// gives it (see `openai::chunk_scan`).
    fn observe_plain(&mut self, chunk: &PlainChunk<'_>) {
        if self.model.is_none() {
            self.model = chunk.model.as_deref().map(str::to_owned);
        }
        let Some(c) = chunk.choice.as_ref().filter(|c| c.index < MAX_STREAM_INDEX) else {
            return;
        };
        if let Some(t) = &c.content {
            self.chars += t.chars().count() as u64;
            self.choice(c.index).text.push_str(t);
            if !t.is_empty() && self.first_token.is_none() {
                self.first_token = Some(Instant::now());
            }
        }
        if let Some(reason) = &c.finish_reason {
            self.finish_reason
                .get_or_insert_with(|| reason.as_ref().to_owned());
        }
    }

    /// Any chunk, each field read on its own (`openai::lenient`).
    fn observe_lenient(&mut self, data: &[u8]) -> EventKind {
        let Ok(chunk) = serde_json::from_slice::<ChunkView>(data) else {
            return EventKind::Other;
        };
        if chunk.error.is_some_and(|e| e.get() != "null") {
            self.saw_error = true;
        }
        if self.model.is_none()
            && let Some(m) = lenient::string(chunk.model, Field::Model)
        {
            self.model = Some(m.into_owned());
        }
        let choices: Vec<ChunkChoice> = lenient::list(chunk.choices, Field::Content);
        for c in &choices {
            let Some(index) = lenient::index(c.index, Field::Content) else {
                continue;
            };
            if index >= MAX_STREAM_INDEX {
                continue;
            }
            if let Some(delta) = lenient::nested::<Delta>(c.delta, Field::Content) {
                let calls: Vec<ToolCallDelta> = lenient::list(delta.tool_calls, Field::ToolCalls);
                let mut carried_token = !calls.is_empty();
                for t in lenient::text(delta.content, Field::Content)
                    .into_iter()
                    .chain(lenient::text(delta.refusal, Field::Content))
                {
                    carried_token |= !t.is_empty();
                    self.chars += t.chars().count() as u64;
                    self.choice(index).text.push_str(&t);
                }
                for call in &calls {
                    let Some(slot_index) = lenient::index(call.index, Field::ToolCalls) else {
                        continue;
                    };
                    if slot_index >= MAX_STREAM_INDEX {
                        continue;
                    }
                    let choice = self.choice(index);
                    if choice.tool_calls.len() <= slot_index {
                        choice
                            .tool_calls
                            .resize_with(slot_index + 1, ToolCall::default);
                    }
                    let slot = &mut choice.tool_calls[slot_index];
                    if let Some(f) =
                        lenient::nested::<FunctionDelta>(call.function, Field::ToolCalls)
                    {
                        if let Some(name) = lenient::string(f.name, Field::ToolCalls) {
                            slot.name.push_str(&name);
                        }
                        if let Some(args) = lenient::string(f.arguments, Field::ToolCalls) {
                            slot.arguments.push_str(&args);
                        }
                    }
                }
                if carried_token && self.first_token.is_none() {
                    self.first_token = Some(Instant::now());
                }
            }
            if let Some(reason) = lenient::string(c.finish_reason, Field::FinishReason) {
                self.finish_reason
                    .get_or_insert_with(|| reason.into_owned());
            }
        }
        if chunk.usage.is_some_and(|u| u.get() != "null") {
            if let Some(usage) = lenient::usage(chunk.usage) {
                self.usage = Some(usage);
            }
            if choices.is_empty() {
                return EventKind::UsageOnly;
            }
        }
        EventKind::Other
    }

    fn all_text(&self) -> String {
        self.choices.iter().map(|c| c.text.as_str()).collect()
    }
}

/// The most bytes of one unfinished event the relay holds; an upstream that sends more
/// without a blank line has its stream ended as broken off.
pub(crate) const MAX_PENDING_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Upstream bytes not yet cut into events. Upstreams mostly send whole events, so a chunk
/// that arrives with nothing pending is kept as it came and its events go out as slices of
/// it; only a part-event left over is copied, to be joined with what follows. Copying
/// every chunk into one buffer cost a copy of every streamed byte (~3 % of a stream's
/// instructions, issue 13).
#[derive(Default)]
enum Pending {
    #[default]
    Empty,
    /// A chunk as it came (shares the upstream's buffer).
    Shared(Bytes),
    /// Chunks joined.
    Owned(BytesMut),
}

impl Pending {
    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Pending::Empty => Pending::Shared(chunk),
            Pending::Shared(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                Pending::Owned(joined)
            }
            Pending::Owned(mut joined) => {
                joined.extend_from_slice(&chunk);
                Pending::Owned(joined)
            }
        };
    }

    /// The first `n` bytes (at most all), taken out.
    fn split_to(&mut self, n: usize) -> Bytes {
        let taken = match self {
            Pending::Empty => Bytes::new(),
            Pending::Shared(bytes) => bytes.split_to(n),
            Pending::Owned(joined) => joined.split_to(n).freeze(),
        };
        if self.is_empty() {
            *self = Pending::Empty;
        }
        taken
    }

    fn clear(&mut self) {
        *self = Pending::Empty;
    }
}

impl std::ops::Deref for Pending {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pending::Empty => &[],
            Pending::Shared(bytes) => bytes,
            Pending::Owned(joined) => joined,
        }
    }
}

/// A streamed chat completion on its way to the client: a [`Stream`] of the bytes the
/// client gets, event by event. It owns the request's [`Meter`] and finishes it when the
/// upstream ends, breaks off or falls silent for `idle_limit`, or when the client hangs up
/// (the relay is dropped).
pub struct StreamRelay {
    upstream: ByteStream,
    buf: Pending,
    observer: StreamObserver,
    meter: Meter,
    /// sluice added `include_usage`; the client did not ask for the usage chunk.
    strip_usage: bool,
    idle_limit: Duration,
    idle: Pin<Box<Sleep>>,
    /// The relay is waiting on the upstream for its next whole event: `idle` runs. It does
    /// not while the client has not asked for more (a slow reader is not a slow upstream).
    waiting: bool,
    /// A last event to send before ending (an error the client must see).
    trailer: Option<Bytes>,
    done: bool,
    /// Schema and output-guardrail checks, when the request or the route asks for any.
    checks: Option<StreamChecks>,
    /// The checks ended the stream early: with this outcome.
    cut: Option<Outcome>,
    /// No event has been cut yet: a byte-order mark here is not part of the first field.
    at_start: bool,
    /// How much of `buf` is known to hold no event end, so a long event is scanned once.
    searched: usize,
    /// The opening the stream's chunks repeat, read once (`chunk_scan::SeenPrefix`).
    prefix: chunk_scan::SeenPrefix,
}

impl StreamRelay {
    /// A relay of `upstream`'s events. `strip_usage`: sluice asked for the usage chunk on
    /// the client's behalf, so it is dropped; `idle_limit`: the longest wait for the next
    /// whole event (the provider's timeout); `checks`: schema and output-guardrail checks,
    /// when the request or the route asks for any.
    pub fn new(
        upstream: ByteStream,
        meter: Meter,
        strip_usage: bool,
        idle_limit: Duration,
        checks: Option<StreamChecks>,
    ) -> Self {
        Self {
            upstream,
            buf: Pending::Empty,
            observer: StreamObserver::default(),
            meter,
            strip_usage,
            idle_limit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            waiting: false,
            trailer: None,
            done: false,
            checks,
            cut: None,
            at_start: true,
            searched: 0,
            prefix: chunk_scan::SeenPrefix::default(),
        }
    }

    /// Cuts every complete event out of the buffer, observes (and checks) them, and returns
    /// what the client gets. Unchanged events go out as the very bytes that came in. `more`:
    /// the upstream may still send bytes (see [`event_end_streaming`]).
    fn take_events(&mut self, more: bool) -> Option<Bytes> {
        let mut end = 0;
        let mut changed = false;
        let mut out = BytesMut::new();
        loop {
            // A byte-order mark opening the stream is not part of its first field.
            let skip = if end == 0 && self.at_start && self.buf.starts_with(BOM) {
                BOM.len()
            } else {
                0
            };
            let from = if end == 0 && !self.at_start {
                self.searched
            } else {
                0
            };
            let Some(parsed) = event_end_streaming(&self.buf[end + skip..], from, more) else {
                self.searched = (self.buf.len() - end - skip).saturating_sub(1);
                break;
            };
            let len = skip + parsed;
            self.at_start = false;
            let raw = &self.buf[end + skip..end + len];
            // The standard decodes a stream as UTF-8 with U+FFFD for each byte that is not;
            // so does the relay, for measurement and for what the client gets.
            // Borrowed when it is UTF-8 (checked once here, not again by the scan).
            let mut text = String::from_utf8_lossy(raw);
            let data = parse_event(text.as_bytes()).data;
            // Read once, for the measurement and the checks alike.
            let plain = data
                .as_deref()
                .filter(|d| *d != b"[DONE]")
                .and_then(|d| chunk_scan::scan_after(text_of(&text, d)?, &mut self.prefix));
            let kind = match &data {
                Some(d) => self.observer.observe_read(d, plain.as_ref()),
                None => EventKind::Other,
            };
            let action = match (&mut self.checks, &data) {
                (Some(checks), Some(d)) => {
                    checks.on_event(d, plain.as_ref(), &self.observer.choices)
                }
                _ => EventAction::Keep,
            };
            let dropped = self.strip_usage && matches!(kind, EventKind::UsageOnly);
            let replacement = match action {
                EventAction::Keep if !dropped => match &mut text {
                    Cow::Owned(decoded) => Some(std::mem::take(decoded).into_bytes()),
                    Cow::Borrowed(_) => None,
                },
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
                        // Everything left in the buffer may follow: one allocation, not a
                        // doubling per event (an 11 KB stream cost 7 000 instructions).
                        out.reserve(self.buf.len() + bytes.len());
                        out.extend_from_slice(&self.buf[..end]);
                        changed = true;
                    }
                    out.extend_from_slice(&bytes);
                }
                None if changed => out.extend_from_slice(&self.buf[end..end + len]),
                None => {}
            }
            end += len;
        }
        if end == 0 {
            return None;
        }
        // A whole event came (even one the client does not get): the upstream is alive.
        self.restart_idle();
        let consumed = self.buf.split_to(end);
        let out = if changed { out.freeze() } else { consumed };
        (!out.is_empty()).then_some(out)
    }

    fn restart_idle(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle_limit;
        self.idle.as_mut().reset(deadline);
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        // An event the stream cut off (no blank line after it) is discarded, as every
        // standard client discards it: it is not part of the answer.
        self.buf.clear();
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
        // The provider's own content filter cut the answer: a guardrail block by the provider.
        if observer.finish_reason.as_deref() == Some("content_filter") {
            self.meter.observed.guardrail_blocked = true;
        }
        self.meter.observed.first_token = observer.first_token;
        let end = AnswerEnd {
            usage: observer.usage,
            chars: observer.chars,
            finish_reason: observer.finish_reason.clone(),
            model: observer.model.clone(),
        };
        finish::end_of_answer(&mut self.meter, end, || observer.all_text());
        self.meter.finish(outcome);
    }

    fn fail(&mut self, error: UpstreamError) -> Option<Bytes> {
        // Forward what complete events remain, then the error event.
        let pending = self.take_events(false);
        self.fail_after(error, pending)
    }

    /// Finishes with `error`'s outcome and sends `pending` (complete events still held),
    /// then the error event, the last thing the client gets.
    fn fail_after(&mut self, error: UpstreamError, pending: Option<Bytes>) -> Option<Bytes> {
        let outcome = error.outcome();
        tracing::warn!(request_id = self.meter.request_id(), error = %error, "upstream stream broke off");
        let version = self.meter.target().version.name.to_string();
        let event = match error {
            UpstreamError::Timeout { after_ms } => ApiError::UpstreamTimeout { version, after_ms },
            other => ApiError::UpstreamInvalid {
                version,
                reason: format!("the stream broke off: {other}"),
            },
        }
        .as_event();
        self.finish(outcome);
        match pending {
            Some(p) => {
                self.trailer = Some(event);
                Some(p)
            }
            None => Some(event),
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
                    let len = chunk.len();
                    this.buf.push(chunk);
                    if this.buf.len() > MAX_PENDING_EVENT_BYTES + len {
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
                    let observer = &this.observer;
                    // A body that ends when the connection closes (no length, no chunks)
                    // ends cleanly wherever it is cut. Cut inside an event, with no `[DONE]`,
                    // finish reason or upstream error before it, the answer was cut short.
                    // (Cut between events it cannot be told from the providers that send
                    // neither `[DONE]` nor a finish reason, and stays `ok`.)
                    let cut_inside_an_event = !this.buf.iter().all(u8::is_ascii_whitespace);
                    if this.cut.is_none()
                        && cut_inside_an_event
                        && !observer.saw_done
                        && observer.finish_reason.is_none()
                        && !observer.saw_error
                    {
                        let error = UpstreamError::Interrupted(
                            "the connection closed before a finish reason or [DONE]".into(),
                        );
                        return Poll::Ready(this.fail_after(error, out).map(Ok));
                    }
                    // The unterminated tail is the upstream's bytes, passed on as they came
                    // (a client discards it); with checks it is never read, so never sent.
                    let rest = (!this.buf.is_empty() && this.checks.is_none())
                        .then(|| this.buf.split_to(this.buf.len()));
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

/// `data` as text, where `data` is the `data` field [`parse_event`] read out of `event`
/// (already checked to be UTF-8): a borrowed field is a slice of `event` whose ends are
/// ASCII line and field boundaries, so it is found by its offset in O(1) instead of being
/// checked again; a field joined from several lines is checked on its own.
fn text_of<'a>(event: &'a str, data: &'a [u8]) -> Option<&'a str> {
    let offset = (data.as_ptr() as usize).wrapping_sub(event.as_ptr() as usize);
    // In range only when `data` lies inside `event`'s memory, i.e. is a slice of it.
    match event.get(offset..offset.checked_add(data.len())?) {
        Some(text) => Some(text),
        None => std::str::from_utf8(data).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bytes_behave_as_one_buffer_whatever_the_chunks() {
        // Every way of cutting 12 bytes into 3 chunks, and of taking 0–4 bytes out after each.
        let all: Vec<u8> = (b'a'..=b'l').collect();
        for first in 0..=12 {
            for second in first..=12 {
                for take in 0..=4 {
                    let mut pending = Pending::default();
                    let mut model: Vec<u8> = Vec::new();
                    let mut out = Vec::new();
                    for chunk in [&all[..first], &all[first..second], &all[second..]] {
                        pending.push(Bytes::copy_from_slice(chunk));
                        model.extend_from_slice(chunk);
                        assert_eq!(&*pending, &model[..]);
                        let n = take.min(model.len());
                        out.extend_from_slice(&pending.split_to(n));
                        model.drain(..n);
                        assert_eq!(&*pending, &model[..]);
                    }
                    out.extend_from_slice(&pending.split_to(pending.len()));
                    assert_eq!(out, all);
                    assert!(matches!(pending, Pending::Empty));
                }
            }
        }
    }

    #[test]
    fn a_field_is_read_as_text_where_it_lies_in_its_event() {
        let event = "data: {\"a\":\"é\"}\n\n";
        let data = parse_event(event.as_bytes()).data.unwrap();
        assert_eq!(text_of(event, &data), Some("{\"a\":\"é\"}"));
        let joined = b"{\"a\":\n1}".to_vec();
        assert_eq!(text_of(event, &joined), Some("{\"a\":\n1}"));
        assert_eq!(text_of(event, b"\xff"), None);
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

    /// What a reading of events left in the observer, comparable.
    fn reading(o: &StreamObserver) -> String {
        let calls: Vec<usize> = o.choices.iter().map(|c| c.tool_calls.len()).collect();
        format!(
            "{:?} {calls:?} {} {:?} {:?} {} {} {:?}",
            o.choices.iter().map(|c| &c.text).collect::<Vec<_>>(),
            o.chars,
            o.usage,
            o.finish_reason,
            o.first_token.is_some(),
            o.saw_error,
            o.model
        )
    }

    // The one-pass reading (openai::chunk_scan) must read what the lenient one reads,
    // whenever it answers: checked on real chunk shapes and on 30 000 mutations of them
    // (bytes deleted, inserted, replaced), each read both ways from the same start.
    #[test]
    fn the_one_pass_reading_equals_the_lenient_one() {
        let bases: [&[u8]; 8] = [
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" h\u00e9llo \"w\""},"logprobs":null,"finish_reason":null}]}"#,
            br#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
            br#"{"choices":[{"index":1,"delta":{"content":"x"},"finish_reason":"length"}],"model":null}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            br#"{"choices":[{"index":0,"delta":null,"finish_reason":null}],"error":null,"x":[1,2.5e-3,true,false,null,{"y":"z"}]}"#,
            br#"{"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}],"choices":[]}"#,
        ];
        let inserts = b"\"{}[],: 0-nue\x1f\xc3\\tx";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize % n.max(1)
        };
        let mut read_fast = 0;
        for round in 0..30_000 {
            let mut data = bases[round % bases.len()].to_vec();
            if round >= bases.len() {
                for _ in 0..=next(3) {
                    let at = next(data.len() + 1);
                    match next(3) {
                        0 if at < data.len() => {
                            data.remove(at);
                        }
                        1 if at < data.len() => data[at] = inserts[next(inserts.len())],
                        _ => data.insert(at, inserts[next(inserts.len())]),
                    }
                }
            }
            let (mut fast, mut lenient) = (StreamObserver::default(), StreamObserver::default());
            let fast_kind = fast.observe(&data);
            let lenient_kind = lenient.observe_lenient(&data);
            read_fast += usize::from(chunk_scan::scan(&data).is_some());
            assert_eq!(
                reading(&fast),
                reading(&lenient),
                "{}",
                String::from_utf8_lossy(&data)
            );
            assert_eq!(
                matches!(fast_kind, EventKind::UsageOnly),
                matches!(lenient_kind, EventKind::UsageOnly)
            );
        }
        // The comparison means something only if the one-pass reading answered often.
        assert!(
            read_fast > 5_000,
            "the one-pass reading answered {read_fast} times"
        );
    }

    // The stream's side of the duplicate keys the `completion` fuzz target found: a chunk
    // with a duplicate key was dropped from measurement whole.
    #[test]
    fn a_chunk_with_a_duplicate_key_is_measured_the_last_wins() {
        let mut o = StreamObserver::default();
        o.observe(
            br#"{"model":"a","model":"b","choices":[{"index":0,"index":0,"delta":{"content":"x","content":"hi"}}]}"#,
        );
        let kind = o.observe(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1},"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        );
        assert!(matches!(kind, EventKind::UsageOnly));
        assert_eq!(o.all_text(), "hi");
        assert_eq!(o.model.as_deref(), Some("b"));
        assert_eq!(o.usage.map(|u| u.completion_tokens), Some(2));
        // A delta of another shape no longer hides the choice's finish reason.
        o.observe(br#"{"choices":[{"delta":"odd","finish_reason":"stop"}]}"#);
        assert_eq!(o.finish_reason.as_deref(), Some("stop"));
    }

    // Found while writing the `stream_relay` fuzz target: an index near usize::MAX
    // overflowed (a panic in the relay), a large one allocated a slot for every index below
    // it.
    #[test]
    fn an_index_beyond_any_real_answer_is_skipped_not_allocated() {
        let mut o = StreamObserver::default();
        o.observe(br#"{"choices":[{"index":18446744073709551615,"delta":{"content":"x"}}]}"#);
        o.observe(br#"{"choices":[{"index":1000000,"delta":{"content":"x"}}]}"#);
        o.observe(
            br#"{"choices":[{"delta":{"content":"ok","tool_calls":[{"index":18446744073709551615,"function":{"name":"f"}},{"index":1000000,"function":{"name":"g"}}]}}]}"#,
        );
        assert_eq!(o.all_text(), "ok");
        assert_eq!(o.choices.len(), 1);
        assert!(o.choices[0].tool_calls.is_empty());
    }
}
