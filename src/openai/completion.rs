//! A whole (non-streamed) chat completion read for measurement, checks, shadow copies and
//! eval replays: its text per choice, tool calls, usage, finish reason and answering model.

use std::borrow::Cow;

use serde::Deserialize;

use crate::measure::schema::ToolCall;
use crate::types::Usage;

/// One choice of an answer, as the checks need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceText {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
}

/// The usage object of an OpenAI answer, streamed or not.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct UsageView {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl From<UsageView> for Usage {
    fn from(u: UsageView) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            estimated: false,
        }
    }
}

/// What a whole (non-streamed) chat completion says, for measurement and checks.
pub struct CompletionSummary {
    /// The `model` the upstream says answered.
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub choices: Vec<ChoiceText>,
    pub finish_reason: Option<String>,
}

impl CompletionSummary {
    pub fn all_text(&self) -> String {
        self.choices.iter().map(|c| c.text.as_str()).collect()
    }

    pub fn chars(&self) -> u64 {
        self.choices
            .iter()
            .map(|c| c.text.chars().count() as u64)
            .sum()
    }
}

/// Reads a non-streamed answer; an error means the body is not a chat completion.
pub fn summarize_completion(body: &[u8]) -> Result<CompletionSummary, String> {
    #[derive(Deserialize)]
    struct Completion<'a> {
        #[serde(borrow)]
        choices: Vec<Choice<'a>>,
        usage: Option<UsageView>,
        #[serde(default)]
        model: Option<String>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        message: Option<Message<'a>>,
        finish_reason: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(default, borrow)]
        content: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        refusal: Option<Cow<'a, str>>,
        #[serde(default)]
        tool_calls: Vec<Call>,
    }
    #[derive(Deserialize)]
    struct Call {
        function: Function,
    }
    #[derive(Deserialize)]
    struct Function {
        #[serde(default)]
        name: String,
        #[serde(default)]
        arguments: String,
    }
    let completion: Completion = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choices = completion
        .choices
        .iter()
        .map(|c| match &c.message {
            Some(m) => ChoiceText {
                text: m
                    .content
                    .as_deref()
                    .into_iter()
                    .chain(m.refusal.as_deref())
                    .collect(),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .map(|t| ToolCall {
                        name: t.function.name.clone(),
                        arguments: t.function.arguments.clone(),
                    })
                    .collect(),
            },
            None => ChoiceText::default(),
        })
        .collect();
    Ok(CompletionSummary {
        model: completion.model.clone(),
        usage: completion.usage.map(Usage::from),
        choices,
        finish_reason: completion
            .choices
            .first()
            .and_then(|c| c.finish_reason.as_ref())
            .map(|r| r.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
