//! Rollouts in the store: the row that says where a rollout stands, its pins, its event log,
//! and the stable versions that promotions set.
//!
//! Every state change is one transaction that updates the row and appends the event, so
//! the log and the state can never disagree; the controller writes it before the router
//! acts on it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, notify_change};
use crate::rollout::machine::Position;
use crate::types::{Arm, RolloutState};

#[derive(Debug, Clone, Serialize, PartialEq)]
/// A row of `rollouts`: one rollout attempt on a route, live or ended.
pub struct RolloutRow {
    /// The rollout's id, as the admin API names it.
    pub id: String,
    /// The route the rollout runs on.
    pub route: String,
    /// The version serving the route when the rollout started.
    pub stable_version: String,
    /// The version being rolled out.
    pub canary_version: String,
    /// The name of the rollout policy it runs under.
    pub policy: String,
    #[serde(skip)]
    /// That policy as it was when the rollout started (JSON), so later edits of the file do not
    /// change a running rollout.
    pub policy_json: String,
    /// Hex; a fresh one per rollout attempt, so a retry re-randomizes.
    #[serde(skip)]
    pub salt: String,
    /// Where the rollout stands: state, step, canary weight.
    pub position: Position,
    /// When the rollout started, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// When the row last changed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// When the rollout ended (promoted, rolled back, aborted); `None` while it is live.
    pub ended_at_ms: Option<i64>,
    #[serde(skip)]
    /// The judge's saved state (JSON), so a restart or another replica resumes it.
    pub judge_state: Option<String>,
    #[serde(skip)]
    /// The judge's last report (JSON), as the admin API shows it.
    pub last_report: Option<String>,
    /// Grows by one with every change of position or pins; a write made from an older
    /// revision is refused ([`StoreError::Stale`]), so no replica undoes a newer change.
    pub revision: i64,
    /// The judge's checkpoint beside `judge_state`: its cursor into the cluster's shipped
    /// observations and its per-step counters (JSON, see `cluster::JudgeCursor`).
    #[serde(skip)]
    pub judge_cursor: Option<String>,
}

/// A write made as the holder of a lease: refused by the database unless `token` is still
/// the lease's fence and `holder` still holds it.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The lease's name.
    pub lease: &'a str,
    /// The replica that holds the lease.
    pub holder: &'a str,
    /// The fencing token the holder was given when it took the lease.
    pub token: i64,
}

/// What a change of position requires of the stored row besides the new position.
#[derive(Debug, Clone, Copy)]
pub struct WriteGuard<'a> {
    /// The revision the writer read: the write is refused ([`StoreError::Stale`]) when the
    /// row has moved on since.
    pub revision: i64,
    /// A judge's write: refused ([`StoreError::Fenced`]) unless this is still the lease's
    /// fence. `None` for an operator's command and for a single process.
    pub fence: Option<Fence<'a>>,
}

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The sequential judge, on its own.
    Judge,
    /// A person, through the admin API or the CLI.
    Operator,
}

impl Actor {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Actor::Judge => "judge",
            Actor::Operator => "operator",
        }
    }
}

/// An entry for the audit log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Who made the change.
    pub actor: Actor,
    /// What happened, in snake_case (`started`, `promoted`, `rolled_back`, …).
    pub kind: &'static str,
    /// Why, in a sentence for the operator.
    pub message: String,
    /// The figures behind a judge's decision (JSON), if any.
    pub evidence: Option<serde_json::Value>,
}

/// One entry of a rollout's audit log.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Event)]
pub struct EventRow {
    pub(crate) id: i64,
    pub(crate) rollout_id: String,
    /// Unix time in milliseconds.
    pub(crate) at_ms: i64,
    /// `judge` or `operator`.
    #[schema(value_type = Actor)]
    pub(crate) actor: String,
    /// `started`, `advanced`, `paused`, `resumed`, `pinned`, `unpinned`, `promoted`,
    /// `rolled_back`, `aborted`, …
    pub kind: String,
    #[schema(value_type = RolloutState)]
    pub(crate) state: String,
    pub(crate) step: i64,
    /// The canary weight after the change, in basis points.
    pub(crate) weight_bp: i64,
    pub(crate) message: String,
    /// For the judge's changes: `{decision, report}`.
    #[schema(required = true, value_type = Option<Object>)]
    pub(crate) evidence: Option<serde_json::Value>,
}

const ROLLOUT_COLUMNS: &str = "id, route, stable_version, canary_version, policy, policy_json, salt, state, step, weight_bp, \
     inconclusive, step_started_at_ms, started_at_ms, updated_at_ms, ended_at_ms, judge_state, last_report, revision, judge_cursor";

fn rollout_from(r: AnyRow) -> Result<RolloutRow, sqlx::Error> {
    let state: String = r.try_get(7)?;
    let state = RolloutState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown rollout state `{state}`").into()))?;
    Ok(RolloutRow {
        id: r.try_get(0)?,
        route: r.try_get(1)?,
        stable_version: r.try_get(2)?,
        canary_version: r.try_get(3)?,
        policy: r.try_get(4)?,
        policy_json: r.try_get(5)?,
        salt: r.try_get(6)?,
        position: Position {
            state,
            step: r.try_get::<i32, _>(8)? as usize,
            weight_bp: r.try_get::<i32, _>(9)? as u32,
            inconclusive: r.try_get::<i32, _>(10)? != 0,
            step_started_ms: r.try_get(11)?,
        },
        started_at_ms: r.try_get(12)?,
        updated_at_ms: r.try_get(13)?,
        ended_at_ms: r.try_get(14)?,
        judge_state: r.try_get(15)?,
        last_report: r.try_get(16)?,
        revision: r.try_get(17)?,
        judge_cursor: r.try_get(18)?,
    })
}

async fn append_event<'c>(
    tx: &mut sqlx::Transaction<'c, sqlx::Any>,
    rollout_id: &str,
    at_ms: i64,
    position: &Position,
    event: &NewEvent,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollout_events (rollout_id, at_ms, actor, kind, state, step, weight_bp, message, evidence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(rollout_id)
    .bind(at_ms)
    .bind(event.actor.as_str())
    .bind(event.kind)
    .bind(position.state.as_str())
    .bind(position.step as i32)
    .bind(position.weight_bp as i32)
    .bind(event.message.as_str())
    .bind(event.evidence.as_ref().map(|e| e.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Creates a rollout with its first event; `Conflict` when its route already has a live one.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] as said; [`StoreError::Database`] when the insert fails.
    pub async fn insert_rollout(
        &self,
        row: &RolloutRow,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let p = &row.position;
        let inserted = sqlx::query(
            "INSERT INTO rollouts (id, route, stable_version, canary_version, policy, policy_json, salt, state, step, weight_bp, \
             inconclusive, step_started_at_ms, started_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(row.id.as_str())
        .bind(row.route.as_str())
        .bind(row.stable_version.as_str())
        .bind(row.canary_version.as_str())
        .bind(row.policy.as_str())
        .bind(row.policy_json.as_str())
        .bind(row.salt.as_str())
        .bind(p.state.as_str())
        .bind(p.step as i32)
        .bind(p.weight_bp as i32)
        .bind(p.inconclusive as i32)
        .bind(p.step_started_ms)
        .bind(row.started_at_ms)
        .bind(row.updated_at_ms)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "a live rollout on route `{}`",
                    row.route
                )));
            }
            other => {
                other?;
            }
        }
        append_event(&mut tx, &row.id, row.started_at_ms, p, event).await?;
        notify_change(self, &mut tx, "rollout", &row.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves a rollout to `position` and logs why, in one transaction. When the rollout was
    /// promoted, `promote_to` makes its canary the route's stable version in the same commit.
    /// The write applies only as `guard` allows (see [`WriteGuard`]). Returns the new revision.
    ///
    /// # Errors
    /// [`StoreError::Stale`], [`StoreError::Fenced`], or the database failing.
    pub async fn update_rollout(
        &self,
        id: &str,
        position: &Position,
        at_ms: i64,
        event: &NewEvent,
        promote_to: Option<(&str, &str)>,
        guard: WriteGuard<'_>,
    ) -> Result<i64, StoreError> {
        let WriteGuard {
            revision: expected_revision,
            fence,
        } = guard;
        let mut tx = self.pool.begin().await?;
        let ended = (!position.state.is_live()).then_some(at_ms);
        let updated = sqlx::query(
            "UPDATE rollouts SET state = $1, step = $2, weight_bp = $3, inconclusive = $4, step_started_at_ms = $5, \
             updated_at_ms = $6, ended_at_ms = COALESCE(ended_at_ms, $7), revision = revision + 1 \
             WHERE id = $8 AND revision = $9 AND ($10 = 0 OR EXISTS \
             (SELECT 1 FROM cluster_leases WHERE name = $11 AND holder = $12 AND fence = $13))",
        )
        .bind(position.state.as_str())
        .bind(position.step as i32)
        .bind(position.weight_bp as i32)
        .bind(position.inconclusive as i32)
        .bind(position.step_started_ms)
        .bind(at_ms)
        .bind(ended)
        .bind(id)
        .bind(expected_revision)
        .bind(fence.is_some() as i32)
        .bind(fence.map_or("", |f| f.lease))
        .bind(fence.map_or("", |f| f.holder))
        .bind(fence.map_or(0, |f| f.token))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            // Say why: a lost lease first (the writer must stop judging), else a newer revision.
            if let Some(f) = fence {
                let holds = sqlx::query(
                    "SELECT 1 FROM cluster_leases WHERE name = $1 AND holder = $2 AND fence = $3",
                )
                .bind(f.lease)
                .bind(f.holder)
                .bind(f.token)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                if !holds {
                    return Err(StoreError::Fenced(id.to_owned()));
                }
            }
            return Err(StoreError::Stale(id.to_owned()));
        }
        if let Some((route, version)) = promote_to {
            sqlx::query(
                "INSERT INTO route_stable (route, version, rollout_id, updated_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (route) DO UPDATE SET version = excluded.version, rollout_id = excluded.rollout_id, \
                 updated_at_ms = excluded.updated_at_ms",
            )
            .bind(route)
            .bind(version)
            .bind(id)
            .bind(at_ms)
            .execute(&mut *tx)
            .await?;
        }
        append_event(&mut tx, id, at_ms, position, event).await?;
        notify_change(self, &mut tx, "rollout", id).await?;
        tx.commit().await?;
        Ok(expected_revision + 1)
    }

    /// Saves the judge's running state, last report and cursor (no event: nothing changed).
    /// With a `fence`, only while that fence holds: `Ok(false)` when it was refused.
    pub async fn checkpoint_rollout(
        &self,
        id: &str,
        judge_state: &str,
        last_report: &str,
        judge_cursor: Option<&str>,
        fence: Option<Fence<'_>>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE rollouts SET judge_state = $1, last_report = $2, judge_cursor = COALESCE($3, judge_cursor) \
             WHERE id = $4 AND ($5 = 0 OR EXISTS \
             (SELECT 1 FROM cluster_leases WHERE name = $6 AND holder = $7 AND fence = $8))",
        )
        .bind(judge_state)
        .bind(last_report)
        .bind(judge_cursor)
        .bind(id)
        .bind(fence.is_some() as i32)
        .bind(fence.map_or("", |f| f.lease))
        .bind(fence.map_or("", |f| f.holder))
        .bind(fence.map_or(0, |f| f.token))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ));
        let row = sqlx::query(sql).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(rollout_from).transpose()?)
    }

    /// All rollouts, newest first; only the live ones when `live_only`.
    pub(crate) async fn rollouts(&self, live_only: bool) -> Result<Vec<RolloutRow>, StoreError> {
        let filter = if live_only {
            "WHERE state IN ('progressing', 'paused')"
        } else {
            ""
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts {filter} ORDER BY started_at_ms DESC, id"
        ));
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(rollout_from)
            .collect::<Result<_, _>>()?)
    }

    pub(crate) async fn set_pin(
        &self,
        id: &str,
        workspace: &str,
        arm: Option<Arm>,
        position: &Position,
        event: &NewEvent,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM rollout_pins WHERE rollout_id = $1 AND workspace = $2")
            .bind(id)
            .bind(workspace)
            .execute(&mut *tx)
            .await?;
        if let Some(arm) = arm {
            sqlx::query(
                "INSERT INTO rollout_pins (rollout_id, workspace, arm) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(workspace)
            .bind(arm.as_str())
            .execute(&mut *tx)
            .await?;
        }
        append_event(&mut tx, id, super::now_ms(), position, event).await?;
        let revision: i64 = sqlx::query(
            "UPDATE rollouts SET revision = revision + 1 WHERE id = $1 RETURNING revision",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        notify_change(self, &mut tx, "pin", id).await?;
        tx.commit().await?;
        Ok(revision)
    }

    pub(crate) async fn pins(&self, id: &str) -> Result<Vec<(String, Arm)>, StoreError> {
        let rows = sqlx::query(
            "SELECT workspace, arm FROM rollout_pins WHERE rollout_id = $1 ORDER BY workspace",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let arm: String = r.get(1);
                Arm::parse(&arm).map(|a| (r.get(0), a))
            })
            .collect())
    }

    /// The audit log of rollout `id`, oldest first (empty for an unknown id).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn events(&self, id: &str) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, rollout_id, at_ms, actor, kind, state, step, weight_bp, message, evidence \
             FROM rollout_events WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let evidence: Option<String> = r.try_get(9)?;
                Ok(EventRow {
                    id: r.try_get(0)?,
                    rollout_id: r.try_get(1)?,
                    at_ms: r.try_get(2)?,
                    actor: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    state: r.try_get(5)?,
                    step: r.try_get::<i32, _>(6)? as i64,
                    weight_bp: r.try_get::<i32, _>(7)? as i64,
                    message: r.try_get(8)?,
                    evidence: evidence.and_then(|e| serde_json::from_str(&e).ok()),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Routes whose stable version a promotion changed: route → version.
    pub(crate) async fn route_stables(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT route, version FROM route_stable ORDER BY route")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
