//! Change propagation: LISTEN on the schema's channel and re-read the routing state on
//! every notification, plus a periodic re-read (`[cluster] reread_ms`, ≤ 5 s) that covers
//! notifications lost while the listening connection was down. A drop and a reconnect are
//! each logged once and counted (`sluice_cluster_listener_{drops,reconnects}_total`).
//!
//! Two loops: the listener only wakes the re-reader (a `Notify` permit, so a burst of
//! notifications costs one re-read), and the re-reader never waits on the listener's socket.

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ClusterCounters, RETRY_PAUSE};
use crate::state::AppState;
use crate::store::StoreError;
use crate::types::now_ms;

/// Listens until shutdown; each notification (and each reconnect) wakes the re-reader.
pub(crate) async fn run_listener(
    app: AppState,
    channel: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let cluster = app.cluster.clone();
    let mut listener: Option<PgListener> = None;
    // Whether the connection was lost since it last worked: the next success is a reconnect.
    let mut dropped = false;
    loop {
        if listener.is_none() {
            match connect(&app.settings.database_url, &channel).await {
                Ok(l) => {
                    listener = Some(l);
                    if dropped {
                        ClusterCounters::add(&cluster.counters.listener_reconnects, 1);
                        tracing::info!(channel = %channel, "change listener reconnected; re-reading what may have been missed");
                        dropped = false;
                    }
                    // Anything may have changed while nobody listened.
                    wake.notify_one();
                }
                Err(e) => {
                    if !dropped {
                        ClusterCounters::add(&cluster.counters.listener_drops, 1);
                        tracing::warn!(error = %e, reread_ms = cluster.config.reread_ms, "change listener cannot connect; re-reading periodically until it can");
                        dropped = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
        let Some(l) = listener.as_mut() else { continue };
        tokio::select! {
            got = l.try_recv() => match got {
                Ok(Some(_)) => {
                    ClusterCounters::add(&cluster.counters.notifications, 1);
                    wake.notify_one();
                }
                Ok(None) => {
                    ClusterCounters::add(&cluster.counters.listener_drops, 1);
                    tracing::warn!("change listener lost its connection; reconnecting");
                    listener = None;
                    dropped = true;
                }
                Err(e) => {
                    ClusterCounters::add(&cluster.counters.listener_drops, 1);
                    tracing::warn!(error = %e, "change listener failed; reconnecting");
                    listener = None;
                    dropped = true;
                }
            },
            _ = stop.cancelled() => break,
        }
    }
}

/// Re-reads on every wake-up and every `reread_ms`, until shutdown.
pub(crate) async fn run_rereader(app: AppState, wake: Arc<Notify>, stop: CancellationToken) {
    let mut revoked_since = now_ms();
    let mut tick = tokio::time::interval(app.cluster.config.reread());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        reread(&app, &mut revoked_since).await;
    }
}

async fn connect(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Re-reads everything other replicas may have changed: rollouts, pins, promoted stables
/// (through the controller), workspace limits and revoked keys. `revoked_since_ms` is
/// where the last successful re-read started (writer's clock).
pub(crate) async fn reread(app: &AppState, revoked_since_ms: &mut i64) {
    let cluster = &app.cluster;
    ClusterCounters::add(&cluster.counters.rereads, 1);
    let started = now_ms();
    let result = async {
        // Limits and keys first: they need no lock, and when the database is away their
        // failure spares the rollout re-read (which holds the controller's change lock).
        for (workspace, own) in app.store.all_limits().await? {
            if app.limits.own_limits(&workspace) != Some(own) {
                app.limits.set(&workspace, own);
            }
        }
        // Writers' clocks may be a little apart: look a minute back every time.
        for hash in app
            .store
            .revoked_keys_since(*revoked_since_ms - 60_000)
            .await?
        {
            app.keys.forget(&hash).await;
        }
        app.rollouts.refresh().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    match result {
        Ok(()) => {
            *revoked_since_ms = started;
            cluster.note_database(true, None);
        }
        Err(e) => {
            ClusterCounters::add(&cluster.counters.reread_failures, 1);
            cluster.note_failure("re-reading the routing state", &e);
        }
    }
}
