//! GCRA: a smooth rate with a burst allowance, in one key per subject.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::{
    decide, delete, micros, period, positive, subject_key, Decision, RateLimiter, DEFAULT_PREFIX,
};
use crate::error::Result;
use crate::script::static_script;
use crate::Redis;

/// A GCRA limit: `rate` per `period`, with at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraLimit {
    rate: u64,
    period: Duration,
    burst: u64,
}

impl GcraLimit {
    /// `rate` per `period`, with a burst of `rate`.
    pub fn new(rate: u64, period: Duration) -> GcraLimit {
        GcraLimit {
            rate,
            period,
            burst: rate,
        }
    }

    /// `rate` per second, with a burst of `rate`.
    pub fn per_second(rate: u64) -> GcraLimit {
        GcraLimit::new(rate, Duration::from_secs(1))
    }

    /// `rate` per minute, with a burst of `rate`.
    pub fn per_minute(rate: u64) -> GcraLimit {
        GcraLimit::new(rate, Duration::from_secs(60))
    }

    /// `rate` per hour, with a burst of `rate`.
    pub fn per_hour(rate: u64) -> GcraLimit {
        GcraLimit::new(rate, Duration::from_secs(3600))
    }

    /// How many may go at once after a quiet spell. Defaults to the rate.
    pub fn burst(mut self, burst: u64) -> GcraLimit {
        self.burst = burst;
        self
    }

    /// The rate.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The period of the rate.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst.
    pub fn burst_size(&self) -> u64 {
        self.burst
    }

    pub(crate) fn validate(&self) -> Result<()> {
        positive("ratelimit.rate", self.rate)?;
        positive("ratelimit.burst", self.burst)?;
        period("ratelimit.period", self.period)?;
        super::refill_span("ratelimit.burst", self.burst, self.rate, self.period)
    }

    /// The script arguments: burst, rate, period in microseconds.
    pub(crate) fn args(&self) -> [i64; 3] {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        [int(self.burst), int(self.rate), micros(self.period)]
    }
}

static_script!(pub(crate) script, "gcra.lua");

/// The generic cell rate algorithm (the one go-redis/redis_rate uses), on the server's clock:
/// requests are spaced `period / rate` apart on average, and up to `burst` may go at once
/// after a quiet spell. One key per subject holding a single timestamp; O(1) memory.
///
/// Its results match redis_rate's for the same inputs (a limit of 10 per second with a burst
/// of 10: `allow` gives 1 allowed, 9 remaining, reset after 100 ms; then `allow_n(2)` gives
/// 2 allowed, 7 remaining, reset after 300 ms), with two differences: a request larger than
/// the burst gets [`RetryAfter::Never`](super::RetryAfter::Never) instead of a wait that would
/// never help, and [`Gcra::allow_at_most`] grants whole units only.
///
/// Changing the limit at run time ([`Gcra::set_limit`]) keeps the stored state: what was
/// already taken keeps counting, spaced at the new rate, against the new burst.
///
/// ```no_run
/// use redkit::ratelimit::{Gcra, GcraLimit, RateLimiter};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let api = Gcra::new(&redis, "api", GcraLimit::per_second(10).burst(20))?;
/// let d = api.allow("user:42")?;
/// if !d.is_allowed() {
///     println!("slow down: retry after {:?}", d.retry_after);
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gcra {
    redis: Redis,
    name: String,
    prefix: String,
    limit: Arc<RwLock<GcraLimit>>,
    max_wait: Duration,
}

impl Gcra {
    /// A limiter named `name` (part of its keys) with `limit`.
    pub fn new(redis: &Redis, name: &str, limit: GcraLimit) -> Result<Gcra> {
        limit.validate()?;
        Ok(Gcra {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            limit: Arc::new(RwLock::new(limit)),
            max_wait: Duration::from_secs(10),
        })
    }

    /// The key prefix, before the limiter's name. Defaults to `redkit:rl:` (after the
    /// handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix), if any).
    pub fn prefix(mut self, prefix: &str) -> Gcra {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long [`RateLimiter::acquire`] waits at most. Defaults to 10 s.
    pub fn max_wait(mut self, d: Duration) -> Gcra {
        self.max_wait = d;
        self
    }

    /// The current limit.
    pub fn limit(&self) -> GcraLimit {
        *self.limit.read()
    }

    /// Changes the limit for every clone of this limiter, keeping the stored state.
    pub fn set_limit(&self, limit: GcraLimit) -> Result<()> {
        limit.validate()?;
        *self.limit.write() = limit;
        Ok(())
    }

    /// The key that holds `subject`'s state.
    pub fn key(&self, subject: &str) -> String {
        self.redis
            .key(&subject_key(&self.prefix, &self.name, subject))
    }

    /// Grants as many of `n` units as fit now (at least one, or none and a retry-after).
    pub fn allow_at_most(&self, subject: &str, n: u64) -> Result<Decision> {
        self.run(subject, n, true)
    }

    fn run(&self, subject: &str, n: u64, at_most: bool) -> Result<Decision> {
        let flag = if at_most { "1" } else { "0" };
        let args = self.limit().args();
        decide(&self.redis, script(), self.key(subject), &args, n, &[flag])
    }
}

impl super::MultiPart for Gcra {
    fn part(&self, subject: &str) -> super::LimitPart {
        super::LimitPart::new(self.key(subject), "g", self.limit().args())
    }
}

impl super::DecideOn for Gcra {
    fn allow_n_on(
        &self,
        con: &mut dyn redis::ConnectionLike,
        subject: &str,
        n: u64,
    ) -> Result<Decision> {
        let args = self.limit().args();
        super::decide_on(con, script(), self.key(subject), &args, n, &["0"])
    }
}

impl RateLimiter for Gcra {
    fn allow_n(&self, subject: &str, n: u64) -> Result<Decision> {
        self.run(subject, n, false)
    }

    fn reset(&self, subject: &str) -> Result<()> {
        delete(&self.redis, self.key(subject))
    }

    fn max_wait(&self) -> Duration {
        self.max_wait
    }
}
