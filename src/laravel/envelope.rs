//! Building Laravel job envelopes, and validating what goes into them.

use super::*;

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

pub(super) fn push_opt_int<T: std::fmt::Display>(value: Option<T>, out: &mut String) {
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
pub(super) fn serialize_command(class: &str, property: &str, queue: &str, data: &Value) -> Vec<u8> {
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
pub(super) fn is_php_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80)
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
}
