//! `queue` sources: a Redis list read reliably (at least once).
//!
//! Each element is moved with BLMOVE into a processing list owned by this consumer
//! (`<list>:processing:<consumer>`), and removed from it (LREM) only once the rule is done with
//! it. A router that crashes leaves its elements there; the next start with the same consumer
//! name delivers them first. A dropped BLMOVE can therefore never lose an element, unlike a
//! BLPOP raced against shutdown.
//!
//! With `format: laravel` the list is Laravel's `queues:<name>` (connection prefix included).
//!
//! On a cluster the processing list, heartbeat keys and consumer set are named
//! `{<list>}:processing:<consumer>` and so on (unless the list has a hash tag of its own), so
//! that they share the list's slot: BLMOVE and the recovery script need that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::Value;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use super::{Budget, Liveness, SourceError, bulk, keep_alive};
use crate::config::{ConnectionSpec, QueueFormat, SourceSpec, SourceSpecKind};
use crate::keys;
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn::{self, Conn};
use crate::stats::RuleStats;

/// Elements taken per batch: one blocking move, then up to this many more without waiting.
const BATCH: usize = 100;
/// How often a consumer refreshes its heartbeat and looks for dead consumers.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A consumer whose heartbeat is older than this is dead: its processing list goes back to the
/// queue. Several heartbeats long, so a busy but living consumer is not taken for dead.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Give a dead consumer's elements back to the queue, atomically and only if its heartbeat is
/// still missing: from the tail of its processing list to the head of the queue, so they keep
/// their order and are taken next. KEYS: processing list, queue, consumer set, heartbeat key;
/// ARGV: the consumer. Returns how many were moved, or -1 if the consumer is alive after all.
const RECOVER: &str = r"
if redis.call('exists', KEYS[4]) == 1 then return -1 end
local n = 0
while redis.call('lmove', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
redis.call('srem', KEYS[3], ARGV[1])
return n
";

/// A list source.
pub struct ListSource {
    conn: Conn,
    connection: Arc<ConnectionSpec>,
    /// The list as Redis holds it.
    key: String,
    /// The processing list as Redis holds it.
    processing: String,
    /// The list as the rule names it (`queues:<name>` for Laravel).
    name: String,
    format: QueueFormat,
    block: Duration,
    /// Whether elements a previous run left in the processing list may remain: they are
    /// delivered first, read a batch at a time from its head.
    recovering: bool,
    /// Elements taken beyond the budget of the batch handed out (in the processing list), with
    /// their costs: the next batches, before anything is read.
    held: VecDeque<(usize, Message)>,
    /// Bytes a batch may hold.
    budget: Budget,
    /// Average cost of an element of the last read: the next read takes as many as fit.
    average: usize,
    rule: Arc<str>,
    stats: Arc<RuleStats>,
    /// Refreshes this consumer's heartbeat and recovers dead consumers' elements, on its own
    /// timer for as long as the source lives (see [`Heartbeat`]); aborted when it is dropped.
    _heartbeat: AbortOnDropHandle<()>,
}

/// This consumer's liveness, kept apart from its work: a consumer whose sink takes longer than
/// the heartbeat's TTL is still alive, and must not see its processing list given away (the
/// others would deliver its jobs a second time). So the heartbeat runs on a task of its own,
/// on the shared connection (the reading one blocks in BLMOVE), every [`HEARTBEAT_EVERY`].
struct Heartbeat {
    conn: Conn,
    connection: Arc<ConnectionSpec>,
    /// The list as Redis holds it.
    key: String,
    /// The list as the rule names it, for logs.
    name: String,
    /// This consumer's name.
    consumer: String,
    /// The set of consumers of this queue, for finding dead ones.
    consumers_key: String,
    /// Where the queue's depth (LLEN, sampled with each beat) goes.
    stats: Arc<RuleStats>,
}

impl ListSource {
    /// Connect and pick up what a previous run left in the processing list.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn open(
        spec: &SourceSpec,
        rule: Arc<str>,
        stats: Arc<RuleStats>,
        shared: super::Shared<'_>,
        budget: Budget,
    ) -> Result<ListSource, SourceError> {
        let (
            SourceSpecKind::Queue {
                format,
                block,
                consumer,
                ..
            },
            Some(name),
        ) = (&spec.kind, spec.kind.list_key())
        else {
            return Err(SourceError::Protocol {
                op: "BLMOVE",
                key: String::new(),
                detail: "not a queue source".into(),
            });
        };
        let consumer = consumer.clone().unwrap_or_else(|| shared.me.to_string());
        let key = redis_conn::prefixed(&spec.connection, &name);
        let processing = processing_key(&spec.connection, &key, &consumer);
        let mut conn = redis_conn::manager(&spec.connection, *block)
            .await
            .map_err(|source| SourceError::Redis {
                op: "connect",
                key: name.clone(),
                source,
            })?;
        let left: usize = redis::cmd("LLEN")
            .arg(&processing)
            .query_async(&mut conn)
            .await
            .map_err(SourceError::redis("LLEN", &processing))?;
        if left > 0 {
            info!(queue = %name, count = left, "Recovering elements a previous run left in its processing list.");
        }
        let side = shared
            .connections
            .shared(&spec.connection)
            .await
            .map_err(|source| SourceError::Redis {
                op: "connect",
                key: name.clone(),
                source,
            })?;
        let mut heartbeat = Heartbeat {
            conn: side,
            connection: spec.connection.clone(),
            consumers_key: redis_conn::companion(&spec.connection, &key, keys::CONSUMERS),
            key: key.clone(),
            name: name.clone(),
            consumer,
            stats: stats.clone(),
        };
        // The first beat before reading: a consumer that reads is always listed and alive.
        heartbeat.refresh().await?;
        Ok(ListSource {
            conn,
            connection: spec.connection.clone(),
            key,
            processing,
            name,
            format: *format,
            block: *block,
            recovering: left > 0,
            held: VecDeque::new(),
            budget,
            average: budget.batch_bytes / BATCH,
            rule,
            stats,
            // A beat that fails is tried again at the next tick: the TTL allows several to fail
            // before anyone takes this consumer for dead.
            _heartbeat: keep_alive(HEARTBEAT_EVERY, heartbeat),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> SourceError + '_ {
        SourceError::redis(op, &self.name)
    }

    /// How many elements to take in all, `first` included: as many as fit the budget at the
    /// larger of `first`'s cost and the last read's average.
    fn count_after(&self, first: &[u8]) -> usize {
        self.budget.count(self.budget.cost_of(first).max(self.average), BATCH)
    }

    /// The next batch, possibly empty when the blocking move timed out.
    ///
    /// # Cancel safety
    /// Cancel safe: a moved element is in the processing list, delivered at the next start.
    pub async fn recv(&mut self) -> Result<Vec<Message>, SourceError> {
        if !self.held.is_empty() {
            return Ok(self.budget.take(&mut self.held));
        }
        // How many to take is judged by the first element (and the last read's average), so that
        // a queue of large jobs is taken a few at a time, not a hundred at once.
        let mut elements: Vec<Vec<u8>> = Vec::new();
        if self.recovering {
            // Everything handed out before was acknowledged (removed), so what is left of the
            // previous run starts at the head.
            let head: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&self.processing)
                .arg(0)
                .arg(0)
                .query_async(&mut self.conn)
                .await
                .map_err(self.err("LRANGE"))?;
            if let Some(first) = head.into_iter().next() {
                let count = self.count_after(&first);
                elements.push(first);
                if count > 1 {
                    let rest: Vec<Vec<u8>> = redis::cmd("LRANGE")
                        .arg(&self.processing)
                        .arg(1)
                        .arg(count - 1)
                        .query_async(&mut self.conn)
                        .await
                        .map_err(self.err("LRANGE"))?;
                    self.recovering = rest.len() == count - 1;
                    elements.extend(rest);
                }
            } else {
                self.recovering = false;
            }
        }
        if elements.is_empty() {
            let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
                .arg(&self.key)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(self.block.as_secs_f64())
                .query_async(&mut self.conn)
                .await
                .map_err(self.err("BLMOVE"))?;
            let Some(first) = first else {
                return Ok(Vec::new());
            };
            let count = self.count_after(&first);
            elements.push(first);
            if count > 1 {
                // More may be waiting: take them in one round trip instead of one each.
                let mut pipe = redis::pipe();
                for _ in 1..count {
                    pipe.cmd("LMOVE")
                        .arg(&self.key)
                        .arg(&self.processing)
                        .arg("LEFT")
                        .arg("RIGHT");
                }
                let more: Vec<Value> = pipe.query_async(&mut self.conn).await.map_err(self.err("LMOVE"))?;
                elements.extend(more.into_iter().filter_map(bulk));
            }
        }
        RuleStats::add(&self.stats.received, elements.len() as u64);
        let key = redis_conn::unprefixed(&self.connection, &self.key).to_string();
        let n = elements.len();
        let mut total = 0usize;
        for element in elements {
            let meta = Meta {
                rule: self.rule.clone(),
                source: SourceKind::Queue,
                key: key.clone(),
                pattern: None,
                id: None,
                received: SystemTime::now(),
                deliveries: 1,
                fields: Vec::new(),
                problem: None,
            };
            let mut msg = Message::new(Body::Bytes(element), meta);
            // Afford it before anything parses it (a Laravel job is parsed here).
            let cost = self.budget.admit(&mut msg);
            if self.format == QueueFormat::Laravel && msg.meta.problem.is_none() {
                msg = match msg.into_parts() {
                    (Body::Bytes(element), meta) => laravel_message(element, meta),
                    (body, meta) => Message::new(body, meta),
                };
            }
            total = total.saturating_add(cost);
            self.held.push_back((cost, msg));
        }
        if let Some(average) = total.checked_div(n) {
            self.average = average;
        }
        Ok(self.budget.take(&mut self.held))
    }

    /// Remove a finished batch from the processing list.
    ///
    /// # Errors
    /// When LREM fails; the caller retries.
    pub async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for msg in batch {
            pipe.cmd("LREM").arg(&self.processing).arg(1).arg(msg.raw()).ignore();
        }
        let _: () = pipe.query_async(&mut self.conn).await.map_err(self.err("LREM"))?;
        Ok(())
    }
}

impl Heartbeat {
    fn heartbeat_key(&self, consumer: &str) -> String {
        redis_conn::companion(&self.connection, &self.key, &format!("{}{consumer}", keys::HEARTBEAT))
    }

    /// Refresh this consumer's heartbeat, and give the elements of consumers whose heartbeat
    /// has expired (a router that crashed and does not come back) back to the queue.
    async fn refresh(&mut self) -> Result<(), SourceError> {
        let (_, _, members, depth): ((), (), Vec<String>, i64) = redis::pipe()
            .cmd("SET")
            .arg(self.heartbeat_key(&self.consumer))
            .arg(1)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .cmd("SADD")
            .arg(&self.consumers_key)
            .arg(&self.consumer)
            .cmd("SMEMBERS")
            .arg(&self.consumers_key)
            .cmd("LLEN")
            .arg(&self.key)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("heartbeat"))?;
        self.stats
            .queue_depth
            .store(depth, std::sync::atomic::Ordering::Relaxed);
        for other in members.into_iter().filter(|c| *c != self.consumer) {
            let moved: i64 = redis::cmd("EVAL")
                .arg(RECOVER)
                .arg(4)
                .arg(processing_key(&self.connection, &self.key, &other))
                .arg(&self.key)
                .arg(&self.consumers_key)
                .arg(self.heartbeat_key(&other))
                .arg(&other)
                .query_async(&mut self.conn)
                .await
                .map_err(self.err("recover"))?;
            if moved > 0 {
                info!(queue = %self.name, consumer = %other, count = moved, "Gave a dead consumer's elements back to the queue.");
            }
        }
        Ok(())
    }

    fn err(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> SourceError + '_ {
        SourceError::redis(op, &self.name)
    }
}

impl Liveness for Heartbeat {
    const WHAT: &'static str = "Heartbeat";

    fn name(&self) -> &str {
        &self.name
    }

    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.refresh()
    }
}

/// The processing list of `consumer` of list `key` (prefixed): `<key>:processing:<consumer>`,
/// in the list's slot on a cluster (BLMOVE and the recovery script use both).
pub fn processing_key(conn: &ConnectionSpec, key: &str, consumer: &str) -> String {
    redis_conn::companion(conn, key, &format!("{}{consumer}", keys::PROCESSING))
}

/// A Laravel job as a message: the payload bytes unchanged (a routed job is pushed as it came),
/// and a JSON view of the job for filters and templates.
///
/// The view: `uuid`, `displayName`, `job`, `commandName`, `data` (the job's data when the
/// command holds only arrays and scalars, else null) and `shortName` (the class without its
/// namespace, so a filter can say `@.shortName == 'SendInvoice'` without escaping backslashes).
/// A payload that is not a Laravel job is dead-lettered with the reason.
pub fn laravel_message(element: Vec<u8>, mut meta: Meta) -> Message {
    match crate::laravel::parse_job(&element) {
        Ok(job) => {
            let class = job
                .display_name
                .clone()
                .or_else(|| job.command_name.clone())
                .unwrap_or_else(|| job.job.split('@').next().unwrap_or_default().to_string());
            let short = class.rsplit('\\').next().unwrap_or_default().to_string();
            let view = serde_json::json!({
                "uuid": job.uuid,
                "displayName": job.display_name,
                "job": job.job,
                "commandName": job.command_name,
                "shortName": short,
                "data": job.data,
            });
            Message::with_json_view(Body::Bytes(element), meta, view)
        }
        Err(e) => {
            meta.problem = Some(format!("not a Laravel job: {e}"));
            Message::new(Body::Bytes(element), meta)
        }
    }
}
