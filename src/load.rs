//! `sluice load`: a small traffic generator for trying sluice out.
//!
//! It sends chat requests to one route at a fixed rate (open loop: a slow answer does not
//! slow the next request down, as with real users), one in three streamed so that time to
//! first token is measured too, and prints one progress line: requests sent, answered,
//! failed, the error rate and the median latency. It stops after `--duration` or on Ctrl-C
//! and prints the totals. It is a try-out tool, not a benchmark: for overhead figures see
//! `benches/`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Requests in flight at once; a tick that finds this many still waiting is skipped and
/// counted, so a stalled gateway is visible instead of piling up connections.
const MAX_IN_FLIGHT: u64 = 512;
/// How often the progress line is redrawn (a terminal) or printed (a log or a pipe).
const REDRAW_TTY: Duration = Duration::from_millis(500);
const REDRAW_LOG: Duration = Duration::from_secs(10);
/// The latency median is taken over this many newest answers.
const LATENCY_WINDOW: usize = 512;

const PROMPTS: [&str; 6] = [
    "Where is my order?",
    "How do I reset my password?",
    "Can I change the delivery address?",
    "What is your refund policy?",
    "Summarize my last invoice in one sentence.",
    "Is there a student discount?",
];

#[derive(Debug, Clone, clap::Args)]
/// `sluice load`'s arguments: the route, the rate, the key and how long.
pub struct LoadArgs {
    /// The route to send to (what an app puts in `model`).
    #[arg(long)]
    pub(crate) route: String,
    /// Requests per second.
    #[arg(long, default_value_t = 20.0, value_parser = parse_rps)]
    pub(crate) rps: f64,
    /// A gateway API key (`sluice keys create`); or set SLUICE_KEY.
    #[arg(long, env = "SLUICE_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// Base URL of a running sluice.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "SLUICE_URL")]
    pub(crate) url: String,
    /// Stop after this long (e.g. `90s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
}

fn parse_rps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 10_000.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate between 0 and 10000 per second"
        )),
    }
}

/// What the generator has seen so far.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
}

impl Tally {
    fn line(&self, elapsed: Duration) -> String {
        let ok = self.ok.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let done = ok + failed;
        let error_pct = if done == 0 {
            0.0
        } else {
            100.0 * failed as f64 / done as f64
        };
        let p50 = {
            let mut l = self.latencies_ms.lock().expect("not poisoned").clone();
            l.sort_by(f64::total_cmp);
            l.get(l.len() / 2).copied()
        };
        let skipped = self.skipped.load(Ordering::Relaxed);
        format!(
            "{:>6.0}s  sent {}  answered {ok}  failed {failed} ({error_pct:.1} %)  p50 {}{}",
            elapsed.as_secs_f64(),
            self.sent.load(Ordering::Relaxed),
            p50.map_or("-".into(), |p| format!("{p:.0} ms")),
            if skipped > 0 {
                format!("  skipped {skipped} (too many in flight)")
            } else {
                String::new()
            }
        )
    }

    fn record(&self, ok: bool, latency: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut l = self.latencies_ms.lock().expect("not poisoned");
        if l.len() >= LATENCY_WINDOW {
            l.remove(0);
        }
        l.push(latency.as_secs_f64() * 1000.0);
    }
}

/// `sluice load`: sends requests at the fixed rate until `--duration` ends or Ctrl-C, with one
/// progress line, then prints the totals.
///
/// # Errors
/// When no key is given (`--key` or `SLUICE_KEY`), or the first request cannot reach the
/// gateway or is refused.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.key.is_none() {
        // clap would only say "--key is required"; the variable is the usual way.
        anyhow::bail!(
            "no API key: pass --key or set SLUICE_KEY (create one with `sluice keys create --workspace ID`)"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    check_first_request(&http, &url, &args).await?;

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "sending {} requests per second to route `{}` at {} (Ctrl-C stops)",
        args.rps, args.route, args.url
    );
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut redraw = tokio::time::interval(if tty { REDRAW_TTY } else { REDRAW_LOG });
    redraw.tick().await;
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut ctrl_c => break,
            _ = redraw.tick() => {
                let line = tally.line(started.elapsed());
                if tty {
                    eprint!("\r{line}\x1b[K");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{line}");
                }
            }
            _ = tick.tick() => {
                if tally.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    tally.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                n += 1;
                tally.sent.fetch_add(1, Ordering::Relaxed);
                tally.in_flight.fetch_add(1, Ordering::Relaxed);
                let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
                let body = request_body(&args.route, n);
                let key = args.key.clone().unwrap_or_default();
                #[expect(
                    clippy::disallowed_methods,
                    reason = "a CLI-local request of the load generator; the command waits for in-flight ones before it ends"
                )]
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let ok = send(&http, &url, &key, &body).await;
                    tally.record(ok, t0.elapsed());
                    tally.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    // Let what is in flight land (briefly) so the totals count it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tally.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tty {
        eprintln!();
    }
    eprintln!("done: {}", tally.line(started.elapsed()).trim_start());
    Ok(())
}

/// The `n`th request: prompts rotate, one in three streams, and each request carries a
/// `user` so that user-sticky policies see many users.
fn request_body(route: &str, n: u64) -> Value {
    json!({
        "model": route,
        "stream": n.is_multiple_of(3),
        "user": format!("load-user-{}", n % 200),
        "messages": [{"role": "user", "content": PROMPTS[(n as usize) % PROMPTS.len()]}],
    })
}

/// Sends one request and reads the whole answer; `true` when it succeeded. A stream that
/// ends with an error event counts as failed.
async fn send(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> bool {
    let Ok(response) = http.post(url).bearer_auth(key).json(body).send().await else {
        return false;
    };
    let ok = response.status().is_success();
    match response.bytes().await {
        Ok(bytes) => ok && !(body["stream"] == true && contains_error_event(&bytes)),
        Err(_) => false,
    }
}

fn contains_error_event(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes)
        .lines()
        .any(|l| l.starts_with("data: {\"error\""))
}

/// One request before the loop, so that a wrong key, route or URL stops at once with the
/// gateway's own message instead of a screen of failures.
async fn check_first_request(
    http: &reqwest::Client,
    url: &str,
    args: &LoadArgs,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .bearer_auth(args.key.as_deref().unwrap_or_default())
        .json(&request_body(&args.route, 1))
        .send()
        .await
        .with_context(|| format!("cannot reach sluice at {url}: is `sluice serve` running?"))?;
    let status = response.status();
    if status.is_client_error() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("the gateway refused the first request: {status}: {message}");
    }
    let _ = response.bytes().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_in_three_streams_and_prompts_rotate() {
        let bodies: Vec<Value> = (1..=6).map(|n| request_body("chat", n)).collect();
        let streamed = bodies.iter().filter(|b| b["stream"] == true).count();
        assert_eq!(streamed, 2);
        assert!(bodies.iter().all(|b| b["model"] == "chat"));
        assert_ne!(bodies[0]["messages"], bodies[1]["messages"]);
    }

    #[test]
    fn the_progress_line_counts_failures_and_the_median() {
        let t = Tally::default();
        t.sent.store(4, Ordering::Relaxed);
        for ms in [10, 20, 30] {
            t.record(true, Duration::from_millis(ms));
        }
        t.record(false, Duration::from_millis(40));
        let line = t.line(Duration::from_secs(3));
        assert!(line.contains("sent 4"), "{line}");
        assert!(line.contains("answered 3"), "{line}");
        assert!(line.contains("failed 1 (25.0 %)"), "{line}");
        assert!(line.contains("p50 30 ms"), "{line}");
    }

    #[test]
    fn a_stream_error_event_is_a_failure() {
        assert!(contains_error_event(
            b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n"
        ));
        assert!(!contains_error_event(
            b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"
        ));
    }

    #[test]
    fn rates_outside_the_range_are_refused() {
        assert!(parse_rps("20").is_ok());
        assert!(parse_rps("0").is_err());
        assert!(parse_rps("fast").is_err());
    }
}
