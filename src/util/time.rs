//! Deadline arithmetic that never panics: `Instant + Duration` overflows (and panics) for
//! huge durations such as `Duration::MAX`; these saturate at a point far in the future.

use std::time::{Duration, Instant};

/// About thirty years: far enough to mean "never" for any wait, near enough to be
/// representable on every platform.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `from + d`, or a moment about thirty years after `from` when that overflows.
pub(crate) fn add(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(FAR))
        .or_else(|| from.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(from)
}

/// `Instant::now() + d`, saturating (see [`add`]).
pub(crate) fn after(d: Duration) -> Instant {
    add(Instant::now(), d)
}

/// The earlier of two optional deadlines (`None` is no deadline).
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The time left until `deadline` (zero once it has passed).
pub(crate) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        let now = Instant::now();
        let far = add(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            add(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert!(after(Duration::MAX) > now);
        assert_eq!(earliest(Some(now), None), Some(now));
        assert_eq!(earliest(None, None), None);
        assert_eq!(left(now), Duration::ZERO);
    }
}
