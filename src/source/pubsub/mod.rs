//! `channel` and `pattern` sources: a rule's share of a subscription connection, its own
//! buffer, and its `ha` mode.
//!
//! - `hub.rs`: the subscription connections, shared by every channel and pattern rule of one
//!   `connections:` entry; one task per connection reads it and fills each rule's buffer.
//! - `buffer.rs`: the rule's bounded buffer (messages and bytes) and its overflow policy.
//! - `lease.rs`: `ha: single`.
//! - `claim.rs`: `ha: claim`.
//!
//! Each rule keeps its own buffer, overflow policy, counters, status and `ha`; only the socket
//! is shared. The reader drains the socket as fast as Redis sends, so a slow sink never makes
//! Redis buffer output for us (Redis disconnects a subscriber whose output buffer passes
//! `client-output-buffer-limit pubsub`, losing everything queued, for every rule on it).
//!
//! Pub/Sub is at most once: Redis keeps nothing for a subscriber that is not connected.

mod buffer;
mod claim;
mod hub;
mod lease;

use std::sync::Arc;
use std::time::Instant;

pub use hub::PubSubHub;

use super::{Budget, Liveness, SourceError, keep_alive};
use crate::config::{SourceSpec, SourceSpecKind};
use crate::message::{Message, SourceKind};
use crate::redis_conn;
use crate::stats::{RuleStats, RuleStatus};
use buffer::Buffer;
use claim::Claimer;
use hub::{Feed, Registration, Topic, TopicKind};
use lease::{Lease, LeaseHandle};
use tokio_util::task::AbortOnDropHandle;

/// Messages handed to the rule per batch.
const BATCH: usize = 100;

/// A rule's subscription and the buffer it fills.
pub struct PubSubSource {
    buffer: Arc<Buffer>,
    /// Dropping it ends the subscription (unsubscribed when no other rule needs the topic).
    registration: Option<Registration>,
    /// `ha: claim`, shared with [`Checker`].
    claimer: Option<Arc<tokio::sync::Mutex<Claimer>>>,
    /// Checks held claims and writes `done` marks on a timer of its own.
    _checker: Option<AbortOnDropHandle<()>>,
    /// `ha: single`.
    lease: Option<LeaseHandle>,
    /// Bytes a batch may hold.
    budget: Budget,
}

impl PubSubSource {
    /// Subscribe through `shared.hub` (the subscription is confirmed when this returns).
    ///
    /// # Errors
    /// When the subscription connection cannot be opened or the subscription is not confirmed.
    pub async fn open(
        spec: &SourceSpec,
        rule: Arc<str>,
        stats: Arc<RuleStats>,
        status: Arc<RuleStatus>,
        shared: super::Shared<'_>,
        budget: Budget,
    ) -> Result<PubSubSource, SourceError> {
        let (topic, pattern, options) = match &spec.kind {
            SourceSpecKind::Channel {
                channel,
                sharded,
                options,
            } => (
                Topic {
                    kind: if *sharded {
                        TopicKind::Sharded
                    } else {
                        TopicKind::Channel
                    },
                    name: redis_conn::prefixed(&spec.connection, channel),
                },
                None,
                options,
            ),
            SourceSpecKind::Pattern { pattern, options } => (
                Topic {
                    kind: TopicKind::Pattern,
                    name: redis_conn::prefixed(&spec.connection, pattern),
                },
                Some(pattern.clone()),
                options,
            ),
            _ => {
                return Err(SourceError::Protocol {
                    op: "SUBSCRIBE",
                    key: String::new(),
                    detail: "not a Pub/Sub source".into(),
                });
            }
        };
        // `ha` writes its claims and lease on the shared connection: a subscription connection
        // can only subscribe.
        let side_connection = || async {
            shared
                .connections
                .shared(&spec.connection)
                .await
                .map_err(|source| SourceError::Redis {
                    op: "connect",
                    key: topic.name.clone(),
                    source,
                })
        };
        let claimer = match &options.claim {
            None => None,
            Some(c) => Some(Claimer::new(
                side_connection().await?,
                spec.connection.clone(),
                c.ttl,
                c.id.clone(),
                options.buffer,
                options.buffer_bytes,
                stats.clone(),
                rule.clone(),
                shared.me,
            )),
        };
        let lease = match options.lease {
            None => None,
            Some(ttl) => Some(
                Lease::start(
                    side_connection().await?,
                    redis_conn::prefixed(&spec.connection, &format!("redis-router:lease:{rule}")),
                    ttl,
                    stats.clone(),
                    shared.me,
                )
                .await?,
            ),
        };
        let buffer = Arc::new(Buffer::new(
            options.buffer,
            options.buffer_bytes,
            options.overflow,
            stats.clone(),
            rule.clone(),
        ));
        let rule_name = rule.to_string();
        let feed = Feed {
            buffer: buffer.clone(),
            status,
            stats,
            rule,
            source: if pattern.is_some() {
                SourceKind::Pattern
            } else {
                SourceKind::Channel
            },
            pattern,
        };
        let registration = shared.hub.register(&spec.connection, topic, feed).await?;
        let claimer = claimer.map(|c| Arc::new(tokio::sync::Mutex::new(c)));
        let checker = claimer.as_ref().zip(options.claim.as_ref()).map(|(c, spec)| {
            let checker = Checker {
                claimer: c.clone(),
                buffer: buffer.clone(),
                name: rule_name.clone(),
            };
            keep_alive(claim::recheck_interval(spec.ttl), checker)
        });
        Ok(PubSubSource {
            buffer,
            registration: Some(registration),
            claimer,
            _checker: checker,
            lease,
            budget,
        })
    }

    /// The batch last handed out is done: with `ha: claim`, mark its messages delivered, and in
    /// the same round trip check what is held and claim what is buffered.
    ///
    /// # Errors
    /// When the marks cannot be written; the caller retries.
    pub async fn ack(&mut self) -> Result<(), SourceError> {
        let Some(c) = &self.claimer else {
            return Ok(());
        };
        let mut c = c.lock().await;
        c.acknowledge();
        let fresh = if c.has_ready() {
            Vec::new()
        } else {
            self.buffer.take(claim::CLAIM_WINDOW, &self.budget)
        };
        c.round(fresh).await
    }

    /// Wait for at least one message and take up to a batch (with `ha: claim`, the messages
    /// this instance won).
    ///
    /// # Errors
    /// With `ha`, when the claims or the lease cannot be written.
    ///
    /// # Cancel safety
    /// Cancel safe without `ha: claim`: messages stay in the buffer until taken. With it, a
    /// batch dropped after its claims were written is lost to this instance only: its claims
    /// expire and the instances holding those messages deliver them.
    pub async fn recv(&mut self) -> Result<Option<Vec<Message>>, SourceError> {
        loop {
            if let Some(c) = &self.claimer {
                let batch = c.lock().await.take_ready(BATCH);
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
            }
            let max = if self.claimer.is_some() {
                claim::CLAIM_WINDOW
            } else {
                BATCH
            };
            let batch = self.buffer.take(max, &self.budget);
            if let Some(lease) = &self.lease
                && !lease.held()
                && !batch.is_empty()
            {
                // Standby: another instance delivers these.
                RuleStats::add(&lease.stats.claimed_elsewhere, batch.len() as u64);
                continue;
            }
            match &self.claimer {
                None if !batch.is_empty() => return Ok(Some(batch)),
                Some(c) if !batch.is_empty() => {
                    c.lock().await.round(batch).await?;
                    continue;
                }
                _ => {}
            }
            // New messages, or messages the checker won back, wake this up.
            self.buffer.data().await;
        }
    }

    /// End the subscription. Messages still buffered are dropped with the source; the rule
    /// drains them before closing.
    pub async fn close(mut self) {
        self.registration.take();
    }

    /// Stop reading and take every message still buffered. With `ha: claim` nothing is taken:
    /// the other instances received the same messages and claim them.
    pub fn take_buffered(&mut self) -> Vec<Message> {
        // Ends the subscription, so that nothing more arrives while the rule drains.
        self.registration.take();
        let left = self.buffer.close();
        let standby = self.lease.as_ref().is_some_and(|l| !l.held());
        if self.claimer.is_some() || standby {
            Vec::new()
        } else {
            left
        }
    }

    /// Messages waiting in the buffer (and, with `ha: claim`, held for another instance, when
    /// the claims are not being written just now).
    pub fn buffered(&self) -> usize {
        let held = self
            .claimer
            .as_ref()
            .and_then(|c| c.try_lock().ok().map(|c| c.held()))
            .unwrap_or(0);
        self.buffer.len() + held
    }
}

/// `ha: claim`'s rounds that do not wait for the rule: every [`claim::recheck_interval`], the
/// held messages due for a check are checked and the `done` marks of what the rule acknowledged
/// are written, even while the rule is busy delivering (a holder that checked only between its
/// own batches would miss, behind a slow sink, the `done` mark of a message it holds, and
/// deliver it a second time once the mark expired). What it wins back wakes the rule.
struct Checker {
    claimer: Arc<tokio::sync::Mutex<Claimer>>,
    buffer: Arc<Buffer>,
    name: String,
}

impl Liveness for Checker {
    const WHAT: &'static str = "Checking held claims";

    fn name(&self) -> &str {
        &self.name
    }

    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.check()
    }
}

impl Checker {
    async fn check(&mut self) -> Result<(), SourceError> {
        let mut c = self.claimer.lock().await;
        if c.has_work(Instant::now()) {
            c.round(Vec::new()).await?;
        }
        if c.has_ready() {
            self.buffer.wake();
        }
        Ok(())
    }
}
