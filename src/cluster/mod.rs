//! Redis Cluster: the slot map shared by a handle's connections, the pooled cluster
//! connection, and what both the pooled and the multiplexed cluster connections share:
//! routing ([`engine`]), per-node breakers and per-node health checks ([`health`]).
//!
//! Each pooled [`ClusterLink`] holds one connection per node it has talked to, each opened
//! with the handle's connect, response and write timeouts, TLS settings (including a custom
//! CA and client certificate) and credentials. What goes where (see [`engine`]): a command
//! to the master owning its first key's slot (a read-only one to a fit replica, with
//! [`cluster_read_from_replicas`](crate::ConfigBuilder::cluster_read_from_replicas)); a
//! multi-key command whose keys span slots (`MGET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`,
//! `MSET`) split per slot, also inside pipelines, and put back together in order; `DBSIZE`
//! (summed), `KEYS` (united), `INFO` (each master's, after a `# Node host:port` line),
//! `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD`/`FLUSH` and `FUNCTION LOAD`/`DELETE`/`FLUSH`/`RESTORE`
//! (the first error, else the first reply) to every master. `MOVED` updates the shared map
//! (and has it refreshed) and resends, `ASK` resends after `ASKING`, at most
//! [`cluster_max_redirects`](crate::ConfigBuilder::cluster_max_redirects) times. Pipelines
//! are split by node, sent to every node before any reply is read. `MULTI ... EXEC` runs on
//! the node of its first key.
//!
//! Every node has a circuit breaker of its own (a dead master fails fast without failing the
//! others); its changes are [`Event::ClusterNodeBreakerChanged`]. The heartbeat checks every
//! node at each beat (`ROLE`, see [`health`]): a node that does not answer within the
//! heartbeat timeout is [`Event::ClusterNodeDown`] and its breaker opens; one that answers
//! again is [`Event::ClusterNodeUp`] and its breaker closes. A change of the slot map is
//! reported once, as one [`Event::ClusterTopologyChanged`], when the map has stopped
//! changing (no further change for [`SETTLE`], checked at the next heartbeat or call).

pub(crate) mod engine;
pub(crate) mod health;
pub(crate) mod route;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::{Mutex, RwLock};
use redis::Value;

use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::{Addr, ClusterOptions, Config};
use crate::conn::{Connection, Connector};
use crate::error::{Delivery, Error, Result};
use crate::events::Event;
use crate::observe::Observed;
use crate::util::time;
use engine::{Batch, Transport};
use route::{Redirect, Route, SLOTS};

/// The least time between two refreshes of the slot map.
const REFRESH_GAP: Duration = Duration::from_millis(100);
/// How long the slot map must stay the same before its change is reported.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);
const NO_OWNER: u16 = u16::MAX;

/// Which master owns which slot.
#[derive(Debug)]
pub(crate) struct SlotMap {
    owner: Vec<u16>,
    masters: Vec<Addr>,
    replicas: Vec<Vec<Addr>>,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NO_OWNER; SLOTS],
            masters: Vec::new(),
            replicas: Vec::new(),
        }
    }

    fn from_ranges(ranges: Vec<route::SlotRange>) -> SlotMap {
        let mut map = SlotMap::empty();
        for (start, end, master, replicas) in ranges {
            let i = match map.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    map.masters.push(master);
                    map.replicas.push(replicas);
                    map.masters.len() - 1
                }
            };
            for s in start..=end.min(SLOTS as u16 - 1) {
                map.owner[usize::from(s)] = i as u16;
            }
        }
        map
    }

    fn owner(&self, slot: u16) -> Option<&Addr> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i))
    }

    /// How many slots have a different owner in `other`.
    fn slots_changed(&self, other: &SlotMap) -> usize {
        // The common case, at every heartbeat: nothing changed.
        if self.masters == other.masters && self.owner == other.owner {
            return 0;
        }
        (0..SLOTS as u16)
            .filter(|&s| self.owner(s) != other.owner(s))
            .count()
    }
}

/// What the health checks know of one node.
#[derive(Debug, Clone, Default)]
struct NodeHealth {
    /// Since when it has not answered (`None`: it answers).
    down_since: Option<Instant>,
    /// A replica fit to serve reads (see [`health`]).
    fit: bool,
}

/// A slot map change not reported yet: the map before it, and when it last changed.
#[derive(Debug)]
struct Change {
    before: Arc<SlotMap>,
    last: Instant,
}

/// Run when the health checks find a node gone (the multiplexed connections close theirs).
pub(crate) type NodeHook = Box<dyn Fn(&Addr) + Send + Sync>;

/// The slot map and the node connector, shared by every connection of a handle.
pub(crate) struct Topology {
    config: Config,
    options: ClusterOptions,
    /// Whether the heartbeat checks the nodes (replica reads need it).
    checked: bool,
    connector: Connector,
    seeds: Vec<Addr>,
    map: RwLock<Arc<SlotMap>>,
    /// When the map was last refreshed; held while refreshing.
    refreshed: Mutex<Option<Instant>>,
    /// A redirection or a failed node says the map is out of date.
    stale: AtomicBool,
    /// Bumped whenever a node connection fails: node connections last used before are
    /// `PING`ed before their next command (a restarted node leaves every socket dead).
    drop_epoch: AtomicU64,
    /// One circuit breaker per node: a dead master fails fast without failing the others.
    breakers: RwLock<HashMap<Addr, Arc<Breaker>>>,
    /// The map as the last refresh found it.
    confirmed: Mutex<Arc<SlotMap>>,
    /// A change of the map not reported yet.
    change: Mutex<Option<Change>>,
    change_pending: AtomicBool,
    /// What the health checks found, per node.
    health: RwLock<HashMap<Addr, NodeHealth>>,
    /// Turn among the fit replicas of a master.
    next_reader: AtomicUsize,
    down_hooks: Mutex<Vec<NodeHook>>,
    observed: Arc<Observed>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("seeds", &self.seeds)
            .field("masters", &self.map.read().masters)
            .finish_non_exhaustive()
    }
}

impl Topology {
    pub(crate) fn new(
        config: &Config,
        connector: Connector,
        observed: Arc<Observed>,
    ) -> Option<Topology> {
        let cluster = config.cluster.as_ref()?;
        Some(Topology {
            config: config.clone(),
            options: cluster.options,
            checked: config.heartbeat.interval.is_some(),
            connector,
            seeds: cluster
                .seeds
                .iter()
                .map(|(host, port)| Addr::Tcp {
                    host: host.clone(),
                    port: *port,
                })
                .collect(),
            map: RwLock::new(Arc::new(SlotMap::empty())),
            refreshed: Mutex::new(None),
            stale: AtomicBool::new(true),
            drop_epoch: AtomicU64::new(0),
            breakers: RwLock::new(HashMap::new()),
            confirmed: Mutex::new(Arc::new(SlotMap::empty())),
            change: Mutex::new(None),
            change_pending: AtomicBool::new(false),
            health: RwLock::new(HashMap::new()),
            next_reader: AtomicUsize::new(crate::util::ids::random_u64() as usize),
            down_hooks: Mutex::new(Vec::new()),
            observed,
        })
    }

    /// The current map.
    pub(crate) fn map(&self) -> Arc<SlotMap> {
        self.map.read().clone()
    }

    /// Every master, as the map has them.
    pub(crate) fn masters(&self) -> Vec<Addr> {
        self.map.read().masters.clone()
    }

    /// Every master with one slot it owns (to find its successor after a failover).
    pub(crate) fn masters_with_a_slot(&self) -> Vec<(Addr, u16)> {
        self.refresh_if_stale();
        let map = self.map();
        map.masters
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let slot = map.owner.iter().position(|&o| usize::from(o) == i)?;
                Some((m.clone(), slot as u16))
            })
            .collect()
    }

    /// The master owning `slot`, refreshing the map first when it is stale or has no owner.
    pub(crate) fn owner(&self, slot: u16) -> Result<Addr> {
        self.refresh_if_stale();
        if let Some(a) = self.map.read().owner(slot) {
            return Ok(a.clone());
        }
        self.mark_stale();
        self.refresh_if_stale();
        self.map.read().owner(slot).cloned().ok_or_else(|| {
            cluster_error(format!(
                "no master owns slot {slot} (the cluster is down or resharding)"
            ))
        })
    }

    /// Whether reads may go to replicas (asked for, and the heartbeat checks them).
    pub(crate) fn reads_from_replicas(&self) -> bool {
        self.options.read_from_replicas && self.checked
    }

    /// How many redirections one command follows.
    pub(crate) fn max_redirects(&self) -> usize {
        self.options.max_redirects
    }

    /// A replica of `slot`'s master fit to serve a read (in turn among the fit ones), if any.
    pub(crate) fn reader(&self, slot: u16) -> Option<Addr> {
        let map = self.map.read();
        let m = *map.owner.get(usize::from(slot))?;
        let replicas = map.replicas.get(usize::from(m))?;
        if replicas.is_empty() {
            return None;
        }
        let health = self.health.read();
        let fit: Vec<&Addr> = replicas
            .iter()
            .filter(|r| {
                health
                    .get(*r)
                    .is_some_and(|h| h.fit && h.down_since.is_none())
            })
            .collect();
        if fit.is_empty() {
            return None;
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed);
        Some(fit[turn % fit.len()].clone())
    }

    /// A node failed a call: it serves no reads until a health check finds it fit again.
    pub(crate) fn node_unreachable(&self, addr: &Addr) {
        if let Some(h) = self.health.write().get_mut(addr) {
            h.fit = false;
        }
    }

    /// A health check says whether replica `addr` may serve reads.
    pub(crate) fn set_fit(&self, addr: &Addr, fit: bool) {
        let mut health = self.health.write();
        let h = health.entry(addr.clone()).or_default();
        if h.fit != fit {
            debug!(
                "cluster replica {addr}: {} reads",
                if fit { "serves" } else { "no longer serves" }
            );
        }
        h.fit = fit;
    }

    /// A health check got an answer from `addr`: a node that was down is up again (event,
    /// breaker closed).
    pub(crate) fn node_answered(&self, addr: &Addr) {
        let was_down = {
            let mut health = self.health.write();
            let h = health.entry(addr.clone()).or_default();
            h.down_since.take()
        };
        if let Some(since) = was_down {
            let downtime = since.elapsed();
            info!("cluster node {addr}: answers again after {downtime:?}");
            self.observed.events.emit(Event::ClusterNodeUp {
                node: addr.clone(),
                downtime,
            });
            let breaker = self.breaker(addr);
            self.breaker_changed(addr, breaker.reset());
        }
    }

    /// A health check got no answer from `addr` in time: the node is down (event, its
    /// breaker opened, the map refreshed, the hooks run).
    pub(crate) fn node_silent(&self, addr: &Addr, cause: Error) {
        let first = {
            let mut health = self.health.write();
            let h = health.entry(addr.clone()).or_default();
            h.fit = false;
            if h.down_since.is_none() {
                h.down_since = Some(Instant::now());
                true
            } else {
                false
            }
        };
        if !first {
            return;
        }
        warn!("cluster node {addr}: no answer to the health check: {cause}");
        self.observed.events.emit(Event::ClusterNodeDown {
            node: addr.clone(),
            cause,
        });
        let breaker = self.breaker(addr);
        self.breaker_changed(addr, breaker.trip());
        self.node_failed();
        for hook in self.down_hooks.lock().iter() {
            hook(addr);
        }
    }

    /// Runs `hook` whenever a health check finds a node gone.
    pub(crate) fn on_node_down(&self, hook: NodeHook) {
        self.down_hooks.lock().push(hook);
    }

    /// Forgets what the health checks knew of nodes no longer in the map.
    pub(crate) fn keep_health_of(&self, nodes: &[Addr]) {
        self.health.write().retain(|a, _| nodes.contains(a));
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// A node connection failed: refresh the map, and check other connections to any node.
    pub(crate) fn node_failed(&self) {
        self.mark_stale();
        self.drop_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// `MOVED`: the slot's owner is known now; the rest of the map is refreshed soon.
    pub(crate) fn moved(&self, slot: u16, to: &Addr) {
        self.mark_stale();
        let mut guard = self.map.write();
        if guard.owner(slot) == Some(to) {
            return;
        }
        let mut map = SlotMap {
            owner: guard.owner.clone(),
            masters: guard.masters.clone(),
            replicas: guard.replicas.clone(),
        };
        let i = match map.masters.iter().position(|m| m == to) {
            Some(i) => i,
            None => {
                map.masters.push(to.clone());
                map.replicas.push(Vec::new());
                map.masters.len() - 1
            }
        };
        map.owner[usize::from(slot)] = i as u16;
        *guard = Arc::new(map);
    }

    /// Refreshes the map when a redirection or a failure said it is stale, at most once per
    /// [`REFRESH_GAP`]. Failures are logged: the old map stays. Reports a change that has
    /// settled.
    pub(crate) fn refresh_if_stale(&self) {
        if self.stale.load(Ordering::Acquire) {
            let mut refreshed = self.refreshed.lock();
            if self.stale.load(Ordering::Acquire)
                && !refreshed.is_some_and(|t| t.elapsed() < REFRESH_GAP)
            {
                if let Err(e) = self.refresh_locked() {
                    debug!("cluster slot map refresh failed: {e}");
                }
                *refreshed = Some(Instant::now());
            }
        }
        // Without the heartbeat, calls report a settled change (the heartbeat does).
        if !self.checked && self.change_pending.load(Ordering::Acquire) {
            self.report_settled();
        }
    }

    /// Refreshes the map now; fails when no node answers with a map.
    pub(crate) fn refresh(&self) -> Result<()> {
        let mut refreshed = self.refreshed.lock();
        let result = self.refresh_locked();
        *refreshed = Some(Instant::now());
        result
    }

    /// Reports a change of the map once it has settled: no change for [`SETTLE`], the map
    /// read once more first (a reshard still going on is not reported half-way).
    pub(crate) fn settle(&self) {
        if self.change_pending.load(Ordering::Acquire) {
            self.report_settled();
        }
    }

    fn report_settled(&self) {
        let quiet = self
            .change
            .lock()
            .as_ref()
            .is_some_and(|c| c.last.elapsed() >= SETTLE);
        if !quiet {
            return;
        }
        if let Err(e) = self.refresh() {
            debug!("cluster slot map refresh failed: {e}");
            return;
        }
        let change = {
            let mut change = self.change.lock();
            if change.as_ref().is_none_or(|c| c.last.elapsed() < SETTLE) {
                return;
            }
            self.change_pending.store(false, Ordering::Release);
            change.take()
        };
        let Some(change) = change else { return };
        let now = self.confirmed.lock().clone();
        let moved = change.before.slots_changed(&now);
        if moved > 0 {
            let masters = now.masters.len();
            info!("cluster slot map changed: {moved} slots moved, {masters} masters");
            self.observed.events.emit(Event::ClusterTopologyChanged {
                slots_moved: moved,
                masters,
            });
        }
    }

    fn refresh_locked(&self) -> Result<()> {
        let old = self.map();
        let mut candidates: Vec<Addr> = old.masters.clone();
        candidates.extend(old.replicas.iter().flatten().cloned());
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = Vec::with_capacity(candidates.len());
        let mut last_error = None;
        for addr in candidates {
            if seen.contains(&addr) {
                continue;
            }
            seen.push(addr.clone());
            match self.ask_slots(&addr) {
                Ok(ranges) if !ranges.is_empty() => {
                    self.install(ranges);
                    return Ok(());
                }
                Ok(_) => last_error = Some(cluster_error(format!("{addr} serves no slots"))),
                Err(e) => {
                    debug!("cluster node {addr}: cannot read the slot map: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| cluster_error("no cluster node to ask".to_owned())))
    }

    /// A `CLUSTER SLOTS` answer becomes the map (a change is noted, to be reported once it
    /// settles).
    pub(crate) fn install(&self, ranges: Vec<route::SlotRange>) {
        self.stale.store(false, Ordering::Release);
        let map = Arc::new(SlotMap::from_ranges(ranges));
        let confirmed = std::mem::replace(&mut *self.confirmed.lock(), map.clone());
        let changed = confirmed.slots_changed(&map);
        *self.map.write() = map;
        if changed > 0 && !confirmed.masters.is_empty() {
            debug!("cluster slot map: {changed} slots moved since the last refresh");
            let mut change = self.change.lock();
            match change.as_mut() {
                Some(c) => c.last = Instant::now(),
                None => {
                    *change = Some(Change {
                        before: confirmed,
                        last: Instant::now(),
                    })
                }
            }
            self.change_pending.store(true, Ordering::Release);
        }
    }

    fn ask_slots(&self, addr: &Addr) -> Result<Vec<route::SlotRange>> {
        let mut con = self.open(addr)?;
        let packed = redis::cmd("CLUSTER").arg("SLOTS").get_packed_command();
        let reply = con.exec(&packed, None)?;
        route::parse_slots(&reply, addr).ok_or_else(|| {
            cluster_error(format!(
                "{addr} sent a CLUSTER SLOTS reply redkit cannot read"
            ))
        })
    }

    fn breaker(&self, addr: &Addr) -> Arc<Breaker> {
        let known = self.breakers.read().get(addr).cloned();
        match known {
            Some(b) => b,
            None => self
                .breakers
                .write()
                .entry(addr.clone())
                .or_insert_with(|| Arc::new(Breaker::new(self.config.breaker)))
                .clone(),
        }
    }

    /// Asks `addr`'s circuit breaker to let a call through.
    pub(crate) fn admit(&self, addr: &Addr) -> Result<Admitted> {
        let breaker = self.breaker(addr);
        let (admission, transition) = breaker.admit().inspect_err(|_| {
            // While the node fails fast, keep looking for its replacement.
            self.mark_stale();
        })?;
        self.breaker_changed(addr, transition);
        Ok(Admitted {
            breaker,
            admission: Some(admission),
        })
    }

    fn breaker_changed(&self, addr: &Addr, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        match t.to {
            BreakerState::Open => {
                warn!(
                    "cluster node {addr}: circuit breaker opened (was {:?})",
                    t.from
                );
                self.observed
                    .counters
                    .breaker_opened
                    .fetch_add(1, Ordering::Relaxed);
            }
            BreakerState::HalfOpen => info!("cluster node {addr}: circuit breaker half-open"),
            BreakerState::Closed => info!("cluster node {addr}: circuit breaker closed"),
        }
        self.observed.events.emit(Event::ClusterNodeBreakerChanged {
            node: addr.clone(),
            from: t.from,
            to: t.to,
        });
    }

    /// Opens a connection to one node with every setting of the handle.
    pub(crate) fn open(&self, addr: &Addr) -> Result<Connection> {
        self.connector.open(addr)
    }

    /// Opens a connection to one node by `deadline`.
    pub(crate) fn open_by(&self, addr: &Addr, deadline: Instant) -> Result<Connection> {
        self.connector.open_by(addr, deadline)
    }

    /// The master owning `slot` in the current map, without refreshing it (the subscriber
    /// checks its shard channels against each new map).
    pub(crate) fn owner_in_map(&self, slot: u16) -> Option<Addr> {
        self.map.read().owner(slot).cloned()
    }
}

pub(crate) fn cluster_error(message: String) -> Error {
    Error::io(io::ErrorKind::NotConnected, message, Delivery::NotSent)
}

/// A transaction met `ASK` (its slot is being migrated): it did not run. Reported as
/// `TRYAGAIN`, which the retry policy resends.
fn try_again() -> Error {
    let reply = b"-TRYAGAIN the transaction's slot is being migrated; it did not run\r\n";
    match redis::parse_redis_value(reply) {
        Ok(Value::ServerError(e)) => Error::from_redis(e.into(), Delivery::Answered),
        _ => cluster_error("the transaction's slot is being migrated; it did not run".to_owned()),
    }
}

/// A call a node's breaker let through; a call dropped without an outcome counts as failed.
pub(crate) struct Admitted {
    breaker: Arc<Breaker>,
    admission: Option<Admission>,
}

impl Admitted {
    /// Gives the admission back without an outcome: a normal call needs none; a half-open
    /// probe frees its place by counting as failed.
    #[allow(dead_code)] // kept for calls that end without an outcome
    pub(crate) fn forget(mut self) {
        if self.admission == Some(Admission::Call) {
            self.admission = None;
        }
    }

    pub(crate) fn done(mut self, topo: &Topology, addr: &Addr, failed: bool) {
        if let Some(a) = self.admission.take() {
            topo.breaker_changed(addr, self.breaker.record(a, failed));
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.breaker.record(a, true);
        }
    }
}

pub(crate) fn infrastructure<T>(r: &Result<T>) -> bool {
    matches!(r, Err(e) if e.class().is_infrastructure())
}

struct NodeConn {
    con: Connection,
    epoch: u64,
    /// `READONLY` was sent (the node serves reads as a replica).
    readonly: bool,
}

/// One pooled cluster connection: a connection per node it talked to.
pub(crate) struct ClusterLink {
    topo: Arc<Topology>,
    nodes: HashMap<Addr, NodeConn>,
    response: Option<Duration>,
    /// The moment the current call must end by.
    cap: Option<Instant>,
    /// Where the last command went: keyless commands follow it.
    last: Option<Addr>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// A cluster connection: reads the slot map if there is none yet, and connects to one
    /// master (so that a wrong password or certificate fails here).
    pub(crate) fn open(topo: Arc<Topology>) -> Result<ClusterLink> {
        topo.refresh_if_stale();
        if topo.map().masters.is_empty() {
            topo.refresh()?;
        }
        let mut link = ClusterLink {
            response: Some(topo.config.timeouts.response),
            cap: None,
            topo,
            nodes: HashMap::new(),
            last: None,
        };
        let mut last_error = None;
        for addr in link.topo.masters() {
            match link.conn(&addr) {
                Ok(_) => {
                    link.last = Some(addr);
                    return Ok(link);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| cluster_error("the cluster has no master".to_owned())))
    }

    /// The topology this link routes with.
    pub(crate) fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    /// The response timeout of later calls (`None`: wait forever).
    pub(crate) fn set_response_timeout(&mut self, timeout: Option<Duration>) {
        self.response = timeout;
        for node in self.nodes.values_mut() {
            node.con.set_response_timeout(timeout);
        }
    }

    /// Closes every node connection.
    pub(crate) fn close(&mut self) {
        self.nodes.clear();
        self.last = None;
    }

    /// The connection to `addr`, opened if needed, `PING`ed first when some node connection
    /// failed since it was last used.
    fn conn(&mut self, addr: &Addr) -> Result<&mut Connection> {
        let epoch = self.topo.drop_epoch.load(Ordering::Acquire);
        let ping_by = time::earliest(
            self.cap,
            Some(time::after(
                self.topo
                    .config
                    .timeouts
                    .response
                    .min(Duration::from_secs(1)),
            )),
        );
        let fresh = match self.nodes.get_mut(addr) {
            Some(node) if node.epoch >= epoch && !node.con.is_broken() => false,
            Some(node) => {
                let alive =
                    !node.con.is_broken() && ping_by.is_some_and(|by| node.con.ping(by).is_ok());
                if alive {
                    node.epoch = epoch;
                }
                !alive
            }
            None => true,
        };
        if fresh {
            self.nodes.remove(addr);
            let deadline = time::earliest(
                self.cap,
                Some(time::after(self.topo.config.timeouts.connect)),
            )
            .unwrap_or_else(|| time::after(self.topo.config.timeouts.connect));
            let mut con = self
                .topo
                .connector
                .open_by(addr, deadline)
                .inspect_err(|_| self.topo.node_failed())?;
            con.set_response_timeout(self.response);
            self.nodes.insert(
                addr.clone(),
                NodeConn {
                    con,
                    epoch,
                    readonly: false,
                },
            );
        }
        self.nodes
            .get_mut(addr)
            .map(|n| &mut n.con)
            .ok_or_else(|| cluster_error(format!("no connection to {addr}")))
    }

    /// A node connection failed: close it, and have the map refreshed.
    fn drop_node(&mut self, addr: &Addr) {
        if self.nodes.remove(addr).is_some() {
            debug!("cluster node {addr}: connection dropped");
        }
        if self.last.as_ref() == Some(addr) {
            self.last = None;
        }
        self.topo.node_failed();
    }

    /// Where a request with no key goes: the node used last, else a master this link has
    /// a connection to, else the first master.
    fn target(&mut self, route: &Route) -> Result<Addr> {
        match route {
            Route::Slot(s) => self.topo.owner(*s),
            Route::Any => {
                if let Some(a) = &self.last {
                    return Ok(a.clone());
                }
                self.topo.refresh_if_stale();
                let masters = self.topo.masters();
                // Prefer a master this link already has a connection to.
                masters
                    .iter()
                    .find(|m| self.nodes.contains_key(m))
                    .or(masters.first())
                    .cloned()
                    .ok_or_else(|| cluster_error("the cluster has no master".to_owned()))
            }
        }
    }

    /// Sends `packed` (a run of `count` commands) to `addr` without reading.
    fn send(&mut self, addr: &Addr, packed: &[u8]) -> Result<()> {
        let cap = self.cap;
        let con = self.conn(addr)?;
        if let Err(e) = con.send(packed, cap, false) {
            self.drop_node(addr);
            return Err(e);
        }
        Ok(())
    }

    /// Reads `count` replies from `addr` (push messages skipped) by `cap`.
    fn recv(&mut self, addr: &Addr, count: usize, cap: Option<Instant>) -> Result<Vec<Value>> {
        let Some(node) = self.nodes.get_mut(addr) else {
            return Err(cluster_error(format!("no connection to {addr}")));
        };
        match node.con.recv(count, cap) {
            Ok(out) => Ok(out),
            Err(e) => {
                self.drop_node(addr);
                Err(e)
            }
        }
    }

    /// The moment the replies of what was just sent must all have come by.
    fn reads_by(&self) -> Option<Instant> {
        time::earliest(self.cap, self.response.map(time::after))
    }

    /// One command, to one node, after `ASKING` when `asking`, through the node's breaker.
    fn exchange(&mut self, addr: &Addr, packed: &[u8], asking: bool) -> Result<Value> {
        let admitted = self.topo.admit(addr)?;
        let result = self.exchange_unguarded(addr, packed, asking);
        admitted.done(&self.topo, addr, infrastructure(&result));
        result
    }

    fn exchange_unguarded(&mut self, addr: &Addr, packed: &[u8], asking: bool) -> Result<Value> {
        if asking {
            let mut both = redis::cmd("ASKING").get_packed_command();
            both.extend_from_slice(packed);
            self.send(addr, &both)?;
            let by = self.reads_by();
            let mut replies = self.recv(addr, 2, by)?;
            return replies
                .pop()
                .ok_or_else(|| cluster_error("no reply".to_owned()));
        }
        self.send(addr, packed)?;
        let by = self.reads_by();
        let mut replies = self.recv(addr, 1, by)?;
        replies
            .pop()
            .ok_or_else(|| cluster_error("no reply".to_owned()))
    }

    /// Runs parsed commands through the routing engine (see [`engine`]).
    fn routed(&mut self, cmds: &[route::Packed<'_>]) -> Result<Vec<Value>> {
        let topo = self.topo.clone();
        // Where a request without any key goes: the node used last, else a master.
        let fallback = self.last.take();
        let mut any = || -> Result<Addr> {
            if let Some(a) = &fallback {
                return Ok(a.clone());
            }
            topo.refresh_if_stale();
            topo.masters()
                .into_iter()
                .next()
                .ok_or_else(|| cluster_error("the cluster has no master".to_owned()))
        };
        let result = engine::request(&topo, self, cmds, &mut any);
        let (values, last) = match result {
            Ok(v) => v,
            Err(e) => {
                // Unless its connection failed meanwhile.
                self.last = fallback.filter(|a| self.nodes.contains_key(a));
                return Err(e);
            }
        };
        self.last = last.or(fallback);
        Ok(values)
    }

    /// One packed command: routed by its first key, split when its keys span slots, to
    /// every master when it is one of the keyless commands that go there.
    pub(crate) fn exec(&mut self, packed: &[u8], cap: Option<Instant>) -> Result<Value> {
        self.cap = cap;
        let Some((args, _)) = route::split_command(packed) else {
            return Err(cluster_error("a command redkit cannot parse".to_owned()));
        };
        let mut values = self.routed(&[(packed, args)])?;
        values
            .pop()
            .ok_or_else(|| cluster_error("no reply".to_owned()))
    }

    /// A pipeline of packed commands: `offset + count` replies are read, the last `count`
    /// returned (see `redis::ConnectionLike::req_packed_commands`).
    pub(crate) fn pipeline(
        &mut self,
        packed: &[u8],
        offset: usize,
        count: usize,
        cap: Option<Instant>,
    ) -> Result<Vec<Value>> {
        self.cap = cap;
        let Some(cmds) = route::split_pipeline(packed) else {
            return Err(cluster_error("a pipeline redkit cannot parse".to_owned()));
        };
        let mut replies = if cmds.iter().any(|(_, a)| route::is_multi(a)) {
            self.transaction(packed, &cmds)?
        } else {
            self.routed(&cmds)?
        };
        if replies.len() < offset + count {
            return Err(cluster_error(
                "a pipeline got fewer replies than commands".to_owned(),
            ));
        }
        Ok(replies.split_off(offset).into_iter().take(count).collect())
    }

    /// `MULTI ... EXEC` runs on one node: the owner of its first key.
    fn transaction(&mut self, packed: &[u8], cmds: &[route::Packed<'_>]) -> Result<Vec<Value>> {
        let route = cmds
            .iter()
            .find_map(|(_, a)| route::first_key(a).map(|i| Route::Slot(route::slot(a[i]))))
            .unwrap_or(Route::Any);
        let mut target = self.target(&route)?;
        for _ in 0..=self.topo.max_redirects() {
            let admitted = self.topo.admit(&target)?;
            let result = self.send(&target, packed).and_then(|()| {
                let by = self.reads_by();
                self.recv(&target, cmds.len(), by)
            });
            admitted.done(&self.topo, &target, infrastructure(&result));
            let replies = result?;
            let redirect = replies.iter().find_map(|r| route::redirect(r, &target));
            match redirect {
                None => {
                    self.last = Some(target);
                    return Ok(replies);
                }
                // The transaction was aborted (EXECABORT): nothing ran.
                Some(Redirect::Moved(slot, to)) => {
                    self.topo.moved(slot, &to);
                    target = to;
                }
                Some(Redirect::Ask(_)) => {
                    self.unwatch_everywhere();
                    return Err(try_again());
                }
            }
        }
        self.unwatch_everywhere();
        Err(try_again())
    }

    /// A transaction that did not run may leave a `WATCH` on another node (the `WATCH`
    /// followed an `ASK`): clear it everywhere this link has a connection.
    fn unwatch_everywhere(&mut self) {
        let unwatch = redis::cmd("UNWATCH").get_packed_command();
        let nodes: Vec<Addr> = self.nodes.keys().cloned().collect();
        for addr in nodes {
            if let Err(e) = self.exchange_unguarded(&addr, &unwatch, false) {
                debug!("cluster node {addr}: UNWATCH failed: {e}");
            }
        }
    }

    /// Runs one packed command on one given node (`SCAN` over every master).
    pub(crate) fn exec_on(
        &mut self,
        addr: &Addr,
        packed: &[u8],
        cap: Option<Instant>,
    ) -> Result<Value> {
        self.cap = cap;
        self.exchange(addr, packed, false)
    }
}

impl Transport for ClusterLink {
    fn exchange(&mut self, _topo: &Topology, batches: &[Batch<'_>]) -> Vec<Result<Vec<Value>>> {
        // Every batch written before any reply is read; `Ok(extra)`: replies to skip.
        let mut sent: Vec<Result<usize>> = Vec::with_capacity(batches.len());
        for b in batches {
            let needs_readonly = b.replica
                && !self
                    .nodes
                    .get(&b.addr)
                    .is_some_and(|n| n.readonly && !n.con.is_broken());
            let result = if needs_readonly {
                let mut bytes = engine::READONLY.to_vec();
                bytes.extend_from_slice(&b.bytes);
                self.send(&b.addr, &bytes).map(|()| 1)
            } else {
                self.send(&b.addr, &b.bytes).map(|()| 0)
            };
            sent.push(result);
        }
        let by = self.reads_by();
        batches
            .iter()
            .zip(sent)
            .map(|(b, sent)| {
                let extra = sent?;
                let mut replies = self.recv(&b.addr, b.replies + extra, by)?;
                if extra > 0 {
                    replies.drain(..extra);
                    if let Some(n) = self.nodes.get_mut(&b.addr) {
                        n.readonly = true;
                    }
                }
                Ok(replies)
            })
            .collect()
    }
}
