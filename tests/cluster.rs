//! Redis Cluster: a real 3-master cluster that the test starts (`redis-server --cluster-enabled
//! yes` on free ports, joined with `redis-cli --cluster create`), and one rule file routing
//! stream, queue, channel (plain and `ha: claim`) and sharded-channel sources on it, with sinks
//! whose keys fall on every node; a Laravel job that reaches a cluster-mode queue (`hash_tag:
//! true`, keys `queues:{to-b}`) and runs in a real `queue:work` connected to the cluster; and a
//! sharded subscription that comes back after the node serving its channel restarts.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;
use support::cluster::RedisCluster;
use support::laravel::{artisan_cluster, describe, php_json_normalise, read_job_log};
use support::*;

/// Kinds whose `c:out:<kind>` streams land on every node of a 3-master cluster.
const KINDS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn rules(cluster: &RedisCluster) -> String {
    format!(
        r#"
connections:
  cluster:
    cluster: true
    nodes: {nodes}
rules:
  - name: stream-fanout
    source: {{ stream: "c:events", group: router, start: oldest, connection: cluster, block: 100ms }}
    sinks:
      - stream: "c:out:{{{{$.kind}}}}"
        connection: cluster
  - name: queue-to-queue
    source: {{ queue: "c:jobs-in", connection: cluster, block: 100ms }}
    sinks:
      - queue: "c:jobs-out"
        connection: cluster
  - name: channel-to-stream
    source: {{ channel: "c:chan", connection: cluster }}
    sinks:
      - stream: "c:from-chan"
        connection: cluster
  - name: claimed-to-stream
    source: {{ channel: "c:claimed", ha: claim, connection: cluster }}
    sinks:
      - stream: "c:from-claimed"
        connection: cluster
  - name: sharded-to-stream
    source: {{ channel: "c:schan", sharded: true, connection: cluster }}
    sinks:
      - stream: "c:from-schan"
        connection: cluster
      - publish: "c:echo"
        sharded: true
        connection: cluster
"#,
        nodes = cluster.nodes_yaml()
    )
}

/// Subscribers of `channel` summed over every node (`PUBSUB NUMSUB`, or `SHARDNUMSUB` for a
/// sharded channel), which each answer only for their own clients.
async fn wait_cluster_subscribers(cluster: &RedisCluster, channel: &str, sharded: bool) {
    let mut conns = Vec::new();
    for node in &cluster.nodes {
        conns.push(node.conn().await);
    }
    wait_for(&format!("a subscriber of {channel}"), TIMEOUT, || {
        let mut conns = conns.clone();
        async move {
            let mut total = 0;
            for conn in &mut conns {
                let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
                    .arg(if sharded { "SHARDNUMSUB" } else { "NUMSUB" })
                    .arg(channel)
                    .query_async(conn)
                    .await
                    .ok()?;
                if let Some(redis::Value::Int(n)) = reply.get(1) {
                    total += n;
                }
            }
            (total >= 1).then_some(())
        }
    })
    .await
}

async fn cluster_xlen(conn: &ClusterConnection, key: &str, n: usize) {
    wait_for(&format!("{n} entries in {key}"), TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let len: usize = conn.xlen(key).await.ok()?;
            (len >= n).then_some(())
        }
    })
    .await;
}

/// The `n` field of every entry of `key`.
async fn numbers_in(conn: &mut ClusterConnection, key: &str) -> Vec<u64> {
    let reply: redis::streams::StreamRangeReply = within(conn.xrange_all(key)).await.expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|e| {
            let body: String = e
                .get("n")
                .unwrap_or_else(|| panic!("entry {} of {key} has no n: {e:?}", e.id));
            body.parse().expect("n is a number")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queue_and_channel_rules_route_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let mut conn = cluster.conn().await;
    let owners: BTreeSet<u16> = KINDS.iter().map(|k| cluster.owner_of(&format!("c:out:{k}"))).collect();
    assert_eq!(
        owners.len(),
        3,
        "the sink's keys span every node, so batches split by slot"
    );

    let (echo_tx, mut echo_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut echo_conn = cluster.conn_with(Some(echo_tx)).await;
    within(echo_conn.ssubscribe("c:echo")).await.expect("SSUBSCRIBE c:echo");

    let daemon = spawn_daemon(&rules(&cluster), &cluster.nodes[0].url()).await;
    wait_cluster_subscribers(&cluster, "c:chan", false).await;
    wait_cluster_subscribers(&cluster, "c:schan", true).await;
    wait_cluster_subscribers(&cluster, "c:claimed", false).await;

    // Streams: 2,000 entries, written 100 to a pipeline, fanned out by kind over three nodes.
    const ENTRIES: u64 = 2_000;
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(100) {
        let mut pipe = redis::pipe();
        for n in chunk {
            let kind = KINDS[*n as usize % KINDS.len()];
            pipe.xadd("c:events", "*", &[("kind", kind.to_string()), ("n", n.to_string())])
                .ignore();
        }
        let _: () = within(pipe.query_async(&mut conn)).await.expect("XADD");
    }
    // Queues: 500 elements.
    const ELEMENTS: usize = 500;
    let elements: Vec<String> = (0..ELEMENTS).map(|i| format!("job-{i}")).collect();
    let _: usize = within(conn.rpush("c:jobs-in", &elements)).await.expect("RPUSH");
    // Pub/Sub, plain (broadcast to every node) and sharded (served by the channel's owner).
    const PUBLISHED: u64 = 300;
    for n in 0..PUBLISHED {
        let payload = format!(r#"{{"n":{n}}}"#);
        let _: i64 = within(conn.publish("c:chan", &payload)).await.expect("PUBLISH");
        let _: i64 = within(conn.spublish("c:schan", &payload)).await.expect("SPUBLISH");
        let _: i64 = within(conn.publish("c:claimed", &payload)).await.expect("PUBLISH");
    }

    let per_kind = ENTRIES / KINDS.len() as u64;
    let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
    for kind in KINDS {
        let key = format!("c:out:{kind}");
        cluster_xlen(&conn, &key, per_kind as usize).await;
        for n in numbers_in(&mut conn, &key).await {
            assert_eq!(
                KINDS[n as usize % KINDS.len()],
                kind,
                "entry {n} routed to the stream of its kind"
            );
            assert!(seen.insert(n, kind).is_none(), "entry {n} delivered twice");
        }
    }
    assert_eq!(seen.len() as u64, ENTRIES, "every stream entry delivered once");
    wait_for("nothing pending in c:events", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let p: redis::streams::StreamPendingReply = conn.xpending("c:events", "router").await.ok()?;
            (p.count() == 0).then_some(())
        }
    })
    .await;

    wait_for(&format!("{ELEMENTS} elements on c:jobs-out"), TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let n: usize = conn.llen("c:jobs-out").await.ok()?;
            (n >= ELEMENTS).then_some(())
        }
    })
    .await;
    let moved: Vec<String> = conn.lrange("c:jobs-out", 0, -1).await.unwrap();
    assert_eq!(moved, elements, "every element moved once, in order");
    let in_flight: Vec<String> = redis::cmd("SMEMBERS")
        .arg("{c:jobs-in}:consumers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        in_flight.len(),
        1,
        "the consumer registered beside its list: {in_flight:?}"
    );
    let processing = format!("{{c:jobs-in}}:processing:{}", in_flight[0]);
    wait_for("an empty processing list", TIMEOUT, || {
        let mut conn = conn.clone();
        let processing = processing.clone();
        async move {
            let n: usize = conn.llen(&processing).await.ok()?;
            (n == 0).then_some(())
        }
    })
    .await;

    // `ha: claim` writes one claim key per message, on every node: its pipelines are split too.
    for key in ["c:from-chan", "c:from-schan", "c:from-claimed"] {
        cluster_xlen(&conn, key, PUBLISHED as usize).await;
        // Not a set: a message written twice must show as twice.
        let mut got: Vec<u64> = numbers_in(&mut conn, key).await;
        got.sort_unstable();
        assert_eq!(got, (0..PUBLISHED).collect::<Vec<u64>>(), "{key}: every message once");
    }
    // The first PUBLISHED pushes, duplicates included: a message sent twice shows.
    let mut echoed = Vec::new();
    while echoed.len() < PUBLISHED as usize {
        let push = within(echo_rx.recv()).await.expect("push channel open");
        if let Some(msg) = redis::Msg::from_push_info(push) {
            assert_eq!(msg.get_channel_name(), "c:echo");
            let body: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
            echoed.push(body["n"].as_u64().unwrap());
        }
    }
    echoed.sort_unstable();
    assert_eq!(
        echoed,
        (0..PUBLISHED).collect::<Vec<u64>>(),
        "SPUBLISH sink: every message once"
    );
    for rule in [
        "stream-fanout",
        "queue-to-queue",
        "channel-to-stream",
        "sharded-to-stream",
    ] {
        assert_eq!(
            daemon.counter(rule, "dead_lettered"),
            0,
            "{rule}: nothing dead-lettered"
        );
        assert_eq!(daemon.counter(rule, "source_errors"), 0, "{rule}: no source error");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_job_reaches_a_cluster_mode_queue() {
    let cluster = RedisCluster::start(3);
    let mut conn = cluster.conn().await;
    let yaml = format!(
        r#"
connections:
  cluster: {{ cluster: true, nodes: {nodes}, prefix: "laravel_database_" }}
rules:
  - name: orders-to-b
    source: {{ stream: "orders", group: router, start: oldest, body_field: data, connection: cluster, block: 100ms }}
    sinks:
      - queue: to-b
        connection: cluster
        hash_tag: true
        laravel: {{ job: 'App\Jobs\SendInvoice' }}
"#,
        nodes = cluster.nodes_yaml()
    );
    let daemon = spawn_daemon(&yaml, &cluster.nodes[0].url()).await;
    let docs = [
        r#"{"order_id":1,"name":"Zoë"}"#,
        r#"{"order_id":2,"lines":[{"sku":"a/b","qty":3}]}"#,
        r#"{"order_id":3,"empty":{}}"#,
    ];
    for doc in docs {
        let _: String = within(conn.xadd("laravel_database_orders", "*", &[("data", doc)]))
            .await
            .expect("XADD");
    }
    let queue = "laravel_database_queues:{to-b}";
    wait_for(&format!("{} jobs on {queue}", docs.len()), TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let n: usize = conn.llen(queue).await.ok()?;
            (n >= docs.len()).then_some(())
        }
    })
    .await;
    let notify: usize = conn.llen(format!("{queue}:notify")).await.unwrap();
    assert_eq!(
        notify,
        docs.len(),
        "Laravel's push: one notify entry per job, in the queue's slot"
    );

    // A Laravel 8 app on a cluster names the queue `{to-b}` itself (Laravel 13 adds the braces).
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("jobs.log");
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let out = tokio::task::spawn_blocking({
        let log = log.clone();
        move || {
            artisan_cluster(
                &ports,
                "laravel_database_",
                Some(&log),
                &[
                    "queue:work",
                    "redis",
                    "--queue={to-b}",
                    "--stop-when-empty",
                    "--tries=1",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "worker: {}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "a job failed: {}",
        describe(&out)
    );
    let mut ran = read_job_log(&log);
    ran.sort();
    let mut expected: Vec<(String, String)> = docs
        .iter()
        .map(|d| ("SendInvoice".to_string(), php_json_normalise(d)))
        .collect();
    expected.sort();
    assert_eq!(ran, expected, "each job ran once, with the data sent");
    let left: usize = conn.llen(queue).await.unwrap();
    assert_eq!(left, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscription_comes_back_after_its_node_restarts() {
    let mut cluster = RedisCluster::start(3);
    let conn = cluster.conn().await;
    let yaml = format!(
        r#"
connections:
  cluster: {{ cluster: true, nodes: {nodes} }}
rules:
  - name: sharded
    source: {{ channel: "r:schan", sharded: true, connection: cluster }}
    sinks:
      - stream: "r:out"
        connection: cluster
"#,
        nodes = cluster.nodes_yaml()
    );
    let owner = cluster.owner_of("r:schan");
    assert_ne!(owner, cluster.owner_of("r:out"), "the sink's stream is on another node");
    let daemon = spawn_daemon(&yaml, &cluster.nodes[0].url()).await;
    wait_cluster_subscribers(&cluster, "r:schan", true).await;
    let publish = |n: u64| {
        let mut conn = conn.clone();
        async move {
            let receivers: redis::RedisResult<i64> = conn.spublish("r:schan", format!(r#"{{"n":{n}}}"#)).await;
            receivers.unwrap_or(0)
        }
    };
    for n in 0..10 {
        publish(n).await;
    }
    cluster_xlen(&conn, "r:out", 10).await;

    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == owner)
        .expect("the channel's node");
    node.restart();
    cluster.wait_ready();
    // Published until the subscription is back: those published while it was down are lost
    // (Pub/Sub is at most once), then every one arrives.
    let mut n = 100;
    wait_for("the sharded subscription back", TIMEOUT, || {
        n += 1;
        let publish = publish(n);
        async move { (publish.await >= 1).then_some(()) }
    })
    .await;
    for n in 1000..1010 {
        publish(n).await;
    }
    let mut conn = conn.clone();
    wait_for("the messages published after the restart", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let got: BTreeSet<u64> = numbers_in(&mut conn, "r:out").await.into_iter().collect();
            (1000..1010).all(|n| got.contains(&n)).then_some(())
        }
    })
    .await;
    let got = numbers_in(&mut conn, "r:out").await;
    assert_eq!(
        got.iter().filter(|n| **n < 10).count(),
        10,
        "the messages before the restart, once"
    );
    assert!(daemon.counter("sharded", "reconnects") >= 1, "the gap was counted");
    daemon.stop().await;
}
