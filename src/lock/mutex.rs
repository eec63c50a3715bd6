//! [`Lock`]: a mutex by name, with tokens, fencing, a watchdog and fast hand-off.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;

use super::wait::{millis, Waiter, WAKE_WINDOW};
use super::watchdog::Task;
use super::{bad_reply, check_name, check_ttl, drift, tagged, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "lock_acquire.lua");

static_script!(release_script, "lock_release.lua");

static_script!(extend_script, "lock_extend.lua");

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
}

impl LockKeys {
    pub(crate) fn new(redis: &Redis, prefix: &str, name: &str) -> LockKeys {
        let lock = redis.key(&tagged(prefix, name));
        LockKeys {
            fence: format!("{lock}:fence"),
            wake: format!("{lock}:wake"),
            waiting: format!("{lock}:waiting"),
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
}

impl LockBuilder {
    /// How long an acquisition holds the lock unless extended or renewed by the watchdog
    /// (at least 1 ms; at least 30 ms with the watchdog). Defaults to 30 s.
    pub fn ttl(mut self, ttl: Duration) -> LockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long [`Lock::acquire`] waits for the lock. Defaults to 10 s.
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
        let keys = LockKeys::new(&self.redis, &self.prefix, &self.name);
        Ok(Lock {
            redis: self.redis,
            name: self.name.into(),
            keys: Arc::new(keys),
            ttl: self.ttl,
            wait: self.wait,
            watchdog: self.watchdog,
        })
    }
}

/// A mutual-exclusion lock by name, shared by every process that uses the same name on the
/// same server. Cheap to clone; see the [module docs](super) for the safety model.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::Redis;
///
/// let redis = Redis::connect("redis://127.0.0.1/")?;
/// let lock = redis.lock("invoices")?;               // TTL 30 s, waits up to 10 s
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

    /// The key of the fencing counter (it never expires, so tokens keep increasing).
    pub fn fence_key(&self) -> &str {
        &self.keys.fence
    }

    /// The TTL of each acquisition.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lock if it is free now; never waits. `None` when another holder has it.
    pub fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let token = super::new_token();
        let start = Instant::now();
        match self.attempt(&token, false)? {
            Ok(fence) => self.guard(token, fence, start).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Takes the lock, waiting at most the configured [wait](LockBuilder::wait).
    pub fn acquire(&self) -> Result<LockGuard> {
        self.acquire_timeout(self.wait)
    }

    /// Takes the lock, waiting at most `timeout`; fails with [`Error::LockTimeout`] when it
    /// stayed held by others. A release wakes one waiter within a round trip (see the
    /// [module docs](super#waiting)); an expiry is noticed when it happens.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        // One token for every attempt: at most one of them takes the lock.
        let token = super::new_token();
        let mut waiter = Waiter::new(&self.redis, &self.keys.wake, timeout);
        loop {
            let start = Instant::now();
            match self.attempt(&token, true)? {
                Ok(fence) => return self.guard(token, fence, start),
                Err(pttl) => {
                    if waiter.left().is_zero() {
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(pttl);
                }
            }
        }
    }

    /// Runs `f` while holding the lock (acquired with the configured wait) and releases it
    /// afterwards, also when `f` panics (then best-effort, on drop). `f` gets the guard to
    /// read the fencing token or check [`LockGuard::is_held`] between steps.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let total = redis.lock("ledger")?.with_lock(|guard| {
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

    /// One attempt: `Ok(Ok(fence))` when taken, `Ok(Err(wait_hint))` when held by another.
    fn attempt(&self, token: &str, waiting: bool) -> Result<std::result::Result<u64, Duration>> {
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let call = acquire_script()
            .key(&self.keys.lock)
            .key(&self.keys.fence)
            .key(&self.keys.waiting)
            .arg(token)
            .arg(millis(self.ttl))
            .arg(window);
        // Safe to resend: a second run finds our own token and returns the same fence.
        let reply: Vec<i64> = self.redis.run_idempotent(|con| call.invoke(con))?;
        match reply[..] {
            [1, fence] => Ok(Ok(fence.unsigned_abs())),
            [0, pttl] if pttl > 0 => Ok(Err(Duration::from_millis(pttl.unsigned_abs()))),
            // No expiry (set by hand), or expired just now: ask again soon.
            [0, _] => Ok(Err(super::wait::MAX_BLOCK)),
            _ => Err(bad_reply("lock", format!("{reply:?}"))),
        }
    }

    fn guard(&self, token: String, fence: u64, start: Instant) -> Result<LockGuard> {
        let lease = Arc::new(Lease {
            name: self.name.clone(),
            keys: self.keys.clone(),
            value: format!("{token}:{fence}"),
            token_len: token.len(),
            fence,
            ttl_ms: AtomicU64::new(millis(self.ttl)),
            valid_until: Mutex::new(start + self.ttl - drift(self.ttl)),
            state: AtomicU8::new(HELD),
            holds: AtomicU32::new(1),
        });
        let guard = LockGuard {
            lease,
            redis: self.redis.clone(),
            done: false,
        };
        if self.watchdog {
            let task: Arc<dyn Task> = guard.lease.clone();
            let weak: Weak<dyn Task> = Arc::downgrade(&task);
            // On failure the guard is dropped, which releases the lock.
            super::handle_locks(&self.redis)?.schedule(&self.redis, weak, self.ttl / 3)?;
        }
        Ok(guard)
    }
}

const HELD: u8 = 0;
const RELEASED: u8 = 1;
const LOST: u8 = 2;

/// One acquisition, shared by its guard, its reentrant guards and the watchdog.
pub(crate) struct Lease {
    name: Arc<str>,
    keys: Arc<LockKeys>,
    /// `"token:fence"`, the lock key's value while we hold it.
    value: String,
    token_len: usize,
    fence: u64,
    /// The TTL renewals use (changed by `extend`).
    ttl_ms: AtomicU64,
    /// Until when we surely hold it, on our clock (time of the request + TTL - drift).
    valid_until: Mutex<Instant>,
    state: AtomicU8,
    /// Guards sharing this acquisition (reentrancy).
    holds: AtomicU32,
}

impl Lease {
    fn token(&self) -> &str {
        &self.value[..self.token_len]
    }

    fn is_held(&self) -> bool {
        self.state.load(Ordering::Acquire) == HELD && Instant::now() < *self.valid_until.lock()
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        *self.valid_until.lock() = sent + ttl - drift(ttl);
    }

    /// Marks the lease lost; `true` when it was held until now (not released, not lost).
    fn mark_lost(&self) -> bool {
        self.state
            .compare_exchange(HELD, LOST, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Runs the extend script: whether it was still ours.
    fn extend(&self, redis: &Redis, ttl: Duration) -> Result<bool> {
        let call = extend_script()
            .key(&self.keys.lock)
            .arg(&self.value)
            .arg(millis(ttl));
        // Safe to resend: it sets an expiry from now, once or twice.
        let renewed: i64 = redis.run_idempotent(|con| call.invoke(con))?;
        Ok(renewed == 1)
    }

    fn lost(&self, redis: &Redis) {
        if self.mark_lost() {
            warn!(
                "lock {} lost (fencing token {}): it expired or was taken over",
                self.name, self.fence
            );
            redis.emit(Event::LockLost {
                name: self.name.to_string(),
                fencing_token: self.fence,
            });
        }
    }
}

impl Task for Lease {
    fn run(&self, redis: &Redis) -> Option<Duration> {
        if self.state.load(Ordering::Acquire) != HELD {
            return None;
        }
        let ttl = Duration::from_millis(self.ttl_ms.load(Ordering::Acquire));
        let sent = Instant::now();
        match self.extend(redis, ttl) {
            Ok(true) => {
                if self.state.load(Ordering::Acquire) == HELD {
                    self.renewed(sent, ttl);
                }
                Some(ttl / 3)
            }
            Ok(false) => {
                // After a release the lock is gone too: `lost` tells them apart.
                self.lost(redis);
                None
            }
            Err(Error::Closed) => None,
            Err(e) => {
                let left = self
                    .valid_until
                    .lock()
                    .saturating_duration_since(Instant::now());
                if left.is_zero() {
                    warn!("lock {}: cannot renew it ({e})", self.name);
                    self.lost(redis);
                    return None;
                }
                log::debug!("lock {}: renewal failed ({e}); trying again", self.name);
                Some(
                    (ttl / 10)
                        .clamp(Duration::from_millis(10), Duration::from_secs(1))
                        .min(left),
                )
            }
        }
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
    redis: Redis,
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
    /// acquisition of this lock name. Pass it to the protected resource with each write and
    /// have it reject tokens lower than the highest it has seen: a holder that lost the lock
    /// (paused past its TTL) cannot then overwrite a newer holder's work.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fence
    }

    /// The random 128-bit token (32 hex digits) that identifies this acquisition on the
    /// server. Whoever has it can release the lock: do not log it.
    pub fn token(&self) -> &str {
        self.lease.token()
    }

    /// Whether we still hold the lock, as far as this process knows, without a round trip:
    /// `false` once released, once the watchdog (or [`LockGuard::extend`]) found it gone, or
    /// once its TTL (minus a small clock-drift allowance) passed since the last successful
    /// acquire or renewal. Check it before each step of long work.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// Renews the lock to expire `ttl` from now (at least 1 ms); later watchdog renewals use
    /// `ttl` too. Returns `false`, and renews nothing, when the lock was no longer ours
    /// (the guard is then marked lost).
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("lock.ttl", ttl, false)?;
        self.lease.ttl_ms.store(millis(ttl), Ordering::Release);
        let sent = Instant::now();
        let renewed = self.lease.extend(&self.redis, ttl)?;
        if renewed {
            self.lease.renewed(sent, ttl);
        } else {
            self.lease.mark_lost();
        }
        Ok(renewed)
    }

    /// The time left before the lock expires, asked from the server; `None` when it is no
    /// longer ours. `Some(Duration::MAX)` if it has no expiry (someone removed it by hand).
    pub fn remaining(&self) -> Result<Option<Duration>> {
        let call = pttl_script()
            .key(&self.lease.keys.lock)
            .arg(&self.lease.value);
        let pttl: i64 = self.redis.run_idempotent(|con| call.invoke(con))?;
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
        if self.lease.state.load(Ordering::Acquire) != HELD {
            return Ok(None);
        }
        let ttl = Duration::from_millis(self.lease.ttl_ms.load(Ordering::Acquire));
        let sent = Instant::now();
        if !self.lease.extend(&self.redis, ttl)? {
            self.lease.mark_lost();
            return Ok(None);
        }
        self.lease.renewed(sent, ttl);
        self.lease.holds.fetch_add(1, Ordering::AcqRel);
        Ok(Some(LockGuard {
            lease: self.lease.clone(),
            redis: self.redis.clone(),
            done: false,
        }))
    }

    /// Releases the lock (or, for a reentrant guard that is not the last, just this hold).
    /// Returns whether we still held it: `false` when it had expired or been taken over, so
    /// the protected work may have overlapped with another holder's.
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.release_hold()
    }

    fn release_hold(&self) -> Result<bool> {
        if self.lease.holds.fetch_sub(1, Ordering::AcqRel) > 1 {
            return Ok(self.lease.is_held());
        }
        // From here on the watchdog leaves it alone, even with a renewal in flight.
        self.lease.state.store(RELEASED, Ordering::Release);
        let keys = &self.lease.keys;
        let released: i64 = release_script()
            .key(&keys.lock)
            .key(&keys.wake)
            .key(&keys.waiting)
            .arg(&self.lease.value)
            .arg(millis(WAKE_WINDOW))
            .run(&self.redis)?;
        Ok(released == 1)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        match self.release_hold() {
            Ok(_) => {}
            Err(e) => warn!(
                "could not release lock {} (it expires with its TTL): {e}",
                self.lease.name
            ),
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
