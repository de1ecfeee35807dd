//! Who this router process is: the name it uses as a consumer in consumer groups and queue
//! processing lists, and shows in `/status`.
//!
//! The name is the host name, or `HOST-INSTANCE` when `run --instance` (or
//! `REDIS_ROUTER_INSTANCE`) gives an instance id. It must be stable across restarts (a
//! restarted router replays its own pending entries by that name) and distinct between the
//! processes that share a rule file (two processes with one name would replay each other's
//! in-flight entries): on one host, give each process its own `--instance`.

use std::sync::OnceLock;

static INSTANCE: OnceLock<String> = OnceLock::new();

/// Set the instance id, once, at startup. Returns false if it was already set.
pub fn set_instance(id: &str) -> bool {
    INSTANCE.set(id.to_string()).is_ok()
}

/// The host name (`redis-router` when it cannot be read).
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "redis-router".to_string())
}

/// This process's name: `HOST` or `HOST-INSTANCE`.
pub fn name() -> String {
    match INSTANCE.get() {
        Some(id) if !id.is_empty() => format!("{}-{id}", host()),
        _ => host(),
    }
}
