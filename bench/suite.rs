//! The benchmark suite: every scenario of issue 8 in one run against one redis-server of its
//! own, side by side with Redis's own limit (a plain pipelined client, `resp.rs`) and a naive
//! batched redis-py bridge (`bridge.py`), with end-to-end latency at a fixed offered rate,
//! peak RSS and CPU per million messages of the router process, and a check that nothing was
//! lost or doubled. A scenario that falls short of its target prints FAIL and the gap.
//!
//! `bench/run.sh` (creates the Python venv, then `cargo bench --bench suite`). Environment:
//! `BENCH_SCALE` (default 1.0) scales message counts, `BENCH_ONLY` runs the scenarios whose
//! name contains it, `BENCH_PYTHON` names the Python interpreter (with redis-py) to use.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "resp.rs"]
mod resp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resp::{Raw, Tok, put_arg, put_header, tagged};
use support::{RedisServer, RouterProcess};

/// Entries per read, for every bridge (the router's default).
const BATCH: usize = 100;
/// Offered rate of the latency runs.
const LATENCY_RATE: u64 = 5_000;
/// Length of each latency run.
const LATENCY_SECS: f64 = 3.0;
/// How long the pipelined publisher runs in the channel scenario for the router.
const CHANNEL_SECS: f64 = 10.0;
/// The same for the limit and the Python bridge (shorter: they are references, not the target).
const CHANNEL_REF_SECS: f64 = 3.0;
/// A bridge that makes no progress for this long is considered done (what is missing is lost).
const STALL: Duration = Duration::from_secs(8);
/// Padding of each payload, so that messages have a realistic size (~120 bytes).
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// Laravel's push, as the router and the Python bridge send it.
const LARAVEL_PUSH: &str = "redis.call('rpush', KEYS[1], ARGV[1])\nredis.call('rpush', KEYS[2], 1)";

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// The payload marker: `N#<seq>#T#<nanos>#` then padding.
fn payload(seq: u64, ts: u64) -> String {
    format!("N#{seq}#T#{ts}#{PAD}")
}

fn json_payload(seq: u64, ts: u64) -> String {
    format!("{{\"event\":\"order.created\",\"payload\":\"{}\"}}", payload(seq, ts))
}

// ---------------------------------------------------------------------------------------------
// Results

/// One bridge's throughput run.
#[derive(Default, Clone)]
struct Run {
    msgs: u64,
    secs: f64,
    lost: u64,
    dup: u64,
    /// Peak resident set of the bridge process, MB.
    rss_mb: Option<f64>,
    /// CPU seconds (user + system) of the bridge process per million messages.
    cpu_per_m: Option<f64>,
    note: String,
}

impl Run {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.msgs as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Latency percentiles, ms.
#[derive(Default, Clone, Copy)]
struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
    n: usize,
    lost: u64,
}

#[derive(Default)]
struct Row {
    name: &'static str,
    router: Run,
    limit: Option<Run>,
    python: Option<Run>,
    lat: Option<Lat>,
    py_lat: Option<Lat>,
    /// Redis's own round trip measured right before the router's latency run.
    redis_lat: Option<Lat>,
    limit_what: &'static str,
}

struct Suite {
    redis: RedisServer,
    port: u16,
    url: String,
    python: Option<PathBuf>,
    scale: f64,
    only: Option<String>,
    rows: Vec<Row>,
    verdicts: Vec<(String, bool, String)>,
    redis_rt: Option<Lat>,
    idle_rss: Option<f64>,
    rt: tokio::runtime::Runtime,
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak RSS (MB) and CPU seconds so far of a process, from /proc.
fn proc_usage(pid: u32) -> (Option<f64>, Option<f64>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
        });
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clock_ticks())
    });
    (rss, cpu)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn router_yaml(rules: &str) -> String {
    format!("connections:\n  default: {{ url: \"${{REDIS_URL}}\" }}\nrules:\n{rules}")
}

// ---------------------------------------------------------------------------------------------
// Redis helpers on the raw client

fn preload_stream(raw: &mut Raw, key: &str, n: u64) {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        for seq in i..end {
            let p = payload(seq, 0);
            raw.cmd(&[
                b"XADD",
                key.as_bytes(),
                b"*",
                b"event",
                b"order.created",
                b"payload",
                p.as_bytes(),
            ]);
        }
        raw.flush();
        raw.skip((end - i) as usize);
        i = end;
    }
}

fn preload_list(raw: &mut Raw, key: &str, n: u64) {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        for seq in i..end {
            raw.cmd(&[b"RPUSH", key.as_bytes(), json_payload(seq, 0).as_bytes()]);
        }
        raw.flush();
        raw.skip((end - i) as usize);
        i = end;
    }
}

fn create_group(raw: &mut Raw, key: &str) {
    raw.query(&[b"XGROUP", b"CREATE", key.as_bytes(), b"g", b"0", b"MKSTREAM"]);
}

fn xlen(raw: &mut Raw, key: &str) -> u64 {
    raw.int(&[b"XLEN", key.as_bytes()]) as u64
}

fn llen(raw: &mut Raw, key: &str) -> u64 {
    raw.int(&[b"LLEN", key.as_bytes()]) as u64
}

/// Marks of every message in a stream (each field value scanned for `N#`).
fn marks_stream(raw: &mut Raw, key: &str, seen: &mut [u32]) {
    let mut start = b"-".to_vec();
    loop {
        raw.query(&[b"XRANGE", key.as_bytes(), &start, b"+", b"COUNT", b"10000"]);
        let toks = raw.toks.clone();
        let Some(Tok::Array(n)) = toks.first().copied() else {
            return;
        };
        if n == 0 {
            return;
        }
        let mut i = 1;
        let mut last = Vec::new();
        while i < toks.len() {
            let id = toks[i + 1];
            last = raw.bytes(id).to_vec();
            let Tok::Array(k) = toks[i + 2] else {
                i += 3;
                continue;
            };
            for t in &toks[i + 3..i + 3 + k] {
                if let Some(seq) = tagged(raw.bytes(*t), b"N#") {
                    mark(seen, seq);
                }
            }
            i += 3 + k;
        }
        start = [b"(".as_slice(), &last].concat();
        if n < 10000 {
            return;
        }
    }
}

fn marks_list(raw: &mut Raw, key: &str, seen: &mut [u32]) {
    let len = llen(raw, key);
    let mut at = 0;
    while at < len {
        let end = (at + 10000).min(len) - 1;
        raw.query(&[
            b"LRANGE",
            key.as_bytes(),
            at.to_string().as_bytes(),
            end.to_string().as_bytes(),
        ]);
        for t in raw.toks.clone().iter().skip(1) {
            if let Some(seq) = tagged(raw.bytes(*t), b"N#") {
                mark(seen, seq);
            }
        }
        at = end + 1;
    }
}

fn mark(seen: &mut [u32], seq: u64) {
    if let Some(c) = seen.get_mut(seq as usize) {
        *c += 1;
    }
}

/// (lost, duplicated) of `n` messages numbered 0..n.
fn tally(seen: &[u32]) -> (u64, u64) {
    let lost = seen.iter().filter(|&&c| c == 0).count() as u64;
    let dup = seen.iter().map(|&c| c.saturating_sub(1) as u64).sum();
    (lost, dup)
}

/// Poll `count` until it reaches `n` or stops moving for [`STALL`]; (elapsed to the last
/// progress, final count).
fn wait_count(start: Instant, n: u64, mut count: impl FnMut() -> u64) -> (Duration, u64) {
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut done_at = start.elapsed();
    loop {
        let c = count();
        if c != last {
            last = c;
            last_change = Instant::now();
            done_at = start.elapsed();
        }
        if c >= n || last_change.elapsed() > STALL {
            return (done_at, c);
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

// ---------------------------------------------------------------------------------------------
// Limit: a plain pipelined client doing the same commands

/// Streams read through group g with one XREADGROUP COUNT 100 over all of them; `write` adds the
/// commands of one entry (stream index, field/value byte slices) and returns how many. The
/// XACKs and the next XREADGROUP go in the same pipeline.
fn limit_streams(port: u16, keys: &[String], n: u64, write: impl Fn(&mut Vec<u8>, usize, &[&[u8]]) -> usize) -> Run {
    let mut raw = Raw::connect(port);
    let mut read_cmd: Vec<u8> = Vec::new();
    put_header(&mut read_cmd, 7 + 2 * keys.len());
    for a in [&b"XREADGROUP"[..], b"GROUP", b"g", b"c", b"COUNT", b"100", b"STREAMS"] {
        put_arg(&mut read_cmd, a);
    }
    for k in keys {
        put_arg(&mut read_cmd, k.as_bytes());
    }
    for _ in keys {
        put_arg(&mut read_cmd, b">");
    }
    let index: HashMap<&[u8], usize> = keys.iter().enumerate().map(|(i, k)| (k.as_bytes(), i)).collect();
    let start = Instant::now();
    raw.wbuf.extend_from_slice(&read_cmd);
    raw.flush();
    let mut done = 0u64;
    while done < n {
        assert!(raw.read(), "XREADGROUP timed out");
        let toks = std::mem::take(&mut raw.toks);
        let mut w = std::mem::take(&mut raw.wbuf);
        let mut cmds = 0;
        let mut got = 0;
        // *k { *2 $key *N { *2 $id *2f fields } }
        if let Some(Tok::Array(_)) = toks.first() {
            let mut i = 1;
            while i < toks.len() {
                let key = raw.bytes(toks[i + 1]);
                let s = index[key];
                let Tok::Array(entries) = toks[i + 2] else { break };
                i += 3;
                let mut ids: Vec<Tok> = Vec::with_capacity(entries);
                for _ in 0..entries {
                    ids.push(toks[i + 1]);
                    let Tok::Array(f) = toks[i + 2] else {
                        i += 3;
                        continue;
                    };
                    let fields: Vec<&[u8]> = toks[i + 3..i + 3 + f].iter().map(|t| raw.bytes(*t)).collect();
                    cmds += write(&mut w, s, &fields);
                    i += 3 + f;
                }
                if !ids.is_empty() {
                    put_header(&mut w, 3 + ids.len());
                    put_arg(&mut w, b"XACK");
                    put_arg(&mut w, keys[s].as_bytes());
                    put_arg(&mut w, b"g");
                    for id in &ids {
                        put_arg(&mut w, raw.bytes(*id));
                    }
                    cmds += 1;
                }
                got += ids.len() as u64;
            }
        }
        raw.toks = toks;
        if got == 0 {
            break;
        }
        done += got;
        if done < n {
            w.extend_from_slice(&read_cmd);
        }
        raw.wbuf = w;
        raw.flush();
        raw.skip(cmds);
    }
    Run {
        msgs: done,
        secs: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

fn xadd_fields(w: &mut Vec<u8>, key: &str, fields: &[&[u8]]) -> usize {
    put_header(w, 3 + fields.len());
    put_arg(w, b"XADD");
    put_arg(w, key.as_bytes());
    put_arg(w, b"*");
    for f in fields {
        put_arg(w, f);
    }
    1
}

/// A Laravel job of about the size the router builds, for the limit client.
fn laravel_job(fields: &[&[u8]], queue: &str) -> Vec<u8> {
    let mut data = String::from("{");
    for pair in fields.chunks(2) {
        if data.len() > 1 {
            data.push(',');
        }
        data.push_str(&format!(
            "\"{}\":\"{}\"",
            String::from_utf8_lossy(pair[0]),
            String::from_utf8_lossy(pair.get(1).copied().unwrap_or_default())
        ));
    }
    data.push('}');
    format!(
        "{{\"uuid\":\"7f1e5a4c-0b1f-4a53-9d1b-3a6b2b6f7c10\",\"displayName\":\"App\\\\Jobs\\\\Bench\",\"job\":\"Illuminate\\\\Queue\\\\CallQueuedHandler@call\",\"maxTries\":null,\"maxExceptions\":null,\"failOnTimeout\":false,\"backoff\":null,\"timeout\":null,\"retryUntil\":null,\"data\":{{\"commandName\":\"App\\\\Jobs\\\\Bench\",\"command\":{}}},\"id\":\"Zx81\",\"attempts\":0,\"queue\":\"{queue}\"}}",
        serde_json::to_string(&data).unwrap_or_default()
    )
    .into_bytes()
}

fn limit_queue(port: u16, src: &str, dst: &str, n: u64) -> Run {
    let mut raw = Raw::connect(port);
    let processing = format!("{src}:processing:c");
    let start = Instant::now();
    let mut done = 0u64;
    while done < n {
        for _ in 0..BATCH {
            raw.cmd(&[b"LMOVE", src.as_bytes(), processing.as_bytes(), b"LEFT", b"RIGHT"]);
        }
        raw.flush();
        let mut items: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            raw.read();
            if let Tok::Bulk(..) = raw.toks[0] {
                items.push(raw.bytes(raw.toks[0]).to_vec());
            }
        }
        if items.is_empty() {
            break;
        }
        for item in &items {
            raw.cmd(&[b"RPUSH", dst.as_bytes(), item]);
        }
        for item in &items {
            raw.cmd(&[b"LREM", processing.as_bytes(), b"1", item]);
        }
        raw.flush();
        raw.skip(2 * items.len());
        done += items.len() as u64;
    }
    Run {
        msgs: done,
        secs: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Latency at a fixed offered rate

#[derive(Clone)]
enum Produce {
    Xadd(String),
    Rpush(String),
    Publish(String),
}

#[derive(Clone)]
enum Consume {
    Stream(String),
    List(String),
    Hook(Arc<Hook>),
}

/// Offer [`LATENCY_RATE`] msgs/s for [`LATENCY_SECS`] to `produce`, each carrying its send time,
/// and time each one's arrival at `consume`.
fn latency(port: u16, produce: Produce, consume: Consume) -> Lat {
    let m = (LATENCY_RATE as f64 * LATENCY_SECS) as u64;
    let ready = Arc::new(AtomicBool::new(false));
    let produced_done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (ready, produced_done) = (ready.clone(), produced_done.clone());
        let consume = consume.clone();
        std::thread::spawn(move || {
            let mut lat: Vec<u64> = Vec::with_capacity(m as usize);
            let mut raw = Raw::connect(port);
            let mut done_since: Option<Instant> = None;
            let mut finished = |lat: &Vec<u64>| {
                if lat.len() as u64 >= m {
                    return true;
                }
                if produced_done.load(Ordering::SeqCst) {
                    let at = *done_since.get_or_insert_with(Instant::now);
                    return at.elapsed() > Duration::from_secs(3);
                }
                false
            };
            match consume {
                Consume::Stream(key) => {
                    raw.query(&[b"XREVRANGE", key.as_bytes(), b"+", b"-", b"COUNT", b"1"]);
                    let mut last = match raw.toks.get(2) {
                        Some(t @ Tok::Bulk(..)) => raw.bytes(*t).to_vec(),
                        _ => b"0-0".to_vec(),
                    };
                    ready.store(true, Ordering::SeqCst);
                    let mut entries = Vec::new();
                    while !finished(&lat) {
                        raw.cmd(&[
                            b"XREAD",
                            b"COUNT",
                            b"1000",
                            b"BLOCK",
                            b"200",
                            b"STREAMS",
                            key.as_bytes(),
                            &last,
                        ]);
                        raw.flush();
                        raw.read();
                        let now = now_nanos();
                        resp::stream_entries(&raw.toks, &mut entries);
                        for (id, fields) in &entries {
                            for t in &raw.toks[fields.clone()] {
                                if let Some(ts) = tagged(raw.bytes(*t), b"T#") {
                                    lat.push(now.saturating_sub(ts));
                                }
                            }
                            last = raw.bytes(*id).to_vec();
                        }
                    }
                }
                Consume::List(key) => {
                    raw.query(&[b"DEL", key.as_bytes()]);
                    ready.store(true, Ordering::SeqCst);
                    while !finished(&lat) {
                        raw.cmd(&[b"BLPOP", key.as_bytes(), b"0.2"]);
                        raw.flush();
                        raw.read();
                        let now = now_nanos();
                        if let Some(t @ Tok::Bulk(..)) = raw.toks.get(2)
                            && let Some(ts) = tagged(raw.bytes(*t), b"T#")
                        {
                            lat.push(now.saturating_sub(ts));
                        }
                    }
                }
                Consume::Hook(hook) => {
                    hook.latencies.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    ready.store(true, Ordering::SeqCst);
                    loop {
                        let l = hook.latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if finished(&l) {
                            lat = l;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            lat
        })
    };
    while !ready.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut raw = Raw::connect(port);
    let period = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let t0 = Instant::now();
    for i in 0..m {
        let due = t0 + period * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let ts = now_nanos();
        match &produce {
            Produce::Xadd(key) => {
                let p = payload(1_000_000_000 + i, ts);
                raw.cmd(&[
                    b"XADD",
                    key.as_bytes(),
                    b"*",
                    b"event",
                    b"order.created",
                    b"payload",
                    p.as_bytes(),
                ]);
            }
            Produce::Rpush(key) => raw.cmd(&[b"RPUSH", key.as_bytes(), json_payload(1_000_000_000 + i, ts).as_bytes()]),
            Produce::Publish(key) => raw.cmd(&[
                b"PUBLISH",
                key.as_bytes(),
                json_payload(1_000_000_000 + i, ts).as_bytes(),
            ]),
        }
        raw.flush();
        raw.skip(1);
    }
    produced_done.store(true, Ordering::SeqCst);
    let mut lat = consumer.join().expect("latency consumer");
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6
        }
    };
    Lat {
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        n: lat.len(),
        lost: m.saturating_sub(lat.len() as u64),
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook endpoint: counts requests and records marks and latencies, nothing else

#[derive(Default)]
struct Hook {
    requests: AtomicU64,
    marks: Mutex<Vec<u64>>,
    latencies: Mutex<Vec<u64>>,
}

async fn hook_handler(
    axum::extract::State(hook): axum::extract::State<Arc<Hook>>,
    body: axum::body::Bytes,
) -> &'static str {
    let now = now_nanos();
    if let Some(seq) = tagged(&body, b"N#") {
        if seq >= 1_000_000_000 {
            if let Some(ts) = tagged(&body, b"T#") {
                hook.latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(now.saturating_sub(ts));
            }
        } else {
            hook.marks.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
        }
    }
    hook.requests.fetch_add(1, Ordering::Relaxed);
    "ok"
}

/// Serve the hook on 127.0.0.1; its URL.
fn start_hook(rt: &tokio::runtime::Runtime, hook: Arc<Hook>) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind hook");
    let addr = listener.local_addr().expect("hook addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook_handler))
        .with_state(hook);
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

// ---------------------------------------------------------------------------------------------
// Bridges under test

/// What a throughput run counts and verifies.
enum Out {
    /// Destination keys: (key, is a list).
    Keys(Vec<(String, bool)>),
    Hook(Arc<Hook>),
}

fn streams(keys: &[String]) -> Out {
    Out::Keys(keys.iter().map(|k| (k.clone(), false)).collect())
}

fn lists(keys: &[String]) -> Out {
    Out::Keys(keys.iter().map(|k| (k.clone(), true)).collect())
}

impl Out {
    fn count(&self, raw: &mut Raw) -> u64 {
        match self {
            Out::Keys(keys) => {
                for (k, list) in keys {
                    raw.cmd(&[if *list { b"LLEN" } else { b"XLEN" }, k.as_bytes()]);
                }
                raw.flush();
                let mut sum = 0;
                for _ in keys {
                    raw.read();
                    if let Tok::Int(n) = raw.toks[0] {
                        sum += n as u64;
                    }
                }
                sum
            }
            Out::Hook(h) => h.requests.load(Ordering::Relaxed),
        }
    }

    /// (lost, dup) of messages 0..n: each key must hold all of them (`per_key`), or the keys
    /// together must.
    fn verify(&self, raw: &mut Raw, n: u64, per_key: bool) -> (u64, u64) {
        let fill = |raw: &mut Raw, k: &str, list: bool, seen: &mut [u32]| {
            if list {
                marks_list(raw, k, seen)
            } else {
                marks_stream(raw, k, seen)
            }
        };
        match self {
            Out::Keys(keys) if per_key => keys.iter().fold((0, 0), |acc, (k, list)| {
                let mut seen = vec![0u32; n as usize];
                fill(raw, k, *list, &mut seen);
                let (l, d) = tally(&seen);
                (acc.0 + l, acc.1 + d)
            }),
            Out::Keys(keys) => {
                let mut seen = vec![0u32; n as usize];
                for (k, list) in keys {
                    fill(raw, k, *list, &mut seen);
                }
                tally(&seen)
            }
            Out::Hook(h) => {
                let mut seen = vec![0u32; n as usize];
                for &seq in h.marks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    mark(&mut seen, seq);
                }
                tally(&seen)
            }
        }
    }
}

impl Suite {
    fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }

    fn n(&self, base: u64) -> u64 {
        ((base as f64 * self.scale) as u64).max(1000)
    }

    /// Start the router on `yaml`, wait until `out` holds `expect` messages (or stalls), verify
    /// messages 0..n. The router is returned still running, for the latency run.
    fn router_run(&self, yaml: &str, out: &Out, n: u64, expect: u64, per_key: bool) -> (Run, RouterProcess) {
        let mut raw = self.raw();
        let start = Instant::now();
        let router = RouterProcess::start(yaml, &self.url);
        let (elapsed, got) = wait_count(start, expect, || out.count(&mut raw));
        let (rss, cpu) = proc_usage(router.child.id());
        let (lost, dup) = out.verify(&mut raw, n, per_key);
        let mut run = Run {
            msgs: got.min(expect) / (expect / n).max(1),
            secs: elapsed.as_secs_f64(),
            lost,
            dup,
            rss_mb: rss,
            cpu_per_m: cpu.map(|c| c / n as f64 * 1e6),
            note: String::new(),
        };
        if got < expect {
            run.note = format!("stalled at {got} of {expect}");
        }
        (run, router)
    }

    /// Run the Python bridge with `args` until `out` holds `expect` messages.
    fn python_run(&self, args: &[&str], out: &Out, n: u64, expect: u64, per_key: bool) -> Option<Run> {
        let python = self.python.as_ref()?;
        let mut raw = self.raw();
        let start = Instant::now();
        let child = self.spawn_python(python, args)?;
        let (elapsed, got) = wait_count(start, expect, || out.count(&mut raw));
        let (rss, cpu) = proc_usage(child.0.id());
        drop(child);
        let (lost, dup) = out.verify(&mut raw, n, per_key);
        Some(Run {
            msgs: got.min(expect) / (expect / n).max(1),
            secs: elapsed.as_secs_f64(),
            lost,
            dup,
            rss_mb: rss,
            cpu_per_m: cpu.map(|c| c / n as f64 * 1e6),
            note: if got < expect {
                format!("stalled at {got} of {expect}")
            } else {
                String::new()
            },
        })
    }

    fn spawn_python(&self, python: &PathBuf, args: &[&str]) -> Option<Proc> {
        let script = support::repo_root().join("bench/bridge.py");
        let log = std::fs::File::create(std::env::temp_dir().join("bench-bridge-py.log")).ok()?;
        Command::new(python)
            .arg(script)
            .arg(&self.url)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .ok()
            .map(Proc)
    }

    fn wanted(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|o| name.contains(o.as_str()))
    }

    fn verdict(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.verdicts.push((what.into(), ok, detail.into()));
    }

    // -----------------------------------------------------------------------------------------
    // Scenarios

    fn redis_round_trip(&mut self) {
        let lat = latency(self.port, Produce::Xadd("rt".into()), Consume::Stream("rt".into()));
        println!(
            "Redis's own round trip (XADD -> XREAD BLOCK) at {LATENCY_RATE}/s: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
            lat.p50, lat.p99, lat.p999
        );
        self.redis_rt = Some(lat);
    }

    /// A stream source through group g into whatever `rules`/`py_args`/`limit` write.
    #[allow(clippy::too_many_arguments)]
    fn stream_scenario(
        &mut self,
        name: &'static str,
        base: u64,
        sink_yaml: impl Fn(&str) -> String,
        out: impl Fn(&str) -> Out,
        py_mode: &str,
        py_sinks: impl Fn(&str) -> Vec<String>,
        limit_write: impl Fn(&str) -> Box<dyn Fn(&mut Vec<u8>, usize, &[&[u8]]) -> usize>,
        fan: u64,
        lat_consume: impl Fn(&str) -> Consume,
    ) {
        if !self.wanted(name) {
            return;
        }
        let n = self.n(base);
        let mut raw = self.raw();
        // Limit.
        let src = format!("lim:{name}:src");
        preload_stream(&mut raw, &src, n);
        create_group(&mut raw, &src);
        let write = limit_write("lim");
        let mut limit = limit_streams(self.port, std::slice::from_ref(&src), n, |w, s, f| write(w, s, f));
        let (lost, dup) = out("lim").verify(&mut raw, n, true);
        (limit.lost, limit.dup) = (lost, dup);
        // Router.
        let src = format!("r:{name}:src");
        preload_stream(&mut raw, &src, n);
        let yaml = router_yaml(&format!(
            "  - name: {name}\n    source: {{ stream: \"{src}\", group: g, start: oldest, batch: {BATCH} }}\n    sinks:\n{}",
            sink_yaml("r")
        ));
        let out_r = out("r");
        let (router, process) = self.router_run(&yaml, &out_r, n, n * fan, true);
        // Redis's own round trip under the same conditions (the router idle but running),
        // right before the router's own: the machine is shared, so the two are compared here.
        let redis_lat = (name == "stream-to-stream").then(|| {
            latency(
                self.port,
                Produce::Xadd("rt:near".into()),
                Consume::Stream("rt:near".into()),
            )
        });
        let lat = latency(self.port, Produce::Xadd(src.clone()), lat_consume("r"));
        drop(process);
        // Python.
        let src = format!("py:{name}:src");
        preload_stream(&mut raw, &src, n);
        create_group(&mut raw, &src);
        let mut args = vec![py_mode.to_string(), src.clone()];
        args.extend(py_sinks("py"));
        args.push(n.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let python = self.python_run(&args, &out("py"), n, n * fan, true);
        // Python latency for the headline scenario only.
        let py_lat = if name == "stream-to-stream" && self.python.is_some() {
            let mut follow: Vec<String> = vec![py_mode.into(), src.clone()];
            follow.extend(py_sinks("py"));
            follow.push("0".into());
            let follow: Vec<&str> = follow.iter().map(String::as_str).collect();
            let python = self.python.clone().expect("checked");
            let child = self.spawn_python(&python, &follow);
            std::thread::sleep(Duration::from_millis(500));
            let l = latency(self.port, Produce::Xadd(src.clone()), lat_consume("py"));
            drop(child);
            Some(l)
        } else {
            None
        };
        self.rows.push(Row {
            name,
            router,
            limit: Some(limit),
            python,
            lat: Some(lat),
            py_lat,
            redis_lat,
            limit_what: "raw RESP client, pipelined",
        });
    }

    fn channel_to_stream(&mut self) {
        let name = "channel-to-stream";
        if !self.wanted(name) {
            return;
        }
        let mut raw = self.raw();
        // Limit: a raw subscriber that pipelines one XADD per message it reads.
        let limit = {
            let (chan, dst) = ("lim:chan".to_string(), "lim:chan:dst".to_string());
            let stop = Arc::new(AtomicBool::new(false));
            let port = self.port;
            let bridge = {
                let (chan, dst, stop) = (chan.clone(), dst.clone(), stop.clone());
                std::thread::spawn(move || raw_channel_bridge(port, &chan, &dst, &stop))
            };
            wait_numsub(&mut raw, &chan);
            let (published, secs) = publish_flat_out(self.port, &chan, CHANNEL_REF_SECS);
            let start = Instant::now();
            let (_, got) = wait_count(start, published, || xlen(&mut raw, &dst));
            stop.store(true, Ordering::SeqCst);
            let _ = bridge.join();
            let (lost, dup) = streams(&[dst]).verify(&mut raw, published, true);
            Run {
                msgs: got,
                secs,
                lost,
                dup,
                note: format!("publisher {:.0}/s", published as f64 / secs),
                ..Run::default()
            }
        };
        // Router. A probe finds what it delivers against a flat-out publisher (that probe
        // overflows and loses by design); then the publisher is paced at 90 % of it for
        // CHANNEL_SECS and nothing may be lost, stepping down by a quarter if something was.
        let yaml = |chan: &str, dst: &str| {
            router_yaml(&format!(
                "  - name: chan\n    source: {{ channel: \"{chan}\" }}\n    sinks: [ {{ stream: \"{dst}\" }} ]\n"
            ))
        };
        let probe_rate = {
            let (chan, dst) = ("r:probe", "r:probe:dst");
            let router = RouterProcess::start(&yaml(chan, dst), &self.url);
            wait_numsub(&mut raw, chan);
            let start = Instant::now();
            let (published, _) = publish(self.port, chan, CHANNEL_REF_SECS, None);
            let (tail, got) = wait_count(start, published, || xlen(&mut raw, dst));
            drop(router);
            got as f64 / tail.as_secs_f64().max(CHANNEL_REF_SECS)
        };
        let log_before = self.redis.log().matches("output buffer limits").count();
        let mut rate = (probe_rate * 0.9).max(1000.0);
        let mut attempt = 0;
        let (run, lat, clean) = loop {
            attempt += 1;
            let (chan, dst) = (format!("r:chan:{attempt}"), format!("r:chan:{attempt}:dst"));
            let log_before = self.redis.log().matches("output buffer limits").count();
            let router = RouterProcess::start(&yaml(&chan, &dst), &self.url);
            wait_numsub(&mut raw, &chan);
            let (published, secs) = publish(self.port, &chan, CHANNEL_SECS, Some(rate));
            let start = Instant::now();
            let (tail, got) = wait_count(start, published, || xlen(&mut raw, &dst));
            let (rss, cpu) = proc_usage(router.child.id());
            let (lost, dup) = streams(std::slice::from_ref(&dst)).verify(&mut raw, published, true);
            let resubscribed = router.log().matches("Subscription lost").count();
            let cut = self.redis.log().matches("output buffer limits").count() - log_before;
            let run = Run {
                msgs: got,
                secs: secs + tail.as_secs_f64(),
                lost,
                dup,
                rss_mb: rss,
                cpu_per_m: cpu.map(|c| c / published.max(1) as f64 * 1e6),
                note: format!(
                    "publisher paced at {:.0}/s for {CHANNEL_SECS} s ({published} published; flat-out probe delivered {probe_rate:.0}/s); output-buffer disconnects {cut}, resubscribes {resubscribed}",
                    published as f64 / secs
                ),
            };
            let clean = lost == 0 && dup == 0 && cut == 0 && resubscribed == 0;
            if clean || attempt == 3 {
                let lat = latency(self.port, Produce::Publish(chan.clone()), Consume::Stream(dst.clone()));
                break (run, lat, clean);
            }
            rate *= 0.75;
        };
        let cut = self.redis.log().matches("output buffer limits").count() - log_before;
        self.verdict(
            "channel -> stream: no loss at the highest paced rate, never disconnected",
            clean,
            format!(
                "{:.0}/s sustained for {CHANNEL_SECS} s, lost {} (attempt {attempt}; {cut} disconnects in the paced runs)",
                run.rate(),
                run.lost
            ),
        );
        // Python.
        let python = self.python.clone().and_then(|py| {
            let (chan, dst) = ("py:chan", "py:chan:dst");
            let child = self.spawn_python(&py, &["channel", chan, dst])?;
            wait_numsub(&mut raw, chan);
            let (published, secs) = publish_flat_out(self.port, chan, CHANNEL_REF_SECS);
            let (_, got) = wait_count(Instant::now(), published, || xlen(&mut raw, dst));
            let (rss, cpu) = proc_usage(child.0.id());
            drop(child);
            let (lost, dup) = streams(&[dst.to_string()]).verify(&mut raw, published, true);
            Some(Run {
                msgs: got,
                secs,
                lost,
                dup,
                rss_mb: rss,
                cpu_per_m: cpu.map(|c| c / published.max(1) as f64 * 1e6),
                note: format!("publisher {:.0}/s", published as f64 / secs),
            })
        });
        self.rows.push(Row {
            name,
            router: run,
            limit: Some(limit),
            python,
            lat: Some(lat),
            py_lat: None,
            redis_lat: None,
            limit_what: "raw subscriber + pipelined XADD",
        });
    }

    fn queue_to_queue(&mut self) {
        let name = "queue-to-queue";
        if !self.wanted(name) {
            return;
        }
        let n = self.n(150_000);
        let mut raw = self.raw();
        preload_list(&mut raw, "lim:q:src", n);
        let mut limit = limit_queue(self.port, "lim:q:src", "lim:q:dst", n);
        (limit.lost, limit.dup) = lists(&["lim:q:dst".to_string()]).verify(&mut raw, n, true);
        preload_list(&mut raw, "r:q:src", n);
        let yaml = router_yaml(
            "  - name: q\n    source: { queue: \"r:q:src\", consumer: bench }\n    sinks: [ { queue: \"r:q:dst\" } ]\n",
        );
        let out = lists(&["r:q:dst".to_string()]);
        let (router, process) = self.router_run(&yaml, &out, n, n, true);
        let lat = latency(
            self.port,
            Produce::Rpush("r:q:src".into()),
            Consume::List("r:q:dst".into()),
        );
        drop(process);
        preload_list(&mut raw, "py:q:src", n);
        let ns = n.to_string();
        let python = self.python_run(
            &["queue", "py:q:src", "py:q:dst", &ns],
            &lists(&["py:q:dst".to_string()]),
            n,
            n,
            true,
        );
        self.rows.push(Row {
            name,
            router,
            limit: Some(limit),
            python,
            lat: Some(lat),
            py_lat: None,
            redis_lat: None,
            limit_what: "raw RESP client, pipelined LMOVE/RPUSH/LREM",
        });
    }

    fn hundred_rules(&mut self) {
        let name = "100-rules";
        if !self.wanted(name) {
            return;
        }
        const K: usize = 100;
        let n = self.n(200_000);
        let per = n / K as u64;
        let n = per * K as u64;
        let mut raw = self.raw();
        // Idle: 100 rules on streams nobody writes.
        {
            let rules: String = (0..K)
                .map(|i| format!("  - name: idle{i}\n    source: {{ stream: \"idle:src:{i}\", group: g }}\n    sinks: [ {{ stream: \"idle:dst:{i}\" }} ]\n"))
                .collect();
            let router = RouterProcess::start(&router_yaml(&rules), &self.url);
            let start = Instant::now();
            wait_count(start, K as u64, || {
                (0..K)
                    .map(|i| raw.int(&[b"EXISTS", format!("idle:src:{i}").as_bytes()]) as u64)
                    .sum()
            });
            std::thread::sleep(Duration::from_secs(2));
            let (rss, _) = proc_usage(router.child.id());
            self.idle_rss = rss;
        }
        let keys = |p: &str, what: &str| -> Vec<String> { (0..K).map(|i| format!("{p}:{what}:{i}")).collect() };
        // Preload: message numbers are global, spread over the streams.
        let preload = |raw: &mut Raw, p: &str| {
            for (i, k) in keys(p, "src").iter().enumerate() {
                for seq in 0..per {
                    let pl = payload(i as u64 * per + seq, 0);
                    raw.cmd(&[
                        b"XADD",
                        k.as_bytes(),
                        b"*",
                        b"event",
                        b"order.created",
                        b"payload",
                        pl.as_bytes(),
                    ]);
                }
                raw.flush();
                raw.skip(per as usize);
            }
        };
        preload(&mut raw, "lim");
        for k in keys("lim", "src") {
            create_group(&mut raw, &k);
        }
        let dsts = keys("lim", "dst");
        let mut limit = limit_streams(self.port, &keys("lim", "src"), n, |w, s, f| xadd_fields(w, &dsts[s], f));
        (limit.lost, limit.dup) = streams(&keys("lim", "dst")).verify(&mut raw, n, false);
        preload(&mut raw, "r");
        let rules: String = (0..K)
            .map(|i| format!("  - name: m{i}\n    source: {{ stream: \"r:src:{i}\", group: g, start: oldest }}\n    sinks: [ {{ stream: \"r:dst:{i}\" }} ]\n"))
            .collect();
        let out = streams(&keys("r", "dst"));
        let (router, process) = self.router_run(&router_yaml(&rules), &out, n, n, false);
        drop(process);
        preload(&mut raw, "py");
        for k in keys("py", "src") {
            create_group(&mut raw, &k);
        }
        let ns = n.to_string();
        let ks = K.to_string();
        let python = self.python_run(&["multi", "py", &ks, &ns], &streams(&keys("py", "dst")), n, n, false);
        self.rows.push(Row {
            name,
            router,
            limit: Some(limit),
            python,
            lat: None,
            py_lat: None,
            redis_lat: None,
            limit_what: "raw client, one XREADGROUP over the 100 streams",
        });
    }

    fn webhook(&mut self) {
        let name = "webhook";
        if !self.wanted(name) {
            return;
        }
        let n = self.n(30_000);
        let mut raw = self.raw();
        // Limit: the endpoint itself, driven by a plain HTTP client with the router's concurrency;
        // Redis is not what bounds a webhook.
        let limit = {
            let hook = Arc::new(Hook::default());
            let url = start_hook(&self.rt, hook.clone());
            let start = Instant::now();
            self.rt.block_on(async {
                let client = reqwest::Client::new();
                let next = Arc::new(AtomicU64::new(0));
                let mut tasks = Vec::new();
                for _ in 0..64 {
                    let (client, next, url) = (client.clone(), next.clone(), url.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let body = format!("{{\"event\":\"order.created\",\"payload\":\"{}\"}}", payload(i, 0));
                            let _ = client.post(&url).body(body).send().await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
            let secs = start.elapsed().as_secs_f64();
            let (lost, dup) = Out::Hook(hook).verify(&mut raw, n, true);
            Run {
                msgs: n,
                secs,
                lost,
                dup,
                ..Run::default()
            }
        };
        let hook = Arc::new(Hook::default());
        let url = start_hook(&self.rt, hook.clone());
        preload_stream(&mut raw, "r:hook:src", n);
        let yaml = router_yaml(&format!(
            "  - name: hook\n    source: {{ stream: \"r:hook:src\", group: g, start: oldest }}\n    sinks:\n      - webhook: \"{url}\"\n        max_in_flight: 64\n"
        ));
        let out = Out::Hook(hook.clone());
        let (router, process) = self.router_run(&yaml, &out, n, n, true);
        let lat = latency(self.port, Produce::Xadd("r:hook:src".into()), Consume::Hook(hook));
        drop(process);
        let py_hook = Arc::new(Hook::default());
        let py_url = start_hook(&self.rt, py_hook.clone());
        let py_n = (n / 5).max(1000);
        preload_stream(&mut raw, "py:hook:src", py_n);
        create_group(&mut raw, "py:hook:src");
        let ns = py_n.to_string();
        let python = self.python_run(
            &["webhook", "py:hook:src", &py_url, &ns],
            &Out::Hook(py_hook),
            py_n,
            py_n,
            true,
        );
        self.rows.push(Row {
            name,
            router,
            limit: Some(limit),
            python,
            lat: Some(lat),
            py_lat: None,
            redis_lat: None,
            limit_what: "the endpoint alone, reqwest, 64 in flight",
        });
    }

    // -----------------------------------------------------------------------------------------
    // Report

    fn report(&mut self) {
        println!();
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>7} {:>7} {:>23} {:>7} {:>8} {:>9}",
            "scenario",
            "router/s",
            "limit/s",
            "python/s",
            "r/lim",
            "r/py",
            "p50/p99/p99.9 ms",
            "RSS MB",
            "CPU s/M",
            "lost/dup"
        );
        for row in &self.rows {
            let r = &row.router;
            let lim = row.limit.as_ref().map(Run::rate);
            let py = row.python.as_ref().map(Run::rate);
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            let ratio = |v: Option<f64>| {
                v.filter(|v| *v > 0.0)
                    .map_or("-".to_string(), |v| format!("{:.2}", r.rate() / v))
            };
            let lat = row
                .lat
                .map_or("-".to_string(), |l| format!("{:.2}/{:.2}/{:.2}", l.p50, l.p99, l.p999));
            println!(
                "{:<20} {:>10.0} {:>10} {:>10} {:>7} {:>7} {:>23} {:>7} {:>8} {:>9}",
                row.name,
                r.rate(),
                f(lim),
                f(py),
                ratio(lim),
                ratio(py),
                lat,
                r.rss_mb.map_or("-".into(), |v| format!("{v:.1}")),
                r.cpu_per_m.map_or("-".into(), |v| format!("{v:.2}")),
                format!("{}/{}", r.lost, r.dup),
            );
        }
        println!();
        for row in &self.rows {
            println!("{} (limit: {}):", row.name, row.limit_what);
            let line = |who: &str, run: &Run| {
                println!(
                    "  {who:<7} {:>9} msgs in {:>6.2} s = {:>9.0}/s  lost {} dup {}  RSS {}  CPU {} s/M msgs {}",
                    run.msgs,
                    run.secs,
                    run.rate(),
                    run.lost,
                    run.dup,
                    run.rss_mb.map_or("-".into(), |v| format!("{v:.1} MB")),
                    run.cpu_per_m.map_or("-".into(), |v| format!("{v:.2}")),
                    run.note
                )
            };
            line("router", &row.router);
            if let Some(l) = &row.limit {
                line("limit", l);
            }
            if let Some(p) = &row.python {
                line("python", p);
            }
            if let Some(l) = row.lat {
                println!(
                    "  latency router at {LATENCY_RATE}/s: p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} samples, {} lost)",
                    l.p50, l.p99, l.p999, l.n, l.lost
                );
            }
            if let Some(l) = row.redis_lat {
                println!(
                    "  latency redis  at {LATENCY_RATE}/s: p50 {:.3} p99 {:.3} p99.9 {:.3} ms (XADD -> XREAD, just before the router's)",
                    l.p50, l.p99, l.p999
                );
            }
            if let Some(l) = row.py_lat {
                println!(
                    "  latency python at {LATENCY_RATE}/s: p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} samples, {} lost)",
                    l.p50, l.p99, l.p999, l.n, l.lost
                );
            }
        }
        if let Some(rt) = self.redis_rt {
            println!(
                "redis round trip at {LATENCY_RATE}/s: p50 {:.3} p99 {:.3} p99.9 {:.3} ms",
                rt.p50, rt.p99, rt.p999
            );
        }
        // Targets.
        let rows = std::mem::take(&mut self.rows);
        for row in &rows {
            let r = &row.router;
            self.verdict(
                format!("{}: nothing lost or doubled", row.name),
                r.lost == 0 && r.dup == 0 && r.msgs > 0,
                format!("lost {}, doubled {}", r.lost, r.dup),
            );
        }
        if let Some(row) = rows.iter().find(|r| r.name == "stream-to-stream") {
            let r = row.router.rate();
            if let Some(l) = &row.limit {
                let ratio = r / l.rate();
                self.verdict(
                    "stream -> stream >= 0.5 of the limit",
                    ratio >= 0.5,
                    format!(
                        "{ratio:.2} of {:.0}/s (gap {:.0}/s)",
                        l.rate(),
                        (0.5 * l.rate() - r).max(0.0)
                    ),
                );
            }
            if let Some(p) = &row.python {
                let ratio = r / p.rate();
                self.verdict(
                    "stream -> stream >= 3x the Python bridge",
                    ratio >= 3.0,
                    format!("{ratio:.2}x of {:.0}/s", p.rate()),
                );
            }
            if let (Some(l), Some(rt)) = (row.lat, row.redis_lat.or(self.redis_rt)) {
                let gap = l.p99 - rt.p99;
                self.verdict(
                    "p99 at 5,000/s within 0.5 ms of Redis's own round trip",
                    gap <= 0.5 && l.lost == 0,
                    format!("router p99 {:.3} ms vs redis {:.3} ms: +{gap:.3} ms", l.p99, rt.p99),
                );
            }
        }
        if let Some(idle) = self.idle_rss {
            self.verdict(
                "peak RSS with 100 idle rules <= 20 MB",
                idle <= 20.0,
                format!("{idle:.1} MB"),
            );
        }
        let peak = rows.iter().filter_map(|r| r.router.rss_mb).fold(0.0f64, f64::max);
        if peak > 0.0 {
            self.verdict(
                "peak RSS under full load <= 60 MB",
                peak <= 60.0,
                format!("{peak:.1} MB"),
            );
        }
        println!();
        for (what, ok, detail) in &self.verdicts {
            println!("{} {what}: {detail}", if *ok { "PASS" } else { "FAIL" });
        }
        self.rows = rows;
    }
}

// ---------------------------------------------------------------------------------------------
// Channel helpers

fn wait_numsub(raw: &mut Raw, chan: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        raw.query(&[b"PUBSUB", b"NUMSUB", chan.as_bytes()]);
        if let Some(Tok::Int(n)) = raw.toks.get(2)
            && *n >= 1
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nobody subscribed to {chan}");
}

/// Publish as fast as one pipelining client can (100 PUBLISH per write, replies read before the
/// next write) for `secs`; (messages published, seconds).
fn publish_flat_out(port: u16, chan: &str, secs: f64) -> (u64, f64) {
    publish(port, chan, secs, None)
}

/// Publish pipelines of 100 for `secs`, flat out or paced at `rate` msgs/s.
fn publish(port: u16, chan: &str, secs: f64, rate: Option<f64>) -> (u64, f64) {
    let mut raw = Raw::connect(port);
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        for _ in 0..BATCH {
            raw.cmd(&[b"PUBLISH", chan.as_bytes(), json_payload(seq, 0).as_bytes()]);
            seq += 1;
        }
        raw.flush();
        raw.skip(BATCH);
    }
    (seq, start.elapsed().as_secs_f64())
}

/// The limit's channel bridge: read what the subscription has, one pipeline of XADDs for it.
fn raw_channel_bridge(port: u16, chan: &str, dst: &str, stop: &AtomicBool) {
    let mut sub = Raw::connect(port);
    sub.cmd(&[b"SUBSCRIBE", chan.as_bytes()]);
    sub.flush();
    sub.skip(1);
    sub.set_read_timeout(Some(Duration::from_millis(200)));
    let mut out = Raw::connect(port);
    loop {
        let mut n = 0;
        let mut w = std::mem::take(&mut out.wbuf);
        while n < 1000 && sub.read() {
            // *3 $message $chan $payload
            if let Some(t @ Tok::Bulk(..)) = sub.toks.get(3) {
                let body = sub.bytes(*t);
                let p = body
                    .windows(11)
                    .position(|x| x == b"\"payload\":\"")
                    .map(|i| &body[i + 11..body.len() - 2])
                    .unwrap_or(body);
                put_header(&mut w, 7);
                for a in [
                    &b"XADD"[..],
                    dst.as_bytes(),
                    b"*",
                    b"event",
                    b"order.created",
                    b"payload",
                    p,
                ] {
                    put_arg(&mut w, a);
                }
                n += 1;
            }
            sub.set_read_timeout(Some(Duration::from_micros(1)));
        }
        sub.set_read_timeout(Some(Duration::from_millis(200)));
        out.wbuf = w;
        if n == 0 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        }
        out.flush();
        out.skip(n);
    }
}

fn find_python() -> Option<PathBuf> {
    let py = std::env::var("BENCH_PYTHON").ok().map(PathBuf::from)?;
    let ok = Command::new(&py)
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if ok { Some(py) } else { None }
}

fn main() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let python = find_python();
    if python.is_none() {
        println!("BENCH_PYTHON is not set or lacks redis-py: the Python bridge is skipped (bench/run.sh sets it up).");
    }
    let mut suite = Suite {
        port: redis.port,
        url: redis.url(),
        redis,
        python,
        scale: std::env::var("BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0),
        only: std::env::var("BENCH_ONLY").ok().filter(|s| !s.is_empty()),
        rows: Vec::new(),
        verdicts: Vec::new(),
        redis_rt: None,
        idle_rss: None,
        rt: tokio::runtime::Runtime::new().expect("runtime"),
    };
    println!(
        "redis-router benchmark suite: {} CPUs, redis-server {}, scale {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        suite
            .raw()
            .text(&[b"INFO", b"server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim(),
        suite.scale
    );
    suite.redis_round_trip();
    suite.stream_scenario(
        "stream-to-stream",
        300_000,
        |p| format!("      - stream: \"{p}:stream-to-stream:dst\"\n"),
        |p| streams(&[format!("{p}:stream-to-stream:dst")]),
        "stream",
        |p| vec![format!("{p}:stream-to-stream:dst")],
        |p| {
            let dst = format!("{p}:stream-to-stream:dst");
            Box::new(move |w: &mut Vec<u8>, _s: usize, f: &[&[u8]]| xadd_fields(w, &dst, f))
        },
        1,
        |p| Consume::Stream(format!("{p}:stream-to-stream:dst")),
    );
    suite.channel_to_stream();
    suite.stream_scenario(
        "stream-to-laravel",
        150_000,
        |p| format!("      - queue: \"{p}-laravel\"\n        laravel: {{ job: 'App\\Jobs\\Bench' }}\n"),
        |p| lists(&[format!("queues:{p}-laravel")]),
        "laravel",
        |p| vec![format!("{p}-laravel")],
        |p| {
            let q = format!("{p}-laravel");
            let key = format!("queues:{q}");
            let notify = format!("{key}:notify");
            Box::new(move |w: &mut Vec<u8>, _s: usize, f: &[&[u8]]| {
                let job = laravel_job(f, &q);
                put_header(w, 6);
                for a in [
                    &b"EVAL"[..],
                    LARAVEL_PUSH.as_bytes(),
                    b"2",
                    key.as_bytes(),
                    notify.as_bytes(),
                    &job,
                ] {
                    put_arg(w, a);
                }
                1
            })
        },
        1,
        |p| Consume::List(format!("queues:{p}-laravel")),
    );
    suite.queue_to_queue();
    suite.stream_scenario(
        "fan-out-3",
        100_000,
        |p| format!("      - stream: \"{p}:fan:a\"\n      - stream: \"{p}:fan:b\"\n      - queue: \"{p}:fan:c\"\n"),
        |p| {
            // Counted over all three sinks; verified per sink.
            Out::Keys(vec![
                (format!("{p}:fan:a"), false),
                (format!("{p}:fan:b"), false),
                (format!("{p}:fan:c"), true),
            ])
        },
        "fanout",
        |p| vec![format!("{p}:fan:a"), format!("{p}:fan:b"), format!("{p}:fan:c")],
        |p| {
            let (a, b, c) = (format!("{p}:fan:a"), format!("{p}:fan:b"), format!("{p}:fan:c"));
            Box::new(move |w: &mut Vec<u8>, _s: usize, f: &[&[u8]]| {
                xadd_fields(w, &a, f);
                xadd_fields(w, &b, f);
                put_header(w, 3);
                put_arg(w, b"RPUSH");
                put_arg(w, c.as_bytes());
                put_arg(w, f.get(3).copied().unwrap_or_default());
                3
            })
        },
        3,
        |p| Consume::Stream(format!("{p}:fan:a")),
    );
    suite.hundred_rules();
    suite.webhook();
    suite.report();
    println!("suite ran in {:.0} s", started.elapsed().as_secs_f64());
}
