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

// ---------------------------------------------------------------------------------------------
// PHP serialize
// ---------------------------------------------------------------------------------------------

/// Appends the bytes of PHP's `serialize(json_decode($json, true))` for `value`.
///
/// Objects and arrays both become PHP arrays; object keys that are canonical int64 decimals
/// (`"0"`, `"-5"`, not `"01"` or `"-0"`) become `i:` keys, as PHP's symbol tables do; numbers
/// outside int64 become `d:` with PHP's float formatting (`serialize_precision = -1`).
pub fn php_serialize(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(true) => out.extend_from_slice(b"b:1;"),
        Value::Bool(false) => out.extend_from_slice(b"b:0;"),
        Value::Number(n) => match php_number(n) {
            PhpNumber::Int(i) => push_fmt(out, format_args!("i:{i};")),
            PhpNumber::Float(f) => {
                let mut text = String::new();
                push_php_float(f, 'E', &mut text);
                push_fmt(out, format_args!("d:{text};"));
            }
        },
        Value::String(s) => push_php_string(s.as_bytes(), out),
        Value::Array(items) => {
            push_fmt(out, format_args!("a:{}:{{", items.len()));
            for (index, item) in items.iter().enumerate() {
                push_fmt(out, format_args!("i:{index};"));
                php_serialize(item, out);
            }
            out.push(b'}');
        }
        Value::Object(map) => {
            push_fmt(out, format_args!("a:{}:{{", map.len()));
            for (key, item) in map {
                match php_int_key(key) {
                    Some(i) => push_fmt(out, format_args!("i:{i};")),
                    None => push_php_string(key.as_bytes(), out),
                }
                php_serialize(item, out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON number as PHP's `json_decode` types it.
enum PhpNumber {
    Int(i64),
    Float(f64),
}

fn php_number(n: &Number) -> PhpNumber {
    if let Some(i) = n.as_i64() {
        return PhpNumber::Int(i);
    }
    // u64 above i64::MAX and anything with a fraction or exponent are floats in PHP too.
    // `as_f64` only fails under serde_json's `arbitrary_precision` for out-of-range values,
    // where PHP's strtod gives INF; parsing the text reproduces that.
    let f = n.as_f64().unwrap_or_else(|| n.to_string().parse().unwrap_or(f64::NAN));
    PhpNumber::Float(f)
}

/// The int key PHP's symbol table makes of `key`, if it is a canonical int64 decimal.
fn php_int_key(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('-').unwrap_or(key);
    let canonical = match digits.as_bytes() {
        [] => false,
        [b'0'] => digits.len() == key.len(), // "0" yes, "-0" no
        [b'0', ..] => false,
        bytes => bytes.iter().all(u8::is_ascii_digit),
    };
    if canonical { key.parse().ok() } else { None }
}

fn push_php_string(bytes: &[u8], out: &mut Vec<u8>) {
    push_fmt(out, format_args!("s:{}:\"", bytes.len()));
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\";");
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = text.write_fmt(args);
    out.extend_from_slice(text.as_bytes());
}

/// Appends `f` the way PHP's `php_gcvt(f, 17, '.', exp_char)` does with
/// `serialize_precision = -1`: the shortest round-trip digits, in exponent form (`1.0E+25`,
/// `1.0E-5`) when the decimal exponent is above 16 or below -4.
fn push_php_float(f: f64, exp_char: char, out: &mut String) {
    if f.is_nan() {
        out.push_str("NAN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "INF" } else { "-INF" });
        return;
    }
    let (digits, exp) = shortest_digits(f.abs());
    // zend_dtoa's decpt: the value is 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-3..=17).contains(&decpt) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        out.push('.');
        out.push_str(if rest.is_empty() { "0" } else { rest });
        out.push(exp_char);
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{}", exp.unsigned_abs());
    } else if decpt < 0 {
        out.push_str("0.");
        for _ in decpt..0 {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let decpt = decpt.unsigned_abs() as usize;
        if decpt == 0 {
            out.push('0');
        }
        for i in 0..decpt {
            out.push(digits.as_bytes().get(i).map_or('0', |&b| char::from(b)));
        }
        if digits.len() > decpt {
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
}

/// The digits and decimal exponent of zend_dtoa mode 0 for a finite `f >= 0`: the fewest
/// significant digits that read back as `f`, and among those the ones closest to `f`, ties to
/// even (`1307953561161475.25` gives `…475.2`).
///
/// Rust's `{:e}` finds the fewest digits, but breaks a tie between two equally close
/// candidates upwards (`…475.3`); its fixed-precision `{:.N$e}` rounds exactly, ties to even,
/// so it gives zend_dtoa's choice whenever that choice reads back as `f`.
fn shortest_digits(f: f64) -> (String, i32) {
    let split = |sci: &str| -> (String, i32) {
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
        let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        while digits.len() > 1 && digits.ends_with('0') {
            digits.pop();
        }
        (digits, exp.parse().unwrap_or(0))
    };
    let shortest = split(&format!("{f:e}"));
    let nearest = format!("{:.*e}", shortest.0.len().saturating_sub(1), f);
    if nearest.parse::<f64>().is_ok_and(|back| back == f) {
        split(&nearest)
    } else {
        shortest
    }
}

// ---------------------------------------------------------------------------------------------
// PHP json_encode
// ---------------------------------------------------------------------------------------------

/// Returns what PHP prints for `json_encode(json_decode($json, true), $flags)`, where `$flags`
/// is `JSON_UNESCAPED_UNICODE` when `unescaped_unicode` is set and `0` otherwise.
///
/// That is PHP's normalised form of a message: objects whose keys are `0..n-1` in order (and
/// `{}`) become lists, numbers outside int64 become floats (`1.2345678901234567e+19`), `2.0`
/// becomes `2`, `/` is escaped as `\/`, control characters as `\u00XX` (with `\b \f \n \r \t`),
/// U+2028/U+2029 always escaped, other non-ASCII raw with the flag and `\uXXXX` without it.
/// A job that logs `json_encode($this->data)` writes exactly this with `unescaped_unicode =
/// false`; Laravel's envelope uses `true`.
pub fn php_json_encode(value: &Value, unescaped_unicode: bool) -> String {
    let mut out = String::new();
    push_php_json(value, unescaped_unicode, &mut out);
    out
}

fn push_php_json(value: &Value, unescaped_unicode: bool, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match php_number(n) {
            PhpNumber::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PhpNumber::Float(f) => push_php_float(f, 'e', out),
        },
        Value::String(s) => push_php_json_string(s, unescaped_unicode, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_php_json(item, unescaped_unicode, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let is_list = map
                .keys()
                .enumerate()
                .all(|(index, key)| php_int_key(key) == i64::try_from(index).ok());
            out.push(if is_list { '[' } else { '{' });
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                if !is_list {
                    push_php_json_string(key, unescaped_unicode, out);
                    out.push(':');
                }
                push_php_json(item, unescaped_unicode, out);
            }
            out.push(if is_list { ']' } else { '}' });
        }
    }
}

/// PHP's `php_json_escape_string` without `JSON_UNESCAPED_SLASHES` and without
/// `JSON_UNESCAPED_LINE_TERMINATORS`.
fn push_php_json_string(s: &str, unescaped_unicode: bool, out: &mut String) {
    out.push('"');
    // Runs of characters that need no escaping are copied whole: a job's serialized command is
    // mostly such runs, and this is the hot path of the Laravel sink.
    let mut run = 0;
    for (i, c) in s.char_indices() {
        let plain = match c {
            '"' | '\\' | '/' => false,
            c if u32::from(c) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => false,
            c => c.is_ascii() || unescaped_unicode,
        };
        if plain {
            continue;
        }
        out.push_str(&s[run..i]);
        run = i + c.len_utf8();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_unicode_escape(*unit, out);
                }
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// `\uXXXX`, lowercase hex as PHP writes it.
fn push_unicode_escape(unit: u16, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(char::from(HEX[usize::from((unit >> shift) & 0xf)]));
    }
}

// ---------------------------------------------------------------------------------------------
// Building jobs
// ---------------------------------------------------------------------------------------------

/// Builds the Laravel 8 job payload for `data`: the exact bytes of Laravel's
/// `json_encode($payload, JSON_UNESCAPED_UNICODE)`, ready to `RPUSH` onto
/// `<prefix>queues:<queue>` (with a `"1"` on `…:notify`).
///
/// Key order: `uuid, displayName, job, maxTries, maxExceptions, failOnTimeout, backoff,
/// timeout, retryUntil, data, id, attempts`. Like Laravel's own handler payloads, the handler
/// form leaves `retryUntil` out unless `opts.retry_until` is set.
///
/// * [`JobTarget::Command`]: `data` is `{"commandName","command"}`, where `command` is the
///   serialized job object `O:…:"<class>":11:{…}` with the message in the protected property
///   and the `InteractsWithQueue`/`Queueable` properties that Laravel 8 writes (`queue` set to
///   `opts.queue`). The message travels inside a string, so Redis's Lua cjson, which re-encodes
///   the reserved copy of every job with 14 significant digits, cannot alter it.
/// * [`JobTarget::Handler`]: `data` is the message itself, normalised as PHP's
///   `json_encode(json_decode($msg, true))` would write it. **cjson caveat:** the message is
///   part of the envelope, so the reserved copy, which is what a *retried* attempt runs, has
///   numbers with more than 14 significant digits rounded (`12345678901234567` becomes
///   `1.2345678901235e+16`) and empty lists turned into `{}`. The first attempt sees the exact
///   message. Prefer the command form for messages with big integers.
///
/// Nothing here can fail: `target` should have passed [`validate_class_name`],
/// [`validate_property_name`] or [`validate_handler`], and `opts.backoff` [`validate_backoff`];
/// otherwise the payload is still valid JSON but the worker will fail the job. Messages nested
/// deeper than 511 levels exceed PHP's `json_decode` depth (serde_json stops at 128).
pub fn build_job(target: &JobTarget, opts: &JobOptions, data: &Value, uuid: &str, id: &str) -> Vec<u8> {
    let (display_name, job) = match target {
        JobTarget::Command { class, .. } => (class.as_str(), CALL_QUEUED_HANDLER),
        JobTarget::Handler { handler } => (
            handler.split_once('@').map_or(handler.as_str(), |(c, _)| c),
            handler.as_str(),
        ),
    };
    let mut out = String::with_capacity(512);
    out.push_str("{\"uuid\":");
    push_php_json_string(uuid, true, &mut out);
    out.push_str(",\"displayName\":");
    push_php_json_string(display_name, true, &mut out);
    out.push_str(",\"job\":");
    push_php_json_string(job, true, &mut out);
    out.push_str(",\"maxTries\":");
    push_opt_int(opts.tries, &mut out);
    out.push_str(",\"maxExceptions\":null,\"failOnTimeout\":false,\"backoff\":");
    match &opts.backoff {
        Some(backoff) => push_php_json_string(backoff, true, &mut out),
        None => out.push_str("null"),
    }
    out.push_str(",\"timeout\":");
    push_opt_int(opts.timeout, &mut out);
    // Laravel's `createStringPayload` (the handler form) has no `retryUntil` key; its worker
    // reads `payload['retryUntil'] ?? null`, so the key is only written there when it is set.
    if matches!(target, JobTarget::Command { .. }) || opts.retry_until.is_some() {
        out.push_str(",\"retryUntil\":");
        push_opt_int(opts.retry_until, &mut out);
    }
    out.push_str(",\"data\":");
    match target {
        JobTarget::Command { class, property } => {
            let command = serialize_command(class, property, &opts.queue, data);
            out.push_str("{\"commandName\":");
            push_php_json_string(class, true, &mut out);
            out.push_str(",\"command\":");
            // Every piece of `command` came from a &str, so it is UTF-8 and this borrows.
            push_php_json_string(&String::from_utf8_lossy(&command), true, &mut out);
            out.push('}');
        }
        JobTarget::Handler { .. } => push_php_json(data, true, &mut out),
    }
    out.push_str(",\"id\":");
    push_php_json_string(id, true, &mut out);
    out.push_str(",\"attempts\":0}");
    out.into_bytes()
}

fn push_opt_int<T: std::fmt::Display>(value: Option<T>, out: &mut String) {
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

/// `serialize($job)` of a Laravel 8 job object: the protected data property, then
/// `InteractsWithQueue::$job`, then `Queueable`'s properties in declaration order, as
/// `SerializesModels::__serialize` writes them.
fn serialize_command(class: &str, property: &str, queue: &str, data: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    push_fmt(&mut out, format_args!("O:{}:\"{class}\":11:{{", class.len()));
    let mut name = Vec::with_capacity(property.len() + 3);
    name.extend_from_slice(b"\0*\0");
    name.extend_from_slice(property.as_bytes());
    push_php_string(&name, &mut out);
    php_serialize(data, &mut out);
    out.extend_from_slice(b"s:3:\"job\";N;s:10:\"connection\";N;s:5:\"queue\";");
    push_php_string(queue.as_bytes(), &mut out);
    out.extend_from_slice(
        b"s:15:\"chainConnection\";N;s:10:\"chainQueue\";N;s:19:\"chainCatchCallbacks\";N;\
          s:5:\"delay\";N;s:11:\"afterCommit\";N;s:10:\"middleware\";a:0:{}s:7:\"chained\";a:0:{}}",
    );
    out
}

/// A fresh `(uuid, id)` pair for [`build_job`]: a lowercase hyphenated UUIDv4 like
/// `Str::uuid()`, and 32 characters of `[A-Za-z0-9]` like `Str::random(32)`.
pub fn new_job_ids() -> (String, String) {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(32);
    while id.len() < 32 {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        for (index, byte) in bytes.into_iter().enumerate() {
            // Bytes 6 and 8 carry the UUID version and variant bits, so they are not uniform;
            // bytes of 248 and above are rejected so that `% 62` is unbiased.
            if index == 6 || index == 8 || byte >= 248 || id.len() == 32 {
                continue;
            }
            id.push(char::from(ALPHABET[usize::from(byte % 62)]));
        }
    }
    (uuid::Uuid::new_v4().to_string(), id)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Checks that `s` is a fully qualified PHP class name as Laravel stores it, e.g.
/// `App\Jobs\CALLP2`.
///
/// # Errors
///
/// A message naming the problem: empty, a leading backslash, `/` or `@` instead of `\`,
/// an empty segment (a doubled backslash from YAML escaping), or a segment that is not a PHP
/// identifier.
pub fn validate_class_name(s: &str) -> Result<(), String> {
    let problem = if s.is_empty() {
        "it is empty".to_owned()
    } else if let Some(rest) = s.strip_prefix('\\') {
        format!("drop the leading backslash: Laravel writes `{rest}`")
    } else if s.contains('/') {
        "PHP namespaces are separated by `\\`, not `/`".to_owned()
    } else if s.contains('@') {
        "`Class@method` is a handler, not a job class".to_owned()
    } else if let Some(segment) = s.split('\\').find(|seg| !is_php_identifier(seg)) {
        if segment.is_empty() {
            "it has an empty namespace segment (a doubled or trailing backslash?)".to_owned()
        } else {
            format!(
                "`{segment}` is not a PHP identifier (letters, digits and `_`, not starting \
                 with a digit)"
            )
        }
    } else {
        return Ok(());
    };
    Err(format!("invalid PHP class name `{s}`: {problem}"))
}

/// Checks a `Class@method` handler such as `App\Handlers\Orders@handle`. Without `@method`,
/// Laravel calls `fire`, so a bare class name is accepted too.
///
/// # Errors
///
/// A message naming the problem with the class part (see [`validate_class_name`]) or the
/// method.
pub fn validate_handler(s: &str) -> Result<(), String> {
    let (class, method) = match s.split_once('@') {
        Some((class, method)) => (class, Some(method)),
        None => (s, None),
    };
    validate_class_name(class).map_err(|e| format!("invalid handler `{s}`: {e}"))?;
    match method {
        Some(method) if !is_php_identifier(method) => Err(format!(
            "invalid handler `{s}`: `{method}` is not a PHP method name (expected \
             `Class@method`, e.g. `App\\Handlers\\Orders@handle`)"
        )),
        _ => Ok(()),
    }
}

/// Checks the name of the job class's protected property that receives the message.
///
/// # Errors
///
/// A message when `s` is not a PHP identifier or is one of the properties that Laravel's
/// `InteractsWithQueue` and `Queueable` traits already write.
pub fn validate_property_name(s: &str) -> Result<(), String> {
    if !is_php_identifier(s) {
        return Err(format!(
            "invalid PHP property name `{s}`: letters, digits and `_`, not starting with a digit"
        ));
    }
    if RESERVED_PROPERTIES.contains(&s) {
        return Err(format!(
            "property `{s}` is used by Laravel's Queueable/InteractsWithQueue traits; \
             name the job's data property something else (usually `data`)"
        ));
    }
    Ok(())
}

/// Checks a `backoff` the way Laravel's worker reads it: seconds, comma separated (`"10,30"`).
///
/// # Errors
///
/// A message when an element is not a non-negative integer.
pub fn validate_backoff(s: &str) -> Result<(), String> {
    match s
        .split(',')
        .find(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(part) => Err(format!(
            "invalid backoff `{s}`: `{part}` is not a whole number of seconds (expected e.g. `10,30`)"
        )),
        None => Ok(()),
    }
}

/// PHP's label rule: `[a-zA-Z_\x80-\xff][a-zA-Z0-9_\x80-\xff]*`.
fn is_php_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80)
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
}

// ---------------------------------------------------------------------------------------------
// Reading jobs
// ---------------------------------------------------------------------------------------------

/// Reads a job payload that a Laravel producer (or [`build_job`]) wrote.
///
/// For `CallQueuedHandler@call` jobs the message is the job object's `data` property (or its
/// first property when it has none), unserialized from `data.command`; a command that does
/// not start with `O:` is encrypted (`ShouldBeEncrypted`) and gives `data: None`. For any
/// other `job` (a `Class@method` handler), the message is `data` itself. A PHP array whose
/// keys are `0..n-1` in order becomes a JSON array, any other array an object.
///
/// Never panics, whatever the input.
///
/// # Errors
///
/// The payload is not a JSON object, has no string `job`, is a queued command without a
/// string `data.command`, or its command is a malformed serialized object (including one
/// nested deeper than 128 levels, which this reader refuses rather than overflow its stack).
pub fn parse_job(payload: &[u8]) -> Result<JobView, LaravelError> {
    let value: Value = serde_json::from_slice(payload).map_err(LaravelError::NotJson)?;
    let Value::Object(envelope) = value else {
        return Err(LaravelError::NotAnObject);
    };
    let text = |map: &Map<String, Value>, key: &str| map.get(key)?.as_str().map(str::to_owned);
    let job = text(&envelope, "job").ok_or(LaravelError::MissingJob)?;
    let mut view = JobView {
        uuid: text(&envelope, "uuid"),
        display_name: text(&envelope, "displayName"),
        job,
        command_name: None,
        data: None,
    };
    if view.job != CALL_QUEUED_HANDLER {
        view.data = envelope.get("data").cloned();
        return Ok(view);
    }
    let data = envelope.get("data").and_then(Value::as_object);
    view.command_name = data.and_then(|d| text(d, "commandName"));
    let command = data
        .and_then(|d| d.get("command"))
        .and_then(Value::as_str)
        .ok_or(LaravelError::MissingCommand)?;
    if !command.starts_with("O:") {
        // Laravel decrypts anything else with APP_KEY; we cannot.
        return Ok(view);
    }
    let mut parser = Unserializer {
        input: command.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let object = parser.value()?;
    if let Php::Object { props, .. } = object {
        let chosen = props
            .iter()
            .find(|(key, _)| unmangled(key) == Some(DEFAULT_PROPERTY.as_bytes()))
            .or_else(|| props.first());
        view.data = chosen.and_then(|(_, value)| value.to_json());
    }
    Ok(view)
}

/// A PHP value as `unserialize` produces it, reduced to what JSON can need.
#[derive(Debug)]
enum Php {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Array(Vec<(PhpKey, Php)>),
    Object {
        props: Vec<(PhpKey, Php)>,
    },
    /// References (`r:`, `R:`), custom-serialized objects (`C:`) and enums (`E:`): parsed to
    /// skip them, but they have no JSON form.
    Opaque,
}

#[derive(Debug, PartialEq)]
enum PhpKey {
    Int(i64),
    Str(Vec<u8>),
}

/// A property name without PHP's visibility mangling (`\0*\0name`, `\0Class\0name`).
fn unmangled(key: &PhpKey) -> Option<&[u8]> {
    match key {
        PhpKey::Str(name) => match name.strip_prefix(b"\0") {
            Some(rest) => rest.iter().position(|&b| b == 0).map(|nul| &rest[nul + 1..]),
            None => Some(name),
        },
        PhpKey::Int(_) => None,
    }
}

impl Php {
    fn to_json(&self) -> Option<Value> {
        Some(match self {
            Php::Null => Value::Null,
            Php::Bool(b) => Value::Bool(*b),
            Php::Int(i) => Value::from(*i),
            Php::Float(f) => Value::Number(Number::from_f64(*f)?),
            Php::Str(bytes) => Value::String(String::from_utf8(bytes.clone()).ok()?),
            Php::Array(entries) => {
                let is_list = entries.iter().enumerate().all(|(index, (key, _))| match key {
                    PhpKey::Int(i) => usize::try_from(*i).ok() == Some(index),
                    PhpKey::Str(_) => false,
                });
                if is_list {
                    Value::Array(entries.iter().map(|(_, v)| v.to_json()).collect::<Option<_>>()?)
                } else {
                    let mut map = Map::with_capacity(entries.len());
                    for (key, item) in entries {
                        let key = match key {
                            PhpKey::Int(i) => i.to_string(),
                            PhpKey::Str(bytes) => String::from_utf8(bytes.clone()).ok()?,
                        };
                        map.insert(key, item.to_json()?);
                    }
                    Value::Object(map)
                }
            }
            Php::Object { .. } | Php::Opaque => return None,
        })
    }
}

/// A PHP `unserialize` over untrusted bytes: bounded depth, bounded allocation, no panics.
struct Unserializer<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Unserializer<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, LaravelError> {
        Err(LaravelError::Unserialize {
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), LaravelError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected `{}`", char::from(byte)))
        }
    }

    /// The bytes up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], LaravelError> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        match rest.iter().position(|&b| b == end) {
            Some(len) => {
                let start = self.pos;
                self.pos += len + 1;
                Ok(&self.input[start..start + len])
            }
            None => self.fail(format!("missing `{}`", char::from(end))),
        }
    }

    /// A signed decimal terminated by `end`, as PHP's `iv` (`[+-]?[0-9]+`). Like PHP 8.2's
    /// `unserialize`, a value beyond int64 saturates instead of failing.
    fn int(&mut self, end: u8) -> Result<i64, LaravelError> {
        let start = self.pos;
        let text = self.until(end)?;
        let (negative, digits) = match text {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            self.pos = start;
            return self.fail("expected an integer");
        }
        let mut value: i64 = 0;
        for &digit in digits {
            let digit = i64::from(digit - b'0');
            value = value
                .saturating_mul(10)
                .saturating_add(if negative { -digit } else { digit });
        }
        Ok(value)
    }

    /// An unsigned length terminated by `end` (`[0-9]+`, or `+[0-9]+` where PHP allows it).
    fn len(&mut self, end: u8, allow_plus: bool) -> Result<usize, LaravelError> {
        let start = self.pos;
        let text = self.until(end)?;
        let digits = match text {
            [b'+', rest @ ..] if allow_plus => rest,
            _ => text,
        };
        let parsed = if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            None
        } else {
            std::str::from_utf8(digits).ok().and_then(|t| t.parse().ok())
        };
        match parsed {
            Some(len) => Ok(len),
            None => {
                self.pos = start;
                self.fail("expected a length")
            }
        }
    }

    /// `"<class name>"` of `len` bytes, checked the way `unserialize` checks it.
    fn class_name(&mut self, len: usize) -> Result<(), LaravelError> {
        let start = self.pos;
        let name = self.quoted(len)?;
        let valid = !name.is_empty()
            && name[0] != b'\\'
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'\\' || b >= 0x80);
        if valid {
            Ok(())
        } else {
            self.pos = start;
            self.fail("invalid class name")
        }
    }

    /// `"<len bytes>"`.
    fn quoted(&mut self, len: usize) -> Result<&[u8], LaravelError> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = match start.checked_add(len) {
            Some(end) if end <= self.input.len() => end,
            _ => return self.fail(format!("string of {len} bytes runs past the end")),
        };
        self.pos = end;
        self.expect(b'"')?;
        Ok(&self.input[start..end])
    }

    /// Capacity for `count` entries that cannot claim more than the remaining input: each
    /// entry takes at least two bytes.
    fn capacity(&self, count: usize) -> usize {
        count.min(self.input.len().saturating_sub(self.pos) / 2)
    }

    fn entries(&mut self, count: usize) -> Result<Vec<(PhpKey, Php)>, LaravelError> {
        self.expect(b'{')?;
        let mut entries = Vec::with_capacity(self.capacity(count));
        for _ in 0..count {
            let key = match self.value()? {
                Php::Int(i) => PhpKey::Int(i),
                Php::Str(bytes) => match std::str::from_utf8(&bytes).ok().and_then(php_int_key) {
                    // PHP's symbol tables turn numeric string keys into int keys.
                    Some(i) => PhpKey::Int(i),
                    None => PhpKey::Str(bytes),
                },
                _ => return self.fail("array keys must be `i:` or `s:`"),
            };
            let value = self.value()?;
            entries.push((key, value));
        }
        self.expect(b'}')?;
        Ok(entries)
    }

    fn value(&mut self) -> Result<Php, LaravelError> {
        if self.depth >= MAX_UNSERIALIZE_DEPTH {
            return self.fail(format!("nested deeper than {MAX_UNSERIALIZE_DEPTH} levels"));
        }
        self.depth += 1;
        let result = self.value_inner();
        self.depth -= 1;
        result
    }

    fn value_inner(&mut self) -> Result<Php, LaravelError> {
        let Some(tag) = self.peek() else {
            return self.fail("unexpected end of input");
        };
        self.pos += 1;
        if tag == b'N' {
            self.expect(b';')?;
            return Ok(Php::Null);
        }
        if !b"bidsSaOCrRE".contains(&tag) {
            return self.unknown_type(tag);
        }
        self.expect(b':')?;
        match tag {
            b'b' => match self.until(b';')? {
                b"0" => Ok(Php::Bool(false)),
                b"1" => Ok(Php::Bool(true)),
                _ => self.fail("expected `0` or `1` after `b:`"),
            },
            b'i' => self.int(b';').map(Php::Int),
            b'd' => {
                let start = self.pos;
                let text = self.until(b';')?;
                match parse_php_float(text) {
                    Some(f) => Ok(Php::Float(f)),
                    None => {
                        self.pos = start;
                        self.fail("expected a float")
                    }
                }
            }
            b's' => {
                let len = self.len(b':', false)?;
                let bytes = self.quoted(len)?.to_vec();
                self.expect(b';')?;
                Ok(Php::Str(bytes))
            }
            b'S' => {
                let len = self.len(b':', false)?;
                let bytes = self.escaped_string(len)?;
                self.expect(b';')?;
                Ok(Php::Str(bytes))
            }
            b'a' => {
                let count = self.len(b':', false)?;
                self.entries(count).map(Php::Array)
            }
            b'O' => {
                let len = self.len(b':', false)?;
                self.class_name(len)?;
                self.expect(b':')?;
                let count = self.len(b':', true)?;
                let props = self.entries(count)?;
                Ok(Php::Object { props })
            }
            b'C' => {
                let len = self.len(b':', false)?;
                self.class_name(len)?;
                self.expect(b':')?;
                let len = self.len(b':', true)?;
                self.expect(b'{')?;
                match self.pos.checked_add(len) {
                    Some(end) if end <= self.input.len() => self.pos = end,
                    _ => return self.fail("custom object data runs past the end"),
                }
                self.expect(b'}')?;
                Ok(Php::Opaque)
            }
            b'r' | b'R' => {
                self.int(b';')?;
                Ok(Php::Opaque)
            }
            b'E' => {
                let len = self.len(b':', false)?;
                let start = self.pos;
                if !self.quoted(len)?.contains(&b':') {
                    self.pos = start;
                    return self.fail("expected `Enum:Case`");
                }
                self.expect(b';')?;
                Ok(Php::Opaque)
            }
            _ => self.unknown_type(tag),
        }
    }

    /// Fails at the type letter `tag`, which was just consumed.
    fn unknown_type<T>(&mut self, tag: u8) -> Result<T, LaravelError> {
        self.pos -= 1;
        self.fail(format!("unknown type `{}`", tag.escape_ascii()))
    }

    /// The body of an `S:` string: `len` bytes where `\xx` (two hex digits) stands for one.
    fn escaped_string(&mut self, len: usize) -> Result<Vec<u8>, LaravelError> {
        self.expect(b'"')?;
        let mut bytes = Vec::with_capacity(self.capacity(len));
        while bytes.len() < len {
            match self.peek() {
                Some(b'\\') => {
                    let hex = self.input.get(self.pos + 1..self.pos + 3);
                    let byte = hex
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match byte {
                        Some(b) => bytes.push(b),
                        None => return self.fail("bad `\\xx` escape in `S:` string"),
                    }
                    self.pos += 3;
                }
                Some(b) => {
                    bytes.push(b);
                    self.pos += 1;
                }
                None => return self.fail("unexpected end of input"),
            }
        }
        self.expect(b'"')?;
        Ok(bytes)
    }
}

/// The float text PHP's `unserialize` accepts after `d:`: decimal, exponent, `INF`, `-INF`,
/// `NAN`.
fn parse_php_float(text: &[u8]) -> Option<f64> {
    match text {
        b"INF" => Some(f64::INFINITY),
        b"-INF" => Some(f64::NEG_INFINITY),
        b"NAN" => Some(f64::NAN),
        // Rust's parser also takes `inf`, `nan`, `infinity`: allow only digits and friends.
        _ if !text.is_empty()
            && text
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            std::str::from_utf8(text).ok()?.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `(json, serialize(json_decode($json, true)), json_encode(json_decode($json, true),
    /// JSON_UNESCAPED_UNICODE))`, both outputs printed by PHP 8.2.
    /// Generated by `tests/fixtures/laravel/serialize-table/gen.php` from `inputs.txt` there.
    const PHP_TABLE: &[(&str, &[u8], &str)] = &[
        (
            r#"null"#,
            br#"N;"#,
            r#"null"#,
        ),
        (
            r#"true"#,
            br#"b:1;"#,
            r#"true"#,
        ),
        (
            r#"false"#,
            br#"b:0;"#,
            r#"false"#,
        ),
        (
            r#"0"#,
            br#"i:0;"#,
            r#"0"#,
        ),
        (
            r#"42"#,
            br#"i:42;"#,
            r#"42"#,
        ),
        (
            r#"-7"#,
            br#"i:-7;"#,
            r#"-7"#,
        ),
        (
            r#"9223372036854775807"#,
            br#"i:9223372036854775807;"#,
            r#"9223372036854775807"#,
        ),
        (
            r#"-9223372036854775808"#,
            br#"i:-9223372036854775808;"#,
            r#"-9223372036854775808"#,
        ),
        (
            r#"9223372036854775808"#,
            br#"d:9.223372036854776E+18;"#,
            r#"9.223372036854776e+18"#,
        ),
        (
            r#"-9223372036854775809"#,
            br#"d:-9.223372036854776E+18;"#,
            r#"-9.223372036854776e+18"#,
        ),
        (
            r#"18446744073709551615"#,
            br#"d:1.8446744073709552E+19;"#,
            r#"1.8446744073709552e+19"#,
        ),
        (
            r#"12345678901234567890"#,
            br#"d:1.2345678901234567E+19;"#,
            r#"1.2345678901234567e+19"#,
        ),
        (
            r#"123456789012345678901234567890"#,
            br#"d:1.2345678901234568E+29;"#,
            r#"1.2345678901234568e+29"#,
        ),
        (
            r#"1e25"#,
            br#"d:1.0E+25;"#,
            r#"1.0e+25"#,
        ),
        (
            r#"-1e25"#,
            br#"d:-1.0E+25;"#,
            r#"-1.0e+25"#,
        ),
        (
            r#"1.5e300"#,
            br#"d:1.5E+300;"#,
            r#"1.5e+300"#,
        ),
        (
            r#"0.1"#,
            br#"d:0.1;"#,
            r#"0.1"#,
        ),
        (
            r#"0.30000000000000004"#,
            br#"d:0.30000000000000004;"#,
            r#"0.30000000000000004"#,
        ),
        (
            r#"1e-7"#,
            br#"d:1.0E-7;"#,
            r#"1.0e-7"#,
        ),
        (
            r#"-1.5e-7"#,
            br#"d:-1.5E-7;"#,
            r#"-1.5e-7"#,
        ),
        (
            r#"0.0001"#,
            br#"d:0.0001;"#,
            r#"0.0001"#,
        ),
        (
            r#"0.00012345"#,
            br#"d:0.00012345;"#,
            r#"0.00012345"#,
        ),
        (
            r#"1.25e-5"#,
            br#"d:1.25E-5;"#,
            r#"1.25e-5"#,
        ),
        (
            r#"-0.0"#,
            br#"d:-0;"#,
            r#"-0"#,
        ),
        (
            r#"2.0"#,
            br#"d:2;"#,
            r#"2"#,
        ),
        (
            r#"100.0"#,
            br#"d:100;"#,
            r#"100"#,
        ),
        (
            r#"1E2"#,
            br#"d:100;"#,
            r#"100"#,
        ),
        (
            r#"12.5"#,
            br#"d:12.5;"#,
            r#"12.5"#,
        ),
        (
            r#"123.456"#,
            br#"d:123.456;"#,
            r#"123.456"#,
        ),
        (
            r#"1307953561161475.25"#,
            br#"d:1307953561161475.2;"#,
            r#"1307953561161475.2"#,
        ),
        (
            r#"-2097328136003113.25"#,
            br#"d:-2097328136003113.2;"#,
            r#"-2097328136003113.2"#,
        ),
        (
            r#"9.5554e16"#,
            br#"d:95554000000000000;"#,
            r#"95554000000000000"#,
        ),
        (
            r#"1e15"#,
            br#"d:1000000000000000;"#,
            r#"1000000000000000"#,
        ),
        (
            r#"1e16"#,
            br#"d:10000000000000000;"#,
            r#"10000000000000000"#,
        ),
        (
            r#"1e17"#,
            br#"d:1.0E+17;"#,
            r#"1.0e+17"#,
        ),
        (
            r#"1.7976931348623157e308"#,
            br#"d:1.7976931348623157E+308;"#,
            r#"1.7976931348623157e+308"#,
        ),
        (
            r#"5e-324"#,
            br#"d:5.0E-324;"#,
            r#"5.0e-324"#,
        ),
        (
            r#""""#,
            br#"s:0:"";"#,
            r#""""#,
        ),
        (
            r#""Zoë""#,
            b"s:4:\"Zo\xc3\xab\";",
            r#""Zoë""#,
        ),
        (
            r#""emoji 😀 and 中文""#,
            b"s:21:\"emoji \xf0\x9f\x98\x80 and \xe4\xb8\xad\xe6\x96\x87\";",
            r#""emoji 😀 and 中文""#,
        ),
        (
            r#""quotes \" and ' and back\\slash and /slash""#,
            br#"s:40:"quotes " and ' and back\slash and /slash";"#,
            r#""quotes \" and ' and back\\slash and \/slash""#,
        ),
        (
            r#""nul\u0000byte""#,
            b"s:8:\"nul\x00byte\";",
            r#""nul\u0000byte""#,
        ),
        (
            r#""\u2028\u2029 \u007f\u001f\b\f\n\r\t""#,
            b"s:14:\"\xe2\x80\xa8\xe2\x80\xa9 \x7f\x1f\x08\x0c\x0a\x0d\x09\";",
            "\"\\u2028\\u2029 \x7f\\u001f\\b\\f\\n\\r\\t\"",
        ),
        (
            r#"[]"#,
            br#"a:0:{}"#,
            r#"[]"#,
        ),
        (
            r#"{}"#,
            br#"a:0:{}"#,
            r#"[]"#,
        ),
        (
            r#"[null,true,false,1,-1.5,"x",[],{}]"#,
            br#"a:8:{i:0;N;i:1;b:1;i:2;b:0;i:3;i:1;i:4;d:-1.5;i:5;s:1:"x";i:6;a:0:{}i:7;a:0:{}}"#,
            r#"[null,true,false,1,-1.5,"x",[],[]]"#,
        ),
        (
            r#"[1,[2,[3,[4,[]]]]]"#,
            br#"a:2:{i:0;i:1;i:1;a:2:{i:0;i:2;i:1;a:2:{i:0;i:3;i:1;a:2:{i:0;i:4;i:1;a:0:{}}}}}"#,
            r#"[1,[2,[3,[4,[]]]]]"#,
        ),
        (
            r#"{"a":{"b":{"c":{}}}}"#,
            br#"a:1:{s:1:"a";a:1:{s:1:"b";a:1:{s:1:"c";a:0:{}}}}"#,
            r#"{"a":{"b":{"c":[]}}}"#,
        ),
        (
            r#"{"0":"a","1":"b"}"#,
            br#"a:2:{i:0;s:1:"a";i:1;s:1:"b";}"#,
            r#"["a","b"]"#,
        ),
        (
            r#"{"1":"a","0":"b"}"#,
            br#"a:2:{i:1;s:1:"a";i:0;s:1:"b";}"#,
            r#"{"1":"a","0":"b"}"#,
        ),
        (
            r#"{"0":"a","2":"b"}"#,
            br#"a:2:{i:0;s:1:"a";i:2;s:1:"b";}"#,
            r#"{"0":"a","2":"b"}"#,
        ),
        (
            r#"{"0":"a","1":"b","x":"c"}"#,
            br#"a:3:{i:0;s:1:"a";i:1;s:1:"b";s:1:"x";s:1:"c";}"#,
            r#"{"0":"a","1":"b","x":"c"}"#,
        ),
        (
            r#"{"01":1,"00":2,"0":3}"#,
            br#"a:3:{s:2:"01";i:1;s:2:"00";i:2;i:0;i:3;}"#,
            r#"{"01":1,"00":2,"0":3}"#,
        ),
        (
            r#"{"-0":1,"-5":2,"+1":3," 1":4,"1.0":5,"":6,"1e3":7}"#,
            br#"a:7:{s:2:"-0";i:1;i:-5;i:2;s:2:"+1";i:3;s:2:" 1";i:4;s:3:"1.0";i:5;s:0:"";i:6;s:3:"1e3";i:7;}"#,
            r#"{"-0":1,"-5":2,"+1":3," 1":4,"1.0":5,"":6,"1e3":7}"#,
        ),
        (
            r#"{"9223372036854775807":1,"9223372036854775808":2,"-9223372036854775808":3,"-9223372036854775809":4}"#,
            br#"a:4:{i:9223372036854775807;i:1;s:19:"9223372036854775808";i:2;i:-9223372036854775808;i:3;s:20:"-9223372036854775809";i:4;}"#,
            r#"{"9223372036854775807":1,"9223372036854775808":2,"-9223372036854775808":3,"-9223372036854775809":4}"#,
        ),
        (
            r#"{"a":1,"b":2,"a":3}"#,
            br#"a:2:{s:1:"a";i:3;s:1:"b";i:2;}"#,
            r#"{"a":3,"b":2}"#,
        ),
        (
            r#"{"é":"ë","😀":[],"ключ":{"0":null}}"#,
            b"a:3:{s:2:\"\xc3\xa9\";s:2:\"\xc3\xab\";s:4:\"\xf0\x9f\x98\x80\";a:0:{}s:8:\"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\";a:1:{i:0;N;}}",
            r#"{"é":"ë","😀":[],"ключ":[null]}"#,
        ),
        (
            r#"{"order_id":42,"name":"Zoë","paid":true,"total":12.5,"note":null,"tags":["a/b"]}"#,
            b"a:6:{s:8:\"order_id\";i:42;s:4:\"name\";s:4:\"Zo\xc3\xab\";s:4:\"paid\";b:1;s:5:\"total\";d:12.5;s:4:\"note\";N;s:4:\"tags\";a:1:{i:0;s:3:\"a/b\";}}",
            r#"{"order_id":42,"name":"Zoë","paid":true,"total":12.5,"note":null,"tags":["a\/b"]}"#,
        ),
        (
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":[0.1,1e-7,1e25,-0.0,2.0]}"#,
            br#"a:3:{s:3:"big";d:1.8446744073709552E+19;s:3:"neg";i:-9223372036854775808;s:1:"f";a:5:{i:0;d:0.1;i:1;d:1.0E-7;i:2;d:1.0E+25;i:3;d:-0;i:4;d:2;}}"#,
            r#"{"big":1.8446744073709552e+19,"neg":-9223372036854775808,"f":[0.1,1.0e-7,1.0e+25,-0,2]}"#,
        ),
    ];

    fn parse(json: &str) -> Value {
        serde_json::from_str(json).expect("table JSON is valid")
    }

    #[test]
    fn php_serialize_matches_php() {
        for (json, expected, _) in PHP_TABLE {
            let mut out = Vec::new();
            php_serialize(&parse(json), &mut out);
            assert_eq!(
                out.escape_ascii().to_string(),
                expected.escape_ascii().to_string(),
                "serialize of {json}"
            );
        }
    }

    #[test]
    fn php_json_encode_matches_php() {
        for (json, _, expected) in PHP_TABLE {
            assert_eq!(php_json_encode(&parse(json), true), *expected, "json_encode of {json}");
        }
    }

    #[test]
    fn php_json_encode_escapes_unicode_without_the_flag() {
        let cases = [
            (r#""Zoë""#, r#""Zo\u00eb""#),
            (r#""😀""#, r#""\ud83d\ude00""#),
            (r#"{"é":"a/b"}"#, r#"{"\u00e9":"a\/b"}"#),
            (r#""\u2028\u0001\u007f""#, "\"\\u2028\\u0001\u{7f}\""),
        ];
        for (json, expected) in cases {
            assert_eq!(php_json_encode(&parse(json), false), expected, "{json}");
        }
    }

    #[test]
    fn unserialize_round_trips_to_the_php_normalised_value() {
        for (json, _, normalised) in PHP_TABLE {
            let mut bytes = Vec::new();
            php_serialize(&parse(json), &mut bytes);
            let mut parser = Unserializer {
                input: &bytes,
                pos: 0,
                depth: 0,
            };
            let back = parser
                .value()
                .unwrap_or_else(|e| panic!("{json}: {e}"))
                .to_json()
                .unwrap_or_else(|| panic!("{json}: no JSON form"));
            assert_eq!(parser.pos, bytes.len(), "{json}: trailing bytes");
            assert_eq!(php_json_encode(&back, true), *normalised, "round trip of {json}");
        }
    }

    const WORKED_UUID: &str = "08a1e7da-8736-4042-84f2-413995be7fa1";
    const WORKED_ID: &str = "hg1MTefyVamMAvtDc5zprTTGRGlpcs1C";
    const WORKED_DATA: &str = r#"{"order_id":42,"name":"Zoë","paid":true,"total":12.5,"note":null,"tags":["a/b"]}"#;

    fn callp2() -> JobTarget {
        JobTarget::Command {
            class: "App\\Jobs\\CALLP2".to_owned(),
            property: "data".to_owned(),
        }
    }

    #[test]
    fn build_job_reproduces_the_captured_laravel_payload() {
        let expected = concat!(
            r#"{"uuid":"08a1e7da-8736-4042-84f2-413995be7fa1","displayName":"App\\Jobs\\CALLP2","#,
            r#""job":"Illuminate\\Queue\\CallQueuedHandler@call","maxTries":null,"maxExceptions":null,"#,
            r#""failOnTimeout":false,"backoff":null,"timeout":null,"retryUntil":null,"#,
            r#""data":{"commandName":"App\\Jobs\\CALLP2","command":"O:15:\"App\\Jobs\\CALLP2\":11:{"#,
            r#"s:7:\"\u0000*\u0000data\";a:6:{s:8:\"order_id\";i:42;s:4:\"name\";s:4:\"Zoë\";"#,
            r#"s:4:\"paid\";b:1;s:5:\"total\";d:12.5;s:4:\"note\";N;s:4:\"tags\";a:1:{i:0;s:3:\"a\/b\";}}"#,
            r#"s:3:\"job\";N;s:10:\"connection\";N;s:5:\"queue\";s:4:\"to-b\";"#,
            r#"s:15:\"chainConnection\";N;s:10:\"chainQueue\";N;s:19:\"chainCatchCallbacks\";N;"#,
            r#"s:5:\"delay\";N;s:11:\"afterCommit\";N;s:10:\"middleware\";a:0:{}s:7:\"chained\";a:0:{}}"},"#,
            r#""id":"hg1MTefyVamMAvtDc5zprTTGRGlpcs1C","attempts":0}"#
        );
        let payload = build_job(
            &callp2(),
            &JobOptions::new("to-b"),
            &parse(WORKED_DATA),
            WORKED_UUID,
            WORKED_ID,
        );
        // QUEUE-FORMAT §4: 778 bytes, md5 5e29f52fa60593ae8a4cff05c43ba34a.
        assert_eq!(payload.len(), 778);
        assert_eq!(String::from_utf8_lossy(&payload), expected);
    }

    #[test]
    fn build_job_writes_options_and_handler_form() {
        let opts = JobOptions {
            tries: Some(3),
            timeout: Some(120),
            backoff: Some("10,30".to_owned()),
            retry_until: Some(1_700_000_000),
            queue: "to-b".to_owned(),
        };
        let handler = JobTarget::Handler {
            handler: "App\\Handlers\\Orders@handle".to_owned(),
        };
        let cases = [
            (
                &handler,
                json!({"a": "x/y", "n": 12345678901234567890u64, "e": {}, "0": "Zoë\u{2028}"}),
                concat!(
                    r#"{"uuid":"U","displayName":"App\\Handlers\\Orders","#,
                    r#""job":"App\\Handlers\\Orders@handle","maxTries":3,"maxExceptions":null,"#,
                    r#""failOnTimeout":false,"backoff":"10,30","timeout":120,"retryUntil":1700000000,"#,
                    r#""data":{"a":"x\/y","n":1.2345678901234567e+19,"e":[],"0":"Zoë\u2028"},"#,
                    r#""id":"I","attempts":0}"#
                ),
            ),
            (
                &handler,
                json!({"0": 1, "1": 2}),
                concat!(
                    r#"{"uuid":"U","displayName":"App\\Handlers\\Orders","#,
                    r#""job":"App\\Handlers\\Orders@handle","maxTries":3,"maxExceptions":null,"#,
                    r#""failOnTimeout":false,"backoff":"10,30","timeout":120,"retryUntil":1700000000,"#,
                    r#""data":[1,2],"id":"I","attempts":0}"#
                ),
            ),
        ];
        for (target, data, expected) in cases {
            let payload = build_job(target, &opts, &data, "U", "I");
            assert_eq!(String::from_utf8_lossy(&payload), expected);
        }
        // Without options, byte for byte what `Queue::push($handler, $data)` wrote (checked
        // against Laravel 8.83 with the fixture's `router:dispatch`).
        let cases = [(
            &handler,
            json!(null),
            concat!(
                r#"{"uuid":"U","displayName":"App\\Handlers\\Orders","#,
                r#""job":"App\\Handlers\\Orders@handle","maxTries":null,"maxExceptions":null,"#,
                r#""failOnTimeout":false,"backoff":null,"timeout":null,"data":null,"#,
                r#""id":"I","attempts":0}"#
            ),
        )];
        for (target, data, expected) in cases {
            let payload = build_job(target, &JobOptions::new("q"), &data, "U", "I");
            assert_eq!(String::from_utf8_lossy(&payload), expected);
        }
    }

    #[test]
    fn parse_job_reads_back_what_build_job_wrote() {
        let opts = JobOptions::new("to-b");
        let handler = JobTarget::Handler {
            handler: "App\\Handlers\\Orders@handle".to_owned(),
        };
        let custom = JobTarget::Command {
            class: "App\\Jobs\\SendInvoice".to_owned(),
            property: "payload".to_owned(),
        };
        let cases = [
            (callp2(), WORKED_DATA, WORKED_DATA, Some("App\\Jobs\\CALLP2")),
            (
                callp2(),
                r#"{"0":"a","1":"b"}"#,
                r#"["a","b"]"#,
                Some("App\\Jobs\\CALLP2"),
            ),
            (callp2(), "{}", "[]", Some("App\\Jobs\\CALLP2")),
            (
                custom,
                r#""just a string""#,
                r#""just a string""#,
                Some("App\\Jobs\\SendInvoice"),
            ),
            (handler, r#"{"id":7,"e":{}}"#, r#"{"id":7,"e":[]}"#, None),
        ];
        for (target, data, expected, command_name) in cases {
            let payload = build_job(&target, &opts, &parse(data), "U", "I");
            let view = parse_job(&payload).unwrap_or_else(|e| panic!("{data}: {e}"));
            assert_eq!(view.uuid.as_deref(), Some("U"));
            assert_eq!(view.command_name.as_deref(), command_name, "{data}");
            assert_eq!(view.data, Some(parse(expected)), "{data}");
        }
    }

    #[test]
    fn parse_job_handles_other_command_shapes() {
        let envelope = |command: &str| {
            json!({"job": CALL_QUEUED_HANDLER, "data": {"commandName": "X", "command": command}}).to_string()
        };
        let cases: &[(&str, Option<Value>)] = &[
            // Laravel 9.4+ short form, and the minimal form.
            (
                "O:15:\"App\\Jobs\\CALLP2\":2:{s:7:\"\0*\0data\";a:1:{s:1:\"k\";i:1;}s:5:\"queue\";s:4:\"to-b\";}",
                Some(json!({"k": 1})),
            ),
            ("O:1:\"X\":1:{s:7:\"\0*\0data\";a:0:{}}", Some(json!([]))),
            // Public and private `data`, found after other properties.
            ("O:1:\"X\":2:{s:1:\"a\";i:1;s:4:\"data\";b:1;}", Some(json!(true))),
            ("O:1:\"X\":2:{s:1:\"a\";i:1;s:7:\"\0X\0data\";d:0.5;}", Some(json!(0.5))),
            // No `data`: the first property.
            (
                "O:1:\"X\":2:{s:8:\"\0*\0order\";s:2:\"ok\";s:1:\"b\";N;}",
                Some(json!("ok")),
            ),
            ("O:1:\"X\":0:{}", None),
            // Objects, references, enums, custom objects inside data: no JSON form.
            ("O:1:\"X\":1:{s:4:\"data\";a:1:{i:0;O:8:\"stdClass\":0:{}}}", None),
            ("O:1:\"X\":1:{s:4:\"data\";a:2:{i:0;i:1;i:1;R:2;}}", None),
            ("O:1:\"X\":1:{s:4:\"data\";E:5:\"A:Bcd\";}", None),
            ("O:1:\"X\":1:{s:4:\"data\";C:1:\"Y\":3:{abc}}", None),
            ("O:1:\"X\":1:{s:4:\"data\";d:INF;}", None),
            // Not UTF-8 (only `S:` can carry such bytes inside a JSON string).
            ("O:1:\"X\":1:{s:4:\"data\";S:1:\"\\ff\";}", None),
            // Other properties may hold anything.
            (
                "O:1:\"X\":2:{s:4:\"data\";i:-3;s:3:\"job\";O:1:\"Y\":1:{s:1:\"z\";r:1;}}",
                Some(json!(-3)),
            ),
            // Numeric string keys are int keys in PHP; `S:` strings.
            (
                "O:1:\"X\":1:{s:4:\"data\";a:2:{s:1:\"0\";i:5;i:1;S:3:\"\\41bc\";}}",
                Some(json!([5, "Abc"])),
            ),
            ("O:1:\"X\":1:{s:4:\"data\";a:1:{i:1;i:5;}}", Some(json!({"1": 5}))),
            // What PHP 8.2 also accepts: `+` on the property count, saturating integers,
            // int property names, a trailing backslash in the class name, trailing bytes.
            ("O:1:\"X\":+1:{s:4:\"data\";i:1;}", Some(json!(1))),
            (
                "O:1:\"X\":1:{s:4:\"data\";a:2:{i:0;i:99999999999999999999;i:1;i:-99999999999999999999;}}",
                Some(json!([i64::MAX, i64::MIN])),
            ),
            ("O:1:\"X\":1:{i:0;s:1:\"z\";}", Some(json!("z"))),
            ("O:4:\"A\\B\\\":1:{s:4:\"data\";d:1e5;}x", Some(json!(100000.0))),
            // Encrypted (does not start with `O:`).
            ("eyJpdiI6IjEyMyJ9", None),
        ];
        for (command, expected) in cases {
            let view = parse_job(envelope(command).as_bytes()).unwrap_or_else(|e| panic!("{command:?}: {e}"));
            assert_eq!(view.data, *expected, "{command:?}");
            assert_eq!(view.command_name.as_deref(), Some("X"));
        }
    }

    #[test]
    fn parse_job_rejects_malformed_payloads() {
        let command = |c: &str| json!({"job": CALL_QUEUED_HANDLER, "data": {"command": c}}).to_string();
        let deep = format!("O:1:\"X\":1:{{s:4:\"data\";{}", "a:1:{i:0;".repeat(600));
        let cases: Vec<(String, &str)> = vec![
            ("not json".to_owned(), "not valid JSON"),
            ("[]".to_owned(), "not a JSON object"),
            (r#"{"data":{}}"#.to_owned(), "no string `job`"),
            (r#"{"job":1}"#.to_owned(), "no string `job`"),
            (json!({"job": CALL_QUEUED_HANDLER}).to_string(), "data.command"),
            (
                json!({"job": CALL_QUEUED_HANDLER, "data": {"command": 5}}).to_string(),
                "data.command",
            ),
            (command("O:"), "missing `:`"),
            (command("O:x:\"X\":0:{}"), "expected a length"),
            (command("O:15:\"App\\Jobs\\CALLP2\":1:{"), "unexpected end"),
            (command("O:99:\"X\":0:{}"), "runs past the end"),
            (command("O:18446744073709551615:\"X\":0:{}"), "runs past the end"),
            (command("O:99999999999999999999999:\"X\":0:{}"), "expected a length"),
            (command("O:+1:\"X\":0:{}"), "expected a length"),
            (command("O:1:\"X\":-1:{}"), "expected a length"),
            (command("O:1:\"X\":1:{s:4:\"data\";i:;}"), "expected an integer"),
            (command("O:1:\"X\":1:{s:4:\"data\";i:1x;}"), "expected an integer"),
            (command("O:2:\"\\A\":0:{}"), "invalid class name"),
            (command("O:3:\"A B\":0:{}"), "invalid class name"),
            (command("O:0:\"\":0:{}"), "invalid class name"),
            (command("O:1:\"X\":1:{s:4:\"data\";d:nan;}"), "float"),
            (command("O:1:\"X\":1:{s:4:\"data\";b:2;}"), "`0` or `1`"),
            (command("O:1:\"X\":1:{s:4:\"data\";x:1;}"), "unknown type"),
            (command("O:1:\"X\":1:{N;N;}"), "array keys"),
            (command("O:1:\"X\":9999999999:{}"), "unknown type `}`"),
            (command("O:1:\"X\":1:{s:4:\"data\";S:2:\"\\zz\";}"), "escape"),
            (command("O:1:\"X\":1:{s:4:\"data\";E:1:\"q\";}"), "Enum:Case"),
            (command(&deep), "nested deeper"),
        ];
        for (payload, needle) in cases {
            match parse_job(payload.as_bytes()) {
                Ok(view) => panic!("{payload:?} parsed as {view:?}"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(needle), "{payload:?}: {text:?} lacks {needle:?}");
                }
            }
        }
    }

    #[test]
    fn parse_job_never_panics_on_truncated_or_corrupted_payloads() {
        let payload = build_job(&callp2(), &JobOptions::new("q"), &parse(WORKED_DATA), "U", "I");
        let view = parse_job(&payload).expect("full payload parses");
        let command = json!({"job": view.job, "data": {"command": ""}});
        let Ok(Value::Object(full)) = serde_json::from_slice::<Value>(&payload) else {
            panic!("payload is an object");
        };
        let inner = full["data"]["command"].as_str().expect("command").to_owned();
        for cut in 0..inner.len() {
            let mut corrupted = command.clone();
            let truncated = String::from_utf8_lossy(&inner.as_bytes()[..cut]).into_owned();
            corrupted["data"]["command"] = Value::String(truncated);
            let _ = parse_job(corrupted.to_string().as_bytes());
            // Flip one byte instead of cutting.
            let mut bytes = inner.clone().into_bytes();
            bytes[cut] = bytes[cut].wrapping_add(1);
            corrupted["data"]["command"] = Value::String(String::from_utf8_lossy(&bytes).into());
            let _ = parse_job(corrupted.to_string().as_bytes());
        }
        for cut in 0..payload.len() {
            let _ = parse_job(&payload[..cut]);
        }
    }

    #[test]
    fn php_int_key_follows_php_symbol_tables() {
        let cases = [
            ("0", Some(0)),
            ("-5", Some(-5)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("01", None),
            ("00", None),
            ("-0", None),
            ("-", None),
            ("", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1.0", None),
            ("1e3", None),
            ("٣", None),
        ];
        for (key, expected) in cases {
            assert_eq!(php_int_key(key), expected, "{key:?}");
        }
    }

    #[test]
    fn validators_accept_laravel_names_and_explain_mistakes() {
        let classes = [
            ("App\\Jobs\\CALLP2", None),
            ("SendInvoice", None),
            ("_Private\\Ünïcode\\Job9", None),
            ("", Some("empty")),
            ("\\App\\Jobs\\CALLP2", Some("leading backslash")),
            ("App/Jobs/CALLP2", Some("not `/`")),
            ("App\\\\Jobs\\CALLP2", Some("empty namespace segment")),
            ("App\\Jobs\\", Some("empty namespace segment")),
            ("App\\Jobs\\9Lives", Some("`9Lives` is not a PHP identifier")),
            ("App\\Jobs\\Send-Invoice", Some("`Send-Invoice`")),
            ("App\\Orders@handle", Some("handler")),
        ];
        for (name, problem) in classes {
            check(validate_class_name(name), problem, name);
        }
        let handlers = [
            ("App\\Handlers\\Orders@handle", None),
            ("App\\Handlers\\Orders", None),
            ("App\\Handlers\\Orders@", Some("not a PHP method name")),
            ("App\\Handlers\\Orders@a@b", Some("`a@b`")),
            ("App/Handlers/Orders@handle", Some("not `/`")),
            ("@handle", Some("empty")),
        ];
        for (name, problem) in handlers {
            check(validate_handler(name), problem, name);
        }
        let properties = [
            ("data", None),
            ("payload_2", None),
            ("queue", Some("Queueable")),
            ("2x", Some("invalid PHP property name")),
            ("", Some("invalid PHP property name")),
        ];
        for (name, problem) in properties {
            check(validate_property_name(name), problem, name);
        }
        let backoffs = [
            ("10", None),
            ("10,30,60", None),
            ("", Some("``")),
            ("10, 30", Some("` 30`")),
            ("-1", Some("`-1`")),
            ("1.5", Some("`1.5`")),
        ];
        for (text, problem) in backoffs {
            check(validate_backoff(text), problem, text);
        }
    }

    fn check(result: Result<(), String>, problem: Option<&str>, input: &str) {
        match (result, problem) {
            (Ok(()), None) => {}
            (Err(e), Some(needle)) => {
                assert!(e.contains(needle), "{input:?}: {e:?} lacks {needle:?}")
            }
            (result, _) => panic!("{input:?}: unexpected {result:?}"),
        }
    }

    #[test]
    fn new_job_ids_look_like_laravels() {
        for _ in 0..200 {
            let (uuid, id) = new_job_ids();
            let parsed = uuid::Uuid::parse_str(&uuid).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(uuid, parsed.hyphenated().to_string());
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert_ne!(new_job_ids(), new_job_ids());
    }
}
