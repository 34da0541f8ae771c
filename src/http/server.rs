//! The accept loop: hyper's HTTP/1 and HTTP/2 server under the limits a production proxy
//! sets, which `axum::serve` leaves at hyper's defaults.
//!
//! - `header_read_timeout_ms`: a connection that has not sent a whole request head in this
//!   long is closed (slow-header clients hold no connection for ever). hyper starts that
//!   clock only once the connection has said which HTTP version it speaks, so a connection
//!   that sends nothing at all would be held for ever; the same limit applies to its first
//!   byte here, and to its first request (hyper's timeout covers HTTP/1 heads only: an
//!   HTTP/2 client could hold a connection with part of its preface, or with a preface and
//!   no request);
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// How long an HTTP/2 connection may go without a frame before it is pinged, and how long
/// the ping may go unanswered before the connection is closed.
pub(crate) const HTTP2_PING_EVERY: Duration = Duration::from_secs(20);

/// hyper's HTTP/1 and HTTP/2 connection settings under `limits`.
fn connection_builder(limits: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
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
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ServerConfig,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Ends the wait for a connection's first byte when the server stops.
    let stopping = CancellationToken::new();
    // Ends the connections still open when the grace period is over.
    let cut = CancellationToken::new();
    let connections = TaskTracker::new();
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
            watcher: graceful.watcher(),
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
        () = graceful.shutdown() => {}
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    /// The server stops: no first byte is waited for any more.
    stopping: CancellationToken,
    /// The grace period is over: the connection is dropped.
    cut: CancellationToken,
    /// `header_read_timeout_ms`: the wait for the first byte, then for the first request.
    header_timeout: Duration,
}

impl Connection {
    async fn serve(self) {
        let Connection {
            stream,
            peer,
            router,
            builder,
            watcher,
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
        // Set by the connection's first request: until then the header timeout bounds it.
        let asked = Arc::new(AtomicBool::new(false));
        let service = hyper::service::service_fn({
            let asked = asked.clone();
            move |mut request: hyper::Request<_>| {
                asked.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        // hyper's header timeout covers HTTP/1 only: an HTTP/2 client could hold the
        // connection with part of its preface, or a preface and no request, for ever.
        let no_request = async {
            tokio::time::sleep(header_timeout).await;
            if asked.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = watcher.watch(connection) => {
                if let Err(e) = served {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
            }
            () = cut.cancelled() => {}
            () = no_request => {
                tracing::debug!(peer = %peer, "no request within the header timeout; closing");
            }
        }
    }
}
