//! Structured-output checks: does the answer fit what the request asked for?
//!
//! In: the request's `response_format` and `tools`, and the finished answer's text and
//! tool calls. Out: a `SchemaVerdict`. `json_schema` answers are validated with the
//! jsonschema crate (each distinct schema compiled once, kept in a bounded cache keyed
//! by its hash; built without remote `$ref` resolution, so a client's schema cannot make
//! the gateway fetch URLs); `json_object` answers must parse as JSON objects; each tool
//! call's arguments must validate against that tool's `parameters`.

use std::hash::Hasher;
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;
use siphasher::sip::SipHasher13;

/// Distinct compiled schemas kept.
const SCHEMA_CACHE_CAPACITY: u64 = 1_000;

/// What a request expects of its answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectation {
    pub(crate) response: ResponseFormat,
    /// Tool name → its `parameters` schema (as raw JSON text, hashed for the cache).
    pub(crate) tools: Vec<(String, Arc<str>)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    /// The schema's raw JSON text.
    JsonSchema(Arc<str>),
}

impl Expectation {
    /// Reads `response_format` and `tools` from a request body's raw fields.
    pub(crate) fn from_request(response_format: Option<&str>, tools: Option<&str>) -> Self {
        let response = response_format
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .map(|v| match v["type"].as_str() {
                Some("json_object") => ResponseFormat::JsonObject,
                Some("json_schema") => match v["json_schema"].get("schema") {
                    Some(schema) => ResponseFormat::JsonSchema(schema.to_string().into()),
                    None => ResponseFormat::Text,
                },
                _ => ResponseFormat::Text,
            })
            .unwrap_or_default();
        let tools = tools
            .and_then(|raw| serde_json::from_str::<Vec<Value>>(raw).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let name = f.get("name")?.as_str()?.to_owned();
                let params = f.get("parameters")?;
                Some((name, Arc::from(params.to_string())))
            })
            .collect();
        Self { response, tools }
    }

    /// Whether the request asked for structure at all (the schema gate's denominator).
    pub(crate) fn asks(&self) -> bool {
        self.response != ResponseFormat::Text || !self.tools.is_empty()
    }
}

/// A tool call of the answer: the function's name and its arguments as sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    pub(crate) arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SchemaVerdict {
    /// The request asked for no structure.
    NotAsked,
    Pass,
    /// `path` is where in the answer it broke (a JSON pointer, `tool_calls[i]` for tools).
    Fail {
        path: String,
        reason: String,
    },
}

impl SchemaVerdict {
    /// `Some(failed)` when the request asked for structure.
    pub(crate) fn failed(&self) -> Option<bool> {
        match self {
            SchemaVerdict::NotAsked => None,
            SchemaVerdict::Pass => Some(false),
            SchemaVerdict::Fail { .. } => Some(true),
        }
    }
}

/// Checks answers against their requested schema, compiling each distinct schema once (a
/// bounded cache shared by every request).
pub struct SchemaChecker {
    compiled: moka::sync::Cache<u64, Arc<Validator>>,
}

impl Default for SchemaChecker {
    fn default() -> Self {
        Self {
            compiled: moka::sync::Cache::new(SCHEMA_CACHE_CAPACITY),
        }
    }
}

impl SchemaChecker {
    /// The compiled validator of a schema, or `None` when the schema does not compile
    /// (then nothing can be said of the answer; the upstream usually refuses such requests).
    fn validator(&self, schema: &str) -> Option<Arc<Validator>> {
        let mut h = SipHasher13::new();
        h.write(schema.as_bytes());
        let key = h.finish();
        if let Some(v) = self.compiled.get(&key) {
            return Some(v);
        }
        let value: Value = serde_json::from_str(schema).ok()?;
        let validator = Arc::new(jsonschema::validator_for(&value).ok()?);
        self.compiled.insert(key, validator.clone());
        Some(validator)
    }

    pub(crate) fn check(
        &self,
        expect: &Expectation,
        text: &str,
        tool_calls: &[ToolCall],
    ) -> SchemaVerdict {
        if !expect.asks() {
            return SchemaVerdict::NotAsked;
        }
        // An answer that is all tool calls has no text to check against response_format.
        let text_expected = tool_calls.is_empty() || !text.trim().is_empty();
        match &expect.response {
            ResponseFormat::Text => {}
            _ if !text_expected => {}
            ResponseFormat::JsonObject => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => {}
                Ok(_) => return fail("", "the answer is JSON but not an object"),
                Err(e) => return fail("", &format!("the answer is not JSON: {e}")),
            },
            ResponseFormat::JsonSchema(schema) => {
                let answer = match serde_json::from_str::<Value>(text) {
                    Ok(v) => v,
                    Err(e) => return fail("", &format!("the answer is not JSON: {e}")),
                };
                if let Some(validator) = self.validator(schema)
                    && let Err(e) = validator.validate(&answer)
                {
                    return fail(&e.instance_path().to_string(), &e.to_string());
                }
            }
        }
        for (i, call) in tool_calls.iter().enumerate() {
            let Some((_, schema)) = expect.tools.iter().find(|(name, _)| *name == call.name) else {
                if !expect.tools.is_empty() {
                    return fail(
                        &format!("tool_calls[{i}]"),
                        &format!("no tool named `{}` was offered", call.name),
                    );
                }
                continue;
            };
            let args = match serde_json::from_str::<Value>(&call.arguments) {
                Ok(v) => v,
                Err(e) => {
                    return fail(
                        &format!("tool_calls[{i}].arguments"),
                        &format!("not JSON: {e}"),
                    );
                }
            };
            if let Some(validator) = self.validator(schema)
                && let Err(e) = validator.validate(&args)
            {
                return fail(
                    &format!("tool_calls[{i}].arguments{}", e.instance_path()),
                    &e.to_string(),
                );
            }
        }
        SchemaVerdict::Pass
    }
}

fn fail(path: &str, reason: &str) -> SchemaVerdict {
    SchemaVerdict::Fail {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        reason: reason.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA_FORMAT: &str = r#"{"type":"json_schema","json_schema":{"name":"order","schema":{"type":"object","properties":{"id":{"type":"integer"},"status":{"enum":["open","shipped"]}},"required":["id","status"]}}}"#;

    #[test]
    fn a_json_schema_answer_is_validated_and_the_failing_path_named() {
        let checker = SchemaChecker::default();
        let expect = Expectation::from_request(Some(SCHEMA_FORMAT), None);
        assert!(expect.asks());
        assert_eq!(
            checker.check(&expect, r#"{"id": 7, "status": "open"}"#, &[]),
            SchemaVerdict::Pass
        );
        match checker.check(&expect, r#"{"id": 7, "status": "lost"}"#, &[]) {
            SchemaVerdict::Fail { path, .. } => assert_eq!(path, "/status"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            checker.check(&expect, "not json", &[]),
            SchemaVerdict::Fail { .. }
        ));
        // The cache counts entries lazily; settle it before reading the count.
        checker.compiled.run_pending_tasks();
        assert_eq!(checker.compiled.entry_count(), 1, "compiled once, reused");
    }

    #[test]
    fn json_object_answers_must_be_objects() {
        let checker = SchemaChecker::default();
        let expect = Expectation::from_request(Some(r#"{"type":"json_object"}"#), None);
        assert_eq!(
            checker.check(&expect, r#"{"a":1}"#, &[]),
            SchemaVerdict::Pass
        );
        assert!(matches!(
            checker.check(&expect, "[1,2]", &[]),
            SchemaVerdict::Fail { .. }
        ));
    }

    #[test]
    fn tool_arguments_are_validated_against_the_tools_parameters() {
        let checker = SchemaChecker::default();
        let tools = r#"[{"type":"function","function":{"name":"lookup","parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}}]"#;
        let expect = Expectation::from_request(None, Some(tools));
        let call = |args: &str| ToolCall {
            name: "lookup".into(),
            arguments: args.into(),
        };
        assert_eq!(
            checker.check(&expect, "", &[call(r#"{"q":"x"}"#)]),
            SchemaVerdict::Pass
        );
        match checker.check(&expect, "", &[call(r#"{"q":3}"#)]) {
            SchemaVerdict::Fail { path, .. } => assert_eq!(path, "tool_calls[0].arguments/q"),
            other => panic!("{other:?}"),
        }
        let unknown = ToolCall {
            name: "delete_all".into(),
            arguments: "{}".into(),
        };
        assert!(matches!(
            checker.check(&expect, "", &[unknown]),
            SchemaVerdict::Fail { .. }
        ));
    }

    #[test]
    fn plain_requests_are_not_counted() {
        let checker = SchemaChecker::default();
        let expect = Expectation::from_request(Some(r#"{"type":"text"}"#), None);
        assert_eq!(
            checker.check(&expect, "anything", &[]),
            SchemaVerdict::NotAsked
        );
    }
}
