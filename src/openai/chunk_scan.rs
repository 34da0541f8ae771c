//! A one-pass reading of the common streamed chat-completion chunk, for the stream relay's
//! measurement.
//!
//! Nearly every event of a stream is one shape: `{"id":…,"object":"chat.completion.chunk",
//! "created":…,"model":…,"choices":[{"index":0,"delta":{"content":"…"},"finish_reason":null}]}`.
//! Reading it field by field through `openai::lenient` (each field raw, then read on its own)
//! costs about 10 000 instructions per event, most of a stream's cost in sluice. [`scan_str`]
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

/// [`scan_str`] for bytes.
#[cfg(test)]
pub(crate) fn scan(data: &[u8]) -> Option<PlainChunk<'_>> {
    scan_str(std::str::from_utf8(data).ok()?)
}

/// Reads `data` (one event's `data`, already checked to be UTF-8: the relay checks each
/// event once) when it is a [`PlainChunk`]; `None` for any other shape and for anything
/// that is not valid JSON.
#[cfg(test)]
pub(crate) fn scan_str(text: &str) -> Option<PlainChunk<'_>> {
    scan_after(text, &mut SeenPrefix::default())
}

/// The opening of the last chunk read in full, up to the top-level `"choices"` key, with
/// what the scan knew there: a stream's chunks repeat it byte for byte (`id`, `object`,
/// `created`, `model`, `system_fingerprint`, … are the same in every chunk). A chunk that
/// opens with the same bytes leaves the scan in the same state at its end, so the scan
/// resumes there. Two thirds of a chunk's bytes are that opening; reading it cost about
/// 2 500 instructions per event, comparing it about 30 (issue 13).
#[derive(Debug, Default)]
pub(crate) struct SeenPrefix {
    /// The bytes, from the `{` through the comma before `"choices"`; empty: none yet.
    bytes: Vec<u8>,
    /// `model` came before `"choices"`.
    model_seen: bool,
    /// Where the model's text is (between its quotes), when it is a string without
    /// escapes; with escapes no prefix is kept.
    model_text: Option<Range<usize>>,
}

impl SeenPrefix {
    /// Keeps `data`'s opening up to `at` (and the scan's state there), if any.
    fn keep(&mut self, data: &[u8], at: Option<(usize, bool, Option<Range<usize>>)>) {
        if let Some((end, model_seen, model_text)) = at {
            self.bytes.clear();
            self.bytes.extend_from_slice(&data[..end]);
            (self.model_seen, self.model_text) = (model_seen, model_text);
        }
    }
}

/// [`scan_str`] resuming after `prefix` when `text` opens with it, and keeping `text`'s
/// own opening in `prefix` when it did not (and was read to the end).
pub(crate) fn scan_after<'a>(text: &'a str, prefix: &mut SeenPrefix) -> Option<PlainChunk<'a>> {
    let b = text.as_bytes();
    let mut s = Scanner { text, b, i: 0 };
    let mut chunk = PlainChunk {
        model: None,
        choice: None,
    };
    let mut choices = false;
    let resumed = !prefix.bytes.is_empty() && b.starts_with(&prefix.bytes);
    let (mut model, mut model_text) = (false, None);
    if resumed {
        s.i = prefix.bytes.len();
        (model, model_text) = (prefix.model_seen, prefix.model_text.clone());
        if let Some(at) = &model_text {
            chunk.model = Some(Cow::Borrowed(text.get(at.clone())?));
        }
    } else {
        s.eat(b'{')?;
        if s.peek()? == b'}' {
            s.i += 1;
            s.ws();
            return (s.i == b.len()).then_some(chunk);
        }
    }
    // Where the last top-level field ended (after its comma), and the state there.
    let mut after_comma = None;
    let mut keep: Option<(usize, bool, Option<Range<usize>>)> = None;
    let mut escaped_model = false;
    loop {
        s.ws();
        let (key, escaped) = s.string()?;
        if escaped {
            return None;
        }
        s.eat(b':')?;
        match key {
            "model" => {
                once(&mut model)?;
                s.ws();
                let quote = s.i;
                chunk.model = s.nullable_string()?;
                model_text = match &chunk.model {
                    Some(Cow::Borrowed(_)) => Some(quote + 1..s.i - 1),
                    Some(Cow::Owned(_)) => {
                        escaped_model = true;
                        None
                    }
                    None => None,
                };
            }
            "choices" => {
                once(&mut choices)?;
                if let Some(end) = after_comma {
                    keep = Some((end, model, model_text.clone()));
                }
                chunk.choice = s.choices()?;
            }
            // Present and not null: the lenient reading handles them.
            "usage" | "error" => s.null()?,
            _ => s.skip(1)?,
        }
        match s.peek()? {
            b',' => {
                s.i += 1;
                after_comma = Some(s.i);
            }
            b'}' => {
                s.i += 1;
                break;
            }
            _ => return None,
        }
    }
    s.ws();
    if s.i != b.len() {
        return None;
    }
    if !resumed && !escaped_model {
        prefix.keep(b, keep);
    }
    Some(chunk)
}

/// The common whole (non-streamed) completion: every choice an object whose message's
/// `content` and `refusal` are strings or `null`, no tool calls, no error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainCompletion<'a> {
    /// The `model` field (`None` when absent or `null`).
    pub(crate) model: Option<Cow<'a, str>>,
    /// Both token counts, or `None` when `usage` or either count is absent or `null`.
    pub(crate) usage: Option<(u64, u64)>,
    /// The choices in order.
    pub(crate) choices: Vec<PlainAnswer<'a>>,
}

/// A choice of a [`PlainCompletion`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainAnswer<'a> {
    /// The message's `content` when a string.
    pub(crate) content: Option<Cow<'a, str>>,
    /// The message's `refusal` when a string.
    pub(crate) refusal: Option<Cow<'a, str>>,
    /// `finish_reason` when a string.
    pub(crate) finish_reason: Option<Cow<'a, str>>,
}

/// Reads a whole completion's body when it is a [`PlainCompletion`]; `None` for any other
/// shape (tool calls, content parts, an error, a count that is not a plain non-negative
/// integer, a value of an unexpected type, duplicate or escaped keys, invalid JSON): the
/// caller then reads it the lenient way (`openai::completion`), so when this answers, its
/// reading equals the lenient one (checked on generated and mutated bodies there). The
/// lenient reading parses each field again at each level of nesting, about 28
/// instructions per byte of a short answer (issue 13).
pub(crate) fn scan_completion(text: &str) -> Option<PlainCompletion<'_>> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    let mut out = PlainCompletion {
        model: None,
        usage: None,
        choices: Vec::new(),
    };
    let (mut model, mut choices, mut usage) = (false, false, false);
    s.object(0, |s, key| {
        match key {
            "model" => {
                once(&mut model)?;
                out.model = s.nullable_string()?;
            }
            "choices" => {
                once(&mut choices)?;
                out.choices = s.answers()?;
            }
            "usage" => {
                once(&mut usage)?;
                out.usage = s.usage()?;
            }
            "error" => s.null()?,
            _ => s.skip(1)?,
        }
        Some(())
    })?;
    s.ws();
    (choices && s.i == s.b.len()).then_some(out)
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

/// Where the first byte of `b` that stops a string's text is ([`STRING_STOP`]): its
/// closing quote, an escape, or a control character JSON does not allow unescaped.
///
/// Eight bytes at a time (SWAR): the byte-at-a-time loop cost ~8 instructions per byte of
/// string, a quarter of a streamed request's instructions (issue 13). For a word `w`,
/// `(w - 0x01…01·n) & !w & 0x80…80` has the high bit set in the lowest byte of `w` that is
/// below `n` (Anderson, "Bit Twiddling Hacks", *determine if a word has a byte less than
/// n*); it may also flag bytes above that one, never below, so the lowest flag of the three
/// tests (`== '"'`, `== '\\'`, `< 0x20`) is exactly the first stop byte. Bytes ≥ 0x80 (UTF-8
/// sequences) never flag: `!w` clears their high bit.
#[inline]
fn string_stop(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        let stops = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if stops != 0 {
            // Little-endian: the lowest set bit is the first byte in memory.
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter()
        .position(|&c| STRING_STOP[usize::from(c)])
        .map(|p| at + p)
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

    /// A whole completion's `choices`: an array of choice objects.
    fn answers(&mut self) -> Option<Vec<PlainAnswer<'a>>> {
        let mut answers = Vec::new();
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(answers);
        }
        loop {
            answers.push(self.answer()?);
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(answers);
                }
                _ => return None,
            }
        }
    }

    fn answer(&mut self) -> Option<PlainAnswer<'a>> {
        let mut a = PlainAnswer {
            content: None,
            refusal: None,
            finish_reason: None,
        };
        let (mut message, mut finish) = (false, false);
        self.object(2, |s, key| {
            match key {
                "message" => {
                    once(&mut message)?;
                    if s.peek()? == b'n' {
                        s.literal(b"null")?;
                    } else {
                        (a.content, a.refusal) = s.message()?;
                    }
                }
                "finish_reason" => {
                    once(&mut finish)?;
                    a.finish_reason = s.nullable_string()?;
                }
                _ => s.skip(3)?,
            }
            Some(())
        })?;
        Some(a)
    }

    /// A whole answer's message: its `content` and `refusal` when strings.
    #[allow(clippy::type_complexity)]
    fn message(&mut self) -> Option<(Option<Cow<'a, str>>, Option<Cow<'a, str>>)> {
        let (mut content, mut refusal) = (None, None);
        let (mut seen_content, mut seen_refusal) = (false, false);
        self.object(3, |s, key| {
            match key {
                "content" => {
                    once(&mut seen_content)?;
                    content = s.nullable_string()?;
                }
                "refusal" => {
                    once(&mut seen_refusal)?;
                    refusal = s.nullable_string()?;
                }
                "tool_calls" => s.null()?,
                _ => s.skip(4)?,
            }
            Some(())
        })?;
        Some((content, refusal))
    }

    /// `usage`: both counts when both are non-negative integers that fit a `u64`, `None`
    /// when either (or `usage`) is absent or `null`; any other value is `None` outside
    /// (the lenient reading counts it as unreadable).
    fn usage(&mut self) -> Option<Option<(u64, u64)>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let (mut prompt, mut completion) = (None, None);
        let (mut seen_prompt, mut seen_completion) = (false, false);
        self.object(1, |s, key| {
            match key {
                "prompt_tokens" => {
                    once(&mut seen_prompt)?;
                    prompt = s.count()?;
                }
                "completion_tokens" => {
                    once(&mut seen_completion)?;
                    completion = s.count()?;
                }
                _ => s.skip(2)?,
            }
            Some(())
        })?;
        Some(prompt.zip(completion))
    }

    /// A token count: `null` is `Some(None)`; a number `str::parse::<u64>` reads (as the
    /// lenient reading does) is its value; anything else is `None`.
    fn count(&mut self) -> Option<Option<u64>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let digits = self.number()?;
        std::str::from_utf8(digits).ok()?.parse().ok().map(Some)
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
            i += string_stop(&self.b[i..])?;
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
    fn the_word_at_a_time_stop_finds_the_first_stop_byte() {
        let naive = |b: &[u8]| b.iter().position(|&c| STRING_STOP[usize::from(c)]);
        // Every byte value at every position of a 1–19-byte string, after and before
        // other stop bytes (which the word test may flag above a true stop).
        for len in 1..20 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    for fill in [b'a', 0xc3, b'"', 0x1f, b'\\', 0xff] {
                        let mut b = vec![b'x'; len];
                        b[at] = byte;
                        for later in b.iter_mut().skip(at + 1) {
                            *later = fill;
                        }
                        assert_eq!(string_stop(&b), naive(&b), "{b:?}");
                    }
                }
            }
        }
        let text = "héllo wörld, a longer string with no stop in it at all".repeat(3);
        assert_eq!(string_stop(text.as_bytes()), None);
        assert_eq!(
            string_stop(format!("{text}\"").as_bytes()),
            Some(text.len())
        );
    }

    // A chunk read after another (the prefix of the first kept) reads as it does alone,
    // for pairs of a common chunk and a mutation of it (bytes deleted, inserted, replaced
    // anywhere, the opening included), in both orders.
    #[test]
    fn a_chunk_read_after_another_reads_as_it_does_alone() {
        let bases: [&str; 4] = [
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","model":"m\u00e9","choices":[{"delta":{"content":"x"}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"content":"x"}}],"model":"late"}"#,
            r#"{"model":null,"x":[1,{"y":"z"}],"choices":[]}"#,
        ];
        let inserts = b"\"{}[],: 0-nue\x1f\\tx";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize % n.max(1)
        };
        let (mut resumed, mut kept) = (0, 0);
        for round in 0..20_000 {
            let base = bases[round % bases.len()].as_bytes().to_vec();
            let mut other = base.clone();
            for _ in 0..=next(2) {
                let at = next(other.len() + 1);
                match next(3) {
                    0 if at < other.len() => {
                        other.remove(at);
                    }
                    1 if at < other.len() => other[at] = inserts[next(inserts.len())],
                    _ => other.insert(at, inserts[next(inserts.len())]),
                }
            }
            let Ok(other) = String::from_utf8(other) else {
                continue;
            };
            let base = String::from_utf8(base).unwrap();
            for (first, second) in [(&base, &other), (&other, &base)] {
                let mut prefix = SeenPrefix::default();
                assert_eq!(scan_after(first, &mut prefix), scan_str(first), "{first}");
                kept += usize::from(!prefix.bytes.is_empty());
                resumed += usize::from(
                    !prefix.bytes.is_empty() && second.as_bytes().starts_with(&prefix.bytes),
                );
                assert_eq!(
                    scan_after(second, &mut prefix),
                    scan_str(second),
                    "{first} then {second}"
                );
            }
        }
        // Both paths must have run often for the comparison to mean something.
        assert!(kept > 10_000 && resumed > 5_000, "{kept} {resumed}");
        // What the opening saw still counts after it: a second `model` is not read.
        let mut prefix = SeenPrefix::default();
        let first = bases[0];
        assert!(scan_after(first, &mut prefix).is_some());
        let twice = first.replacen(r#","usage":null}"#, r#","model":"b"}"#, 1);
        assert_eq!(scan_after(&twice, &mut prefix), None);
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(scan(deep.as_bytes()), None);
        let shallow = format!("{{\"x\":{}{}}}", "[".repeat(10), "]".repeat(10));
        assert!(scan(shallow.as_bytes()).is_some());
    }
}
