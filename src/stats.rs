//! Per-rule counters: what the rule loop, its source and its sinks count, read by logs, tests
//! and the HTTP endpoint. Plain atomics, so counting costs no lock on the hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the delivery latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram on atomics (Prometheus semantics: cumulative at render time).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, then the sum in seconds and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                acc += n.load(Ordering::Relaxed);
                (*bound, acc)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, self.count.load(Ordering::Relaxed))
    }
}

/// Counters of one sink of a rule.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages the sink took.
    pub delivered: AtomicU64,
    /// Messages sent to it again after a transient failure.
    pub retried: AtomicU64,
    /// Messages dead-lettered because of it.
    pub dead_lettered: AtomicU64,
}

/// Counters of one rule. Shared between the rule's task, its source's reader and observers.
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Messages read from the source.
    pub received: AtomicU64,
    /// Messages the filter rejected.
    pub filtered_out: AtomicU64,
    /// Messages every sink took.
    pub delivered: AtomicU64,
    /// Sink writes retried.
    pub retried: AtomicU64,
    /// Messages written to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Pub/Sub messages dropped because the rule's buffer was full.
    pub overflowed: AtomicU64,
    /// Pub/Sub reconnects.
    pub reconnects: AtomicU64,
    /// Stream entries that vanished while pending (acknowledged without delivery).
    pub deleted_while_pending: AtomicU64,
    /// Source read errors.
    pub source_errors: AtomicU64,
    /// `ha: claim`: messages another instance claimed and delivered, so this one did not.
    pub claimed_elsewhere: AtomicU64,
    /// `ha: claim`: messages claimed again after another instance's claim expired undone (its
    /// claimer died or was slower than `claim_ttl`), and delivered by this one.
    pub reclaimed: AtomicU64,
    /// Messages read and not yet finished (a gauge).
    pub in_flight: AtomicU64,
    /// From receipt to the last sink's acknowledgement, per delivered message.
    pub latency: Histogram,
    /// Stream rules: entries not yet read by the group (XINFO GROUPS `lag`), sampled.
    pub stream_lag: AtomicI64,
    /// Stream rules: entries read and not acknowledged by the group, sampled.
    pub stream_pending: AtomicI64,
    /// Queue rules: elements waiting in the list (LLEN), sampled with each heartbeat.
    pub queue_depth: AtomicI64,
    recent_dead: Mutex<std::collections::VecDeque<RecentDeadLetter>>,
    sinks: Mutex<Vec<(String, Arc<SinkStats>)>>,
}

/// Dead letters kept per rule for the status page.
pub const RECENT_DEAD_LETTERS: usize = 5;

/// A dead letter as the status page shows it: masked, its payload cut short.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentDeadLetter {
    /// When, RFC 3339.
    pub at: String,
    /// Why.
    pub reason: String,
    /// The sink that failed, if one did.
    pub sink: Option<String>,
    /// The first 200 characters of the payload, masked.
    pub payload: String,
}

impl RuleStats {
    /// Keep `letter` among the rule's last [`RECENT_DEAD_LETTERS`].
    pub fn note_dead_letter(&self, letter: RecentDeadLetter) {
        let mut recent = self.recent_dead.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_DEAD_LETTERS {
            recent.pop_front();
        }
        recent.push_back(letter);
    }

    /// The rule's last dead letters, oldest first.
    pub fn recent_dead_letters(&self) -> Vec<RecentDeadLetter> {
        self.recent_dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The counters of the sink labelled `label` (`stream processed_stream`), created on use.
    pub fn sink(&self, label: &str) -> Arc<SinkStats> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = sinks.iter().find(|(l, _)| l == label) {
            return s.clone();
        }
        let s = Arc::new(SinkStats::default());
        sinks.push((label.to_string(), s.clone()));
        s
    }

    /// Every sink's counters, by label.
    pub fn sinks(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot as name → value, for status output and tests.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("received", get(&self.received)),
            ("filtered_out", get(&self.filtered_out)),
            ("delivered", get(&self.delivered)),
            ("retried", get(&self.retried)),
            ("dead_lettered", get(&self.dead_lettered)),
            ("overflowed", get(&self.overflowed)),
            ("reconnects", get(&self.reconnects)),
            ("deleted_while_pending", get(&self.deleted_while_pending)),
            ("source_errors", get(&self.source_errors)),
            ("claimed_elsewhere", get(&self.claimed_elsewhere)),
            ("reclaimed", get(&self.reclaimed)),
            ("in_flight", get(&self.in_flight)),
        ])
    }
}

/// Counters of every rule by name. A rule keeps its counters across restarts on reload.
#[derive(Debug, Default, Clone)]
pub struct StatsRegistry {
    inner: Arc<Mutex<BTreeMap<String, Arc<RuleStats>>>>,
}

impl StatsRegistry {
    /// The counters of `rule`, created on first use.
    pub fn rule(&self, rule: &str) -> Arc<RuleStats> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(rule.to_string()).or_default().clone()
    }

    /// Every rule's counters.
    pub fn all(&self) -> Vec<(String, Arc<RuleStats>)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Where a running rule instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleState {
    /// Connecting its source and sinks.
    Starting,
    /// Source open (subscribed, group ready): reading.
    Running,
    /// Its source lost Redis and is retrying.
    Retrying,
    /// Cancelled; finishing what it holds.
    Draining,
    /// Ended.
    Stopped,
}

impl RuleState {
    fn from_u8(v: u8) -> RuleState {
        match v {
            0 => RuleState::Starting,
            1 => RuleState::Running,
            2 => RuleState::Retrying,
            3 => RuleState::Draining,
            _ => RuleState::Stopped,
        }
    }

    /// Lower-case name, for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Starting => "starting",
            RuleState::Running => "running",
            RuleState::Retrying => "retrying",
            RuleState::Draining => "draining",
            RuleState::Stopped => "stopped",
        }
    }
}

/// The state of one running instance of a rule (a reload may briefly run two instances of the
/// same rule, each with its own status, sharing the rule's counters).
#[derive(Debug)]
pub struct RuleStatus {
    state: std::sync::atomic::AtomicU8,
    last_error: Mutex<Option<String>>,
    changed: tokio::sync::Notify,
}

impl Default for RuleStatus {
    fn default() -> Self {
        RuleStatus {
            state: std::sync::atomic::AtomicU8::new(RuleState::Starting as u8),
            last_error: Mutex::new(None),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl RuleStatus {
    /// Move to `state`.
    pub fn set(&self, state: RuleState) {
        self.state.store(state as u8, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The current state.
    pub fn get(&self) -> RuleState {
        RuleState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Remember the latest error, for status output (until [`RuleStatus::clear_error`]), masked
    /// as it is stored: `/status`, the page and `demo` show it.
    pub fn set_error(&self, error: String) {
        let error = crate::mask::text(&error);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The rule is healthy again: forget the error, so that status shows none that is stale.
    pub fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The latest error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until the rule has left `Starting` (it runs, or it ended).
    pub async fn started(&self) {
        loop {
            let changed = self.changed.notified();
            if self.get() != RuleState::Starting {
                return;
            }
            changed.await;
        }
    }
}
