//! One rule's loop: read a batch, filter and transform it, deliver it to every sink (retrying
//! only the sink that failed), dead-letter what cannot be delivered, then acknowledge the batch.
//!
//! The loop watches its cancellation token while waiting for input and while backing off, never
//! in the middle of a delivery: a batch that was read is finished (or left unacknowledged, so
//! that the source delivers it again) before the task ends. Sinks never see the token.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::route::{Admission, admit, sink_failure_reason, sink_takes};
use crate::config::{ErrorPolicy, RuleSpec, SourceSpecKind, StreamStart};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::keys::ReservedNames;
use crate::message::Message;
use crate::redis_conn::Connections;
use crate::sink::{Sink, SinkError};
use crate::source::{Budget, PubSubHub, Shared, Source};
use crate::stats::{RuleState, RuleStats, RuleStatus, SinkStats};
use crate::tap::{self, Stage, TapEvent, Taps};

/// How a rule task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleExit {
    /// Asked to stop (reload or shutdown); the batch in flight was finished or left pending.
    Cancelled,
    /// The source ended for good.
    SourceClosed,
}

/// First delay after a failed connect or read; doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Cap on the delay between reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// How long a stopping Pub/Sub rule may spend delivering what it had buffered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter: `base * 2^(n-1)`, capped, then scaled by a random factor in
/// [0.5, 1) so that many rules failing together do not retry in step.
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Sleep unless cancelled first; false when cancelled.
async fn sleep_or_cancel(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        biased;
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Retry `f` with capped backoff until it succeeds or the token is cancelled (`None`); each
/// failure is the rule's `last_error` meanwhile.
async fn until_ok<T, E: std::fmt::Display + Sync, F, Fut>(
    token: &CancellationToken,
    status: &RuleStatus,
    what: &str,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut retry = Retry::default();
    loop {
        if token.is_cancelled() {
            return None;
        }
        match f().await {
            Ok(v) => {
                if retry.attempt > 0 {
                    info!(attempts = retry.attempt + 1, "Connected {what} after retrying.");
                }
                return Some(v);
            }
            Err(e) => {
                if !retry.wait(token, status, &format!("Cannot open {what}"), &e).await {
                    return None;
                }
            }
        }
    }
}

/// Backoff state of an operation that must eventually succeed (opening, reading, dead
/// letters, acks): capped exponential delays with jitter, reset by the caller after a success.
#[derive(Default)]
struct Retry {
    attempt: u32,
}

impl Retry {
    /// Log `failed` (`Cannot open source`), make it the rule's `last_error`, and wait before
    /// the next try; false when cancelled meanwhile.
    async fn wait(
        &mut self,
        token: &CancellationToken,
        status: &RuleStatus,
        failed: &str,
        e: &(dyn std::fmt::Display + Sync),
    ) -> bool {
        self.attempt += 1;
        let delay = backoff_delay(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, self.attempt);
        warn!(error = %crate::mask::text(&e.to_string()), attempt = self.attempt, delay_ms = delay.as_millis() as u64, "{failed}; retrying.");
        status.set_error(format!("{failed}: {e}"));
        sleep_or_cancel(token, delay).await
    }
}

/// The spec a dry run reads with: a consumer group would take entries from the real consumers,
/// so a group stream is tailed from its newest entry instead. `None` for a queue source, which
/// cannot be read without taking its elements.
fn dry_run_spec(spec: &RuleSpec) -> Option<RuleSpec> {
    let mut spec = spec.clone();
    match &mut spec.source.kind {
        SourceSpecKind::Queue { .. } => return None,
        SourceSpecKind::Stream { group, start, .. } => {
            *group = None;
            *start = StreamStart::Newest;
        }
        SourceSpecKind::Channel { .. } | SourceSpecKind::Pattern { .. } => {}
    }
    Some(spec)
}

/// What the supervisor owns and shares with every rule it runs.
#[derive(Clone)]
pub struct RuleContext {
    /// The names of the rule set now applied that rendered keys may not take.
    pub reserved: Arc<ReservedNames>,
    /// The Pub/Sub subscription connections.
    pub hub: PubSubHub,
    /// The connections for commands that never block.
    pub connections: Connections,
    /// This process's name as a consumer (see [`crate::identity`]).
    pub me: Arc<str>,
    /// Where the rule shows what it does to whoever taps (`redis-router tap`).
    pub taps: Taps,
}

/// Run one rule until its token is cancelled.
///
/// `status` follows the instance: `Running` once its source is open (a Pub/Sub source is then
/// subscribed), `Retrying` while reads fail, `Draining` once cancelled, `Stopped` at the end.
pub async fn run_rule(
    spec: Arc<RuleSpec>,
    token: CancellationToken,
    stats: Arc<RuleStats>,
    status: Arc<RuleStatus>,
    dry_run: bool,
    ctx: RuleContext,
) -> RuleExit {
    let spec = if dry_run {
        match dry_run_spec(&spec) {
            Some(s) => Arc::new(s),
            None => {
                warn!("A queue source cannot be read without taking its jobs; this rule does not run in --dry-run.");
                status.set(RuleState::Stopped);
                return RuleExit::SourceClosed;
            }
        }
    } else {
        spec
    };
    let exit = run_rule_inner(spec, token, stats, status.clone(), dry_run, &ctx).await;
    status.set(RuleState::Stopped);
    exit
}

async fn run_rule_inner(
    spec: Arc<RuleSpec>,
    token: CancellationToken,
    stats: Arc<RuleStats>,
    status: Arc<RuleStatus>,
    dry_run: bool,
    ctx: &RuleContext,
) -> RuleExit {
    let shared = Shared {
        connections: &ctx.connections,
        hub: &ctx.hub,
        me: &ctx.me,
    };
    let rule: Arc<str> = Arc::from(spec.name.as_str());
    let Some(mut source) = until_ok(&token, &status, "source", || {
        Source::open(
            &spec.source,
            &rule,
            stats.clone(),
            status.clone(),
            shared,
            Budget::of(&spec),
        )
    })
    .await
    else {
        return RuleExit::Cancelled;
    };
    let mut sinks = Vec::with_capacity(spec.sinks.len());
    for sink_spec in &spec.sinks {
        if dry_run {
            sinks.push(Sink::dry_run(&spec.name, sink_spec, ctx.reserved.clone()));
            continue;
        }
        let Some(sink) = until_ok(&token, &status, "sink", || {
            Sink::open(sink_spec, ctx.reserved.clone(), &ctx.connections)
        })
        .await
        else {
            source.close().await;
            return RuleExit::Cancelled;
        };
        sinks.push(sink);
    }
    let dead = if dry_run {
        DeadLetters::printing()
    } else {
        let Some(dead) = until_ok(&token, &status, "dead-letter stream", || {
            DeadLetters::open(spec.source.connection.clone(), &ctx.connections)
        })
        .await
        else {
            source.close().await;
            return RuleExit::Cancelled;
        };
        dead
    };
    let sink_stats = sinks.iter().map(|s| stats.sink(s.label())).collect();
    let mut rule_loop = RuleLoop {
        spec: spec.clone(),
        sinks,
        sink_stats,
        dead,
        stats,
        status: status.clone(),
        token: token.clone(),
        taps: ctx.taps.clone(),
        reserved: ctx.reserved.clone(),
    };
    status.clear_error();
    status.set(RuleState::Running);
    info!(summary = %spec.summary(), "Rule started.");
    let mut read_retry = Retry::default();
    let exit = loop {
        let batch = tokio::select! {
            biased;
            _ = token.cancelled() => break RuleExit::Cancelled,
            batch = source.recv() => batch,
        };
        match batch {
            Ok(None) => break RuleExit::SourceClosed,
            Ok(Some(batch)) => {
                if read_retry.attempt > 0 {
                    status.clear_error();
                    status.set(RuleState::Running);
                }
                read_retry = Retry::default();
                if batch.is_empty() {
                    continue;
                }
                if !rule_loop.process(&mut source, batch).await {
                    break RuleExit::Cancelled;
                }
            }
            Err(e) => {
                RuleStats::add(&rule_loop.stats.source_errors, 1);
                status.set(RuleState::Retrying);
                if !read_retry.wait(&token, &status, "Source read failed", &e).await {
                    break RuleExit::Cancelled;
                }
            }
        }
    };
    status.set(RuleState::Draining);
    // Pub/Sub messages already buffered were received; deliver them before stopping. Stream
    // and list sources have nothing buffered in memory.
    if let Source::PubSub(pubsub) = &mut source {
        let left = pubsub.take_buffered();
        if !left.is_empty() {
            debug!(count = left.len(), "Delivering buffered messages before stopping.");
            // A fresh token: the rule's own is cancelled, and the drain is bounded by time instead.
            rule_loop.token = CancellationToken::new();
            if tokio::time::timeout(DRAIN_TIMEOUT, rule_loop.process(&mut source, left))
                .await
                .is_err()
            {
                warn!("Buffered Pub/Sub messages could not be delivered before stopping; dropped.");
            }
        }
    }
    source.close().await;
    info!(?exit, "Rule stopped.");
    exit
}

struct RuleLoop {
    spec: Arc<RuleSpec>,
    sinks: Vec<Sink>,
    /// Counters of each sink, in the order of `sinks`.
    sink_stats: Vec<Arc<SinkStats>>,
    dead: DeadLetters,
    stats: Arc<RuleStats>,
    status: Arc<RuleStatus>,
    token: CancellationToken,
    taps: Taps,
    /// For rendering what a sink is given, for the tap.
    reserved: Arc<ReservedNames>,
}

/// A tap event about `msg`, its payload previewed and masked.
fn tap_event(stage: Stage, msg: &Message) -> TapEvent {
    let raw = msg.raw();
    TapEvent {
        at: crate::filter::now_rfc3339(),
        rule: msg.meta.rule.to_string(),
        stage,
        key: msg.meta.key.clone(),
        id: msg.meta.id.clone(),
        sink: None,
        command: None,
        reason: None,
        payload: crate::mask::text(&tap::preview(raw)),
        payload_len: raw.len(),
        skipped: 0,
    }
}

/// Keeps the rule's in-flight gauge right on every way out of `process`.
struct InFlight<'a>(&'a RuleStats, u64);

impl<'a> InFlight<'a> {
    fn new(stats: &'a RuleStats, n: usize) -> InFlight<'a> {
        stats
            .in_flight
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        InFlight(stats, n as u64)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(self.1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A message of the batch that goes to the dead-letter stream instead of (some of) its sinks.
struct Doomed {
    index: usize,
    reason: String,
    /// The sink's last error, for sink failures.
    error: Option<String>,
    /// Which sink failed, if one did.
    sink: Option<usize>,
    attempts: u32,
}

/// What became of one sink's share of a batch.
enum SinkOutcome {
    /// Delivered, apart from these messages (index, error, attempts made).
    Done(Vec<(usize, SinkError, u32)>),
    /// Cancelled while backing off: the batch must not be acknowledged.
    Cancelled,
}

impl RuleLoop {
    /// Handle one batch; false when cancelled before the batch could be finished (it stays
    /// unacknowledged and the source delivers it again).
    async fn process(&mut self, source: &mut Source, batch: Vec<Message>) -> bool {
        let stats = self.stats.clone();
        let _in_flight = InFlight::new(&stats, batch.len());
        // One atomic load per batch when nobody taps.
        let tapping = self.taps.active();
        if tapping {
            for msg in &batch {
                if self.taps.admit() {
                    self.taps.send(tap_event(Stage::Received, msg));
                }
            }
        }
        let mut dead: Vec<Doomed> = Vec::new();
        // Transformed copies live here; `outgoing` points into it or into `batch`.
        let mut transformed: Vec<(usize, Message)> = Vec::new();
        let mut passing: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            match admit(&self.spec, msg) {
                Admission::DeadLetter(reason) => dead.push(Doomed {
                    index: i,
                    reason,
                    error: None,
                    sink: None,
                    attempts: 0,
                }),
                Admission::FilteredOut => {
                    RuleStats::add(&self.stats.filtered_out, 1);
                    if tapping && self.taps.admit() {
                        let mut e = tap_event(Stage::Filtered, msg);
                        e.reason = Some("the rule's filter".into());
                        self.taps.send(e);
                    }
                }
                Admission::Pass(copy) => {
                    if let Some(copy) = copy {
                        transformed.push((i, *copy));
                    }
                    passing.push(i);
                }
            }
        }
        let outgoing: Vec<&Message> = if self.spec.transform.is_some() {
            transformed.iter().map(|(_, m)| m).collect()
        } else {
            passing.iter().map(|&i| &batch[i]).collect()
        };
        let mut failed_any = vec![false; outgoing.len()];
        // The last error of a sink that gave up on a message, for `last_error`.
        let mut sink_error: Option<String> = None;
        let mut taken = vec![false; outgoing.len()];
        if !outgoing.is_empty() {
            // Which messages each sink takes: all of them, or those passing its own filter.
            let mut per_sink: Vec<Vec<usize>> = Vec::with_capacity(self.sinks.len());
            for (s, spec) in self.spec.sinks.iter().enumerate() {
                let mut takes = Vec::with_capacity(outgoing.len());
                for (j, msg) in outgoing.iter().enumerate() {
                    match sink_takes(spec, msg) {
                        Ok(true) => takes.push(j),
                        Ok(false) => {}
                        Err(reason) => {
                            failed_any[j] = true;
                            RuleStats::add(&self.sink_stats[s].dead_lettered, 1);
                            dead.push(Doomed {
                                index: passing[j],
                                reason,
                                error: None,
                                sink: Some(s),
                                attempts: 0,
                            });
                        }
                    }
                }
                for &j in &takes {
                    taken[j] = true;
                }
                per_sink.push(takes);
            }
            let token = &self.token;
            let status = &*self.status;
            let subsets: Vec<Vec<&Message>> = per_sink
                .iter()
                .map(|takes| takes.iter().map(|&j| outgoing[j]).collect())
                .collect();
            if tapping {
                self.tap_sinks(&subsets);
            }
            let outcomes = join_all(
                self.sinks
                    .iter_mut()
                    .zip(&self.spec.sinks)
                    .zip(&subsets)
                    .zip(&self.sink_stats)
                    .map(|(((sink, spec), subset), counters)| {
                        deliver(sink, &spec.on_error, subset, token, (&stats, counters), status)
                    }),
            )
            .await;
            for (s, outcome) in outcomes.into_iter().enumerate() {
                match outcome {
                    SinkOutcome::Cancelled => return false,
                    SinkOutcome::Done(failures) => {
                        let counters = &self.sink_stats[s];
                        RuleStats::add(&counters.delivered, (subsets[s].len() - failures.len()) as u64);
                        RuleStats::add(&counters.dead_lettered, failures.len() as u64);
                        for (local, err, attempts) in failures {
                            let j = per_sink[s][local];
                            failed_any[j] = true;
                            let reason = sink_failure_reason(err.is_retryable(), attempts);
                            let error = err.to_string();
                            sink_error = Some(error.clone());
                            dead.push(Doomed {
                                index: passing[j],
                                reason,
                                error: Some(error),
                                sink: Some(s),
                                attempts,
                            });
                        }
                    }
                }
            }
        }
        let delivered = (0..outgoing.len()).filter(|&j| taken[j] && !failed_any[j]).count();
        let untaken = (0..outgoing.len()).filter(|&j| !taken[j] && !failed_any[j]).count();
        if tapping && untaken > 0 {
            for j in (0..outgoing.len()).filter(|&j| !taken[j] && !failed_any[j]) {
                if self.taps.admit() {
                    let mut e = tap_event(Stage::Filtered, outgoing[j]);
                    e.reason = Some("no sink's filter took it".into());
                    self.taps.send(e);
                }
            }
        }
        RuleStats::add(&self.stats.filtered_out, untaken as u64);
        // Dead letters must be written before the batch is acknowledged: nothing leaves the
        // source without a trace.
        if !dead.is_empty() {
            let letters: Vec<DeadLetter<'_>> = dead
                .iter()
                .map(
                    |Doomed {
                         index: i,
                         reason,
                         error,
                         sink,
                         attempts,
                     }| {
                        let policy = match sink {
                            Some(s) => &self.spec.sinks[*s].on_error,
                            None => &self.spec.on_error,
                        };
                        DeadLetter {
                            message: &batch[*i],
                            stream: &policy.dead_letter,
                            reason: reason.clone(),
                            error: error.clone(),
                            sink: sink.map(|s| self.sinks[s].label()),
                            attempts: *attempts,
                            max_payload: policy.dead_letter_max_payload,
                        }
                    },
                )
                .collect();
            if tapping {
                for l in &letters {
                    if self.taps.admit() {
                        let mut e = tap_event(Stage::DeadLetter, l.message);
                        e.reason = Some(crate::mask::text(&l.reason));
                        e.sink = l.sink.map(str::to_string);
                        self.taps.send(e);
                    }
                }
            }
            let mut retry = Retry::default();
            while let Err(e) = self.dead.write(&letters).await {
                if !retry
                    .wait(&self.token, &self.status, "Writing dead letters failed", &e)
                    .await
                {
                    return false;
                }
            }
            RuleStats::add(&self.stats.dead_lettered, dead.len() as u64);
            for l in letters.iter().rev().take(crate::stats::RECENT_DEAD_LETTERS).rev() {
                let head = crate::mask::head(l.message.raw(), 200);
                self.stats.note_dead_letter(crate::stats::RecentDeadLetter {
                    at: crate::filter::now_rfc3339(),
                    reason: crate::mask::text(&l.reason),
                    sink: l.sink.map(str::to_string),
                    payload: crate::mask::text(&head),
                });
            }
        }
        RuleStats::add(&self.stats.delivered, delivered as u64);
        for (j, msg) in outgoing.iter().enumerate() {
            if taken[j] && !failed_any[j] {
                self.stats
                    .latency
                    .observe(msg.meta.received.elapsed().unwrap_or_default());
            }
        }
        if self.status.get() == RuleState::Retrying {
            self.status.set(RuleState::Running);
        }
        let mut retry = Retry::default();
        while let Err(e) = source.ack(&batch).await {
            if !retry
                .wait(&self.token, &self.status, "Acknowledging the batch failed", &e)
                .await
            {
                return false;
            }
        }
        // `last_error` says what is wrong now: a sink that gave up on a message in this batch,
        // or nothing once a batch went through (retries that ended in success included).
        match sink_error {
            Some(e) => self.status.set_error(e),
            None => self.status.clear_error(),
        }
        true
    }
}

impl RuleLoop {
    /// Tap events for what each sink is given: the command or request, rendered as
    /// `--dry-run` shows it, masked.
    fn tap_sinks(&self, subsets: &[Vec<&Message>]) {
        let reserved = self.reserved.get();
        for ((sink, spec), subset) in self.sinks.iter().zip(&self.spec.sinks).zip(subsets) {
            for msg in subset {
                if !self.taps.admit() {
                    continue;
                }
                let mut e = tap_event(Stage::Sink, msg);
                e.sink = Some(sink.label().to_string());
                e.command = Some(match Sink::preview(spec, msg, &reserved) {
                    Ok(mut args) => {
                        if let (crate::config::SinkSpecKind::Webhook(_), Some(url)) = (&spec.kind, args.get_mut(1)) {
                            *url = crate::mask::url(&String::from_utf8_lossy(url)).into_bytes();
                        }
                        crate::mask::text(&tap::preview(crate::sink::shell_words(&args).as_bytes()))
                    }
                    Err(err) => format!("(cannot render: {})", crate::mask::text(&err.to_string())),
                });
                self.taps.send(e);
            }
        }
    }
}

/// Deliver `batch` to one sink under its retry policy. Only the messages that failed are sent
/// again; a permanent error (bad payload, wrong key type) is not retried.
async fn deliver(
    sink: &mut Sink,
    policy: &ErrorPolicy,
    batch: &[&Message],
    token: &CancellationToken,
    (rule_counters, counters): (&RuleStats, &SinkStats),
    status: &RuleStatus,
) -> SinkOutcome {
    if batch.is_empty() {
        return SinkOutcome::Done(Vec::new());
    }
    let mut todo: Vec<usize> = (0..batch.len()).collect();
    let mut failed: Vec<(usize, SinkError, u32)> = Vec::new();
    let mut attempt = 1;
    loop {
        let mut wait_at_least = Duration::ZERO;
        let subset: Vec<&Message> = todo.iter().map(|&i| batch[i]).collect();
        let results = sink.send(&subset).await;
        let mut retry = Vec::new();
        let mut last_error = None;
        for (&i, result) in todo.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(e) if e.is_retryable() && attempt < policy.attempts => {
                    if let Some(after) = e.retry_after() {
                        wait_at_least = wait_at_least.max(after);
                    }
                    retry.push(i);
                    last_error = Some(e);
                }
                Err(e) => failed.push((i, e, attempt)),
            }
        }
        if retry.is_empty() {
            return SinkOutcome::Done(failed);
        }
        RuleStats::add(&counters.retried, retry.len() as u64);
        RuleStats::add(&rule_counters.retried, retry.len() as u64);
        status.set(RuleState::Retrying);
        if let Some(e) = &last_error {
            status.set_error(e.to_string());
        }
        // The endpoint's Retry-After wins over a shorter backoff step.
        let delay = backoff_delay(policy.backoff, policy.max_backoff, attempt).max(wait_at_least);
        warn!(
            sink = sink.label(),
            count = retry.len(),
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = %last_error.map(|e| crate::mask::text(&e.to_string())).unwrap_or_default(),
            "Sink failed; retrying."
        );
        if !sleep_or_cancel(token, delay).await {
            return SinkOutcome::Cancelled;
        }
        todo = retry;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let d1 = backoff_delay(base, max, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(100));
            let d3 = backoff_delay(base, max, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 < Duration::from_millis(400));
            assert!(backoff_delay(base, max, 30) < max);
            // Every attempt within [half, all] of the doubled delay, capped: a delay that stays
            // constant, wraps to 0 or stops at the cap's half fails.
            for attempt in 1..=64 {
                let full = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
                let d = backoff_delay(base, max, attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} for {full:?}");
            }
        }
    }
}
