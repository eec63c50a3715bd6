//! Token bucket: a bucket of tokens refilled at a steady rate, several taken at once.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::{micros, period, positive, subject_key, Decision, RateLimiter, DEFAULT_PREFIX};
use crate::error::Result;
use crate::script::static_script;
use crate::Redis;

/// A token bucket limit: at most `capacity` tokens, refilled by `refill` tokens every `per`
/// (continuously: a refill of 10 per second adds one token every 100 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLimit {
    capacity: u64,
    refill: u64,
    per: Duration,
}

impl BucketLimit {
    /// A bucket of `capacity` tokens refilled by `refill` tokens every `per`.
    pub fn new(capacity: u64, refill: u64, per: Duration) -> BucketLimit {
        BucketLimit {
            capacity,
            refill,
            per,
        }
    }

    /// The most tokens the bucket holds (and the largest request it can ever grant).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How many tokens are added every [`per`](BucketLimit::per).
    pub fn refill(&self) -> u64 {
        self.refill
    }

    /// The period of the refill.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// Checks the limit: capacity and refill at least 1, a period of at least 1 ms and at
    /// most ten years, and a bucket that refills within ten years.
    pub fn validate(&self) -> Result<()> {
        positive("ratelimit.capacity", self.capacity)?;
        positive("ratelimit.refill", self.refill)?;
        period("ratelimit.per", self.per)?;
        super::refill_span("ratelimit.capacity", self.capacity, self.refill, self.per)
    }

    /// The script arguments: capacity, refill, period in microseconds.
    fn args(&self) -> [i64; 3] {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        [int(self.capacity), int(self.refill), micros(self.per)]
    }
}

static_script!(script, "token_bucket.lua");

/// A token bucket on the server's clock: a subject starts with `capacity` tokens, every request
/// takes `n` of them (all or nothing), and tokens flow back at the refill rate up to the
/// capacity. Unlike [`Gcra`](super::Gcra), requests of different sizes are the natural use
/// (`allow_n(subject, bytes / 1024)`).
///
/// One hash per subject holds the token count and the server time it was taken at; each
/// decision first adds what flowed in since. A request for more tokens than the capacity
/// gets [`RetryAfter::Never`](super::RetryAfter::Never); a denied request gets the time until
/// its `n` tokens will be there; `reset_after` is the time until the bucket is full.
/// `n = 0` only looks and writes nothing. A granted request sets the key's TTL to the time
/// until the bucket is full again (at least 1 ms), so idle keys vanish: an absent key is a
/// full bucket.
///
/// Changing the limit at run time ([`TokenBucket::set_limit`]) keeps the stored state: the
/// token count is kept, clamped to the new capacity, and refilled at the new rate from then
/// on. The state is updated lazily, so "then" is the subject's last granted request: the
/// new rate also applies to the time since it. A key written under the old limit keeps its
/// TTL, the time the bucket needed to fill under the old limit; after a change that makes
/// buckets fill more slowly (a lower rate or a larger capacity) such a subject may read as
/// full that much early, once.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::ratelimit::{BucketLimit, RateLimiter, TokenBucket};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// // Bursts of up to 100 units, 10 units per second sustained.
/// let uploads = TokenBucket::new(&redis, "uploads", BucketLimit::new(100, 10, Duration::from_secs(1)))?;
/// let d = uploads.allow_n("user:42", 25)?;
/// if !d.is_allowed() {
///     println!("{} left; retry after {:?}", d.remaining, d.retry_after);
/// }
/// // A worker thread that waits for its tokens (at most 10 s by default):
/// uploads.acquire("user:42", 5)?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TokenBucket {
    redis: Redis,
    name: String,
    prefix: String,
    limit: Arc<RwLock<BucketLimit>>,
    max_wait: Duration,
}

impl TokenBucket {
    /// A limiter named `name` (part of its keys) with `limit`.
    pub fn new(redis: &Redis, name: &str, limit: BucketLimit) -> Result<TokenBucket> {
        limit.validate()?;
        Ok(TokenBucket {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            limit: Arc::new(RwLock::new(limit)),
            max_wait: Duration::from_secs(10),
        })
    }

    /// The key prefix, before the limiter's name. Defaults to `redkit:rl:` (after the
    /// handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix), if any).
    pub fn prefix(mut self, prefix: &str) -> TokenBucket {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long [`RateLimiter::acquire`] waits at most. Defaults to 10 s.
    pub fn max_wait(mut self, d: Duration) -> TokenBucket {
        self.max_wait = d;
        self
    }

    /// The current limit.
    pub fn limit(&self) -> BucketLimit {
        *self.limit.read()
    }

    /// Changes the limit for every clone of this limiter, keeping the stored state: each
    /// subject's token count is kept, clamped to the new capacity, and refilled at the new
    /// rate from its last update on (see the type's docs).
    pub fn set_limit(&self, limit: BucketLimit) -> Result<()> {
        limit.validate()?;
        *self.limit.write() = limit;
        Ok(())
    }

    /// The key that holds `subject`'s state.
    pub fn key(&self, subject: &str) -> String {
        self.redis
            .key(&subject_key(&self.prefix, &self.name, subject))
    }
}

impl super::MultiPart for TokenBucket {
    fn part(&self, subject: &str) -> super::LimitPart {
        super::LimitPart::new(self.key(subject), "b", self.limit().args())
    }
}

impl super::DecideOn for TokenBucket {
    fn allow_n_on(
        &self,
        con: &mut dyn redis::ConnectionLike,
        subject: &str,
        n: u64,
    ) -> Result<Decision> {
        let args = self.limit().args();
        super::decide_on(con, script(), self.key(subject), &args, n, &[])
    }
}

impl RateLimiter for TokenBucket {
    fn allow_n(&self, subject: &str, n: u64) -> Result<Decision> {
        let args = self.limit().args();
        super::decide(&self.redis, script(), self.key(subject), &args, n, &[])
    }

    fn reset(&self, subject: &str) -> Result<()> {
        super::delete(&self.redis, self.key(subject))
    }

    fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate() {
        let s = Duration::from_secs(1);
        assert!(BucketLimit::new(10, 1, s).validate().is_ok());
        assert!(BucketLimit::new(0, 1, s).validate().is_err());
        assert!(BucketLimit::new(10, 0, s).validate().is_err());
        assert!(BucketLimit::new(10, 1, Duration::from_micros(999))
            .validate()
            .is_err());
        let l = BucketLimit::new(10, 2, Duration::from_millis(500));
        assert_eq!(
            (l.capacity(), l.refill(), l.per()),
            (10, 2, Duration::from_millis(500))
        );
        assert_eq!(l.args(), [10, 2, 500_000]);
    }
}
