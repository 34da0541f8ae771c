//! Which version produced each stored Response (`response_versions`), so that a
//! conversation continues where it began. Written in batches off the request path; read
//! only when the in-memory book of the gateway misses (after a restart, or on another
//! replica once replicas share one PostgreSQL).

use sqlx::Row;

use super::{Store, StoreError};
use crate::types::Arm;

/// Where a stored Response was produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlacement {
    pub(crate) response_id: String,
    pub workspace: String,
    pub(crate) route: String,
    pub version: String,
    pub(crate) arm: Arm,
    pub(crate) at_ms: i64,
}

impl Store {
    /// Stores placements; an id already stored keeps its first placement.
    pub(crate) async fn insert_response_placements(
        &self,
        rows: &[ResponsePlacement],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for p in rows {
            sqlx::query(
                "INSERT INTO response_versions (response_id, workspace_id, route, version, arm, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (response_id) DO NOTHING",
            )
            .bind(p.response_id.as_str())
            .bind(p.workspace.as_str())
            .bind(p.route.as_str())
            .bind(p.version.as_str())
            .bind(p.arm.as_str())
            .bind(p.at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored placement of `response_id`, if any (of any workspace: the caller checks).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails or the row's arm does not read back.
    pub async fn response_placement(
        &self,
        response_id: &str,
    ) -> Result<Option<ResponsePlacement>, StoreError> {
        let row = sqlx::query(
            "SELECT response_id, workspace_id, route, version, arm, at_ms FROM response_versions WHERE response_id = $1",
        )
        .bind(response_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let arm: String = r.try_get(4)?;
            Ok(ResponsePlacement {
                response_id: r.try_get(0)?,
                workspace: r.try_get(1)?,
                route: r.try_get(2)?,
                version: r.try_get(3)?,
                arm: Arm::parse(&arm).unwrap_or(Arm::Stable),
                at_ms: r.try_get(5)?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| StoreError::from(e))
    }

    /// Forgets placements made before `before_ms`; returns how many.
    pub(crate) async fn prune_response_placements(
        &self,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM response_versions WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
