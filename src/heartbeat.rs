//! The heartbeat thread: `PING` on its own connection, health, and the reconnect loop.
//!
//! One thread per [`Redis`](crate::Redis) handle (shared by its clones), named
//! `redkit-heartbt`. Every [interval](HeartbeatConfig::interval) it sends `PING` on a
//! connection of its own (never a pooled one) and waits at most the
//! [deadline](HeartbeatConfig::timeout) for the answer, so a server that stopped answering,
//! even one whose packets vanish without a reset (a half-open connection), is noticed within
//! interval + deadline instead of after TCP's retransmission minutes. It also runs at once
//! when a call sees the server drop a connection.
//!
//! When a heartbeat fails the thread declares the connection lost ([`Event::Disconnected`](crate::Event::Disconnected),
//! health `Down`), marks every pooled connection as suspect (each is `PING`ed before its next
//! use), and reconnects: the first attempt at once, then after each
//! [backoff](HeartbeatConfig::reconnect_backoff) delay, up to the optional attempt and time
//! limits (after which it tries once per interval). The delay grows only while nobody needs
//! the server: while calls keep failing, attempts come at least every base delay, and a call
//! that manages to connect on its own ends the wait at once. On success it retires every pooled
//! connection made before the outage, closes the circuit breaker and emits
//! [`Event::Reconnected`](crate::Event::Reconnected) with the downtime: calls from then on run on fresh connections.
//!
//! On a Cluster the beat asks every node (masters and replicas) for its `ROLE` instead, all
//! at once on connections of its own, each answer within the deadline, and reads the slot
//! map: a node that does not answer is reported on its own
//! ([`Event::ClusterNodeDown`](crate::Event::ClusterNodeDown), its breaker opened), and the
//! handle counts as lost only when no master answers (see the
//! [crate docs](crate#sentinel-and-cluster)). With a Sentinel topology the heartbeat's
//! connection follows the master when a failover retires the connections.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::{Backoff, Jitter};

/// Heartbeat and reconnect settings (see the [module docs](crate::heartbeat)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    pub(crate) interval: Option<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) slow_ping: Duration,
    pub(crate) reconnect: Backoff,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_elapsed: Option<Duration>,
}

impl Default for HeartbeatConfig {
    /// A `PING` every second with a 1 s deadline, `Degraded` above 250 ms, reconnect backoff
    /// from 100 ms doubling to 5 s with full jitter, no attempt or time limit.
    fn default() -> Self {
        HeartbeatConfig {
            interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_secs(1),
            slow_ping: Duration::from_millis(250),
            reconnect: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
                .jitter(Jitter::Full),
            max_attempts: None,
            max_elapsed: None,
        }
    }
}

impl HeartbeatConfig {
    /// No heartbeat thread: health stays `Healthy`, nothing reconnects in the background, and
    /// recovery relies on calls (a call that cannot get a connection tries to open one).
    pub fn disabled() -> HeartbeatConfig {
        HeartbeatConfig {
            interval: None,
            ..HeartbeatConfig::default()
        }
    }

    /// Time between two `PING`s. Defaults to 1 s.
    pub fn interval(mut self, d: Duration) -> HeartbeatConfig {
        self.interval = Some(d);
        self
    }

    /// How long a `PING` may take before the connection counts as lost (the deadline).
    /// Defaults to 1 s. A half-open connection is noticed within interval + deadline.
    pub fn timeout(mut self, d: Duration) -> HeartbeatConfig {
        self.timeout = d;
        self
    }

    /// A `PING` answered slower than this makes the health `Degraded`. Defaults to 250 ms.
    pub fn slow_ping(mut self, d: Duration) -> HeartbeatConfig {
        self.slow_ping = d;
        self
    }

    /// The delays between reconnect attempts (the first attempt is immediate). Defaults to
    /// 100 ms doubling up to 5 s, with full jitter. While calls keep failing because the
    /// server is down, attempts come at least every base delay (100 ms): the delay grows only
    /// while nobody is waiting for the server.
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> HeartbeatConfig {
        self.reconnect = backoff;
        self
    }

    /// Give up the reconnect loop after this many attempts (then one attempt per interval).
    /// Defaults to no limit.
    pub fn max_attempts(mut self, n: u32) -> HeartbeatConfig {
        self.max_attempts = Some(n);
        self
    }

    /// Give up the reconnect loop after this long (then one attempt per interval). Defaults
    /// to no limit.
    pub fn max_elapsed(mut self, d: Duration) -> HeartbeatConfig {
        self.max_elapsed = Some(d);
        self
    }

    /// The interval, `None` when the heartbeat is disabled.
    pub fn interval_value(&self) -> Option<Duration> {
        self.interval
    }

    /// The `PING` deadline.
    pub fn timeout_value(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "heartbeat.interval",
                "must be greater than zero (use HeartbeatConfig::disabled() for none)",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::config(
                "heartbeat.timeout",
                "must be greater than zero",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::config(
                "heartbeat.max_attempts",
                "must be at least 1",
            ));
        }
        self.reconnect.validate("heartbeat.reconnect_backoff")
    }
}
