//! Benchmark: webhook requests/s against a local HTTP server (in this process), stream source,
//! with `max_in_flight` 1, 16 and 64.
//!
//! `cargo bench --bench webhook` (BENCH_ENTRIES changes the count, default 5000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::hook::HookServer;
use support::{RedisServer, spawn_daemon};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    println!("webhook sink, {n} entries from a stream, one local HTTP server (axum) in the bench process");
    for max_in_flight in [1usize, 16, 64] {
        let hook = HookServer::start().await;
        let key = format!("in:{max_in_flight}");
        for chunk in (0..n).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in chunk..(chunk + 1000).min(n) {
                pipe.xadd(&key, "*", &[("n", i.to_string())]).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.expect("preload");
        }
        let yaml = format!(
            "connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n  - name: hook\n    source: {{ stream: \"{key}\", group: g, start: oldest, batch: 100 }}\n    sinks:\n      - webhook: \"{}\"\n        max_in_flight: {max_in_flight}\n",
            hook.url("/bench")
        );
        let start = Instant::now();
        let daemon = spawn_daemon(&yaml, &redis.url()).await;
        while hook.requests().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        daemon.stop().await;
        let pending: redis::Value = conn.xpending(&key, "g").await.expect("XPENDING");
        println!(
            "  max_in_flight {max_in_flight:>3}: {:>8.0} requests/s  ({:.2} s, {} requests, pending after: {pending:?})",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            hook.requests().len()
        );
    }
}
