//! `[cluster]` and `[database] retention`: how often replicas heartbeat, how long a judge's
//! lease lasts, how often observations are shipped and the routing state re-read, and how
//! long stored rows are kept. All of it is data; `check` says what is wrong, key by key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::store::PrunedTable;

/// `[cluster]`: only used when the database is PostgreSQL (SQLite is one process).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterConfig {
    /// How often each replica writes its heartbeat; one silent for 3 of these is gone.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a judge's lease on a rollout lasts without renewal (renewed every third of it).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often each replica ships its rollouts' observations (the bound on what a crash loses).
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// How often the routing state is re-read even without a notification (at most 5 s).
    #[serde(default = "default_reread_ms")]
    pub reread_ms: u64,
    /// Observations kept per replica while the database is away; past it they are dropped and counted.
    #[serde(default = "default_observation_buffer")]
    pub observation_buffer: usize,
    /// The address other replicas and operators see for this one (default: the bound listener).
    #[serde(default)]
    pub advertise: Option<String>,
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

/// Longest re-read interval allowed: the issue's bound on propagation without notifications.
pub const MAX_REREAD: Duration = Duration::from_secs(5);

impl ClusterConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn flush(&self) -> Duration {
        Duration::from_millis(self.flush_ms)
    }
    pub fn reread(&self) -> Duration {
        Duration::from_millis(self.reread_ms)
    }

    /// Mistakes as (key, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut positive = |key: &str, v: u64| {
            if v == 0 {
                issues.push((format!("cluster.{key}"), "must be greater than 0".into()));
            }
        };
        positive("heartbeat_ms", self.heartbeat_ms);
        positive("lease_ms", self.lease_ms);
        positive("flush_ms", self.flush_ms);
        positive("reread_ms", self.reread_ms);
        if self.reread() > MAX_REREAD {
            issues.push((
                "cluster.reread_ms".into(),
                format!("must be at most {} ms", MAX_REREAD.as_millis()),
            ));
        }
        issues
    }
}

/// `[database] retention` and `[database.retention_per_table]`: how long rows are kept.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RetentionConfig {
    /// Every pruned table's default, e.g. "30d"; absent: keep everything.
    #[serde(default)]
    pub retention: Option<String>,
    /// Per table (`requests`, `feedback`, `shadow_pairs`, `rollout_events`,
    /// `cluster_observations`), overriding `retention`.
    #[serde(default)]
    pub retention_per_table: BTreeMap<String, String>,
}

impl RetentionConfig {
    /// Each table's retention, for the tables that have one.
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

    /// Mistakes as (key, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if let Some(s) = &self.retention
            && let Err(e) = humantime::parse_duration(s)
        {
            issues.push((
                "database.retention".into(),
                format!("`{s}` is not a duration such as \"30d\": {e}"),
            ));
        }
        for (table, s) in &self.retention_per_table {
            let key = format!("database.retention_per_table.{table}");
            if !PrunedTable::ALL.iter().any(|t| t.name() == table) {
                let known: Vec<&str> = PrunedTable::ALL.iter().map(|t| t.name()).collect();
                issues.push((key, format!("unknown table (known: {})", known.join(", "))));
            } else if let Err(e) = humantime::parse_duration(s) {
                issues.push((key, format!("`{s}` is not a duration such as \"30d\": {e}")));
            }
        }
        issues
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
        assert!(config.check().is_empty());
    }

    #[test]
    fn a_bad_retention_names_its_key() {
        let config = RetentionConfig {
            retention: Some("thirty days".into()),
            retention_per_table: [("nope".to_owned(), "7d".to_owned())].into(),
        };
        let keys: Vec<String> = config.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["database.retention", "database.retention_per_table.nope"]
        );
    }

    #[test]
    fn the_reread_interval_is_at_most_five_seconds() {
        let config = ClusterConfig {
            reread_ms: 6_000,
            ..ClusterConfig::default()
        };
        assert_eq!(config.check()[0].0, "cluster.reread_ms");
    }
}
