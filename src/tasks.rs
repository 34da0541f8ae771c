//! The one place the gateway spawns background tasks.
//!
//! Every task has a name and a [`Stage`]. A loop (the rollout controller, the record writer,
//! the shadow workers) runs until its stage's stop token is cancelled; a loop that ends
//! before that, or panics, is logged with its name, turns `/healthz` to 503, and stops the
//! process cleanly (the server drains, every stage shuts down in order, and `serve` exits
//! with an error) so that the orchestrator starts a fresh one. A gateway without its judge
//! or its writer must not go on answering "ok".
//!
//! At shutdown, after the server has drained, the stages stop one after another:
//! [`Stage::Control`] (no decision and so no webhook starts after it), then [`Stage::Side`]
//! (shadow copies and webhooks in flight finish, within the grace period), then
//! [`Stage::Writer`] (flushes every record, including those of the stages before).
//!
//! A bare `tokio::spawn` elsewhere fails clippy (`clippy.toml`, `disallowed-methods`).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// When a task is stopped at shutdown: the stages stop in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The rollout controller's loop.
    Control,
    /// Shadow workers and webhooks: what is in flight finishes, bounded by the grace period.
    Side,
    /// The record writer, last, so that it flushes what the other stages recorded.
    Writer,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::Control, Stage::Side, Stage::Writer];

    fn index(self) -> usize {
        match self {
            Stage::Control => 0,
            Stage::Side => 1,
            Stage::Writer => 2,
        }
    }
}

/// How a background loop died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Death {
    /// It returned while the gateway was still running.
    Ended,
    /// It panicked, with this message.
    Panicked(String),
}

/// The first background loop that died: what `/healthz` reports and `serve` exits with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("background task `{task}` {}", match .death {
    Death::Ended => "ended".to_owned(),
    Death::Panicked(message) => format!("panicked: {message}"),
})]
pub(crate) struct TaskFailure {
    /// The name the task was spawned with.
    pub(crate) task: &'static str,
    pub(crate) death: Death,
}

struct StageTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

struct Inner {
    stages: [StageTasks; 3],
    failure: OnceLock<TaskFailure>,
    /// Cancelled when the first loop dies.
    failed: CancellationToken,
}

/// The gateway's background tasks; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub(crate) fn new() -> Self {
        let stage = || StageTasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        Self {
            inner: Arc::new(Inner {
                stages: [stage(), stage(), stage()],
                failure: OnceLock::new(),
                failed: CancellationToken::new(),
            }),
        }
    }

    /// Starts a loop named `name` in `stage`. `task` gets the stage's stop token and must
    /// run until it is cancelled: returning earlier, or panicking, is fatal to the process.
    pub fn spawn<F, Fut>(&self, name: &'static str, stage: Stage, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let own = &self.inner.stages[stage.index()];
        let stop = own.stop.clone();
        let fut = task(stop.clone());
        let tasks = self.clone();
        own.tracker.spawn(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(()) if stop.is_cancelled() => tracing::debug!(task = name, "task stopped"),
                Ok(()) => tasks.died(name, Death::Ended),
                Err(panic) => tasks.died(name, Death::Panicked(panic_message(&*panic))),
            }
        });
    }

    /// Starts a one-off job (a webhook call) in `stage`: waited for at shutdown with its
    /// stage; a panic is logged with `name` but does not stop the process.
    pub(crate) fn spawn_job<Fut>(&self, name: &'static str, stage: Stage, job: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.stages[stage.index()]
            .tracker
            .spawn(async move {
                if let Err(panic) = AssertUnwindSafe(job).catch_unwind().await {
                    tracing::error!(task = name, panic = %panic_message(&*panic), "background job panicked");
                }
            });
    }

    fn died(&self, task: &'static str, death: Death) {
        let failure = TaskFailure { task, death };
        tracing::error!(task, error = %failure, "a background task died: /healthz now fails and sluice stops, so that it is restarted");
        let _ = self.inner.failure.set(failure);
        self.inner.failed.cancel();
    }

    /// The first loop that died, if one has.
    pub(crate) fn failure(&self) -> Option<&TaskFailure> {
        self.inner.failure.get()
    }

    /// Resolves when a loop has died.
    pub(crate) async fn failed(&self) -> TaskFailure {
        self.inner.failed.cancelled().await;
        self.failure()
            .cloned()
            .expect("set before the token is cancelled")
    }

    /// Stops the stages in order and waits for each one's tasks. The [`Stage::Side`] wait is
    /// bounded by `grace`: copies still running then are left to the runtime's end.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        for stage in Stage::ALL {
            let own = &self.inner.stages[stage.index()];
            own.stop.cancel();
            own.tracker.close();
            if stage == Stage::Side {
                if tokio::time::timeout(grace, own.tracker.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        running = own.tracker.len(),
                        "grace period over; shadow copies and webhooks still running are cut"
                    );
                }
            } else {
                own.tracker.wait().await;
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn within_a_second<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn a_loop_that_panics_is_reported_with_its_name() {
        let tasks = Tasks::new();
        tasks.spawn("judge", Stage::Control, |_| async { panic!("boom") });
        let failure = within_a_second(tasks.failed()).await;
        assert_eq!(failure.task, "judge");
        assert_eq!(failure.death, Death::Panicked("boom".into()));
    }

    #[tokio::test]
    async fn a_loop_that_returns_early_is_a_failure_but_one_stopped_is_not() {
        let tasks = Tasks::new();
        tasks.spawn("writer", Stage::Writer, |stop| async move {
            stop.cancelled().await
        });
        within_a_second(tasks.shutdown(Duration::from_secs(1))).await;
        assert_eq!(tasks.failure(), None);

        let tasks = Tasks::new();
        tasks.spawn("writer", Stage::Writer, |_| async {});
        assert_eq!(within_a_second(tasks.failed()).await.death, Death::Ended);
    }

    #[tokio::test]
    async fn stages_stop_in_order_and_side_jobs_in_flight_finish() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, stage) in [
            ("writer", Stage::Writer),
            ("shadow", Stage::Side),
            ("control", Stage::Control),
        ] {
            let tx = tx.clone();
            tasks.spawn(name, stage, move |stop| async move {
                stop.cancelled().await;
                // Work still in flight when the stop comes finishes.
                tokio::task::yield_now().await;
                let _ = tx.send(name);
            });
        }
        drop(tx);
        within_a_second(tasks.shutdown(Duration::from_secs(1))).await;
        let mut order = Vec::new();
        while let Some(name) = rx.recv().await {
            order.push(name);
        }
        assert_eq!(order, ["control", "shadow", "writer"]);
    }
}
