//! Laravel queues, against a real `php artisan queue:work` (Laravel 8 from Debian, the fixture
//! app in tests/fixtures/laravel): the router enqueues jobs a worker runs with exactly the data
//! sent, with and without the connection prefix, and routes jobs dispatched onto `default` to
//! one queue per job class without losing or doubling any.

mod support;

use redis::AsyncCommands;
use support::laravel::{describe, dispatch_many, php_json_normalise, read_job_log, run_worker};
use support::*;

/// Documents that stress the PHP serialization: unicode, integers beyond 64 bits, nested
/// arrays, empty objects, integer-like keys, floats, and a 60 KB string.
fn documents() -> Vec<String> {
    let big = "é".repeat(30 * 1024); // 60 KB of UTF-8
    vec![
        r#"{"order_id":42,"name":"Zoë","paid":true,"total":12.5,"note":null,"tags":["a/b"]}"#.to_string(),
        r#"{"emoji":"🎉 ü ß 中文","quote":"say \"hi\"\n","slash":"a/b\\c"}"#.into(),
        r#"{"u64":12345678901234567890,"huge":123456789012345678901234567890,"neg":-9223372036854775808}"#.into(),
        r#"{"nested":[[1,[2,[3,{"deep":[]}]]],{"x":{}}],"empty":{},"list":[]}"#.into(),
        r#"{"0":"a","1":"b","01":"c","-5":"d"}"#.into(),
        r#"{"floats":[0.1,1e-7,2.0,1e25,-0.5]}"#.into(),
        format!(r#"{{"big":"{big}"}}"#),
    ]
}

fn rules(prefix: &str) -> String {
    format!(
        r#"
connections:
  default: {{ url: "${{REDIS_URL}}" }}
  laravel: {{ url: "${{REDIS_URL}}", prefix: "{prefix}" }}
rules:
  - name: channel-to-b
    source: {{ channel: "to-b-in" }}
    sinks:
      - queue: to-b
        connection: laravel
        laravel: {{ job: 'App\Jobs\CALLP2' }}
  - name: stream-to-b
    source: {{ stream: "jobs-in", group: router, start: oldest, body_field: data, block: 100ms }}
    sinks:
      - queue: to-b
        connection: laravel
        laravel: {{ job: 'App\Jobs\CALLP2' }}
  - name: handler-to-b
    source: {{ channel: "handler-in" }}
    sinks:
      - queue: to-b
        connection: laravel
        laravel: {{ handler: 'App\Handlers\Orders@handle' }}
"#
    )
}

async fn enqueue_and_run(prefix: &str) {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let daemon = spawn_daemon(&rules(prefix), &redis.url()).await;
    wait_subscribers(&mut conn, "to-b-in", 1).await;
    wait_subscribers(&mut conn, "handler-in", 1).await;
    let docs = documents();
    for doc in &docs {
        let _: i64 = conn.publish("to-b-in", doc).await.unwrap();
        let _: String = conn.xadd("jobs-in", "*", &[("data", doc.as_str())]).await.unwrap();
        let _: i64 = conn.publish("handler-in", doc).await.unwrap();
    }
    let queue = format!("{prefix}queues:to-b");
    let want_jobs = docs.len() * 3;
    wait_for(&format!("{want_jobs} jobs on {queue}"), TIMEOUT, || {
        let mut conn = conn.clone();
        let queue = queue.clone();
        async move {
            let n: usize = conn.llen(&queue).await.ok()?;
            (n >= want_jobs).then_some(())
        }
    })
    .await;
    let notify: usize = conn.llen(format!("{queue}:notify")).await.unwrap();
    assert_eq!(notify, want_jobs, "one notify entry per job, as Laravel's push writes");

    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("jobs.log");
    let out = tokio::task::spawn_blocking({
        let (port, prefix, log) = (redis.port, prefix.to_string(), log.clone());
        move || run_worker(port, &prefix, "to-b", &log)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "worker: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FAILED"), "a job failed: {}", describe(&out));

    let mut ran = read_job_log(&log);
    ran.sort();
    let mut expected: Vec<(String, String)> = Vec::new();
    for doc in &docs {
        let normalised = php_json_normalise(doc);
        expected.push(("CALLP2".into(), normalised.clone()));
        expected.push(("CALLP2".into(), normalised.clone()));
        expected.push(("Orders".into(), normalised));
    }
    expected.sort();
    assert_eq!(ran.len(), expected.len(), "every job ran once");
    for (got, want) in ran.iter().zip(&expected) {
        assert_eq!(
            got, want,
            "job data as the worker saw it, compared with PHP's own json_encode"
        );
    }
    let left: usize = conn.llen(&queue).await.unwrap();
    assert_eq!(left, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_enqueued_jobs_with_default_prefix() {
    enqueue_and_run("laravel_database_").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_enqueued_jobs_without_prefix() {
    enqueue_and_run("").await;
}

const ROUTE_BY_CLASS: &str = r#"
connections:
  laravel: { url: "${REDIS_URL}", prefix: "laravel_database_" }
rules:
  - name: split-default
    source: { queue: default, format: laravel, connection: laravel, block: 100ms }
    sinks:
      - queue: to-billing
        format: laravel
        connection: laravel
        filter: "@.shortName == 'SendInvoice'"
      - queue: to-b
        format: laravel
        connection: laravel
        filter: "@.shortName != 'SendInvoice'"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dispatched_onto_default_reach_only_their_own_workers() {
    const INVOICES: usize = 30;
    const CALLS: usize = 20;
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let port = redis.port;
    tokio::task::spawn_blocking(move || {
        dispatch_many(
            port,
            "laravel_database_",
            "SendInvoice",
            "default",
            r#"{"invoice":1}"#,
            INVOICES,
        );
        dispatch_many(port, "laravel_database_", "CALLP2", "default", r#"{"call":2}"#, CALLS);
    })
    .await
    .unwrap();
    let mut originals: Vec<Vec<u8>> = conn.lrange("laravel_database_queues:default", 0, -1).await.unwrap();
    assert_eq!(originals.len(), INVOICES + CALLS);

    let daemon = spawn_daemon(ROUTE_BY_CLASS, &redis.url()).await;
    wait_for("default emptied and routed", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let billing: usize = conn.llen("laravel_database_queues:to-billing").await.ok()?;
            let b: usize = conn.llen("laravel_database_queues:to-b").await.ok()?;
            (billing + b == INVOICES + CALLS).then_some(())
        }
    })
    .await;
    let mut routed: Vec<Vec<u8>> = conn.lrange("laravel_database_queues:to-billing", 0, -1).await.unwrap();
    routed.extend(
        conn.lrange::<_, Vec<Vec<u8>>>("laravel_database_queues:to-b", 0, -1)
            .await
            .unwrap(),
    );
    routed.sort();
    originals.sort();
    assert_eq!(
        routed, originals,
        "routed jobs are the same bytes (same uuid) as dispatched"
    );

    let log_dir = tempfile::tempdir().unwrap();
    let billing_log = log_dir.path().join("billing.log");
    let b_log = log_dir.path().join("b.log");
    let (bl, bb) = (billing_log.clone(), b_log.clone());
    let (out_billing, out_b) = tokio::task::spawn_blocking(move || {
        (
            run_worker(port, "laravel_database_", "to-billing", &bl),
            run_worker(port, "laravel_database_", "to-b", &bb),
        )
    })
    .await
    .unwrap();
    assert!(
        out_billing.status.success() && out_b.status.success(),
        "{}\n{}",
        describe(&out_billing),
        describe(&out_b)
    );
    let billing = read_job_log(&billing_log);
    let b = read_job_log(&b_log);
    assert_eq!(billing.len(), INVOICES, "billing worker ran each invoice once");
    assert!(
        billing
            .iter()
            .all(|(class, data)| class == "SendInvoice" && data == r#"{"invoice":1}"#),
        "{billing:?}"
    );
    assert_eq!(b.len(), CALLS, "service B's worker ran each of its jobs once");
    assert!(
        b.iter()
            .all(|(class, data)| class == "CALLP2" && data == r#"{"call":2}"#),
        "{b:?}"
    );
    let left: usize = conn.llen("laravel_database_queues:default").await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(daemon.counter("split-default", "delivered"), (INVOICES + CALLS) as u64);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_wait_in_the_delayed_set_then_run() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let yaml = r#"
connections:
  laravel: { url: "${REDIS_URL}", prefix: "laravel_database_" }
rules:
  - name: later
    source: { channel: "later-in", connection: laravel }
    sinks:
      - queue: to-b
        connection: laravel
        laravel: { job: 'App\Jobs\CALLP2', delay: 2s, tries: 3, timeout: 30s, backoff: "5s,10s" }
"#;
    let daemon = spawn_daemon(yaml, &redis.url()).await;
    wait_subscribers(&mut conn, "laravel_database_later-in", 1).await;
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let _: i64 = conn
        .publish("laravel_database_later-in", r#"{"later":true}"#)
        .await
        .unwrap();
    let (job, due): (String, u64) = wait_for("a delayed job", TIMEOUT, || {
        let mut conn = conn.clone();
        async move {
            let v: Vec<(String, u64)> = conn
                .zrange_withscores("laravel_database_queues:to-b:delayed", 0, -1)
                .await
                .ok()?;
            v.into_iter().next()
        }
    })
    .await;
    assert!(due >= sent + 2 && due <= sent + 3, "due {due}, sent {sent}");
    let ready: usize = conn.llen("laravel_database_queues:to-b").await.unwrap();
    let notify: usize = conn.llen("laravel_database_queues:to-b:notify").await.unwrap();
    assert_eq!(
        (ready, notify),
        (0, 0),
        "a delayed job is not ready and has no notify entry"
    );
    let envelope: serde_json::Value = serde_json::from_str(&job).unwrap();
    assert_eq!(envelope["maxTries"], 3);
    assert_eq!(envelope["timeout"], 30);
    assert_eq!(envelope["backoff"], "5,10");
    // Once due, Laravel's worker migrates it to the queue and runs it.
    wait_for("the job to be due", std::time::Duration::from_secs(5), || async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now > due).then_some(())
    })
    .await;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("jobs.log");
    let port = redis.port;
    let l = log.clone();
    let out = tokio::task::spawn_blocking(move || run_worker(port, "laravel_database_", "to-b", &l))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        read_job_log(&log),
        vec![("CALLP2".to_string(), r#"{"later":true}"#.to_string())]
    );
    daemon.stop().await;
}
