//! The record sink: a bounded queue from the request path to a batch writer.
//!
//! `submit` never waits: when the queue is full the record is counted as dropped (in
//! `/metrics` as `sluice_records_dropped_total`), a warning says so at most once per
//! `DROP_LOG_INTERVAL`, and the request goes on.
//!
//! Before that, intake is paced: while fewer than a `HEADROOM_DIVISOR`th of the queue's
//! slots are free *and the writer is keeping up* (its current write began less than
//! `WRITER_STALLED` ago and the last one did not fail), a new request first waits, at
//! most `PACE_WAIT`, for the writer to take its next batch (`RecordSink::pace`). A
//! writer that is slow but working so slows intake to what it sustains instead of losing
//! records; a database that is away or hanging never makes a request wait (the writer is
//! then failing or stalled), and records are dropped and counted as before. The writer waits `LINGER` after a
//! batch's first record (or less, when a full batch is already queued), then writes up to
//! `WRITE_BATCH` records in one transaction; on shutdown it closes the queue and drains it
//! before returning.
//!
//! Why linger: a transaction's fixed cost (BEGIN, COMMIT, the pages a commit writes to the
//! WAL, a round trip to SQLite's worker thread per statement) dwarfs a row's. Without it the
//! writer woke for every few records at moderate load, and at full load each record cost
//! ~60 µs of database work (research/perf-profile.md); with it a batch holds everything that
//! arrived in 50 ms, and a record is in the database within about `LINGER` plus one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::limits::LimitBook;
use crate::store::{RequestPlacement, Store};
use crate::types::Record;
use std::sync::Arc;

/// Records written per transaction at most: eight SQLite statements of
/// [`crate::store::SQLITE_MAX_ROWS`] rows (one on PostgreSQL).
pub(crate) const WRITE_BATCH: usize = 8 * crate::store::SQLITE_MAX_ROWS;
/// How long the writer lets a batch fill after its first record arrives.
pub(crate) const LINGER: Duration = Duration::from_millis(50);
/// The "records dropped" warning comes at most this often (the counter counts every one).
pub(crate) const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Tries per batch before it is given up (with back-off from 50 ms to 3.2 s: about 6 s).
const WRITE_ATTEMPTS: u32 = 8;

/// The longest a new request waits for room in a nearly full queue ([`RecordSink::pace`]).
pub(crate) const PACE_WAIT: Duration = Duration::from_millis(10);
/// New requests are paced while fewer than `capacity / HEADROOM_DIVISOR` slots are free.
pub(crate) const HEADROOM_DIVISOR: usize = 4;
/// A write running longer than this means the database is not merely slow: no pacing.
pub(crate) const WRITER_STALLED: Duration = Duration::from_secs(1);

/// Recent requests kept in memory for feedback that arrives before their record is written.
const RECENT_REQUESTS: usize = 10_000;

/// The last [`RECENT_REQUESTS`] requests' placements, oldest forgotten first. A plain map
/// and ring under a mutex held for one insert: cheaper on the request path than a cache
/// with admission and expiry, and this one needs neither. The map and the ring share each
/// id's text, and the map hashes with foldhash (randomly seeded) instead of SipHash: an
/// insert is every request's.
#[derive(Default)]
struct Recent {
    inner: std::sync::Mutex<(PlacementMap, std::collections::VecDeque<Arc<str>>)>,
}

type PlacementMap =
    std::collections::HashMap<Arc<str>, RequestPlacement, foldhash::quality::RandomState>;

impl Recent {
    fn insert(&self, request_id: &str, placement: RequestPlacement) {
        let request_id: Arc<str> = request_id.into();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *inner;
        if order.len() == RECENT_REQUESTS
            && let Some(oldest) = order.pop_front()
        {
            map.remove(&oldest);
        }
        order.push_back(Arc::clone(&request_id));
        map.insert(request_id, placement);
    }

    fn get(&self, request_id: &str) -> Option<RequestPlacement> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.get(request_id).cloned()
    }
}

/// The queue between requests and the record writer: every finished request's
/// [`Record`] goes here, and never waits on the database.
pub struct RecordSink {
    tx: mpsc::Sender<Record>,
    /// Workspace budgets count tokens and cost from every record.
    limits: Arc<LimitBook>,
    recent: Recent,
    dropped: AtomicU64,
    written: AtomicU64,
    write_failed: AtomicU64,
    /// Requests that waited for room in the queue ([`RecordSink::pace`]).
    paced: AtomicU64,
    /// Notified each time the writer takes records off the queue.
    room: tokio::sync::Notify,
    /// Free slots below which new requests are paced.
    headroom: usize,
    /// The writer's state: 0 idle, [`FAILING`] retrying a failed batch, otherwise 1 + the
    /// milliseconds since `born` at which its current write began.
    writing: AtomicU64,
    born: Instant,
    /// [`PACE_WAIT`] and [`WRITER_STALLED`] (tests lengthen them, to assert without a clock).
    pace_wait: Duration,
    stalled_after: Duration,
    /// When the last "records dropped" warning went out, and the drop count it reported.
    drop_report: std::sync::Mutex<(Option<Instant>, u64)>,
    /// Records finished after their reply went out ([`RecordSink::after_reply`]); the
    /// writer waits for them before it stops.
    after_reply: tokio_util::task::TaskTracker,
}

/// The measurement record writer's counters.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct SinkCounters {
    /// Records not queued because the queue was full or closed.
    pub(crate) dropped: u64,
    /// Records written to the store.
    pub written: u64,
    /// Records lost because the database refused them for every try.
    pub(crate) write_failed: u64,
    /// Requests that waited (at most [`PACE_WAIT`] each) for room in a nearly full queue
    /// while the writer was keeping up.
    pub(crate) paced: u64,
}

/// [`RecordSink::writing`] while a failed batch is being retried.
const FAILING: u64 = u64::MAX;

impl RecordSink {
    /// A sink whose queue holds `capacity` records, charging each record's tokens and cost to
    /// `limits`; and the receiving end, for the writer task.
    pub fn new(capacity: usize, limits: Arc<LimitBook>) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Self {
            tx,
            limits,
            recent: Recent::default(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            write_failed: AtomicU64::new(0),
            paced: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            headroom: (capacity / HEADROOM_DIVISOR).max(1),
            writing: AtomicU64::new(0),
            born: Instant::now(),
            pace_wait: PACE_WAIT,
            stalled_after: WRITER_STALLED,
            drop_report: std::sync::Mutex::new((None, 0)),
            after_reply: tokio_util::task::TaskTracker::new(),
        };
        (sink, rx)
    }

    /// Where a recent request went, while its record may still be on its way to the store.
    pub(crate) fn recent(&self, request_id: &str) -> Option<RequestPlacement> {
        self.recent.get(request_id)
    }

    pub(crate) fn submit(&self, record: Record) {
        let placement = RequestPlacement {
            workspace: record.workspace.clone(),
            rollout_id: record.rollout_id.clone(),
            arm: record.arm,
            w: record.w,
            randomized: record.randomized,
        };
        self.recent.insert(&record.request_id, placement);
        self.limits.spend(&record);
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.report_drops(false);
        }
    }

    /// Runs `finish` (a meter's finish, which ends in [`RecordSink::submit`]) in a task of
    /// its own, queued behind the current one: on a whole answer, it runs once the reply has
    /// been written. Runs it at once instead on a multi-threaded runtime, outside a runtime,
    /// and once the writer has begun to stop (so that no record arrives after it drained
    /// the queue).
    ///
    /// Why only on the single-threaded runtime: there the task queue is first in, first
    /// out, and a client's next request can only be read after the reply went out, so the
    /// task runs before anything the client does next (feedback on the request, a request
    /// that its spend put over a workspace limit, a read of the live stats) sees sluice. A
    /// multi-threaded runtime may run that next request on another worker first.
    pub(crate) fn after_reply(&self, finish: impl FnOnce() + Send + 'static) {
        let single_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !single_threaded || self.after_reply.is_closed() {
            finish();
            return;
        }
        self.after_reply.spawn(async move { finish() });
    }

    /// Runs every finish still queued by [`RecordSink::after_reply`] and makes later ones
    /// run at once. The server calls it once its last connection has ended: a connection
    /// ends as soon as its reply is written, and its record's finish may still wait behind
    /// other tasks, while what stops next (the cluster shipper's closing batch, then the
    /// writer) must see every record.
    pub(crate) async fn finish_replies(&self) {
        self.after_reply.close();
        self.after_reply.wait().await;
    }

    /// Waits, at most [`PACE_WAIT`], while the queue is nearly full and the writer is
    /// keeping up; returns at once otherwise (one atomic load when there is room). Called
    /// before a request that will yield a record starts, so that intake slows to what the
    /// writer sustains instead of the queue overflowing. Never waits on a database that
    /// fails or hangs: then [`RecordSink::submit`] drops and counts, as it always did.
    pub(crate) async fn pace(&self) {
        if self.tx.capacity() >= self.headroom || !self.writer_keeping_up() {
            return;
        }
        self.paced.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.pace_wait;
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so that a batch taken in between is not missed.
            notified.as_mut().enable();
            if self.tx.capacity() >= self.headroom
                || self.tx.is_closed()
                || !self.writer_keeping_up()
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// False while the writer retries a failed batch or its current write has run longer
    /// than [`WRITER_STALLED`].
    fn writer_keeping_up(&self) -> bool {
        match self.writing.load(Ordering::Relaxed) {
            0 => true,
            FAILING => false,
            began => {
                let now = self.born.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(began) < self.stalled_after.as_millis() as u64
            }
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

    /// The counts so far (each read on its own, so not one instant's snapshot).
    pub fn counters(&self) -> SinkCounters {
        SinkCounters {
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            write_failed: self.write_failed.load(Ordering::Relaxed),
            paced: self.paced.load(Ordering::Relaxed),
        }
    }

    /// Writes queued records until `stop` is cancelled, then
    /// drains the queue and returns.
    pub(crate) async fn run_writer(
        &self,
        mut rx: mpsc::Receiver<Record>,
        store: Store,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            // A batch begins with its first record.
            let open = tokio::select! {
                n = rx.recv_many(&mut batch, WRITE_BATCH) => n > 0,
                () = stop.cancelled() => false,
            };
            if !open {
                break;
            }
            self.room.notify_waiters();
            // Linger, unless a full batch is waiting already or requests are being paced
            // (the writer is behind).
            let queued = batch.len() + rx.len();
            if queued < WRITE_BATCH && queued < self.tx.max_capacity() - self.headroom {
                let stopping = tokio::select! {
                    () = tokio::time::sleep(LINGER) => false,
                    () = stop.cancelled() => true,
                };
                if stopping {
                    break;
                }
            }
            // Top up with what is queued now, without waiting for more.
            let room = WRITE_BATCH - batch.len();
            if room > 0 {
                let _ = rx.recv_many(&mut batch, room).now_or_never();
                self.room.notify_waiters();
            }
            self.write(&store, &batch).await;
            batch.clear();
            self.report_drops(false);
        }
        // Records finished after their reply still come in; then no new ones, and what is
        // queued (and `batch`) is still delivered.
        self.finish_replies().await;
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
        let began = self.born.elapsed().as_millis() as u64 + 1;
        self.writing.store(began, Ordering::Relaxed);
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=WRITE_ATTEMPTS {
            match store.insert_records(batch).await {
                Ok(()) => {
                    self.written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.writing.store(0, Ordering::Relaxed);
                    return;
                }
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    self.writing.store(FAILING, Ordering::Relaxed);
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
        // Stays FAILING until a batch goes through: the database refused this one for ~6 s.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Arm, Limits, Outcome, Usage};
    use tokio_util::sync::CancellationToken;

    fn record(i: usize) -> Record {
        Record {
            request_id: format!("req_{i}"),
            at_ms: i as i64,
            workspace: "acme".into(),
            route: "chat".into(),
            version: "v1".into(),
            arm: if i.is_multiple_of(2) {
                Arm::Stable
            } else {
                Arm::Canary
            },
            stream: false,
            status: 200,
            outcome: Outcome::Ok,
            latency_ms: 10.0,
            ttft_ms: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            response_chars: 5,
            finish_reason: None,
            rollout_id: Some("ro_1".into()),
            w: Some(0.5),
            randomized: true,
            step: Some(0),
            schema_failed: None,
            guardrail_blocked: false,
            api: crate::types::Api::Chat,
            reasoning_tokens: None,
            inputs: None,
            dimensions: None,
        }
    }

    fn sink(capacity: usize) -> (RecordSink, mpsc::Receiver<Record>) {
        RecordSink::new(capacity, Arc::new(LimitBook::new(Limits::default())))
    }

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sink.db").display());
        (Store::connect(&url).await.unwrap(), dir)
    }

    /// The writer of `sink` on `store`, as a task of the test's runtime, until `stop`.
    fn spawn_writer(
        sink: &Arc<RecordSink>,
        store: &Store,
        rx: mpsc::Receiver<Record>,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (sink, store, stop) = (sink.clone(), store.clone(), stop.clone());
        #[expect(
            clippy::disallowed_methods,
            reason = "a test drives the writer by hand"
        )]
        tokio::spawn(async move { sink.run_writer(rx, store, stop).await })
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (sink, mut rx) = sink(2);
        for i in 0..5 {
            sink.submit(record(i));
        }
        let c = sink.counters();
        assert_eq!((c.dropped, c.written, c.write_failed), (3, 0, 0));
        // The first two are queued, in order.
        assert_eq!(rx.try_recv().unwrap().request_id, "req_0");
        assert_eq!(rx.try_recv().unwrap().request_id, "req_1");
        assert!(rx.try_recv().is_err());
        // A closed queue drops too.
        drop(rx);
        sink.submit(record(9));
        assert_eq!(sink.counters().dropped, 4);
    }

    #[test]
    fn a_request_is_placed_even_when_its_record_is_dropped() {
        let (sink, _rx) = sink(1);
        sink.submit(record(0));
        sink.submit(record(1));
        assert_eq!(sink.counters().dropped, 1);
        for (i, arm) in [(0, Arm::Stable), (1, Arm::Canary)] {
            let p = sink.recent(&format!("req_{i}")).expect("placed");
            assert_eq!(
                (p.workspace.as_str(), p.rollout_id.as_deref(), p.arm, p.w),
                ("acme", Some("ro_1"), arm, Some(0.5))
            );
        }
        assert!(sink.recent("req_unknown").is_none());
    }

    #[test]
    fn only_the_most_recent_placements_are_remembered() {
        let (sink, _rx) = sink(1);
        for i in 0..=RECENT_REQUESTS {
            sink.submit(record(i));
        }
        assert!(sink.recent("req_0").is_none(), "the oldest is forgotten");
        assert!(sink.recent("req_1").is_some());
        assert!(sink.recent(&format!("req_{RECENT_REQUESTS}")).is_some());
    }

    #[tokio::test]
    async fn the_writer_writes_what_comes_and_drains_the_queue_on_shutdown() {
        let (store, _dir) = store().await;
        let (sink, rx) = sink(4 * WRITE_BATCH);
        let sink = Arc::new(sink);
        let stop = CancellationToken::new();
        let writer = spawn_writer(&sink, &store, rx, &stop);
        // Written while running.
        for i in 0..3 {
            sink.submit(record(i));
        }
        let started = std::time::Instant::now();
        while sink.counters().written < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{:?}",
                sink.counters()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // More than two batches queued, then shutdown: all of them are written before the
        // writer returns.
        let more = 2 * WRITE_BATCH + 7;
        for i in 3..3 + more {
            sink.submit(record(i));
        }
        stop.cancel();
        writer.await.unwrap();
        let c = sink.counters();
        assert_eq!(
            (c.written, c.dropped, c.write_failed),
            (3 + more as u64, 0, 0)
        );
        assert_eq!(store.count_records().await.unwrap(), 3 + more as i64);
        // After shutdown the queue is closed: a late record is dropped and counted.
        sink.submit(record(100_000));
        assert_eq!(sink.counters().dropped, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_record_finished_after_its_reply_is_written_before_the_writer_stops() {
        let (store, _dir) = store().await;
        let (sink, rx) = sink(8);
        let sink = Arc::new(sink);
        let stop = CancellationToken::new();
        let writer = spawn_writer(&sink, &store, rx, &stop);
        // The writer waits for its first record.
        tokio::task::yield_now().await;
        // Told to stop first, it runs before the finish queued behind it, and must wait
        // for that finish before it closes the queue.
        stop.cancel();
        let finishing = sink.clone();
        sink.after_reply(move || finishing.submit(record(1)));
        assert!(
            sink.recent("req_1").is_none(),
            "the finish waits for this task"
        );
        writer.await.unwrap();
        let c = sink.counters();
        assert_eq!((c.written, c.dropped), (1, 0), "{c:?}");
        assert_eq!(store.count_records().await.unwrap(), 1);
        // Once the writer has stopped, a finish runs at once (and its record is dropped and
        // counted, as any record after shutdown).
        let late = sink.clone();
        sink.after_reply(move || late.submit(record(2)));
        assert_eq!(sink.counters().dropped, 1);
    }

    /// The server's last connection ends once its reply is written, while the record's
    /// finish may wait behind other queued tasks (a current-thread runtime polls the
    /// `block_on` future between batches of tasks). What stops next must see the record:
    /// `finish_replies` runs it first.
    #[test]
    fn finish_replies_runs_a_finish_still_queued_behind_other_tasks() {
        #[expect(clippy::disallowed_methods, reason = "other work in the run queue")]
        fn busy(depth: u32) {
            if depth > 0 {
                tokio::spawn(async move { busy(depth - 1) });
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sink, mut rx) = sink(8);
        let sink = Arc::new(sink);
        let (queued_at_wait, queued_after) = runtime.block_on(async {
            for _ in 0..100 {
                busy(3);
            }
            let connections = tokio_util::task::TaskTracker::new();
            let s = sink.clone();
            connections.spawn(async move {
                let finishing = s.clone();
                s.after_reply(move || finishing.submit(record(1)));
            });
            connections.close();
            // What the server awaits last.
            connections.wait().await;
            let at_wait = sink.recent("req_1").is_some();
            sink.finish_replies().await;
            (at_wait, rx.try_recv().map(|r| r.request_id).ok())
        });
        assert!(
            !queued_at_wait,
            "the setup must leave the finish queued when the connections are done"
        );
        assert_eq!(queued_after.as_deref(), Some("req_1"));
        // Later finishes run at once.
        let late = sink.clone();
        sink.after_reply(move || late.submit(record(2)));
        assert!(sink.recent("req_2").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_multi_threaded_runtime_a_finish_after_the_reply_runs_at_once() {
        let (sink, mut rx) = sink(8);
        let sink = Arc::new(sink);
        let finishing = sink.clone();
        sink.after_reply(move || finishing.submit(record(1)));
        assert_eq!(rx.try_recv().unwrap().request_id, "req_1");
    }

    #[tokio::test]
    async fn a_slow_writer_paces_intake_instead_of_dropping_records() {
        let (store, _dir) = store().await;
        // A queue far smaller than the intake, and a producer that never yields on its own:
        // without pacing it would fill the queue at once and drop most records.
        let capacity = 64;
        let (mut sink, rx) = sink(capacity);
        // Long bounds, so that the assertions do not depend on the machine's speed.
        sink.pace_wait = Duration::from_secs(60);
        sink.stalled_after = Duration::from_secs(60);
        let sink = Arc::new(sink);
        let stop = CancellationToken::new();
        let writer = spawn_writer(&sink, &store, rx, &stop);
        let total = 40 * capacity;
        for i in 0..total {
            sink.pace().await;
            sink.submit(record(i));
        }
        stop.cancel();
        writer.await.unwrap();
        let c = sink.counters();
        assert_eq!((c.written, c.dropped, c.write_failed), (total as u64, 0, 0));
        assert!(c.paced > 0, "{c:?}");
        assert_eq!(store.count_records().await.unwrap(), total as i64);
    }

    #[tokio::test]
    async fn pacing_waits_only_for_a_writer_that_keeps_up_and_at_most_pace_wait() {
        tokio::time::pause();
        let (mut sink, _rx) = sink(8);
        // Room: no wait at all.
        let started = tokio::time::Instant::now();
        sink.pace().await;
        assert_eq!(
            (started.elapsed(), sink.counters().paced),
            (Duration::ZERO, 0)
        );
        for i in 0..8 {
            sink.submit(record(i));
        }
        // Nearly full, the writer idle (so keeping up) but never taking a batch: the request
        // waits PACE_WAIT, then goes on.
        sink.pace().await;
        assert!(started.elapsed() >= PACE_WAIT, "{:?}", started.elapsed());
        assert_eq!(sink.counters().paced, 1);
        // A writer retrying a failed batch (the database is away): no wait.
        sink.writing.store(FAILING, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        sink.pace().await;
        assert_eq!(
            (started.elapsed(), sink.counters().paced),
            (Duration::ZERO, 1)
        );
        // A write that began longer than WRITER_STALLED ago (the database hangs): no wait.
        sink.born -= 2 * WRITER_STALLED;
        sink.writing.store(1, Ordering::Relaxed);
        sink.pace().await;
        assert_eq!(
            (started.elapsed(), sink.counters().paced),
            (Duration::ZERO, 1)
        );
        // And the record that finds the queue full is still dropped and counted.
        sink.submit(record(8));
        assert_eq!(sink.counters().dropped, 1);
    }

    #[tokio::test]
    async fn a_batch_the_store_refuses_is_retried_then_counted_as_failed() {
        let (store, _dir) = store().await;
        store.close().await;
        // Retries back off for about 6 s; let tokio's clock skip them.
        tokio::time::pause();
        let (sink, rx) = sink(16);
        for i in 0..5 {
            sink.submit(record(i));
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        sink.run_writer(rx, store, shutdown).await;
        let c = sink.counters();
        assert_eq!((c.written, c.write_failed, c.dropped), (0, 5, 0));
        // Eight tries with back-off 50 ms, 100 ms, … 3.2 s between them (the paused clock
        // rounds each sleep up to its next millisecond).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50 * 127) && waited < Duration::from_millis(50 * 128),
            "{waited:?}"
        );
    }
}
