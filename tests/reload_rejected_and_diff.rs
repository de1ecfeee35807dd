//! The reload step on its own (no watcher): an invalid file is counted and changes nothing, the
//! same bad content seen again by the watcher is not re-counted while SIGHUP re-validates it,
//! and a changed connection restarts only the rules that use it; unchanged rules keep their
//! very instance.

mod support;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis_router::engine::{ReloadOutcome, ReloadStats, ReloadTrigger, Reloader, Supervisor};
use redis_router::stats::{RuleState, RuleStatus, StatsRegistry};
use support::*;
use tokio_util::sync::CancellationToken;

fn rules(url: &str, other_prefix: &str, typo: bool) -> String {
    let filter_key = if typo { "fiter" } else { "filter" };
    format!(
        r#"connections:
  default: {{ url: "{url}" }}
  other: {{ url: "{url}", prefix: "{other_prefix}" }}
rules:
  - name: on-default
    source: {{ channel: in-default }}
    sinks: [ {{ stream: out-default }} ]
  - name: on-other
    source: {{ channel: in-other, connection: other }}
    {filter_key}: "@.ok == true"
    sinks: [ {{ stream: out-other }} ]
"#
    )
}

fn status_of(reloader: &Reloader, rule: &str) -> Arc<RuleStatus> {
    reloader
        .stats()
        .rules()
        .into_iter()
        .find(|(spec, _)| spec.name == rule)
        .map(|(_, status)| status)
        .unwrap_or_else(|| panic!("rule {rule} is not running"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_is_counted_and_a_connection_change_restarts_only_its_rules() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, rules(&url, "p1:", false)).unwrap();
    let supervisor = Supervisor::new(
        CancellationToken::new(),
        StatsRegistry::default(),
        Duration::from_secs(10),
    );
    let mut reloader = within(Reloader::start(&path, supervisor)).await.expect("valid file");
    let stats = reloader.stats();
    let default_before = status_of(&reloader, "on-default");
    within(default_before.started()).await;
    wait_subscribers(&mut conn, "in-default", 1).await;
    wait_subscribers(&mut conn, "p1:in-other", 1).await;

    // A misspelt key: rejected with its line and column, counted, nothing restarted.
    let bad = rules(&url, "p1:", true);
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(
        within(reloader.reload(ReloadTrigger::FileChanged)).await,
        ReloadOutcome::Rejected
    );
    assert_eq!(ReloadStats::get(&stats.rejected), 1);
    assert_eq!(ReloadStats::get(&stats.generation), 1);
    let file = path.display().to_string();
    assert_eq!(
        stats.last_rejection(),
        vec![format!(
            "{file}:10:5: rule \"on-other\": unknown key `fiter`; did you mean `filter`?"
        )]
    );
    assert!(Arc::ptr_eq(&status_of(&reloader, "on-default"), &default_before));
    // The old rules still route.
    let _: i64 = within(conn.publish("in-default", r#"{"n":1}"#)).await.unwrap();
    wait_stream_len(&conn, "out-default", 1).await;

    // The watcher seeing the same content again does nothing; SIGHUP validates again.
    assert_eq!(
        within(reloader.reload(ReloadTrigger::FileChanged)).await,
        ReloadOutcome::Unchanged
    );
    assert_eq!(ReloadStats::get(&stats.rejected), 1);
    assert_eq!(
        within(reloader.reload(ReloadTrigger::Signal)).await,
        ReloadOutcome::Rejected
    );
    assert_eq!(ReloadStats::get(&stats.rejected), 2);

    // The fix also changes the prefix of connection `other`: only its rule restarts.
    std::fs::write(&path, rules(&url, "p2:", false)).unwrap();
    let ReloadOutcome::Applied { generation, diff } = within(reloader.reload(ReloadTrigger::FileChanged)).await else {
        panic!("the fixed file applies");
    };
    assert_eq!(generation, 2);
    assert_eq!(diff.changed, vec!["on-other".to_string()]);
    assert_eq!(diff.unchanged, vec!["on-default".to_string()]);
    assert!(diff.added.is_empty() && diff.removed.is_empty());
    assert!(
        Arc::ptr_eq(&status_of(&reloader, "on-default"), &default_before),
        "the unchanged rule keeps its instance"
    );
    assert_eq!(default_before.get(), RuleState::Running);
    // The Pub/Sub rule was handed over: the new instance subscribed before the old one left.
    let other = status_of(&reloader, "on-other");
    assert_eq!(other.get(), RuleState::Running);
    wait_subscribers(&mut conn, "p2:in-other", 1).await;
    let old_subscribers: Vec<redis::Value> = within(
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("p1:in-other")
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    assert_eq!(old_subscribers.get(1), Some(&redis::Value::Int(0)));
    assert!(stats.last_rejection().is_empty());
    assert_eq!(ReloadStats::get(&stats.applied), 1);

    // And the unchanged rule still routes.
    let _: i64 = within(conn.publish("in-default", r#"{"n":2}"#)).await.unwrap();
    wait_stream_len(&conn, "out-default", 2).await;
    within(reloader.shutdown()).await;
}
