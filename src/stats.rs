//! Per-rule counters: what the rule loop, its source and its sinks count, read by logs, tests
//! and the HTTP endpoint. Plain atomics, so counting costs no lock on the hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl RuleStats {
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

    /// Remember the latest error, for status output.
    pub fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
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
