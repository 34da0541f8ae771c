//! A one-pass reading of the common streamed chat-completion chunk, for the stream relay's
//! measurement.
//!
//! Nearly every event of a stream is one shape: `{"id":…,"object":"chat.completion.chunk",
//! "created":…,"model":…,"choices":[{"index":0,"delta":{"content":"…"},"finish_reason":null}]}`.
//! Reading it field by field through `openai::lenient` (each field raw, then read on its own)
//! costs about 10 000 instructions per event, most of a stream's cost in sluice. [`scan`]
//! reads that shape in one pass at a few instructions per byte and answers `None` for
//! anything else (usage, an error, tool calls, a refusal, content parts, several choices, a
//! duplicate key, an escaped key, a `\u` escape outside the text it reads, nesting deeper
//! than [`MAX_DEPTH`], or JSON that is not valid): the caller then reads the event the
//! lenient way. So when `scan` answers, its reading equals the lenient one; the unit tests
//! check that on generated and mutated chunks.

use std::borrow::Cow;
use std::ops::Range;

/// Deeper nesting is left to serde_json (whose own limit is 128).
pub(crate) const MAX_DEPTH: usize = 64;

/// The common chunk: no usage, no error, at most one choice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainChunk<'a> {
    /// The `model` field (`None` when absent or `null`).
    pub(crate) model: Option<Cow<'a, str>>,
    /// The one choice, if `choices` held one.
    pub(crate) choice: Option<PlainChoice<'a>>,
}

/// A choice of a [`PlainChunk`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainChoice<'a> {
    /// `index` (absent or `null` is 0).
    pub(crate) index: usize,
    /// The delta's `content` when it is a string (`None`: absent, `null`, or no delta).
    pub(crate) content: Option<Cow<'a, str>>,
    /// Where that string is in the event's `data`, quotes included: a redacting stream
    /// rewrites only these bytes.
    pub(crate) content_span: Option<Range<usize>>,
    /// `finish_reason` when it is a string.
    pub(crate) finish_reason: Option<Cow<'a, str>>,
}

/// Reads `data` (one event's `data`) when it is a [`PlainChunk`]; `None` for any other
/// shape and for anything that is not valid JSON.
pub(crate) fn scan(data: &[u8]) -> Option<PlainChunk<'_>> {
    // Valid UTF-8 as a whole, every string between two (ASCII) quotes is too: one check
    // here instead of one per string.
    let text = std::str::from_utf8(data).ok()?;
    let mut s = Scanner {
        text,
        b: data,
        i: 0,
    };
    let mut chunk = PlainChunk {
        model: None,
        choice: None,
    };
    let (mut model, mut choices) = (false, false);
    s.object(0, |s, key| {
        match key {
            "model" => {
                once(&mut model)?;
                chunk.model = s.nullable_string()?;
            }
            "choices" => {
                once(&mut choices)?;
                chunk.choice = s.choices()?;
            }
            // Present and not null: the lenient reading handles them.
            "usage" | "error" => s.null()?,
            _ => s.skip(1)?,
        }
        Some(())
    })?;
    s.ws();
    (s.i == s.b.len()).then_some(chunk)
}

/// Marks a key as seen; a second time is `None` (the lenient reading keeps the last).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

struct Scanner<'a> {
    /// The data, checked to be UTF-8.
    text: &'a str,
    /// The same, as bytes.
    b: &'a [u8],
    i: usize,
}

/// Bytes that stop the scan of a string's text: its closing quote, an escape, and the
/// control characters JSON does not allow unescaped.
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stop[c] = true;
        c += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Calls `field` for each key of an object (its value not yet read), with the key
    /// unescaped; an escaped key is `None`.
    fn object(
        &mut self,
        depth: usize,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let (key, escaped) = self.string()?;
            if escaped {
                return None;
            }
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `choices`: an array of at most one object.
    fn choices(&mut self) -> Option<Option<PlainChoice<'a>>> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(None);
        }
        let choice = self.choice()?;
        self.eat(b']')?;
        Some(Some(choice))
    }

    fn choice(&mut self) -> Option<PlainChoice<'a>> {
        let mut c = PlainChoice {
            index: 0,
            content: None,
            content_span: None,
            finish_reason: None,
        };
        let (mut index, mut delta, mut finish) = (false, false, false);
        self.object(2, |s, key| {
            match key {
                "index" => {
                    once(&mut index)?;
                    if s.peek()? == b'n' {
                        s.literal(b"null")?;
                    } else {
                        let digits = s.number()?;
                        // Only what `str::parse::<usize>` reads as the lenient reading does.
                        c.index = std::str::from_utf8(digits).ok()?.parse().ok()?;
                    }
                }
                "delta" => {
                    once(&mut delta)?;
                    if s.peek()? == b'n' {
                        s.literal(b"null")?;
                    } else {
                        (c.content, c.content_span) = s.delta()?;
                    }
                }
                "finish_reason" => {
                    once(&mut finish)?;
                    c.finish_reason = s.nullable_string()?;
                }
                _ => s.skip(3)?,
            }
            Some(())
        })?;
        Some(c)
    }

    /// A delta object: its `content` when a string, and where that string is; tool calls
    /// or a refusal are `None`.
    #[allow(clippy::type_complexity)]
    fn delta(&mut self) -> Option<(Option<Cow<'a, str>>, Option<Range<usize>>)> {
        let mut content = None;
        let mut span = None;
        let mut seen = false;
        self.object(3, |s, key| {
            match key {
                "content" => {
                    once(&mut seen)?;
                    s.ws();
                    let start = s.i;
                    content = s.nullable_string()?;
                    span = content.is_some().then_some(start..s.i);
                }
                "tool_calls" | "refusal" => s.null()?,
                _ => s.skip(4)?,
            }
            Some(())
        })?;
        Some((content, span))
    }

    fn null(&mut self) -> Option<()> {
        self.ws();
        self.literal(b"null")
    }

    /// A string (unescaped) or `null`; any other value is `None`.
    fn nullable_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'"' => {
                let start = self.i;
                let (text, escaped) = self.string()?;
                if !escaped {
                    return Some(Some(Cow::Borrowed(text)));
                }
                // Escapes are rare (non-ASCII text from some providers): serde_json reads them.
                let raw = self.text.get(start..self.i)?;
                serde_json::from_str::<String>(raw)
                    .ok()
                    .map(|s| Some(s.into()))
            }
            _ => None,
        }
    }

    /// A string at `self.i` (after whitespace): its text between the quotes, and whether it
    /// holds escapes. Control characters, invalid escapes and text that is not UTF-8 are
    /// `None`, as they are errors to serde_json.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            i += self.b[i..]
                .iter()
                .position(|&c| STRING_STOP[usize::from(c)])?;
            match self.b[i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *self.b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            let hex = self.b.get(i + 2..i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        self.i = i + 1;
        Some((self.text.get(start..i)?, escaped))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.i = i;
        Some(&b[start..i])
    }

    /// Skips any value at nesting `depth`; a `\u` escape in a skipped string is `None`
    /// (serde_json checks surrogate pairs there, which this does not).
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => match self.string()? {
                (text, true) if text.contains("\\u") => None,
                _ => Some(()),
            },
            b'{' => self.object(depth, |s, _| s.skip(depth + 1)),
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_chunk() {
        let data = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}"#;
        let chunk = scan(data).unwrap();
        assert_eq!(chunk.model.as_deref(), Some("gpt-4o-mini"));
        let c = chunk.choice.unwrap();
        assert_eq!(c.index, 0);
        assert_eq!(c.content.as_deref(), Some(" word"));
        assert_eq!(&data[c.content_span.unwrap()], br#"" word""#);
        assert_eq!(c.finish_reason, None);
    }

    #[test]
    fn unescapes_text_and_reads_the_finish() {
        let data = br#" { "choices" : [ { "index" : 2 , "delta" : { "role" : "assistant" , "content" : "h\u00e9\"llo\n" } , "finish_reason" : "stop" } ] } "#;
        let chunk = scan(data).unwrap();
        let c = chunk.choice.unwrap();
        assert_eq!(c.index, 2);
        assert_eq!(c.content.as_deref(), Some("hé\"llo\n"));
        assert_eq!(&data[c.content_span.unwrap()], br#""h\u00e9\"llo\n""#);
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(chunk.model, None);
    }

    #[test]
    fn leaves_every_other_shape_to_the_lenient_reading() {
        for data in [
            // usage, error, tool calls, refusal, parts, two choices
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            r#"{"error":{"message":"boom"}}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
            r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            // duplicate and escaped keys, odd values
            r#"{"model":"a","model":"b"}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"mod\u0065l":"a"}"#,
            r#"{"choices":[{"index":-1,"delta":{}}]}"#,
            r#"{"choices":[{"index":1.0,"delta":{}}]}"#,
            r#"{"choices":[{"delta":"odd","finish_reason":"stop"}]}"#,
            r#"{"model":7}"#,
            r#"{"id":"\ud800"}"#,
            // not JSON, or not an object
            r#"{"choices":[{"delta":{"content":"a"}}]"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":tru}"#,
            r#"{"a":"b	c"}"#,
            r#"{"a":1}x"#,
            r#"{"a":1,}"#,
            r#"[1]"#,
            r#""text""#,
            "",
        ] {
            assert_eq!(scan(data.as_bytes()), None, "{data}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(scan(deep.as_bytes()), None);
        let shallow = format!("{{\"x\":{}{}}}", "[".repeat(10), "]".repeat(10));
        assert!(scan(shallow.as_bytes()).is_some());
    }
}
