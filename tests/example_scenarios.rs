//! routes.example.yaml works as shipped: an order event published on `events:order` and entries
//! XADDed to `demo_stream` (also while the router was down) land in `processed_stream`.

mod support;

use std::collections::HashMap;

use redis::AsyncCommands;
use support::*;

#[tokio::test]
async fn example_rules_route_both_scenarios() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let yaml = std::fs::read_to_string(repo_root().join("routes.example.yaml")).unwrap();

    // Added before the router ever ran: a consumer group starting at `oldest` still reads it.
    let early: String = conn
        .xadd(
            "demo_stream",
            "*",
            &[
                ("event", "order.created"),
                ("payload", "early"),
                ("timestamp", "1700000000"),
            ],
        )
        .await
        .unwrap();

    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    wait_subscribers(&mut conn, "events:order", 1).await;
    let order = r#"{"event":"order.created","data":{"order_id":987,"total":150000}}"#;
    let _: i64 = conn.publish("events:order", order).await.unwrap();
    let late: String = conn
        .xadd(
            "demo_stream",
            "*",
            &[
                ("event", "order.created"),
                ("payload", "late"),
                ("timestamp", "1700000001"),
            ],
        )
        .await
        .unwrap();

    let entries = wait_stream_len(&conn, "processed_stream", 3).await;
    let as_maps: Vec<HashMap<String, String>> = entries.iter().map(|(_, f)| f.iter().cloned().collect()).collect();
    let from_channel: Vec<_> = as_maps.iter().filter(|m| m.contains_key("original_channel")).collect();
    assert_eq!(from_channel.len(), 1);
    assert_eq!(from_channel[0]["original_channel"], "events:order");
    assert_eq!(from_channel[0]["data"], order);

    let mut from_stream: Vec<_> = as_maps.iter().filter(|m| m.contains_key("original_id")).collect();
    from_stream.sort_by_key(|m| m["original_id"].clone());
    assert_eq!(from_stream.len(), 2);
    assert_eq!(from_stream[0]["original_id"], early);
    assert_eq!(from_stream[1]["original_id"], late);
    assert_eq!(
        from_stream[0]["data"],
        r#"{"event":"order.created","payload":"early","timestamp":"1700000000"}"#
    );
    let processed_at = &from_stream[1]["processed_at"];
    assert!(
        humantime::parse_rfc3339(processed_at).is_ok(),
        "processed_at is RFC 3339: {processed_at}"
    );

    // Both entries also became jobs of service B on its Laravel queue.
    let jobs: Vec<String> = wait_for("two jobs for B", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let jobs: Vec<String> = conn.lrange("laravel_database_queues:to-b", 0, -1).await.ok()?;
            (jobs.len() == 2).then_some(jobs)
        }
    })
    .await;
    for (job, payload) in jobs.iter().zip(["early", "late"]) {
        let view = redis_router::laravel::parse_job(job.as_bytes()).expect("a Laravel job");
        assert_eq!(view.display_name.as_deref(), Some("App\\Jobs\\CALLP2"));
        assert_eq!(view.data.as_ref().and_then(|d| d["payload"].as_str()), Some(payload));
    }
    daemon.stop().await;
}
