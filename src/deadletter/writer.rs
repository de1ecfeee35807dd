//! Writes dead letters for a rule: to the Redis of the rule's source (its prefix applies, like
//! every key the rule touches), through that connection's shared socket
//! ([`redis_conn::Connections`]). One XADD per dead letter, pipelined per batch; printed instead in
//! a dry run.

use std::sync::Arc;

use tracing::error;

use super::{DeadLetter, fields, signing_key};
use crate::config::ConnectionSpec;
use crate::filter::now_rfc3339;
use crate::redis_conn::{self, Conn};

/// Writes dead letters for one rule.
pub struct DeadLetters {
    /// `None` in a dry run: dead letters are printed, not written.
    conn: Option<Writer>,
}

struct Writer {
    conn: Conn,
    connection: Arc<ConnectionSpec>,
    key: Vec<u8>,
}

impl DeadLetters {
    /// Connect on `connection` (through `connections`) and read (or create) its signing key.
    ///
    /// # Errors
    /// When Redis cannot be reached now.
    pub async fn open(
        connection: Arc<ConnectionSpec>,
        connections: &redis_conn::Connections,
    ) -> redis::RedisResult<DeadLetters> {
        let mut conn = connections.shared(&connection).await?;
        let key = signing_key(&mut conn, &connection, true).await?.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "the dead-letter signing key was not created"))
        })?;
        Ok(DeadLetters {
            conn: Some(Writer { conn, connection, key }),
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
        let Some(Writer { conn, connection, key }) = &mut self.conn else {
            for l in letters {
                println!(
                    "dry-run rule={} dead-letter {}: reason=\"{}\" payload={}",
                    l.message.meta.rule,
                    l.stream,
                    crate::mask::escape(&l.reason),
                    crate::mask::escape(&String::from_utf8_lossy(l.message.raw()))
                );
            }
            return Ok(());
        };
        let failed_at = now_rfc3339();
        let mut pipe = redis::pipe();
        for l in letters {
            let cmd = pipe
                .cmd("XADD")
                .arg(redis_conn::prefixed(connection, l.stream))
                .arg("*");
            for (name, value) in fields(l, key, &failed_at) {
                cmd.arg(name).arg(value);
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(conn).await?;
        for l in letters {
            error!(
                rule = %l.message.meta.rule,
                key = %crate::mask::escape(&l.message.meta.key),
                id = l.message.meta.id.as_deref().unwrap_or(""),
                sink = l.sink.unwrap_or(""),
                reason = %crate::mask::text(&l.reason),
                error = %l.error.as_deref().map(crate::mask::text).unwrap_or_default(),
                dead_letter = l.stream,
                "Message dead-lettered."
            );
        }
        Ok(())
    }
}
