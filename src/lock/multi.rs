//! [`MultiLock`]: several locks by name, taken all or nothing in one script.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;

use super::ack::ReplicaAck;
use super::lease::{call_bounded, Lease, Renew};
use super::mutex::LockKeys;
use super::wait::{millis, Waiter, MAX_BLOCK, WAKE_WINDOW};
use super::{bad_reply, check_name, check_ttl, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "multi_acquire.lua");

static_script!(release_script, "multi_release.lua");

static_script!(extend_script, "multi_extend.lua");

/// Configures a [`MultiLock`]; made by [`MultiLock::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct MultiLockBuilder {
    redis: Redis,
    names: Vec<String>,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

impl MultiLockBuilder {
    /// How long an acquisition holds the locks unless extended or renewed (at least 1 ms, at
    /// most a year; at least 30 ms with the watchdog). Defaults to 30 s.
    pub fn ttl(mut self, ttl: Duration) -> MultiLockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long [`MultiLock::acquire`] waits. Defaults to 10 s.
    pub fn wait(mut self, wait: Duration) -> MultiLockBuilder {
        self.wait = wait;
        self
    }

    /// Whether the [watchdog](super#the-watchdog) renews every guard (all its locks, in one
    /// script) at a third of its TTL until it is released. Defaults to `false`.
    pub fn watchdog(mut self, on: bool) -> MultiLockBuilder {
        self.watchdog = on;
        self
    }

    /// Confirms every acquisition on replicas before the guard is returned (see
    /// [`ReplicaAck`]). Defaults to none.
    pub fn replica_ack(mut self, ack: ReplicaAck) -> MultiLockBuilder {
        self.ack = Some(ack);
        self
    }

    /// The key prefix, before each lock's name; the same as the single locks it should
    /// exclude. Defaults to `redkit:lock:`.
    pub fn prefix(mut self, prefix: &str) -> MultiLockBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Checks the settings: at least one name, no name twice, and on Redis Cluster every
    /// lock in one hash slot (one script touches them all).
    pub fn build(self) -> Result<MultiLock> {
        if self.names.is_empty() {
            return Err(Error::config("multilock.names", "needs at least one name"));
        }
        for (i, name) in self.names.iter().enumerate() {
            check_name("multilock.names", name)?;
            if self.names[..i].contains(name) {
                return Err(Error::config(
                    "multilock.names",
                    format!("`{name}` is named twice"),
                ));
            }
        }
        check_ttl("multilock.ttl", self.ttl, self.watchdog)?;
        if let Some(ack) = &self.ack {
            super::check_ack(&self.redis, "multilock.replica_ack", ack)?;
        }
        let keys: Vec<LockKeys> = self
            .names
            .iter()
            .map(|n| LockKeys::new(&self.redis, &self.prefix, n))
            .collect();
        if self.redis.config().cluster.is_some() {
            let slot = |k: &LockKeys| crate::cluster::route::slot(k.lock.as_bytes());
            if keys.iter().any(|k| slot(k) != slot(&keys[0])) {
                return Err(Error::config(
                    "multilock.names",
                    "on Redis Cluster every lock of a multi-lock must be in one hash slot",
                ));
            }
        }
        let label: Arc<str> = self.names.join("+").into();
        Ok(MultiLock {
            inner: Arc::new(Inner {
                redis: self.redis,
                names: self.names,
                label,
                keys,
                ttl: self.ttl,
                wait: self.wait,
                watchdog: self.watchdog,
                ack: self.ack,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    redis: Redis,
    names: Vec<String>,
    /// The names joined with `+`, for logs and events.
    label: Arc<str>,
    keys: Vec<LockKeys>,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

/// Several [`Lock`](super::Lock)s taken together, all or nothing, in one script: either every
/// one of them is free and all are taken at once, or none is. Each is an ordinary lock (same
/// keys, same values), so a multi-lock over `a` and `b` excludes a single lock `a` and
/// another multi-lock over `b` and `c`.
///
/// Since nothing is ever held while waiting for the rest, multi-locks cannot deadlock each
/// other, whatever order their names come in (a waiter holding `a` while waiting for `b`,
/// and another holding `b` waiting for `a`, cannot happen). A waiting acquire blocks on the
/// wake lists of all its locks at once: any release among them wakes it, and it tries
/// again. Each lock gets its own fencing token.
///
/// On Redis Cluster one script can only touch one hash slot, and each lock's name is its
/// keys' hash tag: a multi-lock there needs names whose keys share a slot (the builder
/// checks).
///
/// ```no_run
/// use redkit::lock::MultiLock;
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// // Move money between two accounts: both locked, or neither.
/// let both = MultiLock::new(&redis, &["account:17", "account:42"])?;
/// let guard = both.acquire()?;
/// let fences = guard.fencing_tokens().to_vec(); // one per account, in order
/// // ... debit 17 and credit 42, each write fenced by its account's token ...
/// # let _ = fences;
/// guard.release()?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MultiLock {
    inner: Arc<Inner>,
}

impl MultiLock {
    /// A multi-lock over `names` with the default settings (TTL 30 s, wait 10 s).
    pub fn new(redis: &Redis, names: &[&str]) -> Result<MultiLock> {
        MultiLock::builder(redis, names).build()
    }

    /// A builder for a multi-lock over `names`.
    pub fn builder(redis: &Redis, names: &[&str]) -> MultiLockBuilder {
        MultiLockBuilder {
            redis: redis.unprefixed(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            watchdog: false,
            ack: None,
        }
    }

    /// The names, in order.
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// Takes every lock if all are free now; never waits. `None` when any is held.
    pub fn try_acquire(&self) -> Result<Option<MultiLockGuard>> {
        let token = super::new_token();
        let start = Instant::now();
        match self.attempt(&token, false)? {
            Ok(fences) => self.guard(token, fences, start).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Takes every lock, waiting at most the configured [wait](MultiLockBuilder::wait).
    pub fn acquire(&self) -> Result<MultiLockGuard> {
        self.acquire_timeout(self.inner.wait)
    }

    /// Takes every lock, waiting at most `timeout`; fails with [`Error::LockTimeout`] when
    /// some stayed held.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<MultiLockGuard> {
        let token = super::new_token();
        let wakes = self.inner.keys.iter().map(|k| k.wake.clone()).collect();
        let mut waiter = Waiter::new(&self.inner.redis, wakes, timeout);
        loop {
            let start = Instant::now();
            match self.attempt(&token, true)? {
                Ok(fences) => return self.guard(token, fences, start),
                Err(hint) => {
                    if waiter.left().is_zero() {
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(hint);
                }
            }
        }
    }

    fn attempt(
        &self,
        token: &str,
        waiting: bool,
    ) -> Result<std::result::Result<Vec<u64>, Duration>> {
        let inner = &*self.inner;
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let mut call = acquire_script().call();
        for k in &inner.keys {
            call = call.key(&k.lock).key(&k.fence).key(&k.waiting);
        }
        let call = call.arg(token).arg(millis(inner.ttl)).arg(window);
        // Safe to resend: a second run finds our own tokens and returns the same fences.
        let (reply, confirmed) = inner.redis.run_idempotent(|con| {
            let reply: Vec<i64> = call.invoke(con)?;
            let confirmed = match (&inner.ack, reply.first()) {
                (Some(ack), Some(1)) => Some(ack.confirm(&inner.redis, con, &inner.label)),
                _ => None,
            };
            Ok((reply, confirmed))
        })?;
        if let Some(Err(e)) = confirmed {
            if let Err(re) = release(inner, token) {
                warn!(
                    "multi-lock {}: not confirmed by replicas, and the release failed too \
                     (the locks expire with their TTL): {re}",
                    inner.label
                );
            }
            return Err(e);
        }
        match reply.split_first() {
            Some((&1, fences)) if fences.len() == inner.keys.len() => {
                Ok(Ok(fences.iter().map(|f| f.unsigned_abs()).collect()))
            }
            Some((&0, [wait])) => Ok(Err(if *wait > 0 {
                Duration::from_millis(wait.unsigned_abs())
            } else {
                MAX_BLOCK
            })),
            _ => Err(bad_reply("multilock", format!("{reply:?}"))),
        }
    }

    fn guard(&self, token: String, fences: Vec<u64>, start: Instant) -> Result<MultiLockGuard> {
        let inner = &*self.inner;
        let renew = MultiRenew {
            lock: self.clone(),
            token: token.clone(),
        };
        let lease = Arc::new(Lease::new(
            inner.label.clone(),
            "multi-lock",
            fences.iter().copied().max().unwrap_or(0),
            inner.ttl,
            start,
            Box::new(renew),
        ));
        let guard = MultiLockGuard {
            lock: self.clone(),
            lease,
            token,
            fences,
            done: false,
        };
        if inner.watchdog {
            super::lease::watch(&inner.redis, &guard.lease)?;
        }
        Ok(guard)
    }
}

/// Releases what `token` holds of the multi-lock; how many were still ours.
fn release(inner: &Inner, token: &str) -> Result<usize> {
    let mut call = release_script().call();
    for k in &inner.keys {
        call = call.key(&k.lock).key(&k.wake).key(&k.waiting);
    }
    let released: i64 = call.arg(token).arg(millis(WAKE_WINDOW)).run(&inner.redis)?;
    Ok(usize::try_from(released).unwrap_or(0))
}

struct MultiRenew {
    lock: MultiLock,
    token: String,
}

impl Renew for MultiRenew {
    fn renew(&self, redis: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool> {
        let mut call = extend_script().call();
        for k in &self.lock.inner.keys {
            call = call.key(&k.lock);
        }
        let call = call.arg(&self.token).arg(millis(ttl));
        let renewed: i64 = call_bounded(redis, bound, |con| call.invoke(con))?;
        Ok(renewed == 1)
    }
}

/// Proof of holding every lock of a [`MultiLock`]. Released by [`MultiLockGuard::release`]
/// or, best-effort, on drop.
#[must_use = "the locks are released as soon as the guard is dropped"]
pub struct MultiLockGuard {
    lock: MultiLock,
    lease: Arc<Lease>,
    token: String,
    fences: Vec<u64>,
    done: bool,
}

impl std::fmt::Debug for MultiLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiLockGuard")
            .field("names", &self.lock.inner.names)
            .field("fencing_tokens", &self.fences)
            .field("held", &self.lease.is_held())
            .finish_non_exhaustive()
    }
}

impl MultiLockGuard {
    /// The fencing token of each lock, in the order of the names: each greater than every
    /// earlier token of that lock name (single locks included).
    pub fn fencing_tokens(&self) -> &[u64] {
        &self.fences
    }

    /// The fencing token of the lock `name`, if it is one of them.
    pub fn fencing_token(&self, name: &str) -> Option<u64> {
        let i = self.lock.inner.names.iter().position(|n| n == name)?;
        self.fences.get(i).copied()
    }

    /// Whether every lock is still held, as far as this process knows, without a round trip.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long the locks are surely still held; zero once not.
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// Renews every lock to expire `ttl` from now (at least 1 ms, at most a year), if all are
    /// still ours; `false` otherwise (nothing renewed, the guard marked lost).
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("multilock.ttl", ttl, false)?;
        self.lease.set_ttl(ttl);
        self.lease.extend(&self.lock.inner.redis, ttl)
    }

    /// Releases every lock. Returns whether all were still ours.
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.give_back()
    }

    fn give_back(&self) -> Result<bool> {
        let inner = &*self.lock.inner;
        let was_held = self.lease.mark_released();
        let released = release(inner, &self.token)?;
        let all = released == inner.keys.len();
        if !all && was_held {
            self.lease.signal_lost(
                &inner.redis,
                &format!(
                    "{} of {} locks were expired or taken over at release",
                    inner.keys.len() - released,
                    inner.keys.len()
                ),
            );
        }
        Ok(all)
    }
}

impl Drop for MultiLockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.give_back() {
            warn!(
                "could not release multi-lock {} (the locks expire with their TTL): {e}",
                self.lock.inner.label
            );
        }
    }
}
