//! The admin API's OpenAPI 3.1 document, served without a credential at
//! `GET /admin/v1/openapi.json`.
//!
//! Kept by hand in `openapi.json` beside this file (one reviewable JSON file, embedded in the
//! binary); only `info.version` is filled in here, from the crate's version. It documents
//! every admin route under `/admin/v1` and, under the `gateway` tag, the OpenAI-compatible
//! data plane, `/metrics` and `/healthz`. `tests/openapi.rs` proves it matches the router:
//! every documented admin operation answers 401 without the admin token, undocumented paths
//! answer 404, and every documented admin operation runs against a real sluice with each
//! status and body checked against this document.

use std::sync::LazyLock;

use axum::Json;
use serde_json::Value;

/// The document as kept in the repository, before the version is filled in.
const SOURCE: &str = include_str!("openapi.json");

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut doc: Value = serde_json::from_str(SOURCE).expect("src/http/openapi.json is JSON");
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    doc
});

/// `GET /admin/v1/openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(DOCUMENT.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_and_carries_the_crate_version() {
        assert_eq!(DOCUMENT["openapi"], "3.1.0");
        assert_eq!(DOCUMENT["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(DOCUMENT["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }

    #[test]
    fn every_reference_points_at_a_component() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.push(r);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&DOCUMENT, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("only local references");
            assert!(DOCUMENT.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }
}
