//! Shared subscription connections: the channel and pattern rules of one `connections:` entry
//! subscribe through one Redis connection (a *link*) instead of one each, so ten thousand
//! rules are one Redis client, not ten thousand (`maxclients` is 10,000 by default).
//!
//! A link owns its connection and one task that reads it. Rules *register* a topic (a channel,
//! a pattern or a sharded channel) with a [`Feed`]: their own buffer, status and counters. The
//! task keeps the connection's subscriptions equal to the registered topics (it alone sends
//! SUBSCRIBE and UNSUBSCRIBE, so a topic dropped by one rule and taken by another at the same
//! moment cannot end up unsubscribed) and hands each message to every feed of its topic: two
//! rules on one channel each get every message, and a channel rule and a pattern rule that both
//! match get it once each (Redis sends a `message` and a `pmessage`).
//!
//! The reader never waits for a rule on a shared link: a full buffer drops by its rule's own
//! policy. A rule with `overflow: block` gets a link of its own, where waiting slows nobody
//! else. When the connection drops, every rule of the link is marked `Retrying`; the task
//! reconnects with backoff, subscribes everything again and counts a reconnect for each rule.
//! On a cluster, redis-rs resubscribes by itself and says so with pushes.
//!
//! A registration ends when it is dropped, whether its rule closed or was aborted: the topic is
//! unsubscribed when no other rule needs it, and the link's task ends with its last
//! registration. Nothing runs for a rule that is gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::SourceError;
use super::buffer::Buffer;
use crate::config::{ConnectionSpec, Overflow};
use crate::message::{Body, Message, Meta, SourceKind};
use crate::redis_conn;
use crate::stats::{RuleState, RuleStats, RuleStatus};

/// First delay before reconnecting; doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// Cap on the reconnect delay: a restarted Redis is picked up within this long.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// How long a registration waits for its topic to be confirmed before it fails (the rule then
/// retries): a connect timeout plus a generous reply time.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Topics per SUBSCRIBE / PSUBSCRIBE command when many are (re)subscribed at once: one command
/// with ten thousand arguments is one round trip, but a huge one; a thousand keeps each reply
/// small.
const TOPICS_PER_COMMAND: usize = 1000;

/// What a rule subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum TopicKind {
    /// SUBSCRIBE.
    Channel,
    /// PSUBSCRIBE.
    Pattern,
    /// SSUBSCRIBE (cluster only).
    Sharded,
}

/// A channel, pattern or sharded channel as Redis holds it (the connection's prefix added).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Topic {
    pub(super) kind: TopicKind,
    pub(super) name: String,
}

/// One rule's end of a subscription: where the reader puts its messages, and whom it tells
/// when the subscription is lost or back.
pub(super) struct Feed {
    pub(super) buffer: Arc<Buffer>,
    pub(super) status: Arc<RuleStatus>,
    pub(super) stats: Arc<RuleStats>,
    pub(super) rule: Arc<str>,
    /// The rule's pattern as it wrote it, for `{{meta.pattern}}`.
    pub(super) pattern: Option<String>,
    pub(super) source: SourceKind,
}

/// The subscription connections of one process (one [`crate::engine::Supervisor`]), keyed by
/// connection. Cloning shares it.
#[derive(Clone, Default)]
pub struct PubSubHub {
    links: Arc<Mutex<Vec<LinkEntry>>>,
}

struct LinkEntry {
    connection: Arc<ConnectionSpec>,
    /// `Some` for a link of one `overflow: block` rule.
    exclusive: Option<u64>,
    link: Arc<Link>,
    /// Registrations holding the link; it closes at zero.
    users: usize,
}

/// One subscription connection and what it carries.
struct Link {
    connection: Arc<ConnectionSpec>,
    /// Only one rule (`overflow: block`): the reader may wait for it.
    exclusive: bool,
    state: Mutex<LinkState>,
    /// Registered topics changed: the task brings the connection's subscriptions in line.
    nudge: Notify,
    /// Topics were confirmed or a connect failed: waiting registrations look again.
    changed: Notify,
    /// Cancelled when the last registration ends.
    stop: CancellationToken,
}

#[derive(Default)]
struct LinkState {
    routes: HashMap<Topic, Route>,
    /// Connect attempts that failed, so that a waiting registration notices a new one.
    failures: u64,
    last_error: Option<String>,
}

struct Route {
    feeds: Vec<Arc<Feed>>,
    /// Subscribed on the current connection.
    confirmed: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // Every update under this lock is a single insert or flag; a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A rule's registration on a link; dropping it ends the registration (see the module doc).
pub(super) struct Registration {
    hub: PubSubHub,
    link: Arc<Link>,
    topic: Topic,
    feed: Arc<Feed>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut state = self.link.lock();
            if let Some(route) = state.routes.get_mut(&self.topic) {
                route.feeds.retain(|f| !Arc::ptr_eq(f, &self.feed));
                if route.feeds.is_empty() {
                    state.routes.remove(&self.topic);
                    self.link.nudge.notify_one();
                }
            }
        }
        let mut links = self.hub.lock();
        if let Some(i) = links.iter().position(|e| Arc::ptr_eq(&e.link, &self.link)) {
            links[i].users -= 1;
            if links[i].users == 0 {
                links.swap_remove(i);
                self.link.stop.cancel();
            }
        }
    }
}

impl PubSubHub {
    fn lock(&self) -> MutexGuard<'_, Vec<LinkEntry>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `feed` for `topic` on `connection`'s shared link (its own link for
    /// `overflow: block`), and wait until Redis has confirmed the subscription.
    ///
    /// # Errors
    /// When the link cannot connect, or the subscription is not confirmed within
    /// [`SUBSCRIBE_TIMEOUT`]; the registration is then already undone.
    pub(super) async fn register(
        &self,
        connection: &Arc<ConnectionSpec>,
        topic: Topic,
        feed: Feed,
    ) -> Result<Registration, SourceError> {
        let exclusive = feed.buffer.overflow() == Overflow::Block;
        let feed = Arc::new(feed);
        let link = self.acquire(connection, exclusive);
        let registration = Registration {
            hub: self.clone(),
            link: link.clone(),
            topic: topic.clone(),
            feed: feed.clone(),
        };
        let failures_before = {
            let mut state = link.lock();
            let route = state.routes.entry(topic.clone()).or_insert_with(|| Route {
                feeds: Vec::new(),
                confirmed: false,
            });
            route.feeds.push(feed);
            if !route.confirmed {
                link.nudge.notify_one();
            }
            state.failures
        };
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            let changed = link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = link.lock();
                if state.routes.get(&topic).is_some_and(|r| r.confirmed) {
                    return Ok(registration);
                }
                if state.failures > failures_before {
                    return Err(SourceError::Protocol {
                        op: topic.kind.op(),
                        key: topic.name.clone(),
                        detail: state.last_error.clone().unwrap_or_else(|| "cannot connect".into()),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(SourceError::Protocol {
                    op: topic.kind.op(),
                    key: topic.name.clone(),
                    detail: format!("not confirmed within {} s", SUBSCRIBE_TIMEOUT.as_secs()),
                });
            }
        }
    }

    /// The link for `connection`, created (and its task started) when there is none.
    fn acquire(&self, connection: &Arc<ConnectionSpec>, exclusive: bool) -> Arc<Link> {
        let mut links = self.lock();
        if !exclusive
            && let Some(e) = links
                .iter_mut()
                .find(|e| e.exclusive.is_none() && *e.connection == **connection)
        {
            e.users += 1;
            return e.link.clone();
        }
        let link = Arc::new(Link {
            connection: connection.clone(),
            exclusive,
            state: Mutex::new(LinkState::default()),
            nudge: Notify::new(),
            changed: Notify::new(),
            stop: CancellationToken::new(),
        });
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        links.push(LinkEntry {
            connection: connection.clone(),
            exclusive: exclusive.then(|| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            link: link.clone(),
            users: 1,
        });
        let span = tracing::error_span!("pubsub", connection = %connection.name);
        tokio::spawn(run_link(link.clone()).instrument(span));
        link
    }
}

impl TopicKind {
    fn op(self) -> &'static str {
        match self {
            TopicKind::Channel => "SUBSCRIBE",
            TopicKind::Pattern => "PSUBSCRIBE",
            TopicKind::Sharded => "SSUBSCRIBE",
        }
    }
}

/// A subscription connection to one server or to a cluster.
enum Wire {
    /// redis-rs's Pub/Sub connection: the sink subscribes, the stream ends when the
    /// connection drops (redis-rs never resubscribes it; the link's task does).
    Single {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    /// A cluster: messages arrive as RESP3 pushes. redis-rs resubscribes by itself when a node
    /// is lost or a channel's slot moves, and says so with a `Disconnection` push, then new
    /// subscription confirmations.
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

/// What the wire produced.
enum Incoming {
    /// A message; `sharded` when it came from SSUBSCRIBE.
    Message { msg: redis::Msg, sharded: bool },
    /// A cluster node holding subscriptions was lost; redis-rs is resubscribing.
    Down,
    /// A subscription was (re)confirmed by the cluster.
    Up,
}

impl Wire {
    async fn connect(spec: &ConnectionSpec) -> redis::RedisResult<Wire> {
        if spec.cluster {
            let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
            let conn = redis_conn::cluster_pubsub(spec, tx).await?;
            return Ok(Wire::Cluster { conn, pushes });
        }
        let (sink, stream) = redis_conn::pubsub(spec).await?.split();
        Ok(Wire::Single { sink, stream })
    }

    /// The next message or event; `None` once the connection is gone.
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Wire::Single { stream, .. } => stream.next().await.map(|msg| Incoming::Message { msg, sharded: false }),
            Wire::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    redis::PushKind::Disconnection => return Some(Incoming::Down),
                    redis::PushKind::Subscribe | redis::PushKind::PSubscribe | redis::PushKind::SSubscribe => {
                        return Some(Incoming::Up);
                    }
                    _ => {
                        let sharded = push.kind == redis::PushKind::SMessage;
                        if let Some(msg) = redis::Msg::from_push_info(push) {
                            return Some(Incoming::Message { msg, sharded });
                        }
                    }
                }
            },
        }
    }

    /// Subscribe (`on`) or unsubscribe topics of one kind, waiting for Redis's confirmations.
    async fn change(&mut self, kind: TopicKind, names: &[&str], on: bool) -> redis::RedisResult<()> {
        let change = async {
            match self {
                Wire::Single { sink, .. } => match (kind, on) {
                    (TopicKind::Pattern, true) => sink.psubscribe(names).await,
                    (TopicKind::Pattern, false) => sink.punsubscribe(names).await,
                    (_, true) => sink.subscribe(names).await,
                    (_, false) => sink.unsubscribe(names).await,
                },
                Wire::Cluster { conn, .. } => match (kind, on) {
                    (TopicKind::Pattern, true) => conn.psubscribe(names).await,
                    (TopicKind::Pattern, false) => conn.punsubscribe(names).await,
                    (TopicKind::Channel, true) => conn.subscribe(names).await,
                    (TopicKind::Channel, false) => conn.unsubscribe(names).await,
                    // A sharded channel lives on the node that owns its slot: one command each.
                    (TopicKind::Sharded, on) => {
                        for name in names {
                            if on {
                                conn.ssubscribe(name).await?;
                            } else {
                                conn.sunsubscribe(name).await?;
                            }
                        }
                        Ok(())
                    }
                },
            }
        };
        tokio::time::timeout(redis_conn::COMMAND_TIMEOUT, change)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscription change not confirmed",
                )))
            })
    }
}

/// Why a connection's session ended.
enum SessionEnd {
    /// The last registration went away.
    Stopped,
    /// The connection was lost or a subscription change failed.
    Lost,
}

/// The link's task: connect, subscribe what is registered, read and dispatch, and start again
/// whenever the connection is lost, until the last registration ends.
async fn run_link(link: Arc<Link>) {
    let mut delay = FIRST_RECONNECT_DELAY;
    // Set while the subscriptions are down (not at the first connect).
    let mut down_since: Option<Instant> = None;
    loop {
        let wire = tokio::select! {
            biased;
            _ = link.stop.cancelled() => return,
            wire = Wire::connect(&link.connection) => wire,
        };
        let mut wire = match wire {
            Ok(wire) => wire,
            Err(e) => {
                debug!(error = %e, "Subscription connection failed.");
                {
                    let mut state = link.lock();
                    state.failures += 1;
                    state.last_error = Some(e.to_string());
                }
                link.changed.notify_waiters();
                tokio::select! {
                    _ = link.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        delay = FIRST_RECONNECT_DELAY;
        match session(&link, &mut wire, &mut down_since).await {
            SessionEnd::Stopped => return,
            SessionEnd::Lost => {
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    subscriptions_lost(&link);
                }
            }
        }
    }
}

/// One connection's life: subscribe everything registered, then read and dispatch, following
/// registrations as they come and go.
async fn session(link: &Link, wire: &mut Wire, down_since: &mut Option<Instant>) -> SessionEnd {
    let mut on_wire: HashSet<Topic> = HashSet::new();
    if reconcile(link, wire, &mut on_wire).await.is_err() {
        return SessionEnd::Lost;
    }
    if let Some(since) = down_since.take() {
        resubscribed(link, since);
    }
    loop {
        let incoming = tokio::select! {
            biased;
            _ = link.stop.cancelled() => return SessionEnd::Stopped,
            _ = link.nudge.notified() => {
                if reconcile(link, wire, &mut on_wire).await.is_err() {
                    return SessionEnd::Lost;
                }
                continue;
            }
            incoming = wire.next() => incoming,
        };
        match incoming {
            None => return SessionEnd::Lost,
            Some(Incoming::Message { msg, sharded }) => dispatch(link, msg, sharded).await,
            Some(Incoming::Down) => {
                if down_since.is_none() {
                    *down_since = Some(Instant::now());
                    subscriptions_lost(link);
                }
            }
            Some(Incoming::Up) => {
                if let Some(since) = down_since.take() {
                    resubscribed(link, since);
                }
            }
        }
    }
}

/// Make the connection's subscriptions those registered: subscribe what is new, unsubscribe
/// what no rule needs any more, then mark what is subscribed as confirmed.
async fn reconcile(link: &Link, wire: &mut Wire, on_wire: &mut HashSet<Topic>) -> Result<(), ()> {
    let (add, remove): (Vec<Topic>, Vec<Topic>) = {
        let state = link.lock();
        let add = state.routes.keys().filter(|t| !on_wire.contains(*t)).cloned().collect();
        let remove = on_wire
            .iter()
            .filter(|t| !state.routes.contains_key(*t))
            .cloned()
            .collect();
        (add, remove)
    };
    for (topics, on) in [(&add, true), (&remove, false)] {
        for kind in [TopicKind::Channel, TopicKind::Pattern, TopicKind::Sharded] {
            let names: Vec<&str> = topics
                .iter()
                .filter(|t| t.kind == kind)
                .map(|t| t.name.as_str())
                .collect();
            for chunk in names.chunks(TOPICS_PER_COMMAND) {
                if let Err(e) = wire.change(kind, chunk, on).await {
                    debug!(error = %e, op = kind.op(), on, "Subscription change failed; reconnecting.");
                    return Err(());
                }
            }
        }
    }
    on_wire.extend(add);
    for t in &remove {
        on_wire.remove(t);
    }
    {
        let mut state = link.lock();
        for (topic, route) in state.routes.iter_mut() {
            route.confirmed = on_wire.contains(topic);
        }
    }
    link.changed.notify_waiters();
    Ok(())
}

/// Hand a message to every rule registered for it. On a shared link this never waits: a full
/// buffer drops by its rule's policy. On a link of one `overflow: block` rule it waits for room.
async fn dispatch(link: &Link, msg: redis::Msg, sharded: bool) {
    let topic = match msg.get_pattern::<Option<String>>() {
        Ok(Some(pattern)) => Topic {
            kind: TopicKind::Pattern,
            name: pattern,
        },
        _ => Topic {
            kind: if sharded {
                TopicKind::Sharded
            } else {
                TopicKind::Channel
            },
            name: msg.get_channel_name().to_string(),
        },
    };
    let channel = redis_conn::unprefixed(&link.connection, msg.get_channel_name());
    let payload = msg.get_payload_bytes();
    let message = |feed: &Feed| {
        Message::new(
            Body::Bytes(payload.to_vec()),
            Meta {
                rule: feed.rule.clone(),
                source: feed.source,
                key: channel.to_string(),
                pattern: feed.pattern.clone(),
                id: None,
                received: SystemTime::now(),
                deliveries: 1,
                fields: Vec::new(),
                problem: None,
            },
        )
    };
    let waiting: Vec<(Arc<Feed>, Message)> = {
        let state = link.lock();
        let Some(route) = state.routes.get(&topic) else {
            return;
        };
        let mut waiting = Vec::new();
        for feed in &route.feeds {
            if let Some(msg) = feed.buffer.offer(message(feed)) {
                if link.exclusive {
                    waiting.push((feed.clone(), msg));
                } else {
                    // A `block` rule always has a link of its own; never wait on a shared one.
                    RuleStats::add(&feed.stats.overflowed, 1);
                }
            }
        }
        waiting
    };
    for (feed, msg) in waiting {
        feed.buffer.push_waiting(msg, &link.stop).await;
    }
}

fn feeds(link: &Link) -> Vec<Arc<Feed>> {
    link.lock()
        .routes
        .values()
        .flat_map(|r| r.feeds.iter().cloned())
        .collect()
}

fn subscriptions_lost(link: &Link) {
    {
        let mut state = link.lock();
        for route in state.routes.values_mut() {
            route.confirmed = false;
        }
    }
    let feeds = feeds(link);
    for feed in &feeds {
        if feed.status.get() == RuleState::Running {
            feed.status.set(RuleState::Retrying);
        }
        feed.status.set_error("Pub/Sub subscription lost; resubscribing".into());
    }
    warn!(
        rules = feeds.len(),
        "Subscription connection lost; messages published until it is back are missed. Reconnecting."
    );
}

fn resubscribed(link: &Link, since: Instant) {
    let feeds = feeds(link);
    for feed in &feeds {
        RuleStats::add(&feed.stats.reconnects, 1);
        if feed.status.get() == RuleState::Retrying {
            feed.status.set(RuleState::Running);
        }
    }
    info!(
        rules = feeds.len(),
        down_ms = since.elapsed().as_millis() as u64,
        "Resubscribed."
    );
}
