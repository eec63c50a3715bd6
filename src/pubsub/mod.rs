//! Pub/Sub: a subscriber thread that never goes deaf, dispatching over channels.
//!
//! A [`Subscriber`] owns one named thread (`redkit-subscr`) and one dedicated connection
//! (never a pooled one; on a Cluster, one more per master carrying shard channels: see
//! [On a Cluster](#on-a-cluster)). Other threads ask it to subscribe over a channel; it serves those
//! requests between reads (it reads with a short timeout), so subscribing never waits for a
//! message to arrive, and each call returns once the server has confirmed.
//!
//! Each [`Subscription`] is a bounded queue of [`Message`]s behind a
//! [`crossbeam_channel::Receiver`]: `recv`, `recv_timeout`, iterate, or `select!` across
//! several subscriptions and your other channels. Several subscriptions to one channel each
//! get every message; dropping a subscription unsubscribes on the server when it was the last
//! one for that channel (without waiting; [`Subscription::unsubscribe`] waits for the
//! server's confirmation). Messages are shared between those subscriptions, not copied.
//! [`Subscription::handle`] runs a callback on a dispatcher thread of its own instead: a
//! panic in it is caught, logged and counted, and delivery goes on; dropping the [`Handler`]
//! stops the thread and unsubscribes.
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::Redis;
//! use redkit::pubsub::Subscriber;
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let subscriber = Subscriber::new(&redis)?;
//! let news = subscriber.subscribe(["news"])?;          // confirmed by the server
//! let alerts = subscriber.psubscribe(["alerts.*"])?;   // patterns; ssubscribe: shard channels
//!
//! redis.publish("news", "hello")?;                     // through the pool; returns the receivers
//! let msg = news.recv_timeout(Duration::from_secs(1))?;
//! assert_eq!(msg.payload(), b"hello");
//!
//! crossbeam_channel::select! {
//!     recv(news.receiver()) -> msg => println!("news: {:?}", msg),
//!     recv(alerts.receiver()) -> msg => println!("alert: {:?}", msg),
//!     default(Duration::from_millis(10)) => {}
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Never deaf
//! When no frame arrived for a heartbeat interval (the handle's
//! [`HeartbeatConfig::interval`](crate::HeartbeatConfig::interval), 1 s by default) the thread
//! sends a `PING`; no answer within the heartbeat timeout means a dead or black-holed
//! connection. On any connection loss (that, a reset, the server closing it, `CLIENT KILL`)
//! it emits [`Event::SubscriberDisconnected`](crate::Event::SubscriberDisconnected) on the
//! handle's [events](crate::Redis::events), reconnects with the heartbeat's backoff (first
//! attempt at once), resubscribes every channel, pattern and shard channel, and emits
//! [`Event::Resubscribed`](crate::Event::Resubscribed) with the downtime once the server has
//! confirmed them all. Errors never end the thread; only dropping the [`Subscriber`],
//! [`Subscriber::close`] or closing the handle does. The test suite checks the bound: after a
//! server restart everything is resubscribed within the heartbeat interval plus the reconnect
//! backoff's cap (plus a little slack) of the server coming back, and every message published
//! after [`Event::Resubscribed`](crate::Event::Resubscribed) arrives.
//!
//! **Redis Pub/Sub is at-most-once**: a message published while the subscriber is
//! disconnected is lost, and so is one the subscriber drops under backpressure. Use a
//! [stream](https://redis.io/docs/latest/develop/data-types/streams/) when every message must
//! arrive.
//!
//! ## On a Cluster
//! A subscriber started from a Cluster handle ([`ConfigBuilder::cluster`](crate::ConfigBuilder::cluster)
//! or a `redis+cluster://` URL) works the same way, with these differences:
//!
//! - **Channels and patterns** ([`subscribe`](Subscriber::subscribe),
//!   [`psubscribe`](Subscriber::psubscribe)) go through one connection to any one node (the
//!   first master of the slot map that answers, then the seeds): Redis Cluster forwards every
//!   `PUBLISH` to every node. When that node is lost the subscriber reconnects to another
//!   reachable node and resubscribes, with the same events as against one server.
//! - **Shard channels** ([`ssubscribe`](Subscriber::ssubscribe), Redis 7) are subscribed on the
//!   master that owns the channel's hash slot: the subscriber holds one more connection per
//!   master that carries shard channels (all served by the same thread, and closed when it
//!   carries none). The shard channels of one call must hash to one slot (as Redis requires;
//!   give them a common hash tag such as `{user:1}`); separate calls may land on different
//!   masters. [`Redis::spublish`] on a Cluster handle goes to the owner too.
//! - **A slot moves** (resharding): the old owner drops the channel (Redis 7 sends an
//!   unsolicited `sunsubscribe`), or answers `MOVED`, or the handle's slot map shows another
//!   owner; the subscriber resubscribes the channel on its new owner. Nothing else is touched,
//!   no connection is lost, and no event is emitted (it is logged at `info`).
//! - **A shard connection is lost** (its master died, a replica is being promoted): the
//!   subscriber emits [`Event::SubscriberDisconnected`](crate::Event::SubscriberDisconnected),
//!   refreshes the slot map and subscribes the lost shard channels on their slot's current
//!   owner, retrying with the heartbeat's reconnect backoff until that works (logged at `warn`
//!   on the first failure and every tenth): a channel whose owner cannot be reached is never
//!   given up. Other connections keep delivering meanwhile.
//!   [`Event::Resubscribed`](crate::Event::Resubscribed) comes once every connection is up
//!   and every channel, pattern and shard channel is confirmed again; until then
//!   [`Subscriber::is_connected`] is `false`.
//! - **What is lost**: messages published while a channel is being resubscribed (from the
//!   node's loss or the slot's move to the new owner's confirmation) are not delivered, as
//!   everywhere in Redis pub/sub; a failover takes `cluster-node-timeout` and an election.
//!   Keyspace notifications ([`Subscriber::keyspace`]) are node-local on a Cluster: the
//!   subscriber hears only the node its channel connection is on.
//! - The thread connects to nodes itself, each attempt bounded by the connect timeout: a
//!   black-holed node delays delivery on the other connections by up to that much per attempt.
//!
//! ## Backpressure
//! Each subscription's queue is bounded ([`SubscriptionOptions::capacity`], 4,096 messages by
//! default); when it is full the subscription's [`Backpressure`] policy decides:
//! [`DropOldest`](Backpressure::DropOldest) (the default: the reader sees the freshest
//! messages), [`DropNewest`](Backpressure::DropNewest), or [`Block`](Backpressure::Block).
//! Dropped messages are counted per subscription ([`Subscription::dropped`]) and in
//! [`Subscriber::stats`]. A reader that stops reading holds at most `capacity` messages.
//!
//! `Block` loses nothing in redkit, but while one queue is full the subscriber thread reads
//! nothing, so every subscription of that subscriber stalls; the server buffers meanwhile,
//! and past its `client-output-buffer-limit pubsub` (32 MB, or 8 MB for 60 s, by default) it
//! disconnects the subscriber, and what is published until the resubscription is lost. Give
//! a slow reader a `Subscriber` of its own. Capacity and policy are set per subscription with
//! [`Subscriber::subscribe_with`].
//!
//! ## Keyspace events
//! [`Redis::enable_keyspace_events`] merges event classes (`"A"` for all, or letters such as
//! `"g$x"`) into the server's `notify-keyspace-events` (it needs the `CONFIG` command, which
//! managed services often refuse: set the option in their console instead), and
//! [`Subscriber::keyspace`] subscribes to the notifications of the keys matching a pattern,
//! each a [`KeyEvent`] with the key and the event (`set`, `del`, `expired`...).
//!
//! ```no_run
//! # use redkit::pubsub::Subscriber;
//! # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! # let subscriber = Subscriber::new(&redis)?;
//! redis.enable_keyspace_events("A")?;
//! let users = subscriber.keyspace("user:*")?;
//! for event in users.iter() {
//!     println!("{} on {}", event.event, event.key_str());
//! }
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! ## Typed topics
//! With the `json` feature, a `Topic<T>` publishes and receives values of any `T: Serialize +
//! DeserializeOwned` as JSON. A payload that does not decode comes back as a `DecodeError`
//! holding the raw message, never dropped silently.
//!
//! ## Why not the `redis` crate's `PubSub`
//! Its blocking `get_message` waits without a deadline unless a read timeout is set, so a
//! half-open connection leaves it deaf; nothing reconnects or resubscribes; and it borrows
//! the connection mutably, so no other thread can subscribe while one reads. The subscriber
//! therefore runs on redkit's own connections (the same TCP, TLS or unix socket settings,
//! handshake and deadlines as every other connection of the handle), parsing with the
//! `redis` crate's own parser.
//!
//! `examples/pubsub.rs` in the repository shows a typed topic, `select!` over subscriptions, a
//! handler, keyspace events and a server restart in the middle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{
    bounded, unbounded, Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError,
};
use log::warn;
use redis::ToRedisArgs;

use crate::client::Redis;
use crate::error::{Delivery, Error, Result};
use crate::version::Feature;

mod conn;
mod frame;
mod handler;
mod keyspace;
mod message;
#[cfg(feature = "json")]
mod topic;
mod worker;

pub use frame::Kind;
pub use handler::Handler;
pub use keyspace::{KeyEvent, KeyEvents};
pub use message::{Backpressure, Message, SubscriptionOptions};
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use topic::{DecodeError, Topic, TopicSubscription};

use message::{Sink, SubCounters};
use worker::{Control, Counters, Settings, Worker};

/// How long the subscriber thread waits in one read before it looks for requests.
const TICK: Duration = Duration::from_millis(10);

/// The subscriber: one thread and one dedicated connection (on a Cluster: one more per
/// master carrying shard channels) serving any number of [`Subscription`]s. See the
/// [module docs](self).
///
/// `Send + Sync`: share it (in an `Arc`) and subscribe from any thread. Dropping it stops the
/// thread (joined) and closes its connection; its subscriptions then end (`recv` returns
/// `Err(RecvError)`).
pub struct Subscriber {
    redis: Redis,
    ctl: Sender<Control>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("addr", &self.redis.config().addr())
            .field("connected", &self.counters.connected.load(Relaxed))
            .field("subscriptions", &self.counters.subscriptions.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// `PUBLISH`: sends `payload` to every subscriber of `channel`; returns how many
    /// received it (on Cluster: the clients of the node that ran it). Not retried when its
    /// fate is unknown (it would publish twice).
    pub fn publish<C: ToRedisArgs, P: ToRedisArgs>(&self, channel: C, payload: P) -> Result<usize> {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload))
    }

    /// `SPUBLISH` (Redis 7.0 and later, Valkey): publishes to a shard channel; returns how
    /// many received it. On an older server, [`Error::ServerTooOld`] and nothing is sent.
    pub fn spublish<C: ToRedisArgs, P: ToRedisArgs>(
        &self,
        channel: C,
        payload: P,
    ) -> Result<usize> {
        self.require(Feature::ShardedPubSub)?;
        self.query(redis::cmd("SPUBLISH").arg(channel).arg(payload))
    }
}

fn names<I, C>(items: I) -> Result<Vec<Vec<u8>>>
where
    I: IntoIterator<Item = C>,
    C: AsRef<[u8]>,
{
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in items {
        let c = c.as_ref();
        if !out.iter().any(|x| x.as_slice() == c) {
            out.push(c.to_vec());
        }
    }
    if out.is_empty() {
        return Err(Error::config(
            "subscribe",
            "at least one channel or pattern is needed",
        ));
    }
    Ok(out)
}

fn not_confirmed(waited: Duration) -> Error {
    Error::io(
        std::io::ErrorKind::TimedOut,
        format!("the subscription was not confirmed within {waited:?}"),
        Delivery::Unknown,
    )
}

impl Subscriber {
    /// Starts a subscriber for `redis`: its thread and its connection (see the
    /// [module docs](self)).
    pub fn new(redis: &Redis) -> Result<Subscriber> {
        if redis.is_closed() {
            return Err(Error::Closed);
        }
        let config = redis.config().clone();
        let main = worker::open_main(redis.connector(), redis.pool_state(), TICK)?;
        let hb = &config.heartbeat;
        let settings = Settings {
            tick: main.1.tick(),
            ping_interval: hb.interval.unwrap_or(Duration::from_secs(1)),
            ping_timeout: hb.timeout,
        };
        let (ctl_tx, ctl_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded(0);
        let counters = Arc::new(Counters {
            dropped_export: redis.export().counter("redkit_subscriber_dropped_total"),
            ..Counters::default()
        });
        let worker = Worker::new(
            redis.connector().clone(),
            settings,
            redis.pool_state().clone(),
            counters.clone(),
            ctl_rx,
            stop_rx,
            main,
        );
        let thread = std::thread::Builder::new()
            .name("redkit-subscr".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::Background {
                thread: "redkit-subscr",
                reason: format!("could not start: {e}"),
            })?;
        Ok(Subscriber {
            redis: redis.clone(),
            ctl: ctl_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
            counters,
            next_id: AtomicU64::new(1),
        })
    }

    /// The handle this subscriber belongs to.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// `SUBSCRIBE` to channels, with the default [`SubscriptionOptions`].
    ///
    /// Returns once the server confirmed every channel (or fails after the handle's response
    /// timeout, for example while the subscriber is reconnecting).
    pub fn subscribe<I, C>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        self.subscribe_with(Kind::Channel, channels, SubscriptionOptions::default())
    }

    /// `PSUBSCRIBE` to glob patterns (`news.*`), with the default [`SubscriptionOptions`].
    pub fn psubscribe<I, C>(&self, patterns: I) -> Result<Subscription>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        self.subscribe_with(Kind::Pattern, patterns, SubscriptionOptions::default())
    }

    /// `SSUBSCRIBE` to shard channels (sharded pub/sub: Redis 7.0 and later, Valkey), with
    /// the default [`SubscriptionOptions`]. On an older server, [`Error::ServerTooOld`] and
    /// nothing is sent. On a Cluster the subscription goes to the master owning the
    /// channels' slot, and all channels of one call must hash to one slot (an
    /// [`ErrorClass::Config`](crate::ErrorClass::Config) error otherwise); see
    /// [the module docs](self#on-a-cluster).
    pub fn ssubscribe<I, C>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        self.subscribe_with(Kind::Shard, channels, SubscriptionOptions::default())
    }

    /// Subscribes with explicit options (queue length, backpressure, confirmation timeout).
    ///
    /// ```no_run
    /// use redkit::pubsub::{Backpressure, Kind, Subscriber, SubscriptionOptions};
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let subscriber = Subscriber::new(&redis)?;
    /// let orders = subscriber.subscribe_with(
    ///     Kind::Channel,
    ///     ["orders"],
    ///     SubscriptionOptions::default().capacity(100_000).backpressure(Backpressure::DropNewest),
    /// )?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn subscribe_with<I, C>(
        &self,
        kind: Kind,
        names: I,
        options: SubscriptionOptions,
    ) -> Result<Subscription>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        let names = self::names(names)?;
        if kind == Kind::Shard {
            self.redis.require(Feature::ShardedPubSub)?;
        }
        if kind == Kind::Shard && self.redis.pool_state().cluster.is_some() {
            let slot = |n: &Vec<u8>| crate::cluster::route::slot(n);
            if names.windows(2).any(|w| slot(&w[0]) != slot(&w[1])) {
                return Err(Error::config(
                    "ssubscribe",
                    "on a Cluster the shard channels of one call must hash to one slot \
                     (give them a common hash tag, such as {user:1}.a and {user:1}.b, or \
                     subscribe in several calls)",
                ));
            }
        }
        if options.capacity == 0 {
            return Err(Error::config("subscription.capacity", "must be at least 1"));
        }
        if options.capacity > MAX_CAPACITY {
            return Err(Error::config(
                "subscription.capacity",
                format!("must be at most {MAX_CAPACITY} messages"),
            ));
        }
        if self.redis.is_closed() {
            return Err(Error::Closed);
        }
        let (tx, rx) = bounded(options.capacity);
        let counters = Arc::new(SubCounters::default());
        let sink = Sink {
            tx,
            oldest: (options.backpressure == Backpressure::DropOldest).then(|| rx.clone()),
            policy: options.backpressure,
            counters: counters.clone(),
        };
        let id = self.next_id.fetch_add(1, Relaxed);
        let (reply_tx, reply_rx) = bounded(1);
        self.ctl
            .send(Control::Subscribe {
                id,
                kind,
                names: names.clone(),
                sink,
                reply: reply_tx,
            })
            .map_err(|_| Error::Closed)?;
        let timeout = options
            .timeout
            .unwrap_or(self.redis.config().timeouts().response_timeout());
        let subscription = Subscription {
            id,
            kind,
            names,
            rx,
            counters,
            subscriber: self.counters.clone(),
            ctl: self.ctl.clone(),
            active: true,
        };
        match reply_rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(e)) => {
                let mut s = subscription;
                s.active = false;
                Err(e)
            }
            // Dropping `subscription` withdraws the request.
            Err(RecvTimeoutError::Timeout) => Err(not_confirmed(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                let mut s = subscription;
                s.active = false;
                Err(Error::Closed)
            }
        }
    }

    /// Keyspace notifications for keys matching `key_pattern` (a glob, the full key name
    /// including any key prefix): a `PSUBSCRIBE` to `__keyspace@<db>__:<key_pattern>`.
    ///
    /// The server only sends them when `notify-keyspace-events` is set: call
    /// [`Redis::enable_keyspace_events`] once (or configure the server).
    pub fn keyspace(&self, key_pattern: &str) -> Result<KeyEvents> {
        self.keyspace_with(key_pattern, SubscriptionOptions::default())
    }

    /// [`Subscriber::keyspace`] with explicit options.
    pub fn keyspace_with(
        &self,
        key_pattern: &str,
        options: SubscriptionOptions,
    ) -> Result<KeyEvents> {
        let prefix = format!("__keyspace@{}__:", self.redis.config().db());
        let sub =
            self.subscribe_with(Kind::Pattern, [format!("{prefix}{key_pattern}")], options)?;
        Ok(KeyEvents::new(sub, prefix.len()))
    }

    /// Whether the subscriber's connection is up right now (on a Cluster: its channel
    /// connection, and every shard channel is on a connection to its slot's owner).
    pub fn is_connected(&self) -> bool {
        self.counters.connected.load(Relaxed)
    }

    /// A snapshot of the subscriber's counters.
    pub fn stats(&self) -> SubscriberStats {
        let c = &self.counters;
        let last = *c.last.lock();
        SubscriberStats {
            connected: c.connected.load(Relaxed),
            subscriptions: c.subscriptions.load(Relaxed),
            channels: c.names[0].load(Relaxed),
            patterns: c.names[1].load(Relaxed),
            shard_channels: c.names[2].load(Relaxed),
            received: c.received.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            unrouted: c.unrouted.load(Relaxed),
            handler_panics: c.handler_panics.load(Relaxed),
            disconnections: c.disconnections.load(Relaxed),
            resubscriptions: c.resubscriptions.load(Relaxed),
            last_resubscribed: last.resubscribed_at,
            last_downtime: last.downtime,
            ping_latency: last.ping,
        }
    }

    /// Stops the thread (waiting for it) and closes the connection; subscriptions end.
    /// Dropping the subscriber does the same, logging what this returns.
    pub fn close(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        self.counters.stopping.store(true, Relaxed);
        self.stop.take();
        let joined = self
            .thread
            .take()
            .map_or(Ok(()), |t| crate::util::threads::join_within(t, STOP_BOUND));
        joined.map_err(|reason| Error::Background {
            thread: "redkit-subscr",
            reason,
        })
    }
}

/// The largest queue a subscription may have, in messages ([`SubscriptionOptions::capacity`]).
pub const MAX_CAPACITY: usize = 1 << 24;

/// How long dropping a [`Subscriber`] (or [`Subscriber::close`]) waits for its thread at
/// most; a connect in flight then ends by itself within the connect timeout.
pub const STOP_BOUND: Duration = Duration::from_millis(100);

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            warn!("redis at {}: {e}", self.redis.config().addr());
        }
    }
}

/// A snapshot of a [`Subscriber`]'s counters.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Whether the connection is up (see [`Subscriber::is_connected`]).
    pub connected: bool,
    /// Live [`Subscription`]s.
    pub subscriptions: usize,
    /// Distinct channels subscribed.
    pub channels: usize,
    /// Distinct patterns subscribed.
    pub patterns: usize,
    /// Distinct shard channels subscribed.
    pub shard_channels: usize,
    /// Messages read from the server.
    pub received: u64,
    /// Messages queued to subscriptions (a message for two subscriptions counts twice).
    pub delivered: u64,
    /// Messages dropped under backpressure, over all subscriptions.
    pub dropped: u64,
    /// Messages for which no subscription was left (one that just unsubscribed).
    pub unrouted: u64,
    /// Panics caught in [`Handler`] callbacks.
    pub handler_panics: u64,
    /// Times the connection was lost.
    pub disconnections: u64,
    /// Times everything was resubscribed after a loss.
    pub resubscriptions: u64,
    /// When the last resubscription completed.
    pub last_resubscribed: Option<SystemTime>,
    /// How long the last outage lasted (loss to last confirmation).
    pub last_downtime: Option<Duration>,
    /// The last `PING` round trip (sent only when the connection is idle).
    pub ping_latency: Option<Duration>,
}

/// One subscription: a bounded queue of [`Message`]s. See the [module docs](self).
///
/// Dropping it unsubscribes on the server (without waiting) when no other subscription
/// wants the same names; [`Subscription::unsubscribe`] waits for the confirmation.
#[must_use = "dropping a Subscription unsubscribes"]
pub struct Subscription {
    id: u64,
    kind: Kind,
    names: Vec<Vec<u8>>,
    rx: Receiver<Message>,
    counters: Arc<SubCounters>,
    subscriber: Arc<Counters>,
    ctl: Sender<Control>,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .names
            .iter()
            .map(|n| String::from_utf8_lossy(n))
            .collect();
        f.debug_struct("Subscription")
            .field("kind", &self.kind)
            .field("names", &names)
            .field("queued", &self.rx.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next message. `Err` once the subscriber has stopped (dropped, closed,
    /// or its handle closed) and the queue is empty.
    pub fn recv(&self) -> std::result::Result<Message, RecvError> {
        self.rx.recv()
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> std::result::Result<Message, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The next message if one is queued; never blocks.
    pub fn try_recv(&self) -> std::result::Result<Message, TryRecvError> {
        self.rx.try_recv()
    }

    /// A blocking iterator over messages; ends when the subscriber stops.
    pub fn iter(&self) -> crossbeam_channel::Iter<'_, Message> {
        self.rx.iter()
    }

    /// The receiver itself, for `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<Message> {
        &self.rx
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Messages dropped under backpressure so far.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// Messages queued to this subscription so far.
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Relaxed)
    }

    /// The kind of subscription.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The channels, patterns or shard channels subscribed.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.names.iter().map(Vec::as_slice)
    }

    /// Unsubscribes and waits for the server's confirmation (when no other subscription
    /// wants the same names). Messages still queued are discarded.
    pub fn unsubscribe(mut self) -> Result<()> {
        self.active = false;
        let (tx, rx) = bounded(1);
        if self
            .ctl
            .send(Control::Unsubscribe {
                id: self.id,
                reply: Some(tx),
            })
            .is_err()
        {
            return Ok(());
        }
        match rx.recv() {
            Ok(result) => result,
            // The subscriber stopped: nothing is subscribed any more.
            Err(_) => Ok(()),
        }
    }

    /// Runs `handler` for every message on a dispatcher thread (`redkit-dispatch`). A panic
    /// in the handler is caught, logged and counted
    /// ([`SubscriberStats::handler_panics`]); delivery goes on with the next message.
    /// Dropping the [`Handler`] stops the thread and unsubscribes.
    ///
    /// ```no_run
    /// # use redkit::pubsub::Subscriber;
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let subscriber = Subscriber::new(&redis)?;
    /// let handler = subscriber.subscribe(["jobs"])?.handle(|msg| {
    ///     log::info!("job: {:?}", msg.payload_str());
    /// })?;
    /// // ... later
    /// drop(handler);
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn handle<F>(self, handler: F) -> Result<Handler>
    where
        F: FnMut(Message) + Send + 'static,
    {
        Handler::spawn(self, handler)
    }

    pub(crate) fn subscriber_counters(&self) -> &Arc<Counters> {
        &self.subscriber
    }
}

impl<'a> IntoIterator for &'a Subscription {
    type Item = Message;
    type IntoIter = crossbeam_channel::Iter<'a, Message>;

    fn into_iter(self) -> Self::IntoIter {
        self.rx.iter()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            let _ = self.ctl.send(Control::Unsubscribe {
                id: self.id,
                reply: None,
            });
        }
    }
}
