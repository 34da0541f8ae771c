//! Headers across the gateway: which of the client's go upstream, which the provider adds,
//! and which of the upstream's come back.
//!
//! Upstream: the client's `OpenAI-Beta`, its W3C trace context (`traceparent` and
//! `tracestate`, unless sluice traces the request itself and sends its own span as the
//! parent), and whatever the operator lists in the provider's `forward_headers`; then the
//! provider's static `headers`, `OpenAI-Organization` and `OpenAI-Project`; then sluice's
//! request id as `X-Client-Request-Id`. Never the client's credentials (`Authorization`,
//! `api-key`, cookies) nor hop-by-hop headers: config refuses them in `forward_headers`.
//! Downstream: every upstream header but hop-by-hop ones ([`to_client`]); on an error
//! answer the same ones, bar `Content-Type` ([`to_client_on_error`]), so the SDKs' back-off
//! sees the provider's `retry-after`, `retry-after-ms` and `x-ratelimit-*`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// Client headers that always go upstream.
const ALWAYS_FORWARDED: [&str; 1] = ["openai-beta"];
/// The W3C trace context headers.
const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// Headers that never leave the gateway towards an upstream, whatever the operator lists.
pub(crate) const NEVER_FORWARDED: [&str; 17] = [
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "content-type",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "x-client-request-id",
];

/// Whether an operator may list `name` in `forward_headers`.
pub(crate) fn forwardable(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    HeaderName::from_bytes(lower.as_bytes()).is_ok()
        && !NEVER_FORWARDED.contains(&lower.as_str())
        && !lower.starts_with("x-sluice-")
}

/// The client headers a provider passes on. `sluice_traces`: sluice sends its own
/// `traceparent` (a child of the client's), so the client's is not copied.
pub(crate) fn forwarded_from_client(
    client: &HeaderMap,
    operator_listed: &[HeaderName],
    sluice_traces: bool,
) -> HeaderMap {
    fn copy(out: &mut HeaderMap, client: &HeaderMap, name: &str) {
        for value in client.get_all(name) {
            out.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                value.clone(),
            );
        }
    }
    let mut out = HeaderMap::new();
    for name in ALWAYS_FORWARDED {
        copy(&mut out, client, name);
    }
    for name in TRACE_CONTEXT {
        if !(sluice_traces && name == "traceparent") {
            copy(&mut out, client, name);
        }
    }
    for name in operator_listed {
        if forwardable(name.as_str()) && !out.contains_key(name) {
            copy(&mut out, client, name.as_str());
        }
    }
    out
}

/// Upstream headers the client gets: all but hop-by-hop ones and those sluice sets itself.
/// The upstream's own request id is kept as `x-upstream-request-id`.
pub(crate) fn to_client(upstream: &HeaderMap) -> HeaderMap {
    const DROP: [&str; 9] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "proxy-connection",
        "set-cookie",
    ];
    // Room for the content type and the four headers `respond` adds (id, route, version,
    // arm): growing the map re-hashes it.
    let mut out = HeaderMap::with_capacity(upstream.len() + 5);
    for (name, value) in upstream {
        if DROP.contains(&name.as_str()) || name.as_str().starts_with("x-sluice-") {
            continue;
        }
        if name == "x-request-id" {
            out.insert(
                HeaderName::from_static("x-upstream-request-id"),
                value.clone(),
            );
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    out
}

/// [`to_client`] for an error answer, whose body sluice sends in OpenAI's shape (and so
/// with its own `Content-Type`): the upstream's advice (`retry-after`, `x-ratelimit-*`, its
/// request id, …) reaches the client on errors as on successes.
pub(crate) fn to_client_on_error(upstream: &HeaderMap) -> HeaderMap {
    let mut out = to_client(upstream);
    out.remove(header::CONTENT_TYPE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_never_pass_even_when_listed() {
        let client = headers(&[
            ("authorization", "Bearer sk-sluice-client"),
            ("cookie", "a=b"),
            ("connection", "close"),
            ("openai-beta", "assistants=v2"),
            ("x-tenant", "acme"),
        ]);
        let listed: Vec<HeaderName> = ["authorization", "cookie", "connection", "x-tenant"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        let out = forwarded_from_client(&client, &listed, false);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out["openai-beta"], "assistants=v2");
        assert_eq!(out["x-tenant"], "acme");
        assert!(!forwardable("Authorization") && !forwardable("cookie"));
        assert!(forwardable("X-Tenant"));
    }

    #[test]
    fn the_client_trace_context_passes_unless_sluice_traces() {
        let client = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=1"),
        ]);
        let out = forwarded_from_client(&client, &[], false);
        assert_eq!(out.len(), 2);
        let out = forwarded_from_client(&client, &[], true);
        assert!(out.get("traceparent").is_none());
        assert_eq!(out["tracestate"], "vendor=1");
    }

    #[test]
    fn an_error_answer_keeps_the_upstreams_headers_but_its_content_type() {
        let up = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("retry-after", "3"),
            ("content-type", "text/html"),
            ("connection", "close"),
            ("x-request-id", "up-1"),
        ]);
        let out = to_client_on_error(&up);
        assert_eq!(out["retry-after"], "3");
        assert_eq!(out["x-ratelimit-remaining-requests"], "0");
        assert_eq!(out["x-upstream-request-id"], "up-1");
        assert!(out.get("content-type").is_none() && out.get("connection").is_none());
        assert_eq!(to_client(&up)["content-type"], "text/html");
    }
}
