//! `publish` sink: PUBLISH the payload (or the `body` template) on a channel template, or with
//! `sharded: true` SPUBLISH it (Redis 7), which a cluster routes to the one shard that owns the
//! channel's slot instead of broadcasting it to every node.

use redis::Cmd;

use crate::config::ConnectionSpec;
use crate::filter::{EvalError, Missing, Template};
use crate::message::Message;
use crate::redis_conn;

/// `PUBLISH <prefix><channel> <body>` (`SPUBLISH` when sharded); `channel` is rendered.
pub(super) fn render(
    conn: &ConnectionSpec,
    channel: String,
    body: Option<&Template>,
    sharded: bool,
    msg: &Message,
) -> Result<Cmd, EvalError> {
    let channel = redis_conn::prefixed(conn, &channel);
    let mut cmd = redis::cmd(if sharded { "SPUBLISH" } else { "PUBLISH" });
    cmd.arg(channel);
    match body {
        Some(t) => cmd.arg(t.render(msg, Missing::Empty)?),
        None => cmd.arg(msg.raw()),
    };
    Ok(cmd)
}
