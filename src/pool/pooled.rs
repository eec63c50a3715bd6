//! A connection checked out of the pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, Value};

use super::link::Link;
use super::manager::{Manager, PoolState};
use crate::config::Addr;
use crate::conn::state::Left;
use crate::error::{to_redis_error, Delivery, Error, ErrorClass, Result};
use crate::util::resp;

/// A connection checked out of the pool. It goes back when dropped, unless it saw an
/// unrecoverable error, or a command changed its state for later callers (then it is
/// closed and the pool opens a fresh one).
///
/// It implements [`redis::ConnectionLike`], so every [`redis::Commands`] method, pipelines,
/// scripts and transactions work on it. Commands on a checked-out connection are not retried
/// and do not pass the circuit breaker: those belong to [`Redis`](crate::Redis) calls.
///
/// **State never leaks to the next caller.** Whatever you send on it, the next user of the
/// pool gets a connection in the configured state (database, protocol, client name, no
/// subscription, no `MULTI`, no `WATCH`, no tracking, replies on): a connection that saw
/// `SELECT`, `(P|S)SUBSCRIBE`, `MONITOR`, `CLIENT TRACKING` / `REPLY` / `SETNAME` /
/// `NO-EVICT` / `NO-TOUCH`, `READONLY`, `READWRITE`, `HELLO`, `AUTH`, `RESET`, `QUIT`, or
/// goes back inside `MULTI` or with a `WATCH` in force, is closed instead of returned. For
/// state you want to keep across calls, use [`Redis::dedicated`](crate::Redis::dedicated).
///
/// **Deadlines.** Each command must be written within the write timeout and answered within
/// the response timeout (a pipeline's replies share one), whatever the server does; a
/// command that passes its deadline fails with a timeout and closes the connection.
pub struct PooledConnection {
    conn: r2d2::PooledConnection<Manager>,
    state: Arc<PoolState>,
    default_response: Duration,
    response_changed: bool,
    /// The moment no call on this connection may outlast (set by the handle for its calls).
    cap: Option<Instant>,
    left: Left,
    /// Put in front of every key sent (the handle's key prefix).
    prefix: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("db", &self.conn.con.db())
            .field("broken", &self.conn.broken)
            .finish()
    }
}

fn stale() -> Error {
    Error::io(
        std::io::ErrorKind::ConnectionAborted,
        "pooled connection is stale",
        Delivery::NotSent,
    )
}

impl PooledConnection {
    pub(crate) fn new(
        conn: r2d2::PooledConnection<Manager>,
        state: Arc<PoolState>,
        default_response: Duration,
    ) -> PooledConnection {
        PooledConnection {
            conn,
            state,
            default_response,
            response_changed: false,
            cap: None,
            left: Left::default(),
            prefix: None,
        }
    }

    /// Changes the response (read) timeout of this connection until it goes back to the pool,
    /// for blocking commands such as `BLPOP` or `XREADGROUP BLOCK`. `None` waits forever.
    pub fn set_response_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        if timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "response_timeout",
                "must be greater than zero (None waits forever)",
            ));
        }
        self.response_changed = true;
        self.conn.con.set_response_timeout(timeout);
        Ok(())
    }

    /// Whether this connection saw an unrecoverable error and will be closed when dropped.
    pub fn is_broken(&self) -> bool {
        self.conn.broken || !self.conn.con.is_open()
    }

    pub(crate) fn mark_broken(&mut self) {
        self.conn.broken = true;
    }

    /// No call goes past `cap` (the handle's retry deadline plus one response timeout).
    pub(crate) fn set_cap(&mut self, cap: Option<Instant>) {
        self.cap = cap;
    }

    /// Every key sent gets `prefix` in front (see [`crate::conn::keys`]).
    pub(crate) fn set_prefix(&mut self, prefix: Option<Arc<[u8]>>) {
        self.prefix = prefix;
    }

    /// `cmd` with the prefix applied, if there is one and it has keys.
    fn with_prefix(&self, cmd: &[u8]) -> Option<Vec<u8>> {
        let prefix = self.prefix.as_deref()?;
        crate::conn::keys::prefixed(cmd, prefix)
    }

    fn fail(&mut self, e: Error) -> Error {
        if e.poisons_connection() {
            // A cluster connection closes the failed node's connection itself.
            if !self.conn.con.is_cluster() {
                self.conn.broken = true;
            }
            if e.class() == ErrorClass::Connection {
                self.state.connection_dropped();
            }
        }
        e
    }

    /// A `READONLY` reply means this connection reaches a replica (a demoted master): close
    /// it, and with Sentinel have the master rediscovered (unless the handle reads from a
    /// replica on purpose).
    fn check_read_only(&mut self, values: &[Value]) {
        let read_only = values.iter().any(|v| {
            matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
        });
        if read_only {
            if let Link::Cluster(c) = &self.conn.con {
                // A node that was a master is a replica now: the map is out of date.
                c.topology().mark_stale();
                return;
            }
            if let Some(sentinel) = &self.state.sentinel {
                if sentinel.reads_from_replica() {
                    // A write through a replica handle: expected, the connection is fine.
                    return;
                }
                sentinel.request_rediscovery();
            }
            self.conn.broken = true;
        }
    }

    /// Sends one packed command and reads its reply, telling apart a command that was never
    /// completely written from one whose reply did not come.
    pub(crate) fn exec_packed(&mut self, cmd: &[u8]) -> Result<Value> {
        let observed = &self.state.observed;
        observed.counters.commands.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = self.exec_packed_unmetered(cmd);
        if let Ok(v) = &result {
            self.check_read_only(std::slice::from_ref(v));
        }
        let name = resp::command_name(cmd).unwrap_or(b"UNKNOWN");
        self.state
            .observed
            .command_metrics
            .record(name, start.elapsed(), &result);
        result
    }

    /// Refuses what must not go out on this connection: anything once it is broken, and
    /// with Sentinel anything to a master being failed over or left (see
    /// [`crate::sentinel`]).
    fn check_sendable(&mut self) -> Result<()> {
        if self.conn.broken {
            return Err(stale());
        }
        if let Some(sentinel) = &self.state.sentinel {
            sentinel.check_send(self.conn.generation)?;
        }
        Ok(())
    }

    fn exec_packed_unmetered(&mut self, cmd: &[u8]) -> Result<Value> {
        self.check_sendable()?;
        self.left.apply_packed(cmd);
        let cap = self.cap;
        let rewritten = self.with_prefix(cmd);
        let cmd = rewritten.as_deref().unwrap_or(cmd);
        self.conn.con.exec(cmd, cap).map_err(|e| self.fail(e))
    }

    /// Sends one packed command to the cluster node `addr` (a plain connection sends it to
    /// its server).
    pub(crate) fn exec_on(&mut self, addr: &Addr, cmd: &[u8]) -> Result<Value> {
        self.check_sendable()?;
        self.left.apply_packed(cmd);
        let cap = self.cap;
        let rewritten = self.with_prefix(cmd);
        let cmd = rewritten.as_deref().unwrap_or(cmd);
        self.conn
            .con
            .exec_on(addr, cmd, cap)
            .map_err(|e| self.fail(e))
    }

    /// Sends a packed pipeline and reads `offset + count` replies, keeping the last `count`.
    pub(crate) fn exec_pipeline(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>> {
        let c = &self.state.observed.counters;
        c.commands.fetch_add(1, Ordering::Relaxed);
        c.pipelines.fetch_add(1, Ordering::Relaxed);
        self.check_sendable()?;
        self.left.apply_packed(cmd);
        let start = Instant::now();
        let cap = self.cap;
        let rewritten = self.with_prefix(cmd);
        let cmd = rewritten.as_deref().unwrap_or(cmd);
        let result = self.conn.con.pipeline(cmd, offset, count, cap);
        if let Ok(vs) = &result {
            self.check_read_only(vs);
        }
        self.state
            .observed
            .command_metrics
            .record(b"PIPELINE", start.elapsed(), &result);
        result.map_err(|e| self.fail(e))
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.left.is_dirty() && !self.conn.broken {
            log::debug!(
                "a pooled connection goes back with its state changed ({:?}): closing it",
                self.left
            );
            self.conn.broken = true;
        }
        if self.response_changed && !self.conn.broken {
            self.conn
                .con
                .set_response_timeout(Some(self.default_response));
        }
    }
}

impl ConnectionLike for PooledConnection {
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
        self.conn.con.db()
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<()>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        !self.is_broken()
    }
}
