//! Redis Cluster: the slot map shared by a handle's connections, and the pooled cluster
//! connection that routes every command to the master owning its key's slot.
//!
//! Each pooled [`ClusterLink`] holds one connection per node it has talked to, each opened
//! with the handle's connect, response and write timeouts, TLS settings (including a custom
//! CA and client certificate) and credentials. A command goes to the owner of its first
//! key's slot; `MOVED` updates the shared map (and has it refreshed) and resends, `ASK`
//! resends once after `ASKING`. Pipelines are split by node, sent to every node before any
//! reply is read, and the entries that were redirected are resent. `MGET`, `DEL`, `UNLINK`,
//! `EXISTS`, `TOUCH` and `MSET` with keys in several slots are split per slot.

pub(crate) mod route;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::{Mutex, RwLock};
use redis::Value;

use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::{Addr, Config};
use crate::conn::{Connection, Connector};
use crate::error::{Delivery, Error, Result};
use crate::events::Event;
use crate::observe::Observed;
use crate::util::time;
use route::{Redirect, Route, SLOTS};

/// How many redirections one command follows before its last reply is returned as is.
const MAX_REDIRECTS: usize = 5;
/// The least time between two refreshes of the slot map.
const REFRESH_GAP: Duration = Duration::from_millis(100);
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
        (0..SLOTS as u16)
            .filter(|&s| self.owner(s) != other.owner(s))
            .count()
    }
}

/// The slot map and the node connector, shared by every connection of a handle.
pub(crate) struct Topology {
    config: Config,
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
    /// The map as the last refresh found it (what change events compare with).
    confirmed: Mutex<Arc<SlotMap>>,
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

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// A node connection failed: refresh the map, and check other connections to any node.
    pub(crate) fn node_failed(&self) {
        self.mark_stale();
        self.drop_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// `MOVED`: the slot's owner is known now; the rest of the map is refreshed soon.
    fn moved(&self, slot: u16, to: &Addr) {
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
    /// [`REFRESH_GAP`]. Failures are logged: the old map stays.
    pub(crate) fn refresh_if_stale(&self) {
        if !self.stale.load(Ordering::Acquire) {
            return;
        }
        let mut refreshed = self.refreshed.lock();
        if !self.stale.load(Ordering::Acquire)
            || refreshed.is_some_and(|t| t.elapsed() < REFRESH_GAP)
        {
            return;
        }
        if let Err(e) = self.refresh_locked() {
            debug!("cluster slot map refresh failed: {e}");
        }
        *refreshed = Some(Instant::now());
    }

    /// Refreshes the map now; fails when no node answers with a map.
    pub(crate) fn refresh(&self) -> Result<()> {
        let mut refreshed = self.refreshed.lock();
        let result = self.refresh_locked();
        *refreshed = Some(Instant::now());
        result
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
                    self.stale.store(false, Ordering::Release);
                    let map = Arc::new(SlotMap::from_ranges(ranges));
                    let confirmed = std::mem::replace(&mut *self.confirmed.lock(), map.clone());
                    let changed = confirmed.slots_changed(&map);
                    let masters = map.masters.len();
                    *self.map.write() = map;
                    if changed > 0 && !confirmed.masters.is_empty() {
                        info!("cluster slot map changed: {changed} slots moved, {masters} masters");
                        self.observed.events.emit(Event::ClusterTopologyChanged {
                            slots_moved: changed,
                            masters,
                        });
                    }
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

    /// Asks `addr`'s circuit breaker to let a call through.
    fn admit(&self, addr: &Addr) -> Result<Admitted> {
        let known = self.breakers.read().get(addr).cloned();
        let breaker = match known {
            Some(b) => b,
            None => self
                .breakers
                .write()
                .entry(addr.clone())
                .or_insert_with(|| Arc::new(Breaker::new(self.config.breaker)))
                .clone(),
        };
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
    }

    /// Opens a connection to one node with every setting of the handle.
    pub(crate) fn open(&self, addr: &Addr) -> Result<Connection> {
        self.connector.open(addr)
    }

    /// The master owning `slot` in the current map, without refreshing it (the subscriber
    /// checks its shard channels against each new map).
    pub(crate) fn owner_in_map(&self, slot: u16) -> Option<Addr> {
        self.map.read().owner(slot).cloned()
    }
}

fn cluster_error(message: String) -> Error {
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
struct Admitted {
    breaker: Arc<Breaker>,
    admission: Option<Admission>,
}

impl Admitted {
    /// Gives the admission back without an outcome: a normal call needs none; a half-open
    /// probe frees its place by counting as failed.
    fn forget(mut self) {
        if self.admission == Some(Admission::Call) {
            self.admission = None;
        }
    }

    fn done(mut self, topo: &Topology, addr: &Addr, failed: bool) {
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

fn infrastructure<T>(r: &Result<T>) -> bool {
    matches!(r, Err(e) if e.class().is_infrastructure())
}

/// A node's share of a pipeline round: (command index, sent after `ASKING`).
type Entries = Vec<(usize, bool)>;

struct NodeConn {
    con: Connection,
    epoch: u64,
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
            self.nodes.insert(addr.clone(), NodeConn { con, epoch });
        }
        self.nodes
            .get_mut(addr)
            .map(|n| &mut n.con)
            .ok_or_else(|| cluster_error(format!("no connection to {addr}")))
    }

    /// Closes the connection to `addr` (its replies are no longer in step), without
    /// suspecting the node.
    fn close_node(&mut self, addr: &Addr) {
        self.nodes.remove(addr);
        if self.last.as_ref() == Some(addr) {
            self.last = None;
        }
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

    fn target(&mut self, route: &Route) -> Result<Addr> {
        match route {
            Route::Slot(s) => self.topo.owner(*s),
            Route::Any | Route::AllMasters => {
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

    /// One command to where `route` says, following redirections.
    fn exec_routed(&mut self, packed: &[u8], route: &Route) -> Result<Value> {
        let mut target = self.target(route)?;
        let mut asking = false;
        let mut reply = Value::Nil;
        for _ in 0..=MAX_REDIRECTS {
            reply = self.exchange(&target, packed, asking)?;
            match route::redirect(&reply, &target) {
                Some(Redirect::Moved(slot, to)) => {
                    debug!("MOVED slot {slot} from {target} to {to}");
                    self.topo.moved(slot, &to);
                    target = to;
                    asking = false;
                }
                Some(Redirect::Ask(to)) => {
                    target = to;
                    asking = true;
                }
                None => {
                    self.last = Some(target);
                    return Ok(reply);
                }
            }
        }
        Ok(reply)
    }

    /// One packed command: routed by its first key, split when its keys span slots.
    pub(crate) fn exec(&mut self, packed: &[u8], cap: Option<Instant>) -> Result<Value> {
        self.cap = cap;
        let Some((args, _)) = route::split_command(packed) else {
            return self.exec_routed(packed, &Route::Any);
        };
        if let Some((how, parts)) = route::split_multi_key(&args) {
            let total = (args.len() - 1) / if how == route::Combine::Ok { 2 } else { 1 };
            // One pipeline: every node's parts in one round trip.
            let parsed: Vec<route::Packed<'_>> = parts
                .iter()
                .map(|(p, _)| {
                    let args = route::split_command(p).map(|(a, _)| a).unwrap_or_default();
                    (p.as_slice(), args)
                })
                .collect();
            let values = self.spread(&parsed)?;
            let replies = values
                .into_iter()
                .zip(parts.iter().map(|(_, positions)| positions.clone()))
                .collect();
            return Ok(route::combine(how, total, replies));
        }
        match route::route(&args) {
            Route::AllMasters => {
                self.topo.refresh_if_stale();
                let mut first = None;
                for (i, master) in self.topo.masters().into_iter().enumerate() {
                    let reply = match self.exchange(&master, packed, false) {
                        Ok(v) => v,
                        Err(e) if i > 0 => return Err(e.with_delivery(Delivery::Unknown)),
                        Err(e) => return Err(e),
                    };
                    if first.is_none() || matches!(reply, Value::ServerError(_)) {
                        first = Some(reply);
                    }
                }
                first.ok_or_else(|| cluster_error("the cluster has no master".to_owned()))
            }
            route => self.exec_routed(packed, &route),
        }
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
        let is_multi = |a: &Vec<&[u8]>| a.first().is_some_and(|n| n.eq_ignore_ascii_case(b"MULTI"));
        let mut replies = if cmds.iter().any(|(_, a)| is_multi(a)) {
            self.transaction(packed, &cmds)?
        } else {
            self.spread(&cmds)?
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
        for _ in 0..=MAX_REDIRECTS {
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

    /// A plain pipeline: each command to its slot's owner (a keyless one with the next keyed
    /// command, or the previous one at the end), every node's share sent before any reply
    /// is read; redirected entries are resent.
    fn spread(&mut self, cmds: &[route::Packed<'_>]) -> Result<Vec<Value>> {
        let mut slots: Vec<Option<u16>> = cmds
            .iter()
            .map(|(_, a)| route::first_key(a).map(|i| route::slot(a[i])))
            .collect();
        let mut next = None;
        for s in slots.iter_mut().rev() {
            match s {
                Some(v) => next = Some(*v),
                None => *s = next,
            }
        }
        let mut prev = None;
        for s in slots.iter_mut() {
            match s {
                Some(v) => prev = Some(*v),
                None => *s = prev,
            }
        }
        // The nodes this pipeline uses; commands refer to them by index.
        let mut table: Vec<Addr> = Vec::new();
        fn intern(table: &mut Vec<Addr>, addr: &Addr) -> usize {
            match table.iter().position(|a| a == addr) {
                Some(i) => i,
                None => {
                    table.push(addr.clone());
                    table.len() - 1
                }
            }
        }
        self.topo.refresh_if_stale();
        let map = self.topo.map();
        // The map's master index -> table index.
        let mut local: Vec<Option<usize>> = vec![None; map.masters.len()];
        // (command index, table index, asking)
        let mut pending: Vec<(usize, usize, bool)> = Vec::with_capacity(cmds.len());
        for (i, s) in slots.iter().enumerate() {
            let owner = s.and_then(|s| map.owner.get(usize::from(s)).copied());
            let node = match owner {
                Some(m) if m != NO_OWNER => match local.get(usize::from(m)).copied().flatten() {
                    Some(n) => n,
                    None => {
                        let n = intern(&mut table, &map.masters[usize::from(m)]);
                        if let Some(l) = local.get_mut(usize::from(m)) {
                            *l = Some(n);
                        }
                        n
                    }
                },
                _ => {
                    let addr = match s {
                        Some(s) => self.topo.owner(*s)?,
                        None => self.target(&Route::Any)?,
                    };
                    intern(&mut table, &addr)
                }
            };
            pending.push((i, node, false));
        }
        drop(map);
        let mut results: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut sent_any = false;
        for _ in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                break;
            }
            // Group by node, keeping each node's commands in order.
            let mut by_node: Vec<Entries> = vec![Vec::new(); table.len()];
            for (i, node, asking) in pending.drain(..) {
                by_node[node].push((i, asking));
            }
            let groups: Vec<(Addr, Entries)> = by_node
                .into_iter()
                .enumerate()
                .filter(|(_, e)| !e.is_empty())
                .map(|(n, e)| (table[n].clone(), e))
                .collect();
            let asking_cmd = redis::cmd("ASKING").get_packed_command();
            // Every node this round wrote to, with its breaker admission, until its
            // replies are read: on any error the unread ones are closed (their replies
            // would answer the next command).
            let mut unread: Vec<(Addr, Entries, Admitted)> = Vec::new();
            let mut failure = None;
            for (addr, entries) in groups {
                let admitted = match self.topo.admit(&addr) {
                    Ok(a) => a,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let mut buf = Vec::new();
                for (i, asking) in &entries {
                    if *asking {
                        buf.extend_from_slice(&asking_cmd);
                    }
                    buf.extend_from_slice(cmds[*i].0);
                }
                if let Err(e) = self.send(&addr, &buf) {
                    admitted.done(&self.topo, &addr, true);
                    failure = Some(e);
                    break;
                }
                unread.push((addr, entries, admitted));
            }
            let mut unread = unread.into_iter();
            // Every node's replies of this round by one response timeout.
            let by = self.reads_by();
            while failure.is_none() {
                let Some((addr, entries, admitted)) = unread.next() else {
                    break;
                };
                let expected = entries.len() + entries.iter().filter(|(_, a)| *a).count();
                let received = self.recv(&addr, expected, by);
                admitted.done(&self.topo, &addr, infrastructure(&received));
                let replies = match received {
                    Ok(r) => r,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                sent_any = true;
                let mut replies = replies.into_iter();
                for (i, asking) in entries {
                    if asking {
                        replies.next();
                    }
                    let reply = replies.next().unwrap_or(Value::Nil);
                    match route::redirect(&reply, &addr) {
                        Some(Redirect::Moved(slot, to)) => {
                            self.topo.moved(slot, &to);
                            pending.push((i, intern(&mut table, &to), false));
                            results[i] = Some(reply);
                        }
                        Some(Redirect::Ask(to)) => {
                            pending.push((i, intern(&mut table, &to), true));
                            results[i] = Some(reply);
                        }
                        None => results[i] = Some(reply),
                    }
                }
                self.last = Some(addr);
            }
            if let Some(e) = failure {
                let wrote_elsewhere = unread.len() > 0;
                for (addr, _, admitted) in unread {
                    // Nothing is known about these nodes' health: no outcome recorded.
                    admitted.forget();
                    self.close_node(&addr);
                }
                // Commands that reached a node may have run.
                return Err(if sent_any || wrote_elsewhere {
                    e.with_delivery(Delivery::Unknown)
                } else {
                    e
                });
            }
        }
        if !pending.is_empty() {
            warn!("a cluster pipeline kept being redirected; returning the redirections");
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Nil))
            .collect())
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
