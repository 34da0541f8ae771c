//! The accept loop: hyper's HTTP/1 and HTTP/2 server under the limits a production proxy
//! sets, which `axum::serve` leaves at hyper's defaults.
//!
//! - `header_read_timeout_ms`: a connection that has not sent a whole request head in this
//!   long is closed (slow-header clients hold no connection for ever). hyper starts that
//!   clock only once the connection has said which HTTP version it speaks, so a connection
//!   that sends nothing at all would be held for ever; the same limit applies to its first
//!   byte here, and to its first request (hyper's timeout covers HTTP/1 heads only: an
//!   HTTP/2 client could hold a connection with part of its preface, or with a preface and
//!   no request). The same limit closes a connection idle that long: hyper's HTTP/1 clock runs while it
//!   waits for the next request's head, and an HTTP/2 connection with no request in flight
//!   for that long is sent a `GOAWAY` and closed here (an HTTP/2 client that answers pings
//!   and never asks again held its connection, and one of `max_connections`, for ever);
//! - `max_header_bytes`: a request head larger than this is answered 431 (hyper's floor is
//!   8 KiB);
//! - `max_connections`: connections beyond this wait in the kernel's backlog, unaccepted,
//!   until one closes;
//! - `http2_max_concurrent_streams`: streams per HTTP/2 connection; an HTTP/2 connection
//!   is pinged after [`HTTP2_PING_EVERY`] without a frame and closed when the ping is not
//!   answered within as long again (a peer gone without a FIN).
//!
//! Each connection's handler sees its peer as axum's `ConnectInfo<SocketAddr>`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// How long an HTTP/2 connection may go without a frame before it is pinged, and how long
/// the ping may go unanswered before the connection is closed.
pub(crate) const HTTP2_PING_EVERY: Duration = Duration::from_secs(20);

/// hyper's HTTP/1 and HTTP/2 connection settings under `limits`; HTTP/2 streams run on
/// `streams`.
fn connection_builder(
    limits: &ServerConfig,
    streams: StreamExecutor,
) -> auto::Builder<StreamExecutor> {
    let mut builder = auto::Builder::new(streams);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // A peer that stops answering pings is gone: its connection is closed, its slot freed.
        .keep_alive_interval(Some(HTTP2_PING_EVERY))
        .keep_alive_timeout(HTTP2_PING_EVERY);
    builder
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits
/// up to `grace` for the open connections to finish their requests. What still runs then
/// is cut: each connection task drops its requests, and their meters record them (outcome
/// `client_disconnected`), so that every record is submitted before this returns, or, for
/// a whole answer finished after its reply on the single-threaded runtime, queued: the
/// caller runs those (`RecordSink::finish_replies`) before it stops the record writer.
/// Over HTTP/2, hyper runs each request in a task of its own: [`StreamExecutor`] tracks
/// those with the connections and ends them at the cut, for the same promise.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ServerConfig,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // The server stops: each connection ends the wait for its first byte, or finishes the
    // requests it has and closes (HTTP/2: `GOAWAY`).
    let stopping = CancellationToken::new();
    // Ends the connections, and their HTTP/2 streams, still open when the grace period is
    // over.
    let cut = CancellationToken::new();
    let connections = TaskTracker::new();
    let streams = StreamExecutor {
        tasks: connections.clone(),
        cut: cut.clone(),
    };
    let builder = Arc::new(connection_builder(limits, streams));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streams are relayed event by event; Nagle would hold small events back.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            router: router.clone(),
            builder: builder.clone(),
            stopping: stopping.clone(),
            cut: cut.clone(),
            header_timeout: Duration::from_millis(limits.header_read_timeout_ms),
        };
        // One task per connection, tracked here: `serve` returns only once each has ended.
        connections.spawn(async move {
            connection.serve().await;
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                connections = connections.len(),
                "grace period over; cutting the requests still running"
            );
            cut.cancel();
        }
    }
    connections.wait().await;
}

/// One accepted connection and what its task needs.
struct Connection {
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    builder: Arc<auto::Builder<StreamExecutor>>,
    /// The server stops: no first byte is waited for any more, and the connection closes
    /// once its requests are answered.
    stopping: CancellationToken,
    /// The grace period is over: the connection is dropped.
    cut: CancellationToken,
    /// `header_read_timeout_ms`: the wait for the first byte, then for the first request,
    /// and how long an HTTP/2 connection may have no request in flight.
    header_timeout: Duration,
}

impl Connection {
    async fn serve(self) {
        let Connection {
            stream,
            peer,
            router,
            builder,
            stopping,
            cut,
            header_timeout,
        } = self;
        // A connection that sends nothing is closed after the header timeout (hyper's own
        // clock starts only with the first bytes); an empty peek is a closed one.
        let mut probe = [0u8; 1];
        let spoke = tokio::select! {
            peeked = tokio::time::timeout(header_timeout, stream.peek(&mut probe)) => {
                matches!(peeked, Ok(Ok(1..)))
            }
            () = stopping.cancelled() => false,
        };
        if !spoke {
            return;
        }
        let requests = Arc::new(Requests::default());
        let service = hyper::service::service_fn({
            let requests = requests.clone();
            move |mut request: hyper::Request<_>| {
                let held = requests.start(request.version());
                request.extensions_mut().insert(ConnectInfo(peer));
                let answer = router.clone().oneshot(request);
                async move {
                    let response = answer.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| HeldBody { body, held }))
                }
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let mut connection = std::pin::pin!(connection);
        // hyper's header timeout covers HTTP/1 only: an HTTP/2 client could hold the
        // connection with part of its preface, or a preface and no request, for ever.
        let no_request = async {
            tokio::time::sleep(header_timeout).await;
            if requests.started.load(Ordering::Relaxed) > 0 {
                std::future::pending::<()>().await;
            }
        };
        let mut no_request = std::pin::pin!(no_request);
        let idle = requests.idle_for(header_timeout);
        let mut idle = std::pin::pin!(idle);
        let mut closing = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = cut.cancelled() => return,
                () = &mut no_request => {
                    tracing::debug!(peer = %peer, "no request within the header timeout; closing");
                    return;
                }
                () = stopping.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = &mut idle, if !closing => {
                    tracing::debug!(peer = %peer, "HTTP/2 connection idle for the header timeout; closing");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Where hyper runs an HTTP/2 connection's streams (one task each): tracked with the
/// connections, so that the server's stop waits for them, and ended at the cut, so that a
/// request still running then is dropped, and recorded, before the record writer stops.
#[derive(Clone)]
struct StreamExecutor {
    tasks: TaskTracker,
    cut: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let cut = self.cut.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stream => {}
                () = cut.cancelled() => {}
            }
        });
    }
}

/// The requests of one connection: how many have started, and, over HTTP/2, how many are
/// still in flight (until their response body is done or dropped). HTTP/1 requests are
/// only numbered: hyper's own clock closes an idle HTTP/1 connection, and a request's
/// path pays nothing more than the count.
#[derive(Default)]
struct Requests {
    started: AtomicU64,
    /// HTTP/2 requests started.
    started_h2: AtomicU64,
    in_flight: AtomicUsize,
    /// Woken when the last HTTP/2 request in flight ends.
    ended: Notify,
}

impl Requests {
    /// Numbers a request; over HTTP/2, holds it in flight until the guard is dropped.
    fn start(self: &Arc<Self>, version: hyper::Version) -> Option<InFlight> {
        self.started.fetch_add(1, Ordering::Relaxed);
        (version == hyper::Version::HTTP_2).then(|| {
            self.started_h2.fetch_add(1, Ordering::Relaxed);
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            InFlight(self.clone())
        })
    }

    /// Resolves once an HTTP/2 connection has had no request in flight for `limit` (and
    /// none started meanwhile): between `limit` and twice it after its last request ended.
    /// Never over HTTP/1, whose requests are not held.
    async fn idle_for(&self, limit: Duration) {
        loop {
            if self.started_h2.load(Ordering::Relaxed) == 0
                && self.started.load(Ordering::Relaxed) > 0
            {
                // An HTTP/1 connection (it never turns into HTTP/2): no timer for its life.
                std::future::pending::<()>().await;
            }
            let ended = self.ended.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                ended.await;
                continue;
            }
            let started = self.started_h2.load(Ordering::Relaxed);
            tokio::time::sleep(limit).await;
            if started > 0
                && self.in_flight.load(Ordering::Acquire) == 0
                && self.started_h2.load(Ordering::Relaxed) == started
            {
                return;
            }
        }
    }
}

/// One HTTP/2 request in flight on its connection.
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_one();
        }
    }
}

/// A response body that holds its HTTP/2 request in flight until it is done or dropped
/// (a stream's relay runs long after the handler returned).
struct HeldBody {
    body: axum::body::Body,
    held: Option<InFlight>,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
