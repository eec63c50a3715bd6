//! Where the commands of one request go on a cluster, and how their replies come back in
//! order: shared by the pooled cluster connection ([`super::ClusterLink`]) and the
//! multiplexed one (one [`Mux`](crate::conn::mux::Mux) per node), which differ only in how
//! they move bytes ([`Transport`]).
//!
//! A request (one command or a pipeline) becomes *units*: a command routed by its first
//! key; a multi-key command whose keys span slots (`MGET`, `DEL`, `UNLINK`, `EXISTS`,
//! `TOUCH`, `MSET`), one unit per slot; a keyless command for every master (`DBSIZE`,
//! `KEYS`, `INFO`, `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD`...), one unit per master. A keyless
//! command that goes to one node travels with the keyed command after it (or before it).
//! Units are sent in rounds: every node's units of a round in one batch, every batch written
//! before any reply is read. Units answered `MOVED` or `ASK` go again in the next round (to
//! the new owner; after `ASKING` in the same batch for `ASK`), at most the configured number
//! of redirections. A read sent to a replica that fails (or whose breaker is open, or that
//! answers `LOADING`/`MASTERDOWN`) goes to the master in the next round. Replies are put
//! back in the order of the request, split commands combined, per-master replies merged.

use std::borrow::Cow;

use log::{debug, warn};
use redis::Value;

use std::sync::Arc;

use super::route::{self, Combine, Merge, Plan, Redirect};
use super::{cluster_error, infrastructure, Admitted, SlotMap, Topology, NO_OWNER};
use crate::config::Addr;
use crate::error::{Delivery, Error, ErrorClass, Result};

/// `ASKING`, packed.
pub(crate) const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
/// `READONLY`, packed.
pub(crate) const READONLY: &[u8] = b"*1\r\n$8\r\nREADONLY\r\n";

/// One node's share of a round: the commands, back to back.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    /// The node.
    pub(crate) addr: Addr,
    /// The packed commands (`ASKING` included where needed).
    pub(crate) bytes: Cow<'a, [u8]>,
    /// How many replies they produce.
    pub(crate) replies: usize,
    /// Reads sent to a replica: its connection must be in `READONLY` mode.
    pub(crate) replica: bool,
}

/// How a cluster connection moves bytes to its nodes.
pub(crate) trait Transport {
    /// Sends every batch to its node, then reads every batch's replies (all by the
    /// transport's deadline). One result per batch, in order; a failed batch's connection is
    /// closed by the transport.
    fn exchange(&mut self, topo: &Topology, batches: &[Batch<'_>]) -> Vec<Result<Vec<Value>>>;
}

/// One command as sent to one node.
struct Unit<'a> {
    packed: Cow<'a, [u8]>,
    /// The slot it is routed by (a keyless one borrows its neighbour's).
    slot: Option<u16>,
    /// A read that may be served by a replica.
    replica_ok: bool,
    /// A node chosen in advance (one master of a keyless command for every master).
    node: Option<Addr>,
}

/// How one command of the request is put back together from its units.
enum Shape {
    One(usize),
    Split {
        how: Combine,
        total: usize,
        parts: Vec<(usize, Vec<usize>)>,
    },
    Masters {
        how: Merge,
        parts: Vec<(usize, Addr)>,
    },
}

/// Runs the commands `cmds` (each its packed bytes and arguments); returns one reply per
/// command, in order, and the node the last batch went to. `any`: where a request without
/// any key goes.
pub(crate) fn request(
    topo: &Topology,
    io: &mut dyn Transport,
    cmds: &[route::Packed<'_>],
    any: &mut dyn FnMut() -> Result<Addr>,
) -> Result<(Vec<Value>, Option<Addr>)> {
    let replica_reads = topo.reads_from_replicas();
    let mut units: Vec<Unit<'_>> = Vec::with_capacity(cmds.len());
    let mut shapes = Vec::with_capacity(cmds.len());
    let mut masters: Option<Vec<Addr>> = None;
    // One command for one node: the short way (most calls).
    if let [(packed, args)] = cmds {
        if let Plan::One { slot } = route::plan(args) {
            let replica_ok = replica_reads
                && args
                    .first()
                    .is_some_and(|n| crate::retry::is_read_only_command(n));
            let (value, last) = run_one(topo, io, packed, slot, replica_ok, any)?;
            return Ok((vec![value], last));
        }
    }
    for (packed, args) in cmds {
        let replica_ok = replica_reads
            && args
                .first()
                .is_some_and(|n| crate::retry::is_read_only_command(n));
        match route::plan(args) {
            Plan::One { slot } => {
                shapes.push(Shape::One(units.len()));
                units.push(Unit {
                    packed: Cow::Borrowed(packed),
                    slot,
                    replica_ok,
                    node: None,
                });
            }
            Plan::Split { how, total, parts } => {
                let mut placed = Vec::with_capacity(parts.len());
                for (bytes, positions, slot) in parts {
                    placed.push((units.len(), positions));
                    units.push(Unit {
                        packed: Cow::Owned(bytes),
                        slot: Some(slot),
                        replica_ok,
                        node: None,
                    });
                }
                shapes.push(Shape::Split {
                    how,
                    total,
                    parts: placed,
                });
            }
            Plan::Masters(how) => {
                let all = match &masters {
                    Some(m) => m.clone(),
                    None => {
                        topo.refresh_if_stale();
                        let m = topo.masters();
                        masters = Some(m.clone());
                        m
                    }
                };
                if all.is_empty() {
                    return Err(cluster_error("the cluster has no master".to_owned()));
                }
                let mut placed = Vec::with_capacity(all.len());
                for m in all {
                    placed.push((units.len(), m.clone()));
                    units.push(Unit {
                        packed: Cow::Borrowed(packed),
                        slot: None,
                        replica_ok: false,
                        node: Some(m),
                    });
                }
                shapes.push(Shape::Masters { how, parts: placed });
            }
        }
    }
    borrow_neighbour_slots(&mut units);
    let (mut replies, last) = run(topo, io, &units, any)?;
    let mut take = |i: usize| std::mem::replace(&mut replies[i], Value::Nil);
    let out = shapes
        .into_iter()
        .map(|shape| match shape {
            Shape::One(i) => take(i),
            Shape::Split { how, total, parts } => route::combine(
                how,
                total,
                parts.into_iter().map(|(i, p)| (take(i), p)).collect(),
            ),
            Shape::Masters { how, parts } => route::merge(
                how,
                parts.into_iter().map(|(i, addr)| (addr, take(i))).collect(),
            ),
        })
        .collect();
    Ok((out, last))
}

/// A keyless unit (not bound to a node) travels with the keyed unit after it, or the one
/// before it at the end: `UNWATCH` or `EXEC` stays with its keys' node.
fn borrow_neighbour_slots(units: &mut [Unit<'_>]) {
    let mut next = None;
    for u in units.iter_mut().rev() {
        match u.slot {
            Some(s) => next = Some(s),
            None if u.node.is_none() => u.slot = next,
            None => {}
        }
    }
    let mut prev = None;
    for u in units.iter_mut() {
        match u.slot {
            Some(s) => prev = Some(s),
            None if u.node.is_none() => u.slot = prev,
            None => {}
        }
    }
}

/// The nodes one request uses; units refer to them by index (no address cloned or
/// compared per command).
struct Nodes {
    /// (node, reads to a replica)
    table: Vec<(Addr, bool)>,
    /// The map's master index -> table index.
    masters: Vec<Option<usize>>,
    map: Arc<SlotMap>,
}

impl Nodes {
    fn new(topo: &Topology) -> Nodes {
        topo.refresh_if_stale();
        let map = topo.map();
        Nodes {
            table: Vec::new(),
            masters: vec![None; map.masters.len()],
            map,
        }
    }

    fn intern(&mut self, addr: &Addr, replica: bool) -> usize {
        match self
            .table
            .iter()
            .position(|(a, r)| *r == replica && a == addr)
        {
            Some(i) => i,
            None => {
                self.table.push((addr.clone(), replica));
                self.table.len() - 1
            }
        }
    }

    /// The owner of `slot` (from the request's snapshot of the map, else asked again).
    fn owner(&mut self, topo: &Topology, slot: u16) -> Result<usize> {
        let m = self
            .map
            .owner
            .get(usize::from(slot))
            .copied()
            .filter(|&m| m != NO_OWNER)
            .map(usize::from);
        if let Some(m) = m {
            if let Some(Some(n)) = self.masters.get(m) {
                return Ok(*n);
            }
            if let Some(addr) = self.map.masters.get(m).cloned() {
                let n = self.intern(&addr, false);
                if let Some(slot) = self.masters.get_mut(m) {
                    *slot = Some(n);
                }
                return Ok(n);
            }
        }
        let addr = topo.owner(slot)?;
        Ok(self.intern(&addr, false))
    }

    /// Once per request, for units bound for `dead` (a master whose breaker is open): the
    /// map read again, and where each unit's slot is owned now, when no longer by `dead`.
    /// `None` when it still is (or a unit is bound to that node, not to a slot).
    fn reroute(
        &mut self,
        topo: &Topology,
        units: &[Unit<'_>],
        entries: &[(usize, bool)],
        dead: &Addr,
        rerouted: &mut bool,
    ) -> Option<Vec<(usize, usize, bool)>> {
        if *rerouted {
            return None;
        }
        *rerouted = true;
        topo.refresh_if_stale();
        self.map = topo.map();
        self.masters = vec![None; self.map.masters.len()];
        let mut moved = Vec::with_capacity(entries.len());
        for &(i, _) in entries {
            let unit = &units[i];
            let slot = unit.slot.filter(|_| unit.node.is_none())?;
            let n = self.owner(topo, slot).ok()?;
            if self.table[n].0 == *dead {
                return None;
            }
            moved.push((i, n, false));
        }
        debug!("{dead} fails fast; its units go to their slots' new owners");
        Some(moved)
    }

    /// Where a unit goes first.
    fn first(
        &mut self,
        topo: &Topology,
        unit: &Unit<'_>,
        any: &mut dyn FnMut() -> Result<Addr>,
    ) -> Result<usize> {
        if let Some(n) = &unit.node {
            return Ok(self.intern(n, false));
        }
        match unit.slot {
            Some(s) => {
                if unit.replica_ok {
                    if let Some(r) = topo.reader(s) {
                        return Ok(self.intern(&r, true));
                    }
                }
                self.owner(topo, s)
            }
            None => {
                let addr = any()?;
                Ok(self.intern(&addr, false))
            }
        }
    }
}

/// A reply that says a replica cannot serve the read now (`LOADING`, `MASTERDOWN`,
/// `TRYAGAIN`...): the master is asked instead.
fn replica_busy(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => {
            Error::from_redis(e.clone().into(), Delivery::Answered).class() == ErrorClass::Busy
        }
        _ => false,
    }
}

/// One command routed by `slot` (see [`run`], which it does for a single unit without its
/// bookkeeping).
fn run_one(
    topo: &Topology,
    io: &mut dyn Transport,
    packed: &[u8],
    slot: Option<u16>,
    replica_ok: bool,
    any: &mut dyn FnMut() -> Result<Addr>,
) -> Result<(Value, Option<Addr>)> {
    let (mut addr, mut replica) = match slot {
        Some(s) => match topo.reader(s).filter(|_| replica_ok) {
            Some(r) => (r, true),
            None => (topo.owner(s)?, false),
        },
        None => (any()?, false),
    };
    let to_master = |topo: &Topology| topo.owner(slot.unwrap_or_default());
    let mut asking = false;
    let mut reply = Value::Nil;
    let mut rounds = topo.max_redirects() + 1 + usize::from(replica);
    let mut rerouted = false;
    while rounds > 0 {
        rounds -= 1;
        let admitted = match topo.admit(&addr) {
            Ok(a) => a,
            Err(_) if replica => {
                (addr, replica) = (to_master(topo)?, false);
                continue;
            }
            // A master failing fast: the map may name its replacement by now (a promoted
            // replica); go there once instead of failing.
            Err(e) => match slot {
                Some(s) if !rerouted => {
                    rerouted = true;
                    topo.refresh_if_stale();
                    let owner = topo.owner(s)?;
                    if owner == addr {
                        return Err(e);
                    }
                    debug!("slot {s}: {addr} fails fast, its slot map owner is now {owner}");
                    addr = owner;
                    rounds += 1;
                    continue;
                }
                _ => return Err(e),
            },
        };
        let batch = if asking {
            let mut bytes = ASKING.to_vec();
            bytes.extend_from_slice(packed);
            Batch {
                addr,
                bytes: Cow::Owned(bytes),
                replies: 2,
                replica,
            }
        } else {
            Batch {
                addr,
                bytes: Cow::Borrowed(packed),
                replies: 1,
                replica,
            }
        };
        let outcome = io
            .exchange(topo, std::slice::from_ref(&batch))
            .pop()
            .unwrap_or_else(|| Err(cluster_error("no reply".to_owned())));
        admitted.done(topo, &batch.addr, infrastructure(&outcome));
        addr = batch.addr;
        let mut replies = match outcome {
            Ok(r) => r,
            Err(e) if replica => {
                debug!("replica {addr} failed a read ({e}); asking its master");
                topo.node_unreachable(&addr);
                (addr, replica) = (to_master(topo)?, false);
                continue;
            }
            Err(e) => return Err(e),
        };
        reply = replies.pop().unwrap_or(Value::Nil);
        match route::redirect(&reply, &addr) {
            Some(Redirect::Moved(s, to)) => {
                debug!("MOVED slot {s} from {addr} to {to}");
                topo.moved(s, &to);
                (addr, replica, asking) = (to, false, false);
            }
            Some(Redirect::Ask(to)) => (addr, replica, asking) = (to, false, true),
            None if replica && replica_busy(&reply) => {
                topo.node_unreachable(&addr);
                (addr, replica) = (to_master(topo)?, false);
            }
            None => return Ok((reply, Some(addr))),
        }
    }
    warn!("a cluster command kept being redirected; returning the redirection");
    Ok((reply, None))
}

/// Sends the units in rounds until each has a reply that is not a redirection (see the
/// module docs).
fn run(
    topo: &Topology,
    io: &mut dyn Transport,
    units: &[Unit<'_>],
    any: &mut dyn FnMut() -> Result<Addr>,
) -> Result<(Vec<Value>, Option<Addr>)> {
    let mut nodes = Nodes::new(topo);
    let mut results: Vec<Option<Value>> = vec![None; units.len()];
    // (unit, node, after `ASKING`)
    let mut pending: Vec<(usize, usize, bool)> = Vec::with_capacity(units.len());
    for (i, u) in units.iter().enumerate() {
        pending.push((i, nodes.first(topo, u, any)?, false));
    }
    let mut answered_any = false;
    let mut rerouted = false;
    let mut last = None;
    // The first round and one per redirection; reads a replica could not serve get one
    // more round (to their master).
    let mut rounds = topo.max_redirects() + 1;
    let mut extra_round = true;
    while !pending.is_empty() && rounds > 0 {
        rounds -= 1;
        if extra_round && pending.iter().any(|&(_, n, _)| nodes.table[n].1) {
            extra_round = false;
            rounds += 1;
        }
        // Group by node, keeping each node's units in order.
        let mut by_node: Vec<Vec<(usize, bool)>> = vec![Vec::new(); nodes.table.len()];
        for (i, n, ask) in pending.drain(..) {
            by_node[n].push((i, ask));
        }
        let mut batches = Vec::with_capacity(by_node.len());
        let mut admitted: Vec<(Admitted, Vec<(usize, bool)>)> = Vec::with_capacity(by_node.len());
        let mut failure: Option<Error> = None;
        for (n, entries) in by_node.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let (addr, replica) = nodes.table[n].clone();
            match topo.admit(&addr) {
                Ok(a) => {
                    let (bytes, replies) = match entries[..] {
                        // One command as it is: no copy.
                        [(i, false)] => (Cow::Borrowed(&*units[i].packed), 1),
                        _ => {
                            let mut bytes = Vec::new();
                            let mut replies = 0;
                            for (i, ask) in &entries {
                                if *ask {
                                    bytes.extend_from_slice(ASKING);
                                    replies += 1;
                                }
                                bytes.extend_from_slice(&units[*i].packed);
                                replies += 1;
                            }
                            (Cow::Owned(bytes), replies)
                        }
                    };
                    batches.push(Batch {
                        addr,
                        bytes,
                        replies,
                        replica,
                    });
                    admitted.push((a, entries));
                }
                // A replica that fails fast: its master serves the reads.
                Err(_) if replica => {
                    for (i, _) in entries {
                        let slot = units[i].slot.unwrap_or_default();
                        pending.push((i, nodes.owner(topo, slot)?, false));
                    }
                }
                // A master failing fast: the map may name its replacement by now (a promoted
                // replica); its units go there once instead of failing.
                Err(e) => match nodes.reroute(topo, units, &entries, &addr, &mut rerouted) {
                    Some(moved) => {
                        pending.extend(moved);
                        rounds += 1;
                    }
                    None => {
                        failure.get_or_insert(e);
                    }
                },
            }
        }
        let outcomes = if batches.is_empty() {
            Vec::new()
        } else {
            io.exchange(topo, &batches)
        };
        for ((batch, (admission, entries)), outcome) in batches.iter().zip(admitted).zip(outcomes) {
            admission.done(topo, &batch.addr, infrastructure(&outcome));
            let replies = match outcome {
                Ok(r) => r,
                Err(e) if batch.replica => {
                    // Reads only: resent to the master, whatever their fate.
                    debug!(
                        "replica {} failed a read ({e}); asking its master",
                        batch.addr
                    );
                    topo.node_unreachable(&batch.addr);
                    for (i, _) in entries {
                        let slot = units[i].slot.unwrap_or_default();
                        pending.push((i, nodes.owner(topo, slot)?, false));
                    }
                    continue;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            answered_any = true;
            last = Some(batch.addr.clone());
            let mut replies = replies.into_iter();
            for (i, ask) in entries {
                if ask {
                    replies.next();
                }
                let reply = replies.next().unwrap_or(Value::Nil);
                match route::redirect(&reply, &batch.addr) {
                    Some(Redirect::Moved(slot, to)) => {
                        debug!("MOVED slot {slot} from {} to {to}", batch.addr);
                        topo.moved(slot, &to);
                        pending.push((i, nodes.intern(&to, false), false));
                    }
                    Some(Redirect::Ask(to)) => pending.push((i, nodes.intern(&to, false), true)),
                    None if batch.replica && replica_busy(&reply) => {
                        topo.node_unreachable(&batch.addr);
                        let slot = units[i].slot.unwrap_or_default();
                        pending.push((i, nodes.owner(topo, slot)?, false));
                        continue;
                    }
                    None => {}
                }
                results[i] = Some(reply);
            }
        }
        if let Some(e) = failure {
            // Commands that reached a node may have run.
            return Err(if answered_any || batches.len() > 1 {
                e.with_delivery(Delivery::Unknown)
            } else {
                e
            });
        }
    }
    if !pending.is_empty() {
        warn!("a cluster request kept being redirected; returning the redirections");
    }
    Ok((
        results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Nil))
            .collect(),
        last,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::events::Health;
    use crate::observe::Observed;

    fn addr(port: u16) -> Addr {
        Addr::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// A topology of three masters (ports 1, 2, 3: slots 0-5460, 5461-10922, 10923-16383),
    /// without any I/O.
    fn topology(max_redirects: usize) -> Topology {
        let config = crate::Config::builder()
            .cluster([("127.0.0.1", 1)])
            .cluster_max_redirects(max_redirects)
            .heartbeat(crate::HeartbeatConfig::disabled())
            .build()
            .expect("config");
        let connector = crate::conn::Connector::new(&config).expect("connector");
        let observed = Arc::new(Observed::new(&config, Health::Healthy));
        let topo = Topology::new(&config, connector, observed).expect("a cluster config");
        topo.install(vec![
            (0, 5460, addr(1), vec![]),
            (5461, 10922, addr(2), vec![]),
            (10923, 16383, addr(3), vec![]),
        ]);
        topo
    }

    /// Answers each batch from a script of replies per node, recording what was sent.
    #[derive(Default)]
    struct Scripted {
        /// Per node: the replies to give, in order.
        replies: Vec<(Addr, Vec<Value>)>,
        /// Every batch sent: (node, commands as text, replies expected).
        sent: Vec<(Addr, String, usize)>,
    }

    impl Transport for Scripted {
        fn exchange(&mut self, _: &Topology, batches: &[Batch<'_>]) -> Vec<Result<Vec<Value>>> {
            batches
                .iter()
                .map(|b| {
                    let text = String::from_utf8_lossy(&b.bytes)
                        .split("\r\n")
                        .filter(|w| !w.starts_with(['*', '$']) && !w.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.sent.push((b.addr.clone(), text, b.replies));
                    let queue = self
                        .replies
                        .iter_mut()
                        .find(|(a, _)| *a == b.addr)
                        .map(|(_, q)| q)
                        .expect("a node with replies");
                    Ok(queue.drain(..b.replies).collect())
                })
                .collect()
        }
    }

    fn error(text: &str) -> Value {
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("an error reply")
    }

    fn run_request(
        topo: &Topology,
        io: &mut Scripted,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>> {
        let packed = pipe.get_packed_pipeline();
        let cmds = route::split_pipeline(&packed).expect("packed");
        let mut any = || Ok(addr(1));
        request(topo, io, &cmds, &mut any).map(|(v, _)| v)
    }

    #[test]
    fn moved_and_ask_are_followed_with_asking_in_the_same_request() {
        let topo = topology(5);
        // `foo` is slot 12182: node 3 says MOVED to 2, node 2 says ASK 1, node 1 answers.
        let mut io = Scripted {
            replies: vec![
                (addr(3), vec![error("MOVED 12182 127.0.0.1:2")]),
                (addr(2), vec![error("ASK 12182 127.0.0.1:1")]),
                (addr(1), vec![Value::Okay, Value::Int(7)]),
            ],
            ..Scripted::default()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("foo");
        let got = run_request(&topo, &mut io, &pipe).expect("answered");
        assert_eq!(got, vec![Value::Int(7)]);
        assert_eq!(
            io.sent,
            vec![
                (addr(3), "GET foo".to_owned(), 1),
                (addr(2), "GET foo".to_owned(), 1),
                (addr(1), "ASKING GET foo".to_owned(), 2),
            ]
        );
        // MOVED updated the map; ASK did not.
        assert_eq!(topo.owner_in_map(12182), Some(addr(2)));
    }

    #[test]
    fn redirections_stop_at_the_configured_maximum() {
        let topo = topology(1);
        let mut io = Scripted {
            replies: vec![
                (addr(3), vec![error("ASK 12182 127.0.0.1:2")]),
                (addr(2), vec![Value::Okay, error("ASK 12182 127.0.0.1:1")]),
            ],
            ..Scripted::default()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("foo");
        let got = run_request(&topo, &mut io, &pipe).expect("answered");
        assert!(matches!(&got[0], Value::ServerError(_)), "{got:?}");
        assert_eq!(io.sent.len(), 2, "one redirection followed");
    }

    #[test]
    fn a_pipeline_splits_multi_key_commands_and_merges_keyless_ones() {
        let topo = topology(5);
        // `a` is slot 15495 (node 3), `b` 3300 (node 1), `foo` 12182 (node 3).
        let mut io = Scripted {
            replies: vec![
                (
                    addr(3),
                    vec![
                        Value::Array(vec![Value::Int(1)]),
                        Value::Int(5),
                        Value::Int(10),
                    ],
                ),
                (
                    addr(1),
                    vec![Value::Array(vec![Value::Int(2)]), Value::Int(1)],
                ),
                (addr(2), vec![Value::Int(100)]),
            ],
            ..Scripted::default()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg("a")
            .arg("b")
            .cmd("INCRBY")
            .arg("foo")
            .arg(5)
            .cmd("DBSIZE");
        let got = run_request(&topo, &mut io, &pipe).expect("answered");
        assert_eq!(
            got,
            vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Int(5),
                Value::Int(111),
            ]
        );
        // One batch per node, each node's commands in order.
        assert_eq!(io.sent.len(), 3);
        assert_eq!(
            io.sent[0],
            (addr(3), "MGET a INCRBY foo 5 DBSIZE".to_owned(), 3)
        );
    }
}
