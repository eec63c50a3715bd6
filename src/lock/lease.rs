//! One acquisition of any lock of the family (a [`Lock`](super::Lock) guard, a semaphore
//! permit, a read-write guard, a Redlock, a fair lock, a multi-lock): its fencing token, how
//! long it is surely held, whether it was released or lost, and its renewal by the watchdog.
//!
//! A lease is shared by its guard and, weakly, by the watchdog. Whoever first finds it lost
//! (a renewal that finds another token, a renewal deadline that passes, a release or an
//! extension that finds it gone) marks it lost and sends one
//! [`LockLost`](crate::Event::LockLost) event.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use parking_lot::Mutex;

use super::drift;
use super::watchdog::Task;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::Redis;

/// How a kind of lock renews its lease on the server.
pub(crate) trait Renew: Send + Sync {
    /// Renews the lease to expire `ttl` from now, each server call bounded by `bound` (the
    /// watchdog's budget; `None`: the handle's own timeouts and retries). `Ok(false)` when
    /// it is not ours any more.
    fn renew(&self, redis: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool>;
}

const HELD: u8 = 0;
const RELEASED: u8 = 1;
const LOST: u8 = 2;

/// The shortest budget of one watchdog renewal.
const MIN_BOUND: Duration = Duration::from_millis(5);

/// One acquisition, shared by its guard(s) and the watchdog.
pub(crate) struct Lease {
    /// The lock's name, for logs and events.
    pub(crate) name: Arc<str>,
    /// What kind of lock ("lock", "semaphore permit", ...), for logs.
    pub(crate) kind: &'static str,
    /// The fencing token of the acquisition.
    pub(crate) fence: u64,
    /// The TTL renewals use (changed by `extend`).
    ttl_ms: AtomicU64,
    /// Until when we surely hold it, on our clock (time of the request + TTL - drift).
    valid_until: Mutex<Instant>,
    state: AtomicU8,
    /// Guards sharing this acquisition (reentrancy); 1 for the kinds without it.
    pub(crate) holds: AtomicU32,
    renew: Box<dyn Renew>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fence", &self.fence)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

/// Until when a lease whose request was sent at `sent` is surely held.
pub(crate) fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    let valid = ttl.saturating_sub(drift(ttl));
    crate::util::time::add(sent, valid)
}

impl Lease {
    pub(crate) fn new(
        name: Arc<str>,
        kind: &'static str,
        fence: u64,
        ttl: Duration,
        sent: Instant,
        renew: Box<dyn Renew>,
    ) -> Lease {
        Lease {
            name,
            kind,
            fence,
            ttl_ms: AtomicU64::new(super::wait::millis(ttl)),
            valid_until: Mutex::new(valid_until(sent, ttl)),
            state: AtomicU8::new(HELD),
            holds: AtomicU32::new(1),
            renew,
        }
    }

    /// The TTL renewals use.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Acquire))
    }

    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms
            .store(super::wait::millis(ttl), Ordering::Release);
    }

    /// Held: neither released nor lost, and the validity has not run out.
    pub(crate) fn is_held(&self) -> bool {
        self.state.load(Ordering::Acquire) == HELD && Instant::now() < *self.valid_until.lock()
    }

    /// Neither released nor lost (the validity may have run out).
    pub(crate) fn is_active(&self) -> bool {
        self.state.load(Ordering::Acquire) == HELD
    }

    /// How long it is surely still held; zero once passed (or released, or lost).
    pub(crate) fn validity(&self) -> Duration {
        if !self.is_active() {
            return Duration::ZERO;
        }
        self.valid_until
            .lock()
            .saturating_duration_since(Instant::now())
    }

    /// A renewal sent at `sent` for `ttl` succeeded.
    pub(crate) fn renewed(&self, sent: Instant, ttl: Duration) {
        if self.is_active() {
            *self.valid_until.lock() = valid_until(sent, ttl);
        }
    }

    /// From here on nobody renews it; returns whether it was held until now (not lost).
    pub(crate) fn mark_released(&self) -> bool {
        self.state.swap(RELEASED, Ordering::AcqRel) == HELD
    }

    /// Marks it lost and says so (a warning and one [`Event::LockLost`]), unless it was
    /// already released or lost.
    pub(crate) fn lost(&self, redis: &Redis, why: &str) {
        if self
            .state
            .compare_exchange(HELD, LOST, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.signal_lost(redis, why);
        }
    }

    /// Says that a lease we held until now turned out to be gone (a release that found it
    /// taken over, for example).
    pub(crate) fn signal_lost(&self, redis: &Redis, why: &str) {
        warn!(
            "{} {} lost (fencing token {}): {why}",
            self.kind, self.name, self.fence
        );
        redis.emit(Event::LockLost {
            name: self.name.to_string(),
            fencing_token: self.fence,
        });
    }

    /// Renews now with the handle's own timeouts and retries (an explicit `extend`); marks it
    /// lost when it is not ours any more.
    pub(crate) fn extend(&self, redis: &Redis, ttl: Duration) -> Result<bool> {
        let sent = Instant::now();
        let renewed = self.renew.renew(redis, ttl, None)?;
        if renewed {
            self.renewed(sent, ttl);
        } else {
            self.lost(redis, "it expired or was taken over");
        }
        Ok(renewed)
    }

    /// The watchdog's renewal interval for `ttl`.
    pub(crate) fn interval(ttl: Duration) -> Duration {
        (ttl / 3).max(Duration::from_millis(1))
    }
}

impl Task for Lease {
    /// Renews at a third of the TTL; a renewal gets at most the time left before the next
    /// one is due (and never more than the validity left), so that one slow server call
    /// cannot delay the lost signal. When a renewal fails, it tries again until the validity
    /// runs out, and marks the lease lost at that very moment.
    fn run(&self, redis: &Redis) -> Option<Duration> {
        if !self.is_active() {
            return None;
        }
        let ttl = self.ttl();
        let interval = Lease::interval(ttl);
        let left = self.validity();
        if left.is_zero() {
            self.lost(redis, "its renewals failed until its TTL ran out");
            return None;
        }
        let bound = interval.min(left).max(MIN_BOUND);
        let sent = Instant::now();
        match self.renew.renew(redis, ttl, Some(bound)) {
            Ok(true) => {
                self.renewed(sent, ttl);
                Some(interval.saturating_sub(sent.elapsed()))
            }
            Ok(false) => {
                // After a release the lease is gone too: `lost` tells them apart.
                self.lost(redis, "it expired or was taken over");
                None
            }
            Err(Error::Closed) => None,
            Err(e) => {
                let left = self.validity();
                if left.is_zero() {
                    self.lost(
                        redis,
                        &format!("its renewals failed until its TTL ran out ({e})"),
                    );
                    return None;
                }
                debug!(
                    "{} {}: renewal failed ({e}); trying again",
                    self.kind, self.name
                );
                let retry = (ttl / 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
                Some(retry.min(left))
            }
        }
    }
}

/// Runs `f` on one pooled connection of `redis` with every wait bounded by `bound` (checkout
/// and reply), without the handle's retries: the watchdog's way to call the server. `None`:
/// through [`Redis::run_idempotent`] (the call must be safe to resend).
pub(crate) fn call_bounded<T>(
    redis: &Redis,
    bound: Option<Duration>,
    mut f: impl FnMut(&mut crate::PooledConnection) -> Result<T>,
) -> Result<T> {
    match bound {
        None => redis.run_idempotent(f),
        Some(bound) => {
            let bound = bound.max(Duration::from_millis(1));
            let mut con = redis.conn_timeout(bound)?;
            con.set_response_timeout(Some(bound))?;
            f(&mut con)
        }
    }
}

/// Registers `lease` with the watchdog of `redis` (renewed at a third of its TTL).
pub(crate) fn watch(redis: &Redis, lease: &Arc<Lease>) -> Result<()> {
    let task: Arc<dyn Task> = lease.clone();
    let weak = Arc::downgrade(&task);
    super::handle_locks(redis)?.schedule(redis, weak, Lease::interval(lease.ttl()))
}
