//! [`Lock`]: a mutex by name, with tokens, fencing, a watchdog, fast hand-off and, on request,
//! arrival order and replica acknowledgement.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;

use super::ack::ReplicaAck;
use super::lease::{call_bounded, Lease, Renew};
use super::wait::{millis, Waiter, MAX_BLOCK, WAKE_WINDOW};
use super::{bad_reply, check_name, check_ttl, tagged, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "lock_acquire.lua");

static_script!(release_script, "lock_release.lua");

static_script!(fair_acquire_script, "fair_acquire.lua");

static_script!(fair_release_script, "fair_release.lua");

static_script!(fair_leave_script, "fair_leave.lua");

static_script!(pub(crate) extend_script, "lock_extend.lua");

static_script!(pttl_script, "lock_pttl.lua");

/// The keys of one lock; all share the hash tag `{name}`.
#[derive(Debug)]
pub(crate) struct LockKeys {
    /// The lock itself: `"token:fence"` with a millisecond expiry.
    pub(crate) lock: String,
    /// The fencing counter (never expires).
    pub(crate) fence: String,
    /// The wake list waiters `BLPOP` on.
    pub(crate) wake: String,
    /// Set by waiters: the release leaves a wake-up token only when someone waits.
    pub(crate) waiting: String,
    /// A fair lock's queue of waiters, by arrival.
    queue: String,
    /// When each queued waiter's place lapses.
    queue_expiry: String,
    /// A fair lock's waiter blocks on this followed by its token.
    waiter_wake: String,
}

impl LockKeys {
    pub(crate) fn new(redis: &Redis, prefix: &str, name: &str) -> LockKeys {
        let lock = redis.key(&tagged(prefix, name));
        LockKeys {
            fence: format!("{lock}:fence"),
            wake: format!("{lock}:wake"),
            waiting: format!("{lock}:waiting"),
            queue: format!("{lock}:queue"),
            queue_expiry: format!("{lock}:queue:exp"),
            waiter_wake: format!("{lock}:wake:"),
            lock,
        }
    }
}

/// Configures a [`Lock`]; made by [`Lock::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct LockBuilder {
    redis: Redis,
    name: String,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    fair: bool,
    ack: Option<ReplicaAck>,
}

impl LockBuilder {
    /// How long an acquisition holds the lock unless extended or renewed by the watchdog
    /// (at least 1 ms, at most a year; at least 30 ms with the watchdog). Defaults to 30 s.
    pub fn ttl(mut self, ttl: Duration) -> LockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long [`Lock::acquire`] waits for the lock (any duration: a huge one waits "for
    /// ever", without overflowing). Defaults to 10 s.
    pub fn wait(mut self, wait: Duration) -> LockBuilder {
        self.wait = wait;
        self
    }

    /// Whether the [watchdog](super#the-watchdog) renews every guard of this lock at a third
    /// of its TTL until it is released. Defaults to `false`.
    pub fn watchdog(mut self, on: bool) -> LockBuilder {
        self.watchdog = on;
        self
    }

    /// Whether waiters are served in arrival order (a *fair* lock, see
    /// [Fair locks](super#fair-locks)): a waiter queues on its first failed attempt, a
    /// release wakes the first in the queue, and nobody (not even
    /// [`Lock::try_acquire`]) takes the lock past the queue. Every user of one name should
    /// set the same: a non-fair user can still take the lock first (never at the same time).
    /// Defaults to `false`.
    pub fn fair(mut self, on: bool) -> LockBuilder {
        self.fair = on;
        self
    }

    /// Confirms every acquisition on replicas before the guard is returned (see
    /// [`ReplicaAck`]). Not on Redis Cluster. Defaults to none.
    pub fn replica_ack(mut self, ack: ReplicaAck) -> LockBuilder {
        self.ack = Some(ack);
        self
    }

    /// The key prefix, before the lock's name. Defaults to `redkit:lock:` (after the
    /// handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix), if any).
    pub fn prefix(mut self, prefix: &str) -> LockBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Lock> {
        check_name("lock.name", &self.name)?;
        check_ttl("lock.ttl", self.ttl, self.watchdog)?;
        if let Some(ack) = &self.ack {
            super::check_ack(&self.redis, "lock.replica_ack", ack)?;
        }
        let keys = LockKeys::new(&self.redis, &self.prefix, &self.name);
        Ok(Lock {
            redis: self.redis,
            name: self.name.into(),
            keys: Arc::new(keys),
            ttl: self.ttl,
            wait: self.wait,
            watchdog: self.watchdog,
            fair: self.fair,
            ack: self.ack,
        })
    }
}

/// A mutual-exclusion lock by name, shared by every process that uses the same name on the
/// same server. Cheap to clone; see the [module docs](super) for the safety model.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::Redis;
/// use redkit::lock::Lock;
///
/// let redis = Redis::connect("redis://127.0.0.1/")?;
/// let lock = Lock::new(&redis, "invoices")?;               // TTL 30 s, waits up to 10 s
/// let guard = lock.acquire()?;
/// // Hand the fencing token to the protected resource: it rejects older ones.
/// let fence = guard.fencing_token();
/// // ... work ...
/// assert!(guard.release()?, "we still held it");
///
/// // Or with settings, never waiting:
/// let lock = redkit::lock::Lock::builder(&redis, "report")
///     .ttl(Duration::from_secs(5))
///     .watchdog(true)
///     .build()?;
/// if let Some(guard) = lock.try_acquire()? {
///     // ... long work: the watchdog keeps renewing; check `guard.is_held()` between steps.
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lock {
    redis: Redis,
    name: Arc<str>,
    keys: Arc<LockKeys>,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    fair: bool,
    ack: Option<ReplicaAck>,
}

/// A lock as the server holds it: [`Lock::inspect`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The lock's name.
    pub name: String,
    /// Its key.
    pub key: String,
    /// The holder (the first 8 characters of its token); `None` when free.
    pub holder: Option<String>,
    /// How long it is still held; `None` when free (or held without an expiry).
    pub ttl: Option<Duration>,
    /// The holder's fencing token.
    pub fence: Option<u64>,
    /// The last fencing token issued for this name (held or not).
    pub last_fence: Option<u64>,
    /// Waiters queued (a fair lock).
    pub queued: u64,
}

/// The outcome of one acquire attempt.
enum Attempt {
    Taken(u64),
    /// Held by another (or, for a fair lock, our turn has not come): ask again after this
    /// long at the latest; our arrival in the queue, if queued.
    Held(Duration, u64),
}

impl Lock {
    /// A lock named `name` with the default settings (TTL 30 s, wait 10 s, no watchdog).
    /// The name must not be empty nor contain `{` or `}` (it becomes the keys' hash tag).
    pub fn new(redis: &Redis, name: &str) -> Result<Lock> {
        Lock::builder(redis, name).build()
    }

    /// A builder for a lock named `name`.
    pub fn builder(redis: &Redis, name: &str) -> LockBuilder {
        LockBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            watchdog: false,
            fair: false,
            ack: None,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key that holds the lock (`"token:fence"` while held).
    pub fn key(&self) -> &str {
        &self.keys.lock
    }

    /// The key of the fencing counter (it never expires; see
    /// [Fencing](super#fencing-tokens) for what happens when the server loses it).
    pub fn fence_key(&self) -> &str {
        &self.keys.fence
    }

    /// The key of a fair lock's queue of waiters (a sorted set of tokens by arrival).
    pub fn queue_key(&self) -> &str {
        &self.keys.queue
    }

    /// The TTL of each acquisition.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether waiters are served in arrival order ([`LockBuilder::fair`]).
    pub fn is_fair(&self) -> bool {
        self.fair
    }

    /// Takes the lock if it is free now (for a fair lock: and nobody waits for it); never
    /// waits. `None` when another holder has it.
    pub fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let token = super::new_token();
        let start = Instant::now();
        match self.attempt(&token, false, 0)? {
            Attempt::Taken(fence) => self.guard(token, fence, start).map(Some),
            Attempt::Held(..) => Ok(None),
        }
    }

    /// Takes the lock, waiting at most the configured [wait](LockBuilder::wait).
    pub fn acquire(&self) -> Result<LockGuard> {
        self.acquire_timeout(self.wait)
    }

    /// Takes the lock, waiting at most `timeout`; fails with [`Error::LockTimeout`] when it
    /// stayed held by others. A release wakes a waiter within a round trip (see the
    /// [module docs](super#waiting)); an expiry is noticed when it happens.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        // One token for every attempt: at most one of them takes the lock.
        let token = super::new_token();
        let wake = if self.fair {
            format!("{}{token}", self.keys.waiter_wake)
        } else {
            self.keys.wake.clone()
        };
        let mut waiter = Waiter::new(&self.redis, vec![wake], timeout);
        let mut arrival = 0;
        loop {
            let start = Instant::now();
            let outcome = self.attempt(&token, true, arrival);
            match outcome {
                Ok(Attempt::Taken(fence)) => return self.guard(token, fence, start),
                Ok(Attempt::Held(hint, queued)) => {
                    arrival = queued;
                    if waiter.left().is_zero() {
                        self.leave(&token);
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(hint);
                }
                Err(e) => {
                    self.leave(&token);
                    return Err(e);
                }
            }
        }
    }

    /// Runs `f` while holding the lock (acquired with the configured wait) and releases it
    /// afterwards, also when `f` panics (then best-effort, on drop). `f` gets the guard to
    /// read the fencing token or check [`LockGuard::is_held`] between steps.
    ///
    /// ```no_run
    /// # use redkit::lock::Lock;
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let total = Lock::new(&redis, "ledger")?.with_lock(|guard| {
    ///     // ... protected work, fenced by guard.fencing_token() ...
    ///     42
    /// })?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn with_lock<T>(&self, f: impl FnOnce(&LockGuard) -> T) -> Result<T> {
        let guard = self.acquire()?;
        let out = f(&guard);
        guard.release()?;
        Ok(out)
    }

    /// Whether anyone holds the lock right now.
    pub fn is_locked(&self) -> Result<bool> {
        let n: i64 = self
            .redis
            .query(redis::cmd("EXISTS").arg(&self.keys.lock))?;
        Ok(n == 1)
    }

    /// What the server holds for this lock now, for operators (the `redkit lock show`
    /// command): who holds it (the first 8 characters of the holder's token: enough to tell
    /// holders apart, not to release the lock), for how long still, with which fencing
    /// token, the last token issued, and how many waiters a fair lock has queued.
    pub fn inspect(&self) -> Result<LockInfo> {
        let k = &self.keys;
        let (value, pttl, last, queued): (Option<String>, i64, Option<u64>, u64) =
            self.redis.pipeline(
                crate::Pipeline::new()
                    .cmd("GET")
                    .arg(&k.lock)
                    .cmd("PTTL")
                    .arg(&k.lock)
                    .cmd("GET")
                    .arg(&k.fence)
                    .cmd("ZCARD")
                    .arg(&k.queue),
            )?;
        let (holder, fence) = match value.as_deref().and_then(|v| v.rsplit_once(':')) {
            Some((token, fence)) => (Some(token.chars().take(8).collect()), fence.parse().ok()),
            None => (value.as_ref().map(|_| String::from("?")), None),
        };
        Ok(LockInfo {
            name: self.name.to_string(),
            key: k.lock.clone(),
            holder,
            ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            fence,
            last_fence: last,
            queued,
        })
    }

    /// One attempt (registering in the queue of a fair lock when `waiting`).
    fn attempt(&self, token: &str, waiting: bool, arrival: u64) -> Result<Attempt> {
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let k = &self.keys;
        let call = if self.fair {
            fair_acquire_script()
                .key(&k.lock)
                .key(&k.fence)
                .key(&k.queue)
                .key(&k.queue_expiry)
                .arg(token)
                .arg(millis(self.ttl))
                .arg(window)
                .arg(arrival)
        } else {
            acquire_script()
                .key(&k.lock)
                .key(&k.fence)
                .key(&k.waiting)
                .arg(token)
                .arg(millis(self.ttl))
                .arg(window)
        };
        // Safe to resend: a second run finds our own token and returns the same fence.
        let (reply, confirmed) = self.redis.run_idempotent(|con| {
            let reply: Vec<i64> = call.invoke(con)?;
            // On the connection that wrote it; a failure is an answer, not to be retried.
            let confirmed = match (&self.ack, reply.first()) {
                (Some(ack), Some(1)) => Some(ack.confirm(&self.redis, con, &self.name)),
                _ => None,
            };
            Ok((reply, confirmed))
        })?;
        if let (Some(Err(e)), [1, fence, ..]) = (confirmed, &reply[..]) {
            if let Err(re) = self.release_value(&format!("{token}:{fence}")) {
                warn!(
                    "lock {}: not confirmed by replicas, and the release failed too (it \
                     expires with its TTL): {re}",
                    self.name
                );
            }
            return Err(e);
        }
        match reply[..] {
            [1, fence, ..] => Ok(Attempt::Taken(fence.unsigned_abs())),
            [0, pttl, ..] => {
                let queued = reply.get(2).copied().unwrap_or(0).unsigned_abs();
                let hint = if pttl > 0 {
                    Duration::from_millis(pttl.unsigned_abs())
                } else {
                    // No expiry (set by hand), or expired just now: ask again soon.
                    MAX_BLOCK
                };
                Ok(Attempt::Held(hint, queued))
            }
            _ => Err(bad_reply("lock", format!("{reply:?}"))),
        }
    }

    fn release_value(&self, value: &str) -> Result<bool> {
        let k = &self.keys;
        let call = if self.fair {
            fair_release_script()
                .key(&k.lock)
                .key(&k.queue)
                .key(&k.queue_expiry)
                .arg(value)
                .arg(millis(WAKE_WINDOW))
                .arg(&k.waiter_wake)
        } else {
            release_script()
                .key(&k.lock)
                .key(&k.wake)
                .key(&k.waiting)
                .arg(value)
                .arg(millis(WAKE_WINDOW))
        };
        let released: i64 = call.run(&self.redis)?;
        Ok(released == 1)
    }

    /// A fair lock's waiter that gives up leaves the queue (best-effort: its place lapses
    /// anyway).
    fn leave(&self, token: &str) {
        if !self.fair {
            return;
        }
        let k = &self.keys;
        let call = fair_leave_script()
            .key(&k.lock)
            .key(&k.queue)
            .key(&k.queue_expiry)
            .arg(token)
            .arg(millis(WAKE_WINDOW))
            .arg(&k.waiter_wake);
        if let Err(e) = self.redis.run_idempotent(|con| call.invoke::<i64>(con)) {
            log::debug!("lock {}: could not leave the queue: {e}", self.name);
        }
    }

    fn guard(&self, token: String, fence: u64, start: Instant) -> Result<LockGuard> {
        let value = format!("{token}:{fence}");
        let renew = LockRenew {
            keys: self.keys.clone(),
            value: value.clone(),
        };
        let lease = Arc::new(Lease::new(
            self.name.clone(),
            "lock",
            fence,
            self.ttl,
            start,
            Box::new(renew),
        ));
        let guard = LockGuard {
            lease,
            lock: self.clone(),
            value,
            token_len: token.len(),
            done: false,
        };
        if self.watchdog {
            // On failure the guard is dropped, which releases the lock.
            super::lease::watch(&self.redis, &guard.lease)?;
        }
        Ok(guard)
    }
}

/// Renews a [`Lock`]'s key while it holds our value.
struct LockRenew {
    keys: Arc<LockKeys>,
    value: String,
}

impl Renew for LockRenew {
    fn renew(&self, redis: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool> {
        let call = extend_script()
            .key(&self.keys.lock)
            .arg(&self.value)
            .arg(millis(ttl));
        // Safe to resend: it sets an expiry from now, once or twice.
        let renewed: i64 = call_bounded(redis, bound, |con| call.invoke(con))?;
        Ok(renewed == 1)
    }
}

/// Proof of holding a [`Lock`]. Released by [`LockGuard::release`] or, best-effort, on drop.
///
/// The guard is `Send`: the lock belongs to its random token, not to a thread, so a guard can
/// be handed to another thread and released there. Dropping it releases the lock; a failure
/// is logged at `warn` and the lock then expires after its TTL. A guard holds a clone of its
/// [`Redis`] handle, so the handle stays open while guards exist.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    lease: Arc<Lease>,
    lock: Lock,
    /// `"token:fence"`, the lock key's value while we hold it.
    value: String,
    token_len: usize,
    done: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is left out: whoever has it can release the lock.
        f.debug_struct("LockGuard")
            .field("name", &self.lease.name)
            .field("fencing_token", &self.lease.fence)
            .field("held", &self.lease.is_held())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// The fencing token of this acquisition: greater than the token of every earlier
    /// acquisition of this lock name, also after the server lost the counter (see
    /// [Fencing tokens](super#fencing-tokens)). Pass it to the protected resource with each
    /// write and have it reject tokens lower than the highest it has seen: a holder that lost
    /// the lock (paused past its TTL) cannot then overwrite a newer holder's work.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fence
    }

    /// The random 128-bit token (32 hex digits) that identifies this acquisition on the
    /// server. Whoever has it can release the lock: do not log it.
    pub fn token(&self) -> &str {
        &self.value[..self.token_len]
    }

    /// Whether we still hold the lock, as far as this process knows, without a round trip:
    /// `false` once released, once the watchdog (or [`LockGuard::extend`]) found it gone, or
    /// once its TTL (minus a small clock-drift allowance) passed since the last successful
    /// acquire or renewal. Check it before each step of long work.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long the lock is surely still held (see [`LockGuard::is_held`]); zero once not.
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// Renews the lock to expire `ttl` from now (at least 1 ms, at most a year); later
    /// watchdog renewals use `ttl` too. Returns `false`, and renews nothing, when the lock
    /// was no longer ours (the guard is then marked lost).
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("lock.ttl", ttl, false)?;
        self.lease.set_ttl(ttl);
        self.lease.extend(&self.lock.redis, ttl)
    }

    /// The time left before the lock expires, asked from the server; `None` when it is no
    /// longer ours. `Some(Duration::MAX)` if it has no expiry (someone removed it by hand).
    pub fn remaining(&self) -> Result<Option<Duration>> {
        let call = pttl_script().key(&self.lock.keys.lock).arg(&self.value);
        let pttl: i64 = self.lock.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(match pttl {
            -1 => Some(Duration::MAX),
            p if p >= 0 => Some(Duration::from_millis(p.unsigned_abs())),
            _ => None,
        })
    }

    /// Acquires the same lock again through this guard (reentrancy): checks with the server
    /// that it is still ours and renews it for the lock's current TTL, then returns a second
    /// guard for the same acquisition (same token, same fencing token). The lock is released
    /// when the last of the guards is released. `None` when it is no longer ours.
    pub fn reenter(&self) -> Result<Option<LockGuard>> {
        if !self.lease.is_active() {
            return Ok(None);
        }
        if !self.lease.extend(&self.lock.redis, self.lease.ttl())? {
            return Ok(None);
        }
        self.lease.holds.fetch_add(1, Ordering::AcqRel);
        Ok(Some(LockGuard {
            lease: self.lease.clone(),
            lock: self.lock.clone(),
            value: self.value.clone(),
            token_len: self.token_len,
            done: false,
        }))
    }

    /// Releases the lock (or, for a reentrant guard that is not the last, just this hold).
    /// Returns whether we still held it: `false` when it had expired or been taken over, so
    /// the protected work may have overlapped with another holder's (a
    /// [`LockLost`](crate::Event::LockLost) event says so too, unless one was sent already).
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.release_hold()
    }

    fn release_hold(&self) -> Result<bool> {
        if self.lease.holds.fetch_sub(1, Ordering::AcqRel) > 1 {
            return Ok(self.lease.is_held());
        }
        // From here on the watchdog leaves it alone, even with a renewal in flight.
        let was_held = self.lease.mark_released();
        let released = self.lock.release_value(&self.value)?;
        if !released && was_held {
            self.lease
                .signal_lost(&self.lock.redis, "found expired or taken over at release");
        }
        Ok(released)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.release_hold() {
            warn!(
                "could not release lock {} (it expires with its TTL): {e}",
                self.lease.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_send() {
        fn send<T: Send>() {}
        send::<LockGuard>();
        fn sync<T: Send + Sync>() {}
        sync::<Lock>();
    }
}
