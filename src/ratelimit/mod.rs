//! Rate limiters: Lua scripts on the server's clock, one round trip per decision.
//!
//! Every limiter runs as a Lua script that reads the server's clock (`TIME`), never the
//! client's, so any number of threads and processes on any number of machines share one limit
//! exactly. The keys of one limited subject carry a hash tag (`{subject}`), so they live in one
//! cluster slot, and every key gets a TTL so idle subjects cost nothing.
//!
//! Every decision is a [`Decision`]: how many units were granted, how many remain, when to
//! retry ([`RetryAfter::Never`] when the request is larger than the limit can ever grant,
//! instead of a made-up wait), and when the limit is fully reset. A peek (`n = 0`) never asks
//! to wait: zero units always fit (go-redis/redis_rate's GCRA peek says the same);
//! `remaining` tells whether the next unit would.
//!
//! | need | pick | state per subject |
//! |---|---|---|
//! | smooth rate with a burst allowance (the same results as go-redis/redis_rate) | [`Gcra`] | one string (a timestamp) |
//! | never more than N in any window of the period, exactly | [`SlidingLog`] | a sorted set, one member per unit admitted in the window |
//! | N per window, smoothed across window edges | [`SlidingWindow`] | a hash of three fields (two window counts, a timestamp) |
//! | N per calendar window (per minute, per hour), cheapest | [`FixedWindow`] | a hash of two fields (a count, a timestamp) |
//! | a bucket of tokens refilled at a rate, taking several at once | [`TokenBucket`] | a hash of two fields (tokens, a timestamp) |
//! | at most N at the same time (in flight), with leases, waiters woken by releases | [`ConcurrencyLimiter`] | a sorted set, one member per slot held |
//! | several limits at once (any of the above but the concurrency limiter), all or nothing, one round trip | [`MultiLimit`] | theirs |
//!
//! ```no_run
//! use redkit::ratelimit::{
//!     Gcra, GcraLimit, MultiLimit, MultiPart, RateLimiter, SlidingLog, WindowLimit,
//! };
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! let per_second = Gcra::new(&redis, "api-s", GcraLimit::per_second(10))?;
//! let per_hour = SlidingLog::new(&redis, "api-h", WindowLimit::per_hour(1000))?;
//!
//! let d = per_second.allow("user:42")?;        // granted, remaining, retry_after, reset_after
//! if !d.is_allowed() {
//!     println!("slow down: retry after {:?}", d.retry_after);
//! }
//! per_second.acquire("user:42", 1)?;           // worker threads: sleep until allowed (max_wait)
//!
//! // 10 per second AND 1,000 per hour: both take the unit, or neither does.
//! let both = MultiLimit::new(&redis)
//!     .allow_n(&[per_second.part("user:42"), per_hour.part("user:42")], 1)?;
//! println!("allowed: {}", both.is_allowed());
//!
//! per_second.set_limit(GcraLimit::per_second(20))?;  // at run time, state kept
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! Limits can be changed at run time (`set_limit`): the new parameters apply to the stored
//! state from the next decision on; nothing is reset by accident. Each limiter's docs say
//! what a change does to the current window.
//!
//! Worker threads use the blocking helpers of [`RateLimiter`]: [`RateLimiter::acquire`]
//! sleeps for the retry-after until allowed or the deadline passes (any timeout works,
//! `Duration::MAX` included), [`RateLimiter::try_acquire`] never sleeps. `examples/throttle.rs`
//! in the repository is a worker pool that throttles itself.
//!
//! Settings are checked when a limiter is made or changed: periods of at least 1 ms and at
//! most ten years, lease TTLs of at most a year, and bursts or capacities that refill within
//! ten years; anything else is an [`Error::Config`] naming the setting.

use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::error::{Error, Result};

mod bucket;
mod concurrency;
mod gcra;
mod multi;
mod window;

pub use bucket::{BucketLimit, TokenBucket};
pub use concurrency::{ConcurrencyLimiter, Slot};
pub use gcra::{Gcra, GcraLimit};
pub use multi::{LimitPart, MultiDecision, MultiLimit, MultiPart, ToLimitPart};
pub use window::{FixedWindow, SlidingLog, SlidingWindow, WindowLimit};

/// When a denied request may succeed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// It was allowed: nothing to wait for.
    Now,
    /// Retry after this long.
    After(Duration),
    /// Never: the request asks for more than the limit can ever grant.
    Never,
}

impl RetryAfter {
    /// From the scripts' convention: `-1` never, `0` now, otherwise microseconds.
    pub(crate) fn from_micros(us: i64) -> RetryAfter {
        match us {
            i64::MIN..=-1 => RetryAfter::Never,
            0 => RetryAfter::Now,
            us => RetryAfter::After(Duration::from_micros(us.unsigned_abs())),
        }
    }
}

/// The outcome of one rate-limit check.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// How many units were granted (0 when denied, and for a peek).
    pub granted: u64,
    /// How many units were granted: the old name of [`granted`](Decision::granted).
    #[deprecated(since = "0.2.0", note = "a count, not a yes/no: use `granted`")]
    pub allowed: u64,
    /// How many more units would be granted right now.
    pub remaining: u64,
    /// When a denied request may succeed ([`RetryAfter::Now`] when it was allowed, and for a
    /// peek).
    pub retry_after: RetryAfter,
    /// When the limit will be back to its full capacity if nothing more is taken.
    pub reset_after: Duration,
    /// The limit the decision was made against.
    pub limit: u64,
}

impl Decision {
    /// Whether at least one unit was granted.
    pub fn is_allowed(&self) -> bool {
        self.granted > 0
    }

    /// Parses the scripts' reply: `{allowed, remaining, retry_after_us, reset_after_us, limit}`
    /// (`retry_after_us`: `-1` never, `0` now).
    pub(crate) fn from_reply(v: &[i64]) -> Result<Decision> {
        let [allowed, remaining, retry, reset, limit] = v else {
            return Err(bad_reply(format!("expected 5 integers, got {v:?}")));
        };
        let non_neg = |x: i64| u64::try_from(x).unwrap_or(0);
        #[allow(deprecated)]
        Ok(Decision {
            granted: non_neg(*allowed),
            allowed: non_neg(*allowed),
            remaining: non_neg(*remaining),
            retry_after: RetryAfter::from_micros(*retry),
            reset_after: Duration::from_micros(non_neg(*reset)),
            limit: non_neg(*limit),
        })
    }
}

fn bad_reply(detail: String) -> Error {
    let e = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected rate-limit script reply",
        detail,
    ));
    Error::from_redis(e, crate::error::Delivery::Answered)
}

/// The operations every limiter offers, and the blocking helpers built on them.
pub trait RateLimiter {
    /// Takes `n` units for `subject` if they fit, atomically; `n = 0` only looks.
    fn allow_n(&self, subject: &str, n: u64) -> Result<Decision>;

    /// Forgets everything about `subject`: its full capacity is available again.
    fn reset(&self, subject: &str) -> Result<()>;

    /// How long [`RateLimiter::acquire`] waits at most. Defaults to 10 s.
    fn max_wait(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Takes one unit.
    fn allow(&self, subject: &str) -> Result<Decision> {
        self.allow_n(subject, 1)
    }

    /// Looks without taking anything (`allow_n(subject, 0)`): `remaining` says how many units
    /// would be granted now, and `retry_after` is always [`RetryAfter::Now`], since zero
    /// units always fit; go-redis/redis_rate's peek says the same. To learn how long until a
    /// unit fits, ask for one ([`RateLimiter::allow`]: it takes it if it fits).
    fn peek(&self, subject: &str) -> Result<Decision> {
        self.allow_n(subject, 0)
    }

    /// Takes `n` units if they fit now; never sleeps.
    fn try_acquire(&self, subject: &str, n: u64) -> Result<bool> {
        Ok(self.allow_n(subject, n)?.granted >= n.max(1))
    }

    /// Takes `n` units, sleeping for the retry-after until they fit, at most
    /// [`max_wait`](RateLimiter::max_wait).
    fn acquire(&self, subject: &str, n: u64) -> Result<Decision> {
        self.acquire_timeout(subject, n, self.max_wait())
    }

    /// Takes `n` units, sleeping for the retry-after until they fit, at most `timeout`. Fails
    /// with [`Error::RateLimited`] when the deadline would pass first, or at once when the
    /// request can never fit.
    ///
    /// Any `timeout` works, `Duration::MAX` included (it waits "for ever", without overflowing).
    fn acquire_timeout(&self, subject: &str, n: u64, timeout: Duration) -> Result<Decision> {
        let deadline = crate::util::time::add(Instant::now(), timeout);
        loop {
            let d = self.allow_n(subject, n)?;
            let wait = match d.retry_after {
                RetryAfter::Now => return Ok(d),
                RetryAfter::Never => return Err(Error::RateLimited { retry_after: None }),
                RetryAfter::After(w) => w,
            };
            if wait > deadline.saturating_duration_since(Instant::now()) {
                return Err(Error::RateLimited {
                    retry_after: Some(wait),
                });
            }
            std::thread::sleep(wait);
        }
    }
}

/// Runs a limiter script: `KEYS[1] = key`, `ARGV = args..., n, extra...`, and parses the
/// decision it returns.
pub(crate) fn decide(
    redis: &crate::Redis,
    script: &crate::Script,
    key: String,
    args: &[i64],
    n: u64,
    extra: &[&str],
) -> Result<Decision> {
    let reply: Vec<i64> = decision_call(script, key, args, n, extra).run(redis)?;
    Decision::from_reply(&reply)
}

/// Like [`decide`], on a connection of the caller's.
pub(crate) fn decide_on(
    con: &mut dyn ConnectionLike,
    script: &crate::Script,
    key: String,
    args: &[i64],
    n: u64,
    extra: &[&str],
) -> Result<Decision> {
    let reply: Vec<i64> = decision_call(script, key, args, n, extra).invoke(con)?;
    Decision::from_reply(&reply)
}

fn decision_call(
    script: &crate::Script,
    key: String,
    args: &[i64],
    n: u64,
    extra: &[&str],
) -> crate::ScriptCall {
    let mut call = script.key(key);
    for a in args {
        call = call.arg(*a);
    }
    call = call.arg(n);
    for e in extra {
        call = call.arg(*e);
    }
    call
}

/// Decisions on a connection of your own: any [`redis::ConnectionLike`] (a plain
/// `redis::Connection` of the `redis` crate, a [`PooledConnection`](crate::PooledConnection),
/// a [`DedicatedConnection`](crate::DedicatedConnection)), with the limiter's keys and
/// script, so that they share one limit with the calls through the handle. One script call
/// (`EVALSHA`, loading the script on `NOSCRIPT`); no retry and no circuit breaker of the
/// handle's, and no background thread. Implemented by [`Gcra`], [`SlidingLog`],
/// [`SlidingWindow`], [`FixedWindow`] and [`TokenBucket`].
///
/// ```no_run
/// use redkit::ratelimit::{DecideOn, Gcra, GcraLimit};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let api = Gcra::new(&redis, "api", GcraLimit::per_second(10))?;
/// // A connection the application already has:
/// let mut con = redis::Client::open("redis://127.0.0.1/")?.get_connection()?;
/// let d = api.allow_n_on(&mut con, "user:42", 1)?;
/// println!("granted {}, retry after {:?}", d.granted, d.retry_after);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait DecideOn {
    /// Takes `n` units for `subject` if they fit (like [`RateLimiter::allow_n`]), on `con`.
    fn allow_n_on(&self, con: &mut dyn ConnectionLike, subject: &str, n: u64) -> Result<Decision>;

    /// One unit, on `con`.
    fn allow_on(&self, con: &mut dyn ConnectionLike, subject: &str) -> Result<Decision> {
        self.allow_n_on(con, subject, 1)
    }

    /// Looks without taking anything (`n = 0`), on `con`.
    fn peek_on(&self, con: &mut dyn ConnectionLike, subject: &str) -> Result<Decision> {
        self.allow_n_on(con, subject, 0)
    }
}

/// Deletes a subject's key (`reset`).
pub(crate) fn delete(redis: &crate::Redis, key: String) -> Result<()> {
    redis.query::<()>(redis::cmd("DEL").arg(key))
}

/// The key of a subject: `{prefix}{name}:{subject}` with the subject as the hash tag, so that
/// every key of one subject lives in one cluster slot.
pub(crate) fn subject_key(prefix: &str, name: &str, subject: &str) -> String {
    format!("{prefix}{name}:{{{subject}}}")
}

/// The key prefix every limiter uses unless told otherwise.
pub(crate) const DEFAULT_PREFIX: &str = "redkit:rl:";

/// Checks a rate-limit setting.
pub(crate) fn positive(setting: &'static str, v: u64) -> Result<u64> {
    if v == 0 {
        return Err(Error::config(setting, "must be at least 1"));
    }
    Ok(v)
}

/// The longest period (and the longest time a limit may take to fill up again): ten years.
/// Keys' TTLs must stay representable, and the scripts' arithmetic exact.
pub(crate) const MAX_SPAN: Duration = Duration::from_secs(86_400 * 365 * 10);

/// Checks a period: at least 1 ms, at most ten years.
pub(crate) fn period(setting: &'static str, d: Duration) -> Result<Duration> {
    if d < Duration::from_millis(1) {
        return Err(Error::config(setting, "must be at least 1 ms"));
    }
    if d > MAX_SPAN {
        return Err(Error::config(setting, "must be at most ten years"));
    }
    Ok(d)
}

/// Checks a lease TTL: at least 1 ms, at most a year (as a lock's TTL).
pub(crate) fn lease_ttl(setting: &'static str, d: Duration) -> Result<Duration> {
    if d < Duration::from_millis(1) {
        return Err(Error::config(setting, "must be at least 1 ms"));
    }
    if d > Duration::from_secs(86_400 * 365) {
        return Err(Error::config(setting, "must be at most a year"));
    }
    Ok(d)
}

/// Checks that `units` units at `rate` per `per` come back within [`MAX_SPAN`] (the longest
/// a key may live): `per * units / rate`.
pub(crate) fn refill_span(
    setting: &'static str,
    units: u64,
    rate: u64,
    per: Duration,
) -> Result<()> {
    let span = per.as_secs_f64() * units as f64 / rate.max(1) as f64;
    if span > MAX_SPAN.as_secs_f64() {
        return Err(Error::config(
            setting,
            "too large for the rate: refilling it would take more than ten years",
        ));
    }
    Ok(())
}

/// A duration in whole microseconds for the scripts.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_parse() {
        let d = Decision::from_reply(&[1, 9, 0, 100_000, 10]).unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.retry_after, RetryAfter::Now);
        assert_eq!(d.reset_after, Duration::from_millis(100));
        let d = Decision::from_reply(&[0, 0, -1, 5, 10]).unwrap();
        assert_eq!(d.retry_after, RetryAfter::Never);
        let d = Decision::from_reply(&[0, 0, 250, 5, 10]).unwrap();
        assert_eq!(d.retry_after, RetryAfter::After(Duration::from_micros(250)));
        assert!(Decision::from_reply(&[1, 2]).is_err());
    }

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(subject_key("rl:", "api", "u1"), "rl:api:{u1}");
    }
}
