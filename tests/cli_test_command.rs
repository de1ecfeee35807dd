//! `redis-router test FILE`: each rule's `tests:` run offline. The example file passes; a wrong
//! expectation fails with a diff of expected against actual and exit 1; mistakes in `tests:`
//! are all listed before anything runs, with exit 78 as `check` gives. Each fixture under
//! tests/fixtures/tests/ is paired with its exact expected output.

mod support;

use std::process::{Command, Output};

use support::{repo_root, router_bin};

/// Run `redis-router test FILE` from the repository root, with a Redis URL nothing listens on:
/// the command must not need one.
fn run_test(file: &str) -> Output {
    Command::new(router_bin())
        .args(["test", file])
        .current_dir(repo_root())
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run redis-router test")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures/tests").join(name)).expect("fixture")
}

#[test]
fn example_file_passes_without_redis() {
    let out = run_test("routes.example.yaml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok   orders-to-stream: a big order is kept in processed_stream\n\
         ok   orders-to-stream: a small order is filtered out\n\
         ok   demo-stream-to-processed: an entry is copied with its id\n\
         ok   demo-stream-to-b: an entry becomes a CALLP2 job on B's queue\n\
         4 passed, 0 failed\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn wrong_expectations_fail_with_a_diff() {
    let out = run_test("tests/fixtures/tests/wrong-expectation.yaml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        fixture("wrong-expectation.expected")
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn mistakes_in_tests_are_all_listed_and_nothing_runs() {
    let out = run_test("tests/fixtures/tests/invalid-cases.yaml");
    assert_eq!(String::from_utf8_lossy(&out.stderr), fixture("invalid-cases.expected"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn an_invalid_rule_file_is_reported_as_check_does() {
    let out = run_test("tests/fixtures/rules/invalid/five-mistakes.yaml");
    let check = Command::new(router_bin())
        .args(["check", "tests/fixtures/rules/invalid/five-mistakes.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run redis-router check");
    assert_eq!(out.stderr, check.stderr);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn the_readme_example_passes() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split_once("### Testing rules\n\n```yaml\n")
        .expect("a yaml block right under ### Testing rules")
        .1;
    let rule = section.split_once("```").expect("the end of the yaml block").0;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("readme.yaml");
    std::fs::write(&file, format!("rules:\n{rule}")).expect("write the example");
    let out = run_test(file.to_str().expect("a UTF-8 path"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok   orders-to-stream: a big order is kept\n\
         ok   orders-to-stream: a small order is filtered out\n\
         2 passed, 0 failed\n"
    );
    assert_eq!(out.status.code(), Some(0));
}
