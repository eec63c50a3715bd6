//! The multiplexed connection on a Cluster: one [`Mux`] per node, shared by every thread of
//! the handle, with the pooled cluster path's routing (see [`crate::cluster::engine`]).
//!
//! A request is routed as on a pooled cluster connection: by slot, multi-key commands and
//! pipelines split per node, keyless commands to every master, reads to replicas when
//! asked for. Each node's share goes to that node's multiplexed connection, every node's
//! share submitted before any reply is awaited; `MOVED` and `ASK` are followed (`ASK`:
//! `ASKING` and the command as one two-command request on the target node's connection).
//! Per-node breakers apply as on the pooled path. A connection to a node that failed, or
//! that the health checks found silent, is closed (its callers in flight fail at once) and
//! opened again by the next call that needs it. Transactions (`MULTI ... EXEC`, and
//! `Redis::transaction`) run on the pooled cluster path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;

use crate::cluster::engine::{Batch, Transport};
use crate::cluster::Topology;
use crate::config::Addr;
use crate::conn::mux::{Limits, Mux};
use crate::error::{ErrorClass, Result};
use crate::pool::PoolState;
use crate::util::time;

/// One node's multiplexed connection.
#[derive(Debug, Clone)]
struct NodeMux {
    mux: Arc<Mux>,
    /// Opened with `READONLY` (serves reads as a replica).
    readonly: bool,
}

/// The multiplexed connections of a cluster handle, one per node used.
#[derive(Debug)]
pub(crate) struct ClusterMux {
    topo: Arc<Topology>,
    state: Arc<PoolState>,
    nodes: Mutex<HashMap<Addr, NodeMux>>,
    /// Held while a node's connection is being opened (one opening at a time).
    opening: Mutex<()>,
    limits: Limits,
    write_timeout: Duration,
    connect_timeout: Duration,
}

impl ClusterMux {
    pub(crate) fn new(
        topo: Arc<Topology>,
        state: Arc<PoolState>,
        limits: Limits,
        write_timeout: Duration,
        connect_timeout: Duration,
    ) -> ClusterMux {
        ClusterMux {
            topo,
            state,
            nodes: Mutex::new(HashMap::new()),
            opening: Mutex::new(()),
            limits,
            write_timeout,
            connect_timeout,
        }
    }

    pub(crate) fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    fn usable(&self, n: &NodeMux, replica: bool) -> bool {
        !n.mux.is_broken()
            && !self.state.generation.is_retired(n.mux.generation)
            && (n.readonly || !replica)
    }

    /// `addr`'s connection, opened (by `cap`) when there is none or it failed.
    fn node(&self, addr: &Addr, replica: bool, cap: Instant) -> Result<Arc<Mux>> {
        if let Some(n) = self.nodes.lock().get(addr) {
            if self.usable(n, replica) {
                return Ok(n.mux.clone());
            }
        }
        let _opening = self.opening.try_lock_until(cap);
        if let Some(n) = self.nodes.lock().get(addr) {
            if self.usable(n, replica) {
                return Ok(n.mux.clone());
            }
        }
        if self.state.is_closed() {
            return Err(crate::Error::Closed);
        }
        let generation = self.state.generation.current();
        let deadline = time::after(self.connect_timeout).min(cap);
        let mut con = self
            .topo
            .open_by(addr, deadline)
            .inspect_err(|_| self.topo.node_failed())?;
        if replica {
            if let Value::ServerError(e) =
                con.exec(crate::cluster::engine::READONLY, Some(deadline))?
            {
                return Err(crate::Error::from_redis(e.into(), crate::Delivery::NotSent));
            }
        }
        let mux = Arc::new(Mux::new(con, self.limits, self.write_timeout, generation)?);
        self.nodes.lock().insert(
            addr.clone(),
            NodeMux {
                mux: mux.clone(),
                readonly: replica,
            },
        );
        Ok(mux)
    }

    /// Closes `addr`'s connection now (the health checks found it silent): its callers in
    /// flight fail at once.
    pub(crate) fn interrupt(&self, addr: &Addr) {
        if let Some(n) = self.nodes.lock().remove(addr) {
            n.mux.interrupt();
        }
    }

    /// Closes every connection now.
    pub(crate) fn interrupt_all(&self) {
        for (_, n) in self.nodes.lock().drain() {
            n.mux.interrupt();
        }
    }
}

/// One call's use of the cluster's multiplexed connections.
pub(crate) struct ClusterMuxIo<'a> {
    pub(crate) set: &'a ClusterMux,
    /// The replies must have come by then.
    pub(crate) deadline: Instant,
    /// Nothing (connecting included) goes past it.
    pub(crate) cap: Instant,
}

impl Transport for ClusterMuxIo<'_> {
    fn exchange(&mut self, topo: &Topology, batches: &[Batch<'_>]) -> Vec<Result<Vec<Value>>> {
        let muxes: Vec<Result<Arc<Mux>>> = batches
            .iter()
            .map(|b| self.set.node(&b.addr, b.replica, self.cap))
            .collect();
        // Every node's share submitted before any reply is awaited.
        let submitted: Vec<_> = batches
            .iter()
            .zip(&muxes)
            .map(|(b, m)| match m {
                Ok(m) => Ok(m.submit(&b.bytes, 0, b.replies, self.deadline)),
                Err(e) => Err(e.clone()),
            })
            .collect();
        submitted
            .into_iter()
            .map(|s| {
                let result = s.and_then(|s| s.wait(self.deadline));
                if let Err(e) = &result {
                    if e.class() == ErrorClass::Connection {
                        topo.node_failed();
                    }
                }
                result
            })
            .collect()
    }
}
