//! Benchmark: stream → stream throughput with 1, 2 and 3 router processes sharing consumer
//! groups, against one redis-server and against a 3-master Redis Cluster
//! (`cargo bench --bench instances`; BENCH_ENTRIES changes the count, default 300,000).
//!
//! The work is three rules, each copying its own stream (`src:{K}` → `dst:{K}`); the hash tags
//! are chosen so that on the cluster each rule's streams live on a different master. On one
//! host Redis, the cluster's masters and every router share the cores, so more instances mostly
//! show what coordination costs; on separate hosts they add capacity.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use support::cluster::RedisCluster;
use support::{RedisServer, RouterProcess};

const RULES: usize = 3;

/// Three hash tags whose slots are served by three different masters.
fn tags(cluster: &RedisCluster) -> Vec<String> {
    let mut out: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let tag = format!("t{i}");
        let owner = cluster.owner_of(&format!("src:{{{tag}}}"));
        if out.iter().all(|(_, o)| *o != owner) {
            out.push((tag, owner));
        }
        if out.len() == RULES {
            break;
        }
    }
    out.into_iter().map(|(t, _)| t).collect()
}

fn yaml(connection: &str, tags: &[String]) -> String {
    let mut out = format!("connections:\n  default: {connection}\nrules:\n");
    for t in tags {
        out.push_str(&format!(
            "  - name: copy-{t}\n    source: {{ stream: \"src:{{{t}}}\", group: g, start: oldest, batch: 100 }}\n    sinks: [ {{ stream: \"dst:{{{t}}}\" }} ]\n"
        ));
    }
    out
}

async fn preload<C: ConnectionLike + Send>(conn: &mut C, tags: &[String], n: usize) {
    for t in tags {
        let key = format!("src:{{{t}}}");
        for chunk in (0..n / tags.len()).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in chunk..(chunk + 1000).min(n / tags.len()) {
                pipe.xadd(&key, "*", &[("n", i.to_string())]).ignore();
            }
            let _: () = pipe.query_async(conn).await.expect("preload");
        }
    }
}

async fn copied<C: ConnectionLike + Send>(conn: &mut C, tags: &[String]) -> usize {
    let mut total = 0;
    for t in tags {
        let len: usize = redis::cmd("XLEN")
            .arg(format!("dst:{{{t}}}"))
            .query_async(conn)
            .await
            .expect("XLEN");
        total += len;
    }
    total
}

/// Start `instances` routers on `yaml` and time them until `n` entries are copied.
async fn run<C: ConnectionLike + Send>(
    conn: &mut C,
    yaml: &str,
    url: &str,
    tags: &[String],
    n: usize,
    instances: usize,
) {
    let start = Instant::now();
    let routers: Vec<RouterProcess> = (0..instances)
        .map(|i| RouterProcess::start_instance(yaml, url, &[], Some(&i.to_string())))
        .collect();
    let deadline = start + Duration::from_secs(120);
    while copied(conn, tags).await < n {
        assert!(Instant::now() < deadline, "not copied in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let total = copied(conn, tags).await;
    println!(
        "  {instances} instance(s): {:>8.0} msgs/s ({:.2} s, {total} copied)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    drop(routers);
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let n = n / RULES * RULES;
    // The tags are picked on a throwaway cluster; slots do not depend on the cluster.
    let tags = tags(&RedisCluster::start(3));
    println!("stream -> stream, {n} entries over {RULES} rules, N router processes (release build)");
    println!("one redis-server:");
    for instances in 1..=3usize {
        let redis = RedisServer::start();
        let mut conn = redis.conn().await;
        preload(&mut conn, &tags, n).await;
        let yaml = yaml("{ url: \"${REDIS_URL}\" }", &tags);
        run(&mut conn, &yaml, &redis.url(), &tags, n, instances).await;
    }
    println!("3-master Redis Cluster:");
    for instances in 1..=3usize {
        let cluster = RedisCluster::start(3);
        let mut conn = cluster.conn().await;
        preload(&mut conn, &tags, n).await;
        let yaml = yaml(&format!("{{ cluster: true, nodes: {} }}", cluster.nodes_yaml()), &tags);
        run(&mut conn, &yaml, &cluster.nodes[0].url(), &tags, n, instances).await;
    }
}
