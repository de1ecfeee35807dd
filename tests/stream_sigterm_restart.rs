//! A stream → stream rule through a consumer group, stopped with SIGTERM half-way through
//! 10,000 entries and started again: every entry reaches the destination; duplicates are
//! bounded by the batch in flight.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::*;

const TOTAL: usize = 10_000;
const BATCH: usize = 100;

fn rules() -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: copy
    source: {{ stream: src, group: router, consumer: test-consumer, start: oldest, batch: {BATCH}, block: 200ms }}
    sinks:
      - stream: dst
        fields: {{ original_id: "{{{{meta.id}}}}", n: "{{{{$.n}}}}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_half_way_then_restart_delivers_everything() {
    let redis = RedisServer::start();
    let conn = redis.conn().await;
    let yaml = rules();
    let mut router = RouterProcess::start(&yaml, &redis.url());

    // Produce in paced chunks so that the router is stopped with work still arriving.
    let producer = {
        let mut conn = conn.clone();
        tokio::spawn(async move {
            for chunk in 0..(TOTAL / 100) {
                let mut pipe = redis::pipe();
                for i in 0..100 {
                    pipe.xadd("src", "*", &[("n", (chunk * 100 + i).to_string())]).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let copied_before = wait_for("the router to copy a share", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let n: usize = conn.xlen("dst").await.ok()?;
            (n >= 2_000).then_some(n)
        }
    })
    .await;
    router.signal("TERM");
    let code = tokio::task::block_in_place(|| router.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "SIGTERM drains and exits 0; log:\n{}", router.log());
    within(producer).await.unwrap();
    let mut c = conn.clone();
    let at_stop: usize = within(c.xlen("dst")).await.unwrap();
    assert!(
        at_stop < TOTAL,
        "stopped half-way ({copied_before} copied when signalled, {at_stop} at exit)"
    );

    let _router2 = RouterProcess::start(&yaml, &redis.url());
    let entries = wait_for("every entry copied", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            let entries = xrange(&mut conn, "dst").await;
            let distinct: std::collections::HashSet<&str> = entries
                .iter()
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "n").map(|(_, v)| v.as_str()))
                .collect();
            (distinct.len() == TOTAL).then_some(entries)
        }
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, fields) in &entries {
        let id = fields
            .iter()
            .find(|(k, _)| k == "original_id")
            .expect("original_id field")
            .1
            .clone();
        *seen.entry(id).or_default() += 1;
    }
    let duplicates = entries.len() - seen.len();
    eprintln!(
        "copied {} entries for {TOTAL} sources: {duplicates} duplicates (bound: {BATCH})",
        entries.len()
    );
    assert_eq!(seen.len(), TOTAL, "every source entry id is in the destination");
    assert!(
        duplicates <= BATCH,
        "{duplicates} duplicates exceed the batch in flight ({BATCH})"
    );
    // Every entry is acknowledged once delivered.
    wait_nothing_pending(&c, "src", "router").await;
}
