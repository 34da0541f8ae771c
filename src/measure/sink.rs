//! The record sink: a bounded queue from the request path to a batch writer.
//!
//! `submit` never waits: when the queue is full the record is counted as dropped (in
//! `/metrics` as `sluice_records_dropped_total`), a warning says so at most once per
//! [`DROP_LOG_INTERVAL`], and the request goes on. The writer waits [`LINGER`] after a
//! batch's first record (or less, when a full batch is already queued), then writes up to
//! [`WRITE_BATCH`] records in one transaction; on shutdown it closes the queue and drains it
//! before returning.
//!
//! Why linger: a transaction's fixed cost (BEGIN, COMMIT, the pages a commit writes to the
//! WAL, a round trip to SQLite's worker thread per statement) dwarfs a row's. Without it the
//! writer woke for every few records at moderate load, and at full load each record cost
//! ~60 µs of database work (research/perf-profile.md); with it a batch holds everything that
//! arrived in 50 ms, and a record is in the database within about [`LINGER`] plus one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use super::Record;
use crate::limits::LimitBook;
use crate::store::{RequestPlacement, Store};
use std::sync::Arc;

/// Records written per transaction at most: one SQLite statement of
/// [`crate::store::SQLITE_MAX_ROWS`] rows.
pub const WRITE_BATCH: usize = crate::store::SQLITE_MAX_ROWS;
/// How long the writer lets a batch fill after its first record arrives.
pub const LINGER: Duration = Duration::from_millis(50);
/// The "records dropped" warning comes at most this often (the counter counts every one).
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
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
    /// When the last "records dropped" warning went out, and the drop count it reported.
    drop_report: std::sync::Mutex<(Option<Instant>, u64)>,
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
            drop_report: std::sync::Mutex::new((None, 0)),
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
            self.report_drops(false);
        }
    }

    /// Warns about records dropped since the last warning, unless one went out less than
    /// [`DROP_LOG_INTERVAL`] ago (`force` ignores the interval, at shutdown). Called on the
    /// drop path and after every batch, so that the last drops of a burst are reported once
    /// the writer catches up; never waits for the lock.
    fn report_drops(&self, force: bool) {
        let Ok(mut report) = self.drop_report.try_lock() else {
            return;
        };
        let (last_at, reported) = &mut *report;
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == *reported {
            return;
        }
        let now = Instant::now();
        if !force && last_at.is_some_and(|at| now.duration_since(at) < DROP_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            dropped = dropped - *reported,
            dropped_total = dropped,
            queue = self.tx.max_capacity(),
            "records dropped: the database is not keeping up and the record queue \
             (server.record_queue) is full; requests go on, their records are lost"
        );
        *last_at = Some(now);
        *reported = dropped;
    }

    pub fn counters(&self) -> SinkCounters {
        SinkCounters {
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_failed: self.write_failed.load(Ordering::Relaxed),
        }
    }

    /// Writes queued records until `shutdown` turns true (or its sender goes away), then
    /// drains the queue and returns.
    pub async fn run_writer(
        &self,
        mut rx: mpsc::Receiver<Record>,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            // A batch begins with its first record.
            let open = tokio::select! {
                n = rx.recv_many(&mut batch, WRITE_BATCH) => n > 0,
                () = stopped(&mut shutdown) => false,
            };
            if !open {
                break;
            }
            // Linger, unless a full batch is waiting already (the writer is behind).
            if batch.len() + rx.len() < WRITE_BATCH {
                let stopping = tokio::select! {
                    () = tokio::time::sleep(LINGER) => false,
                    () = stopped(&mut shutdown) => true,
                };
                if stopping {
                    break;
                }
            }
            // Top up with what is queued now, without waiting for more.
            let room = WRITE_BATCH - batch.len();
            if room > 0 {
                let _ = rx.recv_many(&mut batch, room).now_or_never();
            }
            self.write(&store, &batch).await;
            batch.clear();
            self.report_drops(false);
        }
        // No new records from here on; what is queued (and `batch`) is still delivered.
        rx.close();
        loop {
            let room = WRITE_BATCH - batch.len();
            if room > 0 {
                rx.recv_many(&mut batch, room).await;
            }
            if batch.is_empty() {
                break;
            }
            self.write(&store, &batch).await;
            batch.clear();
        }
        self.report_drops(true);
        tracing::info!(
            written = self.written.load(Ordering::Relaxed),
            dropped = self.dropped.load(Ordering::Relaxed),
            write_failed = self.write_failed.load(Ordering::Relaxed),
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

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
