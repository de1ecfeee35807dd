//! Payloads that are not UTF-8, 10 MB large, 1,000 levels deep, or `null`: a rule that needs
//! JSON dead-letters what is not JSON it can read, a rule that does not passes bytes on raw;
//! never a panic, never a stuck rule.

mod support;

use std::collections::HashMap;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: needs-json
    source: { channel: "in" }
    filter: "@.ok == true"
    sinks: [ { stream: "json-out" } ]
  - name: raw
    source: { channel: "in" }
    sinks: [ { queue: "raw-out" } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_handled_as_documented() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(RULES, &redis.url()).await;
    // Both rules share one subscription connection: one subscriber on `in`, two rules running.
    wait_subscribers(&mut conn, "in", 1).await;
    for (_, status) in daemon.supervisor.as_ref().expect("running").statuses() {
        within(status.started()).await;
    }

    let not_utf8: Vec<u8> = vec![0xff, 0xfe, b'{', 0x80, b'}'];
    let big = format!(r#"{{"ok":true,"blob":"{}"}}"#, "x".repeat(10 * 1024 * 1024));
    let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    let payloads: Vec<Vec<u8>> = vec![
        not_utf8.clone(),
        big.clone().into_bytes(),
        deep.clone().into_bytes(),
        b"null".to_vec(),
    ];
    for p in &payloads {
        let _: i64 = conn.publish("in", p).await.unwrap();
    }
    let _: i64 = conn
        .publish("in", r#"{"ok":true,"after":"all of that"}"#)
        .await
        .unwrap();

    // The raw rule passes every payload on, byte for byte.
    let raw: Vec<Vec<u8>> = wait_for("5 raw elements", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let v: Vec<Vec<u8>> = c.lrange("raw-out", 0, -1).await.ok()?;
            (v.len() == 5).then_some(v)
        }
    })
    .await;
    assert_eq!(&raw[..4], &payloads[..]);

    // The JSON rule: the big document passes, the good one after it too; `null` is filtered out.
    let out = wait_stream_len(&conn, "json-out", 2).await;
    assert_eq!(
        out[0].1.iter().find(|(k, _)| k == "blob").map(|(_, v)| v.len()),
        Some(10 * 1024 * 1024)
    );
    assert_eq!(
        out[1].1.iter().find(|(k, _)| k == "after").map(|(_, v)| v.as_str()),
        Some("all of that")
    );
    // Not UTF-8 and too deep: dead letters, with the reason.
    let dead = wait_stream_len(&conn, "redis-router:dead-letter", 2).await;
    let dead: Vec<HashMap<String, String>> = dead.into_iter().map(|(_, f)| f.into_iter().collect()).collect();
    assert!(
        dead[0]["reason"].contains("payload is not JSON"),
        "{}",
        dead[0]["reason"]
    );
    assert!(
        dead[1]["reason"].contains("recursion limit exceeded"),
        "{}",
        dead[1]["reason"]
    );
    // The dead letter keeps the exact bytes that arrived.
    let first: redis::streams::StreamRangeReply = conn
        .xrange_count("redis-router:dead-letter", "-", "+", 1)
        .await
        .unwrap();
    let stored: Vec<u8> = redis::from_redis_value_ref(&first.ids[0].map["payload"]).unwrap();
    assert_eq!(stored, not_utf8);
    assert_eq!(
        daemon.counter("needs-json", "filtered_out"),
        1,
        "null is a JSON value that fails the filter"
    );
    assert_eq!(daemon.counter("needs-json", "dead_lettered"), 2);
    assert_eq!(daemon.counter("raw", "delivered"), 5);
    daemon.stop().await;
}
