//! A connection of the caller's own, outside the pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionLike, Value};

use super::Redis;
use crate::conn::state::Left;
use crate::error::{to_redis_error, Delivery, Error, Result};
use crate::pool::{Link, Manager, PoolState};

/// A connection of your own, outside the pool, with the handle's settings (address or
/// Sentinel master or Cluster, credentials, TLS, database, protocol, client name,
/// timeouts): for blocking loops (`BLPOP`, `XREAD BLOCK`, `WAIT`), `MONITOR`, and state that
/// spans calls (`SELECT`, `WATCH`/`MULTI` by hand, `CLIENT TRACKING`, `CLIENT REPLY`).
/// Get one with [`Redis::dedicated`].
///
/// - Every `redis::Commands` method works on it (it implements [`redis::ConnectionLike`]);
///   commands are not retried and do not pass the circuit breaker.
/// - Each command must be written within the write timeout and answered within the response
///   timeout; [`DedicatedConnection::set_response_timeout`] changes that for blocking
///   commands (`None` waits forever).
/// - When the connection is lost (an error that left it unusable, the handle retired its
///   connections after a Sentinel failover or an outage), the next command opens a new one
///   (to the new master) first, as long as nothing was sent that changed the old one's
///   state; if something was (`SELECT`, `SUBSCRIBE`, `WATCH`...), that command fails once
///   with a connection error saying the state is gone, and the one after gets a fresh
///   connection in the configured state.
/// - It is closed when dropped, or when the handle is closed (then every command fails
///   with [`Error::Closed`]). [`Stats::dedicated_open`](crate::Stats::dedicated_open)
///   counts the open ones.
///
/// ```no_run
/// use std::time::Duration;
/// use redis::Commands;
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let mut con = redis.dedicated()?;
/// con.set_response_timeout(Some(Duration::from_secs(6)))?;
/// // Blocks up to 5 s without holding a pooled connection.
/// let job: Option<(String, String)> = con.blpop("jobs", 5.0)?;
/// # Ok::<(), redkit::Error>(())
/// ```
pub struct DedicatedConnection {
    manager: Manager,
    state: Arc<PoolState>,
    con: Option<Link>,
    /// The generation the connection was opened in (a newer one means: reopen).
    generation: u64,
    response: Option<Duration>,
    left: Left,
    /// The handle's key prefix, put in front of every key sent.
    prefix: Option<Arc<[u8]>>,
    /// How long a command waits for the new master while a Sentinel failover is underway
    /// (the handle's retry deadline).
    failover_wait: Duration,
}

impl std::fmt::Debug for DedicatedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedicatedConnection")
            .field("con", &self.con)
            .field("response_timeout", &self.response)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Opens a [`DedicatedConnection`]: a connection of your own outside the pool, with this
    /// handle's settings, for blocking loops, `MONITOR` and state that spans calls. Fails
    /// with the connect error (refused, authentication, TLS...) when it cannot be opened,
    /// within the connect timeout.
    pub fn dedicated(&self) -> Result<DedicatedConnection> {
        self.check_open()?;
        let manager = self.manager().clone();
        let mut d = DedicatedConnection {
            state: manager.state().clone(),
            manager,
            con: None,
            generation: 0,
            response: Some(self.config().timeouts.response),
            left: Left::default(),
            prefix: self.auto_prefix().cloned(),
            failover_wait: self.config().retry.max_elapsed,
        };
        d.open()?;
        Ok(d)
    }
}

impl DedicatedConnection {
    fn open(&mut self) -> Result<()> {
        let generation = self.state.generation.current();
        let mut con = self.manager.open_link()?;
        if self.state.is_closed() {
            con.close();
            return Err(Error::Closed);
        }
        con.set_response_timeout(self.response);
        let c = &self.state.observed.counters;
        c.dedicated_opened.fetch_add(1, Ordering::Relaxed);
        c.dedicated_open.fetch_add(1, Ordering::Relaxed);
        self.con = Some(con);
        self.generation = generation;
        self.left = Left::default();
        Ok(())
    }

    fn drop_con(&mut self) {
        if let Some(mut con) = self.con.take() {
            con.close();
            self.state
                .observed
                .counters
                .dedicated_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The connection, reopened when it was lost while its state was the configured one.
    fn link(&mut self) -> Result<&mut Link> {
        if self.state.is_closed() {
            self.drop_con();
            return Err(Error::Closed);
        }
        // Nothing goes to a master being failed over: wait for the new one (the generation
        // check below then reopens the connection there).
        if let Some(sentinel) = &self.state.sentinel {
            sentinel.wait_for_failover(crate::util::time::after(self.failover_wait))?;
        }
        let lost = match &self.con {
            None => true,
            Some(con) => !con.is_open() || self.state.generation.is_retired(self.generation),
        };
        if lost {
            let had_state = self.con.is_some() && self.left.is_dirty();
            self.drop_con();
            if had_state {
                self.left = Left::default();
                return Err(Error::io(
                    std::io::ErrorKind::ConnectionAborted,
                    "the dedicated connection was lost, and with it the state set on it \
                     (SELECT, SUBSCRIBE, WATCH...); the next command opens a new one",
                    Delivery::NotSent,
                ));
            }
            self.open()?;
        }
        self.con.as_mut().ok_or(Error::Closed)
    }

    /// Changes the response timeout of later commands, for blocking commands (`None` waits
    /// forever). Defaults to the handle's response timeout.
    pub fn set_response_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        if timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "response_timeout",
                "must be greater than zero (None waits forever)",
            ));
        }
        self.response = timeout;
        if let Some(con) = self.con.as_mut() {
            con.set_response_timeout(timeout);
        }
        Ok(())
    }

    /// Whether the connection is open now (it reopens on the next command when it is not).
    pub fn is_open(&self) -> bool {
        self.con.as_ref().is_some_and(Link::is_open)
    }

    /// Closes the connection now; the next command opens a new one.
    pub fn close(&mut self) {
        self.drop_con();
        self.left = Left::default();
    }

    fn with_prefix(&self, packed: &[u8]) -> Option<Vec<u8>> {
        crate::conn::keys::prefixed(packed, self.prefix.as_deref()?)
    }

    /// One packed command and its reply (an error reply as a value).
    pub(crate) fn exec_packed(&mut self, packed: &[u8]) -> Result<Value> {
        self.link()?;
        self.left.apply_packed(packed);
        let rewritten = self.with_prefix(packed);
        let packed = rewritten.as_deref().unwrap_or(packed);
        let con = self.con.as_mut().ok_or(Error::Closed)?;
        con.exec(packed, None)
    }

    /// A packed pipeline: `offset + count` replies read, the last `count` returned.
    pub(crate) fn exec_pipeline(
        &mut self,
        packed: &[u8],
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>> {
        self.link()?;
        self.left.apply_packed(packed);
        let rewritten = self.with_prefix(packed);
        let packed = rewritten.as_deref().unwrap_or(packed);
        let con = self.con.as_mut().ok_or(Error::Closed)?;
        con.pipeline(packed, offset, count, None)
    }
}

impl Drop for DedicatedConnection {
    fn drop(&mut self) {
        self.drop_con();
    }
}

impl ConnectionLike for DedicatedConnection {
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
        self.con.as_ref().map_or(0, Link::db)
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<()>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        DedicatedConnection::is_open(self)
    }
}
