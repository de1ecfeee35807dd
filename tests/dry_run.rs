//! `run --dry-run` reads and filters for real, prints what each sink would write, and writes
//! nothing: no destination entry, no consumer group taken over, no dead letter.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: orders
    source: { channel: "orders" }
    filter: "@.total >= 100"
    sinks:
      - stream: "big-orders"
        fields: { id: "{{$.id}}", total: "{{$.total}}" }
      - publish: "audit"
  - name: copy
    source: { stream: "in", group: g, start: oldest, block: 100ms }
    sinks: [ { stream: "out" } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_and_writes_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, RULES).unwrap();
    let mut child = Command::new(router_bin())
        .args(["run", "--dry-run", "-c"])
        .arg(&file)
        .env("REDIS_URL", redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_subscribers(&mut conn, "orders", 1).await;
    // The dry run tails the stream from its newest entry: wait for it to be reading, then add.
    let _: i64 = conn.publish("orders", r#"{"id":7,"total":250}"#).await.unwrap();
    let _: i64 = conn.publish("orders", r#"{"id":8,"total":5}"#).await.unwrap();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(rx.recv_timeout(Duration::from_secs(20)).expect("a dry-run line"));
    }
    assert_eq!(
        lines,
        [
            "dry-run rule=orders stream big-orders: XADD big-orders '*' id 7 total 250",
            r#"dry-run rule=orders publish audit: PUBLISH audit '{"id":7,"total":250}'"#,
        ]
        .map(String::from)
    );
    // The stream rule tails `in` from its newest entry, and nothing shows when its XREAD is
    // issued: add an entry until its dry-run line comes (an entry added before the read is not
    // seen, which is the point of tailing). The router is killed only after it acted.
    let mut copy_line = None;
    for _ in 0..40 {
        let _: String = conn.xadd("in", "*", &[("k", "v")]).await.unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            copy_line = Some(line);
            break;
        }
    }
    let copy_line = copy_line.expect("a dry-run line for the stream rule");
    assert_eq!(copy_line, "dry-run rule=copy stream out: XADD out '*' k v");
    let _ = child.kill();
    let _ = child.wait();
    let exists: bool = conn.exists("big-orders").await.unwrap();
    assert!(!exists, "the dry run wrote nothing");
    let exists: bool = conn.exists("out").await.unwrap();
    assert!(!exists, "the dry run of the stream rule wrote nothing");
    let groups: redis::Value = conn.xinfo_groups("in").await.unwrap();
    assert_eq!(
        groups,
        redis::Value::Array(vec![]),
        "the dry run created no consumer group"
    );
}
