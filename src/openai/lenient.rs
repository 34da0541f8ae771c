//! Reading upstream answers for measurement as leniently as the official SDKs do.
//!
//! Measurement must never decide whether the client gets its answer: a field that is
//! `null` counts as absent, a `content` that is a list of parts yields the text of its
//! `text` parts, and a field of any other unexpected shape is read as unknown — counted
//! under [`unreadable_counts`] (shown in `/metrics` as
//! `sluice_upstream_unreadable_fields_total`), never fatal. Each field is first taken as
//! raw JSON (zero-copy) and then read on its own, so one odd field cannot fail the rest.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::value::RawValue;

/// The fields whose unreadable values are counted, in the order of [`unreadable_counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Content,
    ToolCalls,
    Usage,
    FinishReason,
    Model,
}

impl Field {
    pub(crate) const ALL: [Field; 5] = [
        Field::Content,
        Field::ToolCalls,
        Field::Usage,
        Field::FinishReason,
        Field::Model,
    ];

    /// The field's name in OpenAI's answer, the metric's `field` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Field::Content => "content",
            Field::ToolCalls => "tool_calls",
            Field::Usage => "usage",
            Field::FinishReason => "finish_reason",
            Field::Model => "model",
        }
    }
}

static UNREADABLE: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// How many values of each field could not be read since the process started.
pub(crate) fn unreadable_counts() -> [(Field, u64); 5] {
    Field::ALL.map(|f| (f, UNREADABLE[f as usize].load(Ordering::Relaxed)))
}

fn unreadable<T>(field: Field) -> Option<T> {
    note_unreadable(field);
    None
}

/// Counts a value of `field` that was read but cannot be believed (a token count above
/// [`crate::types::MAX_REPORTED_TOKENS`]), as one that could not be read.
pub(crate) fn note_unreadable(field: Field) {
    UNREADABLE[field as usize].fetch_add(1, Ordering::Relaxed);
}

/// Raw JSON of a field; `null` and absent are both `None`.
pub(crate) type Raw<'a> = Option<&'a RawValue>;

fn present(raw: Raw<'_>) -> Option<&str> {
    raw.map(RawValue::get).filter(|t| *t != "null")
}

#[derive(Deserialize)]
#[doc(hidden)]
pub(crate) struct Borrowed<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Declares a struct of [`Raw`] fields read from a JSON object as every JSON reader the
/// SDKs use reads one: the last of duplicate keys wins (a derived `Deserialize` refuses
/// them, and one duplicate key made a whole answer unreadable), unknown keys are skipped,
/// and a value of any shape is taken raw, to be read on its own.
///
/// `object! { struct Name<'a> { field: "key", … } }`
macro_rules! object {
    ($(#[$meta:meta])* $vis:vis struct $name:ident<'a> { $($field:ident : $key:literal),* $(,)? }) => {
        $(#[$meta])*
        $vis struct $name<'a> {
            $($field: $crate::openai::lenient::Raw<'a>,)*
        }

        impl<'de> serde::Deserialize<'de> for $name<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $name<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        let mut out = $name { $($field: None,)* };
                        while let Some($crate::openai::lenient::Borrowed(key)) = map.next_key()? {
                            match &*key {
                                $($key => out.$field = map.next_value()?,)*
                                _ => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(Fields)
            }
        }
    };
}
pub(crate) use object;

/// A nested object (a choice's `message` or `delta`, a call's `function`), read as `T`
/// (declared with [`object!`]); one of another shape is counted and absent.
pub(crate) fn nested<'a, T: Deserialize<'a>>(raw: Raw<'a>, field: Field) -> Option<T> {
    let text = present(raw)?;
    match serde_json::from_str::<T>(text) {
        Ok(t) => Some(t),
        Err(_) => unreadable(field),
    }
}

/// An `index` (of a stream's choice or tool call): absent or `null` is 0; `None` (counted)
/// when it is not a non-negative integer, and the element is then skipped.
pub(crate) fn index(raw: Raw<'_>, field: Field) -> Option<usize> {
    match present(raw) {
        None => Some(0),
        Some(text) => text.parse().ok().or_else(|| unreadable(field)),
    }
}

/// A string field (`finish_reason`, `model`, a function's `name` or `arguments`).
pub(crate) fn string<'a>(raw: Raw<'a>, field: Field) -> Option<Cow<'a, str>> {
    let text = present(raw)?;
    match serde_json::from_str::<Borrowed<'a>>(text) {
        Ok(Borrowed(s)) => Some(s),
        Err(_) => unreadable(field),
    }
}

/// A message's (or delta's) `content` or `refusal`: a string, or a list of parts whose
/// `text`-typed parts (`text`, `output_text`) are joined; other parts (`thinking`,
/// `image_url`, …) carry no answer text.
pub(crate) fn text<'a>(raw: Raw<'a>, field: Field) -> Option<Cow<'a, str>> {
    let text = present(raw)?;
    if text.starts_with('"') {
        return string(raw, field);
    }
    object! {
        struct Part<'a> {
            kind: "type",
            text: "text",
        }
    }
    match serde_json::from_str::<Vec<Part<'a>>>(text) {
        Ok(parts) => Some(
            parts
                .iter()
                .filter(|p| {
                    string(p.kind, field).is_none_or(|k| matches!(&*k, "text" | "output_text"))
                })
                .filter_map(|p| string(p.text, field))
                .collect::<String>()
                .into(),
        ),
        Err(_) => unreadable(field),
    }
}

/// A token count: a non-negative integer; anything else is absent.
fn count(raw: Raw<'_>, field: Field) -> Option<u64> {
    let text = present(raw)?;
    match text.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => unreadable(field),
    }
}

/// The `usage` object: both counts, or `None` when either is missing, `null` or unreadable
/// (sluice then estimates both, marked `estimated`).
pub(crate) fn usage(raw: Raw<'_>) -> Option<crate::types::Usage> {
    object! {
        struct View<'a> {
            prompt_tokens: "prompt_tokens",
            completion_tokens: "completion_tokens",
        }
    }
    let text = present(raw)?;
    let Ok(view) = serde_json::from_str::<View<'_>>(text) else {
        return unreadable(Field::Usage);
    };
    Some(crate::types::Usage {
        prompt_tokens: count(view.prompt_tokens, Field::Usage)?,
        completion_tokens: count(view.completion_tokens, Field::Usage)?,
        estimated: false,
    })
}

/// A list field (`tool_calls`): each element read as `T` on its own; elements that do not
/// fit, and a value that is not a list, are counted and skipped.
pub(crate) fn list<'a, T: Deserialize<'a>>(raw: Raw<'a>, field: Field) -> Vec<T> {
    list_each(raw, field).into_iter().flatten().collect()
}

/// A list whose positions matter (a whole answer's `choices`: redactions are written back
/// by position): one entry per element, `None` (counted) for an element that does not fit;
/// a value that is not a list is counted and empty.
pub(crate) fn list_each<'a, T: Deserialize<'a>>(raw: Raw<'a>, field: Field) -> Vec<Option<T>> {
    let Some(text) = present(raw) else {
        return Vec::new();
    };
    let Ok(items) = serde_json::from_str::<Vec<&'a RawValue>>(text) else {
        unreadable::<()>(field);
        return Vec::new();
    };
    items
        .into_iter()
        .map(|item| match serde_json::from_str::<T>(item.get()) {
            Ok(t) => Some(t),
            Err(_) => unreadable(field),
        })
        .collect()
}

/// The message of an error envelope (`{"error": {"message": …}}` or `{"error": "…"}`),
/// which some upstreams send with a 200 or as an in-band stream event.
pub(crate) fn error_message(raw: Raw<'_>) -> Option<String> {
    let text = present(raw)?;
    object! {
        struct Envelope<'a> {
            message: "message",
        }
    }
    if text.starts_with('"') {
        return string(raw, Field::Content).map(Cow::into_owned);
    }
    let message = serde_json::from_str::<Envelope<'_>>(text)
        .ok()
        .and_then(|e| string(e.message, Field::Content).map(Cow::into_owned));
    Some(message.unwrap_or_else(|| text.chars().take(500).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn null_is_absent_and_a_part_list_yields_its_text_parts() {
        assert_eq!(text(Some(&raw("null")), Field::Content), None);
        assert_eq!(
            text(Some(&raw(r#""hi""#)), Field::Content).as_deref(),
            Some("hi")
        );
        let parts =
            r#"[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hel"},{"text":"lo"}]"#;
        assert_eq!(
            text(Some(&raw(parts)), Field::Content).as_deref(),
            Some("Hello")
        );
    }

    #[test]
    fn an_unexpected_shape_is_counted_not_fatal() {
        let before = unreadable_counts()[Field::Content as usize].1;
        assert_eq!(text(Some(&raw("42")), Field::Content), None);
        assert!(unreadable_counts()[Field::Content as usize].1 > before);
    }

    #[test]
    fn usage_with_a_null_count_is_absent() {
        assert_eq!(
            usage(Some(&raw(
                r#"{"prompt_tokens":3,"completion_tokens":null}"#
            ))),
            None
        );
        let u = usage(Some(&raw(r#"{"prompt_tokens":3,"completion_tokens":5}"#))).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 5));
    }

    #[test]
    fn a_list_skips_elements_that_do_not_fit() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Call {
            id: u32,
        }
        let items: Vec<Call> = list(Some(&raw(r#"[{"id":1},7,{"id":2}]"#)), Field::ToolCalls);
        assert_eq!(items, [Call { id: 1 }, Call { id: 2 }]);
        assert!(list::<Call>(Some(&raw("null")), Field::ToolCalls).is_empty());
        assert!(list::<Call>(Some(&raw(r#"{"id":1}"#)), Field::ToolCalls).is_empty());
    }

    #[test]
    fn error_envelopes_give_their_message() {
        assert_eq!(
            error_message(Some(&raw(r#"{"message":"overloaded","type":"x"}"#))).as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            error_message(Some(&raw(r#""plain""#))).as_deref(),
            Some("plain")
        );
        assert_eq!(error_message(Some(&raw("null"))), None);
    }
}
