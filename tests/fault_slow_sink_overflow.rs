//! A slow sink behind a fast Pub/Sub source: each overflow policy applies and is counted, the
//! buffer bounds memory, and Redis never cuts the subscriber off.

mod support;

use std::collections::HashSet;

use support::hook::{HookServer, Reply};
use support::*;

const N: usize = 1000;
const BUFFER: usize = 100;

fn n_of(body: &str) -> usize {
    body.trim_start_matches("{\"n\":")
        .trim_end_matches('}')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_policies_apply_and_are_counted() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // About 2 ms per request, 2 at a time: far slower than the publisher.
    hook.set_default(Reply::Hang(std::time::Duration::from_millis(2)));
    let mut yaml = String::from("connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n");
    for policy in ["drop_oldest", "drop_newest", "block"] {
        yaml.push_str(&format!(
            "  - name: {policy}\n    source: {{ channel: \"in:{policy}\", buffer: {BUFFER}, overflow: {policy} }}\n    sinks:\n      - webhook: \"{}\"\n        max_in_flight: 2\n",
            hook.url(&format!("/{policy}"))
        ));
    }
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    let mut conn = redis.conn().await;
    for policy in ["drop_oldest", "drop_newest", "block"] {
        wait_subscribers(&mut conn, &format!("in:{policy}"), 1).await;
    }
    for policy in ["drop_oldest", "drop_newest", "block"] {
        let mut pipe = redis::pipe();
        for n in 0..N {
            pipe.publish(format!("in:{policy}"), format!("{{\"n\":{n}}}")).ignore();
        }
        let _: () = within(pipe.query_async(&mut conn)).await.unwrap();
    }
    let settled = |policy: &'static str| {
        let daemon = &daemon;
        async move {
            let received = daemon.counter(policy, "received");
            let done = daemon.counter(policy, "delivered") + daemon.counter(policy, "overflowed");
            (received == N as u64 && done == N as u64 && daemon.counter(policy, "in_flight") == 0).then_some(())
        }
    };
    for policy in ["drop_oldest", "drop_newest", "block"] {
        wait_for(&format!("{policy} settled"), std::time::Duration::from_secs(60), || {
            settled(policy)
        })
        .await;
    }
    let delivered = |policy: &str| -> HashSet<usize> {
        hook.requests()
            .iter()
            .filter(|r| r.path == format!("/{policy}"))
            .map(|r| n_of(&r.body_str()))
            .collect()
    };
    let oldest = delivered("drop_oldest");
    let newest = delivered("drop_newest");
    let block = delivered("block");
    eprintln!(
        "{N} messages, buffer {BUFFER}: drop_oldest delivered {} (dropped {}), drop_newest delivered {} (dropped {}), block delivered {}",
        oldest.len(),
        daemon.counter("drop_oldest", "overflowed"),
        newest.len(),
        daemon.counter("drop_newest", "overflowed"),
        block.len()
    );
    assert!(daemon.counter("drop_oldest", "overflowed") > 0);
    assert!(oldest.contains(&(N - 1)), "drop_oldest keeps the newest message");
    assert!(daemon.counter("drop_newest", "overflowed") > 0);
    assert!(
        newest.contains(&0) && !newest.contains(&(N - 1)),
        "drop_newest keeps the oldest, drops the newest"
    );
    assert_eq!(daemon.counter("block", "overflowed"), 0);
    assert_eq!(
        block.len(),
        N,
        "block delivers everything (Redis holds the rest in its output buffer)"
    );
    for policy in ["drop_oldest", "drop_newest", "block"] {
        assert_eq!(
            daemon.counter(policy, "reconnects"),
            0,
            "{policy}: Redis never cut the subscriber off"
        );
    }
    daemon.stop().await;
}
