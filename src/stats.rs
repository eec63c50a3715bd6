//! Counters kept in atomics, read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use crate::breaker::BreakerState;
use crate::error::ErrorClass;
use crate::events::Health;
use crate::util::histogram::Latency;

const CLASSES: usize = ErrorClass::ALL.len();

/// The live counters. Cheap to update: each is one relaxed atomic add.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) pipelines: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) errors: [AtomicU64; CLASSES],
    pub(crate) conns_created: AtomicU64,
    pub(crate) conns_closed: AtomicU64,
    pub(crate) conns_discarded_broken: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) checkouts: AtomicU64,
    pub(crate) checkout_timeouts: AtomicU64,
    pub(crate) checkout_wait_ns: AtomicU64,
    pub(crate) checkout_wait_max_ns: AtomicU64,
    pub(crate) waiting: AtomicI64,
    pub(crate) breaker_opened: AtomicU64,
    pub(crate) breaker_rejected: AtomicU64,
    pub(crate) transaction_conflicts: AtomicU64,
    pub(crate) reconnections: AtomicU64,
    pub(crate) dedicated_opened: AtomicU64,
    pub(crate) dedicated_open: AtomicI64,
}

impl Counters {
    pub(crate) fn error(&self, class: ErrorClass) {
        self.errors[class.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn checkout_waited(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.checkouts.fetch_add(1, Relaxed);
        self.checkout_wait_ns.fetch_add(ns, Relaxed);
        self.checkout_wait_max_ns.fetch_max(ns, Relaxed);
    }
}

/// Error counts per [`ErrorClass`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorCounts(pub(crate) [u64; CLASSES]);

impl ErrorCounts {
    /// How many errors of this class were returned to callers.
    pub fn get(&self, class: ErrorClass) -> u64 {
        self.0[class.index()]
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(class, count)` for every class with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorClass, u64)> + '_ {
        ErrorClass::ALL
            .iter()
            .zip(self.0.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (*c, *n))
    }
}

/// The state of the connection pool.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Open connections (idle and in use).
    pub size: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out by callers.
    pub in_use: u32,
    /// Callers waiting for a connection right now.
    pub waiting: u64,
    /// The most connections the pool opens.
    pub max_size: u32,
    /// Connections opened since start.
    pub created: u64,
    /// Connections closed since start (idle timeout, lifetime, broken).
    pub closed: u64,
    /// Connections discarded because they saw an unrecoverable error.
    pub discarded_broken: u64,
    /// Failed attempts to open a pooled connection (the heartbeat's own attempts are told by
    /// [`Event::Reconnecting`](crate::Event::Reconnecting) instead).
    pub connect_failures: u64,
    /// Successful checkouts.
    pub checkouts: u64,
    /// Checkouts that timed out.
    pub checkout_timeouts: u64,
    /// Average time a successful checkout waited.
    pub checkout_wait_avg: Duration,
    /// Longest time a successful checkout waited.
    pub checkout_wait_max: Duration,
}

/// A snapshot of a [`Redis`](crate::Redis) handle's counters, from [`Redis::stats`](crate::Redis::stats).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Commands sent (each attempt counts once; a pipeline counts once).
    pub commands: u64,
    /// Pipelines and transactions among `commands`.
    pub pipelines: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Errors returned to callers, per class.
    pub errors: ErrorCounts,
    /// The connection pool.
    pub pool: PoolStats,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// How often the breaker opened.
    pub breaker_opened: u64,
    /// Calls refused because the breaker was open.
    pub breaker_rejected: u64,
    /// Transaction attempts aborted because a watched key changed.
    pub transaction_conflicts: u64,
    /// The heartbeat's view of the connection.
    pub health: Health,
    /// Times the heartbeat reconnected after losing the server.
    pub reconnections: u64,
    /// When the heartbeat last (re)connected.
    pub last_connected: Option<SystemTime>,
    /// When the heartbeat last lost the server.
    pub last_disconnected: Option<SystemTime>,
    /// How long the server has answered without interruption (since the last (re)connection);
    /// `None` while it is down or before the first connection.
    pub uptime: Option<Duration>,
    /// How long ago the handle was created.
    pub age: Duration,
    /// The last heartbeat round trip.
    pub heartbeat_last: Option<Duration>,
    /// Heartbeat round trips over the last one to two minutes.
    pub heartbeat_latency: Latency,
    /// Calls through the handle ([`Redis::query`](crate::Redis::query), `run`, `pipeline`,
    /// `transaction` and `redis::Commands` on the handle), as the caller saw them: checkout,
    /// retries and all, over the last one to two minutes.
    pub command_latency: Latency,
    /// Event listeners right now.
    pub event_listeners: usize,
    /// Events lost because a listener's queue was full (each listener counts once).
    pub events_dropped: u64,
    /// [Dedicated connections](crate::Redis::dedicated) open right now (queue consumers'
    /// and lock waiters' included).
    pub dedicated_open: u64,
    /// Dedicated connections opened since the handle was created (reopens included).
    pub dedicated_opened: u64,
}
