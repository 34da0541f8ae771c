//! Building and running the gateway: `build` binds the listener (port 0 works, for tests),
//! connects the store and starts the background tasks; `run_until_stopped` serves until the
//! stop signal (or until a background task dies, see [`crate::tasks`]), lets in-flight
//! requests finish within the grace period, stops the background tasks in order, and so
//! flushes every buffered record before it returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::KeyCache;
use crate::catalog::Catalog;
use crate::limits::LimitBook;
use crate::measure::sink::RecordSink;
use crate::resolve::RoutingTable;
use crate::rollout::control::Controller;
use crate::settings::Settings;
use crate::shadow::{self, ShadowQueue};
use crate::state::{App, AppState};
use crate::store::Store;
use crate::tasks::{Stage, Tasks};
use crate::traces::Traces;

pub struct Server {
    listener: TcpListener,
    app: AppState,
    /// Background tasks, stopped in order and awaited on the way out.
    tasks: Tasks,
}

impl Server {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let traces = Traces::from_config(&settings.config.telemetry)?;
        Self::build_with_traces(settings, traces).await
    }

    /// As [`Server::build`], with spans going to `traces` (tests pass an in-memory exporter).
    pub async fn build_with_traces(settings: Settings, traces: Traces) -> anyhow::Result<Self> {
        // One TLS provider for every client in the process (reqwest is built without one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::connect(&settings.database_url).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        let catalog = Arc::new(Catalog::from_settings(&settings)?);
        let routing = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
        let tasks = Tasks::new();
        // Publishes the table: configured stables, promotions, and every live rollout.
        let rollouts = Arc::new(
            Controller::restore(
                store.clone(),
                catalog.clone(),
                settings.policies.clone(),
                settings.policies_dir.clone(),
                routing.clone(),
                tasks.clone(),
            )
            .await?,
        );

        let limits = Arc::new(LimitBook::new(settings.config.limits));
        for (workspace, own) in store.all_limits().await? {
            limits.set(&workspace, own);
        }
        let (sink, records) = RecordSink::new(settings.config.server.record_queue, limits.clone());
        let (shadows, shadow_jobs) = ShadowQueue::new(settings.config.server.shadow_queue.max(1));
        let sink = Arc::new(sink);
        let (response_book, placements) = crate::responses::book::ResponseBook::new();
        let app = Arc::new(App {
            settings,
            store: store.clone(),
            keys: KeyCache::default(),
            catalog,
            routing,
            sink: sink.clone(),
            rollouts: rollouts.clone(),
            schemas: Arc::default(),
            guardrail_counts: Arc::default(),
            shadows: Arc::new(shadows),
            limits,
            traces,
            tasks: tasks.clone(),
            response_book: Arc::new(response_book),
        });
        tasks.spawn("rollout-controller", Stage::Control, |stop| {
            rollouts.run(stop)
        });
        shadow::start_senders(&tasks, shadow_jobs, store.clone());
        let book_store = store.clone();
        tasks.spawn("response-book-writer", Stage::Writer, |stop| {
            crate::responses::book::run_writer(placements, book_store, stop)
        });
        tasks.spawn("record-writer", Stage::Writer, |stop| async move {
            sink.run_writer(records, store, stop).await
        });
        Ok(Self {
            listener,
            app,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> AppState {
        self.app.clone()
    }

    /// Serves until `stop` resolves or a background task dies, then shuts down in order.
    ///
    /// # Errors
    /// The server failed, or a background task died ([`crate::tasks::TaskFailure`]): the
    /// shutdown is as clean as for `stop`, and the error makes `sluice serve` exit non-zero
    /// so that the orchestrator restarts it.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            app,
            tasks,
        } = self;
        let grace = Duration::from_millis(app.settings.config.server.shutdown_grace_ms);
        let (stopping_tx, mut stopping) = watch::channel(false);
        let router = crate::http::router(app.clone());
        let watched = tasks.clone();
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            tokio::select! {
                _ = stop => {}
                failure = watched.failed() => {
                    tracing::error!(task = failure.task, "stopping because a background task died");
                }
            }
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "stopping: no new connections, in-flight requests finish"
            );
            let _ = stopping_tx.send(true);
        });
        let mut serve = std::pin::pin!(serve.into_future());
        tokio::select! {
            result = &mut serve => result?,
            _ = async { let _ = stopping.wait_for(|s| *s).await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over; cutting the requests still running");
            }
        }
        // Records of requests cut at the grace limit were submitted when they were dropped.
        tasks.shutdown(grace).await;
        let counters = app.sink.counters();
        tracing::info!(
            records_written = counters.written,
            records_dropped = counters.dropped,
            "stopped"
        );
        app.traces.shutdown();
        app.store.close().await;
        match tasks.failure() {
            Some(failure) => Err(failure.clone().into()),
            None => Ok(()),
        }
    }
}
