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

pub use list::{ListSource, laravel_message};
pub use pubsub::{PubSubHub, PubSubSource};
pub use stream::StreamSource;

use crate::config::{SourceSpec, SourceSpecKind};
use crate::message::Message;
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
    /// Whether trying again later may work (always true for a source: Redis may come back, a
    /// group may be re-created). Kept as a method so the loop reads by meaning.
    pub fn is_retryable(&self) -> bool {
        true
    }
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

impl Source {
    /// Open the source described by `spec` for `rule`.
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the setup (the caller retries with backoff).
    /// A Pub/Sub source subscribes through `hub` and reports its disconnections on `status`.
    pub async fn open(
        spec: &SourceSpec,
        rule: &Arc<str>,
        stats: Arc<RuleStats>,
        status: Arc<RuleStatus>,
        hub: &PubSubHub,
    ) -> Result<Source, SourceError> {
        Ok(match &spec.kind {
            SourceSpecKind::Channel { .. } | SourceSpecKind::Pattern { .. } => Source::PubSub(Box::new(
                PubSubSource::open(spec, rule.clone(), stats, status, hub).await?,
            )),
            SourceSpecKind::Stream { .. } => {
                Source::Stream(Box::new(StreamSource::open(spec, rule.clone(), stats).await?))
            }
            SourceSpecKind::Queue { .. } => Source::List(Box::new(ListSource::open(spec, rule.clone(), stats).await?)),
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
