//! The controller as one of several replicas (PostgreSQL only; a single process never
//! calls in here).
//!
//! - `refresh`: re-reads the live rollouts, pins and promoted stables another replica may
//!   have changed, and republishes the routing table (on every notification and on the
//!   periodic re-read). A rollout taken up here runs under the policy stored with it when
//!   it started, never this replica's file as it is now.
//! - `drain_for_ship`: hands this replica's observations to the shipper (`cluster::ship`).
//! - `revert_locally` / `write_local_reverts`: while the database is away, the kill switch
//!   over this replica's own requests may revert a canary here at once; the revert is
//!   written when the database returns.
//! - `lead`: takes or renews the judge lease of each live rollout; a replica that takes a
//!   lease over resumes from the stored checkpoint (judge state + cursor).
//!
//! Like every change, `refresh` and `lead` hold the controller's `changes` lock across
//! their database calls and take the in-memory lock only to apply what they read.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::RolloutError;
use super::control::{Change, Controller, ENDED_VIEWS_KEPT};
use super::feed::{AssignedCount, Shipment};
use super::machine::Decision;
use super::policy::Policy;
use super::running::{Inner, JudgeCursor, Running, policy_of, view_running};
use super::view::{ClusterFigures, EndedFigures, LocalRevert};
use crate::catalog::Catalog;
use crate::cluster::{ClusterCounters, judge_lease};
use crate::judge::{Judge, Observation};
use crate::store::{Actor, NewEvent, RolloutRow, ShippedBatch, StoreError};
use crate::types::{Arm, now_ms};

impl Controller {
    /// In a cluster, a rollout this replica does not know yet may have just been started
    /// elsewhere: read the state again before answering that it does not exist.
    pub(super) async fn refresh_if_unknown(&self, id: &str) {
        if self.cluster.is_none() || self.database_away() || self.lock().running.contains_key(id) {
            return;
        }
        if let Err(e) = self.refresh().await {
            tracing::warn!(rollout = %id, error = %e, "re-reading the routing state failed");
        }
    }

    /// Re-reads the live rollouts, their pins and the promoted stables, and republishes the
    /// routing table when anything differs. A rollout's judge on this replica is kept.
    ///
    /// # Errors
    /// The store cannot be read (the routing table stays as it was).
    pub(crate) async fn refresh(&self) -> Result<(), StoreError> {
        let _changing = self.changes.lock().await;
        self.refresh_locked().await
    }

    /// As [`Controller::refresh`]; the caller holds `changes`.
    pub(super) async fn refresh_locked(&self) -> Result<(), StoreError> {
        let read = self.read_routing_state().await?;
        let mut inner = self.lock();
        let mut changed = adopt_stables(&mut inner, &self.catalog, read.stables);
        changed |= self.follow_or_take_up(&mut inner, read.rows, read.pins, read.policies);
        changed |= retire_ended_elsewhere(&mut inner, read.ended);
        if changed && let Err(e) = self.publish_or_fail(&inner) {
            tracing::error!(error = %e, "the routing table could not be rebuilt from the database's state");
        }
        if let Some(c) = &self.cluster {
            c.set_ready();
        }
        Ok(())
    }

    /// Reads what [`Controller::refresh_locked`] applies, without the in-memory lock but
    /// to look up which rollouts this replica runs.
    async fn read_routing_state(&self) -> Result<RoutingState, StoreError> {
        let rows = self.store.rollouts(true).await?;
        let stables = self.store.route_stables().await?;
        let mut pins = BTreeMap::new();
        for row in &rows {
            let of_row: BTreeMap<String, Arm> =
                self.store.pins(&row.id).await?.into_iter().collect();
            pins.insert(row.id.clone(), of_row);
        }
        let (gone, unknown): (Vec<String>, HashSet<String>) = {
            let inner = self.lock();
            let live: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let gone = inner
                .running
                .keys()
                .filter(|id| !live.contains(id.as_str()))
                .cloned()
                .collect();
            let unknown = rows
                .iter()
                .filter(|r| !inner.running.contains_key(&r.id))
                .map(|r| r.id.clone())
                .collect();
            (gone, unknown)
        };
        let mut ended = Vec::new();
        for id in gone {
            if let Some(row) = self.store.rollout(&id).await?
                && !row.position.state.is_live()
            {
                ended.push(row);
            }
        }
        // The policy each rollout started with, as stored with it: every replica judges
        // and routes by that one copy, whatever its own file says now.
        let mut policies: BTreeMap<String, Arc<Policy>> = BTreeMap::new();
        for row in rows.iter().filter(|r| unknown.contains(&r.id)) {
            let file = self
                .read_policy(&row.policy)
                .ok()
                .or_else(|| self.policies.get(&row.policy).cloned());
            if let Some(p) = policy_of(row, file) {
                policies.insert(row.id.clone(), p);
            }
        }
        Ok(RoutingState {
            rows,
            stables,
            pins,
            ended,
            policies,
        })
    }

    /// Follows each live rollout this replica runs, and takes up the ones it does not
    /// (with their stored `policies`). True when anything changed.
    fn follow_or_take_up(
        &self,
        inner: &mut Inner,
        rows: Vec<RolloutRow>,
        mut pins: BTreeMap<String, BTreeMap<String, Arm>>,
        mut policies: BTreeMap<String, Arc<Policy>>,
    ) -> bool {
        let mut changed = false;
        for row in rows {
            let row_pins = pins.remove(&row.id).unwrap_or_default();
            match inner.running.get_mut(&row.id) {
                Some(r) => changed |= follow(r, row, row_pins),
                None => {
                    let Some(policy) = policies.remove(&row.id) else {
                        continue;
                    };
                    let judge = Judge::new(&policy.judge_spec());
                    tracing::info!(rollout = %row.id, route = %row.route, state = row.position.state.as_str(), "rollout taken up from the database");
                    let running = Running::new(row, policy, judge, row_pins, &self.catalog);
                    inner.running.insert(running.row.id.clone(), running);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Everything this replica measured of each live rollout since the last call, as one
    /// batch per rollout (with how many observations it holds). `seq` numbers the batches.
    /// With `closing` (the last flush of a clean stop) every live rollout gets a batch, empty
    /// or not, marked closing, so that its judge knows nothing was left behind.
    pub(crate) fn drain_for_ship(
        &self,
        replica: &str,
        seq: &mut i64,
        closing: bool,
    ) -> Vec<(ShippedBatch, u64)> {
        let mut inner = self.lock();
        let now = now_ms();
        let mut out = Vec::new();
        for r in inner.running.values_mut() {
            let mut observations: Vec<Observation> = Vec::new();
            while let Ok(o) = r.feed.observations.try_recv() {
                observations.push(o);
            }
            // Dated assignments, grouped by (second, weight, arm): the judge's SRM guard
            // keys its cells by the second, so nothing is lost by the grouping.
            let mut grouped: BTreeMap<(i64, u64, Arm), u32> = BTreeMap::new();
            while let Ok(a) = r.feed.assignments.try_recv() {
                let second = a.at_ms.div_euclid(1000) * 1000;
                *grouped.entry((second, a.w.to_bits(), a.arm)).or_default() += 1;
            }
            let mut delta = [0i64; 2];
            let assignments: Vec<AssignedCount> = grouped
                .into_iter()
                .map(|((at_ms, w, arm), count)| {
                    delta[arm.index()] += i64::from(count);
                    AssignedCount {
                        arm,
                        w: f64::from_bits(w),
                        at_ms,
                        count,
                    }
                })
                .collect();
            let dropped = r.tap.dropped();
            let dropped_delta = dropped.saturating_sub(r.dropped_seen) as i64;
            r.dropped_seen = dropped;
            if observations.is_empty() && assignments.is_empty() && dropped_delta == 0 && !closing {
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
                if let Some(kill) = &mut r.own_kill {
                    kill.observe(o.at_ms, o.arm == Arm::Canary, o.error);
                }
                let i = o.arm.index();
                batch.requests[i] += 1;
                batch.errors[i] += i64::from(o.error);
                batch.latency_ms[i] += o.latency_ms;
            }
            let n = observations.len() as u64;
            batch.observations = Shipment {
                observations,
                assignments,
                closing,
            }
            .to_json();
            out.push((batch, n));
        }
        out
    }

    /// Takes or renews this replica's judge lease on every live rollout (a holder every
    /// third of the lease, the others the moment the holder's lease would end). Taking one
    /// over resumes from the stored checkpoint.
    pub(super) async fn lead(&self, now: i64) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if self.database_away() {
            // Leases cannot be renewed; the judge holds until the heartbeat sees it back.
            return;
        }
        let _changing = self.changes.lock().await;
        let renew_every = (cluster.config.lease_ms / 3).max(1) as i64;
        let due: Vec<(String, Option<i64>)> = {
            let inner = self.lock();
            inner
                .running
                .values()
                .filter(|r| now >= r.next_lead_ms)
                .map(|r| (r.row.id.clone(), r.fence))
                .collect()
        };
        for (id, held) in due {
            let got = self
                .store
                .acquire_lease(
                    &judge_lease(&id),
                    cluster.id(),
                    cluster.config.lease_ms as i64,
                )
                .await;
            // A lease newly taken (or taken back after another held it): read the checkpoint.
            let checkpoint = match &got {
                Ok(l) if l.fence.is_some() && l.fence != held => {
                    match self.store.rollout(&id).await {
                        Ok(row) => row,
                        Err(e) => {
                            tracing::warn!(rollout = %id, error = %e, "cannot read the checkpoint to take the judge over");
                            None
                        }
                    }
                }
                _ => None,
            };
            let mut inner = self.lock();
            let Some(r) = inner.running.get_mut(&id) else {
                continue;
            };
            r.next_lead_ms = match &got {
                Ok(l) if l.fence.is_none() => now + l.expires_in_ms.min(renew_every) + 1,
                _ => now + renew_every,
            };
            match got.map(|l| l.fence) {
                Ok(Some(fence)) if r.fence == Some(fence) => {}
                Ok(Some(fence)) => {
                    let Some(row) = checkpoint else { continue };
                    resume(r, row, fence, now);
                    ClusterCounters::add(&cluster.counters.leases_taken, 1);
                    tracing::info!(rollout = %id, fence, "judging this rollout now, from its stored checkpoint");
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

    /// While the database is away: the kill switch over this replica's own requests. A
    /// rollout whose canary it finds broken is left out of the routing table at once (all
    /// its traffic on stable) and the revert is kept to be written when the database
    /// returns (`write_local_reverts`). The statistical judge holds meanwhile: it never
    /// promotes or advances blind, but a canary that is plainly broken is not left serving
    /// for the length of an outage.
    pub(super) fn revert_locally(&self, now: i64) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut inner = self.lock();
        let mut reverted = false;
        for r in inner.running.values_mut() {
            if r.local_revert.is_some() || !r.row.position.state.is_live() {
                continue;
            }
            let Some(kill) = &r.own_kill else { continue };
            let Some(fire) = kill.fires(now) else {
                continue;
            };
            let reason = fire.describe(kill.window_ms, kill.error_rate);
            tracing::warn!(rollout = %r.row.id, reason = %reason, "kill switch fired while the database is away: canary reverted on this replica; the revert is written when the database returns");
            ClusterCounters::add(&cluster.counters.local_reverts, 1);
            r.local_revert = Some(LocalRevert {
                at_ms: now,
                reason,
                canary: fire.canary,
                stable: fire.stable,
                from: r.row.position.clone(),
            });
            reverted = true;
        }
        if reverted && let Err(e) = self.publish_or_fail(&inner) {
            tracing::error!(error = %e, "the routing table could not be rebuilt after a local revert");
        }
    }

    /// The database is back: writes each revert applied here while it was away, if its
    /// rollout is still live (the write names the revision this replica last read, so a
    /// change it has not seen refuses it). One that ended or moved on meanwhile (another
    /// replica's revert was written first, an operator acted) is dropped, and the routing
    /// state is re-read. False when the database could not be reached after all (it is
    /// then noted away, and the revert stands until the next look).
    /// The caller holds `changes`.
    pub(super) async fn write_local_reverts(&self, now: i64) -> bool {
        let Some(cluster) = &self.cluster else {
            return true;
        };
        let pending = self.pending_local_reverts(cluster.id(), now);
        let mut moved_on = false;
        for change in pending {
            let id = change.id.clone();
            match self.transition(change, now).await {
                Ok(()) => {}
                Err(RolloutError::Store(e)) if e.is_unavailable() => {
                    cluster.note_failure("writing a revert applied during the outage", &e);
                    return false;
                }
                // Any other refusal (too many connections while every replica reconnects,
                // say) is no reason to route the broken canary again: the revert stands,
                // as the view says, and is tried again at the next look.
                Err(e @ RolloutError::Store(StoreError::Database(_))) => {
                    tracing::warn!(rollout = %id, error = %e, "a revert applied here during the outage could not be written yet; it stands, and is tried again");
                }
                Err(e) => {
                    tracing::info!(rollout = %id, error = %e, "a revert applied here during the outage was not written: the rollout ended or moved on meanwhile; following the database");
                    if let Some(r) = self.lock().running.get_mut(&id) {
                        r.local_revert = None;
                    }
                    moved_on = true;
                }
            }
        }
        if moved_on && let Err(e) = self.refresh_locked().await {
            tracing::warn!(error = %e, "re-reading the routing state failed");
        }
        true
    }

    /// Under the lock: the reverts applied here during the outage that are still to be
    /// written, as changes. A revert decided on a position the rollout has left since (an
    /// operator's command here, or a change read back from elsewhere) is dropped instead,
    /// not written over it.
    fn pending_local_reverts(&self, replica: &str, now: i64) -> Vec<Change> {
        let mut inner = self.lock();
        let mut dropped = false;
        for r in inner.running.values_mut() {
            if let Some(local) = &r.local_revert
                && local.from != r.row.position
            {
                tracing::info!(rollout = %r.row.id, "a revert applied here during the outage is not written: the rollout moved on since; following the database");
                r.local_revert = None;
                dropped = true;
            }
        }
        if dropped && let Err(e) = self.publish_or_fail(&inner) {
            tracing::error!(error = %e, "the routing table could not be rebuilt");
        }
        inner
            .running
            .values()
            .filter_map(|r| local_revert_change(r, replica, now))
            .collect()
    }

    /// In a cluster whose database is known to be away (the last cluster call failed):
    /// background rounds skip their database calls instead of holding `changes` for a
    /// pool timeout each, so that an operator's command answers 503 at once, not after them.
    pub(super) fn database_away(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.database_up())
    }

    /// The database refused a write under an old fence: another replica leads now.
    pub(super) fn fenced(&self, id: &str) {
        if let Some(c) = &self.cluster {
            ClusterCounters::add(&c.counters.fenced_writes_refused, 1);
        }
        if let Some(r) = self.lock().running.get_mut(id) {
            tracing::warn!(rollout = %id, fence = ?r.fence, "decision refused: stale fencing token; another replica judges this rollout now");
            r.fence = None;
        }
    }

    /// Lets every judge lease go, on a clean stop, so that another replica need not wait
    /// for it to run out.
    pub(super) async fn release_leases(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let held: Vec<String> = {
            let inner = self.lock();
            inner
                .running
                .iter()
                .filter(|(_, r)| r.fence.is_some())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in held {
            let _ = self
                .store
                .release_lease(&judge_lease(&id), cluster.id())
                .await;
        }
    }

    /// Every replica's figures of rollout `id`, summed (a cluster only; `None` alone or
    /// while the database is away).
    pub(super) async fn cluster_figures(&self, id: &str) -> Option<ClusterFigures> {
        if self.cluster.is_none() || self.database_away() {
            return None;
        }
        let totals = self.store.arm_totals(id).await.ok()?;
        // The replicas lost, as the judge's last checkpoint has them (on any replica).
        let cursor: JudgeCursor = match self.store.rollout(id).await {
            Ok(Some(row)) => row
                .judge_cursor
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default(),
            _ => JudgeCursor::default(),
        };
        let (lost, estimate) = cursor.lost();
        Some(ClusterFigures::of(&totals, lost, estimate))
    }
}

/// What a refresh read from the database.
struct RoutingState {
    /// The live rollouts.
    rows: Vec<RolloutRow>,
    /// (route, version) promoted to stable.
    stables: Vec<(String, String)>,
    /// Each live rollout's pins: workspace → arm.
    pins: BTreeMap<String, BTreeMap<String, Arm>>,
    /// Rollouts this replica runs that ended elsewhere.
    ended: Vec<RolloutRow>,
    /// The stored policy of each live rollout this replica does not run yet.
    policies: BTreeMap<String, Arc<Policy>>,
}

/// Takes the promoted stables of routes and versions this replica knows. True when one
/// differed.
fn adopt_stables(inner: &mut Inner, catalog: &Catalog, stables: Vec<(String, String)>) -> bool {
    let mut changed = false;
    for (route, version) in stables {
        if catalog.routes().contains_key(&route)
            && catalog.version(&version).is_some()
            && inner.stables.get(&route) != Some(&version)
        {
            inner.stables.insert(route, version);
            changed = true;
        }
    }
    changed
}

/// Moves rollouts that ended elsewhere to the ended list. True when there was one.
fn retire_ended_elsewhere(inner: &mut Inner, ended_rows: Vec<RolloutRow>) -> bool {
    let mut changed = false;
    for row in ended_rows {
        if let Some(mut ended) = inner.running.remove(&row.id) {
            tracing::info!(rollout = %row.id, state = row.position.state.as_str(), "rollout ended elsewhere");
            ended.row = row;
            if inner.ended.len() == ENDED_VIEWS_KEPT {
                inner.ended.remove(0);
            }
            let figures = EndedFigures::of(&view_running(&ended));
            inner.ended.push((ended.row.id.clone(), figures));
            changed = true;
        }
    }
    changed
}

/// The change that writes `r`'s revert applied here during the outage, if it has one.
fn local_revert_change(r: &Running, replica: &str, now: i64) -> Option<Change> {
    let local = r.local_revert.as_ref()?;
    let decision = Decision::Revert {
        reasons: vec![local.reason.clone()],
    };
    let next = r.row.position.apply(&r.policy, &decision, now);
    let at = local.at_ms;
    Some(Change {
        id: r.row.id.clone(),
        next,
        event: NewEvent {
            actor: Actor::Judge,
            kind: "rolled_back",
            message: format!(
                "rolled back by replica {replica}'s kill switch while the database was away (applied there at {at} ms, written when it returned): {}",
                local.reason
            ),
            evidence: Some(serde_json::json!({
                "decision": decision,
                "replica": replica,
                "applied_at_ms": at,
                "canary": {"requests": local.canary.0, "errors": local.canary.1},
                "stable": {"requests": local.stable.0, "errors": local.stable.1},
            })),
        },
        under_lease: false,
    })
}

/// Takes the judge of `r` over under `fence`, exactly where the previous judge's last
/// accepted checkpoint (`row`) stood.
/// Takes `row` (and its pins), as read back from the database, into this replica's `r`
/// when it is newer; true when anything the routing table shows changed. A revert this
/// replica applied on its own during an outage and has not written yet is dropped when the
/// rollout is found at another position: it was decided on a state that is gone (an
/// operator or the judge moved the rollout on), and writing it now would undo that change.
fn follow(r: &mut Running, row: RolloutRow, pins: BTreeMap<String, Arm>) -> bool {
    let mut changed = false;
    if row.revision > r.row.revision {
        if r.row.position.step != row.position.step {
            r.new_step();
        }
        if r.local_revert
            .as_ref()
            .is_some_and(|l| l.from != row.position)
        {
            tracing::info!(rollout = %row.id, state = row.position.state.as_str(), "the rollout moved on elsewhere since this replica reverted it during the outage: the revert is dropped unwritten; following the database");
            r.local_revert = None;
        }
        r.row.position = row.position;
        r.row.updated_at_ms = row.updated_at_ms;
        r.row.revision = row.revision;
        changed = true;
    }
    if row.revision >= r.row.revision && r.pins != pins {
        r.pins = pins;
        changed = true;
    }
    changed
}

fn resume(r: &mut Running, row: RolloutRow, fence: i64, now: i64) {
    r.judge = row
        .judge_state
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| Judge::new(&r.policy.judge_spec()));
    let saved: JudgeCursor = row
        .judge_cursor
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    r.cursor = saved.cursor;
    r.shippers = saved.shippers;
    if saved.step == row.position.step {
        r.canary_in_step = saved.canary_in_step;
        r.reported_in_step = saved.reported_in_step;
    } else {
        r.new_step();
    }
    r.last_report = row
        .last_report
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    if row.revision >= r.row.revision {
        r.row.position = row.position;
        r.row.revision = row.revision;
    }
    r.fence = Some(fence);
    r.last_look_ms = now;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::Catalog;
    use crate::rollout::machine::Position;
    use crate::rollout::policy::load_policy;
    use crate::types::RolloutState;

    fn row(revision: i64, position: Position) -> RolloutRow {
        RolloutRow {
            id: "r1".into(),
            route: "chat".into(),
            stable_version: "stable".into(),
            canary_version: "canary".into(),
            policy: "default".into(),
            policy_json: String::new(),
            salt: "1".into(),
            position,
            started_at_ms: 0,
            updated_at_ms: 0,
            ended_at_ms: None,
            judge_state: None,
            last_report: None,
            revision,
            judge_cursor: None,
        }
    }

    fn at(state: RolloutState, step: usize, weight_bp: u32) -> Position {
        Position {
            state,
            step,
            weight_bp,
            step_started_ms: 0,
            inconclusive: false,
        }
    }

    /// A replica whose kill switch reverted the rollout at step 1 (30 %) during an outage.
    fn reverted_locally() -> Running {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml");
        let policy = Arc::new(load_policy(&path).unwrap_or_else(|e| panic!("{e}")));
        let judge = Judge::new(&policy.judge_spec());
        let from = at(RolloutState::Progressing, 1, 3_000);
        let mut r = Running::new(
            row(7, from.clone()),
            policy,
            judge,
            BTreeMap::new(),
            &Catalog::empty(),
        );
        r.local_revert = Some(LocalRevert {
            at_ms: 1,
            reason: "kill switch".into(),
            canary: (20, 20),
            stable: (20, 0),
            from,
        });
        r
    }

    #[test]
    fn a_local_revert_is_dropped_once_the_database_shows_the_rollout_moved_on() {
        // After the outage an operator paused the rollout (or the judge advanced it) before
        // this replica wrote its revert: the revert must not be written over that change.
        let mut r = reverted_locally();
        let paused = at(RolloutState::Paused, 1, 3_000);
        assert!(follow(&mut r, row(8, paused.clone()), BTreeMap::new()));
        assert_eq!(r.row.position, paused);
        assert!(r.local_revert.is_none());

        let mut r = reverted_locally();
        let advanced = at(RolloutState::Progressing, 2, 5_000);
        assert!(follow(&mut r, row(8, advanced), BTreeMap::new()));
        assert!(r.local_revert.is_none());
    }

    #[test]
    fn a_local_revert_stands_while_the_rollout_is_where_it_was_reverted() {
        // The same revision read again, or only a pin changed: the rollout is still at the
        // position that was reverted, so the revert stands and is written.
        let mut r = reverted_locally();
        let from = r.row.position.clone();
        assert!(!follow(&mut r, row(7, from.clone()), BTreeMap::new()));
        assert!(r.local_revert.is_some());
        let pins = BTreeMap::from([("vip".to_owned(), Arm::Canary)]);
        assert!(follow(&mut r, row(8, from), pins));
        assert!(r.local_revert.is_some());
        assert_eq!(r.row.revision, 8);
    }
}
