//! Benchmark: 100,000 entries stream → stream through a consumer group, the router against
//! Redis's own limit for the same work (XREADGROUP COUNT 100, one XADD per entry and the XACK,
//! pipelined by one plain client), measured in the same run on the same redis-server.
//!
//! `cargo bench --bench stream_to_stream` (set BENCH_ENTRIES to change the count).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use support::{RedisServer, spawn_daemon};

const BATCH: usize = 100;

async fn preload(conn: &mut MultiplexedConnection, key: &str, n: usize) {
    for chunk in (0..n).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in chunk..(chunk + 1000).min(n) {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("event")
                .arg("order.created")
                .arg("n")
                .arg(i)
                .arg("payload")
                .arg("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
                .ignore();
        }
        let _: () = pipe.query_async(conn).await.expect("preload");
    }
}

/// Redis's own limit: one client, XREADGROUP COUNT 100, then one pipeline with an XADD per
/// entry and the XACK of the batch.
async fn baseline(conn: &mut MultiplexedConnection, n: usize) -> Duration {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("base:src")
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("group");
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg("base:src")
            .arg(">")
            .query_async(conn)
            .await
            .expect("XREADGROUP");
        let Some(key) = reply.keys.into_iter().next() else {
            break;
        };
        let mut pipe = redis::pipe();
        let mut ack = redis::cmd("XACK");
        ack.arg("base:src").arg("g");
        for entry in &key.ids {
            let mut cmd = redis::cmd("XADD");
            cmd.arg("base:dst").arg("*");
            for (k, v) in &entry.map {
                let bytes: Vec<u8> = redis::from_redis_value_ref(v).expect("field value");
                cmd.arg(k).arg(bytes);
            }
            pipe.add_command(cmd).ignore();
            ack.arg(&entry.id);
        }
        pipe.add_command(ack).ignore();
        let _: () = pipe.query_async(conn).await.expect("pipeline");
        done += key.ids.len();
    }
    start.elapsed()
}

async fn router(redis: &RedisServer, conn: &mut MultiplexedConnection, n: usize) -> Duration {
    let yaml = format!(
        "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n  - name: copy\n    source: {{ stream: \"router:src\", group: g, start: oldest, batch: {BATCH} }}\n    sinks: [ {{ stream: \"router:dst\" }} ]\n"
    );
    let start = Instant::now();
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    loop {
        let len: usize = conn.xlen("router:dst").await.expect("XLEN");
        if len >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    daemon.stop().await;
    elapsed
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let redis = RedisServer::start();
    // TCP_NODELAY, like the router's own connections: a fair limit.
    let spec = redis_router::config::ConnectionSpec {
        name: "bench".into(),
        url: redis.url(),
        ..Default::default()
    };
    let mut conn = redis_router::redis_conn::client(&spec)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    preload(&mut conn, "base:src", n).await;
    preload(&mut conn, "router:src", n).await;

    let base = baseline(&mut conn, n).await;
    let routed = router(&redis, &mut conn, n).await;
    let dst: usize = conn.xlen("router:dst").await.expect("XLEN");
    assert_eq!(dst, n, "the router copied every entry exactly once");
    let pending: redis::Value = conn.xpending("router:src", "g").await.expect("XPENDING");

    let base_rate = n as f64 / base.as_secs_f64();
    let router_rate = n as f64 / routed.as_secs_f64();
    println!("stream -> stream, {n} entries, batch {BATCH}, one redis-server shared with the client");
    println!(
        "  redis limit (plain pipelined client): {base_rate:>10.0} msgs/s  ({:.3} s)",
        base.as_secs_f64()
    );
    println!(
        "  redis-router:                         {router_rate:>10.0} msgs/s  ({:.3} s)",
        routed.as_secs_f64()
    );
    println!(
        "  ratio router / limit:                 {:>10.2}",
        router_rate / base_rate
    );
    println!("  pending after run: {pending:?}");
}
