//! The [`Redis`] handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use log::{info, warn};
use parking_lot::Mutex;
use redis::{Cmd, ConnectionLike, FromRedisValue, ToRedisArgs, Value};

mod calls;
mod cluster_mux;
mod dedicated;
mod execute;
mod heartbeat;
mod mux;

pub use dedicated::DedicatedConnection;

use crate::breaker::{Breaker, BreakerState};
use crate::config::Config;
use crate::conn::{Connector, Generation};
use crate::error::{to_redis_error, Error, Result};
use crate::events::{self, Event, Health};
use crate::observe::{self, Observed};
use crate::pool::{Manager, Pool, PoolState, PooledConnection, RawConn};
use crate::retry::{is_read_only_cmd, is_read_only_command};
use crate::script::{self, Pipeline};
use crate::stats::Stats;
use crate::telemetry::Op;
use crate::util::{resp, time};
use heartbeat::HeartbeatThread;

/// Something that can become a [`Config`]: a `Config`, a [`ConfigBuilder`](crate::ConfigBuilder),
/// a URL, or the `redis` crate's own `redis::Client` or `redis::ConnectionInfo` (and
/// references to them).
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

/// The address, TLS choice, database, credentials and protocol of a `redis` crate
/// connection info (see [`ConfigBuilder::from_connection_info`](crate::ConfigBuilder::from_connection_info)).
impl IntoConfig for &redis::ConnectionInfo {
    fn into_config(self) -> Result<Config> {
        crate::ConfigBuilder::from_connection_info(self)?.build()
    }
}

/// Like `&redis::ConnectionInfo`.
impl IntoConfig for redis::ConnectionInfo {
    fn into_config(self) -> Result<Config> {
        (&self).into_config()
    }
}

/// The connection info of a `redis` crate client: `Redis::connect(&client)` for code that
/// already has one.
impl IntoConfig for &redis::Client {
    fn into_config(self) -> Result<Config> {
        self.get_connection_info().into_config()
    }
}

/// Like `&redis::Client`.
impl IntoConfig for redis::Client {
    fn into_config(self) -> Result<Config> {
        (&self).into_config()
    }
}

/// How long [`Redis::close`] (and dropping the last clone) may take at most, in a black hole
/// too: background threads busy with a call are left to end it by its own deadline.
pub const CLOSE_BOUND: Duration = Duration::from_millis(300);

struct Inner {
    config: Config,
    /// Opens connections with the config's settings (TLS parsed once).
    connector: Connector,
    /// Opens connections the way the pool does (Sentinel, Cluster): dedicated connections.
    manager: Manager,
    pool: Pool,
    /// The multiplexed connections, when the config asks for them.
    mux: Option<Arc<mux::MuxSet>>,
    observed: Arc<Observed>,
    breaker: Arc<Breaker>,
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
    /// Stops the heartbeat, retires every connection and disconnects the event listeners,
    /// within [`CLOSE_BOUND`]. Returns the heartbeat thread's panic message, if it panicked.
    fn shut_down(&self) -> Option<String> {
        if !self.pool.state().close() {
            return None;
        }
        let deadline = time::after(CLOSE_BOUND);
        let extensions = std::mem::take(&mut *self.extensions.lock());
        for extension in extensions {
            extension.shut_down();
        }
        let heartbeat = self.heartbeat.lock().take();
        let panicked = heartbeat.and_then(|mut h| h.stop(time::left(deadline) / 2).err());
        let listener = self.sentinel.lock().take();
        if let Some(mut listener) = listener {
            listener.stop();
        }
        if let Some(m) = &self.mux {
            m.interrupt_all();
        }
        self.pool.drain(time::left(deadline));
        self.observed.events.close();
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

/// What a handle is made of before its threads start.
struct Parts {
    connector: Connector,
    manager: Manager,
    observed: Arc<Observed>,
    breaker: Arc<Breaker>,
    signals: Receiver<crate::pool::Signal>,
}

impl Parts {
    fn new(config: &Config, health: Health) -> Result<Parts> {
        let connector = Connector::new(config)?;
        let observed = Arc::new(Observed::new(config, health));
        let generation = Arc::new(Generation::default());
        let breaker = Arc::new(Breaker::new(config.breaker));
        let sentinel = match &config.sentinel {
            Some(s) => Some(Arc::new(crate::sentinel::SentinelState::new(
                config,
                s.clone(),
                connector.clone(),
                breaker.clone(),
                generation.clone(),
                observed.clone(),
            )?)),
            None => None,
        };
        let cluster = crate::cluster::Topology::new(config, connector.clone(), observed.clone())
            .map(Arc::new);
        let (signal_tx, signals) = crossbeam_channel::bounded(4);
        let state = Arc::new(PoolState::new(
            config,
            observed.clone(),
            generation,
            signal_tx,
            sentinel,
            cluster,
        ));
        Ok(Parts {
            manager: Manager::new(connector.clone(), state),
            connector,
            observed,
            breaker,
            signals,
        })
    }
}

/// A pooled, thread-safe Redis client. Cheap to clone (an `Arc`); share it between threads.
///
/// Three ways to send commands, from the most convenient to the most controlled:
///
/// 1. **`redis::Commands` on the handle.** `Redis` implements [`redis::ConnectionLike`], so
///    every `redis::Commands` method works on a `&mut Redis` (clone the handle to get one).
///    Each command checks a connection out of the pool, passes the circuit breaker and is
///    retried under the [`RetryPolicy`](crate::RetryPolicy). Errors come back as `redis::RedisError`; `?` into
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
    /// The key prefix this handle applies to every command it sends (`None` on the
    /// helpers' own handles, which prefix their keys themselves).
    prefix: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("config", &self.inner.config)
            .field("health", &self.inner.observed.health())
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

/// A [`Redis`] handle that does not keep it open.
#[derive(Clone, Debug)]
pub(crate) struct WeakRedis(std::sync::Weak<Inner>, Option<Arc<[u8]>>);

impl WeakRedis {
    /// The handle, unless every clone was dropped.
    pub(crate) fn upgrade(&self) -> Option<Redis> {
        self.0.upgrade().map(|inner| Redis {
            inner,
            prefix: self.1.clone(),
        })
    }
}

impl Redis {
    /// Creates a handle and checks that the server answers: a wrong address, password,
    /// certificate or ACL user fails here with a typed error. The connection used for the
    /// check becomes the heartbeat's; the pool fills in the background.
    pub fn connect(config: impl IntoConfig) -> Result<Redis> {
        let config = config.into_config()?;
        let parts = Parts::new(&config, Health::Healthy)?;
        let hb = &config.heartbeat;
        let timeout = hb.interval.map_or(config.timeouts.response, |_| hb.timeout);
        let raw = heartbeat::open_checked(&parts.manager, &parts.observed, timeout)?;
        info!("redis at {}: connected", config.addr);
        Redis::build(config, parts, Some(raw))
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
        let parts = Parts::new(&config, health)?;
        Redis::build(config, parts, None)
    }

    fn build(config: Config, parts: Parts, con: Option<RawConn>) -> Result<Redis> {
        if config.tls.as_ref().is_some_and(|t| t.insecure) {
            warn!(
                "redis at {}: TLS certificate verification is OFF (insecure mode): use only in tests",
                config.addr
            );
        }
        let Parts {
            connector,
            manager,
            observed,
            breaker,
            signals,
        } = parts;
        let pool = Pool::new(&config, manager.clone());
        let mux = (config.multiplex.connections > 0)
            .then(|| Arc::new(mux::MuxSet::new(&config, manager.clone())));
        if let Some(m) = &mux {
            // A black hole the heartbeat notices fails every call in flight at once.
            let weak = Arc::downgrade(m);
            manager.state().on_lost(Box::new(move || {
                if let Some(m) = weak.upgrade() {
                    m.interrupt_all();
                }
            }));
            // On a cluster, so does one node the health checks find silent.
            if let Some(topo) = &manager.state().cluster {
                let weak = Arc::downgrade(m);
                topo.on_node_down(Box::new(move |addr| {
                    if let Some(c) = weak.upgrade() {
                        if let Some(c) = c.cluster() {
                            c.interrupt(addr);
                        }
                    }
                }));
            }
        }
        let heartbeat = match config.heartbeat.interval {
            Some(_) => Some(HeartbeatThread::spawn(
                config.heartbeat,
                manager.clone(),
                breaker.clone(),
                signals,
                con,
                // Stats published every beat, for the `metrics` feature only.
                cfg!(feature = "metrics").then(|| pool.sampler()),
            )?),
            None => None,
        };
        let sentinel = match &manager.state().sentinel {
            Some(state) => Some(crate::sentinel::SentinelListener::spawn(state.clone())?),
            None => None,
        };
        let prefix = config
            .key_prefix
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| Arc::from(p.as_bytes()));
        Ok(Redis {
            prefix,
            inner: Arc::new(Inner {
                sentinel: Mutex::new(sentinel),
                config,
                connector,
                manager,
                pool,
                mux,
                observed,
                breaker,
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
            .pool
            .state()
            .sentinel
            .as_ref()
            .and_then(|s| s.current_addr())
    }

    /// With a Cluster topology, every master of the current slot map (each listed once, in
    /// no particular order); empty without Cluster.
    pub fn cluster_masters(&self) -> Vec<crate::config::Addr> {
        match &self.inner.pool.state().cluster {
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
        self.execute(
            Op::Command(&packed),
            || true,
            |con| script::convert(con.exec_on(addr, &packed)?),
        )
    }

    /// The pool's shared state (topology, closed flag, generation).
    pub(crate) fn pool_state(&self) -> &Arc<PoolState> {
        self.inner.pool.state()
    }

    /// Opens connections with this handle's settings.
    pub(crate) fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// Opens connections the way the pool does (to the Sentinel master, or a cluster link).
    pub(crate) fn manager(&self) -> &Manager {
        &self.inner.manager
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
                thread: heartbeat::THREAD_NAME,
                reason: panic,
            }),
        }
    }

    /// A reference that does not keep the handle open (for background threads).
    pub(crate) fn downgrade(&self) -> WeakRedis {
        WeakRedis(Arc::downgrade(&self.inner), self.prefix.clone())
    }

    /// Sends an event to every listener.
    pub(crate) fn emit(&self, event: Event) {
        self.inner.observed.events.emit(event);
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
        self.inner.pool.state().is_closed()
    }

    /// A new event listener with room for 256 events (see [`crate::events`]).
    pub fn events(&self) -> Receiver<Event> {
        self.events_with_capacity(events::DEFAULT_CAPACITY)
    }

    /// A new event listener that holds at most `capacity` undelivered events; when it is full
    /// further events are lost for it (counted in [`Stats::events_dropped`]).
    pub fn events_with_capacity(&self, capacity: usize) -> Receiver<Event> {
        self.inner.observed.events.subscribe(capacity)
    }

    /// The connection's health as the heartbeat sees it.
    pub fn health(&self) -> Health {
        self.inner.observed.health()
    }

    /// Creates a handle from the `REDIS_URL` environment variable (see [`Redis::connect`]).
    pub fn from_env() -> Result<Redis> {
        Redis::connect(Config::from_env()?)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The same handle without the automatic key prefix: for redkit's helpers, which put
    /// [`Redis::key`] in front of their keys themselves (so that a prefix is never applied
    /// twice).
    pub(crate) fn unprefixed(&self) -> Redis {
        Redis {
            inner: self.inner.clone(),
            prefix: None,
        }
    }

    /// The prefix this handle puts in front of every key it sends, if any.
    pub(crate) fn auto_prefix(&self) -> Option<&Arc<[u8]>> {
        self.prefix.as_ref()
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
        self.inner.observed.rotate_windows();
        observe::snapshot(
            &self.inner.observed,
            self.inner.breaker.state(),
            self.inner.pool.r2d2_state(),
            self.inner.pool.max_size(),
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
        self.inner.observed.command_metrics.snapshot()
    }

    /// What the handle reports to the `metrics` facade (nothing without the feature).
    pub(crate) fn export(&self) -> &crate::telemetry::Export {
        &self.inner.observed.export
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
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
            .and_then(|()| self.inner.pool.checkout(timeout))
            .map(|mut con| {
                con.set_prefix(self.prefix.clone());
                con
            })
            .inspect_err(|e| {
                self.inner.observed.counters.error(e.class());
            })
    }

    /// Checks out an idle connection if one is ready; never blocks.
    pub fn try_conn(&self) -> Option<PooledConnection> {
        if self.is_closed() {
            return None;
        }
        self.inner.pool.try_get().map(|mut con| {
            con.set_prefix(self.prefix.clone());
            con
        })
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
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
        let muxable = !self.check_shared(&packed)?;
        self.execute_call(Op::Command(&packed), idempotent, muxable, |con| {
            script::convert(con.exec_packed(&packed)?)
        })
    }

    /// Refuses what would change a pooled connection for later callers (see
    /// [`Error::WrongConnection`]), counting the refusal; `Ok(true)` when a command may block
    /// its connection (it never goes on a multiplexed one).
    fn check_shared(&self, packed: &[u8]) -> Result<bool> {
        crate::conn::state::check_shared(packed).inspect_err(|e| {
            self.inner.observed.counters.error(e.class());
        })
    }

    /// Runs a closure on a pooled connection, with the breaker and the retry policy. The
    /// closure is run again only when its failure surely did not run anything on the server
    /// (see [`Redis::run_idempotent`] otherwise).
    pub fn run<T>(&self, f: impl FnMut(&mut PooledConnection) -> Result<T>) -> Result<T> {
        self.execute(Op::Run, || false, f)
    }

    /// Like [`Redis::run`], and the caller declares the closure idempotent: it is run again
    /// even when an earlier attempt may have had effects.
    pub fn run_idempotent<T>(
        &self,
        f: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        self.execute(Op::Run, || true, f)
    }

    /// Runs a [`Pipeline`] (plain or atomic, with scripts), with the breaker and the retry
    /// policy (resent after an unknown fate only when every command is read-only).
    pub fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let muxable = !pipe.check_shared().inspect_err(|e| {
            self.inner.observed.counters.error(e.class());
        })?;
        let what = Op::Pipeline {
            commands: pipe.len(),
            atomic: pipe.is_atomic(),
        };
        self.execute_call(what, || pipe.is_read_only(), muxable, |con| pipe.query(con))
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
            Op::Transaction,
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
                                .observed
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
}

impl crate::ScriptCall {
    /// Runs the call through a [`Redis`] handle, with its breaker and retry policy (a script
    /// is resent only when it surely did not run).
    pub fn run<T: FromRedisValue>(&self, redis: &Redis) -> Result<T> {
        redis.execute_call(Op::Script, || false, true, |con| self.invoke(con))
    }
}

/// An error reply that says "try again later" (`LOADING`, `BUSY`, `READONLY`...) becomes an
/// error so that the retry policy sees it; other replies pass through as values.
fn transient_reply_as_error(value: Value) -> Result<Value> {
    if let Value::ServerError(e) = &value {
        let err = Error::from_redis(e.clone().into(), crate::Delivery::Answered);
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

/// Whether every command in a packed pipeline is one redkit knows to be read-only.
fn packed_all_read_only(packed: &[u8]) -> bool {
    resp::each_command(packed, |name, _| is_read_only_command(name))
}

impl ConnectionLike for Redis {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        let muxable = !self.check_shared(cmd).map_err(to_redis_error)?;
        let read_only = || resp::command_name(cmd).is_some_and(is_read_only_command);
        let value = self
            .execute_call(Op::Command(cmd), read_only, muxable, |con| {
                transient_reply_as_error(con.exec_packed(cmd)?)
            })
            .map_err(to_redis_error)?;
        self.count_error_replies(std::slice::from_ref(&value));
        Ok(value)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let muxable = !self.check_shared(cmd).map_err(to_redis_error)?;
        let read_only = || packed_all_read_only(cmd);
        let values = self
            .execute_call(
                Op::Pipeline {
                    commands: count,
                    atomic: false,
                },
                read_only,
                muxable,
                |con| con.exec_pipeline(cmd, offset, count),
            )
            .map_err(to_redis_error)?;
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
        !self.is_closed() && self.inner.breaker.state() != BreakerState::Open
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
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("a").cmd("MGET").arg("b").arg("c");
        assert!(packed_all_read_only(&pipe.get_packed_pipeline()));
        pipe.cmd("INCR").arg("x");
        assert!(!packed_all_read_only(&pipe.get_packed_pipeline()));
        assert!(!packed_all_read_only(b"*1\r\n$3\r\nGE"));
    }
}
