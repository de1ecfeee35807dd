//! Who this router process is: the name it uses as a consumer in consumer groups and queue
//! processing lists, and shows in `/status`.
//!
//! The name is the host name, or `HOST-INSTANCE` when `run --instance` (or
//! `REDIS_ROUTER_INSTANCE`) gives an instance id. It must be stable across restarts (a
//! restarted router replays its own pending entries by that name) and distinct between the
//! processes that share a rule file (two processes with one name would replay each other's
//! in-flight entries): on one host, give each process its own `--instance`.

/// The host name (`redis-router` when it cannot be read).
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "redis-router".to_string())
}

/// The name of a process with `instance` as its id: `HOST` or `HOST-INSTANCE`. Computed once
/// at startup and passed down (the supervisor hands it to every rule).
pub fn name(instance: Option<&str>) -> String {
    match instance {
        Some(id) if !id.is_empty() => format!("{}-{id}", host()),
        _ => host(),
    }
}
