//! The heartbeat thread: `PING` on its own connection, health, and the reconnect loop (see
//! the [public docs](crate::heartbeat)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info, warn};

use crate::breaker::{Breaker, BreakerState};
use crate::error::{Error, Result};
use crate::events::{Event, Health};
use crate::heartbeat::HeartbeatConfig;
use crate::observe::{self, Observed};
use crate::pool::{Manager, PoolSampler, PoolState, RawConn, Signal};
use crate::util::threads::Background;
use crate::util::time;

/// Opens a connection for the heartbeat, with `timeout` as its read and write timeout, and
/// checks it with a `PING` (recording the round trip).
pub(crate) fn open_checked(
    manager: &Manager,
    observed: &Observed,
    timeout: Duration,
) -> Result<RawConn> {
    let mut raw = manager.open()?;
    raw.con.set_response_timeout(Some(timeout));
    let start = Instant::now();
    raw.con.ping(time::after(timeout))?;
    observed.heartbeat_answered(start.elapsed());
    Ok(raw)
}

/// The thread's name (15 characters at most: Linux cuts longer names).
pub(crate) const THREAD_NAME: &str = "redkit-heartbt";

/// The running thread, owned by the handle.
#[derive(Debug)]
pub(crate) struct HeartbeatThread {
    thread: Background,
}

impl HeartbeatThread {
    /// Starts the thread. `con` is an already working connection, if the caller has one.
    pub(crate) fn spawn(
        config: HeartbeatConfig,
        manager: Manager,
        breaker: Arc<Breaker>,
        signals: Receiver<Signal>,
        con: Option<RawConn>,
        sampler: Option<PoolSampler>,
    ) -> Result<HeartbeatThread> {
        let interval = config.interval.unwrap_or(Duration::from_secs(1));
        let state = manager.state().clone();
        let thread = Background::spawn(THREAD_NAME, move |stop| {
            let mut beat = Beat {
                config,
                interval,
                manager,
                observed: state.observed.clone(),
                state,
                breaker,
                stop,
                signals,
                down_since: con.is_none().then(Instant::now),
                con,
                first: true,
                nodes: None,
                sampler,
            };
            if beat.state.cluster.is_some() {
                beat.nodes = Some(crate::cluster::health::NodeChecks::new());
            }
            beat.run();
        })
        .map_err(|e| Error::config("heartbeat", format!("cannot start its thread: {e}")))?;
        Ok(HeartbeatThread { thread })
    }

    /// Stops the thread, waiting at most `bound` for it (a `PING` or connect in flight ends
    /// by its own deadline). `Err` when it panicked.
    pub(crate) fn stop(&mut self, bound: Duration) -> std::result::Result<(), String> {
        self.thread.stop(bound)
    }
}

/// What a wait ended with.
enum Woken {
    Stop,
    Kick(Signal),
    Timeout,
}

struct Beat {
    config: HeartbeatConfig,
    interval: Duration,
    manager: Manager,
    state: Arc<PoolState>,
    observed: Arc<Observed>,
    breaker: Arc<Breaker>,
    stop: Receiver<()>,
    signals: Receiver<Signal>,
    con: Option<RawConn>,
    /// When the connection was lost (`None` while connected).
    down_since: Option<Instant>,
    /// No connection has been made yet by this thread (a lazily created handle).
    first: bool,
    /// With a Cluster: the check of every node at each beat.
    nodes: Option<crate::cluster::health::NodeChecks>,
    /// With the `metrics` feature: the pool's state, for the stats published every beat.
    sampler: Option<PoolSampler>,
}

impl Beat {
    fn run(&mut self) {
        debug!("heartbeat for {} started", self.manager.addr());
        if self.con.is_some() {
            self.first = false;
            self.observed.mark_connected();
        } else if !self.reconnect_loop() {
            debug!("heartbeat for {} stopped", self.manager.addr());
            return;
        }
        loop {
            let next = time::after(self.interval);
            loop {
                match self.wait(next.saturating_duration_since(Instant::now())) {
                    Woken::Stop => {
                        debug!("heartbeat for {} stopped", self.manager.addr());
                        return;
                    }
                    Woken::Kick(Signal::Suspect | Signal::Reachable) | Woken::Timeout => break,
                    // Only the reconnect loop speeds up on demand.
                    Woken::Kick(Signal::Demand) => {}
                }
            }
            self.observed.rotate_windows();
            if let Some(sample) = &self.sampler {
                let (pool, max_size) = sample();
                observe::snapshot(&self.observed, self.breaker.state(), pool, max_size);
            }
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
            recv(self.signals) -> k => match k {
                Ok(k) => Woken::Kick(k),
                Err(_) => Woken::Stop,
            },
            default(d) => Woken::Timeout,
        }
    }

    fn ping(&mut self) -> Result<()> {
        // Connections were retired (a Sentinel failover): follow them to the new node.
        if self
            .con
            .as_ref()
            .is_some_and(|raw| self.state.generation.is_retired(raw.generation))
        {
            debug!(
                "redis at {}: heartbeat connection retired; opening a new one",
                self.manager.addr()
            );
            self.con = None;
            self.con = Some(open_checked(
                &self.manager,
                &self.observed,
                self.config.timeout,
            )?);
        }
        let Some(raw) = self.con.as_mut() else {
            return Ok(());
        };
        let start = Instant::now();
        // A cluster is checked node by node (see `crate::cluster::health`): it answers while
        // one of its masters does; a node that does not is reported on its own.
        let result = match (self.nodes.as_mut(), self.state.cluster.as_ref()) {
            (Some(nodes), Some(topo)) => nodes.beat(topo, self.config.timeout),
            _ => raw.con.ping(time::add(start, self.config.timeout)),
        };
        let took = start.elapsed();
        match result {
            Ok(()) => {
                self.observed.heartbeat_answered(took);
                let health = if took > self.config.slow_ping {
                    Health::Degraded
                } else {
                    Health::Healthy
                };
                self.observed.set_health(health);
                // The server answers: calls may go through again, even when none was made
                // while it was away (an open breaker would otherwise wait out its timer).
                if self.breaker.state() != BreakerState::Closed {
                    self.observed.breaker_changed(self.breaker.reset());
                }
                Ok(())
            }
            Err(e) => {
                if e.poisons_connection() {
                    return Err(e);
                }
                // The server answered, with an error (`BUSY`, `LOADING`, `NOAUTH`...): it is
                // there but not well.
                debug!("redis at {}: heartbeat answered {e}", self.manager.addr());
                self.observed
                    .events
                    .emit(Event::HeartbeatFailed { error: e });
                self.observed.set_health(Health::Degraded);
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
        self.observed.events.emit(Event::HeartbeatFailed {
            error: error.clone(),
        });
        self.observed.mark_disconnected();
        self.observed
            .events
            .emit(Event::Disconnected { cause: error });
        self.observed.set_health(Health::Down);
        // Every pooled connection is suspect until proven otherwise; multiplexed ones are
        // closed (their calls in flight fail now, not at their deadlines).
        self.state.connection_lost();
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
            } else if self.breaker.state() != BreakerState::Closed {
                // Calls are being refused: find out within an interval that the server is
                // back, so that the breaker closes then (not after a long backoff).
                delays.next_delay().min(self.interval)
            } else {
                delays.next_delay()
            };
            let limit_reached = self.config.max_attempts.is_some_and(|n| attempt > n)
                || self
                    .config
                    .max_elapsed
                    .is_some_and(|d| start.elapsed().saturating_add(delay) > d);
            if limit_reached {
                let elapsed = start.elapsed();
                warn!(
                    "redis at {}: gave up reconnecting after {} attempts in {elapsed:?}; trying again every {:?}",
                    self.manager.addr(),
                    attempt - 1,
                    self.interval
                );
                self.observed.events.emit(Event::ReconnectGaveUp {
                    attempts: attempt - 1,
                    elapsed,
                });
                return true;
            }
            debug!(
                "redis at {}: reconnect attempt {attempt} in {delay:?}",
                self.manager.addr()
            );
            self.observed
                .events
                .emit(Event::Reconnecting { attempt, delay });
            if !delay.is_zero() {
                let mut until = time::after(delay);
                // A caller that reached the server cuts the wait short. While calls fail
                // because the server is down, attempts come at least every backoff base: the
                // backoff grows only while nobody needs the server.
                loop {
                    match self.wait(until.saturating_duration_since(Instant::now())) {
                        Woken::Stop => return false,
                        Woken::Kick(Signal::Reachable) | Woken::Timeout => break,
                        Woken::Kick(Signal::Demand) => {
                            until =
                                until.min(time::add(last_attempt, self.config.reconnect.base()));
                        }
                        Woken::Kick(Signal::Suspect) => {}
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
        let result = open_checked(&self.manager, &self.observed, self.config.timeout);
        self.state
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
            self.observed.mark_connected();
            self.observed.set_health(Health::Healthy);
            self.observed.events.emit(Event::Connected);
            return;
        }
        // Order matters: retire the old connections, close the breaker and update the health
        // before anyone hears that the server is back.
        self.state.retire_connections();
        // Its own connection is the fresh one.
        if let Some(raw) = self.con.as_mut() {
            raw.generation = self.state.generation.current();
        }
        self.observed.breaker_changed(self.breaker.reset());
        self.observed.mark_connected();
        self.observed
            .counters
            .reconnections
            .fetch_add(1, Ordering::Relaxed);
        self.observed.set_health(Health::Healthy);
        info!("redis at {addr}: reconnected after {downtime:?} ({attempts} attempts)");
        self.observed
            .events
            .emit(Event::Reconnected { downtime, attempts });
    }
}
