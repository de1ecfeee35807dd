//! `redis-router demo`: the example rules against a throwaway redis-server, for a newcomer with
//! nothing running.
//!
//! This module owns the throwaway server (found on `PATH`, started on a free loopback port in a
//! temporary directory, killed and removed on drop) and the story: the scenarios of the design's
//! first section played one by one, each followed by where the message went, read back from
//! Redis (the entry in `processed_stream`, the job on service B's queue decoded) rather than
//! taken from counters. Only the filtered-out order, which leaves nothing in Redis, is told from
//! the rule's counter.
//!
//! The rules run in-process under a [`Supervisor`], as `redis-router run` runs them, and are
//! stopped the same way (cancel, drain) before the server goes. Tracing setup is the caller's.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, RuleSet};
use crate::engine::Supervisor;
use crate::stats::{RuleState, StatsRegistry};

/// The rule file the demo runs, built in so that the demo works from any directory.
pub const EXAMPLE_RULES: &str = include_str!("../../routes.example.yaml");

/// The name the built-in rule file goes by in messages.
pub const EXAMPLE_FILE: &str = "routes.example.yaml";

/// How long redis-server may take to answer PING. A local server answers within milliseconds;
/// a slow CI machine under load has needed a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each step may take to show its result: the rules deliver within milliseconds, so
/// this bounds only a broken setup.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the rules may take to drain when the demo stops them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Ports tried when redis-server loses the race for a free port to another process.
const PORT_ATTEMPTS: usize = 5;

/// The big order of the first scenario.
const BIG_ORDER: &str = r#"{"event":"order.created","data":{"order_id":987,"total":150000}}"#;
/// An order under the filter's threshold.
const SMALL_ORDER: &str = r#"{"event":"order.created","data":{"order_id":988,"total":500}}"#;
/// The fields of the entry the second scenario adds to `demo_stream`.
const STREAM_ENTRY: [(&str, &str); 3] = [
    ("event", "order.created"),
    ("payload", "x"),
    ("timestamp", "1700000000"),
];

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No `redis-server` on `PATH`.
    #[error(
        "redis-server is not on PATH; install Redis (`apt install redis-server`, `brew install redis`) and run `redis-router demo` again"
    )]
    RedisServerMissing,
    /// redis-server could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// redis-server started but exited or did not answer.
    #[error("{binary} did not start on 127.0.0.1:{port} ({why}); its log:\n{log}")]
    NotReady {
        /// The binary.
        binary: String,
        /// The port it was given.
        port: u16,
        /// It exited, or it did not answer in time.
        why: String,
        /// The server's log.
        log: String,
    },
    /// The temporary directory could not be made.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// The built-in rule file does not load (the build is broken).
    #[error("{EXAMPLE_FILE} does not load:\n{0}")]
    Config(#[from] ConfigError),
    /// A rule stopped instead of running.
    #[error("rule {rule} did not start: {error}")]
    RuleNotRunning {
        /// The rule.
        rule: String,
        /// Its last error, if it had one.
        error: String,
    },
    /// A command to the throwaway server failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A step did not show its result in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The story could not be written.
    #[error("cannot write the story: {0}")]
    Output(#[from] std::io::Error),
    /// The SIGINT or SIGTERM handler could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    /// SIGINT or SIGTERM arrived; everything was stopped.
    #[error("interrupted; the router and the redis-server were stopped")]
    Interrupted,
}

/// A redis-server of the demo's own, on a free loopback port, saving nothing; killed, and its
/// directory removed, on drop.
pub struct ThrowawayRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    binary: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

impl ThrowawayRedis {
    /// `redis-server` from `PATH`.
    ///
    /// # Errors
    /// [`DemoError::RedisServerMissing`] when no directory of `PATH` has an executable one.
    pub fn find_binary() -> Result<PathBuf, DemoError> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| {
                std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or(DemoError::RedisServerMissing)
    }

    /// Start one and wait until it answers PING.
    ///
    /// # Errors
    /// When redis-server is missing, cannot be run, or does not answer within 10 s.
    pub async fn start() -> Result<ThrowawayRedis, DemoError> {
        let binary = Self::find_binary()?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = std::env::temp_dir().join(format!(
                "redis-router-demo-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).map_err(DemoError::TempDir)?;
            let mut server = ThrowawayRedis {
                port: free_port().map_err(DemoError::TempDir)?,
                binary: binary.clone(),
                child: None,
                dir,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                // Another process took the port between our probe and the server's bind.
                Err(e @ DemoError::NotReady { .. }) if server.child.is_none() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(DemoError::RedisServerMissing))
    }

    async fn spawn(&mut self) -> Result<(), DemoError> {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C in the terminal reaches the demo only, which then
            // stops the rules before the server, instead of the server dying under them.
            .process_group(0)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.not_ready(format!("it exited with {status}")));
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(format!("no answer to PING in {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn not_ready(&self, why: String) -> DemoError {
        DemoError::NotReady {
            binary: self.binary.display().to_string(),
            port: self.port,
            why,
            log: std::fs::read_to_string(self.log_path()).unwrap_or_default(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The binary that runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port on loopback (bound, then released for the server to take).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Play the demo, writing the story to `out`: start a throwaway redis-server, run the example
/// rules against it, play each scenario and show where its message went, then stop the rules
/// (cancel, drain) and the server. SIGINT or SIGTERM stops everything in the same order.
///
/// # Errors
/// [`DemoError`] when redis-server is missing or does not start, or a step does not show its
/// result within 10 s.
pub async fn run(out: &mut dyn Write) -> Result<(), DemoError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before anything starts, so that no signal can end the process with the server
    // still running.
    let mut sigint = signal(SignalKind::interrupt()).map_err(DemoError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DemoError::Signal)?;
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    tokio::pin!(stop);
    // A start cut short drops the half-started server, which kills it.
    let redis = tokio::select! {
        redis = ThrowawayRedis::start() => redis?,
        () = &mut stop => return Err(DemoError::Interrupted),
    };
    let url = redis.url();
    let env = move |name: &str| match name {
        "REDIS_URL" => Some(url.clone()),
        other => std::env::var(other).ok(),
    };
    let set = config::load_str_with_env(EXAMPLE_RULES, EXAMPLE_FILE, &env)?;
    let mut supervisor = Supervisor::new(CancellationToken::new(), StatsRegistry::default(), DRAIN_TIMEOUT);
    let story = tokio::select! {
        result = async {
            supervisor.apply(&set).await;
            tell(out, &redis, &set, &supervisor).await
        } => result,
        () = &mut stop => Err(DemoError::Interrupted),
    };
    let rules = supervisor.rule_names().len();
    let aborted = supervisor.shutdown().await;
    drop(redis);
    story?;
    let drained = rules - aborted.len();
    writeln!(
        out,
        "\nStopped the router ({drained} of {rules} rules drained) and the redis-server."
    )?;
    writeln!(
        out,
        "Next: `redis-router run -c {EXAMPLE_FILE}` against your own Redis, and `redis-router test {EXAMPLE_FILE}` to check the rules offline."
    )?;
    out.flush()?;
    Ok(())
}

/// The story proper, once the rules are applied.
async fn tell(
    out: &mut dyn Write,
    redis: &ThrowawayRedis,
    set: &RuleSet,
    supervisor: &Supervisor,
) -> Result<(), DemoError> {
    writeln!(
        out,
        "redis-router demo: the rules of {EXAMPLE_FILE} against a throwaway redis-server on 127.0.0.1:{}.",
        redis.port
    )?;
    for rule in &set.rules {
        writeln!(out, "  {}: {}", rule.name, rule.summary())?;
    }
    out.flush()?;
    for (spec, status) in supervisor.statuses() {
        tokio::time::timeout(STEP_TIMEOUT, status.started())
            .await
            .map_err(|_| DemoError::Timeout {
                what: format!("rule {} to start", spec.name),
                timeout: STEP_TIMEOUT,
            })?;
        if status.get() != RuleState::Running {
            return Err(DemoError::RuleNotRunning {
                rule: spec.name.clone(),
                error: status.last_error().unwrap_or_else(|| "it stopped".into()),
            });
        }
    }
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;

    // 1. Pub/Sub into a stream.
    writeln!(
        out,
        "\n1. A shop publishes a big order on Pub/Sub, which keeps nothing for a subscriber that is away."
    )?;
    writeln!(out, "   $ redis-cli PUBLISH events:order '{BIG_ORDER}'")?;
    out.flush()?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("events:order")
        .arg(BIG_ORDER)
        .query_async(&mut conn)
        .await?;
    let (id, fields) = wait_for("the order in processed_stream", || {
        let mut conn = conn.clone();
        async move {
            let entries = xrange(&mut conn, "processed_stream").await?;
            Ok(entries.into_iter().find(|(_, f)| field(f, "data") == Some(BIG_ORDER)))
        }
    })
    .await?;
    writeln!(out, "   orders-to-stream kept it in processed_stream, entry {id}:")?;
    write_fields(out, &fields)?;

    // 2. The filter.
    let filter = set
        .rules
        .iter()
        .find(|r| r.name == "orders-to-stream")
        .and_then(|r| r.filter.as_ref())
        .map(|f| f.source().to_string())
        .unwrap_or_default();
    writeln!(out, "\n2. A small order does not pass the rule's filter: {filter}")?;
    writeln!(out, "   $ redis-cli PUBLISH events:order '{SMALL_ORDER}'")?;
    out.flush()?;
    let stats = supervisor.stats().rule("orders-to-stream");
    let before = stats.filtered_out.load(Ordering::Relaxed);
    let _: i64 = redis::cmd("PUBLISH")
        .arg("events:order")
        .arg(SMALL_ORDER)
        .query_async(&mut conn)
        .await?;
    wait_for("the small order to be filtered out", || {
        let done = stats.filtered_out.load(Ordering::Relaxed) > before;
        async move { Ok(done.then_some(())) }
    })
    .await?;
    let len: usize = redis::cmd("XLEN")
        .arg("processed_stream")
        .query_async(&mut conn)
        .await?;
    writeln!(
        out,
        "   orders-to-stream filtered it out: processed_stream still holds {len} entr{}.",
        if len == 1 { "y" } else { "ies" }
    )?;

    // 3. A stream, read through consumer groups, into a stream and a Laravel queue.
    writeln!(
        out,
        "\n3. A service adds an entry to demo_stream. Two rules read it, each through its own consumer group:\n   nothing added while the router is down is skipped, and each entry is acknowledged once delivered."
    )?;
    let args: Vec<String> = STREAM_ENTRY.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "   $ redis-cli XADD demo_stream '*' {}", args.join(" "))?;
    out.flush()?;
    let mut xadd = redis::cmd("XADD");
    xadd.arg("demo_stream").arg("*");
    for (k, v) in STREAM_ENTRY {
        xadd.arg(k).arg(v);
    }
    let added: String = xadd.query_async(&mut conn).await?;
    let (id, fields) = wait_for("the entry in processed_stream", || {
        let mut conn = conn.clone();
        let added = added.clone();
        async move {
            let entries = xrange(&mut conn, "processed_stream").await?;
            Ok(entries
                .into_iter()
                .find(|(_, f)| field(f, "original_id") == Some(added.as_str())))
        }
    })
    .await?;
    writeln!(
        out,
        "   demo-stream-to-processed wrote it to processed_stream, entry {id}:"
    )?;
    write_fields(out, &fields)?;
    let queue = set
        .connections
        .iter()
        .find(|c| c.name == "laravel")
        .map(|c| crate::redis_conn::prefixed(c, "queues:to-b"))
        .unwrap_or_else(|| "queues:to-b".into());
    let job: String = wait_for(&format!("the job on {queue}"), || {
        let mut conn = conn.clone();
        let queue = queue.clone();
        async move {
            let jobs: Vec<String> = redis::cmd("LRANGE")
                .arg(&queue)
                .arg(0)
                .arg(0)
                .query_async(&mut conn)
                .await?;
            Ok(jobs.into_iter().next())
        }
    })
    .await?;
    writeln!(out, "   demo-stream-to-b made it a job of service B on {queue}:")?;
    match crate::laravel::parse_job(job.as_bytes()) {
        Ok(view) => {
            writeln!(out, "     displayName: {}", view.display_name.unwrap_or_default())?;
            let data = view
                .data
                .map(|d| d.to_string())
                .unwrap_or_else(|| "(not readable)".into());
            writeln!(out, "     $data: {data}")?;
        }
        Err(e) => writeln!(out, "     (not a Laravel job: {e}) {job}")?,
    }
    writeln!(
        out,
        "   `php artisan queue:work redis --queue=to-b` runs it; no other service's workers see it."
    )?;
    out.flush()?;
    Ok(())
}

/// Poll `check` until it gives a value, for at most [`STEP_TIMEOUT`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T, DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DemoError>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout {
                what: what.to_string(),
                timeout: STEP_TIMEOUT,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every entry of a stream, fields in their order.
async fn xrange(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<Vec<(String, Vec<(String, String)>)>, DemoError> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, flat)| {
            let pairs = flat
                .chunks(2)
                .map(|p| {
                    (
                        p.first().cloned().unwrap_or_default(),
                        p.get(1).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            (id, pairs)
        })
        .collect())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn write_fields(out: &mut dyn Write, fields: &[(String, String)]) -> std::io::Result<()> {
    for (k, v) in fields {
        writeln!(out, "     {k}: {v}")?;
    }
    out.flush()
}
