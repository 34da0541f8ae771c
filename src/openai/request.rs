//! What sluice reads of a chat request body, beyond the fields `pipeline` parses.

use serde_json::Value;

/// Calls `visit` on every text of a chat request's `messages`: a string `content`, and the
/// `text` of each part of an array `content`. The one walker over message text (input
/// guardrails mask through it, shadow copies redact through it).
pub fn for_each_message_text(messages: &mut Value, mut visit: impl FnMut(&mut String)) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
