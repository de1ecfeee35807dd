//! `redis-router dlq`: list dead letters, and replay them to the sink that failed.
//!
//! The dead-letter streams are found from the rule file (each rule's `dead_letter`, and its
//! sinks' own, on the rule's source connection). Both commands page through a stream (XRANGE
//! with COUNT, the page shrinking when its entries are large), so memory stays bounded by a
//! page whatever the stream's length; `--id` reads the named entries directly.
//!
//! Replay trusts nothing it reads: an entry is sent only when its payload is whole (not cut,
//! its length and SHA-256 as written), its signature verifies with the connection's signing
//! key ([`deadletter::SIGNING_KEY`]) and its rule writes its dead letters to the stream it is
//! in. Then the message is rebuilt from the stored payload, the rule's transform applied
//! again, sent to the sink named in the entry, and the entry deleted (XDEL) once that sink
//! took it. Every entry kept is reported with why.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::Value;

use crate::config::{ConnectionSpec, RuleSet, RuleSpec};
use crate::deadletter::{self, DeadLetterEntry, Refusal, parse_entries};
use crate::keys::ReservedNames;
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn::{self, Conn};
use crate::sink::Sink;

/// Most entries read per XRANGE call.
const MAX_PAGE: usize = 1000;
/// Entries read by the first XRANGE call.
const FIRST_PAGE: usize = 100;
/// What a page should hold at most, in payload bytes: the next page's COUNT is scaled to it
/// from the last page's average entry (at least one entry, however large).
const PAGE_BYTES: usize = 8 * 1024 * 1024;
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

/// An open dead-letter stream: its connection and signing key.
struct Opened<'a> {
    stream: &'a DeadStream,
    conn: Conn,
    key: Option<Vec<u8>>,
}

impl<'a> Opened<'a> {
    async fn open(d: &'a DeadStream) -> Result<Opened<'a>, DlqError> {
        let redis_err = |op| {
            let key = d.key.clone();
            move |source| DlqError::Redis { op, key, source }
        };
        let mut conn = redis_conn::manager(&d.connection, Duration::ZERO)
            .await
            .map_err(redis_err("connect"))?;
        let key = deadletter::signing_key(&mut conn, &d.connection, false)
            .await
            .map_err(redis_err("GET signing key"))?;
        Ok(Opened { stream: d, conn, key })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> DlqError + use<'_> {
        move |source| DlqError::Redis {
            op,
            key: self.stream.key.clone(),
            source,
        }
    }

    fn redis_key(&self) -> String {
        redis_conn::prefixed(&self.stream.connection, &self.stream.key)
    }

    /// Entries in the stream (an upper bound of what a command will look at, for progress).
    async fn len(&mut self) -> Result<usize, DlqError> {
        let key = self.redis_key();
        redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XLEN"))
    }

    /// XRANGE `start` `end` COUNT `count`.
    async fn range(&mut self, start: &str, end: &str, count: usize) -> Result<Vec<DeadLetterEntry>, DlqError> {
        let key = self.redis_key();
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XRANGE"))?;
        Ok(parse_entries(&self.stream.key, reply))
    }

    /// Delete delivered entries.
    async fn delete(&mut self, ids: &[String]) -> Result<(), DlqError> {
        let key = self.redis_key();
        let _: i64 = redis::cmd("XDEL")
            .arg(key)
            .arg(ids)
            .query_async(&mut self.conn)
            .await
            .map_err(self.err("XDEL"))?;
        Ok(())
    }
}

/// Which entries a command looks at: every one of the stream, page by page, or the ids given.
enum Selection<'a> {
    All { next: String, count: usize, done: bool },
    Ids(std::slice::Iter<'a, String>),
}

impl<'a> Selection<'a> {
    fn new(ids: &'a [String]) -> Selection<'a> {
        if ids.is_empty() {
            Selection::All {
                next: "-".into(),
                count: FIRST_PAGE,
                done: false,
            }
        } else {
            Selection::Ids(ids.iter())
        }
    }

    /// The next page; empty when there is none.
    async fn next(&mut self, s: &mut Opened<'_>) -> Result<Vec<DeadLetterEntry>, DlqError> {
        match self {
            Selection::Ids(ids) => {
                // An id the stream does not hold reads as nothing; an id that is not one at
                // all is an error from Redis, reported as such.
                for id in ids.by_ref() {
                    let page = s.range(id, id, 1).await?;
                    if !page.is_empty() {
                        return Ok(page);
                    }
                }
                Ok(Vec::new())
            }
            Selection::All { next, count, done } => {
                if *done {
                    return Ok(Vec::new());
                }
                let page = s.range(next, "+", *count).await?;
                if page.len() < *count {
                    *done = true;
                }
                if let Some(last) = page.last() {
                    *next = format!("({}", last.id);
                }
                let bytes: usize = page
                    .iter()
                    .map(|e| e.fields.values().map(Vec::len).sum::<usize>())
                    .sum();
                let per_entry = (bytes / page.len().max(1)).max(1);
                *count = (PAGE_BYTES / per_entry).clamp(1, MAX_PAGE);
                Ok(page)
            }
        }
    }
}

/// Whether the entry can be replayed as it stands: whole, signed by this router for this
/// stream, and in the stream its rule (or sink) writes to. `rule` is the rule it names,
/// `sink` the index of the sink it names in that rule, when found.
fn verify(
    e: &DeadLetterEntry,
    key: Option<&[u8]>,
    stream: &DeadStream,
    rule: &RuleSpec,
    sink: Option<usize>,
    accept_unsigned: bool,
) -> Result<(), Refusal> {
    e.check(key, &stream.key, accept_unsigned)?;
    let expected = match sink {
        Some(i) => &rule.sinks[i].on_error.dead_letter,
        None => &rule.on_error.dead_letter,
    };
    if *expected != stream.key || *rule.source.connection != *stream.connection {
        return Err(Refusal::WrongStream {
            expected: expected.clone(),
        });
    }
    Ok(())
}

/// The sink of `rule` an entry names: by its label (`name`, or kind and masked target), or,
/// for dead letters written before sinks were masked and named, by its kind and target as
/// they were written, masked now.
fn find_sink(rule: &RuleSpec, e: &DeadLetterEntry) -> Option<usize> {
    let named = e.field("sink");
    if named.is_empty() {
        return None;
    }
    rule.sinks.iter().position(|s| s.label() == named).or_else(|| {
        let masked = crate::mask::text(&named);
        rule.sinks.iter().position(|s| s.kind.to_string() == masked)
    })
}

/// Every dead letter of the file's rules (or of one rule), oldest first per stream, page by
/// page: `each(entry, problem)` is called for each, `problem` saying why replay would keep it.
/// Returns how many there were.
///
/// # Errors
/// [`DlqError`] when Redis cannot be read or `rule` is unknown.
pub async fn list(
    set: &RuleSet,
    rule: Option<&str>,
    mut each: impl FnMut(&DeadLetterEntry, Option<&Refusal>),
) -> Result<usize, DlqError> {
    let mut n = 0;
    for d in streams(set, rule)? {
        let mut s = Opened::open(&d).await?;
        let mut pages = Selection::new(&[]);
        loop {
            let page = pages.next(&mut s).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                let name = e.field("rule");
                let Some(r) = set.rules.iter().find(|r| r.name == name) else {
                    continue;
                };
                if rule.is_some_and(|want| want != name) {
                    continue;
                }
                let sink = find_sink(r, e);
                let problem = verify(e, s.key.as_deref(), &d, r, sink, false).err();
                each(e, problem.as_ref());
                n += 1;
            }
        }
    }
    Ok(n)
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
    /// Cut, corrupted, unsigned or forged (kept, never sent).
    pub refused: usize,
}

/// One dead letter replay kept, and why.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its stream.
    pub stream: String,
    /// Its id.
    pub id: String,
    /// The rule it names.
    pub rule: String,
    /// Why it is kept.
    pub why: String,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::mask::{escape, text};
        write!(
            f,
            "kept {} {} rule={}: {}",
            escape(&self.stream),
            escape(&self.id),
            escape(&self.rule),
            text(&self.why)
        )
    }
}

/// How `replay` is asked to work.
#[derive(Debug, Default, Clone)]
pub struct ReplayOptions<'a> {
    /// Only this rule's dead letters.
    pub rule: Option<&'a str>,
    /// Only these entry ids.
    pub ids: &'a [String],
    /// Replay entries without a signature (written before dead letters were signed) when
    /// they are otherwise whole and in their rule's stream.
    pub accept_unsigned: bool,
}

/// Replay dead letters (all of the file's rules, one rule, or the given entry ids) to the sink
/// that failed them, a page at a time. `kept(entry)` is called for each entry left in the
/// stream, with why; `progress(done, total)` after each page (`total` counts the streams'
/// entries, an upper bound).
///
/// # Errors
/// [`DlqError`] when Redis cannot be read or `rule` is unknown.
pub async fn replay(
    set: &RuleSet,
    options: &ReplayOptions<'_>,
    mut kept: impl FnMut(Kept),
    mut progress: impl FnMut(usize, usize),
) -> Result<ReplayReport, DlqError> {
    let mut report = ReplayReport::default();
    let mut sinks: HashMap<(String, usize), Sink> = HashMap::new();
    let reserved = Arc::new(ReservedNames::new(set.reserved.clone()));
    // The sinks replay opens share their connections, as a running router's rules do.
    let connections = redis_conn::Connections::default();
    let dead = streams(set, options.rule)?;
    let mut opened = Vec::with_capacity(dead.len());
    let mut total = 0;
    for d in &dead {
        let mut s = Opened::open(d).await?;
        total += if options.ids.is_empty() {
            s.len().await?
        } else {
            options.ids.len()
        };
        opened.push(s);
    }
    let mut done = 0;
    for s in &mut opened {
        let mut pages = Selection::new(options.ids);
        loop {
            let page = pages.next(s).await?;
            if page.is_empty() {
                break;
            }
            done += page.len();
            let mut keep = |e: &DeadLetterEntry, why: String| {
                kept(Kept {
                    stream: e.stream.clone(),
                    id: e.id.clone(),
                    rule: e.field("rule"),
                    why,
                })
            };
            // Group by (rule, sink index), keeping order within each group.
            let mut groups: BTreeMap<(String, usize), Vec<&DeadLetterEntry>> = BTreeMap::new();
            for e in &page {
                let name = e.field("rule");
                if options.rule.is_some_and(|want| want != name) {
                    continue;
                }
                let Some(r) = set.rules.iter().find(|r| r.name == name) else {
                    // Another file's rule: not ours to judge or send.
                    continue;
                };
                let sink = find_sink(r, e);
                if let Err(why) = verify(e, s.key.as_deref(), s.stream, r, sink, options.accept_unsigned) {
                    report.refused += 1;
                    keep(e, why.to_string());
                    continue;
                }
                match sink {
                    Some(i) => groups.entry((r.name.clone(), i)).or_default().push(e),
                    None => {
                        report.skipped += 1;
                        let why = if e.field("sink").is_empty() {
                            format!("no sink failed it ({})", e.field("reason"))
                        } else {
                            format!("its sink `{}` is no longer in the rule", e.field("sink"))
                        };
                        keep(e, why);
                    }
                }
            }
            for ((rule_name, sink_idx), group) in groups {
                let Some(r) = set.rules.iter().find(|r| r.name == rule_name) else {
                    continue;
                };
                let key = (rule_name.clone(), sink_idx);
                if !sinks.contains_key(&key) {
                    match Sink::open(&r.sinks[sink_idx], reserved.clone(), &connections).await {
                        Ok(opened) => {
                            sinks.insert(key.clone(), opened);
                        }
                        Err(err) => {
                            let why = format!("cannot open its sink: {err}");
                            for e in &group {
                                keep(e, why.clone());
                            }
                            report.failed += group.len();
                            continue;
                        }
                    }
                }
                let Some(sink) = sinks.get_mut(&key) else { continue };
                for chunk in group.chunks(REPLAY_BATCH) {
                    let messages: Vec<Result<Message, String>> = chunk.iter().map(|e| rebuild(r, e)).collect();
                    let sendable: Vec<&Message> = messages.iter().filter_map(|m| m.as_ref().ok()).collect();
                    let mut results = sink.send(&sendable).await.into_iter();
                    let mut delete = Vec::new();
                    for (e, m) in chunk.iter().zip(&messages) {
                        match m {
                            Err(why) => {
                                report.failed += 1;
                                keep(e, why.clone());
                            }
                            Ok(_) => match results.next() {
                                Some(Ok(())) => delete.push(e.id.clone()),
                                Some(Err(err)) => {
                                    report.failed += 1;
                                    keep(e, format!("the sink failed again: {err}"));
                                }
                                None => {
                                    report.failed += 1;
                                    keep(e, "the sink gave no result".into());
                                }
                            },
                        }
                    }
                    if !delete.is_empty() {
                        s.delete(&delete).await?;
                        report.replayed += delete.len();
                    }
                }
            }
            progress(done, total.max(done));
        }
    }
    Ok(report)
}

/// The message a dead letter stood for, transformed again as the rule does; why not, when the
/// transform fails on it.
fn rebuild(rule: &RuleSpec, e: &DeadLetterEntry) -> Result<Message, String> {
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
        None => Ok(msg),
        Some(t) => match t.apply(&msg) {
            Ok(v) => Ok(Message::from_json(v, msg.meta.clone())),
            Err(err) => Err(format!("the rule's transform fails on this payload: {err}")),
        },
    }
}
