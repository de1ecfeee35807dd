//! Queue rules in several instances: a router killed while holding a batch in its processing
//! list; once its heartbeat expires another instance gives those elements back to the queue
//! and delivers them.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_elements_go_back_to_the_queue() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(Duration::from_secs(600)));
    let mut conn = redis.conn().await;
    for n in 0..30 {
        let _: i64 = conn.rpush("jobs", format!("{{\"n\":{n}}}")).await.unwrap();
    }
    let yaml = format!(
        "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n  - name: jobs\n    source: {{ queue: jobs, block: 100ms }}\n    sinks:\n      - webhook: \"{}\"\n        timeout: 600s\n        max_in_flight: 30\n",
        hook.url("/jobs")
    );
    let mut a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    hook.wait_requests(30).await;
    let host = redis_router::identity::host();
    let held: usize = conn.llen(format!("jobs:processing:{host}-a")).await.unwrap();
    assert_eq!(held, 30, "a holds the whole batch in its processing list");
    a.signal("KILL"); // no chance to give anything back
    tokio::task::block_in_place(|| a.wait_exit(Duration::from_secs(10)));

    hook.set_default(Reply::Status(200));
    let before = hook.requests().len();
    let b = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("b"));
    let got = wait_for(
        "b delivers a's elements once a's heartbeat expired",
        Duration::from_secs(40),
        || async {
            let got: BTreeSet<u64> = hook.requests()[before..]
                .iter()
                .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body_str()).ok())
                .filter_map(|v| v["n"].as_u64())
                .collect();
            (got.len() == 30).then_some(got)
        },
    )
    .await;
    assert_eq!(got, (0..30).collect::<BTreeSet<u64>>());
    let log = b.log();
    assert!(
        log.contains("Gave a dead consumer's elements back to the queue."),
        "{log}"
    );
    let members: Vec<String> = conn.smembers("jobs:consumers").await.unwrap();
    assert_eq!(members, vec![format!("{host}-b")], "the dead consumer left the set");
}
