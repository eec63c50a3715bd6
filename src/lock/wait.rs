//! Waiting for a release: `BLPOP` on wake lists, with jittered polling as the fallback (see
//! the module docs' "Waiting" section). Used by every lock of the family and by the
//! [`ConcurrencyLimiter`](crate::ratelimit::ConcurrencyLimiter).
//!
//! A waiter blocks on a [dedicated connection](crate::Redis::dedicated), never a pooled one
//! (a blocked waiter must not take a connection from the handle's callers); the handle keeps
//! a few of them between waits. At most 64 waiters per handle block at once; more poll.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::HandleLocks;
use crate::error::Result;
use crate::retry::SplitMix64;
use crate::{DedicatedConnection, Redis};

/// The longest single `BLPOP` (or sleep): a waiter asks again at least this often, so it also
/// sees expiries it was not told about.
pub(crate) const MAX_BLOCK: Duration = Duration::from_millis(500);
/// How long the "someone waits" flag, a waiter's place in a queue and a wake-up token live:
/// longer than the gap between a waiter's failed attempt and its next `BLPOP`, and than one
/// `BLPOP`.
pub(crate) const WAKE_WINDOW: Duration = Duration::from_millis(2000);
/// The first polling sleep when a waiter cannot block in `BLPOP`.
const FIRST_POLL: Duration = Duration::from_millis(2);
/// The longest polling sleep.
const MAX_POLL: Duration = Duration::from_millis(50);

/// A duration in whole milliseconds (at least 1) for the scripts.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Waiters that may block on connections of their own at once, per handle; more poll.
const MAX_BLOCKING: usize = 64;
/// Dedicated connections kept for the next waiters, per handle.
const MAX_IDLE: usize = 4;

/// A dedicated connection for a waiter to block on (never a pooled one: a blocked waiter must
/// not take a connection from the callers), reused from earlier waits when one is idle.
fn blocking_connection(redis: &Redis, locks: &HandleLocks) -> Result<DedicatedConnection> {
    if let Some(con) = locks.idle_waiters.lock().pop() {
        return Ok(con);
    }
    redis.dedicated()
}

/// Gives a waiter's connection back for the next one (closed when enough are kept).
fn return_connection(locks: &HandleLocks, con: DedicatedConnection) {
    if !con.is_open() {
        return;
    }
    let mut idle = locks.idle_waiters.lock();
    if idle.len() < MAX_IDLE {
        idle.push(con);
    }
}

/// One caller waiting for a lock (or permit, or slot) until a deadline.
pub(crate) struct Waiter<'a> {
    redis: &'a Redis,
    /// The lists a release pushes a wake-up token on (several for a multi-lock).
    wake_keys: Vec<String>,
    deadline: Instant,
    rng: SplitMix64,
    poll: Duration,
}

impl<'a> Waiter<'a> {
    pub(crate) fn new(redis: &'a Redis, wake_keys: Vec<String>, timeout: Duration) -> Waiter<'a> {
        let now = Instant::now();
        Waiter {
            redis,
            wake_keys,
            deadline: crate::util::time::add(now, timeout),
            rng: SplitMix64(RandomState::new().hash_one(now)),
            poll: FIRST_POLL,
        }
    }

    /// Time left before the deadline.
    pub(crate) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits until a release wakes us, `hint` passes (when the current holder's lease
    /// expires), or the deadline. Errors are not reported: the caller's next attempt sees them.
    pub(crate) fn wait(&mut self, hint: Duration) {
        let left = self.left();
        if left.is_zero() {
            return;
        }
        // A little jitter so that waiters woken by an expiry do not all ask at once.
        let jitter = Duration::from_micros(self.rng.next_u64() % 2000);
        let block = hint
            .saturating_add(jitter)
            .min(MAX_BLOCK)
            .min(left)
            .max(Duration::from_millis(1));
        if self.blpop(block) {
            return;
        }
        let sleep = self.poll / 2 + (self.poll / 2).mul_f64(self.rng.next_f64());
        std::thread::sleep(sleep.min(block));
        self.poll = (self.poll * 2).min(MAX_POLL);
    }

    /// Blocks on the wake lists for at most `block`. `false` when it could not block (no
    /// connection to spare, or an error), so the caller polls instead.
    fn blpop(&mut self, block: Duration) -> bool {
        let Ok(locks) = super::handle_locks(self.redis) else {
            return false;
        };
        if locks.blocking_waiters.fetch_add(1, Ordering::AcqRel) >= MAX_BLOCKING {
            locks.blocking_waiters.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let blocked = self.blpop_on_a_connection(&locks, block);
        locks.blocking_waiters.fetch_sub(1, Ordering::AcqRel);
        blocked
    }

    fn blpop_on_a_connection(&self, locks: &HandleLocks, block: Duration) -> bool {
        let Ok(mut con) = blocking_connection(self.redis, locks) else {
            return false;
        };
        let read_timeout = block.saturating_add(self.redis.config().timeouts.response);
        if con.set_response_timeout(Some(read_timeout)).is_err() {
            return false;
        }
        let reply: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg(&self.wake_keys)
            .arg(format!("{:.3}", block.as_secs_f64()))
            .query(&mut con);
        match reply {
            Ok(_) => {
                return_connection(locks, con);
                true
            }
            Err(e) => {
                log::debug!("lock waiter: BLPOP on {:?} failed: {e}", self.wake_keys);
                false
            }
        }
    }
}
