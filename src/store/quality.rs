//! Shadow pairs and feedback in the store.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::types::Arm;

/// A request answered by one version and copied to the other.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ShadowPair {
    /// Pass as `after` to page on.
    pub id: i64,
    /// The rollout whose shadow policy made the copy.
    pub rollout_id: String,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// The primary's request id.
    pub request_id: String,
    /// The W3C trace id when the client sent a `traceparent`.
    #[schema(required = true)]
    pub trace_id: Option<String>,
    /// The workspace of the API key that made the request.
    pub workspace: String,
    /// The chat request (masked when the policy's `redact`).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// The version that answered the client.
    pub primary_version: String,
    /// The arm that version was on.
    pub primary_arm: Arm,
    /// The text the client got.
    pub primary_answer: String,
    /// The primary request's measurement record, as `GET /admin/v1/records` shows one.
    #[schema(value_type = Object)]
    pub primary_record: serde_json::Value,
    /// The version the copy was sent to.
    pub shadow_version: String,
    /// The shadow version's text (never shown to the client).
    pub shadow_answer: String,
    /// The shadow copy's measurement record, in the same shape.
    #[schema(value_type = Object)]
    pub shadow_record: serde_json::Value,
}

/// Where a request went, for joining feedback to its arm.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPlacement {
    pub(crate) workspace: String,
    pub(crate) rollout_id: Option<String>,
    pub(crate) arm: Arm,
    pub(crate) w: Option<f64>,
    pub(crate) randomized: bool,
}

impl Store {
    /// Stores a pair and keeps only the newest `keep` of its rollout.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the insert or the trim fails; then neither happened.
    pub async fn insert_shadow_pair(&self, p: &ShadowPair, keep: u64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO shadow_pairs (rollout_id, at_ms, request_id, trace_id, workspace_id, request, primary_version, \
             primary_arm, primary_answer, primary_record, shadow_version, shadow_answer, shadow_record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(p.rollout_id.as_str())
        .bind(p.at_ms)
        .bind(p.request_id.as_str())
        .bind(p.trace_id.as_deref())
        .bind(p.workspace.as_str())
        .bind(p.request.to_string())
        .bind(p.primary_version.as_str())
        .bind(p.primary_arm.as_str())
        .bind(p.primary_answer.as_str())
        .bind(p.primary_record.to_string())
        .bind(p.shadow_version.as_str())
        .bind(p.shadow_answer.as_str())
        .bind(p.shadow_record.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM shadow_pairs WHERE rollout_id = $1 AND id NOT IN \
             (SELECT id FROM shadow_pairs WHERE rollout_id = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(p.rollout_id.as_str())
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of a rollout's pairs, oldest first, after the pair id `after`.
    pub(crate) async fn shadow_pairs(
        &self,
        rollout_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ShadowPair>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, rollout_id, at_ms, request_id, trace_id, workspace_id, request, primary_version, primary_arm, \
             primary_answer, primary_record, shadow_version, shadow_answer, shadow_record \
             FROM shadow_pairs WHERE rollout_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(rollout_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let json = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
        rows.into_iter()
            .map(|r| {
                Ok(ShadowPair {
                    id: r.try_get(0)?,
                    rollout_id: r.try_get(1)?,
                    at_ms: r.try_get(2)?,
                    request_id: r.try_get(3)?,
                    trace_id: r.try_get(4)?,
                    workspace: r.try_get(5)?,
                    request: json(r.try_get(6)?),
                    primary_version: r.try_get(7)?,
                    primary_arm: Arm::parse(&r.try_get::<String, _>(8)?).unwrap_or(Arm::Stable),
                    primary_answer: r.try_get(9)?,
                    primary_record: json(r.try_get(10)?),
                    shadow_version: r.try_get(11)?,
                    shadow_answer: r.try_get(12)?,
                    shadow_record: json(r.try_get(13)?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Where a stored request went.
    pub(crate) async fn request_placement(
        &self,
        request_id: &str,
    ) -> Result<Option<RequestPlacement>, StoreError> {
        let row = sqlx::query("SELECT workspace_id, rollout_id, arm, canary_weight, randomized FROM requests WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| RequestPlacement {
            workspace: r.get(0),
            rollout_id: r.get(1),
            arm: Arm::parse(&r.get::<String, _>(2)).unwrap_or(Arm::Stable),
            w: r.get(3),
            randomized: r.get::<i32, _>(4) != 0,
        }))
    }

    pub(crate) async fn feedback_exists(
        &self,
        request_id: &str,
        metric: &str,
    ) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM feedback WHERE request_id = $1 AND metric = $2 LIMIT 1")
                .bind(request_id)
                .bind(metric)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    pub(crate) async fn insert_feedback(
        &self,
        request_id: &str,
        placement: &RequestPlacement,
        metric: &str,
        value: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO feedback (request_id, workspace_id, metric, value, at_ms, rollout_id, arm) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(request_id)
        .bind(placement.workspace.as_str())
        .bind(metric)
        .bind(value)
        .bind(super::now_ms())
        .bind(placement.rollout_id.as_deref())
        .bind(placement.arm.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a workspace's own limits (as JSON).
    pub(crate) async fn set_limits(
        &self,
        workspace: &str,
        limits: &crate::types::Limits,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(limits).unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workspace_limits (workspace_id, limits, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (workspace_id) DO UPDATE SET limits = excluded.limits, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(workspace)
        .bind(json)
        .bind(super::now_ms())
        .execute(&mut *tx)
        .await?;
        super::notify_change(self, &mut tx, "limits", workspace).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every workspace's own limits.
    /// Rows whose limits do not parse are left out.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn all_limits(&self) -> Result<Vec<(String, crate::types::Limits)>, StoreError> {
        let rows = sqlx::query("SELECT workspace_id, limits FROM workspace_limits")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let json: String = r.get(1);
                serde_json::from_str(&json).ok().map(|l| (r.get(0), l))
            })
            .collect())
    }
}
