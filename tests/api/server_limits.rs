//! The whole-server limits a production proxy sets, as a misbehaving client meets them.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn app_with(server_settings: &str) -> TestApp {
    let settings = server_settings.to_owned();
    TestApp::spawn_edited(Db::Sqlite, Default::default(), move |text| {
        text.replace("shadow_queue = 4", &format!("shadow_queue = 4\n{settings}"))
    })
    .await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (or `limit` passes); returns what arrived.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| out)
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_cut_off() {
    let app = app_with("header_read_timeout_ms = 300").await;
    // Before the connection exists, so before the server's clock can start.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The head never ends: the server closes the connection after the configured 300 ms.
    // Well before the default (10 s), which would close it too had the setting been ignored;
    // the 4.7 s between are the slack a loaded machine may need.
    let got = read_to_close(&mut stream, PATIENCE).await;
    let elapsed = started.elapsed();
    assert!(
        got.is_some(),
        "the connection was still open after {PATIENCE:?}"
    );
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(5)).contains(&elapsed),
        "closed after {elapsed:?}, not after the configured 300 ms"
    );
    // A prompt client on another connection is unaffected.
    let ok = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn an_http2_client_that_never_asks_is_cut_off() {
    let app = app_with("header_read_timeout_ms = 300").await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let openings: [(&str, Vec<u8>); 3] = [
        ("part of the preface", PREFACE[..20].to_vec()),
        ("the preface", PREFACE.to_vec()),
        ("the preface and its settings", [PREFACE, SETTINGS].concat()),
    ];
    for (what, opening) in openings {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        stream.write_all(&opening).await.unwrap();
        // hyper's own header timeout does not cover HTTP/2: these were held for ever.
        let got = read_to_close(&mut stream, PATIENCE).await;
        let elapsed = started.elapsed();
        assert!(
            got.is_some(),
            "after {what}, the connection was still open after {PATIENCE:?}"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "after {what}, closed after {elapsed:?}"
        );
    }
    // A client that asks is served over HTTP/2, past the timeout.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let ok = h2
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.version(), reqwest::Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431() {
    let app = app_with("max_header_bytes = 8192").await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let big = "a".repeat(20_000);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n");
    // The server may answer and close before it has read everything: ignore write errors.
    let _ = stream.write_all(request.as_bytes()).await;
    let got = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server answers and closes");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let app = app_with("max_connections = 2\nheader_read_timeout_ms = 60000").await;
    // Two idle connections take both places.
    let first = TcpStream::connect(addr(&app)).await.unwrap();
    let _second = TcpStream::connect(addr(&app)).await.unwrap();
    // A third is not served while they are open…
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("{}/healthz", app.base);
    let waiting = {
        let client = client.clone();
        let url = url.clone();
        #[expect(clippy::disallowed_methods, reason = "a request the test awaits below")]
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond max_connections");
    // …and is, as soon as one closes.
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a place was free")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let app = TestApp::spawn().await;
    let key = app.key("acme").await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    // The test config allows 65 536 bytes; this client asks before sending 70 000.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 70000\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // No body follows: a server that answers `100 Continue` (or waits for the body) leaves
    // this read with that line (or with nothing when the time is up).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&got).contains("request_too_large") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"code\":\"request_too_large\""), "{text}");
    assert!(app.upstream.received().is_empty());
}

/// An HTTP/2 connection to `app`, driven by its own task: its sender, and the task, which
/// ends when the server closes the connection.
async fn h2_connection(
    app: &TestApp,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr(app)).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    // The client answers the server's pings for as long as the connection is open.
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's client connection, awaited by the test"
    )]
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driven)
}

fn h2_get(app: &TestApp, path: &str) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    hyper::Request::get(format!("{}{path}", app.base))
        .body(http_body_util::Full::default())
        .unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_timeout() {
    let app = app_with("header_read_timeout_ms = 300").await;
    let (mut sender, driven) = h2_connection(&app).await;
    // Taken before the request: the server's idle clock starts when its answer is done,
    // which may be a moment before this client has it.
    let idle_since = Instant::now();
    let ok = sender.send_request(h2_get(&app, "/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
    drop(ok);
    // Nothing more is asked: the server says GOAWAY and closes, as an HTTP/1 connection
    // idle that long is closed. Before, a client that answered pings held it for ever.
    tokio::time::timeout(PATIENCE, driven)
        .await
        .expect("the idle HTTP/2 connection was still open")
        .unwrap();
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(300), "closed after {idle:?}");
    assert!(
        idle < Duration::from_secs(5),
        "closed after {idle:?}, not ~300-600 ms"
    );
}

#[tokio::test]
async fn an_http2_request_in_flight_keeps_its_connection_open() {
    let app = app_with("header_read_timeout_ms = 300").await;
    let key = app.key("acme").await;
    let (mut sender, driven) = h2_connection(&app).await;
    // A stream whose upstream holds it after two events: in flight on the server (its
    // relay running) for over three header timeouts, until the test releases it.
    let body = serde_json::to_vec(&chat_body("gated", json!({"stream": true}))).unwrap();
    let request = hyper::Request::post(format!("{}/v1/chat/completions", app.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.upstream.state.release.notify_one();
    let streamed = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&streamed).ends_with("data: [DONE]\n\n"),
        "{streamed:?}"
    );
    // No GOAWAY came meanwhile: the connection still takes a new request.
    let ok = sender.send_request(h2_get(&app, "/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(!driven.is_finished());
}
