//! The misbehaving upstream: resets, stalls, a drip, a huge body, a huge stream, bytes that
//! are not UTF-8, a chunked body without its last chunk. Each request runs beside a normal
//! one, which must be served in full.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::types::Outcome;

use crate::helpers::chat_body;
use crate::rig::{FaultApp, Got, timed};
use crate::rogue::{BIG_BODY_CHARS, MANY_EVENTS, ROGUE_TIMEOUT_MS, UNENDING_TIMEOUT_MS};

/// The fault's request (plain or streamed) with a normal request beside it.
async fn alongside(f: &FaultApp, route: &str, stream: bool) -> Got {
    let (got, ()) = tokio::join!(f.chat(route, stream), f.unaffected());
    got
}

/// A streamed Responses API request to `route`: the body the client gets (status 200).
async fn responses_stream(f: &FaultApp, route: &str) -> bytes::Bytes {
    let response = f
        .app
        .http
        .post(format!("{}/v1/responses", f.app.base))
        .bearer_auth(&f.key)
        .json(&json!({"model": route, "input": "Say hello", "stream": true}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap()
}

/// The content texts of a stream's chunks.
fn contents(got: &Got) -> Vec<String> {
    got.events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn a_reset_before_the_headers_is_a_502_recorded_as_unreachable() {
    timed("reset before the headers", async {
        let f = FaultApp::start("").await;
        for stream in [false, true] {
            let got = alongside(&f, "f-reset-before-headers", stream).await;
            assert_eq!(got.status, 502, "{:?}", got.body);
            assert_eq!(got.error_code().as_deref(), Some("upstream_unreachable"));
        }
        for r in f.records("f-reset-before-headers", 2).await {
            assert_eq!(r.outcome, Outcome::UpstreamUnreachable);
            assert_eq!(r.status, 502);
        }
    })
    .await;
}

#[tokio::test]
async fn a_reset_after_the_headers_is_a_502_or_a_final_error_event() {
    timed("reset after the headers", async {
        let f = FaultApp::start("").await;
        let plain = alongside(&f, "f-reset-after-headers", false).await;
        assert_eq!(plain.status, 502, "{:?}", plain.body);
        assert_eq!(
            plain.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        // The stream's headers had gone out: the client learns it from the last event.
        let streamed = alongside(&f, "f-reset-after-headers", true).await;
        assert_eq!(streamed.status, 200);
        assert_eq!(streamed.events().len(), 1, "{:?}", streamed.body);
        assert_eq!(
            streamed.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        let records = f.records("f-reset-after-headers", 2).await;
        let by_stream = |s: bool| records.iter().find(|r| r.stream == s).unwrap();
        assert_eq!(by_stream(false).outcome, Outcome::UpstreamInvalid);
        assert_eq!(by_stream(true).outcome, Outcome::StreamInterrupted);
    })
    .await;
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_an_error_event_after_what_came() {
    timed("reset mid-stream", async {
        let f = FaultApp::start("").await;
        let got = alongside(&f, "f-reset-mid-stream", true).await;
        assert_eq!(got.status, 200);
        assert_eq!(contents(&got), ["a", "b"], "{:?}", got.body);
        assert_eq!(
            got.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        let r = &f.records("f-reset-mid-stream", 1).await[0];
        assert_eq!(r.outcome, Outcome::StreamInterrupted);
        assert_eq!(r.response_chars, 2);
    })
    .await;
}

#[tokio::test]
async fn a_redirect_goes_back_as_the_providers_answer_and_is_counted_as_invalid() {
    timed("redirect", async {
        let f = FaultApp::start("").await;
        // A client that does not follow it either, to see what sluice answered.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for stream in [false, true] {
            let response = http
                .post(format!("{}/v1/chat/completions", f.app.base))
                .bearer_auth(&f.key)
                .json(&chat_body("f-redirect", json!({"stream": stream})))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 302);
            assert_eq!(
                response
                    .headers()
                    .get("location")
                    .map(|v| v.to_str().unwrap()),
                Some("https://elsewhere.example/v1/chat/completions")
            );
            // Its body, not OpenAI-shaped, wrapped as every upstream error body is.
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body["error"]["message"],
                "upstream error: <html>moved</html>"
            );
        }
        for r in f.records("f-redirect", 2).await {
            // Not `upstream_5xx`: a moved `base_url` is no server outage.
            assert_eq!(r.outcome, Outcome::UpstreamInvalid);
            assert_eq!(r.status, 302);
        }
    })
    .await;
}

#[tokio::test]
async fn a_final_101_is_a_502_not_an_upgrade() {
    timed("switching protocols", async {
        let f = FaultApp::start("").await;
        for stream in [false, true] {
            // No stream headers have gone out yet: both get the error as a whole answer.
            let got = alongside(&f, "f-switching-protocols", stream).await;
            assert_eq!(got.status, 502, "stream {stream}: {:?}", got.body);
            assert_eq!(
                got.error_code().as_deref(),
                Some("upstream_invalid_response")
            );
            assert!(
                String::from_utf8_lossy(&got.body).contains("101 Switching Protocols"),
                "the message names what came: {:?}",
                got.body
            );
        }
        for r in f.records("f-switching-protocols", 2).await {
            assert_eq!(r.outcome, Outcome::UpstreamInvalid);
            assert_eq!(r.status, 502);
        }
    })
    .await;
}

#[tokio::test]
async fn a_stalled_upstream_is_timed_out_after_timeout_ms() {
    timed("stall", async {
        let f = FaultApp::start("").await;
        for stream in [false, true] {
            let got = alongside(&f, "f-stall", stream).await;
            assert_eq!(got.status, 504, "{:?}", got.body);
            assert_eq!(got.error_code().as_deref(), Some("upstream_timeout"));
            assert!(got.elapsed >= Duration::from_millis(ROGUE_TIMEOUT_MS));
            assert!(got.elapsed < Duration::from_secs(10), "{:?}", got.elapsed);
        }
        let got = alongside(&f, "f-stall-mid-stream", true).await;
        assert_eq!(got.status, 200);
        assert_eq!(contents(&got), ["a"]);
        assert_eq!(got.error_code().as_deref(), Some("upstream_timeout"));
        for r in f.records("f-stall", 2).await {
            assert_eq!(r.outcome, Outcome::UpstreamTimeout);
        }
        let r = &f.records("f-stall-mid-stream", 1).await[0];
        assert_eq!(r.outcome, Outcome::UpstreamTimeout);
        assert_eq!(r.response_chars, 1);
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_drips_a_byte_a_second_is_timed_out() {
    timed("drip", async {
        let f = FaultApp::start("").await;
        // A byte a second is never a second of silence, but no answer either: sluice gives
        // up after `timeout_ms` without a whole body (plain) or a whole event (stream).
        let plain = alongside(&f, "f-drip", false).await;
        assert_eq!(plain.status, 504, "{:?}", plain.body);
        assert_eq!(plain.error_code().as_deref(), Some("upstream_timeout"));
        assert!(
            plain.elapsed < Duration::from_secs(15),
            "{:?}",
            plain.elapsed
        );
        let streamed = alongside(&f, "f-drip", true).await;
        assert_eq!(streamed.status, 200);
        assert_eq!(streamed.events().len(), 1, "{:?}", streamed.body);
        assert_eq!(streamed.error_code().as_deref(), Some("upstream_timeout"));
        assert!(
            streamed.elapsed < Duration::from_secs(15),
            "{:?}",
            streamed.elapsed
        );
        for r in f.records("f-drip", 2).await {
            assert_eq!(r.outcome, Outcome::UpstreamTimeout);
        }
    })
    .await;
}

#[tokio::test]
async fn a_50_mib_answer_is_passed_on_whole_and_measured() {
    timed("50 MiB body", async {
        let f = FaultApp::start("").await;
        let got = alongside(&f, "f-big-body", false).await;
        assert_eq!(got.status, 200);
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.len(), BIG_BODY_CHARS);
        let r = &f.records("f-big-body", 1).await[0];
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(r.response_chars, BIG_BODY_CHARS as u64);
        assert_eq!(r.usage.completion_tokens, 7);
    })
    .await;
}

#[tokio::test]
async fn a_stream_of_100_000_events_is_relayed_and_counted() {
    timed("100 000 events", async {
        let f = FaultApp::start("").await;
        let got = alongside(&f, "f-many-events", true).await;
        assert_eq!(got.status, 200);
        let events = got.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(contents(&got).len(), MANY_EVENTS);
        // The usage chunk sluice asked for is not the client's: it is measured, not sent.
        assert_eq!(events.len(), MANY_EVENTS + 1);
        let r = &f.records("f-many-events", 1).await[0];
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(r.response_chars, MANY_EVENTS as u64);
        assert_eq!(r.usage.completion_tokens, MANY_EVENTS as u64);
        assert!(!r.usage.estimated);
    })
    .await;
}

#[tokio::test]
async fn bytes_that_are_not_utf8_are_refused_whole_and_replaced_in_a_stream() {
    timed("invalid UTF-8", async {
        let f = FaultApp::start("").await;
        // A whole answer that is not UTF-8 is not JSON: the upstream's failure.
        let plain = alongside(&f, "f-bad-utf8", false).await;
        assert_eq!(plain.status, 502, "{:?}", plain.body);
        assert_eq!(
            plain.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        // In a stream, the event is read as the SSE standard decodes it (U+FFFD for the
        // bad byte): the client gets valid UTF-8 and the text is measured.
        let streamed = alongside(&f, "f-bad-utf8", true).await;
        assert_eq!(streamed.status, 200);
        let text = std::str::from_utf8(&streamed.body).expect("the client gets UTF-8");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(contents(&streamed).concat(), "ok bad \u{fffd} end");
        let records = f.records("f-bad-utf8", 2).await;
        let by_stream = |s: bool| records.iter().find(|r| r.stream == s).unwrap();
        assert_eq!(by_stream(false).outcome, Outcome::UpstreamInvalid);
        assert_eq!(by_stream(true).outcome, Outcome::Ok);
        assert_eq!(
            by_stream(true).response_chars,
            "ok bad \u{fffd} end".chars().count() as u64
        );
        // The Responses relay decodes the same way: the client never gets the raw byte.
        let body = responses_stream(&f, "f-bad-utf8").await;
        let text = std::str::from_utf8(&body).expect("the Responses client gets UTF-8 too");
        assert!(text.contains("bad \u{fffd}"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn a_chunked_body_without_its_last_chunk_is_a_broken_answer() {
    timed("no terminating chunk", async {
        let f = FaultApp::start("").await;
        let plain = alongside(&f, "f-no-final-chunk", false).await;
        assert_eq!(plain.status, 502, "{:?}", plain.body);
        assert_eq!(
            plain.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        let streamed = alongside(&f, "f-no-final-chunk", true).await;
        assert_eq!(streamed.status, 200);
        assert_eq!(contents(&streamed), ["a", "b"]);
        assert_eq!(
            streamed.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        let records = f.records("f-no-final-chunk", 2).await;
        let by_stream = |s: bool| records.iter().find(|r| r.stream == s).unwrap();
        assert_eq!(by_stream(false).outcome, Outcome::UpstreamInvalid);
        assert_eq!(by_stream(true).outcome, Outcome::StreamInterrupted);
        assert_eq!(by_stream(true).response_chars, 2);
    })
    .await;
}

#[tokio::test]
async fn a_stream_whose_connection_closes_before_it_finished_is_a_broken_answer() {
    timed("close mid-stream", async {
        let f = FaultApp::start("").await;
        let got = alongside(&f, "f-close-mid-stream", true).await;
        assert_eq!(got.status, 200);
        // The whole events, then the error; the half event is not passed on.
        assert_eq!(contents(&got), ["a", "b"], "{:?}", got.body);
        let text = String::from_utf8_lossy(&got.body);
        assert_eq!(text.matches(r#"data: {"choices""#).count(), 2, "{text}");
        assert_eq!(
            got.error_code().as_deref(),
            Some("upstream_invalid_response")
        );
        let r = &f.records("f-close-mid-stream", 1).await[0];
        assert_eq!(r.outcome, Outcome::StreamInterrupted);
        assert_eq!(r.response_chars, 2);
        // Closed between events, with neither `[DONE]` nor a finish reason: some providers
        // end every stream so, and the client gets it as it came.
        let whole = alongside(&f, "f-close-between-events", true).await;
        assert_eq!(contents(&whole), ["a", "b"], "{:?}", whole.body);
        assert_eq!(whole.error_code(), None, "{:?}", whole.body);
        let r = &f.records("f-close-between-events", 1).await[0];
        assert_eq!(r.outcome, Outcome::Ok);
        // The Responses relay: no terminal event came, so the answer was cut (the Responses
        // API ends every stream with one).
        let body =
            String::from_utf8(responses_stream(&f, "f-close-mid-stream").await.to_vec()).unwrap();
        let last = body.trim_end().rsplit("\n\n").next().unwrap_or_default();
        assert!(last.contains("stream_interrupted"), "{body}");
        let records = f.records("f-close-mid-stream", 2).await;
        assert!(
            records
                .iter()
                .all(|r| r.outcome == Outcome::StreamInterrupted),
            "{records:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_event_that_never_ends_is_cut_off_not_held() {
    timed("an event that never ends", async {
        let f = FaultApp::start("").await;
        for (path, body) in [
            (
                "chat/completions",
                chat_body("f-unending-event", json!({"stream": true})),
            ),
            (
                "responses",
                json!({"model": "f-unending-event", "input": "Say hello", "stream": true}),
            ),
        ] {
            let (response, ()) = tokio::join!(
                f.app
                    .http
                    .post(format!("{}/v1/{path}", f.app.base))
                    .bearer_auth(&f.key)
                    .json(&body)
                    .timeout(Duration::from_millis(UNENDING_TIMEOUT_MS + 30_000))
                    .send(),
                f.unaffected()
            );
            let response = response.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let text = response.text().await.unwrap();
            // The client gets the error as the stream's last event, soon, and never the
            // unfinished event.
            let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
            assert!(last.contains("error"), "{path}: {last:.300}");
            // Cut off by the relay's cap on an unfinished event, not ended by the
            // provider's timeout (which would say so instead): the cause, not a clock,
            // tells the two apart on a loaded machine.
            assert!(last.contains("grew past"), "{path}: {last:.300}");
            assert!(
                !text.contains("xxxx"),
                "{path}: half an event reached the client"
            );
        }
        let written = f.rogue.counters.unending_written.load(Ordering::Relaxed);
        eprintln!(
            "[faults] an event that never ends: the upstream wrote {} KiB in all",
            written / 1024
        );
        for r in f.records("f-unending-event", 2).await {
            eprintln!(
                "[faults] an event that never ends: {:?} recorded {:?}",
                r.api, r.outcome
            );
            // Cut at 16 MiB as broken off, long before the provider's timeout.
            assert_eq!(r.outcome, Outcome::StreamInterrupted);
        }
    })
    .await;
}
