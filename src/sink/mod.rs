//! Sinks: where a rule's messages go. One closed enum over the kinds; each Redis kind renders
//! one command per message (`publish.rs`, `stream.rs`, `queue.rs`) and a batch goes to Redis as
//! one pipeline, so a batch of a hundred costs one round trip, not a hundred.
//!
//! A sink reports a result per message, so the rule retries only what failed, and only on the
//! sink that failed.

mod publish;
mod queue;
mod stream;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

pub use webhook::WebhookSink;

use redis::{Cmd, Value};

use crate::config::{SinkSpec, SinkSpecKind};
use crate::filter::{EvalError, Missing, Template};
use crate::keys::{Reserved, ReservedNames};
use crate::message::Message;
use crate::redis_conn::{self, Conn};

/// Why a sink did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The message cannot be rendered for this sink (not JSON, a key template selected
    /// nothing): retrying will not help.
    #[error("cannot render for {sink}: {source}")]
    Render {
        /// The sink.
        sink: String,
        /// Why.
        #[source]
        source: EvalError,
    },
    /// An HTTP endpoint refused or did not answer.
    #[error("{sink}: {detail}")]
    Http {
        /// The sink.
        sink: String,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// What happened (status and the start of the response body).
        detail: String,
        /// 408, 429, 5xx, connection errors and timeouts.
        retryable: bool,
        /// The endpoint's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Redis refused or did not answer.
    #[error("{sink} failed: {source}")]
    Redis {
        /// The sink.
        sink: String,
        /// The error.
        #[source]
        source: redis::RedisError,
    },
}

impl SinkError {
    /// Whether a later attempt may succeed: connection trouble yes, a bad payload or a wrong
    /// key type no.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Render { .. } => false,
            SinkError::Redis { source, .. } => redis_conn::is_transient(source),
            SinkError::Http { retryable, .. } => *retryable,
        }
    }

    /// How long the endpoint asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A sink of any kind.
pub enum Sink {
    /// PUBLISH, XADD or RPUSH/Laravel push on a Redis connection.
    Redis(RedisSink),
    /// HTTP requests.
    Webhook(WebhookSink),
    /// `run --dry-run`: prints what the sink would write.
    DryRun {
        /// The rule, for the printed line.
        rule: String,
        /// The sink it stands for.
        spec: Box<SinkSpec>,
        /// Its label.
        label: String,
        /// Names a rendered key may not take.
        reserved: Arc<ReservedNames>,
    },
}

impl Sink {
    /// Connect the sink. A key or channel it renders from a message is checked against the
    /// names `reserved` holds at the time (see [`render_name`]).
    ///
    /// # Errors
    /// When Redis cannot be reached now (the caller retries).
    pub async fn open(
        spec: &SinkSpec,
        reserved: Arc<ReservedNames>,
        connections: &redis_conn::Connections,
    ) -> Result<Sink, SinkError> {
        if let SinkSpecKind::Webhook(w) = &spec.kind {
            return Ok(Sink::Webhook(WebhookSink::new(w, spec.label())?));
        }
        let conn = connections
            .shared(&spec.connection)
            .await
            .map_err(|source| SinkError::Redis {
                sink: spec.label(),
                source,
            })?;
        Ok(Sink::Redis(RedisSink {
            spec: spec.clone(),
            label: spec.label(),
            conn,
            reserved,
        }))
    }

    /// A sink that only prints what `spec` would write.
    pub fn dry_run(rule: &str, spec: &SinkSpec, reserved: Arc<ReservedNames>) -> Sink {
        Sink::DryRun {
            rule: rule.to_string(),
            spec: Box::new(spec.clone()),
            label: spec.label(),
            reserved,
        }
    }

    /// `stream processed_stream`, for logs and dead letters.
    pub fn label(&self) -> &str {
        match self {
            Sink::Redis(s) => &s.label,
            Sink::Webhook(s) => s.label(),
            Sink::DryRun { label, .. } => label,
        }
    }

    /// Deliver a batch; one result per message, in order.
    pub async fn send(&mut self, batch: &[&Message]) -> Vec<Result<(), SinkError>> {
        match self {
            Sink::Redis(s) => s.send(batch).await,
            Sink::Webhook(s) => s.send(batch).await,
            Sink::DryRun {
                rule,
                spec,
                label,
                reserved,
            } => {
                let reserved = reserved.get();
                batch
                    .iter()
                    .map(|msg| {
                        let mut args = Sink::preview(spec, msg, &reserved)?;
                        // A rendered webhook URL may hold a token; a payload, control characters.
                        if let (SinkSpecKind::Webhook(_), Some(url)) = (&spec.kind, args.get_mut(1)) {
                            *url = crate::mask::url(&String::from_utf8_lossy(url)).into_bytes();
                        }
                        println!(
                            "dry-run rule={rule} {label}: {}",
                            crate::mask::escape(&shell_words(&args))
                        );
                        Ok(())
                    })
                    .collect()
            }
        }
    }

    /// What the sink would write for `msg`, as a Redis command line (for `--dry-run` and
    /// `redis-router test`).
    ///
    /// # Errors
    /// When the message cannot be rendered for this sink.
    pub fn preview(spec: &SinkSpec, msg: &Message, reserved: &Reserved) -> Result<Vec<Vec<u8>>, SinkError> {
        let err = |source| SinkError::Render {
            sink: spec.label(),
            source,
        };
        if let SinkSpecKind::Webhook(w) = &spec.kind {
            let (url, body) = WebhookSink::render(w, msg).map_err(err)?;
            return Ok(vec![w.method.clone().into_bytes(), url.into_bytes(), body]);
        }
        let cmd = render(spec, msg, reserved).map_err(err)?;
        Ok(cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                _ => None,
            })
            .collect())
    }
}

/// Command arguments as one line, each quoted as a POSIX shell (and redis-cli) takes it back.
pub fn shell_words(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| {
            let quoted = match shlex::bytes::try_quote(a) {
                Ok(q) => q.into_owned(),
                // No shell word holds a NUL byte: shown as `\0` in the quoted rest.
                Err(_) => {
                    let shown: Vec<u8> = a
                        .iter()
                        .flat_map(|&b| if b == 0 { b"\\0".to_vec() } else { vec![b] })
                        .collect();
                    shlex::bytes::try_quote(&shown).map(|q| q.into_owned()).unwrap_or(shown)
                }
            };
            String::from_utf8_lossy(&quoted).into_owned()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key or channel name from its template. A name with a part that comes from the message
/// (a payload path, the source's key, a field) is what a publisher chooses: it may not be empty,
/// hold a control character, or fall in the router's own key space ([`Reserved`]); such a
/// message is refused (and dead-lettered with the reason), never written there. A name written
/// in full in the rule file is the operator's choice and is not checked.
///
/// # Errors
/// [`EvalError`] when the template cannot be rendered or the name is refused.
pub(crate) fn render_name(template: &Template, msg: &Message, reserved: &Reserved) -> Result<String, EvalError> {
    if let Some(literal) = template.as_literal() {
        return Ok(literal.to_string());
    }
    let name = template.render_string(msg, Missing::Error)?;
    check_name(name, reserved)
}

/// `name`, unless `reserved` refuses it.
///
/// # Errors
/// [`EvalError::Refused`] with the reason.
pub(crate) fn check_name(name: String, reserved: &Reserved) -> Result<String, EvalError> {
    match reserved.refuse(&name) {
        Some(reason) => Err(EvalError::Refused { name, reason }),
        None => Ok(name),
    }
}

/// The one command that delivers `msg` to the sink.
fn render(spec: &SinkSpec, msg: &Message, reserved: &Reserved) -> Result<Cmd, EvalError> {
    let prefix = &spec.connection;
    match &spec.kind {
        SinkSpecKind::Publish { channel, body, sharded } => publish::render(
            prefix,
            render_name(channel, msg, reserved)?,
            body.as_ref(),
            *sharded,
            msg,
        ),
        SinkSpecKind::Stream { stream, maxlen, fields } => stream::render(
            prefix,
            render_name(stream, msg, reserved)?,
            *maxlen,
            fields.as_deref(),
            msg,
        ),
        SinkSpecKind::Queue { queue, body, laravel } => {
            let name = render_name(queue, msg, reserved)?;
            if let Some(l) = laravel {
                // Laravel's key `queues:NAME` must stay out of the router's key space too.
                check_name(crate::laravel::queue_key(&name, l.hash_tag), reserved)?;
            }
            queue::render(prefix, &name, body.as_ref(), laravel.as_ref(), msg)
        }
        SinkSpecKind::Webhook(_) => Err(EvalError::Query {
            path: String::new(),
            reason: "a webhook is not a Redis command".into(),
        }),
    }
}

/// A sink that writes to Redis.
pub struct RedisSink {
    spec: SinkSpec,
    label: String,
    conn: Conn,
    reserved: Arc<ReservedNames>,
}

impl RedisSink {
    async fn send(&mut self, batch: &[&Message]) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Option<Result<(), SinkError>>> = Vec::with_capacity(batch.len());
        let mut pipe = redis::pipe();
        let mut sent = 0;
        let reserved = self.reserved.get();
        for msg in batch {
            match render(&self.spec, msg, &reserved) {
                Ok(cmd) => {
                    pipe.add_command(cmd);
                    sent += 1;
                    results.push(None);
                }
                Err(source) => results.push(Some(Err(SinkError::Render {
                    sink: self.label.clone(),
                    source,
                }))),
            }
        }
        if sent == 0 {
            return results.into_iter().flatten().collect();
        }
        let replies: redis::RedisResult<Vec<redis::RedisResult<Value>>> =
            pipe.ignore_errors().query_async(&mut self.conn).await;
        match replies {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                results
                    .into_iter()
                    .map(|r| match r {
                        Some(done) => done,
                        None => match replies.next() {
                            Some(Ok(_)) => Ok(()),
                            Some(Err(source)) => Err(SinkError::Redis {
                                sink: self.label.clone(),
                                source,
                            }),
                            None => Err(SinkError::Redis {
                                sink: self.label.clone(),
                                source: redis::RedisError::from(std::io::Error::other("pipeline reply too short")),
                            }),
                        },
                    })
                    .collect()
            }
            Err(e) => results
                .into_iter()
                .map(|r| match r {
                    Some(done) => done,
                    None => Err(SinkError::Redis {
                        sink: self.label.clone(),
                        source: clone_error(&e),
                    }),
                })
                .collect(),
        }
    }
}

/// redis::RedisError is not Clone; keep the kind and text for each message it failed.
fn clone_error(e: &redis::RedisError) -> redis::RedisError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            e.to_string(),
        ))
    } else {
        redis::RedisError::from((redis::ErrorKind::Client, "pipeline failed", e.to_string()))
    }
}

#[cfg(test)]
mod shell_words_tests {
    use super::shell_words;

    #[test]
    fn quotes_what_a_shell_would_split_or_expand() {
        let args: Vec<Vec<u8>> = [&b"XADD"[..], b"out", b"*", b"it's", b"a b", b"", b"x\0y"]
            .iter()
            .map(|a| a.to_vec())
            .collect();
        assert_eq!(shell_words(&args), r#"XADD out '*' "it's" 'a b' '' "x\\0y""#);
    }
}
