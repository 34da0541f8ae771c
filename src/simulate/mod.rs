//! `sluice simulate`: the real judge and state machine against seeded synthetic traffic.
//! In: scenario files (`evals/scenarios/*.toml`), a number of runs and a seed. Out: a
//! markdown table on stdout (false rollbacks, promotions, inconclusive runs, canary
//! requests and bad responses until revert, time to 100 %, and the tuned threshold
//! baselines side by side), optionally every figure as JSON, and a progress bar on
//! stderr. Runs are deterministic per seed and spread over threads.

pub(crate) mod baselines;
pub(crate) mod report;
pub(crate) mod scenario;
pub(crate) mod traffic;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::judge::spec::Metric;
use report::Row;
use scenario::{Expect, Scenario};
use traffic::RunResult;

#[derive(Debug, Clone, clap::Args)]
/// `sluice simulate`'s arguments: the folder of scenario files and which of them to run.
pub struct SimulateArgs {
    /// Folder of scenario files.
    #[arg(long, default_value = "evals/scenarios")]
    pub(crate) scenarios: PathBuf,
    /// Folder of policies that scenarios name.
    #[arg(long, default_value = "policies")]
    pub(crate) policies: PathBuf,
    /// Seeded runs per scenario where the canary is harmless (and per A/A twin); harmful
    /// scenarios get a quarter (at least 50), since their figures are medians.
    #[arg(long, default_value_t = 2000)]
    pub(crate) runs: usize,
    /// A fast smoke run: 30 runs per harmless scenario, 20 per harmful one.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Only scenarios whose file name contains one of these (repeatable).
    #[arg(long = "only")]
    pub(crate) only: Vec<String>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write the HTML report here (one page, inline SVG, no script, no network): per
    /// scenario the distribution of canary requests to revert for sluice and the tuned
    /// baselines, the false-rollback rate with its interval against α, and the first
    /// runs' e-value paths against 1/α.
    #[arg(long, default_value = "simulate-report.html")]
    pub(crate) html: PathBuf,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// The false-rollback rate the baselines are tuned to on each A/A twin. It is α = 0.01,
/// the budget our judge is held to, which is at or above our measured rate: generous to
/// the baselines.
const BASELINE_TARGET: f64 = 0.01;

struct Job {
    scenario: usize,
    twin: bool,
    run: usize,
}

/// `sluice simulate`: runs every scenario against the judge and prints the results table.
///
/// # Errors
/// When the scenario folder cannot be read, no scenario is selected, or a scenario file
/// has a mistake.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let rows = simulate(&args, true)?;
    let table = report::markdown(
        &rows,
        &format!(
            "Seeded runs of the real judge and state machine (seed {}). \"reverted\" is the false-rollback rate where the canary is harmless and the detection rate where it is harmful. Canary requests to revert are over all runs (a run that never reverted counts as infinitely slow). Baselines are tuned on the A/A twin of the same setting to {:.0} % false rollbacks; the best k is shown.",
            args.seed,
            100.0 * BASELINE_TARGET
        ),
    );
    println!("{table}");
    std::fs::write(
        &args.html,
        report::html(
            &rows,
            &format!(
                "Seeded runs of the real judge and state machine (seed {}, {} runs per harmless scenario). Baselines tuned on each setting's A/A twin to {:.0} % false rollbacks.",
                args.seed,
                if args.quick { 30 } else { args.runs },
                100.0 * BASELINE_TARGET
            ),
        ),
    )
    .with_context(|| format!("writing {}", args.html.display()))?;
    eprintln!("HTML report: {}", args.html.display());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the selected scenarios and returns one row each.
pub(crate) fn simulate(args: &SimulateArgs, progress: bool) -> anyhow::Result<Vec<Row>> {
    let scenarios = load_scenarios(args)?;
    let twins = Twins::of(&scenarios);
    let batch = Batch {
        jobs: jobs(args, &scenarios, &twins),
        scenarios: &scenarios,
        twins: &twins,
        seed: args.seed,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let results = batch.run(threads, progress);
    Ok(rows(&scenarios, &twins, results))
}

/// The scenario files in `args.scenarios` that `--only` selects, in file-name order.
fn load_scenarios(args: &SimulateArgs) -> anyhow::Result<Vec<Scenario>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&args.scenarios)
        .with_context(|| format!("reading {}", args.scenarios.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect();
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no scenarios in {}",
        args.scenarios.display()
    );
    paths
        .iter()
        .map(|p| scenario::load(p, &args.policies).map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

/// One A/A twin per distinct setting that a baseline comparison needs.
struct Twins {
    scenarios: Vec<Scenario>,
    /// For each scenario, the index of its twin (none without a baseline metric).
    of: Vec<Option<usize>>,
    /// A twin watches every baseline metric that a scenario of its setting watches.
    watch: Vec<Vec<Metric>>,
}

impl Twins {
    fn of(scenarios: &[Scenario]) -> Twins {
        let mut twins: Vec<Scenario> = Vec::new();
        let mut twin_of: Vec<Option<usize>> = Vec::new();
        for s in scenarios {
            if s.baseline_metric.is_none() {
                twin_of.push(None);
                continue;
            }
            let key = s.setting_key();
            let i = match twins.iter().position(|t| t.setting_key() == key) {
                Some(i) => i,
                None => {
                    twins.push(s.null_twin());
                    twins.len() - 1
                }
            };
            twin_of.push(Some(i));
        }
        let watch = (0..twins.len())
            .map(|t| {
                let mut m: Vec<Metric> = scenarios
                    .iter()
                    .zip(&twin_of)
                    .filter(|(_, x)| **x == Some(t))
                    .filter_map(|(s, _)| s.baseline_metric)
                    .collect();
                m.sort();
                m.dedup();
                m
            })
            .collect();
        Twins {
            scenarios: twins,
            of: twin_of,
            watch,
        }
    }
}

/// Every run to make: each scenario's, then each twin's, longest first.
fn jobs(args: &SimulateArgs, scenarios: &[Scenario], twins: &Twins) -> Vec<Job> {
    let (runs_pass, runs_harm) = if args.quick {
        (30, 20)
    } else {
        (args.runs, (args.runs / 4).max(50))
    };
    let mut jobs = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let n = if s.expect == Expect::Revert {
            runs_harm
        } else {
            runs_pass
        };
        jobs.extend((0..n).map(|run| Job {
            scenario: i,
            twin: false,
            run,
        }));
    }
    for i in 0..twins.scenarios.len() {
        jobs.extend((0..runs_pass).map(|run| Job {
            scenario: i,
            twin: true,
            run,
        }));
    }
    // Long jobs first keeps both threads busy to the end.
    jobs.sort_by_key(|j| {
        let s = if j.twin {
            &twins.scenarios[j.scenario]
        } else {
            &scenarios[j.scenario]
        };
        std::cmp::Reverse((s.duration.as_secs_f64() * s.rps) as u64)
    });
    jobs
}

/// A run's result with its job: (twin, scenario or twin index, run).
type JobResult = (bool, usize, usize, RunResult);

/// The runs to make and what they run on.
struct Batch<'a> {
    jobs: Vec<Job>,
    scenarios: &'a [Scenario],
    twins: &'a Twins,
    seed: u64,
}

impl Batch<'_> {
    /// Every job, spread over `threads` workers, with a progress bar on stderr if asked.
    fn run(&self, threads: usize, progress: bool) -> Vec<JobResult> {
        let results: Mutex<Vec<JobResult>> = Mutex::new(Vec::with_capacity(self.jobs.len()));
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| self.work(&next, &done, &results));
            }
            if progress {
                scope.spawn(|| progress_bar(self.jobs.len(), &done, &finished));
            }
            // Workers end when the job list is empty; the bar ends on its own count.
        });
        finished.store(true, Ordering::Relaxed);
        let mut results = results.into_inner().expect("workers are done");
        // Deterministic order whatever the thread interleaving.
        results.sort_by_key(|r| (r.0, r.1, r.2));
        results
    }

    /// One worker: takes the next job until there is none.
    fn work(&self, next: &AtomicUsize, done: &AtomicUsize, results: &Mutex<Vec<JobResult>>) {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = self.jobs.get(i) else { break };
            let r = self.run_job(job);
            results
                .lock()
                .expect("no worker panics while holding the lock")
                .push((job.twin, job.scenario, job.run, r));
            done.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run_job(&self, job: &Job) -> RunResult {
        let s = if job.twin {
            &self.twins.scenarios[job.scenario]
        } else {
            &self.scenarios[job.scenario]
        };
        // Seeds differ per scenario, twin and run, and repeat per --seed.
        let seed = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(
            ((job.scenario as u64) << 40) | ((job.twin as u64) << 39) | job.run as u64,
        );
        let watch: Vec<Metric> = if job.twin {
            self.twins.watch[job.scenario].clone()
        } else {
            s.baseline_metric.into_iter().collect()
        };
        traffic::run(s, &watch, seed)
    }
}

/// Redraws `[####....] done/total runs` on stderr every 250 ms until all are done.
fn progress_bar(total: usize, done: &AtomicUsize, finished: &AtomicBool) {
    loop {
        let d = done.load(Ordering::Relaxed);
        let width = 40;
        let filled = d * width / total.max(1);
        eprint!(
            "\r[{}{}] {d}/{total} runs",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
        let _ = std::io::stderr().flush();
        if d >= total || finished.load(Ordering::Relaxed) {
            eprintln!();
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One row per scenario, then one per twin that is not also a scenario.
fn rows(scenarios: &[Scenario], twins: &Twins, results: Vec<JobResult>) -> Vec<Row> {
    let mut by_scenario: Vec<Vec<RunResult>> = vec![Vec::new(); scenarios.len()];
    let mut by_twin: Vec<Vec<RunResult>> = vec![Vec::new(); twins.scenarios.len()];
    for (twin, i, _, r) in results {
        if twin {
            by_twin[i].push(r);
        } else {
            by_scenario[i].push(r);
        }
    }
    let mut rows: Vec<Row> = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let twin = twins.of[i].map(|t| by_twin[t].as_slice());
            report::row(s, &by_scenario[i], twin, BASELINE_TARGET)
        })
        .collect();
    // The twins are A/A runs of their own: show our judge's false rollbacks on them.
    for (t, s) in twins.scenarios.iter().enumerate() {
        if !rows.iter().any(|r| r.scenario == s.name) {
            rows.push(report::row(s, &by_twin[t], None, BASELINE_TARGET));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(only: &[&str]) -> SimulateArgs {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        SimulateArgs {
            scenarios: root.join("evals/scenarios"),
            policies: root.join("policies"),
            runs: 0,
            quick: true,
            only: only.iter().map(|s| s.to_string()).collect(),
            json: None,
            html: PathBuf::from("unused.html"),
            threads: Some(2),
            seed: 1,
        }
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("evals/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                scenario::load(&path, &root.join("policies")).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 10, "{n} scenarios");
    }

    #[test]
    fn a_quick_run_rarely_reverts_a_a_and_reverts_a_fivefold_error_rate() {
        let rows = simulate(&args(&["s01-"]), false).unwrap();
        let harm = rows
            .iter()
            .find(|r| r.scenario.starts_with("s01-") && r.expect == "revert")
            .unwrap();
        let twin = rows
            .iter()
            .find(|r| r.scenario.starts_with("A/A twin"))
            .unwrap();
        assert!(harm.reverted.rate >= 0.9, "detected {:?}", harm.reverted);
        assert!(
            twin.reverted.rate <= 0.05,
            "false rollbacks {:?}",
            twin.reverted
        );
        assert!(
            harm.delay.median.is_some_and(|m| m < 600.0),
            "{:?}",
            harm.delay
        );
        assert_eq!(
            harm.baselines.len(),
            2,
            "both baselines are tuned and replayed"
        );
    }

    /// The largest number of false rollbacks in n runs that a judge holding α still
    /// shows with probability ≥ 0.999: the smallest k with P(Bin(n, α) > k) ≤ 0.001.
    fn binomial_bound(n: usize, alpha: f64) -> usize {
        (0..=n)
            .find(|&k| {
                crate::judge::guards::binomial_upper_tail(n as u64, k as u64 + 1, alpha) <= 1e-3
            })
            .unwrap_or(n)
    }

    #[test]
    fn the_binomial_bound_matches_the_hand_computation() {
        // n = 30, α = 0.01: P(X ≥ 3) = 0.00332, P(X ≥ 4) = 0.000216, so at most 3.
        assert_eq!(binomial_bound(30, 0.01), 3);
    }

    #[test]
    fn quick_runs_of_the_sticky_and_new_a_a_scenarios_stay_within_the_binomial_bound() {
        let rows = simulate(
            &args(&["s11-", "s14-", "s15-", "s17-", "s18-", "s21-"]),
            false,
        )
        .unwrap();
        assert_eq!(
            rows.len(),
            6,
            "{:?}",
            rows.iter().map(|r| &r.scenario).collect::<Vec<_>>()
        );
        for r in &rows {
            assert_eq!(r.expect, "pass", "{}", r.scenario);
            let bound = binomial_bound(r.runs, r.alpha);
            assert!(
                r.reverted.k <= bound,
                "{}: {} false rollbacks in {} runs (bound {bound})",
                r.scenario,
                r.reverted.k,
                r.runs
            );
            assert_eq!(r.inconclusive.k, 0, "{}: {:?}", r.scenario, r.inconclusive);
        }
    }

    #[test]
    fn a_quick_run_reverts_a_sticky_fivefold_error_rate_and_a_canary_broken_alone() {
        let rows = simulate(&args(&["s13-", "s16-", "s22-"]), false).unwrap();
        // The A/A twins tuned for the baselines come back too: only the harmful rows.
        for r in rows.iter().filter(|r| r.expect == "revert") {
            // s16 (30 % errors on the canary alone for two minutes, then healthy again)
            // is caught in about 73 % of runs within the hour (500 runs: 72.8 %
            // [64.4, 79.8]; these 20 seeded runs: 17): the "must revert" is
            // missed there, so this only guards against a regression.
            let floor = if r.scenario.starts_with("s16-") {
                0.6
            } else {
                0.9
            };
            assert!(r.reverted.rate >= floor, "{}: {:?}", r.scenario, r.reverted);
        }
        // A canary failing alone is reverted at once: in every run, and no later than the
        // kill switch could fire (its default minimum is 20 canary requests in the
        // window). The e-values of the error gate usually get there first.
        let broken = rows
            .iter()
            .find(|r| r.scenario.starts_with("s22-"))
            .unwrap();
        assert_eq!(broken.reverted.k, broken.runs);
        let p90 = broken.delay.p90.expect("every run reverted");
        assert!(p90 <= 20.0, "p90 canary requests to revert: {p90}");
    }

    #[test]
    fn the_same_seed_gives_the_same_figures() {
        let s = scenario::load(
            &args(&[]).scenarios.join("s01-error-5x-at-5pct.toml"),
            &args(&[]).policies,
        )
        .unwrap();
        let a = traffic::run(&s, &[Metric::ErrorRate], 42);
        let b = traffic::run(&s, &[Metric::ErrorRate], 42);
        let figures = |r: &traffic::RunResult| (r.at_ms, r.canary_requests, r.bad_canary);
        assert_eq!(a.outcome, b.outcome);
        assert_eq!(figures(&a), figures(&b));
        // And the seed is used: another seed gives other figures.
        let c = traffic::run(&s, &[Metric::ErrorRate], 43);
        assert_ne!(figures(&a), figures(&c), "seed 43 gave seed 42's figures");
    }
}
