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
            == "tests/fixtures/tests/invalid-cases.yaml:15:15: rule \"orders-to-stream\": tests[0].expect.sinks[0].feilds: unknown key `feilds`; did you mean `fields`?"),
        "{stderr}"
    );
    assert!(stderr.ends_with("6 errors found.\n"), "{stderr}");
}

#[test]
fn check_counts_the_redis_clients_of_each_server() {
    let out = Command::new(router_bin())
        .args(["check", "tests/fixtures/rules/valid/connections.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<&str> = stdout.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(
        counts,
        [
            // orders and refunds share default's subscription connection, every-event has
            // laravel's, and slow-but-complete (overflow: block) one of its own.
            "# 127.0.0.1:6390 db 0 (connections: default, laravel): 7 clients = 2 blocking (stream and queue rules) + 2 shared + 3 subscription",
            "# 127.0.0.1:6391 db 2 (connections: other): 2 clients = 1 blocking (stream and queue rules) + 1 shared + 0 subscription",
            "# cluster via 10.0.0.7:6379 (every node) (connections: shared): 2 clients per node = 0 blocking (stream and queue rules) + 1 shared + 1 subscription",
        ],
        "{stdout}"
    );
}

/// The count `check` states is what Redis sees once the rules run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counted_clients_are_the_clients_redis_sees() {
    let redis = support::RedisServer::start();
    let mut conn = redis.conn().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.yaml");
    let mut yaml = String::from(
        "connections:\n  default: { url: \"${REDIS_URL}\" }\n  laravel: { url: \"${REDIS_URL}\", prefix: \"laravel_database_\" }\n  other: { url: \"${REDIS_URL}/2\" }\nrules:\n",
    );
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - name: ch-{i}\n    source: {{ channel: \"c:{i}\" }}\n    sinks: [ {{ stream: out, connection: other }} ]\n"
        ));
    }
    yaml.push_str(
        "  - name: pat\n    source: { pattern: \"p:*\", connection: laravel }\n    sinks: [ { stream: out } ]\n",
    );
    yaml.push_str(
        "  - name: blocking\n    source: { channel: \"b\", overflow: block }\n    sinks: [ { stream: out } ]\n",
    );
    yaml.push_str(
        "  - name: copy\n    source: { stream: in, group: g, block: 100ms }\n    sinks: [ { stream: out } ]\n",
    );
    yaml.push_str("  - name: jobs\n    source: { queue: jobs, connection: laravel, block: 100ms }\n    sinks: [ { stream: out } ]\n");
    std::fs::write(&file, &yaml).expect("write rules");
    let out = Command::new(router_bin())
        .arg("check")
        .arg(&file)
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let predicted: usize = stdout
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            let after = l.split("): ").nth(1).unwrap_or_default();
            after
                .split(' ')
                .next()
                .unwrap_or_default()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    // 20 channel rules: one subscription connection; the pattern rule another (laravel); the
    // blocking one its own; two blocking readers; shared connections for default, laravel and
    // other.
    assert_eq!(predicted, 3 + 2 + 3, "{stdout}");

    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let router = support::RouterProcess::start_with(&yaml, &redis.url(), &["--listen", &listen]);
    support::wait_for("every rule running", support::TIMEOUT, || async {
        let client = reqwest::Client::new();
        let resp = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        (resp.status().as_u16() == 200).then_some(())
    })
    .await;
    // Every rule has touched each of its connections once traffic went through it.
    let mut pipe = redis::pipe();
    for i in 0..20 {
        pipe.publish(format!("c:{i}"), "{}").ignore();
    }
    pipe.publish("laravel_database_p:x", "{}").ignore();
    pipe.publish("b", "{}").ignore();
    let _: () = support::within(pipe.query_async(&mut conn)).await.expect("publish");
    let mut db2 = support::within(
        redis::Client::open(format!("{}/2", redis.url()))
            .expect("client")
            .get_multiplexed_async_connection(),
    )
    .await
    .expect("db 2");
    let _: () = support::within(redis::cmd("CLIENT").arg("SETNAME").arg("test").query_async(&mut db2))
        .await
        .expect("SETNAME");
    support::wait_for("22 messages delivered", support::TIMEOUT, || {
        let (mut c, mut d) = (conn.clone(), db2.clone());
        async move {
            let n: usize = redis::cmd("XLEN").arg("out").query_async(&mut c).await.ok()?;
            let m: usize = redis::cmd("XLEN").arg("out").query_async(&mut d).await.ok()?;
            (n == 2 && m == 20).then_some(())
        }
    })
    .await;
    let list: String = support::within(redis::cmd("CLIENT").arg("LIST").query_async(&mut conn))
        .await
        .expect("CLIENT LIST");
    let router_clients = list
        .lines()
        .filter(|l| !l.contains("cmd=client|list") && !l.contains(" name=test "))
        .count();
    assert_eq!(
        router_clients, predicted,
        "check said {predicted}:\n{stdout}\nRedis lists:\n{list}"
    );
    drop(router);
}

/// serde stops at a rule's first unknown key or mistyped value; `check` goes on past it, so a
/// user fixes the whole rule in one round, each mistake once, at the position they wrote it.
#[test]
fn check_reports_every_mistake_of_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        r#"rules:
  - name: a
    source: { chanel: x, buffr: 3 }
    filtr: "@.a == "
    sinks:
      - stream: y
        max_len: 3
      - webhook: "ftp://x"
        timeout: 5q
    on_error: { retry: { attempts: -1 } }
    tests:
      - input: '{}'
        expct: { filtered_out: 1 }
  - name: b
    source: { stream: s, batch: 0 }
    sinks: [ { publish: "" } ]
"#,
    )
    .unwrap();
    let out = Command::new(router_bin())
        .arg("check")
        .arg(&file)
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display().to_string();
    let expected = [
        format!("{f}:3:15: rule \"a\": unknown key `chanel`; did you mean `channel`?"),
        format!("{f}:3:26: rule \"a\": unknown key `buffr`; did you mean `buffer`?"),
        format!("{f}:4:5: rule \"a\": unknown key `filtr`; did you mean `filter`?"),
        // The misspelt key's value is checked as the key it meant.
        format!("{f}:4:12: rule \"a\": "),
        format!("{f}:7:9: rule \"a\": unknown key `max_len`; did you mean `maxlen`?"),
        format!("{f}:8:18: rule \"a\": webhook URL scheme `ftp` is not http or https"),
        format!("{f}:9:18: rule \"a\": `timeout` `5q` is not a duration"),
        format!("{f}:10:36: rule \"a\": `attempts: -1`: must be a whole number, 0 or more"),
        format!("{f}:15:33: rule \"b\": `batch` must be between 1 and 10000"),
        format!("{f}:16:25: rule \"b\": sink `publish` is empty"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "expected `{want}…`, got `{line}`\n{stderr}"
        );
    }
    assert_eq!(lines[expected.len()], format!("{} errors found.", expected.len()));
}
