//! A whole (non-streamed) chat completion read for measurement, checks, shadow copies and
//! eval replays: its text per choice, tool calls, usage, finish reason and answering model.

use std::borrow::Cow;

use super::chunk_scan::PlainCompletion;
use super::lenient::{self, Field};
use crate::measure::schema::ToolCall;
use crate::types::Usage;
use serde::Serialize;
use serde_json::value::{RawValue, to_raw_value};

/// One choice of an answer, as the checks need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceText {
    /// The choice's `content` and `refusal` joined, as the checks and the length read it.
    pub text: String,
    pub(crate) tool_calls: Vec<ToolCall>,
}

/// The most choices a stream is read for, and the most tool calls per choice: OpenAI's own
/// limit on `n` is 128. A larger `index` is an upstream's mistake; honouring it would
/// allocate a slot for every index below it (an index near `usize::MAX` overflowed), so
/// the observer skips such a choice or call, and answer checks end the stream.
pub const MAX_STREAM_INDEX: usize = 128;

/// What a whole (non-streamed) chat completion says, for measurement and checks.
pub struct CompletionSummary {
    /// The `model` the upstream says answered.
    pub(crate) model: Option<String>,
    /// The upstream's `usage`, if it reported one.
    pub usage: Option<Usage>,
    /// The choices in the order of the body's `choices` array.
    pub choices: Vec<ChoiceText>,
    pub(crate) finish_reason: Option<String>,
}

impl CompletionSummary {
    /// Every choice's text, concatenated in order.
    pub fn all_text(&self) -> String {
        self.choices.iter().map(|c| c.text.as_str()).collect()
    }

    /// The answer's length in characters (Unicode scalar values), over every choice.
    pub fn chars(&self) -> u64 {
        self.choices
            .iter()
            .map(|c| c.text.chars().count() as u64)
            .sum()
    }
}

/// Why a 2xx body is not a chat completion: the only answers measurement refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotACompletion {
    #[error("the body is not JSON: {0}")]
    /// The body does not parse as JSON; the parser's message.
    NotJson(String),
    /// JSON, but an error envelope (`{"error": …}`), as some upstreams send with a 200.
    #[error("the upstream answered 200 with an error: {0}")]
    Error(String),
    #[error("the body has no `choices`")]
    /// A JSON object without a `choices` array.
    NoChoices,
}

// Every field of a whole completion is raw JSON read on its own by `lenient`.
lenient::object! {
    struct CompletionView<'a> {
        choices: "choices",
        usage: "usage",
        model: "model",
        error: "error",
    }
}

lenient::object! {
    struct ChoiceView<'a> {
        message: "message",
        finish_reason: "finish_reason",
    }
}

lenient::object! {
    struct MessageView<'a> {
        content: "content",
        refusal: "refusal",
        tool_calls: "tool_calls",
    }
}

lenient::object! {
    struct CallView<'a> {
        function: "function",
    }
}

lenient::object! {
    struct FunctionView<'a> {
        name: "name",
        arguments: "arguments",
    }
}

/// Reads a non-streamed answer as leniently as the SDKs do (see `super::lenient`): only a
/// body that is not JSON, an error envelope, or one without a `choices` list is refused.
pub fn summarize_completion(body: &[u8]) -> Result<CompletionSummary, NotACompletion> {
    // The common shape in one pass; anything else the lenient way, field by field.
    if let Some(plain) = std::str::from_utf8(body)
        .ok()
        .and_then(super::chunk_scan::scan_completion)
    {
        return Ok(summarize_plain(plain));
    }
    summarize_lenient(body)
}

/// A [`PlainCompletion`] as the lenient reading tells it.
fn summarize_plain(plain: PlainCompletion<'_>) -> CompletionSummary {
    CompletionSummary {
        model: plain.model.map(Cow::into_owned),
        usage: plain.usage.map(|(prompt_tokens, completion_tokens)| Usage {
            prompt_tokens,
            completion_tokens,
            estimated: false,
        }),
        finish_reason: plain
            .choices
            .first()
            .and_then(|c| c.finish_reason.as_deref())
            .map(str::to_owned),
        choices: plain
            .choices
            .into_iter()
            .map(|c| ChoiceText {
                text: c.content.into_iter().chain(c.refusal).collect(),
                tool_calls: Vec::new(),
            })
            .collect(),
    }
}

/// [`summarize_completion`] for any shape: each field taken raw, then read on its own.
fn summarize_lenient(body: &[u8]) -> Result<CompletionSummary, NotACompletion> {
    let completion: CompletionView =
        serde_json::from_slice(body).map_err(|e| NotACompletion::NotJson(e.to_string()))?;
    let choices: Vec<Option<ChoiceView>> = match completion.choices.map(|c| c.get()) {
        // One summary choice per element, so that redactions are written back where their
        // text came from; an element of another shape reads as an empty choice.
        Some(text) if text.starts_with('[') => {
            lenient::list_each::<Option<ChoiceView>>(completion.choices, Field::Content)
                .into_iter()
                .map(Option::flatten)
                .collect()
        }
        _ => {
            return Err(match lenient::error_message(completion.error) {
                Some(message) => NotACompletion::Error(message),
                None => NotACompletion::NoChoices,
            });
        }
    };
    Ok(CompletionSummary {
        model: lenient::string(completion.model, Field::Model).map(Cow::into_owned),
        usage: lenient::usage(completion.usage),
        finish_reason: choices
            .iter()
            .flatten()
            .next()
            .and_then(|c| lenient::string(c.finish_reason, Field::FinishReason))
            .map(Cow::into_owned),
        choices: choices
            .iter()
            .map(|c| {
                match c
                    .as_ref()
                    .and_then(|c| lenient::nested::<MessageView>(c.message, Field::Content))
                {
                    Some(m) => message_text(&m),
                    None => ChoiceText::default(),
                }
            })
            .collect(),
    })
}

/// A message's text (content and refusal) and tool calls.
fn message_text(m: &MessageView) -> ChoiceText {
    ChoiceText {
        text: lenient::text(m.content, Field::Content)
            .into_iter()
            .chain(lenient::text(m.refusal, Field::Content))
            .collect(),
        tool_calls: lenient::list::<CallView>(m.tool_calls, Field::ToolCalls)
            .into_iter()
            .filter_map(|c| lenient::nested::<FunctionView>(c.function, Field::ToolCalls))
            .map(|f| ToolCall {
                name: lenient::string(f.name, Field::ToolCalls)
                    .unwrap_or_default()
                    .into_owned(),
                arguments: lenient::string(f.arguments, Field::ToolCalls)
                    .unwrap_or_default()
                    .into_owned(),
            })
            .collect(),
    }
}

/// A whole chat completion re-told as the `chat.completion.chunk` events a stream of it
/// would have carried, `data: [DONE]` included: one chunk per choice with its whole message
/// as the delta (tool calls numbered by `index`), then a usage-only chunk when the answer
/// has usage.
///
/// Errors as [`summarize_completion`] does, for the same bodies.
pub fn completion_as_events(body: &[u8]) -> Result<bytes::Bytes, NotACompletion> {
    summarize_completion(body)?;
    // Values are carried over raw (a number beyond f64 stays as written, the last of
    // duplicate keys wins, as in the summary); bytes that are not UTF-8 (which the
    // summary skips in fields it does not read) become U+FFFD, as an event stream's are.
    let text = String::from_utf8_lossy(body);
    let whole: RawObject = serde_json::from_str(&text).map_err(not_json)?;
    let mut out = String::new();
    let choices: Vec<Box<RawValue>> = whole
        .get("choices")
        .and_then(|c| serde_json::from_str(c.get()).ok())
        .unwrap_or_default();
    for (i, choice) in choices.iter().enumerate() {
        let choice = raw_object(Some(choice));
        let mut delta = raw_object(choice.get("message").map(|m| &**m));
        number_tool_calls(&mut delta);
        let index = match choice.get("index") {
            Some(index) => index.clone(),
            None => to_raw_value(&i).expect("a number"),
        };
        let one = [ChoiceOut {
            index,
            delta,
            finish_reason: raw_field(&choice, "finish_reason"),
        }];
        push_chunk(&mut out, &whole, &one, None)?;
    }
    if let Some(usage) = whole.get("usage").filter(|u| u.get() != "null") {
        push_chunk(&mut out, &whole, &[], Some(usage.clone()))?;
    }
    out.push_str("data: [DONE]\n\n");
    Ok(out.into())
}

/// A JSON object with its values kept raw, in order.
type RawObject = indexmap::IndexMap<String, Box<RawValue>>;

fn not_json(e: serde_json::Error) -> NotACompletion {
    NotACompletion::NotJson(e.to_string())
}

/// `raw` read as an object; anything else is an empty one.
fn raw_object(raw: Option<&RawValue>) -> RawObject {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// A field's raw value, `null` when absent.
fn raw_field(o: &RawObject, name: &str) -> Box<RawValue> {
    o.get(name)
        .cloned()
        .unwrap_or_else(|| RawValue::NULL.to_owned())
}

/// Gives each of a message's tool calls its `index`, as a stream's deltas carry it.
fn number_tool_calls(delta: &mut RawObject) {
    let Some(calls) = delta.get("tool_calls") else {
        return;
    };
    let Some(calls) = serde_json::from_str::<Vec<Box<RawValue>>>(calls.get()).ok() else {
        return;
    };
    let numbered: Vec<Box<RawValue>> = calls
        .into_iter()
        .enumerate()
        .map(
            |(n, call)| match serde_json::from_str::<RawObject>(call.get()) {
                Ok(mut call) => {
                    call.insert("index".into(), to_raw_value(&n).expect("a number"));
                    to_raw_value(&call).expect("raw JSON values serialize")
                }
                Err(_) => call,
            },
        )
        .collect();
    let raw = to_raw_value(&numbered).expect("raw JSON values serialize");
    delta.insert("tool_calls".into(), raw);
}

#[derive(Serialize)]
struct ChoiceOut {
    index: Box<RawValue>,
    delta: RawObject,
    finish_reason: Box<RawValue>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: Box<RawValue>,
    object: &'static str,
    created: Box<RawValue>,
    model: Box<RawValue>,
    choices: &'a [ChoiceOut],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Box<RawValue>>,
}

/// Appends one `chat.completion.chunk` event with the whole answer's id, created and model.
fn push_chunk(
    out: &mut String,
    whole: &RawObject,
    choices: &[ChoiceOut],
    usage: Option<Box<RawValue>>,
) -> Result<(), NotACompletion> {
    let chunk = ChunkOut {
        id: raw_field(whole, "id"),
        object: "chat.completion.chunk",
        created: raw_field(whole, "created"),
        model: raw_field(whole, "model"),
        choices,
        usage,
    };
    // Raw values keep the upstream's white space: a line break in it (a pretty-printed
    // answer) would end the `data:` line. JSON strings hold no raw line breaks, so
    // every one is white space between tokens.
    let json = serde_json::to_string(&chunk).map_err(not_json)?;
    out.push_str("data: ");
    out.push_str(&json.replace(['\n', '\r'], " "));
    out.push_str("\n\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary (or the refusal) as comparable values.
    type Reading = Result<
        (
            Option<String>,
            Option<Usage>,
            Option<String>,
            Vec<ChoiceText>,
        ),
        NotACompletion,
    >;

    fn reading(r: Result<CompletionSummary, NotACompletion>) -> Reading {
        r.map(|s| (s.model, s.usage, s.finish_reason, s.choices))
    }

    // The one-pass reading against the lenient one on common answers and on 30 000 mutations
    // of them (bytes deleted, inserted, replaced): equal wherever the one-pass reading
    // answers, and it must answer often for that to mean something.
    #[test]
    fn the_one_pass_reading_equals_the_lenient_one() {
        let bases: [&[u8]; 7] = [
            br#"{"id":"chatcmpl-1","object":"chat.completion","created":1763769600,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! A short answer.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":28,"completion_tokens":37,"total_tokens":65,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
            br#"{"choices":[{"message":{"content":"h\u00e9llo \"w\"","refusal":"no"},"finish_reason":"length"},{"message":null},{"message":{"content":null}}],"model":null,"usage":null}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#,
            br#"{"choices":[{"message":{"content":"a","tool_calls":null},"finish_reason":null}],"usage":{"prompt_tokens":1}}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            br#"{"error":null,"x":[1,2.5e-3,true,false,null,{"y":"z"}],"choices":[{"message":{"content":[{"type":"text","text":"p"}]}}]}"#,
            br#"{"error":{"message":"boom"}}"#,
        ];
        let inserts = b"\"{}[],: 0-nue\x1f\xc3\\tx";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize % n.max(1)
        };
        let mut read_fast = 0;
        for round in 0..30_000 {
            let mut body = bases[round % bases.len()].to_vec();
            if round >= bases.len() {
                for _ in 0..=next(3) {
                    let at = next(body.len() + 1);
                    match next(3) {
                        0 if at < body.len() => {
                            body.remove(at);
                        }
                        1 if at < body.len() => body[at] = inserts[next(inserts.len())],
                        _ => body.insert(at, inserts[next(inserts.len())]),
                    }
                }
            }
            let fast = std::str::from_utf8(&body)
                .ok()
                .and_then(super::super::chunk_scan::scan_completion)
                .is_some();
            read_fast += usize::from(fast);
            assert_eq!(
                reading(summarize_completion(&body)),
                reading(summarize_lenient(&body)),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(
            read_fast > 5_000,
            "the one-pass reading answered {read_fast} times"
        );
    }

    #[test]
    fn shapes_the_sdks_accept_are_read_not_refused() {
        // tool_calls null, content as parts (thinking + text), completion_tokens null.
        let s = summarize_completion(
            br#"{"choices":[{"message":{"role":"assistant","content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"Hi there"}],"tool_calls":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(s.all_text(), "Hi there");
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert!(s.usage.is_none(), "a null count is estimated, not zero");
        // A choice of an unexpected shape reads as empty, in its place, the others read.
        let s = summarize_completion(
            br#"{"choices":[7,{"message":{"content":"ok"},"finish_reason":null}],"model":null}"#,
        )
        .unwrap();
        assert_eq!((s.all_text().as_str(), s.finish_reason), ("ok", None));
        assert_eq!(s.choices.len(), 2, "one summary choice per element");
        assert_eq!(s.choices[1].text, "ok");
    }

    // Found by the `completion` fuzz target (its seed of the earlier suspicion): a duplicate
    // key anywhere made the derived readers refuse the whole answer (a 502) or skip the
    // element, although every SDK's JSON reader takes the last value.
    #[test]
    fn a_duplicate_key_is_read_as_the_sdks_read_it_the_last_wins() {
        let s = summarize_completion(
            br#"{"choices":[],"model":"a","choices":[{"message":{"content":"x","content":"last"},"finish_reason":"length","finish_reason":"stop"}],"model":"b","usage":{"prompt_tokens":1,"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(s.all_text(), "last");
        assert_eq!(s.model.as_deref(), Some("b"));
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 2))
        );
        assert!(completion_as_events(br#"{"choices":[],"choices":[]}"#).is_ok());
        // Escaped keys are keys too.
        let s =
            summarize_completion(br#"{"ch\u006fices":[{"message":{"content":"hi"}}]}"#).unwrap();
        assert_eq!(s.all_text(), "hi");
    }

    // Found by the `completion` fuzz target: a whole answer to a streamed request was read
    // again through serde_json's `Value`, which refuses what the summary reads (a byte
    // that is not UTF-8 in a field sluice does not read, a number beyond f64): a 502 for a
    // streamed request, the same answer served to a plain one.
    #[test]
    fn an_answer_the_summary_reads_is_retold_as_events_too() {
        let body = b"{\"id\":\"c\xff1\",\"choices\":[{\"message\":{\"content\":\"Hi\"},\"logprobs\":{\"x\":1e400}}],\"model\":\"a\",\"model\":\"b\"}";
        assert!(summarize_completion(body).is_ok());
        let events = completion_as_events(body).unwrap();
        let text = std::str::from_utf8(&events).unwrap();
        assert_eq!(
            text,
            "data: {\"id\":\"c\u{FFFD}1\",\"object\":\"chat.completion.chunk\",\"created\":null,\"model\":\"b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n"
        );
    }

    // Found by the `completion` fuzz target, in the raw re-telling above: a pretty-printed
    // answer's line breaks went into the events' `data:` lines and broke their framing.
    #[test]
    fn a_pretty_printed_answer_is_retold_one_line_per_event() {
        let body = b"{\r\n  \"choices\": [\n    {\"message\": {\"content\": \"a\\nb\"}}\n  ],\n  \"usage\": {\n\"prompt_tokens\": 1, \"completion_tokens\": 2}\n}\n";
        let events = completion_as_events(body).unwrap();
        let text = std::str::from_utf8(&events).unwrap();
        let data: Vec<serde_json::Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(data.len(), 2, "{text}");
        assert_eq!(data[0]["choices"][0]["delta"]["content"], "a\nb");
        assert_eq!(data[1]["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn an_error_envelope_with_a_200_passes_its_message() {
        assert_eq!(
            summarize_completion(
                br#"{"error":{"message":"model overloaded","type":"server_error"}}"#
            )
            .err(),
            Some(NotACompletion::Error("model overloaded".into()))
        );
        assert_eq!(
            summarize_completion(br#"{"choices":null}"#).err(),
            Some(NotACompletion::NoChoices)
        );
    }

    #[test]
    fn a_whole_completion_retold_as_events_reads_the_same() {
        let body = br#"{"id":"c1","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let events = completion_as_events(body).unwrap();
        let text = std::str::from_utf8(&events).unwrap();
        let data: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(data.len(), 3, "{text}");
        assert_eq!(data[2], "[DONE]");
        let first: serde_json::Value = serde_json::from_str(data[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
        let usage: serde_json::Value = serde_json::from_str(data[1]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert!(completion_as_events(br#"{"error":{"message":"no"}}"#).is_err());
    }

    #[test]
    fn a_non_completion_body_is_refused() {
        assert!(summarize_completion(b"<html>").is_err());
        assert!(summarize_completion(br#"{"object":"list"}"#).is_err());
        let s = summarize_completion(
            br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!(
            (s.all_text().as_str(), s.finish_reason.as_deref()),
            ("hi", Some("length"))
        );
    }
}
