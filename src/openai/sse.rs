//! Server-sent events framed exactly as the WHATWG HTML standard's event-stream parser
//! reads them (§9.2.6, "Interpreting an event stream"): lines end in CRLF, LF or a lone
//! CR; a blank line dispatches the event; a line starting with `:` is a comment; a field
//! is the text before the first `:` and its value the text after it with one leading space
//! removed (a line without `:` is a field with an empty value); `data` lines are joined
//! with LF; `event`, `id` and `retry` are kept; other fields are ignored; an event without
//! `data` dispatches nothing; a leading byte-order mark is ignored; and an event cut off
//! by the end of the stream (no blank line after it) is discarded.
//!
//! Pure functions over bytes: the stream relay cuts events with [`event_end`] and reads
//! each with [`parse_event`]; the bytes it forwards stay the upstream's own.

use std::borrow::Cow;

/// UTF-8 byte-order mark, ignored once at the start of a stream.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One event's fields. `data` is `None` when the event had no `data` line (such an event
/// is not dispatched by a browser; sluice forwards its bytes and reads nothing from it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event` field: the event's type (`None` is the default type, `message`).
    pub event: Option<Cow<'a, str>>,
    /// The `data` lines joined with LF.
    pub data: Option<Cow<'a, [u8]>>,
    /// The `id` field, unless it contained a NUL (the standard ignores such an id).
    pub(crate) id: Option<Cow<'a, str>>,
    /// The `retry` field in milliseconds, when it is all ASCII digits.
    pub(crate) retry: Option<u64>,
}

/// The line terminator at `buf[i]`, as its length (1 for LF or a lone CR, 2 for CRLF), or
/// `None` when `buf[i]` ends no line. A CR as the very last byte counts as a lone CR: if an
/// LF follows in the next read, it ends an empty line, which dispatches nothing.
fn terminator(buf: &[u8], i: usize) -> Option<usize> {
    match buf[i] {
        b'\n' => Some(1),
        b'\r' if buf.get(i + 1) == Some(&b'\n') => Some(2),
        b'\r' => Some(1),
        _ => None,
    }
}

/// End (exclusive) of the first complete event in `buf`: just past the blank line that
/// closes it. `None` while the closing blank line has not arrived.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    event_end_from(buf, 0)
}

/// [`event_end`], resuming a search that already found no event end in `buf[..from]`, so
/// that an event arriving in many small reads is scanned once, not once per read.
pub fn event_end_from(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.min(buf.len());
    let mut line_empty = i == 0 || matches!(buf[i - 1], b'\n' | b'\r');
    // Resuming between the CR and the LF of one CRLF: the LF belongs to that terminator.
    if i > 0 && buf[i - 1] == b'\r' && buf.get(i) == Some(&b'\n') {
        i += 1;
    }
    while i < buf.len() {
        if !line_empty {
            // Skip the rest of a non-empty line at memchr's speed.
            match memchr::memchr2(b'\n', b'\r', &buf[i..]) {
                Some(at) => i += at,
                None => return None,
            }
        }
        match terminator(buf, i) {
            Some(len) => {
                i += len;
                if line_empty {
                    return Some(i);
                }
                line_empty = true;
            }
            None => {
                line_empty = false;
                i += 1;
            }
        }
    }
    None
}

/// [`event_end_from`] for a stream whose bytes are still arriving (`more`): an event whose
/// closing blank line is a CR at the very end of `buf` is not cut yet, since an LF in the
/// next read would make that CR the first half of a CRLF, and cutting before it would send
/// the LF as an empty event of its own (the bytes a client gets would depend on where the
/// reads were cut). With `more = false` (the stream ended) such an event is cut.
///
/// On `None`, resume the next search at `buf.len() - 1` (one byte back, which is always
/// valid), so that a deferred CR is read again with the byte after it.
pub(crate) fn event_end_streaming(buf: &[u8], from: usize, more: bool) -> Option<usize> {
    let end = event_end_from(buf, from)?;
    if more && end == buf.len() && buf[end - 1] == b'\r' {
        None
    } else {
        Some(end)
    }
}

/// The lines of `event`, without their terminators.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // memchr: a byte-at-a-time search cost about 2 500 instructions per event.
        let Some(i) = memchr::memchr2(b'\n', b'\r', rest) else {
            return Some(std::mem::take(&mut rest));
        };
        let len = terminator(rest, i).expect("memchr2 stopped at a CR or an LF");
        let line = &rest[..i];
        rest = &rest[i + len..];
        Some(line)
    })
}

/// Reads one event's fields (the bytes [`event_end`] cut, blank line included or not).
/// The caller strips a [`BOM`] from the start of the stream (only there is it ignored).
pub fn parse_event(event: &[u8]) -> Event<'_> {
    let mut out = Event::default();
    for line in lines(event) {
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                out.data = Some(match out.data.take() {
                    None => Cow::Borrowed(value),
                    Some(before) => {
                        let mut joined = before.into_owned();
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                        Cow::Owned(joined)
                    }
                });
            }
            b"event" => out.event = Some(String::from_utf8_lossy(value)),
            b"id" if !value.contains(&0) => out.id = Some(String::from_utf8_lossy(value)),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                out.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &[u8]) -> Option<Vec<u8>> {
        parse_event(event).data.map(Cow::into_owned)
    }

    #[test]
    fn every_line_ending_the_standard_allows_closes_an_event() {
        assert_eq!(event_end(b"data: a\n\ndata: b\n\n"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\nrest"), Some(11));
        assert_eq!(event_end(b"data: a\r\rrest"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\nrest"), Some(10));
        assert_eq!(event_end(b"data: a\n\r\nrest"), Some(10));
        assert_eq!(event_end(b"data: a\ndata: b\n"), None);
        assert_eq!(event_end(b"data: a\r\n"), None);
        assert_eq!(event_end(b""), None);
        // A blank line at the very start is an (empty) event of its own.
        assert_eq!(event_end(b"\ndata: a\n\n"), Some(1));
    }

    #[test]
    fn a_resumed_search_finds_what_a_whole_one_finds() {
        let streams: [&[u8]; 5] = [
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\n\r\nrest",
            b"data: a\r\rrest",
            b"data: a\r\n\nrest",
            b": c\n\n",
        ];
        for stream in streams {
            let whole = event_end(stream);
            // Fed one byte at a time, resuming where the last search stopped.
            let mut found = None;
            let mut searched = 0;
            for len in 1..=stream.len() {
                if let Some(end) = event_end_from(&stream[..len], searched) {
                    found = Some(end);
                    break;
                }
                searched = len;
            }
            // A CR that ends the bytes so far ends its line; when the LF of a CRLF follows
            // in a later read, it is an empty line of its own, which dispatches nothing.
            let cut_at_cr = whole.map(|w| w - 1).filter(|&w| stream[w - 1] == b'\r');
            assert!(
                found == whole || (found.is_some() && found == cut_at_cr),
                "{:?}: {found:?} vs {whole:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    // Found by the `stream_relay` fuzz target: a CRLF blank line cut between its CR and LF
    // by two reads made the LF an empty event of its own, so a rewritten event went out
    // with an extra LF after it, depending on where the reads were cut.
    #[test]
    fn a_stream_still_arriving_waits_for_the_byte_after_a_closing_cr() {
        let stream = b"data: a\r\n\r\ndata: b\r\rdata: c\r\n\r\n";
        let mut ends = Vec::new();
        let (mut start, mut searched) = (0, 0);
        for len in 1..=stream.len() {
            match event_end_streaming(&stream[start..len], searched, true) {
                Some(end) => {
                    ends.push(start + end);
                    start += end;
                    searched = 0;
                }
                None => searched = (len - start).saturating_sub(1),
            }
        }
        let mut whole = Vec::new();
        let mut at = 0;
        while let Some(end) = event_end(&stream[at..]) {
            at += end;
            whole.push(at);
        }
        assert_eq!(ends, whole);
        assert_eq!(whole, [11, 20, 31]);
        // Once the stream has ended, a closing CR at the end is the end.
        assert_eq!(event_end_streaming(b"data: a\r\r", 0, true), None);
        assert_eq!(event_end_streaming(b"data: a\r\r", 0, false), Some(9));
    }

    #[test]
    fn data_lines_are_joined_with_lf_whatever_ended_them() {
        assert_eq!(
            data(b"data: {\"a\":\rdata: 1}\r\n\r\n").unwrap(),
            b"{\"a\":\n1}"
        );
        assert_eq!(data(b"data:x\ndata:  y\n\n").unwrap(), b"x\n y");
        // `data` without a colon is a data line with an empty value.
        assert_eq!(data(b"data\ndata: z\n\n").unwrap(), b"\nz");
    }

    #[test]
    fn comments_and_other_fields_are_not_data() {
        assert_eq!(data(b": keep-alive\n\n"), None);
        let e =
            parse_event(b"event: response.completed\nid: 7\nretry: 1500\nfoo: bar\ndata: {}\n\n");
        assert_eq!(e.event.as_deref(), Some("response.completed"));
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.retry, Some(1500));
        assert_eq!(e.data.as_deref(), Some(&b"{}"[..]));
        assert_eq!(parse_event(b"retry: 15s\ndata: x\n\n").retry, None);
        assert_eq!(parse_event(b"id: a\0b\ndata: x\n\n").id, None);
    }

    #[test]
    fn a_bom_inside_a_stream_is_part_of_the_field_name() {
        // Only the stream's first bytes may be a BOM (the relay strips it there).
        assert_eq!(data(b"\xEF\xBB\xBFdata: x\n\n"), None);
    }

    #[test]
    fn a_field_name_is_exact() {
        // `data ` (with a space before the colon) is another field, and `Data` too.
        assert_eq!(data(b"data : x\nData: y\n\n"), None);
    }
}
