//! A change made through any replica reaches every replica within a second (p99), whatever
//! kind it is: rollout start, pause, resume, pin, promote, abort, limits, a revoked key.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::PATIENCE;
use crate::rig::*;

/// How long an observer may take to see a change before the test fails outright.
const GIVE_UP: Duration = Duration::from_secs(10);

/// Polls the observers (every replica but `writer`) until `seen` holds on each; returns
/// each one's lag, measured from when the write was acknowledged.
async fn lags(
    rig: &Rig,
    writer: usize,
    what: &str,
    path: &str,
    seen: &(dyn Fn(&Value) -> bool + Sync),
) -> Vec<Duration> {
    let observers: Vec<usize> = (0..rig.replicas.len()).filter(|i| *i != writer).collect();
    let polls = observers.iter().map(|&i| async move {
        time_until(GIVE_UP, &format!("{what} on replica {i}"), || async move {
            let (status, v) = rig.admin(i, Method::GET, path, None).await;
            status == 200 && seen(&v)
        })
        .await
    });
    futures_util::future::join_all(polls).await
}

fn chat_route(v: &Value) -> &Value {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "chat")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_reaches_every_replica_within_a_second() {
    let Some(base) = pg_base() else { return };
    let rig = Rig::start(3, &base).await;
    rig.key(0, "acme").await;
    let mut all = Vec::new();
    let mut by_kind: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut record = |kind: &'static str, lags: Vec<Duration>| {
        all.extend(lags.iter().copied());
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, v)) => v.extend(lags),
            None => by_kind.push((kind, lags)),
        }
    };
    let mut stable = "gpt-4o".to_owned();
    // Eight cycles of 14 observations each: 112, so the p99 (nearest rank) is the 111th,
    // not the largest; one slow observation on a loaded machine is the 1 % it allows.
    for cycle in 0..8 {
        let w = cycle % 3;
        let canary = if stable == "gpt-4o" {
            "gpt-4-1"
        } else {
            "gpt-4o"
        };
        let (status, r) = rig
            .admin(
                w,
                Method::POST,
                "/rollouts",
                Some(json!({"route": "chat", "canary": canary, "policy": "hold"})),
            )
            .await;
        assert_eq!(status, 201, "{r}");
        let id = r["id"].as_str().unwrap().to_owned();
        let rid = id.clone();
        record(
            "start",
            lags(&rig, w, "the new rollout", "/routes", &move |v| {
                chat_route(v)["rollout"] == rid.as_str()
            })
            .await,
        );

        let view = format!("/rollouts/{id}");
        for (op, state) in [("pause", "paused"), ("resume", "progressing")] {
            let w = (w + 1) % 3;
            let (status, v) = rig
                .admin(w, Method::POST, &format!("/rollouts/{id}/{op}"), None)
                .await;
            assert_eq!(status, 200, "{op}: {v}");
            let kind = if op == "pause" { "pause" } else { "resume" };
            record(
                kind,
                lags(&rig, w, op, &view, &move |v| v["state"] == state).await,
            );
        }

        let (status, v) = rig
            .admin(
                w,
                Method::PUT,
                &format!("/rollouts/{id}/pins/acme"),
                Some(json!({"arm": "canary"})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        record(
            "pin",
            lags(&rig, w, "the pin", &view, &|v| {
                v["pins"]["acme"] == "canary"
            })
            .await,
        );

        let rps = 100.0 + cycle as f64;
        let (status, v) = rig
            .admin(
                w,
                Method::PUT,
                "/workspaces/acme/limits",
                Some(json!({"requests_per_second": rps})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        record(
            "limits",
            lags(
                &rig,
                w,
                "the limits",
                "/workspaces/acme/limits",
                &move |v| v["limits"]["requests_per_second"] == rps,
            )
            .await,
        );

        let (key, key_id) = rig.key(w, "acme").await;
        let observers: Vec<usize> = (0..3).filter(|i| *i != w).collect();
        for &i in &observers {
            // Cached as valid on every observer before the revoke.
            assert_eq!(rig.chat(i, &key, "demo").await.status(), 200);
        }
        let (status, _) = rig
            .admin(
                w,
                Method::DELETE,
                &format!("/workspaces/acme/keys/{key_id}"),
                None,
            )
            .await;
        assert_eq!(status, 204);
        let revoked = observers.iter().map(|&i| {
            let key = key.clone();
            let rig = &rig;
            async move {
                time_until(GIVE_UP, "the revoked key refused", || {
                    let key = key.clone();
                    async move { rig.chat(i, &key, "demo").await.status() == 401 }
                })
                .await
            }
        });
        record("revoke", futures_util::future::join_all(revoked).await);

        if cycle % 2 == 0 {
            let (status, v) = rig
                .admin(w, Method::POST, &format!("/rollouts/{id}/abort"), None)
                .await;
            assert_eq!(status, 200, "{v}");
            let kept = stable.clone();
            record(
                "abort",
                lags(&rig, w, "the abort", "/routes", &move |v| {
                    chat_route(v)["rollout"].is_null() && chat_route(v)["stable"] == kept.as_str()
                })
                .await,
            );
        } else {
            let (status, v) = rig
                .admin(w, Method::POST, &format!("/rollouts/{id}/promote"), None)
                .await;
            assert_eq!(status, 200, "{v}");
            record(
                "promote",
                lags(&rig, w, "the promotion", "/routes", &move |v| {
                    chat_route(v)["rollout"].is_null() && chat_route(v)["stable"] == canary
                })
                .await,
            );
            stable = canary.to_owned();
        }
    }
    for (kind, lags) in &by_kind {
        eprintln!(
            "propagation lag of {kind}: p50 {:?}, max {:?} over {} observations",
            percentile(lags, 50.0),
            percentile(lags, 100.0),
            lags.len()
        );
    }
    let p99 = percentile(&all, 99.0);
    let max = percentile(&all, 100.0);
    eprintln!(
        "propagation lag over {} observations: p50 {:?}, p99 {p99:?}, max {max:?}",
        all.len(),
        percentile(&all, 50.0)
    );
    assert!(
        all.len() >= 101,
        "{} observations: too few for a p99 that is not the max",
        all.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 lag {p99:?}");
    // The rest arrive too, if late (each one has GIVE_UP to arrive at all).
    assert!(max < Duration::from_secs(5), "max lag {max:?}");
    // The requests routed by the last state: the route's stable is the promoted version.
    for i in 0..3 {
        let (_, v) = rig.admin(i, Method::GET, "/routes", None).await;
        assert_eq!(chat_route(&v)["stable"], stable.as_str(), "replica {i}");
    }
}

/// The LISTEN backends of `schema`'s channel, as PostgreSQL lists them.
async fn listeners(pool: &sqlx::AnyPool, schema: &str, terminate: bool) -> i64 {
    let what = if terminate {
        "COUNT(pg_terminate_backend(pid))"
    } else {
        "COUNT(*)"
    };
    let sql = format!(
        "SELECT CAST({what} AS BIGINT) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %' AND query LIKE $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(format!("%{schema}%"))
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::Row::get(&row, 0)
}

/// Replica `i`'s cluster counter `name`.
async fn counter(rig: &Rig, i: usize, name: &str) -> u64 {
    let (_, v) = rig.admin(i, Method::GET, "/cluster", None).await;
    v["counters"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listener_is_counted_reconnected_and_misses_nothing() {
    let Some(base) = pg_base() else { return };
    // The longest periodic re-read allowed (5 s): the change below must come through the
    // reconnect's re-read, well before the next periodic one.
    let reread = Duration::from_secs(5);
    let rig = Rig::start_rereading(
        2,
        crate::helpers::fresh_pg_schema(&base).await,
        "",
        HEARTBEAT_MS,
        reread.as_millis() as u64,
    )
    .await;
    rig.key(0, "acme").await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&base).await.unwrap();
    let schema = schema_of(&rig.db_url);
    let mut by_reconnect = false;
    for round in 1..=3 {
        // Each replica opens its LISTEN connection after it answers /healthz: wait for both.
        time_until(PATIENCE, "a LISTEN connection per replica", || {
            let (pool, schema) = (&pool, &schema);
            async move { listeners(pool, schema, false).await == 2 }
        })
        .await;
        // Right after a periodic re-read of replica 1 (the schema is quiet: its only
        // re-reads are periodic ones), the next is `reread` away.
        // `asked`: when the last look that still saw the old count was sent; the re-read
        // came after it, and the next periodic one no sooner than `reread` later.
        let started = std::time::Instant::now();
        let mut asked = started;
        let before = counter(&rig, 1, "rereads").await;
        loop {
            let now = std::time::Instant::now();
            if counter(&rig, 1, "rereads").await > before {
                break;
            }
            asked = now;
            assert!(started.elapsed() < PATIENCE, "no periodic re-read");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let next_periodic = asked + reread;
        // Freeze replica 1, cut every LISTEN connection of this schema's channel (as a network
        // blip would), and change a limit through replica 0: replica 1 cannot hear its
        // notification, only re-read it once it finds its listener gone and reconnects.
        rig.signal(1, "STOP");
        let cut = listeners(&pool, &schema, true).await;
        let rps = 41.0 + f64::from(round);
        let (status, v) = rig
            .admin(
                0,
                Method::PUT,
                "/workspaces/acme/limits",
                Some(json!({"requests_per_second": rps})),
            )
            .await;
        rig.signal(1, "CONT");
        assert_eq!(cut, 2, "one listener per replica");
        assert_eq!(status, 200, "{v}");
        time_until(PATIENCE, "the change on replica 1", || async {
            let (_, v) = rig
                .admin(1, Method::GET, "/workspaces/acme/limits", None)
                .await;
            v["limits"]["requests_per_second"] == rps
        })
        .await;
        let seen = std::time::Instant::now();
        // Seen well before the next periodic re-read could have brought it (100 ms late is
        // tolerated): the reconnect's re-read did. Later, it proves nothing either way, and
        // a slow machine is no fault: try again.
        if seen + Duration::from_millis(100) < next_periodic {
            eprintln!(
                "round {round}: the change reached replica 1 {:?} before its next periodic re-read",
                next_periodic - seen
            );
            by_reconnect = true;
            break;
        }
        eprintln!("round {round}: the change came no sooner than a periodic re-read; again");
    }
    assert!(
        by_reconnect,
        "in three rounds the change never reached the reconnected replica before its periodic re-read: the reconnect re-reads nothing"
    );
    time_until(PATIENCE, "the drop and reconnect counted", || async {
        let (_, v) = rig.admin(1, Method::GET, "/cluster", None).await;
        v["counters"]["listener_drops"].as_u64() >= Some(1)
            && v["counters"]["listener_reconnects"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        rig.log(1).contains("change listener"),
        "the drop is logged:\n{}",
        rig.log(1)
    );
    // And Prometheus sees the same counters.
    let metrics = rig
        .http
        .get(format!("{}/metrics", rig.replicas[1].base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(
        value("sluice_cluster_listener_drops_total") >= Some(1),
        "{metrics}"
    );
    assert!(value("sluice_cluster_listener_reconnects_total") >= Some(1));
    assert_eq!(value("sluice_cluster_live_replicas"), Some(2));
    assert_eq!(value("sluice_database_up"), Some(1));
    pool.close().await;
}

/// The schema name in a test URL (`…options=-c search_path=<schema>`).
fn schema_of(url: &str) -> String {
    url.rsplit("search_path%3D").next().unwrap().to_owned()
}
