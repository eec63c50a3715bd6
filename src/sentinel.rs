//! Redis Sentinel: master (or replica) discovery with timeouts, listener threads that follow
//! a failover from its start, and the write fence that keeps a master handle's calls away
//! from a master being failed over.
//!
//! The pool's connection manager asks [`SentinelState::target`] where to connect; the first
//! call (and any call after [`SentinelState::refresh`] found nothing) asks the sentinels in
//! turn. When the node moves (a `+promoted-slave` or `+switch-master` message, a connection
//! that reaches a node of the wrong role or cannot be opened, a `READONLY` reply on a master
//! handle), [`SentinelState::switch_to`] points new connections at the new node, retires
//! every pooled connection at once (the pool's generation counter), closes the handle's
//! breaker and, for a master, emits [`Event::FailoverDetected`].
//!
//! ## The write fence (master handles)
//!
//! One listener thread per sentinel subscribes to the failover channels. The sentinel that
//! leads a failover announces its start (`+selected-slave`,
//! `+failover-state-send-slaveof-noone`) before it promotes the replica (`SLAVEOF NO ONE`,
//! on its next timer tick): from that moment the handle sends nothing more to the old master.
//! Calls made through the handle wait (each by its own retry deadline) in
//! [`SentinelState::wait_for_failover`]; a command about to go out on a connection to the
//! old master is refused before it is written ([`SentinelState::check_send`]: `NotSent`, so
//! the handle's retry sends it again, to the new master). When the replica answers as a
//! master (`+promoted-slave`, or a sentinel naming it when asked), the handle checks that it
//! answers `ROLE` as a master, retires every connection, closes its breaker, emits
//! [`Event::FailoverDetected`] and lets the waiting calls go, to the new master. An aborted
//! failover (`-failover-abort-*`) lets them go to the old master; a failover nobody reports
//! on ends the fence after the sentinels' `failover-timeout` (asked with `SENTINEL MASTER`).
//!
//! What the fence cannot save: a write that reached the old master before the fence but was
//! not yet replicated when the replica was promoted (the old master discards it when it is
//! turned into a replica). On loopback that window is a replication round trip; `WAIT 1`
//! after a write (see [`crate::lock::ReplicaAck`] for locks) closes it: a write the replica
//! acknowledged survives the promotion.
//!
//! With [`SentinelRole::Replica`] the handle asks `SENTINEL REPLICAS`, keeps the replica it
//! picked while the sentinels call it healthy, and moves when it is lost or promoted; it
//! has no fence (it never writes).
//!
//! The sentinels are reached with their own credentials and, when
//! [`SentinelConfig::uses_tls`] says so, over TLS with the data nodes' TLS settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};
use redis::{FromRedisValue, Value};

use crate::breaker::Breaker;
use crate::config::{Addr, Config, SentinelConfig, SentinelRole};
use crate::conn::{Connection, Connector, Generation};
use crate::error::{Delivery, Error, ErrorClass, Result};
use crate::events::Event;
use crate::observe::Observed;
use crate::util::threads::Background;
use crate::util::time;

/// How long the listener waits on its subscription before it checks for a stop request.
const LISTEN_SLICE: Duration = Duration::from_millis(250);
/// Pause between two attempts to follow a sentinel that fails.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// While the fence is up, how often each listener asks its sentinel where the master is.
const FENCE_POLL: Duration = Duration::from_millis(100);
/// The sentinels' `failover-timeout` until one says (Redis' default: 3 minutes).
const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);
/// Added to `failover-timeout` before a fence nobody reported on is given up.
const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// A failover the sentinels announced, until the new master is known (or it is aborted).
#[derive(Debug, Clone)]
struct Fence {
    /// The master being replaced.
    old: Addr,
    /// The replica chosen to replace it.
    candidate: Addr,
    since: Instant,
    /// Given up by then (the sentinels abort a failover that takes longer).
    until: Instant,
}

/// Where the master (or the chosen replica) is, shared by every connection manager of a
/// handle and its listener.
pub(crate) struct SentinelState {
    config: SentinelConfig,
    /// Opens connections to the sentinels (their credentials and TLS settings).
    sentinels: Connector,
    /// The data nodes' timeouts.
    timeouts: crate::config::Timeouts,
    /// Retired on every move, so that no pooled connection keeps reaching the old node.
    generation: Arc<Generation>,
    observed: Arc<Observed>,
    current: Mutex<Option<Addr>>,
    rediscover: AtomicBool,
    /// Round-robin position among healthy replicas (starts at a random place, so that
    /// processes started together spread over the replicas).
    next_replica: AtomicUsize,
    /// Opens connections to the data nodes (to check a promoted replica).
    data: Connector,
    /// The handle's breaker: closed when the master moves (the old one's failures say
    /// nothing about the new one).
    breaker: Arc<Breaker>,
    /// The failover in progress, while the handle holds its calls.
    fence: Mutex<Option<Fence>>,
    /// `fence.is_some()`, read without the lock on every call.
    fenced: AtomicBool,
    /// Signalled when the fence is lifted.
    unfenced: Condvar,
    /// The sentinels' `failover-timeout`, in milliseconds.
    failover_timeout_ms: AtomicU64,
}

impl std::fmt::Debug for SentinelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelState")
            .field("master_name", &self.config.master_name)
            .field("role", &self.config.role)
            .field("current", &self.current.lock().clone())
            .finish_non_exhaustive()
    }
}

/// A replica as one sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    addr: Addr,
    /// Not flagged down, disconnected or being promoted.
    up: bool,
    /// Its link to the master is `ok` (as of the sentinel's last `INFO`, up to 10 s old).
    link_ok: bool,
}

impl Replica {
    /// One entry of `SENTINEL REPLICAS`; `None` without a usable address.
    fn from_entry(entry: &HashMap<String, String>) -> Option<Replica> {
        let host = entry.get("ip")?.clone();
        let port = entry.get("port")?.parse().ok()?;
        let flags = entry.get("flags").map_or("", String::as_str);
        let flagged = flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "disconnected" | "promoted"));
        Some(Replica {
            addr: Addr::Tcp { host, port },
            up: !flagged,
            link_ok: entry.get("master-link-status").map(String::as_str) == Some("ok"),
        })
    }

    fn healthy(&self) -> bool {
        self.up && self.link_ok
    }
}

/// What a replica handle does after asking the sentinels.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// Stay on the current replica.
    Keep,
    /// Move to this replica.
    Switch(Addr),
    /// The current node is no replica any more (promoted, or removed) and no other is up:
    /// stop using it.
    Forget,
    /// No replica is up; the current one (if any) is still listed as a replica: keep it.
    NoneUp,
}

/// Which replica to use. Candidates, best first: the healthy ones (up, link `ok`) other than
/// the one that just `failed`; then the ones merely up (the sentinels refresh a replica's
/// link status only every 10 s; each new connection checks the link itself, see
/// [`SentinelState::check_role`]) other than `failed`; then `failed` itself when it is up.
/// The current replica is kept while it is among the best candidates; otherwise the
/// `turn`-th of them is chosen (round robin).
fn choose_replica(
    replicas: &[Replica],
    current: Option<&Addr>,
    failed: Option<&Addr>,
    turn: usize,
) -> Choice {
    let tier = |ok: &dyn Fn(&Replica) -> bool, skip_failed: bool| -> Vec<&Addr> {
        replicas
            .iter()
            .filter(|r| ok(r) && !(skip_failed && Some(&r.addr) == failed))
            .map(|r| &r.addr)
            .collect()
    };
    let candidates = [
        tier(&Replica::healthy, true),
        tier(&|r| r.up, true),
        tier(&|r| r.up, false),
    ]
    .into_iter()
    .find(|c| !c.is_empty());
    if let Some(candidates) = candidates {
        if current.is_some_and(|c| candidates.contains(&c)) {
            return Choice::Keep;
        }
        return Choice::Switch(candidates[turn % candidates.len()].clone());
    }
    match current {
        Some(c) if !replicas.iter().any(|r| r.addr == *c) => Choice::Forget,
        _ => Choice::NoneUp,
    }
}

impl SentinelState {
    /// The state of a handle whose data nodes use `config`.
    pub(crate) fn new(
        config: &Config,
        sentinel: SentinelConfig,
        data: Connector,
        breaker: Arc<Breaker>,
        generation: Arc<Generation>,
        observed: Arc<Observed>,
    ) -> Result<SentinelState> {
        let mut own = config.clone();
        own.username = sentinel.username.clone();
        own.password = sentinel.password.clone();
        own.db = 0;
        own.protocol = crate::config::Protocol::Resp2;
        own.tls = if sentinel.uses_tls(config.tls.is_some()) {
            Some(config.tls.clone().unwrap_or_default())
        } else {
            None
        };
        Ok(SentinelState {
            sentinels: Connector::new(&own)?,
            timeouts: config.timeouts,
            config: sentinel,
            generation,
            observed,
            current: Mutex::new(None),
            rediscover: AtomicBool::new(false),
            next_replica: AtomicUsize::new(crate::util::ids::random_u64() as usize),
            data,
            breaker,
            fence: Mutex::new(None),
            fenced: AtomicBool::new(false),
            unfenced: Condvar::new(),
            failover_timeout_ms: AtomicU64::new(millis(DEFAULT_FAILOVER_TIMEOUT)),
        })
    }

    /// Whether the handle reads from a replica ([`SentinelRole::Replica`]).
    pub(crate) fn reads_from_replica(&self) -> bool {
        self.config.role == SentinelRole::Replica
    }

    /// The node's address (the master, or the chosen replica), if known.
    pub(crate) fn current_addr(&self) -> Option<Addr> {
        self.current.lock().clone()
    }

    /// Where to connect, discovering it first (by `deadline`) when it is not known.
    pub(crate) fn target(&self, deadline: Instant) -> Result<Addr> {
        if let Some(known) = self.current.lock().as_ref() {
            return Ok(known.clone());
        }
        self.refresh_by(deadline, None)?;
        self.current.lock().clone().ok_or_else(|| self.not_found())
    }

    /// Checks that a new connection reaches a node of the configured role (`ROLE`): the
    /// sentinels may name a master that was just demoted, or a replica just promoted. A
    /// replica must also have its link to the master up (`connected`): one that is still
    /// syncing, or that lost its master, would serve old (or, freshly restarted, no) data.
    pub(crate) fn check_role(&self, con: &mut Connection, deadline: Instant) -> Result<()> {
        self.check_role_as(con, deadline, self.config.role)
    }

    fn check_role_as(
        &self,
        con: &mut Connection,
        deadline: Instant,
        want: SentinelRole,
    ) -> Result<()> {
        let packed = redis::cmd("ROLE").get_packed_command();
        let reply = con
            .exec(&packed, Some(deadline))
            .map_err(|e| e.with_delivery(Delivery::NotSent))?;
        let role: Vec<Value> = Vec::from_redis_value(reply)
            .map_err(|e| Error::from_redis(e.into(), Delivery::NotSent))?;
        let is = |v: Option<&Value>, want: &[u8]| matches!(v, Some(Value::BulkString(r)) if r.as_slice() == want);
        let problem = match want {
            SentinelRole::Replica if !is(role.first(), b"slave") => Some("is not a replica"),
            SentinelRole::Replica if !is(role.get(3), b"connected") => {
                Some("is a replica whose link to the master is not up")
            }
            SentinelRole::Replica => None,
            _ if !is(role.first(), b"master") => Some("is not a master (yet)"),
            _ => None,
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(Error::io(
                std::io::ErrorKind::ConnectionRefused,
                format!("the address the sentinels gave {problem}"),
                Delivery::NotSent,
            )),
        }
    }

    /// A connection to `addr` could not be opened or reached the wrong role: ask the
    /// sentinels again, preferring another replica (switching retires the pool if the node
    /// moved).
    pub(crate) fn connection_failed(&self, addr: &Addr) {
        let deadline = time::after(self.timeouts.connect);
        if let Err(e) = self.refresh_by(deadline, Some(addr)) {
            debug!("sentinel rediscovery failed: {e}");
        }
    }

    /// Asks the sentinels where the node is now and switches to it if it moved.
    pub(crate) fn refresh(&self) -> Result<Addr> {
        self.refresh_by(time::after(self.timeouts.connect), None)
    }

    /// Asks the sentinels (each in turn, all by `deadline`), avoiding the replica that just
    /// `failed`.
    fn refresh_by(&self, deadline: Instant, failed: Option<&Addr>) -> Result<Addr> {
        if !self.reads_from_replica() {
            let addr = self.discover_master(deadline)?;
            self.switch_to(addr.clone(), "asked the sentinels");
            return Ok(addr);
        }
        let replicas = self.discover_replicas(deadline)?;
        let current = self.current_addr();
        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed);
        match choose_replica(&replicas, current.as_ref(), failed, turn) {
            Choice::Keep => current.ok_or_else(|| self.not_found()),
            Choice::Switch(addr) => {
                // Another thread (a pool connection, the heartbeat, the listener) may have
                // chosen meanwhile: keep its choice rather than retire its connections.
                match self.current_addr() {
                    Some(now) if Some(&now) != current.as_ref() => Ok(now),
                    _ => {
                        self.switch_to(addr.clone(), "asked the sentinels");
                        Ok(addr)
                    }
                }
            }
            Choice::Forget => {
                self.forget("the sentinels no longer list it as a replica");
                Err(self.not_found())
            }
            Choice::NoneUp => current.ok_or_else(|| self.not_found()),
        }
    }

    /// Asks for a rediscovery by the listener thread (after a `READONLY` reply).
    pub(crate) fn request_rediscovery(&self) {
        self.rediscover.store(true, Ordering::Release);
    }

    /// Points new connections at `addr`; if it differs from the known node, retires every
    /// pooled connection and, for a master, emits [`Event::FailoverDetected`].
    pub(crate) fn switch_to(&self, addr: Addr, why: &str) {
        let old = {
            let mut current = self.current.lock();
            if current.as_ref() == Some(&addr) {
                return;
            }
            current.replace(addr.clone())
        };
        let name = &self.config.master_name;
        match (&old, self.reads_from_replica()) {
            (Some(old), false) => {
                info!(
                    "redis master `{name}` moved from {old} to {addr} ({why}): retiring every pooled connection"
                );
                // Before anyone hears of the move: no connection to the old master is used
                // again, and its failures do not keep the breaker open for the new one.
                self.generation.retire_all();
                self.observed.breaker_changed(self.breaker.reset());
                self.lift_fence();
                self.observed.events.emit(Event::FailoverDetected {
                    master_name: name.clone(),
                    old: old.clone(),
                    new: addr,
                });
            }
            (Some(old), true) => {
                info!(
                    "reading from replica {addr} of master `{name}` instead of {old} ({why}): retiring every pooled connection"
                );
                self.generation.retire_all();
            }
            (None, false) => {
                info!("redis master `{name}` is at {addr}");
                self.lift_fence();
            }
            (None, true) => info!("reading from replica {addr} of master `{name}`"),
        }
    }

    /// A sentinel announced `+switch-master` from `old` to `new`. A master handle moves to
    /// `new`; a replica handle reports the failover, stops using its replica if that is the
    /// one promoted, and asks which replicas are healthy now.
    fn master_switched(&self, old: Addr, new: Addr) {
        if !self.reads_from_replica() {
            self.promoted(new, "+switch-master");
            return;
        }
        let name = &self.config.master_name;
        info!("redis master `{name}` moved from {old} to {new} (+switch-master)");
        let promoted = self.current_addr().as_ref() == Some(&new);
        self.observed.events.emit(Event::FailoverDetected {
            master_name: name.clone(),
            old,
            new,
        });
        if promoted {
            self.forget("it was promoted to master");
        }
        if let Err(e) = self.refresh() {
            debug!("sentinel rediscovery failed: {e}");
        }
    }

    /// Stops using the current node (a replica that was promoted or removed): new
    /// connections wait for a rediscovery, pooled ones are retired.
    fn forget(&self, why: &str) {
        let Some(old) = self.current.lock().take() else {
            return;
        };
        info!(
            "no longer reading from {old} ({why}): retiring every pooled connection of master `{}`'s replica handle",
            self.config.master_name
        );
        self.generation.retire_all();
    }

    /// Whether a failover holds the handle's calls now.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// What one sentinel said about the failover channels' subject.
    fn announced(&self, announce: Announce) {
        let mine = |name: &str| name == self.config.master_name;
        match announce {
            Announce::Switched { name, old, new } if mine(&name) => self.master_switched(old, new),
            // A replica handle never writes: only the switch matters to it.
            _ if self.reads_from_replica() => {}
            Announce::Started {
                name,
                master,
                replica,
            } if mine(&name) => self.failover_started(master, replica),
            Announce::Promoted { name, replica, .. } if mine(&name) => {
                self.promoted(replica, "+promoted-slave");
            }
            Announce::Aborted { name, master } if mine(&name) => self.failover_aborted(&master),
            _ => {}
        }
    }

    /// The failover of `master` began: nothing more goes to it until the new master is
    /// known.
    fn failover_started(&self, master: Addr, replica: Addr) {
        let current = self.current_addr();
        if current.as_ref().is_some_and(|c| *c != master) {
            debug!("a failover of {master} began, but the handle uses {current:?}: no fence");
            return;
        }
        let now = Instant::now();
        let timeout = Duration::from_millis(self.failover_timeout_ms.load(Ordering::Relaxed));
        {
            let mut fence = self.fence.lock();
            if fence.is_some() {
                return;
            }
            *fence = Some(Fence {
                old: master.clone(),
                candidate: replica.clone(),
                since: now,
                until: time::add(now, timeout.saturating_add(FENCE_MARGIN)),
            });
            self.fenced.store(true, Ordering::Release);
        }
        let name = &self.config.master_name;
        info!(
            "redis master `{name}` at {master} is failing over to {replica}: calls wait for the new master"
        );
        self.observed.events.emit(Event::FailoverStarted {
            master_name: name.clone(),
            old: master,
            candidate: replica,
        });
    }

    /// `replica` answers as the master: check it (a connection, `ROLE`), then move there.
    fn promoted(&self, replica: Addr, why: &str) {
        if self.current_addr().as_ref() == Some(&replica) {
            self.lift_fence();
            return;
        }
        let deadline = time::after(self.timeouts.connect);
        let checked = self
            .data
            .open_by(&replica, deadline)
            .and_then(|mut con| self.check_role_as(&mut con, deadline, SentinelRole::Master));
        if let Err(e) = checked {
            // The sentinels say so; every new connection checks the role again anyway.
            debug!("the promoted replica {replica} did not answer as a master yet: {e}");
        }
        self.switch_to(replica, why);
    }

    /// The failover of `master` was given up: calls go to it again.
    fn failover_aborted(&self, master: &Addr) {
        let lifted = {
            let mut fence = self.fence.lock();
            match fence.as_ref() {
                Some(f) if f.old == *master => {
                    let f = fence.take();
                    self.fenced.store(false, Ordering::Release);
                    self.unfenced.notify_all();
                    f
                }
                _ => None,
            }
        };
        if let Some(f) = lifted {
            let name = &self.config.master_name;
            warn!(
                "the failover of redis master `{name}` at {master} was aborted after {:?}: calls go to it again",
                f.since.elapsed()
            );
            self.observed.events.emit(Event::FailoverAborted {
                master_name: name.clone(),
                master: master.clone(),
            });
        }
    }

    /// Lets the waiting calls go (the master is known again).
    fn lift_fence(&self) {
        if !self.fenced.load(Ordering::Acquire) {
            return;
        }
        let mut fence = self.fence.lock();
        if let Some(f) = fence.take() {
            debug!(
                "failover of {} to {}: calls held for {:?}",
                f.old,
                f.candidate,
                f.since.elapsed()
            );
        }
        self.fenced.store(false, Ordering::Release);
        self.unfenced.notify_all();
    }

    /// A fence past its time: nobody reported the failover's end (the leading sentinel was
    /// lost, say). Lifted, and the sentinels asked again.
    fn expire_fence(&self) {
        let expired = {
            let mut fence = self.fence.lock();
            match fence.as_ref() {
                Some(f) if Instant::now() >= f.until => {
                    let f = fence.take();
                    self.fenced.store(false, Ordering::Release);
                    self.unfenced.notify_all();
                    f
                }
                _ => None,
            }
        };
        if let Some(f) = expired {
            warn!(
                "redis master `{}`: no news of the failover of {} for {:?}; asking the sentinels again",
                self.config.master_name,
                f.old,
                f.since.elapsed()
            );
            self.request_rediscovery();
        }
    }

    /// While the fence is up, asks the sentinel at `host:port` where the master is: the
    /// leading sentinel names the promoted replica as soon as it saw it promoted, the others
    /// once they learnt the switch.
    fn poll_during_failover(&self, host: &str, port: u16) {
        let Some(old) = self.fence.lock().as_ref().map(|f| f.old.clone()) else {
            return;
        };
        let deadline = time::after(self.timeouts.connect.min(Duration::from_secs(1)));
        match self.ask_master(deadline, host, port) {
            Ok(Some(addr)) if addr != old => self.promoted(addr, "a sentinel names it"),
            Ok(_) => {}
            Err(e) => debug!("sentinel {host}:{port} during a failover: {e}"),
        }
        self.expire_fence();
    }

    /// Records a sentinel's `failover-timeout` (how long a fence may last unreported).
    fn learn_failover_timeout(&self, t: Duration) {
        self.failover_timeout_ms.store(millis(t), Ordering::Relaxed);
    }

    /// Waits, at most until `deadline`, while a failover holds calls (see the module docs).
    /// Fails with a timeout (`NotSent`) when the new master is still unknown by then.
    pub(crate) fn wait_for_failover(&self, deadline: Instant) -> Result<()> {
        if !self.fenced.load(Ordering::Acquire) {
            return Ok(());
        }
        let start = Instant::now();
        let mut fence = self.fence.lock();
        loop {
            let Some(f) = fence.as_ref() else {
                return Ok(());
            };
            let now = Instant::now();
            if now >= f.until {
                drop(fence);
                self.expire_fence();
                return Ok(());
            }
            if now >= deadline {
                return Err(Error::io(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "redis master `{}` is failing over from {} to {}: no new master within the call's deadline (waited {:?})",
                        self.config.master_name,
                        f.old,
                        f.candidate,
                        start.elapsed()
                    ),
                    Delivery::NotSent,
                ));
            }
            let wake = f.until.min(deadline);
            self.unfenced.wait_until(&mut fence, wake);
        }
    }

    /// Whether a command may go out on a connection of generation `stamp`: not while a
    /// failover is underway, nor on a connection to a master the handle left. Refused
    /// commands were not sent (`NotSent`, class `ReadOnly`): the handle's retry sends them
    /// again, to the new master.
    pub(crate) fn check_send(&self, stamp: u64) -> Result<()> {
        if self.reads_from_replica() {
            return Ok(());
        }
        let why = if self.fenced.load(Ordering::Acquire) {
            "is failing over"
        } else if self.generation.is_retired(stamp) {
            "moved since this connection was opened"
        } else {
            return Ok(());
        };
        Err(Error::Redis {
            class: ErrorClass::ReadOnly,
            delivery: Delivery::NotSent,
            source: redis::RedisError::from(std::io::Error::other(format!(
                "redis master `{}` {why}: not sent to the old master",
                self.config.master_name
            ))),
        })
    }

    /// Asks each sentinel in turn, with the connect and response timeouts.
    fn discover_master(&self, deadline: Instant) -> Result<Addr> {
        let mut last = None;
        for (host, port) in &self.config.addrs {
            if time::left(deadline).is_zero() {
                break;
            }
            match self.ask_master(deadline, host, *port) {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    debug!(
                        "sentinel {host}:{port} does not know master `{}`",
                        self.config.master_name
                    );
                }
                Err(e) => {
                    debug!("sentinel {host}:{port}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.not_found()))
    }

    fn ask_master(&self, deadline: Instant, host: &str, port: u16) -> Result<Option<Addr>> {
        let mut con = self.sentinel_connection(deadline, host, port)?;
        let packed = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.config.master_name)
            .get_packed_command();
        let reply = con.exec(&packed, Some(self.call_by(deadline)))?;
        let addr: Option<(String, u16)> = crate::script::convert(reply)?;
        Ok(addr.map(|(host, port)| Addr::Tcp { host, port }))
    }

    /// A sentinel call ends by `deadline`, or the response timeout when that is later (the
    /// connect deadline bounds the whole discovery, not each answer alone).
    fn call_by(&self, deadline: Instant) -> Instant {
        deadline.max(time::after(
            self.timeouts.response.min(Duration::from_secs(1)),
        ))
    }

    /// The replicas the first sentinel with a healthy one lists (else the first answer).
    fn discover_replicas(&self, deadline: Instant) -> Result<Vec<Replica>> {
        let mut last = None;
        let mut first_answer = None;
        for (host, port) in &self.config.addrs {
            if time::left(deadline).is_zero() {
                break;
            }
            match self.ask_replicas(deadline, host, *port) {
                Ok(replicas) if replicas.iter().any(Replica::healthy) => return Ok(replicas),
                Ok(replicas) => {
                    debug!(
                        "sentinel {host}:{port} knows no healthy replica of `{}`",
                        self.config.master_name
                    );
                    first_answer.get_or_insert(replicas);
                }
                Err(e) => {
                    debug!("sentinel {host}:{port}: {e}");
                    last = Some(e);
                }
            }
        }
        match (first_answer, last) {
            (Some(replicas), _) => Ok(replicas),
            (None, Some(e)) => Err(e),
            (None, None) => Err(self.not_found()),
        }
    }

    fn ask_replicas(&self, deadline: Instant, host: &str, port: u16) -> Result<Vec<Replica>> {
        let mut con = self.sentinel_connection(deadline, host, port)?;
        let by = self.call_by(deadline);
        let mut ask = |sub: &str| -> Result<Vec<HashMap<String, String>>> {
            let packed = redis::cmd("SENTINEL")
                .arg(sub)
                .arg(&self.config.master_name)
                .get_packed_command();
            crate::script::convert(con.exec(&packed, Some(by))?)
        };
        // `REPLICAS` since Redis 5; `SLAVES` before.
        let entries = match ask("REPLICAS") {
            Err(e) if e.delivery() == Delivery::Answered => ask("SLAVES"),
            other => other,
        }?;
        Ok(entries.iter().filter_map(Replica::from_entry).collect())
    }

    /// A connection to one sentinel, with the sentinels' credentials, and TLS when
    /// [`SentinelConfig::uses_tls`] says so (with the data nodes' CA, client identity and
    /// `insecure` flag), opened by `deadline`.
    fn sentinel_connection(&self, deadline: Instant, host: &str, port: u16) -> Result<Connection> {
        let addr = Addr::Tcp {
            host: host.to_owned(),
            port,
        };
        self.sentinels.open_by(&addr, deadline)
    }

    fn not_found(&self) -> Error {
        let name = &self.config.master_name;
        let what = match self.config.role {
            SentinelRole::Replica => format!("a healthy replica of master `{name}`"),
            _ => format!("the address of master `{name}`"),
        };
        Error::io(
            std::io::ErrorKind::NotFound,
            format!("no sentinel answered with {what}"),
            Delivery::NotSent,
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The channels every listener subscribes to, on every sentinel: the start of a failover
/// (only the sentinel leading it publishes these), the promotion, the switch (every sentinel
/// publishes it) and the aborts.
const CHANNELS: [&str; 4] = [
    "+switch-master",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+promoted-slave",
];
/// `-failover-abort-not-elected`, `-failover-abort-no-good-slave`,
/// `-failover-abort-slave-timeout`.
const ABORTS: &str = "-failover-abort-*";

/// What one sentinel announced about a master.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Announce {
    /// A failover began: `replica` was chosen to replace `master`.
    Started {
        name: String,
        master: Addr,
        replica: Addr,
    },
    /// `replica` answers as a master now: the failover can no longer be aborted.
    Promoted {
        name: String,
        master: Addr,
        replica: Addr,
    },
    /// The failover of `master` was given up before any promotion.
    Aborted { name: String, master: Addr },
    /// The sentinels' configuration names `new` as the master.
    Switched { name: String, old: Addr, new: Addr },
}

fn addr_of(host: &str, port: &str) -> Option<Addr> {
    Some(Addr::Tcp {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// Parses one message of the failover channels (`None` for anything else):
///
/// - `+switch-master`: `<name> <old-ip> <old-port> <new-ip> <new-port>`;
/// - `+selected-slave`, `+failover-state-send-slaveof-noone`, `+promoted-slave`:
///   `slave <ip:port> <ip> <port> @ <name> <master-ip> <master-port>`;
/// - `-failover-abort-*`: `master <name> <ip> <port>`.
fn parse_announce(channel: &str, payload: &str) -> Option<Announce> {
    let w: Vec<&str> = payload.split_whitespace().collect();
    match channel {
        "+switch-master" => match w[..] {
            [name, oh, op, nh, np] => Some(Announce::Switched {
                name: name.to_owned(),
                old: addr_of(oh, op)?,
                new: addr_of(nh, np)?,
            }),
            _ => None,
        },
        "+selected-slave" | "+failover-state-send-slaveof-noone" | "+promoted-slave" => match w[..]
        {
            ["slave", _, rh, rp, "@", name, mh, mp] => {
                let (name, master, replica) = (name.to_owned(), addr_of(mh, mp)?, addr_of(rh, rp)?);
                Some(if channel == "+promoted-slave" {
                    Announce::Promoted {
                        name,
                        master,
                        replica,
                    }
                } else {
                    Announce::Started {
                        name,
                        master,
                        replica,
                    }
                })
            }
            _ => None,
        },
        c if c.starts_with("-failover-abort-") => match w[..] {
            ["master", name, h, p, ..] => Some(Announce::Aborted {
                name: name.to_owned(),
                master: addr_of(h, p)?,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// The listener threads: one per sentinel (each `redkit-sentinel`), subscribed to the
/// failover channels (see [`SentinelState`]).
#[derive(Debug)]
pub(crate) struct SentinelListener {
    threads: Vec<Background>,
}

impl SentinelListener {
    pub(crate) fn spawn(state: Arc<SentinelState>) -> Result<SentinelListener> {
        let mut threads = Vec::with_capacity(state.config.addrs.len());
        for (host, port) in state.config.addrs.clone() {
            let state = state.clone();
            let thread = Background::spawn("redkit-sentinel", move |stopped| {
                listen(&state, &stopped, &host, port);
            })
            .map_err(|e| Error::from_redis(redis::RedisError::from(e), Delivery::NotSent))?;
            threads.push(thread);
        }
        Ok(SentinelListener { threads })
    }

    /// Stops the threads and waits for them (at most 100 ms in all): each notices within
    /// [`LISTEN_SLICE`], or when a call to its sentinel in flight ends (within the connect or
    /// response timeout).
    pub(crate) fn stop(&mut self) {
        let deadline = time::after(Duration::from_millis(100));
        // Ask every thread first, then wait: they stop side by side.
        for t in &mut self.threads {
            t.ask_to_stop();
        }
        for mut t in self.threads.drain(..) {
            if let Err(panic) = t.stop(time::left(deadline)) {
                warn!("a redkit-sentinel thread had panicked: {panic}");
            }
        }
    }
}

impl Drop for SentinelListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the owner asked the thread to stop (the stop channel disconnected).
fn stopping(stopped: &Receiver<()>) -> bool {
    matches!(stopped.try_recv(), Err(TryRecvError::Disconnected))
}

/// Follows one sentinel until the thread must stop, reconnecting after a pause when it fails.
fn listen(state: &SentinelState, stopped: &Receiver<()>, host: &str, port: u16) {
    loop {
        if stopping(stopped) {
            return;
        }
        match follow(state, stopped, host, port) {
            Ok(()) => return,
            Err(e) => debug!("sentinel listener on {host}:{port}: {e}"),
        }
        match stopped.recv_timeout(RETRY_PAUSE) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The `failover-timeout` one sentinel has for the master (`SENTINEL MASTER`), when it says.
fn failover_timeout(state: &SentinelState, con: &mut Connection, by: Instant) -> Option<Duration> {
    let packed = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(&state.config.master_name)
        .get_packed_command();
    let fields: HashMap<String, String> =
        crate::script::convert(con.exec(&packed, Some(by)).ok()?).ok()?;
    let ms: u64 = fields.get("failover-timeout")?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Follows one sentinel until it fails (`Err`) or the thread must stop (`Ok`).
fn follow(state: &SentinelState, stopped: &Receiver<()>, host: &str, port: u16) -> Result<()> {
    let deadline = time::after(state.timeouts.connect);
    let mut con = state.sentinel_connection(deadline, host, port)?;
    let timeout = failover_timeout(state, &mut con, state.call_by(deadline));
    if let Some(t) = timeout {
        state.learn_failover_timeout(t);
    }
    let mut subscribe = redis::cmd("SUBSCRIBE");
    for c in CHANNELS {
        subscribe.arg(c);
    }
    let mut packed = subscribe.get_packed_command();
    packed.extend_from_slice(&redis::cmd("PSUBSCRIBE").arg(ABORTS).get_packed_command());
    con.send(&packed, Some(deadline), true)?;
    // A switch may have happened while nobody listened.
    if let Err(e) = state.refresh() {
        debug!("sentinel rediscovery failed: {e}");
    }
    debug!("sentinel listener subscribed on {host}:{port}");
    // The subscription is confirmed by its first frame; a sentinel that never confirms is
    // given up after the response timeout.
    let mut confirmed = false;
    let subscribed_by = time::after(state.timeouts.response);
    let mut polled = Instant::now();
    loop {
        if stopping(stopped) {
            return Ok(());
        }
        if state.rediscover.swap(false, Ordering::AcqRel) {
            if let Err(e) = state.refresh() {
                debug!("sentinel rediscovery failed: {e}");
                state.request_rediscovery();
            }
        }
        // While a failover holds calls, ask this sentinel where the master is now and then
        // (a promotion announced by a sentinel this thread does not follow, or missed).
        if state.is_fenced() && polled.elapsed() >= FENCE_POLL {
            polled = Instant::now();
            state.poll_during_failover(host, port);
        }
        if !confirmed && Instant::now() >= subscribed_by {
            return Err(Error::io(
                std::io::ErrorKind::TimedOut,
                format!("sentinel {host}:{port} did not confirm the subscription"),
                Delivery::Unknown,
            ));
        }
        let slice = if state.is_fenced() {
            FENCE_POLL
        } else {
            LISTEN_SLICE
        };
        let Some(frame) = con.read_frame(time::after(slice))? else {
            continue;
        };
        let items = match frame {
            Value::Array(items) | Value::Push { data: items, .. } => items,
            Value::ServerError(e) => return Err(Error::from_redis(e.into(), Delivery::Answered)),
            _ => continue,
        };
        let words: Vec<Option<String>> = items.iter().map(text).collect();
        let (channel, payload) = match words.first().cloned().flatten().as_deref() {
            Some("subscribe" | "psubscribe") => {
                confirmed = true;
                continue;
            }
            Some("message") => (words.get(1), words.get(2)),
            Some("pmessage") => (words.get(2), words.get(3)),
            _ => continue,
        };
        confirmed = true;
        let (Some(Some(channel)), Some(Some(payload))) = (channel, payload) else {
            continue;
        };
        if let Some(announce) = parse_announce(channel, payload) {
            debug!("sentinel {host}:{port}: {channel} {payload}");
            state.announced(announce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Addr {
        Addr::Tcp {
            host: "10.0.0.1".into(),
            port,
        }
    }

    /// A replica up with its link `ok` (`healthy`), up with its link down, or down.
    fn replica(port: u16, state: &str) -> Replica {
        Replica {
            addr: addr(port),
            up: state != "down",
            link_ok: state == "healthy",
        }
    }

    fn entry(port: u16, flags: &str, link: &str) -> HashMap<String, String> {
        [
            ("ip", "10.0.0.1".to_owned()),
            ("port", port.to_string()),
            ("flags", flags.to_owned()),
            ("master-link-status", link.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn failover_announcements_parse() {
        let tcp = |port| Addr::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(
            parse_announce(
                "+selected-slave",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            Some(Announce::Started {
                name: "mymaster".into(),
                master: tcp(6379),
                replica: tcp(6380)
            })
        );
        assert!(matches!(
            parse_announce(
                "+failover-state-send-slaveof-noone",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            Some(Announce::Started { .. })
        ));
        assert!(matches!(
            parse_announce(
                "+promoted-slave",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            Some(Announce::Promoted { replica, .. }) if replica == tcp(6380)
        ));
        assert_eq!(
            parse_announce(
                "-failover-abort-slave-timeout",
                "master mymaster 127.0.0.1 6379"
            ),
            Some(Announce::Aborted {
                name: "mymaster".into(),
                master: tcp(6379)
            })
        );
        assert_eq!(
            parse_announce("+switch-master", "mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            Some(Announce::Switched {
                name: "mymaster".into(),
                old: tcp(6379),
                new: tcp(6380)
            })
        );
        // Anything else, or garbage, is no announcement.
        assert_eq!(
            parse_announce("+sdown", "master mymaster 127.0.0.1 6379"),
            None
        );
        assert_eq!(
            parse_announce("+switch-master", "mymaster 127.0.0.1 x 1 2"),
            None
        );
        assert_eq!(parse_announce("+promoted-slave", ""), None);
    }

    #[test]
    fn replicas_flagged_down_or_with_a_broken_link_are_unhealthy() {
        let seen =
            |flags, link| Replica::from_entry(&entry(1, flags, link)).map(|r| (r.up, r.healthy()));
        assert_eq!(seen("slave", "ok"), Some((true, true)));
        assert_eq!(seen("s_down,slave", "ok"), Some((false, false)));
        assert_eq!(seen("s_down,o_down,slave", "ok"), Some((false, false)));
        assert_eq!(seen("slave,disconnected", "ok"), Some((false, false)));
        assert_eq!(seen("slave,promoted", "ok"), Some((false, false)));
        assert_eq!(seen("slave", "err"), Some((true, false)));
        let mut no_port = entry(1, "slave", "ok");
        no_port.remove("port");
        assert_eq!(Replica::from_entry(&no_port), None);
    }

    #[test]
    fn a_replica_handle_keeps_its_replica_while_it_is_healthy() {
        let all = [
            replica(1, "healthy"),
            replica(2, "healthy"),
            replica(3, "down"),
            replica(4, "link down"),
        ];
        assert_eq!(choose_replica(&all, Some(&addr(2)), None, 0), Choice::Keep);
        // Round robin over the healthy ones.
        assert_eq!(choose_replica(&all, None, None, 0), Choice::Switch(addr(1)));
        assert_eq!(choose_replica(&all, None, None, 1), Choice::Switch(addr(2)));
        assert_eq!(choose_replica(&all, None, None, 2), Choice::Switch(addr(1)));
        // The current one went down, its link broke, or it failed: a healthy one.
        for current in [3, 4] {
            assert_eq!(
                choose_replica(&all, Some(&addr(current)), None, 1),
                Choice::Switch(addr(2))
            );
        }
        assert_eq!(
            choose_replica(&all, Some(&addr(2)), Some(&addr(2)), 1),
            Choice::Switch(addr(1))
        );
    }

    #[test]
    fn without_a_healthy_replica_one_merely_up_is_tried() {
        // The sentinels' link status lags by up to 10 s: a replica that is up is tried (its
        // connection checks the link itself), one that failed only when nothing else is up.
        let lagging = [replica(1, "link down"), replica(2, "down")];
        assert_eq!(
            choose_replica(&lagging, None, None, 7),
            Choice::Switch(addr(1))
        );
        let one = [replica(1, "healthy"), replica(2, "link down")];
        assert_eq!(
            choose_replica(&one, Some(&addr(1)), Some(&addr(1)), 0),
            Choice::Switch(addr(2))
        );
        let only = [replica(1, "healthy"), replica(2, "down")];
        assert_eq!(
            choose_replica(&only, Some(&addr(1)), Some(&addr(1)), 0),
            Choice::Keep
        );
        // Nothing up: keep a current one that is still listed, forget a promoted one.
        let none = [replica(1, "down")];
        assert_eq!(
            choose_replica(&none, Some(&addr(1)), None, 0),
            Choice::NoneUp
        );
        assert_eq!(choose_replica(&none, None, None, 0), Choice::NoneUp);
        assert_eq!(
            choose_replica(&none, Some(&addr(9)), None, 0),
            Choice::Forget
        );
        // Promoted while another replica is healthy: move there.
        assert_eq!(
            choose_replica(&one[..1], Some(&addr(9)), None, 5),
            Choice::Switch(addr(1))
        );
    }
}
