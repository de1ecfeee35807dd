//! `redis-router check`: every mistake on its own line with file:line:col, exit 78; a valid file
//! lists its rules and exits 0. Each invalid fixture is paired with the exact expected output.

mod support;

use std::process::Command;

use support::{repo_root, router_bin};

#[test]
fn invalid_fixtures_print_every_error_with_its_position() {
    let dir = repo_root().join("tests/fixtures/rules/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let rel = path.strip_prefix(repo_root()).expect("relative path");
        let out = Command::new(router_bin())
            .arg("check")
            .arg(rel)
            .current_dir(repo_root())
            .env_remove("ROUTER_TEST_UNSET_VAR")
            .output()
            .expect("run check");
        let expected = std::fs::read_to_string(path.with_extension("expected")).expect("expected output file");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "stderr of check {}",
            rel.display()
        );
        assert_eq!(out.status.code(), Some(78), "exit code of check {}", rel.display());
        assert!(out.stdout.is_empty());
        checked += 1;
    }
    assert!(checked >= 2, "fixtures found: {checked}");
}

#[test]
fn five_mistakes_give_five_lines() {
    let out = Command::new(router_bin())
        .args(["check", "tests/fixtures/rules/invalid/five-mistakes.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tests/")).collect();
    let positions: Vec<&str> = lines.iter().map(|l| l.split(": ").next().unwrap_or("")).collect();
    assert_eq!(
        positions,
        [
            "tests/fixtures/rules/invalid/five-mistakes.yaml:8:9",
            "tests/fixtures/rules/invalid/five-mistakes.yaml:10:39",
            "tests/fixtures/rules/invalid/five-mistakes.yaml:14:13",
            "tests/fixtures/rules/invalid/five-mistakes.yaml:18:25",
            "tests/fixtures/rules/invalid/five-mistakes.yaml:19:11",
        ]
    );
    assert!(lines[0].ends_with("did you mean `maxlen`?"), "{}", lines[0]);
}

#[test]
fn example_file_passes() {
    let out = Command::new(router_bin())
        .args(["check", "routes.example.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l == "orders-to-stream: channel events:order -> stream processed_stream"),
        "{stdout}"
    );
}

#[test]
fn check_reports_malformed_test_cases_too() {
    let out = Command::new(router_bin())
        .args(["check", "tests/fixtures/tests/invalid-cases.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l
            == "tests/fixtures/tests/invalid-cases.yaml: rule \"orders-to-stream\": tests[0].expect.sinks[0].feilds: unknown key `feilds`; did you mean `fields`?"),
        "{stderr}"
    );
    assert!(stderr.ends_with("6 errors found.\n"), "{stderr}");
}
