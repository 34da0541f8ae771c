//! A progress bar on stderr: redrawn in place a few times a second when stderr is a
//! terminal, one line per finished phase otherwise (so logs and CI output stay readable).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REDRAW_INTERVAL: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 30;

pub(crate) struct Progress {
    label: &'static str,
    total: usize,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    started: Instant,
    painter: Option<tokio::task::JoinHandle<()>>,
}

/// A handle that counts finished calls; cheap to clone into tasks.
#[derive(Clone)]
pub(crate) struct Tick(Arc<AtomicUsize>);

impl Tick {
    pub(crate) fn one(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Progress {
    pub(crate) fn start(label: &'static str, total: usize) -> Self {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        #[expect(
            clippy::disallowed_methods,
            reason = "a CLI progress line, stopped and awaited by `finish`"
        )]
        let painter = std::io::stderr().is_terminal().then(|| {
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    draw(label, done.load(Ordering::Relaxed), total, started);
                    tokio::time::sleep(REDRAW_INTERVAL).await;
                }
            })
        });
        Self {
            label,
            total,
            done,
            stop,
            started,
            painter,
        }
    }

    pub(crate) fn tick(&self) -> Tick {
        Tick(self.done.clone())
    }

    /// Draws the final state and ends the line.
    pub(crate) async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(painter) = self.painter.take() {
            let _ = painter.await;
        }
        draw(
            self.label,
            self.done.load(Ordering::Relaxed),
            self.total,
            self.started,
        );
        eprintln!();
    }
}

fn draw(label: &str, done: usize, total: usize, started: Instant) {
    let filled = done.min(total) * BAR_WIDTH / total.max(1);
    eprint!(
        "\r{label:<18} [{}{}] {done}/{total} calls, {:.1} s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}
