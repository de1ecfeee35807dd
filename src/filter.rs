//! Compiled filters, templates and transforms: everything a rule computes from a message.
//!
//! Pure and synchronous. Each expression is compiled once, when the rule file is loaded, and
//! compared by its source text (so a reload sees an unchanged filter as unchanged).

use std::fmt;
use std::time::SystemTime;

use indexmap::IndexMap;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

use crate::message::{Message, NotJson};

/// Why a filter, template or transform could not be evaluated on one message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    /// The expression needs JSON and the payload is not.
    #[error(transparent)]
    NotJson(#[from] NotJson),
    /// A JSONPath in a key or channel selected nothing.
    #[error("template `{{{{{0}}}}}` selected nothing in the payload")]
    Missing(String),
    /// A JSONPath in a key, channel or URL selected something that is not a name: `null`, an
    /// object, an array, several nodes (many messages would collapse onto `events:null`).
    #[error("template `{{{{{path}}}}}` selected {found}; a key, channel or URL takes a string or a number")]
    NotAName {
        /// The expression.
        path: String,
        /// What it selected.
        found: &'static str,
    },
    /// A key or channel rendered from a message names the router's own keys, is empty or holds
    /// a control character: the message is refused (dead-lettered), never written there.
    #[error("rendered name {name:?} refused: {reason}")]
    Refused {
        /// The name as rendered (without the connection's prefix).
        name: String,
        /// Why.
        reason: String,
    },
    /// jsonpath-rust refused to evaluate.
    #[error("JSONPath `{path}` failed: {reason}")]
    Query {
        /// The expression.
        path: String,
        /// What jsonpath-rust said.
        reason: String,
    },
}

/// Compile a JSONPath query, with a one-line error. `offset` is how many characters the caller
/// put before the user's text (`$[?` around a filter), so positions point into what they wrote.
fn compile_path_at(text: &str, offset: usize) -> Result<JpQuery, String> {
    parse_json_path(text).map_err(|e| explain_parse_error(&e.to_string(), text, offset))
}

fn compile_path(text: &str) -> Result<JpQuery, String> {
    compile_path_at(text, 0)
}

/// Turn pest's multi-line report (` --> 1:12 … = expected comp_op, …`) into one line that says
/// where, what is there, and what was expected, in words.
fn explain_parse_error(report: &str, text: &str, offset: usize) -> String {
    let column = report
        .split("--> ")
        .nth(1)
        .and_then(|rest| rest.split([':', '\n']).nth(1))
        .and_then(|c| c.trim().parse::<usize>().ok());
    let expected: Vec<&str> = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("= expected "))
        .map(|list| {
            list.split([',', ' '])
                .filter_map(|rule| match rule.trim() {
                    "comp_op" => Some("a comparison (==, !=, <, <=, >, >=)"),
                    "comparable" => Some("a value to compare with ('text', a number, true, false, null or a path)"),
                    "segment" | "name_segment" | "index_segment" => Some("a path segment (.name or [index])"),
                    "selector" => Some("a selector (name, index, *, or ?filter)"),
                    "int" | "number" => Some("a number"),
                    "logical_expr" | "logical_expr_and" => Some("&& or ||"),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut expected_words: Vec<&str> = Vec::new();
    for e in expected {
        if !expected_words.contains(&e) {
            expected_words.push(e);
        }
    }
    match column {
        Some(col) => {
            let at = col.saturating_sub(1);
            let near: String = text.chars().skip(at).take(12).collect();
            let user_col = at.saturating_sub(offset) + 1;
            let mut msg = format!("syntax error at character {user_col}");
            if !near.trim().is_empty() {
                msg.push_str(&format!(" (at `{}`)", near.trim_end_matches(']').trim()));
            }
            if !expected_words.is_empty() {
                msg.push_str(&format!(", expected {}", expected_words.join(" or ")));
            }
            msg
        }
        None => report.lines().next().unwrap_or("invalid JSONPath").trim().to_string(),
    }
}

fn run_query<'a>(query: &JpQuery, source: &str, value: &'a Value) -> Result<Vec<&'a Value>, EvalError> {
    js_path_process(query, value)
        .map(|refs| refs.into_iter().map(|r| r.val()).collect())
        .map_err(|e| EvalError::Query {
            path: source.to_string(),
            reason: e.to_string(),
        })
}

/// A compiled rule filter.
///
/// `@.event == 'order.created' && @.data.total >= 100000` is a filter expression over the message
/// (`@`); an expression that starts with `$` is a query that matches when it selects at least one
/// node.
#[derive(Clone)]
pub struct Filter {
    source: String,
    query: JpQuery,
    /// True for `@` expressions, which run over `[message]`.
    wrapped: bool,
}

impl Filter {
    /// Compile a filter.
    ///
    /// # Errors
    /// A message saying what is wrong and what to write instead.
    pub fn compile(text: &str) -> Result<Filter, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("the filter is empty; write an expression such as `@.event == 'order.created'`".into());
        }
        let (query_text, wrapped, offset) = if trimmed.starts_with('$') {
            (trimmed.to_string(), false, 0)
        } else {
            (format!("$[?{trimmed}]"), true, 3)
        };
        let query = compile_path_at(&query_text, offset).map_err(|e| {
            format!(
                "filter `{trimmed}` does not compile: {e}; write a JSONPath filter expression such as `@.event == 'order.created' && @.data.total >= 100` (strings in single quotes)"
            )
        })?;
        Ok(Filter {
            source: trimmed.to_string(),
            query,
            wrapped,
        })
    }

    /// Whether the message passes.
    ///
    /// # Errors
    /// [`EvalError::NotJson`] when the payload is not JSON.
    pub fn matches(&self, msg: &Message) -> Result<bool, EvalError> {
        let value = if self.wrapped { msg.wrapped_json()? } else { msg.json()? };
        Ok(!run_query(&self.query, &self.source, value)?.is_empty())
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

/// One piece of a template.
#[derive(Clone)]
enum Segment {
    Literal(String),
    /// `{{$}}`: the whole payload.
    Whole,
    /// `{{$.path}}`.
    Path(String, JpQuery),
    MetaKey,
    MetaId,
    MetaRule,
    MetaPattern,
    MetaSource,
    /// `{{meta.fields.NAME}}`: another field of a stream entry read with `body_field`.
    MetaField(String),
    Now,
}

/// What a template does when a JSONPath selects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Render nothing (field values, bodies).
    Empty,
    /// Fail: a key, channel or URL must not silently become another one. Also fails on a
    /// selection that is not a name (`null`, an object, an array, several nodes).
    Error,
}

/// A compiled `{{…}}` template.
#[derive(Clone)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

const TEMPLATE_HELP: &str = "write `{{$}}`, `{{$.json.path}}`, `{{meta.key}}`, `{{meta.id}}`, `{{meta.rule}}`, `{{meta.pattern}}`, `{{meta.source}}`, `{{meta.fields.NAME}}` or `{{now}}`";

impl Template {
    /// Compile a template.
    ///
    /// # Errors
    /// A message naming the expression that is wrong.
    pub fn compile(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("template `{text}` opens `{{{{` without closing `}}}}`"))?;
            let expr = after[..end].trim();
            segments.push(match expr {
                "$" => Segment::Whole,
                "meta.key" => Segment::MetaKey,
                "meta.id" => Segment::MetaId,
                "meta.rule" => Segment::MetaRule,
                "meta.pattern" => Segment::MetaPattern,
                "meta.source" => Segment::MetaSource,
                "now" => Segment::Now,
                field if field.starts_with("meta.fields.") && field.len() > "meta.fields.".len() => {
                    Segment::MetaField(field["meta.fields.".len()..].to_string())
                }
                path if path.starts_with('$') => {
                    let query =
                        compile_path(path).map_err(|e| format!("template `{{{{{path}}}}}` does not compile: {e}"))?;
                    Segment::Path(path.to_string(), query)
                }
                other => {
                    return Err(format!(
                        "unknown template expression `{{{{{other}}}}}`; {TEMPLATE_HELP}"
                    ));
                }
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(Template {
            source: text.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text, when the template has no `{{…}}` at all.
    pub fn as_literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether every part of the rendered text comes from the message (its payload, its key,
    /// id or fields) and none is fixed: the message alone chooses what it renders to.
    pub fn is_only_from_message(&self) -> bool {
        !self.segments.is_empty()
            && self.segments.iter().all(|s| {
                matches!(
                    s,
                    Segment::Whole | Segment::Path(..) | Segment::MetaKey | Segment::MetaId | Segment::MetaField(_)
                )
            })
    }

    /// Whether rendering parses the payload as JSON.
    pub fn needs_json(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Path(..)))
    }

    /// Render into `out`.
    ///
    /// # Errors
    /// [`EvalError`] when a JSONPath needs JSON the payload does not hold, or selects nothing
    /// under [`Missing::Error`].
    pub fn render_into(&self, msg: &Message, missing: Missing, out: &mut Vec<u8>) -> Result<(), EvalError> {
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Segment::Whole => out.extend_from_slice(msg.raw()),
                Segment::Path(source, query) => {
                    let nodes = run_query(query, source, msg.json()?)?;
                    let not_a_name = |found| EvalError::NotAName {
                        path: source.clone(),
                        found,
                    };
                    match nodes.as_slice() {
                        [] if missing == Missing::Error => return Err(EvalError::Missing(source.clone())),
                        [Value::Null] if missing == Missing::Error => return Err(not_a_name("null")),
                        [Value::Object(_)] if missing == Missing::Error => return Err(not_a_name("an object")),
                        [Value::Array(_)] if missing == Missing::Error => return Err(not_a_name("an array")),
                        [_, _, ..] if missing == Missing::Error => return Err(not_a_name("several values")),
                        [] => {}
                        [Value::String(s)] => out.extend_from_slice(s.as_bytes()),
                        [one] => write_json(out, one),
                        many => write_json(out, &Value::Array(many.iter().map(|v| (*v).clone()).collect())),
                    }
                }
                Segment::MetaKey => out.extend_from_slice(msg.meta.key.as_bytes()),
                Segment::MetaId => out.extend_from_slice(msg.meta.id.as_deref().unwrap_or("").as_bytes()),
                Segment::MetaRule => out.extend_from_slice(msg.meta.rule.as_bytes()),
                Segment::MetaPattern => out.extend_from_slice(msg.meta.pattern.as_deref().unwrap_or("").as_bytes()),
                Segment::MetaSource => out.extend_from_slice(msg.meta.source.as_str().as_bytes()),
                Segment::MetaField(name) => {
                    if let Some((_, v)) = msg.meta.fields.iter().find(|(k, _)| k == name) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Segment::Now => out.extend_from_slice(now_rfc3339().as_bytes()),
            }
        }
        Ok(())
    }

    /// Render to a new buffer.
    ///
    /// # Errors
    /// As [`Template::render_into`].
    pub fn render(&self, msg: &Message, missing: Missing) -> Result<Vec<u8>, EvalError> {
        let mut out = Vec::new();
        self.render_into(msg, missing, &mut out)?;
        Ok(out)
    }

    /// Render as a string (keys and channels), invalid UTF-8 replaced.
    ///
    /// # Errors
    /// As [`Template::render_into`].
    pub fn render_string(&self, msg: &Message, missing: Missing) -> Result<String, EvalError> {
        if let Some(literal) = self.as_literal() {
            return Ok(literal.to_string());
        }
        let bytes = self.render(msg, missing)?;
        Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

fn write_json(out: &mut Vec<u8>, value: &Value) {
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

/// One output value of a transform.
#[derive(Debug, Clone, PartialEq)]
enum TransformValue {
    /// A string starting with `$`: the selected node with its JSON type (null when nothing).
    Path(PathExpr),
    /// A string with `{{…}}`: rendered as a string.
    Template(Template),
    /// Anything else, as written.
    Literal(Value),
}

#[derive(Clone)]
struct PathExpr {
    source: String,
    query: JpQuery,
}

impl PartialEq for PathExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for PathExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

/// Maps a payload to a new JSON object: each value is a JSONPath (typed), a template (string) or
/// a literal.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    fields: Vec<(String, TransformValue)>,
}

impl Transform {
    /// Compile a transform; errors name the output key.
    ///
    /// # Errors
    /// One message per key that does not compile.
    pub fn compile(spec: &IndexMap<String, Value>) -> Result<Transform, Vec<(String, String)>> {
        let mut fields = Vec::new();
        let mut errors = Vec::new();
        for (key, value) in spec {
            let compiled = match value {
                Value::String(s) if s.trim_start().starts_with('$') && !s.contains("{{") => compile_path(s.trim())
                    .map(|query| {
                        TransformValue::Path(PathExpr {
                            source: s.trim().to_string(),
                            query,
                        })
                    })
                    .map_err(|e| format!("JSONPath `{s}` does not compile: {e}")),
                Value::String(s) if s.contains("{{") => Template::compile(s).map(TransformValue::Template),
                other => Ok(TransformValue::Literal(other.clone())),
            };
            match compiled {
                Ok(v) => fields.push((key.clone(), v)),
                Err(e) => errors.push((key.clone(), e)),
            }
        }
        if errors.is_empty() {
            Ok(Transform { fields })
        } else {
            Err(errors)
        }
    }

    /// Apply to a message.
    ///
    /// # Errors
    /// [`EvalError`] when the payload is not JSON or a query fails.
    pub fn apply(&self, msg: &Message) -> Result<Value, EvalError> {
        let mut out = serde_json::Map::with_capacity(self.fields.len());
        for (key, value) in &self.fields {
            let v = match value {
                TransformValue::Path(p) => {
                    let nodes = run_query(&p.query, &p.source, msg.json()?)?;
                    match nodes.as_slice() {
                        [] => Value::Null,
                        [one] => (*one).clone(),
                        many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
                    }
                }
                TransformValue::Template(t) => Value::String(t.render_string(msg, Missing::Empty)?),
                TransformValue::Literal(v) => v.clone(),
            };
            out.insert(key.clone(), v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, test_meta};

    fn msg(json: &str) -> Message {
        Message::new(Body::Bytes(json.as_bytes().to_vec()), test_meta("r"))
    }

    #[test]
    fn filters_match_and_reject() {
        let order = r#"{"event":"order.created","data":{"total":150000,"tags":["vip"]}}"#;
        let cases: &[(&str, &str, bool)] = &[
            ("@.event == 'order.created'", order, true),
            ("@.event == 'order.created' && @.data.total >= 100000", order, true),
            ("@.event == 'order.created' && @.data.total >= 200000", order, false),
            ("@.event == 'order.paid' || @.data.total > 1", order, true),
            ("@.missing", order, false),
            ("@.data.tags[0] == 'vip'", order, true),
            ("$.data.total", order, true),
            ("$.data.nothing", order, false),
            ("$[?@.total > 5]", r#"[{"total":6}]"#, true),
            ("@ == 'x'", r#""x""#, true),
            ("@.event == 'a'", "42", false),
        ];
        for (filter, payload, want) in cases {
            let f = Filter::compile(filter).unwrap();
            assert_eq!(f.matches(&msg(payload)).unwrap(), *want, "{filter} on {payload}");
        }
    }

    #[test]
    fn filter_on_non_json_is_an_error_not_a_reject() {
        let f = Filter::compile("@.a == 1").unwrap();
        assert!(matches!(f.matches(&msg("nope")), Err(EvalError::NotJson(_))));
    }

    #[test]
    fn bad_filters_say_what_to_write() {
        for bad in ["@.event = 'x'", "@.a ==", "", "$[?"] {
            let e = Filter::compile(bad).unwrap_err();
            assert!(e.contains("write"), "{bad}: {e}");
        }
        assert_eq!(
            Filter::compile("@.total => 100").unwrap_err(),
            "filter `@.total => 100` does not compile: syntax error at character 9 (at `=> 100`), expected a path segment (.name or [index]) or a comparison (==, !=, <, <=, >, >=); write a JSONPath filter expression such as `@.event == 'order.created' && @.data.total >= 100` (strings in single quotes)"
        );
    }

    #[test]
    fn templates_render() {
        let m = msg(r#"{"data":{"order_id":987,"name":"Zoë"},"list":[1,2]}"#);
        let cases: &[(&str, &str)] = &[
            ("orders:{{$.data.order_id}}", "orders:987"),
            ("{{$.data.name}}", "Zoë"),
            ("{{$.data}}", r#"{"order_id":987,"name":"Zoë"}"#),
            ("{{$.list[*]}}", "[1,2]"),
            (
                "{{meta.key}}|{{meta.id}}|{{meta.rule}}|{{meta.source}}",
                "events:order|1-0|r|channel",
            ),
            ("plain", "plain"),
            ("{{ $ }}", r#"{"data":{"order_id":987,"name":"Zoë"},"list":[1,2]}"#),
            ("x{{$.nothing}}y", "xy"),
            ("{{meta.fields.kind}}", "test"),
        ];
        for (tpl, want) in cases {
            let t = Template::compile(tpl).unwrap();
            assert_eq!(t.render_string(&m, Missing::Empty).unwrap(), *want, "{tpl}");
        }
        let t = Template::compile("k:{{$.nothing}}").unwrap();
        assert!(matches!(
            t.render_string(&m, Missing::Error),
            Err(EvalError::Missing(_))
        ));
        assert!(
            Template::compile("{{now}}")
                .unwrap()
                .render_string(&m, Missing::Error)
                .unwrap()
                .ends_with('Z')
        );
    }

    #[test]
    fn bad_templates_are_load_errors() {
        for (bad, needle) in [
            ("{{$.a", "without closing"),
            ("{{meta.nope}}", "unknown template expression"),
            ("{{$[?}}", "does not compile"),
        ] {
            let e = Template::compile(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn transform_keeps_types() {
        let spec: IndexMap<String, Value> = serde_json::from_str(
            r#"{"id":"$.data.order_id","label":"order {{$.data.order_id}}","fixed":3,"none":"$.zz"}"#,
        )
        .unwrap();
        let t = Transform::compile(&spec).unwrap();
        let out = t.apply(&msg(r#"{"data":{"order_id":987}}"#)).unwrap();
        assert_eq!(
            out.to_string(),
            r#"{"id":987,"label":"order 987","fixed":3,"none":null}"#
        );
    }
}
