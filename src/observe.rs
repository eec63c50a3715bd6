//! What a handle observes about itself: counters, latencies, health, events and the times
//! it connected and disconnected. Shared by the handle, its pool, its heartbeat and its
//! topology (which emit events and count); read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use parking_lot::Mutex;

use crate::breaker::{BreakerState, Transition};
use crate::config::{Addr, Config};
use crate::events::{AtomicHealth, Event, Health, Listeners};
use crate::metrics::CommandMetrics;
use crate::stats::{Counters, ErrorCounts, PoolStats, Stats};
use crate::telemetry::Export;
use crate::util::histogram::Histogram;

/// The window over which latency percentiles are computed (see [`Histogram`]).
const LATENCY_WINDOW: Duration = Duration::from_secs(60);

/// Counters, latencies, health and event listeners of one handle.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) counters: Counters,
    pub(crate) events: Listeners,
    health: AtomicHealth,
    pub(crate) heartbeat_latency: Histogram,
    heartbeat_last_us: AtomicU64,
    pub(crate) command_latency: Histogram,
    /// Count, errors and latency per command name.
    pub(crate) command_metrics: CommandMetrics,
    times: Mutex<Times>,
    /// The address in log lines.
    addr: Addr,
    /// What goes to the `metrics` facade (nothing without the feature).
    pub(crate) export: Export,
}

/// When things happened.
#[derive(Debug)]
struct Times {
    started: Instant,
    connected_at: Option<SystemTime>,
    disconnected_at: Option<SystemTime>,
    up_since: Option<Instant>,
}

/// A moment in the handle's life, for [`Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimesSnapshot {
    pub(crate) age: Duration,
    pub(crate) connected_at: Option<SystemTime>,
    pub(crate) disconnected_at: Option<SystemTime>,
    pub(crate) uptime: Option<Duration>,
}

impl Observed {
    /// For a handle with `config` whose health starts as `health`.
    pub(crate) fn new(config: &Config, health: Health) -> Observed {
        let export = Export::new(config);
        Observed {
            counters: Counters::default(),
            events: Listeners::default(),
            health: AtomicHealth::new(health),
            heartbeat_latency: Histogram::new(LATENCY_WINDOW),
            heartbeat_last_us: AtomicU64::new(0),
            command_latency: Histogram::new(LATENCY_WINDOW),
            command_metrics: CommandMetrics::new(export.clone()),
            times: Mutex::new(Times {
                started: Instant::now(),
                connected_at: None,
                disconnected_at: None,
                up_since: None,
            }),
            addr: config.addr.clone(),
            export,
        }
    }

    /// The heartbeat's view of the server.
    pub(crate) fn health(&self) -> Health {
        self.health.get()
    }

    /// Changes the health, logging and emitting the change.
    pub(crate) fn set_health(&self, to: Health) {
        if let Some(from) = self.health.set(to) {
            info!("redis at {}: health {from} -> {to}", self.addr);
            self.events.emit(Event::HealthChanged { from, to });
        }
    }

    /// Logs, counts and emits a breaker transition of the handle's breaker.
    pub(crate) fn breaker_changed(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let addr = &self.addr;
        match t.to {
            BreakerState::Open => {
                self.counters.breaker_opened.fetch_add(1, Relaxed);
                warn!("redis at {addr}: circuit breaker opened (was {:?})", t.from);
            }
            BreakerState::HalfOpen => info!("redis at {addr}: circuit breaker half-open, probing"),
            BreakerState::Closed => info!("redis at {addr}: circuit breaker closed"),
        }
        self.events.emit(Event::BreakerChanged {
            from: t.from,
            to: t.to,
        });
    }

    /// A heartbeat `PING` was answered after `took`.
    pub(crate) fn heartbeat_answered(&self, took: Duration) {
        self.heartbeat_latency.record(took);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.heartbeat_last_us.store(us, Ordering::Relaxed);
    }

    /// The last heartbeat round trip.
    pub(crate) fn heartbeat_last(&self) -> Option<Duration> {
        match self.heartbeat_last_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Starts new latency windows when due.
    pub(crate) fn rotate_windows(&self) {
        let now = Instant::now();
        self.heartbeat_latency.maybe_rotate(now);
        self.command_latency.maybe_rotate(now);
        self.command_metrics.rotate(now);
    }

    pub(crate) fn mark_connected(&self) {
        let mut t = self.times.lock();
        t.connected_at = Some(SystemTime::now());
        t.up_since = Some(Instant::now());
    }

    pub(crate) fn mark_disconnected(&self) {
        let mut t = self.times.lock();
        t.disconnected_at = Some(SystemTime::now());
        t.up_since = None;
    }

    pub(crate) fn times(&self) -> TimesSnapshot {
        let t = self.times.lock();
        TimesSnapshot {
            age: t.started.elapsed(),
            connected_at: t.connected_at,
            disconnected_at: t.disconnected_at,
            uptime: t.up_since.map(|s| s.elapsed()),
        }
    }
}

/// A [`Stats`] snapshot from what `shared` observed, the breaker's state and the pool's;
/// also published to the `metrics` facade (with the feature).
pub(crate) fn snapshot(
    shared: &Observed,
    breaker: BreakerState,
    state: r2d2::State,
    max_size: u32,
) -> Stats {
    let stats = take_snapshot(shared, breaker, state, max_size);
    shared.export.publish(&stats);
    stats
}

fn take_snapshot(
    shared: &Observed,
    breaker: BreakerState,
    state: r2d2::State,
    max_size: u32,
) -> Stats {
    let c = &shared.counters;
    let times = shared.times();
    let checkouts = c.checkouts.load(Relaxed);
    let wait_ns = c.checkout_wait_ns.load(Relaxed);
    let errors = ErrorCounts(std::array::from_fn(|i| c.errors[i].load(Relaxed)));
    Stats {
        commands: c.commands.load(Relaxed),
        pipelines: c.pipelines.load(Relaxed),
        retries: c.retries.load(Relaxed),
        errors,
        pool: PoolStats {
            size: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            waiting: u64::try_from(c.waiting.load(Relaxed)).unwrap_or(0),
            max_size,
            created: c.conns_created.load(Relaxed),
            closed: c.conns_closed.load(Relaxed),
            discarded_broken: c.conns_discarded_broken.load(Relaxed),
            connect_failures: c.connect_failures.load(Relaxed),
            checkouts,
            checkout_timeouts: c.checkout_timeouts.load(Relaxed),
            checkout_wait_avg: Duration::from_nanos(wait_ns.checked_div(checkouts).unwrap_or(0)),
            checkout_wait_max: Duration::from_nanos(c.checkout_wait_max_ns.load(Relaxed)),
        },
        breaker,
        breaker_opened: c.breaker_opened.load(Relaxed),
        breaker_rejected: c.breaker_rejected.load(Relaxed),
        transaction_conflicts: c.transaction_conflicts.load(Relaxed),
        health: shared.health(),
        reconnections: c.reconnections.load(Relaxed),
        last_connected: times.connected_at,
        last_disconnected: times.disconnected_at,
        uptime: times.uptime,
        age: times.age,
        heartbeat_last: shared.heartbeat_last(),
        heartbeat_latency: shared.heartbeat_latency.latency(),
        command_latency: shared.command_latency.latency(),
        event_listeners: shared.events.len(),
        events_dropped: shared.events.dropped.load(Relaxed),
        dedicated_open: u64::try_from(c.dedicated_open.load(Relaxed)).unwrap_or(0),
        dedicated_opened: c.dedicated_opened.load(Relaxed),
    }
}
