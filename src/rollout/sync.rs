//! The controller as one of several replicas (PostgreSQL only; SQLite never calls in here).
//!
//! - `refresh`: re-reads the live rollouts, pins and promoted stables another replica may
//!   have changed, and republishes the routing table (called on every notification and on
//!   the periodic re-read).
//! - `drain_for_ship`: hands this replica's observations to the shipper.
//! - `lead`: takes or renews the judge lease of each live rollout; a replica that takes a
//!   lease over resumes from the stored checkpoint (judge state + cursor).
//! - `take_shipped`: the leader reads every replica's batches past its cursor into the judge.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::control::{Controller, Inner, Running};
use super::view::view_running;
use crate::cluster::{ClusterCounters, judge_lease};
use crate::judge::{Judge, Observation};
use crate::resolve::Arm;
use crate::store::{ArmTotals, ShippedBatch, StoreError, now_ms};

/// Batches read per look at most; the rest waits for the next look.
const BATCHES_PER_LOOK: i64 = 10_000;
/// Ended rollouts whose last view is kept (as in the controller).
const ENDED_VIEWS_KEPT: usize = 50;

/// What the judge stores beside its state so that a successor resumes exactly: the last
/// batch judged per replica, and the canary requests counted in the current step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JudgeCursor {
    pub cursor: BTreeMap<String, i64>,
    pub canary_in_step: u64,
    pub step: usize,
}

impl JudgeCursor {
    pub(super) fn of(r: &Running) -> Self {
        Self {
            cursor: r.cursor.clone(),
            canary_in_step: r.canary_in_step,
            step: r.row.position.step,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Controller {
    /// In a cluster, a rollout this replica does not know yet may have just been started
    /// elsewhere: read the state again before answering that it does not exist.
    pub(super) async fn refresh_if_unknown(&self, id: &str) {
        if self.cluster.is_none() || self.inner.lock().await.running.contains_key(id) {
            return;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(rollout = %id, error = %e, "re-reading the routing state failed");
        }
    }

    /// Re-reads the live rollouts, their pins and the promoted stables, and republishes the
    /// routing table when anything differs. A rollout's judge state on this replica is kept.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let rows = self.store.rollouts(true).await?;
        let stables = self.store.route_stables().await?;
        let mut pins = BTreeMap::new();
        for row in &rows {
            pins.insert(
                row.id.clone(),
                self.store
                    .pins(&row.id)
                    .await?
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            );
        }
        let mut ended_rows = Vec::new();
        {
            let inner = self.inner.lock().await;
            let live: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            for id in inner.running.keys() {
                if !live.contains(id.as_str()) {
                    ended_rows.push(self.store.rollout(id).await?);
                }
            }
        }
        let mut inner = self.inner.lock().await;
        let mut changed = false;
        for (route, version) in stables {
            if self.catalog.routes().contains_key(&route)
                && self.catalog.version(&version).is_some()
                && inner.stables.get(&route) != Some(&version)
            {
                inner.stables.insert(route, version);
                changed = true;
            }
        }
        for row in rows {
            let row_pins = pins.remove(&row.id).unwrap_or_default();
            match inner.running.get_mut(&row.id) {
                Some(r) => {
                    if r.row.revision != row.revision {
                        if r.row.position.step != row.position.step {
                            r.canary_in_step = 0;
                        }
                        r.row.position = row.position;
                        r.row.updated_at_ms = row.updated_at_ms;
                        r.row.revision = row.revision;
                        changed = true;
                    }
                    if r.pins != row_pins {
                        r.pins = row_pins;
                        changed = true;
                    }
                }
                None => {
                    let policy = match self.policies.get(&row.policy).cloned() {
                        Some(p) => p,
                        None => match self.read_policy(&row.policy) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::error!(rollout = %row.id, policy = %row.policy, error = %e, "a rollout started elsewhere names a policy this replica cannot read; its canary gets no traffic here");
                                continue;
                            }
                        },
                    };
                    let judge = Judge::new(&policy);
                    tracing::info!(rollout = %row.id, route = %row.route, state = row.position.state.as_str(), "rollout taken up from the database");
                    let running = Running::new(row, policy, judge, row_pins, &self.catalog);
                    inner.running.insert(running.row.id.clone(), running);
                    changed = true;
                }
            }
        }
        for row in ended_rows.into_iter().flatten() {
            if let Some(mut ended) = inner.running.remove(&row.id) {
                tracing::info!(rollout = %row.id, state = row.position.state.as_str(), "rollout ended elsewhere");
                ended.row = row;
                keep_ended(&mut inner, ended);
                changed = true;
            }
        }
        if changed {
            self.publish(&inner)
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
        }
        if let Some(c) = &self.cluster {
            c.set_ready();
        }
        Ok(())
    }

    /// Everything this replica measured of each live rollout since the last call, as one
    /// batch per rollout (with how many observations it holds).
    pub async fn drain_for_ship(&self, replica: &str, seq: &mut i64) -> Vec<(ShippedBatch, u64)> {
        let mut inner = self.inner.lock().await;
        let now = now_ms();
        let mut out = Vec::new();
        for r in inner.running.values_mut() {
            let mut observations: Vec<Observation> = Vec::new();
            while let Ok(o) = r.rx.try_recv() {
                observations.push(o);
            }
            let assigned = r.tap.assigned();
            let delta = [0, 1].map(|i| assigned[i].saturating_sub(r.assigned_seen[i]) as i64);
            r.assigned_seen = assigned;
            let dropped = r.tap.dropped();
            let dropped_delta = dropped.saturating_sub(r.dropped_seen) as i64;
            r.dropped_seen = dropped;
            if observations.is_empty() && delta == [0, 0] && dropped_delta == 0 {
                continue;
            }
            *seq += 1;
            let mut batch = ShippedBatch {
                rollout_id: r.row.id.clone(),
                replica: replica.to_owned(),
                seq: *seq,
                at_ms: now,
                assigned: delta,
                dropped: dropped_delta,
                ..ShippedBatch::default()
            };
            for o in &observations {
                let i = o.arm.index();
                batch.requests[i] += 1;
                batch.errors[i] += i64::from(o.error);
                batch.latency_ms[i] += o.latency_ms;
            }
            batch.observations = serde_json::to_string(&observations).unwrap_or_default();
            out.push((batch, observations.len() as u64));
        }
        out
    }

    /// The leader's intake: every replica's batches past the cursor, into the judge.
    pub(super) async fn take_shipped(&self, r: &mut Running) -> Result<(), StoreError> {
        let cursor = serde_json::to_string(&r.cursor).unwrap_or_else(|_| "{}".into());
        let batches = self
            .store
            .observations_after(&r.row.id, &cursor, BATCHES_PER_LOOK)
            .await?;
        for batch in batches {
            let observations: Vec<Observation> =
                serde_json::from_str(&batch.observations).unwrap_or_default();
            for o in &observations {
                if o.arm == Arm::Canary {
                    r.canary_in_step += 1;
                }
                r.judge.observe(o);
            }
            for (arm, n) in [
                (Arm::Stable, batch.assigned[0]),
                (Arm::Canary, batch.assigned[1]),
            ] {
                for _ in 0..n {
                    r.judge.note_assigned(arm);
                }
            }
            let last = r.cursor.entry(batch.replica).or_default();
            *last = (*last).max(batch.seq);
        }
        Ok(())
    }

    /// Takes or renews this replica's judge lease on every live rollout (every third of the
    /// lease). Taking one over resumes from the stored checkpoint.
    pub(super) async fn lead(&self, now: i64) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut inner = self.inner.lock().await;
        let renew_every = (cluster.config.lease_ms / 3).max(1) as i64;
        let due: Vec<String> = inner
            .running
            .values()
            .filter(|r| now >= r.next_lead_ms)
            .map(|r| r.row.id.clone())
            .collect();
        for id in due {
            let lease = judge_lease(&id);
            let got = self
                .store
                .acquire_lease(&lease, cluster.id(), cluster.config.lease_ms as i64)
                .await;
            let Some(r) = inner.running.get_mut(&id) else {
                continue;
            };
            // A holder renews every third of the lease; the others try again the moment the
            // holder's lease would end, so a dead judge is replaced within one lease.
            r.next_lead_ms = match &got {
                Ok(l) if l.fence.is_none() => now + l.expires_in_ms.min(renew_every) + 1,
                _ => now + renew_every,
            };
            match got.map(|l| l.fence) {
                Ok(Some(fence)) if r.fence == Some(fence) => {}
                Ok(Some(fence)) => {
                    // Resume exactly where the previous judge's last accepted checkpoint stood.
                    match self.store.rollout(&id).await {
                        Ok(Some(row)) => {
                            r.judge = row
                                .judge_state
                                .as_deref()
                                .and_then(|s| serde_json::from_str(s).ok())
                                .unwrap_or_else(|| Judge::new(&r.policy));
                            let saved: JudgeCursor = row
                                .judge_cursor
                                .as_deref()
                                .and_then(|s| serde_json::from_str(s).ok())
                                .unwrap_or_default();
                            r.cursor = saved.cursor;
                            r.canary_in_step = if saved.step == row.position.step {
                                saved.canary_in_step
                            } else {
                                0
                            };
                            r.last_report = row
                                .last_report
                                .as_deref()
                                .and_then(|s| serde_json::from_str(s).ok());
                            r.row.position = row.position;
                            r.row.revision = row.revision;
                            r.fence = Some(fence);
                            r.last_look_ms = now;
                            ClusterCounters::add(&cluster.counters.leases_taken, 1);
                            tracing::info!(rollout = %id, fence, "judging this rollout now, from its stored checkpoint");
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(rollout = %id, error = %e, "cannot read the checkpoint to take the judge over")
                        }
                    }
                }
                Ok(None) => {
                    if r.fence.take().is_some() {
                        tracing::warn!(rollout = %id, "another replica judges this rollout now");
                    }
                }
                // The database is away: the judge cannot read observations and so holds.
                Err(_) => {}
            }
        }
    }

    /// The database refused a write under an old fence: another replica leads now.
    pub(super) fn fenced(&self, inner: &mut Inner, id: &str) {
        if let Some(c) = &self.cluster {
            ClusterCounters::add(&c.counters.fenced_writes_refused, 1);
        }
        if let Some(r) = inner.running.get_mut(id) {
            tracing::warn!(rollout = %id, fence = ?r.fence, "decision refused: stale fencing token; another replica judges this rollout now");
            r.fence = None;
        }
    }

    /// Lets every judge lease go, on a clean stop.
    pub(super) async fn release_leases(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let inner = self.inner.lock().await;
        for (id, r) in &inner.running {
            if r.fence.is_some() {
                let _ = self
                    .store
                    .release_lease(&judge_lease(id), cluster.id())
                    .await;
            }
        }
    }

    /// Every replica's figures of rollout `id`, summed (cluster only).
    pub async fn cluster_totals(&self, id: &str) -> Option<ArmTotals> {
        self.cluster.as_ref()?;
        self.store.arm_totals(id).await.ok()
    }
}

fn keep_ended(inner: &mut Inner, ended: Running) {
    if inner.ended.len() == ENDED_VIEWS_KEPT {
        inner.ended.remove(0);
    }
    inner
        .ended
        .push((ended.row.id.clone(), view_running(&ended)));
}
