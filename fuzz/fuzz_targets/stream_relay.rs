//! The stream relay (`pipeline::relay::StreamRelay`): an upstream's event stream, cut into
//! reads at arbitrary places.
//!
//! Input: a seed byte (where the reads are cut, and which relay: usage stripped or not,
//! answer checks with the shipped guardrail policy or none), then the upstream's bytes.
//! Checks: the bytes read whole, one byte at a time and cut by the seed give the same
//! forwarded bytes and the same record (outcome, usage, characters, finish reason, first
//! token, guardrail mark); without checks or stripping, a valid UTF-8 stream is forwarded
//! byte for byte; nothing panics.
#![no_main]

#[path = "../common/split.rs"]
mod split;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use sluice::catalog::Catalog;
use sluice::guardrails::{GuardrailCounters, GuardrailSet};
use sluice::limits::LimitBook;
use sluice::measure::Meter;
use sluice::measure::checks::{AnswerChecks, StreamChecks};
use sluice::measure::sink::RecordSink;
use sluice::pipeline::relay::StreamRelay;
use sluice::resolve::Target;
use sluice::types::{Arm, Limits, Outcome, Record, RouteName};
use tokio::sync::mpsc;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite::memory:"
[admin]
token_env = "ADMIN"
[providers.sim]
kind = "mock"
[versions.v1]
provider = "sim"
model = "gpt-4o"
[routes.chat]
stable = "v1"
"#;

struct World {
    runtime: tokio::runtime::Runtime,
    target: Target,
    sink: Arc<RecordSink>,
    records: Mutex<mpsc::Receiver<Record>>,
    guardrails: Arc<GuardrailSet>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let settings = sluice::settings::parse(
            Path::new("/nonexistent/sluice.toml"),
            CONFIG,
            &|name| (name == "ADMIN").then(|| "a-token-long-enough-for-anyone".into()),
        )
        .expect("the fuzz config is valid");
        let catalog = Catalog::from_settings(&settings).expect("the catalog builds");
        let target = catalog
            .target(&RouteName::parse("chat").unwrap(), "v1", Arm::Stable)
            .expect("v1 serves chat");
        let (sink, records) = RecordSink::new(16, Arc::new(LimitBook::new(Limits::default())));
        let guardrails = sluice::guardrails::parse_set(
            Path::new("default.toml"),
            "default",
            include_str!("../../policies/guardrails/default.toml"),
        )
        .expect("the shipped policy loads");
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
            target,
            sink: Arc::new(sink),
            records: Mutex::new(records),
            guardrails: Arc::new(guardrails),
        }
    })
}

/// What a record says that does not depend on the clock.
#[derive(Debug, PartialEq)]
struct Measured {
    outcome: Outcome,
    prompt_tokens: u64,
    completion_tokens: u64,
    estimated: bool,
    response_chars: u64,
    finish_reason: Option<String>,
    first_token: bool,
    guardrail_blocked: bool,
    schema_failed: Option<bool>,
}

fn relay(world: &World, reads: &[&[u8]], strip_usage: bool, checked: bool) -> (Vec<u8>, Measured) {
    let chunks: Vec<Result<Bytes, sluice::upstream::UpstreamError>> =
        reads.iter().map(|r| Ok(Bytes::copy_from_slice(r))).collect();
    let out = world.runtime.block_on(async {
        let meter = Meter::start(
            "req".into(),
            "ws".into(),
            world.target.clone(),
            true,
            world.sink.clone(),
        );
        let checks = checked.then(|| {
            StreamChecks::new(AnswerChecks {
                expect: Default::default(),
                schemas: Arc::default(),
                output: Some(world.guardrails.clone()),
                on_schema_failure: Default::default(),
                counters: Arc::new(GuardrailCounters::default()),
                version: "v1".into(),
                arm: Arm::Stable,
            })
        });
        let relay = StreamRelay::new(
            Box::pin(futures_util::stream::iter(chunks)),
            meter,
            strip_usage,
            Duration::from_secs(3600),
            checks,
        );
        let parts: Vec<Bytes> = relay.map(|r| r.expect("the relay never errs")).collect().await;
        parts.concat()
    });
    let record = world
        .records
        .lock()
        .unwrap()
        .try_recv()
        .expect("every relayed stream yields one record");
    let measured = Measured {
        outcome: record.outcome,
        prompt_tokens: record.usage.prompt_tokens,
        completion_tokens: record.usage.completion_tokens,
        estimated: record.usage.estimated,
        response_chars: record.response_chars,
        finish_reason: record.finish_reason,
        first_token: record.ttft_ms.is_some(),
        guardrail_blocked: record.guardrail_blocked,
        schema_failed: record.schema_failed,
    };
    (out, measured)
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, payload)) = split::seed_and_payload(data) else {
        return;
    };
    let world = world();
    let strip_usage = seed & 0x40 != 0;
    let checked = seed & 0x80 != 0;
    let [whole, single, seeded] = split::splittings(seed, payload);
    let (out, measured) = relay(world, &whole, strip_usage, checked);
    if !strip_usage && !checked && std::str::from_utf8(payload).is_ok() {
        if measured.outcome == sluice::types::Outcome::StreamInterrupted {
            // Cut inside an event before any finish: what came whole, then the error event.
            let at = out
                .windows(16)
                .rposition(|w| w == b"data: {\"error\":{")
                .expect("an interrupted stream ends with an error event");
            assert!(payload.starts_with(&out[..at]), "the whole events are forwarded as they came");
        } else {
            assert_eq!(out, payload, "a stream nothing rewrites is forwarded as it came");
        }
    }
    for reads in [single, seeded] {
        let (other_out, other_measured) = relay(world, &reads, strip_usage, checked);
        assert_eq!(
            String::from_utf8_lossy(&other_out),
            String::from_utf8_lossy(&out),
            "forwarded bytes depend on where the reads were cut"
        );
        assert_eq!(other_out, out);
        assert_eq!(other_measured, measured, "the record depends on where the reads were cut");
    }
});
