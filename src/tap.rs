//! Watching messages move: what each rule received, what its filters dropped, what each sink
//! was given and what was dead-lettered, as events for `redis-router tap` (served on the HTTP
//! endpoint's `/tap`).
//!
//! Tapping must never slow a rule or hold memory for a slow client:
//! - with nobody tapping, a rule pays one atomic load per batch ([`Taps::active`]);
//! - with a tap open, at most [`MAX_EVENTS_PER_SEC`] events are made per second, across all
//!   rules; the others are only counted, and the next event says how many were skipped;
//! - an event holds at most [`PREVIEW_BYTES`] of the payload and of the sink's command, and
//!   the events wait in one ring of [`RING`] events shared by every client: a client that
//!   reads too slowly loses the oldest ones (it is told how many), the rule never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events made per second at most, across all rules, while a tap is open.
pub const MAX_EVENTS_PER_SEC: u64 = 2_000;
/// Bytes of a payload or a sink command an event carries; the rest is cut (`payload_len` says
/// how long it was).
pub const PREVIEW_BYTES: usize = 16 * 1024;
/// Events waiting for the slowest client, at most: with [`PREVIEW_BYTES`] twice per event,
/// about 8 MiB in the worst case.
pub const RING: usize = 256;

/// Where in a rule an event was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Read from the source.
    Received,
    /// Dropped by the rule's filter, or taken by no sink.
    Filtered,
    /// Given to a sink (the rendered command or request).
    Sink,
    /// Written to the dead-letter stream.
    DeadLetter,
}

impl Stage {
    /// The stage as `tap --stage` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::Filtered => "filtered",
            Stage::Sink => "sink",
            Stage::DeadLetter => "dead-letter",
        }
    }

    /// The stage `tap --stage` names.
    pub fn parse(s: &str) -> Option<Stage> {
        [Stage::Received, Stage::Filtered, Stage::Sink, Stage::DeadLetter]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One thing a rule did with one message.
#[derive(Debug, Clone, Serialize)]
pub struct TapEvent {
    /// When, RFC 3339 with milliseconds.
    pub at: String,
    /// The rule.
    pub rule: String,
    /// Where.
    pub stage: Stage,
    /// Channel, stream or list the message came from.
    pub key: String,
    /// Stream entry id, for stream sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The sink (its label), for `sink` events and sink failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// What the sink was given: the Redis command or the HTTP request, masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Why, for `filtered` and `dead-letter` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The payload as text (bytes that are not UTF-8 replaced), cut at [`PREVIEW_BYTES`].
    pub payload: String,
    /// The payload's length in bytes.
    pub payload_len: usize,
    /// Events not made since the one before, because of [`MAX_EVENTS_PER_SEC`].
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The events of every rule of a process, for whoever taps. Cloned handles share it.
#[derive(Clone)]
pub struct Taps {
    inner: Arc<Inner>,
}

struct Inner {
    /// Open subscriptions.
    listeners: AtomicUsize,
    tx: broadcast::Sender<Arc<TapEvent>>,
    /// The current second (since `start`) and the events made in it.
    second: AtomicU64,
    made: AtomicU64,
    skipped: AtomicU64,
    start: Instant,
}

impl Default for Taps {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(RING);
        Taps {
            inner: Arc::new(Inner {
                listeners: AtomicUsize::new(0),
                tx,
                second: AtomicU64::new(0),
                made: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                start: Instant::now(),
            }),
        }
    }
}

impl Taps {
    /// Whether anyone taps: the one check a rule makes when nobody does.
    #[inline]
    pub fn active(&self) -> bool {
        self.inner.listeners.load(Ordering::Relaxed) > 0
    }

    /// Whether an event may be made now (someone taps, and this second's allowance is not
    /// spent); a refused one is counted as skipped.
    pub fn admit(&self) -> bool {
        if !self.active() {
            return false;
        }
        let i = &self.inner;
        let now = i.start.elapsed().as_secs();
        if i.second.swap(now, Ordering::Relaxed) != now {
            i.made.store(0, Ordering::Relaxed);
        }
        if i.made.fetch_add(1, Ordering::Relaxed) < MAX_EVENTS_PER_SEC {
            true
        } else {
            i.skipped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Send an event made after [`Taps::admit`] said yes.
    pub fn send(&self, mut event: TapEvent) {
        event.skipped = self.inner.skipped.swap(0, Ordering::Relaxed);
        // No receiver left (the last client went in between): nothing to do.
        let _ = self.inner.tx.send(Arc::new(event));
    }

    /// Receive every event from now on, until the subscription is dropped.
    pub fn subscribe(&self) -> Subscription {
        // Subscribed before counted: an event admitted in between has a receiver.
        let rx = self.inner.tx.subscribe();
        self.inner.listeners.fetch_add(1, Ordering::Relaxed);
        Subscription { rx, taps: self.clone() }
    }
}

/// One client's view of the events; dropping it stops the events when it was the last.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<TapEvent>>,
    taps: Taps,
}

/// What a subscription gives next.
pub enum Next {
    /// An event.
    Event(Arc<TapEvent>),
    /// The client read too slowly: this many events were lost for it.
    Lagged(u64),
}

impl Subscription {
    /// The next event, or how many were lost; `None` never happens while the taps exist.
    pub async fn next(&mut self) -> Option<Next> {
        match self.rx.recv().await {
            Ok(e) => Some(Next::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Next::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.taps.inner.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// At most [`PREVIEW_BYTES`] of `bytes` as text, cut on a character boundary.
pub fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < bytes.len() {
        // A character cut in two shows as one replacement character; drop it.
        if text.ends_with('\u{FFFD}') {
            text.pop();
        }
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: &str) -> TapEvent {
        TapEvent {
            at: crate::filter::now_rfc3339(),
            rule: rule.into(),
            stage: Stage::Received,
            key: "k".into(),
            id: None,
            sink: None,
            command: None,
            reason: None,
            payload: "{}".into(),
            payload_len: 2,
            skipped: 0,
        }
    }

    #[tokio::test]
    async fn nothing_is_made_without_a_listener_and_a_slow_one_is_told_what_it_lost() {
        let taps = Taps::default();
        assert!(!taps.admit(), "nobody taps");
        let mut sub = taps.subscribe();
        for i in 0..RING + 10 {
            assert!(taps.admit());
            taps.send(event(&format!("r{i}")));
        }
        match sub.next().await {
            Some(Next::Lagged(n)) => assert_eq!(n, 10),
            _ => panic!("the oldest events were lost for the slow reader"),
        }
        match sub.next().await {
            Some(Next::Event(e)) => assert_eq!(e.rule, "r10"),
            _ => panic!("an event"),
        }
        drop(sub);
        assert!(!taps.active());
    }

    #[test]
    fn the_allowance_per_second_is_counted_and_reported() {
        let taps = Taps::default();
        let _sub = taps.subscribe();
        let admitted = (0..MAX_EVENTS_PER_SEC + 5).filter(|_| taps.admit()).count() as u64;
        // Unless the second turned in between, exactly the allowance went through.
        if admitted == MAX_EVENTS_PER_SEC {
            assert_eq!(taps.inner.skipped.load(Ordering::Relaxed), 5);
        }
    }

    #[test]
    fn previews_are_cut_on_a_character() {
        let long = "é".repeat(PREVIEW_BYTES);
        let p = preview(long.as_bytes());
        assert!(p.ends_with('…') && !p.contains('\u{FFFD}'));
        assert!(p.len() <= PREVIEW_BYTES + '…'.len_utf8());
        assert_eq!(preview(b"{}"), "{}");
    }
}
