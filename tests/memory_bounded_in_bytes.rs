//! Memory is bounded in bytes, not only in messages. A 4 MB JSON array of small numbers would
//! take about 250 MB parsed; a handful in one batch once took gigabytes and, under a memory
//! limit, aborted the router, which then took the same elements from its processing list and
//! aborted again. Now such a payload is set aside (dead-lettered whole, unparsed) before anything
//! parses it, a payload above `max_payload` likewise, and the router runs under an address-space
//! limit while good messages behind the bad ones arrive. A rule that only moves bytes pays only
//! their size.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use support::*;

/// The address-space limit the README states for one rule with the default limits.
const ADDRESS_SPACE: &str = "--as=805306368"; // 768 MiB

fn numbers_array(bytes: usize) -> String {
    format!("{{\"kind\":\"numbers\",\"xs\":[{}1]}}", "1,".repeat(bytes / 2))
}

fn ordinary_document(bytes: usize) -> String {
    let item = r#"{"sku":"A-1","name":"a product with a name","qty":2,"price":"10.00"},"#;
    format!(
        "{{\"kind\":\"order\",\"items\":[{}{{}}]}}",
        item.repeat(bytes / item.len())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_set_aside_within_an_address_space_limit() {
    let redis = RedisServer::start();
    let yaml = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: jobs
    source: { queue: jobs, block: 100ms }
    filter: "@.kind != 'ignored'"
    sinks: [ { stream: out } ]
"#;
    let router = RouterProcess::start_under(&["prlimit", ADDRESS_SPACE], yaml, &redis.url(), &[], None);
    router.wait_line("the rule running", &["Rule started."]).await;
    let mut conn = redis.conn().await;
    let numbers = numbers_array(4_000_000);
    let ordinary = ordinary_document(1_500_000);
    let oversized = format!("\"{}\"", "x".repeat(17 << 20));
    let mut pushed: Vec<&str> = vec![r#"{"kind":"good","n":1}"#];
    pushed.extend(std::iter::repeat_n(numbers.as_str(), 8));
    pushed.push(r#"{"kind":"good","n":2}"#);
    pushed.push(&ordinary);
    pushed.push(&oversized);
    pushed.push(r#"{"kind":"good","n":3}"#);
    for p in &pushed {
        let _: i64 = conn.rpush("jobs", *p).await.unwrap();
    }

    let out = wait_for(
        "the good messages and the ordinary document",
        Duration::from_secs(60),
        || {
            let mut c = conn.clone();
            async move {
                let out = xrange(&mut c, "out").await;
                (out.len() >= 4).then_some(out)
            }
        },
    )
    .await;
    let kinds: Vec<String> = out
        .iter()
        .map(|(_, f)| {
            let get = |k: &str| field(f, k);
            format!("{} {}", get("kind"), get("n"))
        })
        .collect();
    assert_eq!(kinds, ["good 1", "good 2", "order ", "good 3"], "each once, in order");
    assert!(router.child_running(), "the router is still up:\n{}", router.log());

    let dead = wait_stream_len(&conn, "redis-router:dead-letter", 9).await;
    let mut parsed_too_big = 0;
    let mut too_large = 0;
    for (_, fields) in &dead {
        let get = |k: &str| field(fields, k);
        let (reason, payload) = (get("reason"), get("payload"));
        if reason.contains("parsed as JSON, more than batch_bytes") {
            assert_eq!(payload, numbers, "set aside whole");
            parsed_too_big += 1;
        } else if reason.contains("larger than max_payload") {
            assert_eq!(payload.len(), oversized.len(), "set aside whole");
            too_large += 1;
        } else {
            panic!("unexpected dead letter: {reason}");
        }
    }
    assert_eq!((parsed_too_big, too_large), (8, 1));
    wait_for("the processing list emptied", Duration::from_secs(20), || {
        let mut c = conn.clone();
        async move {
            let keys: Vec<String> = c.keys("jobs:processing:*").await.unwrap();
            keys.is_empty().then_some(())
        }
    })
    .await;
    let (peak_kib, _) = router.memory_kib();
    eprintln!("peak RSS {peak_kib} KiB under prlimit {ADDRESS_SPACE}");
    assert!(peak_kib < 384 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(router.count("panicked"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_only_moves_bytes_passes_large_payloads_unparsed() {
    let redis = RedisServer::start();
    let yaml = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: copy
    source: { queue: in, block: 100ms }
    sinks: [ { queue: out } ]
"#;
    let router = RouterProcess::start(yaml, &redis.url());
    router.wait_line("the rule running", &["Rule started."]).await;
    let mut conn = redis.conn().await;
    // 8 MB that are not JSON, and 4 MB of numbers: neither is parsed, so both pass.
    let blob = "not json ".repeat(8 << 20 >> 3);
    let numbers = numbers_array(4_000_000);
    let _: i64 = conn.rpush("in", &blob).await.unwrap();
    let _: i64 = conn.rpush("in", &numbers).await.unwrap();
    let out: Vec<String> = wait_for("both copied", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let out: Vec<String> = c.lrange("out", 0, -1).await.unwrap();
            (out.len() >= 2).then_some(out)
        }
    })
    .await;
    assert_eq!(out.len(), 2);
    assert!(out[0] == blob && out[1] == numbers, "unchanged");
    let dead: usize = conn.xlen("redis-router:dead-letter").await.unwrap();
    assert_eq!(dead, 0);
}
