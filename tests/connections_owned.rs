//! The connections a router opens are owned by its supervisor: when a reload moves every rule
//! off a Redis, the router's connections to it close; the rules that still use one keep it.

mod support;

use redis::AsyncCommands;
use support::*;

fn rules(sink_url: &str) -> String {
    format!(
        "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\n  out: {{ url: \"{sink_url}\" }}\nrules:\n  - name: a\n    source: {{ channel: in }}\n    sinks: [ {{ stream: copied, connection: out }} ]\n"
    )
}

/// Clients connected to `redis` other than the one asking.
async fn other_clients(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = within(redis::cmd("CLIENT").arg("LIST").query_async(conn))
        .await
        .unwrap();
    list.lines().count().saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_no_rule_uses_closes_after_the_reload() {
    let source = RedisServer::start();
    let (b, c) = (RedisServer::start(), RedisServer::start());
    let (mut src, mut on_b, mut on_c) = (source.conn().await, b.conn().await, c.conn().await);
    let router = RouterProcess::start_with(&rules(&b.url()), &source.url(), &["--reload-debounce", "1h"]);
    router.wait_rules_started(&["a"]).await;
    wait_subscribers(&mut src, "in", 1).await;
    let _: i64 = within(src.publish("in", "one")).await.unwrap();
    wait_stream_len(&on_b, "copied", 1).await;
    assert_eq!(
        other_clients(&mut on_b).await,
        1,
        "the router's one shared connection to b"
    );

    // The sink moves to c: the next message lands there, and b has no client of the router left.
    std::fs::write(&router.file, rules(&c.url())).unwrap();
    router.signal("HUP");
    router
        .wait_line("the reload", &["Rules reloaded.", " generation=2 "])
        .await;
    router
        .wait_line(
            "the connection to b closed",
            &["Closed connections no rule uses any more.", "closed=1"],
        )
        .await;
    wait_subscribers(&mut src, "in", 1).await;
    let _: i64 = within(src.publish("in", "two")).await.unwrap();
    let copied = wait_stream_len(&on_c, "copied", 1).await;
    assert_eq!(field(&copied[0].1, "payload"), "two");
    wait_for("b's clients to go", TIMEOUT, || {
        let mut on_b = on_b.clone();
        async move { (other_clients(&mut on_b).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(other_clients(&mut on_c).await, 1, "the one shared connection to c");
    assert_eq!(
        xrange(&mut on_b, "copied").await.len(),
        1,
        "b kept only the first message"
    );
}
