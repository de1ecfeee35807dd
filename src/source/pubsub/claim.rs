//! `ha: claim`: every instance receives every message and one delivers it.
//!
//! A message is claimed with `SET key INSTANCE NX GET PX claim_ttl` (Redis 7.0+): no previous
//! value means this instance won and delivers it; `done` means another instance delivered it;
//! another instance's name means it is being delivered elsewhere, and this instance *holds*
//! the message in case that instance dies before marking it `done`.
//!
//! A held message is checked again [`recheck_interval`] after it was held, not after the whole
//! TTL: the same `SET NX GET` drops it when it is `done` by then, claims it when the claim has
//! expired (its claimer died: the message is *reclaimed*, counted and logged), and holds it for
//! another interval otherwise. What an instance holds is then about its rate times the other
//! instances' delivery time plus one interval, instead of its rate times `claim_ttl` (at
//! 25,000 msgs/s and a 1 s TTL, about 2,500 messages instead of 17,000 over a 10,000 buffer).
//!
//! Held messages are bounded by the rule's `buffer` and `buffer_bytes`. When a batch would pass
//! that bound, every held message is checked at once first; what still does not fit is dropped
//! oldest first, counted in `overflowed` and logged at ERROR: such a message is lost if its
//! claimer then dies. The bound only binds when the other instances take longer than
//! `buffer / rate` to deliver.
//!
//! Each round trip carries, in one pipeline, the `done` marks of the batch last handed out, the
//! held messages due for a check and the claims of the next batch.
//!
//! This instance's own live claims (won, waiting, being delivered) are extended on a timer of
//! their own every third of the TTL, so a claim expires only when its claimer is gone, never
//! because its sink is slow.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info};

use super::SourceError;
use super::buffer::cost;
use crate::config::ConnectionSpec;
use crate::filter::{Missing, Template};
use crate::message::Message;
use crate::redis_conn;
use crate::source::{Liveness, keep_alive};
use crate::stats::RuleStats;

/// The value of a claim whose message was delivered.
const DONE: &str = "done";
/// Held-message drops are logged at most this often (with the count since the last line).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait before a held message is checked again: the other instances mark a batch
/// `done` within milliseconds of claiming it, so a tenth of a second keeps what is held small
/// without checking each message more than about once.
const MAX_RECHECK: Duration = Duration::from_millis(100);
/// Shortest wait between checks, against a tiny `claim_ttl` turning into a busy loop.
const MIN_RECHECK: Duration = Duration::from_millis(10);
/// Buffered messages claimed in one round trip. Every instance claims every message, so at a
/// high rate the round trips, not the messages, bound what an instance keeps up with: claiming
/// four batches at once takes a quarter of them. What is won is handed out a batch at a time.
pub(super) const CLAIM_WINDOW: usize = 4 * super::BATCH;

/// How long a held message waits before its claim is checked again: at most a quarter of the
/// TTL (so an expired claim is taken over soon after it expires) and at most [`MAX_RECHECK`].
pub(super) fn recheck_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(MIN_RECHECK, MAX_RECHECK)
}

/// A message this instance claimed and has not handed to the rule yet.
struct Won {
    key: String,
    msg: Message,
}

/// Extend a claim by its TTL if this instance still holds it. KEYS: the claim; ARGV: this
/// instance, the TTL in ms.
const EXTEND: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
";

/// This instance's live claims (won, waiting or being delivered, not yet marked `done`), kept
/// from expiring on a timer of their own, every third of the TTL ([`keep_alive`]). A claim
/// expires only when its claimer is gone: an instance whose sink is slower than `claim_ttl` is
/// alive, and another must not take its messages over (a duplicate), nor may it give up what
/// it won (lost, when no other instance holds it).
struct Keeper {
    conn: redis_conn::Conn,
    me: String,
    ttl: Duration,
    live: Arc<Mutex<HashSet<String>>>,
    /// The rule, for the warning when extending fails.
    rule: Arc<str>,
}

impl Liveness for Keeper {
    const WHAT: &'static str = "Extending live claims";

    fn name(&self) -> &str {
        &self.rule
    }

    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.extend()
    }
}

impl Keeper {
    async fn extend(&mut self) -> Result<(), SourceError> {
        let keys: Vec<String> = lock(&self.live).iter().cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("EVAL")
                .arg(EXTEND)
                .arg(1)
                .arg(key)
                .arg(&self.me)
                .arg(self.ttl.as_millis() as u64)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|source| SourceError::Redis {
                op: "PEXPIRE (claim)",
                key: String::new(),
                source,
            })
    }
}

fn lock(live: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // Only whole keys are inserted or removed under this lock.
    live.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message another instance claimed.
struct Held {
    /// When to check its claim again.
    check_at: Instant,
    key: String,
    msg: Message,
}

/// One rule's claims.
pub(super) struct Claimer {
    conn: redis_conn::Conn,
    connection: Arc<ConnectionSpec>,
    ttl: Duration,
    recheck: Duration,
    id: Option<Template>,
    /// This instance's name, the claim's value.
    me: String,
    /// Messages another instance claimed, in the order of `check_at` (every entry is pushed
    /// with now plus the same interval).
    held: VecDeque<Held>,
    held_bytes: usize,
    /// Messages won and not handed out yet: one round trip claims up to [`CLAIM_WINDOW`]
    /// messages, the rule takes them a batch at a time.
    ready: VecDeque<Won>,
    /// Keys of the batch handed to the rule, waiting to be marked `done`.
    in_flight: Vec<String>,
    /// Acknowledged keys, marked `done` in the next round trip.
    done: Vec<String>,
    capacity: usize,
    max_bytes: usize,
    /// When every held message was last checked at once (at most once per interval).
    forced_at: Option<Instant>,
    stats: Arc<RuleStats>,
    rule: Arc<str>,
    drop_log: (Option<Instant>, u64),
    /// Keys of `ready` and `in_flight` (and of `done` until it is written), kept alive by
    /// [`Keeper`].
    live: Arc<Mutex<HashSet<String>>>,
    _keeper: AbortOnDropHandle<()>,
}

/// What a claim's previous value says.
enum Previous {
    /// None: this instance holds the claim now.
    Won,
    /// `done`: delivered elsewhere.
    Done,
    /// Another instance is delivering it.
    Elsewhere,
}

impl Claimer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conn: redis_conn::Conn,
        connection: Arc<ConnectionSpec>,
        ttl: Duration,
        id: Option<Template>,
        capacity: usize,
        max_bytes: usize,
        stats: Arc<RuleStats>,
        rule: Arc<str>,
        me: &str,
    ) -> Claimer {
        let live = Arc::new(Mutex::new(HashSet::new()));
        let keeper = Keeper {
            conn: conn.clone(),
            me: me.to_string(),
            ttl,
            live: live.clone(),
            rule: rule.clone(),
        };
        Claimer {
            _keeper: keep_alive((ttl / 3).max(MIN_RECHECK), keeper),
            live,
            conn,
            connection,
            ttl,
            recheck: recheck_interval(ttl),
            id,
            me: me.to_string(),
            held: VecDeque::new(),
            held_bytes: 0,
            ready: VecDeque::new(),
            in_flight: Vec::new(),
            done: Vec::new(),
            capacity,
            max_bytes,
            forced_at: None,
            stats,
            rule,
            drop_log: (None, 0),
        }
    }

    /// The claim key of a message: its `claim_id`, or a hash of channel and payload.
    fn key(&self, msg: &Message) -> String {
        let id = match &self.id {
            Some(t) => t.render_string(msg, Missing::Empty).unwrap_or_default(),
            None => String::new(),
        };
        let id = if id.is_empty() {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(msg.meta.key.as_bytes());
            h.update([0]);
            h.update(msg.raw());
            hex::encode(&h.finalize()[..16])
        } else {
            id
        };
        redis_conn::prefixed(
            &self.connection,
            &format!("redis-router:claim:{}:{}:{id}", msg.meta.rule, msg.meta.key),
        )
    }

    /// When the next held message is due for a check.
    pub(super) fn next_check(&self) -> Option<Instant> {
        self.held.front().map(|h| h.check_at)
    }

    /// Whether won messages wait to be handed out.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Hand out up to `max` won messages; their claims are marked `done` when the rule
    /// acknowledges them, and kept alive until then however long delivery takes ([`Keeper`]).
    pub(super) fn take_ready(&mut self, max: usize) -> Vec<Message> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(won) = self.ready.pop_front() else { break };
            self.in_flight.push(won.key);
            out.push(won.msg);
        }
        out
    }

    /// Whether a round trip is due without new messages: `done` marks to write, or held
    /// messages to check.
    pub(super) fn has_work(&self, now: Instant) -> bool {
        !self.done.is_empty() || self.next_check().is_some_and(|at| at <= now)
    }

    /// The batch last handed out was delivered: its claims are marked `done` with the next round
    /// trip (which [`Claimer::round`] makes at once when there is nothing else to send).
    pub(super) fn acknowledge(&mut self) {
        self.done.append(&mut self.in_flight);
    }

    /// One round trip: mark `done` what was acknowledged, check the held messages that are due
    /// (all of them when `fresh` would not fit), and claim `fresh`. What this instance won goes
    /// to the messages ready to be handed out ([`Claimer::take_ready`]), held ones first.
    ///
    /// # Errors
    /// When the pipeline fails; nothing held is lost then (the caller retries), while `fresh`
    /// is lost to this instance only (the other instances hold it).
    ///
    /// # Cancel safety
    /// Dropped while waiting for Redis, the held messages and `done` marks stay for the next
    /// round; `fresh` is lost to this instance only, as above.
    pub(super) async fn round(&mut self, fresh: Vec<Message>) -> Result<(), SourceError> {
        let now = Instant::now();
        let fresh_bytes: usize = fresh.iter().map(cost).sum();
        let would_overflow =
            self.held.len() + fresh.len() > self.capacity || self.held_bytes + fresh_bytes > self.max_bytes;
        let force = would_overflow && self.forced_at.is_none_or(|at| now.duration_since(at) >= self.recheck);
        if force {
            self.forced_at = Some(now);
        }
        let due = if force {
            self.held.len()
        } else {
            self.held.iter().take_while(|h| h.check_at <= now).count()
        };
        let fresh: Vec<(String, Message)> = fresh.into_iter().map(|m| (self.key(&m), m)).collect();
        if self.done.is_empty() && due == 0 && fresh.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // Long enough for every instance holding the message to see it at its next check.
        let keep = (self.ttl * 3).as_millis() as u64;
        for key in &self.done {
            pipe.cmd("SET").arg(key).arg(DONE).arg("PX").arg(keep);
        }
        let ttl = self.ttl.as_millis() as u64;
        for key in self
            .held
            .iter()
            .take(due)
            .map(|h| &h.key)
            .chain(fresh.iter().map(|(k, _)| k))
        {
            pipe.cmd("SET")
                .arg(key)
                .arg(&self.me)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl);
        }
        let replies: Vec<redis::Value> =
            pipe.query_async(&mut self.conn)
                .await
                .map_err(|source| SourceError::Redis {
                    op: "SET NX GET (claim)",
                    key: String::new(),
                    source,
                })?;
        let mut replies = replies.into_iter().skip(self.done.len());
        {
            // Marked `done`: nothing to keep alive any more.
            let mut live = lock(&self.live);
            for key in self.done.drain(..) {
                live.remove(&key);
            }
        }
        let mut reclaimed = 0u64;
        let now = Instant::now();
        let mut still_held = Vec::new();
        for _ in 0..due {
            let Some(h) = self.held.pop_front() else { break };
            self.held_bytes -= cost(&h.msg);
            match previous(replies.next()) {
                Previous::Won => {
                    reclaimed += 1;
                    self.win(h.key, h.msg);
                }
                Previous::Done => RuleStats::add(&self.stats.claimed_elsewhere, 1),
                Previous::Elsewhere => still_held.push(h),
            }
        }
        for mut h in still_held {
            h.check_at = now + self.recheck;
            self.hold(h);
        }
        for (key, msg) in fresh {
            match previous(replies.next()) {
                Previous::Won => self.win(key, msg),
                Previous::Done => RuleStats::add(&self.stats.claimed_elsewhere, 1),
                Previous::Elsewhere => self.hold(Held {
                    check_at: now + self.recheck,
                    key,
                    msg,
                }),
            }
        }
        if reclaimed > 0 {
            RuleStats::add(&self.stats.reclaimed, reclaimed);
            info!(
                rule = %self.rule,
                count = reclaimed,
                claim_ttl_ms = self.ttl.as_millis() as u64,
                "Claimed again messages whose claimer did not mark them done within claim_ttl; delivering them."
            );
        }
        Ok(())
    }

    /// A message this instance claimed: ready to hand out, its claim kept alive.
    fn win(&mut self, key: String, msg: Message) {
        lock(&self.live).insert(key.clone());
        self.ready.push_back(Won { key, msg });
    }

    /// Hold a message, dropping the oldest held ones (counted and logged) past the bound.
    fn hold(&mut self, h: Held) {
        self.held_bytes += cost(&h.msg);
        self.held.push_back(h);
        let mut dropped = 0;
        while self.held.len() > 1 && (self.held.len() > self.capacity || self.held_bytes > self.max_bytes) {
            if let Some(old) = self.held.pop_front() {
                self.held_bytes -= cost(&old.msg);
                dropped += 1;
            }
        }
        if dropped == 0 {
            return;
        }
        RuleStats::add(&self.stats.overflowed, dropped);
        self.drop_log.1 += dropped;
        if self.drop_log.0.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL) {
            error!(
                rule = %self.rule,
                dropped = self.drop_log.1,
                capacity = self.capacity,
                capacity_bytes = self.max_bytes,
                "Held claims full; messages another instance was delivering were dropped and are lost if that instance dies before marking them done. Raise `buffer`, or speed up the sinks."
            );
            self.drop_log = (Some(Instant::now()), 0);
        }
    }

    /// Messages held for another instance.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }
}

fn previous(reply: Option<redis::Value>) -> Previous {
    match reply {
        Some(redis::Value::Nil) => Previous::Won,
        // A reply missing from the pipeline: holding is the safe guess.
        None => Previous::Elsewhere,
        Some(redis::Value::BulkString(b)) if b == DONE.as_bytes() => Previous::Done,
        Some(redis::Value::SimpleString(s)) if s == DONE => Previous::Done,
        Some(_) => Previous::Elsewhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_claims_are_checked_well_before_the_ttl() {
        assert_eq!(recheck_interval(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(recheck_interval(Duration::from_secs(10)), Duration::from_millis(100));
        assert_eq!(recheck_interval(Duration::from_millis(200)), Duration::from_millis(50));
        assert_eq!(recheck_interval(Duration::from_millis(1)), Duration::from_millis(10));
    }
}
