//! GCRA and several limits at once, against a real server.

mod support;

use std::time::{Duration, Instant};

use redkit::ratelimit::{Gcra, GcraLimit, MultiLimit, RateLimiter, RetryAfter};
use redkit::{Error, Redis};
use support::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pttl(redis: &Redis, key: &str) -> i64 {
    redis.query(redis::cmd("PTTL").arg(key)).expect("PTTL")
}

#[test]
fn redis_rate_sequence_for_ten_per_second() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(&redis, "api", GcraLimit::per_second(10).burst(10))?;
    let start = Instant::now();
    let d = gcra.allow("u1")?;
    assert_eq!((d.granted, d.remaining, d.limit), (1, 9, 10));
    assert_eq!(d.retry_after, RetryAfter::Now);
    assert!((99.0..=100.0).contains(&ms(d.reset_after)), "{d:?}");
    let d = gcra.allow_n("u1", 2)?;
    let elapsed = start.elapsed();
    assert_eq!(d.granted, 2);
    // Exact as long as less than one emission interval (100 ms) passed between the calls.
    if elapsed < Duration::from_millis(90) {
        assert_eq!(d.remaining, 7, "{d:?}");
        let reset = ms(d.reset_after);
        assert!(
            reset <= 300.0 && reset >= 300.0 - ms(elapsed) - 1.0,
            "{d:?}"
        );
    }
    Ok(())
}

#[test]
fn exact_sequence_on_a_slow_clock() -> TestResult {
    // The same limit scaled by 100 (10 per 100 s): no refill can happen during the test.
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(
        &redis,
        "slow",
        GcraLimit::new(10, Duration::from_secs(100)).burst(10),
    )?;
    let d = gcra.allow("s")?;
    assert_eq!((d.granted, d.remaining), (1, 9));
    assert!((9_999.0..=10_000.0).contains(&ms(d.reset_after)), "{d:?}");
    let d = gcra.allow_n("s", 2)?;
    assert_eq!((d.granted, d.remaining), (2, 7));
    assert!((29_990.0..=30_000.0).contains(&ms(d.reset_after)), "{d:?}");
    // A peek: nothing taken.
    let d = gcra.peek("s")?;
    assert_eq!(
        (d.granted, d.remaining, d.retry_after),
        (0, 7, RetryAfter::Now)
    );
    let d = gcra.allow_n("s", 7)?;
    assert_eq!((d.granted, d.remaining), (7, 0));
    // Denied: one unit comes back after one interval (10 s).
    let d = gcra.allow("s")?;
    assert_eq!((d.granted, d.remaining), (0, 0));
    let RetryAfter::After(wait) = d.retry_after else {
        panic!("{d:?}")
    };
    assert!((9_990.0..=10_000.0).contains(&ms(wait)), "{d:?}");
    assert!((99_900.0..=100_000.0).contains(&ms(d.reset_after)), "{d:?}");
    // Larger than the burst: never.
    let d = gcra.allow_n("s", 11)?;
    assert_eq!(d.retry_after, RetryAfter::Never);
    // A peek when exhausted never asks to wait, as go-redis/redis_rate's (zero units always
    // fit); nothing remains.
    let d = gcra.peek("s")?;
    assert_eq!(
        (d.granted, d.remaining, d.retry_after),
        (0, 0, RetryAfter::Now),
        "{d:?}"
    );
    // The key expires when the limit would be whole again.
    let ttl = pttl(&redis, &gcra.key("s"));
    assert!(ttl > 99_000 && ttl <= 100_000, "{ttl}");
    gcra.reset("s")?;
    assert_eq!(gcra.allow_n("s", 10)?.granted, 10);
    Ok(())
}

#[test]
fn peek_on_a_fresh_subject_writes_nothing() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(&redis, "peek", GcraLimit::per_minute(5))?;
    let d = gcra.peek("nobody")?;
    assert_eq!(
        (d.granted, d.remaining, d.retry_after),
        (0, 5, RetryAfter::Now)
    );
    let exists: i64 = redis.query(redis::cmd("EXISTS").arg(gcra.key("nobody")))?;
    assert_eq!(exists, 0);
    Ok(())
}

#[test]
fn allow_at_most_grants_what_fits() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(&redis, "most", GcraLimit::new(10, Duration::from_secs(100)))?;
    assert_eq!(gcra.allow_n("m", 8)?.granted, 8);
    let d = gcra.allow_at_most("m", 5)?;
    assert_eq!(
        (d.granted, d.remaining, d.retry_after),
        (2, 0, RetryAfter::Now)
    );
    let d = gcra.allow_at_most("m", 1)?;
    assert_eq!(d.granted, 0);
    assert!(matches!(d.retry_after, RetryAfter::After(w) if w > Duration::from_secs(9)));
    Ok(())
}

#[test]
fn changing_the_limit_keeps_the_state() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(
        &redis,
        "change",
        GcraLimit::new(10, Duration::from_secs(100)),
    )?;
    let other = gcra.clone();
    assert_eq!(gcra.allow_n("c", 10)?.granted, 10);
    assert!(!gcra.allow("c")?.is_allowed());
    // Twice the rate and a burst of 30: the 10 taken (100 s of the old spacing, 20 units of
    // the new one) still count; 10 more fit, not 30.
    other.set_limit(GcraLimit::new(20, Duration::from_secs(100)).burst(30))?;
    assert_eq!(gcra.limit().burst_size(), 30, "clones share the limit");
    let d = gcra.allow_n("c", 10)?;
    assert_eq!((d.granted, d.remaining), (10, 0));
    assert!(!gcra.allow("c")?.is_allowed());
    assert!(gcra.set_limit(GcraLimit::per_second(0)).is_err());
    Ok(())
}

#[test]
fn blocking_acquire_waits_for_the_retry_after() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let gcra = Gcra::new(&redis, "block", GcraLimit::per_second(10).burst(1))?;
    assert!(gcra.try_acquire("b", 1)?);
    assert!(!gcra.try_acquire("b", 1)?);
    let t = Instant::now();
    let d = gcra.acquire("b", 1)?;
    assert!(d.is_allowed());
    // It waited for (most of) one emission interval, not much more.
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
    match gcra.acquire_timeout("b", 1, Duration::from_millis(1)) {
        Err(Error::RateLimited {
            retry_after: Some(w),
        }) => assert!(w <= Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    let t = Instant::now();
    match gcra.acquire("b", 2) {
        Err(e @ Error::RateLimited { retry_after: None }) => {
            assert_eq!(e.class(), redkit::ErrorClass::RateLimited)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "never waits for never"
    );
    Ok(())
}

/// Hammers one subject of a GCRA limit (50 per second, burst 10) for `run`.
fn hammer_gcra(redis: &Redis, threads: usize, run: Duration) -> u64 {
    let gcra = Gcra::new(redis, "hammer", GcraLimit::per_second(50).burst(10)).expect("gcra");
    hammer(&gcra, "shared", threads, run)
}

/// The second process of `contention_from_threads_and_another_process` (ignored on its own).
#[test]
#[ignore = "run by contention_from_threads_and_another_process as a child process"]
fn child_hammer() {
    let Ok(url) = std::env::var("REDKIT_CHILD_URL") else {
        return;
    };
    let redis = Redis::connect(url.as_str()).expect("child connect");
    let n = hammer_gcra(&redis, 2, Duration::from_millis(1500));
    println!("ADMITTED={n}");
}

#[test]
fn contention_from_threads_and_another_process() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let start = Instant::now();
    let child = spawn_child("child_hammer", &server.url(), &[])?;
    let here = hammer_gcra(&redis, 8, Duration::from_millis(1500));
    let there = child_admitted(child)?;
    let elapsed = start.elapsed();
    let total = here + there;
    // 50 per second with a burst of 10, over the whole time both ran (an upper bound).
    let ceiling = 10 + (50.0 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        total <= ceiling,
        "{here} + {there} admitted, at most {ceiling}"
    );
    assert!(there > 0 && here > 0, "{here} {there}");
    // And the limiter did not just refuse everyone: well over half the rate got through.
    assert!(total as f64 >= 50.0 * 1.5 * 0.5, "{total}");
    Ok(())
}

#[test]
fn several_limits_all_or_nothing() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let slow = |n| GcraLimit::new(n, Duration::from_secs(100));
    let per_second = Gcra::new(&redis, "s", slow(2))?;
    let per_hour = Gcra::new(&redis, "h", slow(100))?;
    let tenant = Gcra::new(&redis, "t", slow(5))?;
    let multi = MultiLimit::new(&redis);
    let parts = [(&per_second, "u1"), (&per_hour, "u1"), (&tenant, "acme")];
    for _ in 0..2 {
        let d = multi.allow_n(&parts, 1)?;
        assert!(d.is_allowed() && d.denied_by().is_none(), "{d:?}");
    }
    // The third is denied by the per-second limit and takes nothing from the others.
    let d = multi.allow_n(&parts, 1)?;
    assert!(!d.is_allowed());
    assert_eq!(d.denied_by(), Some(0));
    assert!(matches!(d.retry_after, RetryAfter::After(_)), "{d:?}");
    assert_eq!(d.parts[1].remaining, 98, "{d:?}");
    assert_eq!(per_hour.peek("u1")?.remaining, 98);
    assert_eq!(tenant.peek("acme")?.remaining, 3);
    // Never wins over a wait.
    let d = multi.allow_n(&parts, 6)?;
    assert_eq!(d.retry_after, RetryAfter::Never);
    assert_eq!(tenant.peek("acme")?.remaining, 3);
    // Another user of the same tenant is held by the tenant limit only.
    let u2 = [(&per_hour, "u2"), (&tenant, "acme")];
    for _ in 0..3 {
        assert!(multi.allow_n(&u2, 1)?.is_allowed());
    }
    let d = multi.allow_n(&u2, 1)?;
    assert_eq!(d.denied_by(), Some(1));
    assert_eq!(
        per_hour.peek("u2")?.remaining,
        97,
        "the denied call took nothing"
    );
    assert!(multi
        .allow_n::<redkit::ratelimit::LimitPart>(&[], 1)
        .is_err());
    // Every key has a TTL.
    for key in [per_second.key("u1"), per_hour.key("u1"), tenant.key("acme")] {
        assert!(pttl(&redis, &key) > 0, "{key}");
    }
    Ok(())
}
