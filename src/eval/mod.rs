//! `sluice eval`: offline comparison of two versions, off the request path.
//!
//! In: either a rollout's stored shadow pairs (`--rollout ID`), or an eval suite (a JSONL
//! file of chat requests, `--suite FILE --versions A,B`) replayed against both versions
//! through the gateway's own upstream code (never streamed, no retries). Out: a report of
//! every figure per version and side by side (schema pass rate, guardrail hits, tokens,
//! cost, latency, length, Jensen–Shannon divergences, agreement, expectations, and with
//! `--judge` a position-debiased LLM-as-judge preference): a self-contained HTML page, a
//! JSON file, and a summary table on stdout; a progress bar on stderr while it runs.
//!
//! ```text
//! suite ─► suite::parse ─► guard (input rules) ─► replay × 2 versions ─┐
//! rollout ─► store pages ─► pairs::to_case ───────────────────────────┴─► cases
//! cases ─► llm_judge (both orders, optional) ─► compare::build ─► Report ─► html, JSON, summary
//! ```

pub(crate) mod case;
pub(crate) mod charts;
pub(crate) mod compare;
pub(crate) mod guard;
pub(crate) mod html;
pub(crate) mod llm_judge;
pub(crate) mod pairs;
pub(crate) mod progress;
pub(crate) mod replay;
pub(crate) mod stats;
pub(crate) mod suite;
pub mod summary;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use serde_json::Value;

use crate::catalog::{Catalog, Version};
use crate::config;
use crate::measure::schema::SchemaChecker;
use crate::settings::Settings;
use case::{Answer, Case};
use compare::{Inputs, JudgeRun, Report, Source, VersionLabel};
use llm_judge::Judged;
use progress::Progress;

/// The admin token `eval` loads a config with when its variable is unset: eval serves
/// nothing, so the admin API's token is never used.
const PLACEHOLDER_ADMIN_TOKEN: &str = "unused-by-sluice-eval";
const DEFAULT_OUT_DIR: &str = "eval-out";
pub(crate) const HTML_FILE: &str = "report.html";
pub(crate) const JSON_FILE: &str = "report.json";

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["rollout", "suite"])))]
/// `sluice eval`'s arguments: the rollout or the suite to compare, and where the report goes.
pub struct EvalArgs {
    /// Compare the stored shadow pairs of this rollout (stable = A, canary = B).
    #[arg(long, conflicts_with_all = ["suite", "versions"])]
    pub rollout: Option<String>,
    /// Replay this eval suite (one JSON chat request per line) against --versions.
    #[arg(long, requires = "versions")]
    pub suite: Option<PathBuf>,
    /// The two versions to compare: the baseline A, then the candidate B (`A,B`).
    #[arg(long, value_delimiter = ',')]
    pub versions: Vec<String>,
    /// The configuration file (versions, database, guardrail policies).
    #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
    pub config: PathBuf,
    /// Where to write report.html and report.json (default: `eval-out/<UTC time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A configured version that judges which answer is better, in both orders.
    #[arg(long)]
    pub judge: Option<String>,
    /// The guardrail policy to count hits of (default: the route's, else `default`).
    #[arg(long)]
    pub guardrails: Option<String>,
    /// Upstream calls in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// What an eval wrote.
pub struct Written {
    /// The report's figures, as written to `json`.
    pub report: Report,
    /// The path of the HTML report.
    pub html: PathBuf,
    /// The path of the JSON report.
    pub json: PathBuf,
}

/// `sluice eval`: runs the comparison, writes the report files and prints the summary table
/// and their paths.
///
/// # Errors
/// As [`evaluate`].
pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let written = evaluate(&args, true).await?;
    print!("{}", summary::table(&written.report));
    println!("report: {}", written.html.display());
    println!("json:   {}", written.json.display());
    Ok(())
}

/// Runs the eval `args` describe, writes its report files and returns them.
/// `show_progress` draws a progress line on stderr while the answers come.
///
/// # Errors
/// When the config does not load, the rollout or suite cannot be read, a named version is not
/// configured, or the report files cannot be written.
pub async fn evaluate(args: &EvalArgs, show_progress: bool) -> anyhow::Result<Written> {
    // reqwest's rustls needs a process-wide crypto provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = load_settings(&args.config)?;
    let catalog = Catalog::from_settings(&settings).context("preparing the versions")?;
    let judge = args
        .judge
        .as_deref()
        .map(|name| callable_version(&catalog, name, "--judge"))
        .transpose()?;
    let run = EvalRun {
        args,
        settings: &settings,
        catalog: &catalog,
        checker: SchemaChecker::default(),
        concurrency: usize::from(args.concurrency.max(1)),
        show_progress,
    };
    let gathered = match (&args.rollout, &args.suite) {
        (Some(_), Some(_)) => bail!("give either --rollout or --suite, not both"),
        (None, None) => bail!("give --rollout ID or --suite FILE --versions A,B"),
        (Some(id), None) => run.gather_shadow_pairs(id).await?,
        (None, Some(path)) => run.gather_suite(path).await?,
    };
    let judge = match judge {
        Some(judge) => Some(
            judge_cases(
                &judge,
                &gathered.cases,
                &run.checker,
                run.concurrency,
                show_progress,
            )
            .await,
        ),
        None => None,
    };
    let report = compare::build(Inputs {
        source: gathered.source,
        versions: gathered.versions,
        cases: &gathered.cases,
        guardrails: gathered.guardrails.as_ref(),
        judge,
        generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        notes: gathered.notes,
    });
    write(args.out.clone(), report)
}

/// What one eval works with, whichever its source.
struct EvalRun<'a> {
    args: &'a EvalArgs,
    settings: &'a Settings,
    catalog: &'a Catalog,
    checker: SchemaChecker,
    /// Upstream calls in flight at once.
    concurrency: usize,
    show_progress: bool,
}

/// The cases to compare, with where they came from and what the report must say of them.
struct Gathered {
    source: Source,
    versions: [VersionLabel; 2],
    cases: Vec<Case>,
    guardrails: Option<guard::Chosen>,
    notes: Vec<String>,
}

impl EvalRun<'_> {
    /// The stored shadow pairs of rollout `id`: stable is A, canary is B.
    async fn gather_shadow_pairs(&self, id: &str) -> anyhow::Result<Gathered> {
        let args = self.args;
        if !args.versions.is_empty() {
            bail!(
                "--versions is for --suite; a rollout compares its own stable and canary versions"
            );
        }
        let database_url = &self.settings.database_url;
        ensure_database_exists(database_url)?;
        let store = crate::store::Store::connect(database_url)
            .await
            .with_context(|| format!("opening the database {database_url}"))?;
        let (rollout, pairs) = pairs::load(&store, id).await?;
        store.close().await;
        let routes = BTreeSet::from([rollout.route.clone()]);
        let guardrails = guard::choose(self.settings, args.guardrails.as_deref(), &routes)?;
        let mut cases: Vec<Case> = (pairs.iter())
            .map(|p| pairs::to_case(p, &self.checker))
            .collect();
        if let Some(g) = &guardrails {
            for case in &mut cases {
                // Counted only: these requests were answered when they were served.
                let mut request = case.request.clone();
                case.input_fired =
                    guard::fired_rules(&guard::apply_input(&g.set.input, &mut request));
            }
        }
        let label = |name: &str| VersionLabel {
            name: name.to_owned(),
            model: self.catalog.version(name).map(|v| v.model.to_string()),
        };
        let source = Source::Rollout {
            id: rollout.id.clone(),
            route: rollout.route.clone(),
            state: rollout.position.state.as_str().to_owned(),
            pairs: cases.len(),
        };
        let notes = vec![
            "From shadow pairs: the primary's tool calls are not stored, so tool-call figures and the tool-call divergence are missing.".to_owned(),
            "Schema pass rates are recomputed from each stored answer's text against the request's response_format (tool-call arguments are not stored).".to_owned(),
            "Latency of the primary is the gateway's end-to-end figure; the shadow's is the upstream call alone.".to_owned(),
        ];
        Ok(Gathered {
            source,
            versions: [
                label(&rollout.stable_version),
                label(&rollout.canary_version),
            ],
            cases,
            guardrails,
            notes,
        })
    }

    /// The suite at `path` replayed against `--versions A,B`.
    async fn gather_suite(&self, path: &Path) -> anyhow::Result<Gathered> {
        let args = self.args;
        let [a, b] = match args.versions.as_slice() {
            [a, b] => [a, b],
            _ => bail!(
                "--versions takes exactly two version names, A,B (got {})",
                args.versions.len()
            ),
        };
        let pair = [
            callable_version(self.catalog, a, "--versions")?,
            callable_version(self.catalog, b, "--versions")?,
        ];
        let suite = suite::load(path)?;
        let routes: BTreeSet<String> = suite
            .iter()
            .filter_map(|c| {
                c.body
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        let guardrails = guard::choose(self.settings, args.guardrails.as_deref(), &routes)?;
        let cases = replay_suite(
            &suite,
            &pair,
            guardrails.as_ref(),
            &self.checker,
            self.concurrency,
            self.show_progress,
        )
        .await;
        let source = Source::Suite {
            path: path.display().to_string(),
            cases: cases.len(),
        };
        let versions = pair.clone().map(|v| VersionLabel {
            name: v.name.to_string(),
            model: Some(v.model.to_string()),
        });
        let notes = vec![
            "Guardrails are evaluated, not enforced, on answers: output hits are counted and every figure uses the answer as the model gave it.".to_owned(),
        ];
        Ok(Gathered {
            source,
            versions,
            cases,
            guardrails,
            notes,
        })
    }
}

/// Loads the config; an unset admin-token variable gets a placeholder (see the constant).
fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config {}", path.display()))?;
    let token_env = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("admin")?
                .get("token_env")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "SLUICE_ADMIN_TOKEN".to_owned());
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| (name == token_env).then(|| PLACEHOLDER_ADMIN_TOKEN.to_owned()))
    };
    crate::settings::parse(path, &text, &env).map_err(|e| anyhow!("{}", e.to_string().trim_end()))
}

/// Refuses a SQLite file that is not there: connecting would create an empty one, and
/// eval only reads what a gateway recorded.
fn ensure_database_exists(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") || Path::new(path).exists() {
        return Ok(());
    }
    bail!(
        "no database at {path}: nothing has been recorded there yet (is [database] url, or {}, the gateway's?)",
        config::DATABASE_URL_ENV
    )
}

/// A configured version that can be called, or an error naming what is wrong.
fn callable_version(catalog: &Catalog, name: &str, flag: &str) -> anyhow::Result<Arc<Version>> {
    let Some(version) = catalog.version(name) else {
        let known: Vec<&str> = catalog.versions().map(|v| &*v.name).collect();
        bail!(
            "{flag}: unknown version `{name}` (the config has: {})",
            known.join(", ")
        );
    };
    if let Some(var) = &version.missing_key {
        bail!("{flag}: version `{name}` needs its provider's key: set {var}");
    }
    Ok(version.clone())
}

/// Sends every case of the suite to both versions, `concurrency` calls at a time.
async fn replay_suite(
    suite: &[suite::SuiteCase],
    versions: &[Arc<Version>; 2],
    guardrails: Option<&guard::Chosen>,
    checker: &SchemaChecker,
    concurrency: usize,
    show_progress: bool,
) -> Vec<Case> {
    // Input rules first, as the gateway runs them: a block means no call at all.
    let prepared: Vec<(Value, Vec<String>, Option<String>)> = suite
        .iter()
        .map(|case| {
            let mut request = Value::Object(case.body.clone());
            match guardrails {
                Some(g) => {
                    let applied = guard::apply_input(&g.set.input, &mut request);
                    let fired = guard::fired_rules(&applied);
                    (request, fired, applied.blocked_by)
                }
                None => (request, Vec::new(), None),
            }
        })
        .collect();
    let calls: Vec<(usize, usize)> = prepared
        .iter()
        .enumerate()
        .filter(|(_, p)| p.2.is_none())
        .flat_map(|(i, _)| [(i, 0), (i, 1)])
        .collect();
    let progress = show_progress.then(|| Progress::start("calling versions", calls.len()));
    let tick = progress.as_ref().map(Progress::tick);
    let answers: Vec<((usize, usize), Answer)> = futures_util::stream::iter(calls)
        .map(|(i, v)| {
            let (prepared, suite, tick) = (&prepared, &suite, tick.clone());
            async move {
                let Value::Object(body) = &prepared[i].0 else {
                    unreachable!("suite lines are objects")
                };
                let request_id = format!("eval-{}-{}", suite[i].id, ["a", "b"][v]);
                let answer = replay::call_version(&versions[v], body, &request_id, checker).await;
                if let Some(t) = tick {
                    t.one();
                }
                ((i, v), answer)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if let Some(p) = progress {
        p.finish().await;
    }
    let mut slots: Vec<[Option<Answer>; 2]> = vec![[None, None]; suite.len()];
    for ((i, v), answer) in answers {
        slots[i][v] = Some(answer);
    }
    suite
        .iter()
        .zip(prepared)
        .zip(slots)
        .map(|((case, (request, fired, blocked)), [a, b])| {
            let not_sent = || match &blocked {
                Some(rule) => Answer::failed(&format!("input blocked: guardrail `{rule}`")),
                None => Answer::failed("not sent"),
            };
            Case {
                id: case.id.clone(),
                request,
                expect: case.expect.clone(),
                input_fired: fired,
                input_blocked_by: blocked.clone(),
                answers: [a.unwrap_or_else(not_sent), b.unwrap_or_else(not_sent)],
            }
        })
        .collect()
}

/// Asks the judge about every case both versions answered, in both orders.
async fn judge_cases(
    judge: &Arc<Version>,
    cases: &[Case],
    checker: &SchemaChecker,
    concurrency: usize,
    show_progress: bool,
) -> JudgeRun {
    let calls: Vec<(usize, usize)> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.both_answered())
        .flat_map(|(i, _)| [(i, 0), (i, 1)])
        .collect();
    let progress = show_progress.then(|| Progress::start("judging", calls.len()));
    let tick = progress.as_ref().map(Progress::tick);
    let replies: Vec<((usize, usize), Answer)> = futures_util::stream::iter(calls)
        .map(|(i, order)| {
            let tick = tick.clone();
            async move {
                let case = &cases[i];
                // Order 0 shows A's answer first; order 1 shows B's first.
                let (first, second) = match order {
                    0 => (&case.answers[0].text, &case.answers[1].text),
                    _ => (&case.answers[1].text, &case.answers[0].text),
                };
                let body = llm_judge::judge_request(&case.request, first, second);
                let request_id = format!("eval-judge-{}-{order}", case.id);
                let reply = replay::call_version(judge, &body, &request_id, checker).await;
                if let Some(t) = tick {
                    t.one();
                }
                ((i, order), reply)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if let Some(p) = progress {
        p.finish().await;
    }
    let mut slots: Vec<[Option<Answer>; 2]> = vec![[None, None]; cases.len()];
    for ((i, order), reply) in replies {
        slots[i][order] = Some(reply);
    }
    let per_case = slots
        .into_iter()
        .map(|[first, second]| {
            let (first, second) = (first?, second?);
            let verdict = |a: &Answer| {
                a.is_ok()
                    .then(|| llm_judge::parse_verdict(&a.text))
                    .flatten()
            };
            let cost = first.cost_usd + second.cost_usd;
            let tokens = [&first, &second]
                .iter()
                .map(|a| a.prompt_tokens + a.completion_tokens)
                .sum();
            Some(Judged::new(
                [verdict(&first), verdict(&second)],
                cost,
                tokens,
            ))
        })
        .collect();
    JudgeRun {
        version: judge.name.to_string(),
        per_case,
    }
}

/// Writes report.json and report.html into `out` (default: a fresh timestamped folder).
fn write(out: Option<PathBuf>, report: Report) -> anyhow::Result<Written> {
    let dir = match out {
        Some(dir) => dir,
        None => fresh_out_dir(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join(JSON_FILE);
    let html = dir.join(HTML_FILE);
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&html, html::render(&report))
        .with_context(|| format!("writing {}", html.display()))?;
    Ok(Written { report, html, json })
}

/// `eval-out/20250101-120000`, with a suffix when that folder already exists.
fn fresh_out_dir() -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter_map(|c| match c {
            'T' => Some('-'),
            c if c.is_ascii_digit() => Some(c),
            _ => None,
        })
        .collect();
    let base = Path::new(DEFAULT_OUT_DIR).join(&stamp);
    let mut dir = base.clone();
    let mut n = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_sqlite_file_is_refused_instead_of_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("sqlite://{}/none.db", dir.path().display());
        let e = ensure_database_exists(&missing).unwrap_err().to_string();
        assert!(e.starts_with("no database at /"), "{e}");
        assert!(!dir.path().join("none.db").exists());
        std::fs::write(dir.path().join("here.db"), b"").unwrap();
        let here = format!("sqlite://{}/here.db?mode=rwc", dir.path().display());
        assert!(ensure_database_exists(&here).is_ok());
        assert!(ensure_database_exists("postgres://db/x").is_ok());
        assert!(ensure_database_exists("sqlite::memory:").is_ok());
    }

    #[test]
    fn output_folders_are_named_by_utc_time() {
        let dir = fresh_out_dir();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(dir.starts_with(DEFAULT_OUT_DIR));
        // 20250101-120000
        assert_eq!(name.len(), 15, "{name}");
        assert_eq!(name.as_bytes()[8], b'-');
    }
}
