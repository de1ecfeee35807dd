//! Test helpers around the real Laravel 8 fixture app in `tests/fixtures/laravel`: run its
//! queue worker, dispatch jobs the way a Laravel app does, read what the jobs logged, and ask
//! PHP how it normalises JSON.
//!
//! Everything shells out to `php` (installed by `scripts/install-php.sh`) under `timeout`, with
//! a cleared environment, so a `REDIS_URL` or `APP_KEY` meant for something else cannot leak
//! into the fixture. Only std and serde_json are used. The Redis server is the caller's
//! (`RedisServer` in `mod.rs`); these helpers only need its port.

// Each integration test compiles this module and uses a few of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How long one `php artisan` run may take before `timeout` kills it (exit status 124). A
/// `queue:work --stop-when-empty` over a few hundred jobs takes a few seconds.
const ARTISAN_TIMEOUT_SECS: &str = "60";

/// The fixture app's directory (holding `artisan`).
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/laravel")
}

/// `timeout 60 php artisan <args>` in the fixture, talking to `127.0.0.1:<redis_port>` with
/// key prefix `prefix` (`""` means no prefix, `"laravel_database_"` is Laravel's default).
///
/// Jobs append to `job_log` when given.
pub fn artisan(redis_port: u16, prefix: &str, job_log: Option<&Path>, args: &[&str]) -> Output {
    artisan_with(&[], redis_port, prefix, job_log, args)
}

/// As [`artisan`], with the fixture's `default` Redis connection a Redis Cluster reached
/// through `nodes` (ports on 127.0.0.1).
pub fn artisan_cluster(nodes: &[u16], prefix: &str, job_log: Option<&Path>, args: &[&str]) -> Output {
    let seeds: Vec<String> = nodes.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    artisan_with(
        &[("REDIS_CLUSTER_NODES", seeds.join(","))],
        nodes[0],
        prefix,
        job_log,
        args,
    )
}

fn artisan_with(
    env: &[(&str, String)],
    redis_port: u16,
    prefix: &str,
    job_log: Option<&Path>,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", ARTISAN_TIMEOUT_SECS, "php", "artisan"])
        .args(args)
        .current_dir(fixture_dir())
        .env_clear()
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", redis_port.to_string())
        .env("REDIS_PREFIX", prefix);
    // Keep what finding programs and temporary files needs, and the fixture's own overrides.
    for key in ["PATH", "TMPDIR", "LARAVEL_AUTOLOAD", "LARAVEL_RUNTIME_DIR"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    if let Some(path) = job_log {
        cmd.env("JOB_LOG", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `php artisan` (run scripts/install-php.sh to install PHP): {e}"))
}

/// Runs `php artisan queue:work redis --queue=<queue> --stop-when-empty --tries=1` until the
/// queue is empty, with the jobs appending to `job_log`.
///
/// Returns the worker's output for the caller to check: exit status 0 even when jobs failed
/// (failed jobs show as `FAILED` on stdout; the fixture has no failed_jobs table), 124 when
/// it ran into the timeout. Two traps (QUEUE-FORMAT.md §8): the worker stops at the first
/// payload it cannot decode, leaving the jobs behind it queued; and it stops as soon as the
/// list is empty, so wait until everything expected has been pushed before calling this.
pub fn run_worker(redis_port: u16, prefix: &str, queue: &str, job_log: &Path) -> Output {
    let queue_arg = format!("--queue={queue}");
    let args = [
        "queue:work",
        "redis",
        queue_arg.as_str(),
        "--stop-when-empty",
        "--tries=1",
    ];
    artisan(redis_port, prefix, Some(job_log), &args)
}

/// Dispatches `count` jobs of `class` with `json` as their data onto `queue`, as a Laravel app
/// does: `dispatch((new $class(json_decode($json, true)))->onQueue($queue))`.
///
/// `class` is a job class (`CALLP2` or `App\Jobs\SendInvoice`; a bare name is taken from
/// `App\Jobs`) or a handler (`App\Handlers\Orders@handle`, pushed with `Queue::push`).
///
/// # Panics
///
/// When the command fails, with its output.
pub fn dispatch_many(redis_port: u16, prefix: &str, class: &str, queue: &str, json: &str, count: usize) {
    let count_arg = format!("--count={count}");
    // `--` so that data such as `-7` is not taken for an option.
    let args = ["router:dispatch", count_arg.as_str(), "--", class, queue, json];
    let output = artisan(redis_port, prefix, None, &args);
    assert!(
        output.status.success(),
        "router:dispatch {class} {queue} {json} failed: {}",
        describe(&output)
    );
}

/// Dispatches one job; see [`dispatch_many`].
///
/// # Panics
///
/// When the command fails, with its output.
pub fn dispatch(redis_port: u16, prefix: &str, class: &str, queue: &str, json: &str) {
    dispatch_many(redis_port, prefix, class, queue, json, 1);
}

/// The lines the fixture's jobs appended to `path`, as `(class short name, JSON)`, e.g.
/// `("CALLP2", r#"{"a":1}"#)`. The JSON is `json_encode($data)`: compare it with
/// [`php_json_normalise`] of what was sent. A missing file means no job ran: empty.
///
/// # Panics
///
/// When the file exists but cannot be read, or a line has no tab.
pub fn read_job_log(path: &Path) -> Vec<(String, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read job log {}: {e}", path.display()),
    };
    text.lines()
        .map(|line| match line.split_once('\t') {
            Some((class, json)) => (class.to_owned(), json.to_owned()),
            None => panic!("job log line without a tab: {line:?}"),
        })
        .collect()
}

/// What PHP prints for `json_encode(json_decode($json, true))`: the form in which a job
/// logs the message it received (`{}` → `[]`, `/` → `\/`, non-ASCII → `\u00eb`, big integers
/// → floats, `2.0` → `2`).
///
/// # Panics
///
/// When `php` cannot run or `json` is not valid JSON to PHP.
pub fn php_json_normalise(json: &str) -> String {
    let code = r#"$v = json_decode($argv[1], true);
if (json_last_error() !== JSON_ERROR_NONE) { fwrite(STDERR, json_last_error_msg()); exit(1); }
echo json_encode($v);"#;
    let output = Command::new("php")
        .args(["-r", code, "--", json])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `php` (run scripts/install-php.sh to install PHP): {e}"));
    assert!(
        output.status.success(),
        "PHP cannot decode {json:?}: {}",
        describe(&output)
    );
    String::from_utf8(output.stdout).expect("json_encode output is ASCII")
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
