//! `stream` sources: XREADGROUP through a consumer group (at least once), or XREAD tailing.
//!
//! Group mode creates the group (MKSTREAM) when absent, first replays this consumer's own
//! pending entries (what a previous run read but did not acknowledge), then reads new entries
//! in batches with a short BLOCK. A batch is XACKed only when the rule says it is done. A group
//! that vanishes (Redis restarted without persistence, `XGROUP DESTROY`) is created again.
//!
//! Tail mode keeps the last id it saw, so nothing between two reads is skipped; `start:
//! newest` is resolved to the stream's last id once, at open (reading from `$` on every call
//! would skip what arrives between calls).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::Value;
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::{Budget, Liveness, SourceError, bulk, keep_alive};
use crate::config::{ConnectionSpec, SourceSpec, SourceSpecKind};
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn::{self, Conn};
use crate::stats::RuleStats;

/// A read issued ahead of time; see [`StreamSource::read_ahead`].
type PendingRead = std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<Value>> + Send>>;

/// Where a group reader is.
enum Phase {
    /// Replaying own pending entries after this id.
    Pending(String),
    /// Reading new entries (`>`).
    New,
}

enum Mode {
    Group {
        group: String,
        consumer: String,
        phase: Phase,
    },
    Tail {
        last_id: String,
    },
}

/// A stream source.
pub struct StreamSource {
    conn: Conn,
    connection: Arc<ConnectionSpec>,
    /// The key as Redis holds it (prefixed).
    key: String,
    /// The key as the rule names it.
    name: String,
    mode: Mode,
    batch: usize,
    block: Duration,
    body_field: Option<String>,
    rule: Arc<str>,
    stats: Arc<RuleStats>,
    start_id: String,
    claim_idle: Duration,
    max_deliveries: u64,
    /// When to look for other consumers' stale entries next.
    next_claim: Instant,
    /// XAUTOCLAIM cursor, `0-0` between sweeps.
    claim_cursor: String,
    /// When to sample the group's lag and pending count next.
    next_sample: Instant,
    /// The shared connection ([`redis_conn::Connections`]) for XACK and XINFO: Redis runs one
    /// client's commands in order, so on the reading connection they would wait behind a
    /// blocked XREADGROUP.
    ack_conn: Conn,
    /// The next read, issued as soon as a batch was handed out (read-ahead), so that Redis
    /// answers it while the rule delivers the batch. Kept here until taken, so a dropped
    /// `recv` loses nothing.
    ahead: Option<PendingRead>,
    /// XACKs sent and not yet confirmed; each task gives back the ids it failed to acknowledge.
    acks: VecDeque<AckTask>,
    /// Ids whose XACK failed, sent again with the next acknowledgement.
    unacked: Vec<String>,
    /// Group mode: keeps this consumer's pending entries fresh (see [`Hold`]) for as long as the
    /// source lives; aborted when it is dropped.
    _hold: Option<AbortOnDropHandle<()>>,
    /// Bytes a batch may hold.
    budget: Budget,
    /// Entries read beyond the budget of the batch handed out (pending for this consumer),
    /// with their costs: the next batches, before anything is read.
    held: VecDeque<(usize, Message)>,
    /// Average cost of an entry of the last read: the next read asks for as many as fit.
    average: usize,
}

/// A group consumer's hold on its pending entries, kept apart from its work.
///
/// Other consumers take over entries idle longer than `claim_idle` (XAUTOCLAIM): that is how a
/// dead consumer's batch is recovered. But a living consumer whose sinks are slow (a webhook
/// taking longer than `claim_idle`, retries against an endpoint that is down) also leaves its
/// entries idle, and so does the batch it read ahead: taken over, they would be delivered twice.
/// So, on a task of its own, every third of `claim_idle`, the consumer resets the idle time of
/// its own pending entries with `XCLAIM … JUSTID` (which does not count a delivery). Only
/// entries idle for half a period are touched, and XCLAIM checks that idle time again, so an
/// entry another consumer has just taken (idle 0) is never taken back.
struct Hold {
    conn: Conn,
    key: String,
    name: String,
    group: String,
    consumer: String,
    every: Duration,
    /// Most entries touched per period: this consumer holds at most two batches and the ids of
    /// failed acknowledgements.
    count: usize,
}

impl Liveness for Hold {
    const WHAT: &'static str = "Refreshing the idle time of pending entries";

    fn name(&self) -> &str {
        &self.name
    }

    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.touch()
    }
}

impl Hold {
    /// Reset the idle time of this consumer's entries idle for half a period or more.
    async fn touch(&mut self) -> Result<(), SourceError> {
        let min_idle = (self.every / 2).as_millis() as u64;
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg("IDLE")
            .arg(min_idle)
            .arg("-")
            .arg("+")
            .arg(self.count)
            .arg(&self.consumer)
            .query_async(&mut self.conn)
            .await
            .map_err(SourceError::redis("XPENDING", &self.name))?;
        let pending = parse_pending(reply);
        if pending.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.key).arg(&self.group).arg(&self.consumer).arg(min_idle);
        for (id, _) in &pending {
            cmd.arg(id);
        }
        cmd.arg("JUSTID");
        let _: Value = cmd
            .query_async(&mut self.conn)
            .await
            .map_err(SourceError::redis("XCLAIM", &self.name))?;
        debug!(stream = %self.name, count = pending.len(), "Refreshed the idle time of entries still in flight.");
        Ok(())
    }
}

/// An XACK on its way; on failure it gives back the ids and the error.
type AckTask = JoinHandle<Result<(), (Vec<String>, redis::RedisError)>>;

/// Shortest period of [`Hold`], for very short `claim_idle`s.
const MIN_HOLD_PERIOD: Duration = Duration::from_millis(50);

/// XACKs in flight at once; one more waits for the oldest (each covers a whole batch).
const MAX_ACKS_IN_FLIGHT: usize = 4;

impl StreamSource {
    /// Connect, create the group if needed, and position the reader.
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the group.
    pub async fn open(
        spec: &SourceSpec,
        rule: Arc<str>,
        stats: Arc<RuleStats>,
        shared: super::Shared<'_>,
        budget: Budget,
    ) -> Result<StreamSource, SourceError> {
        let SourceSpecKind::Stream {
            stream,
            group,
            consumer,
            start,
            batch,
            block,
            body_field,
            claim_idle,
            max_deliveries,
        } = &spec.kind
        else {
            return Err(SourceError::Protocol {
                op: "XREAD",
                key: String::new(),
                detail: "not a stream source".into(),
            });
        };
        let key = redis_conn::prefixed(&spec.connection, stream);
        let connect_err = |source| SourceError::Redis {
            op: "connect",
            key: stream.clone(),
            source,
        };
        let conn = redis_conn::manager(&spec.connection, *block)
            .await
            .map_err(connect_err)?;
        let ack_conn = shared.connections.shared(&spec.connection).await.map_err(connect_err)?;
        let mode = match group {
            Some(group) => Mode::Group {
                group: group.clone(),
                consumer: consumer.clone().unwrap_or_else(|| shared.me.to_string()),
                phase: Phase::Pending("0".into()),
            },
            None => Mode::Tail {
                last_id: start.as_id().to_string(),
            },
        };
        let mut source = StreamSource {
            conn,
            connection: spec.connection.clone(),
            key,
            name: stream.clone(),
            mode,
            batch: *batch,
            block: *block,
            body_field: body_field.clone(),
            rule,
            stats,
            start_id: start.as_id().to_string(),
            claim_idle: *claim_idle,
            max_deliveries: *max_deliveries,
            next_claim: Instant::now(),
            claim_cursor: "0-0".into(),
            next_sample: Instant::now(),
            ack_conn,
            ahead: None,
            acks: VecDeque::new(),
            unacked: Vec::new(),
            _hold: None,
            budget,
            held: VecDeque::new(),
            average: budget.batch_bytes / (*batch).max(1),
        };
        match &source.mode {
            Mode::Group { group, consumer, .. } => {
                let hold = Hold {
                    conn: source.ack_conn.clone(),
                    key: source.key.clone(),
                    name: source.name.clone(),
                    group: group.clone(),
                    consumer: consumer.clone(),
                    every: (*claim_idle / 3).max(MIN_HOLD_PERIOD),
                    count: 4 * *batch + 100,
                };
                source.ensure_group().await?;
                source._hold = Some(keep_alive(hold.every, hold));
            }
            Mode::Tail { last_id } if last_id == "$" => {
                let last = source.last_id().await?;
                source.mode = Mode::Tail { last_id: last };
            }
            Mode::Tail { .. } => {}
        }
        Ok(source)
    }

    fn err(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> SourceError + '_ {
        SourceError::redis(op, &self.name)
    }

    /// XGROUP CREATE … MKSTREAM, tolerating BUSYGROUP.
    async fn ensure_group(&mut self) -> Result<(), SourceError> {
        let Mode::Group { group, .. } = &self.mode else {
            return Ok(());
        };
        let result: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(group)
            .arg(&self.start_id)
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match result {
            Ok(_) => {
                info!(stream = %self.name, group = %group, start = %self.start_id, "Created consumer group.");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.err("XGROUP CREATE")(e)),
        }
    }

    /// The id of the stream's last entry, `0-0` when empty or absent.
    async fn last_id(&mut self) -> Result<String, SourceError> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XREVRANGE"))?;
        let entries = parse_entries(reply).map_err(|detail| self.protocol("XREVRANGE", detail))?;
        Ok(entries
            .into_iter()
            .next()
            .map(|(id, _)| id)
            .unwrap_or_else(|| "0-0".into()))
    }

    fn protocol(&self, op: &'static str, detail: String) -> SourceError {
        SourceError::Protocol {
            op,
            key: self.name.clone(),
            detail,
        }
    }

    /// The next batch, possibly empty when BLOCK timed out.
    ///
    /// # Cancel safety
    /// Cancel safe. In group mode entries delivered to a dropped read are in this consumer's
    /// pending list and replayed at the next start; in tail mode the position advances only
    /// when a reply is taken.
    pub async fn recv(&mut self) -> Result<Vec<Message>, SourceError> {
        if !self.held.is_empty() {
            return Ok(self.budget.take(&mut self.held));
        }
        match &self.mode {
            Mode::Group {
                phase: Phase::Pending(_),
                ..
            } => self.replay_own().await,
            Mode::Group { .. } => {
                if Instant::now() >= self.next_claim {
                    let claimed = self.autoclaim().await?;
                    if !claimed.is_empty() {
                        return Ok(claimed);
                    }
                }
                self.read_new().await
            }
            Mode::Tail { .. } => self.read_new().await,
        }
    }

    /// Own pending entries (what a previous run read and did not acknowledge), a batch at a
    /// time: XPENDING for their ids and delivery counts, then XCLAIM to take them again, which
    /// counts the delivery, so an entry that crashes the router every time reaches
    /// `max_deliveries` instead of looping for ever.
    async fn replay_own(&mut self) -> Result<Vec<Message>, SourceError> {
        let Mode::Group {
            group,
            consumer,
            phase: Phase::Pending(after),
        } = &self.mode
        else {
            return Ok(Vec::new());
        };
        let (group, consumer, after) = (group.clone(), consumer.clone(), after.clone());
        // Acknowledgements still in flight must land first, or their entries would look
        // unprocessed and be delivered again.
        self.settle_acks().await?;
        let pending = match self.pending(&group, &consumer, &after).await {
            Ok(pending) => pending,
            // The group vanished with what it had pending (Redis restarted without
            // persistence): create it again and read new entries.
            Err(SourceError::Redis { source, .. }) if source.code() == Some("NOGROUP") => {
                info!(stream = %self.name, "Consumer group vanished; creating it again.");
                self.ensure_group().await?;
                if let Mode::Group { phase, .. } = &mut self.mode {
                    *phase = Phase::New;
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let Some(last) = pending.last().map(|p| p.0.clone()) else {
            debug!(stream = %self.name, "Own pending entries replayed; reading new entries.");
            if let Mode::Group { phase, .. } = &mut self.mode {
                *phase = Phase::New;
            }
            return Ok(Vec::new());
        };
        if let Mode::Group {
            phase: Phase::Pending(after),
            ..
        } = &mut self.mode
        {
            *after = format!("({last}");
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.key).arg(&group).arg(&consumer).arg(0);
        for (id, _) in &pending {
            cmd.arg(id);
        }
        let reply: Value = cmd.query_async(&mut self.conn).await.map_err(self.err("XCLAIM"))?;
        let entries = parse_entries(reply).map_err(|d| self.protocol("XCLAIM", d))?;
        let counts: HashMap<String, u64> = pending.into_iter().map(|(id, n)| (id, n + 1)).collect();
        self.make_batch(entries, &counts, &[]).await
    }

    /// Entries other consumers left pending longer than `claim_idle`, taken over with
    /// XAUTOCLAIM (a dead router's in-flight batch). Runs every half `claim_idle`.
    async fn autoclaim(&mut self) -> Result<Vec<Message>, SourceError> {
        let Mode::Group { group, consumer, .. } = &self.mode else {
            return Ok(Vec::new());
        };
        let (group, consumer) = (group.clone(), consumer.clone());
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&group)
            .arg(&consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.count())
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XAUTOCLAIM"))?;
        let Value::Array(mut parts) = reply else {
            return Err(self.protocol("XAUTOCLAIM", "reply is not an array".into()));
        };
        let deleted: Vec<String> = if parts.len() >= 3 {
            match parts.swap_remove(2) {
                Value::Array(ids) => ids
                    .into_iter()
                    .filter_map(bulk)
                    .filter_map(|b| String::from_utf8(b).ok())
                    .collect(),
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let entries = match parts.len() {
            2 | 3 => parse_entries(parts.swap_remove(1)).map_err(|d| self.protocol("XAUTOCLAIM", d))?,
            _ => return Err(self.protocol("XAUTOCLAIM", format!("{} elements", parts.len()))),
        };
        let next = parts
            .pop()
            .and_then(bulk)
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "0-0".into());
        if next == "0-0" {
            self.next_claim = Instant::now() + claim_interval(self.claim_idle);
        }
        self.claim_cursor = next;
        if entries.is_empty() && deleted.is_empty() {
            return Ok(Vec::new());
        }
        info!(stream = %self.name, count = entries.len(), "Claimed entries another consumer left pending.");
        // The claim counted a delivery; read the counts to enforce max_deliveries.
        let counts = match (entries.first(), entries.last()) {
            (Some((first, _)), Some((last, _))) => {
                let (first, last) = (first.clone(), last.clone());
                self.pending_range(&group, &consumer, &first, &last).await?
            }
            _ => HashMap::new(),
        };
        self.make_batch(entries, &counts, &deleted).await
    }

    /// `XPENDING key group start + COUNT consumer`: (id, deliveries) of this consumer's entries.
    async fn pending(&mut self, group: &str, consumer: &str, start: &str) -> Result<Vec<(String, u64)>, SourceError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key).arg(group);
        cmd.arg(if start == "0" { "-" } else { start })
            .arg("+")
            .arg(self.count())
            .arg(consumer);
        let reply: Value = cmd.query_async(&mut self.conn).await.map_err(self.err("XPENDING"))?;
        Ok(parse_pending(reply))
    }

    async fn pending_range(
        &mut self,
        group: &str,
        consumer: &str,
        first: &str,
        last: &str,
    ) -> Result<HashMap<String, u64>, SourceError> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(group)
            .arg(first)
            .arg(last)
            .arg(self.batch)
            .arg(consumer)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XPENDING"))?;
        Ok(parse_pending(reply).into_iter().collect())
    }

    /// Sample the group's `lag` and `pending` (XINFO GROUPS) into the rule's gauges, at most
    /// every [`SAMPLE_INTERVAL`]; a failure here only skips the sample.
    async fn sample_group(&mut self) {
        let Mode::Group { group, .. } = &self.mode else { return };
        if Instant::now() < self.next_sample {
            return;
        }
        self.next_sample = Instant::now() + SAMPLE_INTERVAL;
        let group = group.clone();
        let Ok(Value::Array(groups)) = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.key)
            .query_async::<Value>(&mut self.ack_conn)
            .await
        else {
            return;
        };
        for g in groups {
            let pairs: Vec<(String, Value)> = match g {
                Value::Array(flat) => {
                    let mut it = flat.into_iter();
                    let mut out = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let Some(k) = bulk(k).and_then(|b| String::from_utf8(b).ok()) {
                            out.push((k, v));
                        }
                    }
                    out
                }
                Value::Map(map) => map
                    .into_iter()
                    .filter_map(|(k, v)| Some((bulk(k).and_then(|b| String::from_utf8(b).ok())?, v)))
                    .collect(),
                _ => continue,
            };
            let name = pairs.iter().find(|(k, _)| k == "name").and_then(|(_, v)| match v {
                Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_string),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            });
            if name.as_deref() != Some(group.as_str()) {
                continue;
            }
            for (k, v) in pairs {
                let n = match v {
                    Value::Int(n) => n,
                    _ => continue,
                };
                match k.as_str() {
                    "lag" => self.stats.stream_lag.store(n, std::sync::atomic::Ordering::Relaxed),
                    "pending" => self.stats.stream_pending.store(n, std::sync::atomic::Ordering::Relaxed),
                    _ => {}
                }
            }
        }
    }

    /// The command that reads new entries: XREADGROUP `>` (group) or XREAD after the last id.
    fn read_cmd(&self) -> redis::Cmd {
        let block_ms = self.block.as_millis() as u64;
        match &self.mode {
            Mode::Group { group, consumer, .. } => {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(self.count());
                cmd.arg("BLOCK").arg(block_ms).arg("STREAMS").arg(&self.key).arg(">");
                cmd
            }
            Mode::Tail { last_id } => {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT").arg(self.count()).arg("BLOCK").arg(block_ms);
                cmd.arg("STREAMS").arg(&self.key).arg(last_id);
                cmd
            }
        }
    }

    /// New entries: the reply of the read issued with the last acknowledgement when there is
    /// one (see [`StreamSource::ack`]), else a read now.
    async fn read_new(&mut self) -> Result<Vec<Message>, SourceError> {
        self.sample_group().await;
        let reply: redis::RedisResult<Value> = match self.ahead.as_mut() {
            Some(read) => {
                let reply = read.await;
                self.ahead = None;
                reply
            }
            None => self.read_cmd().query_async(&mut self.conn).await,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => {
                info!(stream = %self.name, "Consumer group vanished; creating it again.");
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => {
                // A read whose reply was lost with the connection may still have delivered
                // entries to this consumer: replay its own pending entries first once Redis
                // is back, instead of leaving them until another sweep claims them.
                // (Every earlier batch was acknowledged before this read began.)
                if let Mode::Group { phase, .. } = &mut self.mode {
                    *phase = Phase::Pending("0".into());
                }
                return Err(self.err("XREADGROUP")(e));
            }
        };
        let entries = match reply {
            Value::Nil => Vec::new(),
            Value::Array(mut streams) | Value::Set(mut streams) if !streams.is_empty() => {
                match streams.swap_remove(0) {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        parse_entries(pair.swap_remove(1)).map_err(|d| self.protocol("XREADGROUP", d))?
                    }
                    other => return Err(self.protocol("XREADGROUP", format!("stream reply {other:?}"))),
                }
            }
            Value::Map(mut streams) if !streams.is_empty() => {
                let (_, entries) = streams.swap_remove(0);
                parse_entries(entries).map_err(|d| self.protocol("XREADGROUP", d))?
            }
            Value::Array(_) | Value::Set(_) | Value::Map(_) => Vec::new(),
            other => return Err(self.protocol("XREADGROUP", format!("reply {other:?}"))),
        };
        if let (Some((last, _)), Mode::Tail { last_id }) = (entries.last(), &mut self.mode) {
            *last_id = last.clone();
        }
        let full = entries.len() >= self.count();
        let batch = self.make_batch(entries, &HashMap::new(), &[]).await?;
        if full {
            // A full batch means a backlog: read the next one while this one is delivered, so
            // that Redis answers the read while the sinks' pipelines are on their way (one
            // round trip per batch instead of two). The cost: a router killed now leaves two
            // batches pending instead of one (the second undelivered, so not a duplicate).
            self.read_ahead();
        }
        Ok(batch)
    }

    /// Messages from entries (delivery counts from `counts`, 1 when absent); entries deleted
    /// while pending are acknowledged and counted.
    async fn make_batch(
        &mut self,
        entries: Vec<Entry>,
        counts: &HashMap<String, u64>,
        deleted: &[String],
    ) -> Result<Vec<Message>, SourceError> {
        let mut vanished: Vec<String> = deleted.to_vec();
        let mut batch = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            match fields {
                Some(fields) => {
                    let deliveries = counts.get(&id).copied().unwrap_or(1);
                    batch.push(self.message(id, fields, deliveries));
                }
                None => vanished.push(id),
            }
        }
        if !vanished.is_empty() {
            // Deleted (XDEL, MAXLEN trimming) while pending: nothing left to deliver.
            RuleStats::add(&self.stats.deleted_while_pending, vanished.len() as u64);
            info!(stream = %self.name, count = vanished.len(), "Pending entries were deleted from the stream; acknowledging them.");
            self.xack(vanished.iter().map(String::as_str)).await?;
        }
        RuleStats::add(&self.stats.received, batch.len() as u64);
        if batch.is_empty() {
            return Ok(batch);
        }
        let (batch, average) = self.budget.split(batch, &mut self.held);
        self.average = average;
        Ok(batch)
    }

    /// Entries to ask for in one read: `batch`, fewer when entries are large (see
    /// [`Budget::count`]).
    fn count(&self) -> usize {
        self.budget.count(self.average, self.batch)
    }

    fn message(&self, id: String, fields: Vec<(Vec<u8>, Vec<u8>)>, deliveries: u64) -> Message {
        let mut meta = Meta {
            rule: self.rule.clone(),
            source: SourceKind::Stream,
            key: redis_conn::unprefixed(&self.connection, &self.key).to_string(),
            pattern: None,
            id: Some(id),
            received: SystemTime::now(),
            deliveries,
            fields: Vec::new(),
            problem: None,
        };
        let body = match &self.body_field {
            None => Body::Fields(fields),
            Some(name) => {
                let mut body = None;
                for (k, v) in fields.iter() {
                    if k.as_slice() == name.as_bytes() && body.is_none() {
                        body = Some(v.clone());
                    } else {
                        meta.fields.push((
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ));
                    }
                }
                match body {
                    Some(b) => Body::Field(b),
                    None => {
                        meta.problem = Some(format!("entry has no field `{name}` (body_field)"));
                        meta.fields.clear();
                        Body::Fields(fields)
                    }
                }
            }
        };
        if deliveries > self.max_deliveries && meta.problem.is_none() {
            meta.problem = Some(format!(
                "delivered {deliveries} times, more than max_deliveries ({})",
                self.max_deliveries
            ));
        }
        Message::new(body, meta)
    }

    async fn xack<'a>(&mut self, ids: impl Iterator<Item = &'a str>) -> Result<(), SourceError> {
        let Mode::Group { group, .. } = &self.mode else {
            return Ok(());
        };
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.key).arg(group);
        let mut any = false;
        for id in ids {
            cmd.arg(id);
            any = true;
        }
        if !any {
            return Ok(());
        }
        let _: Value = cmd.query_async(&mut self.conn).await.map_err(self.err("XACK"))?;
        Ok(())
    }

    /// Acknowledge a finished batch (group mode; nothing to do when tailing).
    ///
    /// The XACK is sent on its own task and not awaited: the rule goes on with the next batch
    /// while Redis applies it. An XACK that fails is sent again with the next batch's, and
    /// [`StreamSource::close`] and the replay of own pending entries wait for all of them, so
    /// an entry is never acknowledged before the rule is done with it, and a delivered entry
    /// is not replayed because its acknowledgement was still on the way.
    ///
    /// # Errors
    /// When waiting for an earlier XACK failed in a way that cannot be retried.
    pub async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.read_ahead();
        let Mode::Group { group, .. } = &self.mode else {
            return Ok(());
        };
        let group = group.clone();
        // Collect what earlier XACKs could not do; bound the number in flight.
        while let Some(front) = self.acks.front() {
            if !front.is_finished() && self.acks.len() < MAX_ACKS_IN_FLIGHT {
                break;
            }
            let Some(handle) = self.acks.pop_front() else { break };
            if let Ok(Err((ids, e))) = handle.await {
                warn!(stream = %self.name, error = %e, count = ids.len(), "XACK failed; sending it again.");
                self.unacked.extend(ids);
            }
        }
        let mut ids = std::mem::take(&mut self.unacked);
        ids.extend(batch.iter().filter_map(|m| m.meta.id.clone()));
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.key).arg(&group).arg(&ids);
        let mut conn = self.ack_conn.clone();
        self.acks.push_back(tokio::spawn(async move {
            match cmd.query_async::<Value>(&mut conn).await {
                Ok(_) => Ok(()),
                Err(e) => Err((ids, e)),
            }
        }));
        Ok(())
    }

    /// Issue the next read now, so that its round trip overlaps another: the delivery of a full
    /// batch (see `read_new`), or else the XACK of the batch just done (the read on the reading
    /// connection, the XACK on `ack_conn`).
    fn read_ahead(&mut self) {
        let reading_new = matches!(&self.mode, Mode::Tail { .. } | Mode::Group { phase: Phase::New, .. });
        // Entries held beyond the budget are the next batches: reading more would only add to
        // what is held.
        if reading_new && self.ahead.is_none() && self.held.is_empty() {
            let cmd = self.read_cmd();
            let mut conn = self.conn.clone();
            let mut read: PendingRead = Box::pin(async move { cmd.query_async(&mut conn).await });
            // One poll hands the command to the connection's task, which writes it at once; the
            // reply is awaited by the next `recv`, directly (a spawned task would add a wake-up
            // between the reply and the rule, which showed in the latency tail).
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(reply) = read.as_mut().poll(&mut cx) {
                // Answered at once (an error, typically): keep the answer, not the spent future.
                read = Box::pin(std::future::ready(reply));
            }
            self.ahead = Some(read);
        }
    }

    /// Wait for every XACK in flight and send again those that failed.
    ///
    /// # Errors
    /// When an XACK still fails; the ids are kept for the next try.
    async fn settle_acks(&mut self) -> Result<(), SourceError> {
        while let Some(handle) = self.acks.pop_front() {
            if let Ok(Err((ids, _))) = handle.await {
                self.unacked.extend(ids);
            }
        }
        if self.unacked.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.unacked);
        match self.xack(ids.iter().map(String::as_str)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.unacked = ids;
                Err(e)
            }
        }
    }

    /// Stop: wait for the acknowledgements in flight (a failure is logged; those entries stay
    /// pending and are delivered again at the next start) and drop the read-ahead, whose
    /// entries, if it took any, are pending for this consumer and replayed at the next start.
    pub async fn close(mut self) {
        self.ahead = None;
        if let Err(e) = self.settle_acks().await {
            warn!(stream = %self.name, error = %e, "Could not acknowledge the last entries; they will be delivered again.");
        }
    }
}

/// `XPENDING` extended form: `[[id, consumer, idle, deliveries], …]` → (id, deliveries).
fn parse_pending(v: Value) -> Vec<(String, u64)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| match item {
            Value::Array(mut fields) if fields.len() == 4 => {
                let count = match fields.pop() {
                    Some(Value::Int(n)) => n.max(0) as u64,
                    _ => 1,
                };
                let id = fields
                    .into_iter()
                    .next()
                    .and_then(bulk)
                    .and_then(|b| String::from_utf8(b).ok())?;
                Some((id, count))
            }
            _ => None,
        })
        .collect()
}

/// How often a group reader samples its lag and pending count for metrics.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// How often a group reader looks for entries to claim: half the idle time, within bounds.
fn claim_interval(claim_idle: Duration) -> Duration {
    (claim_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// An entry's id and its fields, `None` for an entry deleted while pending.
type Entry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

/// `[[id, [f, v, …]], …]` as entries.
fn parse_entries(v: Value) -> Result<Vec<Entry>, String> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("entries {other:?}")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err("entry is not an array".into());
        };
        if pair.len() != 2 {
            return Err(format!("entry has {} elements", pair.len()));
        }
        let fields = pair.pop().unwrap_or(Value::Nil);
        let id = pair
            .pop()
            .and_then(bulk)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("entry id is not a string")?;
        let fields = match fields {
            Value::Nil => None,
            Value::Array(flat) => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((bulk(k).unwrap_or_default(), bulk(v).unwrap_or_default()));
                }
                Some(pairs)
            }
            Value::Map(map) => Some(
                map.into_iter()
                    .map(|(k, v)| (bulk(k).unwrap_or_default(), bulk(v).unwrap_or_default()))
                    .collect(),
            ),
            other => return Err(format!("entry fields {other:?}")),
        };
        out.push((id, fields));
    }
    Ok(out)
}
