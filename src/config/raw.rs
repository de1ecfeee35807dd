//! The serde mirror of the rule file: exactly what YAML may say, nothing checked beyond shape.
//!
//! Every struct denies unknown keys, so a misspelt option is an error with its position instead
//! of a silently ignored line. Values that later checks must point at are [`Spanned`], which keeps
//! the line and column of the YAML node. Turning these into runtime specs is `validate.rs`'s job.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string with the position of its YAML node.
pub(crate) type SpStr = Spanned<String>;

/// The whole rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub connections: IndexMap<String, Spanned<RawConnection>>,
    pub http: Option<Spanned<RawHttp>>,
    pub limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
}

/// The same file with the rules left unread, so that top-level mistakes can be reported even
/// when a rule is also broken (see `config::load_str`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFileOutline {
    #[serde(default)]
    pub connections: IndexMap<String, Spanned<RawConnection>>,
    pub http: Option<Spanned<RawHttp>>,
    pub limits: Option<Spanned<RawLimits>>,
    #[serde(default)]
    pub rules: Vec<Spanned<serde::de::IgnoredAny>>,
}

/// A named Redis endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnection {
    pub url: Option<SpStr>,
    pub cluster: Option<Spanned<bool>>,
    pub nodes: Option<Spanned<Vec<SpStr>>>,
    pub prefix: Option<SpStr>,
    pub username: Option<SpStr>,
    pub password: Option<SpStr>,
    pub password_file: Option<SpStr>,
    pub tls: Option<Spanned<RawTls>>,
}

/// TLS files of a `rediss://` connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub ca_file: Option<SpStr>,
    pub cert_file: Option<SpStr>,
    pub key_file: Option<SpStr>,
}

/// The optional HTTP endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub listen: SpStr,
    pub tap: Option<Spanned<bool>>,
    pub tap_token: Option<SpStr>,
}

/// Memory limits of every rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_payload: Option<SpStr>,
    pub batch_bytes: Option<SpStr>,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: SpStr,
    pub source: Spanned<RawSource>,
    pub filter: Option<SpStr>,
    pub transform: Option<Spanned<IndexMap<String, Spanned<serde_json::Value>>>>,
    #[serde(default)]
    pub sinks: Vec<Spanned<RawSink>>,
    pub on_error: Option<Spanned<RawOnError>>,
    #[serde(default)]
    pub tests: Vec<Spanned<super::node::Node>>,
}

/// A source: exactly one of the kind keys, plus the options of that kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub channel: Option<SpStr>,
    pub pattern: Option<SpStr>,
    pub stream: Option<SpStr>,
    pub queue: Option<SpStr>,
    pub connection: Option<SpStr>,
    // Pub/Sub options.
    pub buffer: Option<Spanned<usize>>,
    pub buffer_bytes: Option<SpStr>,
    pub overflow: Option<SpStr>,
    pub ha: Option<SpStr>,
    pub claim_ttl: Option<SpStr>,
    pub claim_id: Option<SpStr>,
    pub lease_ttl: Option<SpStr>,
    pub sharded: Option<Spanned<bool>>,
    // Stream options.
    pub group: Option<SpStr>,
    pub consumer: Option<SpStr>,
    pub start: Option<SpStr>,
    pub batch: Option<Spanned<usize>>,
    pub block: Option<SpStr>,
    pub body_field: Option<SpStr>,
    pub claim_idle: Option<SpStr>,
    pub max_deliveries: Option<Spanned<u64>>,
    // Queue options.
    pub format: Option<SpStr>,
    pub hash_tag: Option<Spanned<bool>>,
}

/// A sink: exactly one of the kind keys, plus the options of that kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    pub publish: Option<SpStr>,
    pub stream: Option<SpStr>,
    pub queue: Option<SpStr>,
    pub webhook: Option<SpStr>,
    pub connection: Option<SpStr>,
    /// Shown instead of the sink's kind and target (a webhook URL may hold a token).
    pub name: Option<SpStr>,
    // Stream options.
    pub maxlen: Option<Spanned<u64>>,
    pub fields: Option<Spanned<IndexMap<String, SpStr>>>,
    // Publish and queue options.
    pub body: Option<SpStr>,
    pub laravel: Option<Spanned<RawLaravelSink>>,
    pub format: Option<SpStr>,
    pub hash_tag: Option<Spanned<bool>>,
    pub sharded: Option<Spanned<bool>>,
    pub filter: Option<SpStr>,
    pub on_error: Option<Spanned<RawOnError>>,
    // Webhook options.
    pub method: Option<SpStr>,
    pub headers: Option<Spanned<IndexMap<String, SpStr>>>,
    pub timeout: Option<SpStr>,
    pub max_in_flight: Option<Spanned<usize>>,
    pub secret: Option<SpStr>,
}

/// Options that turn a `queue` sink into a Laravel job producer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLaravelSink {
    pub job: Option<SpStr>,
    pub handler: Option<SpStr>,
    pub property: Option<SpStr>,
    pub tries: Option<Spanned<u32>>,
    pub timeout: Option<SpStr>,
    pub backoff: Option<SpStr>,
    pub delay: Option<SpStr>,
}

/// What to do when a sink fails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOnError {
    pub retry: Option<Spanned<RawRetry>>,
    pub dead_letter: Option<SpStr>,
    pub dead_letter_max_payload: Option<Spanned<usize>>,
}

/// Retry schedule of a failing sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub backoff: Option<SpStr>,
    pub max_backoff: Option<SpStr>,
}
