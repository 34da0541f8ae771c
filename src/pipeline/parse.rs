//! Parse: the first stage. A chat request is read for what the gateway needs (`model`,
//! `stream`, `user`, `stream_options.include_usage`); every other field stays raw JSON and
//! goes upstream byte for byte. A request gets its id here.

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// A request's top-level fields in the client's order. foldhash instead of SipHash: the
/// map is built and read a dozen times on every request, and its seed is per process.
pub(super) type Fields = IndexMap<String, Box<RawValue>, foldhash::fast::RandomState>;

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
        let fields: Fields = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                ApiError::InvalidJson("the body must be a JSON object".into())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
        let model = match fields
            .get("model")
            .map(|raw| serde_json::from_str::<String>(raw.get()))
        {
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
            .map(|raw| serde_json::from_str::<Option<bool>>(raw.get()))
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
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
            .and_then(|v| v.get("include_usage").and_then(|u| u.as_bool()))
            .unwrap_or(false);
        let user = fields
            .get("user")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
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
        self.fields.get(field).map(|raw| raw.get())
    }

    pub(crate) fn set_raw(&mut self, field: &str, value: Box<RawValue>) {
        self.fields.insert(field.to_owned(), value);
    }

    /// The body to send upstream: `model` replaced, and usage asked for when `ask_usage`.
    pub fn upstream_body(&mut self, model: &str, ask_usage: bool) -> Bytes {
        let model = serde_json::value::to_raw_value(model).expect("a string serializes");
        self.fields.insert("model".into(), model);
        if ask_usage {
            let mut options = self
                .fields
                .get("stream_options")
                .and_then(|raw| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                        .ok()
                })
                .unwrap_or_default();
            options.insert("include_usage".into(), true.into());
            let raw = serde_json::value::to_raw_value(&options).expect("a map serializes");
            self.fields.insert("stream_options".into(), raw);
        }
        Bytes::from(serde_json::to_vec(&self.fields).expect("raw JSON values serialize"))
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
    // times these 32 table lookups on every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (ms << 80) | random;
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    for shift in (0..32).rev() {
        id.push(char::from(HEX[((digits >> (shift * 4)) & 0xf) as usize]));
    }
    id
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
