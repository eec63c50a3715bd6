//! Lifecycle events: what happened to the connection, delivered over bounded channels.
//!
//! Ask a [`Redis`](crate::Redis) handle for a listener with [`Redis::events`](crate::Redis::events)
//! (or [`Redis::events_with_capacity`](crate::Redis::events_with_capacity)): each listener is
//! its own bounded [`crossbeam_channel::Receiver`], so you can `recv`, `recv_timeout`, iterate,
//! or `select!` over it together with your other channels. Any number of listeners may exist;
//! every one gets every event.
//!
//! Events are sent with `try_send`: a listener whose queue is full **loses** the event (counted
//! in [`Stats::events_dropped`](crate::Stats::events_dropped)); it never slows down the thread
//! that emitted it (the heartbeat thread, or a caller whose command tripped the breaker).
//! Dropping a receiver unsubscribes it.
//!
//! ```no_run
//! use redkit::{Event, Redis};
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let events = redis.events();
//! std::thread::Builder::new().name("redis-events".into()).spawn(move || {
//!     for event in events {
//!         match event {
//!             Event::Disconnected { cause } => eprintln!("redis is down: {cause}"),
//!             Event::Reconnected { downtime, .. } => eprintln!("redis is back after {downtime:?}"),
//!             other => eprintln!("{other}"),
//!         }
//!     }
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same state changes are logged (see the crate docs' logging policy): connection state
//! changes at `info`, a reconnect loop that gives up and a breaker that opens at `warn`,
//! each reconnect attempt at `debug`.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::breaker::BreakerState;
use crate::error::Error;

/// The health of the connection to the server, as the heartbeat sees it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// The last heartbeat `PING` was answered within the
    /// [slow threshold](crate::HeartbeatConfig::slow_ping).
    Healthy,
    /// The server answers, but the last heartbeat `PING` was slower than the slow threshold
    /// (an overloaded server or network).
    Degraded,
    /// The heartbeat lost its connection and has not reconnected yet (also the state of a
    /// [lazily](crate::Redis::connect_lazy) created handle until its first `PING` answers).
    Down,
}

impl Health {
    pub(crate) fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Healthy,
            1 => Health::Degraded,
            _ => Health::Down,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Down => 2,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        })
    }
}

/// Something that happened to a [`Redis`](crate::Redis) handle's connection.
///
/// During an outage the heartbeat emits, in this order: [`Event::HeartbeatFailed`],
/// [`Event::Disconnected`], [`Event::HealthChanged`] (to `Down`), then for each attempt
/// [`Event::Reconnecting`] (or, at the attempt or time limit, [`Event::ReconnectGaveUp`]),
/// and when the server answers again [`Event::BreakerChanged`] (to `Closed`, if the breaker
/// had opened), [`Event::HealthChanged`] (back to `Healthy`) and [`Event::Reconnected`]: by the
/// time a listener sees `Reconnected`, [`Redis::health`](crate::Redis::health) says `Healthy`
/// and calls use fresh connections.
/// Calls that time out waiting for a connection add [`Event::PoolExhausted`], and the breaker
/// reports its own changes as they happen.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Event {
    /// The heartbeat made its first connection (a lazily created handle).
    Connected,
    /// A heartbeat `PING` failed (no answer within the deadline, or a connection error).
    HeartbeatFailed {
        /// Why.
        error: Error,
    },
    /// The connection to the server is considered lost: the heartbeat failed. Calls now fail
    /// fast or wait, as the [crate docs](crate#resilience) describe.
    Disconnected {
        /// The error that showed it.
        cause: Error,
    },
    /// The heartbeat is about to try to reconnect, after `delay`.
    Reconnecting {
        /// 1 for the first attempt after the loss.
        attempt: u32,
        /// How long it waits before this attempt at most (zero for the first; cut short when
        /// a call reaches the server, or to the backoff base while calls keep failing).
        delay: Duration,
    },
    /// The server answers again. Every pooled connection made before the outage has been
    /// retired and the breaker closed, so calls from now on use fresh connections.
    Reconnected {
        /// Time from the loss ([`Event::Disconnected`]) to now.
        downtime: Duration,
        /// Reconnect attempts it took.
        attempts: u32,
    },
    /// The reconnect loop reached its attempt or time limit; the heartbeat stays `Down` and
    /// tries again once per heartbeat interval.
    ReconnectGaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
    },
    /// The health changed.
    HealthChanged {
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
    /// The circuit breaker changed state.
    BreakerChanged {
        /// Before.
        from: BreakerState,
        /// After.
        to: BreakerState,
    },
    /// A caller waited the whole checkout timeout without getting a connection: every pooled
    /// connection was busy.
    PoolExhausted {
        /// How long it waited.
        waited: Duration,
    },
    /// A [`Subscriber`](crate::pubsub::Subscriber) lost its connection (a failed `PING`, a
    /// closed or reset socket, a server that killed it). It reconnects with the heartbeat's
    /// backoff and resubscribes by itself; messages published until then are lost.
    SubscriberDisconnected {
        /// Why.
        cause: Error,
    },
    /// A [`Subscriber`](crate::pubsub::Subscriber) reconnected and the server confirmed every
    /// channel, pattern and shard channel again: from now on every published message arrives.
    Resubscribed {
        /// Time from the loss to the last confirmation.
        downtime: Duration,
        /// Channels resubscribed.
        channels: usize,
        /// Patterns resubscribed.
        patterns: usize,
        /// Shard channels resubscribed.
        shard_channels: usize,
    },
    /// The [lock watchdog](crate::lock#the-watchdog) found that a lock it was renewing is no
    /// longer held by its guard (it expired, or was deleted or taken over behind our back),
    /// or could not renew it before its TTL ran out. The guard now says
    /// [`is_held`](crate::lock::LockGuard::is_held) `false`: stop the protected work.
    LockLost {
        /// The lock's name.
        name: String,
        /// The fencing token of the lost acquisition.
        fencing_token: u64,
    },
    /// With a Sentinel topology: the master moved (a `+switch-master` message from a
    /// sentinel, or a rediscovery after a `READONLY` reply or a failed connection). Every
    /// pooled connection to the old master has been retired; new ones go to `new`. A handle
    /// that reads from a replica ([`SentinelRole::Replica`](crate::SentinelRole::Replica))
    /// reports `+switch-master` messages too, but moves its connections only when its own
    /// replica was promoted or is no longer healthy.
    FailoverDetected {
        /// The master's name in the sentinels.
        master_name: String,
        /// Where it was.
        old: crate::config::Addr,
        /// Where it is now.
        new: crate::config::Addr,
    },
    /// With a Sentinel topology: the sentinel leading a failover announced its start
    /// (`+selected-slave`): until the new master is known ([`Event::FailoverDetected`]) or
    /// the failover is given up ([`Event::FailoverAborted`]), nothing more is sent to `old`
    /// and calls through the handle wait, each within its own deadline (see
    /// [Sentinel and Cluster](crate#sentinel-and-cluster)).
    FailoverStarted {
        /// The master's name in the sentinels.
        master_name: String,
        /// The master being replaced.
        old: crate::config::Addr,
        /// The replica chosen to replace it.
        candidate: crate::config::Addr,
    },
    /// With a Sentinel topology: a failover announced by [`Event::FailoverStarted`] was
    /// aborted before any promotion; calls go to `master` again.
    FailoverAborted {
        /// The master's name in the sentinels.
        master_name: String,
        /// The master, which stays the master.
        master: crate::config::Addr,
    },
    /// With a Cluster topology: slots are owned by other masters than before (a replica
    /// promoted after its master failed, slots resharded). Reported once per change, when
    /// the map has stopped changing for a second (see
    /// [Sentinel and Cluster](crate#sentinel-and-cluster)): a reshard of many slots is one
    /// event.
    ClusterTopologyChanged {
        /// How many of the 16384 slots changed owner.
        slots_moved: usize,
        /// How many masters the new map has.
        masters: usize,
    },
    /// With a Cluster topology: a node did not answer the heartbeat's check within the
    /// heartbeat timeout (see [Sentinel and Cluster](crate#sentinel-and-cluster)): its
    /// breaker is open, so calls to it fail
    /// fast until it answers again ([`Event::ClusterNodeUp`]) or the slot map names its
    /// replacement.
    ClusterNodeDown {
        /// The node.
        node: crate::config::Addr,
        /// What the check met.
        cause: Error,
    },
    /// With a Cluster topology: a node reported down answers the heartbeat's check again;
    /// its breaker is closed.
    ClusterNodeUp {
        /// The node.
        node: crate::config::Addr,
        /// Since [`Event::ClusterNodeDown`].
        downtime: Duration,
    },
    /// With a Cluster topology: the circuit breaker of one node changed state (each node
    /// has its own; the handle's [`Event::BreakerChanged`] is not used on a cluster).
    ClusterNodeBreakerChanged {
        /// The node.
        node: crate::config::Addr,
        /// Before.
        from: BreakerState,
        /// After.
        to: BreakerState,
    },
    /// The handle was closed ([`Redis::close`](crate::Redis::close) or the last clone dropped).
    /// The last event a listener receives; the channel disconnects after it.
    Closed,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connected => f.write_str("connected"),
            Event::HeartbeatFailed { error } => write!(f, "heartbeat failed: {error}"),
            Event::Disconnected { cause } => write!(f, "disconnected: {cause}"),
            Event::Reconnecting { attempt, delay } => {
                write!(f, "reconnecting (attempt {attempt}, after {delay:?})")
            }
            Event::Reconnected { downtime, attempts } => write!(
                f,
                "reconnected after {downtime:?} ({attempts} attempt{})",
                if *attempts == 1 { "" } else { "s" }
            ),
            Event::ReconnectGaveUp { attempts, elapsed } => write!(
                f,
                "gave up reconnecting after {attempts} attempts in {elapsed:?}"
            ),
            Event::HealthChanged { from, to } => write!(f, "health {from} -> {to}"),
            Event::BreakerChanged { from, to } => write!(f, "breaker {from:?} -> {to:?}"),
            Event::PoolExhausted { waited } => {
                write!(f, "pool exhausted (waited {waited:?})")
            }
            Event::SubscriberDisconnected { cause } => {
                write!(f, "subscriber disconnected: {cause}")
            }
            Event::Resubscribed {
                downtime,
                channels,
                patterns,
                shard_channels,
            } => write!(
                f,
                "subscriber resubscribed after {downtime:?} ({channels} channels, {patterns} patterns, {shard_channels} shard channels)"
            ),
            Event::FailoverDetected {
                master_name,
                old,
                new,
            } => write!(f, "master `{master_name}` failed over from {old} to {new}"),
            Event::FailoverStarted {
                master_name,
                old,
                candidate,
            } => write!(
                f,
                "master `{master_name}` is failing over from {old} to {candidate}"
            ),
            Event::FailoverAborted {
                master_name,
                master,
            } => write!(f, "failover of master `{master_name}` at {master} aborted"),
            Event::ClusterTopologyChanged {
                slots_moved,
                masters,
            } => write!(f, "cluster slot map changed: {slots_moved} slots moved, {masters} masters"),
            Event::ClusterNodeDown { node, cause } => {
                write!(f, "cluster node {node} down: {cause}")
            }
            Event::ClusterNodeUp { node, downtime } => {
                write!(f, "cluster node {node} up again after {downtime:?}")
            }
            Event::ClusterNodeBreakerChanged { node, from, to } => {
                write!(f, "cluster node {node}: breaker {from:?} -> {to:?}")
            }
            Event::LockLost {
                name,
                fencing_token,
            } => write!(f, "lock {name} lost (fencing token {fencing_token})"),
            Event::Closed => f.write_str("closed"),
        }
    }
}

/// Default queue length of a listener.
pub(crate) const DEFAULT_CAPACITY: usize = 256;

/// The listeners of one handle.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    senders: Mutex<Vec<Sender<Event>>>,
    /// How many listeners exist: emitting with none costs one atomic load.
    count: AtomicUsize,
    pub(crate) emitted: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl Listeners {
    pub(crate) fn subscribe(&self, capacity: usize) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let mut senders = self.senders.lock();
        senders.push(tx);
        self.count.store(senders.len(), Ordering::Release);
        rx
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Delivers an event to every listener without ever blocking.
    pub(crate) fn emit(&self, event: Event) {
        self.emitted.fetch_add(1, Ordering::Relaxed);
        if self.len() == 0 {
            return;
        }
        let mut senders = self.senders.lock();
        senders.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.count.store(senders.len(), Ordering::Release);
    }

    /// Sends [`Event::Closed`] and disconnects every listener.
    pub(crate) fn close(&self) {
        self.emit(Event::Closed);
        let mut senders = self.senders.lock();
        senders.clear();
        self.count.store(0, Ordering::Release);
    }
}

/// A [`Health`] in an atomic.
#[derive(Debug)]
pub(crate) struct AtomicHealth(AtomicU8);

impl AtomicHealth {
    pub(crate) fn new(h: Health) -> AtomicHealth {
        AtomicHealth(AtomicU8::new(h.as_u8()))
    }

    pub(crate) fn get(&self) -> Health {
        Health::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Sets the health; returns the old one when it changed.
    pub(crate) fn set(&self, h: Health) -> Option<Health> {
        let old = Health::from_u8(self.0.swap(h.as_u8(), Ordering::AcqRel));
        (old != h).then_some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_loses_events_and_never_blocks() {
        let l = Listeners::default();
        l.emit(Event::Connected); // nobody listens: nothing to do
        let small = l.subscribe(2);
        let big = l.subscribe(100);
        for _ in 0..10 {
            l.emit(Event::Connected);
        }
        assert_eq!(small.len(), 2);
        assert_eq!(big.len(), 10);
        assert_eq!(l.dropped.load(Ordering::Relaxed), 8);
        assert_eq!(l.emitted.load(Ordering::Relaxed), 11);
        drop(small);
        l.emit(Event::Connected);
        assert_eq!(l.len(), 1, "a dropped receiver is unsubscribed");
        l.close();
        let got: Vec<Event> = big.iter().collect();
        assert!(matches!(got.last(), Some(Event::Closed)));
        assert_eq!(got.len(), 12);
    }

    #[test]
    fn health_round_trips() {
        let h = AtomicHealth::new(Health::Down);
        assert_eq!(h.set(Health::Healthy), Some(Health::Down));
        assert_eq!(h.set(Health::Healthy), None);
        assert_eq!(h.get(), Health::Healthy);
        for x in [Health::Healthy, Health::Degraded, Health::Down] {
            assert_eq!(Health::from_u8(x.as_u8()), x);
        }
    }
}
