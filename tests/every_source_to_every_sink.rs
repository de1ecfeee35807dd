//! Every source kind into every sink kind, all rules in one router.

mod support;

use redis::AsyncCommands;
use support::*;

/// One rule per (source, sink) pair. Source keys: `in:<src>-<sink>`; sink keys `out:<src>-<sink>`.
fn rules() -> String {
    let sources = [
        ("channel", "{ channel: \"in:channel-SINK\" }"),
        ("pattern", "{ pattern: \"in:pattern-SINK:*\" }"),
        (
            "group",
            "{ stream: \"in:group-SINK\", group: g, start: oldest, block: 100ms }",
        ),
        ("tail", "{ stream: \"in:tail-SINK\", start: oldest, block: 100ms }"),
        ("queue", "{ queue: \"in:queue-SINK\", block: 100ms }"),
    ];
    let sinks = [
        ("publish", "{ publish: \"out:SRC-publish\" }"),
        ("stream", "{ stream: \"out:SRC-stream\" }"),
        ("queue", "{ queue: \"out:SRC-queue\" }"),
    ];
    let mut out = String::from("connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n");
    for (src, src_yaml) in sources {
        for (sink, sink_yaml) in sinks {
            out.push_str(&format!(
                "  - name: {src}-{sink}\n    source: {}\n    sinks: [ {} ]\n",
                src_yaml.replace("SINK", sink),
                sink_yaml.replace("SRC", src)
            ));
        }
    }
    out
}

#[tokio::test]
async fn every_source_reaches_every_sink() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    // Listen on the publish sinks' channels before anything is routed.
    let mut listener = within(redis.client().get_async_pubsub()).await.unwrap();
    within(listener.psubscribe("out:*-publish")).await.unwrap();
    let daemon = spawn_daemon(&rules(), &redis.url()).await;
    for sink in ["publish", "stream", "queue"] {
        wait_subscribers(&mut conn, &format!("in:channel-{sink}"), 1).await;
        wait_group(&mut conn, &format!("in:group-{sink}"), "g").await;
    }
    wait_psubscribed(&mut conn).await;

    for sink in ["publish", "stream", "queue"] {
        let body = |src: &str| format!(r#"{{"from":"{src}","to":"{sink}"}}"#);
        let _: i64 = conn
            .publish(format!("in:channel-{sink}"), body("channel"))
            .await
            .unwrap();
        let _: i64 = conn
            .publish(format!("in:pattern-{sink}:x"), body("pattern"))
            .await
            .unwrap();
        let _: String = conn
            .xadd(format!("in:group-{sink}"), "*", &[("from", "group"), ("to", sink)])
            .await
            .unwrap();
        let _: String = conn
            .xadd(format!("in:tail-{sink}"), "*", &[("from", "tail"), ("to", sink)])
            .await
            .unwrap();
        let _: i64 = conn.rpush(format!("in:queue-{sink}"), body("queue")).await.unwrap();
    }

    let mut published = Vec::new();
    {
        let mut messages = listener.on_message();
        while published.len() < 5 {
            let msg = within(futures_util::StreamExt::next(&mut messages))
                .await
                .expect("pubsub message");
            published.push((
                msg.get_channel_name().to_string(),
                String::from_utf8(msg.get_payload_bytes().to_vec()).unwrap(),
            ));
        }
    }
    published.sort();
    assert_eq!(
        published,
        vec![
            (
                "out:channel-publish".to_string(),
                r#"{"from":"channel","to":"publish"}"#.to_string()
            ),
            ("out:group-publish".into(), r#"{"from":"group","to":"publish"}"#.into()),
            (
                "out:pattern-publish".into(),
                r#"{"from":"pattern","to":"publish"}"#.into()
            ),
            ("out:queue-publish".into(), r#"{"from":"queue","to":"publish"}"#.into()),
            ("out:tail-publish".into(), r#"{"from":"tail","to":"publish"}"#.into()),
        ]
    );

    for src in ["channel", "pattern", "group", "tail", "queue"] {
        let entries = wait_stream_len(&conn, &format!("out:{src}-stream"), 1).await;
        assert_eq!(
            entries[0].1,
            vec![("from".to_string(), src.to_string()), ("to".into(), "stream".into())],
            "{src} → stream: JSON objects and stream entries both become one field per key"
        );
        let key = format!("out:{src}-queue");
        let element: Vec<String> = wait_for(&format!("an element in {key}"), TIMEOUT, || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let v: Vec<String> = conn.lrange(&key, 0, -1).await.ok()?;
                (!v.is_empty()).then_some(v)
            }
        })
        .await;
        assert_eq!(
            element,
            vec![format!(r#"{{"from":"{src}","to":"queue"}}"#)],
            "{src} → queue"
        );
    }
    // The queue sources emptied their processing lists once delivered.
    wait_for("processing lists emptied", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = conn.keys("in:queue-*").await.ok()?;
            let lists: Vec<&String> = keys
                .iter()
                .filter(|k| !k.contains(":heartbeat:") && !k.ends_with(":consumers"))
                .collect();
            lists.is_empty().then_some(())
        }
    })
    .await;
    daemon.stop().await;
}
