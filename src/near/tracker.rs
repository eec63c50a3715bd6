//! The tracked nodes: per node one tracking connection, owned by a thread, and the
//! connections reads of that node go through.
//!
//! A tracking thread connects (to the configured server, the Sentinel master, or one cluster
//! master), sets tracking up (`CLIENT ID`; with broadcasting `CLIENT TRACKING on BCAST
//! PREFIX ..`; on RESP2 `SUBSCRIBE __redis__:invalidate`, with the broadcast registration
//! redirected to itself), then reads invalidations and applies them to the store, and
//! `PING`s every heartbeat. The answer to a `PING` confirms that every invalidation the
//! server generated before it has been applied: the store serves hits only while every
//! connection the cache depends on was confirmed within `max_silence`.
//!
//! Losing the tracking connection (an error, no answer within `max_silence`, the Sentinel
//! master moving, the node leaving the cluster's masters) flushes the store before anything
//! else happens, then the thread reconnects with backoff.
//!
//! In default mode reads go through *reader* connections of the node that run `CLIENT
//! TRACKING on REDIRECT <tracking id>`: the server remembers their reads and sends the
//! invalidations to the tracking connection. A reader is never handed to anyone else; when
//! one is lost the keys it read are no longer tracked, so that flushes the store too. Idle
//! readers are `PING`ed by the tracking thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};
use redis::{PushKind, Value};

use super::store::{FlushKind, Store};
use crate::cluster::Topology;
use crate::config::{Addr, Protocol};
use crate::conn::{Connection, Connector};
use crate::error::{Delivery, Error, Result};
use crate::pool::PoolState;
use crate::sentinel::SentinelState;
use crate::util::threads::Background;
use crate::util::time;

/// The tracking threads' name.
pub(crate) const THREAD_NAME: &str = "redkit-near";
/// The longest one read of the tracking connection waits before the thread checks for a
/// stop request.
const SLICE: Duration = Duration::from_millis(50);
/// The channel of invalidation messages on RESP2.
const CHANNEL: &[u8] = b"__redis__:invalidate";

/// What tracking follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The server remembers the keys read through the readers.
    Default,
    /// Every key starting with one of these prefixes (full keys, the handle's prefix in
    /// front); every key when empty.
    Broadcast(Vec<Vec<u8>>),
}

/// Where the nodes are.
pub(crate) enum Topo {
    Single(Addr),
    Sentinel(Arc<SentinelState>),
    Cluster(Arc<Topology>),
}

impl std::fmt::Debug for Topo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topo::Single(a) => write!(f, "Single({a})"),
            Topo::Sentinel(_) => f.write_str("Sentinel"),
            Topo::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

/// A hook called with a key and a flag.
pub(crate) type KeyHook = Arc<dyn Fn(&[u8], bool) + Send + Sync>;
/// A hook called with a flag.
pub(crate) type FlagHook = Arc<dyn Fn(bool) + Send + Sync>;
/// A hook called with a key.
pub(crate) type ReplyHook = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Test hooks (the `testing` feature): called by the tracking threads and the read path.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    /// Called with the key before (`false`) and after (`true`) an invalidation is applied.
    pub(crate) invalidate: Option<KeyHook>,
    /// Called before (`false`) and after (`true`) the store is flushed.
    pub(crate) flush: Option<FlagHook>,
    /// Called with the key after a read's reply arrived, before it is stored.
    pub(crate) reply: Option<ReplyHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// The settings of the tracking side.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) heartbeat: Duration,
    pub(crate) max_silence: Duration,
    pub(crate) readers: usize,
}

/// Counters of the tracking side.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connects: AtomicU64,
    pub(crate) losses: AtomicU64,
    pub(crate) server_flushes: AtomicU64,
    pub(crate) uncached: AtomicU64,
}

/// What every node and every reading thread shares.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    pub(crate) topo: Topo,
    /// Opens the tracking connections (the chosen protocol).
    pub(crate) tracking: Connector,
    /// Opens the readers (the handle's settings).
    pub(crate) reading: Connector,
    pub(crate) counters: Counters,
    pub(crate) hooks: Hooks,
    nodes: Mutex<Vec<NodeSlot>>,
    closed: AtomicBool,
    /// The handle's pool state: once the handle is closed, tracking stops.
    pool: Arc<PoolState>,
    /// Why the last connection attempt failed.
    pub(crate) last_error: Mutex<Option<Error>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("topo", &self.topo)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct NodeSlot {
    node: Arc<Node>,
    thread: Option<Background>,
}

impl Shared {
    pub(crate) fn new(
        store: Store,
        settings: Settings,
        topo: Topo,
        tracking: Connector,
        reading: Connector,
        hooks: Hooks,
        pool: Arc<PoolState>,
    ) -> Shared {
        Shared {
            store,
            settings,
            topo,
            tracking,
            reading,
            counters: Counters::default(),
            hooks,
            nodes: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            pool,
            last_error: Mutex::new(None),
        }
    }

    /// Whether the near cache, or its handle, was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst) || self.pool.is_closed()
    }

    /// The node for `addr` (`None`: the single node, or the Sentinel master), its tracking
    /// thread started when it is new. `None` once closed.
    pub(crate) fn node(self: &Arc<Self>, addr: Option<&Addr>) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|s| !s.node.retired.load(SeqCst));
        if let Some(slot) = nodes
            .iter()
            .find(|s| addr.is_none() || s.node.fixed.as_ref() == addr)
        {
            return Some(slot.node.clone());
        }
        if self.is_closed() {
            return None;
        }
        let node = Arc::new(Node::new(addr.cloned()));
        let weak = Arc::downgrade(self);
        let for_thread = node.clone();
        let thread =
            match Background::spawn(THREAD_NAME, move |stop| track(&weak, &for_thread, &stop)) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!("near cache: cannot start a tracking thread: {e}");
                    return None;
                }
            };
        nodes.push(NodeSlot {
            node: node.clone(),
            thread,
        });
        Some(node)
    }

    /// Every node still tracked.
    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .lock()
            .iter()
            .filter(|s| !s.node.retired.load(SeqCst))
            .map(|s| s.node.clone())
            .collect()
    }

    /// Stops every tracking thread, waiting at most `bound` in all.
    pub(crate) fn shut_down(&self, bound: Duration) {
        self.closed.store(true, SeqCst);
        let deadline = time::after(bound);
        let slots = std::mem::take(&mut *self.nodes.lock());
        for mut slot in slots {
            if let Some(mut t) = slot.thread.take() {
                if let Err(panic) = t.stop(time::left(deadline)) {
                    warn!("near cache: the tracking thread had panicked: {panic}");
                }
            }
            slot.node.readers.lock().idle.clear();
        }
        self.store.suspend();
    }

    /// Moves the store's freshness forward: the oldest confirmation of every connection of
    /// every node that is up (none up: no hit is served).
    fn reconfirm(&self) {
        let default_mode = self.settings.mode == Mode::Default;
        let mut oldest: Option<u64> = None;
        for slot in self.nodes.lock().iter() {
            let node = &slot.node;
            if !node.up.load(SeqCst) {
                continue;
            }
            let mut t = node.confirmed.load(SeqCst);
            if default_mode {
                for s in node.stamps.lock().iter() {
                    t = t.min(s.load(SeqCst));
                }
            }
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
        match oldest {
            Some(t) => self.store.confirm(t, self.settings.max_silence),
            None => self.store.suspend(),
        }
    }

    /// Flushes the store (the hooks around it).
    pub(crate) fn flush(&self, kind: FlushKind) {
        if let Some(h) = &self.hooks.flush {
            h(false);
        }
        self.store.flush(kind);
        if let Some(h) = &self.hooks.flush {
            h(true);
        }
    }

    /// A reader of `node` failed: in default mode the keys it read are not tracked any
    /// more, so nothing cached may be served again.
    pub(crate) fn reader_lost(&self, node: &Node, reader: Reader, cause: &Error) {
        if self.settings.mode == Mode::Default {
            info!("near cache: a reader connection failed ({cause}); clearing the near cache");
            self.flush(FlushKind::Lost);
            self.counters.losses.fetch_add(1, Relaxed);
        }
        node.discard(reader);
    }

    /// A reply to apply: an invalidation (or a flush notice).
    fn invalidated(&self, keys: &Value) {
        match keys {
            Value::Nil => {
                info!("near cache: the server flushed its keys; clearing the near cache");
                self.flush(FlushKind::Server);
                self.counters.server_flushes.fetch_add(1, Relaxed);
            }
            Value::Array(keys) | Value::Set(keys) => {
                for k in keys {
                    let key: &[u8] = match k {
                        Value::BulkString(b) => b,
                        Value::SimpleString(s) => s.as_bytes(),
                        _ => continue,
                    };
                    if let Some(h) = &self.hooks.invalidate {
                        h(key, false);
                    }
                    self.store.invalidate(key, true);
                    if let Some(h) = &self.hooks.invalidate {
                        h(key, true);
                    }
                }
            }
            other => debug!("near cache: an invalidation message redkit cannot read: {other:?}"),
        }
    }
}

/// One tracked node.
pub(crate) struct Node {
    /// The node's address on a cluster (`None`: the configured server or the Sentinel
    /// master, found at each connect).
    pub(crate) fixed: Option<Addr>,
    /// Its thread ended: the node is no longer a master of the cluster.
    retired: AtomicBool,
    link: Mutex<LinkInfo>,
    up: AtomicBool,
    /// Bumped whenever the tracking connection comes up or is lost: readers of another
    /// generation redirect to a connection that is gone.
    gen: AtomicU64,
    /// The send time of the last answered `PING` (store nanoseconds).
    confirmed: AtomicU64,
    readers: Mutex<Readers>,
    returned: Condvar,
    /// The readers' confirmations (default mode).
    stamps: Mutex<Vec<Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.link.lock().addr)
            .field("up", &self.up.load(Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct LinkInfo {
    addr: Option<Addr>,
    id: i64,
}

#[derive(Default)]
struct Readers {
    idle: Vec<Reader>,
    open: usize,
}

/// A connection reads go through.
pub(crate) struct Reader {
    pub(crate) con: Connection,
    gen: u64,
    stamp: Arc<AtomicU64>,
}

impl Reader {
    /// The read sent at `at` (store nanoseconds) was answered: the reader was alive then.
    pub(crate) fn confirm(&self, at: u64) {
        self.stamp.fetch_max(at, SeqCst);
    }
}

impl Node {
    fn new(fixed: Option<Addr>) -> Node {
        Node {
            fixed,
            retired: AtomicBool::new(false),
            link: Mutex::new(LinkInfo::default()),
            up: AtomicBool::new(false),
            gen: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            readers: Mutex::new(Readers::default()),
            returned: Condvar::new(),
            stamps: Mutex::new(Vec::new()),
        }
    }

    /// Whether the tracking connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(SeqCst)
    }

    /// Whether `reader` still redirects to the current tracking connection.
    pub(crate) fn is_current(&self, reader: &Reader) -> bool {
        self.is_up() && reader.gen == self.gen.load(SeqCst)
    }

    /// A reader for a read, opened if none is idle (at most `max` open, waiting at most
    /// `wait` for one to come back). `None` when the node is down or none can be had.
    pub(crate) fn checkout(&self, shared: &Shared, wait: Duration) -> Option<Reader> {
        let deadline = time::after(wait);
        loop {
            if !self.is_up() {
                return None;
            }
            let gen = self.gen.load(SeqCst);
            let mut readers = self.readers.lock();
            while let Some(r) = readers.idle.pop() {
                if r.gen == gen {
                    return Some(r);
                }
                readers.open = readers.open.saturating_sub(1);
                drop_stamp(&self.stamps, &r.stamp);
            }
            if readers.open < shared.settings.readers {
                readers.open += 1;
                drop(readers);
                match self.open_reader(shared, gen) {
                    Ok(r) => return Some(r),
                    Err(e) => {
                        debug!("near cache: cannot open a reader connection: {e}");
                        let mut readers = self.readers.lock();
                        readers.open = readers.open.saturating_sub(1);
                        drop(readers);
                        self.returned.notify_one();
                        return None;
                    }
                }
            }
            if self.returned.wait_until(&mut readers, deadline).timed_out() {
                return None;
            }
        }
    }

    fn open_reader(&self, shared: &Shared, gen: u64) -> Result<Reader> {
        let (addr, id) = {
            let link = self.link.lock();
            (link.addr.clone(), link.id)
        };
        let addr = addr.ok_or_else(|| lost("the tracking connection is down"))?;
        let started = shared.store.now();
        let mut con = shared.reading.open(&addr)?;
        if shared.settings.mode == Mode::Default {
            let packed = redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("on")
                .arg("REDIRECT")
                .arg(id)
                .get_packed_command();
            expect_ok(con.exec(&packed, None)?)?;
        }
        let stamp = Arc::new(AtomicU64::new(started));
        let reader = Reader { con, gen, stamp };
        if shared.settings.mode == Mode::Default {
            self.stamps.lock().push(reader.stamp.clone());
        }
        // Lost or renewed meanwhile: the redirect goes to a connection that is gone.
        if !self.is_current(&reader) {
            self.discard(reader);
            return Err(lost("the tracking connection changed"));
        }
        Ok(reader)
    }

    /// Gives a reader back after a successful read.
    pub(crate) fn checkin(&self, reader: Reader) {
        if !self.is_current(&reader) || reader.con.is_broken() {
            self.discard(reader);
            return;
        }
        self.readers.lock().idle.push(reader);
        self.returned.notify_one();
    }

    /// Closes a reader for good.
    pub(crate) fn discard(&self, reader: Reader) {
        drop_stamp(&self.stamps, &reader.stamp);
        let mut readers = self.readers.lock();
        readers.open = readers.open.saturating_sub(1);
        drop(readers);
        drop(reader);
        self.returned.notify_one();
    }

    /// `PING`s the readers idle for longer than `idle` (their confirmation moves forward);
    /// a reader that does not answer is lost.
    fn ping_readers(&self, shared: &Shared, idle: Duration, deadline: Instant) {
        let now = shared.store.now();
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let due: Vec<Reader> = {
            let mut readers = self.readers.lock();
            let (due, keep): (Vec<Reader>, Vec<Reader>) = readers
                .idle
                .drain(..)
                .partition(|r| now.saturating_sub(r.stamp.load(SeqCst)) >= idle);
            readers.idle = keep;
            due
        };
        for mut r in due {
            let sent = shared.store.now();
            match r.con.ping(deadline) {
                Ok(()) => {
                    r.confirm(sent);
                    self.checkin(r);
                }
                Err(e) => shared.reader_lost(self, r, &e),
            }
        }
    }

    fn went_up(&self, addr: Addr, id: i64, confirmed: u64) {
        *self.link.lock() = LinkInfo {
            addr: Some(addr),
            id,
        };
        self.confirmed.store(confirmed, SeqCst);
        self.gen.fetch_add(1, SeqCst);
        self.up.store(true, SeqCst);
    }

    fn went_down(&self) {
        self.up.store(false, SeqCst);
        self.gen.fetch_add(1, SeqCst);
        *self.link.lock() = LinkInfo::default();
        let idle = std::mem::take(&mut self.readers.lock().idle);
        for r in idle {
            self.discard(r);
        }
    }
}

fn drop_stamp(stamps: &Mutex<Vec<Arc<AtomicU64>>>, stamp: &Arc<AtomicU64>) {
    stamps.lock().retain(|s| !Arc::ptr_eq(s, stamp));
}

fn lost(what: &str) -> Error {
    Error::io(
        std::io::ErrorKind::NotConnected,
        format!("near cache: {what}"),
        Delivery::NotSent,
    )
}

fn expect_ok(v: Value) -> Result<Value> {
    match v {
        Value::ServerError(e) => Err(Error::from_redis(e.into(), Delivery::Answered)),
        v => Ok(v),
    }
}

/// Whether the stop channel says stop.
fn stopping(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected) | Ok(()))
}

/// The tracking thread of one node: connect, serve, and after a loss flush and reconnect.
fn track(shared: &Weak<Shared>, node: &Arc<Node>, stop: &Receiver<()>) {
    let mut delays: Option<crate::retry::BackoffDelays> = None;
    loop {
        let Some(s) = shared.upgrade() else { return };
        if s.is_closed() || stopping(stop) {
            return;
        }
        match connect(&s, node) {
            Ok(mut link) => {
                delays = None;
                s.counters.connects.fetch_add(1, Relaxed);
                *s.last_error.lock() = None;
                info!("near cache: tracking {} (client id {})", link.addr, link.id);
                node.went_up(link.addr.clone(), link.id, link.confirmed);
                s.reconfirm();
                let end = serve(&s, node, &mut link, stop);
                link.con.close();
                node.went_down();
                match end {
                    End::Stop => {
                        s.reconfirm();
                        return;
                    }
                    End::Lost(ref e) | End::Retired(ref e) => {
                        if !s.is_closed() {
                            info!(
                                "near cache: tracking of {} lost ({e}); clearing the near cache",
                                link.addr
                            );
                        }
                        s.flush(FlushKind::Lost);
                        s.counters.losses.fetch_add(1, Relaxed);
                        s.reconfirm();
                    }
                }
                if let End::Retired(_) = end {
                    // Not a master any more: a read of one of its slots starts a tracker
                    // for the new owner; this one ends.
                    node.retired.store(true, SeqCst);
                    return;
                }
            }
            Err(e) => {
                debug!("near cache: cannot set tracking up: {e}");
                *s.last_error.lock() = Some(e);
                if let (Topo::Cluster(topo), Some(addr)) = (&s.topo, &node.fixed) {
                    topo.mark_stale();
                    topo.refresh_if_stale();
                    let masters = topo.masters();
                    if !masters.is_empty() && !masters.contains(addr) {
                        debug!("near cache: {addr} is no longer a master; its tracking ends");
                        node.retired.store(true, SeqCst);
                        return;
                    }
                }
                let wait = delays
                    .get_or_insert_with(|| s.tracking.config().heartbeat.reconnect.delays())
                    .next_delay()
                    .min(Duration::from_secs(2));
                drop(s);
                // A disconnection (stop) ends the wait at once.
                if stop.recv_timeout(wait).is_ok() || stopping(stop) {
                    return;
                }
            }
        }
    }
}

struct Link {
    con: Connection,
    addr: Addr,
    id: i64,
    /// When the set-up began (store nanoseconds): confirmed from then on.
    confirmed: u64,
    resp2: bool,
}

enum End {
    Stop,
    Lost(Error),
    Retired(Error),
}

/// Opens and sets up the tracking connection of `node`.
fn connect(shared: &Shared, node: &Node) -> Result<Link> {
    let config = shared.tracking.config();
    let deadline = time::after(config.timeouts.connect);
    let started = shared.store.now();
    let (addr, mut con) = match (&shared.topo, &node.fixed) {
        (_, Some(addr)) => (addr.clone(), shared.tracking.open_by(addr, deadline)?),
        (Topo::Sentinel(s), None) => {
            let addr = s.target(deadline)?;
            let opened = shared
                .tracking
                .open_by(&addr, deadline)
                .and_then(|mut c| s.check_role(&mut c, deadline).map(|()| c));
            match opened {
                Ok(c) => (addr, c),
                Err(e) => {
                    s.connection_failed(&addr);
                    return Err(e);
                }
            }
        }
        (Topo::Single(addr), None) => (addr.clone(), shared.tracking.open_by(addr, deadline)?),
        (Topo::Cluster(_), None) => return Err(lost("a cluster node without an address")),
    };
    check_version(con.hello())?;
    let cap = Some(deadline);
    let id = match con.exec(&redis::cmd("CLIENT").arg("ID").get_packed_command(), cap)? {
        Value::Int(id) => id,
        Value::ServerError(e) => return Err(too_old_or(e)),
        other => {
            return Err(Error::io(
                std::io::ErrorKind::InvalidData,
                format!("CLIENT ID answered {other:?}"),
                Delivery::Answered,
            ))
        }
    };
    let resp2 = config.protocol == Protocol::Resp2;
    if shared.settings.mode == Mode::Default {
        // A no-op that fails on a server without tracking (before the readers find out).
        let off = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("off")
            .get_packed_command();
        if let Value::ServerError(e) = con.exec(&off, cap)? {
            return Err(too_old_or(e));
        }
    }
    if let Mode::Broadcast(prefixes) = &shared.settings.mode {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING").arg("on").arg("BCAST");
        for p in prefixes {
            cmd.arg("PREFIX").arg(p.as_slice());
        }
        if resp2 {
            cmd.arg("REDIRECT").arg(id);
        }
        if let Value::ServerError(e) = con.exec(&cmd.get_packed_command(), cap)? {
            return Err(too_old_or(e));
        }
    }
    if resp2 {
        let sub = redis::cmd("SUBSCRIBE").arg(CHANNEL).get_packed_command();
        con.send(&sub, cap, true)?;
        loop {
            match con.read_frame(deadline)? {
                None => {
                    return Err(Error::io(
                        std::io::ErrorKind::TimedOut,
                        "no SUBSCRIBE confirmation in time",
                        Delivery::Unknown,
                    ))
                }
                Some(Value::Array(a)) if is_word(a.first(), b"subscribe") => break,
                Some(Value::ServerError(e)) => {
                    return Err(Error::from_redis(e.into(), Delivery::Answered))
                }
                Some(_) => continue,
            }
        }
    }
    Ok(Link {
        con,
        addr,
        id,
        confirmed: started,
        resp2,
    })
}

/// `CLIENT TRACKING` needs Redis 6.0 (or Valkey).
fn check_version(hello: &crate::conn::Hello) -> Result<()> {
    let major: Option<u32> = hello.version.split('.').next().and_then(|m| m.parse().ok());
    match major {
        Some(m) if m < 6 && hello.server != "valkey" => Err(Error::ServerTooOld {
            feature: "CLIENT TRACKING (the near cache)",
            needs: "Redis 6.0 or Valkey",
            server: format!("Redis {}", hello.version),
        }),
        _ => Ok(()),
    }
}

/// An error reply to `CLIENT ID` or `CLIENT TRACKING`: a server without them is too old.
fn too_old_or(e: redis::ServerError) -> Error {
    let unknown = e.code() == "ERR"
        && e.details()
            .is_some_and(|d| d.contains("unknown") || d.contains("Unknown"));
    if unknown {
        return Error::ServerTooOld {
            feature: "CLIENT TRACKING (the near cache)",
            needs: "Redis 6.0 or Valkey",
            server: "a server without CLIENT TRACKING".to_owned(),
        };
    }
    Error::from_redis(e.into(), Delivery::Answered)
}

fn is_word(v: Option<&Value>, word: &[u8]) -> bool {
    match v {
        Some(Value::BulkString(b)) => b.eq_ignore_ascii_case(word),
        Some(Value::SimpleString(s)) => s.as_bytes().eq_ignore_ascii_case(word),
        _ => false,
    }
}

/// Reads invalidations and `PING`s until the connection is lost or the thread must stop.
fn serve(shared: &Shared, node: &Node, link: &mut Link, stop: &Receiver<()>) -> End {
    let settings = &shared.settings;
    let ping = redis::cmd("PING").get_packed_command();
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut next_ping = Instant::now();
    loop {
        if stopping(stop) || shared.is_closed() {
            return End::Stop;
        }
        let now = Instant::now();
        if let Some(why) = moved_away(shared, link) {
            return why;
        }
        if ping_sent.is_none() && now >= next_ping {
            let at = shared.store.now();
            if let Err(e) = link.con.send(&ping, None, true) {
                return End::Lost(e);
            }
            ping_sent = Some((at, now));
            if settings.mode == Mode::Default {
                node.ping_readers(
                    shared,
                    settings.heartbeat,
                    time::add(now, settings.heartbeat.min(settings.max_silence / 2)),
                );
            }
        }
        let mut deadline = time::add(Instant::now(), SLICE);
        match ping_sent {
            Some((_, sent)) => {
                let limit = time::add(sent, settings.max_silence);
                if Instant::now() >= limit {
                    return End::Lost(Error::io(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer to PING within {:?}", settings.max_silence),
                        Delivery::Unknown,
                    ));
                }
                deadline = deadline.min(limit);
            }
            None => deadline = deadline.min(next_ping),
        }
        let frame = match link.con.read_frame(deadline) {
            Ok(None) => continue,
            Ok(Some(frame)) => frame,
            Err(e) => return End::Lost(e),
        };
        match classify(&frame, link.resp2) {
            Frame::Invalidate(keys) => shared.invalidated(keys),
            Frame::Pong => {
                if let Some((at, sent)) = ping_sent.take() {
                    node.confirmed.store(at, SeqCst);
                    shared.reconfirm();
                    next_ping = time::add(sent, settings.heartbeat);
                }
            }
            Frame::Error(e) => {
                return End::Lost(Error::from_redis(e.clone().into(), Delivery::Answered))
            }
            Frame::Other => {
                debug!("near cache: an unexpected frame on the tracking connection: {frame:?}")
            }
        }
    }
}

/// Whether the node this link tracks is no longer the one to track.
fn moved_away(shared: &Shared, link: &Link) -> Option<End> {
    match &shared.topo {
        Topo::Sentinel(s) => match s.current_addr() {
            Some(master) if master != link.addr => Some(End::Lost(lost(&format!(
                "the Sentinel master moved from {} to {master}",
                link.addr
            )))),
            _ => None,
        },
        Topo::Cluster(topo) => {
            topo.refresh_if_stale();
            let masters = topo.masters();
            (!masters.is_empty() && !masters.contains(&link.addr)).then(|| {
                End::Retired(lost(&format!(
                    "{} is no longer a master of the cluster",
                    link.addr
                )))
            })
        }
        Topo::Single(_) => None,
    }
}

enum Frame<'a> {
    Invalidate(&'a Value),
    Pong,
    Error(&'a redis::ServerError),
    Other,
}

fn classify(frame: &Value, resp2: bool) -> Frame<'_> {
    match frame {
        Value::Push {
            kind: PushKind::Invalidate,
            data,
        } => match data.first() {
            Some(keys) => Frame::Invalidate(keys),
            None => Frame::Other,
        },
        Value::SimpleString(s) if s.eq_ignore_ascii_case("PONG") => Frame::Pong,
        Value::ServerError(e) => Frame::Error(e),
        // RESP2, subscribed: `message __redis__:invalidate keys`, and `pong ""`.
        Value::Array(a) if resp2 => {
            if is_word(a.first(), b"message") && is_word(a.get(1), CHANNEL) {
                match a.get(2) {
                    Some(keys) => Frame::Invalidate(keys),
                    None => Frame::Other,
                }
            } else if is_word(a.first(), b"pong") {
                Frame::Pong
            } else {
                Frame::Other
            }
        }
        _ => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn frames_of_both_protocols() {
        let push = Value::Push {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![bulk("k")])],
        };
        assert!(matches!(
            classify(&push, false),
            Frame::Invalidate(Value::Array(_))
        ));
        let flush = Value::Push {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        };
        assert!(matches!(
            classify(&flush, false),
            Frame::Invalidate(Value::Nil)
        ));
        let msg = Value::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            Value::Array(vec![bulk("k")]),
        ]);
        assert!(matches!(classify(&msg, true), Frame::Invalidate(_)));
        let other = Value::Array(vec![bulk("message"), bulk("news"), bulk("x")]);
        assert!(matches!(classify(&other, true), Frame::Other));
        assert!(matches!(
            classify(&Value::Array(vec![bulk("pong"), bulk("")]), true),
            Frame::Pong
        ));
        assert!(matches!(
            classify(&Value::SimpleString("PONG".into()), false),
            Frame::Pong
        ));
    }

    #[test]
    fn old_servers_are_refused() {
        let hello = |v: &str| crate::conn::Hello {
            server: "redis".into(),
            version: v.into(),
        };
        assert!(matches!(
            check_version(&hello("5.0.14")),
            Err(Error::ServerTooOld { .. })
        ));
        assert!(check_version(&hello("6.0.0")).is_ok());
        assert!(check_version(&hello("")).is_ok());
    }
}
