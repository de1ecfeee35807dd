//! Untyped YAML with the position of every key and item: how a rule's `tests:` are read. A
//! case is checked against its rule after the rule itself is known (what a sink's output holds
//! depends on its kind), so it is read untyped, and its mistakes still name their `line:col`.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A YAML value whose mappings and sequences hold their children with positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A string, number, boolean or null.
    Scalar(Value),
    /// Items, each with where it starts.
    Seq(Vec<Spanned<Node>>),
    /// Keys in file order, each with where the key is written.
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

/// A position as (line, column), both 1-based.
pub type At = (u64, u64);

impl Node {
    /// The value as JSON, positions dropped.
    pub fn to_json(&self) -> Value {
        match self {
            Node::Scalar(v) => v.clone(),
            Node::Seq(items) => Value::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.value.to_json()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// Every path under `path` with where it is written: `path.key` at its key, `path[i]` at
    /// its item; `path` itself at `at`.
    pub fn positions(&self, path: &str, at: At, out: &mut Vec<(String, At)>) {
        out.push((path.to_string(), at));
        match self {
            Node::Scalar(_) => {}
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = (item.referenced.line(), item.referenced.column());
                    item.value.positions(&format!("{path}[{i}]"), at, out);
                }
            }
            Node::Map(entries) => {
                for (k, v) in entries {
                    let at = (k.referenced.line(), k.referenced.column());
                    v.value.positions(&format!("{path}.{}", k.value), at, out);
                }
            }
        }
    }
}

/// Where `path` is written: its own position, or that of the nearest enclosing path that has
/// one (a missing key is reported where its mapping is).
pub fn position_of(positions: &[(String, At)], path: &str) -> Option<At> {
    let mut path = path;
    loop {
        if let Some((_, at)) = positions.iter().find(|(p, _)| p == path) {
            return Some(*at);
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Spanned<String>, Spanned<Node>>()? {
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_and_item_has_its_position() {
        let text = "- input: '{}'\n  expect:\n    sinks: [ { stream: 4 } ]\n";
        let cases: Vec<Spanned<Node>> = serde_saphyr::from_str(text).unwrap();
        let mut out = Vec::new();
        let case = &cases[0];
        case.value
            .positions("tests[0]", (case.referenced.line(), case.referenced.column()), &mut out);
        assert_eq!(position_of(&out, "tests[0].expect.sinks[0].stream"), Some((3, 16)));
        assert_eq!(position_of(&out, "tests[0].expect"), Some((2, 3)));
        assert_eq!(position_of(&out, "tests[0].expect.sinks[0].fields"), Some((3, 14)));
        assert_eq!(position_of(&out, "tests[0]"), Some((1, 3)));
        assert_eq!(
            case.value.to_json(),
            serde_json::json!({ "input": "{}", "expect": { "sinks": [ { "stream": 4 } ] } })
        );
    }
}
