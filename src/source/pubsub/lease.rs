//! `ha: single`: every instance subscribes, only the holder of a lease
//! (`redis-router:lease:RULE`) delivers; the others drop what they receive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use super::SourceError;
use crate::redis_conn;
use crate::source::{Liveness, keep_alive};
use crate::stats::RuleStats;

/// `ha: single`: every instance subscribes, only the holder of the lease delivers. The holder
/// renews it every third of its TTL; the others try to take it as often. When the holder dies,
/// another takes over once the lease expires: what was published in that gap is dropped by the
/// standby instances (counted as `claimed_elsewhere`, like everything a standby drops), and the
/// takeover is logged with how long this instance stood by.
///
/// The renewal runs on a timer of its own ([`keep_alive`]), not between batches: a holder whose
/// sink takes longer than the TTL is alive and keeps its lease.
pub(super) struct Lease {
    conn: redis_conn::Conn,
    key: String,
    me: String,
    ttl: Duration,
    /// Whether this instance holds the lease, as of the last renewal; read by the rule.
    held: Arc<AtomicBool>,
    /// When this instance last saw the lease held by nobody it knew to be alive (for the log).
    lost_at: Option<Instant>,
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

/// The rule's side of a lease: whether it is held, and the task that renews it.
pub(super) struct LeaseHandle {
    held: Arc<AtomicBool>,
    pub(super) stats: Arc<RuleStats>,
    _renewal: AbortOnDropHandle<()>,
}

impl LeaseHandle {
    /// Whether this instance holds the lease now.
    pub(super) fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

impl Lease {
    /// Take or learn the lease once, then keep it renewed every third of `ttl`.
    ///
    /// # Errors
    /// When the first renewal cannot be written.
    pub(super) async fn start(
        conn: redis_conn::Conn,
        key: String,
        ttl: Duration,
        stats: Arc<RuleStats>,
        me: &str,
    ) -> Result<LeaseHandle, SourceError> {
        let held = Arc::new(AtomicBool::new(false));
        let mut lease = Lease {
            conn,
            key,
            me: me.to_string(),
            ttl,
            held: held.clone(),
            lost_at: None,
        };
        lease.renew().await?;
        Ok(LeaseHandle {
            held,
            stats,
            _renewal: keep_alive((ttl / 3).max(MIN_RENEWAL), lease),
        })
    }

    /// Renew or take the lease, and say so when that changes.
    async fn renew(&mut self) -> Result<(), SourceError> {
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
        let was = self.held.swap(held, Ordering::AcqRel);
        if held && !was {
            info!(
                lease = %self.key,
                instance = %self.me,
                standby_ms = self.lost_at.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0),
                "Took the lease: this instance now delivers the rule's messages."
            );
        } else if !held && was {
            warn!(lease = %self.key, "Lost the lease: another instance delivers now.");
        }
        if !held && self.lost_at.is_none() {
            self.lost_at = Some(Instant::now());
        }
        if held {
            self.lost_at = None;
        }
        Ok(())
    }
}

impl Liveness for Lease {
    const WHAT: &'static str = "Renewing the lease";

    fn name(&self) -> &str {
        &self.key
    }

    fn beat(&mut self) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.renew()
    }
}

/// Shortest renewal period, against a tiny `lease_ttl` turning into a busy loop.
const MIN_RENEWAL: Duration = Duration::from_millis(10);
