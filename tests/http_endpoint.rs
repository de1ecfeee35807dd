//! The HTTP endpoint of a running router process: exact counters in /metrics after known
//! traffic, /readyz following Redis away and back, and no password in /status or /metrics.

mod support;

use redis::AsyncCommands;
use support::*;

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path).await
}

/// The value of one sample line (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_ready(port: u16, want: u16) -> String {
    wait_for(&format!("/readyz to answer {want}"), TIMEOUT, || async move {
        let (status, body) = get(port, "/readyz").await?;
        (status == want).then_some(body)
    })
    .await
}

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: orders
    source: { channel: "orders" }
    filter: "@.total >= 100"
    sinks: [ { stream: "big-orders" } ]
  - name: copy
    source: { stream: "in", group: g, start: oldest, block: 100ms }
    sinks: [ { stream: "out" } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _router = RouterProcess::start_with(RULES, &redis.url(), &["--listen", &listen]);
    wait_ready(port, 200).await;
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "orders", 1).await;
    for total in [150, 20, 300, 99, 100] {
        let _: i64 = conn.publish("orders", format!(r#"{{"total":{total}}}"#)).await.unwrap();
    }
    let _: i64 = conn.publish("orders", "not json").await.unwrap();
    for i in 0..7 {
        let _: String = conn.xadd("in", "*", &[("i", i.to_string())]).await.unwrap();
    }
    let metrics = wait_for("counters to settle", TIMEOUT, || async move {
        let (_, m) = get(port, "/metrics").await?;
        let done = sample(&m, r#"redis_router_received_total{rule="orders"}"#) == Some(6.0)
            && sample(&m, r#"redis_router_delivered_total{rule="copy"}"#) == Some(7.0)
            && sample(&m, r#"redis_router_dead_lettered_total{rule="orders"}"#) == Some(1.0);
        done.then_some(m)
    })
    .await;
    let expect = [
        (r#"redis_router_received_total{rule="orders"}"#, 6.0),
        (r#"redis_router_filtered_out_total{rule="orders"}"#, 2.0),
        (r#"redis_router_delivered_total{rule="orders"}"#, 3.0),
        (r#"redis_router_dead_lettered_total{rule="orders"}"#, 1.0),
        (
            r#"redis_router_sink_delivered_total{rule="orders",sink="stream big-orders"}"#,
            3.0,
        ),
        (
            r#"redis_router_sink_retried_total{rule="orders",sink="stream big-orders"}"#,
            0.0,
        ),
        (r#"redis_router_overflowed_total{rule="orders"}"#, 0.0),
        (r#"redis_router_received_total{rule="copy"}"#, 7.0),
        (r#"redis_router_delivered_total{rule="copy"}"#, 7.0),
        (r#"redis_router_delivery_seconds_count{rule="copy"}"#, 7.0),
        (r#"redis_router_delivery_seconds_count{rule="orders"}"#, 3.0),
        (r#"redis_router_in_flight{rule="copy"}"#, 0.0),
        (r#"redis_router_rule_up{rule="orders"}"#, 1.0),
        ("redis_router_config_generation", 1.0),
        (r#"redis_router_reloads_total{result="rejected"}"#, 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&metrics, series), Some(want), "{series}\n{metrics}");
    }
    assert!(metrics.contains("# TYPE redis_router_delivery_seconds histogram"));
    assert!(
        sample(&metrics, r#"redis_router_stream_pending{rule="copy"}"#).is_some(),
        "{metrics}"
    );
    let (status, health) = get(port, "/healthz").await.unwrap();
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    // Every metric the router exports is in the README's table, so an operator can look up
    // what each one means.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = &readme[readme.find("| metric | type | meaning |").unwrap()..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let exported: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE redis_router_"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(exported.len() >= 20, "{metrics}");
    for name in exported {
        assert!(
            table.contains(&format!("`{name}`")) || table.contains(&format!("`{name}{{")),
            "metric `redis_router_{name}` is not in the README's metrics table"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_away_and_back() {
    let mut redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let router = RouterProcess::start_with(RULES, &redis.url(), &["--listen", &listen]);
    assert_eq!(wait_ready(port, 200).await, "ready\n");
    redis.stop();
    let body = wait_ready(port, 503).await;
    assert!(body.starts_with("not ready: "), "{body}");
    redis.restart();
    wait_ready(port, 200).await;
    // Routing works again after the outage.
    let mut conn = redis.conn().await;
    let _: String = conn.xadd("in", "*", &[("after", "outage")]).await.unwrap();
    let out = wait_stream_len(&conn, "out", 1).await;
    assert_eq!(
        out[0].1,
        vec![("after".to_string(), "outage".to_string())],
        "{}",
        router.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_shows_a_password() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cretpw")
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://:s3cretpw@127.0.0.1:{}", redis.port);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let router = RouterProcess::start_with(RULES, &url, &["--listen", &listen]);
    wait_ready(port, 200).await;
    let (status, body) = get(port, "/status").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["connections"][0]["url"],
        format!("redis://:***@127.0.0.1:{}", redis.port)
    );
    assert_eq!(json["rules"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["rules"][0]["state"], "running");
    assert_eq!(json["generation"], 1);
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    let (_, page) = get(port, "/").await.unwrap();
    for (what, text) in [
        ("/status", &body),
        ("/metrics", &metrics),
        ("/", &page),
        ("the log", &router.log()),
    ] {
        assert!(!text.contains("s3cretpw"), "{what} shows the password:\n{text}");
    }
}
