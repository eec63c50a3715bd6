//! The handle's multiplexed connections (see [`ConfigBuilder::multiplexed`]): a few
//! connections shared by every thread, each a [`Mux`], reopened when they fail or the handle
//! retires its connections (after an outage, a Sentinel failover). On a Cluster, one per
//! node instead (see [`super::cluster_mux`]).
//!
//! [`ConfigBuilder::multiplexed`]: crate::ConfigBuilder::multiplexed

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use redis::{ConnectionLike, Value};

use super::calls::Calls;
use super::cluster_mux::{ClusterMux, ClusterMuxIo};
use super::Redis;
use crate::config::Config;
use crate::conn::mux::{Limits, Mux};
use crate::error::{to_redis_error, Delivery, Error, ErrorClass, Result};
use crate::pool::{Link, Manager};
use crate::util::{resp, time};

/// The multiplexed connections of a handle.
#[derive(Debug)]
pub(crate) struct MuxSet {
    /// With a Cluster: a connection per node instead of the stripes.
    cluster: Option<ClusterMux>,
    stripes: Vec<Mutex<Option<Arc<Mux>>>>,
    next: AtomicUsize,
    manager: Manager,
    limits: Limits,
    write_timeout: std::time::Duration,
}

impl MuxSet {
    /// `connections` multiplexed connections (opened on first use).
    pub(crate) fn new(config: &Config, manager: Manager) -> MuxSet {
        let m = &config.multiplex;
        let limits = Limits {
            requests: m.max_requests,
            bytes: m.max_queued_bytes,
        };
        let state = manager.state().clone();
        MuxSet {
            cluster: state.cluster.clone().map(|topo| {
                ClusterMux::new(
                    topo,
                    state.clone(),
                    limits,
                    config.timeouts.write,
                    config.timeouts.connect,
                )
            }),
            stripes: (0..m.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            manager,
            limits,
            write_timeout: config.timeouts.write,
        }
    }

    /// The per-node connections, with a Cluster.
    pub(crate) fn cluster(&self) -> Option<&ClusterMux> {
        self.cluster.as_ref()
    }

    /// A connection to use, opened (within the connect timeout, capped at `cap`) when its
    /// stripe has none, or one that failed or was retired.
    fn link(&self, cap: Instant) -> Result<Arc<Mux>> {
        let n = self.stripes.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let state = self.manager.state();
        // A live connection on some stripe, starting with ours.
        for i in 0..n {
            let stripe = &self.stripes[(first + i) % n];
            if let Some(guard) = stripe.try_lock() {
                if let Some(m) = guard.as_ref() {
                    if !m.is_broken() && !state.generation.is_retired(m.generation) {
                        return Ok(m.clone());
                    }
                }
                if i == 0 {
                    drop(guard);
                    return self.reopen(first, cap);
                }
            }
        }
        self.reopen(first, cap)
    }

    /// Opens stripe `i`'s connection again (one caller at a time; the others wait for it, by
    /// `cap`).
    fn reopen(&self, i: usize, cap: Instant) -> Result<Arc<Mux>> {
        let state = self.manager.state();
        let Some(mut slot) = self.stripes[i].try_lock_until(cap) else {
            return Err(Error::PoolTimeout {
                waited: time::left(cap),
            });
        };
        if let Some(m) = slot.as_ref() {
            if !m.is_broken() && !state.generation.is_retired(m.generation) {
                return Ok(m.clone());
            }
        }
        let generation = state.generation.current();
        let opened = self.manager.open_link();
        state.record_connect(self.manager.addr(), opened.as_ref().map(|_| ()), true);
        let conn = match opened? {
            Link::Node(conn) => *conn,
            Link::Cluster(mut c) => {
                c.close();
                // A cluster handle uses the per-node connections, never the stripes.
                return Err(Error::config(
                    "multiplexed",
                    "a cluster connection cannot be striped (use the per-node connections)",
                ));
            }
        };
        if state.is_closed() {
            return Err(Error::Closed);
        }
        let m = Arc::new(Mux::new(conn, self.limits, self.write_timeout, generation)?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Closes every connection now: calls in flight fail at once (a black hole the
    /// heartbeat noticed, or the handle closing).
    pub(crate) fn interrupt_all(&self) {
        if let Some(c) = &self.cluster {
            c.interrupt_all();
        }
        for stripe in &self.stripes {
            if let Some(m) = stripe.lock().as_ref() {
                m.interrupt();
            }
        }
    }
}

/// One call's view of the multiplexed connection: what a call's operation runs its commands
/// on instead of a pooled connection.
pub(crate) struct MuxCall<'a> {
    redis: &'a Redis,
    target: Target<'a>,
    cap: Instant,
}

/// What a call's commands go to.
enum Target<'a> {
    /// One of the stripes.
    Node(Arc<Mux>),
    /// The node connections of a cluster.
    Cluster(&'a ClusterMux),
}

impl<'a> MuxCall<'a> {
    pub(crate) fn new(redis: &'a Redis, set: &'a MuxSet, cap: Instant) -> Result<MuxCall<'a>> {
        let target = match &set.cluster {
            Some(c) => Target::Cluster(c),
            None => Target::Node(set.link(cap)?),
        };
        Ok(MuxCall { redis, target, cap })
    }

    fn deadline(&self) -> Instant {
        let response = self.redis.inner.config.timeouts.response;
        time::after(response).min(self.cap)
    }

    fn run(&mut self, cmd: &[u8], offset: usize, count: usize, name: &[u8]) -> Result<Vec<Value>> {
        let mux = match &self.target {
            Target::Node(m) => m.clone(),
            Target::Cluster(c) => return self.run_on_cluster(c, cmd, offset, count, name),
        };
        let rewritten = self
            .redis
            .auto_prefix()
            .and_then(|p| crate::conn::keys::prefixed(cmd, p));
        let cmd = rewritten.as_deref().unwrap_or(cmd);
        if let Some(sentinel) = &self.redis.pool_state().sentinel {
            sentinel.check_send(mux.generation)?;
        }
        let observed = &self.redis.inner.observed;
        observed.counters.commands.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = mux.call(cmd, offset, count, self.deadline());
        observed
            .command_metrics
            .record(name, start.elapsed(), &result);
        match &result {
            Ok(values) => self.check_read_only(&mux, values),
            Err(e) if e.class() == ErrorClass::Connection => {
                self.redis.pool_state().connection_dropped();
            }
            Err(_) => {}
        }
        result
    }

    /// A request through the node connections of a cluster (see [`super::cluster_mux`]); a
    /// transaction goes to the pooled cluster path.
    fn run_on_cluster(
        &self,
        set: &ClusterMux,
        raw: &[u8],
        offset: usize,
        count: usize,
        name: &[u8],
    ) -> Result<Vec<Value>> {
        let rewritten = self
            .redis
            .auto_prefix()
            .and_then(|p| crate::conn::keys::prefixed(raw, p));
        let cmd = rewritten.as_deref().unwrap_or(raw);
        let Some(cmds) = resp::split_pipeline(cmd) else {
            return Err(Error::io(
                std::io::ErrorKind::InvalidInput,
                "a request redkit cannot parse",
                Delivery::NotSent,
            ));
        };
        if cmds
            .iter()
            .any(|(_, a)| a.first().is_some_and(|n| n.eq_ignore_ascii_case(b"MULTI")))
        {
            // The pooled path applies the prefix itself.
            return self
                .redis
                .on_pool_by(self.cap, |con| con.exec_pipeline(raw, offset, count));
        }
        let observed = &self.redis.inner.observed;
        observed.counters.commands.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let topo = set.topology();
        let mut io = ClusterMuxIo {
            set,
            deadline: self.deadline(),
            cap: self.cap,
        };
        let mut any = || {
            topo.refresh_if_stale();
            topo.masters().into_iter().next().ok_or_else(|| {
                Error::io(
                    std::io::ErrorKind::NotConnected,
                    "the cluster has no master",
                    Delivery::NotSent,
                )
            })
        };
        let result: Result<Vec<Value>> = crate::cluster::engine::request(
            topo, &mut io, &cmds, &mut any,
        )
        .and_then(|(mut values, _)| {
            if values.len() < offset + count {
                return Err(Error::io(
                    std::io::ErrorKind::InvalidData,
                    "a request got fewer replies than commands",
                    Delivery::Unknown,
                ));
            }
            Ok(values.split_off(offset).into_iter().take(count).collect())
        });
        observed
            .command_metrics
            .record(name, start.elapsed(), &result);
        if let Ok(values) = &result {
            let read_only = values.iter().any(|v| {
                matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
            });
            if read_only {
                // A master that is a replica now: the map is out of date.
                topo.mark_stale();
            }
        }
        result
    }

    /// A `READONLY` reply: this connection reaches a replica (a demoted master): close it,
    /// and with Sentinel have the master found again.
    fn check_read_only(&self, mux: &Mux, values: &[Value]) {
        let read_only = values.iter().any(|v| {
            matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
        });
        if !read_only {
            return;
        }
        let state = self.redis.pool_state();
        if let Some(sentinel) = &state.sentinel {
            if sentinel.reads_from_replica() {
                return;
            }
            sentinel.request_rediscovery();
        }
        mux.interrupt();
    }
}

impl Calls for MuxCall<'_> {
    fn exec_packed(&mut self, cmd: &[u8]) -> Result<Value> {
        let name = resp::command_name(cmd).unwrap_or(b"UNKNOWN").to_vec();
        let mut values = self.run(cmd, 0, 1, &name)?;
        values.pop().ok_or_else(|| {
            Error::io(
                std::io::ErrorKind::InvalidData,
                "no reply",
                Delivery::Unknown,
            )
        })
    }

    fn exec_pipeline(&mut self, cmd: &[u8], offset: usize, count: usize) -> Result<Vec<Value>> {
        self.redis
            .inner
            .observed
            .counters
            .pipelines
            .fetch_add(1, Ordering::Relaxed);
        self.run(cmd, offset, count, b"PIPELINE")
    }
}

impl ConnectionLike for MuxCall<'_> {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        self.exec_packed(cmd).map_err(to_redis_error)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        self.exec_pipeline(cmd, offset, count)
            .map_err(to_redis_error)
    }

    fn get_db(&self) -> i64 {
        self.redis.inner.config.db
    }

    fn check_connection(&mut self) -> bool {
        self.exec_packed(&redis::cmd("PING").get_packed_command())
            .is_ok()
    }

    fn is_open(&self) -> bool {
        match &self.target {
            Target::Node(m) => !m.is_broken(),
            Target::Cluster(_) => true,
        }
    }
}
