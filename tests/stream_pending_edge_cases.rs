//! Pending entries that must not loop for ever: one delivered more than `max_deliveries` times
//! goes to the dead-letter stream; one deleted from the stream while pending is acknowledged
//! and counted.

mod support;

use std::collections::HashMap;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: copy
    source: { stream: "in", group: g, consumer: live, start: oldest, block: 100ms, claim_idle: 100ms, max_deliveries: 2 }
    sinks: [ { stream: out } ]
"#;

async fn read_as(conn: &mut redis::aio::MultiplexedConnection, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg(consumer)
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("in")
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// Group `g` on stream `in`, from its first entry.
async fn create_group(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("in")
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn too_many_deliveries_go_to_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    create_group(&mut conn).await;
    let poison: String = conn.xadd("in", "*", &[("n", "poison")]).await.unwrap();
    // Delivered twice to a consumer that never acknowledged it (it crashed, say).
    read_as(&mut conn, "ghost").await;
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("in")
        .arg("g")
        .arg("ghost")
        .arg(0)
        .arg(&poison)
        .query_async(&mut conn)
        .await
        .unwrap();

    let daemon = spawn_daemon(RULES, &redis.url()).await;
    let dead = wait_stream_len(&conn, "redis-router:dead-letter", 1).await;
    let d: HashMap<_, _> = dead[0].1.iter().cloned().collect();
    assert_eq!(d["source_id"], poison);
    assert_eq!(d["reason"], "delivered 3 times, more than max_deliveries (2)");
    let out: usize = conn.xlen("out").await.unwrap();
    assert_eq!(out, 0, "not delivered to the sink");
    wait_nothing_pending(&conn, "in", "g").await;
    daemon.stop().await;
}

#[tokio::test]
async fn entries_deleted_while_pending_are_acknowledged_and_counted() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    create_group(&mut conn).await;
    let gone: String = conn.xadd("in", "*", &[("n", "gone")]).await.unwrap();
    read_as(&mut conn, "ghost").await;
    let _: i64 = conn.xdel("in", &[&gone]).await.unwrap();
    let _: String = conn.xadd("in", "*", &[("n", "kept")]).await.unwrap();

    let daemon = spawn_daemon(RULES, &redis.url()).await;
    let out = wait_stream_len(&conn, "out", 1).await;
    assert_eq!(out[0].1, vec![("n".to_string(), "kept".to_string())]);
    wait_for("the deleted entry counted", TIMEOUT, || async {
        (daemon.counter("copy", "deleted_while_pending") == 1).then_some(())
    })
    .await;
    wait_nothing_pending(&conn, "in", "g").await;
    daemon.stop().await;
}
