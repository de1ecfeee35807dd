//! `redis-router check` on hostile rule files: special files in place of the file (a FIFO with
//! no writer, a directory, a socket, a device that never ends), a 50 MB file, YAML aliases that
//! multiply, and 10,000 rules with and without a mistake. Each answers quickly with a clear
//! error (exit 78) or the rules, never a hang or unbounded memory.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::router_bin;

/// Run `check path`, killing it (and failing) after `limit`. Its output goes to files, not
/// pipes, so that a long listing cannot block it while it is being waited for.
fn check_within(path: &Path, limit: Duration) -> (Output, Duration) {
    let outputs = tempfile::tempdir().expect("tempdir");
    let stdout_path = outputs.path().join("stdout");
    let stderr_path = outputs.path().join("stderr");
    let start = Instant::now();
    let mut child = Command::new(router_bin())
        .arg("check")
        .arg(path)
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run check");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "check {} still running after {limit:?}; stderr so far:\n{}",
                path.display(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let output = Output {
        status,
        stdout: std::fs::read(&stdout_path).expect("stdout"),
        stderr: std::fs::read(&stderr_path).expect("stderr"),
    };
    (output, took)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn special_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo.yaml");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let directory = d.join("dir.yaml");
    std::fs::create_dir(&directory).unwrap();
    let socket = d.join("socket.yaml");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // A device that never ends: reading it whole would take all memory.
    let device = d.join("device.yaml");
    std::os::unix::fs::symlink("/dev/zero", &device).unwrap();

    for (path, kind) in [
        (&fifo, "a FIFO"),
        (&directory, "a directory"),
        (&socket, "a socket"),
        (&device, "a character device"),
    ] {
        let (out, _) = check_within(path, Duration::from_secs(10));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{}: {err}", path.display());
        assert_eq!(
            err,
            format!(
                "cannot read {}: it is {kind}, not a regular file (a rule file must be a regular file or a symlink to one)\n",
                path.display()
            )
        );
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    // Valid YAML: one rule and 50 MB of comment.
    let mut text = String::from("rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: y } ]\n");
    let comment = format!("# {}\n", "x".repeat(98));
    while text.len() < 50 * 1024 * 1024 {
        text.push_str(&comment);
    }
    std::fs::write(&path, &text).unwrap();
    let (out, took) = check_within(&path, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "cannot read {}: it holds {} bytes, more than the 8 MiB a rule file may hold\n",
            path.display(),
            text.len()
        )
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Nine levels of nine aliases each: 9^9 (387 million) strings if expanded.
fn billion_laughs() -> String {
    let mut out =
        String::from("rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: y } ]\n    transform:\n");
    out.push_str("      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..9 {
        let prev = format!("*l{}", level - 1);
        let items = [prev.as_str(); 9].join(", ");
        out.push_str(&format!("      l{level}: &l{level} [{items}]\n"));
    }
    out
}

#[test]
fn aliases_that_multiply_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("laughs.yaml");
    std::fs::write(&path, billion_laughs()).unwrap();
    let (out, took) = check_within(&path, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let first = err.lines().next().unwrap_or_default();
    let file = path.display().to_string();
    assert!(first.starts_with(&format!("{file}:")), "{err}");
    assert!(
        first.ends_with(
            ": the file expands to more than 100000 values through aliases (`*name`) that repeat anchors (`&name`)"
        ),
        "{err}"
    );
    assert!(err.ends_with("1 error found.\n"), "{err}");
    eprintln!("check on the billion-laughs file: {took:?}");
}

fn many_rules(n: usize, typo_at: Option<usize>) -> String {
    let mut out = String::from("rules:\n");
    for i in 0..n {
        let source = if typo_at == Some(i) { "sorce" } else { "source" };
        out.push_str(&format!(
            "  - name: r{i}\n    {source}: {{ channel: \"in:{i}\" }}\n    sinks: [ {{ stream: \"out:{i}\" }} ]\n"
        ));
    }
    out
}

/// Generous for a debug build on a shared machine (about 10 s unloaded); the figures in
/// README and report are for release, about a second.
const TEN_THOUSAND_RULES_LIMIT: Duration = Duration::from_secs(180);

#[test]
fn ten_thousand_rules_check_in_reasonable_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.yaml");
    std::fs::write(&path, many_rules(10_000, None)).unwrap();
    let (out, took) = check_within(&path, TEN_THOUSAND_RULES_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One line per rule, then one per Redis server with the clients the file opens there.
    assert_eq!(stdout.lines().filter(|l| !l.starts_with('#')).count(), 10_000);
    assert_eq!(stdout.lines().filter(|l| l.starts_with('#')).count(), 1, "{stdout}");
    eprintln!("check on 10,000 rules: {took:?}");

    // One mistake in the middle: the file is parsed again, rule by rule, to report every
    // mistake. That must cost a few parses of the file, not time in proportion to the square
    // of its length (each rule used to be parsed behind as many blank lines as came before
    // it: 5.6 times the valid file's time here, 54 s in a debug build).
    std::fs::write(&path, many_rules(10_000, Some(5_000))).unwrap();
    let (out, took_bad) = check_within(&path, TEN_THOUSAND_RULES_LIMIT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert_eq!(
        err,
        format!(
            "{}:15003:5: rule \"r5000\": unknown key `sorce`; did you mean `source`?\n1 error found.\n",
            path.display()
        )
    );
    eprintln!("check on 10,000 rules with one mistake: {took_bad:?}");
    assert!(
        took_bad < took * 4,
        "one mistake made check take {took_bad:?} instead of {took:?}"
    );
}
