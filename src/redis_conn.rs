//! Opening Redis connections the way every rule needs them: TCP_NODELAY on, explicit timeouts,
//! and a reconnecting manager (redis-rs's ConnectionManager reconnects in the background but does
//! not retry the command that failed; the rule loop does that).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::io::tcp::TcpSettings;
use redis::{Client, IntoConnectionInfo, RedisResult};

use crate::config::ConnectionSpec;

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
    Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert })
}

/// rustls needs one process-wide crypto provider; two are linked in (through reqwest and the
/// redis crate), so choose explicitly. Installing twice is harmless.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A reconnecting connection whose responses may take `extra` longer than [`COMMAND_TIMEOUT`]
/// (the BLOCK time of blocking reads issued on it).
///
/// # Errors
/// When Redis cannot be reached now.
pub async fn manager(spec: &ConnectionSpec, extra: Duration) -> RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT + extra))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client(spec)?, config).await
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
    if spec.prefix.is_empty() {
        key.to_string()
    } else {
        format!("{}{}", spec.prefix, key)
    }
}

/// The key as a rule names it: the prefix removed, when present.
pub fn unprefixed<'a>(spec: &ConnectionSpec, key: &'a str) -> &'a str {
    key.strip_prefix(spec.prefix.as_str()).unwrap_or(key)
}

/// Whether an error means "try again later" (connection lost, timeout, loading, failover)
/// rather than "this command will never work" (WRONGTYPE, syntax).
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "NOREPLICAS")
        )
}
