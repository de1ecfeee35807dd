//! `ha: claim`: three router processes subscribe to one channel and each message is delivered
//! by one of them; one process is killed with SIGKILL half-way, and the messages it had claimed
//! but not delivered are claimed again by the others once its claims expire.
//!
//! At 25,000 msgs/s with `claim_ttl: 1s`, an instance that held every message another instance
//! claimed for the whole TTL would hold about 17,000, over its `buffer` of 10,000: held
//! messages were dropped, and those whose claimer then died were lost. Held claims are checked
//! again long before the TTL, so nothing overflows (`overflowed_total` stays 0) and the killed
//! instance's claims are counted as reclaimed by the others (`claims_reclaimed_total`).
//!
//! The kill must land while the instance has claims in flight, or there is nothing to reclaim:
//! b's rule has one more sink, a webhook that never answers, so its first batch is written to
//! the stream and then stays in flight, unmarked, until b is killed. That batch is delivered a
//! second time by the survivors: the duplicates the README states, each once by b and once by a
//! survivor.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::hook::{HookServer, Reply};
use support::*;

async fn metrics(port: u16) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let resp = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

/// The value of one sample line (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(Duration::from_secs(600)));
    let b_rules = format!(
        "{RULES}      - webhook: \"{}\"\n        timeout: 600s\n",
        hook.url("/b")
    );
    let mut routers: Vec<RouterProcess> = ["a", "b", "c"]
        .iter()
        .zip(&ports)
        .map(|(i, port)| {
            let listen = format!("127.0.0.1:{port}");
            let rules = if *i == "b" { b_rules.as_str() } else { RULES };
            RouterProcess::start_instance(rules, &redis.url(), &["--listen", &listen], Some(i))
        })
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
            // b is in the middle of a batch: written to the stream, waiting for its webhook.
            hook.wait_requests(1).await;
            routers[1].signal("KILL");
            tokio::task::block_in_place(|| routers[1].wait_exit(Duration::from_secs(10)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read the whole stream only when it has grown to TOTAL or beyond since the last read: the
    // test must not take the CPU the routers need.
    let checked = std::cell::Cell::new(0usize);
    wait_for("every message delivered", Duration::from_secs(60), || {
        let mut c = conn.clone();
        let checked = &checked;
        async move {
            let len: usize = redis::AsyncCommands::xlen(&mut c, "dst").await.ok()?;
            if len < TOTAL || len == checked.get() {
                return None;
            }
            checked.set(len);
            let dst = xrange(&mut c, "dst").await;
            let distinct: std::collections::HashSet<&str> = dst
                .iter()
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "n").map(|(_, v)| v.as_str()))
                .collect();
            (distinct.len() == TOTAL).then_some(dst)
        }
    })
    .await;
    // b's claims expire one claim_ttl after the kill, and only then do the survivors take its
    // batch over: every message can be in the stream before that. Wait for the takeover and
    // for a message of b's batch written a second time before counting (a survivor writes the
    // rest of what it took over within the same round).
    let reclaimed = wait_for("b's claims reclaimed by a and c", TIMEOUT, || async {
        let mut r = 0;
        for port in [ports[0], ports[2]] {
            r += sample(
                &metrics(port).await?,
                r#"redis_router_claims_reclaimed_total{rule="bridge"}"#,
            )?;
        }
        (r > 0).then_some(r)
    })
    .await;
    let dst = wait_for("b's batch written again by a survivor", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let len: usize = redis::AsyncCommands::xlen(&mut c, "dst").await.ok()?;
            if len <= TOTAL {
                return None;
            }
            Some(xrange(&mut c, "dst").await)
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
    // The survivors' own counters: nothing dropped from their buffers or held claims.
    for (name, port) in [("a", ports[0]), ("c", ports[2])] {
        let m = wait_for(&format!("/metrics of {name}"), TIMEOUT, || metrics(port)).await;
        assert_eq!(
            sample(&m, r#"redis_router_overflowed_total{rule="bridge"}"#),
            Some(0),
            "{name} dropped nothing\n{m}"
        );
    }
    eprintln!(
        "{TOTAL} messages, 3 instances with ha: claim, b killed half-way: shares {by:?}, {duplicates} duplicates, {reclaimed} of b's claims reclaimed by a and c"
    );
    assert_eq!(per_n.len(), TOTAL, "nothing lost");
    // Only a message whose claimer died after writing it but before marking it done is
    // delivered twice: at most b's batch in flight, and each such message once by b and once
    // by the survivor that reclaimed it.
    assert!(duplicates <= 100, "{duplicates} duplicates");
    assert!(duplicates > 0, "b's batch in flight was delivered again by a survivor");
    for (n, count) in &per_n {
        if *count > 1 {
            let bys: Vec<&str> = dst
                .iter()
                .filter(|(_, f)| f.iter().any(|(k, v)| k == "n" && v == n))
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "by").map(|(_, v)| v.as_str()))
                .collect();
            assert_eq!(*count, 2, "message {n} delivered by {bys:?}");
            assert!(
                bys.contains(&"b") && bys.iter().any(|b| *b != "b"),
                "message {n} delivered by {bys:?}"
            );
        }
    }
    assert!(reclaimed > 0, "the killed instance's claims were taken over");
    assert!(
        reclaimed as usize >= duplicates,
        "{reclaimed} reclaimed, {duplicates} duplicates"
    );
    let logged = routers[0].count("Claimed again") + routers[2].count("Claimed again");
    assert!(logged > 0, "a survivor logged the messages it claimed again");
    for instance in ["a", "b", "c"] {
        assert!(
            by.get(instance).copied().unwrap_or(0) > 0,
            "{instance} did a share: {by:?}"
        );
    }
}
