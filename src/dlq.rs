//! `redis-router dlq`: list dead letters, and replay them to the sink that failed.
//!
//! The dead-letter streams are found from the rule file (each rule's `dead_letter`, and its
//! sinks' own, on the rule's source connection). Replay rebuilds the message from the stored
//! payload, applies the rule's transform again, sends it to the sink named in the entry, and
//! deletes the entry (XDEL) once that sink took it. Entries that no sink failed (a payload that
//! is not JSON, a filter error) cannot be replayed to a sink; they are reported and kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::Value;

use crate::config::{ConnectionSpec, RuleSet, RuleSpec};
use crate::keys::ReservedNames;
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn::{self, Conn};
use crate::sink::Sink;

/// Entries read per XRANGE call.
const PAGE: usize = 1000;
/// Messages sent to a sink per call during replay.
const REPLAY_BATCH: usize = 100;

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis failed.
    #[error("{op} on `{key}` failed: {source}")]
    Redis {
        /// What was being done.
        op: &'static str,
        /// The stream.
        key: String,
        /// The error.
        #[source]
        source: redis::RedisError,
    },
    /// `--rule` names no rule of the file.
    #[error("no rule named `{0}` in the rule file")]
    UnknownRule(String),
}

/// One dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    /// The dead-letter stream (without prefix).
    pub stream: String,
    /// The entry's id in that stream.
    pub id: String,
    /// The stored fields.
    pub fields: BTreeMap<String, Vec<u8>>,
}

impl DeadLetterEntry {
    /// A field as text ("" when absent).
    pub fn field(&self, name: &str) -> String {
        self.fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// One line for `dlq list`.
    pub fn summary(&self) -> String {
        let payload = self.field("payload");
        let short: String = payload.chars().take(80).collect();
        let ellipsis = if payload.chars().count() > 80 { "…" } else { "" };
        let sink = self.field("sink");
        let error = self.field("error");
        format!(
            "{} {} rule={} {}reason=\"{}\"{} source_id={} payload={short}{ellipsis}",
            self.stream,
            self.id,
            self.field("rule"),
            if sink.is_empty() {
                String::new()
            } else {
                format!("sink=\"{sink}\" ")
            },
            self.field("reason"),
            if error.is_empty() {
                String::new()
            } else {
                format!(" error=\"{error}\"")
            },
            self.field("source_id"),
        )
    }
}

/// A dead-letter stream and the connection it lives on.
struct DeadStream {
    connection: Arc<ConnectionSpec>,
    key: String,
}

fn streams(set: &RuleSet, rule: Option<&str>) -> Result<Vec<DeadStream>, DlqError> {
    if let Some(r) = rule
        && !set.rules.iter().any(|x| x.name == r)
    {
        return Err(DlqError::UnknownRule(r.to_string()));
    }
    let mut out: Vec<DeadStream> = Vec::new();
    for r in set.rules.iter().filter(|x| rule.is_none_or(|name| x.name == name)) {
        let keys = std::iter::once(&r.on_error.dead_letter).chain(r.sinks.iter().map(|s| &s.on_error.dead_letter));
        for key in keys {
            let exists = out
                .iter()
                .any(|d| d.key == *key && *d.connection == *r.source.connection);
            if !exists {
                out.push(DeadStream {
                    connection: r.source.connection.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    Ok(out)
}

async fn connect(d: &DeadStream) -> Result<Conn, DlqError> {
    redis_conn::manager(&d.connection, Duration::ZERO)
        .await
        .map_err(|source| DlqError::Redis {
            op: "connect",
            key: d.key.clone(),
            source,
        })
}

async fn read_all(conn: &mut Conn, d: &DeadStream) -> Result<Vec<DeadLetterEntry>, DlqError> {
    let key = redis_conn::prefixed(&d.connection, &d.key);
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await
            .map_err(|source| DlqError::Redis {
                op: "XRANGE",
                key: d.key.clone(),
                source,
            })?;
        let Value::Array(items) = reply else { break };
        let n = items.len();
        for item in items {
            let Value::Array(mut pair) = item else { continue };
            if pair.len() != 2 {
                continue;
            }
            let fields = pair.pop();
            let id = pair
                .pop()
                .and_then(crate::source::bulk)
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let mut map = BTreeMap::new();
            if let Some(Value::Array(flat)) = fields {
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let k = crate::source::bulk(k).map(|b| String::from_utf8_lossy(&b).into_owned());
                    if let (Some(k), Some(v)) = (k, crate::source::bulk(v)) {
                        map.insert(k, v);
                    }
                }
            }
            start = format!("({id}");
            out.push(DeadLetterEntry {
                stream: d.key.clone(),
                id,
                fields: map,
            });
        }
        if n < PAGE {
            break;
        }
    }
    Ok(out)
}

/// Every dead letter of the file's rules (or of one rule), oldest first per stream.
///
/// # Errors
/// [`DlqError`] when Redis cannot be read or `rule` is unknown.
pub async fn list(set: &RuleSet, rule: Option<&str>) -> Result<Vec<DeadLetterEntry>, DlqError> {
    let mut out = Vec::new();
    for d in streams(set, rule)? {
        let mut conn = connect(&d).await?;
        let entries = read_all(&mut conn, &d).await?;
        out.extend(
            entries
                .into_iter()
                .filter(|e| set.rules.iter().any(|r| r.name == e.field("rule")))
                .filter(|e| rule.is_none_or(|r| e.field("rule") == r)),
        );
    }
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Delivered to their sink and deleted from the dead-letter stream.
    pub replayed: usize,
    /// Sent, but the sink failed again (kept).
    pub failed: usize,
    /// Not sink failures, or their sink is no longer in the rule (kept).
    pub skipped: usize,
}

/// Replay dead letters (all of the file's rules, one rule, or the given entry ids) to the sink
/// that failed them; `progress(done, total)` is called after each batch.
///
/// # Errors
/// [`DlqError`] when Redis cannot be read or `rule` is unknown.
pub async fn replay(
    set: &RuleSet,
    rule: Option<&str>,
    ids: &[String],
    mut progress: impl FnMut(usize, usize),
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    let mut sinks: HashMap<(String, usize), Sink> = HashMap::new();
    let reserved = Arc::new(ReservedNames::new(set.reserved.clone()));
    for d in streams(set, rule)? {
        let mut conn = connect(&d).await?;
        let entries: Vec<DeadLetterEntry> = read_all(&mut conn, &d)
            .await?
            .into_iter()
            .filter(|e| rule.is_none_or(|r| e.field("rule") == r))
            .filter(|e| ids.is_empty() || ids.contains(&e.id))
            .filter(|e| set.rules.iter().any(|r| r.name == e.field("rule")))
            .collect();
        let total = entries.len();
        // Group by (rule, sink index), keeping order within each group.
        let mut groups: BTreeMap<(String, usize), Vec<&DeadLetterEntry>> = BTreeMap::new();
        for e in &entries {
            let Some(r) = set.rules.iter().find(|r| r.name == e.field("rule")) else {
                report.skipped += 1;
                continue;
            };
            match r.sinks.iter().position(|s| s.kind.to_string() == e.field("sink")) {
                Some(i) => groups.entry((r.name.clone(), i)).or_default().push(e),
                None => report.skipped += 1,
            }
        }
        let mut done = report.skipped;
        for ((rule_name, sink_idx), group) in groups {
            let Some(r) = set.rules.iter().find(|r| r.name == rule_name) else {
                continue;
            };
            let key = (rule_name.clone(), sink_idx);
            if !sinks.contains_key(&key) {
                match Sink::open(&r.sinks[sink_idx], reserved.clone()).await {
                    Ok(s) => {
                        sinks.insert(key.clone(), s);
                    }
                    Err(e) => {
                        tracing::error!(rule = %rule_name, error = %e, "Cannot open the sink; its dead letters are kept.");
                        report.failed += group.len();
                        done += group.len();
                        progress(done, total);
                        continue;
                    }
                }
            }
            let Some(sink) = sinks.get_mut(&key) else { continue };
            for chunk in group.chunks(REPLAY_BATCH) {
                let messages: Vec<Option<Message>> = chunk.iter().map(|e| rebuild(r, e)).collect();
                let sendable: Vec<&Message> = messages.iter().flatten().collect();
                let results = sink.send(&sendable).await;
                let mut results = results.into_iter();
                let mut delete = Vec::new();
                for (e, m) in chunk.iter().zip(&messages) {
                    match m.as_ref().map(|_| results.next()) {
                        Some(Some(Ok(()))) => delete.push(e.id.clone()),
                        Some(Some(Err(err))) => {
                            tracing::warn!(id = %e.id, error = %err, "Replay failed; the dead letter is kept.");
                            report.failed += 1;
                        }
                        _ => report.failed += 1,
                    }
                }
                if !delete.is_empty() {
                    let key = redis_conn::prefixed(&d.connection, &d.key);
                    let _: i64 = redis::cmd("XDEL")
                        .arg(&key)
                        .arg(&delete)
                        .query_async(&mut conn)
                        .await
                        .map_err(|source| DlqError::Redis {
                            op: "XDEL",
                            key: d.key.clone(),
                            source,
                        })?;
                    report.replayed += delete.len();
                }
                done += chunk.len();
                progress(done, total);
            }
        }
    }
    Ok(report)
}

/// The message a dead letter stood for, transformed again as the rule does.
fn rebuild(rule: &RuleSpec, e: &DeadLetterEntry) -> Option<Message> {
    let source = match e.field("source").as_str() {
        "pattern" => SourceKind::Pattern,
        "stream" => SourceKind::Stream,
        "queue" => SourceKind::Queue,
        _ => SourceKind::Channel,
    };
    let id = e.field("source_id");
    let meta = Meta {
        rule: Arc::from(rule.name.as_str()),
        source,
        key: e.field("source_key"),
        pattern: None,
        id: (!id.is_empty()).then_some(id),
        received: SystemTime::now(),
        deliveries: 1,
        fields: Vec::new(),
        problem: None,
    };
    let msg = Message::new(Body::Bytes(e.fields.get("payload").cloned().unwrap_or_default()), meta);
    match &rule.transform {
        None => Some(msg),
        Some(t) => match t.apply(&msg) {
            Ok(v) => Some(Message::from_json(v, msg.meta.clone())),
            Err(err) => {
                tracing::warn!(id = %e.id, error = %err, "The rule's transform fails on this payload; kept.");
                None
            }
        },
    }
}
