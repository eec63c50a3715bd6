//! Backoff and retry policy.
//!
//! Retries sleep on the caller's thread, are bounded by a number of attempts *and* an overall
//! deadline, and never resend a command whose fate is unknown unless it is idempotent.
//!
//! | what failed                                         | [`Delivery`]  | resent?                  |
//! |-----------------------------------------------------|---------------|--------------------------|
//! | connect failure, pool checkout timeout              | `NotSent`     | yes                      |
//! | writing the command failed (it was never complete)  | `NotSent`     | yes                      |
//! | `LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` replies | `Answered` | yes (the server refused it) |
//! | read timeout or connection dropped after writing     | `Unknown`     | only if idempotent       |
//! | any other error reply (`ERR`, `WRONGTYPE`, ...)     | `Answered`    | never                    |
//! | circuit breaker open, auth, permission, TLS, config | -             | never                    |
//!
//! A command is idempotent when it is a read-only command redkit knows (`GET`, `MGET`,
//! `HGETALL`, `EXISTS`, `TTL`, `SCAN`...: see [`is_read_only_command`]) or when the caller says
//! so ([`Redis::query_idempotent`](crate::Redis::query_idempotent),
//! [`Redis::run_idempotent`](crate::Redis::run_idempotent)). `INCR`, `LPUSH`, `SET ... NX` and
//! every other write are never resent after an unknown fate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Delivery, Error, ErrorClass};

/// How a backoff delay is randomised.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No randomness: `min(cap, base * 2^attempt)`.
    None,
    /// Uniform in `[0, min(cap, base * 2^attempt)]` (AWS "full jitter").
    Full,
    /// Half fixed, half random: `d/2 + uniform[0, d/2]` with `d = min(cap, base * 2^attempt)`.
    Equal,
    /// `min(cap, uniform[base, previous * 3])` (AWS "decorrelated jitter").
    Decorrelated,
}

/// Exponential backoff with a cap and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    pub(crate) jitter: Jitter,
}

impl Default for Backoff {
    /// 10 ms base, 1 s cap, full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_secs(1),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// Exponential backoff from `base`, doubling, capped at `cap`, with full jitter.
    pub fn exponential(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// Sets the jitter. Defaults to [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The first delay before randomisation.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// A fresh sequence of delays, seeded from the clock.
    pub fn delays(&self) -> BackoffDelays {
        self.delays_seeded(clock_seed())
    }

    /// A fresh sequence of delays from a fixed seed: the same seed gives the same delays.
    pub fn delays_seeded(&self, seed: u64) -> BackoffDelays {
        BackoffDelays {
            backoff: *self,
            attempt: 0,
            previous: self.base,
            rng: SplitMix64(seed),
        }
    }

    pub(crate) fn validate(&self, setting: &'static str) -> Result<(), Error> {
        if self.base.is_zero() {
            return Err(Error::config(
                setting,
                "backoff base must be greater than zero",
            ));
        }
        if self.cap < self.base {
            return Err(Error::config(
                setting,
                format!(
                    "backoff cap ({:?}) is smaller than its base ({:?})",
                    self.cap, self.base
                ),
            ));
        }
        Ok(())
    }
}

/// An endless sequence of backoff delays (see [`Backoff::delays`]).
#[derive(Debug, Clone)]
pub struct BackoffDelays {
    backoff: Backoff,
    attempt: u32,
    previous: Duration,
    rng: SplitMix64,
}

impl BackoffDelays {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let Backoff { base, cap, jitter } = self.backoff;
        let exp = base
            .checked_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(cap)
            .min(cap);
        self.attempt = self.attempt.saturating_add(1);
        let delay = match jitter {
            Jitter::None => exp,
            Jitter::Full => exp.mul_f64(self.rng.next_f64()),
            Jitter::Equal => exp / 2 + (exp / 2).mul_f64(self.rng.next_f64()),
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3).max(base);
                let d = base + (high - base).mul_f64(self.rng.next_f64());
                d.min(cap)
            }
        };
        self.previous = delay.max(base);
        delay
    }

    /// Goes back to the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = self.backoff.base;
    }
}

impl Iterator for BackoffDelays {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// When and how often a failed call is tried again.
///
/// See the [module docs](crate::retry) for which failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Duration,
    pub(crate) backoff: Backoff,
}

impl Default for RetryPolicy {
    /// 3 attempts, 5 s overall, [`Backoff::default`].
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(5),
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Total attempts, the first included. Defaults to 3. Must be at least 1.
    pub fn max_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.max_attempts = attempts;
        self
    }

    /// Overall deadline across all attempts and sleeps: no retry starts after it. Defaults to 5 s.
    pub fn max_elapsed(mut self, deadline: Duration) -> RetryPolicy {
        self.max_elapsed = deadline;
        self
    }

    /// The backoff between attempts. Defaults to [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> RetryPolicy {
        self.backoff = backoff;
        self
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `error` may be retried, given whether the operation is idempotent.
    pub fn is_retry_safe(error: &Error, idempotent: bool) -> bool {
        RetryPolicy::is_retry_safe_with(error, &|| idempotent)
    }

    /// Like [`RetryPolicy::is_retry_safe`], asking `idempotent` only when it matters.
    pub(crate) fn is_retry_safe_with(error: &Error, idempotent: &dyn Fn() -> bool) -> bool {
        let class = error.class();
        if matches!(
            class,
            ErrorClass::CircuitOpen | ErrorClass::TransactionConflict
        ) || !class.is_transient()
        {
            return false;
        }
        match error.delivery() {
            Delivery::NotSent | Delivery::Answered => true,
            Delivery::Unknown => idempotent(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::config(
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)",
            ));
        }
        self.backoff.validate("retry.backoff")
    }
}

/// Whether a command (by name, any case) is one redkit knows to be read-only, and so safe to
/// resend when its fate is unknown.
pub fn is_read_only_command(name: &[u8]) -> bool {
    // Upper-case into a stack buffer, then one `match` (compiled to a few comparisons).
    let mut buf = [0u8; 20];
    let Some(upper) = buf.get_mut(..name.len()) else {
        return false;
    };
    for (d, s) in upper.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    matches!(
        &*upper,
        b"BITCOUNT"
            | b"BITPOS"
            | b"DBSIZE"
            | b"DUMP"
            | b"ECHO"
            | b"EVALSHA_RO"
            | b"EVAL_RO"
            | b"EXISTS"
            | b"EXPIRETIME"
            | b"FCALL_RO"
            | b"GEODIST"
            | b"GEOHASH"
            | b"GEOPOS"
            | b"GEOSEARCH"
            | b"GET"
            | b"GETBIT"
            | b"GETRANGE"
            | b"HEXISTS"
            | b"HGET"
            | b"HGETALL"
            | b"HKEYS"
            | b"HLEN"
            | b"HMGET"
            | b"HRANDFIELD"
            | b"HSCAN"
            | b"HSTRLEN"
            | b"HVALS"
            | b"INFO"
            | b"KEYS"
            | b"LINDEX"
            | b"LLEN"
            | b"LPOS"
            | b"LRANGE"
            | b"MGET"
            | b"PEXPIRETIME"
            | b"PFCOUNT"
            | b"PING"
            | b"PTTL"
            | b"SCAN"
            | b"SCARD"
            | b"SDIFF"
            | b"SINTER"
            | b"SINTERCARD"
            | b"SISMEMBER"
            | b"SMEMBERS"
            | b"SMISMEMBER"
            | b"SRANDMEMBER"
            | b"SSCAN"
            | b"STRLEN"
            | b"SUNION"
            | b"TIME"
            | b"TTL"
            | b"TYPE"
            | b"XINFO"
            | b"XLEN"
            | b"XPENDING"
            | b"XRANGE"
            | b"XREVRANGE"
            | b"ZCARD"
            | b"ZCOUNT"
            | b"ZDIFF"
            | b"ZINTER"
            | b"ZINTERCARD"
            | b"ZLEXCOUNT"
            | b"ZMSCORE"
            | b"ZRANDMEMBER"
            | b"ZRANGE"
            | b"ZRANGEBYLEX"
            | b"ZRANGEBYSCORE"
            | b"ZRANK"
            | b"ZREVRANGE"
            | b"ZREVRANGEBYLEX"
            | b"ZREVRANGEBYSCORE"
            | b"ZREVRANK"
            | b"ZSCAN"
            | b"ZSCORE"
            | b"ZUNION"
    )
}

/// Whether a prepared command is one redkit knows to be read-only.
pub(crate) fn is_read_only_cmd(cmd: &redis::Cmd) -> bool {
    cmd.args_iter()
        .next()
        .is_some_and(|a| matches!(a, redis::Arg::Simple(name) if is_read_only_command(name)))
}

fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mix in a per-call counter so two sequences made in the same nanosecond differ.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    nanos
        ^ COUNTER
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(17)
}

/// A small, fast, seedable generator (SplitMix64); jitter needs no cryptographic quality.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::RedisError;
    use std::io;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_jitter_doubles_up_to_cap() {
        let b = Backoff::exponential(ms(10), ms(100)).jitter(Jitter::None);
        let d: Vec<_> = b.delays_seeded(1).take(6).collect();
        assert_eq!(d, vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let b = Backoff::exponential(ms(10), ms(100)).jitter(Jitter::None);
        let mut d = b.delays_seeded(1);
        for _ in 0..200 {
            assert!(d.next_delay() <= ms(100));
        }
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_is_deterministic() {
        let b = Backoff::exponential(ms(10), ms(1000)).jitter(Jitter::Full);
        let a: Vec<_> = b.delays_seeded(42).take(10).collect();
        let c: Vec<_> = b.delays_seeded(42).take(10).collect();
        assert_eq!(a, c);
        for (i, d) in a.iter().enumerate() {
            let exp = ms(10 * (1 << i)).min(ms(1000));
            assert!(*d <= exp, "attempt {i}: {d:?} > {exp:?}");
        }
        let other: Vec<_> = b.delays_seeded(43).take(10).collect();
        assert_ne!(a, other);
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let b = Backoff::exponential(ms(10), ms(1000)).jitter(Jitter::Equal);
        for (i, d) in b.delays_seeded(7).take(10).enumerate() {
            let exp = ms(10 * (1 << i)).min(ms(1000));
            assert!(d >= exp / 2 && d <= exp, "attempt {i}: {d:?}");
        }
    }

    #[test]
    fn decorrelated_jitter_within_base_and_cap() {
        let b = Backoff::exponential(ms(10), ms(500)).jitter(Jitter::Decorrelated);
        let mut prev = ms(10);
        for d in b.delays_seeded(9).take(50) {
            assert!(d >= ms(10) && d <= ms(500), "{d:?}");
            assert!(d <= (prev * 3).max(ms(10)).min(ms(500)));
            prev = d;
        }
    }

    #[test]
    fn reset_starts_over() {
        let b = Backoff::exponential(ms(10), ms(100)).jitter(Jitter::None);
        let mut d = b.delays_seeded(1);
        d.next_delay();
        d.next_delay();
        d.reset();
        assert_eq!(d.next_delay(), ms(10));
    }

    #[test]
    fn validation() {
        assert!(RetryPolicy::default().max_attempts(0).validate().is_err());
        assert!(RetryPolicy::default()
            .backoff(Backoff::exponential(ms(100), ms(10)))
            .validate()
            .is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    #[test]
    fn retry_safety_depends_on_delivery_and_idempotency() {
        let timeout = RedisError::from(io::Error::from(io::ErrorKind::TimedOut));
        let unknown = Error::from_redis(timeout.clone(), Delivery::Unknown);
        assert!(!RetryPolicy::is_retry_safe(&unknown, false));
        assert!(RetryPolicy::is_retry_safe(&unknown, true));
        let not_sent = Error::from_redis(timeout, Delivery::NotSent);
        assert!(RetryPolicy::is_retry_safe(&not_sent, false));
        let open = Error::CircuitOpen { retry_after: ms(1) };
        assert!(!RetryPolicy::is_retry_safe(&open, true));
    }

    #[test]
    fn read_only_commands() {
        assert!(is_read_only_command(b"get"));
        assert!(is_read_only_command(b"MGET"));
        assert!(!is_read_only_command(b"INCR"));
        assert!(!is_read_only_command(b"SET"));
        assert!(!is_read_only_command(b"LPUSH"));
        assert!(!is_read_only_command(
            b"A_COMMAND_NAME_LONGER_THAN_THE_BUFFER"
        ));
        assert!(!is_read_only_command(b""));
    }
}
