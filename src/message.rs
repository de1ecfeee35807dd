//! The one message type that flows from a source, through filter and transform, to the sinks.
//!
//! A message keeps the bytes it arrived with and parses them as JSON only when something asks
//! (a filter, a transform, a JSONPath template), once. Stream entries keep their fields, so a
//! stream-to-stream rule copies fields without ever building JSON.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::Value;

/// Which kind of source produced a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// SUBSCRIBE.
    Channel,
    /// PSUBSCRIBE.
    Pattern,
    /// A Redis stream, read through a consumer group or tailed.
    Stream,
    /// A Redis list used as a queue.
    Queue,
}

impl SourceKind {
    /// The kind as the rule file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Channel => "channel",
            SourceKind::Pattern => "pattern",
            SourceKind::Stream => "stream",
            SourceKind::Queue => "queue",
        }
    }
}

/// Where a message came from: what templates reach as `meta.*` and what a dead letter records.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The rule that received the message.
    pub rule: Arc<str>,
    /// The kind of source.
    pub source: SourceKind,
    /// Channel, stream or list name, without the connection's prefix.
    pub key: String,
    /// The pattern that matched, for pattern sources.
    pub pattern: Option<String>,
    /// Stream entry id, for stream sources.
    pub id: Option<String>,
    /// When the router received the message.
    pub received: SystemTime,
    /// How many times the source has delivered it (1 for a first delivery).
    pub deliveries: u64,
    /// The other fields of a stream entry read with `body_field` (`{{meta.fields.NAME}}`).
    pub fields: Vec<(String, String)>,
    /// Why the source could not make a payload of what it read (the rule dead-letters it).
    pub problem: Option<String>,
}

/// The payload as it arrived.
#[derive(Debug, Clone)]
pub enum Body {
    /// Bytes as received (Pub/Sub message, list element, one stream field with `body_field`).
    Bytes(Vec<u8>),
    /// All fields of a stream entry, in order.
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
    /// One field of a stream entry (`body_field`): JSON when it parses, else a JSON string.
    Field(Vec<u8>),
}

/// Why a payload could not be read as JSON.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payload is not JSON: {0}")]
pub struct NotJson(String);

/// A message on its way through a rule.
#[derive(Debug)]
pub struct Message {
    /// The payload.
    pub body: Body,
    /// Where it came from.
    pub meta: Meta,
    /// The payload parsed as JSON, wrapped in a one-element array: jsonpath-rust applies `[?…]`
    /// to the children of a node, so a filter over "this message" runs on `[message]`, and
    /// keeping the wrapper here saves a clone per message.
    json: OnceLock<Result<Value, NotJson>>,
    /// The JSON text of a `Fields` body, built once on demand.
    fields_json: OnceLock<Vec<u8>>,
}

impl Message {
    /// A message from its body and metadata.
    pub fn new(body: Body, meta: Meta) -> Self {
        Message {
            body,
            meta,
            json: OnceLock::new(),
            fields_json: OnceLock::new(),
        }
    }

    /// A message whose JSON value is already known (a transform result).
    pub fn from_json(value: Value, meta: Meta) -> Self {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let msg = Message::new(Body::Bytes(bytes), meta);
        // The cell is fresh, so setting it cannot fail.
        let _ = msg.json.set(Ok(Value::Array(vec![value])));
        msg
    }

    /// A message whose JSON view is not its bytes parsed: a Laravel job keeps its payload bytes
    /// (so that it can be forwarded unchanged) and shows filters its class and data.
    pub fn with_json_view(body: Body, meta: Meta, view: Value) -> Self {
        let msg = Message::new(body, meta);
        // The cell is fresh, so setting it cannot fail.
        let _ = msg.json.set(Ok(Value::Array(vec![view])));
        msg
    }

    /// Set the message aside: the rule dead-letters it with `reason`, whole, and nothing parses
    /// it (a payload too big to afford, see [`crate::source::Budget`]).
    pub fn set_aside(&mut self, reason: String) {
        self.json = OnceLock::from(Err(NotJson(reason.clone())));
        self.meta.problem = Some(reason);
    }

    /// The body and metadata, for making another message of them.
    pub fn into_parts(self) -> (Body, Meta) {
        (self.body, self.meta)
    }

    /// How many bytes the payload holds, without building anything (for stream fields, their
    /// names and values together).
    pub fn payload_len(&self) -> usize {
        match &self.body {
            Body::Bytes(bytes) | Body::Field(bytes) => bytes.len(),
            Body::Fields(fields) => fields.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }

    /// About how many bytes of memory the payload takes once parsed into a JSON tree, found
    /// with one pass over the bytes before parsing (see [`estimate_json_tree`]).
    pub fn estimated_json_bytes(&self) -> usize {
        match &self.body {
            Body::Bytes(bytes) | Body::Field(bytes) => estimate_json_tree(bytes),
            // An object of strings: one member per field.
            Body::Fields(fields) => fields
                .iter()
                .map(|(k, v)| 2 * (k.len() + v.len()) + 2 * JSON_NODE_BYTES)
                .sum(),
        }
    }

    /// The payload as JSON, parsed on first use.
    ///
    /// # Errors
    /// [`NotJson`] when the bytes are not JSON. Stream fields always are: each value becomes a
    /// JSON string (invalid UTF-8 replaced by U+FFFD).
    pub fn json(&self) -> Result<&Value, NotJson> {
        match self.wrapped_json()? {
            Value::Array(items) if items.len() == 1 => Ok(&items[0]),
            _ => unreachable_wrapper(),
        }
    }

    /// The payload wrapped in a one-element array, for filter expressions.
    ///
    /// # Errors
    /// As [`Message::json`].
    pub fn wrapped_json(&self) -> Result<&Value, NotJson> {
        self.json
            .get_or_init(|| {
                let value = match &self.body {
                    Body::Bytes(bytes) => serde_json::from_slice(bytes).map_err(|e| NotJson(e.to_string()))?,
                    Body::Fields(fields) => fields_to_json(fields),
                    Body::Field(bytes) => serde_json::from_slice(bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
                };
                Ok(Value::Array(vec![value]))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The payload as bytes: what arrived, or for stream fields the JSON object of them.
    pub fn raw(&self) -> &[u8] {
        match &self.body {
            Body::Bytes(bytes) | Body::Field(bytes) => bytes,
            Body::Fields(fields) => self
                .fields_json
                .get_or_init(|| serde_json::to_vec(&fields_to_json(fields)).unwrap_or_default()),
        }
    }
}

/// What one JSON value costs in memory once parsed, measured: a `serde_json::Value` (with
/// `preserve_order` and `arbitrary_precision`), its share of the vector or map that holds it
/// (which grows by doubling) and the heap text of a number or a key. An array of two million
/// small numbers (4 MB of text) took 240 MB parsed: 120 bytes per value.
pub const JSON_NODE_BYTES: usize = 128;

/// About how much memory `bytes` take once parsed as JSON: the text itself (strings are
/// copied) plus [`JSON_NODE_BYTES`] per value, counting values by the `,` `:` `[` `{` that
/// separate or open them outside strings. One pass, no allocation; an upper bound for typical
/// documents, so that a payload whose tree would not fit the rule's budget is set aside before
/// it is parsed rather than after.
pub fn estimate_json_tree(bytes: &[u8]) -> usize {
    let mut nodes = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b':' | b'[' | b'{' => nodes += 1,
            _ => {}
        }
    }
    bytes.len().saturating_add(nodes.saturating_mul(JSON_NODE_BYTES))
}

/// The wrapper is built only by this module, always with one element.
fn unreachable_wrapper() -> Result<&'static Value, NotJson> {
    Err(NotJson("internal: JSON wrapper lost its element".into()))
}

/// Stream fields as a JSON object of strings.
fn fields_to_json(fields: &[(Vec<u8>, Vec<u8>)]) -> Value {
    let map = fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    Value::Object(map)
}

#[cfg(test)]
pub(crate) fn test_meta(rule: &str) -> Meta {
    Meta {
        rule: Arc::from(rule),
        source: SourceKind::Channel,
        key: "events:order".into(),
        pattern: None,
        id: Some("1-0".into()),
        received: SystemTime::now(),
        deliveries: 1,
        fields: vec![("kind".into(), "test".into())],
        problem: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse_once_and_report_non_json() {
        let m = Message::new(Body::Bytes(br#"{"a":1}"#.to_vec()), test_meta("r"));
        assert_eq!(m.json().unwrap()["a"], 1);
        let bad = Message::new(Body::Bytes(b"not json".to_vec()), test_meta("r"));
        assert!(bad.json().unwrap_err().to_string().starts_with("payload is not JSON"));
    }

    #[test]
    fn json_tree_estimates_count_values_outside_strings() {
        assert_eq!(estimate_json_tree(b"1"), 1 + JSON_NODE_BYTES);
        assert_eq!(estimate_json_tree(b"[1,2,3]"), 7 + 4 * JSON_NODE_BYTES);
        // Separators inside strings, escaped quotes included, are text.
        assert_eq!(estimate_json_tree(br#"{"a,b":"x\",:[{"}"#), 17 + 3 * JSON_NODE_BYTES);
        // The estimate is an upper bound of what parsing takes, for a worst case (small numbers)
        // and a usual document (objects of strings).
        for text in [
            format!("[{}1]", "1,".repeat(100_000)),
            format!(
                "[{}{{}}]",
                r#"{"event":"order.created","id":"abc","n":1},"#.repeat(10_000)
            ),
        ] {
            let estimate = estimate_json_tree(text.as_bytes());
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let nodes = count_nodes(&parsed);
            assert!(
                estimate >= nodes * std::mem::size_of::<Value>(),
                "{estimate} < {nodes} nodes of {} bytes",
                std::mem::size_of::<Value>()
            );
        }
    }

    fn count_nodes(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(count_nodes).sum(),
            Value::Object(map) => map.values().map(count_nodes).sum::<usize>() + map.len(),
            _ => 0,
        }
    }

    #[test]
    fn a_message_set_aside_is_never_parsed() {
        let mut m = Message::new(Body::Bytes(br#"{"a":1}"#.to_vec()), test_meta("r"));
        m.set_aside("too big".into());
        assert_eq!(m.json().unwrap_err().to_string(), "payload is not JSON: too big");
        assert_eq!(m.meta.problem.as_deref(), Some("too big"));
    }

    #[test]
    fn fields_become_an_object_of_strings() {
        let m = Message::new(
            Body::Fields(vec![(b"event".to_vec(), b"x".to_vec()), (b"n".to_vec(), b"1".to_vec())]),
            test_meta("r"),
        );
        assert_eq!(m.raw(), br#"{"event":"x","n":"1"}"#);
        assert_eq!(m.json().unwrap()["n"], "1");
    }
}
