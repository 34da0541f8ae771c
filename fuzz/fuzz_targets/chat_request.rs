//! The chat-completions request parser and the `model` rewrite (`pipeline::ChatRequest`).
//!
//! Input: a request body. Checks: parsing never panics; a body it accepts is a JSON object
//! with a non-empty string `model`; the body sent upstream is a JSON object whose `model`
//! is the version's, with every other field as the client sent it, and with
//! `stream_options.include_usage` set (other stream options kept) when usage is asked for,
//! and byte for byte the body the previous parser (serde_json into a map of raw values,
//! serialized again) sent: the client's order, spelling and numbers, a name sent twice
//! once at its first place with its last value.
#![no_main]

use indexmap::IndexMap;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use sluice::pipeline::ChatRequest;

/// The upstream body as the previous parser built it; `None` where it refused the body.
fn reference_body(data: &[u8], model: &str, ask_usage: bool) -> Option<Vec<u8>> {
    let mut fields: IndexMap<String, Box<RawValue>> = serde_json::from_slice(data).ok()?;
    fields.insert("model".into(), serde_json::value::to_raw_value(model).ok()?);
    if ask_usage {
        let mut options = fields
            .get("stream_options")
            .and_then(|raw| serde_json::from_str::<serde_json::Map<String, Value>>(raw.get()).ok())
            .unwrap_or_default();
        options.insert("include_usage".into(), true.into());
        fields.insert(
            "stream_options".into(),
            serde_json::value::to_raw_value(&options).ok()?,
        );
    }
    serde_json::to_vec(&fields).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut request) = ChatRequest::parse(data) else {
        return;
    };
    assert!(!request.model.is_empty());
    // The reference reading; absent when a number is beyond f64 (the parser keeps it raw).
    let original: Option<Value> = serde_json::from_slice(data).ok();
    if let Some(original) = &original {
        let object = original.as_object().expect("an accepted body is an object");
        assert_eq!(object["model"].as_str(), Some(request.model.as_str()));
        assert_eq!(
            request.stream,
            object.get("stream").and_then(Value::as_bool).unwrap_or(false)
        );
    }
    let ask_usage = data.len() % 2 == 0;
    let body = request.upstream_body("rewritten-model", ask_usage);
    let reference = reference_body(data, "rewritten-model", ask_usage)
        .expect("the previous parser took every body this one takes");
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&reference),
        "the upstream body differs from the previous parser's"
    );
    let sent: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        // Only a number beyond f64 makes the reference reading fail, on both sides.
        Err(_) if original.is_none() => return,
        Err(e) => panic!("the upstream body is not JSON: {e}"),
    };
    let sent = sent.as_object().expect("the upstream body is an object");
    assert_eq!(sent["model"], "rewritten-model");
    let Some(original) = original else { return };
    let original = original.as_object().unwrap();
    for (key, value) in original {
        match key.as_str() {
            "model" => {}
            "stream_options" if ask_usage => {
                if let Some(options) = value.as_object() {
                    for (k, v) in options {
                        if k != "include_usage" {
                            assert_eq!(&sent[key][k], v, "stream_options.{k}");
                        }
                    }
                }
            }
            _ => assert_eq!(&sent[key], value, "{key}"),
        }
    }
    if ask_usage {
        assert_eq!(sent["stream_options"]["include_usage"], true);
    }
    let added = usize::from(ask_usage && !original.contains_key("stream_options"));
    assert_eq!(sent.len(), original.len() + added, "no field lost or added");
    // The rewritten body reads back as the same request.
    let again = ChatRequest::parse(&body).expect("the upstream body parses");
    assert_eq!(again.model, "rewritten-model");
    assert_eq!(again.stream, request.stream);
    assert_eq!(again.user, request.user);
    // The walker over the client's texts (input guardrails, shadow redaction) takes any shape.
    let mut whole = Value::Object(original.clone());
    sluice::openai::request::for_each_request_text(&mut whole, |t| t.push('!'));
});
