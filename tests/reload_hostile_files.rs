//! The rule file of a running router under hostile conditions: a deploy that swaps a symlinked
//! parent directory, a chain of symlinks with absolute and relative targets, a FIFO, a 50 MB
//! file or nothing at all in the file's place, and trace logging into the watched directory.
//! Each change is noticed within the debounce and reloads once (or is rejected with a clear
//! error while the running rules stay); nothing else in the directory costs a reload or a log
//! line; SIGTERM is never held up.
//!
//! Every test runs the router as a process with a short `--reload-debounce` and reads what it
//! did from its log.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::*;

const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long a change may take to show as a reload: the debounce plus room for a loaded
/// machine. The old watcher never noticed a parent-directory swap at all.
const PROMPT: Duration = Duration::from_secs(5);

/// Rule file text: one channel rule per name.
fn rules(names: &[&str]) -> String {
    let mut out = String::from("connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n");
    for name in names {
        out.push_str(&format!(
            "  - name: {name}\n    source: {{ channel: \"in:{name}\" }}\n    sinks: [ {{ stream: \"out:{name}\" }} ]\n"
        ));
    }
    out
}

fn debounce_arg() -> String {
    format!("{}ms", DEBOUNCE.as_millis())
}

/// Point `link` at `target` atomically, as deploy tools do (`ln -s target tmp && mv -T tmp link`).
fn swap_symlink(link: &Path, target: impl AsRef<Path>) {
    let tmp = link.with_file_name(".swap.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create the new link");
    std::fs::rename(&tmp, link).expect("rename the new link over the old one");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the directory");
    std::fs::write(path, text).expect("write");
}

/// Wait, at most [`PROMPT`], for the reload to `generation`; returns its log line and how long
/// it took.
async fn wait_reload(router: &RouterProcess, generation: u64) -> (String, Duration) {
    let start = Instant::now();
    let needle = format!(" generation={generation} ");
    let line = wait_for(&format!("reload to generation {generation}"), PROMPT, || async {
        router
            .log()
            .lines()
            .find(|l| l.contains("Rules reloaded.") && l.contains(&needle))
            .map(str::to_string)
    })
    .await;
    (line, start.elapsed())
}

/// A negative check: give the watcher three debounce periods to act on what was just done,
/// then require that it did nothing.
async fn assert_no_reload_follows(router: &RouterProcess, what: &str) {
    let reloads = router.count("Rules reloaded.");
    let rejected = router.count("Reload rejected");
    tokio::time::sleep(DEBOUNCE * 3).await;
    assert_eq!(
        (router.count("Rules reloaded."), router.count("Reload rejected")),
        (reloads, rejected),
        "{what} caused a reload:\n{}",
        router.log()
    );
}

fn start(dir: tempfile::TempDir, file: PathBuf, url: &str, env: &[(&str, &str)]) -> RouterProcess {
    RouterProcess::start_at(
        dir,
        file,
        url,
        &["--reload-debounce", &debounce_arg(), "--drain-timeout", "2s"],
        env,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_directory_symlink_swap_reloads_once_and_the_watch_follows_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // /srv/app/current -> releases/v1, the rule file given as current/routes.yaml.
    write(&root.join("releases/v1/routes.yaml"), &rules(&["base"]));
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let router = start(dir, root.join("current/routes.yaml"), &redis.url(), &[]);
    router.wait_line("the router to start", &["Router started."]).await;

    // The deploy: a new release, then the swap.
    write(&root.join("releases/v2/routes.yaml"), &rules(&["base", "second"]));
    swap_symlink(&root.join("current"), "releases/v2");
    let (line, took) = wait_reload(&router, 2).await;
    assert!(
        line.contains(" trigger=file ") && line.contains(r#"added=["second"]"#),
        "{line}"
    );
    assert!(took < DEBOUNCE + Duration::from_secs(3), "noticed after {took:?}");
    let moved = router
        .wait_line(
            "the log of the new target",
            &["The rule file now resolves to", "releases/v2/routes.yaml"],
        )
        .await;
    assert!(moved.contains("INFO"), "{moved}");

    // The old release is no longer what the file reads as: writing it changes nothing.
    write(&root.join("releases/v1/routes.yaml"), &rules(&["base", "old"]));
    assert_no_reload_follows(&router, "writing the old release").await;

    // A second swap is noticed too, and so is a write in place in the release it points at.
    write(
        &root.join("releases/v3/routes.yaml"),
        &rules(&["base", "second", "third"]),
    );
    swap_symlink(&root.join("current"), "releases/v3");
    let (line, _) = wait_reload(&router, 3).await;
    assert!(line.contains(r#"added=["third"]"#), "{line}");
    write(
        &root.join("releases/v3/routes.yaml"),
        &rules(&["base", "second", "third", "fourth"]),
    );
    let (line, _) = wait_reload(&router, 4).await;
    assert!(line.contains(r#"added=["fourth"]"#), "{line}");

    assert_eq!(
        router.count("Rules reloaded."),
        3,
        "one reload per change:\n{}",
        router.log()
    );
    assert_eq!(router.count("Reload rejected"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_symlinks_with_absolute_and_relative_targets_is_followed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // link -> hop (relative), hop -> ROOT/deploy-a (absolute), and the file itself a relative
    // link into another directory: deploy-a/routes.yaml -> ../shared/a.yaml.
    write(&root.join("shared/a.yaml"), &rules(&["base"]));
    std::fs::create_dir(root.join("deploy-a")).unwrap();
    std::os::unix::fs::symlink("../shared/a.yaml", root.join("deploy-a/routes.yaml")).unwrap();
    std::os::unix::fs::symlink(root.join("deploy-a"), root.join("hop")).unwrap();
    std::os::unix::fs::symlink("hop", root.join("link")).unwrap();
    let router = start(dir, root.join("link/routes.yaml"), &redis.url(), &[]);
    router.wait_line("the router to start", &["Router started."]).await;

    // The file at the end of the chain, written in place, two directories away.
    write(&root.join("shared/a.yaml"), &rules(&["base", "second"]));
    let (line, _) = wait_reload(&router, 2).await;
    assert!(line.contains(r#"added=["second"]"#), "{line}");

    // The middle of the chain swapped to another absolute target.
    write(&root.join("shared/b.yaml"), &rules(&["base", "second", "third"]));
    std::fs::create_dir(root.join("deploy-b")).unwrap();
    std::os::unix::fs::symlink("../shared/b.yaml", root.join("deploy-b/routes.yaml")).unwrap();
    swap_symlink(&root.join("hop"), root.join("deploy-b"));
    let (line, took) = wait_reload(&router, 3).await;
    assert!(line.contains(r#"added=["third"]"#), "{line}");
    assert!(took < DEBOUNCE + Duration::from_secs(3), "noticed after {took:?}");

    // The new end of the chain is watched; the old one no longer is.
    write(
        &root.join("shared/b.yaml"),
        &rules(&["base", "second", "third", "fourth"]),
    );
    let (line, _) = wait_reload(&router, 4).await;
    assert!(line.contains(r#"added=["fourth"]"#), "{line}");
    write(&root.join("shared/a.yaml"), &rules(&["base", "stale"]));
    assert_no_reload_follows(&router, "writing the file the chain used to end at").await;

    assert_eq!(router.count("Rules reloaded."), 3, "{}", router.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_into_the_watched_directory_reloads_nothing_and_stays_small() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let file = root.join("routes.yaml");
    write(&file, &rules(&["base"]));
    // `RUST_LOG=trace redis-router run -c dir/routes.yaml 2>>dir/router.log`.
    let router = start(dir, file.clone(), &redis.url(), &[("RUST_LOG", "trace")]);
    router.wait_line("the router to start", &["Router started."]).await;

    // Other names in the directory: the router's own log (written all the time) and a file
    // written a thousand times. Then one real change, which must be the only reload.
    let other = root.join("other.log");
    for i in 0..1000 {
        std::fs::write(&other, format!("line {i}\n")).unwrap();
    }
    write(&file, &rules(&["base", "second"]));
    let (line, _) = wait_reload(&router, 2).await;
    assert!(line.contains(r#"added=["second"]"#), "{line}");

    // Idle now: the log must not feed itself. Over ten debounce periods the trace log grows
    // by what an idle router writes, not by a loop (the old watcher wrote ~100,000 lines/s).
    let size = || std::fs::metadata(&router.log).map(|m| m.len()).unwrap_or(0);
    let before = size();
    tokio::time::sleep(DEBOUNCE * 10).await;
    let grown = size() - before;
    assert!(
        grown < 64 * 1024,
        "the log grew by {grown} bytes in {:?} while idle",
        DEBOUNCE * 10
    );
    assert_eq!(router.count("Rules reloaded."), 1, "only the rule file reloads");
    assert_eq!(router.count("Rule file event without a change of content"), 0);
    assert_eq!(router.count("Reload rejected"), 0);
    let total = size();
    assert!(total < 4 * 1024 * 1024, "the whole trace log is {total} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_an_oversized_file_is_refused_and_sigterm_still_stops_in_time() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let file = root.join("routes.yaml");
    write(&file, &rules(&["base"]));
    let mut router = start(dir, file.clone(), &redis.url(), &[]);
    router.wait_line("the router to start", &["Router started."]).await;
    wait_subscribers(&mut conn, "in:base", 1).await;

    // A FIFO renamed over the rule file: nobody writes it, and opening it for reading would
    // wait for a writer forever.
    let fifo = root.join(".routes.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    std::fs::rename(&fifo, &file).unwrap();
    let line = router
        .wait_line("the FIFO to be refused", &["Reload rejected", "is a FIFO"])
        .await;
    assert!(line.contains("not a regular file"), "{line}");
    // The running rules stay: a message still goes through.
    let _: () = conn.publish("in:base", r#"{"n":1}"#).await.unwrap();
    wait_stream_len(&conn, "out:base", 1).await;

    // A 50 MB file (valid YAML: the rules and a long comment) is refused by its size, unread.
    let mut big = rules(&["base", "huge"]);
    let comment = format!("# {}\n", "x".repeat(98));
    while big.len() < 50 * 1024 * 1024 {
        big.push_str(&comment);
    }
    let tmp = root.join(".routes.big");
    std::fs::write(&tmp, &big).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let line = router
        .wait_line("the 50 MB file to be refused", &["Reload rejected", "8 MiB"])
        .await;
    assert!(
        line.contains("bytes, more than the 8 MiB a rule file may hold"),
        "{line}"
    );

    // The reload loop is not stuck: a good file applies.
    let tmp = root.join(".routes.good");
    std::fs::write(&tmp, rules(&["base", "second"])).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let (line, _) = wait_reload(&router, 2).await;
    assert!(line.contains(r#"added=["second"]"#), "{line}");
    assert_eq!(router.count("Rules reloaded."), 1, "{}", router.log());

    // A FIFO again, and SIGTERM right behind it: the router stops within its drain timeout.
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    std::fs::rename(&fifo, &file).unwrap();
    tokio::time::sleep(DEBOUNCE * 2).await;
    router.signal("TERM");
    let code = router.wait_exit(Duration::from_secs(2) + Duration::from_secs(3));
    assert_eq!(code, Some(0), "{}", router.log());
}
