//! Window limiters: N per period, counted exactly (sliding log), smoothed across window edges
//! (sliding window counter) or per calendar window (fixed window).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::{micros, period, positive, subject_key, Decision, RateLimiter, DEFAULT_PREFIX};
use crate::error::Result;
use crate::Redis;

/// A window limit: at most `limit` units per `period`, shared by [`SlidingLog`],
/// [`SlidingWindow`] and [`FixedWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    limit: u64,
    period: Duration,
}

impl WindowLimit {
    /// `limit` per `period`.
    pub fn new(limit: u64, period: Duration) -> WindowLimit {
        WindowLimit { limit, period }
    }

    /// `limit` per second.
    pub fn per_second(limit: u64) -> WindowLimit {
        WindowLimit::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u64) -> WindowLimit {
        WindowLimit::new(limit, Duration::from_secs(60))
    }

    /// `limit` per hour.
    pub fn per_hour(limit: u64) -> WindowLimit {
        WindowLimit::new(limit, Duration::from_secs(3600))
    }

    /// How many units one window admits.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The length of the window.
    pub fn period(&self) -> Duration {
        self.period
    }

    pub(crate) fn validate(&self) -> Result<()> {
        positive("ratelimit.limit", self.limit)?;
        period("ratelimit.period", self.period)?;
        Ok(())
    }

    /// The script arguments: limit, period in microseconds.
    pub(crate) fn args(&self) -> [i64; 2] {
        [
            i64::try_from(self.limit).unwrap_or(i64::MAX),
            micros(self.period),
        ]
    }
}

/// The struct, its builder methods and its [`RateLimiter`] impl: the three window limiters
/// differ only in their script and their docs.
macro_rules! window_limiter {
    (
        $(#[$doc:meta])*
        pub struct $name:ident;
        script = $file:literal;
        kind = $kind:literal;
        $(#[$set_limit_doc:meta])*
        fn set_limit;
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            redis: Redis,
            name: String,
            prefix: String,
            limit: Arc<RwLock<WindowLimit>>,
            max_wait: Duration,
        }

        impl $name {
            /// A limiter named `name` (part of its keys) with `limit`.
            pub fn new(redis: &Redis, name: &str, limit: WindowLimit) -> Result<$name> {
                limit.validate()?;
                Ok($name {
                    redis: redis.unprefixed(),
                    name: name.to_owned(),
                    prefix: DEFAULT_PREFIX.to_owned(),
                    limit: Arc::new(RwLock::new(limit)),
                    max_wait: Duration::from_secs(10),
                })
            }

            /// The key prefix, before the limiter's name. Defaults to `redkit:rl:` (after the
            /// handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix), if any).
            pub fn prefix(mut self, prefix: &str) -> $name {
                self.prefix = prefix.to_owned();
                self
            }

            /// How long [`RateLimiter::acquire`] waits at most. Defaults to 10 s.
            pub fn max_wait(mut self, d: Duration) -> $name {
                self.max_wait = d;
                self
            }

            /// The current limit.
            pub fn limit(&self) -> WindowLimit {
                *self.limit.read()
            }

            $(#[$set_limit_doc])*
            pub fn set_limit(&self, limit: WindowLimit) -> Result<()> {
                limit.validate()?;
                *self.limit.write() = limit;
                Ok(())
            }

            /// The key that holds `subject`'s state.
            pub fn key(&self, subject: &str) -> String {
                self.redis
                    .key(&subject_key(&self.prefix, &self.name, subject))
            }

            crate::script::static_script!(script, $file);
        }

        impl super::MultiPart for $name {
            fn part(&self, subject: &str) -> super::LimitPart {
                let [limit, period] = self.limit().args();
                super::LimitPart::new(self.key(subject), $kind, [limit, period, 0])
            }
        }

        impl super::DecideOn for $name {
            fn allow_n_on(
                &self,
                con: &mut dyn redis::ConnectionLike,
                subject: &str,
                n: u64,
            ) -> Result<Decision> {
                let args = self.limit().args();
                super::decide_on(con, $name::script(), self.key(subject), &args, n, &[])
            }
        }

        impl RateLimiter for $name {
            fn allow_n(&self, subject: &str, n: u64) -> Result<Decision> {
                let args = self.limit().args();
                super::decide(&self.redis, $name::script(), self.key(subject), &args, n, &[])
            }

            fn reset(&self, subject: &str) -> Result<()> {
                super::delete(&self.redis, self.key(subject))
            }

            fn max_wait(&self) -> Duration {
                self.max_wait
            }
        }
    };
}

window_limiter! {
    /// The sliding log: never more than `limit` admitted in *any* window of length `period`,
    /// exactly (the window is half open: an admission at time `t` counts until `t + period`).
    /// Each subject's key is a sorted set holding the server time of every admitted unit of
    /// the last period, so memory is O(limit) per subject (measured with `MEMORY USAGE` on
    /// Redis 7.0: about 36 bytes per unit up to 128 units, stored as a listpack, about 120
    /// bytes per unit beyond): pick it when exactness matters and limits are modest;
    /// [`SlidingWindow`] approximates it in O(1) memory.
    ///
    /// [`allow_n`](RateLimiter::allow_n) is all or nothing: `n` units are admitted when they
    /// all fit, otherwise none is and nothing is written. A denial's retry-after is the time
    /// until enough old admissions have left the window for `n` to fit (the
    /// `(count + n - limit)`-th oldest admission's time plus the period); a request larger than
    /// the limit gets [`RetryAfter::Never`](super::RetryAfter::Never). The reset-after is the
    /// time until the newest admission leaves the window. `n = 0` only looks (see
    /// [`RateLimiter::peek`]): it writes nothing and never asks to wait.
    ///
    /// An admission prunes what left the window and sets the key's TTL to the time until the
    /// newest admission leaves it (at most one period).
    ///
    /// Each limiter needs its own name: two limiters of different kinds with one name and
    /// prefix would share keys.
    ///
    /// ```no_run
    /// use redkit::ratelimit::{RateLimiter, SlidingLog, WindowLimit};
    ///
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// // Never more than 100 logins in any 10 minutes, whatever the timing.
    /// let logins = SlidingLog::new(
    ///     &redis,
    ///     "logins",
    ///     WindowLimit::new(100, std::time::Duration::from_secs(600)),
    /// )?;
    /// let d = logins.allow("user:42")?;
    /// if !d.is_allowed() {
    ///     println!("too many logins: retry after {:?}", d.retry_after);
    /// }
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub struct SlidingLog;
    script = "sliding_log.lua";
    kind = "l";
    /// Changes the limit for every clone of this limiter, keeping the log.
    ///
    /// A new limit applies at once to the admissions in the log: a lower one denies until
    /// enough of them have left the window, a higher one admits more at once. A shorter period
    /// applies at once too (older admissions stop counting). A longer period counts only what
    /// the log still holds: admissions older than the old period were pruned already (and the
    /// key expires one old period after its newest admission unless another one comes), so
    /// the first new period may admit that many more than the new limit.
    fn set_limit;
}

window_limiter! {
    /// The sliding window counter: the count of the calendar window in progress plus the
    /// previous window's, weighted by the share of the previous window the sliding window still
    /// covers: `count = prev * (1 - elapsed / period) + cur`; `n` units are admitted when
    /// `count + n <= limit`. Windows are aligned to the Unix epoch (`floor(now / period)`).
    /// Memory is O(1) per subject: one hash with three fields (the last admission's time and
    /// the two counts); its TTL is at most two periods (until the window after the last
    /// admission's ends).
    ///
    /// The count is an approximation that assumes the previous window's admissions were spread
    /// evenly over it. It never admits more than `limit` in one calendar window, but a sliding
    /// window of one period may see more (up to nearly twice the limit in the worst case, when
    /// the previous window's admissions all came at its very end) or fewer. Use [`SlidingLog`]
    /// when that matters.
    ///
    /// A denial's retry-after is the earliest time at which `n` fit if nothing more is taken:
    /// within the window in progress when the fading previous count is all that is in the way
    /// (`elapsed = period * (1 - (limit - n - cur) / prev)`), otherwise in the next window,
    /// where the current count becomes the previous one and fades from its start. The
    /// reset-after is the time until the count is back to 0: the end of the next window when
    /// the window in progress has admissions, the end of this one when only the previous one
    /// has. A request larger than the limit gets
    /// [`RetryAfter::Never`](super::RetryAfter::Never); `n = 0` only looks; denials write
    /// nothing.
    ///
    /// Each limiter needs its own name: two limiters of different kinds with one name and
    /// prefix would share keys.
    ///
    /// ```no_run
    /// use redkit::ratelimit::{RateLimiter, SlidingWindow, WindowLimit};
    ///
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let api = SlidingWindow::new(&redis, "api", WindowLimit::per_minute(600))?;
    /// let d = api.allow_n("tenant:acme", 5)?;
    /// println!("{} granted, {} remaining", d.granted, d.remaining);
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub struct SlidingWindow;
    script = "sliding_window.lua";
    kind = "s";
    /// Changes the limit for every clone of this limiter, keeping the counts.
    ///
    /// A new limit applies at once to the weighted count: a lower one may deny the rest of the
    /// window, a higher one admits more at once. With a new period the stored counts are
    /// placed by the new-period window the last admission falls in: they stay the current and
    /// previous counts when it falls in the window in progress, the current count becomes the
    /// previous one when it falls in the window before, and both are dropped when it is older.
    /// A shorter period therefore errs on the safe side (a whole old window's count weighs on
    /// one short window); a longer one forgets the old windows before the last two (and the
    /// key, set to expire two old periods after the last admission's window began, lives
    /// longer only from the next admission).
    fn set_limit;
}

window_limiter! {
    /// The fixed window: at most `limit` units per calendar window, windows aligned to the
    /// Unix epoch (`floor(now / period)`: a per-minute limit resets on the minute, a per-hour
    /// one on the hour, in UTC). The cheapest limiter: one small hash per subject (the last
    /// admission's time and the window's count), O(1) memory,
    /// expiring when the window ends. It allows bursts of up to twice the limit across a
    /// window edge (the end of one window and the start of the next); [`SlidingWindow`]
    /// smooths that.
    ///
    /// A denial's retry-after, like every decision's reset-after, is the time until the window
    /// ends (the reset-after is 0 while the window has no admissions). A request larger than
    /// the limit gets [`RetryAfter::Never`](super::RetryAfter::Never); `n = 0` only looks;
    /// denials write nothing.
    ///
    /// Each limiter needs its own name: two limiters of different kinds with one name and
    /// prefix would share keys.
    ///
    /// ```no_run
    /// use redkit::ratelimit::{FixedWindow, RateLimiter, WindowLimit};
    ///
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let exports = FixedWindow::new(&redis, "exports", WindowLimit::per_hour(20))?;
    /// if !exports.try_acquire("user:42", 1)? {
    ///     println!("20 exports per hour: try again next hour");
    /// }
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub struct FixedWindow;
    script = "fixed_window.lua";
    kind = "f";
    /// Changes the limit for every clone of this limiter, keeping the count of the window in
    /// progress.
    ///
    /// A new limit applies at once to that count: a lower one may deny the rest of the window,
    /// a higher one admits more in it. With a new period the count is charged to the
    /// new-period window its last admission falls in (and dropped when that window is over):
    /// a shorter period errs on the safe side (the whole old window's count weighs on one
    /// short window); a longer one forgets the old windows before the last one (and the key,
    /// set to expire at the old window's end, lives longer only from the next admission).
    fn set_limit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate() {
        assert!(WindowLimit::per_second(5).validate().is_ok());
        assert!(WindowLimit::per_minute(0).validate().is_err());
        assert!(WindowLimit::new(5, Duration::from_micros(999))
            .validate()
            .is_err());
        let l = WindowLimit::per_hour(7);
        assert_eq!((l.limit(), l.period()), (7, Duration::from_secs(3600)));
        assert_eq!(WindowLimit::per_minute(3).args(), [3, 60_000_000]);
    }
}
