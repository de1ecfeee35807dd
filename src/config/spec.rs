//! Validated rule set: the types the engine runs. Nothing here touches the network.
//!
//! Every type derives `PartialEq`, so a reload can tell an unchanged rule from a changed one
//! (compiled filters and templates compare by their source text).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::filter::{Filter, Template, Transform};

/// The default dead-letter stream.
pub const DEFAULT_DEAD_LETTER: &str = "redis-router:dead-letter";

/// A loaded, valid rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    /// Named connections, `default` always among them.
    pub connections: Vec<Arc<ConnectionSpec>>,
    /// The HTTP endpoint, when asked for.
    pub http: Option<HttpSpec>,
    /// Rules in file order; names are unique.
    pub rules: Vec<RuleSpec>,
    /// The router's own names in this file (dead-letter streams, queue sources' companions),
    /// which a key rendered from a message may not take.
    pub reserved: crate::keys::Reserved,
    /// What is allowed but risky (a key that is nothing but a template), with positions.
    pub warnings: Vec<super::Diagnostic>,
}

impl RuleSet {
    /// The reserved names of `rules`: every dead-letter stream they name and every list a
    /// queue source reads.
    pub fn reserved_of(rules: &[RuleSpec]) -> crate::keys::Reserved {
        let dead_letters = rules.iter().flat_map(|r| {
            std::iter::once(r.on_error.dead_letter.clone())
                .chain(r.sinks.iter().map(|s| s.on_error.dead_letter.clone()))
        });
        let queues = rules.iter().filter_map(|r| r.source.kind.list_key());
        crate::keys::Reserved::new(dead_letters, queues)
    }
}

/// A named Redis endpoint.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnectionSpec {
    /// Name used by rules.
    pub name: String,
    /// `redis://…` URL, with any password; see [`ConnectionSpec::masked_url`]. For a cluster,
    /// the first seed node.
    pub url: String,
    /// `cluster: true`: a Redis Cluster, reached through these seed nodes (`url` first); keys
    /// are routed to the node that owns their slot.
    pub cluster: bool,
    /// Every seed node of a cluster (`url` and `nodes:`); empty for one server.
    pub nodes: Vec<String>,
    /// Added to every key and channel this connection touches.
    pub prefix: String,
    /// ACL user, overriding the URL's.
    pub username: Option<String>,
    /// Password, overriding the URL's (from `password:`, usually `${ENV}`).
    pub password: Option<String>,
    /// File holding the password, read at each connect (so a rotated secret is picked up on
    /// the next reconnect).
    pub password_file: Option<std::path::PathBuf>,
    /// TLS files for `rediss://`.
    pub tls: Option<TlsSpec>,
}

/// TLS files of a connection (PEM). Without `ca_file` the system's roots are trusted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSpec {
    /// CA certificate(s) to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate, for servers that require one (`tls-auth-clients yes`).
    pub cert_file: Option<std::path::PathBuf>,
    /// Its key.
    pub key_file: Option<std::path::PathBuf>,
}

impl ConnectionSpec {
    /// The URL with its password replaced by `***`, for logs and status (see [`crate::mask::url`]).
    pub fn masked_url(&self) -> String {
        crate::mask::url(&self.url)
    }
}

impl fmt::Debug for ConnectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSpec")
            .field("name", &self.name)
            .field("url", &self.masked_url())
            .field("cluster", &self.cluster)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| crate::mask::url(n)).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The HTTP endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpSpec {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Whether `/tap` serves the rules' messages (`redis-router tap`); off unless set.
    pub tap: bool,
    /// The bearer token `/tap` asks for; required when `listen` is beyond loopback.
    pub tap_token: Option<String>,
}

impl fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSpec")
            .field("listen", &self.listen)
            .field("tap", &self.tap)
            .field("tap_token", &self.tap_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How many bytes a rule may hold (`limits:` in the rule file, the same for every rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A payload larger than this is dead-lettered whole, unparsed.
    pub max_payload: usize,
    /// A batch stops growing at this many bytes of payloads and the JSON parsed from them; a
    /// payload whose parsed JSON alone would take more is dead-lettered whole, unparsed.
    pub batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 16 << 20,
            batch_bytes: 32 << 20,
        }
    }
}

/// One rule: a source, an optional filter and transform, and one or more sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// Where messages come from.
    pub source: SourceSpec,
    /// Which messages pass.
    pub filter: Option<Filter>,
    /// How a passing message is reshaped before the sinks see it.
    pub transform: Option<Transform>,
    /// Where messages go; at least one.
    pub sinks: Vec<SinkSpec>,
    /// Retry and dead-letter policy of the rule's sinks (each sink may override it).
    pub on_error: ErrorPolicy,
    /// Offline test cases, as written (run by `redis-router test`).
    pub tests: Vec<CaseSource>,
    /// Bytes the rule may hold.
    pub limits: Limits,
}

/// One `tests:` case as written: its value, and where each of its keys and items is.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSource {
    /// The case as JSON.
    pub value: serde_json::Value,
    /// `tests[0].expect.sinks[1]` → (line, column); see [`position_of`](super::position_of).
    pub positions: Vec<(String, super::At)>,
}

impl RuleSpec {
    /// Whether `other` runs exactly as this rule does: everything but its `tests:`, which only
    /// `redis-router test` reads, so that editing a rule's test cases restarts nothing. Every
    /// field is named here, so a new one cannot be forgotten.
    pub fn runs_like(&self, other: &RuleSpec) -> bool {
        let RuleSpec {
            name,
            source,
            filter,
            transform,
            sinks,
            on_error,
            tests: _,
            limits,
        } = self;
        *name == other.name
            && *source == other.source
            && *filter == other.filter
            && *transform == other.transform
            && *sinks == other.sinks
            && *on_error == other.on_error
            && *limits == other.limits
    }

    /// `channel events:order -> stream processed_stream, publish x`.
    pub fn summary(&self) -> String {
        let sinks: Vec<String> = self.sinks.iter().map(SinkSpec::label).collect();
        format!("{} -> {}", self.source.kind, sinks.join(", "))
    }

    /// Whether delivering a message may parse its payload as JSON: a filter, a transform, a
    /// template that looks into the payload, a Laravel job built from it, a stream sink that
    /// writes a JSON object's keys as fields, a Laravel source. A rule that only moves bytes
    /// (queue to queue, channel to stream with `{{$}}`) never parses, so its payloads cost only
    /// their size.
    pub fn parses_json(&self) -> bool {
        let source = match &self.source.kind {
            SourceSpecKind::Queue { format, .. } => *format == QueueFormat::Laravel,
            SourceSpecKind::Channel { options, .. } | SourceSpecKind::Pattern { options, .. } => options
                .claim
                .as_ref()
                .and_then(|c| c.id.as_ref())
                .is_some_and(Template::needs_json),
            SourceSpecKind::Stream { .. } => false,
        };
        let t = |t: &Option<Template>| t.as_ref().is_some_and(Template::needs_json);
        let sink = |s: &SinkSpec| {
            s.filter.is_some()
                || match &s.kind {
                    SinkSpecKind::Publish { channel, body, .. } => channel.needs_json() || t(body),
                    SinkSpecKind::Stream { stream, fields, .. } => {
                        stream.needs_json() || fields.as_ref().is_none_or(|f| f.iter().any(|(_, v)| v.needs_json()))
                    }
                    SinkSpecKind::Queue { queue, body, laravel } => {
                        queue.needs_json() || t(body) || laravel.as_ref().is_some_and(|l| l.target.is_some())
                    }
                    SinkSpecKind::Webhook(w) => w.url.needs_json() || t(&w.body),
                }
        };
        source || self.filter.is_some() || self.transform.is_some() || self.sinks.iter().any(sink)
    }

    /// Connection names this rule uses, for restarting only the rules a connection change touches.
    pub fn connection_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = std::iter::once(self.source.connection.name.as_str())
            .chain(self.sinks.iter().map(|s| s.connection.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// A source and the connection it reads from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The Redis it reads from.
    pub connection: Arc<ConnectionSpec>,
    /// What it reads.
    pub kind: SourceSpecKind,
}

/// What a full Pub/Sub buffer does with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest buffered message to make room (default).
    DropOldest,
    /// Drop the message that just arrived.
    DropNewest,
    /// Wait until there is room. The rule then has a subscription connection of its own, so
    /// that waiting slows no other rule.
    Block,
}

/// `ha: claim` on a channel or pattern rule: every instance subscribes, and each message is
/// claimed (`SET key NX`) by one of them, which delivers it and marks it done. An instance
/// that lost the claim keeps the message until `ttl` has passed: if the claimer never marked
/// it done (it died), the claim has expired and the message is claimed and delivered again.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimSpec {
    /// How long a claim holds; longer than the rule takes to deliver a message.
    pub ttl: Duration,
    /// What identifies a message (a template such as `{{$.id}}`); a hash of channel and
    /// payload when absent.
    pub id: Option<Template>,
}

/// What channel and pattern sources share: the rule's buffer and its `ha` mode.
#[derive(Debug, Clone, PartialEq)]
pub struct PubSubOptions {
    /// Messages buffered between the subscription and the rule.
    pub buffer: usize,
    /// Bytes buffered (payloads and channel names), whichever bound is reached first.
    pub buffer_bytes: usize,
    /// What a full buffer does.
    pub overflow: Overflow,
    /// `ha: claim`: instances claim each message so that one delivers it.
    pub claim: Option<ClaimSpec>,
    /// `ha: single`: one instance, the holder of a lease, delivers; this is the lease's TTL.
    pub lease: Option<Duration>,
}

/// Where a consumer group starts when the router creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// Only entries added after the group is created (`$`).
    Newest,
    /// Every entry in the stream (`0`).
    Oldest,
    /// After this entry id.
    Id(String),
}

impl StreamStart {
    /// The id XGROUP CREATE / XREAD takes.
    pub fn as_id(&self) -> &str {
        match self {
            StreamStart::Newest => "$",
            StreamStart::Oldest => "0",
            StreamStart::Id(id) => id,
        }
    }
}

/// How a queue source reads list elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFormat {
    /// Each element is one message.
    Raw,
    /// Elements are Laravel job payloads on `queues:<name>`.
    Laravel,
}

/// The kinds of source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpecKind {
    /// SUBSCRIBE to one channel (SSUBSCRIBE when sharded).
    Channel {
        /// Channel name, without prefix.
        channel: String,
        /// `sharded: true`: a sharded channel of a Redis Cluster (SSUBSCRIBE), served by the node
        /// that owns its slot.
        sharded: bool,
        /// Buffer, overflow and `ha`.
        options: PubSubOptions,
    },
    /// PSUBSCRIBE to one pattern.
    Pattern {
        /// Glob-style pattern, without prefix.
        pattern: String,
        /// Buffer, overflow and `ha`.
        options: PubSubOptions,
    },
    /// A stream, through a consumer group or tailed.
    Stream {
        /// Stream key, without prefix.
        stream: String,
        /// Consumer group; `None` tails the stream with XREAD.
        group: Option<String>,
        /// Consumer name; `None` is the host name.
        consumer: Option<String>,
        /// Where a new group (or the tail) starts.
        start: StreamStart,
        /// Entries per read.
        batch: usize,
        /// Server-side BLOCK of each read; bounds how long a cancelled rule waits.
        block: Duration,
        /// Field holding the payload; the others become metadata.
        body_field: Option<String>,
        /// Entries other consumers left pending this long are claimed (XAUTOCLAIM).
        claim_idle: Duration,
        /// An entry delivered more often than this goes to the dead-letter stream.
        max_deliveries: u64,
    },
    /// A list used as a job queue.
    Queue {
        /// List name, without prefix (for Laravel, the queue name).
        queue: String,
        /// Raw elements or Laravel jobs.
        format: QueueFormat,
        /// Server-side block of each pop.
        block: Duration,
        /// Consumer name; `None` is the host name.
        consumer: Option<String>,
        /// `hash_tag: true`: Laravel's keys are `queues:{name}`, as Laravel 13 writes them on a
        /// cluster.
        hash_tag: bool,
    },
}

impl SourceSpec {
    /// The kind as the rule file spells it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SourceSpecKind::Channel { .. } => "channel",
            SourceSpecKind::Pattern { .. } => "pattern",
            SourceSpecKind::Stream { .. } => "stream",
            SourceSpecKind::Queue { .. } => "queue",
        }
    }
}

impl SourceSpecKind {
    /// The list a queue source reads, as the rule names it (no prefix): the queue itself, or
    /// Laravel's `queues:<name>` (`queues:{name}` with `hash_tag`).
    pub fn list_key(&self) -> Option<String> {
        match self {
            SourceSpecKind::Queue {
                queue,
                format: QueueFormat::Raw,
                ..
            } => Some(queue.clone()),
            SourceSpecKind::Queue {
                queue,
                format: QueueFormat::Laravel,
                hash_tag,
                ..
            } => Some(crate::laravel::queue_key(queue, *hash_tag)),
            _ => None,
        }
    }
}

impl fmt::Display for SourceSpecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpecKind::Channel { channel, .. } => write!(f, "channel {channel}"),
            SourceSpecKind::Pattern { pattern, .. } => write!(f, "pattern {pattern}"),
            SourceSpecKind::Stream {
                stream, group: Some(g), ..
            } => write!(f, "stream {stream} (group {g})"),
            SourceSpecKind::Stream {
                stream, group: None, ..
            } => write!(f, "stream {stream} (tail)"),
            SourceSpecKind::Queue {
                queue,
                format: QueueFormat::Raw,
                ..
            } => write!(f, "queue {queue}"),
            SourceSpecKind::Queue {
                queue,
                format: QueueFormat::Laravel,
                ..
            } => {
                write!(f, "laravel queue {queue}")
            }
        }
    }
}

/// A sink and the connection it writes to.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// `name:` of the sink: shown instead of its kind and target (logs, `/status`, metric
    /// labels, dead letters), so a webhook URL never has to be.
    pub name: Option<String>,
    /// The Redis it writes to.
    pub connection: Arc<ConnectionSpec>,
    /// What it writes.
    pub kind: SinkSpecKind,
    /// Which messages this sink takes (after the rule's filter); all when absent.
    pub filter: Option<Filter>,
    /// Retry and dead-letter policy (the rule's unless the sink overrides it).
    pub on_error: ErrorPolicy,
}

impl SinkSpec {
    /// How the sink is shown and counted: its `name`, else its kind and target with any
    /// secret masked (`stream processed_stream`, `webhook https://hooks.slack.com/services/***`).
    /// Metric labels, dead letters' `sink` field and `dlq replay`'s matching use it.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.kind.to_string(),
        }
    }
}

/// The kinds of sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkSpecKind {
    /// PUBLISH.
    Publish {
        /// Channel template.
        channel: Template,
        /// Message template; the payload when absent.
        body: Option<Template>,
        /// `sharded: true`: SPUBLISH, to the shard that owns the channel's slot.
        sharded: bool,
    },
    /// XADD.
    Stream {
        /// Stream key template.
        stream: Template,
        /// Approximate MAXLEN.
        maxlen: Option<u64>,
        /// Field templates; without them a JSON object becomes one field per key.
        fields: Option<Vec<(String, Template)>>,
    },
    /// HTTP request per message.
    Webhook(WebhookSpec),
    /// RPUSH onto a list, raw or as a Laravel job.
    Queue {
        /// List (or Laravel queue) name template.
        queue: Template,
        /// Element template for raw lists; the payload when absent.
        body: Option<Template>,
        /// Laravel queue options; `None` for a raw list.
        laravel: Option<LaravelSinkSpec>,
    },
}

/// An HTTP endpoint that receives one request per message.
#[derive(Clone, PartialEq)]
pub struct WebhookSpec {
    /// URL template (http or https).
    pub url: Template,
    /// HTTP method, POST by default.
    pub method: String,
    /// Extra headers, `${ENV}` already expanded.
    pub headers: Vec<(String, String)>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Requests in flight at once for this sink.
    pub max_in_flight: usize,
    /// HMAC-SHA256 key for the signature headers.
    pub secret: Option<String>,
    /// Body template; the payload when absent.
    pub body: Option<Template>,
}

impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Any header may carry a credential (`Authorization`, `X-Api-Key`, a vendor's own):
        // names are shown, never values.
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, _)| (k.as_str(), crate::mask::MASK))
            .collect();
        f.debug_struct("WebhookSpec")
            .field("url", &crate::mask::url(self.url.source()))
            .field("method", &self.method)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How a `queue` sink writes to a Laravel queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaravelSinkSpec {
    /// `App\Jobs\X` (serialized command) or `App\Handlers\X@method` (plain JSON data); `None`
    /// forwards the payload unchanged (a job read from another Laravel queue).
    pub target: Option<LaravelTarget>,
    /// `maxTries` of the job.
    pub tries: Option<u32>,
    /// `timeout` in seconds.
    pub timeout: Option<u64>,
    /// `backoff`, as Laravel writes it (`"10,30"`).
    pub backoff: Option<String>,
    /// Delay before the job becomes available (goes to `:delayed`).
    pub delay: Option<Duration>,
    /// `hash_tag: true`: the keys are `queues:{name}`, as Laravel 13 writes them on a cluster.
    pub hash_tag: bool,
}

pub use crate::laravel::JobTarget as LaravelTarget;

impl fmt::Display for SinkSpecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpecKind::Publish { channel, .. } => write!(f, "publish {}", channel.source()),
            SinkSpecKind::Stream { stream, .. } => write!(f, "stream {}", stream.source()),
            SinkSpecKind::Queue {
                queue, laravel: None, ..
            } => write!(f, "queue {}", queue.source()),
            SinkSpecKind::Webhook(w) => write!(f, "webhook {}", crate::mask::url(w.url.source())),
            SinkSpecKind::Queue {
                queue,
                laravel: Some(l),
                ..
            } => match &l.target {
                Some(LaravelTarget::Command { class, .. }) => write!(f, "laravel queue {} ({class})", queue.source()),
                Some(LaravelTarget::Handler { handler }) => write!(f, "laravel queue {} ({handler})", queue.source()),
                None => write!(f, "laravel queue {} (jobs forwarded unchanged)", queue.source()),
            },
        }
    }
}

impl SinkSpecKind {
    /// The kind as the rule file spells it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            SinkSpecKind::Publish { .. } => "publish",
            SinkSpecKind::Stream { .. } => "stream",
            SinkSpecKind::Queue { .. } => "queue",
            SinkSpecKind::Webhook(_) => "webhook",
        }
    }
}

/// Retries and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time, with jitter.
    pub backoff: Duration,
    /// Cap on the delay.
    pub max_backoff: Duration,
    /// Stream that receives what could not be delivered.
    pub dead_letter: String,
    /// Longest payload a dead letter keeps (`dead_letter_max_payload`, bytes); `None`, the
    /// default, keeps it whole, since a dead letter is often the only copy left. A cut dead
    /// letter is never replayed.
    pub dead_letter_max_payload: Option<usize>,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            dead_letter: DEFAULT_DEAD_LETTER.to_string(),
            dead_letter_max_payload: None,
        }
    }
}
