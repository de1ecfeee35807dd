//! The destination Redis is full (`maxmemory` with `noeviction`): every write answers `OOM`.
//! That is a state a real deployment leaves again (keys expire, ops raise the limit), so the
//! router retries under `on_error` instead of dead-lettering at once, and once memory is freed
//! every message arrives exactly once in each sink: a stream, a raw list and a Laravel queue
//! (whose push is a Lua script, where Redis reports OOM from inside the script).

mod support;

use redis::AsyncCommands;
use std::collections::BTreeMap;
use support::*;

const TOTAL: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_destination_is_retried_and_receives_everything_once_when_freed() {
    let src = RedisServer::start();
    let dst = RedisServer::start();
    let mut d = dst.conn().await;
    // Fill the destination and cap it where it stands: any write is then refused with OOM.
    let filler = vec![b'x'; 4 << 20];
    let _: () = d.set("filler", filler).await.unwrap();
    let used: String = redis::cmd("INFO").arg("memory").query_async(&mut d).await.unwrap();
    let used: u64 = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut d)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used)
        .query_async(&mut d)
        .await
        .unwrap();
    let refused: redis::RedisResult<()> = d.rpush("probe", "x").await;
    assert_eq!(
        refused.unwrap_err().code(),
        Some("OOM"),
        "the destination refuses writes"
    );

    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
  full: {{ url: "{}" }}
rules:
  - name: to-full
    source: {{ stream: in, group: g, start: oldest, block: 100ms }}
    on_error: {{ retry: {{ attempts: 10000, backoff: 50ms, max_backoff: 300ms }} }}
    sinks:
      - {{ stream: out, connection: full, fields: {{ n: "{{{{$.n}}}}" }} }}
      - {{ queue: jobs, connection: full, body: "{{{{$.n}}}}" }}
      - queue: to-b
        connection: full
        laravel: {{ handler: 'App\Handlers\Orders@handle' }}
"#,
        dst.url()
    );
    let router = RouterProcess::start(&yaml, &src.url());
    let mut s = src.conn().await;
    wait_group(&mut s, "in", "g").await;
    for n in 0..TOTAL {
        let _: String = s.xadd("in", "*", &[("n", n.to_string())]).await.unwrap();
    }
    // Each sink meets OOM and retries; nothing may be dead-lettered meanwhile.
    for sink in ["stream out", "queue jobs", "laravel queue to-b"] {
        router
            .wait_line("the sink retrying on OOM", &["Sink failed; retrying", sink, "OOM"])
            .await;
    }
    let dead: usize = s.xlen("redis-router:dead-letter").await.unwrap();
    assert_eq!(dead, 0, "a full destination is not a reason to dead-letter");

    let _: () = d.del("filler").await.unwrap();
    let out = wait_stream_len(&d, "out", TOTAL).await;
    let jobs: Vec<String> = wait_for("every job on the list", TIMEOUT, || {
        let mut d = d.clone();
        async move {
            let jobs: Vec<String> = d.lrange("jobs", 0, -1).await.unwrap();
            (jobs.len() >= TOTAL).then_some(jobs)
        }
    })
    .await;
    let laravel: usize = wait_for("every Laravel job", TIMEOUT, || {
        let mut d = d.clone();
        async move {
            let n: usize = d.llen("queues:to-b").await.unwrap();
            (n >= TOTAL).then_some(n)
        }
    })
    .await;
    wait_nothing_pending(&s, "in", "g").await;

    let mut per_n: BTreeMap<String, usize> = BTreeMap::new();
    for (_, fields) in &out {
        let n = fields.iter().find(|(k, _)| k == "n").map(|(_, v)| v.clone()).unwrap();
        *per_n.entry(n).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = (0..TOTAL).map(|n| (n.to_string(), 1)).collect();
    assert_eq!(per_n, want, "each entry exactly once in the stream");
    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    for j in jobs {
        *listed.entry(j).or_default() += 1;
    }
    assert_eq!(listed, want, "each entry exactly once on the list");
    assert_eq!(laravel, TOTAL, "each entry exactly once as a Laravel job");
    let notify: usize = d.llen("queues:to-b:notify").await.unwrap();
    assert_eq!(notify, TOTAL, "one notify element per job, as Laravel's push");
    let dead: usize = s.xlen("redis-router:dead-letter").await.unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
}
