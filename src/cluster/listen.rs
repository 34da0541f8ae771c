//! Change propagation: LISTEN on the schema's channel and re-read the routing state on
//! every notification, plus a periodic re-read (`[cluster] reread_ms`, ≤ 5 s) that covers
//! notifications lost while the listening connection was down. A drop and a reconnect are
//! each logged once and counted (`sluice_cluster_listener_{drops,reconnects}_total`).
//!
//! Two loops: the listener only wakes the re-reader (a `Notify` permit, so a burst of
//! notifications costs one re-read), and the re-reader never waits on the listener's socket.

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};

use super::{ClusterCounters, RETRY_PAUSE, reread};
use crate::state::AppState;
use crate::store::now_ms;

/// Listens until shutdown; each notification (and each reconnect) wakes the re-reader.
pub async fn run_listener(
    app: AppState,
    channel: String,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
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
                        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
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
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
}

/// Re-reads on every wake-up and every `reread_ms`, until shutdown.
pub async fn run_rereader(app: AppState, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut revoked_since = now_ms();
    let mut tick = tokio::time::interval(app.cluster.config.reread());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tick.tick() => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
        reread(&app, &mut revoked_since).await;
    }
}

async fn connect(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
