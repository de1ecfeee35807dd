//! Webhook sink against a real HTTP server in the test: retries, permanent failures, timeouts,
//! Retry-After, signatures, and a fan-out whose webhook fails while its stream sink does not.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use support::hook::{HookServer, Reply};
use support::*;

fn channel_rule(url: &str, extra: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: hook
    source: {{ channel: "orders" }}
    on_error: {{ retry: {{ attempts: 4, backoff: 20ms, max_backoff: 200ms }} }}
    sinks:
      - webhook: "{url}"
{extra}
"#
    )
}

async fn publish(conn: &mut redis::aio::MultiplexedConnection, body: &str) {
    wait_subscribers(conn, "orders", 1).await;
    let _: i64 = within(conn.publish("orders", body)).await.unwrap();
}

async fn dead_letters(conn: &redis::aio::MultiplexedConnection, n: usize) -> Vec<HashMap<String, String>> {
    wait_stream_len(conn, "redis-router:dead-letter", n)
        .await
        .into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}

#[tokio::test]
async fn fails_twice_then_succeeds_one_delivery_three_requests() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.script([Reply::Status(500), Reply::Status(503)]);
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(&channel_rule(&hook.url("/orders"), ""), &redis.url()).await;
    publish(&mut conn, r#"{"order":1}"#).await;
    wait_for("delivered", TIMEOUT, || async {
        (daemon.counter("hook", "delivered") == 1).then_some(())
    })
    .await;
    let requests = hook.requests();
    assert_eq!(requests.len(), 3, "two failures and the success");
    assert!(
        requests
            .iter()
            .all(|r| r.body_str() == r#"{"order":1}"# && r.method == "POST" && r.path == "/orders")
    );
    assert_eq!(requests[0].header("content-type").as_deref(), Some("application/json"));
    assert_eq!(daemon.counter("hook", "retried"), 2);
    assert_eq!(daemon.counter("hook", "dead_lettered"), 0);
    daemon.stop().await;
}

#[tokio::test]
async fn client_error_is_dead_lettered_at_once_with_status_and_body() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.script([Reply::Body(400, "bad order: total is missing".into())]);
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(&channel_rule(&hook.url("/orders"), ""), &redis.url()).await;
    publish(&mut conn, r#"{"order":2}"#).await;
    let dead = dead_letters(&conn, 1).await;
    assert_eq!(hook.requests().len(), 1, "a 400 is not retried");
    let d = &dead[0];
    assert_eq!(d["rule"], "hook");
    assert_eq!(d["sink"], format!("webhook {}", hook.url("/orders")));
    assert_eq!(d["attempts"], "1");
    assert_eq!(d["payload"], r#"{"order":2}"#);
    assert!(
        d["error"].contains("HTTP 400") && d["error"].contains("bad order: total is missing"),
        "{}",
        d["error"]
    );
    assert_eq!(d["source"], "channel");
    assert_eq!(d["source_key"], "orders");
    daemon.stop().await;
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_and_is_retried() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.script([Reply::Hang(Duration::from_secs(5))]);
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(
        &channel_rule(&hook.url("/slow"), "        timeout: 300ms"),
        &redis.url(),
    )
    .await;
    publish(&mut conn, r#"{"order":3}"#).await;
    wait_for("delivered", TIMEOUT, || async {
        (daemon.counter("hook", "delivered") == 1).then_some(())
    })
    .await;
    let requests = hook.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_secs(4),
        "retried after the timeout: {gap:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.script([Reply::RetryAfter(429, 1)]);
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(&channel_rule(&hook.url("/limited"), ""), &redis.url()).await;
    publish(&mut conn, r#"{"order":4}"#).await;
    let requests = hook.wait_requests(2).await;
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited for Retry-After: 1, not the 20ms backoff: {gap:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn signature_verifies_with_the_readme_recipe() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(
        &channel_rule(
            &hook.url("/signed"),
            "        secret: \"s3cr3t-key\"\n        headers: { X-Tenant: acme }",
        ),
        &redis.url(),
    )
    .await;
    publish(&mut conn, r#"{"order":5,"name":"Zoë"}"#).await;
    let req = hook.wait_requests(1).await.remove(0);
    assert_eq!(req.header("x-tenant").as_deref(), Some("acme"));
    let ts = req.header("x-router-timestamp").expect("timestamp header");
    let sig = req.header("x-router-signature").expect("signature header");

    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let recipe = readme
        .split("<!-- signature-recipe -->\n```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's signature recipe");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    std::fs::write(&script, recipe).unwrap();
    let verify = |secret: &str, body: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .args([secret, &ts, &sig])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait().unwrap().success()
    };
    assert!(verify("s3cr3t-key", &req.body), "the signature verifies");
    assert!(!verify("wrong-key", &req.body), "a wrong secret does not");
    assert!(!verify("s3cr3t-key", br#"{"order":6}"#), "a changed body does not");
    daemon.stop().await;
}

#[tokio::test]
async fn fan_out_retries_only_the_failing_webhook() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    hook.script([Reply::Status(502), Reply::Status(502)]);
    let mut conn = redis.conn().await;
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: fan
    source: {{ stream: "in", group: g, start: oldest, block: 100ms }}
    on_error: {{ retry: {{ attempts: 5, backoff: 20ms }} }}
    sinks:
      - stream: out
      - webhook: "{}"
"#,
        hook.url("/fan")
    );
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    let _: String = conn.xadd("in", "*", &[("order", "7")]).await.unwrap();
    wait_for("delivered", TIMEOUT, || async {
        (daemon.counter("fan", "delivered") == 1).then_some(())
    })
    .await;
    assert_eq!(hook.requests().len(), 3);
    let out = xrange(&mut conn, "out").await;
    assert_eq!(
        out.len(),
        1,
        "the stream sink was written exactly once while the webhook was retried"
    );
    assert_eq!(out[0].1, vec![("order".to_string(), "7".to_string())]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_dead_letter_names_the_sink_and_never_its_token() {
    let redis = RedisServer::start();
    // Nothing listens there: the request fails to connect, and reqwest's error text would
    // carry the whole URL.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: hook
    source: {{ channel: "orders" }}
    on_error: {{ retry: {{ attempts: 1 }} }}
    sinks:
      - webhook: "{closed}/services/T0SECRET1/B0SECRET2/XSECRET3?token=SECRET4"
      - webhook: "{closed}/hooks/SECRET5abcdefSECRET?token=SECRET6"
        name: billing
"#
    );
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    publish(&mut conn, r#"{"order":3}"#).await;
    let dead = dead_letters(&conn, 2).await;
    let sinks: Vec<&str> = dead.iter().map(|d| d["sink"].as_str()).collect();
    assert!(sinks.contains(&"billing"), "a named sink is its name: {sinks:?}");
    assert!(
        sinks.contains(&format!("webhook {closed}/services/***?token=***").as_str()),
        "an unnamed one its masked URL: {sinks:?}"
    );
    for d in &dead {
        assert!(d["error"].contains("could not connect"), "{d:?}");
        for (field, value) in d {
            assert!(!value.contains("SECRET"), "{field} shows a token: {value}");
        }
    }
    let stats = daemon.stats.rule("hook");
    let labels: Vec<String> = stats.sinks().into_iter().map(|(label, _)| label).collect();
    assert!(labels.iter().all(|l| !l.contains("SECRET")), "{labels:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn content_type_says_what_the_body_is_and_a_rule_header_replaces_it() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    let mut conn = redis.conn().await;
    let rule = format!(
        r#"        body: "order {{{{$.order}}}} paid"
      - webhook: "{json}"
      - webhook: "{form}"
        headers: {{ Content-Type: "application/x-www-form-urlencoded" }}
        body: "order={{{{$.order}}}}""#,
        json = hook.url("/json"),
        form = hook.url("/form"),
    );
    let daemon = spawn_daemon(&channel_rule(&hook.url("/text"), &rule), &redis.url()).await;
    publish(&mut conn, r#"{"order":3}"#).await;
    wait_for("three requests", TIMEOUT, || async {
        (hook.requests().len() == 3).then_some(())
    })
    .await;
    let by_path: HashMap<String, support::hook::Recorded> =
        hook.requests().into_iter().map(|r| (r.path.clone(), r)).collect();
    let types = |path: &str| -> Vec<String> {
        by_path[path]
            .headers
            .get_all("content-type")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(by_path["/text"].body_str(), "order 3 paid");
    assert_eq!(types("/text"), ["text/plain; charset=utf-8"]);
    assert_eq!(by_path["/json"].body_str(), r#"{"order":3}"#);
    assert_eq!(types("/json"), ["application/json"]);
    assert_eq!(by_path["/form"].body_str(), "order=3");
    assert_eq!(
        types("/form"),
        ["application/x-www-form-urlencoded"],
        "one Content-Type, the rule's"
    );
    daemon.stop().await;
}
