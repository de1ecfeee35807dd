//! Key names: how a connection's prefix, a cluster's hash tags and a companion suffix make the
//! name Redis holds, and which names are the router's own.
//!
//! Pure and at the bottom: it imports nothing of this crate, so configuration, connections,
//! sources, sinks and the Laravel format can all use it. Every key the router creates for
//! itself is named here or follows a shape named here, which is what lets a key rendered from a
//! payload be checked against the router's own key space ([`Reserved`]).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// The namespace of the keys the router creates for itself: `ha` claims
/// (`redis-router:claim:…`) and leases (`redis-router:lease:…`), the default dead-letter stream
/// (`redis-router:dead-letter`).
pub const NAMESPACE: &str = "redis-router:";

/// A queue consumer's processing list: `LIST:processing:CONSUMER`.
pub const PROCESSING: &str = ":processing:";
/// A queue consumer's heartbeat: `LIST:heartbeat:CONSUMER`.
pub const HEARTBEAT: &str = ":heartbeat:";
/// The set of a queue's consumers: `LIST:consumers`.
pub const CONSUMERS: &str = ":consumers";

/// The key as Redis holds it: `prefix` added.
pub fn prefixed(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}{key}")
    }
}

/// The key as a rule names it: `prefix` removed, when present.
pub fn unprefixed<'a>(prefix: &str, key: &'a str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}

/// The hash tag of a key: what Redis Cluster hashes instead of the whole key (the text between
/// the first `{` and the next `}`, when not empty).
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// A key that a script or a multi-key command uses together with `key` (already prefixed):
/// `<key><suffix>` on one server. On a cluster it must be in the same slot: `<key><suffix>` when
/// `key` has a hash tag, else `{<key>}<suffix>` (whose hash tag is the whole of `key`).
pub fn companion(cluster: bool, key: &str, suffix: &str) -> String {
    if cluster && hash_tag(key).is_none() {
        format!("{{{key}}}{suffix}")
    } else {
        format!("{key}{suffix}")
    }
}

/// The names a key or channel rendered from a message may not take: the router's own keys, so
/// that a payload cannot write into a dead-letter stream (and have `dlq replay` send what it
/// forged), a processing list, a heartbeat, a claim or a lease.
///
/// Names are compared as rules write them, without the connection's prefix.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// Every dead-letter stream the rule file names.
    dead_letters: BTreeSet<String>,
    /// Every list a queue source reads: its companions are the router's.
    queues: BTreeSet<String>,
}

impl Reserved {
    /// The reserved names of a rule file's dead-letter streams and queue sources' lists.
    pub fn new(dead_letters: impl IntoIterator<Item = String>, queues: impl IntoIterator<Item = String>) -> Reserved {
        Reserved {
            dead_letters: dead_letters.into_iter().collect(),
            queues: queues.into_iter().collect(),
        }
    }

    /// Why a name rendered from a message may not be written, or `None` when it may.
    pub fn refuse(&self, name: &str) -> Option<String> {
        if name.is_empty() {
            return Some("it is empty".into());
        }
        if name.chars().any(char::is_control) {
            return Some("it holds a control character".into());
        }
        if name.starts_with(NAMESPACE) {
            return Some(format!("`{NAMESPACE}` is the router's own namespace"));
        }
        if self.dead_letters.contains(name) {
            return Some("it is a dead-letter stream".into());
        }
        for queue in &self.queues {
            // The companions of a queue source's list, on one server and on a cluster.
            for base in [queue.clone(), format!("{{{queue}}}")] {
                let Some(rest) = name.strip_prefix(base.as_str()) else {
                    continue;
                };
                if rest.starts_with(PROCESSING) || rest.starts_with(HEARTBEAT) || rest == CONSUMERS {
                    return Some(format!("it belongs to the queue source of `{queue}`"));
                }
            }
        }
        None
    }
}

/// The [`Reserved`] names of the rule set now running, replaced at each reload, so that a rule
/// that keeps running through a reload checks against the names the new file reserves too.
#[derive(Debug, Default)]
pub struct ReservedNames(RwLock<Arc<Reserved>>);

impl ReservedNames {
    /// A cell holding `reserved`.
    pub fn new(reserved: Reserved) -> ReservedNames {
        ReservedNames(RwLock::new(Arc::new(reserved)))
    }

    /// The names reserved now.
    pub fn get(&self) -> Arc<Reserved> {
        // Only whole values are stored; a panic cannot leave one half-written.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reserve these names from now on.
    pub fn set(&self, reserved: Reserved) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_added_and_removed() {
        assert_eq!(prefixed("", "jobs"), "jobs");
        assert_eq!(prefixed("app_", "jobs"), "app_jobs");
        assert_eq!(unprefixed("app_", "app_jobs"), "jobs");
        assert_eq!(unprefixed("app_", "jobs"), "jobs");
    }

    #[test]
    fn rendered_names_stay_out_of_the_routers_key_space() {
        let reserved = Reserved::new(["router:dead".to_string()], ["jobs".to_string()]);
        let refused = [
            ("", "empty"),
            ("a\r\nb", "control"),
            ("x\0y", "control"),
            ("redis-router:dead-letter", "namespace"),
            ("redis-router:claim:r:c:1", "namespace"),
            ("redis-router:lease:r", "namespace"),
            ("router:dead", "dead-letter"),
            ("jobs:processing:host-1", "queue source"),
            ("jobs:heartbeat:host-1", "queue source"),
            ("jobs:consumers", "queue source"),
            ("{jobs}:processing:host-1", "queue source"),
            ("{jobs}:consumers", "queue source"),
        ];
        for (name, why) in refused {
            let reason = reserved.refuse(name);
            assert!(
                reason.as_deref().is_some_and(|r| r.contains(why)),
                "{name:?}: {reason:?}"
            );
        }
        for name in [
            "jobs",
            "jobs:processing",
            "jobs:consumers:extra",
            "other:processing:x",
            "router:dead:2",
            "redis-routerx",
            "events:null-ish",
            "*",
            "caf\u{e9}",
        ] {
            assert_eq!(reserved.refuse(name), None, "{name:?}");
        }
    }

    #[test]
    fn the_cell_gives_the_latest_names() {
        let cell = ReservedNames::new(Reserved::default());
        assert_eq!(cell.get().refuse("dl"), None);
        cell.set(Reserved::new(["dl".to_string()], []));
        assert!(cell.get().refuse("dl").is_some());
    }

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("queues:{to-b}"), Some("to-b"));
        assert_eq!(hash_tag("{a}{b}"), Some("a"));
        assert_eq!(hash_tag("a{}b{c}"), None, "an empty first tag means the whole key");
        assert_eq!(hash_tag("plain"), None);
        assert_eq!(hash_tag("a}b{"), None);
        assert_eq!(companion(true, "jobs", CONSUMERS), "{jobs}:consumers");
        assert_eq!(companion(true, "queues:{q}", ":notify"), "queues:{q}:notify");
        assert_eq!(companion(false, "jobs", CONSUMERS), "jobs:consumers");
    }
}
