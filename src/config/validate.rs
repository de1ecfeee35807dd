//! Raw rule file → validated [`RuleSet`]: a pure function that collects every mistake.
//!
//! Each check records a [`Diagnostic`] at the YAML position of the value it rejects and goes
//! on, so one `check` run lists everything that is wrong. Defaults are filled into new types;
//! the raw structs are never modified.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::Diagnostic;
use super::env::expand;
use super::raw::{RawConnection, RawFile, RawLaravelSink, RawOnError, RawRule, RawSink, RawSource, SpStr};
use super::spec::*;
use crate::filter::{Filter, Template, Transform};

/// The URL of `default` when the file does not define it.
const DEFAULT_URL: &str = "${REDIS_URL:-redis://127.0.0.1:6379}";
/// Entries per stream read when `batch` is not given.
const DEFAULT_BATCH: usize = 100;
/// Upper bound on `batch`: larger reads only add latency and memory.
const MAX_BATCH: usize = 10_000;
/// Pub/Sub messages buffered per rule when `buffer` is not given.
const DEFAULT_BUFFER: usize = 10_000;
/// Pub/Sub bytes buffered per rule when `buffer_bytes` is not given: 10,000 messages of 6 KiB,
/// or 64 messages of 1 MiB (without it, 10,000 messages of 1 MB would be 10 GB).
const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
/// Server-side block of each read: also how long a cancelled rule may wait for its read.
const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
/// How long an `ha: single` lease holds when `lease_ttl` is not given: the longest gap after the
/// active instance dies.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// How long an `ha: claim` claim holds when `claim_ttl` is not given.
const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(10);
/// Entries idle this long in another consumer's pending list are claimed.
const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(60);
/// Deliveries after which a stream entry is dead-lettered instead of tried again.
const DEFAULT_MAX_DELIVERIES: u64 = 10;
/// Webhook requests in flight at once per sink.
const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Webhook request timeout.
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

struct Ctx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<Diagnostic>,
    /// What is allowed but risky; `check` shows it, `run` logs it, neither refuses the file.
    warnings: Vec<Diagnostic>,
    rule: Option<String>,
    /// Every connection the file defines, valid or not: a rule naming one whose definition has
    /// a mistake (reported there) is not told the connection is unknown too.
    defined_connections: std::collections::HashSet<String>,
}

impl Ctx<'_> {
    fn err(&mut self, at: Location, message: impl Into<String>) {
        let d = self.diagnostic(at, message);
        self.errors.push(d);
    }

    fn warn(&mut self, at: Location, message: impl Into<String>) {
        let d = self.diagnostic(at, message);
        self.warnings.push(d);
    }

    fn diagnostic(&self, at: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            line: at.line(),
            column: at.column(),
            rule: self.rule.clone(),
            message: message.into(),
        }
    }

    /// The string with `${VAR}` expanded.
    fn text(&mut self, s: &SpStr) -> Option<String> {
        match expand(&s.value, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(s.referenced, e);
                None
            }
        }
    }

    /// A non-empty name (key, channel, group).
    fn name(&mut self, s: &SpStr, what: &str) -> Option<String> {
        let v = self.text(s)?;
        if v.trim().is_empty() {
            self.err(s.referenced, format!("{what} is empty"));
            return None;
        }
        Some(v)
    }

    fn duration(&mut self, s: &SpStr, what: &str) -> Option<Duration> {
        let v = self.text(s)?;
        match humantime::parse_duration(v.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    s.referenced,
                    format!("{what} `{v}` is not a duration ({e}); write e.g. `200ms`, `5s` or `1m`"),
                );
                None
            }
        }
    }

    /// A size in bytes, at least `min`: a number of bytes, or a number with a unit (`KB`/`KiB`,
    /// `MB`/`MiB`, `GB`/`GiB`, decimal and binary as written; case and a space do not matter).
    fn size(&mut self, s: &SpStr, key: &str, min: usize) -> Option<usize> {
        let text = self.text(s)?;
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if usize::try_from(b.as_u64()).is_ok_and(|n| n >= min) => usize::try_from(b.as_u64()).ok(),
            Ok(_) => {
                self.err(s.referenced, format!("`{key}` must be at least {min} bytes"));
                None
            }
            Err(_) => {
                self.err(
                    s.referenced,
                    format!("`{key}: {text}` is not a size; write e.g. `64MiB`, `512KiB` or a number of bytes"),
                );
                None
            }
        }
    }

    fn template(&mut self, s: &SpStr, what: &str) -> Option<Template> {
        let v = self.text(s)?;
        if v.is_empty() {
            self.err(s.referenced, format!("{what} is empty"));
            return None;
        }
        match Template::compile(&v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(s.referenced, e);
                None
            }
        }
    }

    /// Reject an option given to a kind it does not apply to.
    fn only_for<T>(&mut self, opt: &Option<Spanned<T>>, key: &str, kinds: &str) {
        if let Some(o) = opt {
            self.err(o.referenced, format!("`{key}` applies to {kinds} only; remove it"));
        }
    }
}

/// Validate a parsed file.
///
/// # Errors
/// Every mistake found, each with its position.
pub(super) fn validate(raw: RawFile, env: &dyn Fn(&str) -> Option<String>) -> Result<RuleSet, Vec<Diagnostic>> {
    let mut cx = Ctx {
        env,
        errors: Vec::new(),
        warnings: Vec::new(),
        rule: None,
        defined_connections: raw.connections.keys().cloned().collect(),
    };
    let connections = connections(&mut cx, &raw);
    let http = raw.http.as_ref().and_then(|h| http_spec(&mut cx, h));
    let limits = limits(&mut cx, raw.limits.as_ref());
    let mut rules = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for rule in &raw.rules {
        let name = rule.value.name.value.clone();
        cx.rule = Some(name.clone());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            cx.err(
                rule.value.name.referenced,
                "a rule name must be non-empty letters, digits, `-`, `_`, `.` or `:` (it names metrics and logs)",
            );
        }
        if let Some(line) = seen.insert(name.clone(), rule.value.name.referenced.line()) {
            cx.err(
                rule.value.name.referenced,
                format!("duplicate rule name (first used on line {line}); give each rule its own name"),
            );
        }
        if let Some(spec) = rule_spec(&mut cx, &rule.value, rule.referenced, &connections, limits) {
            rules.push(spec);
        }
    }
    if cx.errors.is_empty() {
        Ok(RuleSet {
            connections: connections.into_values().collect(),
            http,
            reserved: RuleSet::reserved_of(&rules),
            rules,
            warnings: cx.warnings,
        })
    } else {
        Err(cx.errors)
    }
}

type Connections = indexmap::IndexMap<String, Arc<ConnectionSpec>>;

fn connections(cx: &mut Ctx<'_>, raw: &RawFile) -> Connections {
    let mut out = Connections::new();
    if !raw.connections.contains_key("default") {
        let url = expand(DEFAULT_URL, cx.env).unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        out.insert(
            "default".into(),
            Arc::new(ConnectionSpec {
                name: "default".into(),
                url,
                ..ConnectionSpec::default()
            }),
        );
    }
    for (name, conn) in &raw.connections {
        let RawConnection {
            url,
            cluster,
            nodes,
            prefix,
            username,
            password,
            password_file,
            tls,
        } = &conn.value;
        let is_cluster = cluster.as_ref().is_some_and(|c| c.value);
        let mut seeds: Vec<&SpStr> = url.iter().collect();
        match nodes {
            Some(n) if !is_cluster => {
                cx.err(
                    n.referenced,
                    format!(
                        "connection `{name}`: `nodes:` lists the seed nodes of a Redis Cluster; add `cluster: true`, or give one server as `url:`"
                    ),
                );
                continue;
            }
            Some(n) => seeds.extend(n.value.iter()),
            None => {}
        }
        if seeds.is_empty() {
            cx.err(
                conn.referenced,
                format!(
                    "connection `{name}` has no address; write `url: redis://host:6379`, or for a Redis Cluster `cluster: true` with `nodes: [redis://host1:6379, redis://host2:6379]`"
                ),
            );
            continue;
        }
        let given = seeds.len();
        let mut urls = Vec::with_capacity(given);
        for seed in seeds {
            let Some(text) = cx.text(seed) else { continue };
            if raw_reserved_in_userinfo(&text) {
                cx.err(
                    seed.referenced,
                    format!(
                        "connection `{name}`: the user or password in `{}` holds a character a URL reserves (`/`, `#` or `?`), so the URL does not say where the password ends; percent-encode it (`/` as `%2F`, `#` as `%23`, `?` as `%3F`, `%` as `%25`) or give it as `password:` (e.g. `password: \"${{REDIS_PASSWORD}}\"`)",
                        crate::mask::url(&text)
                    ),
                );
                continue;
            }
            match redis::Client::open(text.as_str()) {
                Err(e) => cx.err(
                    seed.referenced,
                    format!(
                        "connection `{name}`: bad Redis URL `{}` ({e}); write e.g. `redis://127.0.0.1:6379/0` or `rediss://user:pass@host:6380`",
                        crate::mask::url(&text)
                    ),
                ),
                Ok(client) if is_cluster && client.get_connection_info().redis_settings().db() != 0 => cx.err(
                    seed.referenced,
                    format!(
                        "connection `{name}`: a Redis Cluster has only database 0; remove the `/{}` from `{}`",
                        client.get_connection_info().redis_settings().db(),
                        crate::mask::url(&text)
                    ),
                ),
                Ok(_) => urls.push(text),
            }
        }
        if urls.len() < given {
            continue;
        }
        let url_text = urls[0].clone();
        let prefix = prefix.as_ref().and_then(|p| cx.text(p)).unwrap_or_default();
        if let (Some(_), Some(f)) = (password, password_file) {
            cx.err(
                f.referenced,
                format!("connection `{name}`: give `password` or `password_file`, not both"),
            );
            continue;
        }
        let username = username.as_ref().and_then(|u| cx.text(u));
        let password = password.as_ref().and_then(|p| cx.text(p));
        let password_file = password_file
            .as_ref()
            .and_then(|p| cx.text(p))
            .map(std::path::PathBuf::from);
        let tls = match tls {
            None => None,
            Some(t) => {
                if !url_text.starts_with("rediss://") {
                    cx.err(
                        t.referenced,
                        format!("connection `{name}`: `tls` needs a `rediss://` URL"),
                    );
                    continue;
                }
                let file = |cx: &mut Ctx<'_>, f: &Option<SpStr>| {
                    f.as_ref().and_then(|f| cx.text(f)).map(std::path::PathBuf::from)
                };
                let spec = TlsSpec {
                    ca_file: file(cx, &t.value.ca_file),
                    cert_file: file(cx, &t.value.cert_file),
                    key_file: file(cx, &t.value.key_file),
                };
                if spec.cert_file.is_some() != spec.key_file.is_some() {
                    cx.err(
                        t.referenced,
                        format!("connection `{name}`: a client certificate needs both `cert_file` and `key_file`"),
                    );
                    continue;
                }
                Some(spec)
            }
        };
        out.insert(
            name.clone(),
            Arc::new(ConnectionSpec {
                name: name.clone(),
                url: url_text,
                cluster: is_cluster,
                nodes: if is_cluster { urls } else { Vec::new() },
                prefix,
                username,
                password,
                password_file,
                tls,
            }),
        );
    }
    out
}

fn connection(cx: &mut Ctx<'_>, name: &Option<SpStr>, conns: &Connections) -> Option<Arc<ConnectionSpec>> {
    let Some(name) = name else {
        return conns.get("default").cloned();
    };
    if let Some(c) = conns.get(&name.value) {
        return Some(c.clone());
    }
    if cx.defined_connections.contains(&name.value) {
        // Defined with a mistake, which its definition reported: one mistake, one message.
        return None;
    }
    let known: Vec<&str> = conns.keys().map(String::as_str).collect();
    let hint = known
        .iter()
        .find(|k| super::edit_distance(k, &name.value) <= 2)
        .map(|k| format!("did you mean `{k}`?"))
        .unwrap_or_else(|| format!("define it under `connections:` or use one of: {}", known.join(", ")));
    cx.err(name.referenced, format!("unknown connection `{}`; {hint}", name.value));
    None
}

fn rule_spec(cx: &mut Ctx<'_>, rule: &RawRule, at: Location, conns: &Connections, limits: Limits) -> Option<RuleSpec> {
    let source = source_spec(cx, &rule.source, conns);
    let filter = rule.filter.as_ref().and_then(|f| match Filter::compile(&f.value) {
        Ok(filter) => Some(filter),
        Err(e) => {
            cx.err(f.referenced, e);
            None
        }
    });
    let transform = rule.transform.as_ref().and_then(|t| {
        let plain = t.value.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
        match Transform::compile(&plain) {
            Ok(transform) => Some(transform),
            Err(errors) => {
                for (key, e) in errors {
                    let loc = t.value.get(&key).map(|v| v.referenced).unwrap_or(t.referenced);
                    cx.err(loc, format!("transform `{key}`: {e}"));
                }
                None
            }
        }
    });
    let on_error = error_policy(cx, rule.on_error.as_ref(), &ErrorPolicy::default());
    if rule.sinks.is_empty() {
        cx.err(
            at,
            "rule has no sinks; add `sinks:` with at least one of `- stream: KEY`, `- publish: CHANNEL` or `- queue: LIST`",
        );
    }
    let sinks: Vec<Option<SinkSpec>> = rule
        .sinks
        .iter()
        .map(|s| sink_spec(cx, s, conns, on_error.as_ref()))
        .collect();
    let tests = rule
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut positions = Vec::new();
            let at = (t.referenced.line(), t.referenced.column());
            t.value.positions(&format!("tests[{i}]"), at, &mut positions);
            CaseSource {
                value: t.value.to_json(),
                positions,
            }
        })
        .collect();
    let sinks: Option<Vec<SinkSpec>> = sinks.into_iter().collect();
    if let Some(sinks) = &sinks {
        distinct_labels(cx, rule, sinks);
    }
    let filter_ok = rule.filter.is_none() || filter.is_some();
    let transform_ok = rule.transform.is_none() || transform.is_some();
    if !filter_ok || !transform_ok || rule.sinks.is_empty() {
        return None;
    }
    Some(RuleSpec {
        name: rule.name.value.clone(),
        source: source?,
        filter,
        transform,
        sinks: sinks?,
        on_error: on_error?,
        tests,
        limits,
    })
}

/// Smallest `batch_bytes`: a batch must hold a message of a usual size.
const MIN_BATCH_BYTES: usize = 64 << 10;

/// The `http:` section.
fn http_spec(cx: &mut Ctx<'_>, h: &Spanned<super::raw::RawHttp>) -> Option<HttpSpec> {
    let tap = h.value.tap.as_ref().is_some_and(|t| t.value);
    let tap_token = h.value.tap_token.as_ref().and_then(|t| cx.name(t, "`tap_token`"));
    let listen = cx.text(&h.value.listen)?;
    match listen.parse::<SocketAddr>() {
        Ok(listen) => {
            if tap && tap_token.is_none() && !listen.ip().is_loopback() {
                cx.err(
                    h.value.listen.referenced,
                    format!(
                        "`tap: true` on `{listen}`, beyond loopback, shows payloads to anyone who can reach it; add `tap_token: \"${{TAP_TOKEN}}\"` (sent by `redis-router tap`), or listen on 127.0.0.1"
                    ),
                );
            }
            Some(HttpSpec { listen, tap, tap_token })
        }
        Err(_) => {
            cx.err(
                h.value.listen.referenced,
                format!("`{listen}` is not an address; write e.g. `127.0.0.1:9464`"),
            );
            None
        }
    }
}

/// Only the `http:` section of a file (for `redis-router tap`, which needs nothing else).
pub(super) fn http_only(
    raw: Option<&Spanned<super::raw::RawHttp>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<HttpSpec>, Vec<Diagnostic>> {
    let mut cx = Ctx {
        env,
        errors: Vec::new(),
        warnings: Vec::new(),
        rule: None,
        defined_connections: Default::default(),
    };
    let http = raw.and_then(|h| http_spec(&mut cx, h));
    if cx.errors.is_empty() { Ok(http) } else { Err(cx.errors) }
}

/// The `limits:` section, defaults filled in.
fn limits(cx: &mut Ctx<'_>, raw: Option<&Spanned<super::raw::RawLimits>>) -> Limits {
    let mut limits = Limits::default();
    let Some(raw) = raw else { return limits };
    if let Some(v) = raw
        .value
        .max_payload
        .as_ref()
        .and_then(|s| cx.size(s, "max_payload", 1))
    {
        limits.max_payload = v;
    }
    if let Some(v) = raw
        .value
        .batch_bytes
        .as_ref()
        .and_then(|s| cx.size(s, "batch_bytes", MIN_BATCH_BYTES))
    {
        limits.batch_bytes = v;
    }
    limits
}

/// Two sinks of a rule that differ but show the same label (two webhooks whose URLs differ only
/// in a masked token, or two sinks given one `name`) could not be told apart in metrics, dead
/// letters and `dlq replay`; each needs a `name` of its own. Identical sinks may share a label:
/// they are one target.
fn distinct_labels(cx: &mut Ctx<'_>, rule: &RawRule, sinks: &[SinkSpec]) {
    for (i, a) in sinks.iter().enumerate() {
        let Some(j) = sinks[..i].iter().position(|b| b.label() == a.label()) else {
            continue;
        };
        if sinks[j].kind == a.kind && sinks[j].name.is_none() {
            continue;
        }
        let at = rule.sinks[i]
            .value
            .name
            .as_ref()
            .map_or(rule.sinks[i].referenced, |n| n.referenced);
        cx.err(
            at,
            format!(
                "sinks[{j}] and sinks[{i}] both show as `{}`; give each its own `name:` (it labels metrics and dead letters, and `dlq replay` finds the sink by it)",
                a.label()
            ),
        );
    }
}

fn source_spec(cx: &mut Ctx<'_>, src: &Spanned<RawSource>, conns: &Connections) -> Option<SourceSpec> {
    let s = &src.value;
    let (kind, key) = pick_kind(
        cx,
        src.referenced,
        "source",
        [
            ("channel", &s.channel),
            ("pattern", &s.pattern),
            ("stream", &s.stream),
            ("queue", &s.queue),
        ],
        "source has no kind; write one of `channel: NAME`, `pattern: GLOB`, `stream: KEY` or `queue: LIST`",
        "a rule reads one source, so split it into two rules",
    )?;
    let connection = connection(cx, &s.connection, conns);
    let name = cx.name(key, &format!("source `{kind}`"));
    let pubsub = matches!(kind, "channel" | "pattern");
    let is_stream = kind == "stream";
    if !pubsub {
        cx.only_for(&s.buffer, "buffer", "channel and pattern sources");
        cx.only_for(&s.buffer_bytes, "buffer_bytes", "channel and pattern sources");
        cx.only_for(&s.overflow, "overflow", "channel and pattern sources");
        cx.only_for(
            &s.ha,
            "ha",
            "channel and pattern sources (streams and queues share work by themselves)",
        );
    }
    if s.ha.as_ref().is_none_or(|h| h.value != "single") {
        cx.only_for(&s.lease_ttl, "lease_ttl", "`ha: single`");
    }
    let lease = match &s.ha {
        Some(ha) if ha.value == "single" => match &s.lease_ttl {
            Some(t) => cx.duration(t, "`lease_ttl`").map(Some),
            None => Some(Some(DEFAULT_LEASE_TTL)),
        },
        _ => Some(None),
    };
    let claim = match &s.ha {
        None => {
            cx.only_for(&s.claim_ttl, "claim_ttl", "`ha: claim`");
            cx.only_for(&s.claim_id, "claim_id", "`ha: claim`");
            Some(None)
        }
        Some(ha) if ha.value == "single" => {
            cx.only_for(&s.claim_ttl, "claim_ttl", "`ha: claim`");
            cx.only_for(&s.claim_id, "claim_id", "`ha: claim`");
            Some(None)
        }
        Some(ha) if ha.value == "claim" => {
            let ttl = match &s.claim_ttl {
                Some(t) => cx.duration(t, "`claim_ttl`"),
                None => Some(DEFAULT_CLAIM_TTL),
            };
            let id = match &s.claim_id {
                Some(t) => Some(Some(cx.template(t, "`claim_id`")?)),
                None => Some(None),
            };
            match (ttl, id) {
                (Some(ttl), Some(id)) => Some(Some(ClaimSpec { ttl, id })),
                _ => None,
            }
        }
        Some(ha) if ha.value == "none" => Some(None),
        Some(ha) => {
            cx.err(
                ha.referenced,
                format!(
                    "unknown `ha: {}`; write `claim` (each message delivered by one instance), `single` (one active instance) or `none`",
                    ha.value
                ),
            );
            None
        }
    };
    if !is_stream {
        cx.only_for(&s.group, "group", "stream sources");
        cx.only_for(&s.start, "start", "stream sources");
        cx.only_for(&s.batch, "batch", "stream sources");
        cx.only_for(&s.body_field, "body_field", "stream sources");
        cx.only_for(&s.claim_idle, "claim_idle", "stream sources");
        cx.only_for(&s.max_deliveries, "max_deliveries", "stream sources");
    }
    if kind != "queue" {
        cx.only_for(&s.format, "format", "queue sources");
    }
    if kind != "channel" {
        cx.only_for(
            &s.sharded,
            "sharded",
            "channel sources (sharded Pub/Sub has no patterns)",
        );
    }
    let sharded = s.sharded.as_ref().is_some_and(|b| b.value);
    if let (Some(b), Some(c)) = (&s.sharded, &connection)
        && b.value
        && !c.cluster
    {
        cx.err(
            b.referenced,
            format!(
                "`sharded: true` subscribes with SSUBSCRIBE on a Redis Cluster, but connection `{}` has no `cluster: true`; add it, or remove `sharded`",
                c.name
            ),
        );
    }
    if pubsub {
        cx.only_for(&s.block, "block", "stream and queue sources");
        cx.only_for(&s.consumer, "consumer", "stream and queue sources");
    }
    let buffer = match &s.buffer {
        Some(b) if b.value == 0 => {
            cx.err(b.referenced, "`buffer` must be at least 1");
            None
        }
        Some(b) => Some(b.value),
        None => Some(DEFAULT_BUFFER),
    };
    let buffer_bytes = match &s.buffer_bytes {
        None => Some(DEFAULT_BUFFER_BYTES),
        Some(b) => cx.size(b, "buffer_bytes", 1),
    };
    let overflow = match &s.overflow {
        None => Some(Overflow::DropOldest),
        Some(o) => match o.value.as_str() {
            "drop_oldest" => Some(Overflow::DropOldest),
            "drop_newest" => Some(Overflow::DropNewest),
            "block" => Some(Overflow::Block),
            other => {
                cx.err(
                    o.referenced,
                    format!("unknown overflow policy `{other}`; write `drop_oldest`, `drop_newest` or `block`"),
                );
                None
            }
        },
    };
    let block = match &s.block {
        Some(b) => cx.duration(b, "`block`"),
        None => Some(DEFAULT_BLOCK),
    };
    let consumer = match &s.consumer {
        Some(c) => Some(Some(cx.name(c, "`consumer`")?)),
        None => Some(None),
    };
    let kind = match kind {
        "channel" | "pattern" => {
            let options = PubSubOptions {
                buffer: buffer?,
                buffer_bytes: buffer_bytes?,
                overflow: overflow?,
                claim: claim?,
                lease: lease?,
            };
            if kind == "channel" {
                SourceSpecKind::Channel {
                    channel: name?,
                    sharded,
                    options,
                }
            } else {
                SourceSpecKind::Pattern {
                    pattern: name?,
                    options,
                }
            }
        }
        "stream" => {
            let batch = match &s.batch {
                Some(b) if b.value == 0 || b.value > MAX_BATCH => {
                    cx.err(b.referenced, format!("`batch` must be between 1 and {MAX_BATCH}"));
                    None
                }
                Some(b) => Some(b.value),
                None => Some(DEFAULT_BATCH),
            };
            let start = match &s.start {
                None => Some(StreamStart::Newest),
                Some(st) => {
                    match st.value.as_str() {
                        "newest" | "$" => Some(StreamStart::Newest),
                        "oldest" | "0" => Some(StreamStart::Oldest),
                        id if is_stream_id(id) => Some(StreamStart::Id(id.to_string())),
                        other => {
                            cx.err(st.referenced, format!("`start: {other}` is not `newest`, `oldest` or an entry id such as `1700000000000-0`"));
                            None
                        }
                    }
                }
            };
            let group = match &s.group {
                Some(g) => Some(Some(cx.name(g, "`group`")?)),
                None => Some(None),
            };
            let body_field = match &s.body_field {
                Some(b) => Some(Some(cx.name(b, "`body_field`")?)),
                None => Some(None),
            };
            let claim_idle = match &s.claim_idle {
                Some(c) => cx.duration(c, "`claim_idle`"),
                None => Some(DEFAULT_CLAIM_IDLE),
            };
            let max_deliveries = match &s.max_deliveries {
                Some(m) if m.value == 0 => {
                    cx.err(m.referenced, "`max_deliveries` must be at least 1");
                    None
                }
                Some(m) => Some(m.value),
                None => Some(DEFAULT_MAX_DELIVERIES),
            };
            if s.group.is_none() {
                cx.only_for(&s.claim_idle, "claim_idle", "stream sources with a `group`");
                cx.only_for(&s.max_deliveries, "max_deliveries", "stream sources with a `group`");
            }
            SourceSpecKind::Stream {
                stream: name?,
                group: group?,
                consumer: consumer?,
                start: start?,
                batch: batch?,
                block: block?,
                body_field: body_field?,
                claim_idle: claim_idle?,
                max_deliveries: max_deliveries?,
            }
        }
        _ => {
            let format = queue_format(cx, &s.format).map(|f| f.unwrap_or(QueueFormat::Raw));
            let laravel = format == Some(QueueFormat::Laravel);
            let hash_tag = laravel_hash_tag(cx, &s.hash_tag, laravel, "`format: laravel`");
            let name = name?;
            if let Some(c) = &connection {
                cluster_queue_check(cx, key, c, &name, laravel, hash_tag);
            }
            SourceSpecKind::Queue {
                queue: name,
                format: format?,
                block: block?,
                consumer: consumer?,
                hash_tag,
            }
        }
    };
    Some(SourceSpec {
        connection: connection?,
        kind,
    })
}

/// The one kind key a source or sink gives (`stream: KEY`), or an error for none or several.
fn pick_kind<'a, const N: usize>(
    cx: &mut Ctx<'_>,
    at: Location,
    what: &str,
    kinds: [(&'static str, &'a Option<SpStr>); N],
    none: &str,
    split: &str,
) -> Option<(&'static str, &'a SpStr)> {
    let given: Vec<(&'static str, &'a SpStr)> = kinds
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
    match given.as_slice() {
        [one] => Some(*one),
        [] => {
            cx.err(at, none);
            None
        }
        [(a, _), (b, second), ..] => {
            cx.err(second.referenced, format!("{what} has both `{a}` and `{b}`; {split}"));
            None
        }
    }
}

/// `hash_tag: true|false` of a Laravel queue source or sink.
fn laravel_hash_tag(cx: &mut Ctx<'_>, hash_tag: &Option<Spanned<bool>>, laravel: bool, needs: &str) -> bool {
    if !laravel {
        cx.only_for(hash_tag, "hash_tag", needs);
    }
    hash_tag.as_ref().is_some_and(|b| b.value)
}

/// On a cluster, the keys a queue uses together must share a slot: Laravel's push and pop
/// scripts touch `queues:<name>` and `queues:<name>:notify` (and `:reserved`, `:delayed`), and a
/// queue source moves elements into its processing list with BLMOVE.
fn cluster_queue_check(
    cx: &mut Ctx<'_>,
    key: &SpStr,
    conn: &ConnectionSpec,
    name: &str,
    laravel: bool,
    hash_tag: bool,
) {
    if !conn.cluster {
        return;
    }
    if laravel && !hash_tag && crate::redis_conn::hash_tag(name).is_none() {
        cx.err(
            key.referenced,
            format!(
                "on cluster connection `{}`, Laravel's keys `queues:{name}` and `queues:{name}:notify` hash to different slots; add `hash_tag: true` (keys `queues:{{{name}}}`, as Laravel 13 names them on a cluster), or name the queue `{{{name}}}` as the app's `config/queue.php` does",
                conn.name
            ),
        );
    } else if !laravel && name.contains('}') && crate::redis_conn::hash_tag(name).is_none() {
        cx.err(
            key.referenced,
            format!(
                "on cluster connection `{}`, the queue's processing list must share its slot: give `{name}` a hash tag such as `{{jobs}}:rest`, or drop the `}}`",
                conn.name
            ),
        );
    }
}

/// `format: raw | laravel` of a queue source or sink.
fn queue_format(cx: &mut Ctx<'_>, format: &Option<SpStr>) -> Option<Option<QueueFormat>> {
    match format {
        None => Some(None),
        Some(f) => match f.value.as_str() {
            "raw" => Some(Some(QueueFormat::Raw)),
            "laravel" => Some(Some(QueueFormat::Laravel)),
            other => {
                cx.err(
                    f.referenced,
                    format!("unknown queue format `{other}`; write `raw` or `laravel`"),
                );
                None
            }
        },
    }
}

/// Whether a Redis URL's userinfo holds a raw `/`, `#` or `?`: the URL then either does not
/// parse or parses with the password's tail as its path, query or fragment (an `@` left
/// after the authority). `@`, `:`, `+` and `%` (not followed by two hex digits) need no
/// encoding: the last `@` ends the userinfo and the first `:` starts the password.
fn raw_reserved_in_userinfo(text: &str) -> bool {
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    if !rest.contains('@') {
        return false;
    }
    match url::Url::parse(text) {
        Err(_) => rest.rfind('@').is_some_and(|at| rest[..at].contains(['/', '#', '?'])),
        Ok(u) => {
            u.path().contains('@')
                || u.query().is_some_and(|q| q.contains('@'))
                || u.fragment().is_some_and(|f| f.contains('@'))
        }
    }
}

fn is_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let seq = parts.next();
    !ms.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

fn sink_spec(
    cx: &mut Ctx<'_>,
    sink: &Spanned<RawSink>,
    conns: &Connections,
    rule_policy: Option<&ErrorPolicy>,
) -> Option<SinkSpec> {
    let s = &sink.value;
    let (kind, key) = pick_kind(
        cx,
        sink.referenced,
        "sink",
        [
            ("publish", &s.publish),
            ("stream", &s.stream),
            ("queue", &s.queue),
            ("webhook", &s.webhook),
        ],
        "sink has no kind; write one of `stream: KEY`, `publish: CHANNEL`, `queue: LIST` or `webhook: URL`",
        "write each as its own item under `sinks:`",
    )?;
    if kind != "stream" {
        cx.only_for(&s.maxlen, "maxlen", "stream sinks");
        cx.only_for(&s.fields, "fields", "stream sinks");
    }
    if kind == "stream" {
        cx.only_for(&s.body, "body", "publish, queue and webhook sinks");
    }
    if kind != "webhook" {
        for (opt, key) in [(&s.method, "method"), (&s.timeout, "timeout"), (&s.secret, "secret")] {
            cx.only_for(opt, key, "webhook sinks");
        }
        cx.only_for(&s.headers, "headers", "webhook sinks");
        cx.only_for(&s.max_in_flight, "max_in_flight", "webhook sinks");
    }
    if kind != "queue" {
        cx.only_for(&s.laravel, "laravel", "queue sinks");
        cx.only_for(&s.format, "format", "queue sinks");
        cx.only_for(&s.hash_tag, "hash_tag", "Laravel queue sinks");
    }
    if kind != "publish" {
        cx.only_for(&s.sharded, "sharded", "publish sinks");
    }
    if kind == "webhook" {
        cx.only_for(&s.connection, "connection", "Redis sinks (a webhook has its URL)");
    }
    let connection = if kind == "webhook" {
        conns.get("default").cloned()
    } else {
        connection(cx, &s.connection, conns)
    };
    let target = cx.template(key, &format!("sink `{kind}`"));
    if let Some(t) = &target
        && t.is_only_from_message()
    {
        let (what, example) = match kind {
            "webhook" => ("URL", "`https://hooks.internal/{{$.type}}`"),
            "publish" => ("channel", "`events:{{$.type}}`"),
            _ => ("key", "`events:{{$.type}}`"),
        };
        cx.warn(
            key.referenced,
            format!(
                "the {kind} sink's {what} `{}` is nothing but a template: each message chooses where it is written. Names in the router's own key space are refused, but any other is taken; give it a fixed part such as {example}",
                t.source()
            ),
        );
    }
    let body = match &s.body {
        Some(b) => Some(Some(cx.template(b, "`body`")?)),
        None => Some(None),
    };
    let filter = match &s.filter {
        None => Some(None),
        Some(f) => match Filter::compile(&f.value) {
            Ok(filter) => Some(Some(filter)),
            Err(e) => {
                cx.err(f.referenced, e);
                None
            }
        },
    };
    let default_policy = ErrorPolicy::default();
    let on_error = error_policy(cx, s.on_error.as_ref(), rule_policy.unwrap_or(&default_policy));
    let kind = match kind {
        "publish" => SinkSpecKind::Publish {
            channel: target?,
            body: body?,
            sharded: s.sharded.as_ref().is_some_and(|b| b.value),
        },
        "webhook" => SinkSpecKind::Webhook(webhook_spec(cx, s, key, target?, body?)?),
        "stream" => {
            let fields = match &s.fields {
                None => Some(None),
                Some(f) if f.value.is_empty() => {
                    cx.err(
                        f.referenced,
                        "`fields` is empty; remove it to write the payload's own keys",
                    );
                    None
                }
                Some(f) => {
                    let compiled: Vec<Option<(String, Template)>> = f
                        .value
                        .iter()
                        .map(|(k, v)| Some((k.clone(), cx.template(v, &format!("field `{k}`"))?)))
                        .collect();
                    compiled.into_iter().collect::<Option<Vec<_>>>().map(Some)
                }
            };
            let maxlen = match &s.maxlen {
                Some(m) if m.value == 0 => {
                    cx.err(
                        m.referenced,
                        "`maxlen: 0` would empty the stream; remove it or give a length",
                    );
                    None
                }
                other => Some(other.as_ref().map(|m| m.value)),
            };
            SinkSpecKind::Stream {
                stream: target?,
                maxlen: maxlen?,
                fields: fields?,
            }
        }
        _ => {
            let laravel_format = match queue_format(cx, &s.format) {
                None => None,
                Some(None) => Some(s.laravel.is_some()),
                Some(Some(QueueFormat::Laravel)) => Some(true),
                Some(Some(QueueFormat::Raw)) if s.laravel.is_some() => {
                    if let Some(f) = &s.format {
                        cx.err(f.referenced, "`format: raw` contradicts `laravel:`; remove `format`");
                    }
                    None
                }
                Some(Some(QueueFormat::Raw)) => Some(false),
            };
            if laravel_format == Some(true)
                && let Some(b) = &s.body
            {
                cx.err(
                    b.referenced,
                    "a Laravel queue sink writes jobs, not a `body`; remove `body`",
                );
            }
            let laravel_format = laravel_format?;
            let hash_tag = laravel_hash_tag(cx, &s.hash_tag, laravel_format, "`format: laravel` or `laravel:`");
            if let Some(c) = &connection {
                cluster_queue_check(cx, key, c, &key.value, laravel_format, hash_tag);
            }
            let laravel = match (&s.laravel, laravel_format) {
                (Some(l), _) => Some(LaravelSinkSpec {
                    hash_tag,
                    ..laravel_spec(cx, l)?
                }),
                (None, true) => Some(LaravelSinkSpec {
                    target: None,
                    tries: None,
                    timeout: None,
                    backoff: None,
                    delay: None,
                    hash_tag,
                }),
                (None, false) => None,
            };
            SinkSpecKind::Queue {
                queue: target?,
                body: body?,
                laravel,
            }
        }
    };
    let name = match &s.name {
        None => Some(None),
        Some(n) => cx.text(n).and_then(|v| {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
                cx.err(
                    n.referenced,
                    "a sink name must be non-empty letters, digits, `-`, `_`, `.` or `:` (it names metrics, logs and dead letters)",
                );
                None
            } else {
                Some(Some(v))
            }
        }),
    };
    Some(SinkSpec {
        name: name?,
        connection: connection?,
        kind,
        filter: filter?,
        on_error: on_error?,
    })
}

fn webhook_spec(
    cx: &mut Ctx<'_>,
    s: &RawSink,
    key: &SpStr,
    url: Template,
    body: Option<Template>,
) -> Option<WebhookSpec> {
    // Every key is checked, whatever is wrong before it: `ok` says whether all were right.
    let mut ok = true;
    if let Some(literal) = url.as_literal() {
        match reqwest::Url::parse(literal) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                cx.err(
                    key.referenced,
                    format!("webhook URL scheme `{}` is not http or https", u.scheme()),
                );
                ok = false;
            }
            Err(e) => {
                cx.err(
                    key.referenced,
                    format!(
                        "webhook URL `{}` does not parse ({e}); write e.g. `https://example.com/hook`",
                        crate::mask::url(literal)
                    ),
                );
                ok = false;
            }
        }
    }
    let method = match &s.method {
        None => "POST".to_string(),
        Some(m) => {
            let upper = m.value.to_ascii_uppercase();
            if !matches!(upper.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "GET") {
                cx.err(
                    m.referenced,
                    format!("method `{}` is not one of POST, PUT, PATCH, DELETE, GET", m.value),
                );
                ok = false;
            }
            upper
        }
    };
    let mut headers = Vec::new();
    if let Some(h) = &s.headers {
        for (name, value) in &h.value {
            let Some(v) = cx.text(value) else {
                ok = false;
                continue;
            };
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.err(value.referenced, format!("`{name}` is not a valid header name"));
                ok = false;
            } else if reqwest::header::HeaderValue::from_str(&v).is_err() {
                cx.err(
                    value.referenced,
                    format!("the value of header `{name}` has characters a header cannot carry"),
                );
                ok = false;
            } else {
                headers.push((name.clone(), v));
            }
        }
    }
    let timeout = match &s.timeout {
        Some(t) => cx.duration(t, "`timeout`"),
        None => Some(DEFAULT_WEBHOOK_TIMEOUT),
    };
    let max_in_flight = match &s.max_in_flight {
        Some(m) if m.value == 0 => {
            cx.err(m.referenced, "`max_in_flight` must be at least 1");
            None
        }
        Some(m) => Some(m.value),
        None => Some(DEFAULT_MAX_IN_FLIGHT),
    };
    let secret = match &s.secret {
        Some(sec) => cx.name(sec, "`secret`").map(Some),
        None => Some(None),
    };
    if !ok {
        return None;
    }
    Some(WebhookSpec {
        url,
        method,
        headers,
        timeout: timeout?,
        max_in_flight: max_in_flight?,
        secret: secret?,
        body,
    })
}

/// Seconds, rounded up (at least 1).
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// `d` in whole seconds, as Laravel counts a job's `timeout` and `delay`; a fraction is a
/// mistake (it would be cut silently), with the rounded-up value as the hint.
fn whole_seconds(cx: &mut Ctx<'_>, at: &SpStr, key: &str, d: Duration) -> Option<u64> {
    if d.subsec_nanos() == 0 {
        return Some(d.as_secs());
    }
    cx.err(
        at.referenced,
        format!(
            "`{key}: {}`: Laravel counts a job's {key} in whole seconds; write `{}s`",
            at.value.trim(),
            ceil_secs(d)
        ),
    );
    None
}

fn laravel_spec(cx: &mut Ctx<'_>, l: &Spanned<RawLaravelSink>) -> Option<LaravelSinkSpec> {
    let v = &l.value;
    let target = match (&v.job, &v.handler) {
        (Some(job), None) => {
            let class = cx.text(job)?;
            if let Err(e) = crate::laravel::validate_class_name(&class) {
                cx.err(job.referenced, e);
                return None;
            }
            let property = match &v.property {
                Some(p) => {
                    let name = cx.name(p, "`property`")?;
                    if let Err(e) = crate::laravel::validate_property_name(&name) {
                        cx.err(p.referenced, e);
                        return None;
                    }
                    name
                }
                None => crate::laravel::DEFAULT_PROPERTY.to_string(),
            };
            LaravelTarget::Command { class, property }
        }
        (None, Some(handler)) => {
            let handler_text = cx.text(handler)?;
            if let Err(e) = crate::laravel::validate_handler(&handler_text) {
                cx.err(handler.referenced, e);
                return None;
            }
            cx.only_for(
                &v.property,
                "property",
                "`job:` (a handler gets the data as its argument)",
            );
            LaravelTarget::Handler { handler: handler_text }
        }
        (Some(_), Some(h)) => {
            cx.err(h.referenced, "give `job` or `handler`, not both");
            return None;
        }
        (None, None) => {
            cx.err(
                l.referenced,
                "`laravel:` needs `job: 'App\\Jobs\\YourJob'` or `handler: 'App\\Handlers\\X@handle'`; to forward jobs read from another Laravel queue unchanged, write `format: laravel` instead",
            );
            return None;
        }
    };
    let timeout = match &v.timeout {
        Some(t) => cx
            .duration(t, "`timeout`")
            .and_then(|d| whole_seconds(cx, t, "timeout", d))
            .map(|s| Some(s.max(1))),
        None => Some(None),
    };
    let delay = match &v.delay {
        Some(d) => cx
            .duration(d, "`delay`")
            .and_then(|x| whole_seconds(cx, d, "delay", x).map(|_| Some(x))),
        None => Some(None),
    };
    let backoff = match &v.backoff {
        Some(b) => {
            let text = cx.text(b)?;
            let steps: Option<Vec<Duration>> = text
                .split(',')
                .map(|step| {
                    let step = step.trim();
                    step.parse::<u64>()
                        .ok()
                        .map(Duration::from_secs)
                        .or_else(|| humantime::parse_duration(step).ok())
                })
                .collect();
            match steps {
                // Laravel counts whole seconds: `500ms` would be 0, silently.
                Some(steps) if steps.iter().any(|d| d.subsec_nanos() != 0) => {
                    let rounded: Vec<String> = steps.iter().map(|d| format!("{}s", ceil_secs(*d))).collect();
                    cx.err(
                        b.referenced,
                        format!(
                            "`backoff: {text}`: Laravel counts backoff in whole seconds; write e.g. `{}`",
                            rounded.join(",")
                        ),
                    );
                    None
                }
                Some(steps) => Some(Some(
                    steps
                        .iter()
                        .map(|d| d.as_secs().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                )),
                None => {
                    cx.err(
                        b.referenced,
                        format!("`backoff: {text}` is not a list of delays; write e.g. `10s,30s` or `10,30` (seconds)"),
                    );
                    None
                }
            }
        }
        None => Some(None),
    };
    Some(LaravelSinkSpec {
        target: Some(target),
        tries: v.tries.as_ref().map(|t| t.value),
        timeout: timeout?,
        backoff: backoff?,
        delay: delay?,
        hash_tag: false,
    })
}

fn error_policy(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawOnError>>, inherited: &ErrorPolicy) -> Option<ErrorPolicy> {
    let Some(raw) = raw else {
        return Some(inherited.clone());
    };
    let mut policy = inherited.clone();
    let mut ok = true;
    if let Some(retry) = &raw.value.retry {
        if let Some(a) = &retry.value.attempts {
            if a.value == 0 {
                cx.err(
                    a.referenced,
                    "`attempts` counts the first try too, so it must be at least 1",
                );
                ok = false;
            }
            policy.attempts = a.value;
        }
        if let Some(b) = &retry.value.backoff {
            match cx.duration(b, "`backoff`") {
                Some(d) => policy.backoff = d,
                None => ok = false,
            }
        }
        if let Some(b) = &retry.value.max_backoff {
            match cx.duration(b, "`max_backoff`") {
                Some(d) => policy.max_backoff = d,
                None => ok = false,
            }
        }
    }
    if let Some(dl) = &raw.value.dead_letter {
        match cx.name(dl, "`dead_letter`") {
            Some(d) => policy.dead_letter = d,
            None => ok = false,
        }
    }
    if let Some(max) = &raw.value.dead_letter_max_payload {
        if max.value == 0 {
            cx.err(
                max.referenced,
                "`dead_letter_max_payload` is in bytes and must be at least 1; remove it to keep payloads whole",
            );
            ok = false;
        }
        policy.dead_letter_max_payload = Some(max.value);
    }
    ok.then_some(policy)
}

#[cfg(test)]
mod tests {
    use crate::config::load_str_with_env;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "cache".to_string())
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str_with_env(text, "f.yaml", &env) {
            Ok(_) => vec![],
            Err(e) => e.diagnostics().iter().map(|d| d.render("f.yaml")).collect(),
        }
    }

    #[test]
    fn laravel_durations_are_whole_seconds() {
        let rule = |opts: &str| {
            format!(
                "rules:\n  - name: a\n    source: {{ channel: x }}\n    sinks:\n      - queue: to-b\n        laravel: {{ job: 'App\\Jobs\\X', {opts} }}\n"
            )
        };
        assert_eq!(
            errors(&rule("backoff: '500ms,1500ms', timeout: 500ms, delay: 2500ms")),
            vec![
                "f.yaml:6:48: rule \"a\": `backoff: 500ms,1500ms`: Laravel counts backoff in whole seconds; write e.g. `1s,2s`",
                "f.yaml:6:73: rule \"a\": `timeout: 500ms`: Laravel counts a job's timeout in whole seconds; write `1s`",
                "f.yaml:6:87: rule \"a\": `delay: 2500ms`: Laravel counts a job's delay in whole seconds; write `3s`",
            ]
        );
        // Whole seconds, written either way, pass.
        assert!(errors(&rule("backoff: '10s,30', timeout: 2s, delay: 1m")).is_empty());
    }

    #[test]
    fn semantic_errors_have_positions_and_hints() {
        let cases: &[(&str, &str)] = &[
            (
                "rules:\n  - name: a\n    source: { channel: x, stream: y }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:3:35: rule \"a\": source has both `channel` and `stream`; a rule reads one source, so split it into two rules",
            ),
            (
                "rules:\n  - name: a\n    source: { connection: x }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:3:13: rule \"a\": source has no kind;",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n",
                "f.yaml:2:5: rule \"a\": rule has no sinks;",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x, connection: defalt }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:3:39: rule \"a\": unknown connection `defalt`; did you mean `default`?",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    filter: \"@.a = 1\"\n    sinks: [ { stream: z } ]\n",
                "f.yaml:4:13: rule \"a\": filter `@.a = 1` does not compile",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: \"k:{{$.id\" } ]\n",
                "f.yaml:4:24: rule \"a\": template `k:{{$.id` opens `{{` without closing `}}`",
            ),
            (
                "connections:\n  c: { url: \"http://x\" }\nrules: []\n",
                "f.yaml:2:13: connection `c`: bad Redis URL `http://x`",
            ),
            (
                "connections:\n  c: { url: \"redis://u:pa/ss@h:6379\" }\nrules: []\n",
                "f.yaml:2:13: connection `c`: the user or password in `redis://u:***@h:6379` holds a character a URL reserves",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    sinks:\n      - webhook: \"https://hooks.slack.com/services/T1/B1/AAA\"\n      - webhook: \"https://hooks.slack.com/services/T2/B2/BBB\"\n",
                "f.yaml:6:9: rule \"a\": sinks[0] and sinks[1] both show as `webhook https://hooks.slack.com/services/***`; give each its own `name:`",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    sinks:\n      - { stream: s, name: out }\n      - { stream: t, name: out }\n",
                "f.yaml:6:28: rule \"a\": sinks[0] and sinks[1] both show as `out`",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: s, name: \"a b\" } ]\n",
                "f.yaml:4:33: rule \"a\": a sink name must be non-empty letters, digits",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    on_error: { dead_letter_max_payload: 0 }\n    sinks: [ { stream: s } ]\n",
                "f.yaml:4:42: rule \"a\": `dead_letter_max_payload` is in bytes and must be at least 1",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: z } ]\n  - name: a\n    source: { channel: x }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:5:11: rule \"a\": duplicate rule name (first used on line 2)",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: x, group: g }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:3:34: rule \"a\": `group` applies to stream sources only; remove it",
            ),
            (
                "rules:\n  - name: a\n    source: { channel: \"${NOPE}\" }\n    sinks: [ { stream: z } ]\n",
                "f.yaml:3:24: rule \"a\": environment variable `NOPE` is not set",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, want) in cases {
            let errs = errors(text);
            if errs.len() != 1 || !errs[0].starts_with(want) {
                mismatches.push(format!("got  {errs:?}\nwant {want}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn env_and_defaults() {
        let rs = load_str_with_env(
            "connections:\n  laravel: { url: \"redis://${HOST}:6379\", prefix: laravel_database_ }\nrules:\n  - name: a\n    source: { stream: s, group: g, connection: laravel }\n    sinks: [ { publish: \"out:{{$.id}}\", connection: laravel } ]\n",
            "f.yaml",
            &env,
        )
        .unwrap();
        let rule = &rs.rules[0];
        assert_eq!(rule.source.connection.url, "redis://cache:6379");
        assert_eq!(rule.source.connection.prefix, "laravel_database_");
        assert_eq!(rule.summary(), "stream s (group g) -> publish out:{{$.id}}");
        assert_eq!(rule.on_error.attempts, 5);
    }

    #[test]
    fn buffer_bytes_takes_sizes_with_units() {
        let bytes = |value: &str| {
            let text = format!(
                "rules:\n  - name: a\n    source: {{ channel: x, buffer_bytes: {value} }}\n    sinks: [ {{ stream: z }} ]\n"
            );
            match load_str_with_env(&text, "f.yaml", &env).map(|rs| rs.rules[0].source.kind.clone()) {
                Ok(crate::config::SourceSpecKind::Channel { options, .. }) => Ok(options.buffer_bytes),
                Ok(_) => Err(String::new()),
                Err(e) => Err(e
                    .diagnostics()
                    .iter()
                    .map(|d| d.render("f.yaml"))
                    .collect::<Vec<_>>()
                    .join("\n")),
            }
        };
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("\"512 KiB\""), Ok(512 << 10));
        assert_eq!(bytes("1MB"), Ok(1_000_000));
        assert_eq!(
            bytes("lots"),
            Err("f.yaml:3:41: rule \"a\": `buffer_bytes: lots` is not a size; write e.g. `64MiB`, `512KiB` or a number of bytes".into())
        );
        let default = load_str_with_env(
            "rules:\n  - name: a\n    source: { pattern: x }\n    sinks: [ { stream: z } ]\n",
            "f.yaml",
            &env,
        )
        .unwrap();
        match &default.rules[0].source.kind {
            crate::config::SourceSpecKind::Pattern { options, .. } => assert_eq!(options.buffer_bytes, 64 << 20),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            errors(
                "rules:\n  - name: a\n    source: { stream: x, buffer_bytes: 1MiB }\n    sinks: [ { stream: z } ]\n"
            ),
            [
                "f.yaml:3:40: rule \"a\": `buffer_bytes` applies to channel and pattern sources only; remove it"
                    .to_string()
            ]
        );
    }
}
