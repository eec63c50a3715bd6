//! The concurrency limiter's round trips and wake-ups, and huge durations in every limiter.

mod support;

use std::time::{Duration, Instant};

use redkit::ratelimit::{
    BucketLimit, ConcurrencyLimiter, FixedWindow, Gcra, GcraLimit, RateLimiter, SlidingLog,
    SlidingWindow, TokenBucket, WindowLimit,
};
use redkit::testing::wait_until;
use redkit::Error;
use support::*;

#[test]
fn acquire_and_release_are_one_round_trip_each() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "trips", 2, Duration::from_secs(10))?;
    // Warm up: the scripts are loaded.
    limiter.try_acquire("s")?.expect("free").release()?;
    for _ in 0..3 {
        let before = redis.stats().commands;
        let slot = limiter.try_acquire("s")?.expect("free");
        assert_eq!(
            redis.stats().commands - before,
            1,
            "one round trip to acquire"
        );
        let before = redis.stats().commands;
        assert!(slot.release()?);
        assert_eq!(
            redis.stats().commands - before,
            1,
            "one round trip to release"
        );
    }
    Ok(())
}

#[test]
fn a_release_wakes_a_waiting_acquire_within_milliseconds() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "wake", 1, Duration::from_secs(30))?;
    let key = limiter.key("s");
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let held = limiter.acquire("s")?;
        let (released, got, slot) = std::thread::scope(|s| -> TestResult<_> {
            let waiter = s.spawn(|| {
                let slot = limiter
                    .acquire_timeout("s", Duration::from_secs(10))
                    .expect("acquire");
                (Instant::now(), slot)
            });
            // The waiter waits once its refused attempt has set the flag; give it a moment
            // to block.
            wait_until(Duration::from_secs(5), "the waiter", || {
                redis
                    .query::<i64>(redis::cmd("EXISTS").arg(format!("{key}:waiting")))
                    .unwrap()
                    == 1
            })?;
            std::thread::sleep(Duration::from_millis(50));
            let released = Instant::now();
            assert!(held.release()?);
            let (got, slot) = waiter.join().expect("waiter");
            Ok((released, got, slot))
        })?;
        worst = worst.max(got.duration_since(released));
        assert!(slot.release()?);
    }
    // A polling waiter would sleep up to 100 ms (the old loop), a poll of 500 ms here.
    assert!(worst < Duration::from_millis(100), "woken after {worst:?}");
    Ok(())
}

#[test]
fn huge_durations_never_panic_and_bad_ones_name_the_setting() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let huge = Duration::MAX;
    let config_error = |r: redkit::Result<()>, setting: &str| match r {
        Err(Error::Config { setting: s, .. }) => assert_eq!(s, setting),
        other => panic!("expected a config error for {setting}, got {other:?}"),
    };

    // Waiting for ever on a limiter that grants at once, and one that grants after a while.
    let gcra = Gcra::new(&redis, "huge", GcraLimit::per_second(20).burst(1))?.max_wait(huge);
    assert!(gcra.acquire_timeout("s", 1, huge)?.is_allowed());
    assert!(gcra.acquire("s", 1)?.is_allowed(), "waited about 50 ms");
    // ... and one that never can: still an immediate answer.
    assert!(matches!(
        gcra.acquire_timeout("s", 2, huge),
        Err(Error::RateLimited { retry_after: None })
    ));
    let slots =
        ConcurrencyLimiter::new(&redis, "huge-cc", 1, Duration::from_secs(5))?.max_wait(huge);
    let slot = slots.acquire_timeout("s", huge)?;
    let got = std::thread::scope(|s| {
        let w = s.spawn(|| slots.acquire("s"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(slot.release().expect("release"));
        w.join().expect("waiter")
    })?;
    config_error(got.extend(huge).map(drop), "ratelimit.lease_ttl");
    assert!(got.release()?);

    // Settings out of range.
    config_error(
        ConcurrencyLimiter::new(&redis, "x", 1, huge).map(drop),
        "ratelimit.lease_ttl",
    );
    config_error(
        Gcra::new(&redis, "x", GcraLimit::new(1, huge)).map(drop),
        "ratelimit.period",
    );
    config_error(
        Gcra::new(&redis, "x", GcraLimit::per_hour(1).burst(u64::MAX)).map(drop),
        "ratelimit.burst",
    );
    let window = WindowLimit::new(5, huge);
    config_error(
        SlidingLog::new(&redis, "x", window).map(drop),
        "ratelimit.period",
    );
    config_error(
        SlidingWindow::new(&redis, "x", window).map(drop),
        "ratelimit.period",
    );
    config_error(
        FixedWindow::new(&redis, "x", window).map(drop),
        "ratelimit.period",
    );
    config_error(
        TokenBucket::new(&redis, "x", BucketLimit::new(5, 1, huge)).map(drop),
        "ratelimit.per",
    );
    config_error(
        TokenBucket::new(
            &redis,
            "x",
            BucketLimit::new(u64::MAX, 1, Duration::from_secs(1)),
        )
        .map(drop),
        "ratelimit.capacity",
    );
    // The longest allowed ones work.
    let decade = Duration::from_secs(86_400 * 365 * 10);
    let fw = FixedWindow::new(&redis, "decade", WindowLimit::new(5, decade))?;
    assert!(fw.allow("s")?.is_allowed());
    let sw = SlidingWindow::new(&redis, "decade-sw", WindowLimit::new(5, decade))?;
    assert!(sw.allow("s")?.is_allowed());
    let log = SlidingLog::new(&redis, "decade-log", WindowLimit::new(5, decade))?;
    assert!(log.allow("s")?.is_allowed());
    let slow = Gcra::new(&redis, "decade-gcra", GcraLimit::new(1, decade))?;
    assert!(slow.allow("s")?.is_allowed());
    Ok(())
}
