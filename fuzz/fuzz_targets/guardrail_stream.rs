//! The guardrail detectors and redaction across chunks (`guardrails::stream`).
//!
//! Input: a seed byte (which rule set, and where the answer is cut into pieces), then the
//! answer's text. Checks: the pieces a `StreamRedactor` lets out, joined, are exactly the
//! whole text redacted at once; the stream is blocked exactly when the whole text is, and
//! what went out before the block is the start of the whole text's redaction; nothing
//! panics.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::guardrails::GuardrailSet;
use sluice::guardrails::stream::StreamRedactor;

/// The shipped policy, a set that redacts with every detector, and one that blocks.
const SETS: [&str; 3] = [
    include_str!("../../policies/guardrails/default.toml"),
    r#"
[[output]]
name = "emails"
detect = "email"
action = "redact"
[[output]]
name = "phones"
detect = "phone"
action = "redact"
[[output]]
name = "cards"
detect = "payment_card"
action = "redact"
[[output]]
name = "ibans"
detect = "iban"
action = "redact"
[[output]]
name = "ssns"
detect = "us_ssn"
action = "redact"
[[output]]
name = "injections"
detect = "injection"
action = "redact"
[[output]]
name = "words"
detect = "keywords"
keywords = ["secret", "top secret", "naïve"]
action = "redact"
[[output]]
name = "passwords"
detect = "regex"
pattern = "(?i)password\\s{0,4}[:=]\\s{0,4}\\S{1,40}"
action = "redact"
"#,
    r#"
[[output]]
name = "too-long"
detect = "max_chars"
limit = 300
action = "block"
[[output]]
name = "codename"
detect = "keywords"
keywords = ["nightingale"]
action = "block"
[[output]]
name = "emails"
detect = "email"
action = "redact"
"#,
];

fn sets() -> &'static [GuardrailSet] {
    static SETS_LOADED: OnceLock<Vec<GuardrailSet>> = OnceLock::new();
    SETS_LOADED.get_or_init(|| {
        SETS.iter()
            .enumerate()
            .map(|(i, text)| {
                sluice::guardrails::parse_set(Path::new("fuzz.toml"), &format!("set{i}"), text)
                    .expect("the fuzz rule sets load")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, payload)) = split::seed_and_payload(data) else {
        return;
    };
    let text = String::from_utf8_lossy(payload);
    let rules = &sets()[usize::from(seed) % SETS.len()].output;
    let whole = rules.apply(&text);
    let expected = whole.redacted.clone().unwrap_or_else(|| text.to_string());

    let mut redactor = StreamRedactor::default();
    let mut out = String::new();
    let mut blocked = None;
    for piece in split::text_pieces(seed, &text) {
        let released = redactor.push(rules, piece);
        out.push_str(&released.text);
        if released.blocked_by.is_some() {
            blocked = released.blocked_by;
            break;
        }
    }
    if blocked.is_none() {
        let rest = redactor.finish(rules);
        out.push_str(&rest.text);
        blocked = rest.blocked_by;
    }
    assert_eq!(
        blocked.is_some(),
        whole.blocked_by.is_some(),
        "blocked in pieces: {blocked:?}, whole: {:?}",
        whole.blocked_by
    );
    if blocked.is_some() {
        assert!(
            expected.starts_with(&out),
            "what went out before the block is not the start of the whole redaction:\n{out:?}\n{expected:?}"
        );
    } else {
        assert_eq!(out, expected, "redacted in pieces vs whole");
    }
});
