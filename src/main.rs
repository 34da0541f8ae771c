//! The `sluice` command: parse the CLI, load the config, run or talk to the gateway.

// No function over 80 lines of code (issue #8); clippy.toml sets the threshold.
#![warn(clippy::too_many_lines)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::app::Server;
use sluice::cli::AdminClient;
use sluice::settings;

/// jemalloc instead of glibc's malloc: a request makes 200–340 allocations (most of them
/// small and freed on another thread than the one that made them), and under the bench rig
/// jemalloc took 4 µs off a plain request and 10 µs off a 40-chunk stream
/// (research/perf-profile.md). Only the binary: the library leaves the choice to its user.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`MALLOC_CONF` in the environment still
/// overrides each of them). jemalloc is built unprefixed (Cargo.toml), so it is also the
/// `malloc` of the C linked in (SQLite), and this symbol is `malloc_conf` (on Android,
/// DragonFly and Apple's systems, where the prefix stays, `_rjem_malloc_conf` and
/// `_RJEM_MALLOC_CONF`).
///
/// - `tcache_gc_incr_bytes`: a thread's cache of freed blocks is trimmed after every 4 MiB
///   allocated instead of every 64 KiB; at a few hundred small allocations a request the
///   default trimmed every few requests (145 300 → 143 200 instructions a plain request,
///   `benches/callgrind-request.sh`).
/// - `tcache_nslots_small_min` / `_max`: a thread caches 128–512 freed blocks of each small
///   size instead of 20–200. With 64 requests in flight the runtime's thread holds more
///   blocks of one size than 20 (two 8 KiB read buffers a request, hyper's), so the cache
///   emptied and overflowed in turn, refilled from and flushed to the arena in batches:
///   3 700 instructions a plain request at c=64 (`CONCURRENCY=64
///   benches/callgrind-request.sh`), about 500 with these bounds. The bound applies per
///   size; the trim above returns what an allocating thread stops using (a thread that
///   stops allocating keeps its cache). Resident memory after 1 000 000 requests at c=64
///   went from 35.6 to 36.9 MiB (`benches/memory.sh`).
#[cfg(not(target_env = "msvc"))]
#[cfg_attr(
    any(target_os = "android", target_os = "dragonfly", target_vendor = "apple"),
    // tikv-jemalloc-sys keeps the prefix there, feature or not.
    unsafe(export_name = "_rjem_malloc_conf")
)]
#[cfg_attr(
    not(any(
        target_os = "android",
        target_os = "dragonfly",
        target_vendor = "apple"
    )),
    unsafe(export_name = "malloc_conf")
)]
pub static MALLOC_CONF: &[u8; 85] =
    b"tcache_gc_incr_bytes:4194304,tcache_nslots_small_min:128,tcache_nslots_small_max:512\0";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An OpenAI-compatible LLM gateway that rolls out model versions safely"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole rollout in about a minute on mock versions: a bad canary reverted, a good one promoted.
    Demo,
    /// Run the gateway until SIGTERM or Ctrl-C.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Listen on this address instead of `[server] listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create or update the database schema, then exit.
    Migrate {
        #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration without starting.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Compare two versions offline: a rollout's shadow pairs, or an eval suite replayed against both.
    Eval(sluice::eval::EvalArgs),
    /// Run the real judge and rollout state machine against seeded synthetic traffic.
    Simulate(sluice::simulate::SimulateArgs),
    /// Rollouts: start, watch and steer them (a client of the admin API).
    Rollout {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Workspaces (a client of the admin API).
    Workspaces {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// API keys of a workspace (a client of the admin API).
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// A route's live figures per version and arm, as a table (a client of the admin API).
    Stats {
        #[command(flatten)]
        admin: AdminArgs,
        /// The route (what apps put in `model`).
        route: String,
    },
    /// Send chat requests to a route at a steady rate, to try a rollout out.
    Load(sluice::load::LoadArgs),
    /// The replicas of a cluster (a client of the admin API).
    Cluster {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every replica (live or gone), its address, version, last heartbeat and what it judges.
    Status,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every mistake in the file, one per line; exit 1 if there is any.
    Check {
        #[arg(long, short, default_value = "sluice.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Base URL of a running sluice.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "SLUICE_URL"
    )]
    url: String,
    /// The admin token.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Start moving a route to a canary version under a policy; prints the rollout id.
    Start {
        #[arg(long)]
        route: String,
        #[arg(long)]
        canary: String,
        #[arg(long, default_value = "default")]
        policy: String,
    },
    /// List rollouts, newest first.
    List,
    /// A rollout's state, both arms side by side, each gate's evidence and the last events.
    Status { id: String },
    /// Stop advancing (the judge still reverts on harm).
    Pause { id: String },
    /// Advance again after a pause or an inconclusive hold.
    Resume { id: String },
    /// Make the canary the stable version now.
    Promote { id: String },
    /// Send all traffic back to stable and end the rollout.
    Abort { id: String },
    /// Pin a workspace to an arm (beats the percentage), or remove its pin with --remove.
    Pin {
        id: String,
        workspace: String,
        #[arg(long, value_parser = ["stable", "canary"], required_unless_present = "remove")]
        arm: Option<String>,
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace.
    Create { id: String },
    /// List workspaces.
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        #[arg(long)]
        workspace: String,
    },
    /// List a workspace's keys (ids and prefixes, never the keys).
    List {
        #[arg(long)]
        workspace: String,
    },
    /// Revoke a key.
    Revoke {
        #[arg(long)]
        workspace: String,
        key_id: String,
    },
}

/// Log filter from `SLUICE_LOG`, else `RUST_LOG`, else `default`; a filter that does not
/// parse is said on stderr (not silently replaced).
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = ["SLUICE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| {
            let text = std::env::var(var).ok().filter(|t| !t.trim().is_empty())?;
            match EnvFilter::try_new(&text) {
                Ok(filter) => Some(filter),
                Err(e) => {
                    eprintln!("{var}=`{text}` is not a log filter ({e}); using `{default}`");
                    None
                }
            }
        })
        .unwrap_or_else(|| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

fn load(path: &std::path::Path) -> Result<settings::Settings, ExitCode> {
    settings::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(2)
    })
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `sluice rollout …`: one admin API call.
async fn rollout(client: AdminClient, command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Start {
            route,
            canary,
            policy,
        } => client.start_rollout(&route, &canary, &policy).await,
        RolloutCommand::List => client.list_rollouts().await,
        RolloutCommand::Status { id } => client.show_rollout(&id).await,
        RolloutCommand::Pause { id } => client.operate_rollout(&id, "pause").await,
        RolloutCommand::Resume { id } => client.operate_rollout(&id, "resume").await,
        RolloutCommand::Promote { id } => client.operate_rollout(&id, "promote").await,
        RolloutCommand::Abort { id } => client.operate_rollout(&id, "abort").await,
        RolloutCommand::Pin {
            id,
            workspace,
            arm,
            remove,
        } => {
            let arm = if remove { None } else { arm };
            client.pin_rollout(&id, &workspace, arm.as_deref()).await
        }
    }
}

/// The settings `sluice serve` runs with: the file's, with `--listen` over its address.
fn serve_settings(
    config: &std::path::Path,
    listen: Option<&str>,
) -> Result<settings::Settings, ExitCode> {
    let mut settings = load(config)?;
    if let Some(listen) = listen {
        match sluice::settings::listen_address(listen) {
            Ok(addr) => settings.listen = addr,
            Err(message) => {
                eprintln!("--listen: {message}");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(settings)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// The tokio runtime: a single thread where this process may use one CPU only (pinned with
/// `taskset`, or a container's CPU quota under two, which
/// [`std::thread::available_parallelism`] rounds down to one), a worker per CPU otherwise.
/// Chosen once, at start.
///
/// Why: on one CPU a multi-threaded runtime still runs two threads (its one worker, and the
/// main thread that runs the accept loop), and its scheduler pays for cross-thread wake-ups
/// and stealing that cannot help. The single-threaded runtime takes 3.4 % off a plain
/// request's instructions (145 300 → 140 300, `benches/callgrind-request.sh` with the
/// process's choice forced either way). Nothing in sluice blocks a runtime thread
/// (`block_in_place` is never used; the database and file work run on their own threads).
///
/// # Errors
/// The runtime's I/O driver cannot start (no epoll, file descriptors exhausted).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve { config, listen } => {
            init_logging("info");
            match serve_settings(&config, listen.as_deref()) {
                Ok(settings) => serve(settings).await,
                Err(code) => return code,
            }
        }
        Command::Migrate { config } => {
            init_logging("info");
            match load(&config) {
                Ok(settings) => sluice::store::Store::connect(&settings.database_url)
                    .await
                    .map(|_| sluice::cli::out(format_args!("database is up to date\n")))
                    .map_err(anyhow::Error::from),
                Err(code) => return code,
            }
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match load(&config) {
            Ok(settings) => {
                let c = &settings.config;
                sluice::cli::out(format_args!(
                    "{}: ok ({} providers, {} versions, {} routes)\n",
                    config.display(),
                    c.providers.len(),
                    c.versions.len(),
                    c.routes.len()
                ));
                Ok(())
            }
            Err(code) => return code,
        },
        Command::Simulate(args) => sluice::simulate::run(args),
        Command::Eval(args) => sluice::eval::run(args).await,
        Command::Demo => {
            init_logging("warn");
            sluice::demo::run().await
        }
        Command::Rollout { admin, command } => {
            rollout(AdminClient::new(&admin.url, admin.admin_token), command).await
        }
        Command::Workspaces { admin, command } => {
            workspaces(AdminClient::new(&admin.url, admin.admin_token), command).await
        }
        Command::Stats { admin, route } => {
            AdminClient::new(&admin.url, admin.admin_token)
                .show_stats(&route)
                .await
        }
        Command::Load(args) => sluice::load::run(args).await,
        Command::Keys { admin, command } => {
            keys(AdminClient::new(&admin.url, admin.admin_token), command).await
        }
        Command::Cluster { admin, command } => {
            let client = AdminClient::new(&admin.url, admin.admin_token);
            match command {
                ClusterCommand::Status => client.cluster_status().await,
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice workspaces …` through the admin API.
async fn workspaces(client: AdminClient, command: WorkspaceCommand) -> anyhow::Result<()> {
    match command {
        WorkspaceCommand::Create { id } => client.create_workspace(&id).await,
        WorkspaceCommand::List => client.list_workspaces().await,
    }
}

/// `sluice keys …` through the admin API.
async fn keys(client: AdminClient, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { workspace } => client.create_key(&workspace).await,
        KeyCommand::List { workspace } => client.list_keys(&workspace).await,
        KeyCommand::Revoke { workspace, key_id } => client.revoke_key(&workspace, &key_id).await,
    }
}

async fn serve(settings: settings::Settings) -> anyhow::Result<()> {
    let file = settings.file.display().to_string();
    let server = Server::build(settings).await?;
    let runtime = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded (one CPU)",
        _ => "multi-threaded",
    };
    tracing::info!(config = %file, address = %server.local_addr(), runtime, "sluice is listening");
    server.run_until_stopped(stop_signal()).await
}
