//! One Pub/Sub rule's buffer: what its subscription received and the rule has not taken yet.
//!
//! Bounded twice: by `buffer` messages and by `buffer_bytes` (payload and channel bytes), so
//! that ten thousand 1 MB messages cannot take 10 GB. When either bound is reached the rule's
//! `overflow` policy applies, counted in `overflowed` and logged at most every
//! [`OVERFLOW_LOG_INTERVAL`]. A message larger than `buffer_bytes` on its own is still taken
//! when the buffer is empty (it could never be taken otherwise), so the bound is
//! `buffer_bytes` plus one message.
//!
//! The buffer does not know where its messages come from; the shared reader (`hub.rs`) fills
//! it and the rule (`mod.rs`) empties it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::Overflow;
use crate::message::Message;
use crate::source::Budget;
use crate::stats::RuleStats;

/// Overflow is logged at most this often (with the count since the last line).
const OVERFLOW_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a message costs the buffer: its payload, its channel name and the message itself.
pub(super) fn cost(msg: &Message) -> usize {
    msg.raw().len() + msg.meta.key.len() + std::mem::size_of::<Message>()
}

struct Queue {
    messages: VecDeque<Message>,
    /// Sum of [`cost`] over `messages`.
    bytes: usize,
    /// Set when the rule stops: nothing is taken any more, and a blocked push gives up.
    closed: bool,
}

impl Queue {
    fn fits(&self, size: usize, capacity: usize, max_bytes: usize) -> bool {
        self.messages.len() < capacity && (self.messages.is_empty() || self.bytes + size <= max_bytes)
    }

    fn pop_front(&mut self) -> Option<Message> {
        let msg = self.messages.pop_front()?;
        self.bytes -= cost(&msg);
        Some(msg)
    }
}

/// A bounded buffer with an overflow policy.
pub(super) struct Buffer {
    queue: Mutex<Queue>,
    /// Signalled when the queue gains a message.
    data: Notify,
    /// Signalled when the rule takes messages (for `overflow: block`).
    space: Notify,
    capacity: usize,
    max_bytes: usize,
    overflow: Overflow,
    stats: Arc<RuleStats>,
    rule: Arc<str>,
    overflow_log: Mutex<(Option<Instant>, u64)>,
}

impl Buffer {
    pub(super) fn new(
        capacity: usize,
        max_bytes: usize,
        overflow: Overflow,
        stats: Arc<RuleStats>,
        rule: Arc<str>,
    ) -> Buffer {
        Buffer {
            // Grows on demand: ten thousand idle rules must not each reserve room for a burst.
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            data: Notify::new(),
            space: Notify::new(),
            capacity,
            max_bytes,
            overflow,
            stats,
            rule,
            overflow_log: Mutex::new((None, 0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-modified.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rule's overflow policy.
    pub(super) fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Add a message without waiting: when full, `drop_oldest` and `drop_newest` drop (counted
    /// and logged); `block` hands the message back (`Some`) for [`Buffer::push_waiting`].
    pub(super) fn offer(&self, msg: Message) -> Option<Message> {
        let size = cost(&msg);
        let mut queue = self.lock();
        if queue.closed {
            return None;
        }
        let fits = queue.fits(size, self.capacity, self.max_bytes);
        if !fits && self.overflow == Overflow::Block {
            // Not received yet: `push_waiting` offers it again.
            return Some(msg);
        }
        RuleStats::add(&self.stats.received, 1);
        if fits {
            self.append(queue, msg, size);
            return None;
        }
        match self.overflow {
            Overflow::DropOldest => {
                let mut dropped = 0;
                while !queue.fits(size, self.capacity, self.max_bytes) && queue.pop_front().is_some() {
                    dropped += 1;
                }
                self.append(queue, msg, size);
                self.overflowed(dropped);
                None
            }
            Overflow::DropNewest => {
                drop(queue);
                self.overflowed(1);
                None
            }
            Overflow::Block => Some(msg),
        }
    }

    /// `overflow: block`: wait until the message fits, or until `stop` or the rule stops.
    pub(super) async fn push_waiting(&self, mut msg: Message, stop: &CancellationToken) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            msg = match self.offer(msg) {
                None => return,
                Some(msg) => msg,
            };
            tokio::select! {
                _ = space => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn append(&self, mut queue: MutexGuard<'_, Queue>, msg: Message, size: usize) {
        queue.messages.push_back(msg);
        queue.bytes += size;
        drop(queue);
        self.data.notify_one();
    }

    /// Take up to `max` messages (none when empty), as many as `budget` affords (at least one):
    /// each is admitted on the way out, so one too large for the rule is set aside unparsed.
    pub(super) fn take(&self, max: usize, budget: &Budget) -> Vec<Message> {
        let mut queue = self.lock();
        let mut out = Vec::new();
        let mut total = 0usize;
        while out.len() < max
            && let Some(front) = queue.messages.front_mut()
        {
            let cost = budget.admit(front);
            if !out.is_empty() && total.saturating_add(cost) > budget.batch_bytes {
                break;
            }
            total = total.saturating_add(cost);
            if let Some(msg) = queue.pop_front() {
                out.push(msg);
            }
        }
        let more = !queue.messages.is_empty();
        drop(queue);
        if !out.is_empty() {
            self.space.notify_waiters();
        }
        if more {
            self.data.notify_one();
        }
        out
    }

    /// Stop taking messages and hand out everything buffered.
    pub(super) fn close(&self) -> Vec<Message> {
        let mut queue = self.lock();
        queue.closed = true;
        queue.bytes = 0;
        let left: Vec<Message> = queue.messages.drain(..).collect();
        drop(queue);
        self.space.notify_waiters();
        left
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Wake the rule waiting in [`Buffer::data`] (messages won back by `ha: claim`'s checker).
    pub(super) fn wake(&self) {
        self.data.notify_one();
    }

    /// Resolves once a message was added since the last wake-up (a stored permit, so none is
    /// missed between a check and the wait).
    pub(super) async fn data(&self) {
        self.data.notified().await;
    }

    fn overflowed(&self, dropped: u64) {
        if dropped == 0 {
            return;
        }
        RuleStats::add(&self.stats.overflowed, dropped);
        let mut log = self.overflow_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += dropped;
        if log.0.is_none_or(|at| at.elapsed() >= OVERFLOW_LOG_INTERVAL) {
            error!(
                rule = %self.rule,
                dropped = log.1,
                capacity = self.capacity,
                capacity_bytes = self.max_bytes,
                policy = ?self.overflow,
                "Pub/Sub buffer full; messages dropped. Raise `buffer` or `buffer_bytes`, speed up the sinks, or bridge the channel into a stream."
            );
            *log = (Some(Instant::now()), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Meta, SourceKind};

    fn msg(n: usize, len: usize) -> Message {
        let mut body = format!("{n}:").into_bytes();
        body.resize(len, b'x');
        Message::new(
            Body::Bytes(body),
            Meta {
                rule: Arc::from("r"),
                source: SourceKind::Channel,
                key: "c".into(),
                pattern: None,
                id: None,
                received: std::time::SystemTime::now(),
                deliveries: 1,
                fields: Vec::new(),
                problem: None,
            },
        )
    }

    /// A budget that takes everything (these tests are about the buffer's own bounds).
    fn unbounded() -> Budget {
        Budget {
            max_payload: usize::MAX,
            batch_bytes: usize::MAX,
            parses_json: false,
        }
    }

    fn first_bytes(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .map(|m| {
                let raw = String::from_utf8_lossy(m.raw()).into_owned();
                raw.split(':').next().unwrap_or_default().to_string()
            })
            .collect()
    }

    #[test]
    fn a_byte_bound_applies_the_overflow_policy_like_a_count_bound() {
        let stats = Arc::new(RuleStats::default());
        let per = cost(&msg(0, 1000));
        // Room for three 1,000-byte messages by bytes, ten by count.
        let oldest = Buffer::new(10, 3 * per, Overflow::DropOldest, stats.clone(), Arc::from("r"));
        for n in 0..5 {
            assert!(oldest.offer(msg(n, 1000)).is_none());
        }
        assert_eq!(first_bytes(&oldest.take(10, &unbounded())), ["2", "3", "4"]);
        assert_eq!(stats.overflowed.load(std::sync::atomic::Ordering::Relaxed), 2);

        let newest = Buffer::new(10, 3 * per, Overflow::DropNewest, stats.clone(), Arc::from("r"));
        for n in 0..5 {
            assert!(newest.offer(msg(n, 1000)).is_none());
        }
        assert_eq!(first_bytes(&newest.take(10, &unbounded())), ["0", "1", "2"]);

        let block = Buffer::new(10, 3 * per, Overflow::Block, stats.clone(), Arc::from("r"));
        for n in 0..3 {
            assert!(block.offer(msg(n, 1000)).is_none());
        }
        assert!(
            block.offer(msg(3, 1000)).is_some(),
            "block hands a message back when full"
        );
        assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 13);
    }

    #[test]
    fn a_message_above_the_byte_bound_is_taken_alone() {
        let stats = Arc::new(RuleStats::default());
        let buffer = Buffer::new(10, 100, Overflow::DropOldest, stats, Arc::from("r"));
        assert!(buffer.offer(msg(0, 10)).is_none());
        assert!(buffer.offer(msg(1, 5000)).is_none());
        assert_eq!(
            first_bytes(&buffer.take(10, &unbounded())),
            ["1"],
            "the small one made room"
        );
        assert_eq!(buffer.len(), 0);
    }
}
