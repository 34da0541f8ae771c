//! `[cluster]` and `[database] retention`: how often replicas heartbeat, how long a judge's
//! lease lasts, how often observations are shipped and the routing state re-read, and how
//! long stored rows are kept. Plain data; `settings` checks it (`check_cluster`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `[cluster]`: only used when the database is PostgreSQL (SQLite is one process).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClusterConfig {
    /// How often each replica writes its heartbeat (ms); one silent for 3 of these is gone.
    #[serde(default = "default_heartbeat_ms")]
    pub(crate) heartbeat_ms: u64,
    /// How long a judge's lease on a rollout lasts without renewal (ms; renewed every third).
    #[serde(default = "default_lease_ms")]
    pub(crate) lease_ms: u64,
    /// How often each replica ships its rollouts' observations (ms): what a crash may lose.
    #[serde(default = "default_flush_ms")]
    pub(crate) flush_ms: u64,
    /// How often the routing state is re-read even without a notification (ms, at most 5 000).
    #[serde(default = "default_reread_ms")]
    pub(crate) reread_ms: u64,
    /// Observations kept per replica while the database is away; past it the oldest are
    /// dropped and counted.
    #[serde(default = "default_observation_buffer")]
    pub(crate) observation_buffer: usize,
    /// The address other replicas and operators see for this one (default: the bound listener).
    #[serde(default)]
    pub(crate) advertise: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: default_heartbeat_ms(),
            lease_ms: default_lease_ms(),
            flush_ms: default_flush_ms(),
            reread_ms: default_reread_ms(),
            observation_buffer: default_observation_buffer(),
            advertise: None,
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_lease_ms() -> u64 {
    5_000
}
fn default_flush_ms() -> u64 {
    250
}
fn default_reread_ms() -> u64 {
    5_000
}
fn default_observation_buffer() -> usize {
    100_000
}

/// Longest re-read interval allowed: the bound on propagation without notifications.
pub(crate) const MAX_REREAD: Duration = Duration::from_secs(5);

impl ClusterConfig {
    /// `heartbeat_ms` as a duration.
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// `flush_ms` as a duration.
    pub(crate) fn flush(&self) -> Duration {
        Duration::from_millis(self.flush_ms)
    }
    /// `reread_ms` as a duration.
    pub(crate) fn reread(&self) -> Duration {
        Duration::from_millis(self.reread_ms)
    }
}

/// Tables the retention pruner may delete from (`[database.retention_per_table]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunedTable {
    /// `requests`: the request records.
    Requests,
    /// `feedback`: the clients' feedback on answers.
    Feedback,
    /// `shadow_pairs`: stored shadow answers.
    ShadowPairs,
    /// Only events of rollouts that have ended: a live rollout's log is never cut.
    RolloutEvents,
    /// Only observations of rollouts that have ended.
    ClusterObservations,
}

impl PrunedTable {
    /// Every table the pruner knows.
    pub const ALL: [PrunedTable; 5] = [
        PrunedTable::Requests,
        PrunedTable::Feedback,
        PrunedTable::ShadowPairs,
        PrunedTable::RolloutEvents,
        PrunedTable::ClusterObservations,
    ];

    /// The table's name in the database and in the config.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PrunedTable::Requests => "requests",
            PrunedTable::Feedback => "feedback",
            PrunedTable::ShadowPairs => "shadow_pairs",
            PrunedTable::RolloutEvents => "rollout_events",
            PrunedTable::ClusterObservations => "cluster_observations",
        }
    }
}

/// `[database] retention` and `[database.retention_per_table]`, as durations.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RetentionConfig {
    /// Every pruned table's default, e.g. "30d"; absent: keep everything.
    #[serde(default)]
    pub(crate) retention: Option<String>,
    /// Per table (see [`PrunedTable`]), overriding `retention`.
    #[serde(default)]
    pub(crate) retention_per_table: BTreeMap<String, String>,
}

impl RetentionConfig {
    /// Each table's retention, for the tables that have one (unparsable values are left
    /// out: `settings` refuses them before anything runs).
    pub fn tables(&self) -> Vec<(PrunedTable, Duration)> {
        let default = self
            .retention
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok());
        PrunedTable::ALL
            .into_iter()
            .filter_map(|t| {
                let own = self
                    .retention_per_table
                    .get(t.name())
                    .and_then(|s| humantime::parse_duration(s).ok());
                own.or(default).map(|d| (t, d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_per_table_overrides_the_default() {
        let config = RetentionConfig {
            retention: Some("30d".into()),
            retention_per_table: [("requests".to_owned(), "7d".to_owned())].into(),
        };
        let tables = config.tables();
        let of = |t| tables.iter().find(|(x, _)| *x == t).map(|(_, d)| *d);
        assert_eq!(
            of(PrunedTable::Requests),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(
            of(PrunedTable::Feedback),
            Some(Duration::from_secs(30 * 86_400))
        );
    }
}
