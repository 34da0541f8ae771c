//! Traces: one OpenTelemetry span per request with the GenAI attributes, a child span for
//! the upstream call and one for a shadow copy, the client's W3C `traceparent` honoured and
//! passed on upstream. Export is OTLP over HTTP, configured in `[telemetry]`; with no
//! endpoint there is no tracer, and a request pays one `None` check.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;

#[derive(Clone, Default)]
/// Where request and upstream spans go: nowhere (the default), or an OpenTelemetry tracer
/// provider. Cheap to clone.
pub struct Traces {
    tracer: Option<Arc<SdkTracer>>,
    provider: Option<SdkTracerProvider>,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Traces {
    /// From the config: an OTLP/HTTP exporter with a batch processor, or nothing.
    pub(crate) fn from_config(config: &TelemetryConfig) -> anyhow::Result<Self> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Self::default());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_headers(config.otlp_headers.clone())
            .build()?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .build();
        Ok(Self::with_provider(provider))
    }

    /// Spans go to `provider` (tests pass one with an in-memory exporter).
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        Self {
            tracer: Some(Arc::new(provider.tracer("sluice"))),
            provider: Some(provider),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// The request's span, child of the client's `traceparent` when there is one.
    pub(crate) fn start_request(
        &self,
        headers: &HeaderMap,
        name: String,
        attributes: Vec<KeyValue>,
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer.as_ref(), &parent);
        Some(parent.with_span(span))
    }

    /// A child span of `parent` (the upstream call, a shadow copy).
    pub(crate) fn start_child(
        &self,
        parent: &Context,
        name: String,
        attributes: Vec<KeyValue>,
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer.as_ref(), parent);
        Some(parent.with_span(span))
    }

    /// Flushes what is buffered (on shutdown).
    pub(crate) fn shutdown(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

/// The `traceparent` to send upstream for the span in `cx`.
pub(crate) fn traceparent(cx: &Context) -> Option<String> {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut MapInjector(&mut map));
    map.remove("traceparent")
}

/// Ends the span in `cx` now with these attributes, as an error when `error` is set.
pub(crate) fn end(cx: &Context, attributes: Vec<KeyValue>, error: Option<String>) {
    end_at(cx, attributes, error, std::time::SystemTime::now());
}

/// [`end`], dated `at`: a request whose record is finished after its reply ends its span
/// when the answer was complete, as its record's latency does.
pub(crate) fn end_at(
    cx: &Context,
    attributes: Vec<KeyValue>,
    error: Option<String>,
    at: std::time::SystemTime,
) {
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(message) = error {
        span.set_status(Status::error(message));
    }
    span.end_with_timestamp(at);
}
