//! The connection pool: r2d2 over our own connection manager.
//!
//! Unlike the `redis` crate's r2d2 manager, ours connects with the connect timeout, sets read
//! and write timeouts on every new connection, sends `CLIENT SETNAME`, and does not `PING` on
//! every checkout. Checkout validation is two atomic loads: a connection is refused when it
//! saw an unrecoverable error, or when it is older than the pool's generation. After any
//! connection reports that the server dropped it, the connections made before that moment are
//! `PING`ed once at their next checkout (a server restart leaves every idle socket dead).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, trace, warn};
use parking_lot::Mutex;
use redis::{ConnectionLike, RedisError, Value};

use crate::breaker::{Breaker, BreakerState, Transition};
use crate::config::{Addr, Config, Protocol};
use crate::error::{Delivery, Error, ErrorClass, Result};
use crate::events::{AtomicHealth, Event, Health, Listeners};
use crate::heartbeat::Kick;
use crate::metrics::CommandMetrics;
use crate::stats::Counters;
use crate::util::histogram::Histogram;

/// State shared by the handle, the heartbeat thread, the manager and every pooled connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    /// Connections made before this generation are discarded.
    pub(crate) generation: AtomicU64,
    /// Connections last validated before this epoch are `PING`ed at checkout.
    pub(crate) suspect_epoch: AtomicU64,
    connect_failing: AtomicBool,
    pub(crate) breaker: Breaker,
    pub(crate) events: Listeners,
    health: AtomicHealth,
    pub(crate) heartbeat_latency: Histogram,
    heartbeat_last_us: AtomicU64,
    pub(crate) command_latency: Histogram,
    /// Count, errors and latency per command name.
    pub(crate) command_metrics: CommandMetrics,
    times: Mutex<Times>,
    /// Set by `Redis::close`: no new connections, every call fails with `Error::Closed`.
    pub(crate) closed: AtomicBool,
    /// Pool connections being opened right now (`close` waits for them).
    pub(crate) connecting: AtomicUsize,
    kick: Sender<Kick>,
    addr: Addr,
    /// Where the master is, with a Sentinel topology.
    pub(crate) sentinel: Option<Arc<crate::sentinel::SentinelState>>,
    /// The slot map, with a Cluster topology.
    pub(crate) cluster: Option<Arc<crate::cluster::Topology>>,
}

/// When things happened.
#[derive(Debug)]
struct Times {
    started: Instant,
    connected_at: Option<SystemTime>,
    disconnected_at: Option<SystemTime>,
    up_since: Option<Instant>,
}

/// A moment in the handle's life, for [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimesSnapshot {
    pub(crate) age: Duration,
    pub(crate) connected_at: Option<SystemTime>,
    pub(crate) disconnected_at: Option<SystemTime>,
    pub(crate) uptime: Option<Duration>,
}

/// The window over which latency percentiles are computed (see [`Histogram`]).
const LATENCY_WINDOW: Duration = Duration::from_secs(60);

impl Shared {
    /// Shared state for a handle whose health starts as `health`, and the receiving end of
    /// the heartbeat's wake-up channel.
    pub(crate) fn new(config: &Config, health: Health) -> (Shared, Receiver<Kick>) {
        let (kick, kicks) = crossbeam_channel::bounded(4);
        let shared = Shared {
            counters: Counters::default(),
            generation: AtomicU64::new(0),
            suspect_epoch: AtomicU64::new(0),
            connect_failing: AtomicBool::new(false),
            breaker: Breaker::new(config.breaker),
            events: Listeners::default(),
            health: AtomicHealth::new(health),
            heartbeat_latency: Histogram::new(LATENCY_WINDOW),
            heartbeat_last_us: AtomicU64::new(0),
            command_latency: Histogram::new(LATENCY_WINDOW),
            command_metrics: CommandMetrics::default(),
            times: Mutex::new(Times {
                started: Instant::now(),
                connected_at: None,
                disconnected_at: None,
                up_since: None,
            }),
            closed: AtomicBool::new(false),
            connecting: AtomicUsize::new(0),
            kick,
            addr: config.addr.clone(),
            sentinel: config
                .sentinel
                .clone()
                .map(|s| Arc::new(crate::sentinel::SentinelState::new(s))),
            cluster: crate::cluster::Topology::new(config).map(Arc::new),
        };
        (shared, kicks)
    }

    /// A call saw the server drop a connection: validate older connections before handing
    /// them out, and have the heartbeat check the server now.
    pub(crate) fn connection_dropped(&self) {
        self.connection_dropped_quiet();
        let _ = self.kick.try_send(Kick::Suspect);
    }

    /// A call failed because the server is down: ask the reconnect loop not to back off
    /// further (see `Kick::Demand`).
    pub(crate) fn demand(&self) {
        if self.health() == Health::Down {
            let _ = self.kick.try_send(Kick::Demand);
        }
    }

    /// Marks every existing pooled connection as suspect (`PING`ed at its next checkout).
    pub(crate) fn connection_dropped_quiet(&self) {
        self.suspect_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Retires every pooled connection made so far: idle ones are closed at their next
    /// checkout, busy ones when they come back.
    pub(crate) fn retire_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the last attempt to open a connection failed.
    pub(crate) fn connect_failing(&self) -> bool {
        self.connect_failing.load(Ordering::Acquire)
    }

    /// Records the outcome of an attempt to open a connection (logging state changes once).
    /// `counted`: a failure counts in the pool's `connect_failures` (the heartbeat's own
    /// attempts do not).
    pub(crate) fn record_connect(&self, addr: &Addr, result: Result<(), &Error>, counted: bool) {
        match result {
            Ok(()) => {
                if self.connect_failing.load(Ordering::Acquire)
                    && self.connect_failing.swap(false, Ordering::AcqRel)
                {
                    info!("redis at {addr}: connecting works again");
                    let _ = self.kick.try_send(Kick::Reachable);
                }
            }
            Err(e) => {
                if counted {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                if self.connect_failing.swap(true, Ordering::AcqRel) {
                    debug!("redis at {addr}: connect failed again: {e}");
                } else {
                    warn!("redis at {addr}: cannot connect: {e}");
                }
            }
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

    /// Logs, counts and emits a breaker transition.
    pub(crate) fn breaker_changed(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let addr = &self.addr;
        match t.to {
            BreakerState::Open => {
                self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
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

    /// Closes the breaker (the server is known to answer again).
    pub(crate) fn reset_breaker(&self) {
        self.breaker_changed(self.breaker.reset());
    }

    /// A heartbeat `PING` was answered after `took`.
    pub(crate) fn heartbeat_answered(&self, took: Duration) {
        self.heartbeat_latency.record(took);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
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

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether `READONLY` replies are expected (a Sentinel replica handle): they are final,
    /// not a sign that the master moved.
    pub(crate) fn read_only_expected(&self) -> bool {
        self.sentinel
            .as_ref()
            .is_some_and(|s| s.reads_from_replica())
    }
}

/// A connection to one server, or a cluster connection (a connection per node it uses).
pub(crate) enum Link {
    Node(redis::Connection),
    Cluster(Box<crate::cluster::ClusterLink>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Node(_) => f.write_str("Node"),
            Link::Cluster(c) => c.fmt(f),
        }
    }
}

impl Link {
    pub(crate) fn set_read_timeout(&mut self, d: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            Link::Node(c) => c.set_read_timeout(d),
            Link::Cluster(c) => c.set_read_timeout(d),
        }
    }

    pub(crate) fn set_write_timeout(&mut self, d: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            Link::Node(c) => c.set_write_timeout(d),
            Link::Cluster(c) => c.set_write_timeout(d),
        }
    }

    /// A cluster connection stays open: a failed node connection is closed inside it.
    pub(crate) fn is_open(&self) -> bool {
        match self {
            Link::Node(c) => c.is_open(),
            Link::Cluster(_) => true,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// Sends one packed command and reads its reply, telling apart a command that was never
    /// completely written from one whose reply did not come.
    pub(crate) fn exec(&mut self, cmd: &[u8]) -> Result<Value> {
        let con = match self {
            Link::Node(con) => con,
            Link::Cluster(c) => return c.exec(cmd),
        };
        con.send_packed_command(cmd)
            .map_err(|e| Error::from_redis(e, Delivery::NotSent))?;
        loop {
            match con.recv_response() {
                Ok(Value::Push { .. }) => continue,
                Ok(v) => return Ok(v),
                Err(e) => return Err(Error::from_wire(e, Delivery::Unknown)),
            }
        }
    }

    /// Sends a packed pipeline and reads `offset + count` replies, keeping the last `count`.
    pub(crate) fn pipeline(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>> {
        let con = match self {
            Link::Node(con) => con,
            Link::Cluster(c) => return c.pipeline(cmd, offset, count),
        };
        con.req_packed_commands(cmd, offset, count).map_err(|e| {
            let delivery = if e.is_io_error() || e.kind() == redis::ErrorKind::Parse {
                Delivery::Unknown
            } else {
                Delivery::Answered
            };
            Error::from_wire(e, delivery)
        })
    }
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        match self {
            Link::Node(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.exec(cmd).map_err(to_redis_error),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        match self {
            Link::Node(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.pipeline(cmd, offset, count).map_err(to_redis_error),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(c) => c.get_db(),
            Link::Cluster(_) => 0,
        }
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<()>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        Link::is_open(self)
    }
}

/// A connection as the pool holds it.
pub(crate) struct RawConn {
    pub(crate) con: Link,
    generation: u64,
    validated_epoch: u64,
    pub(crate) broken: bool,
}

/// Builds the `redis` crate client (connection info, TLS material) from our config.
pub(crate) fn redis_client(config: &Config) -> Result<redis::Client> {
    redis_client_at(config, &config.addr)
}

/// [`redis_client`] for another address (a master found through Sentinel).
pub(crate) fn redis_client_at(config: &Config, addr: &Addr) -> Result<redis::Client> {
    use redis::IntoConnectionInfo;
    let addr = match (addr, &config.tls) {
        (Addr::Tcp { host, port }, None) => redis::ConnectionAddr::Tcp(host.clone(), *port),
        (Addr::Tcp { host, port }, Some(tls)) => redis::ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: tls.insecure,
            tls_params: None,
        },
        (Addr::Unix(path), _) => redis::ConnectionAddr::Unix(path.clone()),
    };
    let mut settings = redis::RedisConnectionInfo::default()
        .set_db(config.db)
        .set_protocol(match config.protocol {
            Protocol::Resp2 => redis::ProtocolVersion::RESP2,
            Protocol::Resp3 => redis::ProtocolVersion::RESP3,
        })
        .set_lib_name("redkit", env!("CARGO_PKG_VERSION"));
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    let info = addr
        .into_connection_info()
        .map_err(|e| Error::from_redis(e, Delivery::NotSent))?
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings(config));
    let client = match &config.tls {
        Some(tls) if !tls.insecure && (tls.ca_pem.is_some() || tls.client_cert_pem.is_some()) => {
            let certs = redis::TlsCertificates {
                client_tls: match (&tls.client_cert_pem, &tls.client_key_pem) {
                    (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    _ => None,
                },
                root_cert: tls.ca_pem.clone(),
            };
            redis::Client::build_with_tls(info, certs)
        }
        _ => redis::Client::open(info),
    };
    client.map_err(|e| Error::from_redis(e, Delivery::NotSent))
}

/// `TCP_NODELAY` (commands are small and latency-bound) and keepalive.
pub(crate) fn tcp_settings(config: &Config) -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
    let settings = TcpSettings::default().set_nodelay(true);
    let Some(idle) = config.tcp_keepalive else {
        return settings;
    };
    let keepalive = TcpKeepalive::new().with_time(idle);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        windows
    ))]
    let keepalive = keepalive.with_interval((idle / 3).max(Duration::from_secs(1)));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    let keepalive = keepalive.with_retries(3);
    settings.set_keepalive(keepalive)
}

/// Our r2d2 connection manager.
pub(crate) struct Manager {
    client: redis::Client,
    config: Config,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("addr", &self.config.addr)
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub(crate) fn new(config: Config, shared: Arc<Shared>) -> Result<Manager> {
        Ok(Manager {
            client: redis_client(&config)?,
            config,
            shared,
        })
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> &Addr {
        &self.config.addr
    }

    /// Opens a connection outside the pool to learn whether the server is reachable again,
    /// and records the outcome.
    pub(crate) fn probe(&self) -> Result<()> {
        let result = self.open().map(drop);
        self.shared
            .record_connect(&self.config.addr, result.as_ref().map(|_| ()), true);
        result
    }

    /// Opens one connection with every setting applied.
    pub(crate) fn open(&self) -> Result<RawConn> {
        if let Some(topo) = &self.shared.cluster {
            let link = crate::cluster::ClusterLink::open(topo.clone())?;
            return Ok(self.raw(Link::Cluster(Box::new(link))));
        }
        let Some(sentinel) = &self.shared.sentinel else {
            return self.open_with(&self.client);
        };
        let (addr, client) = sentinel.target(&self.shared, &self.config)?;
        let opened = self
            .open_with(&client)
            .and_then(|mut raw| sentinel.check_role(&mut raw.con).map(|()| raw));
        if opened.is_err() {
            // The node may have moved or changed role: ask again (switching retires the pool
            // if it did).
            sentinel.connection_failed(&self.shared, &self.config, &addr);
        }
        opened
    }

    /// Opens one connection through `client` with every setting applied.
    fn open_with(&self, client: &redis::Client) -> Result<RawConn> {
        let con = open_connection(&self.config, client)?;
        Ok(self.raw(Link::Node(con)))
    }

    fn raw(&self, con: Link) -> RawConn {
        RawConn {
            con,
            generation: self.shared.generation.load(Ordering::Acquire),
            validated_epoch: self.shared.suspect_epoch.load(Ordering::Acquire),
            broken: false,
        }
    }
}

/// Opens one connection through `client` with the config's timeouts and client name.
pub(crate) fn open_connection(
    config: &Config,
    client: &redis::Client,
) -> Result<redis::Connection> {
    let t = &config.timeouts;
    let not_sent = |e| Error::from_redis(e, Delivery::NotSent);
    let mut con = client
        .get_connection_with_timeout(t.connect)
        .map_err(not_sent)?;
    // The `redis` crate clears the timeouts after connecting: set ours.
    con.set_read_timeout(Some(t.response)).map_err(not_sent)?;
    con.set_write_timeout(Some(t.write)).map_err(not_sent)?;
    if let Some(name) = &config.client_name {
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query::<()>(&mut con)
            .map_err(not_sent)?;
    }
    Ok(con)
}

fn stale() -> Error {
    Error::io(
        io::ErrorKind::ConnectionAborted,
        "pooled connection is stale",
        Delivery::NotSent,
    )
}

impl r2d2::ManageConnection for Manager {
    type Connection = RawConn;
    type Error = Error;

    fn connect(&self) -> Result<RawConn> {
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        self.shared.connecting.fetch_add(1, Ordering::AcqRel);
        let conn = self.open().and_then(|c| {
            // Closed while connecting: do not hand the pool a connection nobody will close.
            if self.shared.is_closed() {
                return Err(Error::Closed);
            }
            Ok(c)
        });
        self.shared.connecting.fetch_sub(1, Ordering::AcqRel);
        self.shared
            .record_connect(&self.config.addr, conn.as_ref().map(|_| ()), true);
        if conn.is_ok() {
            self.shared
                .counters
                .conns_created
                .fetch_add(1, Ordering::Relaxed);
            debug!("redis at {}: new pooled connection", self.config.addr);
        }
        conn
    }

    fn is_valid(&self, conn: &mut RawConn) -> Result<()> {
        if conn.broken
            || conn.generation < self.shared.generation.load(Ordering::Acquire)
            || self.shared.is_closed()
        {
            return Err(stale());
        }
        let suspect = self.shared.suspect_epoch.load(Ordering::Acquire);
        if conn.validated_epoch < suspect {
            trace!("validating a pooled connection made before a drop");
            redis::cmd("PING")
                .query::<()>(&mut conn.con)
                .map_err(|e| Error::from_redis(e, Delivery::Unknown))?;
            conn.validated_epoch = suspect;
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut RawConn) -> bool {
        let broken = conn.broken
            || !conn.con.is_open()
            || conn.generation < self.shared.generation.load(Ordering::Acquire)
            || self.shared.is_closed();
        if broken {
            self.shared
                .counters
                .conns_discarded_broken
                .fetch_add(1, Ordering::Relaxed);
        }
        broken
    }
}

/// Feeds r2d2's events into our counters.
#[derive(Debug)]
pub(crate) struct Events(pub(crate) Arc<Shared>);

impl r2d2::HandleEvent for Events {
    fn handle_release(&self, _: r2d2::event::ReleaseEvent) {
        self.0.counters.conns_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// r2d2 reports connect errors here too; the manager already logged them.
#[derive(Debug)]
pub(crate) struct QuietErrors;

impl r2d2::HandleError<Error> for QuietErrors {
    fn handle_error(&self, e: Error) {
        trace!("pool: {e}");
    }
}

/// A connection checked out of the pool. It goes back when dropped, unless it saw an
/// unrecoverable error (then it is closed).
///
/// It implements [`redis::ConnectionLike`], so every [`redis::Commands`] method, pipelines,
/// scripts and transactions work on it. Commands on a checked-out connection are not retried
/// and do not pass the circuit breaker: those belong to [`Redis`](crate::Redis) calls.
pub struct PooledConnection {
    conn: r2d2::PooledConnection<Manager>,
    shared: Arc<Shared>,
    default_response: Duration,
    response_changed: bool,
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("db", &self.conn.con.get_db())
            .field("broken", &self.conn.broken)
            .finish()
    }
}

impl PooledConnection {
    pub(crate) fn new(
        conn: r2d2::PooledConnection<Manager>,
        shared: Arc<Shared>,
        default_response: Duration,
    ) -> PooledConnection {
        PooledConnection {
            conn,
            shared,
            default_response,
            response_changed: false,
        }
    }

    /// Changes the response (read) timeout of this connection until it goes back to the pool,
    /// for blocking commands such as `BLPOP` or `XREADGROUP BLOCK`. `None` waits forever.
    pub fn set_response_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        if timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "response_timeout",
                "must be greater than zero (None waits forever)",
            ));
        }
        self.response_changed = true;
        self.conn
            .con
            .set_read_timeout(timeout)
            .map_err(|e| self.fail(Error::from_redis(e, Delivery::NotSent)))
    }

    /// Whether this connection saw an unrecoverable error and will be closed when dropped.
    pub fn is_broken(&self) -> bool {
        self.conn.broken || !self.conn.con.is_open()
    }

    pub(crate) fn mark_broken(&mut self) {
        self.conn.broken = true;
    }

    fn fail(&mut self, e: Error) -> Error {
        if e.poisons_connection() {
            // A cluster connection closes the failed node's connection itself.
            if !self.conn.con.is_cluster() {
                self.conn.broken = true;
            }
            if e.class() == ErrorClass::Connection {
                self.shared.connection_dropped();
            }
        }
        e
    }

    /// A `READONLY` reply means this connection reaches a replica (a demoted master): close
    /// it, and with Sentinel have the master rediscovered (unless the handle reads from a
    /// replica on purpose).
    fn check_read_only(&mut self, values: &[Value]) {
        let read_only = values.iter().any(|v| {
            matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
        });
        if read_only {
            if let crate::pool::Link::Cluster(c) = &self.conn.con {
                // A node that was a master is a replica now: the map is out of date.
                c.topology().mark_stale();
                return;
            }
            if let Some(sentinel) = &self.shared.sentinel {
                if sentinel.reads_from_replica() {
                    // A write through a replica handle: expected, the connection is fine.
                    return;
                }
                sentinel.request_rediscovery();
            }
            self.conn.broken = true;
        }
    }

    /// Sends one packed command and reads its reply, telling apart a command that was never
    /// completely written from one whose reply did not come.
    pub(crate) fn exec_packed(&mut self, cmd: &[u8]) -> Result<Value> {
        self.shared
            .counters
            .commands
            .fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = self.exec_packed_unmetered(cmd);
        if let Ok(v) = &result {
            self.check_read_only(std::slice::from_ref(v));
        }
        let failed = !matches!(&result, Ok(v) if !matches!(v, Value::ServerError(_)));
        let name = crate::util::resp::command_name(cmd).unwrap_or(b"UNKNOWN");
        self.shared
            .command_metrics
            .record(name, start.elapsed(), failed);
        result
    }

    fn exec_packed_unmetered(&mut self, cmd: &[u8]) -> Result<Value> {
        if self.conn.broken {
            return Err(stale());
        }
        self.conn.con.exec(cmd).map_err(|e| self.fail(e))
    }

    /// Sends one packed command to the cluster node `addr` (a plain connection sends it to
    /// its server).
    pub(crate) fn exec_on(&mut self, addr: &Addr, cmd: &[u8]) -> Result<Value> {
        if self.conn.broken {
            return Err(stale());
        }
        let result = match &mut self.conn.con {
            Link::Cluster(c) => c.exec_on(addr, cmd),
            node => node.exec(cmd),
        };
        result.map_err(|e| self.fail(e))
    }

    /// Sends a packed pipeline and reads `offset + count` replies, keeping the last `count`.
    pub(crate) fn exec_pipeline(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>> {
        let c = &self.shared.counters;
        c.commands.fetch_add(1, Ordering::Relaxed);
        c.pipelines.fetch_add(1, Ordering::Relaxed);
        if self.conn.broken {
            return Err(stale());
        }
        let start = Instant::now();
        let result = self.conn.con.pipeline(cmd, offset, count);
        if let Ok(vs) = &result {
            self.check_read_only(vs);
        }
        let failed =
            !matches!(&result, Ok(vs) if !vs.iter().any(|v| matches!(v, Value::ServerError(_))));
        self.shared
            .command_metrics
            .record(b"PIPELINE", start.elapsed(), failed);
        result.map_err(|e| self.fail(e))
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.response_changed && !self.conn.broken {
            let restored = self.conn.con.set_read_timeout(Some(self.default_response));
            if restored.is_err() {
                self.conn.broken = true;
            }
        }
    }
}

/// Turns our error back into a `redis` error for the [`ConnectionLike`] surface, keeping
/// redkit-only errors recoverable by [`Error::from`].
pub(crate) fn to_redis_error(e: Error) -> RedisError {
    match e {
        Error::Redis { source, .. } => source,
        other => {
            let kind = if other.is_timeout() {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::Other
            };
            RedisError::from(io::Error::new(kind, Carried(other)))
        }
    }
}

/// A redkit error travelling inside a `redis::RedisError` (see [`to_redis_error`]).
#[derive(Debug)]
pub(crate) struct Carried(pub(crate) Error);

impl std::fmt::Display for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Carried {}

impl ConnectionLike for PooledConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        self.exec_packed(cmd).map_err(to_redis_error)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        self.exec_pipeline(cmd, offset, count)
            .map_err(to_redis_error)
    }

    fn get_db(&self) -> i64 {
        self.conn.con.get_db()
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<()>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.is_broken()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_keepalive_and_nodelay() {
        let config = Config::builder().build().expect("config");
        let client = redis_client(&config).expect("client");
        let tcp = client.get_connection_info().tcp_settings();
        assert!(tcp.nodelay());
        assert!(tcp.keepalive().is_some());
        let off = Config::builder()
            .tcp_keepalive(None)
            .build()
            .expect("config");
        let client = redis_client(&off).expect("client");
        assert!(client
            .get_connection_info()
            .tcp_settings()
            .keepalive()
            .is_none());
    }
}
