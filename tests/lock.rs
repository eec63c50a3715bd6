//! `Lock` against a real server: mutual exclusion across threads and processes, tokens,
//! expiry, fencing, the watchdog and hand-off speed.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::lock::Lock;
use redkit::testing::wait_until;
use redkit::{Error, Event, Redis};
use support::*;

/// Counter increments per thread in the contention test.
const ROUNDS: u64 = 15;

/// Increments a plain GET/SET counter `rounds` times under `lock` from `threads` threads.
/// Every holder checks that nobody else is inside (an `INCR` of a shared key must say 1) and
/// that its fencing token is greater than the last one written under the lock. Returns the
/// number of overlaps and fencing violations seen (both must be 0).
fn contend(redis: &Redis, threads: usize, rounds: u64) -> u64 {
    let lock = Lock::builder(redis, "counter")
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(30))
        .build()
        .expect("lock");
    let violations = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..rounds {
                    let guard = lock.acquire().expect("acquire");
                    let inside: i64 = redis.query(redis::cmd("INCR").arg("inside")).unwrap();
                    if inside != 1 {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    let n: Option<u64> = redis.query(redis::cmd("GET").arg("count")).unwrap();
                    let last: Option<u64> = redis.query(redis::cmd("GET").arg("fence")).unwrap();
                    if last.is_some_and(|l| l >= guard.fencing_token()) {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    redis
                        .query::<()>(redis::cmd("SET").arg("count").arg(n.unwrap_or(0) + 1))
                        .unwrap();
                    redis
                        .query::<()>(redis::cmd("SET").arg("fence").arg(guard.fencing_token()))
                        .unwrap();
                    redis
                        .query::<i64>(redis::cmd("DECR").arg("inside"))
                        .unwrap();
                    assert!(guard.release().expect("release"), "held to the end");
                }
            });
        }
    });
    violations.into_inner()
}

/// The second process of `mutual_exclusion_across_threads_and_processes`.
#[test]
#[ignore = "run by mutual_exclusion_across_threads_and_processes as a child process"]
fn child_contend() {
    let Ok(url) = std::env::var("REDKIT_CHILD_URL") else {
        return;
    };
    let redis = Redis::connect(url.as_str()).expect("child connect");
    let violations = contend(&redis, 4, ROUNDS);
    println!("ADMITTED={violations}");
}

#[test]
fn mutual_exclusion_across_threads_and_processes() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let child = spawn_child("child_contend", &server.url(), &[])?;
    let here = contend(&redis, 16, ROUNDS);
    let there = child_admitted(child)?;
    assert_eq!((here, there), (0, 0), "overlapping holders or stale fences");
    let count: u64 = redis.query(redis::cmd("GET").arg("count"))?;
    assert_eq!(count, (16 + 4) * ROUNDS, "every increment kept");
    // Every holder checked that its token was above the last one written; the counter holds
    // the last acquisition's token.
    let counter: u64 =
        redis.query(redis::cmd("GET").arg(Lock::new(&redis, "counter")?.fence_key()))?;
    let last: u64 = redis.query(redis::cmd("GET").arg("fence"))?;
    assert_eq!(counter, last, "the last token written is the counter's");
    Ok(())
}

#[test]
fn release_and_extend_with_a_stale_token_do_nothing_and_say_so() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "stale")
        .ttl(Duration::from_millis(100))
        .build()?;
    let old = lock.try_acquire()?.expect("free");
    assert!(old.is_held());
    assert_eq!(old.token().len(), 32);
    // It expires; another holder takes it.
    wait_until(Duration::from_secs(3), "expiry", || {
        !lock.is_locked().unwrap()
    })?;
    assert!(!old.is_held(), "its TTL passed");
    let other = Lock::builder(&redis, "stale")
        .ttl(Duration::from_secs(10))
        .build()?;
    let new = other.try_acquire()?.expect("free after expiry");
    assert!(new.fencing_token() > old.fencing_token());
    assert_eq!(old.remaining()?, None);
    assert!(
        !old.extend(Duration::from_secs(10))?,
        "extend with a stale token"
    );
    assert!(old.reenter()?.is_none());
    assert!(!old.release()?, "release with a stale token");
    // The new holder is untouched.
    let left = new.remaining()?.expect("still ours");
    assert!(left > Duration::from_secs(9), "{left:?}");
    assert!(new.is_held());
    // A value someone else wrote: our extend and release do not touch it.
    redis.query::<()>(redis::cmd("SET").arg(other.key()).arg("intruder:1"))?;
    assert!(!new.extend(Duration::from_secs(10))?);
    assert!(!new.is_held(), "marked lost");
    assert!(!new.release()?);
    let v: String = redis.query(redis::cmd("GET").arg(other.key()))?;
    assert_eq!(v, "intruder:1");
    Ok(())
}

#[test]
fn expiry_lets_another_holder_in_and_wakes_a_waiter() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "expiry")
        .ttl(Duration::from_millis(300))
        .build()?;
    let first = lock.try_acquire()?.expect("free");
    assert!(lock.try_acquire()?.is_none(), "held");
    assert!(lock.is_locked()?);
    // A waiter gets it when the TTL runs out (no release is ever sent).
    let start = Instant::now();
    let second = lock.acquire_timeout(Duration::from_secs(5))?;
    let waited = start.elapsed();
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    assert!(second.fencing_token() > first.fencing_token());
    assert!(!first.is_held());
    // A waiter with too short a wait gives up with a typed error.
    match lock.acquire_timeout(Duration::from_millis(50)) {
        Err(e @ Error::LockTimeout { .. }) => {
            assert_eq!(e.class(), redkit::ErrorClass::LockTimeout)
        }
        other => panic!("{other:?}"),
    }
    assert!(!first.release()?);
    assert!(second.release()?);
    Ok(())
}

#[test]
fn a_release_hands_the_lock_to_a_waiter_within_milliseconds() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "handoff")
        .ttl(Duration::from_secs(30))
        .build()?;
    let waiting_flag = format!("{}:waiting", lock.key());
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let guard = lock.acquire()?;
        let (released, acquired, next) = std::thread::scope(|s| -> TestResult<_> {
            let waiter = s.spawn(|| {
                let g = lock
                    .acquire_timeout(Duration::from_secs(10))
                    .expect("acquire");
                (Instant::now(), g)
            });
            // The waiter is waiting once its attempt has set the flag; give it a moment to
            // block in BLPOP.
            wait_until(Duration::from_secs(5), "waiter", || {
                redis
                    .query::<i64>(redis::cmd("EXISTS").arg(&waiting_flag))
                    .unwrap()
                    == 1
            })?;
            std::thread::sleep(Duration::from_millis(50));
            let released = Instant::now();
            assert!(guard.release()?);
            let (acquired, next) = waiter.join().expect("waiter");
            Ok((released, acquired, next))
        })?;
        worst = worst.max(acquired.duration_since(released));
        assert!(next.release()?);
    }
    // Without the wake-up the waiter would sleep until its next poll (500 ms).
    assert!(
        worst < Duration::from_millis(150),
        "hand-off took {worst:?}"
    );
    Ok(())
}

#[test]
fn watchdog_keeps_the_lock_past_several_ttls_and_stops_after_release() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "dog")
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()?;
    let guard = lock.try_acquire()?.expect("free");
    assert!(redis.lock_watchdog_running());
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(guard.is_held());
        assert!(lock.try_acquire()?.is_none(), "still held");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = guard.remaining()?.expect("ours");
    assert!(left > Duration::from_millis(100), "{left:?}");
    assert!(guard.release()?);
    // No renewal after the release: the handle sends no command any more.
    std::thread::sleep(Duration::from_millis(150));
    let before = redis.stats().commands;
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(redis.stats().commands, before, "renewals after release");
    // The watchdog stops with the handle.
    redis.close()?;
    assert!(!redis.lock_watchdog_running());
    Ok(())
}

#[test]
fn a_lock_deleted_behind_our_back_is_marked_lost_with_an_event() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let events = redis.events();
    let lock = Lock::builder(&redis, "victim")
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()?;
    let guard = lock.acquire()?;
    let fence = guard.fencing_token();
    admin(&server).del::<_, ()>(lock.key())?;
    wait_until(Duration::from_secs(2), "guard marked lost", || {
        !guard.is_held()
    })?;
    let lost = events
        .iter()
        .find(|e| matches!(e, Event::LockLost { .. }))
        .expect("event");
    match &lost {
        Event::LockLost {
            name,
            fencing_token,
        } => assert_eq!((name.as_str(), *fencing_token), ("victim", fence)),
        other => panic!("{other:?}"),
    }
    assert!(lost.to_string().contains("victim"), "{lost}");
    assert!(!guard.release()?, "it was not ours any more");
    Ok(())
}

#[test]
fn reentrant_guards_share_one_acquisition() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::new(&redis, "again")?;
    let outer = lock.acquire()?;
    let inner = outer.reenter()?.expect("held");
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    assert!(inner.release()?);
    assert!(lock.is_locked()?, "the outer hold remains");
    assert!(lock.try_acquire()?.is_none());
    // A guard moves to another thread and is released there.
    let released = std::thread::spawn(move || outer.release())
        .join()
        .expect("thread")?;
    assert!(released);
    assert!(!lock.is_locked()?);
    Ok(())
}

#[test]
fn many_waiters_all_get_the_lock_with_a_small_pool() -> TestResult {
    // A pool of 2: at most one waiter blocks on a connection, the others poll.
    let server = server();
    let redis = Redis::connect(builder(&server).pool_max_size(2))?;
    let lock = Lock::builder(&redis, "small")
        .wait(Duration::from_secs(20))
        .build()?;
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                for _ in 0..5 {
                    let g = lock.acquire().expect("acquire");
                    std::thread::sleep(Duration::from_millis(2));
                    assert!(g.release().expect("release"));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(done.into_inner(), 30);
    Ok(())
}

#[test]
fn bad_settings_are_typed_errors() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for name in ["", "a{b"] {
        assert!(
            matches!(Lock::new(&redis, name), Err(Error::Config { .. })),
            "{name:?}"
        );
    }
    let ttl = Lock::builder(&redis, "x").ttl(Duration::ZERO).build();
    assert!(matches!(ttl, Err(Error::Config { .. })));
    let dog = Lock::builder(&redis, "x")
        .ttl(Duration::from_millis(5))
        .watchdog(true)
        .build();
    assert!(matches!(dog, Err(Error::Config { .. })));
    let prefixed = Lock::builder(&redis, "x").prefix("app:").build()?;
    assert_eq!(prefixed.key(), "app:{x}");
    Ok(())
}
