//! Retention: rows older than `[database] retention` (or the table's own entry in
//! `[database.retention_per_table]`) are deleted in small batches, off the request path,
//! by one replica at a time (the holder of the maintenance lease; SQLite: the process).
//! A live rollout's events and observations are never pruned.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ClusterCounters, MAINTENANCE_LEASE};
use crate::config::cluster::PrunedTable;
use crate::state::AppState;
use crate::store::{Store, StoreError};
use crate::types::now_ms;

/// How often the pruner looks for old rows.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per statement: short transactions, so writers never wait long behind one.
pub(crate) const PRUNE_BATCH: i64 = 1_000;
/// Pause between two batches of one table, to leave the database to the request writers.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// Deletes every table's rows older than its retention; returns rows deleted per table.
/// `tables` pairs a table with how long its rows are kept; `now_ms` is milliseconds since the
/// Unix epoch. Deletes in batches of `PRUNE_BATCH` rows, pausing between them.
///
/// # Errors
/// [`StoreError::Database`] when a delete fails; the tables before it stay pruned.
pub async fn prune_once(
    store: &Store,
    tables: &[(PrunedTable, Duration)],
    now_ms: i64,
) -> Result<Vec<(PrunedTable, u64)>, StoreError> {
    let mut done = Vec::new();
    for (table, keep) in tables {
        let before = now_ms - keep.as_millis() as i64;
        let mut total = 0;
        loop {
            let n = store.prune(*table, before, PRUNE_BATCH).await?;
            total += n;
            if (n as i64) < PRUNE_BATCH {
                break;
            }
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        done.push((*table, total));
    }
    Ok(done)
}

/// Prunes every [`PRUNE_EVERY`] until `stop` (only waits for it without a retention).
pub(crate) async fn run(app: AppState, stop: CancellationToken) {
    let tables = app.settings.config.database.retention_config().tables();
    if tables.is_empty() {
        stop.cancelled().await;
        return;
    }
    let cluster = app.cluster.clone();
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        if cluster.enabled {
            // Held for two rounds: the holder keeps it while alive, another takes it after.
            let lease_ms = 2 * PRUNE_EVERY.as_millis() as i64;
            match app
                .store
                .acquire_lease(MAINTENANCE_LEASE, cluster.id(), lease_ms)
                .await
            {
                Ok(lease) if lease.fence.is_some() => {}
                _ => continue,
            }
        }
        match prune_once(&app.store, &tables, now_ms()).await {
            Ok(done) => {
                for (table, n) in done.into_iter().filter(|(_, n)| *n > 0) {
                    ClusterCounters::add(&cluster.counters.rows_pruned, n);
                    tracing::info!(table = table.name(), rows = n, "old rows pruned");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning old rows failed; will try again"),
        }
    }
}
