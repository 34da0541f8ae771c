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

use crate::auth::KeyCache;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
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

/// A sluice server, built and bound but not yet serving.
pub struct Server {
    listener: TcpListener,
    app: AppState,
    /// Background tasks, stopped in order and awaited on the way out.
    tasks: Tasks,
}

/// The cluster's loops, when this replica is one of several (PostgreSQL with
/// `[cluster]` on): heartbeat, the LISTEN for changes, the periodic re-read, and shipping.
fn spawn_cluster(tasks: &Tasks, app: &Arc<App>, cluster: &Arc<Cluster>) {
    if let (true, Some(channel)) = (cluster.enabled, app.store.channel()) {
        tracing::info!(replica = %cluster.id(), address = %cluster.replica.address, "joining the cluster");
        let wake = Arc::new(tokio::sync::Notify::new());
        let channel = channel.to_owned();
        tasks.spawn("cluster-heartbeat", Stage::Side, |stop| {
            crate::cluster::heartbeat::run(app.clone(), stop)
        });
        tasks.spawn("cluster-listener", Stage::Control, {
            let (app, wake) = (app.clone(), wake.clone());
            |stop| crate::cluster::listen::run_listener(app, channel, wake, stop)
        });
        tasks.spawn("cluster-rereader", Stage::Control, {
            let app = app.clone();
            |stop| crate::cluster::listen::run_rereader(app, wake, stop)
        });
        // Writer stage: it ships last, after the controller has stopped judging.
        // Stops with the controller, once the server has drained and the records finished
        // after their replies are in (`RecordSink::finish_replies`: no observation comes
        // after that), so that its closing batch is written before the heartbeat (a
        // `Side` task) takes this replica out of the live set.
        tasks.spawn("cluster-shipper", Stage::Control, |stop| {
            crate::cluster::ship::run(app.clone(), stop)
        });
    }
}

impl Server {
    /// Builds the server `settings` describe: connects the store (migrating it), binds the
    /// listen address, loads the catalog, the limits and the live rollouts, and starts the
    /// background tasks.
    ///
    /// # Errors
    /// When the telemetry exporter cannot be set up, the database cannot be reached or migrated,
    /// the address cannot be bound, or a version's client or a stored rollout cannot be loaded.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let traces = Traces::from_config(&settings.config.telemetry)?;
        Self::build_with_traces(settings, traces).await
    }

    /// As [`Server::build`], with spans going to `traces` (tests pass an in-memory exporter).
    ///
    /// # Errors
    /// As [`Server::build`], the telemetry exporter aside.
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
        let cluster = Arc::new(Cluster::new(
            settings.config.cluster.clone(),
            store.engine(),
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ));
        // Publishes the table: configured stables, promotions, and every live rollout.
        let rollouts = Arc::new(
            Controller::restore(
                store.clone(),
                catalog.clone(),
                settings.policies.clone(),
                settings.policies_dir.clone(),
                routing.clone(),
                tasks.clone(),
                cluster.enabled.then(|| cluster.clone()),
            )
            .await?,
        );
        // The routing state is loaded: `/healthz` may say ready.
        cluster.set_ready();

        let limits = Arc::new(LimitBook::new(settings.config.limits));
        for (workspace, own) in store.all_limits().await? {
            limits.set(&workspace, own);
        }
        let (sink, records) = RecordSink::new(settings.config.server.record_queue, limits.clone());
        let (shadows, shadow_jobs) = ShadowQueue::new(settings.config.server.shadow_queue.max(1));
        let sink = Arc::new(sink);
        let throttle = crate::throttle::ClientThrottle::new(&settings.config.server);
        let (response_book, placements) = crate::responses::book::ResponseBook::new();
        let app = Arc::new(App {
            settings,
            store: store.clone(),
            keys: KeyCache::default(),
            throttle,
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
            cluster: cluster.clone(),
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
        tasks.spawn("retention", Stage::Side, |stop| {
            crate::cluster::retention::run(app.clone(), stop)
        });
        spawn_cluster(&tasks, &app, &cluster);
        Ok(Self {
            listener,
            app,
            tasks,
        })
    }

    /// The address the server is bound to (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The server's shared state, for tests and embedding.
    pub fn state(&self) -> AppState {
        self.app.clone()
    }

    /// Serves until `stop` resolves or a background task dies, then shuts down in order.
    ///
    /// # Errors
    /// The server failed, or a background task died (`crate::tasks::TaskFailure`): the
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
        let router = crate::http::router(app.clone());
        let watched = tasks.clone();
        let limits = app.settings.config.server.clone();
        // Returns once every connection has ended: the cut ones' records are submitted.
        crate::http::server::serve(listener, router, &limits, grace, async move {
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
        })
        .await;
        // A connection ends once its reply is written; its record may still be queued
        // behind other tasks. Every record is in before anything stops.
        app.sink.finish_replies().await;
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
