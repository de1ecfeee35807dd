//! Benchmark: time from writing the rule file to the new rule set running, over many reloads,
//! with the watcher and the reload loop wired as `run` wires them.
//!
//! Eight rules run (four channel → stream, four stream → stream through a group). Reloads
//! alternate between two kinds of change:
//! - *handover*: one channel rule's filter changes, so its new instance subscribes, both run
//!   for the overlap, then the old one drains;
//! - *add/remove*: a ninth (stream) rule is added or removed.
//!
//! "Running" means the generation moved and every rule instance of the new set reports
//! `Running`. Each interval is split into write → trigger (the watcher's debounce) and
//! trigger → running (the reload step).
//!
//! `cargo bench --bench reload` (BENCH_RELOADS per kind, default 50; BENCH_DEBOUNCE, default
//! 100ms; the router's own default is 1 s).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_router::engine::{ConfigWatcher, ReloadStats, ReloadTrigger, Reloader, Supervisor};
use redis_router::stats::{RuleState, StatsRegistry};
use support::{RedisServer, TIMEOUT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The rule file of one step: `variant` picks the filter of channel rule `changed`.
fn rules(url: &str, changed: usize, variant: usize, extra: bool) -> String {
    let mut out = format!("connections:\n  default: {{ url: \"{url}\" }}\nrules:\n");
    for i in 0..4 {
        let min = if i == changed { variant } else { 0 };
        out.push_str(&format!(
            "  - name: channel-{i}\n    source: {{ channel: \"events:{i}\" }}\n    filter: \"@.n >= {min}\"\n    sinks: [ {{ stream: \"out:channel-{i}\" }} ]\n"
        ));
    }
    for i in 0..4 {
        out.push_str(&format!(
            "  - name: stream-{i}\n    source: {{ stream: \"in:{i}\", group: g, block: 100ms }}\n    sinks: [ {{ stream: \"out:stream-{i}\" }} ]\n"
        ));
    }
    if extra {
        out.push_str(
            "  - name: extra\n    source: { stream: \"in:extra\", group: g, block: 100ms }\n    sinks: [ { stream: \"out:extra\" } ]\n",
        );
    }
    out
}

/// Replace the file as an editor does (write a temporary file, rename it over).
fn write(path: &Path, text: &str) {
    let tmp = path.with_file_name(".routes.yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn all_running(stats: &ReloadStats) -> bool {
    stats.rules().iter().all(|(_, s)| s.get() == RuleState::Running)
}

struct Sample {
    total: Duration,
    watcher: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn report(kind: &str, samples: &[Sample]) {
    let line = |what: &str, mut v: Vec<Duration>| {
        v.sort();
        println!(
            "  {kind:<11} {what:<18} median {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms",
            percentile(&v, 0.5).as_secs_f64() * 1e3,
            percentile(&v, 0.99).as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3,
        );
    };
    line("write -> running", samples.iter().map(|s| s.total).collect());
    line("write -> trigger", samples.iter().map(|s| s.watcher).collect());
    line(
        "trigger -> running",
        samples.iter().map(|s| s.total.saturating_sub(s.watcher)).collect(),
    );
}

#[tokio::main]
async fn main() {
    let per_kind: usize = std::env::var("BENCH_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let debounce = std::env::var("BENCH_DEBOUNCE")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_millis(100));
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, rules(&url, 0, 0, false)).expect("write");

    // Watcher → stamp the trigger's arrival → the reload loop, as `run` wires it.
    let (watch_tx, mut watch_rx) = mpsc::channel::<ReloadTrigger>(8);
    let (tx, mut rx) = mpsc::channel::<ReloadTrigger>(8);
    let triggered: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let triggered = triggered.clone();
        tokio::spawn(async move {
            while let Some(t) = watch_rx.recv().await {
                triggered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Instant::now());
                let _ = tx.send(t).await;
            }
        });
    }
    let _watcher = ConfigWatcher::start(&path, debounce, watch_tx).expect("watch");
    let supervisor = Supervisor::new(
        CancellationToken::new(),
        StatsRegistry::default(),
        Duration::from_secs(10),
    );
    let mut reloader = Reloader::start(&path, supervisor).await.expect("valid rules");
    let stats = reloader.stats();
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move {
            reloader.serve(&mut rx, &stop).await;
            reloader
        })
    };
    let wait_running = |generation: u64| {
        let stats = stats.clone();
        async move {
            let deadline = Instant::now() + TIMEOUT;
            while !(ReloadStats::get(&stats.generation) >= generation && all_running(&stats)) {
                assert!(Instant::now() < deadline, "generation {generation} not running");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };
    wait_running(1).await;

    let mut handover = Vec::new();
    let mut add_remove = Vec::new();
    let mut extra = false;
    let mut variant = 0;
    for i in 0..per_kind * 2 {
        let generation = ReloadStats::get(&stats.generation) + 1;
        let text = if i % 2 == 0 {
            variant += 1;
            rules(&url, i / 2 % 4, variant, extra)
        } else {
            extra = !extra;
            rules(&url, (i / 2) % 4, variant, extra)
        };
        *triggered.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let start = Instant::now();
        write(&path, &text);
        wait_running(generation).await;
        let total = start.elapsed();
        let at = triggered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect("a trigger came before the reload");
        let sample = Sample {
            total,
            watcher: at.saturating_duration_since(start),
        };
        if i % 2 == 0 {
            handover.push(sample);
        } else {
            add_remove.push(sample);
        }
    }
    assert_eq!(ReloadStats::get(&stats.applied) as usize, per_kind * 2);
    assert_eq!(ReloadStats::get(&stats.rejected), 0);

    println!(
        "reload latency, {per_kind} reloads per kind, debounce {} ms, 8-9 rules, one local redis-server",
        debounce.as_millis()
    );
    report("handover", &handover);
    report("add/remove", &add_remove);
    let mut all = handover;
    all.extend(add_remove);
    report("all", &all);
    println!(
        "  unchanged-content triggers: {}, pub/sub overlap duplicates counted: {}",
        ReloadStats::get(&stats.unchanged),
        ReloadStats::get(&stats.pubsub_overlap_duplicates)
    );

    stop.cancel();
    let reloader = serving.await.expect("reload loop");
    reloader.shutdown().await;
}
