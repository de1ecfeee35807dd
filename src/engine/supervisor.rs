//! The running rules: one task per rule, each with a child of one root cancellation token, so
//! a reload can stop a single rule and shutdown stops them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, error_span, info, warn};

use super::diff::{RuleSetDiff, diff};
use super::rule::{RuleContext, RuleExit, run_rule};
use crate::config::{ConnectionSpec, RuleSet, RuleSpec, SourceSpecKind};
use crate::keys::ReservedNames;
use crate::redis_conn::Connections;
use crate::source::PubSubHub;
use crate::stats::{RuleState, RuleStatus, StatsRegistry};
use crate::tap::Taps;

/// How often shutdown names the rules that are still draining.
const STRAGGLER_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// How long a reload waits for the new instance of a Pub/Sub rule to subscribe before it stops
/// the old one anyway (a new spec that cannot connect must not keep the old one forever).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the old and new instances of a Pub/Sub rule are both subscribed. When the new
/// instance's topic needs a new SUBSCRIBE (its channel changed) and the subscription connection
/// is busy, the old instance's buffer may still be taking messages published before the new
/// subscription was confirmed; messages in this window reach both instances (duplicates,
/// counted). Short next to any debounce, long next to the microseconds a reader that keeps up
/// needs.
pub const HANDOVER_OVERLAP: Duration = Duration::from_millis(50);

/// How one changed Pub/Sub rule went from its old instance to its new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The rule.
    pub rule: String,
    /// Whether the new instance subscribed within [`HANDOVER_TIMEOUT`] (otherwise the old one
    /// was stopped anyway, and messages may be missed until the new one subscribes).
    pub subscribed: bool,
    /// How long both instances were subscribed, the old one's drain included.
    pub overlap: Duration,
    /// Upper bound on messages delivered by both instances: Pub/Sub messages carry no id, so
    /// this is half of what the rule received while both were subscribed.
    pub duplicates_at_most: u64,
}

fn is_pubsub(spec: &RuleSpec) -> bool {
    matches!(
        spec.source.kind,
        SourceSpecKind::Channel { .. } | SourceSpecKind::Pattern { .. }
    )
}

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
    /// `run --dry-run`: read and filter for real, print what sinks would write, write nothing.
    dry_run: bool,
    /// The names of the rule set now applied that rendered keys may not take; every rule's
    /// sinks read it, so rules that keep running through a reload see the new file's names.
    reserved: Arc<ReservedNames>,
    /// The subscription connections every channel and pattern rule shares (per connection).
    hub: PubSubHub,
    /// The connections for commands that never block, shared by every rule; those no rule
    /// uses any more are dropped after each apply.
    connections: Connections,
    /// This process's name as a consumer: `HOST` or `HOST-INSTANCE`.
    me: Arc<str>,
    /// What the rules show to whoever taps; the same across reloads, so a tap follows them.
    taps: Taps,
}

impl Supervisor {
    /// A supervisor whose rules stop when `root` is cancelled.
    pub fn new(root: CancellationToken, stats: StatsRegistry, drain_timeout: Duration) -> Supervisor {
        Supervisor {
            root,
            running: BTreeMap::new(),
            stats,
            drain_timeout,
            dry_run: false,
            reserved: Arc::default(),
            hub: PubSubHub::default(),
            connections: Connections::default(),
            me: Arc::from(crate::identity::name(None)),
            taps: Taps::default(),
        }
    }

    /// The events of every rule this supervisor runs, for `redis-router tap`.
    pub fn taps(&self) -> &Taps {
        &self.taps
    }

    /// Run as the instance `me` (see [`crate::identity::name`]) instead of as the host.
    pub fn with_name(mut self, me: &str) -> Supervisor {
        self.me = Arc::from(me);
        self
    }

    /// Run every rule in dry-run mode (see [`crate::engine::rule::run_rule`]).
    pub fn with_dry_run(mut self, dry_run: bool) -> Supervisor {
        self.dry_run = dry_run;
        self
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
    ///
    /// A changed rule that reads Pub/Sub before and after the change is handed over instead
    /// (see [`Supervisor::apply_with_handovers`]).
    pub async fn apply(&mut self, set: &RuleSet) -> RuleSetDiff {
        self.apply_with_handovers(set).await.0
    }

    /// As [`Supervisor::apply`], reporting how each Pub/Sub rule was handed over.
    ///
    /// Pub/Sub keeps nothing for a subscriber that is not connected, so stopping such a rule
    /// before its new instance subscribes would lose what is published in between. A changed
    /// rule whose old and new source are both a channel or pattern therefore starts its new
    /// instance first, waits until it is subscribed ([`RuleStatus::started`], at most
    /// [`HANDOVER_TIMEOUT`]), keeps both for [`HANDOVER_OVERLAP`], and only then drains and
    /// stops the old one. A message published in that overlap reaches both instances: a
    /// duplicate, counted in [`Handover::duplicates_at_most`]. Other changed rules stop, drain,
    /// then start (a consumer group keeps their position; nothing is lost or doubled).
    pub async fn apply_with_handovers(&mut self, set: &RuleSet) -> (RuleSetDiff, Vec<Handover>) {
        // Before anything starts: a new rule's dead-letter stream is out of bounds for every
        // rule at once.
        self.reserved.set(set.reserved.clone());
        let d = diff(self.running.values().map(|r| r.spec.as_ref()), &set.rules);
        let by_name: std::collections::HashMap<&str, &RuleSpec> =
            set.rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let new_spec = |name: &str| by_name.get(name).copied();

        // 1. New instances of handed-over rules subscribe while everything else goes on.
        let mut handing_over: Vec<(Running, Arc<RuleStatus>, u64)> = Vec::new();
        let mut stop_first: Vec<String> = d.removed.clone();
        for name in &d.changed {
            let Some(spec) = new_spec(name) else { continue };
            let old_pubsub = self.running.get(name).is_some_and(|r| is_pubsub(&r.spec));
            if old_pubsub && is_pubsub(spec) {
                if let Some(old) = self.running.remove(name) {
                    // Counted from before the new instance exists: it may receive as soon as
                    // it is subscribed, before it reports itself started.
                    let received_before = self.stats.rule(name).received.load(Ordering::Relaxed);
                    let status = self.spawn(spec.clone());
                    handing_over.push((old, status, received_before));
                }
            } else {
                stop_first.push(name.clone());
            }
        }

        // 2. Removed rules and the other changed rules drain and stop, then changed ones
        //    restart and added ones start.
        let stopping: Vec<(String, Running)> = stop_first
            .iter()
            .filter_map(|name| self.running.remove(name).map(|r| (name.clone(), r)))
            .collect();
        for (_, r) in &stopping {
            r.token.cancel();
        }
        join_named(
            stopping.into_iter().map(|(n, r)| (n, r.handle)).collect(),
            self.drain_timeout,
        )
        .await;
        let added: std::collections::HashSet<&str> = d.added.iter().map(String::as_str).collect();
        let changed: std::collections::HashSet<&str> = d.changed.iter().map(String::as_str).collect();
        for rule in &set.rules {
            let restart = changed.contains(rule.name.as_str()) && !self.running.contains_key(&rule.name);
            if added.contains(rule.name.as_str()) || restart {
                self.spawn(rule.clone());
            }
        }

        // 3. Hand over: once a new instance is subscribed, the old one may go.
        let handovers = futures_util::future::join_all(
            handing_over
                .into_iter()
                .map(|(old, new_status, received_before)| self.hand_over(old, new_status, received_before)),
        )
        .await;

        // 4. Every instance of the old rules has stopped: a connection no rule uses any more
        //    goes (it closes when the last clone of it, held by no one now, is dropped).
        let used = |c: &ConnectionSpec| {
            set.rules
                .iter()
                .any(|r| *r.source.connection == *c || r.sinks.iter().any(|s| *s.connection == *c))
        };
        let closed = self.connections.retain(used);
        if closed > 0 {
            info!(
                closed,
                kept = self.connections.len(),
                "Closed connections no rule uses any more."
            );
        }
        (d, handovers)
    }

    /// Wait for the new instance, then drain and stop the old one, counting what both received
    /// meanwhile.
    fn hand_over(
        &self,
        old: Running,
        new_status: Arc<RuleStatus>,
        received_before: u64,
    ) -> impl Future<Output = Handover> + use<> {
        let stats = self.stats.rule(&old.spec.name);
        let drain_timeout = self.drain_timeout;
        async move {
            let name = old.spec.name.clone();
            let subscribed = tokio::time::timeout(HANDOVER_TIMEOUT, new_status.started())
                .await
                .is_ok()
                && new_status.get() != RuleState::Stopped;
            if !subscribed {
                warn!(
                    rule = %name,
                    timeout_ms = HANDOVER_TIMEOUT.as_millis() as u64,
                    "New instance of the rule did not subscribe in time; stopping the old one anyway. Messages published until it subscribes are missed."
                );
            }
            let overlap_start = tokio::time::Instant::now();
            if subscribed {
                // Give the old reader time to take what Redis wrote to its socket before the
                // new subscription existed; cancelling it stops reading at once.
                tokio::time::sleep(HANDOVER_OVERLAP).await;
            }
            old.token.cancel();
            join_named(vec![(name.clone(), old.handle)], drain_timeout).await;
            let received = stats.received.load(Ordering::Relaxed) - received_before;
            let handover = Handover {
                rule: name,
                subscribed,
                overlap: overlap_start.elapsed(),
                // Each message published after the new subscription and before the old one
                // ended was received twice; everything else once. So at most half of what the
                // rule received since the new instance was spawned is a duplicate.
                duplicates_at_most: if subscribed { received / 2 } else { 0 },
            };
            debug!(
                rule = %handover.rule,
                overlap_ms = handover.overlap.as_millis() as u64,
                duplicates_at_most = handover.duplicates_at_most,
                "Pub/Sub rule handed over to its new instance."
            );
            handover
        }
    }

    /// Start an instance of `spec` under the rule's name; returns its status.
    fn spawn(&mut self, spec: RuleSpec) -> Arc<RuleStatus> {
        let spec = Arc::new(spec);
        let token = self.root.child_token();
        let stats = self.stats.rule(&spec.name);
        let sinks: Vec<&str> = spec.sinks.iter().map(|s| s.kind.kind_name()).collect();
        let span = error_span!("rule", rule = %spec.name, source = spec.source.kind_name(), sinks = %sinks.join(","));
        let status = Arc::new(RuleStatus::default());
        let rule = run_rule(
            spec.clone(),
            token.clone(),
            stats,
            status.clone(),
            self.dry_run,
            RuleContext {
                reserved: self.reserved.clone(),
                hub: self.hub.clone(),
                connections: self.connections.clone(),
                me: self.me.clone(),
                taps: self.taps.clone(),
            },
        );
        let handle = tokio::spawn(rule.instrument(span));
        self.running.insert(
            spec.name.clone(),
            Running {
                spec,
                status: status.clone(),
                token,
                handle,
            },
        );
        status
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
