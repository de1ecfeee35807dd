//! What a rule file needs of each Redis server: the ACL rule that grants exactly its keys,
//! channels and commands (`redis-router check --acl`), and the connections it opens (`check`).
//! Connections that reach one server are counted together, as one ACL user serves them.
//!
//! For each connection, the keys (`~`), channels (`&`) and commands the rules use on it: their
//! sources, their dead-letter streams (on the source's connection) and their sinks. Templated
//! names become glob patterns (`orders:{{$.id}}` → `orders:*`); literal parts are escaped so a
//! key with `*` or `[` in its name grants only itself.

use std::collections::BTreeSet;

use crate::config::{ConnectionSpec, RuleSet, SinkSpecKind, SourceSpecKind};
use crate::filter::Template;
use crate::keys;
use crate::redis_conn;

/// Commands every connection may use. (The router does not send `CLIENT SETINFO` on connect, so
/// that it needs no `client` permission; see `redis_conn::client`.)
const BASE_COMMANDS: &[&str] = &["ping"];

/// What one connection's user needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Key patterns.
    pub keys: BTreeSet<String>,
    /// Channel patterns.
    pub channels: BTreeSet<String>,
    /// Commands (lower case, `container|sub` for subcommands).
    pub commands: BTreeSet<String>,
}

impl Grants {
    fn command(&mut self, names: &[&str]) {
        self.commands.extend(names.iter().map(|c| c.to_string()));
    }

    /// `ACL SETUSER user on >password resetkeys ~… resetchannels &… -@all +…`.
    pub fn setuser(&self, user: &str, password: &str) -> String {
        let mut out = format!("ACL SETUSER {user} reset on >{password}");
        for k in &self.keys {
            out.push_str(&format!(" ~{k}"));
        }
        for c in &self.channels {
            out.push_str(&format!(" &{c}"));
        }
        out.push_str(" -@all");
        for c in BASE_COMMANDS
            .iter()
            .map(|c| c.to_string())
            .chain(self.commands.iter().cloned())
        {
            out.push_str(&format!(" +{c}"));
        }
        out
    }
}

/// Escape glob metacharacters so that a literal name matches only itself.
fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A template as a glob: literal parts escaped, each `{{…}}` a `*`.
fn glob(conn: &ConnectionSpec, t: &Template) -> String {
    let mut out = escape(&conn.prefix);
    let mut rest = t.source();
    while let Some(start) = rest.find("{{") {
        out.push_str(&escape(&rest[..start]));
        match rest[start..].find("}}") {
            Some(end) => {
                out.push('*');
                rest = &rest[start + end + 2..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(&escape(rest));
    out
}

fn literal(conn: &ConnectionSpec, name: &str) -> String {
    escape(&format!("{}{name}", conn.prefix))
}

/// The Redis server a connection reaches: connections to one server share one ACL user, so
/// their grants are merged (two `ACL SETUSER … reset` for one user would undo each other).
fn server(conn: &ConnectionSpec) -> String {
    use redis::IntoConnectionInfo;
    match conn.url.as_str().into_connection_info() {
        Ok(info) if conn.cluster => format!("cluster via {} (every node)", info.addr()),
        Ok(info) => format!("{} db {}", info.addr(), info.redis_settings().db()),
        Err(_) => conn.masked_url(),
    }
}

/// One Redis server's grants and the names of the connections that reach it.
#[derive(Debug, Clone)]
pub struct ServerGrants {
    /// `127.0.0.1:6379 db 0`.
    pub server: String,
    /// Connections of the file that reach this server.
    pub connections: Vec<String>,
    /// What they need, together.
    pub grants: Grants,
}

/// Keys and commands of `ha: claim` (one SET per message) and `ha: single` (a lease renewed by
/// an EVAL of GET and SET).
fn ha_grants(g: &mut Grants, conn: &ConnectionSpec, rule: &str, claim: bool, lease: bool) {
    if claim {
        g.keys
            .insert(format!("{}:*", literal(conn, &format!("redis-router:claim:{rule}"))));
        g.command(&["set"]);
    }
    if lease {
        g.keys.insert(literal(conn, &format!("redis-router:lease:{rule}")));
        g.command(&["eval", "get", "set"]);
    }
}

/// What the router's user needs on each Redis server, in file order.
pub fn grants(set: &RuleSet) -> Vec<ServerGrants> {
    let mut out: Vec<ServerGrants> = Vec::new();
    fn entry<'a>(out: &'a mut Vec<ServerGrants>, conn: &std::sync::Arc<ConnectionSpec>) -> &'a mut Grants {
        let key = server(conn);
        let i = match out.iter().position(|s| s.server == key) {
            Some(i) => i,
            None => {
                out.push(ServerGrants {
                    server: key,
                    connections: Vec::new(),
                    grants: Grants::default(),
                });
                out.len() - 1
            }
        };
        if !out[i].connections.contains(&conn.name) {
            out[i].connections.push(conn.name.clone());
        }
        if conn.cluster {
            // The cluster client reads the slot map; give the user on every node.
            out[i].grants.command(&["cluster|slots"]);
        }
        &mut out[i].grants
    }
    for rule in &set.rules {
        let sc = &rule.source.connection;
        let g = entry(&mut out, sc);
        match &rule.source.kind {
            SourceSpecKind::Channel {
                channel,
                sharded,
                options,
            } => {
                g.channels.insert(literal(sc, channel));
                if *sharded {
                    g.command(&["ssubscribe", "sunsubscribe"]);
                } else {
                    g.command(&["subscribe", "unsubscribe"]);
                }
                ha_grants(g, sc, &rule.name, options.claim.is_some(), options.lease.is_some());
            }
            SourceSpecKind::Pattern { pattern, options } => {
                // ACL matches a PSUBSCRIBE pattern literally against the channel patterns.
                g.channels.insert(format!("{}{pattern}", escape(&sc.prefix)));
                g.command(&["psubscribe", "punsubscribe"]);
                ha_grants(g, sc, &rule.name, options.claim.is_some(), options.lease.is_some());
            }
            SourceSpecKind::Stream { stream, group, .. } => {
                g.keys.insert(literal(sc, stream));
                if group.is_some() {
                    g.command(&[
                        "xreadgroup",
                        "xgroup|create",
                        "xack",
                        "xautoclaim",
                        "xclaim",
                        "xpending",
                        "xinfo|groups",
                    ]);
                } else {
                    g.command(&["xread", "xrevrange"]);
                }
            }
            kind @ SourceSpecKind::Queue { .. } => {
                let name = kind.list_key().unwrap_or_default();
                let key = redis_conn::prefixed(sc, &name);
                g.keys.insert(escape(&key));
                for suffix in [keys::PROCESSING, keys::HEARTBEAT] {
                    g.keys
                        .insert(format!("{}*", escape(&redis_conn::companion(sc, &key, suffix))));
                }
                g.keys.insert(escape(&redis_conn::companion(sc, &key, keys::CONSUMERS)));
                // EVAL: the recovery script of dead consumers (LMOVE, SREM, EXISTS inside).
                g.command(&[
                    "blmove", "lmove", "lrange", "lrem", "set", "sadd", "smembers", "srem", "exists", "eval",
                ]);
            }
        }
        let dead_letters =
            std::iter::once(&rule.on_error.dead_letter).chain(rule.sinks.iter().map(|s| &s.on_error.dead_letter));
        for dl in dead_letters {
            let g = entry(&mut out, sc);
            g.keys.insert(literal(sc, dl));
            g.command(&["xadd"]);
        }
        // The key dead letters are signed with: created once (SET NX), read at each start.
        let g = entry(&mut out, sc);
        g.keys.insert(literal(sc, crate::deadletter::SIGNING_KEY));
        g.command(&["set", "get"]);
        for sink in &rule.sinks {
            let c = &sink.connection;
            match &sink.kind {
                SinkSpecKind::Webhook(_) => {}
                SinkSpecKind::Publish { channel, sharded, .. } => {
                    let g = entry(&mut out, c);
                    g.channels.insert(glob(c, channel));
                    g.command(&[if *sharded { "spublish" } else { "publish" }]);
                }
                SinkSpecKind::Stream { stream, .. } => {
                    let g = entry(&mut out, c);
                    g.keys.insert(glob(c, stream));
                    g.command(&["xadd"]);
                }
                SinkSpecKind::Queue {
                    queue, laravel: None, ..
                } => {
                    let g = entry(&mut out, c);
                    g.keys.insert(glob(c, queue));
                    g.command(&["rpush"]);
                }
                SinkSpecKind::Queue {
                    queue,
                    laravel: Some(l),
                    ..
                } => {
                    let g = entry(&mut out, c);
                    let q = glob(&ConnectionSpec::default(), queue);
                    let base = format!("{}{}", escape(&c.prefix), crate::laravel::queue_key(&q, l.hash_tag));
                    if l.delay.is_some() {
                        g.keys.insert(format!("{base}:delayed"));
                        g.command(&["zadd"]);
                    } else {
                        g.keys.insert(base.clone());
                        g.keys.insert(format!("{base}:notify"));
                        // EVAL is checked against the commands the script runs.
                        g.command(&["eval", "rpush"]);
                    }
                }
            }
        }
    }
    out
}

/// The Redis clients a rule file opens on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConnections {
    /// `127.0.0.1:6379 db 0`, or `cluster via … (every node)`.
    pub server: String,
    /// Whether it is a cluster (the counts are then per node).
    pub cluster: bool,
    /// Connections of the file that reach this server.
    pub connections: Vec<String>,
    /// One per stream or queue rule: their reads block.
    pub blocking: usize,
    /// One per `connections:` entry in use: sink writes, acks, dead letters, claims, leases.
    pub shared: usize,
    /// One per `connections:` entry with channel or pattern rules, plus one per rule with
    /// `overflow: block` (see `source::pubsub::hub`).
    pub subscription: usize,
}

impl ServerConnections {
    /// Every client together.
    pub fn total(&self) -> usize {
        self.blocking + self.shared + self.subscription
    }

    /// `127.0.0.1:6379 db 0 (connections: default, laravel): 4 clients = 1 blocking + 2 shared + 1 subscription`.
    pub fn line(&self) -> String {
        format!(
            "{} (connections: {}): {} client{}{} = {} blocking (stream and queue rules) + {} shared + {} subscription",
            self.server,
            self.connections.join(", "),
            self.total(),
            if self.total() == 1 { "" } else { "s" },
            if self.cluster { " per node" } else { "" },
            self.blocking,
            self.shared,
            self.subscription
        )
    }
}

/// The clients the router opens on each Redis server for `set`, in file order: what `check`
/// prints, so that `maxclients` can be planned before a deploy.
pub fn connection_counts(set: &RuleSet) -> Vec<ServerConnections> {
    let mut out: Vec<ServerConnections> = Vec::new();
    let mut shared: Vec<&str> = Vec::new();
    let mut subscribed: Vec<&str> = Vec::new();
    fn entry<'a>(out: &'a mut Vec<ServerConnections>, conn: &ConnectionSpec) -> &'a mut ServerConnections {
        let key = server(conn);
        let i = match out.iter().position(|s| s.server == key) {
            Some(i) => i,
            None => {
                out.push(ServerConnections {
                    server: key,
                    cluster: conn.cluster,
                    connections: Vec::new(),
                    blocking: 0,
                    shared: 0,
                    subscription: 0,
                });
                out.len() - 1
            }
        };
        if !out[i].connections.contains(&conn.name) {
            out[i].connections.push(conn.name.clone());
        }
        &mut out[i]
    }
    for rule in &set.rules {
        let sc = &rule.source.connection;
        let e = entry(&mut out, sc);
        match &rule.source.kind {
            SourceSpecKind::Channel { options, .. } | SourceSpecKind::Pattern { options, .. } => {
                if options.overflow == crate::config::Overflow::Block {
                    e.subscription += 1;
                } else if !subscribed.contains(&sc.name.as_str()) {
                    subscribed.push(&sc.name);
                    e.subscription += 1;
                }
            }
            SourceSpecKind::Stream { .. } | SourceSpecKind::Queue { .. } => e.blocking += 1,
        }
        // The source's connection carries its dead letters (and acks, claims, leases).
        let redis_sinks = rule
            .sinks
            .iter()
            .filter(|s| !matches!(s.kind, SinkSpecKind::Webhook(_)))
            .map(|s| &s.connection);
        for c in std::iter::once(sc).chain(redis_sinks) {
            let e = entry(&mut out, c);
            if !shared.contains(&c.name.as_str()) {
                shared.push(&c.name);
                e.shared += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_escape_literals_and_widen_templates() {
        let conn = ConnectionSpec {
            prefix: "app_".into(),
            ..ConnectionSpec::default()
        };
        let t = Template::compile("orders:{{$.id}}:x*").unwrap();
        assert_eq!(glob(&conn, &t), "app_orders:*:x\\*");
        assert_eq!(literal(&conn, "a[1]"), "app_a\\[1\\]");
    }

    #[test]
    fn example_rules() {
        let set = crate::config::load_str(
            "connections:\n  default: { url: 'redis://h:1' }\n  laravel: { url: 'redis://h:1', prefix: 'laravel_database_' }\nrules:\n  - name: a\n    source: { channel: 'events:order', connection: laravel }\n    sinks:\n      - { stream: processed_stream }\n      - { queue: to-b, connection: laravel, laravel: { job: 'App\\Jobs\\X' } }\n",
            "t.yaml",
        )
        .unwrap();
        let g = grants(&set);
        assert_eq!(g.len(), 1, "both connections reach one server: one user");
        assert_eq!(g[0].connections, ["laravel", "default"]);
        assert_eq!(
            g[0].grants.setuser("router", "pw"),
            "ACL SETUSER router reset on >pw ~laravel_database_queues:to-b ~laravel_database_queues:to-b:notify ~laravel_database_redis-router:dead-letter ~laravel_database_redis-router:dead-letter-key ~processed_stream &laravel_database_events:order -@all +ping +eval +get +rpush +set +subscribe +unsubscribe +xadd"
        );
    }
}
