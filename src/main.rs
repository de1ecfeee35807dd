//! The `redis-router` command: `run`, `check`, `test`, `demo`, `dlq`. Tracing setup, signals and
//! exit codes live here, and this is the only file that uses `anyhow`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use redis_router::config::{self, ConfigError};
use redis_router::engine::Supervisor;
use redis_router::stats::StatsRegistry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Exit code for a rule file with mistakes (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "redis-router",
    version,
    about = "Route messages between Redis Pub/Sub, Streams, queues and webhooks by the rules of one YAML file."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The rule file, the same way for every command: `-c FILE` (or `--config`), or `FILE` as the
/// last argument; else `$REDIS_ROUTER_CONFIG`; else `routes.yaml`.
#[derive(clap::Args)]
struct RuleFile {
    /// The rule file [env: REDIS_ROUTER_CONFIG] [default: routes.yaml].
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The rule file, as `-c` gives it.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl RuleFile {
    /// The file given, whichever way; an error when `-c` and a last argument disagree.
    fn path(&self) -> Result<PathBuf, String> {
        match (&self.config, &self.file) {
            (Some(c), Some(f)) if c != f => Err(format!(
                "two rule files given, `-c {}` and `{}`; give one",
                c.display(),
                f.display()
            )),
            (Some(p), _) | (None, Some(p)) => Ok(p.clone()),
            (None, None) => Ok(std::env::var_os("REDIS_ROUTER_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("routes.yaml"))),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the rules until SIGINT or SIGTERM; SIGHUP reloads the file.
    Run {
        #[command(flatten)]
        file: RuleFile,
        /// How long stopping rules may take to finish what they hold.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Serve /metrics, /healthz, /readyz, /status and the status page here (overrides
        /// `http.listen` of the file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Read and filter for real, print what each sink would write, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// This process's instance id: its consumer name becomes HOST-ID. Give each process
        /// that shares a rule file on one host its own.
        #[arg(long, env = "REDIS_ROUTER_INSTANCE")]
        instance: Option<String>,
        /// How long the file must be quiet after a change before it is reloaded.
        #[arg(long, env = "REDIS_ROUTER_RELOAD_DEBOUNCE", value_parser = humantime::parse_duration)]
        reload_debounce: Option<Duration>,
        /// Worker threads (default: one per CPU). On a host shared with Redis, fewer threads
        /// than cores leave Redis its core (see bench/RESULTS.md).
        #[arg(long, env = "REDIS_ROUTER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
    /// Check a rule file: print every mistake, or one line per rule.
    Check {
        #[command(flatten)]
        file: RuleFile,
        /// Print, per connection, the `ACL SETUSER` rule granting exactly the keys, channels and
        /// commands the file needs.
        #[arg(long)]
        acl: bool,
        /// User name for `--acl`.
        #[arg(long, default_value = "redis-router")]
        acl_user: String,
    },
    /// Run each rule's `tests:` offline, without Redis: one line per case, a diff for each
    /// failure, exit 1 when one fails.
    Test {
        #[command(flatten)]
        file: RuleFile,
    },
    /// Try it with nothing running: a throwaway redis-server (from PATH), the example rules,
    /// and where each message went.
    Demo,
    /// Watch a running router's rules move messages, live: what each received, what its
    /// filters dropped, what each sink was given, what was dead-lettered (needs
    /// `http: { listen: ..., tap: true }` in the rule file).
    Tap {
        /// The rule file (as the router runs it) [env: REDIS_ROUTER_CONFIG] [default: routes.yaml].
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        options: redis_router::commands::tap::TapOptions,
    },
    /// Dead letters: list them, or replay them to the sink that failed.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print the dead letters of the file's rules, one per line.
    List {
        #[command(flatten)]
        file: RuleFile,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
    },
    /// Send dead letters again to the sink that failed them; delete each once delivered.
    Replay {
        #[command(flatten)]
        file: RuleFile,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        /// Only these dead-letter entry ids.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Also replay dead letters without a signature (written by a router from before
        /// dead letters were signed), when they are whole and in their rule's stream.
        #[arg(long)]
        accept_unsigned: bool,
    },
}

/// mimalloc instead of glibc's malloc: the hot path allocates a few small buffers per message
/// (reply values, rendered commands), and glibc's free-list consolidation showed as ~15 % of the
/// router's CPU in a stream → stream profile; mimalloc cut CPU per message by about that much.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let file = match &cli.command {
        Command::Check { file, .. }
        | Command::Test { file }
        | Command::Run { file, .. }
        | Command::Dlq {
            action: DlqAction::List { file, .. } | DlqAction::Replay { file, .. },
        } => match file.path() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("redis-router: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Tap { config, .. } => match (RuleFile {
            config: config.clone(),
            file: None,
        })
        .path()
        {
            Ok(path) => path,
            Err(e) => {
                eprintln!("redis-router: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Demo => PathBuf::new(),
    };
    match cli.command {
        Command::Check { acl, acl_user, .. } => check(&file, acl.then_some(acl_user.as_str())),
        Command::Test { .. } => test(&file),
        Command::Demo => demo(),
        Command::Tap { options, .. } => tap(&file, &options),
        Command::Dlq { action } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("redis-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dlq(&file, action)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("redis-router: {}", redis_router::mask::text(&format!("{e:#}")));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            drain_timeout,
            listen,
            dry_run,
            reload_debounce,
            instance,
            threads,
            ..
        } => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = threads {
                builder.worker_threads(usize::from(n));
            }
            let runtime = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("redis-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = RunOptions {
                drain_timeout,
                listen,
                dry_run,
                reload_debounce,
                me: redis_router::identity::name(instance.as_deref()),
            };
            let result = runtime.block_on(run(&file, options));
            // `run` has awaited every task it started. What may remain is a read of the rule
            // file stuck in the kernel (a hung network mount), which a stop no longer waits
            // for: dropping the runtime normally would wait for it after all.
            runtime.shutdown_background();
            match result {
                Ok(code) => code,
                Err(e) => {
                    error!("{}", redis_router::mask::text(&format!("{e:#}")));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a collector gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_config_error(e: &ConfigError) {
    // Validation masks the URLs it quotes (and its hints show `user:pass` as an example).
    eprintln!("{e}");
    let n = e.diagnostics().len();
    if n > 0 {
        eprintln!("{n} error{} found.", if n == 1 { "" } else { "s" });
    }
}

async fn dlq(path: &Path, action: DlqAction) -> anyhow::Result<ExitCode> {
    let set = match config::load(path) {
        Ok(set) => set,
        Err(e) => {
            print_config_error(&e);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    match action {
        DlqAction::List { rule, .. } => {
            let n = redis_router::commands::dlq::list(&set, rule.as_deref(), |entry, problem| {
                println!("{}", entry.summary(problem));
            })
            .await?;
            eprintln!("{n} dead letter{}.", if n == 1 { "" } else { "s" });
        }
        DlqAction::Replay {
            rule,
            ids,
            accept_unsigned,
            ..
        } => {
            let mut last = std::time::Instant::now();
            let options = redis_router::commands::dlq::ReplayOptions {
                rule: rule.as_deref(),
                ids: &ids,
                accept_unsigned,
            };
            let report = redis_router::commands::dlq::replay(
                &set,
                &options,
                |kept| println!("{kept}"),
                |done, total| {
                    if total >= 1000 && (last.elapsed() >= Duration::from_secs(1) || done == total) {
                        eprintln!("replayed {done} of {total}");
                        last = std::time::Instant::now();
                    }
                },
            )
            .await?;
            println!(
                "{} replayed, {} failed again (kept), {} skipped (not sink failures, kept), {} refused (cut, corrupted, unsigned or forged, kept).",
                report.replayed, report.failed, report.skipped, report.refused
            );
            if report.failed > 0 || report.refused > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(file: &Path, acl_user: Option<&str>) -> ExitCode {
    match config::load(file) {
        Ok(set) => {
            for w in &set.warnings {
                eprintln!("{}", w.render_warning(&file.display().to_string()));
            }
            // The rules' `tests:` are part of the file: a malformed case is a mistake too.
            let case_errors = redis_router::commands::test::check(&set);
            if !case_errors.is_empty() {
                for e in &case_errors {
                    eprintln!("{}", redis_router::mask::text(&e.render(&file.display().to_string())));
                }
                eprintln!(
                    "{} error{} found.",
                    case_errors.len(),
                    if case_errors.len() == 1 { "" } else { "s" }
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            if set.rules.is_empty() {
                eprintln!(
                    "{}: warning: no rules; the router would start and do nothing",
                    file.display()
                );
            }
            match acl_user {
                None => {
                    for rule in &set.rules {
                        println!("{}: {}", rule.name, rule.summary());
                    }
                    for server in redis_router::commands::acl::connection_counts(&set) {
                        println!("# {}", server.line());
                    }
                }
                Some(user) => {
                    for s in redis_router::commands::acl::grants(&set) {
                        println!("# {} (connections: {})", s.server, s.connections.join(", "));
                        println!("{}", s.grants.setuser(user, "CHANGE-ME"));
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Options of `run`.
struct RunOptions {
    drain_timeout: Duration,
    listen: Option<std::net::SocketAddr>,
    dry_run: bool,
    reload_debounce: Option<Duration>,
    /// This process's name as a consumer.
    me: String,
}

/// Whether `/tap` serves, and to whom: as the file says, but never without a token beyond
/// loopback (`--listen` may have moved the endpoint there).
fn tap_access(
    http: Option<&config::HttpSpec>,
    listen: std::net::SocketAddr,
    taps: &redis_router::tap::Taps,
) -> redis_router::http::TapAccess {
    let mut enabled = http.is_some_and(|h| h.tap);
    let token = http.and_then(|h| h.tap_token.clone());
    if enabled && token.is_none() && !listen.ip().is_loopback() {
        error!(
            listen = %listen,
            "Tapping stays off: the endpoint listens beyond loopback and the rule file gives no `tap_token`."
        );
        enabled = false;
    }
    redis_router::http::TapAccess {
        taps: taps.clone(),
        enabled,
        token,
    }
}

fn tap(file: &Path, options: &redis_router::commands::tap::TapOptions) -> ExitCode {
    // Only `http:` is read: a tap needs no Redis password, only the endpoint and its token.
    let http = match config::load_http(file) {
        Ok(http) => http,
        Err(e) => {
            print_config_error(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let result = runtime.block_on(async {
        tokio::select! {
            r = redis_router::commands::tap::run(http.as_ref(), options, &mut out) => r,
            _ = tokio::signal::ctrl_c() => Ok(0),
        }
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // A closed pipe (`tap | head`) is a normal end.
        Err(redis_router::commands::tap::TapError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis-router: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(file: &Path) -> ExitCode {
    let set = match config::load(file) {
        Ok(set) => set,
        Err(e) => {
            print_config_error(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let reports = match redis_router::commands::test::run(&set) {
        Ok(reports) => reports,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}", redis_router::mask::text(&e.render(&file.display().to_string())));
            }
            let n = errors.len();
            eprintln!("{n} error{} found.", if n == 1 { "" } else { "s" });
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if reports.is_empty() {
        // Nothing checked is not a pass: a CI step running this must notice.
        eprintln!(
            "{}: no rule has `tests:`; nothing was tested (see \"Testing rules\" in the README)",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    for report in &reports {
        println!("{report}");
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {failed} failed", reports.len() - failed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn demo() -> ExitCode {
    // One thread: the scoped subscriber below then covers every task of the router too.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The story goes to stdout; the rules' lifecycle logs would interleave with it on the same
    // terminal, so only warnings and errors are shown unless RUST_LOG asks for more.
    let quiet = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .finish();
    let result = tracing::subscriber::with_default(quiet, || {
        runtime.block_on(redis_router::commands::demo::run(&mut std::io::stdout()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis-router demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &Path, options: RunOptions) -> anyhow::Result<ExitCode> {
    use redis_router::engine::{ConfigWatcher, ReloadTrigger, Reloader, watcher};
    use tokio::signal::unix::{SignalKind, signal};

    let RunOptions {
        drain_timeout,
        listen,
        dry_run,
        reload_debounce,
        me,
    } = options;
    let debounce = reload_debounce.unwrap_or(watcher::DEFAULT_DEBOUNCE);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // File events and SIGHUP feed one channel; a full channel means a reload is already queued.
    let (triggers_tx, mut triggers) = tokio::sync::mpsc::channel::<ReloadTrigger>(8);
    // Watch before the first load, so that a write between the two is not missed.
    let _watcher = match ConfigWatcher::start(path, debounce, triggers_tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            error!(error = %e, "Cannot watch the rule file; only SIGHUP reloads it.");
            None
        }
    };
    let root = CancellationToken::new();
    let stats = StatsRegistry::default();
    let supervisor = Supervisor::new(root.clone(), stats.clone(), drain_timeout)
        .with_dry_run(dry_run)
        .with_name(&me);
    // The handlers above replace the default action of SIGTERM and SIGINT, so they must be
    // answered while the first load runs too.
    let started = tokio::select! {
        started = Reloader::start(path, supervisor) => started,
        _ = sigterm.recv() => { info!(signal = "SIGTERM", "Stopping before the rules were loaded."); return Ok(ExitCode::SUCCESS); }
        _ = sigint.recv() => { info!(signal = "SIGINT", "Stopping before the rules were loaded."); return Ok(ExitCode::SUCCESS); }
    };
    let mut reloader = match started {
        Ok(r) => r,
        Err(e) => {
            print_config_error(&e);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    info!(
        rules = reloader.supervisor().rule_names().len(),
        file = %path.display(),
        debounce_ms = debounce.as_millis() as u64,
        instance = %me,
        "Router started."
    );

    // The HTTP endpoint: `--listen`, else the file's `http.listen` (read once, at start).
    let draining = CancellationToken::new();
    let file_http = config::load(path).ok().and_then(|set| set.http);
    let listen = listen.or(file_http.as_ref().map(|h| h.listen));
    let http = match listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the HTTP endpoint on {addr}"))?;
            info!(listen = %listener.local_addr().unwrap_or(addr), "Serving /metrics, /healthz, /readyz, /status.");
            let state = std::sync::Arc::new(redis_router::http::HttpState {
                stats,
                reloads: reloader.stats(),
                draining: draining.clone(),
                instance: me.clone(),
                tap: tap_access(file_http.as_ref(), addr, reloader.supervisor().taps()),
                history: Default::default(),
            });
            let stop_http = CancellationToken::new();
            let task = tokio::spawn(redis_router::http::serve(listener, state, stop_http.clone()));
            Some((task, stop_http))
        }
    };

    let stop = CancellationToken::new();
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigterm.recv() => { info!(signal = "SIGTERM", "Stopping."); break; }
                    _ = sigint.recv() => { info!(signal = "SIGINT", "Stopping."); break; }
                    _ = sighup.recv() => {
                        info!(signal = "SIGHUP", "Reloading the rule file.");
                        let _ = triggers_tx.try_send(ReloadTrigger::Signal);
                    }
                }
            }
            stop.cancel();
        })
    };
    // A reload in progress finishes before a stop signal is acted on.
    reloader.serve(&mut triggers, &stop).await;
    signals.abort();
    draining.cancel();
    let aborted = reloader.shutdown().await;
    if let Some((task, stop_http)) = http {
        stop_http.cancel();
        let _ = task.await;
    }
    if aborted.is_empty() {
        info!("Stopped.");
    }
    Ok(ExitCode::SUCCESS)
}
