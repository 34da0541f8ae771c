//! Token counts for answers whose upstream reported none, with tiktoken-rs.
//!
//! o200k_base for the gpt-4o / gpt-4.1 / gpt-5 / o-series families (and for any model
//! tiktoken does not know, the current default), cl100k_base for gpt-4, gpt-3.5 and older.
//! Message framing follows OpenAI's cookbook: 3 tokens per message, 1 per `name`, 3 to
//! prime the reply.

use serde_json::Value;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    pub(crate) fn for_model(model: &str) -> Self {
        match get_tokenizer(model) {
            Some(
                Tokenizer::Cl100kBase
                | Tokenizer::P50kBase
                | Tokenizer::P50kEdit
                | Tokenizer::R50kBase
                | Tokenizer::Gpt2,
            ) => Encoding::Cl100kBase,
            _ => Encoding::O200kBase,
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens of `text`: exact for its first [`EXACT_BYTES`], extrapolated after (see
    /// [`Tally`]).
    pub(crate) fn count(self, text: &str) -> u64 {
        Tally::new(self).add(text)
    }
}

/// Text an estimate counts exactly; what comes after is counted at the rate (tokens per
/// byte) measured on it. Estimates run on the request path, and BPE costs about a
/// microsecond per 10 bytes: a 4 MB prompt that an upstream refused without usage held the
/// runtime for a second. Extrapolated tokens are as estimated as the rest (the record says
/// `estimated`); for prose the rate of the first 64 KiB is within a few percent of the whole's.
pub(crate) const EXACT_BYTES: usize = 64 * 1024;

/// One estimate's running count: texts are counted exactly until [`EXACT_BYTES`] of them
/// have been, and the rest at the rate measured so far.
pub(crate) struct Tally {
    encoding: Encoding,
    exact_left: usize,
    exact_bytes: u64,
    exact_tokens: u64,
}

impl Tally {
    pub(crate) fn new(encoding: Encoding) -> Self {
        Tally {
            encoding,
            exact_left: EXACT_BYTES,
            exact_bytes: 0,
            exact_tokens: 0,
        }
    }

    /// Tokens of `text`, counted or extrapolated.
    pub(crate) fn add(&mut self, text: &str) -> u64 {
        let (head, rest) = text.split_at(text.floor_char_boundary(self.exact_left));
        let exact = if head.is_empty() {
            0
        } else {
            self.encoding.bpe().count_ordinary(head) as u64
        };
        self.exact_left -= head.len();
        self.exact_bytes += head.len() as u64;
        self.exact_tokens += exact;
        if rest.is_empty() {
            return exact;
        }
        // Text is left over only once the budget is spent, so `exact_bytes` is near
        // `EXACT_BYTES` here, never 0.
        let rate = self.exact_tokens as f64 / self.exact_bytes as f64;
        exact + (rate * rest.len() as f64).round() as u64
    }
}

// The vocabularies load on first use (≈ 0.3 s once, ≈ 60 MB resident for both): only a
// deployment whose upstreams omit usage ever pays for them.

/// Prompt tokens of a chat request body, estimated from its `messages`.
pub(crate) fn count_prompt(encoding: Encoding, body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Messages {
        #[serde(default)]
        messages: Vec<Value>,
    }
    let Ok(request) = serde_json::from_slice::<Messages>(body) else {
        return 0;
    };
    let mut tally = Tally::new(encoding);
    let mut tokens = REPLY_PRIMING;
    for message in &request.messages {
        tokens += TOKENS_PER_MESSAGE;
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            tokens += tally.add(role);
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            tokens += tally.add(name) + TOKENS_PER_NAME;
        }
        match message.get("content") {
            Some(Value::String(text)) => tokens += tally.add(text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        tokens += tally.add(text);
                    }
                }
            }
            _ => {}
        }
        if let Some(Value::Array(calls)) = message.get("tool_calls") {
            for call in calls {
                if let Some(f) = call.get("function") {
                    for field in ["name", "arguments"] {
                        if let Some(text) = f.get(field).and_then(Value::as_str) {
                            tokens += tally.add(text);
                        }
                    }
                }
            }
        }
    }
    tokens
}

/// Input tokens of a Responses API request body, estimated from its `instructions` and
/// `input` (a string, or items whose `content` is a string or parts with `text`), with the
/// chat framing per item.
pub(crate) fn count_input(encoding: Encoding, body: &[u8]) -> u64 {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut tally = Tally::new(encoding);
    let mut tokens = REPLY_PRIMING;
    if let Some(text) = request.get("instructions").and_then(Value::as_str) {
        tokens += TOKENS_PER_MESSAGE + tally.add(text);
    }
    match request.get("input") {
        Some(Value::String(text)) => tokens += TOKENS_PER_MESSAGE + tally.add(text),
        Some(Value::Array(items)) => {
            for item in items {
                tokens += TOKENS_PER_MESSAGE;
                match item.get("content") {
                    Some(Value::String(text)) => tokens += tally.add(text),
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            if let Some(text) = part.get("text").and_then(Value::as_str) {
                                tokens += tally.add(text);
                            }
                        }
                    }
                    _ => {
                        // Function-call outputs and the like carry their text in `output`.
                        if let Some(text) = item.get("output").and_then(Value::as_str) {
                            tokens += tally.add(text);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    tokens
}

/// Tokens of an embeddings request's `input` (strings counted, token arrays taken as they
/// are), without chat framing: embeddings have none.
pub(crate) fn count_embedding_input(encoding: Encoding, body: &Value) -> u64 {
    fn count(tally: &mut Tally, v: &Value) -> u64 {
        match v {
            Value::String(text) => tally.add(text),
            Value::Number(_) => 1,
            Value::Array(items) => items.iter().map(|i| count(tally, i)).sum(),
            _ => 0,
        }
    }
    count(&mut Tally::new(encoding), &body["input"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_families_pick_their_encoding() {
        assert_eq!(
            Encoding::for_model("gpt-4o-2024-08-06"),
            Encoding::O200kBase
        );
        assert_eq!(Encoding::for_model("gpt-4.1-mini"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("gpt-4-0613"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("gpt-3.5-turbo"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("llama-3-70b"), Encoding::O200kBase);
    }

    #[test]
    fn a_long_text_is_counted_exactly_up_to_the_budget_then_at_its_rate() {
        let sentence = "The quick brown fox jumps over the lazy dog, and then it rests. ";
        let text = sentence.repeat(4 * EXACT_BYTES / sentence.len());
        let exact = Encoding::O200kBase.bpe().count_ordinary(&text) as f64;
        let mut tally = Tally::new(Encoding::O200kBase);
        let estimate = tally.add(&text) as f64;
        assert_eq!(
            tally.exact_bytes, EXACT_BYTES as u64,
            "only the budget is encoded"
        );
        assert!(
            (estimate / exact - 1.0).abs() < 0.01,
            "{estimate} vs {exact}"
        );
        // The budget is per estimate: a second text is all extrapolated, at the same rate.
        let again = tally.add(sentence.repeat(100).as_str()) as f64;
        let per_sentence = exact / (text.len() / sentence.len()) as f64;
        assert!(
            (again / (100.0 * per_sentence) - 1.0).abs() < 0.01,
            "{again}"
        );
        assert_eq!(tally.exact_bytes, EXACT_BYTES as u64);
        // Short texts stay exact.
        assert_eq!(Encoding::O200kBase.count(sentence), {
            Encoding::O200kBase.bpe().count_ordinary(sentence) as u64
        });
    }

    #[test]
    fn the_budget_never_splits_a_character() {
        // 'é' is two bytes; after one ASCII byte the budget's end falls inside one (a split
        // there would panic in `split_at`), so the exact part stops a byte short.
        let text = format!("a{}", "é".repeat(EXACT_BYTES));
        let mut tally = Tally::new(Encoding::O200kBase);
        assert!(tally.add(&text) > 0);
        assert_eq!(tally.exact_bytes as usize, EXACT_BYTES - 1);
    }

    #[test]
    fn counts_match_known_tokenizations() {
        // "hello world" is two tokens in both vocabularies.
        assert_eq!(Encoding::O200kBase.count("hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
    }

    #[test]
    fn responses_input_is_counted_as_string_or_items() {
        let plain = br#"{"model":"x","input":"hello world"}"#;
        assert_eq!(count_input(Encoding::O200kBase, plain), 3 + 3 + 2);
        let items = br#"{"model":"x","instructions":"hello world","input":[{"role":"user","content":[{"type":"input_text","text":"hello world"}]}]}"#;
        assert_eq!(
            count_input(Encoding::O200kBase, items),
            3 + (3 + 2) + (3 + 2)
        );
    }

    #[test]
    fn prompt_count_follows_the_cookbook_framing() {
        let body = br#"{"model":"x","messages":[{"role":"system","content":"hello world"},{"role":"user","content":[{"type":"text","text":"hello world"}]}]}"#;
        // 3 priming + 2 × (3 framing + 1 role + 2 content)
        assert_eq!(count_prompt(Encoding::O200kBase, body), 3 + 2 * (3 + 1 + 2));
    }

    #[test]
    fn a_named_message_costs_its_name_and_one_more_token() {
        let e = Encoding::O200kBase;
        let body = br#"{"messages":[{"role":"user","name":"bob","content":"hello world"}]}"#;
        // 3 priming + 3 framing + 1 role + (name + 1) + 2 content
        assert_eq!(count_prompt(e, body), 3 + 3 + 1 + e.count("bob") + 1 + 2);
    }

    #[test]
    fn tool_calls_count_their_names_and_arguments() {
        let e = Encoding::O200kBase;
        let body = br#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"lookup","arguments":"{\"id\": 7}"}}]}]}"#;
        let expected = 3 + 3 + 1 + e.count("lookup") + e.count("{\"id\": 7}");
        assert_eq!(count_prompt(e, body), expected);
        assert_eq!(count_prompt(e, b"not json"), 0);
    }
}
