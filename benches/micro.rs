//! Micro-benchmarks of the pieces on the request path, so that a regression shows before
//! the rig (`benches/overhead.sh`) is needed: `cargo bench --bench micro`.
//!
//! Figures are per call on whatever machine runs them; compare runs of one machine only.

use divan::{Bencher, black_box};
use sluice::measure::histogram::AtomicHistogram;
use sluice::openai::completion::summarize_completion;
use sluice::openai::sse::{event_end_from, parse_event};
use sluice::pipeline::ChatRequest;

fn main() {
    divan::main();
}

const CHAT: &[u8] = br#"{"model":"chat","messages":[{"role":"system","content":"You are a helpful assistant that answers briefly."},{"role":"user","content":"Say hello to the world, and tell me one fact about the sea."}],"temperature":0.2,"max_tokens":200,"user":"u-42","metadata":{"app":"bench"}}"#;

const COMPLETION: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello, world! The sea covers about 71 % of the Earth's surface.","refusal":null},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":34,"completion_tokens":17,"total_tokens":51}}"#;

/// A stream of `chunks` content chunks, a finish chunk, a usage chunk and `[DONE]`.
fn stream(chunks: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..chunks {
        out.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":40}}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

#[divan::bench]
fn request_parse_and_model_rewrite() -> bytes::Bytes {
    let mut request = ChatRequest::parse(black_box(CHAT)).expect("a valid request");
    request.upstream_body(black_box("gpt-4o-2024-08-06"), true)
}

#[divan::bench(args = [40, 400])]
fn sse_events_cut_and_read(bencher: Bencher, chunks: usize) {
    let bytes = stream(chunks);
    bencher.bench(|| {
        let buf = black_box(bytes.as_slice());
        let (mut at, mut data_bytes) = (0, 0);
        while let Some(len) = event_end_from(&buf[at..], 0) {
            if let Some(data) = parse_event(&buf[at..at + len]).data {
                data_bytes += data.len();
            }
            at += len;
        }
        data_bytes
    });
}

#[divan::bench]
fn usage_and_text_of_a_completion() -> u64 {
    let summary = summarize_completion(black_box(COMPLETION)).expect("a completion");
    summary.usage.map_or(0, |u| u.completion_tokens) + summary.chars()
}

#[divan::bench]
fn guardrail_scan_2kb(bencher: Bencher) {
    let sets = sluice::guardrails::load_dir(std::path::Path::new("policies/guardrails"))
        .expect("the shipped guardrails load");
    let set = sets.get("default").expect("a default guardrail set");
    let text =
        "Please write to jane.doe@example.com or call +1 415 555 0100 about the order. ".repeat(26);
    bencher.bench(|| set.output.apply(black_box(&text)));
}

#[divan::bench]
fn histogram_record(bencher: Bencher) {
    let histogram = AtomicHistogram::default();
    let mut x = 1.0_f64;
    bencher.bench_local(|| {
        x = x * 1.0001 + 0.37;
        histogram.record(black_box(x % 5000.0));
    });
}

#[divan::bench]
fn sticky_bucket_hash() -> f64 {
    sluice::resolve::bucket(black_box(0x5eed), black_box("user-1234567"))
}
