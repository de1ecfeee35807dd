//! `last_error` in `/status` tells the truth: it shows a sink's failure (also one that
//! dead-letters at once), it is cleared once the rule delivers again, and a rule that cannot
//! even start (a `password_file` that does not exist) says why instead of sitting in
//! `starting` with no error.

mod support;

use redis::AsyncCommands;
use serde_json::Value;
use support::hook::{HookServer, Reply};
use support::*;

async fn status(port: u16) -> Option<Value> {
    serde_json::from_str(&http_get(port, "/status").await?.1).ok()
}

/// The `/status` entry of rule `name`, once `ready` accepts it.
async fn rule_when(port: u16, name: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, TIMEOUT, || async {
        let s = status(port).await?;
        let rule = s["rules"].as_array()?.iter().find(|r| r["name"] == name)?.clone();
        ready(&rule).then_some(rule)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_follows_failures_and_recovery() {
    let redis = RedisServer::start();
    let hook = HookServer::start().await;
    // The first request is refused for good (dead-lettered at once), the rest are taken.
    hook.script([Reply::Body(400, "order 7 is unknown".into())]);
    hook.set_default(Reply::Status(200));
    let port = free_port();
    let yaml = format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
  locked: {{ url: "${{REDIS_URL}}", password_file: /nonexistent/redis-password }}
rules:
  - name: hook
    source: {{ stream: in, group: g, start: oldest, block: 100ms, batch: 1 }}
    sinks: [ {{ webhook: "{}" }} ]
  - name: locked
    source: {{ stream: in2, group: g, connection: locked }}
    sinks: [ {{ stream: out2 }} ]
"#,
        hook.url("/orders")
    );
    let _router = RouterProcess::start_with(&yaml, &redis.url(), &["--listen", &format!("127.0.0.1:{port}")]);
    let mut conn = redis.conn().await;

    let locked = rule_when(port, "locked", "the locked rule to report why it cannot start", |r| {
        !r["last_error"].is_null()
    })
    .await;
    assert_eq!(locked["state"], "starting", "{locked}");
    let error = locked["last_error"].as_str().unwrap();
    assert!(
        error.contains("password_file") && error.contains("/nonexistent/redis-password"),
        "{error}"
    );

    wait_group(&mut conn, "in", "g").await;
    let _: String = conn.xadd("in", "*", &[("order", "7")]).await.unwrap();
    let failed = rule_when(port, "hook", "the refused request in last_error", |r| {
        r["counters"]["dead_lettered"] == 1
    })
    .await;
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("400") && error.contains("order 7 is unknown"),
        "{failed}"
    );

    let _: String = conn.xadd("in", "*", &[("order", "8")]).await.unwrap();
    let recovered = rule_when(port, "hook", "the next delivery", |r| r["counters"]["delivered"] == 1).await;
    assert!(
        recovered["last_error"].is_null(),
        "a rule that delivers again shows no stale error: {recovered}"
    );
    assert_eq!(hook.requests().len(), 2);
}
