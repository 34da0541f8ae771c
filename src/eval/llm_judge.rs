//! Pairwise LLM-as-judge: a configured version is asked which of two answers to the same
//! request is better, once with A's answer shown first and once with B's shown first.
//!
//! In: the request and both answers. Out: one [`Verdict`] per order (or none when the
//! judge's reply cannot be read) and their combination into a win, tie or loss for version
//! B against A. A judge that always prefers the first (or second) position gives
//! opposite preferences in the two orders, which combine to a tie: position bias cancels
//! instead of leaking into the win rate.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// Characters of the request shown to the judge; longer conversations are cut at the start.
const REQUEST_EXCERPT_CHARS: usize = 6_000;
/// Characters of each answer shown to the judge.
const ANSWER_EXCERPT_CHARS: usize = 6_000;

const JUDGE_INSTRUCTIONS: &str = "You are an impartial judge comparing two answers to the same request. \
Judge helpfulness, correctness, faithfulness to any requested format, and safety. \
Do not let the order of the answers, their length, or their style sway you. \
Explain briefly if you wish, then end with a last line that is exactly one of:\n\
VERDICT: A\nVERDICT: B\nVERDICT: TIE";

/// Which shown answer the judge preferred, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// The answer shown as "A" (first).
    First,
    /// The answer shown as "B" (second).
    Second,
    Tie,
}

/// The combined result for version B against version A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Win,
    Tie,
    Loss,
}

/// Combines the verdict with A's answer first and the one with B's answer first.
///
/// Each order scores +1 when it prefers B, −1 when it prefers A and 0 for a tie; the sign
/// of the sum is the outcome. Both orders for B is a win; one for B and one tie is a
/// (weaker) win; opposite preferences, which is what position bias produces, are a tie.
pub(crate) fn combine(a_first: Verdict, b_first: Verdict) -> Outcome {
    let score_a_first = match a_first {
        Verdict::First => -1,
        Verdict::Second => 1,
        Verdict::Tie => 0,
    };
    let score_b_first = match b_first {
        Verdict::First => 1,
        Verdict::Second => -1,
        Verdict::Tie => 0,
    };
    match score_a_first + score_b_first {
        s if s > 0 => Outcome::Win,
        s if s < 0 => Outcome::Loss,
        _ => Outcome::Tie,
    }
}

/// Reads a judge's reply. Tried in order, the last match winning within each form:
/// a `VERDICT: X` line (also `verdict = X`, `**Verdict:** [[X]]`), a JSON object with a
/// `verdict`, `winner` or `preference` field, MT-Bench's `[[A]]`/`[[B]]`/`[[C]]`, and a
/// reply that is nothing but the choice (`A`, `"b"`, `Answer A.`, `tie`).
pub(crate) fn parse_verdict(reply: &str) -> Option<Verdict> {
    use std::sync::OnceLock;
    static LINE: OnceLock<regex::Regex> = OnceLock::new();
    static BRACKETS: OnceLock<regex::Regex> = OnceLock::new();
    static BARE: OnceLock<regex::Regex> = OnceLock::new();
    let line = LINE.get_or_init(|| {
        regex::Regex::new(
            r"(?i)verdict\W{0,6}(?:answer\s+|response\s+|assistant\s+)?\[*\s*(a|b|tie)\b",
        )
        .expect("a valid pattern")
    });
    let brackets = BRACKETS.get_or_init(|| {
        regex::Regex::new(r"\[\[\s*(A|B|C|TIE|tie)\s*\]\]").expect("a valid pattern")
    });
    let bare = BARE.get_or_init(|| {
        regex::Regex::new(
            r#"(?i)^\W*(?:(?:answer|response|assistant|option)\s+)?(a|b|tie|draw|equal)\W*$"#,
        )
        .expect("a valid pattern")
    });
    let choice = |word: &str| match word.to_ascii_lowercase().as_str() {
        "a" => Some(Verdict::First),
        "b" => Some(Verdict::Second),
        "tie" | "c" | "draw" | "equal" | "both" | "neither" => Some(Verdict::Tie),
        _ => None,
    };
    if let Some(c) = line.captures_iter(reply).last() {
        return choice(&c[1]);
    }
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(reply.trim()) {
        for key in ["verdict", "winner", "preference", "choice"] {
            if let Some(word) = map.get(key).and_then(Value::as_str) {
                return choice(word.trim());
            }
        }
    }
    if let Some(c) = brackets.captures_iter(reply).last() {
        return choice(&c[1]);
    }
    bare.captures(reply.trim()).and_then(|c| choice(&c[1]))
}

/// The chat request that asks the judge to compare `first` and `second` as answers to
/// `request`. `model` is set by the caller.
pub(crate) fn judge_request(request: &Value, first: &str, second: &str) -> Map<String, Value> {
    let prompt = format!(
        "[Request]\n{}\n[End of request]\n\n[Answer A]\n{}\n[End of answer A]\n\n[Answer B]\n{}\n[End of answer B]\n\n\
         Which answer is better? End with VERDICT: A, VERDICT: B or VERDICT: TIE.",
        render_request(request),
        excerpt(first, ANSWER_EXCERPT_CHARS),
        excerpt(second, ANSWER_EXCERPT_CHARS),
    );
    let body = json!({
        "messages": [
            {"role": "system", "content": JUDGE_INSTRUCTIONS},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
    });
    match body {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The request's conversation as `role: text` lines (a Responses request's instructions
/// and input too), plus its format and tools, so the judge sees what was asked.
fn render_request(request: &Value) -> String {
    let mut out = String::new();
    // A Responses request: its instructions, and its input (a string, or items shaped like
    // messages) in place of messages.
    if let Some(instructions) = request["instructions"].as_str() {
        out.push_str(&format!("instructions: {instructions}\n"));
    }
    if let Some(text) = request["input"].as_str() {
        out.push_str(&format!("user: {text}\n"));
    }
    let items = request["messages"]
        .as_array()
        .or(request["input"].as_array());
    for message in items.into_iter().flatten() {
        let role = message["role"].as_str().unwrap_or("user");
        let text = match &message["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        out.push_str(&format!("{role}: {text}\n"));
    }
    if let Some(format) = request.get("response_format") {
        out.push_str(&format!("(requested response_format: {format})\n"));
    }
    if let Some(format) = request["text"].get("format") {
        out.push_str(&format!("(requested text format: {format})\n"));
    }
    if let Some(tools) = request["tools"].as_array() {
        let names: Vec<&str> = tools
            .iter()
            .filter_map(|t| t["function"]["name"].as_str().or(t["name"].as_str()))
            .collect();
        out.push_str(&format!("(tools offered: {})\n", names.join(", ")));
    }
    // Keep the end of a long conversation: the last turn is what was answered.
    let chars = out.chars().count();
    if chars > REQUEST_EXCERPT_CHARS {
        out = format!(
            "…{}",
            out.chars()
                .skip(chars - REQUEST_EXCERPT_CHARS)
                .collect::<String>()
        );
    }
    out
}

fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// How the two orders of one case came out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Judged {
    /// The verdict with A's answer shown first, then with B's shown first; `None` when the
    /// call failed or its reply could not be read.
    pub(crate) verdicts: [Option<Verdict>; 2],
    /// `None` unless both orders gave a verdict.
    pub(crate) outcome: Option<Outcome>,
    pub(crate) cost_usd: f64,
    pub(crate) tokens: u64,
}

impl Judged {
    pub(crate) fn new(verdicts: [Option<Verdict>; 2], cost_usd: f64, tokens: u64) -> Self {
        let outcome = match verdicts {
            [Some(a_first), Some(b_first)] => Some(combine(a_first, b_first)),
            _ => None,
        };
        Self {
            verdicts,
            outcome,
            cost_usd,
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn position_bias_cancels_to_a_tie() {
        // A judge that always picks the first answer shown.
        assert_eq!(combine(First, First), Outcome::Tie);
        assert_eq!(combine(Second, Second), Outcome::Tie);
    }

    #[test]
    fn consistent_preferences_win_or_lose() {
        assert_eq!(combine(Second, First), Outcome::Win);
        assert_eq!(combine(First, Second), Outcome::Loss);
        assert_eq!(combine(Tie, First), Outcome::Win);
        assert_eq!(combine(First, Tie), Outcome::Loss);
        assert_eq!(combine(Tie, Tie), Outcome::Tie);
    }

    #[test]
    fn verdicts_are_read_from_many_reply_shapes() {
        let cases = [
            ("VERDICT: A", Some(First)),
            ("Both are fine, but B is clearer.\nVERDICT: B", Some(Second)),
            ("**Verdict:** [[B]]", Some(Second)),
            ("verdict = tie", Some(Tie)),
            ("A is worse. Final verdict: Answer B", Some(Second)),
            (r#"{"winner": "A", "reason": "shorter"}"#, Some(First)),
            ("My decision: [[C]]", Some(Tie)),
            ("[[A]]", Some(First)),
            ("B", Some(Second)),
            ("  \"a\".", Some(First)),
            ("Answer B", Some(Second)),
            ("Tie", Some(Tie)),
            ("the gateway routes each request", None),
            ("", None),
        ];
        for (reply, want) in cases {
            assert_eq!(parse_verdict(reply), want, "{reply:?}");
        }
    }

    #[test]
    fn the_judge_sees_the_request_and_both_answers_labelled() {
        let request = json!({"messages": [{"role": "user", "content": "Where is my parcel?"}],
            "tools": [{"type": "function", "function": {"name": "track"}}]});
        let body = judge_request(&request, "first answer", "second answer");
        let prompt = body["messages"][1]["content"].as_str().unwrap();
        assert!(prompt.contains("user: Where is my parcel?"));
        assert!(prompt.contains("tools offered: track"));
        let a = prompt.find("[Answer A]\nfirst answer").unwrap();
        let b = prompt.find("[Answer B]\nsecond answer").unwrap();
        assert!(a < b);
        let responses = json!({"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Where?"}]}],
            "text": {"format": {"type": "json_object"}}, "tools": [{"type": "function", "name": "track"}]});
        let body = judge_request(&responses, "x", "y");
        let prompt = body["messages"][1]["content"].as_str().unwrap();
        for part in [
            "instructions: Be brief.",
            "user: Where?",
            "text format",
            "tools offered: track",
        ] {
            assert!(prompt.contains(part), "{part} in {prompt}");
        }
        assert_eq!(
            Judged::new([Some(Second), None], 0.0, 0).outcome,
            None,
            "one order alone would carry its position bias"
        );
    }
}
