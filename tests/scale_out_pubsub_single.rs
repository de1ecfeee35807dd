//! `ha: single`: two router processes subscribe to one channel; only the holder of the lease
//! delivers. When it is killed, the other takes over once the lease expires (the gap logged);
//! no message is delivered twice.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: single
    source: { channel: events, ha: single, lease_ttl: 1s }
    sinks:
      - stream: dst
        fields: { n: "{{$.n}}", by: "${REDIS_ROUTER_INSTANCE}" }
"#;

/// Publish `count` numbered messages; `next` is the next number.
async fn publish(conn: &redis::aio::MultiplexedConnection, next: &AtomicU64, count: u64) {
    let mut pipe = redis::pipe();
    for _ in 0..count {
        let n = next.fetch_add(1, Ordering::SeqCst);
        pipe.publish("events", format!("{{\"n\":{n}}}")).ignore();
    }
    let mut conn = conn.clone();
    let _: () = within(pipe.query_async(&mut conn)).await.unwrap();
}

fn delivered(dst: &[(String, Vec<(String, String)>)]) -> Vec<(u64, String)> {
    dst.iter()
        .map(|(_, f)| {
            let get = |k: &str| {
                f.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get("n").parse().unwrap(), get("by"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_delivers_and_the_other_takes_over() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut routers: HashMap<&str, RouterProcess> = ["a", "b"]
        .into_iter()
        .map(|i| (i, RouterProcess::start_instance(RULES, &redis.url(), &[], Some(i))))
        .collect();
    wait_subscribers(&mut conn, "events", 2).await;
    let next = AtomicU64::new(0);

    // Until one instance holds the lease and delivers.
    let active = wait_for("an active instance", TIMEOUT, || {
        let (c0, next) = (conn.clone(), &next);
        async move {
            publish(&c0, next, 10).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut c = c0.clone();
            delivered(&xrange(&mut c, "dst").await).last().map(|(_, by)| by.clone())
        }
    })
    .await;
    let standby = if active == "a" { "b" } else { "a" };
    let before = delivered(&xrange(&mut conn, "dst").await);
    assert!(
        before.iter().all(|(_, by)| *by == active),
        "only the lease holder delivers: {before:?}"
    );

    let mut victim = routers.remove(active.as_str()).unwrap();
    victim.signal("KILL");
    tokio::task::block_in_place(|| victim.wait_exit(Duration::from_secs(10)));
    let killed_at_n = next.load(Ordering::SeqCst);
    // Keep publishing until the standby has taken over and delivers.
    wait_for("the standby to take over", Duration::from_secs(10), || {
        let (c0, next) = (conn.clone(), &next);
        let standby = standby.to_string();
        async move {
            publish(&c0, next, 10).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut c = c0.clone();
            delivered(&xrange(&mut c, "dst").await)
                .iter()
                .any(|(_, by)| *by == standby)
                .then_some(())
        }
    })
    .await;
    let last = next.load(Ordering::SeqCst);
    publish(&conn, &next, 1).await;
    let all = wait_for("the last message delivered", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let d = delivered(&xrange(&mut c, "dst").await);
            d.iter().any(|(m, _)| *m == last).then_some(d)
        }
    })
    .await;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for (m, _) in &all {
        *seen.entry(*m).or_default() += 1;
    }
    assert!(seen.values().all(|c| *c == 1), "no message delivered twice");
    let lost = (0..=last).filter(|m| !seen.contains_key(m)).count();
    eprintln!(
        "killed {active} at message {killed_at_n}; {standby} took over; {lost} messages published in the gap were not delivered (at most once)"
    );
    assert!(
        all.iter()
            .filter(|(m, _)| *m > killed_at_n)
            .all(|(_, by)| *by == standby)
    );
    let log = routers[standby].log();
    assert!(log.contains("Took the lease"), "{log}");
}
