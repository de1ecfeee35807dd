//! A living consumer is never taken for dead, however slow its sinks are: a queue consumer's
//! heartbeat and a stream consumer's hold on its pending entries are kept on their own timers,
//! not only between reads. Two instances share a rule whose webhook answers after longer than
//! the heartbeat's TTL (queue) or than `claim_idle` (stream); every job and entry is delivered
//! exactly once, and neither instance takes the other's work.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

/// The queue heartbeat's TTL is 10 s; the webhook answers after this.
const SLOWER_THAN_HEARTBEAT: Duration = Duration::from_secs(12);

/// How many requests carried each `n`.
fn per_n(hook: &HookServer) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for r in hook.requests() {
        let v: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap();
        let n = v["n"].as_u64().or_else(|| v["n"].as_str()?.parse().ok()).unwrap();
        *out.entry(n).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_consumer_behind_a_slow_webhook_keeps_its_jobs() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(SLOWER_THAN_HEARTBEAT));
    let mut conn = redis.conn().await;
    for n in 0..6 {
        let _: i64 = conn.rpush("jobs", format!("{{\"n\":{n}}}")).await.unwrap();
    }
    let yaml = format!(
        "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n  - name: jobs\n    source: {{ queue: jobs, block: 100ms }}\n    sinks:\n      - webhook: \"{}\"\n        timeout: 60s\n",
        hook.url("/jobs")
    );
    let a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    hook.wait_requests(6).await;
    let host = redis_router::identity::host();
    let a_processing = format!("jobs:processing:{host}-a");
    let held: usize = conn.llen(&a_processing).await.unwrap();
    assert_eq!(held, 6, "a took every job");
    // b looks for dead consumers every 2 s while a's requests hang past the heartbeat's TTL.
    let b = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("b"));
    b.wait_line("b running", &["Rule started."]).await;
    wait_for("a to finish its slow batch", Duration::from_secs(40), || {
        let mut c = conn.clone();
        let key = a_processing.clone();
        async move {
            let n: usize = c.llen(&key).await.unwrap();
            (n == 0).then_some(())
        }
    })
    .await;
    let want: BTreeMap<u64, usize> = (0..6).map(|n| (n, 1)).collect();
    assert_eq!(per_n(&hook), want, "each job delivered exactly once");
    let queued: usize = conn.llen("jobs").await.unwrap();
    assert_eq!(queued, 0, "nothing was given back to the queue");
    assert_eq!(
        b.count("Gave a dead consumer's elements back to the queue."),
        0,
        "b never took a for dead"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_behind_a_slow_webhook_keeps_its_entries() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // Three times `claim_idle`: without a hold on its entries, a would lose them to b.
    hook.set_default(Reply::Hang(Duration::from_secs(3)));
    let mut conn = redis.conn().await;
    let yaml = format!(
        "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n  - name: entries\n    source: {{ stream: in, group: g, start: oldest, batch: 2, block: 100ms, claim_idle: 1s }}\n    sinks:\n      - webhook: \"{}\"\n        timeout: 60s\n",
        hook.url("/entries")
    );
    for n in 0..6 {
        let _: String = conn.xadd("in", "*", &[("n", n.to_string())]).await.unwrap();
    }
    let a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    // a holds a batch of two in its sinks and, behind the backlog, the next two read ahead.
    hook.wait_requests(2).await;
    let b = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("b"));
    b.wait_line("b running", &["Rule started."]).await;
    let want: BTreeMap<u64, usize> = (0..6).map(|n| (n, 1)).collect();
    wait_for("every entry delivered", Duration::from_secs(60), || async {
        (per_n(&hook).len() == 6).then_some(())
    })
    .await;
    wait_nothing_pending(&conn, "in", "g").await;
    assert_eq!(per_n(&hook), want, "each entry delivered exactly once");
    assert_eq!(
        b.count("Claimed entries another consumer left pending."),
        0,
        "b never took a's entries"
    );
    drop(a);
}
