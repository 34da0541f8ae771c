//! The heartbeat: every `[cluster] heartbeat_ms` this replica writes its row in
//! `cluster_replicas`, counts the live replicas (one silent for [`MISSED_HEARTBEATS`]
//! intervals is gone) and re-divides the workspace limits when that count changes.
//! A clean stop removes the row at once.

use tokio_util::sync::CancellationToken;

use super::{ClusterCounters, MISSED_HEARTBEATS};
use crate::state::AppState;
use crate::store::StoreError;

/// Gone replicas stay listed (as gone) this many heartbeat intervals, then are forgotten.
const FORGET_AFTER_HEARTBEATS: i64 = 60;

/// Heartbeats until `stop`; keeps the live-replica count (and so the limit shares) current.
pub(crate) async fn run(app: AppState, stop: CancellationToken) {
    let cluster = app.cluster.clone();
    let mut tick = tokio::time::interval(cluster.config.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => beat(&app).await,
            _ = stop.cancelled() => break,
        }
    }
    // A clean stop leaves at once instead of being shown as gone after three intervals.
    if let Err(e) = app
        .store
        .remove_replicas(Some(cluster.id()), i64::MAX / 2)
        .await
    {
        tracing::warn!(error = %e, "could not deregister this replica");
    }
}

async fn beat(app: &AppState) {
    let cluster = &app.cluster;
    let result = async {
        app.store.heartbeat(&cluster.replica).await?;
        let (replicas, now) = app.store.replicas().await?;
        let gone_after = (MISSED_HEARTBEATS * cluster.config.heartbeat_ms) as i64;
        let live_ids: std::collections::BTreeSet<String> = replicas
            .iter()
            .filter(|r| now - r.heartbeat_at_ms <= gone_after)
            .map(|r| r.id.clone())
            .collect();
        let live = live_ids.len().max(1) as u64;
        cluster.set_live_ids(live_ids);
        if cluster.set_live_replicas(live) != live {
            tracing::info!(
                live_replicas = live,
                "live replicas changed; workspace limits re-divided"
            );
            app.limits.set_share(live as u32);
        }
        app.store
            .remove_replicas(
                None,
                FORGET_AFTER_HEARTBEATS * cluster.config.heartbeat_ms as i64,
            )
            .await?;
        Ok::<_, StoreError>(())
    }
    .await;
    match result {
        Ok(()) => cluster.note_database(true, None),
        Err(e) => {
            ClusterCounters::add(&cluster.counters.heartbeat_failures, 1);
            cluster.note_failure("the heartbeat", &e);
        }
    }
}
