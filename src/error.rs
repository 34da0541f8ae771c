//! Every error a client can see, mapped to an HTTP status and OpenAI's error shape in one place.
//!
//! `{"error": {"message", "type", "param", "code"}}` with the statuses the official SDKs turn
//! into their exception classes. Upstream error bodies that already have that shape are
//! passed on byte for byte.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::rollout::error::RolloutError;
use crate::store::StoreError;
use crate::types::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error(
        "missing bearer token: pass your sluice API key as `Authorization: Bearer sk-sluice-…`"
    )]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    /// The admin token was sent where an API key belongs.
    #[error(
        "invalid API key: this is the admin token, which opens /admin only; call /v1 with an API key (`sluice keys create --workspace ID`)"
    )]
    AdminTokenAsKey,
    /// A gateway API key was sent where the admin token belongs.
    #[error(
        "admin token wrong: this is a gateway API key, which opens /v1 only; the admin API takes `Authorization: Bearer $SLUICE_ADMIN_TOKEN`"
    )]
    KeyAsAdminToken,
    #[error("{0}")]
    UnknownRoute(UnknownModel),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The request's body did not arrive within `[server] body_read_timeout_ms` of its head.
    #[error("the request body did not arrive within {after_ms} ms; send it faster")]
    BodyTimeout { after_ms: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("admin token missing or wrong: pass `Authorization: Bearer $SLUICE_ADMIN_TOKEN`")]
    AdminUnauthorized,
    #[error("the upstream of version `{version}` could not be reached")]
    UpstreamUnreachable { version: String },
    #[error("the upstream of version `{version}` sent an invalid answer: {reason}")]
    UpstreamInvalid { version: String, reason: String },
    #[error("the upstream of version `{version}` did not answer within {after_ms} ms")]
    UpstreamTimeout { version: String, after_ms: u64 },
    /// The upstream answered with an error status; its body is passed on, with its
    /// rate-limit headers (`x-ratelimit-*`, `retry-after`) so a client can back off.
    #[error("the upstream answered {status}")]
    UpstreamStatus {
        status: StatusCode,
        body: Bytes,
        /// Boxed: most errors have none, and `ApiError` travels in every `Result`.
        headers: Box<axum::http::HeaderMap>,
    },
    #[error("the {stage} was blocked by guardrail `{rule}`")]
    GuardrailBlocked { stage: &'static str, rule: String },
    #[error(
        "the answer of version `{version}` does not fit the requested schema at {path}: {reason}"
    )]
    SchemaInvalid {
        version: String,
        path: String,
        reason: String,
    },
    #[error("rate limit reached: {limit} for this workspace; retry in {retry_after_s} s")]
    RateLimited {
        kind: &'static str,
        limit: String,
        retry_after_s: u64,
    },
    /// The database cannot be reached: admin writes are refused until it is back (the
    /// request path goes on with what it has cached).
    #[error(
        "the database is unavailable ({0}); the gateway keeps routing on its last state, retry this change when the database is back"
    )]
    DatabaseUnavailable(String),
    /// A refusal produced by the HTTP framework rather than a handler (a method the path
    /// does not serve, a body it cannot read), re-dressed in OpenAI's shape; the status is
    /// the framework's, the message its text or the status's reason.
    #[error("{message}")]
    Http { status: StatusCode, message: String },
    /// A client address that failed to authenticate too often, or called the admin API
    /// too fast (see `throttle`).
    #[error("too many {what} from this address; retry in {retry_after_s} s")]
    Throttled {
        what: &'static str,
        retry_after_s: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// This replica has not read the routing state yet (`/healthz` at start).
    #[error("not ready: {0}")]
    NotReady(String),
    /// The gateway is stopping because a background task died (`/healthz`).
    #[error("unavailable: {0}; the gateway is stopping so that it is restarted")]
    Unavailable(String),
}

/// A `model` that is no route: what the client is told instead (see
/// `resolve::RoutingTable::explain_unknown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel {
    pub(crate) model: String,
    /// Every route's name, sorted.
    pub(crate) routes: Vec<String>,
    /// The route whose stable or canary version is called `model`.
    pub(crate) version_of: Option<String>,
}

impl std::fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the model `{}` does not exist: it is not a route of this gateway",
            self.model
        )?;
        if let Some(route) = &self.version_of {
            write!(
                f,
                "; `{}` is a version of route `{route}`: send \"model\": \"{route}\" and sluice picks the version",
                self.model
            )?;
        }
        match self.routes.as_slice() {
            [] => write!(f, "; no route is configured"),
            routes => write!(f, "; routes: {}", routes.join(", ")),
        }
    }
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest { .. } | Self::GuardrailBlocked { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::SchemaInvalid { .. } => StatusCode::BAD_GATEWAY,
            Self::MissingKey
            | Self::InvalidKey
            | Self::AdminTokenAsKey
            | Self::KeyAsAdminToken
            | Self::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            Self::UnknownRoute(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RateLimited { .. } | Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UpstreamUnreachable { .. } | Self::UpstreamInvalid { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamStatus { status, .. } => *status,
            Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Http { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotReady(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidJson(_) => ("invalid_request_error", Some("invalid_json")),
            Self::InvalidRequest { .. } => ("invalid_request_error", None),
            Self::MissingKey => ("invalid_request_error", Some("missing_api_key")),
            Self::InvalidKey | Self::AdminTokenAsKey => {
                ("invalid_request_error", Some("invalid_api_key"))
            }
            Self::AdminUnauthorized | Self::KeyAsAdminToken => {
                ("invalid_request_error", Some("invalid_admin_token"))
            }
            Self::UnknownRoute(_) => ("invalid_request_error", Some("model_not_found")),
            Self::NotFound(_) => ("invalid_request_error", Some("not_found")),
            Self::Conflict(_) => ("invalid_request_error", Some("conflict")),
            Self::BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            Self::BodyTimeout { .. } => ("invalid_request_error", Some("request_timeout")),
            Self::Unprocessable(_) => ("invalid_request_error", Some("unprocessable")),
            Self::UpstreamUnreachable { .. } => ("upstream_error", Some("upstream_unreachable")),
            Self::UpstreamInvalid { .. } => ("upstream_error", Some("upstream_invalid_response")),
            Self::UpstreamTimeout { .. } => ("upstream_error", Some("upstream_timeout")),
            Self::UpstreamStatus { .. } => ("upstream_error", None),
            Self::GuardrailBlocked { .. } => ("invalid_request_error", Some("guardrail_blocked")),
            Self::SchemaInvalid { .. } => ("upstream_error", Some("schema_validation_failed")),
            Self::RateLimited { kind, .. } => (kind, Some("rate_limit_exceeded")),
            Self::DatabaseUnavailable(_) => ("server_error", Some("database_unavailable")),
            Self::Throttled { .. } => ("rate_limit_error", Some("too_many_attempts")),
            Self::Http { status, .. } => (
                if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                },
                match *status {
                    StatusCode::METHOD_NOT_ALLOWED => Some("method_not_allowed"),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("unsupported_media_type"),
                    StatusCode::PAYLOAD_TOO_LARGE => Some("request_too_large"),
                    StatusCode::REQUEST_TIMEOUT => Some("request_timeout"),
                    _ => None,
                },
            ),
            Self::Internal(_) => ("server_error", None),
            Self::NotReady(_) => ("server_error", Some("not_ready")),
            Self::Unavailable(_) => ("server_error", Some("task_failed")),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::UnknownRoute(_) => Some("model"),
            _ => None,
        }
    }

    /// The class this error is counted under in a measurement record.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Self::UpstreamUnreachable { .. } => Outcome::UpstreamUnreachable,
            Self::UpstreamInvalid { .. } => Outcome::UpstreamInvalid,
            Self::UpstreamTimeout { .. } => Outcome::UpstreamTimeout,
            Self::UpstreamStatus { status, .. } if status.is_client_error() => Outcome::Upstream4xx,
            Self::UpstreamStatus { status, .. } if status.is_server_error() => Outcome::Upstream5xx,
            // A redirect or a status past 599 is neither an answer nor an error status: the
            // dashboards should show a moved `base_url`, not a server outage. (A final 1xx
            // never gets here: the upstream client refuses it as `Informational`.)
            // It still counts against the version (`Outcome::is_error`).
            Self::UpstreamStatus { .. } => Outcome::UpstreamInvalid,
            Self::GuardrailBlocked { .. } => Outcome::GuardrailBlocked,
            Self::SchemaInvalid { .. } => Outcome::UpstreamInvalid,
            _ => Outcome::GatewayError,
        }
    }

    /// The error as one server-sent event (`data: {"error": …}` and its blank line), for a
    /// stream that must end with it after its headers have gone out.
    pub(crate) fn as_event(&self) -> Bytes {
        let body = self.body();
        let mut event = Vec::with_capacity(body.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&body);
        event.extend_from_slice(b"\n\n");
        event.into()
    }

    /// The error as one JSON body in OpenAI's shape (an upstream's error status: its own
    /// body, as it sent it).
    pub(crate) fn body(&self) -> Bytes {
        if let Self::UpstreamStatus { body, .. } = self {
            if is_openai_error(body) {
                return body.clone();
            }
            // Not OpenAI-shaped: wrap the upstream's words so SDKs still parse it.
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(1000).collect();
            return json_body(
                &format!("upstream error: {text}"),
                "upstream_error",
                None,
                None,
            );
        }
        let (kind, code) = self.kind();
        json_body(&self.to_string(), kind, self.param(), code)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::Stale(id) => ApiError::Conflict(format!(
                "rollout {id} was changed meanwhile (by another replica or the judge); read it again and retry"
            )),
            StoreError::Fenced(id) => ApiError::Conflict(format!(
                "this replica no longer judges rollout {id}; its decision was refused"
            )),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable; admin write refused");
                ApiError::DatabaseUnavailable(e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store failed");
                ApiError::Internal("the database failed; see the gateway's log".into())
            }
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        use RolloutError as R;
        match e {
            R::UnknownRoute(_) | R::UnknownRollout(_) | R::NotLive(_) | R::NoPin { .. } => {
                ApiError::NotFound(e.to_string())
            }
            R::AlreadyLive { .. } | R::Ended { .. } | R::WrongState { .. } => {
                ApiError::Conflict(e.to_string())
            }
            R::BadCanary(_) | R::BadPolicy(_) | R::UndeclaredMetric { .. } => {
                ApiError::Unprocessable(e.to_string())
            }
            R::Store(e) => e.into(),
            R::Internal(message) => ApiError::Internal(message),
        }
    }
}

/// Every error sluice itself answers, in OpenAI's shape (the official SDKs turn it into their
/// usual exceptions): `{"error": {"code", "message", "param", "type"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// The `error` object of an [`ErrorBody`]. Its fields are in the order of their names, the
/// order the body has always had on the wire.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// A stable code: `invalid_admin_token`, `not_found`, `conflict`, `unprocessable`,
    /// `request_too_large`, …
    #[schema(required = true)]
    pub code: Option<&'a str>,
    /// What went wrong, in words.
    pub message: &'a str,
    /// The request field at fault, if one is.
    #[schema(required = true)]
    pub param: Option<&'a str>,
    /// `invalid_request_error`, `upstream_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
}

fn json_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            param,
            kind,
        },
    };
    Bytes::from(serde_json::to_vec(&body).expect("an error body serializes"))
}

fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.get("error").is_some_and(|e| e.is_object()))
        .unwrap_or(false)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::RateLimited { retry_after_s, .. } | Self::Throttled { retry_after_s, .. } =
            &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if let Self::UpstreamStatus {
            headers: upstream, ..
        } = &self
        {
            for (name, value) in upstream.iter() {
                headers.append(name.clone(), value.clone());
            }
        }
        response
    }
}

/// Gives every error answer the router itself produced OpenAI's JSON shape (axum answers a
/// wrong method with an empty 405 and its rejections in plain text). Answers that already
/// are JSON (sluice's own errors, upstream bodies) or an event stream pass untouched; the
/// other headers (`Allow` on a 405) are kept.
pub(crate) async fn openai_shaped(response: Response) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(status.is_client_error() || status.is_server_error())
        || !(content_type.is_empty() || content_type.starts_with("text/plain"))
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The framework's own bodies are one line; anything longer is not one of them.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let shaped = ApiError::Http { status, message }.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, shaped.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.body()).unwrap()
    }

    #[test]
    fn errors_have_openai_shape_and_status() {
        let e = ApiError::UnknownRoute(UnknownModel {
            model: "nope".into(),
            routes: vec!["chat".into(), "embed".into()],
            version_of: None,
        });
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let v = parsed(&e);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    }

    #[test]
    fn an_openai_shaped_upstream_error_passes_unchanged() {
        let body = Bytes::from_static(
            br#"{"error":{"message":"slow down","type":"rate_limit","param":null,"code":"x"}}"#,
        );
        let e = ApiError::UpstreamStatus {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: body.clone(),
            headers: Default::default(),
        };
        assert_eq!(e.body(), body);
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.outcome(), Outcome::Upstream4xx);
    }

    #[test]
    fn a_plain_upstream_error_is_wrapped() {
        let e = ApiError::UpstreamStatus {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: Bytes::from_static(b"<html>down</html>"),
            headers: Default::default(),
        };
        let v = parsed(&e);
        assert_eq!(v["error"]["message"], "upstream error: <html>down</html>");
        assert_eq!(e.outcome(), Outcome::Upstream5xx);
    }

    #[test]
    fn an_upstream_status_that_is_no_error_is_counted_as_an_invalid_answer() {
        for (code, outcome) in [
            (302, Outcome::UpstreamInvalid),
            (101, Outcome::UpstreamInvalid),
            (999, Outcome::UpstreamInvalid),
            (404, Outcome::Upstream4xx),
            (599, Outcome::Upstream5xx),
        ] {
            let e = ApiError::UpstreamStatus {
                status: StatusCode::from_u16(code).unwrap(),
                body: Bytes::new(),
                headers: Default::default(),
            };
            assert_eq!(e.outcome(), outcome, "{code}");
            assert_eq!(
                e.status().as_u16(),
                code,
                "passed on as the provider answered"
            );
        }
    }
}
