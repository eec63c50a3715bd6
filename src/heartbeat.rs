//! The heartbeat thread: `PING` on its own connection, health, and the reconnect loop.
//!
//! One thread per [`Redis`](crate::Redis) handle (shared by its clones), named
//! `redkit-heartbeat`. Every [interval](HeartbeatConfig::interval) it sends `PING` on a
//! connection of its own (never a pooled one) and waits at most the
//! [deadline](HeartbeatConfig::timeout) for the answer, so a server that stopped answering,
//! even one whose packets vanish without a reset (a half-open connection), is noticed within
//! interval + deadline instead of after TCP's retransmission minutes. It also runs at once
//! when a call sees the server drop a connection.
//!
//! When a heartbeat fails the thread declares the connection lost ([`Event::Disconnected`],
//! health `Down`), marks every pooled connection as suspect (each is `PING`ed before its next
//! use), and reconnects: the first attempt at once, then after each
//! [backoff](HeartbeatConfig::reconnect_backoff) delay, up to the optional attempt and time
//! limits (after which it tries once per interval). The delay grows only while nobody needs
//! the server: while calls keep failing, attempts come at least every base delay, and a call
//! that manages to connect on its own ends the wait at once. On success it retires every pooled
//! connection made before the outage, closes the circuit breaker and emits
//! [`Event::Reconnected`] with the downtime: calls from then on run on fresh connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};

use crate::error::{Delivery, Error, Result};
use crate::events::{Event, Health};
use crate::pool::{Manager, RawConn, Shared};
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

/// Opens a connection for the heartbeat, with `timeout` as its read and write timeout, and
/// checks it with a `PING` (recording the round trip).
pub(crate) fn open_checked(
    manager: &Manager,
    shared: &Shared,
    timeout: Duration,
) -> Result<RawConn> {
    let mut raw = manager.open()?;
    let not_sent = |e| Error::from_redis(e, Delivery::NotSent);
    raw.con.set_read_timeout(Some(timeout)).map_err(not_sent)?;
    raw.con.set_write_timeout(Some(timeout)).map_err(not_sent)?;
    let start = Instant::now();
    redis::cmd("PING")
        .query::<()>(&mut raw.con)
        .map_err(|e| Error::from_wire(e, Delivery::Unknown))?;
    shared.heartbeat_answered(start.elapsed());
    Ok(raw)
}

/// Why the heartbeat was woken before its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// A call saw the server drop a connection: check now.
    Suspect,
    /// A call managed to connect while the heartbeat is reconnecting: try now.
    Reachable,
    /// Calls are failing because the server is down: someone needs it, so do not let the
    /// backoff grow past the backoff base between two attempts.
    Demand,
}

/// The running thread, owned by the handle.
#[derive(Debug)]
pub(crate) struct HeartbeatThread {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeartbeatThread {
    /// Starts the thread. `con` is an already working connection, if the caller has one.
    pub(crate) fn spawn(
        config: HeartbeatConfig,
        manager: Manager,
        shared: Arc<Shared>,
        kicks: Receiver<Kick>,
        con: Option<RawConn>,
    ) -> Result<HeartbeatThread> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let interval = config.interval.unwrap_or(Duration::from_secs(1));
        let mut beat = Beat {
            config,
            interval,
            manager,
            shared,
            stop: stop_rx,
            kicks,
            down_since: con.is_none().then(Instant::now),
            con,
            first: true,
        };
        let thread = std::thread::Builder::new()
            .name("redkit-heartbeat".into())
            .spawn(move || beat.run())
            .map_err(|e| Error::config("heartbeat", format!("cannot start its thread: {e}")))?;
        Ok(HeartbeatThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it. `Err` when it panicked.
    pub(crate) fn stop(&mut self) -> std::result::Result<(), String> {
        drop(self.stop.take());
        self.thread
            .take()
            .map_or(Ok(()), crate::util::threads::join)
    }
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        if let Err(panic) = self.stop() {
            warn!("the heartbeat thread had panicked: {panic}");
        }
    }
}

/// What a wait ended with.
enum Woken {
    Stop,
    Kick(Kick),
    Timeout,
}

struct Beat {
    config: HeartbeatConfig,
    interval: Duration,
    manager: Manager,
    shared: Arc<Shared>,
    stop: Receiver<()>,
    kicks: Receiver<Kick>,
    con: Option<RawConn>,
    /// When the connection was lost (`None` while connected).
    down_since: Option<Instant>,
    /// No connection has been made yet by this thread (a lazily created handle).
    first: bool,
}

impl Beat {
    fn run(&mut self) {
        debug!("heartbeat for {} started", self.manager.addr());
        if self.con.is_some() {
            self.first = false;
            self.shared.mark_connected();
        } else if !self.reconnect_loop() {
            debug!("heartbeat for {} stopped", self.manager.addr());
            return;
        }
        loop {
            let next = Instant::now() + self.interval;
            loop {
                match self.wait(next.saturating_duration_since(Instant::now())) {
                    Woken::Stop => {
                        debug!("heartbeat for {} stopped", self.manager.addr());
                        return;
                    }
                    Woken::Kick(Kick::Suspect | Kick::Reachable) | Woken::Timeout => break,
                    // Only the reconnect loop speeds up on demand.
                    Woken::Kick(Kick::Demand) => {}
                }
            }
            self.shared.rotate_windows();
            if self.con.is_some() {
                if let Err(e) = self.ping() {
                    self.lost(e);
                    if !self.reconnect_loop() {
                        break;
                    }
                }
            } else {
                // The reconnect loop gave up earlier: one attempt per interval.
                match self.try_connect() {
                    Ok(()) => self.recovered(1),
                    Err(e) => debug!("redis at {}: still down: {e}", self.manager.addr()),
                }
            }
        }
        debug!("heartbeat for {} stopped", self.manager.addr());
    }

    /// Waits for `d`, a kick or the stop signal.
    fn wait(&self, d: Duration) -> Woken {
        crossbeam_channel::select! {
            recv(self.stop) -> _ => Woken::Stop,
            recv(self.kicks) -> k => match k {
                Ok(k) => Woken::Kick(k),
                Err(_) => Woken::Stop,
            },
            default(d) => Woken::Timeout,
        }
    }

    fn ping(&mut self) -> Result<()> {
        let Some(raw) = self.con.as_mut() else {
            return Ok(());
        };
        let start = Instant::now();
        let result = redis::cmd("PING").query::<()>(&mut raw.con);
        let took = start.elapsed();
        match result {
            Ok(()) => {
                self.shared.heartbeat_answered(took);
                let health = if took > self.config.slow_ping {
                    Health::Degraded
                } else {
                    Health::Healthy
                };
                self.shared.set_health(health);
                Ok(())
            }
            Err(e) => {
                let delivery = if e.is_io_error() || e.kind() == redis::ErrorKind::Parse {
                    Delivery::Unknown
                } else {
                    Delivery::Answered
                };
                let e = Error::from_wire(e, delivery);
                if e.poisons_connection() {
                    return Err(e);
                }
                // The server answered, with an error (`BUSY`, `LOADING`, `NOAUTH`...): it is
                // there but not well.
                debug!("redis at {}: heartbeat answered {e}", self.manager.addr());
                self.shared.events.emit(Event::HeartbeatFailed { error: e });
                self.shared.set_health(Health::Degraded);
                Ok(())
            }
        }
    }

    /// The heartbeat failed: the connection is considered lost.
    fn lost(&mut self, error: Error) {
        self.con = None;
        self.down_since = Some(Instant::now());
        let addr = self.manager.addr();
        info!("redis at {addr}: connection lost: {error}");
        self.shared.events.emit(Event::HeartbeatFailed {
            error: error.clone(),
        });
        self.shared.mark_disconnected();
        self.shared
            .events
            .emit(Event::Disconnected { cause: error });
        self.shared.set_health(Health::Down);
        // Every pooled connection is suspect until proven otherwise.
        self.shared.connection_dropped_quiet();
    }

    /// Reconnects with backoff. Returns `false` when the thread must stop.
    fn reconnect_loop(&mut self) -> bool {
        let start = Instant::now();
        let mut delays = self.config.reconnect.delays();
        let mut attempt = 0u32;
        let mut last_attempt = start;
        loop {
            attempt += 1;
            let delay = if attempt == 1 {
                Duration::ZERO
            } else {
                delays.next_delay()
            };
            let limit_reached = self.config.max_attempts.is_some_and(|n| attempt > n)
                || self
                    .config
                    .max_elapsed
                    .is_some_and(|d| start.elapsed() + delay > d);
            if limit_reached {
                let elapsed = start.elapsed();
                warn!(
                    "redis at {}: gave up reconnecting after {} attempts in {elapsed:?}; trying again every {:?}",
                    self.manager.addr(),
                    attempt - 1,
                    self.interval
                );
                self.shared.events.emit(Event::ReconnectGaveUp {
                    attempts: attempt - 1,
                    elapsed,
                });
                return true;
            }
            debug!(
                "redis at {}: reconnect attempt {attempt} in {delay:?}",
                self.manager.addr()
            );
            self.shared
                .events
                .emit(Event::Reconnecting { attempt, delay });
            if !delay.is_zero() {
                let mut until = Instant::now() + delay;
                // A caller that reached the server cuts the wait short. While calls fail
                // because the server is down, attempts come at least every backoff base: the
                // backoff grows only while nobody needs the server.
                loop {
                    match self.wait(until.saturating_duration_since(Instant::now())) {
                        Woken::Stop => return false,
                        Woken::Kick(Kick::Reachable) | Woken::Timeout => break,
                        Woken::Kick(Kick::Demand) => {
                            until = until.min(last_attempt + self.config.reconnect.base());
                        }
                        Woken::Kick(Kick::Suspect) => {}
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
            } else if self.stop_requested() {
                return false;
            }
            last_attempt = Instant::now();
            match self.try_connect() {
                Ok(()) => {
                    self.recovered(attempt);
                    return true;
                }
                Err(e) => debug!(
                    "redis at {}: reconnect attempt {attempt} failed: {e}",
                    self.manager.addr()
                ),
            }
        }
    }

    fn stop_requested(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Opens a connection and checks it with a `PING`.
    fn try_connect(&mut self) -> Result<()> {
        let result = open_checked(&self.manager, &self.shared, self.config.timeout);
        self.shared
            .record_connect(self.manager.addr(), result.as_ref().map(|_| ()), false);
        self.con = Some(result?);
        Ok(())
    }

    /// A reconnect attempt worked.
    fn recovered(&mut self, attempts: u32) {
        let downtime = self
            .down_since
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let addr = self.manager.addr();
        if std::mem::take(&mut self.first) {
            info!("redis at {addr}: connected");
            self.shared.mark_connected();
            self.shared.set_health(Health::Healthy);
            self.shared.events.emit(Event::Connected);
            return;
        }
        // Order matters: retire the old connections, close the breaker and update the health
        // before anyone hears that the server is back.
        self.shared.retire_connections();
        self.shared.reset_breaker();
        self.shared.mark_connected();
        self.shared
            .counters
            .reconnections
            .fetch_add(1, Ordering::Relaxed);
        self.shared.set_health(Health::Healthy);
        info!("redis at {addr}: reconnected after {downtime:?} ({attempts} attempts)");
        self.shared
            .events
            .emit(Event::Reconnected { downtime, attempts });
    }
}
