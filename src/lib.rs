//! redis-router: routes messages between Redis Pub/Sub channels, Streams, lists used as job
//! queues (Laravel's among them) and webhooks, by the rules of one YAML file.
//!
//! Crate map, one owner per concern:
//! - [`config`]: the rule file: parse, validate into a [`config::RuleSet`], report mistakes with
//!   line and column.
//! - [`mask`]: what of a URL or a text may be shown: secrets masked, control characters
//!   escaped (every output goes through it).
//! - [`message`]: the one [`message::Message`] type, raw bytes plus lazily parsed JSON.
//! - [`filter`]: compiled JSONPath filters, `{{…}}` templates and transforms (pure).
//! - [`source`]: Pub/Sub, stream and list sources.
//! - [`sink`]: publish, stream, queue and webhook sinks; one pipeline per batch for Redis.
//! - [`laravel`]: Laravel's Redis queue wire format (job envelope, PHP serialize).
//! - [`deadletter`]: the dead-letter record (fields, signature, checks) and its writer; the
//!   engine writes it, `dlq` reads it back.
//! - [`engine`]: the per-rule loop, the supervisor, rule-set diffs, the file watcher and the
//!   reload step.
//! - [`identity`]: this process's name as a consumer (host, or host and instance id).
//! - [`keys`]: key names (prefixes, hash tags, companions) and the router's own key space
//!   (pure; imports nothing of ours).
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/status` and the status page.
//! - [`redis_conn`]: how connections are opened (timeouts, TCP_NODELAY, prefixes).
//! - [`stats`]: per-rule counters.
//! - [`tap`]: live events of what each rule does with each message (`redis-router tap`).
//! - [`commands`]: `test`, `dlq`, `demo` and `check`'s ACL and client counts: they use the
//!   parts above; nothing above uses them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod config;
pub mod deadletter;
pub mod engine;
pub mod filter;
pub mod http;
pub mod identity;
pub mod keys;
pub mod laravel;
pub mod mask;
pub mod message;
pub mod redis_conn;
pub mod sink;
pub mod source;
pub mod stats;
pub mod tap;
