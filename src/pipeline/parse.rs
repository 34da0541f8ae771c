//! Parse: the first stage. A chat request is read for what the gateway needs (`model`,
//! `stream`, `user`, `stream_options.include_usage`); every other field stays raw JSON and
//! goes upstream byte for byte. A request gets its id here.

use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// A request's top-level fields in the client's order, each a name and its raw JSON value,
/// held as spans of one copy of the body until a value is replaced.
///
/// Spans, not a map of owned names and boxed values: that map cost two allocations a field
/// and a re-serialization of the whole body to rewrite `model` (about 4 000 instructions
/// of a plain request, issue 13); the body sent upstream is now the client's spans with the
/// replaced values spliced in. A name sent twice keeps its first place and its last value,
/// as a map would.
pub(super) struct Fields {
    /// The body, checked to be UTF-8; every span below is into it.
    text: Box<str>,
    members: Vec<Member>,
}

struct Member {
    name: Name,
    value: Value,
}

enum Name {
    /// A name without escapes: its text between the quotes.
    Span(Range<usize>),
    /// A name that had escapes, unescaped, or one sluice added.
    Owned(Box<str>),
}

enum Value {
    Span(Range<usize>),
    Replaced(Box<RawValue>),
}

/// Above this many fields, a name sent twice is found by sorting, not by comparing each
/// pair.
const PAIRWISE_DEDUP_MAX: usize = 16;

impl Fields {
    /// Reads a JSON object's members.
    ///
    /// Errors: serde_json's, for a body that is not JSON (or not UTF-8); an error for which
    /// `is_data()` holds for JSON that is not an object.
    fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let Ok(text) = std::str::from_utf8(body) else {
            // Reading every string as text, serde_json fails on the first byte that is not
            // UTF-8 ("invalid unicode code point at line …", a syntax error) or on whatever
            // comes before it, as it did when it read the fields itself.
            return Err(serde_json::from_slice::<serde_json::Value>(body)
                .err()
                .unwrap_or_else(|| serde::de::Error::custom("the body is not UTF-8")));
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let members = de.deserialize_map(Members { base: text })?;
        de.end()?;
        let mut fields = Self {
            text: text.into(),
            members,
        };
        fields.dedup();
        Ok(fields)
    }

    fn name<'a>(&'a self, member: &'a Member) -> &'a str {
        match &member.name {
            Name::Span(span) => &self.text[span.clone()],
            Name::Owned(name) => name,
        }
    }

    fn position(&self, field: &str) -> Option<usize> {
        // Lengths first: most fields differ in length, and a slice compare is a call.
        self.members.iter().position(|m| match &m.name {
            Name::Span(span) => {
                span.len() == field.len() && self.text.as_bytes()[span.clone()] == *field.as_bytes()
            }
            Name::Owned(name) => **name == *field,
        })
    }

    /// A field's raw JSON text.
    pub(super) fn get(&self, field: &str) -> Option<&str> {
        let member = &self.members[self.position(field)?];
        Some(match &member.value {
            Value::Span(span) => &self.text[span.clone()],
            Value::Replaced(raw) => raw.get(),
        })
    }

    /// Replaces a field's value, or adds the field at the end.
    pub(super) fn set(&mut self, field: &str, value: Box<RawValue>) {
        match self.position(field) {
            Some(at) => self.members[at].value = Value::Replaced(value),
            None => self.members.push(Member {
                name: Name::Owned(field.into()),
                value: Value::Replaced(value),
            }),
        }
    }

    /// Removes a field, keeping the others' order.
    pub(super) fn remove(&mut self, field: &str) {
        if let Some(at) = self.position(field) {
            self.members.remove(at);
        }
    }

    /// Keeps each name once, at its first place with its last value.
    fn dedup(&mut self) {
        let n = self.members.len();
        let mut drop = Vec::new();
        let mut keep_last = |fields: &mut Self, first: usize, later: usize| {
            if drop.is_empty() {
                drop = vec![false; n];
            }
            drop[later] = true;
            let value = std::mem::replace(&mut fields.members[later].value, Value::Span(0..0));
            fields.members[first].value = value;
        };
        if n <= PAIRWISE_DEDUP_MAX {
            for later in 1..n {
                let first = (0..later)
                    .find(|&i| self.name(&self.members[i]) == self.name(&self.members[later]));
                if let Some(first) = first {
                    keep_last(self, first, later);
                }
            }
        } else {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| {
                self.name(&self.members[a])
                    .cmp(self.name(&self.members[b]))
                    .then(a.cmp(&b))
            });
            // Each run of one name is in place order: its first takes each later value.
            let mut run = 0;
            for at in 1..n {
                let (first, later) = (order[run], order[at]);
                if self.name(&self.members[first]) == self.name(&self.members[later]) {
                    keep_last(self, first, later);
                } else {
                    run = at;
                }
            }
        }
        if !drop.is_empty() {
            let mut at = 0;
            self.members.retain(|_| {
                at += 1;
                !drop[at - 1]
            });
        }
    }

    /// The object as JSON: the client's names and values as sent, replaced values spliced in.
    fn to_json(&self) -> Vec<u8> {
        let replaced: usize = self
            .members
            .iter()
            .map(|m| match &m.value {
                Value::Replaced(raw) => raw.get().len(),
                Value::Span(_) => 0,
            })
            .sum();
        let mut out = Vec::with_capacity(self.text.len() + replaced + 32);
        out.push(b'{');
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &member.name {
                Name::Span(span) => {
                    out.push(b'"');
                    out.extend_from_slice(self.text[span.clone()].as_bytes());
                    out.push(b'"');
                }
                Name::Owned(name) => {
                    serde_json::to_writer(&mut out, name).expect("a string serializes");
                }
            }
            out.push(b':');
            out.extend_from_slice(match &member.value {
                Value::Span(span) => self.text[span.clone()].as_bytes(),
                Value::Replaced(raw) => raw.get().as_bytes(),
            });
        }
        out.push(b'}');
        out
    }
}

/// Where `part`, borrowed from `base`, sits in it.
fn span_in(base: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize)
        .checked_sub(base.as_ptr() as usize)
        .expect("serde_json borrows from the text it reads");
    debug_assert!(start + part.len() <= base.len());
    start..start + part.len()
}

/// The members of the body's object, as spans of `base` (the text being deserialized).
struct Members<'a> {
    base: &'a str,
}

impl<'de> Visitor<'de> for Members<'de> {
    type Value = Vec<Member>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Member>, A::Error> {
        let mut members = Vec::with_capacity(8);
        while let Some(name) = map.next_key::<MemberName<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            members.push(Member {
                name: match name {
                    MemberName::Borrowed(name) => Name::Span(span_in(self.base, name)),
                    MemberName::Unescaped(name) => Name::Owned(name.into()),
                },
                value: Value::Span(span_in(self.base, value.get())),
            });
        }
        Ok(members)
    }
}

/// A member's name: borrowed from the body when it has no escapes.
enum MemberName<'de> {
    Borrowed(&'de str),
    Unescaped(String),
}

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName::Unescaped(v.to_owned()))
            }
        }
        d.deserialize_str(Text)
    }
}

/// A chat request with only what the gateway needs parsed; the rest stays raw JSON.
pub struct ChatRequest {
    pub(super) fields: Fields,
    /// The `model` field: the route the client asks for.
    pub model: String,
    /// The `stream` field (absent or null is `false`).
    pub stream: bool,
    /// The `user` field, for `sticky = "user"`.
    pub user: Option<String>,
    /// The client asked for the usage chunk itself.
    pub(crate) client_wants_usage: bool,
}

impl ChatRequest {
    /// Reads a chat-completions body: `model` and `stream` parsed, every other field kept raw.
    ///
    /// # Errors
    /// `ApiError::InvalidJson` when the body is not a JSON object;
    /// `ApiError::InvalidRequest` when `model` is missing or not a non-empty string, or `stream`
    /// is not a boolean.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let fields = Fields::parse(body).map_err(|e| {
            if e.is_data() {
                ApiError::InvalidJson("the body must be a JSON object".into())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
        let model = match fields.get("model").map(serde_json::from_str::<String>) {
            Some(Ok(model)) if !model.is_empty() => model,
            Some(_) => {
                return Err(ApiError::InvalidRequest {
                    message: "`model` must be a non-empty string".into(),
                    param: Some("model"),
                });
            }
            None => {
                return Err(ApiError::InvalidRequest {
                    message: "you must provide a model parameter".into(),
                    param: Some("model"),
                });
            }
        };
        let stream = match fields
            .get("stream")
            .map(serde_json::from_str::<Option<bool>>)
        {
            None => false,
            Some(Ok(flag)) => flag.unwrap_or(false),
            Some(Err(_)) => {
                return Err(ApiError::InvalidRequest {
                    message: "`stream` must be a boolean".into(),
                    param: Some("stream"),
                });
            }
        };
        let client_wants_usage = fields
            .get("stream_options")
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
            .and_then(|v| v.get("include_usage").and_then(|u| u.as_bool()))
            .unwrap_or(false);
        let user = fields
            .get("user")
            .and_then(|raw| serde_json::from_str::<String>(raw).ok());
        Ok(Self {
            fields,
            model,
            stream,
            user,
            client_wants_usage,
        })
    }

    /// A field's raw JSON text, if the client sent it.
    pub(crate) fn raw(&self, field: &str) -> Option<&str> {
        self.fields.get(field)
    }

    pub(crate) fn set_raw(&mut self, field: &str, value: Box<RawValue>) {
        self.fields.set(field, value);
    }

    /// The body to send upstream: `model` replaced, and usage asked for when `ask_usage`.
    pub fn upstream_body(&mut self, model: &str, ask_usage: bool) -> Bytes {
        let model = serde_json::value::to_raw_value(model).expect("a string serializes");
        self.fields.set("model", model);
        if ask_usage {
            let mut options = self
                .fields
                .get("stream_options")
                .and_then(|raw| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw).ok()
                })
                .unwrap_or_default();
            options.insert("include_usage".into(), true.into());
            let raw = serde_json::value::to_raw_value(&options).expect("a map serializes");
            self.fields.set("stream_options", raw);
        }
        Bytes::from(self.fields.to_json())
    }
}

/// A new request id: `req_` and 32 hex digits, the first 12 the Unix time in milliseconds
/// and the other 20 random (80 bits, as unguessable as an id needs to be here).
///
/// Time first, so that ids sort in the order requests began: the `requests` primary key
/// then grows at its end and a batch of records dirties a few index pages. With fully
/// random ids every record dirtied its own leaf page of the key's index, so SQLite wrote a
/// 4 KiB page to its WAL (and again at checkpoint) per record; once the table outgrew the
/// page cache that was ~100 µs of writer time per record, and the writer fell behind and
/// dropped records (issue 13).
pub(crate) fn new_request_id() -> String {
    let ms = u128::from((crate::types::now_ms() as u64) & 0xffff_ffff_ffff);
    let random = rand::random::<u128>() & ((1 << 80) - 1);
    // `format!("req_{ms:012x}{random:020x}")` by hand: the formatting machinery cost ten
    // times these 32 table lookups on every request (and pushing char by char, three).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (ms << 80) | random;
    let mut id = *b"req_00000000000000000000000000000000";
    for (i, digit) in id[4..].iter_mut().enumerate() {
        *digit = HEX[((digits >> ((31 - i) * 4)) & 0xf) as usize];
    }
    String::from_utf8(id.to_vec()).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_their_shape_sort_by_time_and_differ() {
        let before = crate::types::now_ms();
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            let hex = id.strip_prefix("req_").expect("req_ prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            let ms = i64::from_str_radix(&hex[..12], 16).unwrap();
            assert!(ms >= before && ms <= crate::types::now_ms(), "{id}");
        }
        assert_ne!(a, b);
        // An id of a later millisecond sorts after every id of an earlier one.
        let earlier = format!("req_{:012x}{}", before - 1, "f".repeat(20));
        assert!(earlier < a && earlier < b);
    }

    #[test]
    fn unknown_fields_survive_and_model_is_rewritten() {
        let raw = br#"{"model":"chat","messages":[],"seed":7,"x_vendor":{"deep":[1,2]},"n":2}"#;
        let mut req = ChatRequest::parse(raw).unwrap();
        assert_eq!(req.model, "chat");
        let body: serde_json::Value =
            serde_json::from_slice(&req.upstream_body("gpt-4o-2024-08-06", false)).unwrap();
        assert_eq!(body["model"], "gpt-4o-2024-08-06");
        assert_eq!(body["seed"], 7);
        assert_eq!(body["n"], 2);
        assert_eq!(body["x_vendor"]["deep"][1], 2);
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn usage_is_asked_for_without_losing_other_stream_options() {
        let raw = br#"{"model":"chat","stream":true,"stream_options":{"x":1}}"#;
        let mut req = ChatRequest::parse(raw).unwrap();
        assert!(req.stream && !req.client_wants_usage);
        let body: serde_json::Value =
            serde_json::from_slice(&req.upstream_body("m", true)).unwrap();
        assert_eq!(
            body["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
    }

    #[test]
    fn the_upstream_body_keeps_the_clients_text_and_order() {
        let raw = br#"{ "model" : "chat", "messages":[ {"role":"user", "content":"h\u00e9"} ],
            "a\"b": 1, "n": 2.50 }"#;
        let mut req = ChatRequest::parse(raw).unwrap();
        let body = req.upstream_body("gpt-4o", false);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"gpt-4o","messages":[ {"role":"user", "content":"h\u00e9"} ],"a\"b":1,"n":2.50}"#
        );
        assert_eq!(req.raw("a\"b"), Some("1"));
        req.fields.remove("messages");
        req.set_raw("added", RawValue::from_string("[true]".into()).unwrap());
        assert_eq!(
            req.upstream_body("m", false),
            r#"{"model":"m","a\"b":1,"n":2.50,"added":[true]}"#.as_bytes()
        );
    }

    #[test]
    fn a_name_sent_twice_keeps_its_first_place_and_last_value() {
        // As serde_json's map read it before: the reference for every count of fields.
        for fields in [3, PAIRWISE_DEDUP_MAX, PAIRWISE_DEDUP_MAX + 1, 40] {
            let mut members: Vec<String> = (0..fields).map(|i| format!(r#""f{i}":{i}"#)).collect();
            members.insert(0, r#""model":"first""#.into());
            members.push(r#""f1":"again""#.into());
            members.push(r#""model":"last""#.into());
            members.push(r#""f1":"third""#.into());
            let raw = format!("{{{}}}", members.join(","));
            let mut req = ChatRequest::parse(raw.as_bytes()).unwrap();
            assert_eq!(req.model, "last", "{raw}");
            let sent = req.upstream_body("m", false);
            let reference: indexmap::IndexMap<String, serde_json::Value> =
                serde_json::from_str(&raw).unwrap();
            let sent: indexmap::IndexMap<String, serde_json::Value> =
                serde_json::from_slice(&sent).unwrap();
            let names = |m: &indexmap::IndexMap<String, serde_json::Value>| {
                m.keys().cloned().collect::<Vec<_>>()
            };
            assert_eq!(names(&sent), names(&reference), "{raw}");
            assert_eq!(sent.len(), fields + 1, "each name once");
            assert_eq!(sent["f1"], "third");
            assert_eq!(sent["model"], "m");
            assert_eq!(sent[&format!("f{}", fields - 1)], fields - 1);
        }
    }

    #[test]
    fn a_body_not_in_utf8_is_refused_naming_the_bad_byte() {
        let latin1 = b"{\"model\":\"m\",\"messages\":\"caf\xe9\"}";
        match ChatRequest::parse(latin1) {
            Err(ApiError::InvalidJson(message)) => {
                assert!(message.contains("invalid unicode code point"), "{message}");
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(matches!(
            ChatRequest::parse(b"{"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            ChatRequest::parse(b"[1]"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            ChatRequest::parse(b"{}"),
            Err(ApiError::InvalidRequest {
                param: Some("model"),
                ..
            })
        ));
        assert!(matches!(
            ChatRequest::parse(br#"{"model":3}"#),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(matches!(
            ChatRequest::parse(br#"{"model":"m","stream":"yes"}"#),
            Err(ApiError::InvalidRequest {
                param: Some("stream"),
                ..
            })
        ));
    }
}
