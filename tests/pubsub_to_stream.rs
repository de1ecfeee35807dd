//! channel → stream with a filter, templates and a Laravel-style prefix; a non-JSON payload
//! goes to the dead-letter stream and the rule goes on.

mod support;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
  laravel: { url: "${REDIS_URL}", prefix: "laravel_database_" }
rules:
  - name: orders-to-stream
    source: { channel: "events:order", connection: laravel }
    filter: "@.event == 'order.created' && @.data.total >= 100000"
    sinks:
      - stream: "processed_stream"
        maxlen: 1000
        fields:
          original_channel: "{{meta.key}}"
          order: "{{$.data.order_id}}"
          rule: "{{meta.rule}}"
          data: "{{$}}"
"#;

#[tokio::test]
async fn filtered_channel_lands_in_stream_with_templates_and_prefix() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(RULES, &redis.url()).await;
    // The rule subscribes to the prefixed name, as a Laravel subscriber would.
    wait_subscribers(&mut conn, "laravel_database_events:order", 1).await;

    let big = r#"{"event":"order.created","data":{"order_id":987,"total":150000}}"#;
    let small = r#"{"event":"order.created","data":{"order_id":988,"total":10}}"#;
    let other = r#"{"event":"order.paid","data":{"order_id":989,"total":150000}}"#;
    for payload in [small, other, big] {
        let _: i64 = within(conn.publish("laravel_database_events:order", payload))
            .await
            .unwrap();
    }
    // Published on the unprefixed name: a different channel, not routed.
    let _: i64 = within(conn.publish("events:order", big)).await.unwrap();
    // Then a second passing message on the prefixed name: once it is in the stream, the
    // unprefixed one, published before it, would be there too if it were routed.
    let last = r#"{"event":"order.created","data":{"order_id":990,"total":200000}}"#;
    let _: i64 = within(conn.publish("laravel_database_events:order", last))
        .await
        .unwrap();
    let entries = wait_stream_len(&conn, "processed_stream", 2).await;
    let orders: Vec<String> = entries.iter().map(|(_, f)| field(f, "order")).collect();
    assert_eq!(
        orders,
        ["987", "990"],
        "only the big order.created messages on the prefixed channel pass: {entries:?}"
    );
    let fields = &entries[0].1;
    assert_eq!(
        fields,
        &vec![
            ("data".to_string(), big.to_string()),
            ("order".into(), "987".into()),
            ("original_channel".into(), "events:order".into()),
            ("rule".into(), "orders-to-stream".into()),
        ]
    );
    let exists: bool = conn.exists("laravel_database_processed_stream").await.unwrap();
    assert!(!exists, "the sink uses the default connection, which has no prefix");
    wait_for("the second delivery counted", TIMEOUT, || async {
        (daemon.counter("orders-to-stream", "delivered") >= 2).then_some(())
    })
    .await;
    assert_eq!(daemon.counter("orders-to-stream", "received"), 4);
    assert_eq!(daemon.counter("orders-to-stream", "filtered_out"), 2);
    assert_eq!(daemon.counter("orders-to-stream", "delivered"), 2);
    daemon.stop().await;
}

#[tokio::test]
async fn non_json_payload_is_dead_lettered_and_the_rule_goes_on() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(RULES, &redis.url()).await;
    wait_subscribers(&mut conn, "laravel_database_events:order", 1).await;

    let _: i64 = within(conn.publish("laravel_database_events:order", "this is not json"))
        .await
        .unwrap();
    let good = r#"{"event":"order.created","data":{"order_id":1,"total":100000}}"#;
    let _: i64 = within(conn.publish("laravel_database_events:order", good))
        .await
        .unwrap();

    let delivered = wait_stream_len(&conn, "processed_stream", 1).await;
    assert_eq!(delivered[0].1.iter().find(|(k, _)| k == "order").unwrap().1, "1");
    // Dead letters are written on the source's connection, so they carry its prefix.
    let dead = wait_stream_len(&conn, "laravel_database_redis-router:dead-letter", 1).await;
    let fields: std::collections::HashMap<_, _> = dead[0].1.iter().cloned().collect();
    assert_eq!(fields["rule"], "orders-to-stream");
    assert_eq!(fields["payload"], "this is not json");
    assert_eq!(fields["source"], "channel");
    assert_eq!(fields["source_key"], "events:order");
    assert!(fields["reason"].contains("payload is not JSON"), "{}", fields["reason"]);
    assert!(fields["failed_at"].ends_with('Z'));
    assert_eq!(daemon.counter("orders-to-stream", "dead_lettered"), 1);
    daemon.stop().await;
}
