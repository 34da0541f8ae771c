//! Building and running the gateway: `build` binds the listener (port 0 works, for tests),
//! connects the store and starts the background tasks; `run_until_stopped` serves until the
//! stop signal, lets in-flight requests finish within the grace period, then flushes every
//! buffered record before it returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::KeyCache;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::limits::LimitBook;
use crate::measure::sink::RecordSink;
use crate::resolve::{Catalog, RoutingTable};
use crate::rollout::control::Controller;
use crate::shadow::{self, ShadowQueue};
use crate::state::{App, AppState};
use crate::store::Store;
use crate::traces::Traces;

pub struct Server {
    listener: TcpListener,
    app: AppState,
    /// Background tasks, all stopped through `shutdown` and awaited on the way out.
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
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
            cluster: cluster.clone(),
        });
        let (shutdown, stopped) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(rollouts.run(stopped.clone())),
            tokio::spawn(shadow::run_sender(
                shadow_jobs,
                store.clone(),
                stopped.clone(),
            )),
            tokio::spawn(async move { sink.run_writer(records, store, stopped).await }),
        ];
        tasks.push(tokio::spawn(crate::cluster::retention::run(
            app.clone(),
            shutdown.subscribe(),
        )));
        if let (true, Some(channel)) = (cluster.enabled, app.store.channel()) {
            tracing::info!(replica = %cluster.id(), address = %cluster.replica.address, "joining the cluster");
            let wake = Arc::new(tokio::sync::Notify::new());
            tasks.extend([
                tokio::spawn(crate::cluster::run_heartbeat(
                    app.clone(),
                    shutdown.subscribe(),
                )),
                tokio::spawn(crate::cluster::listen::run_listener(
                    app.clone(),
                    channel.to_owned(),
                    wake.clone(),
                    shutdown.subscribe(),
                )),
                tokio::spawn(crate::cluster::listen::run_rereader(
                    app.clone(),
                    wake,
                    shutdown.subscribe(),
                )),
                tokio::spawn(crate::cluster::ship::run(app.clone(), shutdown.subscribe())),
            ]);
        }
        Ok(Self {
            listener,
            app,
            tasks,
            shutdown,
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

    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            app,
            tasks,
            shutdown,
        } = self;
        let grace = Duration::from_millis(app.settings.config.server.shutdown_grace_ms);
        let (stopping_tx, mut stopping) = watch::channel(false);
        let router = crate::http::router(app.clone());
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            stop.await;
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
        let _ = shutdown.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let counters = app.sink.counters();
        tracing::info!(
            records_written = counters.written,
            records_dropped = counters.dropped,
            "stopped"
        );
        app.traces.shutdown();
        app.store.close().await;
        Ok(())
    }
}
