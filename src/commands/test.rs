//! `redis-router test`: the `tests:` cases of each rule, run offline, without Redis.
//!
//! This module owns three things: the test-case schema (parsed from the raw `tests:` values the
//! rule file keeps, every mistake reported with its path), the offline routing of one message
//! through a rule ([`route`]), and the report (one line per case, and for a failing case a diff
//! of expected against actual).
//!
//! It owns no filter, transform or rendering logic: a case goes through [`Filter::matches`],
//! [`Transform::apply`] and [`Sink::preview`], the code the engine runs, in the engine's order
//! (source problem → rule filter → transform → each sink's own filter → the sink), so a passing
//! case says what the running router would write. [`route`] mirrors the decisions of
//! `engine::rule`'s batch loop for one message; the loop could call it instead of repeating them.
//!
//! [`Filter::matches`]: crate::filter::Filter::matches
//! [`Transform::apply`]: crate::filter::Transform::apply

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::config::{RuleSet, RuleSpec, SinkSpec, SinkSpecKind, SourceSpecKind, closest};
use crate::engine::route::{Admission, admit, sink_failure_reason, sink_takes};
use crate::keys::Reserved;
use crate::message::{Body, Message, Meta, SourceKind};
use crate::sink::Sink;

/// An expected string that matches any value, for output nobody can predict (`{{now}}`).
pub const WILDCARD: &str = "*";

/// The stream entry id a case's message has when its `meta` gives none (stream sources only).
pub const DEFAULT_STREAM_ID: &str = "1-0";

/// A mistake in a rule's `tests:`, found before any case runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule \"{rule}\": {path}: {message}")]
pub struct CaseError {
    /// The rule the case belongs to.
    pub rule: String,
    /// Where in the case, as `tests[0].expect.sinks[1].fields`.
    pub path: String,
    /// What is wrong, and what to write instead.
    pub message: String,
    /// Where in the file (line, column): at the key or item the path names, or the nearest
    /// one that is written.
    pub at: Option<crate::config::At>,
}

impl CaseError {
    /// As `FILE:LINE:COL: rule "NAME": PATH: message`, like the file's other mistakes.
    pub fn render(&self, file: &str) -> String {
        match self.at {
            Some((line, column)) => format!("{file}:{line}:{column}: {self}"),
            None => format!("{file}: {self}"),
        }
    }
}

/// One test case of a rule, parsed and checked against the rule it belongs to.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// `name`, or `case N` (1-based) when the case has none.
    pub name: String,
    body: Body,
    meta: Meta,
    /// Whether the input is a Laravel job read by a `format: laravel` queue source.
    laravel_job: bool,
    expect: Expect,
}

/// `dead_letter:` of an expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// `false`: not dead-lettered.
    Nothing,
    /// `true`: dead-lettered, whatever the reason.
    Any,
    /// A text the reason contains.
    Contains(String),
}

#[derive(Debug, Clone)]
struct Expect {
    filtered_out: Option<bool>,
    dead_letter: Option<Reason>,
    sinks: Vec<SinkExpect>,
}

#[derive(Debug, Clone)]
struct SinkExpect {
    /// Index of the sink in the rule.
    index: usize,
    /// `stream processed_stream`, as the expectation names it.
    label: String,
    skipped: Option<bool>,
    dead_letter: Option<Reason>,
    /// What the sink writes: `key`, `fields`, `body`, `job`, … (a subset of [`written`]).
    output: Map<String, Value>,
}

/// Keys of a case.
const CASE_KEYS: &[&str] = &["name", "input", "meta", "expect"];
/// Keys of `meta`.
const META_KEYS: &[&str] = &["key", "id", "pattern", "fields"];
/// Keys of `expect`.
const EXPECT_KEYS: &[&str] = &["filtered_out", "dead_letter", "sinks"];
/// The keys that name a sink, as in the rule's `sinks:`.
const SINK_KINDS: &[&str] = &["publish", "stream", "queue", "webhook"];
/// Keys every sink expectation may have besides its kind.
const SINK_COMMON_KEYS: &[&str] = &["skipped", "dead_letter"];

/// The keys a sink's output has, by kind: what [`written`] reports.
fn output_keys(spec: &SinkSpec) -> &'static [&'static str] {
    match &spec.kind {
        SinkSpecKind::Publish { .. } => &["channel", "body"],
        SinkSpecKind::Stream { .. } => &["key", "fields"],
        SinkSpecKind::Queue { laravel: None, .. } => &["key", "body"],
        SinkSpecKind::Queue { laravel: Some(_), .. } => &["key", "job"],
        SinkSpecKind::Webhook(_) => &["method", "url", "body"],
    }
}

/// The sink's target as written in the rule: its key, channel, list or URL template.
fn sink_target(spec: &SinkSpec) -> &str {
    match &spec.kind {
        SinkSpecKind::Publish { channel, .. } => channel.source(),
        SinkSpecKind::Stream { stream, .. } => stream.source(),
        SinkSpecKind::Queue { queue, .. } => queue.source(),
        SinkSpecKind::Webhook(w) => w.url.source(),
    }
}

/// Collects the mistakes of one rule's cases.
struct Parser<'a> {
    rule: &'a RuleSpec,
    /// Where the parts of the case being read are written.
    positions: &'a [(String, crate::config::At)],
    errors: Vec<CaseError>,
}

impl Parser<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(CaseError {
            rule: self.rule.name.clone(),
            path: path.to_string(),
            message: message.into(),
            at: crate::config::position_of(self.positions, path),
        });
    }

    /// The mapping at `path`, with unknown keys reported (with a "did you mean"). A misspelt
    /// key with one close match that is not written too is read as that key, so its value is
    /// checked and the key is not reported missing as well: one mistake, one message.
    fn mapping(&mut self, value: &Value, path: &str, keys: &[&str], what: &str) -> Option<Map<String, Value>> {
        let Value::Object(map) = value else {
            self.err(path, format!("{what} must be a mapping, not {}", type_name(value)));
            return None;
        };
        let mut read = Map::new();
        for (key, value) in map {
            if keys.contains(&key.as_str()) {
                read.insert(key.clone(), value.clone());
                continue;
            }
            self.err(&format!("{path}.{key}"), unknown_key(key, keys));
            if let Some(meant) =
                closest(key, keys.iter().copied()).filter(|k| !map.contains_key(*k) && !read.contains_key(*k))
            {
                read.insert(meant.to_string(), value.clone());
            }
        }
        Some(read)
    }

    fn string(&mut self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(path, format!("must be a string, not {}", type_name(other)));
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(path, format!("must be true or false, not {}", type_name(other)));
                None
            }
        }
    }

    fn reason(&mut self, value: &Value, path: &str) -> Option<Reason> {
        match value {
            Value::Bool(false) => Some(Reason::Nothing),
            Value::Bool(true) => Some(Reason::Any),
            Value::String(s) => Some(Reason::Contains(s.clone())),
            other => {
                self.err(
                    path,
                    format!(
                        "must be true, false or a text the reason contains, not {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn case(&mut self, index: usize, value: &Value) -> Option<TestCase> {
        let path = format!("tests[{index}]");
        let map = self.mapping(value, &path, CASE_KEYS, "a test case")?;
        let name = match map.get("name") {
            Some(v) => self.string(v, &format!("{path}.name")),
            None => Some(format!("case {}", index + 1)),
        };
        let meta = self.meta(map.get("meta"), &format!("{path}.meta"));
        let body = match map.get("input") {
            Some(input) => self.input(input, &format!("{path}.input")),
            None => {
                self.err(
                    &path,
                    "`input` is missing; write the payload as a string, or as a mapping taken as JSON",
                );
                None
            }
        };
        let expect = match map.get("expect") {
            Some(expect) => self.expect(expect, &format!("{path}.expect")),
            None => {
                self.err(
                    &path,
                    "`expect` is missing; write `expect: { filtered_out: true }`, or the sinks that take the message under `expect: { sinks: [...] }`",
                );
                None
            }
        };
        let laravel_job = matches!(
            self.rule.source.kind,
            SourceSpecKind::Queue {
                format: crate::config::QueueFormat::Laravel,
                ..
            }
        );
        Some(TestCase {
            name: name?,
            body: body?,
            meta: meta?,
            laravel_job,
            expect: expect?,
        })
    }

    /// The message's metadata: the source's defaults, overridden by `meta:`.
    fn meta(&mut self, value: Option<&Value>, path: &str) -> Option<Meta> {
        let (source, key, pattern, id) = match &self.rule.source.kind {
            SourceSpecKind::Channel { channel, .. } => (SourceKind::Channel, channel.clone(), None, None),
            // The channel that matched is not known; the pattern stands in for it.
            SourceSpecKind::Pattern { pattern, .. } => {
                (SourceKind::Pattern, pattern.clone(), Some(pattern.clone()), None)
            }
            SourceSpecKind::Stream { stream, .. } => (
                SourceKind::Stream,
                stream.clone(),
                None,
                Some(DEFAULT_STREAM_ID.to_string()),
            ),
            SourceSpecKind::Queue { queue, .. } => (SourceKind::Queue, queue.clone(), None, None),
        };
        let mut meta = Meta {
            rule: Arc::from(self.rule.name.as_str()),
            source,
            key,
            pattern,
            id,
            received: SystemTime::now(),
            deliveries: 1,
            fields: Vec::new(),
            problem: None,
        };
        let Some(value) = value else {
            return Some(meta);
        };
        let map = self.mapping(value, path, META_KEYS, "`meta`")?;
        let mut ok = true;
        for (k, v) in &map {
            let at = format!("{path}.{k}");
            match k.as_str() {
                "key" => match self.string(v, &at) {
                    Some(s) => meta.key = s,
                    None => ok = false,
                },
                "id" => match self.string(v, &at) {
                    Some(s) => meta.id = Some(s),
                    None => ok = false,
                },
                "pattern" => match self.string(v, &at) {
                    Some(s) => meta.pattern = Some(s),
                    None => ok = false,
                },
                "fields" => match v {
                    Value::Object(fields) => meta.fields = fields.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
                    other => {
                        self.err(
                            &at,
                            format!(
                                "must be a mapping of the entry's other fields, not {}",
                                type_name(other)
                            ),
                        );
                        ok = false;
                    }
                },
                _ => ok = false,
            }
        }
        ok.then_some(meta)
    }

    /// The payload as the rule's source would deliver it.
    fn input(&mut self, value: &Value, path: &str) -> Option<Body> {
        match &self.rule.source.kind {
            // A stream entry read without `body_field` is its fields.
            SourceSpecKind::Stream { body_field: None, .. } => {
                let parsed;
                let fields = match value {
                    Value::Object(map) => map,
                    Value::String(s) => match serde_json::from_str::<Value>(s) {
                        Ok(Value::Object(map)) => {
                            parsed = map;
                            &parsed
                        }
                        _ => {
                            self.err(
                                path,
                                "a stream entry is its fields: write a mapping such as `{ event: order.created, payload: x }`",
                            );
                            return None;
                        }
                    },
                    other => {
                        self.err(
                            path,
                            format!(
                                "a stream entry is its fields: write a mapping such as `{{ event: order.created, payload: x }}`, not {}",
                                type_name(other)
                            ),
                        );
                        return None;
                    }
                };
                Some(Body::Fields(
                    fields
                        .iter()
                        .map(|(k, v)| (k.clone().into_bytes(), text(v).into_bytes()))
                        .collect(),
                ))
            }
            SourceSpecKind::Stream {
                body_field: Some(_), ..
            } => Some(Body::Field(text(value).into_bytes())),
            _ => Some(Body::Bytes(text(value).into_bytes())),
        }
    }

    fn expect(&mut self, value: &Value, path: &str) -> Option<Expect> {
        let map = self.mapping(value, path, EXPECT_KEYS, "`expect`")?;
        if map.is_empty() {
            self.err(
                path,
                "`expect` says nothing; write `filtered_out`, `dead_letter` or the `sinks` that take the message",
            );
            return None;
        }
        let mut ok = true;
        let mut expect = Expect {
            filtered_out: None,
            dead_letter: None,
            sinks: Vec::new(),
        };
        if let Some(v) = map.get("filtered_out") {
            expect.filtered_out = self.boolean(v, &format!("{path}.filtered_out"));
            ok &= expect.filtered_out.is_some();
        }
        if let Some(v) = map.get("dead_letter") {
            expect.dead_letter = self.reason(v, &format!("{path}.dead_letter"));
            ok &= expect.dead_letter.is_some();
        }
        match map.get("sinks") {
            None => {}
            Some(Value::Array(items)) => {
                // The nth expectation naming a sink goes to the nth sink of the rule with that name.
                let mut seen: Vec<(String, String)> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match self.sink_expect(item, &format!("{path}.sinks[{i}]"), &mut seen) {
                        Some(s) => expect.sinks.push(s),
                        None => ok = false,
                    }
                }
            }
            Some(other) => {
                self.err(
                    &format!("{path}.sinks"),
                    format!(
                        "must be a list such as `[ {{ stream: processed_stream }} ]`, not {}",
                        type_name(other)
                    ),
                );
                ok = false;
            }
        }
        if expect.filtered_out == Some(true) && !expect.sinks.is_empty() {
            self.err(
                path,
                "`filtered_out: true` and `sinks` contradict each other: a filtered-out message reaches no sink",
            );
            ok = false;
        }
        ok.then_some(expect)
    }

    fn sink_expect(&mut self, value: &Value, path: &str, seen: &mut Vec<(String, String)>) -> Option<SinkExpect> {
        let Value::Object(map) = value else {
            self.err(
                path,
                format!(
                    "a sink expectation must be a mapping such as `{{ stream: processed_stream }}`, not {}",
                    type_name(value)
                ),
            );
            return None;
        };
        let kinds: Vec<&str> = SINK_KINDS.iter().copied().filter(|k| map.contains_key(*k)).collect();
        let kind = match kinds.as_slice() {
            [one] => *one,
            [] => {
                self.err(
                    path,
                    "name the sink as the rule does: `stream: KEY`, `publish: CHANNEL`, `queue: LIST` or `webhook: URL`",
                );
                return None;
            }
            [a, b, ..] => {
                self.err(
                    path,
                    format!("names two sinks (`{a}` and `{b}`); write each as its own item under `sinks:`"),
                );
                return None;
            }
        };
        let target = self.string(map.get(kind).unwrap_or(&Value::Null), &format!("{path}.{kind}"))?;
        let nth = seen.iter().filter(|(k, t)| k == kind && *t == target).count();
        seen.push((kind.to_string(), target.clone()));
        let index = self
            .rule
            .sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.kind_name() == kind && sink_target(s) == target)
            .map(|(i, _)| i)
            .nth(nth);
        let Some(index) = index else {
            let names: Vec<String> = self
                .rule
                .sinks
                .iter()
                .map(|s| format!("{} {}", s.kind.kind_name(), sink_target(s)))
                .collect();
            let message = if nth > 0 {
                format!(
                    "the rule has only {nth} `{kind} {target}` sink{}, and each expectation names a different one; its sinks: {}",
                    if nth == 1 { "" } else { "s" },
                    names.join(", ")
                )
            } else {
                format!(
                    "the rule has no sink `{kind} {target}`; its sinks: {}",
                    names.join(", ")
                )
            };
            self.err(&format!("{path}.{kind}"), message);
            return None;
        };
        let spec = &self.rule.sinks[index];
        let allowed: Vec<&str> = SINK_COMMON_KEYS.iter().chain(output_keys(spec)).copied().collect();
        let mut ok = true;
        let mut expect = SinkExpect {
            index,
            label: if nth > 0 {
                format!("{kind} {target} #{}", nth + 1)
            } else {
                format!("{kind} {target}")
            },
            skipped: None,
            dead_letter: None,
            output: Map::new(),
        };
        for (key, v) in map {
            let at = format!("{path}.{key}");
            match key.as_str() {
                k if k == kind => {}
                "skipped" => {
                    expect.skipped = self.boolean(v, &at);
                    ok &= expect.skipped.is_some();
                }
                "dead_letter" => {
                    expect.dead_letter = self.reason(v, &at);
                    ok &= expect.dead_letter.is_some();
                }
                k if allowed.contains(&k) => {
                    let shape_ok = match k {
                        "fields" | "job" => v.is_object(),
                        "key" | "channel" | "url" | "method" => v.is_string(),
                        _ => true,
                    };
                    if !shape_ok {
                        let want = if v.is_string() || k == "fields" || k == "job" {
                            "a mapping"
                        } else {
                            "a string"
                        };
                        self.err(&at, format!("must be {want}, not {}", type_name(v)));
                        ok = false;
                    }
                    expect.output.insert(key.clone(), v.clone());
                }
                "job" => {
                    self.err(
                        &at,
                        "`job` is for a queue sink with `laravel:`; this one writes raw list elements: expect `body`",
                    );
                    ok = false;
                }
                "body" if matches!(spec.kind, SinkSpecKind::Queue { .. }) => {
                    self.err(&at, "this queue sink writes Laravel jobs: expect `job` (the envelope without `uuid` and `id`, with `data` decoded)");
                    ok = false;
                }
                other => {
                    let candidates: Vec<&str> = allowed.iter().copied().chain(std::iter::once(kind)).collect();
                    self.err(&at, unknown_key(other, &candidates));
                    ok = false;
                }
            }
        }
        let has_effect =
            !expect.output.is_empty() || matches!(expect.dead_letter, Some(Reason::Any | Reason::Contains(_)));
        if expect.skipped == Some(true) && has_effect {
            self.err(
                path,
                "`skipped: true` means the sink takes nothing: drop it, or drop what the sink writes",
            );
            ok = false;
        }
        ok.then_some(expect)
    }
}

/// "unknown key", with a "did you mean" when one of `candidates` is close.
fn unknown_key(key: &str, candidates: &[&str]) -> String {
    match closest(key, candidates.iter().copied()) {
        Some(c) => format!("unknown key `{key}`; did you mean `{c}`?"),
        None => format!("unknown key `{key}`; expected one of: {}", candidates.join(", ")),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A value as text: a string as it is, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parse and check every rule's `tests:`.
///
/// # Errors
/// Every mistake in every case, in file order.
pub fn parse_cases(set: &RuleSet) -> Result<Vec<(&RuleSpec, Vec<TestCase>)>, Vec<CaseError>> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for rule in &set.rules {
        let mut cases = Vec::new();
        for (i, case) in rule.tests.iter().enumerate() {
            let mut parser = Parser {
                rule,
                positions: &case.positions,
                errors: Vec::new(),
            };
            cases.extend(parser.case(i, &case.value));
            errors.extend(parser.errors);
        }
        all.push((rule, cases));
    }
    if errors.is_empty() { Ok(all) } else { Err(errors) }
}

/// The mistakes in the file's `tests:`, for `check` to report with the rest.
pub fn check(set: &RuleSet) -> Vec<CaseError> {
    parse_cases(set).err().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Routing one message, as the engine does
// ---------------------------------------------------------------------------------------------

/// What a rule does with one message, decided without Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Dead-lettered before any sink saw it: a source problem, or a filter or transform that
    /// failed on it. The text is the dead letter's `reason`.
    DeadLetter(String),
    /// The rule's filter rejects it.
    FilteredOut,
    /// What each sink, in the rule's order, does with it.
    Sinks(Vec<SinkRouting>),
}

/// What one sink does with a message that passed the rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkRouting {
    /// The sink's own filter rejects it.
    Skipped,
    /// The sink writes this: a Redis command line, or a webhook's method, URL and body.
    Writes(Vec<Vec<u8>>),
    /// The sink cannot take it; it goes to the dead-letter stream with this reason.
    DeadLetter(String),
}

impl Routing {
    /// Whether the message counts as filtered out: the rule's filter rejected it, or no sink
    /// took it and none failed (as the engine's `filtered_out` counter sees it).
    pub fn filtered_out(&self) -> bool {
        match self {
            Routing::FilteredOut => true,
            Routing::DeadLetter(_) => false,
            Routing::Sinks(sinks) => sinks.iter().all(|s| *s == SinkRouting::Skipped),
        }
    }
}

/// Route `msg` through `rule` without Redis: the decisions of the engine's rule loop (the
/// source's problem, the rule filter, the transform, each sink's filter) and what each sink
/// would write ([`Sink::preview`]).
pub fn route(rule: &RuleSpec, msg: &Message, reserved: &Reserved) -> Routing {
    let transformed = match admit(rule, msg) {
        Admission::DeadLetter(reason) => return Routing::DeadLetter(reason),
        Admission::FilteredOut => return Routing::FilteredOut,
        Admission::Pass(copy) => copy.map(|c| *c),
    };
    let outgoing = transformed.as_ref().unwrap_or(msg);
    Routing::Sinks(
        rule.sinks
            .iter()
            .map(|spec| match sink_takes(spec, outgoing) {
                Ok(false) => SinkRouting::Skipped,
                Err(reason) => SinkRouting::DeadLetter(reason),
                Ok(true) => match Sink::preview(spec, outgoing, reserved) {
                    Ok(cmd) => SinkRouting::Writes(cmd),
                    // Rendering failures are permanent in the engine too: dead-lettered at once.
                    Err(e) => SinkRouting::DeadLetter(format!("{}: {e}", sink_failure_reason(false, 1))),
                },
            })
            .collect(),
    )
}

/// What a sink writes, as a test case sees it: `{key, fields}` for a stream, `{channel, body}`
/// for a publish, `{key, body}` for a list, `{key, job}` for a Laravel queue (the envelope
/// without `uuid` and `id`, `data` decoded from PHP), `{method, url, body}` for a webhook.
/// `key` and `channel` are the names Redis holds, the connection's prefix included.
pub fn written(spec: &SinkSpec, cmd: &[Vec<u8>]) -> Map<String, Value> {
    let arg = |i: usize| {
        Value::String(
            cmd.get(i)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default(),
        )
    };
    let mut out = Map::new();
    match &spec.kind {
        SinkSpecKind::Publish { .. } => {
            out.insert("channel".into(), arg(1));
            out.insert("body".into(), arg(2));
        }
        SinkSpecKind::Stream { .. } => {
            // XADD key [MAXLEN ~ n] * field value …
            out.insert("key".into(), arg(1));
            let first = if cmd.get(2).is_some_and(|a| a == b"MAXLEN") {
                6
            } else {
                3
            };
            let fields: Map<String, Value> = cmd
                .get(first..)
                .unwrap_or_default()
                .chunks(2)
                .map(|pair| {
                    let text = |i: usize| {
                        pair.get(i)
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default()
                    };
                    (text(0), Value::String(text(1)))
                })
                .collect();
            out.insert("fields".into(), Value::Object(fields));
        }
        SinkSpecKind::Queue { laravel: None, .. } => {
            out.insert("key".into(), arg(1));
            out.insert("body".into(), arg(2));
        }
        SinkSpecKind::Queue { laravel: Some(_), .. } => {
            // EVAL script 2 key notify payload, or ZADD key:delayed due payload.
            let (key, payload) = if cmd.first().is_some_and(|a| a == b"ZADD") {
                (1, 3)
            } else {
                (3, 5)
            };
            out.insert("key".into(), arg(key));
            out.insert(
                "job".into(),
                job_view(cmd.get(payload).map(Vec::as_slice).unwrap_or_default()),
            );
        }
        SinkSpecKind::Webhook(_) => {
            out.insert("method".into(), arg(0));
            out.insert("url".into(), arg(1));
            out.insert("body".into(), arg(2));
        }
    }
    out
}

/// A Laravel job envelope without what changes on every push (`uuid`, `id`), with `data`
/// replaced by the message the job carries (decoded from the serialized command).
fn job_view(payload: &[u8]) -> Value {
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(payload) else {
        return Value::String(String::from_utf8_lossy(payload).into_owned());
    };
    envelope.remove("uuid");
    envelope.remove("id");
    if let Ok(job) = crate::laravel::parse_job(payload) {
        envelope.insert("data".into(), job.data.unwrap_or(Value::Null));
    }
    Value::Object(envelope)
}

impl TestCase {
    /// The message the rule's source would deliver for this case.
    pub fn message(&self) -> Message {
        match (&self.body, self.laravel_job) {
            (Body::Bytes(bytes), true) => crate::source::laravel_message(bytes.clone(), self.meta.clone()),
            (body, _) => Message::new(body.clone(), self.meta.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing and reporting
// ---------------------------------------------------------------------------------------------

/// One place where what happened is not what the case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Where: `filtered_out`, `stream processed_stream: fields.data`, …
    pub at: String,
    /// What the case expects, as text.
    pub expected: String,
    /// What happened, as text.
    pub actual: String,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    /// The rule.
    pub rule: String,
    /// The case's name.
    pub case: String,
    /// Empty when the case passed.
    pub differences: Vec<Difference>,
}

impl CaseReport {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }
}

/// `ok   rule: case`, or `FAIL rule: case` followed by each difference as `- expected` and
/// `+ actual` lines (with a `^` under the first differing character of two texts).
impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A webhook URL (expected or rendered) may hold a token, a payload control characters:
        // every part goes through the masking module before it is shown.
        use crate::mask::text as shown;
        let case = shown(&self.case);
        if self.passed() {
            return write!(f, "ok   {}: {case}", self.rule);
        }
        write!(f, "FAIL {}: {case} (- expected, + actual)", self.rule)?;
        for d in &self.differences {
            let (expected, actual) = (shown(&d.expected), shown(&d.actual));
            write!(f, "\n       {}\n       - {expected}\n       + {actual}", shown(&d.at))?;
            if let Some(at) = first_difference(&expected, &actual) {
                write!(f, "\n         {}^", " ".repeat(at))?;
            }
        }
        Ok(())
    }
}

/// The character where two single-line texts start to differ, when a caret helps find it
/// (both longer than a glance).
fn first_difference(a: &str, b: &str) -> Option<usize> {
    /// Below this length the two lines are read at a glance.
    const CARET_MIN_CHARS: usize = 20;
    if a.contains('\n') || b.contains('\n') || a.chars().count().max(b.chars().count()) < CARET_MIN_CHARS {
        return None;
    }
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    (common > 0).then_some(common)
}

/// Run every case of every rule.
///
/// # Errors
/// Every mistake in the file's `tests:` (no case runs then).
pub fn run(set: &RuleSet) -> Result<Vec<CaseReport>, Vec<CaseError>> {
    let rules = parse_cases(set)?;
    Ok(rules
        .into_iter()
        .flat_map(|(rule, cases)| cases.into_iter().map(move |case| run_case(rule, &case, &set.reserved)))
        .collect())
}

/// Run one case; `reserved` are the names of the rule file that rendered keys may not take.
pub fn run_case(rule: &RuleSpec, case: &TestCase, reserved: &Reserved) -> CaseReport {
    let msg = case.message();
    let routing = route(rule, &msg, reserved);
    CaseReport {
        rule: rule.name.clone(),
        case: case.name.clone(),
        differences: compare_routing(rule, &case.expect, &routing),
    }
}

fn compare_routing(rule: &RuleSpec, expect: &Expect, routing: &Routing) -> Vec<Difference> {
    let mut out = Vec::new();
    let actual_filtered = routing.filtered_out();
    if let Some(want) = expect.filtered_out
        && want != actual_filtered
    {
        let why = match routing {
            Routing::FilteredOut => " (the rule's filter rejects it)",
            Routing::Sinks(_) if actual_filtered => " (every sink's own filter rejects it)",
            Routing::DeadLetter(_) => " (dead-lettered)",
            Routing::Sinks(_) => "",
        };
        out.push(Difference {
            at: "filtered_out".into(),
            expected: want.to_string(),
            actual: format!("{actual_filtered}{why}"),
        });
    }
    let rule_reason = match routing {
        Routing::DeadLetter(reason) => Some(reason.as_str()),
        _ => None,
    };
    compare_reason("dead_letter", expect.dead_letter.as_ref(), rule_reason, &mut out);
    // When the message never reached the sinks and that is already reported, each sink
    // saying "not written" again would only repeat it.
    let Routing::Sinks(sinks) = routing else {
        if out.is_empty() {
            for s in &expect.sinks {
                if s.skipped != Some(true) {
                    out.push(Difference {
                        at: s.label.clone(),
                        expected: "written".into(),
                        actual: format!("not written: {}", not_reached(routing)),
                    });
                }
            }
        }
        return out;
    };
    for (i, (spec, actual)) in rule.sinks.iter().zip(sinks).enumerate() {
        let expectations: Vec<&SinkExpect> = expect.sinks.iter().filter(|s| s.index == i).collect();
        let reason = match actual {
            SinkRouting::DeadLetter(r) => Some(r.as_str()),
            _ => None,
        };
        let Some(want) = expectations.first() else {
            // A sink the case does not mention must not fail on it unnoticed.
            if let Some(reason) = reason {
                out.push(Difference {
                    at: format!("{} {}: dead_letter", spec.kind.kind_name(), sink_target(spec)),
                    expected: "(none)".into(),
                    actual: reason.to_string(),
                });
            }
            continue;
        };
        compare_reason(
            &format!("{}: dead_letter", want.label),
            want.dead_letter.as_ref(),
            reason,
            &mut out,
        );
        if reason.is_some() {
            continue;
        }
        match (want.skipped, actual) {
            (Some(true), SinkRouting::Writes(cmd)) => out.push(Difference {
                at: want.label.clone(),
                expected: "not written (skipped)".into(),
                actual: format!("written: {}", Value::Object(written(spec, cmd))),
            }),
            (Some(true), _) => {}
            (_, SinkRouting::Skipped) if !matches!(want.dead_letter, Some(Reason::Any | Reason::Contains(_))) => out
                .push(Difference {
                    at: want.label.clone(),
                    expected: "written".into(),
                    actual: "not written: the sink's own filter rejects it".into(),
                }),
            (_, SinkRouting::Writes(cmd)) => {
                let actual = Value::Object(written(spec, cmd));
                compare(
                    &Value::Object(want.output.clone()),
                    Some(&actual),
                    &format!("{}:", want.label),
                    &mut out,
                );
            }
            _ => {}
        }
    }
    out
}

fn not_reached(routing: &Routing) -> String {
    match routing {
        Routing::FilteredOut => "the rule's filter rejects the message".into(),
        Routing::DeadLetter(reason) => format!("dead-lettered: {reason}"),
        Routing::Sinks(_) => "reached the sinks".into(),
    }
}

fn compare_reason(at: &str, want: Option<&Reason>, actual: Option<&str>, out: &mut Vec<Difference>) {
    let none = "(none)".to_string();
    let diff = match (want.unwrap_or(&Reason::Nothing), actual) {
        (Reason::Nothing, Some(reason)) => Some((none, reason.to_string())),
        (Reason::Any, None) => Some(("dead-lettered".into(), none)),
        (Reason::Contains(text), None) => Some((format!("dead-lettered: …{text}…"), none)),
        (Reason::Contains(text), Some(reason)) if !reason.contains(text.as_str()) => {
            Some((format!("dead-lettered: …{text}…"), reason.to_string()))
        }
        _ => None,
    };
    if let Some((expected, actual)) = diff {
        out.push(Difference {
            at: at.to_string(),
            expected,
            actual,
        });
    }
}

/// Whether `actual` has what `expected` lists, recording each difference under `at`.
///
/// A mapping matches one that has at least its keys (each matching); a list matches a list of
/// the same length, item by item; [`WILDCARD`] matches any value. Where the expectation is a
/// mapping, list, number, boolean or null and the actual value is a text (a stream field, a
/// body), the text is read as JSON first, so `data: { event: order.created }` can check one key
/// of a JSON field.
fn compare(expected: &Value, actual: Option<&Value>, at: &str, out: &mut Vec<Difference>) {
    let Some(actual) = actual else {
        out.push(Difference {
            at: at.trim_end_matches(':').to_string(),
            expected: show(expected),
            actual: "(missing)".into(),
        });
        return;
    };
    if expected.as_str() == Some(WILDCARD) {
        return;
    }
    let differ = match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => {
            for (k, v) in want {
                compare(v, have.get(k), &join(at, k), out);
            }
            false
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                compare(w, Some(h), &format!("{}[{i}]", at.trim_end_matches(':')), out);
            }
            false
        }
        (Value::String(want), Value::String(have)) => want != have,
        (want, Value::String(have)) => match serde_json::from_str::<Value>(have) {
            Ok(parsed) if !parsed.is_string() => {
                compare(want, Some(&parsed), at, out);
                false
            }
            _ => true,
        },
        (Value::Number(want), Value::Number(have)) => want.as_f64() != have.as_f64(),
        (want, have) => want != have,
    };
    if differ {
        let (mut expected_text, mut actual_text) = (show(expected), show(actual));
        // `150000` the text and 150000 the number print alike; say which is which.
        if expected_text == actual_text {
            expected_text.push_str(&format!(" ({})", type_name(expected)));
            actual_text.push_str(&format!(" ({})", type_name(actual)));
        }
        out.push(Difference {
            at: at.trim_end_matches(':').to_string(),
            expected: expected_text,
            actual: actual_text,
        });
    }
}

fn join(at: &str, key: &str) -> String {
    if at.ends_with(':') {
        format!("{at} {key}")
    } else if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// A value for a diff line: a text as it is (newlines escaped), anything else as JSON.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.replace('\n', "\\n"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str_with_env;

    fn report(yaml: &str) -> Vec<String> {
        let set = load_str_with_env(yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        run(&set)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    fn errors(yaml: &str) -> Vec<String> {
        let set = load_str_with_env(yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        check(&set).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_sink_kind_is_previewed_after_the_transform() {
        let yaml = r#"
rules:
  - name: kinds
    source: { channel: in }
    transform: { id: "$.data.id", kind: "order" }
    sinks:
      - publish: "out:{{$.id}}"
        body: "order {{$.id}}"
      - queue: raw-list
      - webhook: "http://hooks.example/{{$.kind}}"
      - stream: copies
      - queue: jobs
        laravel: { handler: 'App\Handlers\Orders@handle', tries: 3 }
      - stream: never
        filter: "@.id == 0"
    tests:
      - input: { data: { id: 7 } }
        expect:
          sinks:
            - publish: "out:{{$.id}}"
              channel: "out:7"
              body: "order 7"
            - queue: raw-list
              key: raw-list
              body: { id: 7, kind: order }
            - webhook: "http://hooks.example/{{$.kind}}"
              method: POST
              url: "http://hooks.example/order"
              body: '{"id":7,"kind":"order"}'
            - stream: copies
              fields: { id: "7", kind: order }
            - queue: jobs
              key: "queues:jobs"
              job:
                displayName: 'App\Handlers\Orders'
                job: 'App\Handlers\Orders@handle'
                maxTries: 3
                data: { id: 7, kind: order }
                attempts: 0
            - stream: never
              skipped: true
"#;
        assert_eq!(report(yaml), ["ok   kinds: case 1"]);
    }

    #[test]
    fn dead_letters_are_expected_or_reported() {
        let yaml = r#"
rules:
  - name: dead
    source: { channel: in }
    filter: "@.a == 1"
    sinks:
      - publish: "out:{{$.missing}}"
    tests:
      - name: not JSON
        input: "not json"
        expect: { dead_letter: "payload is not JSON" }
      - name: key selects nothing
        input: { a: 1 }
        expect: { sinks: [ { publish: "out:{{$.missing}}", dead_letter: selected nothing } ] }
      - name: unexpected
        input: { a: 1 }
        expect: { filtered_out: false }
      - name: expected but delivered
        input: "not json"
        expect: { filtered_out: true }
"#;
        assert_eq!(
            report(yaml),
            [
                "ok   dead: not JSON",
                "ok   dead: key selects nothing",
                "FAIL dead: unexpected (- expected, + actual)\n       \
                 publish out:{{$.missing}}: dead_letter\n       \
                 - (none)\n       \
                 + sink refused the message (not retryable): cannot render for publish out:{{$.missing}}: template `{{$.missing}}` selected nothing in the payload",
                "FAIL dead: expected but delivered (- expected, + actual)\n       \
                 filtered_out\n       \
                 - true\n       \
                 + false (dead-lettered)\n       \
                 dead_letter\n       \
                 - (none)\n       \
                 + filter: payload is not JSON: expected ident at line 1 column 2",
            ]
        );
    }

    #[test]
    fn laravel_jobs_are_routed_by_their_view_and_forwarded_unchanged() {
        let yaml = r#"
rules:
  - name: split
    source: { queue: default, format: laravel }
    sinks:
      - { queue: to-billing, format: laravel, filter: "@.shortName == 'SendInvoice'" }
      - { queue: to-b, format: laravel, filter: "@.shortName != 'SendInvoice'" }
    tests:
      - input: { uuid: u-1, displayName: 'App\Handlers\SendInvoice', job: 'App\Handlers\SendInvoice@handle', data: { n: 1 }, id: x, attempts: 0 }
        expect:
          sinks:
            - queue: to-billing
              key: "queues:to-billing"
              job: { displayName: 'App\Handlers\SendInvoice', data: { n: 1 }, attempts: 0 }
            - queue: to-b
              skipped: true
      - name: not a job
        input: "[1]"
        expect: { dead_letter: not a Laravel job }
"#;
        assert_eq!(report(yaml), ["ok   split: case 1", "ok   split: not a job"]);
    }

    #[test]
    fn stream_sources_take_fields_or_one_body_field() {
        let yaml = r#"
rules:
  - name: fields
    source: { stream: s, group: g }
    sinks: [ { publish: x, body: "{{meta.key}} {{meta.id}} {{$}}" } ]
    tests:
      - input: { a: 1, b: two }
        expect: { sinks: [ { publish: x, body: 's 1-0 {"a":"1","b":"two"}' } ] }
  - name: body-field
    source: { stream: s, body_field: body }
    sinks: [ { publish: x, body: "{{$.a}} from {{meta.fields.origin}} at {{meta.id}}" } ]
    tests:
      - input: { a: 1 }
        meta: { id: "5-1", fields: { origin: shop } }
        expect: { sinks: [ { publish: x, body: "1 from shop at 5-1" } ] }
"#;
        assert_eq!(report(yaml), ["ok   fields: case 1", "ok   body-field: case 1"]);
    }

    #[test]
    fn a_message_no_sink_takes_counts_as_filtered_out() {
        let yaml = r#"
rules:
  - name: r
    source: { pattern: "ev:*" }
    sinks:
      - { publish: a, filter: "@.n > 1" }
      - { publish: a, filter: "@.n > 2" }
    tests:
      - input: { n: 0 }
        expect: { filtered_out: true }
      - input: { n: 2 }
        meta: { key: "ev:1" }
        expect:
          sinks:
            - publish: a
            - publish: a
      - input: { n: 5 }
        expect:
          sinks:
            - publish: a
              skipped: true
"#;
        assert_eq!(
            report(yaml),
            [
                "ok   r: case 1",
                "FAIL r: case 2 (- expected, + actual)\n       publish a #2\n       - written\n       + not written: the sink's own filter rejects it",
                "FAIL r: case 3 (- expected, + actual)\n       publish a\n       - not written (skipped)\n       + written: {\"channel\":\"a\",\"body\":\"{\\\"n\\\":5}\"}",
            ]
        );
    }

    #[test]
    fn expectations_are_subsets_with_a_wildcard() {
        let cases: &[(&str, &str, &[&str])] = &[
            (r#"{"a":1}"#, r#"{"a":1,"b":2}"#, &[]),
            (r#"{"a":"*"}"#, r#"{"a":[1]}"#, &[]),
            (r#"{"a":"*"}"#, r#"{}"#, &["x: a - * + (missing)"]),
            (r#"{"a":{"b":1}}"#, r#"{"a":"{\"b\":1,\"c\":2}"}"#, &[]),
            (r#"{"a":150000}"#, r#"{"a":"150000"}"#, &[]),
            (
                r#"{"a":"150000"}"#,
                r#"{"a":150000}"#,
                &["x: a - 150000 (a string) + 150000 (a number)"],
            ),
            (r#"{"a":[1,2]}"#, r#"{"a":[1,2,3]}"#, &["x: a - [1,2] + [1,2,3]"]),
            (r#"{"a":[1,{"b":2}]}"#, r#"{"a":[1,{"b":3}]}"#, &["x: a[1].b - 2 + 3"]),
            (r#"{"a":1.0}"#, r#"{"a":1}"#, &[]),
            (r#"{"a":"x"}"#, r#"{"a":"y"}"#, &["x: a - x + y"]),
        ];
        for (expected, actual, want) in cases {
            let expected: Value = serde_json::from_str(expected).unwrap();
            let actual: Value = serde_json::from_str(actual).unwrap();
            let mut out = Vec::new();
            compare(&expected, Some(&actual), "x:", &mut out);
            let got: Vec<String> = out
                .iter()
                .map(|d| format!("{} - {} + {}", d.at, d.expected, d.actual))
                .collect();
            assert_eq!(got, *want, "{expected} against {actual}");
        }
    }

    #[test]
    fn long_texts_get_a_caret_under_the_first_difference() {
        let report = CaseReport {
            rule: "r".into(),
            case: "c".into(),
            differences: vec![Difference {
                at: "stream s: fields.data".into(),
                expected: r#"{"order_id":987,"total":15000}"#.into(),
                actual: r#"{"order_id":987,"total":150000}"#.into(),
            }],
        };
        assert_eq!(
            report.to_string(),
            "FAIL r: c (- expected, + actual)\n       stream s: fields.data\n       \
             - {\"order_id\":987,\"total\":15000}\n       \
             + {\"order_id\":987,\"total\":150000}\n                                      ^"
        );
    }

    #[test]
    fn schema_mistakes_name_their_path() {
        let yaml = r#"
rules:
  - name: r
    source: { channel: in }
    sinks:
      - stream: s
      - queue: q
    tests:
      - nmae: x
        input: {}
        expect: {}
      - input: {}
        expect:
          filtered_out: true
          sinks: [ { stream: s } ]
      - input: {}
        expect:
          sinks:
            - { stream: s, skipped: true, fields: { a: b } }
            - { queue: q, job: {} }
            - { stream: s, publish: s }
            - { body: x }
            - { stream: s }
"#;
        assert_eq!(
            errors(yaml),
            [
                r#"rule "r": tests[0].nmae: unknown key `nmae`; did you mean `name`?"#,
                r#"rule "r": tests[0].expect: `expect` says nothing; write `filtered_out`, `dead_letter` or the `sinks` that take the message"#,
                r#"rule "r": tests[1].expect: `filtered_out: true` and `sinks` contradict each other: a filtered-out message reaches no sink"#,
                r#"rule "r": tests[2].expect.sinks[0]: `skipped: true` means the sink takes nothing: drop it, or drop what the sink writes"#,
                r#"rule "r": tests[2].expect.sinks[1].job: `job` is for a queue sink with `laravel:`; this one writes raw list elements: expect `body`"#,
                r#"rule "r": tests[2].expect.sinks[2]: names two sinks (`publish` and `stream`); write each as its own item under `sinks:`"#,
                r#"rule "r": tests[2].expect.sinks[3]: name the sink as the rule does: `stream: KEY`, `publish: CHANNEL`, `queue: LIST` or `webhook: URL`"#,
                r#"rule "r": tests[2].expect.sinks[4].stream: the rule has only 1 `stream s` sink, and each expectation names a different one; its sinks: stream s, queue q"#,
            ]
        );
    }
}
