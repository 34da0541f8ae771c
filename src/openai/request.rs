//! What sluice reads of a request body (chat or Responses), beyond the fields `pipeline`
//! parses: the texts a client wrote.

use serde_json::Value;

/// Calls `visit` on every text of a chat request's `messages`: a string `content`, and the
/// `text` of each part of an array `content`. The one walker over message text (input
/// guardrails mask through it, shadow copies redact through it).
pub(crate) fn for_each_message_text(messages: &mut Value, mut visit: impl FnMut(&mut String)) {
    for message in messages.as_array_mut().into_iter().flatten() {
        match message.get_mut("content") {
            Some(Value::String(text)) => visit(text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(Value::String(text)) = part.get_mut("text") {
                        visit(text);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Calls `visit` on one `instructions` or `input` value (Responses API, embeddings): a
/// string, or a list of strings or of items shaped like messages (a string `content`, or
/// parts with a `text`). Items without text (token arrays, function-call outputs, images)
/// are skipped.
pub(crate) fn for_each_input_text(value: &mut Value, mut visit: impl FnMut(&mut String)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => {
            for item in items.iter_mut() {
                if let Value::String(text) = item {
                    visit(text);
                }
            }
            for_each_message_text(value, visit);
        }
        _ => {}
    }
}

/// Calls `visit` on every text a client wrote in a request: the `messages` of a chat
/// request, the `instructions` and `input` of a Responses request, the `input` of an
/// embeddings request.
pub fn for_each_request_text(request: &mut Value, mut visit: impl FnMut(&mut String)) {
    if let Some(messages) = request.get_mut("messages") {
        for_each_message_text(messages, &mut visit);
    }
    for field in ["instructions", "input"] {
        if let Some(value) = request.get_mut(field) {
            for_each_input_text(value, &mut visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_request_is_visited_in_instructions_and_input() {
        let mut request = serde_json::json!({
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "input_text", "text": "b"}]},
                {"type": "function_call_output", "call_id": "c", "output": "{}"}
            ]
        });
        let mut seen = Vec::new();
        for_each_request_text(&mut request, |t| {
            seen.push(t.clone());
            t.push('!');
        });
        assert_eq!(seen, ["be brief", "a", "b"]);
        assert_eq!(request["input"][1]["content"][0]["text"], "b!");
        let mut plain = serde_json::json!({"input": "hi"});
        for_each_request_text(&mut plain, |t| t.push('!'));
        assert_eq!(plain["input"], "hi!");
        let mut embeddings = serde_json::json!({"input": ["a", "b", [1, 2]]});
        for_each_request_text(&mut embeddings, |t| t.push('!'));
        assert_eq!(embeddings["input"], serde_json::json!(["a!", "b!", [1, 2]]));
    }

    #[test]
    fn both_string_and_part_contents_are_visited() {
        let mut messages = serde_json::json!([
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]},
            {"role": "assistant", "tool_calls": []}
        ]);
        let mut seen = Vec::new();
        for_each_message_text(&mut messages, |t| {
            seen.push(t.clone());
            t.push('!');
        });
        assert_eq!(seen, ["a", "b"]);
        assert_eq!(messages[0]["content"], "a!");
        assert_eq!(messages[1]["content"][0]["text"], "b!");
    }
}
