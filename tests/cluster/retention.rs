//! Retention: old rows pruned in batches on SQLite and PostgreSQL, recent ones and a live
//! rollout's log kept.

use std::time::Duration;

use sluice::cluster::retention::prune_once;
use sluice::config::cluster::PrunedTable;
use sluice::store::Store;
use sluice::types::{Arm, Outcome, Record, Usage, now_ms};

use crate::helpers::databases;

fn record(id: &str, at_ms: i64) -> Record {
    Record {
        request_id: id.into(),
        at_ms,
        workspace: "acme".into(),
        route: "chat".into(),
        version: "gpt-4o".into(),
        arm: Arm::Stable,
        stream: false,
        status: 200,
        outcome: Outcome::Ok,
        latency_ms: 10.0,
        ttft_ms: None,
        usage: Usage::default(),
        cost_usd: 0.0,
        response_chars: 12,
        finish_reason: None,
        rollout_id: None,
        w: None,
        randomized: true,
        step: None,
        schema_failed: None,
        guardrail_blocked: false,
        api: sluice::types::Api::Chat,
        reasoning_tokens: None,
        inputs: None,
        dimensions: None,
    }
}

/// A rollout started at `at_ms` (one event), ended at `ended_ms` when given (a second one).
async fn add_rollout(store: &Store, id: &str, route: &str, at_ms: i64, ended_ms: Option<i64>) {
    use sluice::rollout::machine::Position;
    use sluice::store::{Actor, NewEvent, RolloutRow, WriteGuard};
    use sluice::types::RolloutState;

    let position = Position {
        state: RolloutState::Progressing,
        step: 0,
        weight_bp: 1_000,
        step_started_ms: at_ms,
        inconclusive: false,
    };
    let row = RolloutRow {
        id: id.into(),
        route: route.into(),
        stable_version: "a".into(),
        canary_version: "b".into(),
        policy: "default".into(),
        policy_json: "{}".into(),
        salt: "00".into(),
        position: position.clone(),
        started_at_ms: at_ms,
        updated_at_ms: at_ms,
        ended_at_ms: None,
        judge_state: None,
        last_report: None,
        revision: 0,
        judge_cursor: None,
    };
    let event = |kind: &'static str| NewEvent {
        actor: Actor::Operator,
        kind,
        message: kind.into(),
        evidence: None,
    };
    store.insert_rollout(&row, &event("started")).await.unwrap();
    if let Some(ended_ms) = ended_ms {
        let aborted = Position {
            state: RolloutState::Aborted,
            ..position
        };
        let guard = WriteGuard {
            revision: 0,
            fence: None,
        };
        store
            .update_rollout(id, &aborted, ended_ms, &event("aborted"), None, guard)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn rows_older_than_the_retention_are_pruned_and_recent_ones_kept() {
    const DAY_MS: i64 = 86_400_000;
    for (engine, url, _dir) in databases().await {
        let store = Store::connect(&url).await.unwrap();
        let now = now_ms();
        // More old rows than one batch, so pruning takes several statements.
        let old: Vec<Record> = (0..2_500)
            .map(|i| record(&format!("old-{i}"), now - 40 * DAY_MS - i))
            .collect();
        store.insert_records(&old).await.unwrap();
        let recent: Vec<Record> = (0..10)
            .map(|i| record(&format!("new-{i}"), now - DAY_MS - i))
            .collect();
        store.insert_records(&recent).await.unwrap();
        assert_eq!(store.count_records().await.unwrap(), 2_510, "{engine}");

        let thirty_days = Duration::from_secs(30 * 86_400);
        let done = prune_once(&store, &[(PrunedTable::Requests, thirty_days)], now)
            .await
            .unwrap();
        assert_eq!(done, [(PrunedTable::Requests, 2_500)], "{engine}");
        assert_eq!(store.count_records().await.unwrap(), 10, "{engine}");
        let left = store.records(None, 100).await.unwrap();
        assert!(
            left.iter().all(|r| r.request_id.starts_with("new-")),
            "{engine}"
        );

        // Two rollouts whose events are as old as those rows: one still live, one ended.
        let old_ms = now - 40 * DAY_MS;
        add_rollout(&store, "ro_live", "chat", old_ms, None).await;
        add_rollout(&store, "ro_ended", "counted", old_ms, Some(old_ms + 1)).await;
        assert_eq!(store.events("ro_live").await.unwrap().len(), 1, "{engine}");
        assert_eq!(store.events("ro_ended").await.unwrap().len(), 2, "{engine}");

        // Every other table prunes without error, even empty; of the old events, only the
        // ended rollout's go: a live rollout's log is never cut.
        let all: Vec<_> = PrunedTable::ALL.iter().map(|t| (*t, thirty_days)).collect();
        let done = prune_once(&store, &all, now).await.unwrap();
        assert!(
            done.contains(&(PrunedTable::RolloutEvents, 2)),
            "{engine}: {done:?}"
        );
        assert_eq!(
            store.events("ro_live").await.unwrap().len(),
            1,
            "{engine}: the live rollout's log kept"
        );
        assert!(
            store.events("ro_ended").await.unwrap().is_empty(),
            "{engine}"
        );
        store.close().await;
    }
}

#[test]
fn retention_is_read_from_the_database_section() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_policies(dir.path());
    let text =
        crate::helpers::config_toml("http://127.0.0.1:9/v1", "127.0.0.1:0", "sqlite://x.db", "")
            .replace(
                "[database]\n",
                "[database]\nretention = \"30d\"\nretention_per_table = { requests = \"7d\" }\n",
            );
    let settings = sluice::settings::parse(
        &dir.path().join("sluice.toml"),
        &text,
        &crate::helpers::test_env,
    )
    .expect("valid");
    let tables = settings.config.database.retention_config().tables();
    assert!(tables.contains(&(PrunedTable::Requests, Duration::from_secs(7 * 86_400))));
    assert!(tables.contains(&(PrunedTable::RolloutEvents, Duration::from_secs(30 * 86_400))));
}
