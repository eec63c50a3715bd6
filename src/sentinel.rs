//! Redis Sentinel: master (or replica) discovery with timeouts, and a listener thread that
//! follows `+switch-master`.
//!
//! The pool's connection manager asks [`SentinelState::target`] where to connect; the first
//! call (and any call after [`SentinelState::refresh`] found nothing) asks the sentinels in
//! turn. When the node moves (a `+switch-master` message, a connection that reaches a node
//! of the wrong role or cannot be opened, a `READONLY` reply on a master handle),
//! [`SentinelState::switch_to`] points new connections at the new node, retires every pooled
//! connection at once (the pool's generation counter) and, for a master, emits
//! [`Event::FailoverDetected`].
//!
//! With [`SentinelRole::Replica`] the handle asks `SENTINEL REPLICAS`, keeps the replica it
//! picked while the sentinels call it healthy, and moves when it is lost or promoted.
//!
//! The sentinels are reached with their own credentials and, when
//! [`SentinelConfig::uses_tls`] says so, over TLS with the data nodes' TLS settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{debug, info, warn};
use parking_lot::Mutex;
use redis::{FromRedisValue, Value};

use crate::config::{Addr, Config, SentinelConfig, SentinelRole};
use crate::conn::{Connection, Connector, Generation};
use crate::error::{Delivery, Error, Result};
use crate::events::Event;
use crate::observe::Observed;
use crate::util::time;

/// How long the listener waits on its subscription before it checks for a stop request.
const LISTEN_SLICE: Duration = Duration::from_millis(250);
/// Pause between two rounds over every sentinel when none answers.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

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
        let packed = redis::cmd("ROLE").get_packed_command();
        let reply = con
            .exec(&packed, Some(deadline))
            .map_err(|e| e.with_delivery(Delivery::NotSent))?;
        let role: Vec<Value> = Vec::from_redis_value(reply)
            .map_err(|e| Error::from_redis(e.into(), Delivery::NotSent))?;
        let is = |v: Option<&Value>, want: &[u8]| matches!(v, Some(Value::BulkString(r)) if r.as_slice() == want);
        let problem = match self.config.role {
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
                self.generation.retire_all();
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
            (None, false) => info!("redis master `{name}` is at {addr}"),
            (None, true) => info!("reading from replica {addr} of master `{name}`"),
        }
    }

    /// A sentinel announced `+switch-master` from `old` to `new`. A master handle moves to
    /// `new`; a replica handle reports the failover, stops using its replica if that is the
    /// one promoted, and asks which replicas are healthy now.
    fn master_switched(&self, old: Addr, new: Addr) {
        if !self.reads_from_replica() {
            self.switch_to(new, "+switch-master");
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

/// The `redkit-sentinel` thread: subscribes to `+switch-master` on one sentinel at a time.
#[derive(Debug)]
pub(crate) struct SentinelListener {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SentinelListener {
    pub(crate) fn spawn(state: Arc<SentinelState>) -> Result<SentinelListener> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name("redkit-sentinel".into())
            .spawn(move || listen(&state, &stopped))
            .map_err(|e| Error::from_redis(redis::RedisError::from(e), Delivery::NotSent))?;
        Ok(SentinelListener {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (unless called on that very thread): it notices
    /// within [`LISTEN_SLICE`], or when a call to a sentinel in flight ends (within the
    /// connect or response timeout).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        let bound = Duration::from_millis(100);
        if let Some(Err(panic)) = self
            .thread
            .take()
            .map(|t| crate::util::threads::join_within(t, bound))
        {
            warn!("the redkit-sentinel thread had panicked: {panic}");
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

fn listen(state: &SentinelState, stopped: &Receiver<()>) {
    let sentinels = state.config.addrs.clone();
    let mut next = 0;
    loop {
        if stopping(stopped) {
            return;
        }
        let (host, port) = &sentinels[next % sentinels.len()];
        next += 1;
        match follow(state, stopped, host, *port) {
            Ok(()) => return,
            Err(e) => debug!("sentinel listener on {host}:{port}: {e}"),
        }
        if next % sentinels.len() == 0 {
            match stopped.recv_timeout(RETRY_PAUSE) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
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

/// Follows one sentinel until it fails (`Err`) or the thread must stop (`Ok`).
fn follow(state: &SentinelState, stopped: &Receiver<()>, host: &str, port: u16) -> Result<()> {
    let deadline = time::after(state.timeouts.connect);
    let mut con = state.sentinel_connection(deadline, host, port)?;
    let subscribe = redis::cmd("SUBSCRIBE")
        .arg("+switch-master")
        .get_packed_command();
    con.send(&subscribe, Some(deadline), true)?;
    // A switch may have happened while nobody listened.
    if let Err(e) = state.refresh() {
        debug!("sentinel rediscovery failed: {e}");
    }
    debug!("sentinel listener subscribed on {host}:{port}");
    // The subscription is confirmed by its first frame; a sentinel that never confirms is
    // given up after the response timeout.
    let mut confirmed = false;
    let subscribed_by = time::after(state.timeouts.response);
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
        if !confirmed && Instant::now() >= subscribed_by {
            return Err(Error::io(
                std::io::ErrorKind::TimedOut,
                format!("sentinel {host}:{port} did not confirm the subscription"),
                Delivery::Unknown,
            ));
        }
        let Some(frame) = con.read_frame(time::after(LISTEN_SLICE))? else {
            continue;
        };
        let items = match frame {
            Value::Array(items) | Value::Push { data: items, .. } => items,
            Value::ServerError(e) => return Err(Error::from_redis(e.into(), Delivery::Answered)),
            _ => continue,
        };
        let words: Vec<Option<String>> = items.iter().map(text).collect();
        match words.first().cloned().flatten().as_deref() {
            Some("subscribe") => confirmed = true,
            Some("message") => {
                confirmed = true;
                let Some(Some(payload)) = words.get(2) else {
                    continue;
                };
                // `<name> <old-ip> <old-port> <new-ip> <new-port>`
                let parts: Vec<&str> = payload.split_whitespace().collect();
                if let [name, old_host, old_port, new_host, new_port] = parts[..] {
                    if name == state.config.master_name {
                        if let (Ok(old_port), Ok(new_port)) = (old_port.parse(), new_port.parse()) {
                            let old = Addr::Tcp {
                                host: old_host.to_owned(),
                                port: old_port,
                            };
                            let new = Addr::Tcp {
                                host: new_host.to_owned(),
                                port: new_port,
                            };
                            state.master_switched(old, new);
                        }
                    }
                }
            }
            _ => {}
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
