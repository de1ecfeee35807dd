//! `redis-router tap` against a running router: every stage of a real rule (received, filtered,
//! given to a sink, dead-lettered), following a reload, narrowed by rule, stage and limit;
//! off unless the file enables it and behind its token; a client that never reads costs the
//! router no more than the tap's small ring.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use serde_json::Value;
use support::*;

fn rules(port: u16, orders_sink: &str, http_extra: &str) -> String {
    format!(
        r#"connections:
  default: {{ url: "${{REDIS_URL}}" }}
http: {{ listen: "127.0.0.1:{port}", tap: true{http_extra} }}
rules:
  - name: orders
    source: {{ channel: orders }}
    filter: "@.total >= 100"
    sinks:
      - stream: {orders_sink}
  - name: other
    source: {{ channel: other }}
    sinks: [ {{ stream: copied }} ]
"#
    )
}

/// A Redis and a router running [`rules`] with its endpoint up: the Redis, the endpoint's
/// port, a connection, the router.
async fn running(extra: &[&str]) -> (RedisServer, u16, redis::aio::MultiplexedConnection, RouterProcess) {
    let redis = RedisServer::start();
    let port = free_port();
    let conn = redis.conn().await;
    let router = RouterProcess::start_with(&rules(port, "big", ""), &redis.url(), extra);
    router.wait_rules_started(&["orders", "other"]).await;
    router.wait_line("the endpoint", &["Serving /metrics"]).await;
    (redis, port, conn, router)
}

/// A `redis-router tap` process whose output lines are collected as they come.
struct Tap {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Tap {
    async fn start(file: &std::path::Path, args: &[&str]) -> Tap {
        let mut child = Command::new(router_bin())
            .arg("tap")
            .arg("-c")
            .arg(file)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tap");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let tap = Tap { child, lines, stderr };
        let stderr = tap.stderr.clone();
        wait_for("the tap to connect", TIMEOUT, || {
            let stderr = stderr.clone();
            async move { stderr.lock().unwrap().contains("Tapping ").then_some(()) }
        })
        .await;
        tap
    }

    async fn wait_lines(&self, n: usize) -> Vec<String> {
        let lines = self.lines.clone();
        wait_for(&format!("{n} tap lines"), TIMEOUT, || {
            let lines = lines.clone();
            async move {
                let l = lines.lock().unwrap();
                (l.len() >= n).then(|| l.clone())
            }
        })
        .await
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn brief(e: &Value) -> (String, String, String) {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let detail = match s("stage").as_str() {
        "sink" => s("command"),
        "filtered" | "dead-letter" => s("reason"),
        _ => s("payload"),
    };
    (s("rule"), s("stage"), detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_sees_every_stage_and_follows_a_reload() {
    let (_redis, port, mut conn, router) = running(&["--reload-debounce", "1h"]).await;
    let tap = Tap::start(&router.file, &["orders", "--json"]).await;

    // Another rule's message arrives, and the tap (of `orders` only) does not show it.
    let _: i64 = within(conn.publish("other", "{}")).await.unwrap();
    wait_stream_len(&conn, "copied", 1).await;
    for payload in [r#"{"total":150}"#, r#"{"total":5}"#, "not json"] {
        let _: i64 = within(conn.publish("orders", payload)).await.unwrap();
    }
    wait_stream_len(&conn, "big", 1).await;
    wait_stream_len(&conn, "redis-router:dead-letter", 1).await;
    let all = events(&tap.wait_lines(6).await);
    let got: Vec<_> = all.iter().map(brief).collect();
    // Each message's events, in order, told apart by the payload each event carries (messages
    // of one batch interleave: all are received before any is filtered or given to a sink).
    let of = |payload: &str| -> Vec<(String, String)> {
        all.iter()
            .filter(|e| e["payload"] == payload)
            .map(brief)
            .map(|(rule, stage, detail)| {
                assert_eq!(rule, "orders");
                (stage, detail)
            })
            .collect()
    };
    let big = of(r#"{"total":150}"#);
    assert_eq!(big[0].0, "received");
    assert_eq!(
        big[1],
        ("sink".to_string(), "XADD big '*' total 150".to_string()),
        "{got:?}"
    );
    let small = of(r#"{"total":5}"#);
    assert_eq!(small[0].0, "received");
    assert!(
        small
            .iter()
            .any(|e| e == &("filtered".to_string(), "the rule's filter".to_string())),
        "{got:?}"
    );
    let bad = of("not json");
    assert!(
        bad.iter()
            .any(|(stage, reason)| stage == "dead-letter" && reason.contains("payload is not JSON")),
        "{got:?}"
    );
    assert_eq!(got.len(), 6, "two events per message: {got:?}");

    // The rule restarts with a new sink; the tap keeps showing it.
    std::fs::write(&router.file, rules(port, "big2", "")).unwrap();
    router.signal("HUP");
    router
        .wait_line("the reload", &["Rules reloaded.", " generation=2 "])
        .await;
    let _: i64 = within(conn.publish("orders", r#"{"total":200}"#)).await.unwrap();
    wait_stream_len(&conn, "big2", 1).await;
    let lines = tap.wait_lines(8).await;
    let after: Vec<_> = events(&lines[6..]).iter().map(brief).collect();
    assert_eq!(after[0].1, "received");
    assert_eq!(after[1].1, "sink");
    assert_eq!(after[1].2, "XADD big2 '*' total 200", "{after:?}");
    assert_eq!(
        lines.len(),
        8,
        "exactly the events of the four messages of `orders`: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_and_a_limit_narrow_it_and_lines_read_well() {
    let (_redis, _, mut conn, router) = running(&[]).await;
    let mut tap = Tap::start(&router.file, &["--stage", "dead-letter", "--limit", "1"]).await;
    let _: i64 = within(conn.publish("orders", r#"{"total":150}"#)).await.unwrap();
    let _: i64 = within(conn.publish("orders", "oops\u{1b}[31m")).await.unwrap();
    wait_stream_len(&conn, "redis-router:dead-letter", 1).await;
    let status = wait_for("the tap to stop at its limit", TIMEOUT, || {
        let done = tap.child.try_wait().ok().flatten();
        async move { done }
    })
    .await;
    assert!(status.success());
    let lines = tap.wait_lines(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.contains(" orders dead-letter orders reason=\"filter: payload is not JSON"),
        "{line}"
    );
    // A payload's control characters are shown escaped, never sent to the terminal.
    assert!(line.ends_with(r"payload=oops\u{1b}[31m"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_unless_enabled_and_behind_its_token() {
    let redis = RedisServer::start();
    let port = free_port();
    let off = rules(port, "big", "").replace(", tap: true", "");
    let router = RouterProcess::start(&off, &redis.url());
    router.wait_line("the endpoint", &["Serving /metrics"]).await;
    let (status, body) = http_get(port, "/tap").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (404, "tapping is off: add `tap: true` under `http:` in the rule file\n")
    );
    drop(router);

    let port = free_port();
    let guarded = rules(port, "big", ", tap_token: \"s3cret-tap\"");
    let router = RouterProcess::start(&guarded, &redis.url());
    router.wait_line("the endpoint", &["Serving /metrics"]).await;
    assert_eq!(http_get(port, "/tap").await.unwrap().0, 401);
    // The CLI sends the file's token.
    let tap = Tap::start(&router.file, &[]).await;
    assert!(!tap.stderr.lock().unwrap().contains("s3cret"));
    assert!(!router.log().contains("s3cret"));

    // Beyond loopback without a token: `check` refuses the file.
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.yaml");
    std::fs::write(&open, rules(port, "big", "").replace("127.0.0.1", "0.0.0.0")).unwrap();
    let out = Command::new(router_bin()).arg("check").arg(&open).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add `tap_token: \"${TAP_TOKEN}\"`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_only_the_ring() {
    let (redis, port, mut conn, router) = running(&[]).await;
    // 1,000 messages of 40 KiB, first with nobody tapping, then with a tap that never reads:
    // 2,000 events of up to 32 KiB (payload and command previews), ~48 MiB if they queued.
    let pad = "x".repeat(40 * 1024);
    let mut publish_round = async |round: usize| {
        for i in 0..1_000 {
            let body = format!(r#"{{"total":150,"i":{i},"pad":"{pad}"}}"#);
            let _: i64 = within(conn.publish("orders", body)).await.unwrap();
        }
        wait_stream_len(&redis.conn().await, "big", 1_000 * round).await;
    };
    publish_round(1).await;
    let (_, rss_untapped) = router.memory_kib();
    let mut stuck = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck.write_all(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    stuck.set_nonblocking(true).unwrap();
    wait_for("the stuck tap to be subscribed", TIMEOUT, || {
        // Its answer's headers are sent once the subscription exists.
        let mut peek = [0u8; 16];
        let n = stuck.peek(&mut peek).unwrap_or(0);
        async move { (n > 0).then_some(()) }
    })
    .await;
    publish_round(2).await;
    let (_, rss_tapped) = router.memory_kib();
    let grown_mib = rss_tapped.saturating_sub(rss_untapped) / 1024;
    assert!(
        grown_mib < 24,
        "the router grew by {grown_mib} MiB more for a tap that never reads"
    );
    drop(stuck);
}
