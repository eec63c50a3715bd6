//! `Semaphore` and `ReadWriteLock` against a real server.

mod support;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redkit::lock::{ReadWriteLock, RwMode, Semaphore};
use redkit::testing::wait_until;
use redkit::{Error, Redis};
use support::*;

fn incr(redis: &Redis, key: &str, by: i64) -> i64 {
    redis
        .query(redis::cmd("INCRBY").arg(key).arg(by))
        .expect("INCRBY")
}

#[test]
fn a_semaphore_never_lets_more_than_n_in() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let sem = Semaphore::builder(&redis, "jobs", 3)
        .wait(Duration::from_secs(30))
        .build()?;
    assert_eq!(sem.available()?, 3);
    let most = AtomicI64::new(0);
    let rounds = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..8 {
                    let permit = sem.acquire().expect("acquire");
                    let inside = incr(&redis, "inside", 1);
                    most.fetch_max(inside, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                    incr(&redis, "inside", -1);
                    assert!(permit.release().expect("release"));
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(rounds.into_inner(), 64);
    let most = most.into_inner();
    assert!((1..=3).contains(&most), "{most} holders at once");
    assert_eq!(sem.available()?, 3);
    Ok(())
}

#[test]
fn a_crashed_holders_permit_comes_back_after_its_lease() -> TestResult {
    let server = server();
    let redis = redis(&server);
    // Long enough that the checks below run before it lapses, even on a loaded machine.
    let sem = Semaphore::builder(&redis, "leases", 2)
        .lease(Duration::from_millis(1500))
        .build()?;
    let a = sem.try_acquire()?.expect("free");
    let b = sem.try_acquire()?.expect("free");
    assert!(sem.try_acquire()?.is_none());
    assert_eq!((sem.held()?, sem.available()?), (2, 0));
    // A "crashed" holder: its permit is never given back.
    std::mem::forget(a);
    assert!(b.extend(Duration::from_secs(10))?);
    match sem.acquire_timeout(Duration::from_millis(20)) {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    // The forgotten lease expires; a waiter gets it.
    let start = Instant::now();
    let c = sem.acquire_timeout(Duration::from_secs(5))?;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(b.release()?);
    assert_eq!(sem.available()?, 1);
    // A lease that expired says so.
    let sem2 = Semaphore::builder(&redis, "leases", 2)
        .lease(Duration::from_millis(50))
        .build()?;
    let d = sem2.try_acquire()?.expect("free");
    wait_until(Duration::from_secs(2), "lease expiry", || {
        sem2.held().unwrap() == 1
    })?;
    assert!(!d.extend(Duration::from_secs(1))?);
    assert!(!d.release()?);
    assert!(c.release()?);
    assert!(Semaphore::new(&redis, "zero", 0).is_err());
    Ok(())
}

#[test]
fn a_released_permit_wakes_a_waiter_quickly() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let sem = Semaphore::new(&redis, "one", 1)?;
    let held = sem.acquire()?;
    std::thread::scope(|s| -> TestResult {
        let waiter = s.spawn(|| {
            let p = sem.acquire().expect("acquire");
            (Instant::now(), p)
        });
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        assert!(held.release()?);
        let (got, p) = waiter.join().expect("waiter");
        let took = got.duration_since(released);
        assert!(took < Duration::from_millis(150), "{took:?}");
        assert!(p.release()?);
        Ok(())
    })
}

#[test]
fn readers_share_and_writers_exclude() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let rw = ReadWriteLock::new(&redis, "cfg")?;
    let r1 = rw.try_read()?.expect("free");
    let r2 = rw.try_read()?.expect("readers share");
    assert_eq!(r1.mode(), RwMode::Read);
    assert!(rw.try_write()?.is_none(), "readers keep writers out");
    match rw.write_timeout(Duration::from_millis(30)) {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(r1.release()? && r2.release()?);
    let w = rw.try_write()?.expect("free");
    assert_eq!(w.mode(), RwMode::Write);
    assert!(rw.try_read()?.is_none(), "a writer keeps readers out");
    assert!(rw.try_write()?.is_none(), "and other writers");
    assert!(w.extend(Duration::from_secs(5))?);
    assert!(w.release()?);
    assert!(rw.try_read()?.is_some());
    Ok(())
}

#[test]
fn a_waiting_writer_is_not_starved_by_new_readers() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let rw = ReadWriteLock::new(&redis, "starve")?;
    let reader = rw.read()?;
    std::thread::scope(|s| -> TestResult {
        let writer = s.spawn(|| rw.write_timeout(Duration::from_secs(10)));
        // Once the writer waits, new readers are refused although only readers hold it.
        wait_until(Duration::from_secs(5), "writer intent", || {
            rw.try_read().unwrap().is_none()
        })?;
        let released = Instant::now();
        assert!(reader.release()?);
        let w = writer.join().expect("writer")?;
        assert!(released.elapsed() < Duration::from_millis(500));
        assert!(rw.try_read()?.is_none());
        assert!(w.release()?);
        Ok(())
    })?;
    assert!(rw.try_read()?.is_some());
    Ok(())
}

#[test]
fn read_write_exclusion_under_contention() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let rw = ReadWriteLock::with_settings(
        &redis,
        "busy",
        Duration::from_secs(10),
        Duration::from_secs(30),
    )?;
    let violations = AtomicU64::new(0);
    std::thread::scope(|s| {
        for i in 0..6 {
            let (rw, redis, violations) = (&rw, &redis, &violations);
            s.spawn(move || {
                for _ in 0..8 {
                    if i < 2 {
                        let w = rw.write().expect("write");
                        let writers = incr(redis, "writers", 1);
                        let readers = incr(redis, "readers", 0);
                        if writers != 1 || readers != 0 {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        incr(redis, "writers", -1);
                        assert!(w.release().expect("release"));
                    } else {
                        let r = rw.read().expect("read");
                        incr(redis, "readers", 1);
                        if incr(redis, "writers", 0) != 0 {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        incr(redis, "readers", -1);
                        assert!(r.release().expect("release"));
                    }
                }
            });
        }
    });
    assert_eq!(violations.into_inner(), 0);
    Ok(())
}
