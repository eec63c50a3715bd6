//! `MultiLimit` over every kind of limit at once: all or nothing, the same decisions as each
//! limiter alone, and exact under contention.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redkit::ratelimit::{
    BucketLimit, Decision, FixedWindow, Gcra, GcraLimit, LimitPart, MultiLimit, MultiPart,
    RateLimiter, RetryAfter, SlidingLog, SlidingWindow, TokenBucket, WindowLimit,
};
use redkit::Redis;
use support::*;

/// Long periods: no refill during a test, and no window edge (windows are aligned to the
/// Unix epoch: the next edge of a 3,650-day window is in 2029).
const LONG: Duration = Duration::from_secs(86_400 * 3650);

fn dump(redis: &Redis, key: &str) -> Option<Vec<u8>> {
    redis.query(redis::cmd("DUMP").arg(key)).expect("DUMP")
}

/// One limiter of each kind (named after `tag`), each allowing `n` per hour.
struct Five {
    gcra: Gcra,
    log: SlidingLog,
    sliding: SlidingWindow,
    fixed: FixedWindow,
    bucket: TokenBucket,
}

impl Five {
    fn new(redis: &Redis, tag: &str, n: u64) -> redkit::Result<Five> {
        let window = WindowLimit::new(n, LONG);
        Ok(Five {
            gcra: Gcra::new(redis, &format!("{tag}-g"), GcraLimit::new(n, LONG))?,
            log: SlidingLog::new(redis, &format!("{tag}-l"), window)?,
            sliding: SlidingWindow::new(redis, &format!("{tag}-s"), window)?,
            fixed: FixedWindow::new(redis, &format!("{tag}-f"), window)?,
            bucket: TokenBucket::new(redis, &format!("{tag}-b"), BucketLimit::new(n, n, LONG))?,
        })
    }

    fn parts(&self, subject: &str) -> [LimitPart; 5] {
        [
            self.gcra.part(subject),
            self.log.part(subject),
            self.sliding.part(subject),
            self.fixed.part(subject),
            self.bucket.part(subject),
        ]
    }

    fn alone(&self, i: usize, subject: &str, n: u64) -> redkit::Result<Decision> {
        match i {
            0 => self.gcra.allow_n(subject, n),
            1 => self.log.allow_n(subject, n),
            2 => self.sliding.allow_n(subject, n),
            3 => self.fixed.allow_n(subject, n),
            _ => self.bucket.allow_n(subject, n),
        }
    }
}

fn kind(r: RetryAfter) -> u8 {
    match r {
        RetryAfter::Now => 0,
        RetryAfter::After(_) => 1,
        _ => 2,
    }
}

#[test]
fn each_kind_decides_in_a_multi_limit_as_it_does_alone() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let five = Five::new(&redis, "same", 10)?;
    let multi = MultiLimit::new(&redis);
    // The same sequence on two subjects: through the multi-limit (one part at a time) and
    // through each limiter alone.
    for (i, part) in five.parts("via-multi").into_iter().enumerate() {
        for n in [1, 3, 0, 4, 2, 3, 11, 0, 1] {
            let m = multi.allow_n(std::slice::from_ref(&part), n)?;
            let a = five.alone(i, "alone", n)?;
            let p = &m.parts[0];
            assert_eq!(
                (p.granted, p.remaining, kind(p.retry_after), p.limit),
                (a.granted, a.remaining, kind(a.retry_after), a.limit),
                "kind {i}, n = {n}: {p:?} vs {a:?}"
            );
            let (pr, ar) = (p.reset_after.as_secs_f64(), a.reset_after.as_secs_f64());
            assert!(
                (pr - ar).abs() < 0.5,
                "kind {i}, n = {n}: reset {pr} vs {ar}"
            );
            assert_eq!(m.granted, if m.is_allowed() { n } else { 0 });
        }
    }
    Ok(())
}

#[test]
fn a_mix_of_every_kind_is_all_or_nothing() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let five = Five::new(&redis, "mix", 10)?;
    let small = FixedWindow::new(&redis, "mix-small", WindowLimit::new(3, LONG))?;
    let multi = MultiLimit::new(&redis);
    let mut parts = five.parts("u1").to_vec();
    parts.push(small.part("u1"));
    for _ in 0..3 {
        let d = multi.allow_n(&parts, 1)?;
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.granted, 1);
        assert!(d.parts.iter().all(|p| p.granted == 1), "{d:?}");
    }
    // The fourth is denied by the small limit: nothing is written anywhere.
    let before: Vec<_> = parts.iter().map(|p| dump(&redis, p.key())).collect();
    let d = multi.allow_n(&parts, 1)?;
    assert!(!d.is_allowed());
    assert_eq!(d.denied_by(), Some(5));
    assert!(matches!(d.retry_after, RetryAfter::After(_)), "{d:?}");
    for (i, p) in d.parts[..5].iter().enumerate() {
        assert_eq!((p.granted, p.remaining), (0, 7), "part {i}: {p:?}");
    }
    let after: Vec<_> = parts.iter().map(|p| dump(&redis, p.key())).collect();
    assert_eq!(before, after, "a denial wrote nothing");
    // More than some limit can ever grant: never, and nothing written.
    let d = multi.allow_n(&parts, 11)?;
    assert_eq!(d.retry_after, RetryAfter::Never);
    // A peek never asks to wait, even on the exhausted limit.
    let d = multi.allow_n(&parts, 0)?;
    assert!(
        d.parts.iter().all(|p| p.retry_after == RetryAfter::Now),
        "{d:?}"
    );
    assert_eq!(d.parts[5].remaining, 0);
    assert_eq!(
        before,
        parts
            .iter()
            .map(|p| dump(&redis, p.key()))
            .collect::<Vec<_>>()
    );
    // Every key has a TTL.
    for p in &parts {
        let ttl: i64 = redis.query(redis::cmd("PTTL").arg(p.key()))?;
        assert!(ttl > 0, "{}", p.key());
    }
    Ok(())
}

#[test]
fn a_mixed_multi_limit_is_exact_under_contention() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(&redis, "c-g", GcraLimit::new(20, LONG))?;
    let bucket = TokenBucket::new(&redis, "c-b", BucketLimit::new(30, 30, LONG))?;
    let log = SlidingLog::new(&redis, "c-l", WindowLimit::new(50, LONG))?;
    let multi = MultiLimit::new(&redis);
    let granted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            let (multi, granted) = (&multi, &granted);
            let parts = [gcra.part("t"), bucket.part("t"), log.part("t")];
            s.spawn(move || {
                for _ in 0..10 {
                    let d = multi.allow_n(&parts, 1).expect("multi");
                    granted.fetch_add(d.granted, Ordering::Relaxed);
                }
            });
        }
    });
    // 60 requests, the GCRA allows 20: exactly 20 granted, and the others charged exactly 20.
    assert_eq!(granted.into_inner(), 20);
    assert_eq!(gcra.peek("t")?.remaining, 0);
    assert_eq!(bucket.peek("t")?.remaining, 10);
    assert_eq!(log.peek("t")?.remaining, 30);
    Ok(())
}

#[test]
fn pairs_of_one_kind_still_work() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let a = Gcra::new(&redis, "pa", GcraLimit::new(2, LONG))?;
    let b = Gcra::new(&redis, "pb", GcraLimit::new(5, LONG))?;
    let multi = MultiLimit::new(&redis);
    let pairs = [(&a, "u"), (&b, "u")];
    assert!(multi.allow_n(&pairs, 2)?.is_allowed());
    let d = multi.allow_n(&pairs, 1)?;
    assert_eq!(d.denied_by(), Some(0));
    assert_eq!(b.peek("u")?.remaining, 3);
    // Trait objects too.
    let dynamic: [(&dyn MultiPart, &str); 2] = [(&a, "v"), (&b, "v")];
    assert!(multi.allow_n(&dynamic, 1)?.is_allowed());
    Ok(())
}
