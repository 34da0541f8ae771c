//! The replica registry: `GET /admin/v1/cluster`, `sluice cluster status`, gone replicas.

use std::time::Duration;

use reqwest::Method;

use crate::helpers::PATIENCE;
use crate::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_is_listed_and_a_killed_one_is_gone_after_three_heartbeats() {
    let Some(base) = pg_base() else { return };
    let mut rig = Rig::start(3, &base).await;
    for asking in 0..3 {
        // Every replica live in this one's view: at once on a quiet machine; on a loaded one a
        // heartbeat can come late (200 ms here, gone after 600 ms) and the view catches up.
        let (v, _) = wait_some(
            Duration::from_secs(30),
            "every replica listed as live",
            || async {
                let (status, v) = rig.admin(asking, Method::GET, "/cluster", None).await;
                assert_eq!(status, 200, "{v}");
                let live: Vec<String> = v["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["state"] == "live")
                    .map(|r| r["id"].as_str().unwrap().to_owned())
                    .collect();
                rig.replicas
                    .iter()
                    .all(|r| live.contains(&r.id))
                    .then_some(v)
            },
        )
        .await;
        assert_eq!(v["mode"], "cluster");
        let me = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == v["this_replica"])
            .unwrap();
        assert_eq!(
            me["address"],
            rig.replicas[asking].base.trim_start_matches("http://")
        );
        assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    }

    // The CLI prints the same.
    let base0 = rig.replicas[0].base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["cluster", "status", "--url", &base0])
            .env("SLUICE_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    for r in &rig.replicas {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&r.id))
            .unwrap_or_else(|| panic!("{} not printed:\n{printed}", r.id));
        assert!(line.contains(" live "), "{line}");
    }

    let gone_id = rig.replicas[2].id.clone();
    rig.kill(2);
    let state_of = |v: &serde_json::Value| {
        v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == gone_id)
            .map(|r| r["state"].as_str().unwrap().to_owned())
    };
    let took = time_until(
        Duration::from_secs(5),
        "the killed replica shown as gone",
        || async {
            let (_, v) = rig.admin(0, Method::GET, "/cluster", None).await;
            state_of(&v).as_deref() == Some("gone")
        },
    )
    .await;
    // Gone no sooner than three missed heartbeats after its last one: measured on the
    // database's clock (the machine's wall clock, PostgreSQL being local), from the last
    // heartbeat the view itself shows; from the kill, a heartbeat already late before it
    // would make any bound unsound.
    let seen_ms = sluice::types::now_ms();
    let (_, v) = rig.admin(0, Method::GET, "/cluster", None).await;
    let last_beat = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == gone_id)
        .and_then(|r| r["last_heartbeat_ms"].as_i64())
        .unwrap();
    let silent = seen_ms - last_beat;
    eprintln!(
        "killed replica gone after {took:?} from the kill, {silent} ms after its last heartbeat"
    );
    // 2 ms for the rounding of the two clocks' milliseconds.
    assert!(
        silent >= (3 * HEARTBEAT_MS) as i64 - 2,
        "gone {silent} ms after its last heartbeat: sooner than three missed heartbeats"
    );
    // Both survivors live in each other's view (on a loaded machine a heartbeat comes late,
    // and the view catches up).
    time_until(PATIENCE, "two live replicas", || async {
        let (_, v) = rig.admin(1, Method::GET, "/cluster", None).await;
        v["live_replicas"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_single_sqlite_process_shows_itself_as_the_whole_gateway() {
    let app = crate::helpers::TestApp::spawn().await;
    let (status, v) = app.admin(Method::GET, "/cluster", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "single");
    assert_eq!(v["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(v["replicas"][0]["state"], "live");
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
