//! Pub/Sub `ha` keeps a living instance's claims and lease alive on their own timers, however
//! slow its sinks are. With `ha: claim`, a claim that expired while its claimer was still
//! delivering was taken over by another instance (a duplicate), and a message won but waiting
//! behind a slow batch was dropped at half its TTL, lost when no other instance held it. With
//! `ha: single`, the lease was renewed only between batches, so a holder behind a slow sink lost
//! it to a standby while alive.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

fn per_n(hook: &HookServer) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for r in hook.requests() {
        let v: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap();
        *out.entry(v["n"].as_u64().unwrap()).or_default() += 1;
    }
    out
}

fn rules(ha: &str, hook: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: slow
    source: {{ channel: events, {ha} }}
    sinks:
      - webhook: "{hook}"
        timeout: 60s
        max_in_flight: 100
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimer_behind_a_slow_sink_keeps_its_claims() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // Three times the claim's TTL per request.
    hook.set_default(Reply::Hang(Duration::from_secs(3)));
    let yaml = rules("ha: claim, claim_ttl: 1s, claim_id: \"{{$.n}}\"", &hook.url("/h"));
    let a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    let b = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("b"));
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events", 2).await;
    a.wait_rules_started(&["slow"]).await;
    b.wait_rules_started(&["slow"]).await;
    // 150 messages: more than a batch, so some wait, won, behind the slow first batch.
    for n in 0..150u64 {
        let _: i64 = conn.publish("events", format!("{{\"n\":{n}}}")).await.unwrap();
    }
    let want: BTreeMap<u64, usize> = (0..150).map(|n| (n, 1)).collect();
    wait_for("every message delivered", Duration::from_secs(60), || async {
        (per_n(&hook).len() == 150).then_some(())
    })
    .await;
    // A `done` mark lasts three TTLs, thirty times as long as a holder waits between checks:
    // once every claim key is gone, every holder has seen its message done, and a duplicate
    // would have been delivered by then.
    wait_for("every claim marked done and expired", Duration::from_secs(30), || {
        let mut c = conn.clone();
        async move {
            let keys: Vec<String> = c.keys("redis-router:claim:slow:*").await.unwrap();
            keys.is_empty().then_some(())
        }
    })
    .await;
    assert_eq!(per_n(&hook), want, "each message delivered exactly once");
    for (name, r) in [("a", &a), ("b", &b)] {
        assert_eq!(
            r.count("Claimed again messages"),
            0,
            "{name} never took over a living instance's claim"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_claimer_behind_a_slow_sink_loses_nothing() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(Duration::from_secs(2)));
    let yaml = rules("ha: claim, claim_ttl: 1s, claim_id: \"{{$.n}}\"", &hook.url("/h"));
    let a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events", 1).await;
    a.wait_rules_started(&["slow"]).await;
    for n in 0..250u64 {
        let _: i64 = conn.publish("events", format!("{{\"n\":{n}}}")).await.unwrap();
    }
    let want: BTreeMap<u64, usize> = (0..250).map(|n| (n, 1)).collect();
    wait_for("every message delivered", Duration::from_secs(60), || async {
        (per_n(&hook).len() == 250).then_some(())
    })
    .await;
    assert_eq!(
        per_n(&hook),
        want,
        "no other instance holds them: each must be delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_behind_a_slow_sink_keeps_its_lease() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // Each request takes twice the lease's TTL.
    hook.set_default(Reply::Hang(Duration::from_secs(2)));
    let yaml = rules("ha: single, lease_ttl: 1s", &hook.url("/h"));
    let a = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("a"));
    a.wait_line("a holds the lease", &["Took the lease"]).await;
    let b = RouterProcess::start_instance(&yaml, &redis.url(), &[], Some("b"));
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events", 2).await;
    b.wait_rules_started(&["slow"]).await;
    // One message at a time, each behind the slow one before: a stays busy for ~8 s.
    for n in 0..4u64 {
        let _: i64 = conn.publish("events", format!("{{\"n\":{n}}}")).await.unwrap();
        hook.wait_requests(n as usize + 1).await;
    }
    let want: BTreeMap<u64, usize> = (0..4).map(|n| (n, 1)).collect();
    assert_eq!(per_n(&hook), want);
    let holder: String = conn.get("redis-router:lease:slow").await.unwrap();
    assert!(holder.ends_with("-a"), "a still holds the lease: {holder}");
    assert_eq!(
        b.count("Took the lease"),
        0,
        "b never took the lease from a living holder"
    );
    assert_eq!(a.count("Lost the lease"), 0);
}
