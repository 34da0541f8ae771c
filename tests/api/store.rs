//! The store on every engine: the same calls, the same answers.

use sluice::store::{Store, StoreError};
use sluice::types::{Arm, Outcome, Record, Usage};

use crate::helpers::databases;

fn record(id: &str, at_ms: i64, route: &str) -> Record {
    Record {
        request_id: id.into(),
        at_ms,
        workspace: "acme".into(),
        route: route.into(),
        version: "gpt-4o".into(),
        arm: Arm::Canary,
        stream: true,
        status: 200,
        outcome: Outcome::Ok,
        latency_ms: 812.5,
        ttft_ms: Some(120.25),
        usage: Usage {
            prompt_tokens: 1200,
            completion_tokens: 345,
            estimated: true,
        },
        cost_usd: 0.00645,
        response_chars: 1500,
        finish_reason: Some("stop".into()),
        rollout_id: Some("ro_1".into()),
        w: Some(0.05),
        randomized: true,
        step: Some(2),
        schema_failed: Some(true),
        guardrail_blocked: false,
        api: sluice::types::Api::Responses,
        reasoning_tokens: Some(64),
        inputs: None,
        dimensions: None,
    }
}

#[tokio::test]
async fn the_store_behaves_the_same_on_every_engine() {
    for (engine, url, _dir) in databases().await {
        let store = Store::connect(&url).await.unwrap();
        // Migrating again is a no-op.
        Store::connect(&url).await.unwrap();

        store.create_workspace("acme").await.unwrap();
        assert!(
            matches!(
                store.create_workspace("acme").await,
                Err(StoreError::Conflict(_))
            ),
            "{engine}"
        );
        assert_eq!(store.workspace("acme").await.unwrap().unwrap().id, "acme");
        assert!(store.workspace("ghost").await.unwrap().is_none());

        store
            .create_key("acme", "key_1", "hash-1", "sk-sluice-ab")
            .await
            .unwrap();
        assert_eq!(
            store.key_by_hash("hash-1").await.unwrap(),
            Some(("acme".into(), "key_1".into()))
        );
        assert_eq!(
            store.revoke_key("other", "key_1").await.unwrap(),
            None,
            "{engine}: another workspace's key"
        );
        assert_eq!(
            store.revoke_key("acme", "key_1").await.unwrap().as_deref(),
            Some("hash-1")
        );
        assert_eq!(store.key_by_hash("hash-1").await.unwrap(), None, "{engine}");
        assert!(store.keys("acme").await.unwrap()[0].revoked_at_ms.is_some());

        // A first batch whose optional numbers are all missing, then one with them set:
        // the same prepared statement must take both.
        let mut bare = record("req_bare", 1, "first");
        (bare.ttft_ms, bare.w, bare.step, bare.schema_failed) = (None, None, None, None);
        store
            .insert_records(std::slice::from_ref(&bare))
            .await
            .unwrap();
        store
            .insert_records(&[record("req_full", 2, "first")])
            .await
            .unwrap();
        let first = store.records(Some("first"), 10).await.unwrap();
        assert_eq!(first.len(), 2, "{engine}");
        assert_eq!(first[1], bare, "{engine}");

        let mut batch: Vec<Record> = (0..300)
            .map(|i| record(&format!("req_{i:04}"), 1_000 + i, "chat"))
            .collect();
        batch[7].ttft_ms = None;
        batch[7].finish_reason = None;
        batch[7].outcome = Outcome::Upstream5xx;
        batch[7].stream = false;
        batch[7].arm = Arm::Stable;
        batch[7].rollout_id = None;
        batch[7].w = None;
        batch[7].step = None;
        batch[7].randomized = false;
        batch[7].schema_failed = None;
        batch[7].guardrail_blocked = true;
        batch[8].route = "other".into();
        store.insert_records(&batch).await.unwrap();
        // A retried batch is not an error and does not double-count.
        store.insert_records(&batch[..10]).await.unwrap();
        assert_eq!(store.count_records().await.unwrap(), 302, "{engine}");

        let back = store.records(Some("chat"), 1000).await.unwrap();
        assert_eq!(back.len(), 299, "{engine}");
        let r7 = back.iter().find(|r| r.request_id == "req_0007").unwrap();
        assert_eq!(r7, &batch[7], "{engine}");
        let r9 = back.iter().find(|r| r.request_id == "req_0009").unwrap();
        assert_eq!(r9, &batch[9], "{engine}");
        // Every row as it was sent: the SQLite writer shares a repeated text between rows
        // (a workspace, a route, an outcome), and a row after one that differed must not
        // keep the other's.
        for r in &back {
            let i: usize = r.request_id["req_".len()..].parse().unwrap();
            assert_eq!(r, &batch[i], "{engine}");
        }
        assert_eq!(back[0].request_id, "req_0299", "{engine}: newest first");
        store.close().await;
    }
}

/// The writes a cluster relies on, on both engines: a rollout write names the revision it
/// was decided from and is refused once the row has moved on; a judge's write carries its
/// lease's fence and is refused once another holder has taken the lease; each refusal
/// leaves the row and its event log as they were. (Leases live on PostgreSQL only: a
/// single SQLite process has nobody to share a rollout with.)
#[tokio::test]
async fn stale_and_fenced_rollout_writes_are_refused() {
    use sluice::rollout::machine::Position;
    use sluice::store::{Actor, Fence, NewEvent, RolloutRow, WriteGuard};
    use sluice::types::RolloutState;

    for (engine, url, _dir) in databases().await {
        let store = Store::connect(&url).await.unwrap();
        let position = Position {
            state: RolloutState::Progressing,
            step: 0,
            weight_bp: 1_000,
            step_started_ms: 1,
            inconclusive: false,
        };
        let row = RolloutRow {
            id: "ro_fence".into(),
            route: "chat".into(),
            stable_version: "a".into(),
            canary_version: "b".into(),
            policy: "default".into(),
            policy_json: "{}".into(),
            salt: "00".into(),
            position: position.clone(),
            started_at_ms: 1,
            updated_at_ms: 1,
            ended_at_ms: None,
            judge_state: None,
            last_report: None,
            revision: 0,
            judge_cursor: None,
        };
        let event = |kind: &'static str, actor| NewEvent {
            actor,
            kind,
            message: kind.into(),
            evidence: None,
        };
        store
            .insert_rollout(&row, &event("started", Actor::Operator))
            .await
            .unwrap();
        let paused = position.paused();
        let write = |revision, fence| {
            let (store, paused, e) = (&store, &paused, event("paused", Actor::Operator));
            async move {
                store
                    .update_rollout(
                        "ro_fence",
                        paused,
                        2,
                        &e,
                        None,
                        WriteGuard { revision, fence },
                    )
                    .await
            }
        };
        // An operator's write from revision 0 applies and makes revision 1; the same write
        // again (from a replica that has not seen it) is stale.
        assert_eq!(write(0, None).await.unwrap(), 1, "{engine}");
        assert!(
            matches!(write(0, None).await, Err(StoreError::Stale(_))),
            "{engine}"
        );

        if engine != "postgres" {
            store.close().await;
            continue;
        }
        // The judge's lease: taken by rep_a (fence 1), then by rep_b once it ran out (fence 2).
        let lease = "judge:ro_fence";
        let a = store.acquire_lease(lease, "rep_a", 1).await.unwrap();
        assert_eq!(a.fence, Some(1), "{engine}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let b = store.acquire_lease(lease, "rep_b", 60_000).await.unwrap();
        assert_eq!(b.fence, Some(2), "{engine}");
        assert_eq!(
            store
                .acquire_lease(lease, "rep_a", 60_000)
                .await
                .unwrap()
                .fence,
            None,
            "{engine}: held by rep_b"
        );
        let fence_of = |holder, token| Fence {
            lease,
            holder,
            token,
        };
        assert!(
            matches!(
                write(1, Some(fence_of("rep_a", 1))).await,
                Err(StoreError::Fenced(_))
            ),
            "{engine}: the old holder's decision is refused"
        );
        assert!(
            !store
                .checkpoint_rollout(
                    "ro_fence",
                    "{}",
                    "{}",
                    Some("{}"),
                    Some(fence_of("rep_a", 1))
                )
                .await
                .unwrap(),
            "{engine}: and so is its checkpoint"
        );
        assert_eq!(
            write(1, Some(fence_of("rep_b", 2))).await.unwrap(),
            2,
            "{engine}: the holder's applies"
        );
        let kinds: Vec<String> = store
            .events("ro_fence")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["started", "paused", "paused"], "{engine}");
        store.close().await;
    }
}

/// The two key lookups whose cost could grow with the number of keys: a key-cache miss on
/// the request path (`Store::key_by_hash`) and a cluster replica's re-read of the keys
/// revoked lately (`Store::revoked_keys_since`). Each must search an index, never scan
/// every key.
#[tokio::test]
async fn key_lookups_search_an_index_on_every_engine() {
    use sqlx::Connection;
    let by_hash =
        "SELECT workspace_id, id FROM api_keys WHERE key_hash = $1 AND revoked_at_ms IS NULL";
    let revoked = "SELECT key_hash FROM api_keys WHERE revoked_at_ms >= $1";
    for (engine, url, _dir) in databases().await {
        let mut conn = explaining(engine, &url).await;
        for (sql, plan) in [
            (
                by_hash,
                query_plan(engine, &mut conn, by_hash, "ab12").await,
            ),
            (revoked, query_plan(engine, &mut conn, revoked, 0_i64).await),
        ] {
            let indexed = if engine == "sqlite" {
                plan.starts_with("SEARCH api_keys USING INDEX")
            } else {
                plan.contains("Index") && !plan.contains("Seq Scan")
            };
            assert!(indexed, "{engine}: {sql}: {plan}");
        }
        conn.close().await.unwrap();
    }
}

/// Every read of the records table searches an index, so none slows as records pile up:
/// a rollout's totals (by route), feedback's lookup (by request id), the retention prune
/// (by time) and the recent listing (newest first). Guards the indexes the record writer
/// keeps: each costs it a b-tree insert on every row, so it keeps only these.
#[tokio::test]
async fn record_reads_search_an_index_on_every_engine() {
    use sqlx::Connection;
    let reads = [
        "SELECT version, arm, COUNT(*) FROM requests WHERE route = $1 GROUP BY version, arm",
        "SELECT workspace_id, rollout_id, arm FROM requests WHERE request_id = $1",
        "SELECT request_id FROM requests WHERE at_ms < $1 LIMIT 10",
        "SELECT request_id, at_ms FROM requests WHERE ($1 IS NULL OR route = $1) \
         ORDER BY at_ms DESC, request_id LIMIT 10",
    ];
    for (engine, url, _dir) in databases().await {
        let mut conn = explaining(engine, &url).await;
        for sql in reads {
            let plan = if sql.contains("at_ms < $1") {
                query_plan(engine, &mut conn, sql, 0_i64).await
            } else {
                query_plan(engine, &mut conn, sql, "r").await
            };
            let indexed = if engine == "sqlite" {
                plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX")
            } else {
                plan.contains("Index") && !plan.contains("Seq Scan")
            };
            assert!(indexed, "{engine}: {sql}: {plan}");
        }
        conn.close().await.unwrap();
    }
}

/// A connection to `url` (migrated) on which [`query_plan`] asks `engine` for plans.
/// PostgreSQL is told to avoid sequential scans: an empty table is cheaper to scan, and the
/// question is whether an index can serve at all.
async fn explaining(engine: &str, url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection;
    Store::connect(url).await.unwrap();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    if engine != "sqlite" {
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn
}

/// `engine`'s plan for `sql` with `arg` as `$1`, its lines joined by " / ".
async fn query_plan<'q, T>(
    engine: &str,
    conn: &mut sqlx::AnyConnection,
    sql: &str,
    arg: T,
) -> String
where
    T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    use sqlx::Row;
    let explain = if engine == "sqlite" {
        "EXPLAIN QUERY PLAN"
    } else {
        "EXPLAIN"
    };
    let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("{explain} {sql}")))
        .bind(arg)
        .fetch_all(conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(if engine == "sqlite" { 3 } else { 0 }))
        .collect();
    plan.join(" / ")
}
