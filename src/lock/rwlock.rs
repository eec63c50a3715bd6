//! [`ReadWriteLock`]: many readers or one writer, each a lease with a TTL, taking turns
//! fairly, woken precisely.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;

use super::ack::ReplicaAck;
use super::lease::{call_bounded, Lease, Renew};
use super::wait::{millis, Waiter, WAKE_WINDOW};
use super::{bad_reply, check_name, check_ttl, tagged, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(read_script, "rw_lib.lua" + "rw_read.lua");

static_script!(write_script, "rw_lib.lua" + "rw_write.lua");

static_script!(release_script, "rw_lib.lua" + "rw_release.lua");

static_script!(leave_script, "rw_lib.lua" + "rw_leave.lua");

static_script!(extend_script, "rw_lib.lua" + "rw_extend.lua");

#[derive(Debug)]
struct Keys {
    writer: String,
    readers: String,
    queue: String,
    queue_expiry: String,
    phase: String,
    fence: String,
    /// A waiter blocks on this followed by its queue member (`r:token` or `w:token`).
    wake: String,
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

/// Configures a [`ReadWriteLock`]; made by [`ReadWriteLock::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct RwLockBuilder {
    redis: Redis,
    name: String,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

impl RwLockBuilder {
    /// How long a read lease or the write lock lasts unless extended or renewed (at least
    /// 1 ms, at most a year; at least 30 ms with the watchdog). Defaults to 30 s.
    pub fn ttl(mut self, ttl: Duration) -> RwLockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long the blocking acquires wait. Defaults to 10 s.
    pub fn wait(mut self, wait: Duration) -> RwLockBuilder {
        self.wait = wait;
        self
    }

    /// Whether the [watchdog](super#the-watchdog) renews every guard at a third of its TTL
    /// until it is released. Defaults to `false`.
    pub fn watchdog(mut self, on: bool) -> RwLockBuilder {
        self.watchdog = on;
        self
    }

    /// Confirms every acquisition on replicas before the guard is returned (see
    /// [`ReplicaAck`]). Defaults to none.
    pub fn replica_ack(mut self, ack: ReplicaAck) -> RwLockBuilder {
        self.ack = Some(ack);
        self
    }

    /// The key prefix, before the lock's name. Defaults to `redkit:lock:`.
    pub fn prefix(mut self, prefix: &str) -> RwLockBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<ReadWriteLock> {
        check_name("rwlock.name", &self.name)?;
        check_ttl("rwlock.ttl", self.ttl, self.watchdog)?;
        if let Some(ack) = &self.ack {
            super::check_ack(&self.redis, "rwlock.replica_ack", ack)?;
        }
        let base = self
            .redis
            .key(&format!("{}:rw", tagged(&self.prefix, &self.name)));
        Ok(ReadWriteLock {
            keys: Arc::new(Keys {
                writer: format!("{base}:writer"),
                readers: format!("{base}:readers"),
                queue: format!("{base}:queue"),
                queue_expiry: format!("{base}:queue:exp"),
                phase: format!("{base}:phase"),
                fence: format!("{base}:fence"),
                wake: format!("{base}:wake:"),
            }),
            name: self.name.into(),
            redis: self.redis,
            ttl: self.ttl,
            wait: self.wait,
            watchdog: self.watchdog,
            ack: self.ack,
        })
    }
}

/// Many readers or one writer for one name, across processes.
///
/// Readers are leases in a sorted set (scored by expiry on the server's clock), the writer a
/// token with a millisecond expiry, so a crashed holder's share comes back after the TTL.
///
/// **Phase-fair**: readers and writers take turns when both wait, so neither starves. A
/// waiter queues (by arrival) on its first failed attempt. A writer that waits keeps new
/// readers out; readers already inside finish. When a writer's turn ends, every reader that
/// queued meanwhile goes in, together, before the next writer; writers go one at a time in
/// arrival order. A waiter that dies loses its place within 2 s (its place lapses unless it
/// asks again), a waiter that gives up leaves at once.
///
/// **Woken precisely**: each waiter blocks on a wake list of its own, and every release (or
/// a waiter giving up) pushes a wake-up to exactly the waiters that may enter now: all the
/// readers whose turn it is, or the writer. Nobody waits out a poll interval while the lock
/// is free for it.
///
/// Every guard carries a [fencing token](super#fencing-tokens) from one counter per lock
/// (readers and writers alike); the [watchdog](super#the-watchdog) and
/// [replica acknowledgement](ReplicaAck) work as for [`Lock`](super::Lock).
///
/// ```no_run
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let config = redkit::lock::ReadWriteLock::new(&redis, "config")?;
/// {
///     let _r = config.read()?;          // many readers at once
///     // ... read ...
/// }
/// let w = config.write()?;              // waits for the readers, keeps new ones out
/// // ... write, fenced by w.fencing_token() ...
/// w.release()?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReadWriteLock {
    redis: Redis,
    name: Arc<str>,
    keys: Arc<Keys>,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

enum Attempt {
    Taken(u64),
    /// Ask again after this long at the latest (a release wakes us sooner); our arrival.
    Held(Duration, u64),
}

impl ReadWriteLock {
    /// A read-write lock named `name`, leases of 30 s, a 10 s wait.
    pub fn new(redis: &Redis, name: &str) -> Result<ReadWriteLock> {
        ReadWriteLock::builder(redis, name).build()
    }

    /// A builder for a read-write lock named `name`.
    pub fn builder(redis: &Redis, name: &str) -> RwLockBuilder {
        RwLockBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            watchdog: false,
            ack: None,
        }
    }

    /// A read-write lock named `name` whose leases last `ttl` (at least 1 ms) and whose
    /// blocking acquires wait at most `wait` (see [`ReadWriteLock::builder`] for more).
    pub fn with_settings(
        redis: &Redis,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<ReadWriteLock> {
        ReadWriteLock::builder(redis, name)
            .ttl(ttl)
            .wait(wait)
            .build()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of the queue of waiters (a sorted set of `r:token` / `w:token` by arrival).
    pub fn queue_key(&self) -> &str {
        &self.keys.queue
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

    /// Takes the write lock if nobody holds it and nobody waits for it; never waits (and
    /// does not queue).
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
        let start = Instant::now();
        match self.attempt(mode, &token, false, 0)? {
            Attempt::Taken(fence) => self.guard(mode, token, fence, start).map(Some),
            Attempt::Held(..) => Ok(None),
        }
    }

    fn timeout_mode(&self, mode: RwMode, timeout: Duration) -> Result<RwGuard> {
        let token = super::new_token();
        let wake = format!("{}{}:{token}", self.keys.wake, mode.arg());
        let mut waiter = Waiter::new(&self.redis, vec![wake], timeout);
        let mut arrival = 0;
        loop {
            let start = Instant::now();
            match self.attempt(mode, &token, true, arrival) {
                Ok(Attempt::Taken(fence)) => return self.guard(mode, token, fence, start),
                Ok(Attempt::Held(hint, queued)) => {
                    arrival = queued;
                    if waiter.left().is_zero() {
                        self.leave(mode, &token);
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(hint);
                }
                Err(e) => {
                    self.leave(mode, &token);
                    return Err(e);
                }
            }
        }
    }

    /// A waiter that gives up leaves the queue and wakes whoever it kept out (best-effort:
    /// its place lapses anyway).
    fn leave(&self, mode: RwMode, token: &str) {
        let call = self.call(leave_script(), token).arg(mode.arg());
        if let Err(e) = self.redis.run_idempotent(|con| call.invoke::<i64>(con)) {
            log::debug!("rwlock {}: could not leave the queue: {e}", self.name);
        }
    }

    /// A call of one of the scripts with the keys and arguments they all take.
    fn call(&self, script: &crate::Script, token: &str) -> crate::ScriptCall {
        call_with(&self.keys, script, token)
    }

    fn attempt(&self, mode: RwMode, token: &str, waiting: bool, arrival: u64) -> Result<Attempt> {
        let script = match mode {
            RwMode::Read => read_script(),
            RwMode::Write => write_script(),
        };
        let call = self
            .call(script, token)
            .arg(millis(self.ttl))
            .arg(arrival)
            .arg(if waiting { "1" } else { "0" });
        // Safe to resend: a second run finds our own lease.
        let (reply, confirmed) = self.redis.run_idempotent(|con| {
            let reply: Vec<i64> = call.invoke(con)?;
            let confirmed = match (&self.ack, reply.first()) {
                (Some(ack), Some(1)) => Some(ack.confirm(&self.redis, con, &self.name)),
                _ => None,
            };
            Ok((reply, confirmed))
        })?;
        if let (Some(Err(e)), [1, fence]) = (confirmed, &reply[..]) {
            let value = format!("{token}:{fence}");
            if let Err(re) = release(&self.redis, &self.keys, mode, token, &value) {
                warn!(
                    "rwlock {}: not confirmed by replicas, and the release failed too (it \
                     expires with its TTL): {re}",
                    self.name
                );
            }
            return Err(e);
        }
        match reply[..] {
            [1, fence] => Ok(Attempt::Taken(fence.unsigned_abs())),
            [0, wait, queued] => Ok(Attempt::Held(
                Duration::from_millis(wait.unsigned_abs()),
                queued.unsigned_abs(),
            )),
            _ => Err(bad_reply("rwlock", format!("{reply:?}"))),
        }
    }

    fn guard(&self, mode: RwMode, token: String, fence: u64, start: Instant) -> Result<RwGuard> {
        let value = format!("{token}:{fence}");
        let renew = RwRenew {
            keys: self.keys.clone(),
            mode,
            token: token.clone(),
            value: value.clone(),
        };
        let kind = match mode {
            RwMode::Read => "read lease",
            RwMode::Write => "write lock",
        };
        let lease = Arc::new(Lease::new(
            self.name.clone(),
            kind,
            fence,
            self.ttl,
            start,
            Box::new(renew),
        ));
        let guard = RwGuard {
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            lease,
            mode,
            token,
            value,
            done: false,
        };
        if self.watchdog {
            super::lease::watch(&self.redis, &guard.lease)?;
        }
        Ok(guard)
    }
}

fn call_with(keys: &Keys, script: &crate::Script, token: &str) -> crate::ScriptCall {
    script
        .key(&keys.writer)
        .key(&keys.readers)
        .key(&keys.queue)
        .key(&keys.queue_expiry)
        .key(&keys.phase)
        .key(&keys.fence)
        .arg(token)
        .arg(&keys.wake)
        .arg(millis(WAKE_WINDOW))
}

fn release(redis: &Redis, keys: &Keys, mode: RwMode, token: &str, value: &str) -> Result<bool> {
    let released: i64 = call_with(keys, release_script(), token)
        .arg(mode.arg())
        .arg(value)
        .run(redis)?;
    Ok(released == 1)
}

/// Renews a read lease or the write lock while it is ours.
struct RwRenew {
    keys: Arc<Keys>,
    mode: RwMode,
    token: String,
    value: String,
}

impl Renew for RwRenew {
    fn renew(&self, redis: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool> {
        let call = call_with(&self.keys, extend_script(), &self.token)
            .arg(self.mode.arg())
            .arg(millis(ttl))
            .arg(&self.value);
        let renewed: i64 = call_bounded(redis, bound, |con| call.invoke(con))?;
        Ok(renewed == 1)
    }
}

/// A read lease or the write lock of a [`ReadWriteLock`]; released by [`RwGuard::release`]
/// or, best-effort, on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwGuard {
    redis: Redis,
    keys: Arc<Keys>,
    lease: Arc<Lease>,
    mode: RwMode,
    token: String,
    value: String,
    done: bool,
}

impl std::fmt::Debug for RwGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwGuard")
            .field("mode", &self.mode)
            .field("writer_key", &self.keys.writer)
            .field("fencing_token", &self.lease.fence)
            .field("held", &self.lease.is_held())
            .finish_non_exhaustive()
    }
}

impl RwGuard {
    /// Read or write.
    pub fn mode(&self) -> RwMode {
        self.mode
    }

    /// The fencing token of this acquisition: greater than that of every earlier read or
    /// write acquisition of this lock (see [Fencing tokens](super#fencing-tokens)). A
    /// resource that takes writes only from writers refuses a writer token below the
    /// highest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fence
    }

    /// Whether it is still held, as far as this process knows, without a round trip (as
    /// [`LockGuard::is_held`](super::LockGuard::is_held)).
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long it is surely still held; zero once not.
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// Renews the lease to expire `ttl` from now (at least 1 ms, at most a year); later
    /// watchdog renewals use `ttl` too. `false` when it had expired (it is then marked
    /// lost).
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("rwlock.ttl", ttl, false)?;
        self.lease.set_ttl(ttl);
        self.lease.extend(&self.redis, ttl)
    }

    /// Releases it. Returns whether it was still held (`false`: it had expired).
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.give_back()
    }

    fn give_back(&self) -> Result<bool> {
        let was_held = self.lease.mark_released();
        let released = release(&self.redis, &self.keys, self.mode, &self.token, &self.value)?;
        if !released && was_held {
            self.lease
                .signal_lost(&self.redis, "found expired or taken over at release");
        }
        Ok(released)
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
