//! Replica acknowledgement: confirming an acquisition on replicas (`WAIT`, or `WAITAOF`)
//! before the guard is returned.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::PooledConnection;

/// Confirms every acquisition on replicas before the guard is returned, so that a failover
/// to one of them keeps the lock (see the [safety model](super#the-safety-model)).
///
/// Right after the acquire script, on the same connection, redkit sends
/// `WAIT replicas timeout` (or, with [`ReplicaAck::fsync`], `WAITAOF local replicas timeout`:
/// the write must also be in the append-only file, fsynced, of that many replicas, and of the
/// master itself when `local`). When fewer replicas than asked confirm within the timeout,
/// the lock is released again and the acquisition fails with [`Error::NotReplicated`]; a
/// waiting acquire does not try again (a missing replica rarely comes back within a wait).
/// `WAITAOF` needs Redis 7.2 or later (or Valkey); older servers fail with
/// [`Error::ServerTooOld`] (and the lock is released).
///
/// It narrows the failover hole, it does not close it: replication stays asynchronous, a
/// confirmed write can still be lost when every confirming replica fails too, and Sentinel or
/// Cluster may promote a replica that did not confirm. Fencing tokens stay the real defence.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::lock::{Lock, ReplicaAck};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let lock = Lock::builder(&redis, "payouts")
///     .replica_ack(ReplicaAck::new(1, Duration::from_millis(100)))
///     .build()?;
/// match lock.acquire() {
///     Ok(guard) => { /* held, and on at least one replica */ }
///     Err(redkit::Error::NotReplicated { acknowledged, .. }) => {
///         eprintln!("only {acknowledged} replicas confirmed: not taken");
///     }
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    replicas: u32,
    timeout: Duration,
    fsync: bool,
    local: bool,
}

impl ReplicaAck {
    /// Waits until `replicas` replicas (at least 1) have the acquisition, at most `timeout`
    /// (at least 1 ms): `WAIT`.
    pub fn new(replicas: u32, timeout: Duration) -> ReplicaAck {
        ReplicaAck {
            replicas,
            timeout,
            fsync: false,
            local: false,
        }
    }

    /// Also waits until the replicas (and the master itself when `local`) have fsynced it to
    /// their append-only file: `WAITAOF` (Redis 7.2 or later). Defaults to off.
    pub fn fsync(mut self, local: bool) -> ReplicaAck {
        self.fsync = true;
        self.local = local;
        self
    }

    /// How many replicas must confirm.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// How long to wait for them.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn validate(&self, setting: &'static str) -> Result<()> {
        if self.replicas == 0 {
            return Err(Error::config(setting, "needs at least 1 replica"));
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(Error::config(setting, "the timeout must be at least 1 ms"));
        }
        if self.timeout > Duration::from_secs(3600) {
            return Err(Error::config(
                setting,
                "the timeout must be at most an hour",
            ));
        }
        Ok(())
    }

    /// Sends `WAIT`/`WAITAOF` on `con` (right after the acquisition's write; `response` is
    /// the handle's usual response timeout) and checks the answer: `Ok` when enough
    /// confirmed, [`Error::NotReplicated`] or [`Error::ServerTooOld`] otherwise.
    pub(crate) fn confirm(
        &self,
        redis: &crate::Redis,
        con: &mut PooledConnection,
        name: &str,
    ) -> Result<()> {
        let ms = super::wait::millis(self.timeout);
        if self.fsync && !has_waitaof(redis, con)? {
            return Err(Error::ServerTooOld {
                feature: "WAITAOF",
                needs: "Redis 7.2 or later, or Valkey",
                server: server_version(con),
            });
        }
        // The reply takes up to the timeout: read it with that much more than usual, also
        // past the call's own cap (the retry deadline), which a long timeout may outlast.
        let response = redis.config().timeouts.response;
        let read = response.saturating_add(self.timeout);
        con.set_response_timeout(Some(read))?;
        con.set_cap(Some(crate::util::time::after(read)));
        let (acknowledged, local_ok) = if self.fsync {
            let v: Vec<i64> = redis::cmd("WAITAOF")
                .arg(u32::from(self.local))
                .arg(self.replicas)
                .arg(ms)
                .query(con)
                .map_err(sent)?;
            match v[..] {
                [local, replicas] => (replicas, !self.local || local >= 1),
                _ => return Err(super::bad_reply("WAITAOF", format!("{v:?}"))),
            }
        } else {
            let n: i64 = redis::cmd("WAIT")
                .arg(self.replicas)
                .arg(ms)
                .query(con)
                .map_err(sent)?;
            (n, true)
        };
        con.set_response_timeout(Some(response))?;
        let acknowledged = u32::try_from(acknowledged.max(0)).unwrap_or(u32::MAX);
        if acknowledged >= self.replicas && local_ok {
            return Ok(());
        }
        Err(Error::NotReplicated {
            name: name.to_owned(),
            acknowledged,
            wanted: self.replicas,
            waited: self.timeout,
        })
    }
}

fn sent(e: redis::RedisError) -> Error {
    Error::from_redis(e, crate::error::Delivery::Unknown)
}

/// Whether the server knows `WAITAOF` (`COMMAND INFO WAITAOF` names it), asked once per
/// handle.
fn has_waitaof(redis: &crate::Redis, con: &mut PooledConnection) -> Result<bool> {
    let locks = super::handle_locks(redis)?;
    if let Some(known) = locks.waitaof() {
        return Ok(known);
    }
    let info: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("WAITAOF")
        .query(con)
        .map_err(sent)?;
    let known = match info {
        redis::Value::Array(v) => v.first().is_some_and(|c| *c != redis::Value::Nil),
        _ => false,
    };
    locks.set_waitaof(known);
    Ok(known)
}

/// `"Redis 7.0.15"` (or `"Valkey 8.1.8"`), from `INFO server`; `"unknown"` when that fails.
fn server_version(con: &mut PooledConnection) -> String {
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query(con);
    info.ok()
        .and_then(|text| crate::version::ServerVersion::from_info(&text).ok())
        .map_or_else(|| "unknown".into(), |v| v.to_string())
}
