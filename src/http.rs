//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/status` (JSON),
//! `/` (a small status page that polls `/status`) and, when the rule file enables it, `/tap`
//! (the rules' messages as they move, JSON lines, for `redis-router tap`).
//!
//! Off unless `http.listen` or `--listen` asks for it. It only reads: counters, rule states and
//! the reload state; it cannot change anything, and it never shows a password (URLs are masked,
//! errors go through [`crate::mask::text`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{RuleSpec, SourceSpecKind};
use crate::engine::reload::ReloadStats;
use crate::stats::{RuleState, RuleStats, RuleStatus, StatsRegistry};

/// What the endpoint reads.
pub struct HttpState {
    /// Every rule's counters.
    pub stats: StatsRegistry,
    /// Generation, hash, reload counters and the running rule instances.
    pub reloads: Arc<ReloadStats>,
    /// Cancelled when the router starts shutting down: `/readyz` answers 503 from then on.
    pub draining: CancellationToken,
    /// This process's name as a consumer (see [`crate::identity`]).
    pub instance: String,
    /// The rules' events, and whether and to whom `/tap` serves them.
    pub tap: TapAccess,
    /// Each rule's counters sampled over the last minutes, for the status page's pictures.
    pub history: History,
}

/// Seconds between two samples of [`History`].
pub const SAMPLE_EVERY_SECS: u64 = 5;
/// Samples kept per rule: five minutes.
pub const SAMPLES: usize = 60;

/// Each rule's numbers every [`SAMPLE_EVERY_SECS`], the last [`SAMPLES`] of them: what the
/// status page draws. Sampled by the endpoint itself, so it costs the rules nothing.
#[derive(Default)]
pub struct History {
    rules: std::sync::Mutex<std::collections::BTreeMap<String, std::collections::VecDeque<Sample>>>,
}

/// One rule's numbers at one time.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    /// Counters since the start.
    pub received: u64,
    /// Delivered since the start.
    pub delivered: u64,
    /// Dead-lettered since the start.
    pub dead_lettered: u64,
    /// Stream group rules: entries not yet read.
    pub stream_lag: i64,
    /// Stream group rules: entries read, not acknowledged.
    pub stream_pending: i64,
    /// Queue rules: elements waiting.
    pub queue_depth: i64,
}

impl History {
    /// Take a sample of every rule now; forget the rules no longer running.
    pub fn sample(&self, stats: &StatsRegistry, running: &[String]) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.retain(|name, _| running.contains(name));
        for name in running {
            let s = stats.rule(name);
            let series = rules.entry(name.clone()).or_default();
            if series.len() == SAMPLES {
                series.pop_front();
            }
            series.push_back(Sample {
                t,
                received: s.received.load(Ordering::Relaxed),
                delivered: s.delivered.load(Ordering::Relaxed),
                dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
                stream_lag: s.stream_lag.load(Ordering::Relaxed),
                stream_pending: s.stream_pending.load(Ordering::Relaxed),
                queue_depth: s.queue_depth.load(Ordering::Relaxed),
            });
        }
    }

    /// Every rule's samples, oldest first.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<Sample>> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
            .collect()
    }
}

/// Who may tap.
pub struct TapAccess {
    /// The events.
    pub taps: crate::tap::Taps,
    /// `http.tap` of the rule file (and not refused for the address listened on).
    pub enabled: bool,
    /// The bearer token a client must send, when the file sets one.
    pub token: Option<String>,
}

/// Serve until `stop` is cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/tap", get(tap))
        .route("/history", get(history))
        .with_state(state.clone());
    // The pictures' numbers: sampled here, on the endpoint's own timer.
    let sampler = {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(SAMPLE_EVERY_SECS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let running: Vec<String> = current_rules(&state.reloads).into_iter().map(|(s, _)| s.name.clone()).collect();
                        state.history.sample(&state.stats, &running);
                    }
                }
            }
        })
    };
    let _sampler = tokio_util::task::AbortOnDropHandle::new(sampler);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// `/history`: each rule's samples of the last minutes (see [`History`]).
async fn history(State(state): State<Arc<HttpState>>) -> Response {
    axum::Json(json!({
        "interval_s": SAMPLE_EVERY_SECS,
        "samples": SAMPLES,
        "rules": state.history.snapshot(),
    }))
    .into_response()
}

/// `/tap?rule=NAME&stage=STAGE&filter=EXPR` (each may repeat but `filter`, each optional):
/// one JSON line per event from now on, and `{"lagged":N}` when N events were lost because the
/// client read too slowly. Ends when the router shuts down.
async fn tap(
    State(state): State<Arc<HttpState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    use crate::tap::{Next, Stage};
    let plain = |code: StatusCode, text: String| {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
    };
    let access = &state.tap;
    if !access.enabled {
        return plain(
            StatusCode::NOT_FOUND,
            "tapping is off: add `tap: true` under `http:` in the rule file\n".into(),
        );
    }
    if let Some(token) = &access.token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), token.as_bytes())) {
            return plain(
                StatusCode::UNAUTHORIZED,
                "a tap needs the rule file's `tap_token`\n".into(),
            );
        }
    }
    let mut rules = Vec::new();
    let mut stages = Vec::new();
    let mut filter = None;
    for (k, v) in query {
        match k.as_str() {
            "rule" => rules.push(v),
            "stage" => match Stage::parse(&v) {
                Some(s) => stages.push(s),
                None => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown stage `{}`; one of received, filtered, sink, dead-letter\n",
                            crate::mask::escape(&v)
                        ),
                    );
                }
            },
            "filter" => match crate::filter::Filter::compile(&v) {
                Ok(f) => filter = Some(f),
                Err(e) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!("filter: {}\n", crate::mask::escape(&e)),
                    );
                }
            },
            other => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown parameter `{}`; rule, stage or filter\n",
                        crate::mask::escape(other)
                    ),
                );
            }
        }
    }
    let wanted = move |e: &crate::tap::TapEvent| -> bool {
        (rules.is_empty() || rules.contains(&e.rule))
            && (stages.is_empty() || stages.contains(&e.stage))
            && filter.as_ref().is_none_or(|f| {
                // Only a whole payload can be looked into.
                e.payload_len == e.payload.len() && f.matches(&tap_message(e)).unwrap_or(false)
            })
    };
    // Subscribed before the answer starts: the client misses nothing after it sees the headers.
    let sub = access.taps.subscribe();
    let draining = state.draining.clone();
    let lines = futures_util::stream::unfold((sub, draining, wanted), |(mut sub, draining, wanted)| async move {
        loop {
            let next = tokio::select! {
                _ = draining.cancelled() => return None,
                next = sub.next() => next?,
            };
            let line = match next {
                Next::Event(e) if wanted(&e) => serde_json::to_string(&*e).unwrap_or_default(),
                Next::Event(_) => continue,
                Next::Lagged(n) => json!({ "lagged": n }).to_string(),
            };
            return Some((
                Ok::<_, std::convert::Infallible>(format!("{line}\n")),
                (sub, draining, wanted),
            ));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The event's payload as a message, for a tap's `filter`.
fn tap_message(e: &crate::tap::TapEvent) -> crate::message::Message {
    crate::message::Message::new(
        crate::message::Body::Bytes(e.payload.as_bytes().to_vec()),
        crate::message::Meta {
            rule: Arc::from(e.rule.as_str()),
            source: crate::message::SourceKind::Channel,
            key: e.key.clone(),
            pattern: None,
            id: e.id.clone(),
            received: std::time::SystemTime::now(),
            deliveries: 1,
            fields: Vec::new(),
            problem: None,
        },
    )
}

type Running = Vec<(Arc<RuleSpec>, Arc<RuleStatus>)>;

/// The current instance of each rule (during a hand-over the newest one, which is last).
fn current_rules(reloads: &ReloadStats) -> Running {
    let mut out: Running = Vec::new();
    for (spec, status) in reloads.rules() {
        match out.iter_mut().find(|(s, _)| s.name == spec.name) {
            Some(slot) => *slot = (spec, status),
            None => out.push((spec, status)),
        }
    }
    out
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response();
    }
    let rules = current_rules(&state.reloads);
    let waiting: Vec<String> = rules
        .iter()
        .filter(|(_, st)| st.get() != RuleState::Running)
        .map(|(spec, st)| format!("{} ({})", spec.name, st.get().as_str()))
        .collect();
    if rules.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no rules running yet\n").into_response()
    } else if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

fn counters(stats: &RuleStats) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in stats.snapshot() {
        map.insert(k.to_string(), json!(v));
    }
    Value::Object(map)
}

async fn status(State(state): State<Arc<HttpState>>) -> Response {
    let reloads = &state.reloads;
    let mut connections: Vec<Value> = Vec::new();
    let rules: Vec<Value> = current_rules(reloads)
        .into_iter()
        .map(|(spec, st)| {
            for c in std::iter::once(&spec.source.connection).chain(spec.sinks.iter().map(|s| &s.connection)) {
                if !connections.iter().any(|v| v["name"] == c.name.as_str()) {
                    connections.push(json!({ "name": c.name, "url": c.masked_url(), "prefix": c.prefix }));
                }
            }
            let stats = state.stats.rule(&spec.name);
            let sinks: Vec<Value> = spec
                .sinks
                .iter()
                .map(|s| {
                    let label = s.label();
                    let c = stats.sink(&label);
                    json!({
                        "sink": crate::mask::text(&label),
                        "delivered": c.delivered.load(Ordering::Relaxed),
                        "retried": c.retried.load(Ordering::Relaxed),
                        "dead_lettered": c.dead_lettered.load(Ordering::Relaxed),
                    })
                })
                .collect();
            let mut rule = json!({
                "name": spec.name,
                "state": st.get().as_str(),
                // Every instance runs every rule; consumer groups and queues share the work.
                "active": st.get() == RuleState::Running,
                "source": spec.source.kind.to_string(),
                "sinks": sinks,
                "last_error": st.last_error().map(|e| crate::mask::text(&e)),
                "counters": counters(&stats),
            });
            if is_group_stream(&spec) {
                rule["stream"] = json!({
                    "lag": stats.stream_lag.load(Ordering::Relaxed),
                    "pending": stats.stream_pending.load(Ordering::Relaxed),
                });
            }
            if is_queue(&spec) {
                rule["queue"] = json!({ "depth": stats.queue_depth.load(Ordering::Relaxed) });
            }
            rule["recent_dead_letters"] = json!(stats.recent_dead_letters());
            rule
        })
        .collect();
    let body = json!({
        "instance": state.instance,
        "generation": ReloadStats::get(&reloads.generation),
        "hash": reloads.hash(),
        "draining": state.draining.is_cancelled(),
        "reloads": {
            "applied": ReloadStats::get(&reloads.applied),
            "rejected": ReloadStats::get(&reloads.rejected),
            "unchanged": ReloadStats::get(&reloads.unchanged),
            "history": reloads.history(),
        },
        "tap": state.tap.enabled,
        "tap_token": state.tap.token.is_some(),
        "connections": connections,
        "rules": rules,
    });
    axum::Json(body).into_response()
}

fn is_group_stream(spec: &RuleSpec) -> bool {
    matches!(&spec.source.kind, SourceSpecKind::Stream { group: Some(_), .. })
}

fn is_queue(spec: &RuleSpec) -> bool {
    matches!(&spec.source.kind, SourceSpecKind::Queue { .. })
}

/// A Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let body = render_metrics(&state);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A metric name (after `redis_router_`), its help text, and how to read it.
type Counter<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The Prometheus text exposition of every counter.
pub fn render_metrics(state: &HttpState) -> String {
    let mut out = String::new();
    let all = state.stats.all();
    let rule_counters: [Counter<RuleStats>; 9] = [
        ("received_total", "Messages read from the rule's source.", |s| {
            s.received.load(Ordering::Relaxed)
        }),
        (
            "filtered_out_total",
            "Messages the filters let through to no sink.",
            |s| s.filtered_out.load(Ordering::Relaxed),
        ),
        (
            "delivered_total",
            "Messages every sink that took them delivered.",
            |s| s.delivered.load(Ordering::Relaxed),
        ),
        ("dead_lettered_total", "Dead letters written for the rule.", |s| {
            s.dead_lettered.load(Ordering::Relaxed)
        }),
        ("overflowed_total", "Pub/Sub messages dropped on a full buffer.", |s| {
            s.overflowed.load(Ordering::Relaxed)
        }),
        (
            "pubsub_reconnects_total",
            "Pub/Sub resubscriptions after a lost connection.",
            |s| s.reconnects.load(Ordering::Relaxed),
        ),
        (
            "deleted_while_pending_total",
            "Stream entries deleted while pending, acknowledged.",
            |s| s.deleted_while_pending.load(Ordering::Relaxed),
        ),
        (
            "claimed_elsewhere_total",
            "ha: claim messages another instance delivered.",
            |s| s.claimed_elsewhere.load(Ordering::Relaxed),
        ),
        (
            "claims_reclaimed_total",
            "ha: claim messages claimed again after another instance's claim expired undone.",
            |s| s.reclaimed.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in rule_counters {
        let _ = writeln!(
            out,
            "# HELP redis_router_{name} {help}\n# TYPE redis_router_{name} counter"
        );
        for (rule, stats) in &all {
            let _ = writeln!(out, "redis_router_{name}{{rule=\"{}\"}} {}", label(rule), get(stats));
        }
    }
    let sink_counters: [Counter<crate::stats::SinkStats>; 3] = [
        ("sink_delivered_total", "Messages the sink took.", |s| {
            s.delivered.load(Ordering::Relaxed)
        }),
        (
            "sink_retried_total",
            "Messages sent to the sink again after a transient failure.",
            |s| s.retried.load(Ordering::Relaxed),
        ),
        (
            "sink_dead_lettered_total",
            "Messages dead-lettered because of the sink.",
            |s| s.dead_lettered.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in sink_counters {
        let _ = writeln!(
            out,
            "# HELP redis_router_{name} {help}\n# TYPE redis_router_{name} counter"
        );
        for (rule, stats) in &all {
            for (sink, s) in stats.sinks() {
                let _ = writeln!(
                    out,
                    "redis_router_{name}{{rule=\"{}\",sink=\"{}\"}} {}",
                    label(rule),
                    label(&crate::mask::text(&sink)),
                    get(&s)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP redis_router_in_flight Messages read and not yet finished.\n# TYPE redis_router_in_flight gauge"
    );
    for (rule, stats) in &all {
        let _ = writeln!(
            out,
            "redis_router_in_flight{{rule=\"{}\"}} {}",
            label(rule),
            stats.in_flight.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP redis_router_delivery_seconds From receipt to the last sink's acknowledgement.\n# TYPE redis_router_delivery_seconds histogram"
    );
    for (rule, stats) in &all {
        let (buckets, sum, count) = stats.latency.snapshot();
        let r = label(rule);
        for (bound, n) in buckets {
            let _ = writeln!(
                out,
                "redis_router_delivery_seconds_bucket{{rule=\"{r}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "redis_router_delivery_seconds_bucket{{rule=\"{r}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "redis_router_delivery_seconds_sum{{rule=\"{r}\"}} {sum}");
        let _ = writeln!(out, "redis_router_delivery_seconds_count{{rule=\"{r}\"}} {count}");
    }
    let running = current_rules(&state.reloads);
    // Sampled gauges of the rules whose source has them: name, help, which rules, the value.
    type Sampled = (&'static str, &'static str, fn(&RuleSpec) -> bool, fn(&RuleStats) -> i64);
    let sampled: [Sampled; 3] = [
        (
            "stream_lag",
            "Entries the rule's consumer group has not read yet.",
            is_group_stream,
            |s| s.stream_lag.load(Ordering::Relaxed),
        ),
        (
            "stream_pending",
            "Entries read by the group and not acknowledged.",
            is_group_stream,
            |s| s.stream_pending.load(Ordering::Relaxed),
        ),
        (
            "queue_depth",
            "Elements waiting in a queue rule's list (sampled).",
            is_queue,
            |s| s.queue_depth.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, applies, get) in sampled {
        let _ = writeln!(
            out,
            "# HELP redis_router_{name} {help}\n# TYPE redis_router_{name} gauge"
        );
        for (spec, _) in running.iter().filter(|(s, _)| applies(s)) {
            let stats = state.stats.rule(&spec.name);
            let _ = writeln!(
                out,
                "redis_router_{name}{{rule=\"{}\"}} {}",
                label(&spec.name),
                get(&stats)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP redis_router_rule_up 1 while the rule runs with its source connected.\n# TYPE redis_router_rule_up gauge"
    );
    for (spec, st) in &running {
        let up = u8::from(st.get() == RuleState::Running);
        let _ = writeln!(out, "redis_router_rule_up{{rule=\"{}\"}} {up}", label(&spec.name));
    }
    let r = &state.reloads;
    let _ = writeln!(
        out,
        "# HELP redis_router_reloads_total Rule file reloads by result.\n# TYPE redis_router_reloads_total counter\nredis_router_reloads_total{{result=\"applied\"}} {}\nredis_router_reloads_total{{result=\"rejected\"}} {}\nredis_router_reloads_total{{result=\"unchanged\"}} {}",
        ReloadStats::get(&r.applied),
        ReloadStats::get(&r.rejected),
        ReloadStats::get(&r.unchanged)
    );
    let _ = writeln!(
        out,
        "# HELP redis_router_config_generation Generation of the running rule set (1 at start).\n# TYPE redis_router_config_generation gauge\nredis_router_config_generation {}",
        ReloadStats::get(&r.generation)
    );
    let _ = writeln!(
        out,
        "# HELP redis_router_pubsub_overlap_duplicates_total Upper bound on Pub/Sub messages delivered twice during reload hand-overs.\n# TYPE redis_router_pubsub_overlap_duplicates_total counter\nredis_router_pubsub_overlap_duplicates_total {}",
        ReloadStats::get(&r.pubsub_overlap_duplicates)
    );
    out
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The status page: plain HTML, inline SVG and a little script polling `/status` every second
/// and `/history` every five; no asset from elsewhere, so it works on a network without
/// internet. Rows are kept and updated in place, so it stays usable at hundreds of rules.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>redis-router</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.6em 0 .4em; }
  #meta { color: #666; margin-bottom: 1em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
  th { background: #f4f4f4; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .running { color: #197a2b; } .retrying, .starting { color: #b36b00; } .draining, .stopped { color: #999; }
  .err { color: #b00020; font-size: .9em; }
  svg.spark { width: 140px; height: 28px; background: #fafafa; border: 1px solid #eee; }
  svg.spark polyline { fill: none; stroke-width: 1.5; }
  .received { stroke: #9aa4ad; } .delivered { stroke: #197a2b; } .dead_lettered { stroke: #b00020; }
  .lag { stroke: #1f5fbf; } .pending { stroke: #b36b00; } .depth { stroke: #6a3fb5; }
  .legend span { margin-right: 1em; } .legend i { display: inline-block; width: 1em; height: 3px; vertical-align: middle; margin-right: .3em; }
  ul.list { margin: .2em 0; padding-left: 1.2em; } ul.list li { margin: .15em 0; }
  .muted { color: #777; } code, pre { font: 12px ui-monospace, monospace; }
  #taplines { max-height: 22em; overflow: auto; background: #fafafa; border: 1px solid #eee; padding: .4em; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>redis-router</h1>
<div id="meta">loading…</div>
<div class="legend muted"><span><i style="background:#9aa4ad"></i>received/s</span><span><i style="background:#197a2b"></i>delivered/s</span><span><i style="background:#b00020"></i>dead letters/s</span><span><i style="background:#1f5fbf"></i>stream lag</span><span><i style="background:#b36b00"></i>pending</span><span><i style="background:#6a3fb5"></i>queue depth</span> · last <b id="span">5</b> minutes</div>
<table>
  <thead><tr><th>rule</th><th>source → sinks</th><th>state</th><th>received</th><th>delivered</th><th>msg/s</th><th>dead letters</th><th>throughput</th><th>backlog</th><th>last error</th></tr></thead>
  <tbody id="rules"></tbody>
</table>
<h2>Last dead letters</h2>
<ul class="list" id="dead"><li class="muted">none</li></ul>
<h2>Reloads</h2>
<ul class="list" id="reloads"><li class="muted">none since start</li></ul>
<div id="tapbox" hidden>
<h2>Tap</h2>
<div><input id="taptoken" type="password" placeholder="tap_token" hidden> <button id="tapbtn">start</button> <span class="muted">what each rule receives, filters, gives its sinks and dead-letters, live (the last 200 events)</span></div>
<pre id="taplines"></pre>
</div>
<script>
const rows = {};
let last = {};
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
const SVG = 'http://www.w3.org/2000/svg';
function spark(series) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark'); svg.setAttribute('viewBox', '0 0 140 28'); svg.setAttribute('preserveAspectRatio', 'none');
  const all = series.flatMap(s => s.values);
  const max = Math.max(1, ...all);
  for (const s of series) {
    if (!s.values.length) continue;
    const n = Math.max(2, s.values.length);
    const pts = s.values.map((v, i) => `${(i * 140 / (n - 1)).toFixed(1)},${(27 - v * 26 / max).toFixed(1)}`).join(' ');
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('class', s.cls); line.setAttribute('points', pts);
    svg.append(line);
  }
  const title = document.createElementNS(SVG, 'title');
  title.textContent = series.map(s => `${s.cls}: now ${s.values.length ? Math.round(s.values[s.values.length - 1] * 10) / 10 : 0}, max ${Math.round(Math.max(0, ...s.values) * 10) / 10}`).join('\n');
  svg.append(title);
  return svg;
}
function row(name) {
  if (rows[name]) return rows[name];
  const tr = el('tr'); tr.dataset.rule = name;
  const c = {};
  for (const k of ['name', 'route', 'state', 'received', 'delivered', 'rate', 'dead', 'spark', 'backlog', 'error']) {
    const cls = { received: 'num received', delivered: 'num delivered', rate: 'num rate', dead: 'num dead', error: 'err', spark: 'throughput', backlog: 'backlog' }[k];
    c[k] = el('td', cls); tr.append(c[k]);
  }
  document.getElementById('rules').append(tr);
  return rows[name] = { tr, c };
}
async function refresh() {
  try {
    const s = await (await fetch('/status', {cache: 'no-store'})).json();
    document.getElementById('meta').textContent =
      `${s.instance} · generation ${s.generation} · file ${s.hash} · reloads ${s.reloads.applied} applied, ${s.reloads.rejected} rejected` +
      (s.draining ? ' · draining' : '');
    const now = Date.now();
    const seen = new Set();
    const dead = [];
    for (const r of s.rules) {
      seen.add(r.name);
      const c = r.counters, x = row(r.name).c;
      const prev = last[r.name];
      const rate = prev ? ((c.delivered - prev.delivered) * 1000 / (now - prev.at)) : 0;
      last[r.name] = { delivered: c.delivered, at: now };
      x.name.textContent = r.name;
      x.route.textContent = r.source + ' → ' + r.sinks.map(k => k.sink).join(', ');
      x.state.textContent = r.state; x.state.className = r.state;
      x.received.textContent = c.received; x.delivered.textContent = c.delivered;
      x.rate.textContent = rate.toFixed(1); x.dead.textContent = c.dead_lettered;
      x.error.textContent = r.last_error || '';
      x.backlog.dataset.now = r.stream ? `lag ${r.stream.lag} · pending ${r.stream.pending}` : r.queue ? `depth ${r.queue.depth}` : '';
      if (!x.backlog.firstChild || x.backlog.firstChild.nodeType === 3) x.backlog.textContent = x.backlog.dataset.now;
      for (const d of r.recent_dead_letters || []) dead.push({ rule: r.name, ...d });
    }
    for (const name of Object.keys(rows)) if (!seen.has(name)) { rows[name].tr.remove(); delete rows[name]; }
    const deadList = document.getElementById('dead');
    deadList.replaceChildren(...(dead.length ? dead.sort((a, b) => b.at.localeCompare(a.at)).slice(0, 20).map(d => {
      const li = el('li');
      li.append(el('span', 'muted', d.at + ' '), el('b', null, d.rule), el('span', null, `${d.sink ? ' · ' + d.sink : ''} · ${d.reason} · `), el('code', null, d.payload));
      return li;
    }) : [el('li', 'muted', 'none')]));
    const rel = document.getElementById('reloads');
    const hist = (s.reloads.history || []).slice().reverse();
    rel.replaceChildren(...(hist.length ? hist.map(h => {
      const what = h.result === 'applied'
        ? ['added', 'changed', 'removed'].filter(k => h[k].length).map(k => `${k}: ${h[k].join(', ')}`).join(' · ') || 'nothing to start or stop'
        : h.errors.join(' · ');
      const li = el('li', 'reload ' + h.result);
      li.append(el('span', 'muted', `${h.at} `), el('b', h.result === 'applied' ? 'running' : 'err', h.result), el('span', null, ` → generation ${h.generation} (${h.trigger}) · ${what}`));
      return li;
    }) : [el('li', 'muted', 'none since start')]));
    const box = document.getElementById('tapbox');
    box.hidden = !s.tap;
    document.getElementById('taptoken').hidden = !s.tap_token;
  } catch (e) {
    document.getElementById('meta').textContent = 'router unreachable: ' + e;
  }
}
async function pictures() {
  try {
    const h = await (await fetch('/history', {cache: 'no-store'})).json();
    document.getElementById('span').textContent = Math.round(h.interval_s * h.samples / 60);
    for (const [name, samples] of Object.entries(h.rules)) {
      const r = rows[name]; if (!r) continue;
      const per = k => samples.slice(1).map((p, i) => Math.max(0, (p[k] - samples[i][k]) / Math.max(1, p.t - samples[i].t)));
      const series = [{ cls: 'received', values: per('received') }, { cls: 'delivered', values: per('delivered') }, { cls: 'dead_lettered', values: per('dead_lettered') }];
      r.c.spark.replaceChildren(spark(series));
      const route = r.c.route.textContent;
      let backlog = [];
      if (route.startsWith('stream') && r.c.backlog.dataset.now.startsWith('lag')) backlog = [{ cls: 'lag', values: samples.map(p => p.stream_lag) }, { cls: 'pending', values: samples.map(p => p.stream_pending) }];
      else if (r.c.backlog.dataset.now.startsWith('depth')) backlog = [{ cls: 'depth', values: samples.map(p => p.queue_depth) }];
      if (backlog.length) { r.c.backlog.replaceChildren(spark(backlog), el('div', 'muted', r.c.backlog.dataset.now)); }
    }
  } catch (e) { /* the next poll tries again */ }
}
let tapping = null;
document.getElementById('tapbtn').onclick = async () => {
  const btn = document.getElementById('tapbtn');
  if (tapping) { tapping.abort(); tapping = null; btn.textContent = 'start'; return; }
  tapping = new AbortController(); btn.textContent = 'stop';
  const out = document.getElementById('taplines');
  const headers = {}; const token = document.getElementById('taptoken').value; if (token) headers.Authorization = 'Bearer ' + token;
  try {
    const res = await fetch('/tap', { headers, signal: tapping.signal });
    if (!res.ok) { out.textContent = await res.text(); btn.textContent = 'start'; tapping = null; return; }
    const reader = res.body.getReader(); const dec = new TextDecoder(); let buf = '';
    for (;;) {
      const { value, done } = await reader.read(); if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const e = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
        const line = e.lagged ? `… ${e.lagged} events lost` : `${e.at} ${e.rule} ${e.stage} ${e.key}` + (e.sink ? ` -> ${e.sink}: ${e.command || ''}` : '') + (e.reason ? ` (${e.reason})` : '') + (e.stage !== 'sink' ? ` ${e.payload}` : '');
        out.append(line + '\n');
        while (out.childNodes.length > 200) out.firstChild.remove();
        out.scrollTop = out.scrollHeight;
      }
    }
  } catch (e) { /* stopped */ }
};
refresh().then(pictures);
setInterval(refresh, 1000);
setInterval(pictures, 5000);
</script>
</body>
</html>
"#;
