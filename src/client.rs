//! The [`Redis`] handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{info, warn};
use parking_lot::Mutex;
use redis::{Cmd, ConnectionLike, FromRedisValue, ToRedisArgs, Value};

use crate::breaker::{Breaker, BreakerState};
use crate::config::Config;
use crate::error::{Delivery, Error, Result};
use crate::events::{self, Event, Health};
use crate::heartbeat::HeartbeatThread;
use crate::pool::{self, Manager, PooledConnection, RawConn, Shared};
use crate::retry::{is_read_only_cmd, is_read_only_command, RetryPolicy};
use crate::script::{self, Pipeline};
use crate::stats::{self, Stats};
use crate::util::resp;

/// Something that can become a [`Config`]: a `Config`, a [`ConfigBuilder`](crate::ConfigBuilder)
/// or a URL.
pub trait IntoConfig {
    /// Converts into a validated configuration.
    fn into_config(self) -> Result<Config>;
}

impl IntoConfig for Config {
    fn into_config(self) -> Result<Config> {
        Ok(self)
    }
}

impl IntoConfig for crate::ConfigBuilder {
    fn into_config(self) -> Result<Config> {
        self.build()
    }
}

impl IntoConfig for &str {
    fn into_config(self) -> Result<Config> {
        Config::from_url(self)
    }
}

impl IntoConfig for String {
    fn into_config(self) -> Result<Config> {
        Config::from_url(&self)
    }
}

impl IntoConfig for &String {
    fn into_config(self) -> Result<Config> {
        Config::from_url(self)
    }
}

/// How long one wait on the pool lasts before checking whether connecting fails.
const CHECKOUT_SLICE: Duration = Duration::from_millis(50);

struct Inner {
    config: Config,
    pool: r2d2::Pool<Manager>,
    /// Opens connections outside the pool while connecting fails (see `checkout_quiet`).
    probe: Manager,
    shared: Arc<Shared>,
    heartbeat: Mutex<Option<HeartbeatThread>>,
    /// The `+switch-master` listener, with a Sentinel topology.
    sentinel: Mutex<Option<crate::sentinel::SentinelListener>>,
    /// State the helpers keep per handle (see [`Extension`]).
    extensions: Mutex<Vec<Arc<dyn Extension>>>,
}

/// State a helper keeps per handle (the lock watchdog, for example): created on first use,
/// shut down when the handle closes. The handle never names the helpers.
pub(crate) trait Extension: std::any::Any + Send + Sync {
    /// Stops what the extension runs (called once, when the handle closes).
    fn shut_down(&self) {}
}

impl Inner {
    fn breaker(&self) -> &Breaker {
        &self.shared.breaker
    }

    /// Stops the heartbeat, retires every connection and disconnects the event listeners.
    /// Returns the heartbeat thread's panic message, if it panicked.
    fn shut_down(&self) -> Option<String> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let extensions = std::mem::take(&mut *self.extensions.lock());
        for extension in extensions {
            extension.shut_down();
        }
        let heartbeat = self.heartbeat.lock().take();
        let panicked = heartbeat.and_then(|mut h| h.stop().err());
        let listener = self.sentinel.lock().take();
        if let Some(mut listener) = listener {
            listener.stop();
        }
        // Every idle connection fails validation now, so one `try_get` closes them all;
        // connections in use are closed when they come back. A connection the pool is
        // opening right now is refused when it completes; wait for those (at most the
        // connect timeout) and close whatever reached the pool meanwhile.
        self.shared.retire_connections();
        drop(self.pool.try_get());
        // A connection the pool made counts as created when `connect` returns, but reaches
        // the pool's idle list a moment later: wait until no connect is running and every
        // connection made is either in the pool (where `try_get` closes it) or closed.
        let deadline = Instant::now() + self.config.timeouts.connect;
        loop {
            drop(self.pool.try_get());
            let c = &self.shared.counters;
            let alive = c
                .conns_created
                .load(Ordering::Acquire)
                .saturating_sub(c.conns_closed.load(Ordering::Acquire));
            let in_pool = u64::from(self.pool.state().connections);
            let settled = self.shared.connecting.load(Ordering::Acquire) == 0 && alive <= in_pool;
            let idle = self.pool.state().idle_connections;
            if (settled && idle == 0) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.events.close();
        info!("redis at {}: closed", self.config.addr);
        panicked
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(panic) = self.shut_down() {
            warn!(
                "redis at {}: the heartbeat thread had panicked: {panic}",
                self.config.addr
            );
        }
    }
}

/// A pooled, thread-safe Redis client. Cheap to clone (an `Arc`); share it between threads.
///
/// Three ways to send commands, from the most convenient to the most controlled:
///
/// 1. **`redis::Commands` on the handle.** `Redis` implements [`redis::ConnectionLike`], so
///    every `redis::Commands` method works on a `&mut Redis` (clone the handle to get one).
///    Each command checks a connection out of the pool, passes the circuit breaker and is
///    retried under the [`RetryPolicy`]. Errors come back as `redis::RedisError`; `?` into
///    `redkit::Error` recovers the full classification (including pool timeouts and an open
///    breaker).
/// 2. **Typed calls**: [`Redis::query`], [`Redis::run`], [`Redis::pipeline`],
///    [`Redis::transaction`] return `redkit::Result`.
/// 3. **A checked-out connection**: [`Redis::conn`] for several commands in a row on one
///    connection (no retries, no breaker), for example blocking commands.
///
/// ```no_run
/// use redis::Commands;
/// use redkit::Redis;
///
/// let redis = Redis::connect("redis://127.0.0.1/")?;
///
/// // 1. redis::Commands on a handle:
/// let mut r = redis.clone();
/// r.set::<_, _, ()>("greeting", "hello")?;
/// let v: String = r.get("greeting")?;
///
/// // 2. typed calls:
/// let n: i64 = redis.query(redis::cmd("INCR").arg("counter"))?;
///
/// // 3. a checked-out connection:
/// let mut con = redis.conn()?;
/// let len: usize = con.llen("queue")?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("config", &self.inner.config)
            .field("health", &self.inner.shared.health())
            .field("breaker", &self.inner.breaker().state())
            .finish_non_exhaustive()
    }
}

/// A [`Redis`] handle that does not keep it open.
#[derive(Clone, Debug)]
pub(crate) struct WeakRedis(std::sync::Weak<Inner>);

impl WeakRedis {
    /// The handle, unless every clone was dropped.
    pub(crate) fn upgrade(&self) -> Option<Redis> {
        self.0.upgrade().map(|inner| Redis { inner })
    }
}

impl Redis {
    /// Creates a handle and checks that the server answers: a wrong address, password,
    /// certificate or ACL user fails here with a typed error. The connection used for the
    /// check becomes the heartbeat's; the pool fills in the background.
    pub fn connect(config: impl IntoConfig) -> Result<Redis> {
        let config = config.into_config()?;
        let (shared, kicks) = Shared::new(&config, Health::Healthy);
        let shared = Arc::new(shared);
        let manager = Manager::new(config.clone(), shared.clone())?;
        let hb = &config.heartbeat;
        let timeout = hb.interval.map_or(config.timeouts.response, |_| hb.timeout);
        let raw = crate::heartbeat::open_checked(&manager, &shared, timeout)?;
        info!("redis at {}: connected", config.addr);
        Redis::build(config, shared, kicks, manager, Some(raw))
    }

    /// Creates a handle without touching the network. Connections open in the background
    /// and on demand; a server that is down now is not an error until a command needs it.
    /// The [health](Redis::health) is `Down` until the heartbeat's first `PING` answers.
    pub fn connect_lazy(config: impl IntoConfig) -> Result<Redis> {
        let config = config.into_config()?;
        let health = if config.heartbeat.interval.is_some() {
            Health::Down
        } else {
            Health::Healthy
        };
        let (shared, kicks) = Shared::new(&config, health);
        let shared = Arc::new(shared);
        let manager = Manager::new(config.clone(), shared.clone())?;
        Redis::build(config, shared, kicks, manager, None)
    }

    fn build(
        config: Config,
        shared: Arc<Shared>,
        kicks: Receiver<crate::heartbeat::Kick>,
        heartbeat_manager: Manager,
        con: Option<RawConn>,
    ) -> Result<Redis> {
        if config.tls.as_ref().is_some_and(|t| t.insecure) {
            warn!(
                "redis at {}: TLS certificate verification is OFF (insecure mode): use only in tests",
                config.addr
            );
        }
        if let Some(topology) = &shared.cluster {
            topology.set_owner(Arc::downgrade(&shared));
        }
        let manager = Manager::new(config.clone(), shared.clone())?;
        let threads = Arc::new(
            scheduled_thread_pool::ScheduledThreadPool::builder()
                .num_threads(2)
                .thread_name_pattern("redkit-pool-{}")
                .on_drop_behavior(
                    scheduled_thread_pool::OnPoolDropBehavior::DiscardPendingScheduled,
                )
                .build(),
        );
        let pool = r2d2::Pool::builder()
            .max_size(config.pool.max_size)
            .min_idle(Some(config.pool.min_idle))
            .idle_timeout(config.pool.idle_timeout)
            .max_lifetime(config.pool.max_lifetime)
            .connection_timeout(config.timeouts.checkout)
            // Our `is_valid` is two atomic loads, not a PING.
            .test_on_check_out(true)
            .thread_pool(threads)
            .error_handler(Box::new(pool::QuietErrors))
            .event_handler(Box::new(pool::Events(shared.clone())))
            .build_unchecked(manager);
        let heartbeat = match config.heartbeat.interval {
            Some(_) => Some(HeartbeatThread::spawn(
                config.heartbeat,
                heartbeat_manager,
                shared.clone(),
                kicks,
                con,
            )?),
            None => None,
        };
        let sentinel = match &shared.sentinel {
            Some(state) => Some(crate::sentinel::SentinelListener::spawn(
                &shared,
                state.clone(),
                config.clone(),
            )?),
            None => None,
        };
        Ok(Redis {
            inner: Arc::new(Inner {
                sentinel: Mutex::new(sentinel),
                probe: Manager::new(config.clone(), shared.clone())?,
                config,
                pool,
                shared,
                heartbeat: Mutex::new(heartbeat),
                extensions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// With a Sentinel topology, the address of the master that new connections go to (of
    /// the replica, with [`SentinelRole::Replica`](crate::SentinelRole::Replica)); `None`
    /// before the first discovery, and without Sentinel.
    pub fn sentinel_master(&self) -> Option<crate::config::Addr> {
        self.inner
            .shared
            .sentinel
            .as_ref()
            .and_then(|s| s.current_addr())
    }

    /// With a Cluster topology, every master of the current slot map (each listed once, in
    /// no particular order); empty without Cluster.
    pub fn cluster_masters(&self) -> Vec<crate::config::Addr> {
        match &self.inner.shared.cluster {
            Some(topology) => {
                topology.refresh_if_stale();
                topology.masters()
            }
            None => Vec::new(),
        }
    }

    /// Runs one read-only command on the cluster node `addr` (retried like any read).
    pub(crate) fn query_node<T: FromRedisValue>(
        &self,
        addr: &crate::config::Addr,
        cmd: &Cmd,
    ) -> Result<T> {
        let packed = cmd.get_packed_command();
        self.execute(|| true, |con| script::convert(con.exec_on(addr, &packed)?))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Closes the handle, for every clone: stops the heartbeat thread (waiting for it), closes
    /// the idle pooled connections (connections in use close when they come back), sends
    /// [`Event::Closed`] and disconnects every event listener. Calls made afterwards fail with
    /// [`Error::Closed`]. Closing twice is fine.
    ///
    /// Dropping the last clone does the same, logging what `close` would return. The pool's
    /// own threads end when the last clone is dropped.
    pub fn close(&self) -> Result<()> {
        match self.inner.shut_down() {
            None => Ok(()),
            Some(panic) => Err(Error::Background {
                thread: "redkit-heartbeat",
                reason: panic,
            }),
        }
    }

    /// A reference that does not keep the handle open (for background threads).
    pub(crate) fn downgrade(&self) -> WeakRedis {
        WeakRedis(Arc::downgrade(&self.inner))
    }

    /// Sends an event to every listener.
    pub(crate) fn emit(&self, event: Event) {
        self.inner.shared.events.emit(event);
    }

    /// The handle's extension of type `T`, created with `T::default()` on first use.
    /// `None` once the handle is closed (a closed handle starts nothing new).
    pub(crate) fn extension<T: Extension + Default>(&self) -> Option<Arc<T>> {
        let mut slots = self.inner.extensions.lock();
        for e in slots.iter() {
            let any: Arc<dyn std::any::Any + Send + Sync> = e.clone();
            if let Ok(found) = any.downcast::<T>() {
                return Some(found);
            }
        }
        if self.is_closed() {
            return None;
        }
        let new = Arc::new(T::default());
        slots.push(new.clone());
        Some(new)
    }

    /// Whether [`Redis::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// A new event listener with room for 256 events (see [`crate::events`]).
    pub fn events(&self) -> Receiver<Event> {
        self.events_with_capacity(events::DEFAULT_CAPACITY)
    }

    /// A new event listener that holds at most `capacity` undelivered events; when it is full
    /// further events are lost for it (counted in [`Stats::events_dropped`]).
    pub fn events_with_capacity(&self, capacity: usize) -> Receiver<Event> {
        self.inner.shared.events.subscribe(capacity)
    }

    /// The connection's health as the heartbeat sees it.
    pub fn health(&self) -> Health {
        self.inner.shared.health()
    }

    /// Creates a handle from the `REDIS_URL` environment variable (see [`Redis::connect`]).
    pub fn from_env() -> Result<Redis> {
        Redis::connect(Config::from_env()?)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The key with the configured prefix in front (the key itself when there is none).
    pub fn key(&self, key: &str) -> String {
        match &self.inner.config.key_prefix {
            Some(prefix) => format!("{prefix}{key}"),
            None => key.to_owned(),
        }
    }

    /// A snapshot of the counters, latencies and states.
    pub fn stats(&self) -> Stats {
        self.inner.shared.rotate_windows();
        stats::snapshot(
            &self.inner.shared,
            self.inner.pool.state(),
            self.inner.config.pool.max_size,
        )
    }

    /// Count, errors and round-trip latency per command name, recorded by the handle's
    /// connections (see [`CommandStats`](crate::metrics::CommandStats)), sorted by name.
    ///
    /// ```no_run
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// for c in redis.command_metrics() {
    ///     println!("{}: {} calls, {} errors, p99 {:?}", c.name, c.count, c.errors, c.latency.p99);
    /// }
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn command_metrics(&self) -> Vec<crate::metrics::CommandStats> {
        self.inner.shared.command_metrics.snapshot()
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker().state()
    }

    /// Checks a connection out of the pool, waiting at most the configured checkout timeout.
    pub fn conn(&self) -> Result<PooledConnection> {
        self.conn_timeout(self.inner.config.timeouts.checkout)
    }

    /// Checks a connection out of the pool, waiting at most `timeout`.
    ///
    /// Fails with [`Error::PoolTimeout`] when every connection stays busy, or at once with the
    /// connect error (connection refused, authentication, TLS...) while none can be opened.
    pub fn conn_timeout(&self, timeout: Duration) -> Result<PooledConnection> {
        self.check_open()
            .and_then(|()| self.checkout_quiet(timeout))
            .inspect_err(|e| {
                self.inner.shared.counters.error(e.class());
            })
    }

    /// Checks out an idle connection if one is ready; never blocks.
    pub fn try_conn(&self) -> Option<PooledConnection> {
        if self.is_closed() {
            return None;
        }
        self.inner.pool.try_get().map(|c| self.wrap(c))
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shared.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn wrap(&self, conn: r2d2::PooledConnection<Manager>) -> PooledConnection {
        PooledConnection::new(
            conn,
            self.inner.shared.clone(),
            self.inner.config.timeouts.response,
        )
    }

    /// Runs one command and converts its reply. Retried only when it surely did not run, or
    /// when it is a read-only command (see [`crate::retry`]).
    pub fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.query_with(|| is_read_only_cmd(cmd), cmd)
    }

    /// Like [`Redis::query`], but the caller declares the command idempotent: it is resent
    /// even when its first attempt may have run.
    pub fn query_idempotent<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.query_with(|| true, cmd)
    }

    fn query_with<T: FromRedisValue>(&self, idempotent: impl Fn() -> bool, cmd: &Cmd) -> Result<T> {
        let packed = cmd.get_packed_command();
        self.execute(idempotent, |con| script::convert(con.exec_packed(&packed)?))
    }

    /// Runs a closure on a pooled connection, with the breaker and the retry policy. The
    /// closure is run again only when its failure surely did not run anything on the server
    /// (see [`Redis::run_idempotent`] otherwise).
    pub fn run<T>(&self, f: impl FnMut(&mut PooledConnection) -> Result<T>) -> Result<T> {
        self.execute(|| false, f)
    }

    /// Like [`Redis::run`], and the caller declares the closure idempotent: it is run again
    /// even when an earlier attempt may have had effects.
    pub fn run_idempotent<T>(
        &self,
        f: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        self.execute(|| true, f)
    }

    /// Runs a [`Pipeline`] (plain or atomic, with scripts), with the breaker and the retry
    /// policy (resent after an unknown fate only when every command is read-only).
    pub fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        self.execute(|| pipe.is_read_only(), |con| pipe.query(con))
    }

    /// An optimistic transaction: `WATCH`es `keys`, lets `build` read what it needs and fill
    /// an atomic pipeline, then runs it with `MULTI`/`EXEC`. When a watched key changed in
    /// the meantime the whole thing runs again, at most
    /// [`transaction_attempts`](crate::ConfigBuilder::transaction_attempts) times, then fails
    /// with [`Error::TransactionConflict`]. When `build` fails, the keys are `UNWATCH`ed
    /// before the connection goes back to the pool.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// use redis::Commands;
    /// let (new_balance,): (i64,) = redis.transaction(&["balance"], |con, pipe| {
    ///     let balance: i64 = con.get::<_, Option<i64>>("balance")?.unwrap_or(0);
    ///     pipe.cmd("SET").arg("balance").arg(balance + 10).ignore()
    ///         .cmd("GET").arg("balance");
    ///     Ok(())
    /// })?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn transaction<K, T, F>(&self, keys: &[K], mut build: F) -> Result<T>
    where
        K: ToRedisArgs,
        T: FromRedisValue,
        F: FnMut(&mut PooledConnection, &mut Pipeline) -> Result<()>,
    {
        let attempts = self.inner.config.transaction_attempts;
        self.execute(
            || false,
            |con| {
                for _ in 0..attempts {
                    let mut watch = redis::cmd("WATCH");
                    watch.arg(keys);
                    script::convert::<()>(con.exec_packed(&watch.get_packed_command())?)?;
                    let mut pipe = Pipeline::new();
                    pipe.atomic();
                    if let Err(e) = build(con, &mut pipe) {
                        unwatch(con);
                        return Err(e);
                    }
                    // EXEC (or EXECABORT) clears the WATCH in every outcome.
                    match pipe.query::<Option<T>>(con)? {
                        Some(v) => return Ok(v),
                        None => {
                            self.inner
                                .shared
                                .counters
                                .transaction_conflicts
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(Error::TransactionConflict { attempts })
            },
        )
    }

    /// The heart of every call: breaker, checkout, attempt, classification, retry.
    ///
    /// `idempotent` is asked only when a failure's fate is unknown, so working it out costs
    /// nothing on the happy path.
    fn execute<T>(
        &self,
        idempotent: impl Fn() -> bool,
        op: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        let policy: &RetryPolicy = &self.inner.config.retry;
        let start = Instant::now();
        let result = self.execute_from(start, idempotent, op, policy);
        self.inner.shared.command_latency.record(start.elapsed());
        result
    }

    fn execute_from<T>(
        &self,
        start: Instant,
        idempotent: impl Fn() -> bool,
        mut op: impl FnMut(&mut PooledConnection) -> Result<T>,
        policy: &RetryPolicy,
    ) -> Result<T> {
        let deadline = start + policy.max_elapsed;
        let mut delays = None;
        let mut attempt = 1;
        loop {
            match self.attempt(&mut op, deadline) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // A replica handle's READONLY is final: the write went to a replica
                    // on purpose.
                    let final_read_only = e.class() == crate::ErrorClass::ReadOnly
                        && self.inner.shared.read_only_expected();
                    if attempt < policy.max_attempts
                        && !final_read_only
                        && RetryPolicy::is_retry_safe_with(&e, &idempotent)
                    {
                        let delay = delays
                            .get_or_insert_with(|| policy.backoff.delays())
                            .next_delay();
                        if Instant::now() + delay < deadline {
                            log::debug!("retrying after {e} in {delay:?} (attempt {attempt})");
                            std::thread::sleep(delay);
                            attempt += 1;
                            self.inner
                                .shared
                                .counters
                                .retries
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    self.inner.shared.counters.error(e.class());
                    return Err(e);
                }
            }
        }
    }

    fn attempt<T>(
        &self,
        op: &mut impl FnMut(&mut PooledConnection) -> Result<T>,
        deadline: Instant,
    ) -> Result<T> {
        self.check_open()?;
        let checkout = self
            .inner
            .config
            .timeouts
            .checkout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        if self.inner.shared.cluster.is_some() {
            // Each cluster node has a breaker of its own (a dead master must not fail the
            // others): see `crate::cluster`.
            return self
                .checkout_quiet(checkout)
                .and_then(|mut con| op(&mut con));
        }
        let breaker = self.inner.breaker();
        let (admission, transition) = match breaker.admit() {
            Ok(a) => a,
            Err(e) => {
                let shared = &self.inner.shared;
                shared
                    .counters
                    .breaker_rejected
                    .fetch_add(1, Ordering::Relaxed);
                shared.demand();
                return Err(e);
            }
        };
        self.inner.shared.breaker_changed(transition);
        // A half-open probe whose closure panics must still be accounted for, or the breaker
        // would wait for it forever.
        let mut guard = ProbeGuard {
            breaker,
            admission: Some(admission),
        };
        let result = self
            .checkout_quiet(checkout)
            .and_then(|mut con| op(&mut con));
        let failed = matches!(&result, Err(e) if e.class().is_infrastructure());
        if let Some(admission) = guard.admission.take() {
            self.inner
                .shared
                .breaker_changed(breaker.record(admission, failed));
        }
        result
    }

    /// Checkout without counting the error (`execute` counts what reaches the caller).
    ///
    /// While connecting fails, a caller does not wait out the checkout timeout for a
    /// connection that cannot come: it tries one connection itself (on its own thread, within
    /// the connect timeout) and fails fast with that error, or, when the server is back,
    /// clears the failing state and gets a fresh connection at once.
    fn checkout_quiet(&self, timeout: Duration) -> Result<PooledConnection> {
        let inner = &*self.inner;
        let c = &inner.shared.counters;
        // Fast path: an idle connection, no clock, no waiting bookkeeping.
        if let Some(conn) = inner.pool.try_get() {
            c.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(self.wrap(conn));
        }
        let start = Instant::now();
        let deadline = start + timeout;
        c.waiting.fetch_add(1, Ordering::Relaxed);
        let got = loop {
            if inner.shared.connect_failing() {
                if let Some(conn) = inner.pool.try_get() {
                    break Ok(conn);
                }
                if let Err(e) = inner.probe.probe() {
                    inner.shared.demand();
                    break Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                c.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                inner
                    .shared
                    .events
                    .emit(Event::PoolExhausted { waited: timeout });
                break Err(Error::PoolTimeout { waited: timeout });
            }
            // Wait in slices so that a connect failure seen meanwhile ends the wait early.
            if let Ok(conn) = inner.pool.get_timeout((deadline - now).min(CHECKOUT_SLICE)) {
                break Ok(conn);
            }
        };
        c.waiting.fetch_sub(1, Ordering::Relaxed);
        let conn = got?;
        c.checkout_waited(start.elapsed());
        Ok(self.wrap(conn))
    }

    /// On the `ConnectionLike` surface error replies reach the caller as values (the `redis`
    /// crate turns them into errors later): count them here.
    fn count_error_replies(&self, values: &[Value]) {
        for v in values {
            if let Value::ServerError(e) = v {
                let e = Error::from_redis(e.clone().into(), Delivery::Answered);
                self.inner.shared.counters.error(e.class());
            }
        }
    }
}

/// An error reply that says "try again later" (`LOADING`, `BUSY`, `READONLY`...) becomes an
/// error so that the retry policy sees it; other replies pass through as values.
fn transient_reply_as_error(value: Value) -> Result<Value> {
    if let Value::ServerError(e) = &value {
        let err = Error::from_redis(e.clone().into(), Delivery::Answered);
        if err.is_retryable() {
            return Err(err);
        }
    }
    Ok(value)
}

fn unwatch(con: &mut PooledConnection) {
    let r = con.exec_packed(&redis::cmd("UNWATCH").get_packed_command());
    if let Err(e) = r.and_then(script::convert::<()>) {
        // The connection keeps its WATCH: never hand it out again.
        warn!("UNWATCH failed ({e}); closing the connection");
        con.mark_broken();
    }
}

struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    admission: Option<crate::breaker::Admission>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.breaker.record(admission, true);
        }
    }
}

/// Whether every command in a packed pipeline is one redkit knows to be read-only.
fn packed_all_read_only(packed: &[u8]) -> bool {
    resp::each_command(packed, |name, _| is_read_only_command(name))
}

impl ConnectionLike for Redis {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        let read_only = || resp::command_name(cmd).is_some_and(is_read_only_command);
        let value = self
            .execute(read_only, |con| {
                transient_reply_as_error(con.exec_packed(cmd)?)
            })
            .map_err(pool::to_redis_error)?;
        self.count_error_replies(std::slice::from_ref(&value));
        Ok(value)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let read_only = || packed_all_read_only(cmd);
        let values = self
            .execute(read_only, |con| con.exec_pipeline(cmd, offset, count))
            .map_err(pool::to_redis_error)?;
        self.count_error_replies(&values);
        Ok(values)
    }

    fn get_db(&self) -> i64 {
        self.inner.config.db
    }

    fn check_connection(&mut self) -> bool {
        self.query::<String>(&redis::cmd("PING")).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.is_closed() && self.inner.breaker().state() != BreakerState::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Redis>();
        fn send<T: Send>() {}
        send::<PooledConnection>();
        send::<Pipeline>();
        check::<crate::Script>();
    }

    #[test]
    fn reads_command_names_from_packed_requests() {
        let get = redis::cmd("GET").arg("k").get_packed_command();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("a").cmd("MGET").arg("b").arg("c");
        assert!(packed_all_read_only(&pipe.get_packed_pipeline()));
        pipe.cmd("INCR").arg("x");
        assert!(!packed_all_read_only(&pipe.get_packed_pipeline()));
        assert!(!packed_all_read_only(b"*1\r\n$3\r\nGE"));
    }
}
