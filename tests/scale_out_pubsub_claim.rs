//! `ha: claim`: three router processes subscribe to one channel and each message is delivered
//! by one of them; one process is killed with SIGKILL half-way, and the messages it had claimed
//! but not delivered are claimed again by the others once its claims expire.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const TOTAL: usize = 20_000;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: bridge
    source: { channel: events, ha: claim, claim_ttl: 1s, claim_id: "{{$.n}}" }
    sinks:
      - stream: dst
        fields: { n: "{{$.n}}", by: "${REDIS_ROUTER_INSTANCE}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_once_and_nothing_lost_when_an_instance_dies() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut routers: Vec<RouterProcess> = ["a", "b", "c"]
        .iter()
        .map(|i| RouterProcess::start_instance(RULES, &redis.url(), &[], Some(i)))
        .collect();
    wait_subscribers(&mut conn, "events", 3).await;

    for chunk in 0..TOTAL / 500 {
        let mut pipe = redis::pipe();
        for i in 0..500 {
            pipe.publish("events", format!("{{\"n\":{}}}", chunk * 500 + i))
                .ignore();
        }
        let _: () = within(pipe.query_async(&mut conn)).await.unwrap();
        if chunk == TOTAL / 1000 {
            routers[1].signal("KILL");
            tokio::task::block_in_place(|| routers[1].wait_exit(Duration::from_secs(10)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dst = wait_for("every message delivered", Duration::from_secs(60), || {
        let mut c = conn.clone();
        async move {
            let dst = xrange(&mut c, "dst").await;
            let distinct: std::collections::HashSet<&str> = dst
                .iter()
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "n").map(|(_, v)| v.as_str()))
                .collect();
            (distinct.len() == TOTAL).then_some(dst)
        }
    })
    .await;
    let mut by: HashMap<String, usize> = HashMap::new();
    let mut per_n: HashMap<&str, u32> = HashMap::new();
    for (_, f) in &dst {
        for (k, v) in f {
            match k.as_str() {
                "by" => *by.entry(v.clone()).or_default() += 1,
                "n" => *per_n.entry(v.as_str()).or_default() += 1,
                _ => {}
            }
        }
    }
    let duplicates = dst.len() - per_n.len();
    eprintln!(
        "{TOTAL} messages, 3 instances with ha: claim, b killed half-way: shares {by:?}, {duplicates} duplicates"
    );
    assert_eq!(per_n.len(), TOTAL, "nothing lost");
    // Only a message whose claimer died after writing it but before marking it done is
    // delivered twice: at most b's batch in flight.
    assert!(duplicates <= 100, "{duplicates} duplicates");
    for instance in ["a", "b", "c"] {
        assert!(
            by.get(instance).copied().unwrap_or(0) > 0,
            "{instance} did a share: {by:?}"
        );
    }
}
