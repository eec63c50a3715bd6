//! The subscriber thread: reads the connection, dispatches messages, serves subscribe
//! requests between reads, pings, reconnects and resubscribes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use log::{debug, info, warn};
use parking_lot::Mutex;

use super::conn::Conn;
use super::frame::{classify, Frame, Kind};
use super::message::{Delivered, Message, Sink};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::pool::Shared;
use crate::retry::BackoffDelays;

/// Names sent in one (re)subscribe command at most.
const CHUNK: usize = 512;

/// A request from another thread.
pub(crate) enum Control {
    Subscribe {
        id: u64,
        kind: Kind,
        names: Vec<Vec<u8>>,
        sink: Sink,
        reply: Sender<Result<()>>,
    },
    Unsubscribe {
        id: u64,
        reply: Option<Sender<Result<()>>>,
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

/// A reply the server owes us, in order.
enum Pending {
    Confirm {
        kind: Kind,
        sub: bool,
        remaining: usize,
        reply: Option<Sender<Result<()>>>,
        /// The subscription a subscribe request was for (rolled back if the server refuses).
        id: Option<u64>,
    },
    Ping(Instant),
    /// Fires when every resubscription before it was confirmed.
    Resubscribed {
        lost_at: Instant,
    },
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

pub(crate) struct Worker {
    config: Config,
    settings: Settings,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    ctl: Receiver<Control>,
    stop: Receiver<()>,
    conn: Option<Conn>,
    subs: HashMap<u64, Sub>,
    /// Subscription ids per name, per kind.
    routes: [HashMap<Vec<u8>, Vec<u64>>; 3],
    /// What the server has (or has been asked to have) on this connection, per kind.
    server: [HashSet<Vec<u8>>; 3],
    pending: VecDeque<Pending>,
    /// Subscribe requests made while disconnected: answered once resubscribed.
    waiting: Vec<Sender<Result<()>>>,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    lost_at: Option<Instant>,
    next_attempt: Instant,
    attempts: u32,
    delays: BackoffDelays,
}

impl Worker {
    pub(crate) fn new(
        config: Config,
        settings: Settings,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
        ctl: Receiver<Control>,
        stop: Receiver<()>,
        conn: Conn,
    ) -> Worker {
        let delays = config.heartbeat.reconnect.delays();
        counters.connected.store(true, Relaxed);
        Worker {
            config,
            settings,
            shared,
            counters,
            ctl,
            stop,
            conn: Some(conn),
            subs: HashMap::new(),
            routes: Default::default(),
            server: Default::default(),
            pending: VecDeque::new(),
            waiting: Vec::new(),
            last_rx: Instant::now(),
            ping_sent: None,
            lost_at: None,
            next_attempt: Instant::now(),
            attempts: 0,
            delays,
        }
    }

    fn stopping(&self) -> bool {
        self.counters.stopping.load(Relaxed) || self.shared.is_closed()
    }

    pub(crate) fn run(mut self) {
        debug!("redis at {}: subscriber thread started", self.config.addr);
        while !self.stopping() {
            while let Ok(c) = self.ctl.try_recv() {
                self.control(c);
            }
            if self.conn.is_some() {
                self.step();
            } else {
                self.reconnect_step();
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
        self.counters.connected.store(false, Relaxed);
        for (_, sub) in self.subs.drain() {
            drop(sub);
        }
        debug!("redis at {}: subscriber thread stopped", self.config.addr);
    }

    /// One read (or a tick without data) on a live connection.
    fn step(&mut self) {
        let now = Instant::now();
        if let Some(sent) = self.ping_sent {
            // Any frame proves the connection alive; the answer queues behind messages.
            if now.duration_since(sent.max(self.last_rx)) > self.settings.ping_timeout {
                let e = Error::from_redis(
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "subscriber PING unanswered for {:?}",
                            self.settings.ping_timeout
                        ),
                    )),
                    crate::error::Delivery::Unknown,
                );
                self.lost(e);
                return;
            }
        } else if now.duration_since(self.last_rx) >= self.settings.ping_interval {
            if let Err(e) = self.send(&redis::cmd("PING")) {
                self.lost(e);
                return;
            }
            self.ping_sent = Some(now);
            self.pending.push_back(Pending::Ping(now));
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.read() {
            Ok(Some(value)) => {
                self.last_rx = Instant::now();
                self.frame(classify(value));
            }
            Ok(None) => {}
            Err(e) => self.lost(e),
        }
    }

    fn send(&mut self, cmd: &redis::Cmd) -> Result<()> {
        match self.conn.as_mut() {
            Some(conn) => conn.send(cmd),
            None => Err(Error::Closed),
        }
    }

    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::Message {
                kind,
                pattern,
                channel,
                payload,
            } => {
                self.counters.received.fetch_add(1, Relaxed);
                let msg = Message::new(kind, pattern, channel, payload);
                let key = match kind {
                    Kind::Pattern => msg.pattern().unwrap_or_default(),
                    _ => msg.channel(),
                };
                let Some(ids) = self.routes[kind.index()].get(key) else {
                    self.counters.unrouted.fetch_add(1, Relaxed);
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
            }
            Frame::Confirm { kind, sub } => {
                match self.pending.front_mut() {
                    Some(Pending::Confirm {
                        kind: k,
                        sub: s,
                        remaining,
                        ..
                    }) if *k == kind && *s == sub => {
                        *remaining = remaining.saturating_sub(1);
                        if *remaining == 0 {
                            if let Some(Pending::Confirm {
                                reply: Some(reply), ..
                            }) = self.pending.pop_front()
                            {
                                let _ = reply.try_send(Ok(()));
                            }
                        }
                    }
                    _ => {
                        // Not asked for: the server dropped a subscription by itself (a
                        // shard channel whose slot moved). Subscribe everything again.
                        if !sub {
                            debug!(
                                "redis at {}: unsolicited {:?} unsubscribe: resubscribing",
                                self.config.addr, kind
                            );
                            self.resync(kind);
                        }
                    }
                }
            }
            Frame::Pong => {
                if let Some(Pending::Ping(sent)) = self.pending.front() {
                    let took = sent.elapsed();
                    self.pending.pop_front();
                    self.counters.last.lock().ping = Some(took);
                }
                self.ping_sent = None;
            }
            Frame::Error(e) => {
                let error = Error::from_redis(e, crate::error::Delivery::Answered);
                match self.pending.pop_front() {
                    Some(Pending::Confirm { reply, id, sub, .. }) => {
                        if let (true, Some(id)) = (sub, id) {
                            // The server refused the subscription (for example an ACL on
                            // channels): undo it here too.
                            self.unsubscribe_local(id);
                        }
                        match reply {
                            Some(reply) => {
                                let _ = reply.try_send(Err(error));
                            }
                            None => warn!(
                                "redis at {}: the server refused a resubscription: {error}",
                                self.config.addr
                            ),
                        }
                    }
                    Some(Pending::Ping(_)) => self.ping_sent = None,
                    Some(other) => self.pending.push_front(other),
                    None => warn!(
                        "redis at {}: unexpected error on the subscriber connection: {error}",
                        self.config.addr
                    ),
                }
            }
            Frame::Other(v) => debug!(
                "redis at {}: ignoring an unexpected frame on the subscriber connection: {v:?}",
                self.config.addr
            ),
        }
        self.fire_barriers();
    }

    /// Resubscribes every name of `kind` that is still wanted (after the server dropped them).
    fn resync(&mut self, kind: Kind) {
        let names: Vec<Vec<u8>> = self.routes[kind.index()].keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        for chunk in names.chunks(CHUNK) {
            let mut cmd = redis::cmd(kind.subscribe_cmd());
            for n in chunk {
                cmd.arg(n.as_slice());
            }
            if let Err(e) = self.send(&cmd) {
                self.lost(e);
                return;
            }
            self.pending.push_back(Pending::Confirm {
                kind,
                sub: true,
                remaining: chunk.len(),
                reply: None,
                id: None,
            });
        }
    }

    fn fire_barriers(&mut self) {
        while let Some(Pending::Resubscribed { lost_at }) = self.pending.front() {
            let downtime = lost_at.elapsed();
            self.pending.pop_front();
            self.lost_at = None;
            for w in self.waiting.drain(..) {
                let _ = w.try_send(Ok(()));
            }
            let [channels, patterns, shard_channels] = [0, 1, 2].map(|i| self.routes[i].len());
            self.counters.resubscriptions.fetch_add(1, Relaxed);
            {
                let mut last = self.counters.last.lock();
                last.resubscribed_at = Some(SystemTime::now());
                last.downtime = Some(downtime);
            }
            info!(
                "redis at {}: subscriber resubscribed after {downtime:?} ({channels} channels, {patterns} patterns, {shard_channels} shard channels)",
                self.config.addr
            );
            self.shared.events.emit(Event::Resubscribed {
                downtime,
                channels,
                patterns,
                shard_channels,
            });
        }
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
                for n in &names {
                    self.server[kind.index()].insert(n.clone());
                }
                // Every name is sent, even one another subscription already has: the server
                // confirms it again, so this call returns only once the server has it (the
                // other subscription's own request may still be in flight).
                let new = names.clone();
                self.subs.insert(id, Sub { kind, names, sink });
                self.update_counts();
                if self.conn.is_none() {
                    self.waiting.push(reply);
                    return;
                }
                let mut cmd = redis::cmd(kind.subscribe_cmd());
                for n in &new {
                    cmd.arg(n.as_slice());
                }
                match self.send(&cmd) {
                    Ok(()) => self.pending.push_back(Pending::Confirm {
                        kind,
                        sub: true,
                        remaining: new.len(),
                        reply: Some(reply),
                        id: Some(id),
                    }),
                    Err(e) => {
                        // Answered after the resubscription.
                        self.waiting.push(reply);
                        self.lost(e);
                    }
                }
            }
            Control::Unsubscribe { id, reply } => self.unsubscribe(id, reply),
        }
    }

    /// Forgets a subscription; returns the names no subscription wants any more.
    fn unsubscribe_local(&mut self, id: u64) -> Option<(Kind, Vec<Vec<u8>>)> {
        let sub = self.subs.remove(&id)?;
        let routes = &mut self.routes[sub.kind.index()];
        let mut unused = Vec::new();
        for n in &sub.names {
            if let Some(ids) = routes.get_mut(n) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    routes.remove(n);
                    if self.server[sub.kind.index()].remove(n) {
                        unused.push(n.clone());
                    }
                }
            }
        }
        self.update_counts();
        Some((sub.kind, unused))
    }

    fn unsubscribe(&mut self, id: u64, reply: Option<Sender<Result<()>>>) {
        let done = |reply: Option<Sender<Result<()>>>| {
            if let Some(r) = reply {
                let _ = r.try_send(Ok(()));
            }
        };
        let Some((kind, unused)) = self.unsubscribe_local(id) else {
            return done(reply);
        };
        if unused.is_empty() || self.conn.is_none() {
            return done(reply);
        }
        let mut cmd = redis::cmd(kind.unsubscribe_cmd());
        for n in &unused {
            cmd.arg(n.as_slice());
        }
        match self.send(&cmd) {
            Ok(()) => self.pending.push_back(Pending::Confirm {
                kind,
                sub: false,
                remaining: unused.len(),
                reply,
                id: None,
            }),
            Err(e) => {
                // Gone with the connection anyway.
                done(reply);
                self.lost(e);
            }
        }
    }

    /// The connection is dead: drop it and start reconnecting.
    fn lost(&mut self, cause: Error) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        conn.close();
        warn!(
            "redis at {}: subscriber connection lost: {cause}",
            self.config.addr
        );
        self.counters.connected.store(false, Relaxed);
        self.counters.disconnections.fetch_add(1, Relaxed);
        let lost_at = Instant::now();
        for p in self.pending.drain(..) {
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
        self.server = Default::default();
        self.ping_sent = None;
        // An outage that began before a resubscription completed counts from its start.
        self.lost_at = Some(self.lost_at.unwrap_or(lost_at));
        self.attempts = 0;
        self.delays.reset();
        self.next_attempt = lost_at;
        self.shared
            .events
            .emit(Event::SubscriberDisconnected { cause });
    }

    /// Waits for the next attempt (serving requests meanwhile), then tries once.
    fn reconnect_step(&mut self) {
        let now = Instant::now();
        if now < self.next_attempt {
            let wait = (self.next_attempt - now).min(Duration::from_millis(50));
            select! {
                recv(self.ctl) -> c => if let Ok(c) = c { self.control(c) },
                recv(self.stop) -> _ => {},
                default(wait) => {},
            }
            return;
        }
        self.attempts += 1;
        debug!(
            "redis at {}: subscriber reconnect attempt {}",
            self.config.addr, self.attempts
        );
        match Conn::open(&self.config, self.settings.tick) {
            Ok(conn) => {
                self.conn = Some(conn);
                self.counters.connected.store(true, Relaxed);
                self.last_rx = Instant::now();
                let lost_at = self.lost_at.unwrap_or_else(Instant::now);
                info!(
                    "redis at {}: subscriber reconnected after {} attempt(s)",
                    self.config.addr, self.attempts
                );
                for kind in Kind::ALL {
                    self.server[kind.index()] = self.routes[kind.index()].keys().cloned().collect();
                    self.resync(kind);
                    if self.conn.is_none() {
                        // Lost again while resubscribing: `lost` kept the outage's start.
                        return;
                    }
                }
                self.pending.push_back(Pending::Resubscribed { lost_at });
                self.fire_barriers();
            }
            Err(e) => {
                let delay = self.delays.next_delay();
                debug!(
                    "redis at {}: subscriber reconnect attempt {} failed: {e}; next in {delay:?}",
                    self.config.addr, self.attempts
                );
                self.next_attempt = Instant::now() + delay;
            }
        }
    }
}
