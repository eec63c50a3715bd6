//! Our r2d2 connection manager and the state the pool shares with its handle.
//!
//! Unlike the `redis` crate's r2d2 manager, ours opens connections through the connection
//! core (every setting, the whole set-up within the connect timeout) and does not `PING` on
//! every checkout. Checkout validation is two atomic loads: a connection is refused when it
//! saw an unrecoverable error, or when it is older than the pool's generation. After any
//! connection reports that the server dropped it, the connections made before that moment are
//! `PING`ed once at their next checkout (a server restart leaves every idle socket dead).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use log::{debug, info, trace, warn};

use super::link::Link;
use crate::cluster::{ClusterLink, Topology};
use crate::config::{Addr, Config};
use crate::conn::{Connection, Connector, Generation, Hello};
use crate::error::{Delivery, Error, Result};
use crate::events::Health;
use crate::observe::Observed;
use crate::sentinel::SentinelState;
use crate::util::time;

/// Why the pool wakes the heartbeat before its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A call saw the server drop a connection: check now.
    Suspect,
    /// A call managed to connect while the heartbeat is reconnecting: try now.
    Reachable,
    /// Calls are failing because the server is down: someone needs it, so do not let the
    /// reconnect backoff grow past its base between two attempts.
    Demand,
}

/// What the pool, its manager, the heartbeat and every pooled connection share.
#[derive(Debug)]
pub(crate) struct PoolState {
    pub(crate) observed: Arc<Observed>,
    /// Connections made before this generation are discarded.
    pub(crate) generation: Arc<Generation>,
    /// Connections last validated before this epoch are `PING`ed at checkout.
    suspect_epoch: AtomicU64,
    connect_failing: AtomicBool,
    /// Set by `close`: no new connections.
    closed: AtomicBool,
    /// Pool connections being opened right now (`close` waits for them).
    pub(crate) connecting: AtomicUsize,
    signals: Sender<Signal>,
    /// Where the master is, with a Sentinel topology.
    pub(crate) sentinel: Option<Arc<SentinelState>>,
    /// The slot map, with a Cluster topology.
    pub(crate) cluster: Option<Arc<Topology>>,
    /// What the server said about itself in the last handshake of a new connection.
    hello: parking_lot::Mutex<Option<Hello>>,
    /// Run when the heartbeat declares the connection lost (see [`PoolState::on_lost`]).
    lost_hooks: LostHooks,
}

/// The hooks run on loss.
#[derive(Default)]
struct LostHooks(parking_lot::Mutex<Vec<LostHook>>);

impl std::fmt::Debug for LostHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LostHooks({})", self.0.lock().len())
    }
}

/// Something to do when the heartbeat finds the server gone (close the multiplexed
/// connections, so that the calls in flight fail at once).
pub(crate) type LostHook = Box<dyn Fn() + Send + Sync>;

impl PoolState {
    pub(crate) fn new(
        _config: &Config,
        observed: Arc<Observed>,
        generation: Arc<Generation>,
        signals: Sender<Signal>,
        sentinel: Option<Arc<SentinelState>>,
        cluster: Option<Arc<Topology>>,
    ) -> PoolState {
        PoolState {
            observed,
            generation,
            suspect_epoch: AtomicU64::new(0),
            connect_failing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            connecting: AtomicUsize::new(0),
            signals,
            sentinel,
            cluster,
            hello: parking_lot::Mutex::new(None),
            lost_hooks: LostHooks::default(),
        }
    }

    /// Runs `hook` whenever the heartbeat declares the connection lost.
    pub(crate) fn on_lost(&self, hook: LostHook) {
        self.lost_hooks.0.lock().push(hook);
    }

    /// The heartbeat found the server gone: every pooled connection is suspect, and the
    /// hooks run.
    pub(crate) fn connection_lost(&self) {
        self.connection_dropped_quiet();
        for hook in self.lost_hooks.0.lock().iter() {
            hook();
        }
    }

    /// What the server said about itself (`HELLO`) when a connection was last opened.
    pub(crate) fn hello(&self) -> Option<Hello> {
        self.hello.lock().clone()
    }

    /// Records what a new connection learnt about the server.
    pub(crate) fn remember_hello(&self, hello: &Hello) {
        if hello.server.is_empty() && hello.version.is_empty() {
            return;
        }
        let mut slot = self.hello.lock();
        if slot.as_ref() != Some(hello) {
            *slot = Some(hello.clone());
        }
    }

    /// A call saw the server drop a connection: validate older connections before handing
    /// them out, and have the heartbeat check the server now.
    pub(crate) fn connection_dropped(&self) {
        self.connection_dropped_quiet();
        let _ = self.signals.try_send(Signal::Suspect);
    }

    /// A call failed because the server is down: ask the reconnect loop not to back off
    /// further (see `Signal::Demand`).
    pub(crate) fn demand(&self) {
        if self.observed.health() == Health::Down {
            let _ = self.signals.try_send(Signal::Demand);
        }
    }

    /// Marks every existing pooled connection as suspect (`PING`ed at its next checkout).
    pub(crate) fn connection_dropped_quiet(&self) {
        self.suspect_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn suspect_epoch(&self) -> u64 {
        self.suspect_epoch.load(Ordering::Acquire)
    }

    /// Retires every pooled connection made so far: idle ones are closed at their next
    /// checkout, busy ones when they come back.
    pub(crate) fn retire_connections(&self) {
        self.generation.retire_all();
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
                    let _ = self.signals.try_send(Signal::Reachable);
                }
            }
            Err(e) => {
                if counted {
                    self.observed
                        .counters
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

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the pool closed; `true` the first time.
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Whether `READONLY` replies are expected (a Sentinel replica handle): they are final,
    /// not a sign that the master moved.
    pub(crate) fn read_only_expected(&self) -> bool {
        self.sentinel
            .as_ref()
            .is_some_and(|s| s.reads_from_replica())
    }
}

/// A connection as the pool holds it.
#[derive(Debug)]
pub(crate) struct RawConn {
    pub(crate) con: Link,
    pub(crate) generation: u64,
    pub(crate) validated_epoch: u64,
    pub(crate) broken: bool,
}

/// Opens connections for the pool, the heartbeat and dedicated connections: to the config's
/// address, to the master (or replica) the sentinels name, or a cluster connection.
#[derive(Clone)]
pub(crate) struct Manager {
    connector: Connector,
    state: Arc<PoolState>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("addr", &self.connector.config().addr)
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub(crate) fn new(connector: Connector, state: Arc<PoolState>) -> Manager {
        Manager { connector, state }
    }

    /// The configured address.
    pub(crate) fn addr(&self) -> &Addr {
        &self.connector.config().addr
    }

    pub(crate) fn state(&self) -> &Arc<PoolState> {
        &self.state
    }

    /// Opens a connection outside the pool to learn whether the server is reachable again,
    /// and records the outcome.
    pub(crate) fn probe(&self) -> Result<()> {
        let result = self.open().map(drop);
        self.state
            .record_connect(self.addr(), result.as_ref().map(|_| ()), true);
        result
    }

    /// Opens one connection with every setting applied, within the connect timeout.
    pub(crate) fn open(&self) -> Result<RawConn> {
        // Stamped with the generation from before it looked for its node: a connection
        // whose target moved meanwhile (a failover) is retired with the others.
        let generation = self.state.generation.current();
        let con = self.open_link()?;
        Ok(RawConn {
            generation,
            ..self.raw(con)
        })
    }

    /// Opens the link of one connection (see [`Manager::open`]).
    pub(crate) fn open_link(&self) -> Result<Link> {
        if let Some(topo) = &self.state.cluster {
            let link = ClusterLink::open(topo.clone())?;
            return Ok(Link::Cluster(Box::new(link)));
        }
        let Some(sentinel) = &self.state.sentinel else {
            return self.connector.open_default().map(|c| self.node(c));
        };
        let deadline = time::after(self.connector.config().timeouts.connect);
        let addr = sentinel.target(deadline)?;
        let opened = self
            .connector
            .open_by(&addr, deadline)
            .and_then(|mut con| sentinel.check_role(&mut con, deadline).map(|()| con));
        if opened.is_err() {
            // The node may have moved or changed role: ask again (switching retires the pool
            // if it did).
            sentinel.connection_failed(&addr);
        }
        opened.map(|c| self.node(c))
    }

    fn node(&self, con: Connection) -> Link {
        self.state.remember_hello(con.hello());
        Link::Node(Box::new(con))
    }

    pub(crate) fn raw(&self, con: Link) -> RawConn {
        RawConn {
            con,
            generation: self.state.generation.current(),
            validated_epoch: self.state.suspect_epoch(),
            broken: false,
        }
    }
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
        if self.state.is_closed() {
            return Err(Error::Closed);
        }
        self.state.connecting.fetch_add(1, Ordering::AcqRel);
        let conn = self.open().and_then(|c| {
            // Closed while connecting: do not hand the pool a connection nobody will close.
            if self.state.is_closed() {
                return Err(Error::Closed);
            }
            Ok(c)
        });
        self.state.connecting.fetch_sub(1, Ordering::AcqRel);
        self.state
            .record_connect(self.addr(), conn.as_ref().map(|_| ()), true);
        if conn.is_ok() {
            self.state
                .observed
                .counters
                .conns_created
                .fetch_add(1, Ordering::Relaxed);
            debug!("redis at {}: new pooled connection", self.addr());
        }
        conn
    }

    fn is_valid(&self, conn: &mut RawConn) -> Result<()> {
        if conn.broken
            || self.state.generation.is_retired(conn.generation)
            || self.state.is_closed()
        {
            return Err(stale());
        }
        let suspect = self.state.suspect_epoch();
        if conn.validated_epoch < suspect {
            trace!("validating a pooled connection made before a drop");
            let deadline = time::after(
                self.connector
                    .config()
                    .timeouts
                    .response
                    .min(Duration::from_secs(1)),
            );
            conn.con.ping(deadline)?;
            conn.validated_epoch = suspect;
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut RawConn) -> bool {
        let broken = conn.broken
            || !conn.con.is_open()
            || self.state.generation.is_retired(conn.generation)
            || self.state.is_closed();
        if broken {
            conn.con.close();
            self.state
                .observed
                .counters
                .conns_discarded_broken
                .fetch_add(1, Ordering::Relaxed);
        }
        broken
    }
}

/// Feeds r2d2's events into our counters.
#[derive(Debug)]
pub(crate) struct Events(pub(crate) Arc<PoolState>);

impl r2d2::HandleEvent for Events {
    fn handle_release(&self, _: r2d2::event::ReleaseEvent) {
        self.0
            .observed
            .counters
            .conns_closed
            .fetch_add(1, Ordering::Relaxed);
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
