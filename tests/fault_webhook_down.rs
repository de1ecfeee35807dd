//! A webhook endpoint down for 30 s under load: the router's memory stays bounded (one batch in
//! flight; the backlog waits in the stream, in Redis), and the backlog is delivered afterwards.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

const DOWN: Duration = Duration::from_secs(30);
const RATE_PER_SEC: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_waits_in_redis_and_is_delivered_after_the_outage() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Status(503));
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: hook
    source: {{ stream: orders, group: g, start: oldest, batch: 100, block: 100ms }}
    on_error: {{ retry: {{ attempts: 1000, backoff: 100ms, max_backoff: 1s }} }}
    sinks:
      - webhook: "{}"
        timeout: 2s
  - name: other
    source: {{ channel: other }}
    sinks: [ {{ stream: other-out }} ]
"#,
        hook.url("/orders")
    );
    let router = RouterProcess::start(&yaml, &redis.url());
    let conn = redis.conn().await;
    wait_group(&mut conn.clone(), "orders", "g").await;
    wait_subscribers(&mut conn.clone(), "other", 1).await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };

    let start = Instant::now();
    let mut produced = 0u64;
    let mut other_published = 0usize;
    let mut peak_rss = 0u64;
    let (_, rss_before) = router.memory_kib();
    while start.elapsed() < DOWN {
        let mut c = conn.clone();
        let mut pipe = redis::pipe();
        for _ in 0..RATE_PER_SEC / 10 {
            pipe.xadd("orders", "*", &[("n", produced.to_string())]).ignore();
            produced += 1;
        }
        // Another rule's traffic, timed: the failing webhook must not slow it.
        pipe.publish("other", format!("{{\"sent\":{}}}", now_ms())).ignore();
        let _: () = within(pipe.query_async(&mut c)).await.unwrap();
        other_published += 1;
        peak_rss = peak_rss.max(router.memory_kib().1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_requests = hook.requests().len();
    hook.set_default(Reply::Status(200));
    let got = wait_for("the whole backlog delivered", Duration::from_secs(60), || async {
        let got: BTreeSet<u64> = hook
            .requests()
            .iter()
            .skip(failed_requests)
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body_str()).ok())
            .filter_map(|v| v["n"].as_str().and_then(|n| n.parse().ok()))
            .collect();
        (got.len() as u64 == produced).then_some(got)
    })
    .await;
    assert_eq!(got, (0..produced).collect::<BTreeSet<u64>>());
    let (hwm, _) = router.memory_kib();
    eprintln!(
        "{produced} entries during a {DOWN:?} outage; {failed_requests} failed requests (circuit open: one probe per backoff step); RSS before {rss_before} KiB, peak {peak_rss} KiB (VmHWM {hwm} KiB)"
    );
    // One batch in flight, whatever the backlog: the router grows by little.
    assert!(
        peak_rss < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {peak_rss} KiB"
    );
    assert!(
        (failed_requests as u64) < produced / 10,
        "the open circuit probes instead of flooding: {failed_requests} requests for {produced} messages"
    );
    let mut c = conn.clone();
    let dead: usize = c.xlen("redis-router:dead-letter").await.unwrap();
    assert_eq!(dead, 0);
    // The other rule's messages: the stream entry id is Redis's clock when it was written.
    // Every message the other rule was published, exactly once: the router subscribed before the
    // first one (wait_subscribers above) and nothing overflows at this rate.
    let other = wait_stream_len(&conn, "other-out", other_published).await;
    assert_eq!(
        other.len(),
        other_published,
        "the other rule kept flowing: each of its messages written once"
    );
    let worst = other
        .iter()
        .map(|(id, f)| {
            let written: u64 = id.split('-').next().unwrap().parse().unwrap();
            written.saturating_sub(f[0].1.parse::<u64>().unwrap())
        })
        .max()
        .unwrap();
    eprintln!(
        "the other rule during the outage: {} messages, worst latency {worst} ms",
        other.len()
    );
    assert!(worst < 1000, "a failing webhook slowed another rule: {worst} ms");
}
