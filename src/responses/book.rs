//! The response book: which version produced each Response, so a conversation continues
//! where it began.
//!
//! In: a Response id seen in an answer (the `id` of a whole answer, or of the stream's
//! `response.created`) with its placement. Out: the placement of a `previous_response_id`,
//! or of the id in `GET /v1/responses/{id}`. The hot path reads a bounded in-memory map
//! ([`RESPONSE_BOOK_CAPACITY`] ids, least recently used out first) and hands new ids to a
//! bounded queue that a background writer stores in `response_versions`; an id the map no
//! longer holds (after a restart) is read from the database. Replicas sharing one
//! PostgreSQL will find each other's ids there too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{ResponsePlacement, Store};
use crate::types::now_ms;

/// Response ids kept in memory.
pub(crate) const RESPONSE_BOOK_CAPACITY: u64 = 200_000;
/// Placements waiting to be written; when full, one is dropped (the memory map still has it).
const RESPONSE_QUEUE_CAPACITY: usize = 4_096;
/// How long a stored placement is kept: OpenAI keeps stored Responses for 30 days.
pub(crate) const RESPONSE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Writes are batched up to this many rows.
const WRITE_BATCH: usize = 256;

/// Response id → the version that produced it: the most recent ids in memory (bounded),
/// every id in the `response_versions` table (written in batches by [`run_writer`]).
pub(crate) struct ResponseBook {
    recent: moka::sync::Cache<String, Arc<ResponsePlacement>>,
    tx: mpsc::Sender<ResponsePlacement>,
}

impl ResponseBook {
    /// An empty book, and the queue of placements [`run_writer`] writes to the store.
    pub(crate) fn new() -> (Self, mpsc::Receiver<ResponsePlacement>) {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE_CAPACITY);
        let recent = moka::sync::Cache::builder()
            .max_capacity(RESPONSE_BOOK_CAPACITY)
            .build();
        (Self { recent, tx }, rx)
    }

    /// Notes where a Response was produced; never waits.
    pub(crate) fn note(&self, placement: ResponsePlacement) {
        let placement = Arc::new(placement);
        self.recent
            .insert(placement.response_id.clone(), placement.clone());
        if self.tx.try_send((*placement).clone()).is_err() {
            tracing::warn!(
                response_id = %placement.response_id,
                "response book queue full: this id is only kept in memory"
            );
        }
    }

    /// Where `response_id` was produced, if `workspace` produced it: another workspace's
    /// id is as unknown as one that never was.
    pub(crate) async fn find(
        &self,
        store: &Store,
        workspace: &str,
        response_id: &str,
    ) -> Option<Arc<ResponsePlacement>> {
        let found = match self.recent.get(response_id) {
            Some(p) => Some(p),
            None => match store.response_placement(response_id).await {
                Ok(Some(p)) => {
                    let p = Arc::new(p);
                    self.recent.insert(response_id.to_owned(), p.clone());
                    Some(p)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the response book failed");
                    None
                }
            },
        };
        found.filter(|p| p.workspace == workspace)
    }
}

/// Writes noted placements in batches until shutdown, then writes what is queued; prunes
/// placements older than [`RESPONSE_RETENTION`] once an hour.
pub(crate) async fn run_writer(
    mut rx: mpsc::Receiver<ResponsePlacement>,
    store: Store,
    stop: CancellationToken,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                write(&store, &mut batch).await;
            }
            _ = prune.tick() => {
                let before = now_ms() - RESPONSE_RETENTION.as_millis() as i64;
                if let Err(e) = store.prune_response_placements(before).await {
                    tracing::warn!(error = %e, "pruning the response book failed");
                }
            }
            _ = stop.cancelled() => {
                while rx.try_recv().map(|p| batch.push(p)).is_ok() {}
                write(&store, &mut batch).await;
                break;
            }
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<ResponsePlacement>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.insert_response_placements(batch).await {
        tracing::warn!(error = %e, rows = batch.len(), "writing the response book failed");
    }
    batch.clear();
}
