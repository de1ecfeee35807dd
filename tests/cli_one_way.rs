//! The command line without surprises: every command that reads a rule file takes it the same
//! way (`-c FILE`, `--config FILE`, or `FILE` last), a file with nothing to do says so, and the
//! README's own example with an unset variable gives one mistake, not two.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn router(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(router_bin())
        .args(args)
        .env_remove("REDIS_PASSWORD")
        .env_remove("REDIS_ROUTER_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run redis-router")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const ONE_RULE: &str = "connections:\n  default: { url: \"${REDIS_URL:-redis://127.0.0.1:9}\" }\nrules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: y } ]\n    tests:\n      - { input: '{}', expect: { sinks: [ { stream: y } ] } }\n";

#[test]
fn every_command_takes_the_file_with_c_or_last() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "routes.yaml", ONE_RULE);
    for args in [
        vec!["check", "-c", &file],
        vec!["check", "--config", &file],
        vec!["check", &file],
        vec!["test", "-c", &file],
        vec!["test", &file],
    ] {
        let out = router(&args, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = router(&["check", "-c", &file, "other.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("two rule files given"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The environment names it when nothing else does.
    let out = router(&["check"], &[("REDIS_ROUTER_CONFIG", &file)]);
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_and_run_take_it_both_ways_too() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "routes.yaml", ONE_RULE);
    let url = redis.url();
    for args in [vec!["dlq", "list", "-c", &file], vec!["dlq", "list", &file]] {
        let out = tokio::task::block_in_place(|| router(&args, &[("REDIS_URL", &url)]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "0 dead letters.\n");
    }
    // `run FILE`: the rule subscribes.
    let mut child = Command::new(router_bin())
        .args(["run", &file])
        .env("REDIS_URL", &url)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "x", 1).await;
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_file_with_nothing_to_do_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.yaml", "rules: []\n");
    let out = router(&["check", &empty], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{empty}: warning: no rules; the router would start and do nothing\n")
    );
    let untested = write(
        dir.path(),
        "untested.yaml",
        &ONE_RULE[..ONE_RULE.find("    tests:").unwrap()],
    );
    let out = router(&["test", &untested], &[]);
    assert_eq!(out.status.code(), Some(1), "nothing tested is not a pass");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{untested}: no rule has `tests:`; nothing was tested (see \"Testing rules\" in the README)\n")
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_readme_example_with_an_unset_password_gives_one_mistake() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    // The first YAML block of "The rule file", as a user copies it.
    let start = readme.find("## The rule file").unwrap();
    let block = &readme[start..];
    let yaml_start = block.find("```yaml\n").unwrap() + "```yaml\n".len();
    let yaml = &block[yaml_start..yaml_start + block[yaml_start..].find("```").unwrap()];
    assert!(yaml.contains("${REDIS_PASSWORD}"), "the example still uses it:\n{yaml}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "routes.yaml", yaml);
    let out = router(&["check", &file], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let mistakes: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&file)).collect();
    assert_eq!(mistakes.len(), 1, "{stderr}");
    assert!(mistakes[0].contains("`REDIS_PASSWORD` is not set"), "{stderr}");
    assert!(stderr.ends_with("1 error found.\n"), "{stderr}");
}
