//! Redis restarts (a planned restart with persistence) while 50,000 stream entries flow through
//! a consumer-group rule: none is lost; duplicates come only from the batch in flight, counted.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::*;

const TOTAL: u64 = 50_000;
const BATCH: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_flow_loses_nothing() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "everysec".into(),
    ]);
    let url = redis.url();
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: copy
    source: {{ stream: src, group: g, start: oldest, batch: {BATCH}, block: 200ms }}
    on_error: {{ retry: {{ attempts: 50, backoff: 50ms, max_backoff: 500ms }} }}
    sinks:
      - stream: dst
        fields: {{ n: "{{{{$.n}}}}", original_id: "{{{{meta.id}}}}" }}
"#
    );
    let router = RouterProcess::start(&yaml, &url);

    // A chunk whose reply is lost in the restart is written again: the source may then hold an
    // `n` twice, but never lacks one. What the router must do is judged by entry ids.
    let producer = tokio::spawn({
        let client = redis.client();
        async move {
            let mut next = 0u64;
            while next < TOTAL {
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let end = (next + 500).min(TOTAL);
                let mut pipe = redis::pipe();
                pipe.atomic();
                for n in next..end {
                    pipe.cmd("XADD").arg("src").arg("*").arg("n").arg(n).ignore();
                }
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => next = end,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    let conn = redis.conn().await;
    wait_for("15,000 copied", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move {
            let n: u64 = conn.xlen("dst").await.ok()?;
            (n >= 15_000).then_some(())
        }
    })
    .await;
    tokio::task::block_in_place(|| redis.shutdown_and_restart());
    within(producer).await.unwrap();

    let conn = redis.conn().await;
    let (src, dst) = wait_for("every source entry copied", Duration::from_secs(120), || {
        let mut conn = conn.clone();
        async move {
            let src = xrange(&mut conn, "src").await;
            let dst = xrange(&mut conn, "dst").await;
            let copied: std::collections::HashSet<&str> = dst
                .iter()
                .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "original_id").map(|(_, v)| v.as_str()))
                .collect();
            src.iter()
                .all(|(id, _)| copied.contains(id.as_str()))
                .then_some((src, dst))
        }
    })
    .await;
    let mut per_source: HashMap<&str, u32> = HashMap::new();
    for (_, f) in &dst {
        *per_source
            .entry(
                f.iter()
                    .find(|(k, _)| k == "original_id")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or(""),
            )
            .or_default() += 1;
    }
    let duplicates = dst.len() - per_source.len();
    let distinct_n: std::collections::HashSet<&str> = src
        .iter()
        .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "n").map(|(_, v)| v.as_str()))
        .collect();
    eprintln!(
        "{} source entries ({} distinct n), Redis restarted mid-flow: {} copied, {duplicates} duplicates (bound {BATCH})",
        src.len(),
        distinct_n.len(),
        dst.len()
    );
    assert_eq!(distinct_n.len() as u64, TOTAL, "the producer wrote every n");
    assert!(
        duplicates <= BATCH,
        "duplicates {duplicates} exceed the batch in flight"
    );
    let log = router.log();
    assert!(log.contains("retrying"), "the outage was seen and retried:\n{log}");
}
