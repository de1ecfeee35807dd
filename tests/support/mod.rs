//! Test helpers: a real redis-server per test, the router in-process or as a process, and
//! waiting for conditions instead of sleeping.

#![allow(dead_code)]

pub mod cluster;
pub mod hook;
pub mod laravel;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis_router::config::{self, RuleSet};
use redis_router::engine::Supervisor;
use redis_router::stats::StatsRegistry;
use tokio_util::sync::CancellationToken;

/// Every await in a test is bounded by this unless it says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on loopback (bound, then released for the server to take).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A redis-server of the test's own, on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Start one and wait until it answers PING. Panics with the server's log if it does not.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// As [`RedisServer::start`], with more redis-server arguments (TLS, persistence).
    pub fn start_with(extra: &[String]) -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut server = RedisServer {
                port: free_port(),
                child: None,
                dir,
                extra: extra.to_vec(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    fn binary() -> String {
        std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
    }

    /// The server's working directory (its AOF and RDB files when persistence is on).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawn on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new(Self::binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (install redis-server or set REDIS_SERVER_BIN)",
                    Self::binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer PING in 10 s; log:\n{}",
            self.port,
            self.log()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A connection for the test's own commands.
    pub async fn conn(&self) -> MultiplexedConnection {
        // redis-rs answers "timed out" after 500 ms by default; a test reading 50,000 entries
        // back needs longer.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(TIMEOUT));
        within(self.client().get_multiplexed_async_connection_with_config(&config))
            .await
            .unwrap_or_else(|e| panic!("connect to test redis: {e}; log:\n{}", self.log()))
    }

    /// Kill the server (as a crash would: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start one on `port` (a router may already be trying to reach it).
    pub fn start_on(port: u16, extra: &[String]) -> RedisServer {
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.to_vec(),
        };
        assert!(
            server.spawn(),
            "redis-server did not start on port {port}; log:\n{}",
            server.log()
        );
        server
    }

    /// Stop with SHUTDOWN (persistence files are written, as on a planned restart) and start
    /// again on the same port with the same directory.
    pub fn shutdown_and_restart(&mut self) {
        if let Ok(mut c) = self.client().get_connection_with_timeout(Duration::from_secs(2)) {
            let _ = redis::cmd("SHUTDOWN").query::<()>(&mut c);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.respawn();
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.respawn();
    }

    /// Spawn again on the same port, retrying for 10 s while the old process releases it.
    fn respawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- redis-server log (port {}) ---\n{}", self.port, self.log());
        }
        self.stop();
    }
}

/// Await `f` under [`TIMEOUT`], panicking with a clear message when it takes longer.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f).await.expect("operation timed out")
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until `channel` has `n` subscribers.
pub async fn wait_subscribers(conn: &mut MultiplexedConnection, channel: &str, n: i64) {
    wait_for(&format!("{n} subscriber(s) on {channel}"), TIMEOUT, || {
        let mut conn = conn.clone();
        let channel = channel.to_string();
        async move {
            let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .ok()?;
            let count = match reply.get(1) {
                Some(redis::Value::Int(c)) => *c,
                _ => 0,
            };
            (count >= n).then_some(())
        }
    })
    .await
}

/// Wait until `pattern` is subscribed by at least one client.
pub async fn wait_psubscribed(conn: &mut MultiplexedConnection) {
    wait_for("a pattern subscription", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query_async(&mut conn).await.ok()?;
            (n >= 1).then_some(())
        }
    })
    .await
}

/// Wait until consumer group `group` exists on `stream`.
pub async fn wait_group(conn: &mut MultiplexedConnection, stream: &str, group: &str) {
    wait_for(&format!("group {group} on {stream}"), TIMEOUT, || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.to_string(), group.to_string());
        async move {
            let groups: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .ok()?;
            let text = format!("{groups:?}");
            text.contains(&format!("{:?}", group.as_bytes()))
                .then_some(())
                .or_else(|| {
                    // RESP2 bulk strings print as byte arrays; also accept a plain match.
                    text.contains(&group).then_some(())
                })
        }
    })
    .await
}

/// Wait until consumer group `group` of `stream` has no pending entry (everything acknowledged).
pub async fn wait_nothing_pending(conn: &MultiplexedConnection, stream: &str, group: &str) {
    wait_for(&format!("nothing pending in {stream}/{group}"), TIMEOUT, || {
        let mut conn = conn.clone();
        let (stream, group) = (stream.to_string(), group.to_string());
        async move {
            let p: redis::Value = conn.xpending(&stream, &group).await.ok()?;
            matches!(p, redis::Value::Array(ref s) if s.first() == Some(&redis::Value::Int(0))).then_some(())
        }
    })
    .await
}

/// Every entry of a stream as (id, fields).
pub async fn xrange(conn: &mut MultiplexedConnection, stream: &str) -> Vec<(String, Vec<(String, String)>)> {
    let reply: redis::streams::StreamRangeReply = within(conn.xrange_all(stream)).await.expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let mut fields: Vec<(String, String)> = e
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref::<String>(v).unwrap_or_default()))
                .collect();
            fields.sort();
            (e.id, fields)
        })
        .collect()
}

/// Wait until `stream` holds at least `n` entries; returns them.
pub async fn wait_stream_len(
    conn: &MultiplexedConnection,
    stream: &str,
    n: usize,
) -> Vec<(String, Vec<(String, String)>)> {
    wait_for(&format!("{n} entries in {stream}"), TIMEOUT, || {
        let mut conn = conn.clone();
        let stream = stream.to_string();
        async move {
            let len: usize = conn.xlen(&stream).await.ok()?;
            if len >= n {
                Some(xrange(&mut conn, &stream).await)
            } else {
                None
            }
        }
    })
    .await
}

/// `GET http://127.0.0.1:PORT/PATH` of a router's HTTP endpoint: status and body, `None` while
/// it does not answer.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let resp = client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The value of field `name` of a stream entry's fields (empty when absent).
pub fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The router running in-process on the test's runtime.
pub struct Daemon {
    pub root: CancellationToken,
    pub supervisor: Option<Supervisor>,
    pub stats: StatsRegistry,
}

impl Daemon {
    /// Counter `name` of `rule`.
    pub fn counter(&self, rule: &str, name: &str) -> u64 {
        self.stats.rule(rule).snapshot()[name]
    }

    /// Stop every rule and wait for them.
    pub async fn stop(mut self) {
        if let Some(s) = self.supervisor.take() {
            within(s.shutdown()).await;
        }
    }
}

/// Parse `yaml` (which may use `${REDIS_URL}`; set per call through `url`) and start its rules.
pub async fn spawn_daemon(yaml: &str, url: &str) -> Daemon {
    let set = load(yaml, url);
    let root = CancellationToken::new();
    let stats = StatsRegistry::default();
    let mut supervisor = Supervisor::new(root.clone(), stats.clone(), Duration::from_secs(10));
    supervisor.apply(&set).await;
    Daemon {
        root,
        supervisor: Some(supervisor),
        stats,
    }
}

/// Load rule text with `REDIS_URL` answered by `url`.
pub fn load(yaml: &str, url: &str) -> RuleSet {
    let url = url.to_string();
    let env = move |name: &str| match name {
        "REDIS_URL" => Some(url.clone()),
        other => std::env::var(other).ok(),
    };
    config::load_str_with_env(yaml, "test.yaml", &env).unwrap_or_else(|e| panic!("test rule file invalid:\n{e}"))
}

/// The built `redis-router` binary.
pub fn router_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redis-router"))
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A router process; killed on drop. Its stderr goes to a file shown when a test fails.
pub struct RouterProcess {
    pub child: Child,
    pub log: PathBuf,
    /// The rule file it runs (tests rewrite it to trigger reloads).
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

impl RouterProcess {
    /// Run `redis-router run -c <file with yaml>` with `REDIS_URL=url`.
    pub fn start(yaml: &str, url: &str) -> RouterProcess {
        Self::start_with(yaml, url, &[])
    }

    /// As [`RouterProcess::start`], with more arguments after `run` (`--listen …`).
    pub fn start_with(yaml: &str, url: &str, extra: &[&str]) -> RouterProcess {
        Self::start_instance(yaml, url, extra, None)
    }

    /// As [`RouterProcess::start_with`], as instance `instance` (`REDIS_ROUTER_INSTANCE`, so its
    /// consumer name is `HOST-INSTANCE` and `${REDIS_ROUTER_INSTANCE}` in the file names it).
    pub fn start_instance(yaml: &str, url: &str, extra: &[&str], instance: Option<&str>) -> RouterProcess {
        Self::start_under(&[], yaml, url, extra, instance)
    }

    /// As [`RouterProcess::start_instance`], the router run by `wrapper` (`prlimit --as=…`).
    pub fn start_under(
        wrapper: &[&str],
        yaml: &str,
        url: &str,
        extra: &[&str],
        instance: Option<&str>,
    ) -> RouterProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, yaml).expect("write rules");
        let env: Vec<(&str, &str)> = instance.map(|i| ("REDIS_ROUTER_INSTANCE", i)).into_iter().collect();
        Self::spawn(wrapper, dir, file, url, extra, &env)
    }

    /// Run `redis-router run -c file` where `file` (already written, maybe through symlinks)
    /// lies under `dir`; the log goes to `dir/router.log`. `env` is set last, so it can
    /// override `RUST_LOG` (default `info`).
    pub fn start_at(
        dir: tempfile::TempDir,
        file: PathBuf,
        url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RouterProcess {
        Self::spawn(&[], dir, file, url, extra, env)
    }

    fn spawn(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        file: PathBuf,
        url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RouterProcess {
        let log = dir.path().join("router.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(router_bin());
                c
            }
            None => Command::new(router_bin()),
        };
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&file)
            .args(extra)
            .env("REDIS_URL", url)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn redis-router");
        RouterProcess {
            child,
            log,
            file,
            _dir: dir,
        }
    }

    /// Replace the rule file the way an editor does: write a temporary file, rename it over.
    pub fn write_renamed(&self, text: &str) {
        let tmp = self.file.with_file_name(".routes.yaml.swp");
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &self.file).expect("rename over the rule file");
    }

    /// Overwrite the rule file in place.
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(&self.file, text).expect("write rule file");
    }

    /// Wait for a log line containing every one of `needles`; returns it.
    pub async fn wait_line(&self, what: &str, needles: &[&str]) -> String {
        wait_for(what, TIMEOUT, || async {
            self.log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        })
        .await
    }

    /// Wait until each rule of `names` logged that it started (a Pub/Sub rule is subscribed
    /// then: rules of one connection share one subscriber, so counting subscribers cannot tell).
    pub async fn wait_rules_started(&self, names: &[&str]) {
        for name in names {
            self.wait_line(
                &format!("rule {name} started"),
                &[&format!("rule{{rule={name} "), "Rule started."],
            )
            .await;
        }
    }

    /// How many log lines contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn child_running(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}/status", self.child.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .unwrap_or_default()
                .contains("State:\tZ")
    }

    /// The process's peak resident set size in KiB (VmHWM), and its current one (VmRSS).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Send a signal by name (`TERM`, `KILL`, `HUP`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "router did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- router log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
