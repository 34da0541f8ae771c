//! The rollout controller: the only writer of the routing table.
//!
//! Every `interval` it drains each live rollout's observations into its judge, asks the
//! state machine for a decision, and when the decision changes anything it writes the new
//! position and an event with the evidence to the database first, then swaps the routing
//! table. Operator commands (start, pause, resume, promote, abort, pins) take the same path.
//! A restart reads the live rollouts back (step, weight, salt, pins, judge state, and the
//! policy each started with, stored with it) and publishes the same table again.
//!
//! Two locks, so that nothing waits behind the database but another change: `changes`
//! (async) is held by whoever changes a rollout, across its database write, so changes never
//! interleave; `inner` (a plain mutex) guards the in-memory state and is never held across
//! I/O, so `/v1/feedback` and the views never wait behind a judge's look. A change is
//! decided under `inner`, written without it, then applied and published under it again:
//! the router never acts on what is not stored. `/metrics` reads a snapshot published after
//! every change and look, without a lock.
//!
//! On PostgreSQL with several replicas (`cluster` set), the cluster half lives in
//! `rollout::sync`: only the holder of a rollout's judge lease judges it, on every replica's
//! shipped observations, and writes each decision under the lease's fencing token; every
//! write names the revision it was decided from, so a stale view is refused, not applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::RolloutError;
use super::machine::{Decision, Position};
use super::notify::{Notifier, decision_event};
use super::policy::{Policy, load_policy};
use super::running::{Inner, Running, policy_of, view_ended, view_running};
use super::view::{EndedFigures, RolloutView, view_row};
use crate::catalog::Catalog;
use crate::cluster::{Cluster, ClusterCounters, judge_lease};
use crate::judge::Judge;
use crate::resolve::{LiveRollout, RoutingTable};
use crate::shadow::RolloutShadow;
use crate::store::{
    Actor, EventRow, Fence, NewEvent, ObservationBatch, RequestPlacement, RolloutRow, Store,
    StoreError, WriteGuard,
};
use crate::tasks::Tasks;
use crate::types::{Arm, RolloutState, RouteName, now_ms};

/// How often the controller wakes to see whose interval has come.
const LOOK_TICK: Duration = Duration::from_millis(100);

/// A live rollout as `/metrics` shows it.
#[derive(Clone)]
pub(crate) struct RolloutMetrics {
    pub(crate) id: String,
    pub(crate) route: String,
    pub(crate) state: RolloutState,
    pub(crate) step: usize,
    /// Canary weight in [0, 1].
    pub(crate) weight: f64,
    pub(crate) threshold: f64,
    /// Gate (or feedback metric) → its e-value at the last look.
    pub(crate) e_values: Vec<(String, f64)>,
    pub(crate) shadow: Option<crate::shadow::ShadowCounters>,
    /// `metric/arm` → feedback received.
    pub(crate) feedback: BTreeMap<String, u64>,
}

/// An operator's command on a live rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Pause,
    Resume,
    /// Straight to 100 %: the canary becomes the route's stable version.
    Promote,
    Abort,
}

impl Operation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "promote" => Some(Self::Promote),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }
}

/// Ended rollouts whose last live figures are kept in memory.
pub(super) const ENDED_VIEWS_KEPT: usize = 50;
/// Shipped batches a judge reads per look at most; the rest waits for the next look.
const BATCHES_PER_LOOK: i64 = 10_000;

/// What `/metrics` reads: each live rollout's figures at the last change or look, with its
/// shadow state (whose counters are read at scrape time).
type MetricsSnapshot = Vec<(RolloutMetrics, Option<Arc<RolloutShadow>>)>;

/// A change decided under the lock, to be written and then applied.
pub(super) struct Change {
    pub(super) id: String,
    pub(super) next: Position,
    pub(super) event: NewEvent,
    /// A judge's decision, written under this replica's judge lease (its fencing token).
    /// False for an operator's command and for a kill-switch revert a replica applied on
    /// its own while the database was away: the revision guard alone keeps those from
    /// being applied to a rollout that moved on.
    pub(super) under_lease: bool,
}

/// A change as written: the new revision, and the (route, version) a promotion made stable.
struct Written {
    revision: i64,
    promote_to: Option<(String, String)>,
}

/// What is left to do for a rollout that a change ended.
struct EndedRollout {
    /// Its judge's last state and report, as JSON.
    checkpoint: (String, String),
    /// The judge lease's fencing token, when this replica judged it in a cluster.
    lease_token: Option<i64>,
}

/// A judge state to save: (rollout id, (judge, report) as JSON, cluster cursor, fencing token).
type Checkpoint = (String, (String, String), Option<String>, Option<i64>);

/// Whether `r`'s interval has come since its last look.
fn is_due(r: &Running, now: i64) -> bool {
    now - r.last_look_ms >= r.policy.interval.as_millis() as i64
}

pub(crate) struct Controller {
    pub(super) store: Store,
    pub(super) catalog: Arc<Catalog>,
    pub(super) policies: BTreeMap<String, Arc<Policy>>,
    policies_dir: PathBuf,
    routing: Arc<ArcSwap<RoutingTable>>,
    /// Held by whoever changes a rollout, across the database write (and by the cluster's
    /// re-read and lease rounds, so that none of them interleaves with a change).
    pub(super) changes: tokio::sync::Mutex<()>,
    /// Never held across I/O.
    inner: std::sync::Mutex<Inner>,
    metrics: ArcSwap<MetricsSnapshot>,
    notifier: Notifier,
    /// Set on PostgreSQL: judge only under a lease, on every replica's observations.
    pub(super) cluster: Option<Arc<Cluster>>,
}

impl Controller {
    /// Reads the live rollouts and promoted stables back and publishes the routing table.
    ///
    /// # Errors
    /// The store cannot be read, or the routing table cannot be built from the config.
    pub(crate) async fn restore(
        store: Store,
        catalog: Arc<Catalog>,
        policies: BTreeMap<String, Arc<Policy>>,
        policies_dir: PathBuf,
        routing: Arc<ArcSwap<RoutingTable>>,
        tasks: Tasks,
        cluster: Option<Arc<Cluster>>,
    ) -> anyhow::Result<Self> {
        let mut inner = Inner::default();
        for (route, version) in store.route_stables().await? {
            if catalog.routes().contains_key(&route) && catalog.version(&version).is_some() {
                inner.stables.insert(route, version);
            } else {
                tracing::warn!(route = %route, version = %version, "a promoted stable is no longer in the config; using the config's");
            }
        }
        for row in store.rollouts(true).await? {
            // The policy it started with, not today's file: a restart never swaps it.
            let Some(policy) = policy_of(&row, policies.get(&row.policy).cloned()) else {
                continue;
            };
            let judge = row
                .judge_state
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| Judge::new(&policy.judge_spec()));
            let pins = store.pins(&row.id).await?.into_iter().collect();
            tracing::info!(rollout = %row.id, route = %row.route, state = row.position.state.as_str(), step = row.position.step + 1, weight_bp = row.position.weight_bp, "rollout resumed after restart");
            let running = Running::new(row, policy, judge, pins, &catalog);
            inner.running.insert(running.row.id.clone(), running);
        }
        let controller = Self {
            store,
            catalog,
            policies,
            policies_dir,
            routing,
            changes: tokio::sync::Mutex::new(()),
            inner: std::sync::Mutex::new(inner),
            metrics: ArcSwap::default(),
            notifier: Notifier::new(tasks)?,
            cluster,
        };
        controller.publish(&controller.lock())?;
        Ok(controller)
    }

    /// The in-memory state; a panic elsewhere while it was held does not make it unusable.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy file as it is now: edits take effect for the next rollout without a
    /// restart, and a broken file is refused with its mistakes.
    pub(super) fn read_policy(&self, name: &str) -> Result<Arc<Policy>, RolloutError> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        let path = self.policies_dir.join(format!("{name}.toml"));
        if !valid_name || !path.is_file() {
            let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
            return Err(RolloutError::BadPolicy(format!(
                "no policy `{name}` (known: {})",
                known.join(", ")
            )));
        }
        match load_policy(&path) {
            Ok(policy) => Ok(Arc::new(policy)),
            Err(errors) => Err(RolloutError::BadPolicy(
                errors.to_string().trim_end().to_owned(),
            )),
        }
    }

    /// Builds the routing table from the stables and the live rollouts, swaps it in, and
    /// publishes the figures `/metrics` shows.
    fn publish(&self, inner: &Inner) -> anyhow::Result<()> {
        let mut table = RoutingTable::new(&self.catalog, &inner.stables)?;
        for r in inner.running.values() {
            if r.local_revert.is_some() {
                // Reverted here while the database is away: the route is stable's alone.
                continue;
            }
            let route = RouteName::parse(&r.row.route).map_err(anyhow::Error::msg)?;
            let Some(canary) = self
                .catalog
                .target(&route, &r.row.canary_version, Arm::Canary)
            else {
                continue;
            };
            let last = r
                .row
                .position
                .step
                .min(r.policy.steps.len().saturating_sub(1));
            let targeted: HashSet<String> = r.policy.steps[..=last]
                .iter()
                .flat_map(|s| s.workspaces.iter().cloned())
                .collect();
            let live = LiveRollout {
                salt: u64::from_str_radix(&r.row.salt, 16).unwrap_or(0),
                weight: f64::from(r.row.position.weight_bp) / 10_000.0,
                step: r.row.position.step as u32,
                canary,
                pins: r
                    .pins
                    .iter()
                    .map(|(w, a)| (w.clone(), *a))
                    .collect::<HashMap<_, _>>(),
                targeted,
                sticky: r.policy.sticky.clone(),
                tap: r.tap.clone(),
                shadow: r.shadow.clone(),
            };
            table.set_rollout(&r.row.route, live);
        }
        self.routing.store(Arc::new(table));
        self.publish_metrics(inner);
        Ok(())
    }

    pub(super) fn publish_or_fail(&self, inner: &Inner) -> Result<(), RolloutError> {
        self.publish(inner)
            .map_err(|e| RolloutError::Internal(e.to_string()))
    }

    fn publish_metrics(&self, inner: &Inner) {
        let snapshot: MetricsSnapshot = inner
            .running
            .values()
            .map(|r| {
                let figures = RolloutMetrics {
                    id: r.row.id.clone(),
                    route: r.row.route.clone(),
                    state: r.row.position.state,
                    step: r.row.position.step,
                    // The weight this replica routes by: none once it reverted on its own.
                    weight: if r.local_revert.is_some() {
                        0.0
                    } else {
                        f64::from(r.row.position.weight_bp) / 10_000.0
                    },
                    threshold: 1.0 / r.policy.alpha,
                    e_values: r
                        .last_report
                        .iter()
                        .flat_map(|rep| rep.gates.iter())
                        .map(|g| {
                            (
                                g.feedback
                                    .clone()
                                    .unwrap_or_else(|| g.gate.key().to_owned()),
                                g.e_value,
                            )
                        })
                        .collect(),
                    shadow: None,
                    feedback: r.feedback.clone(),
                };
                (figures, r.shadow.clone())
            })
            .collect();
        self.metrics.store(Arc::new(snapshot));
    }

    /// Starts a rollout of `canary` on `route` under the policy file `policy_name`.
    ///
    /// # Errors
    /// Unknown route, a canary that cannot serve or is already stable, a policy that is
    /// missing or broken, a rollout already live on the route, or the store failing.
    pub(crate) async fn start(
        &self,
        route: &str,
        canary: &str,
        policy_name: &str,
    ) -> Result<RolloutView, RolloutError> {
        let Some(configured) = self.catalog.routes().get(route) else {
            return Err(RolloutError::UnknownRoute(route.to_owned()));
        };
        let Some(version) = self.catalog.version(canary) else {
            let known: Vec<&str> = self.catalog.versions().map(|v| &*v.name).collect();
            return Err(RolloutError::BadCanary(format!(
                "no version `{canary}` in the config (versions: {})",
                known.join(", ")
            )));
        };
        if let Some(var) = &version.missing_key {
            return Err(RolloutError::BadCanary(format!(
                "version `{canary}` cannot serve: its provider's key variable {var} is not set"
            )));
        }
        let policy = self.read_policy(policy_name)?;
        let _changing = self.changes.lock().await;
        if self.cluster.is_some() {
            // A rollout started on another replica a moment ago counts too.
            self.refresh_locked().await?;
        }
        let stable = {
            let inner = self.lock();
            let stable = inner.stables.get(route).unwrap_or(configured).clone();
            if stable == canary {
                return Err(RolloutError::BadCanary(format!(
                    "`{canary}` is already the stable version of `{route}`"
                )));
            }
            if let Some(live) = inner.running.values().find(|r| r.row.route == route) {
                return Err(RolloutError::AlreadyLive {
                    route: route.to_owned(),
                    live: live.row.id.clone(),
                });
            }
            stable
        };
        let now = now_ms();
        let id = format!("ro_{}", random_id(12));
        let row = RolloutRow {
            id: id.clone(),
            route: route.to_owned(),
            stable_version: stable.clone(),
            canary_version: canary.to_owned(),
            policy: policy_name.to_owned(),
            policy_json: serde_json::to_string(&*policy).unwrap_or_default(),
            salt: format!("{:016x}", rand::random::<u64>()),
            position: Position::start(&policy, now),
            started_at_ms: now,
            updated_at_ms: now,
            ended_at_ms: None,
            judge_state: None,
            last_report: None,
            revision: 0,
            judge_cursor: None,
        };
        let event = NewEvent {
            actor: Actor::Operator,
            kind: "started",
            message: format!(
                "rollout of `{route}` from `{stable}` to `{canary}` under policy `{policy_name}`"
            ),
            evidence: None,
        };
        self.store.insert_rollout(&row, &event).await?;
        tracing::info!(rollout = %id, route, stable = %stable, canary, policy = policy_name, "rollout started");
        let judge = Judge::new(&policy.judge_spec());
        let running = Running::new(row, policy, judge, BTreeMap::new(), &self.catalog);
        self.notifier.send(&running, &event);
        let mut inner = self.lock();
        inner.running.insert(id.clone(), running);
        self.publish_or_fail(&inner)?;
        Ok(view_running(&inner.running[&id]))
    }

    /// Pauses, resumes, promotes or aborts a live rollout.
    ///
    /// # Errors
    /// Unknown or ended rollout, a pause or resume the state does not allow, or the store
    /// failing.
    pub(crate) async fn operate(
        &self,
        id: &str,
        op: Operation,
    ) -> Result<RolloutView, RolloutError> {
        self.refresh_if_unknown(id).await;
        let _changing = self.changes.lock().await;
        let now = now_ms();
        // In a cluster this replica's view may lag another's change by up to a re-read: a
        // write decided from it is refused as stale, and decided again on the fresh state.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decided = {
                let inner = self.lock();
                inner
                    .running
                    .get(id)
                    .map(|r| operation_change(r, id, op, now))
            };
            let change = match decided {
                Some(change) => change?,
                None => {
                    return match self.store.rollout(id).await? {
                        Some(row) => Err(RolloutError::Ended {
                            id: id.to_owned(),
                            state: row.position.state.as_str(),
                        }),
                        None => Err(RolloutError::UnknownRollout(id.to_owned())),
                    };
                }
            };
            match self.transition(change, now).await {
                Err(RolloutError::Store(StoreError::Stale(_)))
                    if self.cluster.is_some() && attempts < 3 =>
                {
                    self.refresh_locked().await?;
                }
                done => break done?,
            }
        }
        drop(_changing);
        self.view(id).await
    }

    /// Pins `workspace` to `arm` on live rollout `id`, or unpins it (`None`).
    ///
    /// # Errors
    /// No such live rollout, unpinning a workspace without a pin, or the store failing.
    pub(crate) async fn pin(
        &self,
        id: &str,
        workspace: &str,
        arm: Option<Arm>,
    ) -> Result<RolloutView, RolloutError> {
        self.refresh_if_unknown(id).await;
        let _changing = self.changes.lock().await;
        let (position, event, seen) = {
            let inner = self.lock();
            let Some(r) = inner.running.get(id) else {
                return Err(RolloutError::NotLive(id.to_owned()));
            };
            let (kind, message) = match arm {
                Some(arm) => (
                    "pinned",
                    format!("workspace `{workspace}` pinned to {}", arm.as_str()),
                ),
                None if r.pins.contains_key(workspace) => {
                    ("unpinned", format!("workspace `{workspace}` unpinned"))
                }
                None => {
                    return Err(RolloutError::NoPin {
                        id: id.to_owned(),
                        workspace: workspace.to_owned(),
                    });
                }
            };
            let event = NewEvent {
                actor: Actor::Operator,
                kind,
                message,
                evidence: None,
            };
            (r.row.position.clone(), event, r.row.revision)
        };
        let revision = self
            .store
            .set_pin(id, workspace, arm, &position, &event)
            .await?;
        // A pin bumps the revision whatever it was. When it was not the one this replica
        // holds, another replica changed the rollout meanwhile: this replica's position is
        // stale, so it keeps its old revision (a later write from it is refused as stale)
        // and re-reads instead of taking the new one on trust.
        let behind = revision != seen + 1;
        {
            let mut inner = self.lock();
            let r = inner
                .running
                .get_mut(id)
                .ok_or_else(|| RolloutError::NotLive(id.to_owned()))?;
            if !behind {
                r.row.revision = revision;
            }
            match arm {
                Some(arm) => r.pins.insert(workspace.to_owned(), arm),
                None => r.pins.remove(workspace),
            };
            self.notifier.send(r, &event);
            self.publish_or_fail(&inner)?;
        }
        if behind && self.cluster.is_some() {
            self.refresh_locked().await?;
        }
        let inner = self.lock();
        let r = inner
            .running
            .get(id)
            .ok_or_else(|| RolloutError::NotLive(id.to_owned()))?;
        Ok(view_running(r))
    }

    /// One rollout, live or ended.
    ///
    /// # Errors
    /// No rollout `id`, or the store failing.
    pub(crate) async fn view(&self, id: &str) -> Result<RolloutView, RolloutError> {
        self.refresh_if_unknown(id).await;
        let live = self
            .lock()
            .running
            .get(id)
            .map(|r| (view_running(r), r.fence.is_some()));
        let mut view = match live {
            Some((view, _)) if self.cluster.is_none() => return Ok(view),
            Some((mut view, judging)) => {
                if !judging && !self.database_away() {
                    // Another replica judges: its last stored report is the one to show.
                    if let Ok(Some(row)) = self.store.rollout(id).await {
                        view.judge = view_row(&row).judge;
                    }
                }
                view
            }
            None => match self.store.rollout(id).await? {
                Some(row) => self.view_of(&row),
                None => return Err(RolloutError::UnknownRollout(id.to_owned())),
            },
        };
        view.cluster = self.cluster_figures(id).await;
        Ok(view)
    }

    fn view_of(&self, row: &RolloutRow) -> RolloutView {
        let inner = self.lock();
        match inner.running.get(&row.id) {
            Some(r) => view_running(r),
            None => view_ended(&inner, row),
        }
    }

    /// Every rollout, live and ended, as the store lists them.
    ///
    /// # Errors
    /// The store failing.
    pub(crate) async fn list(&self) -> Result<Vec<RolloutView>, RolloutError> {
        let rows = self.store.rollouts(false).await?;
        Ok(rows.iter().map(|row| self.view_of(row)).collect())
    }

    /// Feedback on a request of rollout `id`: checked against the policy's declared metrics
    /// and, the first time for this request and metric, judged. Never waits behind a look.
    ///
    /// # Errors
    /// [`RolloutError::UndeclaredMetric`] when the rollout's policy does not declare `metric`.
    pub(crate) async fn feedback(
        &self,
        id: &str,
        metric: &str,
        placement: &RequestPlacement,
        value: f64,
        first: bool,
    ) -> Result<bool, RolloutError> {
        let mut inner = self.lock();
        let Some(r) = inner.running.get_mut(id) else {
            return Ok(false);
        };
        if !r.policy.feedback.iter().any(|f| f.name == metric) {
            let declared: Vec<&str> = r.policy.feedback.iter().map(|f| f.name.as_str()).collect();
            return Err(RolloutError::UndeclaredMetric {
                metric: metric.to_owned(),
                policy: r.policy.name.clone(),
                declared: if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                },
            });
        }
        *r.feedback
            .entry(format!("{metric}/{}", placement.arm.as_str()))
            .or_default() += 1;
        if first {
            r.judge.observe_feedback(
                metric,
                placement.arm,
                placement.w.unwrap_or(0.0),
                placement.randomized,
                value,
            );
        }
        self.publish_metrics(&inner);
        Ok(first && placement.randomized)
    }

    /// What `/metrics` shows of each live rollout: the snapshot of the last change or look
    /// (no lock taken), with shadow counters as they are now.
    pub(crate) async fn metrics(&self) -> Vec<RolloutMetrics> {
        self.metrics
            .load()
            .iter()
            .map(|(figures, shadow)| RolloutMetrics {
                shadow: shadow.as_ref().map(|s| s.counters()),
                ..figures.clone()
            })
            .collect()
    }

    /// The audit log of rollout `id`, oldest first.
    ///
    /// # Errors
    /// No rollout `id`, or the store failing.
    pub(crate) async fn events(&self, id: &str) -> Result<Vec<EventRow>, RolloutError> {
        if self.store.rollout(id).await?.is_none() {
            return Err(RolloutError::UnknownRollout(id.to_owned()));
        }
        Ok(self.store.events(id).await?)
    }

    /// Writes the change, then applies it: the router never acts on what is not stored.
    /// The caller holds `changes`.
    pub(super) async fn transition(&self, change: Change, now: i64) -> Result<(), RolloutError> {
        let written = self.write_change(&change, now).await?;
        let Change {
            id, next, event, ..
        } = change;
        // Steps count from 1 in logs as everywhere; a promotion sits past the last step.
        let step = next.step + usize::from(next.state != RolloutState::Promoted);
        tracing::info!(rollout = %id, kind = event.kind, state = next.state.as_str(), step, weight_bp = next.weight_bp, actor = event.actor.as_str(), message = %event.message, "rollout changed");
        if let Some(ended) = self.apply_written(&id, next, &event, now, written)? {
            self.close_ended(&id, ended).await;
        }
        Ok(())
    }

    /// Writes `change` guarded by the revision it was decided from (and, for a judge's
    /// decision in a cluster, by the judge lease's fencing token).
    ///
    /// # Errors
    /// The rollout is no longer live, this replica lost the lease (then it stops judging
    /// the rollout), or the store refused the write.
    async fn write_change(&self, change: &Change, now: i64) -> Result<Written, RolloutError> {
        let id = &change.id;
        let (promote_to, revision, token) = {
            let inner = self.lock();
            let r = inner
                .running
                .get(id)
                .ok_or_else(|| RolloutError::NotLive(id.clone()))?;
            let promote_to = (change.next.state == RolloutState::Promoted)
                .then(|| (r.row.route.clone(), r.row.canary_version.clone()));
            (promote_to, r.row.revision, r.fence)
        };
        // The judge writes as its lease's holder; an operator's command needs no lease.
        let lease = judge_lease(id);
        let fence = match &self.cluster {
            Some(c) if change.under_lease => Some(Fence {
                lease: &lease,
                holder: c.id(),
                token: token.ok_or_else(|| StoreError::Fenced(id.clone()))?,
            }),
            _ => None,
        };
        let written = self
            .store
            .update_rollout(
                id,
                &change.next,
                now,
                &change.event,
                promote_to.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                WriteGuard { revision, fence },
            )
            .await;
        match written {
            Ok(revision) => Ok(Written {
                revision,
                promote_to,
            }),
            Err(e @ StoreError::Fenced(_)) => {
                self.fenced(id);
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a written change in memory and publishes the routing table; an ended
    /// rollout moves to the ended list, and what is left to do for it is returned.
    fn apply_written(
        &self,
        id: &str,
        next: Position,
        event: &NewEvent,
        now: i64,
        written: Written,
    ) -> Result<Option<EndedRollout>, RolloutError> {
        let mut inner = self.lock();
        let r = inner
            .running
            .get_mut(id)
            .ok_or_else(|| RolloutError::NotLive(id.to_owned()))?;
        if next.step != r.row.position.step {
            r.new_step();
        }
        r.row.position = next;
        r.row.updated_at_ms = now;
        r.row.revision = written.revision;
        self.notifier.send(r, event);
        let mut ended_rollout = None;
        if !r.row.position.state.is_live() {
            let mut ended = inner.running.remove(id).expect("present");
            ended.row.ended_at_ms = Some(now);
            ended_rollout = Some(EndedRollout {
                checkpoint: ended.checkpoint(),
                // Ended: nobody needs to judge it any more.
                lease_token: ended.fence.filter(|_| self.cluster.is_some()),
            });
            if inner.ended.len() == ENDED_VIEWS_KEPT {
                inner.ended.remove(0);
            }
            let figures = EndedFigures::of(&view_running(&ended));
            inner.ended.push((id.to_owned(), figures));
        }
        if let Some((route, version)) = written.promote_to {
            inner.stables.insert(route, version);
        }
        self.publish_or_fail(&inner)?;
        Ok(ended_rollout)
    }

    /// Saves an ended rollout's last judge state and gives up its judge lease.
    async fn close_ended(&self, id: &str, ended: EndedRollout) {
        // In a cluster only the judge's state is worth keeping: another replica's was never
        // fed, and writing it would overwrite the judge's last report.
        if self.cluster.is_none() || ended.lease_token.is_some() {
            let (judge, report) = &ended.checkpoint;
            let fence = ended.lease_token.map(|token| (judge_lease(id), token));
            self.write_checkpoint(id, judge, report, None, fence.as_ref())
                .await;
        }
        if let (Some(c), Some(_)) = (&self.cluster, ended.lease_token)
            && let Err(e) = self.store.release_lease(&judge_lease(id), c.id()).await
        {
            tracing::debug!(rollout = %id, error = %e, "could not release the judge lease");
        }
    }

    /// One look at every live rollout whose interval has come: the judges are fed and asked
    /// under the lock; the decisions and checkpoints are written without it.
    pub(crate) async fn look(&self, now: i64) {
        let _changing = self.changes.lock().await;
        if self.database_away() {
            self.revert_locally(now);
        } else if !self.write_local_reverts(now).await {
            // The database failed the write after all: no judge decides in this look, so a
            // revert applied here during the outage is the one written, at the next look.
            return;
        }
        let shipped = self.read_shipped(now).await;
        let (looked, changes) = self.feed_and_decide(now, shipped);
        let mut failed = HashSet::new();
        for change in changes {
            let id = change.id.clone();
            if let Err(e) = self.transition(change, now).await {
                tracing::error!(rollout = %id, error = %e, "could not apply the judge's decision; will look again");
                failed.insert(id);
            }
        }
        let looked: Vec<String> = looked
            .into_iter()
            .filter(|id| !failed.contains(id))
            .collect();
        for (id, (judge, report), cursor, token) in self.checkpoints(looked) {
            let fence = token.map(|t| (judge_lease(&id), t));
            if !self
                .write_checkpoint(&id, &judge, &report, cursor.as_deref(), fence.as_ref())
                .await
            {
                self.fenced(&id);
            }
        }
    }

    /// In a cluster: the batches every replica shipped since each led rollout's cursor,
    /// read before the lock is taken. A rollout this replica does not lead, or whose
    /// batches cannot be read (the database is away), is not looked at: its judge holds.
    async fn read_shipped(&self, now: i64) -> HashMap<String, Vec<ObservationBatch>> {
        let mut shipped = HashMap::new();
        if self.cluster.is_none() || self.database_away() {
            return shipped;
        }
        let led: Vec<(String, String)> = {
            let inner = self.lock();
            inner
                .running
                .iter()
                .filter(|(_, r)| r.fence.is_some() && is_due(r, now))
                .map(|(id, r)| {
                    let cursor = serde_json::to_string(&r.cursor).unwrap_or_default();
                    (id.clone(), cursor)
                })
                .collect()
        };
        for (id, cursor) in led {
            match self
                .store
                .observations_after(&id, &cursor, BATCHES_PER_LOOK)
                .await
            {
                Ok(batches) => {
                    shipped.insert(id, batches);
                }
                Err(e) => {
                    tracing::debug!(rollout = %id, error = %e, "cannot read the cluster's observations; the judge holds")
                }
            }
        }
        shipped
    }

    /// Under the lock: feeds each due rollout's judge (this replica's observations, or in a
    /// cluster the `shipped` ones) and asks the machine; returns the rollouts looked at and
    /// the changes to write.
    fn feed_and_decide(
        &self,
        now: i64,
        mut shipped: HashMap<String, Vec<ObservationBatch>>,
    ) -> (Vec<String>, Vec<Change>) {
        let mut inner = self.lock();
        let mut looked = Vec::new();
        let mut changes = Vec::new();
        for (id, r) in inner.running.iter_mut() {
            if !is_due(r, now) {
                continue;
            }
            if self.cluster.is_some() {
                let Some(batches) = shipped.remove(id) else {
                    continue;
                };
                let complete = batches.len() < BATCHES_PER_LOOK as usize;
                take_shipped(r, batches);
                if complete && let Some(c) = &self.cluster {
                    let lost = count_departed(r, c, now);
                    ClusterCounters::add(&c.counters.observations_lost_estimate, lost);
                }
            } else {
                take_local(r);
            }
            looked.push(id.clone());
            if let Some(change) = look_at(r, now) {
                changes.push(change);
            }
        }
        self.publish_metrics(&inner);
        (looked, changes)
    }

    /// The judge states to save after a look, of the rollouts `looked` at that are still
    /// live. In a cluster only the judge writes checkpoints, under its fence.
    fn checkpoints(&self, looked: Vec<String>) -> Vec<Checkpoint> {
        let inner = self.lock();
        looked
            .into_iter()
            .filter_map(|id| {
                let r = inner.running.get(&id)?;
                let cursor = self.cluster.as_ref().map(|_| r.judge_cursor().to_json());
                Some((id, r.checkpoint(), cursor, r.fence))
            })
            .filter(|(_, _, _, fence)| self.cluster.is_none() || fence.is_some())
            .collect()
    }

    /// Saves a judge's state; with a `fence` (lease name, token) only while it holds.
    /// False when the database refused it because another replica leads now.
    async fn write_checkpoint(
        &self,
        id: &str,
        judge: &str,
        report: &str,
        cursor: Option<&str>,
        fence: Option<&(String, i64)>,
    ) -> bool {
        let holder = self.cluster.as_ref().map_or("", |c| c.id());
        let fence = fence.map(|(lease, token)| Fence {
            lease,
            holder,
            token: *token,
        });
        match self
            .store
            .checkpoint_rollout(id, judge, report, cursor, fence)
            .await
        {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "judge checkpoint failed");
                true
            }
        }
    }

    /// Looks every `LOOK_TICK` until `stop` is cancelled.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(LOOK_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Look first, then renew: a replica that was frozen past its lease makes
                    // its next write with the old fence, and the database refuses it.
                    self.look(now_ms()).await;
                    self.lead(now_ms()).await;
                }
                _ = stop.cancelled() => break,
            }
        }
        self.release_leases().await;
    }
}

/// Feeds `r`'s judge what this process measured since its last look (a single process).
fn take_local(r: &mut Running) {
    // Assignments and records meet in the guard by their time and weight, in any order.
    while let Ok(a) = r.feed.assignments.try_recv() {
        r.judge.note_assignment(a.arm, a.w, a.at_ms);
    }
    while let Ok(obs) = r.feed.observations.try_recv() {
        r.count(&obs);
        r.judge.observe(&obs);
    }
}

/// Feeds `r`'s judge every replica's shipped batches past its cursor (the judging replica
/// of a cluster), and moves the cursor past them.
fn take_shipped(r: &mut Running, batches: Vec<ObservationBatch>) {
    for batch in batches {
        let shipment = super::feed::Shipment::from_json(&batch.observations);
        let shipper = r.shippers.entry(batch.replica.clone()).or_default();
        let n = shipment.observations.len() as f64;
        shipper.per_batch = if shipper.per_batch == 0.0 && !shipment.closing {
            n
        } else {
            0.8 * shipper.per_batch + 0.2 * n
        };
        shipper.closed |= shipment.closing;
        // It ships again: it was late (a stalled process, a slow machine), not dead.
        shipper.lost = None;
        for a in &shipment.assignments {
            for _ in 0..a.count {
                r.judge.note_assignment(a.arm, a.w, a.at_ms);
            }
        }
        for o in &shipment.observations {
            r.count(o);
            r.judge.observe(o);
        }
        let last = r.cursor.entry(batch.replica).or_default();
        *last = (*last).max(batch.seq);
    }
}

/// Counts, once per replica, what each replica that left the live set without its closing
/// batch took with it, and returns the sum: its observations per batch (a moving average),
/// i.e. one flush interval at its recent rate (the true loss is what it measured since its
/// last flush). A replica
/// must stay out of the live set for a judge lease (a replica that long without a heartbeat
/// has lost its leases too), seen at two looks at least, every batch read at the last: a
/// clean stop writes its closing batch before it leaves the set, so by then it is read.
/// One that ships again later was only late: its count is taken back (`take_shipped`).
fn count_departed(r: &mut Running, cluster: &Cluster, now: i64) -> u64 {
    let patience = cluster.config.lease_ms as i64;
    let mut lost = 0;
    for (id, s) in r
        .shippers
        .iter_mut()
        .filter(|(_, s)| !s.closed && s.lost.is_none())
    {
        match (cluster.is_live(id), s.absent_since_ms) {
            (None | Some(true), _) => s.absent_since_ms = None,
            (Some(false), None) => s.absent_since_ms = Some(now),
            (Some(false), Some(since)) if now - since >= patience => {
                let estimate = s.per_batch.ceil() as u64;
                s.lost = Some(estimate);
                lost += estimate;
                tracing::warn!(
                    rollout = %r.row.id,
                    replica = %id,
                    estimate = s.lost,
                    "a replica left without its closing batch: up to one flush interval of its observations is lost (estimated from its recent batches)"
                );
            }
            (Some(false), Some(_)) => {}
        }
    }
    lost
}

/// Asks `r`'s judge (already fed) and returns the change its decision makes (none for a
/// hold).
fn look_at(r: &mut Running, now: i64) -> Option<Change> {
    r.last_look_ms = now;
    // Settles the sticky units' segments that came of age and finds overdue requests.
    r.judge.tick(now);
    let report = r.judge.report(now);
    let decision = r.row.position.decide(&r.policy, &report, r.in_step(), now);
    r.last_report = Some(report.clone());
    r.last_decision = Some(decision.clone());
    if matches!(decision, Decision::Hold { .. }) {
        return None;
    }
    let next = r.row.position.apply(&r.policy, &decision, now);
    let event = decision_event(&decision, &r.policy, &next, &report);
    Some(Change {
        id: r.row.id.clone(),
        next,
        event,
        under_lease: true,
    })
}

/// The change an operator's command makes to `r`, or why it cannot.
fn operation_change(
    r: &Running,
    id: &str,
    op: Operation,
    now: i64,
) -> Result<Change, RolloutError> {
    let pos = &r.row.position;
    let (next, kind, message) = match op {
        Operation::Pause if pos.state == RolloutState::Progressing => {
            (pos.paused(), "paused", "paused by an operator".to_owned())
        }
        Operation::Resume if pos.state == RolloutState::Paused || pos.inconclusive => (
            pos.resumed(now),
            "resumed",
            "resumed by an operator".to_owned(),
        ),
        Operation::Promote => (
            pos.promoted(&r.policy, now),
            "promoted",
            format!(
                "promoted by an operator: `{}` is now the stable version",
                r.row.canary_version
            ),
        ),
        Operation::Abort => (
            pos.aborted(),
            "aborted",
            "aborted by an operator: traffic back on stable".to_owned(),
        ),
        Operation::Pause | Operation::Resume => {
            return Err(RolloutError::WrongState {
                id: id.to_owned(),
                state: pos.state.as_str(),
            });
        }
    };
    Ok(Change {
        id: id.to_owned(),
        next,
        event: NewEvent {
            actor: Actor::Operator,
            kind,
            message,
            evidence: None,
        },
        under_lease: false,
    })
}

fn random_id(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}
