//! Distributed locks and coordination, across threads and processes.
//!
//! | need | pick |
//! |---|---|
//! | one holder at a time, with fencing tokens, fast hand-off, optional watchdog | [`Lock`] |
//! | the same, waiters served in arrival order | [`Lock`] with [`LockBuilder::fair`] |
//! | several locks at once, all or nothing, no deadlocks | [`MultiLock`] |
//! | at most N holders at a time, leases that come back when a holder dies | [`Semaphore`] |
//! | many readers or one writer, neither starved | [`ReadWriteLock`] |
//! | a lock that survives the loss of a minority of independent servers | [`Redlock`] |
//! | who is alive, and exactly one leader among them | [`Group`] / [`Member`] |
//!
//! The whole family works alike: every acquisition carries a [fencing
//! token](#fencing-tokens), can be renewed by the [watchdog](#the-watchdog) until it is
//! released, can be confirmed on replicas before it is returned ([`ReplicaAck`]), and is
//! signalled with one [`LockLost`](crate::Event::LockLost) event when it turns out lost.
//!
//! Every operation is a Lua script (one round trip, atomic on the server); every key of one
//! lock carries the lock's name as a hash tag (`redkit:lock:{name}`, `...:fence`, `...:wake`,
//! `...:waiting`, `...:queue`), so they live in one cluster slot.
//!
//! ```no_run
//! use redkit::Redis;
//! use redkit::lock::Lock;
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let lock = Lock::new(&redis, "nightly-report")?;
//! let guard = lock.acquire()?;            // waits up to 10 s by default
//! let fence = guard.fencing_token();      // strictly increasing per lock name
//! // ... the protected work, passing `fence` to the resource ...
//! guard.release()?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! ## Tokens, not threads
//!
//! An acquisition sets the lock key, only if it is absent, to a random 128-bit token and a
//! millisecond expiry (the TTL). Release, extend and renewal are scripts that act only while
//! the key still holds *our* token: a holder whose lock expired and was taken by someone else
//! can never release or extend the new holder's lock, and is told so (`false`). The guard
//! carries the token, so it can move to another thread and be released there. Reentrancy is
//! explicit and counted: [`LockGuard::reenter`] checks with the server that the lock is still
//! ours and returns a second guard for the same acquisition; the lock is released with the
//! last of them.
//!
//! ## The safety model
//!
//! **A single Redis instance** gives mutual exclusion *as long as every holder finishes (or
//! renews) within its TTL and the server keeps its data*. Three things break it:
//!
//! - A holder that stalls past its TTL (a GC pause, a swapped-out process, a slow network)
//!   loses the lock without noticing until it next checks; meanwhile another holder has it.
//!   Nothing on the client can prevent this; [`LockGuard::is_held`] and the watchdog's
//!   [`LockLost`](crate::Event::LockLost) event only shorten the window.
//! - A restart without persistence forgets the lock.
//! - A failover to a replica that had not yet received the lock key (replication is
//!   asynchronous) forgets it too.
//!
//! **Fencing tokens** close all three holes where it matters (see below): send the token with
//! every write to the protected resource and have the resource refuse a token lower than the
//! highest it has seen. A stale holder's late writes are then refused instead of corrupting a
//! newer holder's work, whichever of the three made two holders overlap.
//!
//! **Replica acknowledgement** ([`ReplicaAck`]: `WAIT`, or `WAITAOF` on Redis 7.2+) narrows
//! the failover hole: the guard is returned only once N replicas have the acquisition, so a
//! failover to one of them keeps the lock. It does not close it: Sentinel or Cluster may
//! still promote a replica that had not confirmed, and a confirmed write is lost when the
//! confirming replicas fail too. It does nothing for stalled holders.
//!
//! **Redlock** ([`Redlock`], over several independent servers, not replicas of each other)
//! is what keeps mutual exclusion when one server is lost: the lock is held only when a
//! majority (N/2 + 1) accepted it within its validity (the TTL minus the time the attempt
//! took minus a drift allowance of 1% + 2 ms), a failed attempt is released on every server,
//! and a lock held on a majority survives any minority failing. It still assumes bounded
//! pauses and clock drift, so it needs fencing for the same reason; its guards carry fencing
//! tokens of their own ([`RedlockGuard::fencing_token`], see [`Redlock`] for how they stay
//! increasing across servers).
//!
//! What still needs fencing (with any of the above): every holder that can stall past its
//! TTL, which in practice is every holder. What still needs Redlock (or fencing): exclusion
//! that must survive losing the one server (or its data) without the resource checking
//! tokens.
//!
//! `examples/locks.rs` in the repository shows the difference: a holder that stalls past its
//! TTL comes back with a stale token, and the fenced resource refuses its late write instead
//! of letting it overwrite the newer holder's work.
//!
//! ## Fencing tokens
//!
//! Every acquisition ([`LockGuard::fencing_token`], [`Permit::fencing_token`],
//! [`RwGuard::fencing_token`], [`RedlockGuard::fencing_token`],
//! [`MultiLockGuard::fencing_tokens`], and a leader's term) gets a number strictly greater
//! than every earlier one of that lock name. The acquire script sets it to
//! `max(counter + 1, the server's clock in microseconds)` and stores it in the lock's
//! counter key (which never expires).
//!
//! **What this guarantees after data loss.** A server that lost the counter (a restart
//! without persistence, a failover to a replica that had an older counter or none) starts
//! again from its clock, which is past every token issued before: tokens never go back, so
//! a fenced resource refuses the old holder and admits the new one, and no number is ever
//! issued twice. Tokens only run ahead of the clock with more than one acquisition of one
//! name per microsecond, which a lock cannot do (each acquisition follows a release by at
//! least a round trip).
//!
//! **The assumption that remains: the server's clock does not go back**, and after a
//! failover the new master's clock is not behind the old one's by more than the time since
//! the last acquisition it missed (NTP-synchronised servers are, by seconds: a failover takes
//! at least its down-after time). A clock stepped back by hand, or a replica whose clock is
//! minutes behind, can issue a token lower than an earlier one.
//!
//! Tokens are large (about 1.8 × 10¹⁵ today): store them as 64-bit integers. A semaphore's
//! permits and a read-write lock's readers share one counter per name with its writers, so
//! the order of all acquisitions of one name is the order of their tokens.
//!
//! ## Waiting
//!
//! A waiting acquire does not sleep on a fixed poll interval (redsync sleeps 50-250 ms,
//! redis-py 100 ms). A failed attempt leaves a mark, the holder's release pushes a wake-up
//! token, and the waiter blocks on it with `BLPOP` (on a dedicated connection, see below):
//!
//! - [`Lock`], [`Semaphore`], [`MultiLock`] (and the
//!   [`ConcurrencyLimiter`](crate::ratelimit::ConcurrencyLimiter)): the failed attempt sets a
//!   short-lived "someone waits" flag; the release pushes one token on the lock's wake list,
//!   which wakes one waiter (a multi-lock waiter blocks on the lists of all its locks). If
//!   someone else (a `try_acquire`) takes the lock first, the woken waiter goes back to
//!   waiting; the others wait for the next release.
//! - A fair [`Lock`] and [`ReadWriteLock`]: each waiter queues (by arrival, on the server's
//!   clock) and blocks on a wake list of its own; a release wakes exactly the waiters that may
//!   go now: the first in the queue, or all the readers whose turn it is, or the next writer.
//!
//! The `BLPOP` also ends when the current holder's TTL runs out (an expiry sends no
//! notification) and at most every 500 ms, after which the waiter asks again.
//!
//! Limits of this choice, on purpose:
//!
//! - A blocked waiter holds a [dedicated connection](crate::Redis::dedicated), never a
//!   pooled one: waiting never takes a connection from the handle's callers. The handle
//!   keeps up to 4 such connections between waits (opened on first need, closed with the
//!   handle). At most 64 waiters per handle block at once; the others poll with jittered
//!   sleeps (2 ms doubling to 50 ms), as do waiters whose connection cannot be opened or
//!   whose `BLPOP` fails.
//! - It does not use pub/sub, so it works through any proxy that passes `BLPOP`.
//!
//! ## Fair locks
//!
//! With [`LockBuilder::fair`], waiters are served in arrival order, as Redisson's `FairLock`
//! does, without its stuck queues (Redisson issue #4661: after a crash, a dead waiter's
//! entries kept everyone out): a waiter's place lapses 2 s after its last attempt (a live
//! waiter asks again at least every 500 ms), so a waiter that died holds the queue for at
//! most 2 s; a waiter that gives up leaves at once and wakes the next. Nobody, not even
//! [`Lock::try_acquire`], takes the lock past the queue.
//!
//! ## The watchdog
//!
//! With `watchdog(true)` on a lock's builder, one background thread per [`Redis`] handle
//! (`redkit-lockdog`, started on first use, joined when the handle is closed or its last
//! clone dropped) renews every guard of that handle at a third of its TTL. It stops renewing
//! the moment the guard is released (a renewal still in flight cannot revive it: it checks
//! the token).
//!
//! A lost lease is signalled within a third of its TTL: a renewal that finds the lock gone
//! or taken over marks the guard lost at once (renewals are a third of the TTL apart), and
//! when renewals fail (the server is unreachable) the guard is marked lost the moment its
//! validity (TTL minus a drift allowance of 1% + 2 ms since the last successful renewal)
//! runs out: each renewal waits at most until the next is due, so one slow server call
//! cannot delay it. Whoever notices first (the watchdog, [`LockGuard::extend`], or a release
//! that finds the lock gone) marks the guard lost ([`LockGuard::is_held`] says `false`) and
//! sends one [`LockLost`](crate::Event::LockLost) event to the handle's
//! [listeners](crate::Redis::events). The watchdog renews while the process lives: a holder
//! stuck forever keeps the lock forever, which is why it is off by default.
//!
//! ## Semaphores, read-write locks, leader election
//!
//! A [`Semaphore`] (`Semaphore::new(&redis, "exports", 3)`) hands out N permits, each a lease
//! on the server's clock, so the permit of a holder that crashed comes back after its TTL.
//! A [`ReadWriteLock`] lets many readers or one writer in; it is phase-fair: a waiting writer
//! keeps new readers out, and the readers that queued meanwhile go in together after it, so
//! neither side starves. A [`Group`] (`Group::new(&redis, "bots")?.join("bot-7")?`) tracks
//! who is present ([`Group::members`]) and elects at most one leader through a lease renewed
//! by the watchdog, with a term number that works as a fencing token; each [`Member`] gets
//! [`Election`] events and stops calling itself leader ([`Member::is_leader`]) before anyone
//! else can be elected. A new leader is elected within the leader TTL after the old one dies.
//!
//! ## Durations
//!
//! Waits may be any duration (`Duration::MAX` waits "for ever" and never overflows). TTLs
//! and leases are at least 1 ms (30 ms with the watchdog) and at most a year; anything else
//! is an [`Error::Config`] naming the setting.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::Redis;

mod ack;
mod leader;
mod lease;
mod multi;
mod mutex;
mod redlock;
mod rwlock;
mod semaphore;
pub(crate) mod wait;
mod watchdog;

pub use ack::ReplicaAck;
pub use leader::{Election, Group, GroupBuilder, Member};
pub use multi::{MultiLock, MultiLockBuilder, MultiLockGuard};
pub use mutex::{Lock, LockBuilder, LockGuard, LockInfo};
pub use redlock::{Redlock, RedlockBuilder, RedlockGuard};
pub use rwlock::{ReadWriteLock, RwGuard, RwLockBuilder, RwMode};
pub use semaphore::{Permit, Semaphore, SemaphoreBuilder};
pub(crate) use watchdog::HandleLocks;

impl crate::client::Extension for HandleLocks {
    fn shut_down(&self) {
        HandleLocks::shut_down(self);
    }
}

/// The key prefix every lock helper uses unless told otherwise.
pub(crate) const DEFAULT_PREFIX: &str = "redkit:lock:";

impl Redis {
    /// Whether this handle's lock watchdog thread is running.
    pub fn lock_watchdog_running(&self) -> bool {
        self.extension::<HandleLocks>()
            .is_some_and(|l| l.watchdog_running())
    }
}

/// The handle's lock bookkeeping; [`Error::Closed`] once the handle is closed.
pub(crate) fn handle_locks(redis: &Redis) -> Result<std::sync::Arc<HandleLocks>> {
    redis.extension::<HandleLocks>().ok_or(Error::Closed)
}

/// `{prefix}{{name}}`: the name is the keys' hash tag.
pub(crate) fn tagged(prefix: &str, name: &str) -> String {
    format!("{prefix}{{{name}}}")
}

/// A random 128-bit token as 32 hex digits.
pub(crate) fn new_token() -> String {
    crate::util::ids::token()
}

/// Checks a lock name.
pub(crate) fn check_name(setting: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config(setting, "must not be empty"));
    }
    if name.contains(['{', '}']) {
        return Err(Error::config(
            setting,
            "must not contain `{` or `}` (the name is the keys' hash tag)",
        ));
    }
    Ok(())
}

/// Checks a replica acknowledgement setting (and that the handle can use it).
pub(crate) fn check_ack(redis: &Redis, setting: &'static str, ack: &ReplicaAck) -> Result<()> {
    ack.validate(setting)?;
    if redis.config().cluster.is_some() {
        return Err(Error::config(
            setting,
            "replica acknowledgement is not supported on Redis Cluster",
        ));
    }
    Ok(())
}

/// Checks a TTL: at least 1 ms, at least 30 ms when a background renewal must fit in it.
pub(crate) fn check_ttl(setting: &'static str, ttl: Duration, renewed: bool) -> Result<()> {
    let min = if renewed {
        Duration::from_millis(30)
    } else {
        Duration::from_millis(1)
    };
    if ttl < min {
        return Err(Error::config(setting, format!("must be at least {min:?}")));
    }
    if ttl > Duration::from_secs(86_400 * 365) {
        return Err(Error::config(setting, "must be at most a year"));
    }
    Ok(())
}

/// The clock-drift allowance for a TTL (as Redlock's: 1% plus 2 ms, at most the TTL).
pub(crate) fn drift(ttl: Duration) -> Duration {
    (ttl / 100 + Duration::from_millis(2)).min(ttl)
}

pub(crate) fn bad_reply(what: &str, detail: String) -> Error {
    let e = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected lock script reply",
        format!("{what}: {detail}"),
    ));
    Error::from_redis(e, crate::error::Delivery::Answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ttls_are_checked() {
        assert!(check_name("n", "jobs").is_ok());
        assert!(check_name("n", "").is_err());
        assert!(check_name("n", "a{b}").is_err());
        assert!(check_ttl("t", Duration::from_millis(1), false).is_ok());
        assert!(check_ttl("t", Duration::ZERO, false).is_err());
        assert!(check_ttl("t", Duration::from_millis(10), true).is_err());
        assert_eq!(tagged("p:", "x"), "p:{x}");
        assert_eq!(drift(Duration::from_secs(1)), Duration::from_millis(12));
        assert_eq!(drift(Duration::from_millis(1)), Duration::from_millis(1));
    }
}
