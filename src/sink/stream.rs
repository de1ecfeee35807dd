//! `stream` sink: XADD to a key template, optionally capped with `MAXLEN ~`.
//!
//! Fields: the `fields` templates when given. Otherwise a stream entry's own fields are copied
//! as they are (no JSON involved), a JSON object becomes one field per top-level key (strings
//! as they are, other values as JSON text), and anything else one field `payload`.

use redis::Cmd;
use serde_json::Value;

use crate::config::ConnectionSpec;
use crate::filter::{EvalError, Missing, Template};
use crate::message::{Body, Message};
use crate::redis_conn;

/// `XADD <prefix><key> [MAXLEN ~ n] * field value …`; `key` is rendered.
pub(super) fn render(
    conn: &ConnectionSpec,
    key: String,
    maxlen: Option<u64>,
    fields: Option<&[(String, Template)]>,
    msg: &Message,
) -> Result<Cmd, EvalError> {
    let key = redis_conn::prefixed(conn, &key);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key);
    if let Some(n) = maxlen {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*");
    match fields {
        Some(fields) => {
            for (name, template) in fields {
                cmd.arg(name).arg(template.render(msg, Missing::Empty)?);
            }
        }
        None => payload_fields(&mut cmd, msg),
    }
    Ok(cmd)
}

fn payload_fields(cmd: &mut Cmd, msg: &Message) {
    if let Body::Fields(fields) = &msg.body
        && !fields.is_empty()
    {
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        return;
    }
    match msg.json() {
        Ok(Value::Object(map)) if !map.is_empty() => {
            for (k, v) in map {
                match v {
                    Value::String(s) => cmd.arg(k).arg(s),
                    other => cmd.arg(k).arg(other.to_string()),
                };
            }
        }
        _ => {
            cmd.arg("payload").arg(msg.raw());
        }
    }
}
