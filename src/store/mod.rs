//! Store: everything sluice keeps, in SQLite (the embedded default) or PostgreSQL.
//!
//! One code path for both through sqlx's `Any` driver: `$n` placeholders, timestamps as
//! epoch milliseconds, no engine-specific types. Migrations are embedded per engine from
//! `migrations/{sqlite,postgres}` and run at connect.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

mod cluster;
mod quality;
mod records;
mod responses;
mod rollouts;

pub(crate) use cluster::{ArmTotals, ObservationBatch, ReplicaRow, RouteTotals, ShippedBatch};
pub use quality::{RequestPlacement, ShadowPair};
use records::RecordWriter;
pub(crate) use records::SQLITE_MAX_ROWS;
pub(crate) use responses::ResponsePlacement;
pub use rollouts::{Actor, EventRow, Fence, NewEvent, RolloutRow, WriteGuard};

use crate::types::{Api, Arm, Outcome, Record, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
/// What a store operation can fail with.
pub enum StoreError {
    #[error("{0} already exists")]
    /// An insert met a row with the same key; the text names it (e.g. "workspace `acme`").
    Conflict(String),
    #[error(transparent)]
    /// The database refused or could not run a query (connection, constraint, SQL).
    Database(#[from] sqlx::Error),
    #[error("migrating the database failed: {0}")]
    /// Bringing the schema up to date failed at [`Store::connect`].
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row moved on since it was read (another replica or the judge changed it).
    #[error("rollout {0} changed since it was read")]
    Stale(String),
    /// The writer's lease fence is no longer the current one: another replica leads now.
    #[error("stale fencing token for rollout {0}")]
    Fenced(String),
}

impl StoreError {
    /// True when the database could not be reached at all (as opposed to refusing a write).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        ) || matches!(self, StoreError::Database(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }
}

/// Tells every replica that something they cache changed (`kind`: rollout, pin, limits, key),
/// inside the writing transaction: PostgreSQL delivers it at commit, never for a rollback.
/// SQLite has one process and nobody to tell.
pub(crate) async fn notify_change(
    store: &Store,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    id: &str,
) -> Result<(), sqlx::Error> {
    if let Some(channel) = &store.channel {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&**channel)
            .bind(format!("{kind}:{id}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Each engine's migrations, embedded so the binary needs no files beside it.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "rollouts",
        include_str!("../../migrations/sqlite/0002_rollouts.sql"),
    ),
    (
        3,
        "quality",
        include_str!("../../migrations/sqlite/0003_quality.sql"),
    ),
    (
        4,
        "shadow_feedback",
        include_str!("../../migrations/sqlite/0004_shadow_feedback.sql"),
    ),
    (
        5,
        "limits",
        include_str!("../../migrations/sqlite/0005_limits.sql"),
    ),
    (
        6,
        "responses",
        include_str!("../../migrations/sqlite/0006_responses.sql"),
    ),
    (
        7,
        "cluster",
        include_str!("../../migrations/sqlite/0007_cluster.sql"),
    ),
    (
        8,
        "revoked_keys",
        include_str!("../../migrations/sqlite/0008_revoked_keys.sql"),
    ),
    (
        9,
        "requests_unread_index",
        include_str!("../../migrations/sqlite/0009_requests_unread_index.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "rollouts",
        include_str!("../../migrations/postgres/0002_rollouts.sql"),
    ),
    (
        3,
        "quality",
        include_str!("../../migrations/postgres/0003_quality.sql"),
    ),
    (
        4,
        "shadow_feedback",
        include_str!("../../migrations/postgres/0004_shadow_feedback.sql"),
    ),
    (
        5,
        "limits",
        include_str!("../../migrations/postgres/0005_limits.sql"),
    ),
    (
        6,
        "responses",
        include_str!("../../migrations/postgres/0006_responses.sql"),
    ),
    (
        7,
        "cluster",
        include_str!("../../migrations/postgres/0007_cluster.sql"),
    ),
    (
        8,
        "revoked_keys",
        include_str!("../../migrations/postgres/0008_revoked_keys.sql"),
    ),
    (
        9,
        "requests_unread_index",
        include_str!("../../migrations/postgres/0009_requests_unread_index.sql"),
    ),
];

#[derive(Clone)]
/// The database behind sluice: SQLite for one process, PostgreSQL for a cluster. Cheap to
/// clone (a pool and a writer handle).
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// The record writer's own connection (see [`records`]).
    writer: RecordWriter,
    /// PostgreSQL: the LISTEN/NOTIFY channel of this database schema (one cluster).
    channel: Option<std::sync::Arc<str>>,
}

/// A tenant: gateway keys, records and feedback belong to one.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Workspace {
    /// The workspace id (see `WorkspaceId` for its rule).
    pub id: String,
    /// Unix time in milliseconds.
    pub(crate) created_at_ms: i64,
}

/// A gateway key as listed: never the key itself.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = Key)]
pub struct KeyInfo {
    pub(crate) id: String,
    pub(crate) workspace: String,
    /// The first characters of the key, to tell keys apart; never enough to use one.
    pub(crate) prefix: String,
    /// Unix time in milliseconds.
    pub(crate) created_at_ms: i64,
    /// When it was revoked (Unix ms), or null while it works.
    #[schema(required = true)]
    pub revoked_at_ms: Option<i64>,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and brings the schema up to date.
    /// `url` is `sqlite://PATH` or `postgres://…`.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be reached; [`StoreError::Migrate`] when
    /// the schema cannot be brought up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        let url = match engine {
            Engine::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                Cow::Owned(format!("{url}{sep}mode=rwc"))
            }
            _ => Cow::Borrowed(url),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if engine == Engine::Sqlite { 4 } else { 10 })
            // With the database away, an admin write answers 503 in seconds, not after 30.
            .acquire_timeout(Duration::from_secs(if engine == Engine::Sqlite {
                30
            } else {
                3
            }))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Postgres {
                        // A replica frozen mid-transaction (SIGSTOP, a VM pause) must not hold
                        // rows locked for ever: the server ends such a session on its own.
                        sqlx::query("SET idle_in_transaction_session_timeout = '5s'")
                            .execute(&mut *conn)
                            .await?;
                    }
                    if engine == Engine::Sqlite {
                        // WAL: readers never wait for the writer; NORMAL: a commit survives a
                        // process crash (the OS still holds the WAL), fsync only at checkpoints.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let writer = RecordWriter::connect_lazy(&url, engine)?;
        let mut store = Self {
            pool,
            engine,
            writer,
            channel: None,
        };
        store.migrate().await?;
        if engine == Engine::Postgres {
            // Channels are per database, schemas are not: name the channel after the schema,
            // so that clusters (and tests) sharing one database never hear each other.
            let schema: String = sqlx::query("SELECT CAST(current_schema() AS TEXT)")
                .fetch_one(&store.pool)
                .await?
                .get(0);
            store.channel = Some(cluster::channel_name(&schema).into());
        }
        Ok(store)
    }

    pub(crate) fn engine(&self) -> Engine {
        self.engine
    }

    /// PostgreSQL: the channel every change is notified on (one per schema).
    pub(crate) fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let source = match self.engine {
            Engine::Sqlite => SQLITE_MIGRATIONS,
            Engine::Postgres => POSTGRES_MIGRATIONS,
        };
        let migrations = source
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the record writer's connection, then the pool's. Call once, at shutdown.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Creates workspace `id` (not checked here: the caller parses it first).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it exists; [`StoreError::Database`] when the insert fails.
    pub async fn create_workspace(&self, id: &str) -> Result<Workspace, StoreError> {
        let created_at_ms = now_ms();
        let result = sqlx::query("INSERT INTO workspaces (id, created_at_ms) VALUES ($1, $2)")
            .bind(id)
            .bind(created_at_ms)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(Workspace {
                id: id.to_owned(),
                created_at_ms,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("workspace `{id}`")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Workspace `id`, or `None` when there is none.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        let row = sqlx::query("SELECT id, created_at_ms FROM workspaces WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Workspace {
            id: r.get(0),
            created_at_ms: r.get(1),
        }))
    }

    pub(crate) async fn workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        let rows = sqlx::query("SELECT id, created_at_ms FROM workspaces ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Workspace {
                id: r.get(0),
                created_at_ms: r.get(1),
            })
            .collect())
    }

    /// Stores a new API key of `workspace`: its id, its SHA-256 `hash` (hex, see
    /// [`hash_key`](crate::auth::hash_key)) and its display `prefix`. The key itself is never
    /// stored.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the insert fails (an unknown workspace, a taken id).
    pub async fn create_key(
        &self,
        workspace: &str,
        id: &str,
        hash: &str,
        prefix: &str,
    ) -> Result<KeyInfo, StoreError> {
        let created_at_ms = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, workspace_id, key_hash, key_prefix, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(workspace)
        .bind(hash)
        .bind(prefix)
        .bind(created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(KeyInfo {
            id: id.to_owned(),
            workspace: workspace.to_owned(),
            prefix: prefix.to_owned(),
            created_at_ms,
            revoked_at_ms: None,
        })
    }

    /// The keys of `workspace`, revoked ones included, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn keys(&self, workspace: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, key_prefix, created_at_ms, revoked_at_ms FROM api_keys WHERE workspace_id = $1 ORDER BY created_at_ms, id",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| KeyInfo {
                id: r.get(0),
                workspace: r.get(1),
                prefix: r.get(2),
                created_at_ms: r.get(3),
                revoked_at_ms: r.get(4),
            })
            .collect())
    }

    /// Revokes a live key; returns its hash (so caches can forget it), or `None` when the
    /// workspace has no such live key.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the update fails.
    pub async fn revoke_key(
        &self,
        workspace: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = $1 WHERE workspace_id = $2 AND id = $3 AND revoked_at_ms IS NULL RETURNING key_hash",
        )
        .bind(now_ms())
        .bind(workspace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            notify_change(self, &mut tx, "key", id).await?;
        }
        tx.commit().await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The workspace and key id of a live key, by the key's hash.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT workspace_id, id FROM api_keys WHERE key_hash = $1 AND revoked_at_ms IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Writes a batch of measurement records atomically, on the record writer's own
    /// connection: one transaction, one statement per batch on PostgreSQL and on SQLite
    /// one per `SQLITE_MAX_ROWS` (64) rows, then one per set bit of the rest. A
    /// record already stored (same request id) is left as it is, so a retried batch does not
    /// fail.
    pub async fn insert_records(&self, records: &[Record]) -> Result<(), StoreError> {
        self.writer.insert(records).await
    }

    /// Stored records, newest first, optionally of one route only.
    /// At most `limit` of them.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails or a row does not read back as a record.
    pub async fn records(
        &self,
        route: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, at_ms, workspace_id, route, version, arm, stream, status, outcome, latency_ms, ttft_ms, \
             prompt_tokens, completion_tokens, tokens_estimated, cost_usd, response_chars, finish_reason, \
             rollout_id, canary_weight, randomized, step, schema_failed, guardrail_blocked, api, reasoning_tokens, inputs, dimensions FROM requests WHERE ($1 IS NULL OR route = $1) ORDER BY at_ms DESC, request_id LIMIT $2",
        )
        .bind(route)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let arm: String = r.try_get(5)?;
                let outcome: String = r.try_get(8)?;
                Ok(Record {
                    request_id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    workspace: r.try_get(2)?,
                    route: r.try_get(3)?,
                    version: r.try_get(4)?,
                    arm: Arm::parse(&arm).unwrap_or(Arm::Stable),
                    stream: r.try_get::<i32, _>(6)? != 0,
                    status: r.try_get::<i32, _>(7)? as u16,
                    outcome: Outcome::parse(&outcome).unwrap_or(Outcome::GatewayError),
                    latency_ms: r.try_get(9)?,
                    ttft_ms: r.try_get(10)?,
                    usage: crate::types::Usage {
                        prompt_tokens: r.try_get::<i64, _>(11)? as u64,
                        completion_tokens: r.try_get::<i64, _>(12)? as u64,
                        estimated: r.try_get::<i32, _>(13)? != 0,
                    },
                    cost_usd: r.try_get(14)?,
                    response_chars: r.try_get::<i64, _>(15)? as u64,
                    finish_reason: r.try_get(16)?,
                    rollout_id: r.try_get(17)?,
                    w: r.try_get(18)?,
                    randomized: r.try_get::<i32, _>(19)? != 0,
                    step: r.try_get::<Option<i32>, _>(20)?.map(|s| s as u32),
                    schema_failed: r.try_get::<Option<i32>, _>(21)?.map(|f| f != 0),
                    guardrail_blocked: r.try_get::<i32, _>(22)? != 0,
                    api: Api::parse(&r.try_get::<String, _>(23)?).unwrap_or_default(),
                    reasoning_tokens: r.try_get::<Option<i64>, _>(24)?.map(|t| t as u64),
                    inputs: r.try_get::<Option<i64>, _>(25)?.map(|t| t as u32),
                    dimensions: r.try_get::<Option<i64>, _>(26)?.map(|t| t as u32),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// How many request records are stored.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the query fails.
    pub async fn count_records(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM requests")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
