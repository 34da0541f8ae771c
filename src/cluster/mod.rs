//! Several replicas as one gateway, on PostgreSQL (SQLite stays one process and runs none
//! of the loops here except the retention pruner).
//!
//! Each replica:
//! - heartbeats into `cluster_replicas` every `[cluster] heartbeat_ms`; one silent for three
//!   intervals is shown as gone, and the live count re-divides the workspace limits;
//! - LISTENs on the schema's channel: every admin write NOTIFYs in its own transaction, and
//!   the replica re-reads the routing state (rollouts, pins, promoted stables, limits,
//!   revoked keys); a re-read every `reread_ms` (≤ 5 s) covers a dropped listener;
//! - ships its rollouts' observations every `flush_ms` (module `ship`), and judges only the
//!   rollouts whose lease it holds (`rollout::sync`), writing every decision with the lease's
//!   fencing token;
//! - prunes old rows while it holds the maintenance lease (module `retention`).
//!
//! When PostgreSQL goes away the request path goes on with the last routing table, cached
//! keys and limits; observations buffer to `observation_buffer` and then drop, counted; the
//! judge holds; admin writes answer 503. Every loop retries on its own.

pub(crate) mod heartbeat;
pub(crate) mod listen;
pub mod retention;
pub(crate) mod ship;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::cluster::ClusterConfig;
use crate::store::{Engine, ReplicaRow, Store, StoreError};
use crate::types::now_ms;

/// A replica silent for this many heartbeat intervals is gone.
pub(crate) const MISSED_HEARTBEATS: u64 = 3;
/// The lease name of a rollout's judge.
pub(crate) fn judge_lease(rollout_id: &str) -> String {
    format!("judge:{rollout_id}")
}
/// The lease of the replica that prunes old rows.
pub(crate) const MAINTENANCE_LEASE: &str = "maintenance";

/// What happened in this replica's cluster loops, for `/metrics` and the cluster view.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ClusterCounters {
    /// Notifications received on the change channel.
    pub(crate) notifications: AtomicU64,
    /// Re-reads of the routing state (notified, periodic, or after a reconnect).
    pub(crate) rereads: AtomicU64,
    /// Re-reads that failed (the routing table stays as it was).
    pub(crate) reread_failures: AtomicU64,
    /// Times the LISTEN connection was lost, and re-established.
    pub(crate) listener_drops: AtomicU64,
    pub(crate) listener_reconnects: AtomicU64,
    /// Heartbeats that could not be written (the database away, mostly).
    pub(crate) heartbeat_failures: AtomicU64,
    /// Observation batches shipped, observations in them, and observations dropped before
    /// shipping (buffer full while the database was away).
    pub(crate) batches_shipped: AtomicU64,
    pub(crate) observations_shipped: AtomicU64,
    pub(crate) observations_dropped: AtomicU64,
    /// Flushes that failed and were kept for the next one.
    pub(crate) ship_failures: AtomicU64,
    /// Decisions and checkpoints this replica wrote under a fence that was no longer
    /// current (another replica had taken over): the database refused each one.
    pub(crate) fenced_writes_refused: AtomicU64,
    /// Judge leases taken over from another holder (or first taken).
    pub(crate) leases_taken: AtomicU64,
    /// Rows deleted by the retention pruner.
    pub(crate) rows_pruned: AtomicU64,
    /// Observations estimated lost with replicas that left without their closing batch
    /// (SIGKILL, a crash): per such replica, its observations per batch (a moving average),
    /// i.e. one flush interval at its recent rate. Counted by the judging replica, once per replica and
    /// rollout.
    pub(crate) observations_lost_estimate: AtomicU64,
    /// Canaries this replica's kill switch reverted on its own while the database was
    /// away (each written when the database returned, unless the rollout moved on).
    pub(crate) local_reverts: AtomicU64,
}

impl ClusterCounters {
    /// Adds `n` to one of the counters.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// This replica's place in the cluster.
pub(crate) struct Cluster {
    /// Whether the cluster loops run (PostgreSQL) or this is a single process (SQLite).
    pub(crate) enabled: bool,
    /// `[cluster]` as configured.
    pub(crate) config: ClusterConfig,
    /// This process: a fresh id per start, so a restarted replica is a new one.
    pub(crate) replica: ReplicaRow,
    /// What this replica's cluster loops did.
    pub(crate) counters: ClusterCounters,
    /// Live replicas at the last heartbeat (1 until known): the divisor of workspace limits.
    live_replicas: AtomicU64,
    /// Their ids (`None` until a heartbeat has read them): the judge counts what a replica
    /// that left without closing took with it.
    live_ids: Mutex<Option<BTreeSet<String>>>,
    /// False until the routing state has been read once: `/healthz` answers 503 until then.
    ready: AtomicBool,
    /// False while the database does not answer.
    database_up: AtomicBool,
}

impl Cluster {
    /// This process as a replica: enabled on PostgreSQL only; `address` is the bound
    /// listener's, shown unless `[cluster] advertise` says otherwise.
    pub(crate) fn new(config: ClusterConfig, engine: Engine, address: String) -> Self {
        let id = format!("rep_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let address = config.advertise.clone().unwrap_or(address);
        Self {
            enabled: engine == Engine::Postgres,
            replica: ReplicaRow {
                id,
                address,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at_ms: now_ms(),
                heartbeat_at_ms: 0,
            },
            config,
            counters: ClusterCounters::default(),
            live_replicas: AtomicU64::new(1),
            live_ids: Mutex::new(None),
            ready: AtomicBool::new(false),
            database_up: AtomicBool::new(true),
        }
    }

    /// This replica's id (`rep_` and 12 hex digits, fresh per start).
    pub(crate) fn id(&self) -> &str {
        &self.replica.id
    }

    /// Whether the routing state has been read (`/healthz`).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the routing state as read.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Live replicas at the last heartbeat, at least 1.
    pub(crate) fn live_replicas(&self) -> u64 {
        self.live_replicas.load(Ordering::Relaxed).max(1)
    }

    /// Sets the live count seen at a heartbeat; returns the previous one.
    pub(crate) fn set_live_replicas(&self, live: u64) -> u64 {
        self.live_replicas.swap(live.max(1), Ordering::Relaxed)
    }

    /// Sets the ids of the live replicas seen at a heartbeat.
    pub(crate) fn set_live_ids(&self, ids: BTreeSet<String>) {
        *self.live_ids.lock().unwrap_or_else(|e| e.into_inner()) = Some(ids);
    }

    /// Whether replica `id` was live at the last heartbeat; `None` before one was read.
    pub(crate) fn is_live(&self, id: &str) -> Option<bool> {
        self.live_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|ids| ids.contains(id))
    }

    /// Records a failed database call of a cluster loop: an unreachable database is noted
    /// (and logged once), anything else is logged as `what` failing.
    pub(crate) fn note_failure(&self, what: &str, e: &StoreError) {
        if e.is_unavailable() {
            self.note_database(false, Some(e));
        } else {
            tracing::warn!(error = %e, "{what} failed");
        }
    }

    /// False while the last cluster call found the database unreachable.
    pub(crate) fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    /// Records whether the database answered; logs each change once, not every retry.
    pub(crate) fn note_database(&self, up: bool, error: Option<&dyn std::fmt::Display>) {
        let was = self.database_up.swap(up, Ordering::Relaxed);
        match (was, up) {
            (true, false) => tracing::error!(
                error = %error.map(|e| e.to_string()).unwrap_or_default(),
                "database unreachable: routing on the last table, observations buffered, judge holding"
            ),
            (false, true) => tracing::info!("database reachable again: resuming"),
            _ => {}
        }
    }

    /// `GET /admin/v1/cluster`: the replicas (live or gone), who judges which rollout.
    pub(crate) async fn view(&self, store: &Store) -> Result<ClusterView<'_>, StoreError> {
        if !self.enabled {
            let mut me = self.replica.clone();
            me.heartbeat_at_ms = now_ms();
            return Ok(ClusterView {
                mode: Mode::Single,
                this_replica: self.replica.id.clone(),
                live_replicas: None,
                replicas: vec![ReplicaView::of(&me, true, Vec::new())],
                judges: None,
                counters: &self.counters,
            });
        }
        let (replicas, now) = store.replicas().await?;
        let leases = store.leases("judge:").await?;
        let gone_after = (MISSED_HEARTBEATS * self.config.heartbeat_ms) as i64;
        let rows: Vec<ReplicaView> = replicas
            .iter()
            .map(|r| {
                let live = now - r.heartbeat_at_ms <= gone_after;
                let judges = leases
                    .iter()
                    .filter(|l| l.holder == r.id && l.expires_at_ms >= now)
                    .filter_map(|l| l.name.strip_prefix("judge:"))
                    .map(str::to_owned)
                    .collect();
                ReplicaView::of(r, live, judges)
            })
            .collect();
        let live = rows.iter().filter(|r| r.live).count();
        let judges = leases
            .iter()
            .filter(|l| l.expires_at_ms >= now)
            .map(|l| JudgeLease {
                rollout: l.name.strip_prefix("judge:").map(str::to_owned),
                replica: l.holder.clone(),
                fence: l.fence,
                expires_in_ms: l.expires_at_ms - now,
            })
            .collect();
        Ok(ClusterView {
            mode: Mode::Cluster,
            this_replica: self.replica.id.clone(),
            live_replicas: Some(live),
            replicas: rows,
            judges: Some(judges),
            counters: &self.counters,
        })
    }
}

/// The replicas of this gateway and who judges which rollout (`GET /admin/v1/cluster`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Cluster)]
pub(crate) struct ClusterView<'a> {
    pub(crate) mode: Mode,
    /// The id of the replica that answered.
    pub(crate) this_replica: String,
    /// Cluster mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) live_replicas: Option<usize>,
    pub(crate) replicas: Vec<ReplicaView>,
    /// The judge leases that run, cluster mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) judges: Option<Vec<JudgeLease>>,
    /// This replica's cluster counters: notifications, re-reads, listener drops and
    /// reconnects, batches and observations shipped or dropped, fenced writes refused,
    /// leases taken, rows pruned.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub(crate) counters: &'a ClusterCounters,
}

/// `single` on SQLite (one process), `cluster` on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    Single,
    Cluster,
}

/// One replica as the cluster view shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplicaView {
    pub(crate) id: String,
    pub(crate) address: String,
    /// sluice's version.
    pub(crate) version: String,
    pub(crate) started_at_ms: i64,
    /// The database's clock at its last heartbeat.
    pub(crate) last_heartbeat_ms: i64,
    pub(crate) live: bool,
    /// `gone` after 3 heartbeat intervals without one.
    pub(crate) state: ReplicaState,
    /// The rollouts whose judge lease it holds.
    pub(crate) judges: Vec<String>,
}

impl ReplicaView {
    fn of(r: &ReplicaRow, live: bool, judges: Vec<String>) -> Self {
        Self {
            id: r.id.clone(),
            address: r.address.clone(),
            version: r.version.clone(),
            started_at_ms: r.started_at_ms,
            last_heartbeat_ms: r.heartbeat_at_ms,
            live,
            state: if live {
                ReplicaState::Live
            } else {
                ReplicaState::Gone
            },
            judges,
        }
    }
}

/// Whether a replica still sends heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ReplicaState {
    Live,
    Gone,
}

/// A judge lease that runs: which replica judges which rollout.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JudgeLease {
    #[schema(required = true)]
    pub(crate) rollout: Option<String>,
    pub(crate) replica: String,
    /// The lease's fencing token.
    pub(crate) fence: i64,
    pub(crate) expires_in_ms: i64,
}

/// The time to wait before retrying a loop whose database call failed.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);
