//! Eval suites: a JSONL file of chat or Responses API requests, each optionally with the
//! properties its answer should have.
//!
//! In: the file's text. Out: one [`SuiteCase`] per non-blank line, or an error that names
//! the file and the line. Each line is a chat-completions body (with `messages`) or a
//! Responses API body (with `input`, sent to `POST /v1/responses`); two extra keys are taken
//! out before it is sent: `id` (a name for the case; the line number otherwise) and
//! `expect` (an [`Expect`]). `model` may be anything (it is replaced by each version's
//! model), and `stream` is always turned off.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use crate::eval::case::Expect;

/// One request of a suite.
#[derive(Debug, Clone)]
pub(crate) struct SuiteCase {
    /// 1-based line in the file.
    #[expect(dead_code, reason = "set by the loader, read by nothing yet")]
    pub(crate) line: usize,
    pub(crate) id: String,
    /// The chat-completions or Responses body without `id` and `expect`.
    pub(crate) body: Map<String, Value>,
    pub(crate) expect: Option<Expect>,
}

/// Reads and parses a suite file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<SuiteCase>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the suite {}", path.display()))?;
    parse(&path.display().to_string(), &text)
}

/// Parses a suite's text; `name` is how errors call the file.
pub(crate) fn parse(name: &str, text: &str) -> anyhow::Result<Vec<SuiteCase>> {
    let mut cases = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let case = parse_line(number, line).with_context(|| format!("{name}, line {number}"))?;
        if !ids.insert(case.id.clone()) {
            bail!("{name}, line {number}: the id `{}` is used twice", case.id);
        }
        cases.push(case);
    }
    if cases.is_empty() {
        bail!("{name} has no requests (one JSON chat request per line)");
    }
    Ok(cases)
}

fn parse_line(number: usize, line: &str) -> anyhow::Result<SuiteCase> {
    let value: Value = serde_json::from_str(line).context("not JSON")?;
    let Value::Object(mut body) = value else {
        bail!("not a JSON object (each line is one chat-completions or Responses request)");
    };
    let id = match body.remove("id") {
        None => format!("line-{number}"),
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        Some(_) => bail!("`id` must be a non-empty string"),
    };
    let expect = match body.remove("expect") {
        None | Some(Value::Null) => None,
        Some(raw) => {
            let mut expect: Expect = serde_json::from_value(raw).context("`expect`")?;
            if let Some(pattern) = &expect.matches {
                expect.matches_compiled =
                    Some(regex::Regex::new(pattern).context("`expect.matches` is not a regex")?);
            }
            if expect.json_schema_valid
                && !["response_format", "text", "tools"]
                    .iter()
                    .any(|k| body.contains_key(*k))
            {
                bail!(
                    "`expect.json_schema_valid` needs a `response_format` (Responses: `text.format`) or `tools` to check against"
                );
            }
            Some(expect)
        }
    };
    match (body.get("messages"), body.get("input")) {
        (Some(Value::Array(messages)), _) if !messages.is_empty() => {}
        (None, Some(Value::String(text))) if !text.is_empty() => {}
        (None, Some(Value::Array(items))) if !items.is_empty() => {}
        _ => bail!(
            "no `messages` array (a chat-completions request) and no `input` (a Responses request)"
        ),
    }
    Ok(SuiteCase {
        line: number,
        id,
        body,
        expect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::case::Answer;

    #[test]
    fn a_line_that_is_not_json_is_named_with_its_number() {
        let text = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n\nnot json\n";
        let e = parse("s.jsonl", text).unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.starts_with("s.jsonl, line 3: not JSON"),
            "{message}"
        );
    }

    #[test]
    fn id_and_expect_are_taken_out_of_the_body() {
        let text = r#"{"id":"refund","model":"x","messages":[{"role":"user","content":"hi"}],"expect":{"contains":["Refund"],"max_chars":10}}"#;
        let cases = parse("s.jsonl", text).unwrap();
        assert_eq!(cases[0].id, "refund");
        assert!(!cases[0].body.contains_key("expect") && !cases[0].body.contains_key("id"));
        let expect = cases[0].expect.as_ref().unwrap();
        let answer = Answer::answered("A refund, yes.");
        assert_eq!(
            expect.check(&answer),
            [
                ("contains: Refund".to_string(), true),
                ("max_chars".to_string(), false)
            ]
        );
        assert_eq!(Expect::family("contains: Refund"), "contains");
    }

    #[test]
    fn unknown_expectations_and_bad_regexes_are_refused() {
        let unknown =
            r#"{"messages":[{"role":"user","content":"hi"}],"expect":{"containz":["a"]}}"#;
        assert!(format!("{:#}", parse("s", unknown).unwrap_err()).contains("containz"));
        let bad = r#"{"messages":[{"role":"user","content":"hi"}],"expect":{"matches":"("}}"#;
        assert!(format!("{:#}", parse("s", bad).unwrap_err()).contains("not a regex"));
        let no_schema =
            r#"{"messages":[{"role":"user","content":"hi"}],"expect":{"json_schema_valid":true}}"#;
        assert!(format!("{:#}", parse("s", no_schema).unwrap_err()).contains("response_format"));
    }

    #[test]
    fn duplicate_ids_and_empty_suites_are_refused() {
        let line = r#"{"id":"a","messages":[{"role":"user","content":"hi"}]}"#;
        let e = parse("s", &format!("{line}\n{line}\n")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse("s", "\n\n").is_err());
        assert!(parse("s", r#"{"model":"x"}"#).is_err());
    }

    #[test]
    fn a_responses_request_is_a_case_too() {
        let text = r#"{"id":"r","input":"hi","text":{"format":{"type":"json_object"}},"expect":{"json_schema_valid":true}}
{"input":[{"role":"user","content":"hi"}]}"#;
        let cases = parse("s", text).unwrap();
        assert_eq!(cases.len(), 2);
        assert!(parse("s", r#"{"input":""}"#).is_err());
        assert!(parse("s", r#"{"input":[]}"#).is_err());
    }

    #[test]
    fn a_failed_call_meets_no_expectation() {
        let expect = Expect {
            not_contains: vec!["x".into()],
            ..Expect::default()
        };
        assert_eq!(
            expect.check(&Answer::failed("HTTP 500")),
            [("not_contains: x".to_string(), false)]
        );
    }
}
