//! The record sink: a bounded queue from the request path to a batch writer.
//!
//! `submit` never waits: when the queue is full the record is counted as dropped and the
//! request goes on. The writer takes whatever is queued (up to [`WRITE_BATCH`]) and writes it
//! in one transaction; on shutdown it closes the queue and drains it before returning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::limits::LimitBook;
use crate::store::{RequestPlacement, Store};
use crate::types::Record;
use std::sync::Arc;

/// Records written per transaction at most.
pub const WRITE_BATCH: usize = 512;
/// Tries per batch before it is given up (with back-off from 50 ms to 3.2 s: about 6 s).
const WRITE_ATTEMPTS: u32 = 8;

/// Recent requests kept in memory for feedback that arrives before their record is written.
const RECENT_REQUESTS: usize = 10_000;

/// The last [`RECENT_REQUESTS`] requests' placements, oldest forgotten first. A plain map
/// and ring under a mutex held for one insert: cheaper on the request path than a cache
/// with admission and expiry, and this one needs neither.
#[derive(Default)]
struct Recent {
    inner: std::sync::Mutex<(
        std::collections::HashMap<String, RequestPlacement>,
        std::collections::VecDeque<String>,
    )>,
}

impl Recent {
    fn insert(&self, request_id: String, placement: RequestPlacement) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *inner;
        if order.len() == RECENT_REQUESTS
            && let Some(oldest) = order.pop_front()
        {
            map.remove(&oldest);
        }
        order.push_back(request_id.clone());
        map.insert(request_id, placement);
    }

    fn get(&self, request_id: &str) -> Option<RequestPlacement> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(request_id).cloned()
    }
}

pub struct RecordSink {
    tx: mpsc::Sender<Record>,
    /// Workspace budgets count tokens and cost from every record.
    limits: Arc<LimitBook>,
    recent: Recent,
    dropped: AtomicU64,
    written: AtomicU64,
    write_failed: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SinkCounters {
    /// Records not queued because the queue was full or closed.
    pub dropped: u64,
    pub written: u64,
    /// Records lost because the database refused them for every try.
    pub write_failed: u64,
}

impl RecordSink {
    pub fn new(capacity: usize, limits: Arc<LimitBook>) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Self {
            tx,
            limits,
            recent: Recent::default(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            write_failed: AtomicU64::new(0),
        };
        (sink, rx)
    }

    /// Where a recent request went, while its record may still be on its way to the store.
    pub fn recent(&self, request_id: &str) -> Option<RequestPlacement> {
        self.recent.get(request_id)
    }

    pub fn submit(&self, record: Record) {
        let placement = RequestPlacement {
            workspace: record.workspace.clone(),
            rollout_id: record.rollout_id.clone(),
            arm: record.arm,
            w: record.w,
            randomized: record.randomized,
        };
        self.recent.insert(record.request_id.clone(), placement);
        self.limits.spend(&record);
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counters(&self) -> SinkCounters {
        SinkCounters {
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_failed: self.write_failed.load(Ordering::Relaxed),
        }
    }

    /// Writes queued records until `shutdown` turns true, then drains the queue and returns.
    pub async fn run_writer(
        &self,
        mut rx: mpsc::Receiver<Record>,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    // No new records from here on; what is queued is still delivered.
                    rx.close();
                    rx.recv_many(&mut batch, WRITE_BATCH).await
                }
            };
            if received == 0 {
                break;
            }
            self.write(&store, &batch).await;
            batch.clear();
        }
        tracing::info!(
            written = self.written.load(Ordering::Relaxed),
            dropped = self.dropped.load(Ordering::Relaxed),
            "record writer stopped"
        );
    }

    async fn write(&self, store: &Store, batch: &[Record]) {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=WRITE_ATTEMPTS {
            match store.insert_records(batch).await {
                Ok(()) => {
                    self.written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, records = batch.len(), "writing records failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), "writing records failed; giving the batch up");
                }
            }
        }
        self.write_failed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}
