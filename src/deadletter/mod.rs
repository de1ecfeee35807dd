//! Dead letters: where a message goes when it cannot be delivered, with why. This module is
//! the record, in one place for the side that writes it (the engine, through [`DeadLetters`])
//! and the side that reads it back (`dlq list` and `dlq replay`): its fields, its signature,
//! and whether a stored one can be trusted ([`DeadLetterEntry::check`]).
//!
//! A dead letter is often the only copy of a message left, so it keeps the whole payload
//! unless the rule's `on_error.dead_letter_max_payload` says otherwise, and it carries what
//! `dlq replay` needs to trust it: the payload's length and SHA-256 (a cut or damaged payload
//! is never replayed) and an HMAC-SHA256 signature, keyed by a random key the router keeps in
//! Redis ([`SIGNING_KEY`]), over the stream, the rule, the sink, the source and the payload's
//! digest. An entry that someone else wrote (a payload rendered into the router's own keys, a
//! client with write access), or one moved to another rule's stream, does not verify, and
//! replay leaves it where it is.

mod writer;

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use redis::Value;
use sha2::{Digest, Sha256};

use crate::config::ConnectionSpec;
use crate::message::Message;
use crate::redis_conn::{self, Conn};

pub use writer::DeadLetters;

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

/// One dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    /// The dead-letter stream (without prefix).
    pub stream: String,
    /// The entry's id in that stream.
    pub id: String,
    /// The stored fields.
    pub fields: BTreeMap<String, Vec<u8>>,
}

impl DeadLetterEntry {
    /// A field as text ("" when absent).
    pub fn field(&self, name: &str) -> String {
        self.fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// One line for `dlq list`: every field escaped (a payload's control characters cannot
    /// reach the terminal) and masked; `problem` when replay would keep it.
    pub fn summary(&self, problem: Option<&Refusal>) -> String {
        use crate::mask::{escape, text};
        // The first 80 characters.
        let payload = self.fields.get("payload").map_or(&[][..], Vec::as_slice);
        let short = crate::mask::head(payload, 80);
        let short = escape(&short);
        let sink = self.field("sink");
        let error = self.field("error");
        let mut line = format!(
            "{} {} rule={}",
            escape(&self.stream),
            escape(&self.id),
            escape(&self.field("rule"))
        );
        if !sink.is_empty() {
            line.push_str(&format!(" sink=\"{}\"", text(&sink)));
        }
        line.push_str(&format!(" reason=\"{}\"", text(&self.field("reason"))));
        if !error.is_empty() {
            line.push_str(&format!(" error=\"{}\"", text(&error)));
        }
        line.push_str(&format!(" source_id={}", escape(&self.field("source_id"))));
        if let Some(p) = problem {
            line.push_str(&format!(" not_replayable=\"{p}\""));
        }
        line.push_str(&format!(" payload={short}"));
        line
    }
}

/// Why replay keeps a dead letter without sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A field replay needs is missing.
    Missing(&'static str),
    /// The payload was cut when the dead letter was written, or is shorter than written.
    Cut {
        /// Bytes stored.
        stored: usize,
        /// Bytes the message had.
        original: usize,
    },
    /// The payload is not what was written: longer than written, a SHA-256 that differs,
    /// or a length that is not a number.
    Corrupted(String),
    /// No signature (written by a router before dead letters were signed, or by someone
    /// else); replayed only with `--accept-unsigned`.
    Unsigned,
    /// Signed, but not by this router's key for this stream, or edited since.
    BadSignature,
    /// The connection holds no signing key, so no signature can be checked.
    NoKey,
    /// The entry names a rule (or sink) that writes its dead letters elsewhere.
    WrongStream {
        /// Where the rule's dead letters go.
        expected: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing(field) => write!(f, "corrupted: no `{field}` field"),
            Refusal::Cut { stored, original } => {
                write!(
                    f,
                    "payload cut: {stored} of {original} bytes kept; the whole message is not here"
                )
            }
            Refusal::Corrupted(why) => write!(f, "corrupted: {why}"),
            Refusal::Unsigned => write!(
                f,
                "unsigned: written by an older router or by something else; `--accept-unsigned` replays it"
            ),
            Refusal::BadSignature => write!(
                f,
                "forged or edited: its signature does not match this router's key for this stream"
            ),
            Refusal::NoKey => write!(
                f,
                "cannot verify: the signing key {} is missing on this Redis",
                SIGNING_KEY
            ),
            Refusal::WrongStream { expected } => write!(
                f,
                "forged: its rule writes its dead letters to `{expected}`, not to this stream"
            ),
        }
    }
}

impl DeadLetterEntry {
    /// Whether the entry is whole and was signed by `key` for `stream` (the dead-letter
    /// stream's name, without prefix), as the router writes dead letters. `key` is `None`
    /// when the connection holds no signing key; `accept_unsigned` lets entries without a
    /// signature (written by a router before dead letters were signed) through.
    ///
    /// # Errors
    /// The [`Refusal`] saying why replay must keep it.
    pub fn check(&self, key: Option<&[u8]>, stream: &str, accept_unsigned: bool) -> Result<(), Refusal> {
        for field in ["rule", "source", "payload"] {
            if !self.fields.contains_key(field) {
                return Err(Refusal::Missing(field));
            }
        }
        let stored = self.fields.get("payload").map_or(0, Vec::len);
        let number = |name: &str| -> Result<Option<usize>, Refusal> {
            match self.fields.get(name) {
                None => Ok(None),
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Some)
                    .ok_or_else(|| Refusal::Corrupted(format!("`{name}` is not a number"))),
            }
        };
        if let Some(original) = number("payload_truncated_from")? {
            return Err(Refusal::Cut { stored, original });
        }
        let signed = self.fields.contains_key("signature");
        match (number("payload_len")?, self.fields.get("payload_sha256")) {
            (Some(len), Some(sha)) => {
                if stored < len {
                    return Err(Refusal::Cut { stored, original: len });
                }
                if stored > len {
                    return Err(Refusal::Corrupted(format!(
                        "the payload is {stored} bytes, written as {len}"
                    )));
                }
                let payload = self.fields.get("payload").map_or(&[][..], Vec::as_slice);
                if hex::encode(Sha256::digest(payload)).as_bytes() != sha.as_slice() {
                    return Err(Refusal::Corrupted(
                        "the payload's SHA-256 is not the one written with it".into(),
                    ));
                }
            }
            (None, None) if !signed => {}
            (None, _) => return Err(Refusal::Missing("payload_len")),
            (_, None) => return Err(Refusal::Missing("payload_sha256")),
        }
        match (self.fields.get("signature"), key) {
            (None, _) if accept_unsigned => {}
            (None, _) => return Err(Refusal::Unsigned),
            (Some(_), None) => return Err(Refusal::NoKey),
            (Some(sig), Some(key)) => {
                if !signature_matches(key, stream, &self.fields, sig) {
                    return Err(Refusal::BadSignature);
                }
            }
        }
        Ok(())
    }
}

/// The entries of an XRANGE reply of `stream`.
pub(crate) fn parse_entries(stream: &str, reply: Value) -> Vec<DeadLetterEntry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else { continue };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let id = pair
            .pop()
            .and_then(crate::source::bulk)
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let mut map = BTreeMap::new();
        if let Some(Value::Array(flat)) = fields {
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let k = crate::source::bulk(k).map(|b| String::from_utf8_lossy(&b).into_owned());
                if let (Some(k), Some(v)) = (k, crate::source::bulk(v)) {
                    map.insert(k, v);
                }
            }
        }
        out.push(DeadLetterEntry {
            stream: stream.to_string(),
            id,
            fields: map,
        });
    }
    out
}

/// The fields of one dead letter, signature last.
pub(crate) fn fields(l: &DeadLetter<'_>, key: &[u8], failed_at: &str) -> Vec<(&'static str, Vec<u8>)> {
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
