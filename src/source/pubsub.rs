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

use super::SourceError;
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
}

impl Subscription {
    async fn connect(&self) -> Result<redis::aio::PubSub, SourceError> {
        let op = if self.pattern { "PSUBSCRIBE" } else { "SUBSCRIBE" };
        let err = |source| SourceError::Redis {
            op,
            key: self.name.clone(),
            source,
        };
        let mut pubsub = redis_conn::pubsub(&self.connection).await.map_err(err)?;
        let target = redis_conn::prefixed(&self.connection, &self.name);
        if self.pattern {
            pubsub.psubscribe(&target).await.map_err(err)?;
        } else {
            pubsub.subscribe(&target).await.map_err(err)?;
        }
        Ok(pubsub)
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
    ) -> Result<PubSubSource, SourceError> {
        let (name, pattern, buffer, overflow) = match &spec.kind {
            SourceSpecKind::Channel {
                channel,
                buffer,
                overflow,
            } => (channel.clone(), false, *buffer, *overflow),
            SourceSpecKind::Pattern {
                pattern,
                buffer,
                overflow,
            } => (pattern.clone(), true, *buffer, *overflow),
            _ => {
                return Err(SourceError::Protocol {
                    op: "SUBSCRIBE",
                    key: String::new(),
                    detail: "not a Pub/Sub source".into(),
                });
            }
        };
        let sub = Subscription {
            connection: spec.connection.clone(),
            name,
            pattern,
        };
        let pubsub = sub.connect().await?;
        debug!(channel = %sub.name, pattern, "Subscribed.");
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
        let task = tokio::spawn(read_loop(pubsub, sub, shared.clone(), stop.clone(), status).in_current_span());
        Ok(PubSubSource { shared, stop, task })
    }

    /// Wait for at least one message and take up to a batch.
    ///
    /// # Cancel safety
    /// Cancel safe: messages stay in the buffer until taken.
    pub async fn recv(&mut self) -> Option<Vec<Message>> {
        loop {
            let data = self.shared.data.notified();
            {
                let mut queue = self.shared.lock();
                if !queue.is_empty() {
                    let n = queue.len().min(BATCH);
                    let batch: Vec<Message> = queue.drain(..n).collect();
                    let more = !queue.is_empty();
                    drop(queue);
                    self.shared.space.notify_waiters();
                    if more {
                        self.shared.data.notify_one();
                    }
                    return Some(batch);
                }
            }
            if self.task.is_finished() {
                return None;
            }
            data.await;
        }
    }

    /// Unsubscribe and stop the reader. Messages still buffered are dropped with the source;
    /// the rule drains them before closing.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stop reading and take every message still buffered.
    pub fn take_buffered(&mut self) -> Vec<Message> {
        self.stop.cancel();
        self.shared.lock().drain(..).collect()
    }

    /// Messages waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.shared.lock().len()
    }
}

async fn read_loop(
    mut pubsub: redis::aio::PubSub,
    sub: Subscription,
    shared: Arc<Shared>,
    stop: CancellationToken,
    status: Arc<RuleStatus>,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else { break };
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
        }
        let down_since = Instant::now();
        if status.get() == RuleState::Running {
            status.set(RuleState::Retrying);
        }
        status.set_error("Pub/Sub subscription lost; resubscribing".into());
        warn!(channel = %sub.name, "Subscription lost; messages published until it is back are missed. Reconnecting.");
        let mut delay = FIRST_RECONNECT_DELAY;
        pubsub = loop {
            match sub.connect().await {
                Ok(p) => break p,
                Err(e) => debug!(channel = %sub.name, error = %e, "Resubscribe failed."),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        };
        RuleStats::add(&shared.stats.reconnects, 1);
        if status.get() == RuleState::Retrying {
            status.set(RuleState::Running);
        }
        info!(
            channel = %sub.name,
            down_ms = down_since.elapsed().as_millis() as u64,
            "Resubscribed."
        );
    }
}
