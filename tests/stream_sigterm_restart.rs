//! A stream → stream rule through a consumer group, stopped with SIGTERM half-way through
//! 10,000 entries and started again: every entry reaches the destination once (the drain
//! acknowledges every entry it wrote before exiting).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
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

    // A drained stop finished the batch in hand: each entry it wrote is acknowledged, so what
    // stays pending for its consumer (read, not yet written) is not in the destination.
    let written: std::collections::HashSet<String> = xrange(&mut c, "dst")
        .await
        .iter()
        .map(|(_, f)| field(f, "original_id"))
        .collect();
    let pending: redis::streams::StreamPendingCountReply = within(c.xpending_count("src", "router", "-", "+", TOTAL))
        .await
        .unwrap();
    let written_but_pending: Vec<&str> = pending
        .ids
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| written.contains(*id))
        .collect();
    assert!(
        written_but_pending.is_empty(),
        "SIGTERM left written entries unacknowledged: {} of {} pending",
        written_but_pending.len(),
        pending.ids.len()
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
        "copied {} entries for {TOTAL} sources: {duplicates} duplicates",
        entries.len()
    );
    assert_eq!(seen.len(), TOTAL, "every source entry id is in the destination");
    assert_eq!(
        duplicates, 0,
        "a drained stop acknowledges what it wrote: nothing is written twice after the restart"
    );
    // Every entry is acknowledged once delivered.
    wait_nothing_pending(&c, "src", "router").await;
}

/// SIGTERM while a batch is in flight (a webhook that answers a second later): the router waits
/// for the answers, acknowledges the batch and exits 0; nothing is left pending. A router that
/// exits at once leaves the delivered batch unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_flight() {
    const N: usize = 10;
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(Duration::from_secs(1)));
    let mut conn = redis.conn().await;
    for n in 0..N {
        let _: String = conn.xadd("held", "*", &[("n", n.to_string())]).await.unwrap();
    }
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: held
    source: {{ stream: held, group: g, start: oldest, batch: {N}, block: 100ms }}
    sinks:
      - webhook: "{}"
        timeout: 30s
        max_in_flight: {N}
"#,
        hook.url("/held")
    );
    let mut router = RouterProcess::start(&yaml, &redis.url());
    hook.wait_requests(N).await;
    router.signal("TERM");
    let code = tokio::task::block_in_place(|| router.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "SIGTERM drains and exits 0; log:\n{}", router.log());
    let pending: redis::streams::StreamPendingReply = within(conn.xpending("held", "g")).await.unwrap();
    assert_eq!(
        pending.count(),
        0,
        "the batch in flight at SIGTERM was acknowledged before exit; log:\n{}",
        router.log()
    );
    assert_eq!(hook.requests().len(), N, "each entry delivered once");
}
