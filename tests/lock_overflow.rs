//! Huge durations never panic ("overflow when adding duration to instant"): waits of
//! `Duration::MAX` work, TTLs out of range are typed errors that name the setting.

mod support;

use std::time::Duration;

use redkit::lock::{Lock, MultiLock, ReadWriteLock, Redlock, Semaphore};
use redkit::Error;
use support::*;

/// Asserts a `Config` error naming `setting`.
#[track_caller]
fn config_error<T: std::fmt::Debug>(r: redkit::Result<T>, setting: &str) {
    match r {
        Err(Error::Config { setting: s, .. }) => assert_eq!(s, setting),
        other => panic!("expected a config error for {setting}, got {other:?}"),
    }
}

#[test]
fn huge_waits_wait_and_huge_ttls_are_refused() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let huge = [Duration::MAX, Duration::from_secs(u64::MAX / 2)];

    for d in huge {
        // A lock: a huge configured wait, a huge timeout while another holds it.
        let lock = Lock::builder(&redis, "huge").wait(d).build()?;
        let first = lock.acquire()?;
        let got = std::thread::scope(|s| {
            let w = s.spawn(|| lock.acquire_timeout(d));
            std::thread::sleep(Duration::from_millis(30));
            assert!(first.release().expect("release"));
            w.join().expect("waiter")
        })?;
        assert!(got.release()?);
        config_error(Lock::builder(&redis, "huge").ttl(d).build(), "lock.ttl");
        let g = lock.acquire()?;
        config_error(g.extend(d), "lock.ttl");
        assert!(g.release()?);

        // A fair lock and its queue.
        let fair = Lock::builder(&redis, "huge-fair")
            .fair(true)
            .wait(d)
            .build()?;
        assert!(fair.acquire()?.release()?);

        // A semaphore.
        let sem = Semaphore::builder(&redis, "huge", 1).wait(d).build()?;
        let p = sem.acquire_timeout(d)?;
        config_error(p.extend(d), "semaphore.lease");
        assert!(p.release()?);
        config_error(
            Semaphore::builder(&redis, "huge", 1).lease(d).build(),
            "semaphore.lease",
        );

        // A read-write lock.
        let rw = ReadWriteLock::builder(&redis, "huge").wait(d).build()?;
        assert!(rw.read_timeout(d)?.release()?);
        let w = rw.write_timeout(d)?;
        config_error(w.extend(d), "rwlock.ttl");
        assert!(w.release()?);
        config_error(
            ReadWriteLock::builder(&redis, "huge").ttl(d).build(),
            "rwlock.ttl",
        );

        // A multi-lock.
        let multi = MultiLock::builder(&redis, &["h1", "h2"]).wait(d).build()?;
        assert!(multi.acquire_timeout(d)?.release()?);
        config_error(
            MultiLock::builder(&redis, &["h1"]).ttl(d).build(),
            "multilock.ttl",
        );

        // Redlock.
        let nodes = [redis.clone()];
        let red = Redlock::builder(&nodes, "huge").wait(d).build()?;
        let g = red.acquire_timeout(d)?;
        config_error(g.extend(d), "redlock.ttl");
        assert!(g.release()?);
        config_error(
            Redlock::builder(&nodes, "huge").ttl(d).build(),
            "redlock.ttl",
        );
        config_error(
            Redlock::builder(&nodes, "huge").node_timeout(d).build(),
            "redlock.node_timeout",
        );
        config_error(
            Redlock::builder(&nodes, "huge").retry_delay(d).build(),
            "redlock.retry_delay",
        );
    }
    Ok(())
}

#[test]
fn the_longest_ttl_works_with_the_watchdog() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let year = Duration::from_secs(86_400 * 365);
    let lock = Lock::builder(&redis, "year")
        .ttl(year)
        .watchdog(true)
        .build()?;
    let g = lock.acquire()?;
    assert!(g.is_held());
    assert!(g.validity() > year - Duration::from_secs(86_400 * 4));
    let left = g.remaining()?.expect("ours");
    assert!(left > year - Duration::from_secs(60), "{left:?}");
    assert!(g.extend(year)?);
    assert!(g.release()?);
    let sem = Semaphore::builder(&redis, "year", 1)
        .lease(year)
        .watchdog(true)
        .build()?;
    assert!(sem.acquire()?.release()?);
    let rw = ReadWriteLock::builder(&redis, "year")
        .ttl(year)
        .watchdog(true)
        .build()?;
    assert!(rw.write()?.release()?);
    Ok(())
}
