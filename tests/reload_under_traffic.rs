//! Hot reload under a steady flow: the router process runs four rules while a producer adds
//! thousands of entries to a stream and publishes thousands of messages on a channel, and the
//! rule file is rewritten five times (add a rule, change one rule's filter, remove another,
//! write invalid YAML, fix it).
//!
//! What users see: every message of the unchanged rules lands exactly once in their
//! destination streams; the changed rule loses nothing (a duplicate in the handover overlap is
//! allowed and bounded by the count in the log line); the added rule gets everything published
//! after it started, the removed one nothing after it stopped; the invalid write is logged with
//! its line and column and changes nothing; each applied reload logs one INFO line with its
//! generation, the file's hash and the names added, changed and removed.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use support::*;

const STREAM_PER_TICK: u64 = 3;

/// The rule file at each step. `filter_b` lets kind "b" through the changed rule too.
fn rules(with_added: bool, filter_b: bool, with_removed: bool) -> String {
    let filter = if filter_b {
        "@.kind == 'a' || @.kind == 'b'"
    } else {
        "@.kind == 'a'"
    };
    let mut out = format!(
        r#"connections:
  default: {{ url: "${{REDIS_URL}}" }}
rules:
  - name: stream-copy
    source: {{ stream: orders, group: router, consumer: c1, start: oldest, batch: 50, block: 100ms }}
    sinks: [ {{ stream: orders-copy, fields: {{ n: "{{{{$.n}}}}" }} }} ]
  - name: channel-copy
    source: {{ channel: events }}
    sinks: [ {{ stream: events-copy, fields: {{ n: "{{{{$.n}}}}" }} }} ]
  - name: filtered
    source: {{ channel: events }}
    filter: "{filter}"
    sinks: [ {{ stream: events-filtered, fields: {{ n: "{{{{$.n}}}}" }} }} ]
"#
    );
    if with_removed {
        out.push_str(
            r#"  - name: doomed
    source: { channel: events }
    sinks: [ { stream: events-doomed, fields: { n: "{{$.n}}" } } ]
"#,
        );
    }
    if with_added {
        out.push_str(
            r#"  - name: added
    source: { channel: events }
    sinks: [ { stream: events-added, fields: { n: "{{$.n}}" } } ]
"#,
        );
    }
    out
}

/// `redis-router run` on a rule file of the test's own, with a short debounce.
fn start_router(yaml: &str, url: &str) -> RouterProcess {
    RouterProcess::start_with(yaml, url, &["--reload-debounce", "100ms"])
}

/// Wait for the INFO line of `generation`; returns it.
async fn reloaded(router: &RouterProcess, generation: u64) -> String {
    let needle = format!(" generation={generation} ");
    router
        .wait_line(
            &format!("the reload to generation {generation}"),
            &["Rules reloaded.", &needle],
        )
        .await
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(digest)[..12].to_string()
}

/// Field `name` of a log line (`name=value`, value up to the next space).
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no field {name} in {line}"))
        + name.len()
        + 2;
    line[start..].split(' ').next().unwrap_or("")
}

/// How many times each `n` is in a destination stream.
async fn counts(conn: &redis::aio::MultiplexedConnection, stream: &str) -> HashMap<u64, usize> {
    let mut conn = conn.clone();
    let mut out = HashMap::new();
    for (_, fields) in xrange(&mut conn, stream).await {
        let n = fields
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("entry without n in {stream}: {fields:?}"));
        *out.entry(n).or_default() += 1;
    }
    out
}

fn kind(n: u64) -> &'static str {
    if n.is_multiple_of(2) { "a" } else { "b" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_rewrites_under_traffic_lose_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let step0 = rules(false, false, true);
    let router = start_router(&step0, &redis.url());
    // The three channel rules share one subscription connection: one subscriber on `events`;
    // each rule says when it runs.
    wait_subscribers(&mut conn, "events", 1).await;
    wait_for("the four rules running", TIMEOUT, || async {
        (router.count("Rule started.") == 4).then_some(())
    })
    .await;
    wait_group(&mut conn, "orders", "router").await;
    let first = wait_for("the first generation", TIMEOUT, || async {
        router
            .log()
            .lines()
            .find(|l| l.contains("Rules loaded."))
            .map(str::to_string)
    })
    .await;
    assert_eq!(field(&first, "generation"), "1");
    assert_eq!(field(&first, "hash"), short_hash(&step0));

    // The producer: per tick one message on the channel and STREAM_PER_TICK stream entries.
    // `published` is the next channel n: every n below it has been published.
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (published, stop) = (published.clone(), stop.clone());
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut xadds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!(r#"{{"n":{n},"kind":"{}"}}"#, kind(n));
                let _: i64 = within(conn.publish("events", &payload)).await.expect("PUBLISH");
                n += 1;
                published.store(n, Ordering::SeqCst);
                let mut pipe = redis::pipe();
                for _ in 0..STREAM_PER_TICK {
                    pipe.xadd("orders", "*", &[("n", xadds.to_string())]).ignore();
                    xadds += 1;
                }
                let _: () = within(pipe.query_async(&mut conn)).await.expect("XADD");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (n, xadds)
        })
    };
    let traffic_until = |target: u64| {
        let published = published.clone();
        async move {
            wait_for(&format!("{target} messages published"), TIMEOUT, || async {
                (published.load(Ordering::SeqCst) >= target).then_some(())
            })
            .await
        }
    };
    traffic_until(200).await;

    // 1. Add a rule (in place).
    let step1 = rules(true, false, true);
    router.write_in_place(&step1);
    let line = reloaded(&router, 2).await;
    let after_add = published.load(Ordering::SeqCst);
    assert_eq!(field(&line, "hash"), short_hash(&step1));
    assert_eq!(field(&line, "added"), r#"["added"]"#);
    assert_eq!(field(&line, "changed"), "[]");
    assert_eq!(field(&line, "removed"), "[]");
    traffic_until(after_add + 200).await;

    // 2. Change one rule's filter (write then rename).
    let before_change = published.load(Ordering::SeqCst);
    let step2 = rules(true, true, true);
    router.write_renamed(&step2);
    let line = reloaded(&router, 3).await;
    let after_change = published.load(Ordering::SeqCst);
    assert_eq!(field(&line, "hash"), short_hash(&step2));
    assert_eq!(field(&line, "added"), "[]");
    assert_eq!(field(&line, "changed"), r#"["filtered"]"#);
    assert_eq!(field(&line, "removed"), "[]");
    let overlap_duplicates: usize = field(&line, "pubsub_overlap_duplicates").parse().expect("a count");
    traffic_until(after_change + 200).await;

    // 3. Remove another rule.
    let before_remove = published.load(Ordering::SeqCst);
    let step3 = rules(true, true, false);
    router.write_renamed(&step3);
    let line = reloaded(&router, 4).await;
    let after_remove = published.load(Ordering::SeqCst);
    assert_eq!(field(&line, "removed"), r#"["doomed"]"#);
    assert_eq!(field(&line, "added"), "[]");
    assert_eq!(field(&line, "changed"), "[]");
    traffic_until(after_remove + 200).await;

    // 4. Invalid YAML: an unclosed flow sequence. Reported as `check` reports it; nothing changes.
    let step4 = step3.replace(
        "sinks: [ { stream: events-added, fields: { n: \"{{$.n}}\" } } ]",
        "sinks: [ { stream: events-added, fields: { n: \"{{$.n}}\" } }",
    );
    assert_ne!(step4, step3);
    let file = router.file.display().to_string();
    let expected = match redis_router::config::load_str(&step4, &file) {
        Ok(_) => panic!("step 4 must be invalid"),
        Err(e) => e.diagnostics().iter().map(|d| d.render(&file)).collect::<Vec<_>>(),
    };
    assert!(!expected.is_empty());
    router.write_in_place(&step4);
    wait_for("the rejection", TIMEOUT, || async {
        (router.count("Reload rejected; the running rules stay.") == 1).then_some(())
    })
    .await;
    let log = router.log();
    for diagnostic in &expected {
        assert!(
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains(diagnostic.as_str())),
            "the log reports {diagnostic:?}"
        );
        // It names a real line of the file.
        let line_no: usize = diagnostic[file.len() + 1..]
            .split(':')
            .next()
            .and_then(|l| l.parse().ok())
            .expect("line number");
        assert!(line_no >= 1 && line_no <= step4.lines().count() + 1, "{diagnostic}");
    }
    traffic_until(published.load(Ordering::SeqCst) + 200).await;
    assert_eq!(router.count("Rules reloaded."), 3, "the invalid file applied nothing");

    // 5. Fix it: the next good write applies (nothing to start or stop: it is step 3 again,
    // with a comment).
    let step5 = format!("# fixed\n{step3}");
    router.write_renamed(&step5);
    let line = reloaded(&router, 5).await;
    assert_eq!(field(&line, "hash"), short_hash(&step5));
    assert_eq!(field(&line, "added"), "[]");
    assert_eq!(field(&line, "changed"), "[]");
    assert_eq!(field(&line, "removed"), "[]");
    traffic_until(published.load(Ordering::SeqCst) + 200).await;

    stop.store(true, Ordering::Relaxed);
    let (channel_total, stream_total) = within(producer).await.expect("producer");
    assert!(stream_total >= 3000, "thousands of stream entries: {stream_total}");

    // Wait until the unchanged rules caught up, and the last message reached the running ones.
    let last = channel_total - 1;
    wait_stream_len(&conn, "orders-copy", stream_total as usize).await;
    wait_stream_len(&conn, "events-copy", channel_total as usize).await;
    for stream in ["events-filtered", "events-added"] {
        wait_for(&format!("message {last} in {stream}"), TIMEOUT, || async {
            counts(&conn, stream).await.contains_key(&last).then_some(())
        })
        .await;
    }

    // Unchanged rules: exactly once.
    let orders = counts(&conn, "orders-copy").await;
    assert_eq!(orders.len() as u64, stream_total, "every stream entry copied");
    assert!(orders.values().all(|&c| c == 1), "stream entries copied exactly once");
    let events = counts(&conn, "events-copy").await;
    assert_eq!(events.len() as u64, channel_total, "every channel message copied");
    assert!(events.values().all(|&c| c == 1), "channel messages copied exactly once");

    // The changed rule loses nothing: every "a" message, every "b" message published once the
    // new filter ran (n > after_change: see the producer), none before the change was written.
    let filtered = counts(&conn, "events-filtered").await;
    for n in 0..channel_total {
        let got = filtered.get(&n).copied().unwrap_or(0);
        if kind(n) == "a" || n > after_change {
            assert!(got >= 1, "message {n} ({}) lost by the changed rule", kind(n));
        }
        if kind(n) == "b" && n < before_change {
            assert_eq!(got, 0, "message {n} passed the old filter");
        }
    }
    let duplicates: usize = filtered.values().map(|&c| c.saturating_sub(1)).sum();
    assert!(
        duplicates <= overlap_duplicates,
        "{duplicates} duplicates, {overlap_duplicates} counted in the handover"
    );

    // The added rule: everything published after it ran, exactly once.
    let added = counts(&conn, "events-added").await;
    for n in (after_add + 1)..channel_total {
        assert_eq!(added.get(&n), Some(&1), "message {n} in events-added");
    }
    // The removed rule: everything before its removal was written, exactly once; nothing
    // published after it stopped.
    let doomed = counts(&conn, "events-doomed").await;
    for n in 0..before_remove {
        assert_eq!(doomed.get(&n), Some(&1), "message {n} in events-doomed");
    }
    assert!(
        doomed.keys().all(|&n| n <= after_remove),
        "the removed rule delivered after it stopped"
    );

    assert_eq!(router.count("Rules reloaded."), 4);
    assert_eq!(router.count("Reload rejected"), 1);
    let mut router = router;
    let pid = router.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let code = tokio::task::block_in_place(|| router.wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "SIGTERM drains and exits 0");
}
