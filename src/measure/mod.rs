//! Measure: every request that reached a route yields exactly one [`Record`].
//!
//! A [`Meter`] is started once the route and version are known and travels with the request:
//! into the handler for a plain answer, into the stream relay for a streamed one. Whatever
//! ends the request (an answer, an upstream error, the client hanging up, shutdown), the
//! meter is finished or dropped, and either way one record goes to the version's live
//! `aggregate::VersionStats` and to the [`sink::RecordSink`] that writes to the database.

pub(crate) mod aggregate;
pub mod checks;
pub mod histogram;
pub mod schema;
pub mod sink;
pub(crate) mod tokens;

use std::sync::Arc;
use std::time::Instant;

use crate::resolve::Target;
use crate::types::{Api, Outcome, Price, Record, Usage};

/// What a finished answer looked like, filled in by the handler or the stream relay.
#[derive(Debug, Default, Clone)]
pub(crate) struct Observed {
    pub(crate) usage: Option<Usage>,
    pub(crate) response_chars: u64,
    pub(crate) finish_reason: Option<String>,
    pub(crate) first_token: Option<Instant>,
    pub(crate) schema_failed: Option<bool>,
    pub(crate) guardrail_blocked: bool,
    /// The answer's text, kept only when a shadow copy will want it.
    pub(crate) answer: Option<String>,
    /// The `model` the upstream says answered.
    pub(crate) response_model: Option<String>,
    pub(crate) reasoning_tokens: Option<u64>,
    pub(crate) inputs: Option<u32>,
    pub(crate) dimensions: Option<u32>,
}

/// Carries one request's measurement until it ends. Dropping an unfinished meter records the
/// request as `client_disconnected`: the only way a request ends without finishing it is
/// that its future or stream was dropped. A meter handed to a task by
/// `Meter::finish_after_reply` and dropped with that task unrun records the outcome it
/// was given instead.
pub struct Meter {
    started: Instant,
    /// For a record finished after the reply went out ([`Meter::finish_after_reply`]): when
    /// the answer was complete (its latency's and span's end; `None` dates them when the
    /// meter finishes), and its outcome, kept should the task be dropped unrun (a runtime
    /// torn down): the request did end that way, not by a hang-up.
    after_reply: Option<(Instant, Outcome)>,
    at_ms: i64,
    request_id: String,
    workspace: String,
    target: Target,
    stream: bool,
    sink: Arc<sink::RecordSink>,
    finished: bool,
    /// Estimator for a prompt the upstream did not count; set by the pipeline.
    prompt_estimate: Option<Box<dyn FnOnce() -> u64 + Send>>,
    pub(crate) observed: Observed,
    pub(crate) status: u16,
    /// The request's trace span, ended with the outcome.
    span: Option<opentelemetry::Context>,
    /// A shadow copy to hand over once the request has finished well.
    shadow: Option<(crate::shadow::ShadowTicket, Arc<crate::shadow::ShadowQueue>)>,
    api: Api,
}

impl Meter {
    /// Starts measuring request `request_id` of `workspace`, routed to `target`; the record goes to
    /// `sink` when the meter finishes or is dropped.
    pub fn start(
        request_id: String,
        workspace: String,
        target: Target,
        stream: bool,
        sink: Arc<sink::RecordSink>,
    ) -> Self {
        // A rollout's request is dated when its arm was chosen, so that the judge pairs
        // its record with its assignment.
        let at_ms = target
            .rollout
            .as_ref()
            .map_or_else(crate::types::now_ms, |a| a.at_ms);
        Self {
            started: Instant::now(),
            after_reply: None,
            at_ms,
            request_id,
            workspace,
            target,
            stream,
            sink,
            finished: false,
            prompt_estimate: None,
            observed: Observed::default(),
            status: 0,
            span: None,
            shadow: None,
            api: Api::Chat,
        }
    }

    /// Marks the request as one of another API than chat completions.
    pub(crate) fn set_api(&mut self, api: Api) {
        self.api = api;
    }

    pub(crate) fn set_span(&mut self, span: Option<opentelemetry::Context>) {
        self.span = span;
    }

    pub(crate) fn span(&self) -> Option<&opentelemetry::Context> {
        self.span.as_ref()
    }

    pub(crate) fn set_shadow(
        &mut self,
        ticket: crate::shadow::ShadowTicket,
        queue: Arc<crate::shadow::ShadowQueue>,
    ) {
        self.shadow = Some((ticket, queue));
    }

    /// Whether the answer's text must be kept for a shadow copy.
    pub(crate) fn wants_answer(&self) -> bool {
        self.shadow.is_some()
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    pub(crate) fn set_prompt_estimate(&mut self, estimate: impl FnOnce() -> u64 + Send + 'static) {
        self.prompt_estimate = Some(Box::new(estimate));
    }

    /// Prompt tokens counted by sluice, for an answer that came without usage.
    pub(crate) fn estimate_prompt(&mut self) -> u64 {
        self.prompt_estimate.take().map(|f| f()).unwrap_or(0)
    }

    /// Ends the measurement with `outcome`; later calls and the drop do nothing.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let record = self.build_record(outcome);
        if let Some(span) = self.span.take() {
            let model = self.observed.response_model.take();
            end_span(&span, &record, model, self.after_reply.map(|(at, _)| at));
        }
        self.target.stats.observe(&record);
        if let Some(assignment) = &self.target.rollout {
            assignment.tap.observe(&record, assignment.unit);
        }
        if let Some((ticket, queue)) = self.shadow.take()
            && outcome == Outcome::Ok
        {
            let answer = self.observed.answer.take().unwrap_or_default();
            queue.submit(ticket, record.clone(), answer);
        }
        self.sink.submit(record);
    }

    /// Ends the measurement with `outcome` once the reply that this call's caller is about to
    /// return has been handed to the client: the record is built and submitted (trace
    /// span, live stats, the rollout's tap, the shadow copy, the record queue) by a task
    /// that runs after the current one yields, with the latency dated now.
    ///
    /// Why: on a whole answer that work otherwise runs between the upstream's answer and the
    /// client's, and adds to the latency every caller sees; deferred, it runs while the
    /// reply is on its way. The record is no less certain: the task is tracked by the sink,
    /// whose writer waits for it before it stops. Only on the single-threaded runtime, where
    /// it still runs before anything the client does next; elsewhere the record is finished
    /// at once ([`sink::RecordSink::after_reply`]).
    pub(crate) fn finish_after_reply(mut self, outcome: Outcome) {
        self.after_reply = Some((Instant::now(), outcome));
        let sink = self.sink.clone();
        sink.after_reply(move || self.finish(outcome));
    }

    fn build_record(&mut self, outcome: Outcome) -> Record {
        let mut observed = std::mem::take(&mut self.observed);
        // The answer stays for the shadow copy and the model for the span (taken in `finish`).
        self.observed.answer = observed.answer.take();
        self.observed.response_model = observed.response_model.take();
        let usage = match observed.usage {
            Some(usage) => usage,
            None => Usage {
                // The upstream sent no count (an error, a hang-up): the prompt was still sent.
                prompt_tokens: self.estimate_prompt(),
                completion_tokens: 0,
                estimated: true,
            },
        };
        let price: Price = self.target.version.price;
        let assignment = self.target.rollout.as_ref();
        Record {
            request_id: std::mem::take(&mut self.request_id),
            at_ms: self.at_ms,
            workspace: std::mem::take(&mut self.workspace),
            route: self.target.route.to_string(),
            version: self.target.version.name.to_string(),
            arm: self.target.arm,
            stream: self.stream,
            status: self.status,
            outcome,
            latency_ms: self
                .after_reply
                .map_or_else(Instant::now, |(at, _)| at)
                .duration_since(self.started)
                .as_secs_f64()
                * 1000.0,
            ttft_ms: observed
                .first_token
                .map(|t| t.duration_since(self.started).as_secs_f64() * 1000.0),
            cost_usd: price.cost_usd(usage.prompt_tokens, usage.completion_tokens),
            usage,
            response_chars: observed.response_chars,
            finish_reason: observed.finish_reason,
            rollout_id: assignment.map(|a| a.tap.rollout_id.to_string()),
            w: assignment.map(|a| a.w),
            randomized: assignment.is_none_or(|a| a.randomized),
            step: assignment.map(|a| a.step),
            schema_failed: observed.schema_failed,
            guardrail_blocked: observed.guardrail_blocked,
            api: self.api,
            reasoning_tokens: observed.reasoning_tokens,
            inputs: observed.inputs,
            dimensions: observed.dimensions,
        }
    }
}

/// Ends a request span with the GenAI attributes only known at the end, dated `ended` when
/// the record is finished after the reply.
fn end_span(
    span: &opentelemetry::Context,
    record: &Record,
    response_model: Option<String>,
    ended: Option<Instant>,
) {
    use opentelemetry::{KeyValue, Value};
    let mut attributes = vec![
        KeyValue::new(
            "gen_ai.usage.input_tokens",
            record.usage.prompt_tokens as i64,
        ),
        KeyValue::new(
            "gen_ai.usage.output_tokens",
            record.usage.completion_tokens as i64,
        ),
        KeyValue::new("sluice.outcome", record.outcome.as_str()),
        KeyValue::new("sluice.cost_usd", record.cost_usd),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
    ];
    if let Some(model) = response_model {
        attributes.push(KeyValue::new("gen_ai.response.model", model));
    }
    if let Some(reason) = &record.finish_reason {
        let reasons = Value::Array(vec![opentelemetry::StringValue::from(reason.clone())].into());
        attributes.push(KeyValue::new("gen_ai.response.finish_reasons", reasons));
    }
    let error = (record.outcome != Outcome::Ok).then(|| record.outcome.as_str().to_owned());
    let now = std::time::SystemTime::now();
    let at = ended.map_or(now, |ended| now - ended.elapsed());
    crate::traces::end_at(span, attributes, error, at);
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = self
                .after_reply
                .map_or(Outcome::ClientDisconnected, |(_, outcome)| outcome);
            self.finish(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitBook;
    use crate::types::{Arm, Limits, RouteName};
    use tokio::sync::mpsc;

    /// A meter on route `chat`, version `v1` (2.50 USD per million prompt tokens, 10.00 per
    /// million completion tokens), and the receiver its records go to.
    fn meter(request_id: &str) -> (Meter, mpsc::Receiver<Record>) {
        let rest = r#"
[versions.v1]
provider = "sim"
model = "gpt-4o"
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }
[routes.chat]
stable = "v1"
"#;
        let settings = crate::settings::for_tests(rest);
        let catalog = crate::catalog::Catalog::from_settings(&settings).unwrap();
        let target = catalog
            .target(&RouteName::parse("chat").unwrap(), "v1", Arm::Stable)
            .unwrap();
        let (sink, records) = sink::RecordSink::new(8, Arc::new(LimitBook::new(Limits::default())));
        let meter = Meter::start(
            request_id.into(),
            "acme".into(),
            target,
            true,
            Arc::new(sink),
        );
        (meter, records)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_record_finished_after_the_reply_comes_once_the_task_yields_dated_at_the_call() {
        let (mut meter, mut records) = meter("req_2");
        meter.status = 200;
        std::thread::sleep(std::time::Duration::from_millis(20));
        meter.finish_after_reply(Outcome::Ok);
        // Not before the reply (this task) has yielded…
        assert!(records.try_recv().is_err());
        std::thread::sleep(std::time::Duration::from_millis(100));
        tokio::task::yield_now().await;
        // …then once, with the latency of the answer, not of the wait after it.
        let r = records.try_recv().expect("recorded once the task yields");
        assert!(records.try_recv().is_err());
        assert_eq!(
            (r.request_id.as_str(), r.outcome, r.status),
            ("req_2", Outcome::Ok, 200)
        );
        assert!(
            r.latency_ms >= 20.0 && r.latency_ms < 100.0,
            "latency {} ms: dated at the call (20 ms in), not at the yield (120 ms in)",
            r.latency_ms
        );
    }

    #[test]
    fn a_record_whose_task_after_the_reply_never_runs_keeps_its_outcome() {
        let (mut meter, mut records) = meter("req_3");
        meter.status = 200;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move { meter.finish_after_reply(Outcome::Ok) });
        assert!(records.try_recv().is_err(), "queued, not run");
        drop(runtime);
        let r = records
            .try_recv()
            .expect("recorded when the task is dropped");
        assert_eq!((r.outcome, r.status), (Outcome::Ok, 200));
    }

    #[test]
    fn a_finished_request_is_recorded_once_with_its_tokens_cost_and_times() {
        let outer = Instant::now();
        let (mut meter, mut records) = meter("req_1");
        meter.set_api(Api::Responses);
        std::thread::sleep(std::time::Duration::from_millis(20));
        meter.observed.first_token = Some(Instant::now());
        meter.observed.usage = Some(Usage {
            prompt_tokens: 1_000,
            completion_tokens: 200,
            estimated: false,
        });
        meter.observed.response_chars = 42;
        meter.status = 200;
        std::thread::sleep(std::time::Duration::from_millis(20));
        meter.finish(Outcome::Ok);
        let outer_ms = outer.elapsed().as_secs_f64() * 1000.0;
        meter.finish(Outcome::Upstream5xx);
        drop(meter);
        let r = records.try_recv().unwrap();
        assert!(
            records.try_recv().is_err(),
            "one record, however often finished"
        );
        assert_eq!(
            (
                r.request_id.as_str(),
                r.workspace.as_str(),
                r.route.as_str()
            ),
            ("req_1", "acme", "chat")
        );
        assert_eq!(
            (r.version.as_str(), r.arm, r.stream),
            ("v1", Arm::Stable, true)
        );
        assert_eq!(
            (r.outcome, r.status, r.api),
            (Outcome::Ok, 200, Api::Responses)
        );
        assert_eq!(
            (r.usage.prompt_tokens, r.usage.completion_tokens),
            (1_000, 200)
        );
        assert!(!r.usage.estimated);
        assert_eq!(r.response_chars, 42);
        // 1 000 × 2.50 / 10⁶ + 200 × 10.00 / 10⁶
        assert!((r.cost_usd - 0.0045).abs() < 1e-12, "{}", r.cost_usd);
        // In milliseconds, within what the test itself saw pass.
        let ttft = r.ttft_ms.unwrap();
        assert!(
            (20.0..=outer_ms).contains(&ttft),
            "ttft {ttft} ms of {outer_ms}"
        );
        assert!(
            (40.0..=outer_ms).contains(&r.latency_ms) && r.latency_ms >= ttft + 20.0,
            "latency {} ms, ttft {ttft}, outer {outer_ms}",
            r.latency_ms
        );
    }

    #[test]
    fn a_request_dropped_unfinished_is_recorded_as_the_client_hanging_up() {
        let (mut meter, mut records) = meter("req_2");
        meter.set_prompt_estimate(|| 321);
        drop(meter);
        let r = records.try_recv().unwrap();
        assert_eq!(r.outcome, Outcome::ClientDisconnected);
        assert_eq!(r.request_id, "req_2");
        // No usage came back: the prompt was still sent, so sluice's estimate is recorded.
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (321, 0));
        assert!(r.usage.estimated);
        assert!((r.cost_usd - 321.0 * 2.5 / 1e6).abs() < 1e-12);
        assert_eq!(r.ttft_ms, None);
        assert!(records.try_recv().is_err());
    }

    #[test]
    fn an_answer_without_usage_and_without_an_estimate_counts_no_tokens() {
        let (mut meter, mut records) = meter("req_3");
        assert!(!meter.wants_answer(), "no shadow copy asked for");
        assert_eq!(meter.request_id(), "req_3");
        assert_eq!(meter.estimate_prompt(), 0);
        meter.set_prompt_estimate(|| 7);
        assert_eq!(meter.estimate_prompt(), 7);
        assert_eq!(meter.estimate_prompt(), 0, "an estimate is taken once");
        meter.finish(Outcome::Upstream5xx);
        let r = records.try_recv().unwrap();
        assert_eq!(r.outcome, Outcome::Upstream5xx);
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (0, 0));
        assert_eq!(r.cost_usd, 0.0);
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
    }

    #[test]
    fn only_model_failures_count_as_errors() {
        assert!(!Outcome::Ok.is_error());
        assert!(!Outcome::ClientDisconnected.is_error());
        assert!(Outcome::Upstream5xx.is_error());
        assert!(Outcome::UpstreamTimeout.is_error());
    }
}
