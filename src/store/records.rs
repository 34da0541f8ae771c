//! The record writer's way into the database: its own connection, one transaction and as
//! few statements as possible per batch, every statement prepared once.
//!
//! Why this does not go through the shared `Any` pool like the rest of the store (measured
//! in `research/perf-profile.md`, where the old path was half of sluice's CPU per request):
//! - Its own one-connection pool, never pinged: no acquire round trip per batch, one warm
//!   page cache (SQLite) and one SQLite worker thread instead of four taking turns.
//! - The typed drivers: sqlx's `Any` arguments cost ~70 allocations per record, and only
//!   the PostgreSQL driver binds arrays.
//! - SQLite: anonymous `?` placeholders. sqlx-sqlite binds a numbered `$N` parameter by
//!   asking SQLite for its name, which SQLite finds by a linear scan: O(n²) per statement,
//!   ≈44 µs per record at 100 rows × 23 columns.
//! - PostgreSQL: one `INSERT … SELECT FROM UNNEST($1::text[], …)` per batch whatever its
//!   size: 27 array parameters, one round trip, one prepared statement.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Arguments, Executor};

use super::{Engine, StoreError};
use crate::types::Record;

/// The `requests` columns a record fills, in bind order.
const COLUMNS: &str = "request_id, at_ms, workspace_id, route, version, arm, stream, status, outcome, \
     latency_ms, ttft_ms, prompt_tokens, completion_tokens, tokens_estimated, cost_usd, response_chars, \
     finish_reason, rollout_id, canary_weight, randomized, step, schema_failed, guardrail_blocked, \
     api, reasoning_tokens, inputs, dimensions";
const COLUMN_COUNT: usize = 27;

/// Rows of the largest SQLite statement: 64 × 27 = 1 728 parameters. A batch of n rows
/// runs as statements of 64 rows, then one per set bit of the rest (32, 16, …, 1), so at
/// most seven distinct statements are ever prepared.
///
/// Why not larger: a statement runs whole on SQLite's worker thread, and where that thread
/// shares a CPU with the runtime's (the rig pins sluice to one), every request in flight
/// waits for it. 512 rows took 1–3 ms there and set sluice's p99 at c=16 (2.9 ms against
/// nginx's 0.5); 64 rows take about a quarter of a millisecond, and per record cost the
/// same (the fixed cost is the transaction's, which still holds a whole batch).
const SQLITE_MAX_ROWS_LOG2: u32 = 6;
/// The largest batch [`RecordWriter::insert`] takes in one SQLite statement.
pub(crate) const SQLITE_MAX_ROWS: usize = 1 << SQLITE_MAX_ROWS_LOG2;

/// The PostgreSQL statement: every column as an array, unnested into rows.
const POSTGRES_INSERT: &str = "INSERT INTO requests (request_id, at_ms, workspace_id, route, version, arm, \
     stream, status, outcome, latency_ms, ttft_ms, prompt_tokens, completion_tokens, tokens_estimated, \
     cost_usd, response_chars, finish_reason, rollout_id, canary_weight, randomized, step, schema_failed, \
     guardrail_blocked, api, reasoning_tokens, inputs, dimensions) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::int4[], $8::int4[], $9::text[], $10::float8[], $11::float8[], $12::int8[], $13::int8[], \
     $14::int4[], $15::float8[], $16::int8[], $17::text[], $18::text[], $19::float8[], $20::int4[], \
     $21::int4[], $22::int4[], $23::int4[], $24::text[], $25::int8[], $26::int8[], $27::int8[]) \
     ON CONFLICT (request_id) DO NOTHING";

/// `INSERT INTO requests (…) VALUES (?, …), … ON CONFLICT (request_id) DO NOTHING` for
/// 2^`log2` rows; built once per size for the life of the process.
fn sqlite_insert(log2: u32) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=SQLITE_MAX_ROWS_LOG2)
            .map(|k| {
                let row = format!("({})", vec!["?"; COLUMN_COUNT].join(", "));
                let rows = vec![row; 1 << k].join(", ");
                format!(
                    "INSERT INTO requests ({COLUMNS}) VALUES {rows} ON CONFLICT (request_id) DO NOTHING"
                )
            })
            .collect()
    });
    &all[log2 as usize]
}

/// The writer's own connection (a pool of one, so that sqlx reconnects it after an error).
#[derive(Clone)]
pub(crate) enum RecordWriter {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl RecordWriter {
    /// A writer for `url` that connects on first use (after the store's migrations ran).
    /// `url` is the store's URL after normalization (`mode=rwc` added for SQLite).
    pub(crate) fn connect_lazy(url: &str, engine: Engine) -> Result<Self, StoreError> {
        // One connection, never pinged before a batch: a broken connection fails the batch,
        // which the sink retries on a fresh one, while a ping was a round trip per batch.
        let (max, test) = (1, false);
        Ok(match engine {
            Engine::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                Self::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(max)
                        .test_before_acquire(test)
                        .connect_lazy_with(options),
                )
            }
            Engine::Postgres => Self::Postgres(
                PgPoolOptions::new()
                    .max_connections(max)
                    .test_before_acquire(test)
                    .connect_lazy_with(PgConnectOptions::from_str(url)?),
            ),
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }

    /// Writes `records` atomically: all of them or none. A record whose request id is
    /// already stored is skipped, so a batch retried after an unclear failure is harmless.
    pub(crate) async fn insert(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            Self::Sqlite(pool) => insert_sqlite(pool, records).await,
            Self::Postgres(pool) => insert_postgres(pool, records).await,
        }
    }
}

fn encode_error(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(e))
}

async fn insert_sqlite(pool: &SqlitePool, records: &[Record]) -> Result<(), StoreError> {
    // IMMEDIATE: take the write lock up front, waiting (busy_timeout) for another writer.
    // A deferred transaction would start as a reader and could fail at once with
    // SQLITE_BUSY when its first INSERT finds another connection's newer commit.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut rest = records;
    while !rest.is_empty() {
        let log2 = rest.len().ilog2().min(SQLITE_MAX_ROWS_LOG2);
        let (chunk, tail) = rest.split_at(1 << log2);
        rest = tail;
        let mut args = SqliteArguments::default();
        args.reserve(chunk.len() * COLUMN_COUNT, 0);
        let mut texts = Texts::default();
        for r in chunk {
            bind_sqlite(&mut args, &mut texts, r).map_err(encode_error)?;
        }
        tx.execute(sqlx::query_with(sqlite_insert(log2), args))
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One record's 27 values in [`COLUMNS`] order. Booleans as 0/1 integers: the schema keeps
/// them as INTEGER so that the `Any` readers see the same type on both engines.
fn bind_sqlite(
    args: &mut SqliteArguments,
    texts: &mut Texts,
    r: &Record,
) -> Result<(), sqlx::error::BoxDynError> {
    args.add(Arc::<str>::from(r.request_id.as_str()))?;
    args.add(r.at_ms)?;
    args.add(texts.get(Text::Workspace, &r.workspace))?;
    args.add(texts.get(Text::Route, &r.route))?;
    args.add(texts.get(Text::Version, &r.version))?;
    args.add(texts.get(Text::Arm, r.arm.as_str()))?;
    args.add(i32::from(r.stream))?;
    args.add(i32::from(r.status))?;
    args.add(texts.get(Text::Outcome, r.outcome.as_str()))?;
    args.add(r.latency_ms)?;
    args.add(r.ttft_ms)?;
    args.add(r.usage.prompt_tokens as i64)?;
    args.add(r.usage.completion_tokens as i64)?;
    args.add(i32::from(r.usage.estimated))?;
    args.add(r.cost_usd)?;
    args.add(r.response_chars as i64)?;
    args.add(
        r.finish_reason
            .as_deref()
            .map(|f| texts.get(Text::FinishReason, f)),
    )?;
    args.add(
        r.rollout_id
            .as_deref()
            .map(|id| texts.get(Text::RolloutId, id)),
    )?;
    args.add(r.w)?;
    args.add(i32::from(r.randomized))?;
    args.add(r.step.map(|s| s as i32))?;
    args.add(r.schema_failed.map(i32::from))?;
    args.add(i32::from(r.guardrail_blocked))?;
    args.add(texts.get(Text::Api, r.api.as_str()))?;
    args.add(r.reasoning_tokens.map(|t| t as i64))?;
    args.add(r.inputs.map(i64::from))?;
    args.add(r.dimensions.map(i64::from))?;
    Ok(())
}

/// The text columns whose values repeat from record to record.
#[derive(Clone, Copy)]
enum Text {
    Workspace,
    Route,
    Version,
    Arm,
    Outcome,
    FinishReason,
    RolloutId,
    Api,
}

impl Text {
    /// How many there are: the last variant's index and one.
    const COUNT: usize = Text::Api as usize + 1;
}

/// Each repeating text column's last value, shared by the rows that repeat it. sqlx-sqlite
/// copies a `&str` argument into a new `Arc<String>` (two allocations, freed on SQLite's
/// worker thread: 16 a record, of the 120 allocations a plain request costs in all); an
/// `Arc<str>` it takes as it is, and rows of one workspace, route and version share one.
#[derive(Default)]
struct Texts {
    last: [Option<Arc<str>>; Text::COUNT],
}

impl Texts {
    fn get(&mut self, column: Text, value: &str) -> Arc<str> {
        let slot = &mut self.last[column as usize];
        match slot {
            Some(last) if **last == *value => Arc::clone(last),
            _ => Arc::clone(slot.insert(Arc::from(value))),
        }
    }
}

/// One statement, no explicit transaction: a single statement is atomic on its own, and
/// BEGIN and COMMIT would be two more round trips.
async fn insert_postgres(pool: &PgPool, records: &[Record]) -> Result<(), StoreError> {
    let col = |f: fn(&Record) -> &str| records.iter().map(f).collect::<Vec<&str>>();
    let opt = |f: fn(&Record) -> Option<&str>| records.iter().map(f).collect::<Vec<_>>();
    let int = |f: fn(&Record) -> i32| records.iter().map(f).collect::<Vec<i32>>();
    let big = |f: fn(&Record) -> i64| records.iter().map(f).collect::<Vec<i64>>();
    let float = |f: fn(&Record) -> f64| records.iter().map(f).collect::<Vec<f64>>();
    let nullable_float = |f: fn(&Record) -> Option<f64>| records.iter().map(f).collect::<Vec<_>>();
    let nullable_int = |f: fn(&Record) -> Option<i32>| records.iter().map(f).collect::<Vec<_>>();
    let nullable_big = |f: fn(&Record) -> Option<i64>| records.iter().map(f).collect::<Vec<_>>();

    let mut args = PgArguments::default();
    let mut add = || -> Result<(), sqlx::error::BoxDynError> {
        args.add(col(|r| &r.request_id))?;
        args.add(big(|r| r.at_ms))?;
        args.add(col(|r| &r.workspace))?;
        args.add(col(|r| &r.route))?;
        args.add(col(|r| &r.version))?;
        args.add(col(|r| r.arm.as_str()))?;
        args.add(int(|r| i32::from(r.stream)))?;
        args.add(int(|r| i32::from(r.status)))?;
        args.add(col(|r| r.outcome.as_str()))?;
        args.add(float(|r| r.latency_ms))?;
        args.add(nullable_float(|r| r.ttft_ms))?;
        args.add(big(|r| r.usage.prompt_tokens as i64))?;
        args.add(big(|r| r.usage.completion_tokens as i64))?;
        args.add(int(|r| i32::from(r.usage.estimated)))?;
        args.add(float(|r| r.cost_usd))?;
        args.add(big(|r| r.response_chars as i64))?;
        args.add(opt(|r| r.finish_reason.as_deref()))?;
        args.add(opt(|r| r.rollout_id.as_deref()))?;
        args.add(nullable_float(|r| r.w))?;
        args.add(int(|r| i32::from(r.randomized)))?;
        args.add(nullable_int(|r| r.step.map(|s| s as i32)))?;
        args.add(nullable_int(|r| r.schema_failed.map(i32::from)))?;
        args.add(int(|r| i32::from(r.guardrail_blocked)))?;
        args.add(col(|r| r.api.as_str()))?;
        args.add(nullable_big(|r| r.reasoning_tokens.map(|t| t as i64)))?;
        args.add(nullable_big(|r| r.inputs.map(i64::from)))?;
        args.add(nullable_big(|r| r.dimensions.map(i64::from)))?;
        Ok(())
    };
    add().map_err(encode_error)?;
    pool.execute(sqlx::query_with(POSTGRES_INSERT, args))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_have_one_anonymous_placeholder_per_value() {
        for k in 0..=SQLITE_MAX_ROWS_LOG2 {
            let sql = sqlite_insert(k);
            assert_eq!(sql.matches('?').count(), (1 << k) * COLUMN_COUNT);
            assert!(
                !sql.contains('$'),
                "numbered placeholders cost O(n²) to bind"
            );
        }
        assert_eq!(COLUMNS.split(',').count(), COLUMN_COUNT);
    }
}
