//! Opening Redis connections the way every rule needs them: TCP_NODELAY on, explicit timeouts,
//! and a reconnecting manager (redis-rs's ConnectionManager reconnects in the background but does
//! not retry the command that failed; the rule loop does that).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::ConnectionSpec;
use crate::keys;

/// How long opening a TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Response timeout of non-blocking commands. redis-rs's default is 500 ms, too short for a
/// large pipeline on a busy shared machine.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the connection, with TCP_NODELAY (off by default in redis-rs: without it each
/// small pipeline waits for Nagle's delayed ACK).
///
/// # Errors
/// When the URL does not parse (validation has already rejected such files).
pub fn client(spec: &ConnectionSpec) -> RedisResult<Client> {
    let mut info = spec
        .url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    // No CLIENT SETINFO on connect: a least-privilege ACL user (`check --acl`) need not be
    // allowed `client`, and servers before 7.2 do not know the command.
    let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(user) = &spec.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &spec.password {
        settings = settings.set_password(password);
    }
    if let Some(path) = &spec.password_file {
        let password = std::fs::read_to_string(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!(
                    "connection `{}`: cannot read password_file {}: {e}",
                    spec.name,
                    path.display()
                ),
            ))
        })?;
        settings = settings.set_password(password.trim_end_matches(['\n', '\r']));
    }
    info = info.set_redis_settings(settings);
    let Some(tls) = &spec.tls else {
        return Client::open(info);
    };
    install_crypto_provider();
    Client::build_with_tls(info, tls_certificates(spec, tls)?)
}

/// The CA, client certificate and key files of a `rediss://` connection, read now.
fn tls_certificates(spec: &ConnectionSpec, tls: &crate::config::TlsSpec) -> RedisResult<redis::TlsCertificates> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!("connection `{}`: cannot read {what} {}: {e}", spec.name, path.display()),
            ))
        })
    };
    let root_cert = tls.ca_file.as_deref().map(|p| read(p, "ca_file")).transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "cert_file")?,
            client_key: read(key, "key_file")?,
        }),
        _ => None,
    };
    Ok(redis::TlsCertificates { client_tls, root_cert })
}

/// rustls needs one process-wide crypto provider; two are linked in (through reqwest and the
/// redis crate), so choose explicitly. Installing twice is harmless.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A connection to one server or to a Redis Cluster. Commands and pipelines go through either
/// the same way (it is a [`redis::aio::ConnectionLike`]); on a cluster each key goes to the node
/// that owns its slot, and a pipeline whose keys span several slots is split per slot (see
/// `cluster_pipeline`). Cloning shares the underlying connection.
#[derive(Clone)]
pub enum Conn {
    /// One server, reconnecting in the background.
    Single(ConnectionManager),
    /// A cluster: redis-rs follows MOVED/ASK and refreshes its slot map.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A pipeline on a cluster. redis-rs sends a whole pipeline to one node and refuses one whose
/// keys are in different slots, but a batch of a hundred messages routinely writes to keys
/// all over the cluster (`stream: "events:{{type}}"`, one claim key per message). So: split the
/// commands by slot, send one sub-pipeline per slot, all at once, and put the replies back in
/// the order of the commands. One round trip per node instead of one per message; no order is
/// promised between different keys, as in Redis Cluster itself.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    // Transactions must stay whole (their keys must share a slot anyway).
    if pipeline.is_transaction() || offset != 0 || count != commands.len() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let mut groups: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let slot = command_key(cmd).map(Slot::for_key);
        // A command without a key (PING) rides along with the first group.
        match groups.iter_mut().find(|(s, _)| slot.is_none() || *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    if groups.len() <= 1 {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let sends = groups.iter().map(|(slot, members)| {
        let mut part = redis::pipe();
        for &i in members {
            part.add_command(commands[i].clone());
        }
        let route = match slot {
            Some(slot) => SingleNodeRoutingInfo::SpecificNode(Route::with_slot(*slot, SlotAddr::Master)),
            None => SingleNodeRoutingInfo::RandomPrimary,
        };
        let mut conn = conn.clone();
        async move { conn.route_pipeline(part, 0, members.len(), route).await }
    });
    let replies = futures_util::future::join_all(sends).await;
    let mut out = vec![Value::Nil; commands.len()];
    for ((_, members), reply) in groups.iter().zip(replies) {
        for (&i, value) in members.iter().zip(reply?) {
            out[i] = value;
        }
    }
    Ok(out)
}

/// The key a command is routed by: the first key of EVAL/EVALSHA/FCALL, the first stream of
/// XREAD/XREADGROUP, the argument after the subcommand of XGROUP/XINFO, otherwise the first
/// argument (the key or channel of every other command the router pipelines).
fn command_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("EVAL") || is("EVALSHA") || is("EVAL_RO") || is("EVALSHA_RO") || is("FCALL") {
        args.next()?;
        let numkeys = args.next()?;
        return if numkeys == b"0" { None } else { args.next() };
    }
    if is("XREAD") || is("XREADGROUP") {
        args.find(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
        return args.next();
    }
    if is("XGROUP") || is("XINFO") || is("OBJECT") || is("MEMORY") {
        args.next()?;
        return args.next();
    }
    if is("PING") || is("SCRIPT") || is("INFO") || is("ACL") || is("CLIENT") {
        return None;
    }
    args.next()
}

/// The connection a rule, a sink or the dead-letter writer uses: a reconnecting manager whose
/// responses may take `extra` longer than [`COMMAND_TIMEOUT`] (the BLOCK time of blocking
/// reads issued on it), or for `cluster: true` a cluster connection through the seed nodes.
///
/// # Errors
/// When Redis cannot be reached now.
pub async fn manager(spec: &ConnectionSpec, extra: Duration) -> RedisResult<Conn> {
    if spec.cluster {
        let client = cluster_client(spec, extra, None)?;
        return Ok(Conn::Cluster(client.get_async_connection().await?));
    }
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT + extra))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    Ok(Conn::Single(
        ConnectionManager::new_with_config(client(spec)?, config).await?,
    ))
}

/// The connections for commands that never block (sink pipelines, XACK, dead letters, claims
/// and leases), one per [`ConnectionSpec`]: a hundred rules on one Redis share one socket
/// (redis-rs multiplexes their requests on it) instead of opening three or four each, which
/// Redis pays for in clients and the router in memory. Blocking reads (XREADGROUP BLOCK, BLMOVE)
/// keep a connection of their own ([`manager`]): on a shared one they would hold up everyone's
/// replies.
///
/// Owned by the supervisor (or by a command that opens sinks, such as `dlq replay`); clones
/// share one registry. After a reload the supervisor drops the connections no rule uses any
/// more ([`Connections::retain`]): each closes once the last rule holding it has stopped.
#[derive(Clone, Default)]
pub struct Connections {
    slots: std::sync::Arc<std::sync::Mutex<Vec<(ConnectionSpec, ConnSlot)>>>,
}

type ConnSlot = std::sync::Arc<tokio::sync::OnceCell<Conn>>;

impl Connections {
    /// The shared connection to `spec`, opened on first use.
    ///
    /// # Errors
    /// When Redis cannot be reached now (the next caller tries again).
    pub async fn shared(&self, spec: &ConnectionSpec) -> RedisResult<Conn> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.iter().find(|(s, _)| s == spec) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = ConnSlot::default();
                    slots.push((spec.clone(), slot.clone()));
                    slot
                }
            }
        };
        slot.get_or_try_init(|| manager(spec, Duration::ZERO)).await.cloned()
    }

    /// Keep the connections whose spec `used` accepts, drop the others. Returns how many were
    /// dropped.
    pub fn retain(&self, used: impl Fn(&ConnectionSpec) -> bool) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let before = slots.len();
        slots.retain(|(spec, _)| used(spec));
        before - slots.len()
    }

    /// How many connections are kept.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cluster client over every seed node, with the connection's credentials, TLS files and
/// timeouts; `push` receives Pub/Sub messages (RESP3) when given.
fn cluster_client(
    spec: &ConnectionSpec,
    extra: Duration,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> RedisResult<redis::cluster::ClusterClient> {
    let seeds = spec
        .nodes
        .iter()
        .map(|url| {
            let node = ConnectionSpec {
                url: url.clone(),
                cluster: false,
                ..spec.clone()
            };
            Ok(client(&node)?.get_connection_info().clone())
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .tcp_settings(TcpSettings::default().set_nodelay(true))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT + extra)
        .retries(3)
        .max_retry_wait(2_000);
    if let Some(tls) = &spec.tls {
        install_crypto_provider();
        builder = builder.certs(tls_certificates(spec, tls)?);
    }
    if let Some(push) = push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
    }
    builder.build()
}

/// A cluster connection that delivers Pub/Sub messages (`SUBSCRIBE`, `PSUBSCRIBE`, and the
/// sharded `SSUBSCRIBE`, which only the node owning the channel's slot serves) to `push`.
/// redis-rs resubscribes after a node is lost or a slot moves.
///
/// # Errors
/// When the cluster cannot be reached now.
pub async fn cluster_pubsub(
    spec: &ConnectionSpec,
    push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
) -> RedisResult<ClusterConnection> {
    cluster_client(spec, Duration::ZERO, Some(push))?
        .get_async_connection()
        .await
}

/// A Pub/Sub connection (its stream ends when the connection drops; the caller resubscribes).
///
/// # Errors
/// When Redis cannot be reached now.
pub async fn pubsub(spec: &ConnectionSpec) -> RedisResult<redis::aio::PubSub> {
    let client = client(spec)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out connecting for Pub/Sub",
        ))),
    }
}

/// The key (or channel) as Redis holds it: the connection's prefix added.
pub fn prefixed(spec: &ConnectionSpec, key: &str) -> String {
    keys::prefixed(&spec.prefix, key)
}

/// The hash tag of a key (see [`keys::hash_tag`]).
pub fn hash_tag(key: &str) -> Option<&str> {
    keys::hash_tag(key)
}

/// A key used together with `key` (already prefixed), in its slot on a cluster (see
/// [`keys::companion`]).
pub fn companion(spec: &ConnectionSpec, key: &str, suffix: &str) -> String {
    keys::companion(spec.cluster, key, suffix)
}

/// The key as a rule names it: the prefix removed, when present.
pub fn unprefixed<'a>(spec: &ConnectionSpec, key: &'a str) -> &'a str {
    keys::unprefixed(&spec.prefix, key)
}

/// Error codes of states a real deployment leaves again on its own or by an operator's hand,
/// so that a command refused now works later:
/// - `OOM`: `maxmemory` reached with `noeviction` (keys expire, consumers drain, ops raise it);
/// - `BUSY`: a script or function runs too long; `LOADING`: the dataset is loading at start;
/// - `MASTERDOWN`, `READONLY`: a replica lost its master, or a failover demoted the node we
///   write to; `NOREPLICAS`: `min-replicas-to-write` not met;
/// - `TRYAGAIN`, `CLUSTERDOWN`: a cluster resharding or without a quorum;
/// - `MISCONF`: writes stopped because the last RDB save failed (a disk to free).
const TRANSIENT_CODES: [&str; 9] = [
    "OOM",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MISCONF",
];

/// Whether an error means "try again later" (connection lost, timeout, a full or loading or
/// failing-over server, see [`TRANSIENT_CODES`]) rather than "this command will never work"
/// (WRONGTYPE, syntax, NOPERM). A script's error carries the code of the command that failed
/// inside it (`OOM … script: …`), so the Laravel push is classified as its RPUSH would be.
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ConnectionSpec {
        ConnectionSpec {
            cluster: true,
            ..ConnectionSpec::default()
        }
    }

    #[test]
    fn companions_share_the_slot_of_their_key_on_a_cluster() {
        for key in ["jobs", "app_jobs:in", "laravel_database_queues:{to-b}", "x{y}z"] {
            let c = companion(&cluster(), key, ":processing:host-1");
            assert_eq!(Slot::for_key(&c), Slot::for_key(key), "{key} and {c}");
        }
        assert_eq!(companion(&cluster(), "jobs", ":consumers"), "{jobs}:consumers");
        assert_eq!(companion(&cluster(), "queues:{q}", ":notify"), "queues:{q}:notify");
        assert_eq!(
            companion(&ConnectionSpec::default(), "jobs", ":consumers"),
            "jobs:consumers"
        );
    }

    #[test]
    fn server_states_that_pass_are_transient_and_refusals_are_not() {
        // Parsed as Redis sends them, so that `code()` is what the router sees in production.
        let parse = |line: &str| -> redis::RedisError {
            let reply = format!("-{line}\r\n");
            match redis::parse_redis_value(reply.as_bytes()) {
                Ok(redis::Value::ServerError(e)) => e.into(),
                other => panic!("{line}: {other:?}"),
            }
        };
        for line in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "BUSY Redis is busy running a script.",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
        ] {
            assert!(is_transient(&parse(line)), "{line} is transient");
        }
        for line in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR syntax error",
            "NOPERM this user has no permissions to run the 'xadd' command",
            "NOSCRIPT No matching script.",
        ] {
            assert!(!is_transient(&parse(line)), "{line} is permanent");
        }
    }

    #[test]
    fn commands_are_routed_by_their_key() {
        let key = |cmd: &Cmd| command_key(cmd).map(|k| String::from_utf8_lossy(k).into_owned());
        let mut eval = redis::cmd("EVAL");
        eval.arg("return 1").arg(2).arg("k1").arg("k2").arg("v");
        assert_eq!(key(&eval).as_deref(), Some("k1"));
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert_eq!(key(&keyless), None);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg("s")
            .arg(">");
        assert_eq!(key(&read).as_deref(), Some("s"));
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg("s");
        assert_eq!(key(&info).as_deref(), Some("s"));
        let mut xadd = redis::cmd("XADD");
        xadd.arg("out").arg("*").arg("f").arg("v");
        assert_eq!(key(&xadd).as_deref(), Some("out"));
        assert_eq!(key(&redis::cmd("PING")), None);
    }
}
