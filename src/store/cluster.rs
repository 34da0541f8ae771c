//! What replicas share beyond the rollouts themselves: the replica registry, leases with
//! fencing tokens, shipped observations, and the retention pruner's deletes.
//!
//! Times that decide liveness and leadership come from the database's clock
//! (`clock_timestamp()`), so that replicas with skewed clocks still agree. Everything here
//! except [`Store::prune`] and [`Store::revoked_keys_since`] runs on PostgreSQL only.

use sqlx::Row;

use super::{Store, StoreError};
use crate::config::cluster::PrunedTable;

/// The database's clock in epoch milliseconds (PostgreSQL).
const DB_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
/// Rows per shipped-observation INSERT (× 14 columns, far below the parameter limit).
const SHIP_ROWS_PER_STATEMENT: usize = 200;

/// The LISTEN/NOTIFY channel of one schema (PostgreSQL identifiers stop at 63 bytes).
pub(super) fn channel_name(schema: &str) -> String {
    let mut name = format!("sluice_changes_{schema}");
    name.truncate(63);
    name
}

/// One replica as the registry holds it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub(crate) struct ReplicaRow {
    pub(crate) id: String,
    /// The address its listener was bound to (or `[cluster] advertise`).
    pub(crate) address: String,
    /// sluice's version.
    pub(crate) version: String,
    /// Epoch ms (the replica's clock).
    pub(crate) started_at_ms: i64,
    /// The database's clock at its last heartbeat.
    pub(crate) heartbeat_at_ms: i64,
}

/// Who holds a lease, under which fence, until when (database clock, ms).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub(crate) struct LeaseRow {
    pub(crate) name: String,
    pub(crate) holder: String,
    /// Grows by one each time the holder changes.
    pub(crate) fence: i64,
    /// The database's clock, epoch ms.
    pub(crate) expires_at_ms: i64,
}

/// What an attempt to take a lease gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOutcome {
    /// The fence held now, or `None` while another holder's lease runs.
    pub fence: Option<i64>,
    /// When the lease ends (ms from now): this holder's, or the other holder's.
    pub(crate) expires_in_ms: i64,
}

/// One replica's observations of one rollout since its previous flush, ready to insert.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShippedBatch {
    pub(crate) rollout_id: String,
    pub(crate) replica: String,
    /// Grows by one per flush of this replica (per process, whose id is fresh per start).
    pub(crate) seq: i64,
    /// When it was drained (epoch ms, the replica's clock).
    pub(crate) at_ms: i64,
    /// The judge's observations, as a JSON array.
    pub(crate) observations: String,
    /// Randomized assignments since the previous flush, per arm (stable, canary).
    pub(crate) assigned: [i64; 2],
    /// Requests measured, per arm (every one, pinned ones too; for the cluster-wide view).
    pub(crate) requests: [i64; 2],
    /// Errors, per arm.
    pub(crate) errors: [i64; 2],
    /// Sum of latencies (ms), per arm.
    pub(crate) latency_ms: [f64; 2],
    /// Observations this replica had to drop since its previous flush (queue full, database away).
    pub(crate) dropped: i64,
}

/// A shipped batch as the judge reads it back.
#[derive(Debug, Clone)]
pub(crate) struct ObservationBatch {
    pub(crate) replica: String,
    pub(crate) seq: i64,
    /// The judge's observations, as a JSON array.
    pub(crate) observations: String,
    /// Randomized assignments, per arm (stable, canary).
    #[expect(dead_code, reason = "read back from the row, used by nothing yet")]
    pub(crate) assigned: [i64; 2],
}

/// Cluster-wide figures of one rollout, summed over every shipped batch.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub(crate) struct ArmTotals {
    /// Requests per arm (stable, canary).
    pub(crate) requests: [i64; 2],
    pub(crate) errors: [i64; 2],
    /// Sum of latencies (ms), per arm.
    pub(crate) latency_ms_sum: [f64; 2],
    /// Observations replicas counted as dropped before shipping.
    pub(crate) dropped: i64,
    /// Replicas that shipped any.
    pub(crate) replicas: i64,
}

/// The column that says which rows of `table` to delete, and which rows may go at all.
fn key_and_filter(table: PrunedTable) -> (&'static str, &'static str) {
    match table {
        PrunedTable::Requests => ("request_id", ""),
        PrunedTable::Feedback | PrunedTable::ShadowPairs => ("id", ""),
        PrunedTable::RolloutEvents => (
            "id",
            " AND rollout_id IN (SELECT id FROM rollouts WHERE ended_at_ms IS NOT NULL)",
        ),
        PrunedTable::ClusterObservations => ("", ""),
    }
}

impl Store {
    /// Writes this replica's heartbeat (inserting it the first time); returns the database's clock.
    pub(crate) async fn heartbeat(&self, replica: &ReplicaRow) -> Result<i64, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO cluster_replicas (id, address, version, started_at_ms, heartbeat_at_ms) \
             VALUES ($1, $2, $3, $4, {DB_NOW_MS}) ON CONFLICT (id) DO UPDATE SET heartbeat_at_ms = excluded.heartbeat_at_ms, \
             address = excluded.address RETURNING heartbeat_at_ms"
        ));
        let row = sqlx::query(sql)
            .bind(replica.id.as_str())
            .bind(replica.address.as_str())
            .bind(replica.version.as_str())
            .bind(replica.started_at_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Every registered replica, oldest first, and the database's clock now.
    pub(crate) async fn replicas(&self) -> Result<(Vec<ReplicaRow>, i64), StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT id, address, version, started_at_ms, heartbeat_at_ms, {DB_NOW_MS} FROM cluster_replicas \
             ORDER BY started_at_ms, id"
        ));
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        let mut now = 0;
        let replicas = rows
            .into_iter()
            .map(|r| {
                now = r.try_get(5)?;
                Ok(ReplicaRow {
                    id: r.try_get(0)?,
                    address: r.try_get(1)?,
                    version: r.try_get(2)?,
                    started_at_ms: r.try_get(3)?,
                    heartbeat_at_ms: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if replicas.is_empty() {
            let sql = sqlx::AssertSqlSafe(format!("SELECT {DB_NOW_MS}"));
            now = sqlx::query(sql).fetch_one(&self.pool).await?.try_get(0)?;
        }
        Ok((replicas, now))
    }

    /// Forgets replicas silent for longer than `older_than_ms`, and this one on a clean stop.
    pub(crate) async fn remove_replicas(
        &self,
        id: Option<&str>,
        older_than_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "DELETE FROM cluster_replicas WHERE id = $1 OR heartbeat_at_ms < {DB_NOW_MS} - $2"
        ));
        sqlx::query(sql)
            .bind(id.unwrap_or(""))
            .bind(older_than_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes or renews lease `name` for `holder` for `ttl_ms`. The fence grows whenever the
    /// holder changes. While another holder's lease runs: no fence, and when it ends.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the statement fails.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO cluster_leases (name, holder, fence, expires_at_ms) VALUES ($1, $2, 1, {DB_NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET \
               fence = CASE WHEN cluster_leases.holder = excluded.holder THEN cluster_leases.fence ELSE cluster_leases.fence + 1 END, \
               holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE cluster_leases.holder = excluded.holder OR cluster_leases.expires_at_ms < {DB_NOW_MS} \
             RETURNING fence"
        ));
        let row = sqlx::query(sql)
            .bind(name)
            .bind(holder)
            .bind(ttl_ms)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(LeaseOutcome {
                fence: Some(row.try_get(0)?),
                expires_in_ms: ttl_ms,
            });
        }
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT expires_at_ms - {DB_NOW_MS} FROM cluster_leases WHERE name = $1"
        ));
        let expires_in_ms = sqlx::query(sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0);
        Ok(LeaseOutcome {
            fence: None,
            expires_in_ms: expires_in_ms.max(0),
        })
    }

    /// Lets a lease go at once (on a clean stop), so another replica need not wait it out.
    pub(crate) async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE cluster_leases SET expires_at_ms = {DB_NOW_MS} - 1 WHERE name = $1 AND holder = $2"
        ));
        sqlx::query(sql)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Leases whose name starts with `prefix`.
    pub(crate) async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, holder, fence, expires_at_ms FROM cluster_leases WHERE name LIKE $1 ORDER BY name",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(LeaseRow {
                    name: r.try_get(0)?,
                    holder: r.try_get(1)?,
                    fence: r.try_get(2)?,
                    expires_at_ms: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Ships batches of observations, a few statements per flush at most. A batch already
    /// stored (a retry after a lost acknowledgement) is left as it is.
    pub(crate) async fn ship_observations(
        &self,
        batches: &[ShippedBatch],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in batches.chunks(SHIP_ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO cluster_observations (rollout_id, replica, seq, at_ms, observations, assigned_stable, \
                 assigned_canary, stable_requests, canary_requests, stable_errors, canary_errors, stable_latency_ms, \
                 canary_latency_ms, dropped) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 14;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for c in 1..=14 {
                    if c > 1 {
                        sql.push_str(", ");
                    }
                    // Floats bound as text and cast: see REQUEST_COLUMN_CASTS.
                    if c == 12 || c == 13 {
                        sql.push_str(&format!("CAST(${} AS DOUBLE PRECISION)", b + c));
                    } else {
                        sql.push_str(&format!("${}", b + c));
                    }
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (rollout_id, replica, seq) DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for batch in chunk {
                query = query
                    .bind(batch.rollout_id.as_str())
                    .bind(batch.replica.as_str())
                    .bind(batch.seq)
                    .bind(batch.at_ms)
                    .bind(batch.observations.as_str())
                    .bind(batch.assigned[0])
                    .bind(batch.assigned[1])
                    .bind(batch.requests[0])
                    .bind(batch.requests[1])
                    .bind(batch.errors[0])
                    .bind(batch.errors[1])
                    .bind(batch.latency_ms[0].to_string())
                    .bind(batch.latency_ms[1].to_string())
                    .bind(batch.dropped);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The batches of `rollout_id` past `cursor` (JSON: replica → last seq read), in order
    /// per replica, at most `limit`.
    pub(crate) async fn observations_after(
        &self,
        rollout_id: &str,
        cursor: &str,
        limit: i64,
    ) -> Result<Vec<ObservationBatch>, StoreError> {
        let rows = sqlx::query(
            "SELECT replica, seq, observations, assigned_stable, assigned_canary FROM cluster_observations \
             WHERE rollout_id = $1 AND seq > COALESCE(CAST(CAST($2 AS JSONB) ->> replica AS BIGINT), 0) \
             ORDER BY at_ms, replica, seq LIMIT $3",
        )
        .bind(rollout_id)
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ObservationBatch {
                    replica: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    observations: r.try_get(2)?,
                    assigned: [r.try_get(3)?, r.try_get(4)?],
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every replica's shipped figures of one rollout, summed.
    pub(crate) async fn arm_totals(&self, rollout_id: &str) -> Result<ArmTotals, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(stable_requests), 0) AS BIGINT), CAST(COALESCE(SUM(canary_requests), 0) AS BIGINT), \
             CAST(COALESCE(SUM(stable_errors), 0) AS BIGINT), CAST(COALESCE(SUM(canary_errors), 0) AS BIGINT), \
             CAST(COALESCE(SUM(stable_latency_ms), 0) AS DOUBLE PRECISION), CAST(COALESCE(SUM(canary_latency_ms), 0) AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(dropped), 0) AS BIGINT), COUNT(DISTINCT replica) \
             FROM cluster_observations WHERE rollout_id = $1",
        )
        .bind(rollout_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(ArmTotals {
            requests: [row.try_get(0)?, row.try_get(1)?],
            errors: [row.try_get(2)?, row.try_get(3)?],
            latency_ms_sum: [row.try_get(4)?, row.try_get(5)?],
            dropped: row.try_get(6)?,
            replicas: row.try_get(7)?,
        })
    }

    /// Hashes of keys revoked at or after `since_ms` (writer's clock), to forget them.
    pub(crate) async fn revoked_keys_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT key_hash FROM api_keys WHERE revoked_at_ms >= $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Per (version, arm) of `route`, from every replica's stored records: requests,
    /// errors, mean latency (ms), tokens and cost (USD).
    pub(crate) async fn route_totals(&self, route: &str) -> Result<Vec<RouteTotals>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, arm, COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN outcome IN ('ok', 'client_disconnected', 'guardrail_blocked') THEN 0 ELSE 1 END), 0) AS BIGINT), \
             CAST(COALESCE(AVG(latency_ms), 0) AS DOUBLE PRECISION), \
             CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) \
             FROM requests WHERE route = $1 GROUP BY version, arm ORDER BY version, arm",
        )
        .bind(route)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RouteTotals {
                    version: r.try_get(0)?,
                    arm: r.try_get(1)?,
                    requests: r.try_get(2)?,
                    errors: r.try_get(3)?,
                    mean_latency_ms: r.try_get(4)?,
                    tokens: r.try_get(5)?,
                    cost_usd: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Deletes at most `batch` rows of `table` older than `before_ms`; returns how many went.
    /// Small batches keep each transaction short, so writers never wait long behind one.
    pub(crate) async fn prune(
        &self,
        table: PrunedTable,
        before_ms: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let name = table.name();
        let (key, filter) = key_and_filter(table);
        let sql = match (table, self.engine) {
            // Observations are read by the judge of a live rollout: keep those of live ones.
            (PrunedTable::ClusterObservations, super::Engine::Postgres) => String::from(
                "DELETE FROM cluster_observations WHERE ctid IN (SELECT ctid FROM cluster_observations \
                 WHERE at_ms < $1 AND rollout_id IN (SELECT id FROM rollouts WHERE ended_at_ms IS NOT NULL) LIMIT $2)",
            ),
            (PrunedTable::ClusterObservations, super::Engine::Sqlite) => String::from(
                "DELETE FROM cluster_observations WHERE rowid IN (SELECT rowid FROM cluster_observations \
                 WHERE at_ms < $1 AND rollout_id IN (SELECT id FROM rollouts WHERE ended_at_ms IS NOT NULL) LIMIT $2)",
            ),
            _ => format!(
                "DELETE FROM {name} WHERE {key} IN (SELECT {key} FROM {name} WHERE at_ms < $1{filter} LIMIT $2)"
            ),
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before_ms)
            .bind(batch)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// One (version, arm) of a route, summed over every replica's records.
#[derive(Debug, Clone, serde::Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct RouteTotals {
    pub(crate) version: String,
    pub(crate) arm: String,
    pub(crate) requests: i64,
    pub(crate) errors: i64,
    pub(crate) mean_latency_ms: f64,
    /// Prompt and completion tokens.
    pub(crate) tokens: i64,
    /// USD at the versions' prices.
    pub(crate) cost_usd: f64,
}
