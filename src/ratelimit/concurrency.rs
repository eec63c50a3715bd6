//! Concurrency limits: at most N at the same time per subject, each slot a lease with a TTL.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::{lease_ttl, micros, positive, subject_key, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::lock::wait::{millis, Waiter, WAKE_WINDOW};
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "concurrency_acquire.lua");

static_script!(release_script, "concurrency_release.lua");

static_script!(extend_script, "concurrency_extend.lua");

static_script!(count_script, "concurrency_count.lua");

/// Limits how many holders of one subject run at the same time (requests in flight to a
/// backend, jobs per tenant), across any number of processes.
///
/// Each taken slot is a lease: a random 128-bit id in a sorted set per subject, scored by its
/// expiry on the server's clock. A [`Slot`] guard gives it back when dropped. A holder that
/// crashes (or leaks its guard) cannot give its slot back, so the lease expires after its TTL
/// and the next acquire sweeps it out: the slot comes back. A holder that works longer than
/// the TTL should [`Slot::extend`] its lease; otherwise, once it has expired, another holder
/// may take the slot while it still runs. The key's TTL follows its longest lease, so idle
/// subjects cost nothing.
///
/// This is not a [`RateLimiter`](super::RateLimiter): it limits how many at once, not how many
/// per period.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::ratelimit::ConcurrencyLimiter;
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// // At most 4 exports per tenant at the same time; a crashed worker's slot returns in 60 s.
/// let exports = ConcurrencyLimiter::new(&redis, "exports", 4, Duration::from_secs(60))?;
/// let slot = exports.acquire("tenant:acme")?; // waits at most 10 s by default
/// // ... run the export, extending the lease if it takes long ...
/// slot.extend(Duration::from_secs(60))?;
/// slot.release()?;
///
/// // Or never wait:
/// match exports.try_acquire("tenant:acme")? {
///     Some(_slot) => { /* run it; the slot goes back when `_slot` is dropped */ }
///     None => println!("busy, try later"),
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    redis: Redis,
    name: String,
    prefix: String,
    max_in_flight: Arc<RwLock<u64>>,
    lease_ttl: Duration,
    max_wait: Duration,
}

impl ConcurrencyLimiter {
    /// A limiter named `name` (part of its keys) that lets at most `max_in_flight` hold a slot
    /// of one subject at the same time; each slot is leased for `lease_ttl` (at least 1 ms,
    /// at most a year).
    pub fn new(
        redis: &Redis,
        name: &str,
        max_in_flight: u64,
        lease_ttl: Duration,
    ) -> Result<ConcurrencyLimiter> {
        positive("ratelimit.max_in_flight", max_in_flight)?;
        self::lease_ttl("ratelimit.lease_ttl", lease_ttl)?;
        Ok(ConcurrencyLimiter {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_in_flight: Arc::new(RwLock::new(max_in_flight)),
            lease_ttl,
            max_wait: Duration::from_secs(10),
        })
    }

    /// The key prefix, before the limiter's name. Defaults to `redkit:rl:` (after the
    /// handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix), if any).
    pub fn prefix(mut self, prefix: &str) -> ConcurrencyLimiter {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long [`ConcurrencyLimiter::acquire`] waits at most (any duration: a huge one
    /// waits "for ever", without overflowing). Defaults to 10 s.
    pub fn max_wait(mut self, d: Duration) -> ConcurrencyLimiter {
        self.max_wait = d;
        self
    }

    /// The current maximum in flight per subject.
    pub fn max_in_flight(&self) -> u64 {
        *self.max_in_flight.read()
    }

    /// How long a slot is leased for (unless extended).
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Changes the maximum for every clone of this limiter. Leases already held stay valid,
    /// even above a lowered maximum; new ones are refused until the count is under the new
    /// maximum.
    pub fn set_max_in_flight(&self, max_in_flight: u64) -> Result<()> {
        positive("ratelimit.max_in_flight", max_in_flight)?;
        *self.max_in_flight.write() = max_in_flight;
        Ok(())
    }

    /// The key that holds `subject`'s leases.
    pub fn key(&self, subject: &str) -> String {
        self.redis
            .key(&subject_key(&self.prefix, &self.name, subject))
    }

    /// How many slots of `subject` are held now (expired leases not counted).
    pub fn in_flight(&self, subject: &str) -> Result<u64> {
        let call = count_script().key(self.key(subject));
        self.redis.run_idempotent(|con| call.invoke(con))
    }

    /// Takes a slot if one is free now; never waits. One round trip.
    pub fn try_acquire(&self, subject: &str) -> Result<Option<Slot>> {
        let key = self.key(subject);
        let id = lease_id();
        Ok(match self.attempt(&key, &id, false)? {
            Ok(()) => Some(self.slot(key, id)),
            Err(_) => None,
        })
    }

    /// Takes a slot, waiting for one at most [`max_wait`](ConcurrencyLimiter::max_wait).
    pub fn acquire(&self, subject: &str) -> Result<Slot> {
        self.acquire_timeout(subject, self.max_wait)
    }

    /// Takes a slot, waiting for one at most `timeout`; fails with [`Error::RateLimited`]
    /// (with the time until a held lease expires) when none came free in time.
    ///
    /// A release wakes a waiter within a round trip or two (see the type's docs); the next
    /// lease's expiry is noticed when it happens.
    pub fn acquire_timeout(&self, subject: &str, timeout: Duration) -> Result<Slot> {
        let key = self.key(subject);
        // One id for every attempt: at most one of them takes the slot.
        let id = lease_id();
        let mut waiter = Waiter::new(&self.redis, vec![wake_key(&key)], timeout);
        loop {
            let until_expiry = match self.attempt(&key, &id, true)? {
                Ok(()) => return Ok(self.slot(key, id)),
                Err(wait) => wait,
            };
            if waiter.left().is_zero() {
                return Err(Error::RateLimited {
                    retry_after: Some(until_expiry),
                });
            }
            waiter.wait(until_expiry);
        }
    }

    /// One acquire attempt: `Ok(Ok(()))` when the lease was taken, `Ok(Err(wait))` when the
    /// subject is full and its next lease expires in `wait`.
    fn attempt(
        &self,
        key: &str,
        id: &str,
        waiting: bool,
    ) -> Result<std::result::Result<(), Duration>> {
        let window = if waiting { millis(WAKE_WINDOW) } else { 0 };
        let call = acquire_script()
            .key(key)
            .key(waiting_key(key))
            .arg(self.max_in_flight())
            .arg(micros(self.lease_ttl))
            .arg(id)
            .arg(window);
        // Safe to resend: a second run finds the lease the first one took.
        let reply: Vec<i64> = self.redis.run_idempotent(|con| call.invoke(con))?;
        match reply[..] {
            [1, _, _] => Ok(Ok(())),
            [0, _, wait] => Ok(Err(Duration::from_micros(wait.max(1).unsigned_abs()))),
            _ => Err(bad_reply(format!("expected 3 integers, got {reply:?}"))),
        }
    }

    fn slot(&self, key: String, id: String) -> Slot {
        Slot {
            redis: self.redis.clone(),
            key,
            id,
            released: false,
        }
    }
}

/// The list a release pushes a wake-up token on (same hash tag as the subject's key).
fn wake_key(key: &str) -> String {
    format!("{key}:wake")
}

/// The "someone waits" flag of a subject.
fn waiting_key(key: &str) -> String {
    format!("{key}:waiting")
}

fn bad_reply(detail: String) -> Error {
    let e = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected concurrency script reply",
        detail,
    ));
    Error::from_redis(e, crate::error::Delivery::Answered)
}

/// A random 128-bit lease id, as 32 hex digits.
pub(crate) fn lease_id() -> String {
    crate::util::ids::token()
}

/// A slot of a [`ConcurrencyLimiter`], held until released or dropped.
///
/// Dropping it gives the slot back, best-effort: a failure is logged at `warn`, and the lease
/// then expires after its TTL. [`Slot::release`] does the same and reports errors. A slot
/// holds a clone of its [`Redis`] handle, so the handle stays open while slots are held.
#[must_use = "the slot is given back as soon as it is dropped"]
#[derive(Debug)]
pub struct Slot {
    redis: Redis,
    key: String,
    id: String,
    released: bool,
}

impl Slot {
    /// The lease's random id (a member of the subject's sorted set).
    pub fn lease_id(&self) -> &str {
        &self.id
    }

    /// Gives the slot back. Returns whether it was still held: `false` when the lease had
    /// expired (another holder may have had the slot meanwhile).
    pub fn release(mut self) -> Result<bool> {
        self.released = true;
        self.release_lease()
    }

    /// Renews the lease to expire `ttl` from now (at least 1 ms, at most a year). Returns
    /// `false`, and renews nothing, when the lease had already expired or was released.
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        lease_ttl("ratelimit.lease_ttl", ttl)?;
        let call = extend_script()
            .key(&self.key)
            .arg(micros(ttl))
            .arg(&self.id);
        // Safe to resend: it sets an expiry from now, once or twice.
        let renewed: i64 = self.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(renewed == 1)
    }

    fn release_lease(&self) -> Result<bool> {
        let released: i64 = release_script()
            .key(&self.key)
            .key(wake_key(&self.key))
            .key(waiting_key(&self.key))
            .arg(&self.id)
            .arg(millis(WAKE_WINDOW))
            .run(&self.redis)?;
        Ok(released == 1)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        match self.release_lease() {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "concurrency slot {} of {} had expired before it was dropped: extend long-held slots",
                self.id,
                self.key
            ),
            Err(e) => log::warn!(
                "could not give back concurrency slot {} of {} (it expires with its lease): {e}",
                self.id,
                self.key
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn lease_ids_are_random_hex() {
        let ids: HashSet<String> = (0..10_000).map(|_| lease_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn slots_are_send() {
        fn send<T: Send>() {}
        send::<Slot>();
        send::<ConcurrencyLimiter>();
    }
}
