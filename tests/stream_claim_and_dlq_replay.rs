//! A router killed with SIGKILL mid-batch leaves entries pending; a second router with another
//! consumer name claims them after `claim_idle` and delivers them. Dead letters written while an
//! endpoint was down are delivered by `dlq replay` once it is back, and the stream empties.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

fn rule(url: &str, consumer: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: to-hook
    source: {{ stream: "orders", group: router, consumer: {consumer}, start: oldest, batch: 20, block: 100ms, claim_idle: 1s }}
    on_error: {{ retry: {{ attempts: 3, backoff: 50ms }} }}
    sinks:
      - webhook: "{url}"
        timeout: 30s
        max_in_flight: 20
"#
    )
}

fn n_of(body: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["n"].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumer_entries_are_claimed_by_another() {
    const N: u64 = 60;
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // The first router's requests hang: its batch stays in flight, unacknowledged.
    hook.set_default(Reply::Hang(Duration::from_secs(600)));
    let mut conn = redis.conn().await;
    for n in 0..N {
        let _: String = conn.xadd("orders", "*", &[("n", n.to_string())]).await.unwrap();
    }
    let mut first = RouterProcess::start(&rule(&hook.url("/h"), "router-a"), &redis.url());
    hook.wait_requests(20).await;
    first.signal("KILL");
    tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(10)));
    let pending: redis::Value = conn.xpending("orders", "router").await.unwrap();
    let redis::Value::Array(summary) = &pending else {
        panic!("{pending:?}")
    };
    // Its batch in flight (20, delivered but not acknowledged) and, since that batch was full,
    // the next one it had read ahead (20, not delivered).
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(40)),
        "the killed router left its batch in flight and the one read ahead pending"
    );

    hook.set_default(Reply::Status(200));
    let before = hook.requests().len();
    let _second = RouterProcess::start(&rule(&hook.url("/h"), "router-b"), &redis.url());
    let delivered = wait_for(
        "every entry delivered by the second router",
        Duration::from_secs(30),
        || async {
            let got: BTreeSet<u64> = hook.requests()[before..]
                .iter()
                .filter_map(|r| n_of(&r.body_str()))
                .collect();
            (got.len() as u64 == N).then_some(got)
        },
    )
    .await;
    assert_eq!(delivered, (0..N).collect::<BTreeSet<u64>>());
    wait_nothing_pending(&conn, "orders", "router").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_delivers_every_dead_letter_once_the_endpoint_recovers() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Status(503));
    let mut conn = redis.conn().await;
    let yaml = rule(&hook.url("/down"), "router-a");
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    for n in 0..5 {
        let _: String = conn.xadd("orders", "*", &[("n", n.to_string())]).await.unwrap();
    }
    wait_stream_len(&conn, "redis-router:dead-letter", 5).await;
    daemon.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let run = |args: &[&str]| {
        Command::new(router_bin())
            .args(args)
            .arg("-c")
            .arg(&file)
            .env("REDIS_URL", redis.url())
            .output()
            .expect("run redis-router")
    };
    let list = tokio::task::block_in_place(|| run(&["dlq", "list"]));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(
        listed
            .lines()
            .all(|l| l.contains("rule=to-hook") && l.contains("HTTP 503")),
        "{listed}"
    );

    hook.set_default(Reply::Status(200));
    let before = hook.requests().len();
    let replay = tokio::task::block_in_place(|| run(&["dlq", "replay", "--rule", "to-hook"]));
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "5 replayed, 0 failed again (kept), 0 skipped (not sink failures, kept), 0 refused (cut, corrupted, unsigned or forged, kept)."
    );
    // Exactly once each: every request the replay made, in order of n, not a set.
    let requests = hook.requests();
    let mut got: Vec<u64> = requests[before..].iter().filter_map(|r| n_of(&r.body_str())).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..5).collect::<Vec<u64>>(),
        "each dead letter replayed exactly once"
    );
    assert_eq!(requests.len() - before, 5, "one request per dead letter, nothing else");
    let left: usize = conn.xlen("redis-router:dead-letter").await.unwrap();
    assert_eq!(left, 0, "replayed dead letters are deleted");
}
