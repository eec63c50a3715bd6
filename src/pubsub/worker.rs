//! The subscriber thread: reads its connections, dispatches messages, serves subscribe
//! requests between reads, pings, reconnects and resubscribes.
//!
//! Against one server the thread has one connection, the *main* link, carrying every kind of
//! subscription. On a Cluster the main link (to any node) carries channels and patterns, and
//! every master owning the slot of a subscribed shard channel gets a *shard link* of its own.
//! A shard channel on no link (its owner moved, failed or cannot be reached yet) is
//! *unplaced*: the thread places it on its slot's owner, with backoff while that fails.
//! One thread polls every link, each read waiting a share of the tick.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use log::{debug, info, log, warn, Level};
use parking_lot::Mutex;
use redis::{ServerErrorKind, Value};

use super::conn::Conn;
use super::frame::{classify, Frame, Kind};
use super::message::{Delivered, Message, Sink};
use crate::cluster::route::{self, Redirect};
use crate::cluster::{SlotMap, Topology};
use crate::config::{Addr, Config};
use crate::conn::Connector;
use crate::error::{Delivery, Error, Result};
use crate::events::Event;
use crate::pool::PoolState as Shared;
use crate::retry::BackoffDelays;

/// Names sent in one (re)subscribe command at most.
const CHUNK: usize = 512;
/// Frames read from one connection in a row before the others get their turn.
const BURST: usize = 256;
/// The longest a burst of reads on one connection lasts before control requests are served.
const BURST_TIME: Duration = Duration::from_millis(2);
/// The shortest read timeout of one connection when the thread polls several.
const MIN_TICK: Duration = Duration::from_millis(2);
const SHARD: usize = 2;

/// Where the answer to a request goes.
type Reply = Sender<Result<()>>;

/// A request from another thread.
pub(crate) enum Control {
    Subscribe {
        id: u64,
        kind: Kind,
        names: Vec<Vec<u8>>,
        sink: Sink,
        reply: Reply,
    },
    Unsubscribe {
        id: u64,
        reply: Option<Reply>,
    },
}

/// Counters shared with [`Subscriber::stats`](super::Subscriber::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Set by the subscriber when it stops (checked per frame: an atomic load, not a channel).
    pub(crate) stopping: AtomicBool,
    pub(crate) connected: AtomicBool,
    pub(crate) subscriptions: AtomicUsize,
    pub(crate) names: [AtomicUsize; 3],
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// `dropped`, for the `metrics` facade (nothing without the feature).
    pub(crate) dropped_export: crate::telemetry::Count,
    pub(crate) unrouted: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) disconnections: AtomicU64,
    pub(crate) resubscriptions: AtomicU64,
    pub(crate) last: Mutex<Last>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Last {
    pub(crate) resubscribed_at: Option<SystemTime>,
    pub(crate) downtime: Option<Duration>,
    pub(crate) ping: Option<Duration>,
}

/// A reply the server owes us on one link, in order.
enum Pending {
    Confirm {
        kind: Kind,
        sub: bool,
        /// The names sent (a confirmation for another name is not this one's).
        names: Vec<Vec<u8>>,
        remaining: usize,
        reply: Option<Reply>,
        /// The subscription a subscribe request was for (rolled back if the server refuses).
        id: Option<u64>,
        /// A resubscription, or a shard channel's placement: the subscriber is whole again
        /// only once it is confirmed.
        resync: bool,
    },
    Ping(Instant),
}

/// One connection of the subscriber and what the server owes on it.
struct Link {
    addr: Addr,
    conn: Conn,
    pending: VecDeque<Pending>,
    /// What the server has (or has been asked to have) on this connection, per kind.
    server: [HashSet<Vec<u8>>; 3],
    last_rx: Instant,
    ping_sent: Option<Instant>,
}

impl Link {
    fn new(addr: Addr, conn: Conn) -> Link {
        Link {
            addr,
            conn,
            pending: VecDeque::new(),
            server: Default::default(),
            last_rx: Instant::now(),
            ping_sent: None,
        }
    }

    fn resyncing(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Confirm { resync: true, .. }))
    }

    /// Sends `cmd_name names...` and records the confirmations it is owed.
    fn send_names(
        &mut self,
        kind: Kind,
        sub: bool,
        names: Vec<Vec<u8>>,
        reply: Option<Reply>,
        id: Option<u64>,
        resync: bool,
    ) -> std::result::Result<(), (Error, Option<Reply>)> {
        let mut cmd = redis::cmd(if sub {
            kind.subscribe_cmd()
        } else {
            kind.unsubscribe_cmd()
        });
        for n in &names {
            cmd.arg(n.as_slice());
        }
        if let Err(e) = self.conn.send(&cmd) {
            return Err((e, reply));
        }
        self.pending.push_back(Pending::Confirm {
            kind,
            sub,
            remaining: names.len(),
            names,
            reply,
            id,
            resync,
        });
        Ok(())
    }
}

/// Which link.
#[derive(Debug, Clone, PartialEq, Eq)]
enum At {
    Main,
    Shard(Addr),
}

struct Sub {
    kind: Kind,
    names: Vec<Vec<u8>>,
    sink: Sink,
}

pub(crate) struct Settings {
    pub(crate) tick: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
}

/// Where the main link may go: `config.addr`; with Sentinel the current master (asking the
/// sentinels when it is not known); on a Cluster every master of the current map, then
/// every seed.
fn main_candidates(config: &Config, shared: &Shared) -> Vec<Addr> {
    if let Some(sentinel) = &shared.sentinel {
        let master = sentinel
            .current_addr()
            .map(Ok)
            .unwrap_or_else(|| sentinel.refresh());
        return match master {
            Ok(addr) => vec![addr],
            Err(e) => {
                debug!("subscriber: the sentinels named no master: {e}");
                Vec::new()
            }
        };
    }
    let Some(topo) = shared.cluster.as_deref() else {
        return vec![config.addr.clone()];
    };
    topo.refresh_if_stale();
    let mut out = topo.masters();
    let seeds = config.cluster.iter().flat_map(|c| c.seeds.iter());
    for (host, port) in seeds {
        let addr = Addr::Tcp {
            host: host.clone(),
            port: *port,
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        out.push(config.addr.clone());
    }
    out
}

/// Opens the main link: to `config.addr`, to the Sentinel master, or on a Cluster to the
/// first node that answers.
pub(crate) fn open_main(
    connector: &Connector,
    shared: &Shared,
    tick: Duration,
) -> Result<(Addr, Conn)> {
    let config = connector.config();
    let cluster = shared.cluster.is_some();
    let mut last = None;
    for addr in main_candidates(config, shared) {
        match Conn::open_at(connector, &addr, tick) {
            Ok(conn) => return Ok((addr, conn)),
            Err(e) => {
                if cluster {
                    debug!("cluster node {addr}: subscriber cannot connect: {e}");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let what = if shared.sentinel.is_some() {
            "sentinel: no master known"
        } else {
            "no node to connect to"
        };
        Error::io(std::io::ErrorKind::NotConnected, what, Delivery::NotSent)
    }))
}

/// Errors a cluster gives while a slot moves or its master fails over: the shard channel is
/// placed again (on the node `MOVED` names, or its slot's owner after a refresh).
fn is_cluster_transient(e: &redis::ServerError) -> bool {
    matches!(
        e.kind(),
        Some(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
        )
    )
}

fn show(names: &[Vec<u8>]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(5)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    if names.len() > 5 {
        out.push(format!("and {} more", names.len() - 5));
    }
    out.join(", ")
}

pub(crate) struct Worker {
    config: Config,
    connector: Connector,
    settings: Settings,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    ctl: Receiver<Control>,
    stop: Receiver<()>,
    /// The slot map, on a Cluster.
    cluster: Option<Arc<Topology>>,
    main: Option<Link>,
    /// On a Cluster: one link per master that holds shard channels.
    shards: Vec<Link>,
    /// On a Cluster: shard channels wanted but on no link.
    unplaced: HashSet<Vec<u8>>,
    /// Where `MOVED` said a slot is (tried before the slot map).
    hints: HashMap<u16, Addr>,
    place_at: Instant,
    place_failures: u32,
    place_delays: BackoffDelays,
    /// The slot map the shard links were last checked against.
    map_seen: Option<Arc<SlotMap>>,
    subs: HashMap<u64, Sub>,
    /// Subscription ids per name, per kind.
    routes: [HashMap<Vec<u8>, Vec<u64>>; 3],
    /// Subscribe requests that could not be sent (a link down, a shard channel unplaced):
    /// answered once the subscriber is whole again.
    waiting: Vec<Reply>,
    /// When the current outage began (a link was lost).
    lost_at: Option<Instant>,
    next_attempt: Instant,
    /// When the last reconnect attempt started.
    last_attempt: Instant,
    attempts: u32,
    delays: BackoffDelays,
}

impl Worker {
    pub(crate) fn new(
        connector: Connector,
        settings: Settings,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
        ctl: Receiver<Control>,
        stop: Receiver<()>,
        main: (Addr, Conn),
    ) -> Worker {
        let config = connector.config().clone();
        let delays = config.heartbeat.reconnect.delays();
        counters.connected.store(true, Relaxed);
        Worker {
            cluster: shared.cluster.clone(),
            place_delays: delays.clone(),
            config,
            connector,
            settings,
            shared,
            counters,
            ctl,
            stop,
            main: Some(Link::new(main.0, main.1)),
            shards: Vec::new(),
            unplaced: HashSet::new(),
            hints: HashMap::new(),
            place_at: Instant::now(),
            place_failures: 0,
            map_seen: None,
            subs: HashMap::new(),
            routes: Default::default(),
            waiting: Vec::new(),
            lost_at: None,
            next_attempt: Instant::now(),
            last_attempt: Instant::now(),
            attempts: 0,
            delays,
        }
    }

    fn stopping(&self) -> bool {
        self.counters.stopping.load(Relaxed) || self.shared.is_closed()
    }

    /// Whether `kind` lives on the main link (everything but shard channels on a Cluster).
    fn on_main(&self, kind: Kind) -> bool {
        self.cluster.is_none() || kind != Kind::Shard
    }

    fn link_mut(&mut self, at: &At) -> Option<&mut Link> {
        match at {
            At::Main => self.main.as_mut(),
            At::Shard(addr) => self.shards.iter_mut().find(|l| l.addr == *addr),
        }
    }

    pub(crate) fn run(mut self) {
        debug!("redis at {}: subscriber thread started", self.config.addr);
        while !self.stopping() {
            while let Ok(c) = self.ctl.try_recv() {
                self.control(c);
            }
            self.follow_sentinel();
            if self.main.is_some() {
                self.step(&At::Main);
            } else {
                self.reconnect_step();
            }
            if self.cluster.is_some() {
                self.cluster_step();
            }
            self.settle();
        }
        if let Some(link) = self.main.take() {
            link.conn.close();
        }
        for link in self.shards.drain(..) {
            link.conn.close();
        }
        self.counters.connected.store(false, Relaxed);
        for (_, sub) in self.subs.drain() {
            drop(sub);
        }
        debug!("redis at {}: subscriber thread stopped", self.config.addr);
    }

    /// Reads every shard link, places unplaced shard channels when their time has come,
    /// checks the shard links against a new slot map, closes shard links left unused.
    fn cluster_step(&mut self) {
        let addrs: Vec<Addr> = self.shards.iter().map(|l| l.addr.clone()).collect();
        for addr in addrs {
            if self.stopping() {
                return;
            }
            self.step(&At::Shard(addr));
        }
        self.check_map();
        if !self.unplaced.is_empty() && Instant::now() >= self.place_at {
            let names: Vec<Vec<u8>> = self.unplaced.iter().cloned().collect();
            self.place(names);
        }
        self.close_unused();
    }

    /// Splits the read tick among the links.
    fn retick(&mut self) {
        let n = u32::try_from(usize::from(self.main.is_some()) + self.shards.len())
            .unwrap_or(u32::MAX)
            .max(1);
        let tick = (self.settings.tick / n).max(MIN_TICK.min(self.settings.tick));
        for link in self.main.iter_mut().chain(self.shards.iter_mut()) {
            if let Err(e) = link.conn.set_tick(tick) {
                debug!("redis at {}: cannot set the read timeout: {e}", link.addr);
            }
        }
    }

    /// Pings a link when due, then reads it (a burst of frames at most).
    fn step(&mut self, at: &At) {
        let now = Instant::now();
        let (interval, timeout) = (self.settings.ping_interval, self.settings.ping_timeout);
        let Some(link) = self.link_mut(at) else {
            return;
        };
        if let Some(sent) = link.ping_sent {
            // Any frame proves the connection alive; the answer queues behind messages.
            if now.duration_since(sent.max(link.last_rx)) > timeout {
                let e = Error::io(
                    std::io::ErrorKind::TimedOut,
                    format!("subscriber PING unanswered for {timeout:?}"),
                    Delivery::Unknown,
                );
                self.lost(at, e);
                return;
            }
        } else if now.duration_since(link.last_rx) >= interval {
            if let Err(e) = link.conn.send(&redis::cmd("PING")) {
                self.lost(at, e);
                return;
            }
            link.ping_sent = Some(now);
            link.pending.push_back(Pending::Ping(now));
        }
        // The first read waits up to the tick; the rest of the burst takes only what has
        // already arrived, and for at most BURST_TIME: control requests are served between
        // bursts, every few milliseconds, whatever the message rate.
        let burst_end = Instant::now() + BURST_TIME;
        for i in 0..BURST {
            let Some(link) = self.link_mut(at) else {
                return;
            };
            let read = if i == 0 {
                link.conn.read()
            } else if Instant::now() >= burst_end {
                return;
            } else {
                link.conn.read_ready()
            };
            match read {
                Ok(Some(value)) => {
                    link.last_rx = Instant::now();
                    self.frame(at, classify(value));
                }
                Ok(None) => return,
                Err(e) => {
                    self.lost(at, e);
                    return;
                }
            }
            if self.stopping() {
                return;
            }
        }
    }

    fn frame(&mut self, at: &At, frame: Frame) {
        match frame {
            Frame::Message {
                kind,
                pattern,
                channel,
                payload,
            } => {
                let msg = Message::new(kind, pattern, channel, payload);
                let key = match kind {
                    Kind::Pattern => msg.pattern().unwrap_or_default(),
                    _ => msg.channel(),
                };
                let Some(ids) = self.routes[kind.index()].get(key) else {
                    self.counters.unrouted.fetch_add(1, Relaxed);
                    self.counters.received.fetch_add(1, Relaxed);
                    return;
                };
                let mut gone = Vec::new();
                for id in ids {
                    if let Some(sub) = self.subs.get(id) {
                        let (counters, shared) = (&self.counters, &self.shared);
                        let stopping = || counters.stopping.load(Relaxed) || shared.is_closed();
                        match sub.sink.deliver(msg.clone(), &stopping) {
                            Delivered::Yes => {
                                self.counters.delivered.fetch_add(1, Relaxed);
                            }
                            Delivered::Dropped | Delivered::Stopping => {
                                self.counters.dropped.fetch_add(1, Relaxed);
                                self.counters.dropped_export.add(1);
                            }
                            Delivered::Gone => gone.push(*id),
                        }
                    }
                }
                // A reader that vanished without unsubscribing (its `Drop` request is on
                // the way): stop delivering to it now.
                for id in gone {
                    self.unsubscribe(id, None);
                }
                // Counted once delivered (or dropped): a reader that sees `received` reach
                // N also sees the delivery and drop counters of those N.
                self.counters.received.fetch_add(1, Relaxed);
            }
            Frame::Confirm { kind, sub, name } => {
                let Some(link) = self.link_mut(at) else {
                    return;
                };
                let matched = match link.pending.front_mut() {
                    Some(Pending::Confirm {
                        kind: k,
                        sub: s,
                        names,
                        remaining,
                        ..
                    }) if *k == kind
                        && *s == sub
                        && name.as_ref().is_none_or(|n| names.contains(n)) =>
                    {
                        *remaining = remaining.saturating_sub(1);
                        if *remaining == 0 {
                            if let Some(Pending::Confirm {
                                reply: Some(reply), ..
                            }) = link.pending.pop_front()
                            {
                                let _ = reply.try_send(Ok(()));
                            }
                        }
                        true
                    }
                    _ => false,
                };
                if !matched && !sub {
                    self.dropped_by_server(at, kind, name);
                }
            }
            Frame::Pong => {
                let Some(link) = self.link_mut(at) else {
                    return;
                };
                let mut took = None;
                if let Some(Pending::Ping(sent)) = link.pending.front() {
                    took = Some(sent.elapsed());
                    link.pending.pop_front();
                }
                link.ping_sent = None;
                if took.is_some() {
                    self.counters.last.lock().ping = took;
                }
            }
            Frame::Error(e) => self.error_reply(at, e),
            Frame::Other(v) => debug!(
                "redis at {}: ignoring an unexpected frame on the subscriber connection: {v:?}",
                self.config.addr
            ),
        }
    }

    /// An unsubscribe nobody asked for: the server dropped a subscription by itself (a
    /// shard channel whose slot moved away).
    fn dropped_by_server(&mut self, at: &At, kind: Kind, name: Option<Vec<u8>>) {
        if self.on_main(kind) {
            debug!(
                "redis at {}: unsolicited {kind:?} unsubscribe: resubscribing",
                self.config.addr
            );
            self.resync_main(kind);
            return;
        }
        let Some(link) = self.link_mut(at) else {
            return;
        };
        let addr = link.addr.clone();
        let names: Vec<Vec<u8>> = match name {
            Some(n) => link.server[SHARD].take(&n).into_iter().collect(),
            None => link.server[SHARD].drain().collect(),
        };
        let names: Vec<Vec<u8>> = names
            .into_iter()
            .filter(|n| self.routes[SHARD].contains_key(n))
            .collect();
        if names.is_empty() {
            return;
        }
        info!(
            "cluster node {addr} dropped shard channel(s) {} (their slot moved): resubscribing on the new owner",
            show(&names)
        );
        self.unplaced.extend(names);
        if let Some(topo) = &self.cluster {
            topo.mark_stale();
        }
        self.place_at = Instant::now();
    }

    fn error_reply(&mut self, at: &At, e: redis::ServerError) {
        let on_cluster = self.cluster.is_some();
        let Some(link) = self.link_mut(at) else {
            return;
        };
        let addr = link.addr.clone();
        let front = link.pending.pop_front();
        match front {
            Some(Pending::Confirm {
                kind: Kind::Shard,
                sub: true,
                names,
                reply,
                ..
            }) if on_cluster && is_cluster_transient(&e) => {
                // The slot is elsewhere, or its master is failing over: place it again.
                // (A caller's own request follows the placement it caused: only the first
                // of the two refusals counts as a failed attempt.)
                let mut removed = false;
                for n in &names {
                    removed |= link.server[SHARD].remove(n);
                }
                if let Some(Redirect::Moved(slot, to)) =
                    route::redirect(&Value::ServerError(e.clone()), &addr)
                {
                    self.hints.insert(slot, to);
                }
                let wanted = &self.routes[SHARD];
                self.unplaced
                    .extend(names.into_iter().filter(|n| wanted.contains_key(n)));
                if let Some(reply) = reply {
                    self.waiting.push(reply);
                }
                if let Some(topo) = &self.cluster {
                    topo.mark_stale();
                }
                if removed {
                    let error = Error::from_redis(e.into(), Delivery::Answered);
                    self.placement_failed(&format!("{addr} answered {error}"), Level::Info);
                }
            }
            Some(Pending::Confirm {
                sub: false, reply, ..
            }) => {
                // An unsubscribe the server refused (on a Cluster: a slot that moved away);
                // nothing is subscribed either way.
                debug!("redis at {addr}: an unsubscribe was refused: {e:?}");
                if let Some(reply) = reply {
                    let _ = reply.try_send(Ok(()));
                }
            }
            Some(Pending::Confirm { reply, id, .. }) => {
                let error = Error::from_redis(e.into(), Delivery::Answered);
                if let Some(id) = id {
                    // The server refused the subscription (for example an ACL on channels):
                    // undo it here too.
                    self.rollback(id);
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.try_send(Err(error));
                    }
                    None => warn!("redis at {addr}: the server refused a resubscription: {error}"),
                }
            }
            Some(Pending::Ping(_)) => link.ping_sent = None,
            None => {
                let error = Error::from_redis(e.into(), Delivery::Answered);
                warn!("redis at {addr}: unexpected error on the subscriber connection: {error}");
            }
        }
    }

    /// Resubscribes every name of `kind` that is still wanted on the main link.
    fn resync_main(&mut self, kind: Kind) {
        let names: Vec<Vec<u8>> = self.routes[kind.index()].keys().cloned().collect();
        let Some(link) = self.main.as_mut() else {
            return;
        };
        link.server[kind.index()] = names.iter().cloned().collect();
        for chunk in names.chunks(CHUNK) {
            if let Err((e, _)) = link.send_names(kind, true, chunk.to_vec(), None, None, true) {
                self.lost(&At::Main, e);
                return;
            }
        }
    }

    /// Subscribes `names` (shard channels, on a Cluster) on their slots' owners.
    fn place(&mut self, names: Vec<Vec<u8>>) {
        let Some(topo) = self.cluster.clone() else {
            return;
        };
        let wanted = &self.routes[SHARD];
        self.unplaced.retain(|n| wanted.contains_key(n));
        let mut by_slot: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
        for n in names {
            if self.unplaced.contains(&n) {
                by_slot.entry(route::slot(&n)).or_default().push(n);
            }
        }
        let mut failure: Option<String> = None;
        for (slot, names) in by_slot {
            let addr = match self.hints.remove(&slot) {
                Some(addr) => addr,
                None => match topo.owner(slot) {
                    Ok(addr) => addr,
                    Err(e) => {
                        failure = Some(format!("slot {slot}: {e}"));
                        continue;
                    }
                },
            };
            if let Err(e) = self.shard_link(&addr) {
                topo.mark_stale();
                failure = Some(format!("cannot connect to {addr}: {e}"));
                continue;
            }
            let at = At::Shard(addr.clone());
            for chunk in names.chunks(CHUNK) {
                let Some(link) = self.link_mut(&at) else {
                    break;
                };
                link.server[SHARD].extend(chunk.iter().cloned());
                match link.send_names(Kind::Shard, true, chunk.to_vec(), None, None, true) {
                    Ok(()) => {
                        for n in chunk {
                            self.unplaced.remove(n);
                        }
                    }
                    Err((e, _)) => {
                        failure = Some(format!("{addr}: {e}"));
                        self.lost(&at, e);
                        break;
                    }
                }
            }
            debug!(
                "cluster node {addr}: subscribing shard channel(s) {} (slot {slot})",
                show(&names)
            );
        }
        if let Some(why) = failure {
            self.placement_failed(&why, Level::Warn);
        }
    }

    /// A shard channel could not be placed: the next try comes after a backoff delay.
    fn placement_failed(&mut self, why: &str, level: Level) {
        self.place_failures = self.place_failures.saturating_add(1);
        let delay = self.place_delays.next_delay();
        self.place_at = crate::util::time::after(delay);
        let failures = self.place_failures;
        let level = if failures == 1 || failures.is_multiple_of(10) {
            level
        } else {
            Level::Debug
        };
        log!(
            level,
            "redis cluster: {} shard channel(s) not subscribed yet (attempt {failures}): {why}; next try in {delay:?}",
            self.unplaced.len()
        );
    }

    /// The shard link to `addr`, opened if there is none.
    fn shard_link(&mut self, addr: &Addr) -> Result<()> {
        if self.shards.iter().any(|l| l.addr == *addr) {
            return Ok(());
        }
        let conn = Conn::open_at(&self.connector, addr, self.settings.tick)?;
        info!("cluster node {addr}: subscriber connected for shard channels");
        self.shards.push(Link::new(addr.clone(), conn));
        self.retick();
        Ok(())
    }

    /// After the slot map changed: shard channels on a link to another master than their
    /// slot's owner now are placed again. Nothing is sent to the old owner: it dropped them
    /// itself when it lost the slot (and an unsubscribe there would only be refused with
    /// `MOVED`, a reply that could not be told from the answer to another command).
    fn check_map(&mut self) {
        let Some(topo) = self.cluster.clone() else {
            return;
        };
        let map = topo.map();
        if self.map_seen.as_ref().is_some_and(|m| Arc::ptr_eq(m, &map)) {
            return;
        }
        self.map_seen = Some(map);
        let mut moved = Vec::new();
        for link in &mut self.shards {
            let gone: Vec<Vec<u8>> = link.server[SHARD]
                .iter()
                .filter(|n| {
                    topo.owner_in_map(route::slot(n))
                        .is_some_and(|owner| owner != link.addr)
                })
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            info!(
                "cluster: shard channel(s) {} moved away from {}: resubscribing on the new owner",
                show(&gone),
                link.addr
            );
            for n in &gone {
                link.server[SHARD].remove(n);
            }
            moved.extend(gone);
        }
        if !moved.is_empty() {
            let wanted = &self.routes[SHARD];
            self.unplaced
                .extend(moved.into_iter().filter(|n| wanted.contains_key(n)));
            self.place_at = Instant::now();
        }
    }

    /// Closes shard links that carry no shard channel and owe nothing.
    fn close_unused(&mut self) {
        let before = self.shards.len();
        let mut kept = Vec::with_capacity(before);
        for link in self.shards.drain(..) {
            if link.server[SHARD].is_empty() && link.pending.is_empty() {
                debug!(
                    "cluster node {}: no shard channel left: closing its subscriber connection",
                    link.addr
                );
                link.conn.close();
            } else {
                kept.push(link);
            }
        }
        self.shards = kept;
        if self.shards.len() != before {
            self.retick();
        }
    }

    /// Once every link is up and every resubscription confirmed: answers the requests that
    /// waited and reports the end of an outage.
    fn settle(&mut self) {
        let whole = self.main.is_some() && self.unplaced.is_empty();
        self.counters.connected.store(whole, Relaxed);
        if !whole || (self.place_failures == 0 && self.waiting.is_empty() && self.lost_at.is_none())
        {
            return;
        }
        let resyncing = self
            .main
            .iter()
            .chain(self.shards.iter())
            .any(Link::resyncing);
        if resyncing {
            return;
        }
        self.place_failures = 0;
        self.place_delays.reset();
        for w in self.waiting.drain(..) {
            let _ = w.try_send(Ok(()));
        }
        let Some(lost_at) = self.lost_at.take() else {
            return;
        };
        let downtime = lost_at.elapsed();
        let [channels, patterns, shard_channels] = [0, 1, 2].map(|i| self.routes[i].len());
        self.counters.resubscriptions.fetch_add(1, Relaxed);
        {
            let mut last = self.counters.last.lock();
            last.resubscribed_at = Some(SystemTime::now());
            last.downtime = Some(downtime);
        }
        info!(
            "redis at {}: subscriber resubscribed after {downtime:?} ({channels} channels, {patterns} patterns, {shard_channels} shard channels)",
            self.main.as_ref().map_or(&self.config.addr, |l| &l.addr)
        );
        self.shared.observed.events.emit(Event::Resubscribed {
            downtime,
            channels,
            patterns,
            shard_channels,
        });
    }

    fn update_counts(&self) {
        self.counters.subscriptions.store(self.subs.len(), Relaxed);
        for kind in Kind::ALL {
            self.counters.names[kind.index()].store(self.routes[kind.index()].len(), Relaxed);
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Subscribe {
                id,
                kind,
                names,
                sink,
                reply,
            } => {
                let routes = &mut self.routes[kind.index()];
                for n in &names {
                    let ids = routes.entry(n.clone()).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                self.subs.insert(
                    id,
                    Sub {
                        kind,
                        names: names.clone(),
                        sink,
                    },
                );
                self.update_counts();
                if self.on_main(kind) {
                    self.subscribe_main(id, kind, names, reply);
                } else {
                    self.subscribe_shard(id, names, reply);
                }
            }
            Control::Unsubscribe { id, reply } => self.unsubscribe(id, reply),
        }
    }

    fn subscribe_main(&mut self, id: u64, kind: Kind, names: Vec<Vec<u8>>, reply: Reply) {
        let Some(link) = self.main.as_mut() else {
            self.waiting.push(reply);
            return;
        };
        link.server[kind.index()].extend(names.iter().cloned());
        // Every name is sent, even one another subscription already has: the server confirms
        // it again, so this call returns only once the server has it (the other
        // subscription's own request may still be in flight).
        if let Err((e, reply)) = link.send_names(kind, true, names, Some(reply), Some(id), false) {
            // Answered after the resubscription.
            self.waiting.extend(reply);
            self.lost(&At::Main, e);
        }
    }

    /// A shard subscription on a Cluster: placed on its slot's owner, then sent again there
    /// with the caller's reply (so that it returns once that node confirmed).
    fn subscribe_shard(&mut self, id: u64, names: Vec<Vec<u8>>, reply: Reply) {
        let new: Vec<Vec<u8>> = names
            .iter()
            .filter(|n| !self.shards.iter().any(|l| l.server[SHARD].contains(*n)))
            .cloned()
            .collect();
        if !new.is_empty() {
            self.unplaced.extend(new.iter().cloned());
            self.place(new);
        }
        let holder = self
            .shards
            .iter()
            .find(|l| names.iter().all(|n| l.server[SHARD].contains(n)))
            .map(|l| At::Shard(l.addr.clone()));
        let Some(at) = holder else {
            // Answered once placed.
            self.waiting.push(reply);
            return;
        };
        let Some(link) = self.link_mut(&at) else {
            self.waiting.push(reply);
            return;
        };
        if let Err((e, reply)) =
            link.send_names(Kind::Shard, true, names, Some(reply), Some(id), false)
        {
            self.waiting.extend(reply);
            self.lost(&at, e);
        }
    }

    /// Forgets a subscription; returns its kind and the names no subscription wants any more.
    fn forget(&mut self, id: u64) -> Option<(Kind, Vec<Vec<u8>>)> {
        let sub = self.subs.remove(&id)?;
        let routes = &mut self.routes[sub.kind.index()];
        let mut unused = Vec::new();
        for n in sub.names {
            if let Some(ids) = routes.get_mut(&n) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    routes.remove(&n);
                    unused.push(n);
                }
            }
        }
        self.update_counts();
        Some((sub.kind, unused))
    }

    /// Undoes a subscription the server refused (nothing to unsubscribe).
    fn rollback(&mut self, id: u64) {
        let Some((kind, unused)) = self.forget(id) else {
            return;
        };
        for link in self.main.iter_mut().chain(self.shards.iter_mut()) {
            for n in &unused {
                link.server[kind.index()].remove(n);
            }
        }
        if kind == Kind::Shard {
            for n in &unused {
                self.unplaced.remove(n);
            }
        }
    }

    fn unsubscribe(&mut self, id: u64, reply: Option<Reply>) {
        let done = |reply: Option<Reply>| {
            if let Some(r) = reply {
                let _ = r.try_send(Ok(()));
            }
        };
        let Some((kind, unused)) = self.forget(id) else {
            return done(reply);
        };
        // Per link: the names it has (a link that is down has nothing).
        let mut plan: Vec<(At, Vec<Vec<u8>>)> = Vec::new();
        if self.on_main(kind) {
            if let Some(link) = self.main.as_mut() {
                let names: Vec<Vec<u8>> = unused
                    .into_iter()
                    .filter(|n| link.server[kind.index()].remove(n))
                    .collect();
                plan.push((At::Main, names));
            }
        } else {
            for n in &unused {
                self.unplaced.remove(n);
            }
            for link in &mut self.shards {
                let names: Vec<Vec<u8>> = unused
                    .iter()
                    .filter(|n| link.server[SHARD].remove(*n))
                    .cloned()
                    .collect();
                plan.push((At::Shard(link.addr.clone()), names));
            }
        }
        plan.retain(|(_, names)| !names.is_empty());
        let mut reply = reply;
        let links = plan.len();
        for (i, (at, names)) in plan.into_iter().enumerate() {
            // On a Cluster a command's channels must share a slot.
            let batches: Vec<Vec<Vec<u8>>> = if self.on_main(kind) {
                vec![names]
            } else {
                let mut by_slot: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
                for n in names {
                    by_slot.entry(route::slot(&n)).or_default().push(n);
                }
                by_slot.into_values().collect()
            };
            let count = batches.len();
            for (j, batch) in batches.into_iter().enumerate() {
                // The reply goes with the last command (one subscription's shard channels share a
                // slot, so one link: the others are confirmed before it).
                let this = if i + 1 == links && j + 1 == count {
                    reply.take()
                } else {
                    None
                };
                let Some(link) = self.link_mut(&at) else {
                    done(this);
                    break;
                };
                if let Err((e, this)) = link.send_names(kind, false, batch, this, None, false) {
                    // Gone with the connection anyway.
                    done(this);
                    self.lost(&at, e);
                    break;
                }
            }
        }
        done(reply);
    }

    /// A link is dead: drop it; the main link reconnects, the shard channels of a shard
    /// link are placed again.
    fn lost(&mut self, at: &At, cause: Error) {
        let link = match at {
            At::Main => self.main.take(),
            At::Shard(addr) => match self.shards.iter().position(|l| l.addr == *addr) {
                Some(i) => Some(self.shards.remove(i)),
                None => None,
            },
        };
        let Some(link) = link else {
            return;
        };
        let Link {
            addr,
            conn,
            pending,
            server,
            ..
        } = link;
        conn.close();
        match at {
            At::Main => warn!("redis at {addr}: subscriber connection lost: {cause}"),
            At::Shard(_) => {
                warn!("cluster node {addr}: subscriber connection for shard channels lost: {cause}")
            }
        }
        self.counters.connected.store(false, Relaxed);
        self.counters.disconnections.fetch_add(1, Relaxed);
        let now = Instant::now();
        for p in pending {
            match p {
                // A subscribe in flight is answered once resubscribed; an unsubscribe is
                // done (a new connection starts without it).
                Pending::Confirm {
                    sub: true,
                    reply: Some(reply),
                    ..
                } => self.waiting.push(reply),
                Pending::Confirm {
                    sub: false,
                    reply: Some(reply),
                    ..
                } => {
                    let _ = reply.try_send(Ok(()));
                }
                _ => {}
            }
        }
        // An outage that began before a resubscription completed counts from its start.
        self.lost_at = Some(self.lost_at.unwrap_or(now));
        if let Some(topo) = &self.cluster {
            topo.node_failed();
        }
        match at {
            At::Main => {
                self.attempts = 0;
                self.delays.reset();
                self.next_attempt = now;
            }
            At::Shard(_) => {
                let [_, _, shard] = server;
                let wanted = &self.routes[SHARD];
                self.unplaced
                    .extend(shard.into_iter().filter(|n| wanted.contains_key(n)));
                self.place_at = now;
            }
        }
        self.retick();
        self.shared
            .observed
            .events
            .emit(Event::SubscriberDisconnected { cause });
    }

    /// With Sentinel: when the master moved (a `+switch-master` the handle's listener saw, a
    /// rediscovery), the main link still reaches the old one, where nothing is published
    /// any more: drop it, so that it reconnects to the new master and resubscribes.
    fn follow_sentinel(&mut self) {
        let Some(sentinel) = &self.shared.sentinel else {
            return;
        };
        let (Some(master), Some(link)) = (sentinel.current_addr(), self.main.as_ref()) else {
            return;
        };
        if link.addr != master {
            let old = link.addr.clone();
            info!("subscriber: the master moved from {old} to {master}; moving the subscriptions");
            let cause = Error::io(
                std::io::ErrorKind::ConnectionAborted,
                "the Sentinel master moved",
                Delivery::NotSent,
            );
            self.lost(&At::Main, cause);
            // Reconnect at once, not after a backoff delay.
            self.next_attempt = Instant::now();
        }
    }

    /// Waits for the next attempt (serving requests meanwhile), then tries once.
    fn reconnect_step(&mut self) {
        let now = Instant::now();
        // The handle's heartbeat reaching the server again (health no longer `Down`) cuts
        // the backoff short: the subscriber reconnects within a loop of the server's return.
        let reachable = self.config.heartbeat.interval.is_some()
            && self.shared.observed.health() != crate::events::Health::Down
            && now >= self.last_attempt + self.config.heartbeat.reconnect.base();
        if reachable && now < self.next_attempt {
            self.next_attempt = now;
        }
        if now < self.next_attempt {
            if !self.shards.is_empty() {
                // The shard links' reads pace the loop.
                return;
            }
            let wait = (self.next_attempt - now).min(Duration::from_millis(50));
            select! {
                recv(self.ctl) -> c => if let Ok(c) = c { self.control(c) },
                recv(self.stop) -> _ => {},
                default(wait) => {},
            }
            return;
        }
        self.attempts += 1;
        self.last_attempt = now;
        debug!(
            "redis at {}: subscriber reconnect attempt {}",
            self.config.addr, self.attempts
        );
        match open_main(&self.connector, &self.shared, self.settings.tick) {
            Ok((addr, conn)) => {
                info!(
                    "redis at {addr}: subscriber reconnected after {} attempt(s)",
                    self.attempts
                );
                self.main = Some(Link::new(addr, conn));
                self.retick();
                for kind in Kind::ALL {
                    if !self.on_main(kind) {
                        continue;
                    }
                    self.resync_main(kind);
                    if self.main.is_none() {
                        // Lost again while resubscribing: `lost` kept the outage's start.
                        return;
                    }
                }
            }
            Err(e) => {
                let delay = self.delays.next_delay();
                debug!(
                    "redis at {}: subscriber reconnect attempt {} failed: {e}; next in {delay:?}",
                    self.config.addr, self.attempts
                );
                self.next_attempt = crate::util::time::after(delay);
            }
        }
    }
}
