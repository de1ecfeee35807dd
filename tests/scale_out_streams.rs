//! Three router processes on one rule file against one redis-server: 50,000 stream entries
//! through one consumer group, one process killed with SIGKILL half-way. Every entry is
//! delivered, duplicates only from the killed process's batch in flight (counted), and every
//! process did a share.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::*;

const TOTAL: usize = 50_000;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: copy
    source: { stream: src, group: g, start: oldest, batch: 100, block: 100ms, claim_idle: 1s }
    sinks:
      - stream: dst
        fields: { original_id: "{{meta.id}}", by: "${REDIS_ROUTER_INSTANCE}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work_and_survive_a_kill() {
    let redis = RedisServer::start();
    let conn = redis.conn().await;
    let mut routers: Vec<RouterProcess> = ["a", "b", "c"]
        .iter()
        .map(|i| RouterProcess::start_instance(RULES, &redis.url(), &[], Some(i)))
        .collect();

    // Produce while the routers run, in paced chunks.
    let producer = tokio::spawn({
        let mut conn = conn.clone();
        async move {
            for chunk in 0..TOTAL / 500 {
                let mut pipe = redis::pipe();
                for i in 0..500 {
                    pipe.xadd("src", "*", &[("n", (chunk * 500 + i).to_string())]).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    wait_for("half copied", Duration::from_secs(60), || {
        let mut c = conn.clone();
        async move {
            let n: usize = c.xlen("dst").await.ok()?;
            (n >= TOTAL / 2).then_some(())
        }
    })
    .await;
    routers[1].signal("KILL");
    tokio::task::block_in_place(|| routers[1].wait_exit(Duration::from_secs(10)));
    within(producer).await.unwrap();

    let dst = wait_for("every entry copied", Duration::from_secs(90), || {
        let mut c = conn.clone();
        async move {
            let n: usize = c.xlen("dst").await.ok()?;
            if n < TOTAL {
                return None;
            }
            let dst = xrange(&mut c, "dst").await;
            let distinct: std::collections::HashSet<&str> = dst
                .iter()
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "original_id").map(|(_, v)| v.as_str()))
                .collect();
            (distinct.len() == TOTAL).then_some(dst)
        }
    })
    .await;
    let mut by: HashMap<String, usize> = HashMap::new();
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for (_, f) in &dst {
        for (k, v) in f {
            match k.as_str() {
                "by" => *by.entry(v.clone()).or_default() += 1,
                "original_id" => *per_id.entry(v.as_str()).or_default() += 1,
                _ => {}
            }
        }
    }
    let duplicates = dst.len() - per_id.len();
    eprintln!(
        "{TOTAL} entries, 3 instances, b killed half-way: shares {by:?}, {duplicates} duplicates (bound: b's batch, 100)"
    );
    assert_eq!(per_id.len(), TOTAL, "nothing lost");
    assert!(duplicates <= 100, "{duplicates} duplicates");
    for instance in ["a", "b", "c"] {
        assert!(
            by.get(instance).copied().unwrap_or(0) > 0,
            "{instance} did a share: {by:?}"
        );
    }
    let consumers: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("src")
        .arg("g")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let text = format!("{consumers:?}");
    let host = redis_router::identity::host();
    for instance in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("{host}-{instance}")),
            "consumer {host}-{instance} in {text}"
        );
    }
}
