//! [`Semaphore`]: N permits by name, each a lease with a TTL.

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

static_script!(acquire_script, "semaphore_acquire.lua");

static_script!(release_script, "semaphore_release.lua");

static_script!(extend_script, "semaphore_extend.lua");

static_script!(count_script, "semaphore_count.lua");

#[derive(Debug)]
struct Keys {
    permits: String,
    wake: String,
    waiting: String,
    fence: String,
}

/// Configures a [`Semaphore`]; made by [`Semaphore::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct SemaphoreBuilder {
    redis: Redis,
    name: String,
    permits: u64,
    prefix: String,
    lease: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

impl SemaphoreBuilder {
    /// How long a permit is leased for unless extended (at least 1 ms, at most a year; at
    /// least 30 ms with the watchdog): a holder that crashes gives its permit back after this
    /// long. Defaults to 30 s.
    pub fn lease(mut self, ttl: Duration) -> SemaphoreBuilder {
        self.lease = ttl;
        self
    }

    /// How long [`Semaphore::acquire`] waits for a permit. Defaults to 10 s.
    pub fn wait(mut self, wait: Duration) -> SemaphoreBuilder {
        self.wait = wait;
        self
    }

    /// The key prefix, before the semaphore's name. Defaults to `redkit:lock:`.
    pub fn prefix(mut self, prefix: &str) -> SemaphoreBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Whether the [watchdog](super#the-watchdog) renews every permit at a third of its
    /// lease until it is given back. Defaults to `false`.
    pub fn watchdog(mut self, on: bool) -> SemaphoreBuilder {
        self.watchdog = on;
        self
    }

    /// Confirms every acquisition on replicas before the permit is returned (see
    /// [`ReplicaAck`]). Defaults to none.
    pub fn replica_ack(mut self, ack: ReplicaAck) -> SemaphoreBuilder {
        self.ack = Some(ack);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Semaphore> {
        check_name("semaphore.name", &self.name)?;
        check_ttl("semaphore.lease", self.lease, self.watchdog)?;
        if self.permits == 0 {
            return Err(Error::config("semaphore.permits", "must be at least 1"));
        }
        if let Some(ack) = &self.ack {
            super::check_ack(&self.redis, "semaphore.replica_ack", ack)?;
        }
        let permits = self
            .redis
            .key(&format!("{}:sem", tagged(&self.prefix, &self.name)));
        Ok(Semaphore {
            keys: Arc::new(Keys {
                wake: format!("{permits}:wake"),
                waiting: format!("{permits}:waiting"),
                fence: format!("{permits}:fence"),
                permits,
            }),
            name: self.name.into(),
            redis: self.redis,
            permits: self.permits,
            lease: self.lease,
            wait: self.wait,
            watchdog: self.watchdog,
            ack: self.ack,
        })
    }
}

/// At most N holders at a time for one name, across processes: each [`Permit`] is a lease
/// (a random id in a sorted set, scored by its expiry on the server's clock), so the permit
/// of a holder that crashed comes back after the lease TTL. Waiting is woken by releases like
/// [`Lock`](super::Lock)'s (see [Waiting](super#waiting)).
///
/// Every user of one semaphore name must use the same number of permits: the number is sent
/// with each acquire, not stored.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::lock::Semaphore;
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// // At most 3 exports run at once, cluster-wide.
/// let exports = Semaphore::new(&redis, "exports", 3)?;
/// let permit = exports.acquire()?;
/// // ... export; extend the lease if it runs long ...
/// permit.extend(Duration::from_secs(30))?;
/// permit.release()?;
/// println!("{} permits free", exports.available()?);
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    redis: Redis,
    name: Arc<str>,
    keys: Arc<Keys>,
    permits: u64,
    lease: Duration,
    wait: Duration,
    watchdog: bool,
    ack: Option<ReplicaAck>,
}

impl Semaphore {
    /// A semaphore named `name` with `permits` permits, leases of 30 s and a 10 s wait.
    pub fn new(redis: &Redis, name: &str, permits: u64) -> Result<Semaphore> {
        Semaphore::builder(redis, name, permits).build()
    }

    /// A builder for a semaphore named `name` with `permits` permits (at least 1).
    pub fn builder(redis: &Redis, name: &str, permits: u64) -> SemaphoreBuilder {
        SemaphoreBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            permits,
            prefix: DEFAULT_PREFIX.to_owned(),
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            watchdog: false,
            ack: None,
        }
    }

    /// The number of permits.
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// The key of the permits' sorted set.
    pub fn key(&self) -> &str {
        &self.keys.permits
    }

    /// How many permits are free now (expired leases count as free).
    pub fn available(&self) -> Result<u64> {
        Ok(self.permits.saturating_sub(self.held()?))
    }

    /// How many permits are held now (expired leases not counted).
    pub fn held(&self) -> Result<u64> {
        let call = count_script().key(&self.keys.permits);
        self.redis.run_idempotent(|con| call.invoke(con))
    }

    /// Takes a permit if one is free now; never waits.
    pub fn try_acquire(&self) -> Result<Option<Permit>> {
        let id = super::new_token();
        let start = Instant::now();
        match self.attempt(&id, false)? {
            Ok(fence) => self.permit(id, fence, start).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Takes a permit, waiting at most the configured [wait](SemaphoreBuilder::wait).
    pub fn acquire(&self) -> Result<Permit> {
        self.acquire_timeout(self.wait)
    }

    /// Takes a permit, waiting at most `timeout`; fails with [`Error::LockTimeout`] when
    /// none came free in time.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        // One id for every attempt: at most one of them takes a permit.
        let id = super::new_token();
        let mut waiter = Waiter::new(&self.redis, vec![self.keys.wake.clone()], timeout);
        loop {
            let start = Instant::now();
            match self.attempt(&id, true)? {
                Ok(fence) => return self.permit(id, fence, start),
                Err(hint) => {
                    if waiter.left().is_zero() {
                        return Err(Error::LockTimeout { waited: timeout });
                    }
                    waiter.wait(hint);
                }
            }
        }
    }

    /// One attempt: `Ok(Ok(fence))` when taken, `Ok(Err(wait_hint))` when all are held.
    fn attempt(&self, id: &str, waiting: bool) -> Result<std::result::Result<u64, Duration>> {
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let call = acquire_script()
            .key(&self.keys.permits)
            .key(&self.keys.waiting)
            .key(&self.keys.fence)
            .arg(self.permits)
            .arg(millis(self.lease))
            .arg(id)
            .arg(window);
        // Safe to resend: a second run finds our own lease and renews it.
        let (reply, confirmed) = self.redis.run_idempotent(|con| {
            let reply: Vec<i64> = call.invoke(con)?;
            let confirmed = match (&self.ack, reply.first()) {
                (Some(ack), Some(1)) => Some(ack.confirm(&self.redis, con, &self.name)),
                _ => None,
            };
            Ok((reply, confirmed))
        })?;
        if let Some(Err(e)) = confirmed {
            if let Err(re) = give_back(&self.redis, &self.keys, id) {
                warn!(
                    "semaphore {}: not confirmed by replicas, and giving the permit back \
                     failed too (it expires with its lease): {re}",
                    self.name
                );
            }
            return Err(e);
        }
        match reply[..] {
            [1, _, fence] => Ok(Ok(fence.unsigned_abs())),
            [0, wait] => Ok(Err(
                Duration::from_millis(wait.unsigned_abs()).min(MAX_BLOCK)
            )),
            _ => Err(bad_reply("semaphore", format!("{reply:?}"))),
        }
    }

    fn permit(&self, id: String, fence: u64, start: Instant) -> Result<Permit> {
        let renew = PermitRenew {
            keys: self.keys.clone(),
            id: id.clone(),
        };
        let lease = Arc::new(Lease::new(
            self.name.clone(),
            "semaphore permit",
            fence,
            self.lease,
            start,
            Box::new(renew),
        ));
        let permit = Permit {
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            lease,
            id,
            done: false,
        };
        if self.watchdog {
            // On failure the permit is dropped, which gives it back.
            super::lease::watch(&self.redis, &permit.lease)?;
        }
        Ok(permit)
    }
}

/// Renews a permit's lease while it is held.
struct PermitRenew {
    keys: Arc<Keys>,
    id: String,
}

impl Renew for PermitRenew {
    fn renew(&self, redis: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool> {
        let call = extend_script()
            .key(&self.keys.permits)
            .arg(millis(ttl))
            .arg(&self.id);
        let renewed: i64 = call_bounded(redis, bound, |con| call.invoke(con))?;
        Ok(renewed == 1)
    }
}

fn give_back(redis: &Redis, keys: &Keys, id: &str) -> Result<bool> {
    let released: i64 = release_script()
        .key(&keys.permits)
        .key(&keys.wake)
        .key(&keys.waiting)
        .arg(id)
        .arg(millis(WAKE_WINDOW))
        .run(redis)?;
    Ok(released == 1)
}

/// A permit of a [`Semaphore`], held until released or dropped (best-effort, logged on
/// failure; the lease then expires after its TTL). `Send`: it can be released on another
/// thread.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct Permit {
    redis: Redis,
    keys: Arc<Keys>,
    lease: Arc<Lease>,
    id: String,
    done: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.keys.permits)
            .field("fencing_token", &self.lease.fence)
            .field("held", &self.lease.is_held())
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The fencing token of this acquisition: greater than that of every earlier permit of
    /// this semaphore (see [Fencing tokens](super#fencing-tokens)). A resource that admits
    /// at most N holders can refuse a token below the N-th highest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fence
    }

    /// Whether the permit is still held, as far as this process knows, without a round
    /// trip (as [`LockGuard::is_held`](super::LockGuard::is_held)).
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long the permit is surely still held; zero once not.
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// Renews the lease to expire `ttl` from now (at least 1 ms, at most a year); later
    /// watchdog renewals use `ttl` too. `false`, and nothing renewed, when it had already
    /// expired (the permit is then marked lost).
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("semaphore.lease", ttl, false)?;
        self.lease.set_ttl(ttl);
        self.lease.extend(&self.redis, ttl)
    }

    /// Gives the permit back. Returns whether it was still held: `false` when the lease had
    /// expired (one more holder than permits may have run meanwhile).
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.give_back()
    }

    fn give_back(&self) -> Result<bool> {
        let was_held = self.lease.mark_released();
        let released = give_back(&self.redis, &self.keys, &self.id)?;
        if !released && was_held {
            self.lease
                .signal_lost(&self.redis, "found expired at release");
        }
        Ok(released)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.give_back() {
            warn!(
                "could not give back a permit of {} (it expires with its lease): {e}",
                self.keys.permits
            );
        }
    }
}
