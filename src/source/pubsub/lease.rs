//! `ha: single`: every instance subscribes, only the holder of a lease
//! (`redis-router:lease:RULE`) delivers; the others drop what they receive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::SourceError;
use crate::redis_conn;
use crate::stats::RuleStats;

/// `ha: single`: every instance subscribes, only the holder of the lease delivers. The holder
/// renews it every third of its TTL; the others try to take it as often. When the holder dies,
/// another takes over once the lease expires: what was published in that gap is dropped by the
/// standby instances (counted as `claimed_elsewhere`, like everything a standby drops), and the
/// takeover is logged with how long this instance stood by.
pub(super) struct Lease {
    pub(super) conn: redis_conn::Conn,
    pub(super) key: String,
    pub(super) me: String,
    pub(super) ttl: Duration,
    pub(super) held: bool,
    pub(super) next_check: Instant,
    /// When this instance last saw the lease held by nobody it knew to be alive (for the log).
    pub(super) lost_at: Option<Instant>,
    pub(super) stats: Arc<RuleStats>,
}

/// Renew the lease if this instance holds it, or take it if nobody does. KEYS: lease; ARGV:
/// instance, TTL in ms. Returns 1 when this instance holds the lease afterwards.
const LEASE: &str = r"
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

impl Lease {
    /// Check or renew the lease when due.
    pub(super) async fn refresh(&mut self) -> Result<(), SourceError> {
        if Instant::now() < self.next_check {
            return Ok(());
        }
        self.next_check = Instant::now() + self.ttl / 3;
        let held: i64 = redis::cmd("EVAL")
            .arg(LEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.me)
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.conn)
            .await
            .map_err(|source| SourceError::Redis {
                op: "lease",
                key: self.key.clone(),
                source,
            })?;
        let held = held == 1;
        if held && !self.held {
            info!(
                lease = %self.key,
                instance = %self.me,
                standby_ms = self.lost_at.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0),
                "Took the lease: this instance now delivers the rule's messages."
            );
        } else if !held && self.held {
            warn!(lease = %self.key, "Lost the lease: another instance delivers now.");
        }
        if !held && self.lost_at.is_none() {
            self.lost_at = Some(Instant::now());
        }
        if held {
            self.lost_at = None;
        }
        self.held = held;
        Ok(())
    }
}
