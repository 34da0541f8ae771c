//! Shipping observations: every `[cluster] flush_ms`, what this replica measured of each live
//! rollout since the last flush goes to PostgreSQL as one row per rollout, in one statement.
//! The judging replica reads them back in order (`rollout::sync`).
//!
//! A failed flush keeps its batches and retries them with the next one, up to
//! `observation_buffer` observations; past that the oldest batches are dropped and counted.
//! A replica killed between two flushes loses at most one interval's observations; the last
//! flush of a clean stop is marked closing, so that the judging replica can tell the two
//! apart and count the loss (`rollout::control`).

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

use super::ClusterCounters;
use crate::state::AppState;
use crate::store::ShippedBatch;

/// Ships until `stop`, then once more.
pub(crate) async fn run(app: AppState, stop: CancellationToken) {
    let cluster = app.cluster.clone();
    let mut seq = 0i64;
    let mut pending: VecDeque<(ShippedBatch, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(cluster.config.flush());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        flush(&app, &mut seq, &mut pending, stopping).await;
        if stopping {
            break;
        }
    }
}

async fn flush(
    app: &AppState,
    seq: &mut i64,
    pending: &mut VecDeque<(ShippedBatch, u64)>,
    closing: bool,
) {
    let cluster = &app.cluster;
    pending.extend(app.rollouts.drain_for_ship(cluster.id(), seq, closing));
    let mut buffered: u64 = pending.iter().map(|(_, n)| n).sum();
    while buffered > cluster.config.observation_buffer as u64 {
        let Some((_, n)) = pending.pop_front() else {
            break;
        };
        buffered -= n;
        ClusterCounters::add(&cluster.counters.observations_dropped, n);
        tracing::warn!(
            observations = n,
            "observation buffer full while the database is away: oldest batch dropped"
        );
    }
    if pending.is_empty() {
        return;
    }
    let batches: Vec<ShippedBatch> = pending.iter().map(|(b, _)| b.clone()).collect();
    match app.store.ship_observations(&batches).await {
        Ok(()) => {
            ClusterCounters::add(&cluster.counters.batches_shipped, batches.len() as u64);
            ClusterCounters::add(&cluster.counters.observations_shipped, buffered);
            pending.clear();
            cluster.note_database(true, None);
        }
        Err(e) => {
            ClusterCounters::add(&cluster.counters.ship_failures, 1);
            cluster.note_failure("shipping observations (will retry)", &e);
        }
    }
}
