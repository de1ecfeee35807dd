//! The dead-letter stream: where a message goes when it cannot be delivered, with why.
//!
//! Written to the Redis of the rule's source (its prefix applies, like every key the rule
//! touches), through that connection's shared socket ([`redis_conn::shared`]). One XADD per
//! dead letter, pipelined per batch.

use tracing::error;

use crate::config::ConnectionSpec;
use crate::filter::now_rfc3339;
use crate::message::Message;
use crate::redis_conn::{self, Conn};

/// Longest payload copied into a dead letter; longer ones are cut and marked, so that one
/// huge message cannot blow up the dead-letter stream.
pub const MAX_DEAD_PAYLOAD: usize = 1024 * 1024;

/// One message that could not be delivered.
pub struct DeadLetter<'a> {
    /// The message as received.
    pub message: &'a Message,
    /// Stream key (without prefix).
    pub stream: &'a str,
    /// Why, in a few words (`payload is not JSON`, `sink failed 5 times`).
    pub reason: String,
    /// The sink's last error (with the HTTP status and body snippet for webhooks).
    pub error: Option<String>,
    /// The sink that failed, when one did.
    pub sink: Option<&'a str>,
    /// Attempts made on that sink.
    pub attempts: u32,
}

/// Writes dead letters for one rule.
pub struct DeadLetters {
    /// `None` in a dry run: dead letters are printed, not written.
    conn: Option<(Conn, std::sync::Arc<ConnectionSpec>)>,
}

impl DeadLetters {
    /// Connect on `connection`.
    ///
    /// # Errors
    /// When Redis cannot be reached now.
    pub async fn open(connection: std::sync::Arc<ConnectionSpec>) -> redis::RedisResult<DeadLetters> {
        let conn = redis_conn::shared(&connection).await?;
        Ok(DeadLetters {
            conn: Some((conn, connection)),
        })
    }

    /// Dead letters printed to standard output instead (`run --dry-run`).
    pub fn printing() -> DeadLetters {
        DeadLetters { conn: None }
    }

    /// Write a set of dead letters in one round trip and log each once.
    ///
    /// # Errors
    /// When Redis does not take them; the caller retries (nothing is acknowledged before).
    pub async fn write(&mut self, letters: &[DeadLetter<'_>]) -> redis::RedisResult<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let Some((conn, connection)) = &mut self.conn else {
            for l in letters {
                println!(
                    "dry-run rule={} dead-letter {}: reason=\"{}\" payload={}",
                    l.message.meta.rule,
                    l.stream,
                    l.reason,
                    crate::mask::escape(&String::from_utf8_lossy(l.message.raw()))
                );
            }
            return Ok(());
        };
        let failed_at = now_rfc3339();
        let mut pipe = redis::pipe();
        for l in letters {
            let m = l.message;
            let raw = m.raw();
            let payload = if raw.len() > MAX_DEAD_PAYLOAD {
                &raw[..MAX_DEAD_PAYLOAD]
            } else {
                raw
            };
            let cmd = pipe
                .cmd("XADD")
                .arg(redis_conn::prefixed(connection, l.stream))
                .arg("*")
                .arg("rule")
                .arg(&*m.meta.rule)
                .arg("reason")
                .arg(&l.reason)
                .arg("source")
                .arg(m.meta.source.as_str())
                .arg("source_key")
                .arg(&m.meta.key)
                .arg("source_id")
                .arg(m.meta.id.as_deref().unwrap_or(""))
                .arg("payload")
                .arg(payload)
                .arg("failed_at")
                .arg(&failed_at);
            if raw.len() > MAX_DEAD_PAYLOAD {
                cmd.arg("payload_truncated_from").arg(raw.len());
            }
            if let Some(sink) = l.sink {
                cmd.arg("sink").arg(sink).arg("attempts").arg(l.attempts);
            }
            if let Some(error) = &l.error {
                cmd.arg("error").arg(error);
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(conn).await?;
        for l in letters {
            error!(
                rule = %l.message.meta.rule,
                key = %l.message.meta.key,
                id = l.message.meta.id.as_deref().unwrap_or(""),
                sink = l.sink.unwrap_or(""),
                reason = %l.reason,
                error = l.error.as_deref().unwrap_or(""),
                dead_letter = l.stream,
                "Message dead-lettered."
            );
        }
        Ok(())
    }
}
