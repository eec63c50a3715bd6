//! [`ReadWriteLock`]: many readers or one writer, each a lease with a TTL.

use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::wait::{millis, Waiter, WAKE_WINDOW};
use super::{bad_reply, check_name, check_ttl, tagged, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(read_script, "rw_read_acquire.lua");

static_script!(write_script, "rw_write_acquire.lua");

static_script!(release_script, "rw_release.lua");

static_script!(abandon_script, "rw_abandon.lua");

static_script!(extend_script, "rw_extend.lua");

#[derive(Debug)]
struct Keys {
    writer: String,
    readers: String,
    intent: String,
    wake: String,
    waiting: String,
}

/// Whether a [`RwGuard`] holds a read lease or the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

impl RwMode {
    fn arg(self) -> &'static str {
        match self {
            RwMode::Read => "r",
            RwMode::Write => "w",
        }
    }
}

/// Many readers or one writer for one name, across processes.
///
/// Readers are leases in a sorted set (scored by expiry on the server's clock), the writer a
/// token with a millisecond expiry, so a crashed holder's share comes back after the TTL.
/// **Writers are not starved**: a writer that has to wait leaves an *intent* that keeps new
/// readers out until it gets the lock (a writer that crashes while waiting: its intent expires
/// within 2 s); readers
/// already inside finish normally; a writer that gives up withdraws its intent. Waiting is
/// woken by releases as for
/// [`Lock`](super::Lock) (a writer's release wakes up to 8 waiters, the last reader's one).
///
/// ```no_run
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let config = redkit::lock::ReadWriteLock::new(&redis, "config")?;
/// {
///     let _r = config.read()?;          // many readers at once
///     // ... read ...
/// }
/// let w = config.write()?;              // waits for the readers, keeps new ones out
/// // ... write ...
/// w.release()?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReadWriteLock {
    redis: Redis,
    keys: Arc<Keys>,
    ttl: Duration,
    wait: Duration,
}

impl ReadWriteLock {
    /// A read-write lock named `name`, leases of 30 s, a 10 s wait.
    pub fn new(redis: &Redis, name: &str) -> Result<ReadWriteLock> {
        ReadWriteLock::with_settings(
            redis,
            name,
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
    }

    /// A read-write lock named `name` whose leases last `ttl` (at least 1 ms) and whose
    /// blocking acquires wait at most `wait`.
    pub fn with_settings(
        redis: &Redis,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<ReadWriteLock> {
        check_name("rwlock.name", name)?;
        check_ttl("rwlock.ttl", ttl, false)?;
        let base = redis.key(&format!("{}:rw", tagged(DEFAULT_PREFIX, name)));
        Ok(ReadWriteLock {
            keys: Arc::new(Keys {
                writer: format!("{base}:writer"),
                readers: format!("{base}:readers"),
                intent: format!("{base}:intent"),
                wake: format!("{base}:wake"),
                waiting: format!("{base}:waiting"),
            }),
            redis: redis.unprefixed(),
            ttl,
            wait,
        })
    }

    /// Takes a read lease if no writer holds or waits for the lock; never waits.
    pub fn try_read(&self) -> Result<Option<RwGuard>> {
        self.try_mode(RwMode::Read)
    }

    /// Takes a read lease, waiting at most the configured wait.
    pub fn read(&self) -> Result<RwGuard> {
        self.timeout_mode(RwMode::Read, self.wait)
    }

    /// Takes a read lease, waiting at most `timeout` ([`Error::LockTimeout`] after).
    pub fn read_timeout(&self, timeout: Duration) -> Result<RwGuard> {
        self.timeout_mode(RwMode::Read, timeout)
    }

    /// Takes the write lock if nobody holds the lock; never waits (and leaves no intent).
    pub fn try_write(&self) -> Result<Option<RwGuard>> {
        self.try_mode(RwMode::Write)
    }

    /// Takes the write lock, waiting at most the configured wait.
    pub fn write(&self) -> Result<RwGuard> {
        self.timeout_mode(RwMode::Write, self.wait)
    }

    /// Takes the write lock, waiting at most `timeout` ([`Error::LockTimeout`] after).
    pub fn write_timeout(&self, timeout: Duration) -> Result<RwGuard> {
        self.timeout_mode(RwMode::Write, timeout)
    }

    fn try_mode(&self, mode: RwMode) -> Result<Option<RwGuard>> {
        let token = super::new_token();
        Ok(match self.attempt(mode, &token, false)? {
            Ok(()) => Some(self.guard(mode, token)),
            Err(_) => None,
        })
    }

    fn timeout_mode(&self, mode: RwMode, timeout: Duration) -> Result<RwGuard> {
        let token = super::new_token();
        let mut waiter = Waiter::new(&self.redis, &self.keys.wake, timeout);
        loop {
            match self.attempt(mode, &token, true)? {
                Ok(()) => return Ok(self.guard(mode, token)),
                Err(hint) => {
                    if waiter.left().is_zero() {
                        if mode == RwMode::Write {
                            self.abandon(&token);
                        }
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(hint);
                }
            }
        }
    }

    /// A writer that gives up withdraws its intent (best-effort: it expires anyway).
    fn abandon(&self, token: &str) {
        let call = abandon_script().key(&self.keys.intent).arg(token);
        if let Err(e) = self.redis.run_idempotent(|con| call.invoke::<i64>(con)) {
            log::debug!(
                "could not withdraw the write intent on {}: {e}",
                self.keys.intent
            );
        }
    }

    fn attempt(
        &self,
        mode: RwMode,
        token: &str,
        waiting: bool,
    ) -> Result<std::result::Result<(), Duration>> {
        let script = match mode {
            RwMode::Read => read_script(),
            RwMode::Write => write_script(),
        };
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let k = &self.keys;
        let call = script
            .key(&k.writer)
            .key(&k.readers)
            .key(&k.intent)
            .key(&k.waiting)
            .arg(token)
            .arg(millis(self.ttl))
            .arg(window);
        // Safe to resend: a second run finds our own lease.
        let reply: Vec<i64> = self.redis.run_idempotent(|con| call.invoke(con))?;
        match reply[..] {
            [1, _] => Ok(Ok(())),
            [0, wait] => Ok(Err(Duration::from_millis(wait.unsigned_abs()))),
            _ => Err(bad_reply("rwlock", format!("{reply:?}"))),
        }
    }

    fn guard(&self, mode: RwMode, token: String) -> RwGuard {
        RwGuard {
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            mode,
            token,
            done: false,
        }
    }
}

/// A read lease or the write lock of a [`ReadWriteLock`]; released by [`RwGuard::release`]
/// or, best-effort, on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwGuard {
    redis: Redis,
    keys: Arc<Keys>,
    mode: RwMode,
    token: String,
    done: bool,
}

impl std::fmt::Debug for RwGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwGuard")
            .field("mode", &self.mode)
            .field("writer_key", &self.keys.writer)
            .finish_non_exhaustive()
    }
}

impl RwGuard {
    /// Read or write.
    pub fn mode(&self) -> RwMode {
        self.mode
    }

    /// Renews the lease to expire `ttl` from now. `false` when it had expired.
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("rwlock.ttl", ttl, false)?;
        let call = extend_script()
            .key(&self.keys.writer)
            .key(&self.keys.readers)
            .arg(&self.token)
            .arg(self.mode.arg())
            .arg(millis(ttl));
        let renewed: i64 = self.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(renewed == 1)
    }

    /// Releases it. Returns whether it was still held (`false`: it had expired).
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.give_back()
    }

    fn give_back(&self) -> Result<bool> {
        let k = &self.keys;
        let released: i64 = release_script()
            .key(&k.writer)
            .key(&k.readers)
            .key(&k.wake)
            .key(&k.waiting)
            .arg(&self.token)
            .arg(self.mode.arg())
            .arg(millis(WAKE_WINDOW))
            .run(&self.redis)?;
        Ok(released == 1)
    }
}

impl Drop for RwGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.give_back() {
            warn!(
                "could not release {:?} lock {} (it expires with its TTL): {e}",
                self.mode, self.keys.writer
            );
        }
    }
}
