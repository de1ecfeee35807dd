//! The dead-letter stream: where a message goes when it cannot be delivered, with why.
//!
//! Written to the Redis of the rule's source (its prefix applies, like every key the rule
//! touches), through that connection's shared socket ([`redis_conn::shared`]). One XADD per
//! dead letter, pipelined per batch.
//!
//! A dead letter is often the only copy of a message left, so it keeps the whole payload
//! unless the rule's `on_error.dead_letter_max_payload` says otherwise, and it carries what
//! `dlq replay` needs to trust it: the payload's length and SHA-256 (a cut or damaged payload
//! is never replayed) and an HMAC-SHA256 signature, keyed by a random key the router keeps in
//! Redis ([`SIGNING_KEY`]), over the stream, the rule, the sink, the source and the payload's
//! digest. An entry that someone else wrote (a payload rendered into the router's own keys, a
//! client with write access), or one moved to another rule's stream, does not verify, and
//! replay leaves it where it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tracing::error;

use crate::config::ConnectionSpec;
use crate::filter::now_rfc3339;
use crate::message::Message;
use crate::redis_conn::{self, Conn};

/// The key (on each connection that holds dead letters, its prefix applied) holding the secret
/// dead letters are signed with: 32 random bytes, hex, created by the first router that
/// writes a dead letter there (`SET NX`, so every instance uses the same one). Deleting it
/// makes the dead letters signed before unverifiable.
pub const SIGNING_KEY: &str = "redis-router:dead-letter-key";

/// The fields a signature covers, in this order, after the stream's name. What replay acts on
/// (which rule, which sink, which message) is signed; what only informs (`reason`, `error`,
/// `failed_at`, `attempts`) is not.
pub const SIGNED_FIELDS: &[&str] = &[
    "rule",
    "sink",
    "source",
    "source_key",
    "source_id",
    "payload_len",
    "payload_sha256",
    "payload_truncated_from",
];

/// Prefix of the `signature` field's value, naming the scheme.
const SIGNATURE_VERSION: &str = "v1=";

/// One message that could not be delivered.
pub struct DeadLetter<'a> {
    /// The message as received.
    pub message: &'a Message,
    /// Stream key (without prefix).
    pub stream: &'a str,
    /// Why, in a few words (`payload is not JSON`, `sink failed 5 times`).
    pub reason: String,
    /// The sink's last error (with the HTTP status and body snippet for webhooks).
    pub error: Option<String>,
    /// The sink that failed, when one did (its label: `name`, or kind and masked target).
    pub sink: Option<&'a str>,
    /// Attempts made on that sink.
    pub attempts: u32,
    /// Longest payload kept (`on_error.dead_letter_max_payload`); `None` keeps it whole.
    pub max_payload: Option<usize>,
}

/// Writes dead letters for one rule.
pub struct DeadLetters {
    /// `None` in a dry run: dead letters are printed, not written.
    conn: Option<Writer>,
}

struct Writer {
    conn: Conn,
    connection: Arc<ConnectionSpec>,
    key: Vec<u8>,
}

impl DeadLetters {
    /// Connect on `connection` and read (or create) its signing key.
    ///
    /// # Errors
    /// When Redis cannot be reached now.
    pub async fn open(connection: Arc<ConnectionSpec>) -> redis::RedisResult<DeadLetters> {
        let mut conn = redis_conn::shared(&connection).await?;
        let key = signing_key(&mut conn, &connection, true).await?.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "the dead-letter signing key was not created"))
        })?;
        Ok(DeadLetters {
            conn: Some(Writer { conn, connection, key }),
        })
    }

    /// Dead letters printed to standard output instead (`run --dry-run`).
    pub fn printing() -> DeadLetters {
        DeadLetters { conn: None }
    }

    /// Write a set of dead letters in one round trip and log each once.
    ///
    /// # Errors
    /// When Redis does not take them; the caller retries (nothing is acknowledged before).
    pub async fn write(&mut self, letters: &[DeadLetter<'_>]) -> redis::RedisResult<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let Some(Writer { conn, connection, key }) = &mut self.conn else {
            for l in letters {
                println!(
                    "dry-run rule={} dead-letter {}: reason=\"{}\" payload={}",
                    l.message.meta.rule,
                    l.stream,
                    crate::mask::escape(&l.reason),
                    crate::mask::escape(&String::from_utf8_lossy(l.message.raw()))
                );
            }
            return Ok(());
        };
        let failed_at = now_rfc3339();
        let mut pipe = redis::pipe();
        for l in letters {
            let cmd = pipe
                .cmd("XADD")
                .arg(redis_conn::prefixed(connection, l.stream))
                .arg("*");
            for (name, value) in fields(l, key, &failed_at) {
                cmd.arg(name).arg(value);
            }
            cmd.ignore();
        }
        let _: () = pipe.query_async(conn).await?;
        for l in letters {
            error!(
                rule = %l.message.meta.rule,
                key = %crate::mask::escape(&l.message.meta.key),
                id = l.message.meta.id.as_deref().unwrap_or(""),
                sink = l.sink.unwrap_or(""),
                reason = %crate::mask::text(&l.reason),
                error = %l.error.as_deref().map(crate::mask::text).unwrap_or_default(),
                dead_letter = l.stream,
                "Message dead-lettered."
            );
        }
        Ok(())
    }
}

/// The fields of one dead letter, signature last.
fn fields(l: &DeadLetter<'_>, key: &[u8], failed_at: &str) -> Vec<(&'static str, Vec<u8>)> {
    let m = l.message;
    let raw = m.raw();
    let cut = l.max_payload.filter(|&max| raw.len() > max);
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("rule", m.meta.rule.as_bytes().to_vec()),
        ("reason", l.reason.clone().into_bytes()),
        ("source", m.meta.source.as_str().as_bytes().to_vec()),
        ("source_key", m.meta.key.clone().into_bytes()),
        ("source_id", m.meta.id.clone().unwrap_or_default().into_bytes()),
        ("payload", raw[..cut.unwrap_or(raw.len())].to_vec()),
        ("payload_len", raw.len().to_string().into_bytes()),
        ("payload_sha256", hex::encode(Sha256::digest(raw)).into_bytes()),
        ("failed_at", failed_at.as_bytes().to_vec()),
    ];
    if cut.is_some() {
        out.push(("payload_truncated_from", raw.len().to_string().into_bytes()));
    }
    if let Some(sink) = l.sink {
        out.push(("sink", sink.as_bytes().to_vec()));
        out.push(("attempts", l.attempts.to_string().into_bytes()));
    }
    if let Some(error) = &l.error {
        // Stored masked: the dead-letter stream is read by people and tools.
        out.push(("error", crate::mask::text(error).into_bytes()));
    }
    let signature = {
        let get = |name: &str| out.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice());
        sign(key, l.stream, get)
    };
    out.push(("signature", signature.into_bytes()));
    out
}

/// `v1=<hex HMAC-SHA256>` over the stream's name and the [`SIGNED_FIELDS`] (`get` answers a
/// field's value, `None` when the entry has none), each length-prefixed so that no two
/// different entries sign the same bytes.
pub fn sign<'a>(key: &[u8], stream: &str, get: impl Fn(&str) -> Option<&'a [u8]>) -> String {
    format!(
        "{SIGNATURE_VERSION}{}",
        hex::encode(mac(key, stream, get).finalize().into_bytes())
    )
}

/// Whether `signature` is what [`sign`] gives for this entry (compared in constant time).
pub fn signature_matches(key: &[u8], stream: &str, fields: &BTreeMap<String, Vec<u8>>, signature: &[u8]) -> bool {
    let Some(tag) = signature
        .strip_prefix(SIGNATURE_VERSION.as_bytes())
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    mac(key, stream, |name| fields.get(name).map(Vec::as_slice))
        .verify_slice(&tag)
        .is_ok()
}

fn mac<'a>(key: &[u8], stream: &str, get: impl Fn(&str) -> Option<&'a [u8]>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("stream:{}:", stream.len()).as_bytes());
    mac.update(stream.as_bytes());
    for name in SIGNED_FIELDS {
        match get(name) {
            Some(v) => {
                mac.update(format!("\n{name}:{}:", v.len()).as_bytes());
                mac.update(v);
            }
            None => mac.update(format!("\n{name}:-").as_bytes()),
        }
    }
    mac
}

/// The connection's signing key; with `create`, made first when missing (SET NX, then GET,
/// so every instance ends up with the one that won).
///
/// # Errors
/// When Redis fails.
pub async fn signing_key(
    conn: &mut Conn,
    connection: &ConnectionSpec,
    create: bool,
) -> redis::RedisResult<Option<Vec<u8>>> {
    let key = redis_conn::prefixed(connection, SIGNING_KEY);
    if create {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| {
            redis::RedisError::from(std::io::Error::other(format!(
                "no randomness for the dead-letter signing key: {e}"
            )))
        })?;
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(hex::encode(secret))
            .arg("NX")
            .query_async(conn)
            .await?;
    }
    redis::cmd("GET").arg(&key).query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_signature_verifies_only_its_own_stream_fields_and_key() {
        let fields = entry(&[
            ("rule", "r"),
            ("sink", "webhook x"),
            ("source", "stream"),
            ("payload_len", "2"),
            ("payload_sha256", "ab"),
        ]);
        let sig = sign(b"k", "dl", |n| fields.get(n).map(Vec::as_slice));
        assert!(signature_matches(b"k", "dl", &fields, sig.as_bytes()));
        assert!(
            !signature_matches(b"other", "dl", &fields, sig.as_bytes()),
            "another key"
        );
        assert!(
            !signature_matches(b"k", "dl2", &fields, sig.as_bytes()),
            "another stream"
        );
        for name in fields.keys() {
            let mut changed = fields.clone();
            changed.insert(name.clone(), b"z".to_vec());
            assert!(
                !signature_matches(b"k", "dl", &changed, sig.as_bytes()),
                "{name} changed"
            );
        }
        let mut added = fields.clone();
        added.insert("payload_truncated_from".into(), b"9".to_vec());
        assert!(!signature_matches(b"k", "dl", &added, sig.as_bytes()), "a field added");
        // Moving bytes between two fields changes the signature.
        let a = entry(&[("rule", "ab"), ("sink", "c")]);
        let b = entry(&[("rule", "a"), ("sink", "bc")]);
        assert_ne!(
            sign(b"k", "dl", |n| a.get(n).map(Vec::as_slice)),
            sign(b"k", "dl", |n| b.get(n).map(Vec::as_slice))
        );
        assert!(!signature_matches(b"k", "dl", &fields, b"v1=zz"));
        assert!(!signature_matches(b"k", "dl", &fields, b""));
    }
}
