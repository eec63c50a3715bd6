//! Several limits checked and consumed together, all or nothing, in one round trip.

use super::{Decision, RetryAfter};
use crate::error::{Error, Result};
use crate::ratelimit::Gcra;
use crate::script::static_script;
use crate::Redis;

static_script!(script, "multi.lua");

/// The outcome of a [`MultiLimit`] check.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Units granted: the request's size when every limit allowed it, otherwise 0 (and no
    /// limit was charged anything).
    pub allowed: u64,
    /// When the request may succeed: the longest wait among the limits that denied it,
    /// [`RetryAfter::Never`] when one of them can never grant it.
    pub retry_after: RetryAfter,
    /// Each limit's own decision, in the order given. On a denial, a limit that would have
    /// allowed shows 0 allowed and its remaining as if the request had not been made.
    pub parts: Vec<Decision>,
}

impl MultiDecision {
    /// Whether every limit granted the request.
    pub fn is_allowed(&self) -> bool {
        self.allowed > 0
    }

    /// The index in `parts` of the first limit that denied the request.
    pub fn denied_by(&self) -> Option<usize> {
        self.parts
            .iter()
            .position(|d| d.retry_after != RetryAfter::Now)
    }
}

/// Checks several [`Gcra`] limits at once, for example 10 per second AND 1,000 per hour for a
/// user AND 100 per second for the user's tenant: in one script and one round trip, all or
/// nothing (a denial by one limit takes nothing from the others). No other client library
/// offers this; checking limits one after the other either charges limits for requests that
/// another one then denies, or lets a race through between the checks.
///
/// Each part is a limiter and the subject it limits. On Redis Cluster, every key of one check
/// must be in one slot: keys are tagged by subject, so one check may span several limiters but
/// only one subject there.
///
/// ```no_run
/// use redkit::ratelimit::{Gcra, GcraLimit, MultiLimit};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let per_second = Gcra::new(&redis, "user-s", GcraLimit::per_second(10))?;
/// let per_hour = Gcra::new(&redis, "user-h", GcraLimit::per_hour(1000))?;
/// let tenant = Gcra::new(&redis, "tenant", GcraLimit::per_second(100))?;
/// let multi = MultiLimit::new(&redis);
/// let d = multi.allow_n(&[(&per_second, "u42"), (&per_hour, "u42"), (&tenant, "acme")], 1)?;
/// if !d.is_allowed() {
///     println!("denied by limit #{:?}, retry after {:?}", d.denied_by(), d.retry_after);
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MultiLimit {
    redis: Redis,
}

impl MultiLimit {
    /// A checker on `redis`.
    pub fn new(redis: &Redis) -> MultiLimit {
        MultiLimit {
            redis: redis.unprefixed(),
        }
    }

    /// Takes `n` units from every part if every part allows it; otherwise takes nothing.
    /// `n = 0` only looks.
    pub fn allow_n(&self, parts: &[(&Gcra, &str)], n: u64) -> Result<MultiDecision> {
        if parts.is_empty() {
            return Err(Error::config("ratelimit.multi", "needs at least one limit"));
        }
        let mut call = script().call().arg(n);
        for (limiter, subject) in parts {
            call = call.key(limiter.key(subject));
            for a in limiter.limit().args() {
                call = call.arg(a);
            }
        }
        let reply: Vec<i64> = call.run(&self.redis)?;
        let parts = reply
            .chunks(5)
            .map(Decision::from_reply)
            .collect::<Result<Vec<_>>>()?;
        let denied = parts.iter().any(|d| d.retry_after != RetryAfter::Now);
        let retry_after =
            parts
                .iter()
                .map(|d| d.retry_after)
                .fold(RetryAfter::Now, |acc, r| match (acc, r) {
                    (RetryAfter::Never, _) | (_, RetryAfter::Never) => RetryAfter::Never,
                    (RetryAfter::After(a), RetryAfter::After(b)) => RetryAfter::After(a.max(b)),
                    (RetryAfter::Now, x) | (x, RetryAfter::Now) => x,
                });
        Ok(MultiDecision {
            allowed: if denied { 0 } else { n },
            retry_after,
            parts,
        })
    }
}
