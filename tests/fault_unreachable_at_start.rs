//! Redis unreachable when the router starts: it starts anyway, reports not ready, retries with
//! backoff, and catches up once Redis appears.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use support::*;

async fn readyz(port: u16) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    Some(
        client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?
            .status()
            .as_u16(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_catches_up() {
    let redis_port = free_port();
    let http_port = free_port();
    let yaml = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: copy
    source: { stream: src, group: g, start: oldest, block: 100ms }
    sinks: [ { stream: dst } ]
  - name: bridge
    source: { channel: events }
    sinks: [ { stream: events-log } ]
"#;
    let listen = format!("127.0.0.1:{http_port}");
    let router = RouterProcess::start_with(yaml, &format!("redis://127.0.0.1:{redis_port}"), &["--listen", &listen]);
    let status = wait_for("the HTTP endpoint", TIMEOUT, || readyz(http_port)).await;
    assert_eq!(status, 503, "not ready without Redis");
    // It keeps retrying, with backoff, and stays not ready meanwhile.
    wait_for("a fourth retry of one rule", TIMEOUT, || {
        let log = router.log();
        async move {
            log.lines()
                .any(|l| l.contains("Cannot open source; retrying.") && l.contains(" attempt=4 "))
                .then_some(())
        }
    })
    .await;
    assert_eq!(readyz(http_port).await, Some(503));
    assert!(router.child_running(), "the router did not give up");

    let redis = RedisServer::start_on(redis_port, &[]);
    let mut conn = redis.conn().await;
    let _: String = conn.xadd("src", "*", &[("k", "v")]).await.unwrap();
    wait_subscribers(&mut conn, "events", 1).await;
    let _: i64 = conn.publish("events", "hello").await.unwrap();
    assert_eq!(
        wait_stream_len(&conn, "dst", 1).await[0].1,
        vec![("k".to_string(), "v".to_string())]
    );
    assert_eq!(
        wait_stream_len(&conn, "events-log", 1).await[0].1,
        vec![("payload".to_string(), "hello".to_string())]
    );
    wait_for("ready", TIMEOUT, || async {
        (readyz(http_port).await == Some(200)).then_some(())
    })
    .await;
    // Each retry's delay is drawn from [half, all] of 100 ms doubled per attempt, capped at 5 s
    // (README): read the attempt and the delay of every retry line and check both bounds, so
    // a constant delay, one wrapped to 0 or one that never doubles fails.
    let log = router.log();
    let number_after = |line: &str, key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let retries: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("Cannot open source; retrying."))
        .filter_map(|l| Some((number_after(l, "attempt")?, number_after(l, "delay_ms")?)))
        .collect();
    assert!(retries.iter().any(|(attempt, _)| *attempt >= 4), "{log}");
    for (attempt, delay) in &retries {
        let full = (100u64 << (attempt - 1).min(20)).min(5000);
        assert!(
            *delay >= full / 2 && *delay <= full,
            "attempt {attempt}: delay {delay} ms, not within [{}, {full}] ms: {retries:?}",
            full / 2
        );
    }
}
