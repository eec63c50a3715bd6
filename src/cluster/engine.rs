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

use super::route::{self, Combine, Merge, Plan, Redirect};
use super::{cluster_error, infrastructure, Admitted, Topology};
use crate::config::Addr;
use crate::error::{Delivery, Error, ErrorClass, Result};

/// One node's share of a round: the commands, back to back.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The node.
    pub(crate) addr: Addr,
    /// The packed commands (`ASKING` included where needed).
    pub(crate) bytes: Vec<u8>,
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
    fn exchange(&mut self, topo: &Topology, batches: &[Batch]) -> Vec<Result<Vec<Value>>>;
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

/// A unit on its way: (unit, node, after `ASKING`, to a replica).
type Pending = (usize, Addr, bool, bool);
/// The units of one round for one node: (node, to a replica, (unit, after `ASKING`)).
type Group = (Addr, bool, Vec<(usize, bool)>);

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

/// Where a unit goes first.
fn first_target(
    topo: &Topology,
    unit: &Unit<'_>,
    any: &mut dyn FnMut() -> Result<Addr>,
) -> Result<(Addr, bool)> {
    if let Some(n) = &unit.node {
        return Ok((n.clone(), false));
    }
    match unit.slot {
        Some(s) => {
            if unit.replica_ok {
                if let Some(r) = topo.reader(s) {
                    return Ok((r, true));
                }
            }
            Ok((topo.owner(s)?, false))
        }
        None => Ok((any()?, false)),
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

/// Sends the units in rounds until each has a reply that is not a redirection (see the
/// module docs).
fn run(
    topo: &Topology,
    io: &mut dyn Transport,
    units: &[Unit<'_>],
    any: &mut dyn FnMut() -> Result<Addr>,
) -> Result<(Vec<Value>, Option<Addr>)> {
    let mut results: Vec<Option<Value>> = vec![None; units.len()];
    let mut pending: Vec<Pending> = Vec::with_capacity(units.len());
    for (i, u) in units.iter().enumerate() {
        let (addr, replica) = first_target(topo, u, any)?;
        pending.push((i, addr, false, replica));
    }
    let asking = redis::cmd("ASKING").get_packed_command();
    let mut answered_any = false;
    let mut last = None;
    // The first round and one per redirection; reads a replica could not serve get one
    // more round (to their master).
    let mut rounds = topo.max_redirects() + 1;
    let mut extra_round = true;
    while !pending.is_empty() && rounds > 0 {
        rounds -= 1;
        if extra_round && pending.iter().any(|&(_, _, _, replica)| replica) {
            extra_round = false;
            rounds += 1;
        }
        // Group by node, keeping each node's units in order.
        let mut groups: Vec<Group> = Vec::new();
        for (i, addr, ask, replica) in pending.drain(..) {
            match groups
                .iter_mut()
                .find(|(a, r, _)| *a == addr && *r == replica)
            {
                Some((_, _, v)) => v.push((i, ask)),
                None => groups.push((addr, replica, vec![(i, ask)])),
            }
        }
        let mut batches = Vec::with_capacity(groups.len());
        let mut admitted: Vec<(Admitted, Vec<(usize, bool)>)> = Vec::with_capacity(groups.len());
        let mut failure: Option<Error> = None;
        for (addr, replica, entries) in groups {
            match topo.admit(&addr) {
                Ok(a) => {
                    let mut bytes = Vec::new();
                    let mut replies = 0;
                    for (i, ask) in &entries {
                        if *ask {
                            bytes.extend_from_slice(&asking);
                            replies += 1;
                        }
                        bytes.extend_from_slice(&units[*i].packed);
                        replies += 1;
                    }
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
                        pending.push((i, topo.owner(slot)?, false, false));
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
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
                        pending.push((i, topo.owner(slot)?, false, false));
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
                        pending.push((i, to, false, false));
                    }
                    Some(Redirect::Ask(to)) => pending.push((i, to, true, false)),
                    None if batch.replica && replica_busy(&reply) => {
                        topo.node_unreachable(&batch.addr);
                        let slot = units[i].slot.unwrap_or_default();
                        pending.push((i, topo.owner(slot)?, false, false));
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
