//! The rollout controller: the only writer of the routing table.
//!
//! Every `interval` it drains each live rollout's observations into its judge, asks the
//! state machine for a decision, and when the decision changes anything it writes the new
//! position and an event with the evidence to the database first, then swaps the routing
//! table. Operator commands (start, pause, resume, promote, abort, pins) take the same path.
//! A restart reads the live rollouts back (step, weight, salt, pins, judge state) and
//! publishes the same table again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, watch};

use super::feed::RolloutTap;
use super::machine::{Decision, Position, RolloutState};
use super::policy::{Policy, load_policy};
use super::view::{view_ended, view_running};
use crate::error::ApiError;
use crate::judge::{Judge, JudgeReport, Observation};
use crate::resolve::{Arm, Catalog, LiveRollout, RouteName, RoutingTable};
use crate::shadow::RolloutShadow;
use crate::store::{Actor, EventRow, Fence, NewEvent, RequestPlacement, RolloutRow, Store, now_ms};
use std::path::PathBuf;

/// How often the controller wakes to see whose interval has come.
const LOOK_TICK: Duration = Duration::from_millis(100);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A live rollout as `/metrics` shows it.
pub struct RolloutMetrics {
    pub id: String,
    pub route: String,
    pub state: RolloutState,
    pub step: usize,
    /// Canary weight in [0, 1].
    pub weight: f64,
    pub threshold: f64,
    /// Gate (or feedback metric) → its e-value at the last look.
    pub e_values: Vec<(String, f64)>,
    pub shadow: Option<crate::shadow::ShadowCounters>,
    /// `metric/arm` → feedback received.
    pub feedback: BTreeMap<String, u64>,
}

/// An operator's command on a live rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Pause,
    Resume,
    /// Straight to 100 %: the canary becomes the route's stable version.
    Promote,
    Abort,
}

impl Operation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "promote" => Some(Self::Promote),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }
}

pub(super) struct Running {
    pub(super) row: RolloutRow,
    pub(super) policy: Arc<Policy>,
    pub(super) judge: Judge,
    pub(super) rx: mpsc::Receiver<Observation>,
    pub(super) tap: Arc<RolloutTap>,
    pub(super) pins: BTreeMap<String, Arm>,
    /// Canary requests measured since the current step began.
    pub(super) canary_in_step: u64,
    /// Randomized assignments already handed to the judge, per arm.
    pub(super) assigned_seen: [u64; 2],
    pub(super) last_look_ms: i64,
    pub(super) last_report: Option<JudgeReport>,
    pub(super) last_decision: Option<Decision>,
    pub(super) shadow: Option<Arc<RolloutShadow>>,
    /// Feedback received, by `metric/arm`.
    pub(super) feedback: BTreeMap<String, u64>,
    /// Cluster: the fence of this replica's judge lease on the rollout, while it holds one.
    /// Only the holder judges; every decision and checkpoint is written with this token.
    pub(super) fence: Option<i64>,
    /// Cluster: the last shipped batch judged, per replica (stored with the checkpoint).
    pub(super) cursor: BTreeMap<String, i64>,
    /// Observations the tap dropped that were already reported in a shipped batch.
    pub(super) dropped_seen: u64,
    /// Cluster: when to take or renew the judge lease next (ms).
    pub(super) next_lead_ms: i64,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) running: BTreeMap<String, Running>,
    /// Route → stable version set by a promotion (wins over the config).
    pub(super) stables: BTreeMap<String, String>,
    /// The last live view of rollouts that ended in this process (their per-arm figures
    /// are not stored), newest last.
    pub(super) ended: Vec<(String, Value)>,
}

/// Ended rollouts whose last live view is kept in memory.
const ENDED_VIEWS_KEPT: usize = 50;

pub struct Controller {
    pub(super) store: Store,
    pub(super) catalog: Arc<Catalog>,
    pub(super) policies: BTreeMap<String, Arc<Policy>>,
    policies_dir: PathBuf,
    routing: Arc<ArcSwap<RoutingTable>>,
    pub(super) inner: Mutex<Inner>,
    http: reqwest::Client,
    /// Set on PostgreSQL: judge only under a lease, read observations from every replica.
    pub(super) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Controller {
    /// Reads the live rollouts and promoted stables back and publishes the routing table.
    pub async fn restore(
        store: Store,
        catalog: Arc<Catalog>,
        policies: BTreeMap<String, Arc<Policy>>,
        policies_dir: PathBuf,
        routing: Arc<ArcSwap<RoutingTable>>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
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
            let Some(policy) = policies.get(&row.policy).cloned() else {
                tracing::error!(rollout = %row.id, policy = %row.policy, "the rollout's policy file is gone; its canary gets no traffic until it is back");
                continue;
            };
            let judge = row
                .judge_state
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| Judge::new(&policy));
            let pins = store.pins(&row.id).await?.into_iter().collect();
            tracing::info!(rollout = %row.id, route = %row.route, state = row.position.state.as_str(), step = row.position.step, weight_bp = row.position.weight_bp, "rollout resumed after restart");
            let running = Running::new(row, policy, judge, pins, &catalog);
            inner.running.insert(running.row.id.clone(), running);
        }
        let controller = Self {
            store,
            catalog,
            policies,
            policies_dir,
            routing,
            inner: Mutex::new(inner),
            http: reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .build()?,
            cluster,
        };
        let inner = controller.inner.lock().await;
        controller.publish(&inner)?;
        drop(inner);
        Ok(controller)
    }

    pub fn policies(&self) -> &BTreeMap<String, Arc<Policy>> {
        &self.policies
    }

    /// The policy file as it is now: edits take effect for the next rollout without a
    /// restart, and a broken file is refused with its mistakes.
    pub(super) fn read_policy(&self, name: &str) -> Result<Arc<Policy>, ApiError> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        let path = self.policies_dir.join(format!("{name}.toml"));
        if !valid_name || !path.is_file() {
            let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
            return Err(ApiError::Unprocessable(format!(
                "no policy `{name}` (known: {})",
                known.join(", ")
            )));
        }
        match load_policy(&path) {
            Ok(policy) => Ok(Arc::new(policy)),
            Err(errors) => Err(ApiError::Unprocessable(
                errors.to_string().trim_end().to_owned(),
            )),
        }
    }

    /// Builds the routing table from the stables and the live rollouts, and swaps it in.
    pub(super) fn publish(&self, inner: &Inner) -> anyhow::Result<()> {
        let mut table = RoutingTable::new(&self.catalog, &inner.stables)?;
        for r in inner.running.values() {
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
        Ok(())
    }

    pub async fn start(
        &self,
        route: &str,
        canary: &str,
        policy_name: &str,
    ) -> Result<Value, ApiError> {
        let Some(configured) = self.catalog.routes().get(route) else {
            return Err(ApiError::NotFound(format!("no route `{route}`")));
        };
        let Some(version) = self.catalog.version(canary) else {
            return Err(ApiError::Unprocessable(format!(
                "no version `{canary}` in the config"
            )));
        };
        if let Some(var) = &version.missing_key {
            return Err(ApiError::Unprocessable(format!(
                "version `{canary}` cannot serve: its provider's key variable {var} is not set"
            )));
        }
        let policy = self.read_policy(policy_name)?;
        let mut inner = self.inner.lock().await;
        let stable = inner.stables.get(route).unwrap_or(configured).clone();
        if stable == canary {
            return Err(ApiError::Unprocessable(format!(
                "`{canary}` is already the stable version of `{route}`"
            )));
        }
        if let Some(live) = inner.running.values().find(|r| r.row.route == route) {
            return Err(ApiError::Conflict(format!(
                "route `{route}` already has a live rollout: {}",
                live.row.id
            )));
        }
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
        let judge = Judge::new(&policy);
        let running = Running::new(row, policy, judge, BTreeMap::new(), &self.catalog);
        self.notify(&running, &event);
        inner.running.insert(id.clone(), running);
        self.publish(&inner)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(view_running(&inner.running[&id]))
    }

    pub async fn operate(&self, id: &str, op: Operation) -> Result<Value, ApiError> {
        self.refresh_if_unknown(id).await;
        let mut inner = self.inner.lock().await;
        let Some(r) = inner.running.get(id) else {
            return match self.store.rollout(id).await? {
                Some(row) => Err(ApiError::Conflict(format!(
                    "rollout {id} has ended ({})",
                    row.position.state.as_str()
                ))),
                None => Err(ApiError::NotFound(format!("no rollout `{id}`"))),
            };
        };
        let now = now_ms();
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
                return Err(ApiError::Conflict(format!(
                    "rollout {id} is {}",
                    pos.state.as_str()
                )));
            }
        };
        let event = NewEvent {
            actor: Actor::Operator,
            kind,
            message,
            evidence: None,
        };
        self.transition(&mut inner, id, next, event, now).await?;
        self.view_locked(&inner, id).await
    }

    pub async fn pin(
        &self,
        id: &str,
        workspace: &str,
        arm: Option<Arm>,
    ) -> Result<Value, ApiError> {
        self.refresh_if_unknown(id).await;
        let mut inner = self.inner.lock().await;
        let Some(r) = inner.running.get_mut(id) else {
            return Err(ApiError::NotFound(format!("no live rollout `{id}`")));
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
                return Err(ApiError::NotFound(format!(
                    "workspace `{workspace}` has no pin on {id}"
                )));
            }
        };
        let event = NewEvent {
            actor: Actor::Operator,
            kind,
            message,
            evidence: None,
        };
        r.row.revision = self
            .store
            .set_pin(id, workspace, arm, &r.row.position, &event)
            .await?;
        match arm {
            Some(arm) => r.pins.insert(workspace.to_owned(), arm),
            None => r.pins.remove(workspace),
        };
        let r = &inner.running[id];
        self.notify(r, &event);
        self.publish(&inner)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(view_running(&inner.running[id]))
    }

    pub async fn view(&self, id: &str) -> Result<Value, ApiError> {
        let mut view = {
            let inner = self.inner.lock().await;
            self.view_locked(&inner, id).await?
        };
        // In a cluster, `arms` are this replica's; `cluster` sums what every replica shipped.
        if let Some(totals) = self.cluster_totals(id).await {
            view["cluster"] = crate::rollout::view::cluster_figures(&totals);
        }
        Ok(view)
    }

    async fn view_locked(&self, inner: &Inner, id: &str) -> Result<Value, ApiError> {
        if let Some(r) = inner.running.get(id) {
            return Ok(view_running(r));
        }
        match self.store.rollout(id).await? {
            Some(row) => Ok(view_ended(inner, &row)),
            None => Err(ApiError::NotFound(format!("no rollout `{id}`"))),
        }
    }

    pub async fn list(&self) -> Result<Vec<Value>, ApiError> {
        let inner = self.inner.lock().await;
        let rows = self.store.rollouts(false).await?;
        Ok(rows
            .iter()
            .map(|row| match inner.running.get(&row.id) {
                Some(r) => view_running(r),
                None => view_ended(&inner, row),
            })
            .collect())
    }

    /// Feedback on a request of rollout `id`: checked against the policy's declared metrics
    /// and, the first time for this request and metric, judged.
    pub async fn feedback(
        &self,
        id: &str,
        metric: &str,
        placement: &RequestPlacement,
        value: f64,
        first: bool,
    ) -> Result<bool, ApiError> {
        let mut inner = self.inner.lock().await;
        let Some(r) = inner.running.get_mut(id) else {
            return Ok(false);
        };
        if !r.policy.feedback.iter().any(|f| f.name == metric) {
            let declared: Vec<&str> = r.policy.feedback.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::Unprocessable(format!(
                "metric `{metric}` is not declared in policy `{}` (declared: {})",
                r.policy.name,
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            )));
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
        Ok(first && placement.randomized)
    }

    /// What `/metrics` shows of each live rollout.
    pub async fn metrics(&self) -> Vec<RolloutMetrics> {
        let inner = self.inner.lock().await;
        inner
            .running
            .values()
            .map(|r| RolloutMetrics {
                id: r.row.id.clone(),
                route: r.row.route.clone(),
                state: r.row.position.state,
                step: r.row.position.step,
                weight: f64::from(r.row.position.weight_bp) / 10_000.0,
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
                shadow: r.shadow.as_ref().map(|s| s.counters()),
                feedback: r.feedback.clone(),
            })
            .collect()
    }

    pub async fn events(&self, id: &str) -> Result<Vec<EventRow>, ApiError> {
        if self.store.rollout(id).await?.is_none() {
            return Err(ApiError::NotFound(format!("no rollout `{id}`")));
        }
        Ok(self.store.events(id).await?)
    }

    /// Writes the change, then applies it: the router never acts on what is not stored.
    async fn transition(
        &self,
        inner: &mut Inner,
        id: &str,
        next: Position,
        event: NewEvent,
        now: i64,
    ) -> Result<(), ApiError> {
        let r = inner.running.get(id).expect("caller checked");
        let promote_to = (next.state == RolloutState::Promoted)
            .then(|| (r.row.route.clone(), r.row.canary_version.clone()));
        // The judge writes as its lease's holder; an operator's command needs no lease.
        let lease = crate::cluster::judge_lease(id);
        let fence = match (&self.cluster, event.actor) {
            (Some(c), Actor::Judge) => r.fence.map(|token| Fence {
                lease: &lease,
                holder: c.id(),
                token,
            }),
            _ => None,
        };
        let written = self
            .store
            .update_rollout(
                id,
                &next,
                now,
                &event,
                promote_to.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                r.row.revision,
                fence,
            )
            .await;
        let revision = match written {
            Ok(revision) => revision,
            Err(crate::store::StoreError::Fenced(_)) => {
                self.fenced(inner, id);
                return Err(ApiError::Conflict(format!(
                    "stale fencing token: another replica judges rollout {id} now"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(rollout = %id, kind = event.kind, state = next.state.as_str(), step = next.step, weight_bp = next.weight_bp, actor = event.actor.as_str(), message = %event.message, "rollout changed");
        let r = inner.running.get_mut(id).expect("caller checked");
        if next.step != r.row.position.step {
            r.canary_in_step = 0;
        }
        r.row.position = next;
        r.row.updated_at_ms = now;
        r.row.revision = revision;
        self.notify(r, &event);
        if !r.row.position.state.is_live() {
            let mut ended = inner.running.remove(id).expect("present");
            ended.row.ended_at_ms = Some(now);
            self.checkpoint(&ended).await;
            if inner.ended.len() == ENDED_VIEWS_KEPT {
                inner.ended.remove(0);
            }
            inner.ended.push((id.to_owned(), view_running(&ended)));
        }
        if let Some((route, version)) = promote_to {
            inner.stables.insert(route, version);
        }
        self.publish(inner)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// One look at every live rollout whose interval has come.
    pub async fn look(&self, now: i64) {
        let mut inner = self.inner.lock().await;
        let due: Vec<String> = inner
            .running
            .values()
            .filter(|r| now - r.last_look_ms >= r.policy.interval.as_millis() as i64)
            .map(|r| r.row.id.clone())
            .collect();
        for id in due {
            let r = inner.running.get_mut(&id).expect("listed");
            if self.cluster.is_some() {
                // One judge per rollout: the lease holder, on every replica's observations.
                if r.fence.is_none() {
                    continue;
                }
                r.last_look_ms = now;
                if let Err(e) = self.take_shipped(r).await {
                    tracing::warn!(rollout = %id, error = %e, "cannot read the cluster's observations; the judge holds");
                    continue;
                }
            } else {
                r.last_look_ms = now;
                while let Ok(obs) = r.rx.try_recv() {
                    if obs.arm == Arm::Canary {
                        r.canary_in_step += 1;
                    }
                    r.judge.observe(&obs);
                }
                let assigned = r.tap.assigned();
                for arm in [Arm::Stable, Arm::Canary] {
                    let i = arm.index();
                    for _ in r.assigned_seen[i]..assigned[i] {
                        r.judge.note_assigned(arm);
                    }
                    r.assigned_seen[i] = assigned[i];
                }
            }
            let report = r.judge.report(now);
            let decision = r
                .row
                .position
                .decide(&r.policy, &report, r.canary_in_step, now);
            r.last_report = Some(report.clone());
            r.last_decision = Some(decision.clone());
            if !matches!(decision, Decision::Hold { .. }) {
                let next = r.row.position.apply(&r.policy, &decision, now);
                let event = decision_event(&decision, &r.policy, &next, &report);
                if let Err(e) = self.transition(&mut inner, &id, next, event, now).await {
                    tracing::error!(rollout = %id, error = %e, "could not apply the judge's decision; will look again");
                    continue;
                }
            }
            if inner.running.contains_key(&id) && !self.checkpoint_fenced(&inner.running[&id]).await
            {
                self.fenced(&mut inner, &id);
            }
        }
    }

    async fn checkpoint(&self, r: &Running) {
        self.checkpoint_fenced(r).await;
    }

    /// Saves the judge's state (and in a cluster its cursor, under its fence); false when
    /// the database refused it because another replica holds the lease now.
    async fn checkpoint_fenced(&self, r: &Running) -> bool {
        let lease = crate::cluster::judge_lease(&r.row.id);
        let (cursor, fence) = match &self.cluster {
            Some(c) => (
                Some(crate::rollout::sync::JudgeCursor::of(r).to_json()),
                r.fence.map(|token| Fence {
                    lease: &lease,
                    holder: c.id(),
                    token,
                }),
            ),
            None => (None, None),
        };
        if self.cluster.is_some() && fence.is_none() {
            return true;
        }
        let judge = serde_json::to_string(&r.judge).unwrap_or_default();
        let report = r
            .last_report
            .as_ref()
            .map(|x| serde_json::to_string(x).unwrap_or_default())
            .unwrap_or_default();
        match self
            .store
            .checkpoint_rollout(&r.row.id, &judge, &report, cursor.as_deref(), fence)
            .await
        {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(rollout = %r.row.id, error = %e, "judge checkpoint failed");
                true
            }
        }
    }

    /// Posts the event to the policy's webhook, in the background.
    fn notify(&self, r: &Running, event: &NewEvent) {
        let Some(url) = r.policy.webhook.clone() else {
            return;
        };
        let body = json!({
            "rollout": r.row.id, "route": r.row.route, "stable": r.row.stable_version, "canary": r.row.canary_version,
            "event": event.kind, "actor": event.actor, "message": event.message,
            "state": r.row.position.state, "step": r.row.position.step, "weight": f64::from(r.row.position.weight_bp) / 100.0,
            "at_ms": now_ms(), "evidence": event.evidence,
        });
        let http = self.http.clone();
        tokio::spawn(async move {
            if let Err(e) = http.post(&url).json(&body).send().await {
                tracing::warn!(url = %url, error = %e, "webhook failed");
            }
        });
    }

    /// Looks every `LOOK_TICK` until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
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
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            }
        }
        self.release_leases().await;
    }
}

impl Running {
    /// A rollout taken up by this process, with a fresh feed from the request path.
    pub(super) fn new(
        row: RolloutRow,
        policy: Arc<Policy>,
        judge: Judge,
        pins: BTreeMap<String, Arm>,
        catalog: &Catalog,
    ) -> Self {
        let (tap, rx) = RolloutTap::new(&row.id);
        let shadow = policy.shadow.clone().and_then(|config| {
            let to = match config.to {
                Arm::Canary => &row.canary_version,
                Arm::Stable => &row.stable_version,
            };
            let version = catalog.version(to)?.clone();
            Some(Arc::new(RolloutShadow::new(&row.id, config, version)))
        });
        let last_report = row
            .last_report
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        Self {
            last_look_ms: now_ms(),
            row,
            policy,
            judge,
            rx,
            tap,
            pins,
            canary_in_step: 0,
            assigned_seen: [0, 0],
            last_report,
            last_decision: None,
            shadow,
            feedback: BTreeMap::new(),
            fence: None,
            cursor: BTreeMap::new(),
            dropped_seen: 0,
            next_lead_ms: 0,
        }
    }
}

fn decision_event(
    decision: &Decision,
    policy: &Policy,
    next: &Position,
    report: &JudgeReport,
) -> NewEvent {
    let weight = |bp: u32| format!("{} %", f64::from(bp) / 100.0);
    let (kind, message) = match decision {
        Decision::Advance { to_step, weight_bp } => (
            "advanced",
            format!(
                "step {} of {} passed; canary at {}",
                to_step,
                policy.steps.len(),
                weight(*weight_bp)
            ),
        ),
        Decision::Promote => (
            "promoted",
            "every step passed: the canary is the stable version now".to_owned(),
        ),
        Decision::Revert { reasons } => (
            "rolled_back",
            format!("rolled back: {}", reasons.join("; ")),
        ),
        Decision::Inconclusive { why } => (
            "inconclusive",
            format!("inconclusive, holding at {}: {why}", weight(next.weight_bp)),
        ),
        Decision::Hold { why } => ("held", why.clone()),
    };
    NewEvent {
        actor: Actor::Judge,
        kind,
        message,
        evidence: Some(json!({ "decision": decision, "report": report })),
    }
}

fn random_id(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}
