//! Keys and channels rendered from a payload stay in the key space the rule intends. A name that
//! is empty, holds a control character, selects `null` or an object, or names the router's own
//! keys (a dead-letter stream, a queue source's processing list, heartbeat or consumer set, the
//! `redis-router:` namespace of claims and leases) is refused: the message is dead-lettered with
//! the reason and nothing is written there. `check` warns about a key that is nothing but a
//! template.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use redis::AsyncCommands;
use support::*;

const RULES: &str = r#"
connections:
  default: { url: "${REDIS_URL}" }
rules:
  - name: by-target
    source: { channel: in }
    sinks:
      - stream: "{{$.target}}"
        fields: { n: "{{$.n}}" }
  - name: to-channel
    source: { channel: in }
    sinks:
      - publish: "{{$.target}}"
  - name: jobs
    source: { queue: jobs, block: 100ms }
    on_error: { dead_letter: "jobs:dead" }
    sinks: [ { stream: jobs-out } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_payloads_never_reach_the_routers_own_keys() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(RULES, &redis.url());
    let mut conn = redis.conn().await;
    wait_subscribers(&mut conn, "in", 1).await;
    router.wait_rules_started(&["by-target", "to-channel"]).await;
    let host = redis_router::identity::host();
    let processing = "jobs:processing:forged";
    let hostile = [
        (r#"{"n":1,"target":""}"#, "is empty"),
        (r#"{"n":2,"target":null}"#, "selected null"),
        (r#"{"n":3,"target":{"a":1}}"#, "selected an object"),
        (r#"{"n":4,"target":"a\r\nb"}"#, "control character"),
        (r#"{"n":5,"target":"redis-router:dead-letter"}"#, "own namespace"),
        (r#"{"n":6,"target":"redis-router:lease:jobs"}"#, "own namespace"),
        (r#"{"n":7,"target":"jobs:dead"}"#, "dead-letter stream"),
        (r#"{"n":8,"target":"jobs:processing:forged"}"#, "queue source"),
        (r#"{"n":9,"target":"jobs:consumers"}"#, "queue source"),
        (r#"{"n":10}"#, "selected nothing"),
    ];
    for (payload, _) in &hostile {
        let _: i64 = conn.publish("in", *payload).await.unwrap();
    }
    let _: i64 = conn.publish("in", r#"{"n":11,"target":"events:good"}"#).await.unwrap();

    // The good message arrives (written by both rules), and each hostile one is dead-lettered
    // twice (once per rule), with the reason.
    wait_stream_len(&conn, "events:good", 1).await;
    let dead = wait_stream_len(&conn, "redis-router:dead-letter", 2 * hostile.len()).await;
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, fields) in &dead {
        let get = |k: &str| field(fields, k);
        let payload: serde_json::Value = serde_json::from_str(&get("payload")).unwrap();
        reasons
            .entry(payload["n"].to_string())
            .or_default()
            .push(format!("{} {}", get("rule"), get("error")));
    }
    for (i, (payload, why)) in hostile.iter().enumerate() {
        let n = (i + 1).to_string();
        let got = reasons.get(&n).cloned().unwrap_or_default();
        assert_eq!(got.len(), 2, "{payload}: one dead letter per rule: {got:?}");
        for line in &got {
            assert!(line.contains(why), "{payload}: {line}");
        }
    }
    assert_eq!(dead.len(), 2 * hostile.len(), "nothing else was dead-lettered");

    // Nothing was written under the forged names.
    for key in ["jobs:dead", processing, "redis-router:lease:jobs", "a\r\nb", "", "null"] {
        let exists: bool = conn.exists(key).await.unwrap();
        assert!(!exists, "{key:?} was not written");
    }
    let members: Vec<String> = conn.smembers("jobs:consumers").await.unwrap();
    assert!(members.iter().all(|m| m.starts_with(&host)), "{members:?}");
    drop(router);
}

#[test]
fn check_warns_about_a_key_that_is_nothing_but_a_template() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "rules:\n  - name: anywhere\n    source: { channel: in }\n    sinks:\n      - stream: \"{{$.target}}\"\n      - stream: \"events:{{$.type}}\"\n      - webhook: \"{{$.url}}\"\n",
    )
    .unwrap();
    let out = Command::new(router_bin()).arg("check").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:5:17: rule \"anywhere\": warning: the stream sink's key `{{{{$.target}}}}` is nothing but a template"
        )),
        "{stderr}"
    );
    assert!(lines[0].contains("such as `events:{{$.type}}`"), "{stderr}");
    assert!(
        lines[1].starts_with(&format!(
            "{f}:7:18: rule \"anywhere\": warning: the webhook sink's URL `{{{{$.url}}}}` is nothing but a template"
        )),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "a warning does not fail the file");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next(),
        Some("anywhere: channel in -> stream {{$.target}}, stream events:{{$.type}}, webhook {{$.url}}"),
        "the rule line, then the clients it opens"
    );
}
