//! Benchmark: stream → stream throughput with 1, 2 and 3 router processes sharing one consumer
//! group on one redis-server (`cargo bench --bench instances`; BENCH_ENTRIES changes the count,
//! default 100,000). On this 2-core machine Redis and every router share the cores, so more
//! instances mostly show what coordination costs; on separate hosts they add capacity.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{RedisServer, RouterProcess};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!("stream -> stream, {n} entries, one consumer group, N router processes (release build), one redis-server");
    for instances in 1..=3usize {
        let redis = RedisServer::start();
        let mut conn = redis.conn().await;
        for chunk in (0..n).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in chunk..(chunk + 1000).min(n) {
                pipe.xadd("src", "*", &[("n", i.to_string())]).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.expect("preload");
        }
        let yaml = "connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n  - name: copy\n    source: { stream: src, group: g, start: oldest, batch: 100 }\n    sinks: [ { stream: dst } ]\n";
        let start = Instant::now();
        let routers: Vec<RouterProcess> = (0..instances)
            .map(|i| RouterProcess::start_instance(yaml, &redis.url(), &[], Some(&i.to_string())))
            .collect();
        loop {
            let len: usize = conn.xlen("dst").await.expect("XLEN");
            if len >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        let len: usize = conn.xlen("dst").await.expect("XLEN");
        println!(
            "  {instances} instance(s): {:>8.0} msgs/s ({:.2} s, {len} copied)",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        drop(routers);
    }
}
