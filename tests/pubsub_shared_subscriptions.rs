//! Channel and pattern rules of one connection share one subscription connection: many rules
//! on one server cost one Redis client for their subscriptions (plus the shared connection for
//! everything that does not block), every rule still gets every message it subscribed to, a
//! Redis restart brings every rule back, a reload that changes one rule of many touches only
//! that rule and loses nothing, and a rule aborted mid-delivery leaves nothing subscribed.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis_router::engine::Supervisor;
use redis_router::stats::{RuleState, RuleStatus, StatsRegistry};
use support::hook::{HookServer, Reply};
use support::*;
use tokio_util::sync::CancellationToken;

/// The router's clients as Redis lists them: (id, is a subscriber), without the test's own
/// connection (the one asking).
async fn router_clients(conn: &mut MultiplexedConnection) -> Vec<(u64, bool)> {
    let list: String = within(redis::cmd("CLIENT").arg("LIST").query_async(conn))
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            let id = field("id=").parse().ok()?;
            let subscriber = field("flags=").contains('P');
            Some((id, subscriber))
        })
        .collect()
}

/// Subscribers of `channel` (PUBSUB NUMSUB).
async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let reply: Vec<redis::Value> = within(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(conn))
        .await
        .expect("NUMSUB");
    match reply.get(1) {
        Some(redis::Value::Int(n)) => *n,
        _ => -1,
    }
}

async fn numpat(conn: &mut MultiplexedConnection) -> i64 {
    within(redis::cmd("PUBSUB").arg("NUMPAT").query_async(conn))
        .await
        .expect("NUMPAT")
}

/// Entries of `out` counted by (rule, channel, n); every rule writes `rule`, `channel`, `n`.
async fn deliveries(conn: &mut MultiplexedConnection) -> HashMap<(String, String, String), u32> {
    let mut out = HashMap::new();
    for (_, fields) in xrange(conn, "out").await {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        *out.entry((get("rule"), get("channel"), get("n"))).or_default() += 1;
    }
    out
}

fn rule(name: &str, source: &str) -> String {
    format!(
        "  - name: {name}\n    source: {{ {source} }}\n    sinks:\n      - stream: out\n        fields: {{ rule: \"{{{{meta.rule}}}}\", channel: \"{{{{meta.key}}}}\", n: \"{{{{$.n}}}}\" }}\n"
    )
}

const HEAD: &str = "connections:\n  default: { url: \"${REDIS_URL}\" }\nrules:\n";

const CHANNELS: usize = 100;
const PER_CHANNEL: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rules_share_one_subscription_and_each_gets_every_message() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut yaml = String::from(HEAD);
    for i in 0..CHANNELS {
        yaml.push_str(&rule(&format!("ch-{i}"), &format!("channel: \"c:{i}\"")));
    }
    // Two rules on one channel, a pattern over every channel and one over ten of them.
    yaml.push_str(&rule("twin-a", "channel: \"c:twin\""));
    yaml.push_str(&rule("twin-b", "channel: \"c:twin\""));
    yaml.push_str(&rule("pat-all", "pattern: \"c:*\""));
    yaml.push_str(&rule("pat-tens", "pattern: \"c:1?\""));
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    for i in 0..CHANNELS {
        wait_subscribers(&mut conn, &format!("c:{i}"), 1).await;
    }
    wait_subscribers(&mut conn, "c:twin", 1).await;
    wait_for("two patterns", TIMEOUT, || {
        let mut c = conn.clone();
        async move { (numpat(&mut c).await == 2).then_some(()) }
    })
    .await;
    for (s, status) in daemon.supervisor.as_ref().expect("running").statuses() {
        within(status.started()).await;
        assert_eq!(status.get(), RuleState::Running, "{}", s.name);
    }

    let mut channels: Vec<String> = (0..CHANNELS).map(|i| format!("c:{i}")).collect();
    channels.push("c:twin".into());
    let mut pipe = redis::pipe();
    for n in 0..PER_CHANNEL {
        for c in &channels {
            pipe.publish(c, format!("{{\"n\":{n}}}")).ignore();
        }
    }
    let _: () = within(pipe.query_async(&mut conn)).await.expect("publish");

    let expected_total = CHANNELS * PER_CHANNEL // ch-i
        + 2 * PER_CHANNEL // twins
        + (CHANNELS + 1) * PER_CHANNEL // pat-all
        + 10 * PER_CHANNEL; // pat-tens: c:10 … c:19
    wait_stream_len(&conn, "out", expected_total).await;
    let got = deliveries(&mut conn).await;
    let mut expected: HashMap<(String, String, String), u32> = HashMap::new();
    for n in 0..PER_CHANNEL {
        let n = n.to_string();
        for i in 0..CHANNELS {
            let c = format!("c:{i}");
            expected.insert((format!("ch-{i}"), c.clone(), n.clone()), 1);
            expected.insert(("pat-all".into(), c.clone(), n.clone()), 1);
            if (10..20).contains(&i) {
                expected.insert(("pat-tens".into(), c.clone(), n.clone()), 1);
            }
        }
        for r in ["twin-a", "twin-b", "pat-all"] {
            expected.insert((r.into(), "c:twin".into(), n.clone()), 1);
        }
    }
    assert_eq!(expected.len(), expected_total);
    assert_eq!(got, expected, "every rule got each of its messages exactly once");

    let clients = router_clients(&mut conn).await;
    let subscribers = clients.iter().filter(|(_, s)| *s).count();
    eprintln!(
        "{} rules: {} router clients, {subscribers} subscribed",
        CHANNELS + 4,
        clients.len()
    );
    assert_eq!(subscribers, 1, "one subscription connection for {} rules", CHANNELS + 4);
    assert_eq!(
        clients.len(),
        2,
        "one subscription connection and one shared connection: {clients:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_brings_every_rule_back() {
    let mut redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut yaml = String::from(HEAD);
    for i in 0..30 {
        yaml.push_str(&rule(&format!("ch-{i}"), &format!("channel: \"c:{i}\"")));
    }
    for i in 0..3 {
        yaml.push_str(&rule(&format!("pat-{i}"), &format!("pattern: \"c:{i}*\"")));
    }
    let daemon = spawn_daemon(&yaml, &redis.url()).await;
    for i in 0..30 {
        wait_subscribers(&mut conn, &format!("c:{i}"), 1).await;
    }
    let statuses = daemon.supervisor.as_ref().expect("running").statuses();
    for (_, status) in &statuses {
        within(status.started()).await;
    }

    redis.restart();
    let mut conn = redis.conn().await;
    wait_for("every rule resubscribed and running", TIMEOUT, || {
        let statuses = &statuses;
        let daemon = &daemon;
        async move {
            statuses
                .iter()
                .all(|(s, st)| st.get() == RuleState::Running && daemon.counter(&s.name, "reconnects") == 1)
                .then_some(())
        }
    })
    .await;
    for i in 0..30 {
        wait_subscribers(&mut conn, &format!("c:{i}"), 1).await;
    }
    assert_eq!(numpat(&mut conn).await, 3);
    let mut pipe = redis::pipe();
    for i in 0..30 {
        pipe.publish(format!("c:{i}"), r#"{"n":"after"}"#).ignore();
    }
    let _: () = within(pipe.query_async(&mut conn)).await.expect("publish");
    // ch-i once each; pat-0 matches c:0; pat-1 c:1, c:10…c:19; pat-2 c:2, c:20…c:29.
    let total = 30 + 1 + 11 + 11;
    wait_stream_len(&conn, "out", total).await;
    let got = deliveries(&mut conn).await;
    assert_eq!(got.len(), total, "each rule got its messages once: {got:?}");
    assert!(got.values().all(|&n| n == 1));
    for (s, _) in &statuses {
        assert_eq!(daemon.counter(&s.name, "reconnects"), 1, "{}", s.name);
    }
    let clients = router_clients(&mut conn).await;
    assert_eq!(
        clients.iter().filter(|(_, s)| *s).count(),
        1,
        "one subscription connection after the restart: {clients:?}"
    );
    daemon.stop().await;
}

const RELOAD_RULES: usize = 40;

fn reload_yaml(changed: bool) -> String {
    let mut yaml = String::from(HEAD);
    for i in 0..RELOAD_RULES {
        if changed && i == 8 {
            // Removed: nobody else listens to c:8, so it is unsubscribed.
            continue;
        }
        let mut r = rule(&format!("r-{i}"), &format!("channel: \"c:{i}\""));
        if changed && i == 7 {
            r = r.replace("n: \"{{$.n}}\"", "n: \"{{$.n}}\", v: \"2\"");
        }
        yaml.push_str(&r);
    }
    if !changed {
        // Removed too, but r-9 still needs c:9.
        yaml.push_str(&rule("r-9b", "channel: \"c:9\""));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_one_rule_of_many_touches_only_it_and_loses_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut daemon = spawn_daemon(&reload_yaml(false), &redis.url()).await;
    for i in 0..RELOAD_RULES {
        wait_subscribers(&mut conn, &format!("c:{i}"), 1).await;
    }
    let before: BTreeMap<String, Arc<RuleStatus>> = daemon
        .supervisor
        .as_ref()
        .expect("running")
        .statuses()
        .into_iter()
        .map(|(s, st)| (s.name.clone(), st))
        .collect();
    for st in before.values() {
        within(st.started()).await;
    }
    let link_before: Vec<u64> = router_clients(&mut conn)
        .await
        .into_iter()
        .filter(|(_, s)| *s)
        .map(|(id, _)| id)
        .collect();

    // Publish to every channel, round after round, all through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, rounds, mut c) = (stop.clone(), rounds.clone(), conn.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for i in 0..RELOAD_RULES {
                    pipe.publish(format!("c:{i}"), format!("{{\"n\":{n}}}")).ignore();
                }
                let _: () = within(pipe.query_async(&mut c)).await.expect("publish");
                n += 1;
                rounds.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for("publishing", TIMEOUT, || async {
        (rounds.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;
    let set = load(&reload_yaml(true), &redis.url());
    let (diff, handovers) = within(daemon.supervisor.as_mut().expect("running").apply_with_handovers(&set)).await;
    assert_eq!(diff.changed, vec!["r-7".to_string()]);
    let mut removed = diff.removed.clone();
    removed.sort();
    assert_eq!(removed, vec!["r-8".to_string(), "r-9b".to_string()]);
    assert_eq!(handovers.len(), 1);
    assert!(handovers[0].subscribed, "{handovers:?}");
    let reload_round = rounds.load(Ordering::Relaxed);
    wait_for("publishing after the reload", TIMEOUT, || async {
        (rounds.load(Ordering::Relaxed) >= reload_round + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    within(publisher).await.expect("publisher");
    let published = rounds.load(Ordering::Relaxed);

    // Unchanged rules kept their very instance; the subscription connection is the same one.
    let after: BTreeMap<String, Arc<RuleStatus>> = daemon
        .supervisor
        .as_ref()
        .expect("running")
        .statuses()
        .into_iter()
        .map(|(s, st)| (s.name.clone(), st))
        .collect();
    for (name, st) in &after {
        if name != "r-7" {
            assert!(Arc::ptr_eq(st, &before[name]), "{name} was not touched");
        }
    }
    assert!(!after.contains_key("r-8") && !after.contains_key("r-9b"));
    let link_after: Vec<u64> = router_clients(&mut conn)
        .await
        .into_iter()
        .filter(|(_, s)| *s)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(link_before.len(), 1, "{link_before:?}");
    assert_eq!(link_after, link_before, "the same subscription connection throughout");
    assert_eq!(numsub(&mut conn, "c:8").await, 0, "nobody needs c:8 any more");
    assert_eq!(numsub(&mut conn, "c:9").await, 1, "r-9 still needs c:9");

    // Every message of every remaining rule arrived: unchanged rules exactly once, the changed
    // one at least once (its hand-over may double a few, counted).
    let unchanged_expected = (RELOAD_RULES - 2) as u64 * published;
    let got = wait_for("every message delivered", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let got = deliveries(&mut c).await;
            let unchanged: u64 = got
                .iter()
                .filter(|((r, _, _), _)| r != "r-7" && r != "r-8" && r != "r-9b")
                .map(|(_, &k)| u64::from(k))
                .sum();
            let r7: HashSet<&String> = got.keys().filter(|(r, _, _)| r == "r-7").map(|(_, _, n)| n).collect();
            (unchanged >= unchanged_expected && r7.len() as u64 >= published).then_some(got)
        }
    })
    .await;
    for i in (0..RELOAD_RULES).filter(|&i| i != 7 && i != 8) {
        for n in 0..published {
            let key = (format!("r-{i}"), format!("c:{i}"), n.to_string());
            assert_eq!(got.get(&key), Some(&1), "{key:?}");
        }
    }
    let r7_duplicates: u32 = got
        .iter()
        .filter(|((r, _, _), _)| r == "r-7")
        .map(|(_, &k)| k - 1)
        .sum();
    assert!(
        u64::from(r7_duplicates) <= handovers[0].duplicates_at_most,
        "{r7_duplicates} duplicates, bound {}",
        handovers[0].duplicates_at_most
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_rule_leaves_nothing_subscribed() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let hook = HookServer::start().await;
    hook.set_default(Reply::Hang(Duration::from_secs(60)));
    let yaml = format!(
        "{HEAD}  - name: stuck\n    source: {{ channel: \"c:stuck\" }}\n    sinks:\n      - webhook: \"{}\"\n        timeout: 50s\n",
        hook.url("/stuck")
    );
    let set = load(&yaml, &redis.url());
    // A rule whose delivery never ends in the drain time is aborted.
    let mut supervisor = Supervisor::new(
        CancellationToken::new(),
        StatsRegistry::default(),
        Duration::from_millis(500),
    );
    within(supervisor.apply(&set)).await;
    wait_subscribers(&mut conn, "c:stuck", 1).await;
    let _: i64 = within(redis::AsyncCommands::publish(&mut conn, "c:stuck", r#"{"n":1}"#))
        .await
        .expect("publish");
    within(hook.wait_requests(1)).await;
    let aborted = within(supervisor.shutdown()).await;
    assert_eq!(aborted, vec!["stuck".to_string()]);
    wait_for("the aborted rule's subscription gone", TIMEOUT, || {
        let mut c = conn.clone();
        async move {
            let clients = router_clients(&mut c).await;
            (numsub(&mut c, "c:stuck").await == 0 && clients.iter().all(|(_, s)| !s)).then_some(())
        }
    })
    .await;
}
