//! The request context: what the stages after resolve share. It starts the request's
//! measurement (the [`Meter`]) and its trace span once the target is known.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use opentelemetry::KeyValue;

use super::call::{read_body, upstream_error};
use super::finish;
use crate::catalog::{RouteSettings, Version};
use crate::error::ApiError;
use crate::measure::Meter;
use crate::measure::checks::AnswerChecks;
use crate::measure::schema::Expectation;
use crate::resolve::Target;
use crate::state::App;
use crate::types::Api;
use crate::upstream::{ByteStream, UpstreamError};

/// One resolved request on its way through the stages: its measurement, its answer
/// checks and the version it goes to.
pub(crate) struct Ctx<'a> {
    pub app: &'a App,
    pub request_id: &'a str,
    /// The client's request headers.
    pub headers: &'a HeaderMap,
    pub workspace: String,
    pub version: Arc<Version>,
    pub route: Arc<RouteSettings>,
    /// Schema and output-guardrail checks of the answer.
    pub checks: AnswerChecks,
    pub meter: Meter,
    /// The span of the upstream call, when tracing; a retry sends under it too.
    pub upstream_span: Option<opentelemetry::Context>,
}

/// What a request context starts from.
pub(crate) struct Start<'a> {
    pub request_id: &'a str,
    pub headers: &'a HeaderMap,
    pub workspace: String,
    pub target: Target,
    pub stream: bool,
    pub api: Api,
    /// What the request asks of the answer's shape (a schema, tools).
    pub expect: Expectation,
}

impl<'a> Ctx<'a> {
    /// Builds the answer checks and starts the meter (dated at the arm's assignment).
    pub fn start(app: &'a App, start: Start<'a>) -> Self {
        let Start {
            request_id,
            headers,
            workspace,
            target,
            stream,
            api,
            expect,
        } = start;
        let version = target.version.clone();
        let route = target.settings.clone();
        let checks = AnswerChecks {
            expect,
            schemas: app.schemas.clone(),
            output: route.guardrails.clone(),
            on_schema_failure: route.on_schema_failure,
            counters: app.guardrail_counts.clone(),
            version: version.name.clone(),
            arm: target.arm,
        };
        let mut meter = Meter::start(
            request_id.to_owned(),
            workspace.clone(),
            target,
            stream,
            app.sink.clone(),
        );
        meter.set_api(api);
        Self {
            app,
            request_id,
            headers,
            workspace,
            version,
            route,
            checks,
            meter,
            upstream_span: None,
        }
    }

    /// Sets the prompt-token estimate for an answer without usage: `count` over the body
    /// as the client sent it, run only if needed.
    pub fn estimate_prompt_with(
        &mut self,
        count: fn(crate::measure::tokens::Encoding, &[u8]) -> u64,
        raw: Bytes,
    ) {
        let encoding = self.version.encoding;
        self.meter
            .set_prompt_estimate(move || count(encoding, &raw));
    }

    /// Opens the request's span (`"{operation} {model}"`) with the GenAI and sluice
    /// attributes, then `extra`. Call only when tracing is on.
    pub fn open_span(
        &mut self,
        operation: &'static str,
        model: &str,
        stream: bool,
        extra: Option<KeyValue>,
    ) {
        let t = self.meter.target();
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("sluice.route", t.route.to_string()),
            KeyValue::new("sluice.version", self.version.name.to_string()),
            KeyValue::new("sluice.arm", t.arm.as_str()),
            KeyValue::new("sluice.workspace", self.workspace.clone()),
            KeyValue::new("sluice.request_id", self.request_id.to_owned()),
            KeyValue::new("gen_ai.request.stream", stream),
        ];
        attributes.extend(extra);
        let span =
            self.app
                .traces
                .start_request(self.headers, format!("{operation} {model}"), attributes);
        self.meter.set_span(span);
    }

    /// Records the request as failed with `error` and hands the error back.
    pub fn fail(&mut self, error: ApiError) -> ApiError {
        finish::fail(&mut self.meter, error)
    }

    /// Records a failed upstream call and gives the client's error for it.
    pub fn upstream_failed(&mut self, error: UpstreamError) -> ApiError {
        let error = upstream_error(error, &self.version.name);
        self.fail(error)
    }

    /// Records an answer the upstream got wrong (`reason`) and gives the client's error.
    pub fn invalid(&mut self, reason: String) -> ApiError {
        let error = ApiError::UpstreamInvalid {
            version: self.version.name.to_string(),
            reason,
        };
        self.fail(error)
    }

    /// Reads a whole upstream body within the provider's timeout; a failure is recorded.
    pub async fn read(&mut self, body: ByteStream) -> Result<Bytes, ApiError> {
        match read_body(body, self.version.provider.timeout()).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(self.upstream_failed(e)),
        }
    }
}
