//! The usage/measurement parser of whole answers (`openai::completion`, `openai::lenient`).
//!
//! Input: an upstream's 2xx body. Checks: reading it never panics; a JSON object with a
//! `choices` list (as any JSON reader takes it: the last of duplicate keys wins) is never
//! refused, and yields one choice per element; an error envelope without `choices` is
//! refused with its message; the body re-told as stream events (for a streamed request
//! answered whole) is refused exactly when the body is, and its events are well framed;
//! output redactions written back into the answer land on the choices they came from
//! (the answer read again says the redacted texts), and never fail on an answer that was
//! read.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice::guardrails::{GuardrailCounters, GuardrailSet};
use sluice::measure::checks::{AnswerChecks, apply_redactions};
use sluice::types::Arm;
use serde_json::Value;
use sluice::openai::completion::{NotACompletion, completion_as_events, summarize_completion};
use sluice::openai::sse::{event_end, parse_event};

fn checks() -> &'static AnswerChecks {
    static CHECKS: OnceLock<AnswerChecks> = OnceLock::new();
    CHECKS.get_or_init(|| {
        let rules = "[[output]]\nname = \"e\"\ndetect = \"email\"\naction = \"redact\"\n[[output]]\nname = \"k\"\ndetect = \"keywords\"\nkeywords = [\"hi\", \"ok\"]\naction = \"redact\"\n";
        let set: GuardrailSet =
            sluice::guardrails::parse_set(std::path::Path::new("f.toml"), "f", rules).unwrap();
        AnswerChecks {
            expect: Default::default(),
            schemas: Arc::default(),
            output: Some(Arc::new(set)),
            on_schema_failure: Default::default(),
            counters: Arc::new(GuardrailCounters::default()),
            version: "v1".into(),
            arm: Arm::Stable,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let summary = summarize_completion(data);
    let events = completion_as_events(data);
    assert_eq!(summary.is_ok(), events.is_ok(), "{:?}", events.as_ref().err());
    let reference: Option<Value> = serde_json::from_slice(data).ok();
    let choices = reference
        .as_ref()
        .and_then(|v| v.get("choices"))
        .and_then(Value::as_array);
    match (&summary, choices) {
        (Ok(s), Some(choices)) => assert_eq!(s.choices.len(), choices.len()),
        (Err(e), Some(_)) => panic!("a body with a `choices` list was refused: {e}"),
        (Ok(_), None) if reference.is_some() => panic!("a body without `choices` was read"),
        _ => {}
    }
    if let (Err(NotACompletion::NoChoices), Some(v)) = (&summary, &reference) {
        assert!(
            v.get("error").is_none_or(Value::is_null),
            "an error envelope's message is passed on"
        );
    }
    if let Ok(s) = &summary {
        let _ = (s.all_text(), s.chars());
        let verdict = checks().check_whole(&s.choices);
        if verdict.redacted.iter().any(Option::is_some) {
            let out = apply_redactions(data, &verdict.redacted)
                .expect("an answer that was read can be redacted");
            let again = summarize_completion(&out).expect("the redacted answer reads");
            assert_eq!(again.choices.len(), s.choices.len());
            for (i, text) in verdict.redacted.iter().enumerate() {
                if let Some(text) = text {
                    assert_eq!(&again.choices[i].text, text, "choice {i}");
                }
            }
        }
    }
    if let Ok(events) = events {
        let mut rest = &events[..];
        let mut count = 0;
        while let Some(end) = event_end(rest) {
            let data = parse_event(&rest[..end]).data.expect("every event has data");
            if &*data != b"[DONE]" {
                // Raw: a number beyond f64 is carried over as written, which `Value` refuses.
                let chunk: indexmap::IndexMap<String, Box<serde_json::value::RawValue>> =
                    serde_json::from_slice(&data).expect("each chunk is JSON");
                assert_eq!(chunk["object"].get(), r#""chat.completion.chunk""#);
            }
            rest = &rest[end..];
            count += 1;
        }
        assert!(rest.is_empty() && count >= 1, "the events are whole");
    }
});
