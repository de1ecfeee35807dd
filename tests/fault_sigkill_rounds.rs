//! SIGKILL at random moments of a stream → stream rule, 20 rounds, while entries keep coming:
//! the destination holds every source entry at least once.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::*;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_lose_nothing() {
    let redis = RedisServer::start();
    let conn = redis.conn().await;
    let yaml = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: copy
    source: { stream: src, group: g, consumer: fixed, start: oldest, batch: 50, block: 50ms }
    sinks:
      - stream: dst
        fields: { original_id: "{{meta.id}}" }
"#;
    // A fixed seed: the kill moments differ from round to round but not from run to run.
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..ROUNDS {
        let mut c = conn.clone();
        let mut pipe = redis::pipe();
        for i in 0..PER_ROUND {
            pipe.xadd("src", "*", &[("round", round.to_string()), ("i", i.to_string())])
                .ignore();
        }
        let _: () = within(pipe.query_async(&mut c)).await.unwrap();
        let mut router = RouterProcess::start(yaml, &redis.url());
        tokio::time::sleep(Duration::from_millis(rng.u64(20..250))).await;
        router.signal("KILL");
        tokio::task::block_in_place(|| router.wait_exit(Duration::from_secs(10)));
    }
    let _final_run = RouterProcess::start(yaml, &redis.url());
    let total = ROUNDS * PER_ROUND;
    let dst = wait_for(
        "every entry copied after the last kill",
        Duration::from_secs(60),
        || {
            let mut c = conn.clone();
            async move {
                let src: HashSet<String> = xrange(&mut c, "src").await.into_iter().map(|(id, _)| id).collect();
                let dst = xrange(&mut c, "dst").await;
                let copied: HashSet<&str> = dst.iter().map(|(_, f)| f[0].1.as_str()).collect();
                (src.len() == total && src.iter().all(|id| copied.contains(id.as_str()))).then_some(dst)
            }
        },
    )
    .await;
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for (_, f) in &dst {
        *per_id.entry(f[0].1.as_str()).or_default() += 1;
    }
    eprintln!(
        "{ROUNDS} SIGKILLs over {total} entries: {} copied, {} duplicates (each kill may repeat the batch in flight)",
        dst.len(),
        dst.len() - per_id.len()
    );
    assert_eq!(per_id.len(), total);
}
