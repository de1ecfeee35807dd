//! The running rules: one task per rule, each with a child of one root cancellation token, so
//! a reload can stop a single rule and shutdown stops them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, error_span, info, warn};

use super::diff::{RuleSetDiff, diff};
use super::rule::{RuleExit, run_rule};
use crate::config::{RuleSet, RuleSpec};
use crate::stats::{RuleStatus, StatsRegistry};

/// How often shutdown names the rules that are still draining.
const STRAGGLER_LOG_INTERVAL: Duration = Duration::from_secs(5);

struct Running {
    spec: Arc<RuleSpec>,
    status: Arc<RuleStatus>,
    token: CancellationToken,
    handle: JoinHandle<RuleExit>,
}

/// Owns the rule tasks.
pub struct Supervisor {
    root: CancellationToken,
    running: BTreeMap<String, Running>,
    stats: StatsRegistry,
    /// How long a stopping rule may take before its task is aborted.
    drain_timeout: Duration,
}

impl Supervisor {
    /// A supervisor whose rules stop when `root` is cancelled.
    pub fn new(root: CancellationToken, stats: StatsRegistry, drain_timeout: Duration) -> Supervisor {
        Supervisor {
            root,
            running: BTreeMap::new(),
            stats,
            drain_timeout,
        }
    }

    /// The counters of every rule.
    pub fn stats(&self) -> &StatsRegistry {
        &self.stats
    }

    /// Each running rule's spec and status.
    pub fn statuses(&self) -> Vec<(Arc<RuleSpec>, Arc<RuleStatus>)> {
        self.running
            .values()
            .map(|r| (r.spec.clone(), r.status.clone()))
            .collect()
    }

    /// Names of the running rules.
    pub fn rule_names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Bring the running rules in line with `set`: stop removed and changed rules (waiting for
    /// them to drain), then start changed and added ones. Unchanged rules are not touched.
    pub async fn apply(&mut self, set: &RuleSet) -> RuleSetDiff {
        let d = diff(self.running.values().map(|r| r.spec.as_ref()), &set.rules);
        let stopping: Vec<Running> = d
            .removed
            .iter()
            .chain(&d.changed)
            .filter_map(|name| self.running.remove(name))
            .collect();
        let names: Vec<String> = d.removed.iter().chain(&d.changed).cloned().collect();
        for r in &stopping {
            r.token.cancel();
        }
        join_named(
            stopping.into_iter().zip(names).map(|(r, n)| (n, r.handle)).collect(),
            self.drain_timeout,
        )
        .await;
        for rule in &set.rules {
            if d.added.contains(&rule.name) || d.changed.contains(&rule.name) {
                self.spawn(rule.clone());
            }
        }
        d
    }

    fn spawn(&mut self, spec: RuleSpec) {
        let spec = Arc::new(spec);
        let token = self.root.child_token();
        let stats = self.stats.rule(&spec.name);
        let sinks: Vec<&str> = spec.sinks.iter().map(|s| s.kind.kind_name()).collect();
        let span = error_span!("rule", rule = %spec.name, source = spec.source.kind_name(), sinks = %sinks.join(","));
        let status = Arc::new(RuleStatus::default());
        let handle = tokio::spawn(run_rule(spec.clone(), token.clone(), stats, status.clone()).instrument(span));
        self.running.insert(
            spec.name.clone(),
            Running {
                spec,
                status,
                token,
                handle,
            },
        );
    }

    /// Stop every rule: cancel the root, wait up to the drain timeout, naming stragglers
    /// periodically, then abort what is left. Returns the names of rules that had to be aborted.
    pub async fn shutdown(mut self) -> Vec<String> {
        self.root.cancel();
        let running = std::mem::take(&mut self.running);
        join_named(
            running.into_iter().map(|(n, r)| (n, r.handle)).collect(),
            self.drain_timeout,
        )
        .await
    }
}

/// Await handles under a deadline; abort and name the ones that miss it.
async fn join_named(mut handles: Vec<(String, JoinHandle<RuleExit>)>, deadline: Duration) -> Vec<String> {
    let start = tokio::time::Instant::now();
    let mut next_log = start + STRAGGLER_LOG_INTERVAL;
    while !handles.is_empty() {
        let mut i = 0;
        while i < handles.len() {
            if handles[i].1.is_finished() {
                let (name, handle) = handles.swap_remove(i);
                match handle.await {
                    Ok(_) => {}
                    Err(e) if e.is_panic() => error!(rule = %name, "Rule task panicked."),
                    Err(_) => warn!(rule = %name, "Rule task was cancelled."),
                }
            } else {
                i += 1;
            }
        }
        if handles.is_empty() {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= start + deadline {
            let names: Vec<String> = handles.iter().map(|(n, _)| n.clone()).collect();
            for (_, h) in &handles {
                h.abort();
            }
            error!(rules = ?names, "Rules did not drain in time; aborted.");
            return names;
        }
        if now >= next_log {
            let names: Vec<&str> = handles.iter().map(|(n, _)| n.as_str()).collect();
            info!(rules = ?names, "Waiting for rules to drain.");
            next_log = now + STRAGGLER_LOG_INTERVAL;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Vec::new()
}
