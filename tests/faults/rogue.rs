//! The misbehaving upstream: a raw TCP server that reads one HTTP/1.1 request and answers
//! with exactly the bytes (and the silences, and the resets) the request's `model` names.
//! No HTTP library sits between it and the wire, so it can do what none would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every misbehaviour, by the upstream model name that asks for it. The test config has a
/// route `f-<name>` for each (see [`config`]).
pub const FAULTS: &[&str] = &[
    "reset-before-headers",
    "reset-after-headers",
    "reset-mid-stream",
    "stall",
    "stall-mid-stream",
    "drip",
    "big-body",
    "many-events",
    "bad-utf8",
    "no-final-chunk",
    "close-mid-stream",
    "close-between-events",
    "firehose",
    "unending-event",
    "redirect",
    "switching-protocols",
];

/// How many content events `many-events` sends.
pub const MANY_EVENTS: usize = 100_000;
/// How large the content of `big-body` is: 50 MiB.
pub const BIG_BODY_CHARS: usize = 50 * 1024 * 1024;
/// The provider's `timeout_ms` in the test config: short, so stalls end quickly.
pub const ROGUE_TIMEOUT_MS: u64 = 1_000;
/// The `timeout_ms` of the provider `drip` goes through: longer than the drip's second
/// between bytes, so that no silence is ever long enough.
pub const DRIP_TIMEOUT_MS: u64 = 3_000;
/// The `timeout_ms` of the provider `unending-event` goes through: long enough that the
/// relay's cap on an unfinished event (16 MiB) ends it first. 20 s was not always: a debug
/// build relaying 16 MiB under a load average of 10 took longer, and the test saw the
/// timeout's error instead of the cap's.
pub const UNENDING_TIMEOUT_MS: u64 = 150_000;
/// The `timeout_ms` of the provider `big-body` goes through: the whole 50 MiB must arrive
/// within it, which a debug build on a busy shared runtime may take many seconds to do.
pub const BIG_BODY_TIMEOUT_MS: u64 = 150_000;

#[derive(Default)]
pub struct Counters {
    /// Body bytes `firehose` has managed to write so far.
    pub firehose_written: AtomicU64,
    /// Body bytes `unending-event` has managed to write so far.
    pub unending_written: AtomicU64,
}

pub struct Rogue {
    /// The provider base URL (`http://127.0.0.1:<port>/v1`).
    pub url: String,
    pub counters: Arc<Counters>,
}

impl Rogue {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the rogue upstream lives as long as the test"
        )]
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = c.clone();
                #[expect(clippy::disallowed_methods, reason = "one task per rogue connection")]
                tokio::spawn(async move {
                    let _ = serve(stream, &c).await;
                });
            }
        });
        Self { url, counters }
    }
}

/// The config for a provider `rogue` at `url`, and a version and route `f-<name>` per fault.
pub fn config(url: &str) -> String {
    let mut text = format!(
        "\n[providers.rogue]\nkind = \"openai\"\nbase_url = \"{url}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\ntimeout_ms = {ROGUE_TIMEOUT_MS}\n"
    );
    for (name, timeout_ms) in [
        ("drip", DRIP_TIMEOUT_MS),
        ("unending", UNENDING_TIMEOUT_MS),
        ("big", BIG_BODY_TIMEOUT_MS),
    ] {
        text.push_str(&format!(
            "\n[providers.rogue-{name}]\nkind = \"openai\"\nbase_url = \"{url}\"\napi_key_env = \"TEST_UPSTREAM_KEY\"\ntimeout_ms = {timeout_ms}\n"
        ));
    }
    for fault in FAULTS {
        let provider = match *fault {
            "drip" => "rogue-drip",
            "unending-event" => "rogue-unending",
            "big-body" => "rogue-big",
            _ => "rogue",
        };
        text.push_str(&format!(
            "\n[versions.v-{fault}]\nprovider = \"{provider}\"\nmodel = \"{fault}\"\nprice = {{ input_per_mtok = 2.50, output_per_mtok = 10.00 }}\n[routes.f-{fault}]\nstable = \"v-{fault}\"\n"
        ));
    }
    text
}

/// One chat completion chunk whose delta carries `content`, as a whole event.
pub fn event(content: &str) -> String {
    let c = json!({"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "created": 1, "model": "rogue",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {c}\n\n")
}

fn completion(content: &str) -> String {
    json!({"id": "chatcmpl-rogue", "object": "chat.completion", "created": 1, "model": "rogue",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
    .to_string()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn chunked(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

fn json_head(len: usize) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n")
        .into_bytes()
}

/// `text` with each `~` turned into the byte 0xFF, which is never UTF-8.
fn not_utf8(text: &str) -> Vec<u8> {
    text.bytes()
        .map(|b| if b == b'~' { 0xff } else { b })
        .collect()
}

/// Closes with a TCP reset instead of an orderly FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds the connection open, silent, for longer than any test runs.
async fn stall(stream: TcpStream) {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(stream);
}

/// Reads one request; returns its JSON body.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Value> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null))
}

/// A stream without length or chunks (its body ends where the connection closes): the
/// events `a` and `b`, then `tail`, then an orderly close.
async fn close_delimited(mut s: TcpStream, tail: &[u8]) -> std::io::Result<()> {
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        .await?;
    s.write_all(event("a").as_bytes()).await?;
    s.write_all(event("b").as_bytes()).await?;
    s.write_all(tail).await?;
    s.flush().await?;
    s.shutdown().await
}

async fn serve(mut s: TcpStream, counters: &Counters) -> std::io::Result<()> {
    let body = read_request(&mut s).await?;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    match (model.as_str(), stream) {
        ("reset-before-headers", _) => reset(s),
        ("reset-after-headers", true) => {
            s.write_all(SSE_HEAD).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(s);
        }
        ("reset-after-headers", false) => {
            // Promises 1000 bytes, sends the headers only.
            s.write_all(&json_head(1000)).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(s);
        }
        ("reset-mid-stream", _) => {
            s.write_all(SSE_HEAD).await?;
            s.write_all(&chunked(event("a").as_bytes())).await?;
            s.write_all(&chunked(event("b").as_bytes())).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(s);
        }
        ("stall", _) => stall(s).await,
        ("redirect", _) => {
            // A `base_url` that moved: a redirect with a body, never followed.
            let body = b"<html>moved</html>";
            s.write_all(
                format!(
                    "HTTP/1.1 302 Found\r\nlocation: https://elsewhere.example/v1/chat/completions\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
            s.write_all(body).await?;
            s.flush().await?;
        }
        ("switching-protocols", _) => {
            // An upstream that takes the call for an upgrade: a final 101 (the one 1xx an
            // HTTP/1 client does not wait past), then the connection held a moment.
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            )
            .await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ("stall-mid-stream", _) => {
            s.write_all(SSE_HEAD).await?;
            s.write_all(&chunked(event("a").as_bytes())).await?;
            s.flush().await?;
            stall(s).await;
        }
        ("drip", stream) => {
            // One byte per second, for as long as the peer listens.
            let text = if stream {
                let mut t = event("dripped");
                t.push_str("data: [DONE]\n\n");
                t
            } else {
                completion("dripped")
            };
            if stream {
                s.write_all(SSE_HEAD).await?;
            } else {
                s.write_all(&json_head(text.len())).await?;
            }
            s.flush().await?;
            for b in text.as_bytes() {
                let byte = [*b];
                let bytes = if stream {
                    chunked(&byte)
                } else {
                    byte.to_vec()
                };
                s.write_all(&bytes).await?;
                s.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if stream {
                s.write_all(b"0\r\n\r\n").await?;
            }
        }
        ("big-body", _) => {
            let text = completion(&"a".repeat(BIG_BODY_CHARS));
            s.write_all(&json_head(text.len())).await?;
            s.write_all(text.as_bytes()).await?;
            s.flush().await?;
        }
        ("many-events", _) => {
            s.write_all(SSE_HEAD).await?;
            let one = event("x");
            // A few hundred events per chunk, as a fast upstream's writes would carry them.
            let batch = one.repeat(500);
            for _ in 0..MANY_EVENTS / 500 {
                s.write_all(&chunked(batch.as_bytes())).await?;
            }
            let usage = json!({"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "created": 1, "model": "rogue", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": MANY_EVENTS, "total_tokens": MANY_EVENTS + 5}});
            s.write_all(&chunked(
                format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes(),
            ))
            .await?;
            s.write_all(b"0\r\n\r\n").await?;
            s.flush().await?;
        }
        ("bad-utf8", true) => {
            s.write_all(SSE_HEAD).await?;
            s.write_all(&chunked(event("ok ").as_bytes())).await?;
            // A content string holding a byte that is no UTF-8 at all.
            s.write_all(&chunked(&not_utf8(&event("bad ~")))).await?;
            s.write_all(&chunked(event(" end").as_bytes())).await?;
            s.write_all(&chunked(b"data: [DONE]\n\n")).await?;
            s.write_all(b"0\r\n\r\n").await?;
            s.flush().await?;
        }
        ("bad-utf8", false) => {
            let text = not_utf8(&completion("bad ~"));
            s.write_all(&json_head(text.len())).await?;
            s.write_all(&text).await?;
            s.flush().await?;
        }
        ("no-final-chunk", true) => {
            s.write_all(SSE_HEAD).await?;
            s.write_all(&chunked(event("a").as_bytes())).await?;
            s.write_all(&chunked(event("b").as_bytes())).await?;
            s.flush().await?;
            // An orderly close, but the chunked body never got its `0` chunk.
            s.shutdown().await?;
        }
        ("no-final-chunk", false) => {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            s.write_all(&chunked(completion("whole").as_bytes()))
                .await?;
            s.flush().await?;
            s.shutdown().await?;
        }
        ("close-mid-stream", _) => {
            // No length and no chunks: the body ends where the connection closes, which
            // here is halfway through the third event, before any finish reason.
            close_delimited(s, &event("c").as_bytes()[..20]).await?;
        }
        ("close-between-events", _) => {
            // The same, closed after the second event: the way the providers that send
            // neither `[DONE]` nor a finish reason end every stream.
            close_delimited(s, b"").await?;
        }
        ("firehose", _) => {
            // Large events as fast as the peer takes them, counted, until it goes away.
            s.write_all(SSE_HEAD).await?;
            let one = chunked(event(&"f".repeat(16 * 1024)).as_bytes());
            loop {
                s.write_all(&one).await?;
                counters
                    .firehose_written
                    .fetch_add(one.len() as u64, Ordering::Relaxed);
            }
        }
        ("unending-event", _) => {
            // One event that never ends: text as fast as the peer takes it, no blank line.
            s.write_all(SSE_HEAD).await?;
            s.write_all(&chunked(
                br#"data: {"type":"response.output_text.delta","delta":""#,
            ))
            .await?;
            let more = chunked(&[b'x'; 64 * 1024]);
            loop {
                s.write_all(&more).await?;
                counters
                    .unending_written
                    .fetch_add(more.len() as u64, Ordering::Relaxed);
            }
        }
        _ => {
            s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
        }
    }
    Ok(())
}
