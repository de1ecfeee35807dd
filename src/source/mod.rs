//! Sources: where a rule's messages come from. One closed enum over the kinds, each kind in its
//! own file (`pubsub.rs`, `stream.rs`, `list.rs`).
//!
//! A source hands out messages in batches and is told when a batch is done
//! ([`Source::ack`]): only then does a stream source XACK or a queue source drop the batch from
//! its processing list. Every `recv` is cancel safe: dropping it loses nothing (see each kind).

mod list;
mod pubsub;
mod stream;

use std::sync::Arc;

use tokio_util::task::AbortOnDropHandle;

pub use list::{ListSource, laravel_message};
pub use pubsub::{PubSubHub, PubSubSource};
pub use stream::StreamSource;

use crate::config::{RuleSpec, SourceSpec, SourceSpecKind};
use crate::message::Message;
use crate::redis_conn::Connections;
use crate::stats::{RuleStats, RuleStatus};

/// Why a source could not read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A Redis command failed.
    #[error("{op} on `{key}` failed: {source}")]
    Redis {
        /// What the source was doing.
        op: &'static str,
        /// The key it was doing it on.
        key: String,
        /// The error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered something the source does not understand.
    #[error("unexpected reply to {op} on `{key}`: {detail}")]
    Protocol {
        /// What the source was doing.
        op: &'static str,
        /// The key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

impl SourceError {
    /// For `map_err`: `op` on `key` failed in Redis.
    pub(crate) fn redis<'a>(op: &'static str, key: &'a str) -> impl FnOnce(redis::RedisError) -> SourceError + 'a {
        move |source| SourceError::Redis {
            op,
            key: key.to_string(),
            source,
        }
    }

    /// Whether trying again later may work (always true for a source: Redis may come back, a
    /// group may be re-created). Kept as a method so the loop reads by meaning.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// What a rule may hold in bytes, applied by every source as it makes batches.
///
/// A payload larger than `max_payload`, or (for a rule that parses JSON) one whose parsed tree
/// alone would take more than `batch_bytes`, is set aside: the rule dead-letters it whole and
/// nothing parses it, so no payload can make the process run out of memory. A batch stops
/// growing once its payloads and their estimated JSON trees reach `batch_bytes` (it always
/// holds at least one message); what a read returned beyond that waits in the source, already
/// taken (pending, or in the processing list), for the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Largest payload, in bytes.
    pub max_payload: usize,
    /// Bytes of payloads and parsed JSON per batch.
    pub batch_bytes: usize,
    /// Whether the rule parses its payloads as JSON (see [`RuleSpec::parses_json`]).
    pub parses_json: bool,
}

impl Budget {
    /// The budget of `rule`.
    pub fn of(rule: &RuleSpec) -> Budget {
        Budget {
            max_payload: rule.limits.max_payload,
            batch_bytes: rule.limits.batch_bytes,
            parses_json: rule.parses_json(),
        }
    }

    /// What a payload of these bytes costs in a batch (see [`Budget::admit`]), without making a
    /// message of it.
    pub fn cost_of(&self, payload: &[u8]) -> usize {
        if payload.len() > self.max_payload || !self.parses_json {
            return payload.len();
        }
        match crate::message::estimate_json_tree(payload) {
            tree if tree > self.batch_bytes => payload.len(),
            tree => tree,
        }
    }

    /// Set `msg` aside when the rule cannot afford it; returns its cost in the batch.
    pub fn admit(&self, msg: &mut Message) -> usize {
        let len = msg.payload_len();
        if len > self.max_payload {
            msg.set_aside(format!(
                "payload of {len} bytes is larger than max_payload ({} bytes); set aside unparsed",
                self.max_payload
            ));
            return len;
        }
        if !self.parses_json || msg.meta.problem.is_some() {
            return len;
        }
        let tree = msg.estimated_json_bytes();
        if tree > self.batch_bytes {
            msg.set_aside(format!(
                "payload of {len} bytes would take about {} MiB parsed as JSON, more than batch_bytes ({} MiB); set aside unparsed",
                tree >> 20,
                self.batch_bytes >> 20
            ));
            return len;
        }
        tree
    }

    /// Admit each message of `read` and move them to `held`, then take the next batch from
    /// `held`: messages in order while their costs fit in `batch_bytes` (at least one).
    /// Returns the batch and the average cost of a message of `read` (what the next read's
    /// [`Budget::count`] goes by).
    pub fn split(
        &self,
        read: Vec<Message>,
        held: &mut std::collections::VecDeque<(usize, Message)>,
    ) -> (Vec<Message>, usize) {
        let n = read.len();
        let mut total = 0usize;
        for mut msg in read {
            let cost = self.admit(&mut msg);
            total = total.saturating_add(cost);
            held.push_back((cost, msg));
        }
        (self.take(held), total / n.max(1))
    }

    /// The next batch from messages already admitted, with their costs.
    pub fn take(&self, held: &mut std::collections::VecDeque<(usize, Message)>) -> Vec<Message> {
        let mut total = 0usize;
        let mut batch = Vec::new();
        while let Some((cost, _)) = held.front() {
            if !batch.is_empty() && total.saturating_add(*cost) > self.batch_bytes {
                break;
            }
            total = total.saturating_add(*cost);
            if let Some((_, msg)) = held.pop_front() {
                batch.push(msg);
            }
        }
        batch
    }

    /// How many entries to ask for in one read so that, at `average` bytes each, they fit the
    /// budget: between 1 and `batch`.
    pub fn count(&self, average: usize, batch: usize) -> usize {
        (self.batch_bytes / average.max(1)).clamp(1, batch.max(1))
    }
}

/// What a source does on a timer of its own for as long as it lives, apart from its work
/// (a consumer's heartbeat, its hold on its pending entries): a slow sink, a long retry or a
/// stuck read never delays it, so a living consumer never looks dead to the others.
pub(crate) trait Liveness: Send + 'static {
    /// What it does, for the warning when a beat fails (`Heartbeat`).
    const WHAT: &'static str;

    /// The queue or stream it keeps alive, as the rule names it, for the warning.
    fn name(&self) -> &str;

    /// One beat.
    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send;
}

/// Beat `live` every `period` (the first after one period) until the handle is dropped. A
/// failed beat is logged and tried again at the next tick.
pub(crate) fn keep_alive<L: Liveness>(period: std::time::Duration, mut live: L) -> AbortOnDropHandle<()> {
    let task = async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = live.beat().await {
                tracing::warn!(key = %live.name(), error = %e, "{} failed; trying again at the next tick.", L::WHAT);
            }
        }
    };
    AbortOnDropHandle::new(tokio::spawn(tracing::Instrument::in_current_span(task)))
}

/// A source of any kind.
pub enum Source {
    /// SUBSCRIBE / PSUBSCRIBE.
    PubSub(Box<PubSubSource>),
    /// XREADGROUP / XREAD (boxed: it is much larger than the other kinds).
    Stream(Box<StreamSource>),
    /// BLMOVE from a list.
    List(Box<ListSource>),
}

/// What the sources of every rule share, owned by the supervisor.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    /// Connections for commands that never block (acknowledgements, claims, leases).
    pub connections: &'a Connections,
    /// The Pub/Sub subscription connections.
    pub hub: &'a PubSubHub,
    /// This process's name as a consumer (see [`crate::identity`]).
    pub me: &'a str,
}

impl Source {
    /// Open the source described by `spec` for `rule`.
    ///
    /// Batches follow `budget` (see [`Budget`]).
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the setup (the caller retries with backoff).
    /// A Pub/Sub source subscribes through `shared.hub` and reports its disconnections on `status`.
    pub async fn open(
        spec: &SourceSpec,
        rule: &Arc<str>,
        stats: Arc<RuleStats>,
        status: Arc<RuleStatus>,
        shared: Shared<'_>,
        budget: Budget,
    ) -> Result<Source, SourceError> {
        Ok(match &spec.kind {
            SourceSpecKind::Channel { .. } | SourceSpecKind::Pattern { .. } => Source::PubSub(Box::new(
                PubSubSource::open(spec, rule.clone(), stats, status, shared, budget).await?,
            )),
            SourceSpecKind::Stream { .. } => Source::Stream(Box::new(
                StreamSource::open(spec, rule.clone(), stats, shared, budget).await?,
            )),
            SourceSpecKind::Queue { .. } => Source::List(Box::new(
                ListSource::open(spec, rule.clone(), stats, shared, budget).await?,
            )),
        })
    }

    /// The next batch: at least one message, or `None` when the source has ended for good.
    /// Waits no longer than the source's block time before returning an empty batch.
    ///
    /// # Errors
    /// [`SourceError`] when a read failed; the caller backs off and calls again.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call loses nothing. Pub/Sub messages stay in the buffer; stream
    /// entries read by a dropped XREADGROUP are pending and replayed at the next start; list
    /// elements moved by a dropped BLMOVE are in this consumer's processing list.
    pub async fn recv(&mut self) -> Result<Option<Vec<Message>>, SourceError> {
        match self {
            Source::PubSub(s) => s.recv().await,
            Source::Stream(s) => s.recv().await.map(Some),
            Source::List(s) => s.recv().await.map(Some),
        }
    }

    /// The batch last returned by `recv` is done: every message delivered, filtered out or
    /// dead-lettered.
    ///
    /// # Errors
    /// When the acknowledgement could not be written; the caller retries.
    pub async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        match self {
            Source::PubSub(s) => s.ack().await,
            Source::Stream(s) => s.ack(batch).await,
            Source::List(s) => s.ack(batch).await,
        }
    }

    /// Stop reading: end the Pub/Sub subscription; a stream source waits for its
    /// acknowledgements in flight.
    pub async fn close(self) {
        match self {
            Source::PubSub(s) => s.close().await,
            Source::Stream(s) => (*s).close().await,
            Source::List(_) => {}
        }
    }
}

/// The bytes of a bulk or simple string reply.
pub(crate) fn bulk(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}
