//! `?pretty` on any admin API call: the JSON answer indented for a person reading it in a
//! terminal (`curl …/stats?pretty`). Without it the answer is compact, as programs want it.
//!
//! A layer, so no handler knows about it: it takes `pretty` out of the query (handlers that
//! read their own query parameters never see it), and re-serializes a JSON answer with
//! two-space indentation. Numbers keep every digit: rounding is for `sluice stats`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

/// Admin answers are small (a page of shadow pairs at most); a larger one passes compact.
const MAX_PRETTY_BYTES: usize = 16 * 1024 * 1024;

pub(crate) async fn layer(mut request: Request, next: Next) -> Response {
    let Some(uri) = without_pretty(request.uri()) else {
        return next.run(request).await;
    };
    *request.uri_mut() = uri;
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PRETTY_BYTES).await else {
        // Too large or broken off: nothing sensible to indent.
        return Response::from_parts(parts, Body::empty());
    };
    let pretty = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| serde_json::to_vec_pretty(&v).ok());
    let body = match pretty {
        Some(mut text) => {
            text.push(b'\n');
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len() as u64));
            Body::from(text)
        }
        None => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// The URI without its `pretty` query parameter when that asks for indentation (`pretty`,
/// `pretty=1`, `pretty=true`); `None` when it does not (no `pretty`, `pretty=0`,
/// `pretty=false`), and the request then goes on untouched.
fn without_pretty(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let mut asked = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "pretty" {
                asked |= !matches!(value, "0" | "false");
                false
            } else {
                true
            }
        })
        .collect();
    if !asked {
        return None;
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    rebuilt.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_is_taken_out_of_the_query_and_the_rest_kept() {
        let uri: Uri = "/admin/v1/rollouts/ro_1/shadow?after=5&pretty&limit=2"
            .parse()
            .unwrap();
        assert_eq!(
            without_pretty(&uri).unwrap().to_string(),
            "/admin/v1/rollouts/ro_1/shadow?after=5&limit=2"
        );
        let uri: Uri = "/admin/v1/routes/chat/stats?pretty=1".parse().unwrap();
        assert_eq!(
            without_pretty(&uri).unwrap().to_string(),
            "/admin/v1/routes/chat/stats"
        );
    }

    #[test]
    fn no_pretty_or_pretty_false_leaves_the_answer_compact() {
        let uri: Uri = "/admin/v1/routes?limit=2".parse().unwrap();
        assert!(without_pretty(&uri).is_none());
        let uri: Uri = "/admin/v1/routes?pretty=false".parse().unwrap();
        assert!(without_pretty(&uri).is_none());
    }
}
