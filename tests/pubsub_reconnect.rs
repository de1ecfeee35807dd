//! A channel subscription survives `CLIENT KILL TYPE pubsub` and a restart of redis-server.

mod support;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: bridge
    source: { channel: "events" }
    sinks: [ { stream: "events:log" } ]
"#;

async fn publish_and_expect(redis: &RedisServer, n: usize, body: &str) {
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events", 1).await;
    let _: i64 = within(conn.publish("events", body)).await.unwrap();
    let entries = wait_stream_len(&conn, "events:log", n).await;
    assert_eq!(
        entries.last().unwrap().1,
        vec![("payload".to_string(), body.to_string())]
    );
}

#[tokio::test]
async fn resubscribes_after_client_kill() {
    let redis = RedisServer::start();
    let daemon = spawn_daemon(RULES, &redis.url()).await;
    publish_and_expect(&redis, 1, "before").await;

    let mut conn = redis.conn().await;
    let killed: i64 = within(
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    assert_eq!(killed, 1);
    publish_and_expect(&redis, 2, "after kill").await;
    assert_eq!(daemon.counter("bridge", "reconnects"), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn resubscribes_after_redis_restart() {
    let mut redis = RedisServer::start();
    let daemon = spawn_daemon(RULES, &redis.url()).await;
    publish_and_expect(&redis, 1, "before").await;

    redis.restart();
    // Subscribed again within a second of Redis being back.
    let back = std::time::Instant::now();
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "events", 1).await;
    let resubscribed = back.elapsed();
    assert!(
        resubscribed < std::time::Duration::from_secs(1),
        "resubscribed after {resubscribed:?}"
    );
    // The restarted server kept nothing (no persistence): the stream starts again at 1.
    publish_and_expect(&redis, 1, "after restart").await;
    wait_for("reconnect counted", TIMEOUT, || async {
        (daemon.counter("bridge", "reconnects") >= 1).then_some(())
    })
    .await;
    daemon.stop().await;
}
