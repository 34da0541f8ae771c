//! The SSE parser (`openai::sse`): event cutting and field reading.
//!
//! Input: a stream's bytes. Checks, against a plain line-by-line reading of the WHATWG
//! event-stream rules written here: the events `event_end` cuts and `parse_event` reads
//! dispatch the same data and types in the same order; a search resumed read by read
//! (`event_end_from`, as the relay does) finds the same ends; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::openai::sse::{BOM, event_end, event_end_from, parse_event};

/// (event type, data) of each dispatched event, as the standard's algorithm reads `stream`.
fn reference(stream: &[u8]) -> Vec<(String, Vec<u8>)> {
    let stream = stream.strip_prefix(BOM).unwrap_or(stream);
    let mut out = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut saw_data = false;
    let mut kind = String::new();
    let mut i = 0;
    let mut start = 0;
    while i < stream.len() {
        let len = match stream[i] {
            b'\n' => 1,
            b'\r' if stream.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let line = &stream[start..i];
        i += len;
        start = i;
        if line.is_empty() {
            if saw_data {
                out.push((std::mem::take(&mut kind), std::mem::take(&mut data)));
            }
            saw_data = false;
            data.clear();
            kind.clear();
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if saw_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                saw_data = true;
            }
            b"event" => kind = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    out
}

/// The same stream read the relay's way: events cut by `event_end`, each parsed alone.
fn cut(stream: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<usize>) {
    let mut rest = stream.strip_prefix(BOM).unwrap_or(stream);
    let offset = stream.len() - rest.len();
    let mut events = Vec::new();
    let mut ends = Vec::new();
    let mut at = offset;
    while let Some(end) = event_end(rest) {
        assert!(end > 0 && end <= rest.len());
        assert!(matches!(rest[end - 1], b'\n' | b'\r'), "an event ends a line");
        let e = parse_event(&rest[..end]);
        if let Some(data) = e.data {
            let kind = e.event.map(|k| k.into_owned()).unwrap_or_default();
            events.push((kind, data.into_owned()));
        }
        at += end;
        ends.push(at);
        rest = &rest[end..];
    }
    (events, ends)
}

fuzz_target!(|data: &[u8]| {
    let (events, ends) = cut(data);
    assert_eq!(events, reference(data));
    // Resumed search, one byte more per read, as bytes trickle in: the ends it finds are
    // the whole search's, except that a CR ending the bytes read so far ends its line (the
    // LF of that CRLF then ends an empty line, which dispatches nothing).
    let start = if data.starts_with(BOM) { BOM.len() } else { 0 };
    let mut from = start;
    let mut searched = 0;
    let mut found = Vec::new();
    for len in start..=data.len() {
        let buf = &data[from..len];
        if let Some(end) = event_end_from(buf, searched) {
            assert!(end <= buf.len());
            found.push(from + end);
            from += end;
            searched = 0;
        } else {
            searched = buf.len();
        }
    }
    // Read by read, the same events dispatch.
    let mut trickled = Vec::new();
    let mut prev = start;
    for &end in &found {
        let e = parse_event(&data[prev..end]);
        if let Some(d) = e.data {
            trickled.push((e.event.map(|k| k.into_owned()).unwrap_or_default(), d.into_owned()));
        }
        prev = end;
    }
    assert_eq!(trickled, events, "read by read");
    // Each end found read by read is one of the whole search's, or a CR the whole search
    // read as the first half of a CRLF.
    for end in &found {
        assert!(
            ends.contains(end) || data[end - 1] == b'\r',
            "a resumed search found an end the whole one did not: {end}"
        );
    }
});
