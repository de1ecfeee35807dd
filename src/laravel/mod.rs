//! The Laravel queue wire format, as pure functions: no I/O, no async.
//!
//! This module owns three things, all specified in `shared/laravel/QUEUE-FORMAT.md`:
//! * [`php_serialize`]: PHP's `serialize(json_decode($json, true))` for any JSON value, and the
//!   PHP flavour of `json_encode` ([`php_json_encode`]) that Laravel uses for the envelope;
//! * [`build_job`]: the Laravel 8 job envelope a foreign producer `RPUSH`es onto
//!   `<prefix>queues:<queue>`, byte for byte what `dispatch()` writes, in both the queued-command
//!   form (`Illuminate\Queue\CallQueuedHandler@call`) and the `Class@method` handler form;
//! * [`parse_job`]: reading back a job that a Laravel producer wrote, including a small PHP
//!   `unserialize` for the job object's data.
//!
//! They live in `serialize`, `envelope` (building and validating) and `unserialize`
//! (reading); this module holds the types they share and re-exports their public items.
//!
//! It does not own keys, prefixes, `RPUSH`/notify or delays: the queue sink does that.
//!
//! Known divergence from PHP: serde_json reads the JSON integer `-0` as the float `-0.0`, so it
//! serializes as `d:-0;` where PHP writes `i:0;`. PHP compares both equal to `0`.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// The `job` of every queued command: Laravel resolves this class and calls `call`, which
/// unserializes `data.command` and runs its `handle()`.
pub const CALL_QUEUED_HANDLER: &str = "Illuminate\\Queue\\CallQueuedHandler@call";

/// The protected property that holds the message in the job class when none is configured
/// (`protected $data;` in `App\Jobs\CALLP2`).
pub const DEFAULT_PROPERTY: &str = "data";

/// The list holding queue `name`'s jobs, as Laravel names it: `queues:<name>`, or with
/// `hash_tag` `queues:{<name>}` as Laravel 13 does on a cluster, so that the list and its
/// `:notify`, `:delayed` and `:reserved` companions share one slot. A name that already holds a
/// hash tag (`{default}`, as Laravel 12 and earlier configure a cluster queue) is left alone.
pub fn queue_key(name: &str, hash_tag: bool) -> String {
    if hash_tag && crate::keys::hash_tag(name).is_none() {
        format!("queues:{{{name}}}")
    } else {
        format!("queues:{name}")
    }
}

/// Properties that Laravel 8's `InteractsWithQueue` and `Queueable` traits add to every job
/// object; the data property must not reuse one of these names.
const RESERVED_PROPERTIES: [&str; 10] = [
    "job",
    "connection",
    "queue",
    "chainConnection",
    "chainQueue",
    "chainCatchCallbacks",
    "delay",
    "afterCommit",
    "middleware",
    "chained",
];

/// How deep [`parse_job`] follows nested PHP values before it gives up. The parser recurses,
/// so this bounds the stack on hostile input (256 already fits a 2 MiB thread in a debug
/// build; 128 leaves room for the caller). It is also serde_json's own parsing limit, so every
/// message this daemon wrote, and every message it could re-read as JSON, fits.
const MAX_UNSERIALIZE_DEPTH: usize = 128;

/// Why a payload could not be read as a Laravel job.
#[derive(Debug, Error)]
pub enum LaravelError {
    /// The list element is not JSON at all (a Laravel worker would lose it silently).
    #[error("job payload is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// The payload is JSON but not an object.
    #[error("job payload is not a JSON object")]
    NotAnObject,
    /// The payload has no string `job` field, so no worker could run it.
    #[error("job payload has no string `job` field")]
    MissingJob,
    /// A `CallQueuedHandler@call` job without a string `data.command`.
    #[error("queued command has no string `data.command`")]
    MissingCommand,
    /// `data.command` starts like a serialized object (`O:`) but is not valid PHP serialize
    /// output.
    #[error("cannot unserialize `data.command` at byte {offset}: {reason}")]
    Unserialize {
        /// Byte offset into the decoded `command` string.
        offset: usize,
        /// What the parser expected there.
        reason: String,
    },
}

/// What a Laravel worker should run for each message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTarget {
    /// A queued command (`App\Jobs\CALLP2`): the message becomes the protected property
    /// `property` of a serialized job object, run by `CallQueuedHandler@call`.
    Command {
        /// Fully qualified class name without a leading backslash, e.g. `App\Jobs\CALLP2`.
        class: String,
        /// Name of the protected property that receives the message, usually `data`.
        property: String,
    },
    /// A plain handler (`Queue::push('App\Handlers\Orders@handle', $data)`): Laravel calls
    /// `handle($job, $data)` with the message as a PHP array.
    Handler {
        /// `Class@method`, e.g. `App\Handlers\Orders@handle`; without `@method` Laravel calls
        /// `fire`.
        handler: String,
    },
}

/// Envelope options, the same as a job class's `$tries`, `$timeout`, `$backoff`,
/// `$retryUntil`, plus the queue it is pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOptions {
    /// `maxTries`; `None` lets the worker's `--tries` decide.
    pub tries: Option<u32>,
    /// `timeout` in seconds; `None` lets the worker's `--timeout` decide.
    pub timeout: Option<u64>,
    /// `backoff` as Laravel stores it: seconds, comma separated (`"10,30"`).
    pub backoff: Option<String>,
    /// `retryUntil` as a Unix timestamp in seconds.
    pub retry_until: Option<i64>,
    /// The queue name (`to-b`). It goes into the command object's `queue` property the way
    /// `->onQueue('to-b')` puts it there; the key itself is the sink's business.
    pub queue: String,
}

impl JobOptions {
    /// Options with every envelope field left to the worker, for `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            tries: None,
            timeout: None,
            backoff: None,
            retry_until: None,
            queue: queue.into(),
        }
    }
}

/// What [`parse_job`] could read from a Laravel job payload.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// `uuid`, when present.
    pub uuid: Option<String>,
    /// `displayName`, when present (a label only).
    pub display_name: Option<String>,
    /// `job`: `Illuminate\Queue\CallQueuedHandler@call` or a `Class@method` handler.
    pub job: String,
    /// `data.commandName` of a queued command (a label only).
    pub command_name: Option<String>,
    /// The message: the job object's `data` property (or its first property) for a queued
    /// command, `data` for a handler job. `None` when the command is encrypted or its data
    /// holds PHP objects, references, non-UTF-8 strings, `INF` or `NAN`, which JSON cannot carry.
    pub data: Option<Value>,
}

mod envelope;
mod serialize;
mod unserialize;

pub use envelope::*;
pub use serialize::*;
pub use unserialize::*;

#[cfg(test)]
mod tests;
