//! Several limits of any kind checked and consumed together, all or nothing, in one round
//! trip.

use super::{Decision, RetryAfter};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(script, "multi.lua");

/// The outcome of a [`MultiLimit`] check.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Units granted: the request's size when every limit allowed it, otherwise 0 (and no
    /// limit was charged anything).
    pub granted: u64,
    /// Units granted: the old name of [`granted`](MultiDecision::granted).
    #[deprecated(since = "0.2.0", note = "a count, not a yes/no: use `granted`")]
    pub allowed: u64,
    /// When the request may succeed: the longest wait among the limits that denied it,
    /// [`RetryAfter::Never`] when one of them can never grant it.
    pub retry_after: RetryAfter,
    /// Each limit's own decision, in the order given. On a denial, a limit that would have
    /// allowed shows 0 granted and its remaining as if the request had not been made.
    pub parts: Vec<Decision>,
}

impl MultiDecision {
    /// Whether every limit granted the request.
    pub fn is_allowed(&self) -> bool {
        self.granted > 0
    }

    /// The index in `parts` of the first limit that denied the request.
    pub fn denied_by(&self) -> Option<usize> {
        self.parts
            .iter()
            .position(|d| d.retry_after != RetryAfter::Now)
    }
}

/// One limit and the subject it limits, as a part of a [`MultiLimit`] check: made by
/// [`MultiPart::part`] (`gcra.part("u42")`), or given as a `(&limiter, "u42")` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPart {
    key: String,
    kind: &'static str,
    args: [i64; 3],
}

impl LimitPart {
    pub(crate) fn new(key: String, kind: &'static str, args: [i64; 3]) -> LimitPart {
        LimitPart { key, kind, args }
    }

    /// The key that holds the subject's state.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A limiter that can be one part of a [`MultiLimit`]: [`Gcra`](super::Gcra),
/// [`SlidingLog`](super::SlidingLog), [`SlidingWindow`](super::SlidingWindow),
/// [`FixedWindow`](super::FixedWindow) and [`TokenBucket`](super::TokenBucket).
pub trait MultiPart {
    /// This limiter's limit on `subject`, with the limit as it is now.
    fn part(&self, subject: &str) -> LimitPart;
}

/// What [`MultiLimit::allow_n`] takes: a [`LimitPart`], or a `(&limiter, subject)` pair.
pub trait ToLimitPart {
    /// The part.
    fn to_part(&self) -> LimitPart;
}

impl ToLimitPart for LimitPart {
    fn to_part(&self) -> LimitPart {
        self.clone()
    }
}

impl<L: MultiPart + ?Sized> ToLimitPart for (&L, &str) {
    fn to_part(&self) -> LimitPart {
        self.0.part(self.1)
    }
}

impl<L: MultiPart + ?Sized> ToLimitPart for (&L, &String) {
    fn to_part(&self) -> LimitPart {
        self.0.part(self.1)
    }
}

/// Checks several limits at once, of any kind (GCRA, sliding log, sliding window, fixed
/// window, token bucket), for example 10 per second (GCRA) AND 1,000 per hour (a sliding log)
/// for a user AND a token bucket for the user's tenant: in one script and one round trip, all
/// or nothing (a denial by one limit takes nothing from the others). Checking limits one
/// after the other either charges limits for requests that another one then denies, or lets
/// a race through between the checks.
///
/// Each part decides exactly as its limiter alone would (the same algorithm, on the same
/// server clock reading); `n = 0` only looks. Each part must be a different key (a limiter
/// and subject given twice would be checked twice against the same state). On Redis Cluster,
/// every key of one check must be in one slot: keys are tagged by subject, so one check may
/// span several limiters but only one subject there.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::ratelimit::{
///     BucketLimit, Gcra, GcraLimit, MultiLimit, MultiPart, SlidingLog, TokenBucket, WindowLimit,
/// };
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let per_second = Gcra::new(&redis, "user-s", GcraLimit::per_second(10))?;
/// let per_hour = SlidingLog::new(&redis, "user-h", WindowLimit::per_hour(1000))?;
/// let tenant = TokenBucket::new(&redis, "tenant", BucketLimit::new(100, 50, Duration::from_secs(1)))?;
/// let multi = MultiLimit::new(&redis);
/// let d = multi.allow_n(&[per_second.part("u42"), per_hour.part("u42"), tenant.part("acme")], 1)?;
/// if !d.is_allowed() {
///     println!("denied by limit #{:?}, retry after {:?}", d.denied_by(), d.retry_after);
/// }
/// // Limits of one kind can also be given as pairs:
/// let d = multi.allow_n(&[(&per_second, "u42"), (&per_second, "u43")], 1)?;
/// # let _ = d;
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
    pub fn allow_n<P: ToLimitPart>(&self, parts: &[P], n: u64) -> Result<MultiDecision> {
        if parts.is_empty() {
            return Err(Error::config("ratelimit.multi", "needs at least one limit"));
        }
        let mut call = script().call().arg(n);
        for p in parts {
            let part = p.to_part();
            call = call.key(part.key).arg(part.kind);
            for a in part.args {
                call = call.arg(a);
            }
        }
        let reply: Vec<i64> = call.run(&self.redis)?;
        if reply.len() != parts.len() * 5 {
            return Err(super::bad_reply(format!(
                "expected {} integers, got {reply:?}",
                parts.len() * 5
            )));
        }
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
        let granted = if denied { 0 } else { n };
        #[allow(deprecated)]
        Ok(MultiDecision {
            granted,
            allowed: granted,
            retry_after,
            parts,
        })
    }
}
