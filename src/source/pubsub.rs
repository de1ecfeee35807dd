//! `channel` and `pattern` sources: SUBSCRIBE / PSUBSCRIBE on a connection of the rule's own.
//!
//! A reader task drains the socket as fast as Redis sends, into a bounded buffer, so a slow
//! sink never makes Redis buffer output for us (Redis disconnects a subscriber whose output
//! buffer passes `client-output-buffer-limit pubsub`, losing everything queued). When the buffer
//! is full the rule's overflow policy applies, counted and logged. redis-rs ends the message
//! stream when the connection drops and never resubscribes; the reader reconnects with backoff,
//! resubscribes and logs how long the subscription was down.
//!
//! Pub/Sub is at most once: Redis keeps nothing for a subscriber that is not connected.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::{Budget, SourceError};
use crate::config::{ConnectionSpec, Overflow, SourceSpec, SourceSpecKind};
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn;
use crate::stats::{RuleState, RuleStats, RuleStatus};

/// Messages handed to the rule per batch.
const BATCH: usize = 100;
/// First delay before resubscribing; doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// Cap on the resubscribe delay: a restarted Redis is picked up within this long.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Overflow is logged at most this often (with the count since the last line).
const OVERFLOW_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What to subscribe to.
#[derive(Clone)]
struct Subscription {
    connection: Arc<ConnectionSpec>,
    /// Channel or pattern as the rule names it.
    name: String,
    pattern: bool,
    /// SSUBSCRIBE (cluster only).
    sharded: bool,
}

/// Where the reader takes messages from.
enum Feed {
    /// One server: redis-rs's Pub/Sub connection, whose stream ends when the connection drops
    /// (the reader then resubscribes).
    Single {
        /// Held so that the connection stays open.
        _sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    /// A cluster: messages arrive as RESP3 pushes. redis-rs resubscribes by itself when a node
    /// is lost or the channel's slot moves, and says so with a `Disconnection` push, then a
    /// new subscription confirmation.
    Cluster {
        /// Held so that the connection stays open.
        _conn: redis::cluster_async::ClusterConnection,
        pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

/// What the feed produced.
enum Incoming {
    Message(redis::Msg),
    /// A cluster node holding the subscription was lost; redis-rs is resubscribing.
    Down,
    /// A subscription was (re)confirmed.
    Up,
}

impl Feed {
    /// The next message or event; `None` once the feed has ended (the connection is gone).
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Feed::Single { stream, .. } => stream.next().await.map(Incoming::Message),
            Feed::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    redis::PushKind::Disconnection => return Some(Incoming::Down),
                    redis::PushKind::Subscribe | redis::PushKind::PSubscribe | redis::PushKind::SSubscribe => {
                        return Some(Incoming::Up);
                    }
                    _ => {
                        if let Some(msg) = redis::Msg::from_push_info(push) {
                            return Some(Incoming::Message(msg));
                        }
                    }
                }
            },
        }
    }
}

impl Subscription {
    fn op(&self) -> &'static str {
        match (self.pattern, self.sharded) {
            (true, _) => "PSUBSCRIBE",
            (false, true) => "SSUBSCRIBE",
            (false, false) => "SUBSCRIBE",
        }
    }

    async fn connect(&self) -> Result<Feed, SourceError> {
        let err = |source| SourceError::Redis {
            op: self.op(),
            key: self.name.clone(),
            source,
        };
        let target = redis_conn::prefixed(&self.connection, &self.name);
        if self.connection.cluster {
            let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
            let mut conn = redis_conn::cluster_pubsub(&self.connection, tx).await.map_err(err)?;
            match (self.pattern, self.sharded) {
                (true, _) => conn.psubscribe(&target).await.map_err(err)?,
                (false, true) => conn.ssubscribe(&target).await.map_err(err)?,
                (false, false) => conn.subscribe(&target).await.map_err(err)?,
            }
            return Ok(Feed::Cluster { _conn: conn, pushes });
        }
        let mut pubsub = redis_conn::pubsub(&self.connection).await.map_err(err)?;
        if self.pattern {
            pubsub.psubscribe(&target).await.map_err(err)?;
        } else {
            pubsub.subscribe(&target).await.map_err(err)?;
        }
        let (sink, stream) = pubsub.split();
        Ok(Feed::Single { _sink: sink, stream })
    }
}

struct Shared {
    queue: Mutex<VecDeque<Message>>,
    /// Signalled when the queue gains a message.
    data: Notify,
    /// Signalled when the rule takes messages (for `overflow: block`).
    space: Notify,
    capacity: usize,
    overflow: Overflow,
    stats: Arc<RuleStats>,
    rule: Arc<str>,
    overflow_log: Mutex<(Option<Instant>, u64)>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        // A panic while holding this lock cannot leave the queue half-modified.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn push(&self, msg: Message, stop: &CancellationToken) {
        RuleStats::add(&self.stats.received, 1);
        loop {
            let space = self.space.notified();
            {
                let mut queue = self.lock();
                if queue.len() < self.capacity {
                    queue.push_back(msg);
                    drop(queue);
                    self.data.notify_one();
                    return;
                }
                match self.overflow {
                    Overflow::DropOldest => {
                        queue.pop_front();
                        queue.push_back(msg);
                        drop(queue);
                        self.overflowed();
                        return;
                    }
                    Overflow::DropNewest => {
                        drop(queue);
                        self.overflowed();
                        return;
                    }
                    Overflow::Block => {}
                }
            }
            tokio::select! {
                _ = space => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn overflowed(&self) {
        RuleStats::add(&self.stats.overflowed, 1);
        let mut log = self.overflow_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        let due = log.0.is_none_or(|at| at.elapsed() >= OVERFLOW_LOG_INTERVAL);
        if due {
            error!(
                rule = %self.rule,
                dropped = log.1,
                capacity = self.capacity,
                policy = ?self.overflow,
                "Pub/Sub buffer full; messages dropped. Raise `buffer`, speed up the sinks, or bridge the channel into a stream."
            );
            *log = (Some(Instant::now()), 0);
        }
    }
}

/// A running subscription and the buffer it fills.
pub struct PubSubSource {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// `ha: claim`.
    claimer: Option<Claimer>,
    /// `ha: single`.
    lease: Option<Lease>,
    /// Bytes a batch may hold.
    budget: Budget,
}

/// `ha: single`: every instance subscribes, only the holder of the lease delivers. The holder
/// renews it every third of its TTL; the others try to take it as often. When the holder dies,
/// another takes over once the lease expires: what was published in that gap is dropped by the
/// standby instances (counted as `claimed_elsewhere`, like everything a standby drops), and the
/// takeover is logged with how long this instance stood by.
struct Lease {
    conn: redis_conn::Conn,
    key: String,
    me: String,
    ttl: Duration,
    held: bool,
    next_check: Instant,
    /// When this instance last saw the lease held by nobody it knew to be alive (for the log).
    lost_at: Option<Instant>,
    stats: Arc<RuleStats>,
}

/// Renew the lease if this instance holds it, or take it if nobody does. KEYS: lease; ARGV:
/// instance, TTL in ms. Returns 1 when this instance holds the lease afterwards.
const LEASE: &str = r"
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

impl Lease {
    /// Check or renew the lease when due.
    async fn refresh(&mut self) -> Result<(), SourceError> {
        if Instant::now() < self.next_check {
            return Ok(());
        }
        self.next_check = Instant::now() + self.ttl / 3;
        let held: i64 = redis::cmd("EVAL")
            .arg(LEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.me)
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.conn)
            .await
            .map_err(|source| SourceError::Redis {
                op: "lease",
                key: self.key.clone(),
                source,
            })?;
        let held = held == 1;
        if held && !self.held {
            info!(
                lease = %self.key,
                instance = %self.me,
                standby_ms = self.lost_at.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0),
                "Took the lease: this instance now delivers the rule's messages."
            );
        } else if !held && self.held {
            warn!(lease = %self.key, "Lost the lease: another instance delivers now.");
        }
        if !held && self.lost_at.is_none() {
            self.lost_at = Some(Instant::now());
        }
        if held {
            self.lost_at = None;
        }
        self.held = held;
        Ok(())
    }
}

/// `ha: claim`: one instance delivers each message. A message is claimed with
/// `SET key INSTANCE NX GET PX ttl` (one pipeline per batch, Redis 7.0+): no previous value means
/// this instance won; `done` means another delivered it; another instance's name means it is
/// being delivered elsewhere, and the message is held until `ttl` has passed and claimed again
/// then, so that a claimer that died before marking it `done` loses nothing.
struct Claimer {
    conn: redis_conn::Conn,
    connection: Arc<ConnectionSpec>,
    ttl: Duration,
    id: Option<crate::filter::Template>,
    /// This instance's name, the claim's value.
    me: String,
    /// Messages another instance claimed: (when to claim again, key, message).
    held: VecDeque<(Instant, String, Message)>,
    /// Keys of the batch handed to the rule, marked `done` when it is acknowledged.
    in_flight: Vec<String>,
    capacity: usize,
    stats: Arc<RuleStats>,
}

/// The value of a claim whose message was delivered.
const DONE: &str = "done";

impl Claimer {
    fn key(&self, msg: &Message) -> String {
        let id = match &self.id {
            Some(t) => t
                .render_string(msg, crate::filter::Missing::Empty)
                .unwrap_or_else(|_| String::new()),
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

    /// Claim each message; returns those this instance won, holds those another is delivering.
    async fn claim(&mut self, msgs: Vec<(String, Message)>) -> Result<Vec<Message>, SourceError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in &msgs {
            pipe.cmd("SET")
                .arg(key)
                .arg(&self.me)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(self.ttl.as_millis() as u64);
        }
        let replies: Vec<Option<String>> =
            pipe.query_async(&mut self.conn)
                .await
                .map_err(|source| SourceError::Redis {
                    op: "SET NX (claim)",
                    key: String::new(),
                    source,
                })?;
        let mut won = Vec::new();
        for ((key, msg), previous) in msgs.into_iter().zip(replies) {
            match previous.as_deref() {
                None => {
                    self.in_flight.push(key);
                    won.push(msg);
                }
                Some(DONE) => RuleStats::add(&self.stats.claimed_elsewhere, 1),
                Some(_) => {
                    if self.held.len() >= self.capacity {
                        self.held.pop_front();
                        RuleStats::add(&self.stats.overflowed, 1);
                    }
                    self.held.push_back((Instant::now() + self.ttl, key, msg));
                }
            }
        }
        Ok(won)
    }

    /// Claim again the held messages whose claim has had time to expire.
    async fn retry_due(&mut self) -> Result<Vec<Message>, SourceError> {
        let now = Instant::now();
        let mut due = Vec::new();
        while self.held.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, key, msg)) = self.held.pop_front() {
                due.push((key, msg));
            }
        }
        self.claim(due).await
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.held.front().map(|(at, _, _)| *at)
    }

    /// Mark the batch handed out as delivered, so the instances holding it drop it.
    async fn done(&mut self) -> Result<(), SourceError> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // Long enough for every instance holding the message to see it at its next try.
        let keep = (self.ttl * 3).as_millis() as u64;
        for key in &self.in_flight {
            pipe.cmd("SET").arg(key).arg(DONE).arg("PX").arg(keep).ignore();
        }
        let _: () = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(|source| SourceError::Redis {
                op: "SET (claim done)",
                key: String::new(),
                source,
            })?;
        self.in_flight.clear();
        Ok(())
    }
}

impl PubSubSource {
    /// Subscribe (the subscription is confirmed when this returns) and start the reader.
    ///
    /// # Errors
    /// When the first connection or subscription fails.
    pub async fn open(
        spec: &SourceSpec,
        rule: Arc<str>,
        stats: Arc<RuleStats>,
        status: Arc<RuleStatus>,
        budget: Budget,
    ) -> Result<PubSubSource, SourceError> {
        let (name, pattern, buffer, overflow, claim, lease) = match &spec.kind {
            SourceSpecKind::Channel {
                channel,
                sharded,
                buffer,
                overflow,
                claim,
                lease,
            } => ((channel.clone(), *sharded), false, *buffer, *overflow, claim, lease),
            SourceSpecKind::Pattern {
                pattern,
                buffer,
                overflow,
                claim,
                lease,
            } => ((pattern.clone(), false), true, *buffer, *overflow, claim, lease),
            _ => {
                return Err(SourceError::Protocol {
                    op: "SUBSCRIBE",
                    key: String::new(),
                    detail: "not a Pub/Sub source".into(),
                });
            }
        };
        let (name, sharded) = name;
        let sub = Subscription {
            connection: spec.connection.clone(),
            name,
            pattern,
            sharded,
        };
        // `ha` writes its claims and lease on the shared connection: the subscription's
        // connection can only subscribe.
        let side_connection = || async {
            redis_conn::shared(&spec.connection)
                .await
                .map_err(|source| SourceError::Redis {
                    op: "connect",
                    key: sub.name.clone(),
                    source,
                })
        };
        let claimer = match claim {
            None => None,
            Some(c) => Some(Claimer {
                conn: side_connection().await?,
                connection: spec.connection.clone(),
                ttl: c.ttl,
                id: c.id.clone(),
                me: crate::identity::name(),
                held: VecDeque::new(),
                in_flight: Vec::new(),
                capacity: buffer,
                stats: stats.clone(),
            }),
        };
        let lease = match lease {
            None => None,
            Some(ttl) => Some(Lease {
                conn: side_connection().await?,
                key: redis_conn::prefixed(&spec.connection, &format!("redis-router:lease:{rule}")),
                me: crate::identity::name(),
                ttl: *ttl,
                held: false,
                next_check: Instant::now(),
                lost_at: None,
                stats: stats.clone(),
            }),
        };
        let feed = sub.connect().await?;
        debug!(channel = %sub.name, pattern, sharded, "Subscribed.");
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(buffer.min(1024))),
            data: Notify::new(),
            space: Notify::new(),
            capacity: buffer,
            overflow,
            stats,
            rule,
            overflow_log: Mutex::new((None, 0)),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(read_loop(feed, sub, shared.clone(), stop.clone(), status).in_current_span());
        Ok(PubSubSource {
            shared,
            stop,
            task,
            claimer,
            lease,
            budget,
        })
    }

    /// The batch last handed out is done: with `ha: claim`, mark its messages delivered.
    ///
    /// # Errors
    /// When the marks cannot be written; the caller retries.
    pub async fn ack(&mut self) -> Result<(), SourceError> {
        match &mut self.claimer {
            Some(c) => c.done().await,
            None => Ok(()),
        }
    }

    /// Wait for at least one message and take up to a batch (with `ha: claim`, the messages
    /// this instance won).
    ///
    /// # Errors
    /// With `ha: claim`, when the claims cannot be written.
    ///
    /// # Cancel safety
    /// Cancel safe without `ha: claim`: messages stay in the buffer until taken. With it, a
    /// batch dropped after its claims were written is lost to this instance only: its claims
    /// expire and the instances holding those messages deliver them.
    pub async fn recv(&mut self) -> Result<Option<Vec<Message>>, SourceError> {
        loop {
            if let Some(lease) = &mut self.lease {
                lease.refresh().await?;
            }
            if let Some(c) = &mut self.claimer
                && c.next_deadline().is_some_and(|at| at <= Instant::now())
            {
                let won = c.retry_due().await?;
                if !won.is_empty() {
                    return Ok(Some(won));
                }
            }
            let data = self.shared.data.notified();
            let batch = {
                let mut queue = self.shared.lock();
                if queue.is_empty() {
                    None
                } else {
                    let mut batch: Vec<Message> = Vec::new();
                    let mut total = 0usize;
                    while batch.len() < BATCH
                        && let Some(front) = queue.front_mut()
                    {
                        let cost = self.budget.admit(front);
                        if !batch.is_empty() && total.saturating_add(cost) > self.budget.batch_bytes {
                            break;
                        }
                        total = total.saturating_add(cost);
                        batch.extend(queue.pop_front());
                    }
                    let more = !queue.is_empty();
                    drop(queue);
                    self.shared.space.notify_waiters();
                    if more {
                        self.shared.data.notify_one();
                    }
                    Some(batch)
                }
            };
            if let Some(batch) = batch {
                if let Some(lease) = &self.lease
                    && !lease.held
                {
                    // Standby: another instance delivers these.
                    RuleStats::add(&lease.stats.claimed_elsewhere, batch.len() as u64);
                    continue;
                }
                let Some(c) = &mut self.claimer else {
                    return Ok(Some(batch));
                };
                let keyed: Vec<(String, Message)> = batch.into_iter().map(|m| (c.key(&m), m)).collect();
                let won = c.claim(keyed).await?;
                if !won.is_empty() {
                    return Ok(Some(won));
                }
                continue;
            }
            if self.task.is_finished() {
                return Ok(None);
            }
            let deadline = self
                .claimer
                .as_ref()
                .and_then(Claimer::next_deadline)
                .into_iter()
                .chain(self.lease.as_ref().map(|l| l.next_check))
                .min();
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), data).await;
                }
                None => data.await,
            }
        }
    }

    /// Unsubscribe and stop the reader. Messages still buffered are dropped with the source;
    /// the rule drains them before closing.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stop reading and take every message still buffered. With `ha: claim` nothing is taken:
    /// the other instances received the same messages and claim them.
    pub fn take_buffered(&mut self) -> Vec<Message> {
        self.stop.cancel();
        let left: Vec<Message> = self.shared.lock().drain(..).collect();
        let standby = self.lease.as_ref().is_some_and(|l| !l.held);
        if self.claimer.is_some() || standby {
            Vec::new()
        } else {
            left
        }
    }

    /// Messages waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.shared.lock().len()
    }
}

async fn read_loop(
    mut feed: Feed,
    sub: Subscription,
    shared: Arc<Shared>,
    stop: CancellationToken,
    status: Arc<RuleStatus>,
) {
    // Set while a cluster node holding the subscription is lost (redis-rs resubscribes).
    let mut down_since: Option<Instant> = None;
    loop {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                incoming = feed.next() => incoming,
            };
            let msg = match incoming {
                None => break,
                Some(Incoming::Message(msg)) => msg,
                Some(Incoming::Down) => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        subscription_lost(&sub, &status);
                    }
                    continue;
                }
                Some(Incoming::Up) => {
                    if let Some(since) = down_since.take() {
                        resubscribed(&sub, &shared, &status, since);
                    }
                    continue;
                }
            };
            let channel = redis_conn::unprefixed(&sub.connection, msg.get_channel_name()).to_string();
            let pattern = if sub.pattern { Some(sub.name.clone()) } else { None };
            let meta = Meta {
                rule: shared.rule.clone(),
                source: if sub.pattern {
                    SourceKind::Pattern
                } else {
                    SourceKind::Channel
                },
                key: channel,
                pattern,
                id: None,
                received: SystemTime::now(),
                deliveries: 1,
                fields: Vec::new(),
                problem: None,
            };
            shared
                .push(Message::new(Body::Bytes(msg.get_payload_bytes().to_vec()), meta), &stop)
                .await;
        }
        let since = match down_since {
            Some(since) => since,
            None => {
                subscription_lost(&sub, &status);
                Instant::now()
            }
        };
        let mut delay = FIRST_RECONNECT_DELAY;
        feed = loop {
            match sub.connect().await {
                Ok(f) => break f,
                Err(e) => debug!(channel = %sub.name, error = %e, "Resubscribe failed."),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        };
        down_since = None;
        resubscribed(&sub, &shared, &status, since);
    }
}

fn subscription_lost(sub: &Subscription, status: &RuleStatus) {
    if status.get() == RuleState::Running {
        status.set(RuleState::Retrying);
    }
    status.set_error("Pub/Sub subscription lost; resubscribing".into());
    warn!(channel = %sub.name, "Subscription lost; messages published until it is back are missed. Reconnecting.");
}

fn resubscribed(sub: &Subscription, shared: &Shared, status: &RuleStatus, since: Instant) {
    RuleStats::add(&shared.stats.reconnects, 1);
    if status.get() == RuleState::Retrying {
        status.set(RuleState::Running);
    }
    info!(
        channel = %sub.name,
        down_ms = since.elapsed().as_millis() as u64,
        "Resubscribed."
    );
}
