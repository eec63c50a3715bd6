//! The lock family against a real server: the fair lock's arrival order, the multi-lock's all
//! or nothing, the watchdog of permits, read-write guards and Redlocks, and how soon a lost
//! lease is signalled.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redkit::lock::{Lock, MultiLock, ReadWriteLock, Redlock, Semaphore};
use redkit::testing::{wait_until, FaultProxy, ProxyMode};
use redkit::{Event, Redis};
use support::*;

fn queued(redis: &Redis, key: &str) -> i64 {
    redis.query(redis::cmd("ZCARD").arg(key)).expect("ZCARD")
}

fn exists(redis: &Redis, key: &str) -> bool {
    redis
        .query::<i64>(redis::cmd("EXISTS").arg(key))
        .expect("EXISTS")
        == 1
}

fn incr(redis: &Redis, key: &str, by: i64) -> i64 {
    redis
        .query(redis::cmd("INCRBY").arg(key).arg(by))
        .expect("INCRBY")
}

/// The next `LockLost` event on `events`, within `within`.
fn next_lost(
    events: &crossbeam_channel::Receiver<Event>,
    within: Duration,
) -> Option<(Instant, String, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::LockLost {
                name,
                fencing_token,
            }) => return Some((Instant::now(), name, fencing_token)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn a_fair_lock_serves_eight_waiters_in_arrival_order() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "fair")
        .fair(true)
        .wait(Duration::from_secs(30))
        .build()?;
    assert!(lock.is_fair());
    let holder = lock.acquire()?;
    let order = Mutex::new(Vec::new());
    std::thread::scope(|s| -> TestResult {
        let mut waiters = Vec::new();
        for i in 0..8 {
            let (lock, order) = (&lock, &order);
            waiters.push(s.spawn(move || {
                let g = lock.acquire().expect("acquire");
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(2));
                assert!(g.release().expect("release"));
            }));
            // The next one arrives once this one is queued.
            wait_until(Duration::from_secs(10), "queued", || {
                queued(&redis, lock.queue_key()) == i + 1
            })?;
        }
        // Nobody jumps the queue, not even a try_acquire.
        assert!(lock.try_acquire()?.is_none());
        assert!(holder.release()?);
        for w in waiters {
            w.join().expect("waiter");
        }
        Ok(())
    })?;
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    assert_eq!(queued(&redis, lock.queue_key()), 0);
    Ok(())
}

#[test]
fn a_fair_lock_skips_waiters_that_died_or_gave_up() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let lock = Lock::builder(&redis, "fair-dead").fair(true).build()?;
    // A waiter that gives up leaves the queue at once.
    let holder = lock.acquire()?;
    assert!(lock.acquire_timeout(Duration::from_millis(50)).is_err());
    assert_eq!(queued(&redis, lock.queue_key()), 0);
    assert!(holder.release()?);
    // A waiter that died (its place is in the queue, nobody renews it): the lock is free but
    // nobody may jump it until its place lapses (2 s), then the lock is free for all. Unlike
    // Redisson's fair lock (issue #4661), nothing stays stuck.
    let now_ms: i64 = {
        let t: Vec<i64> = redis.query(&redis::cmd("TIME"))?;
        t[0] * 1000 + t[1] / 1000
    };
    redis.query::<()>(
        redis::cmd("ZADD")
            .arg(lock.queue_key())
            .arg(1)
            .arg("dead-waiter"),
    )?;
    redis.query::<()>(
        redis::cmd("ZADD")
            .arg(format!("{}:exp", lock.queue_key()))
            .arg(now_ms + 1000)
            .arg("dead-waiter"),
    )?;
    assert!(lock.try_acquire()?.is_none(), "the dead waiter's turn");
    let start = Instant::now();
    let g = lock.acquire_timeout(Duration::from_secs(5))?;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(queued(&redis, lock.queue_key()), 0);
    assert!(g.release()?);
    Ok(())
}

#[test]
fn a_multi_lock_takes_all_or_nothing() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let single_b = Lock::new(&redis, "b")?;
    let ab = MultiLock::new(&redis, &["a", "b"])?;
    let a = Lock::new(&redis, "a")?;
    // b is held: ab takes nothing, not even a.
    let gb = single_b.acquire()?;
    let single_fence = gb.fencing_token();
    assert!(ab.try_acquire()?.is_none());
    assert!(!exists(&redis, a.key()), "a was not taken");
    assert!(ab.acquire_timeout(Duration::from_millis(30)).is_err());
    // Released: a waiting multi-lock is woken by it and takes both.
    let got = std::thread::scope(|s| {
        let waiter = s.spawn(|| ab.acquire_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        assert!(gb.release().expect("release"));
        let g = waiter.join().expect("waiter").expect("acquired");
        (released.elapsed(), g)
    });
    let (took, g) = got;
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert!(a.try_acquire()?.is_none() && single_b.try_acquire()?.is_none());
    let fences = g.fencing_tokens().to_vec();
    assert_eq!(fences.len(), 2);
    assert_eq!(g.fencing_token("b"), Some(fences[1]));
    assert!(
        fences[1] > single_fence,
        "b's token is above the single lock's"
    );
    assert!(g.release()?);
    assert!(!exists(&redis, a.key()) && !exists(&redis, single_b.key()));
    // Bad names.
    assert!(MultiLock::new(&redis, &[]).is_err());
    assert!(MultiLock::new(&redis, &["x", "x"]).is_err());
    assert!(MultiLock::new(&redis, &["x", "y{"]).is_err());
    Ok(())
}

#[test]
fn multi_locks_and_single_locks_exclude_each_other_under_contention() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let names = ["a", "b", "c", "d"];
    let violations = AtomicU64::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (redis, violations, done) = (&redis, &violations, &done);
            s.spawn(move || {
                for round in 0..10usize {
                    // Pairs in both orders (a+b and b+a...), and single locks.
                    let i = (t + round) % 4;
                    let j = (i + 1 + t % 3) % 4;
                    let mine: Vec<&str> = if t % 3 == 0 {
                        vec![names[i]]
                    } else if t % 2 == 0 {
                        vec![names[i], names[j]]
                    } else {
                        vec![names[j], names[i]]
                    };
                    let guard = MultiLock::builder(redis, &mine)
                        .wait(Duration::from_secs(30))
                        .build()
                        .expect("multi")
                        .acquire()
                        .expect("acquire");
                    for n in &mine {
                        if incr(redis, &format!("inside:{n}"), 1) != 1 {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    for n in &mine {
                        incr(redis, &format!("inside:{n}"), -1);
                    }
                    assert!(guard.release().expect("release"));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Plain locks on the same names at the same time.
        let (redis, violations, done) = (&redis, &violations, &done);
        s.spawn(move || {
            for round in 0..20 {
                let n = names[round % 4];
                let g = Lock::builder(redis, n)
                    .wait(Duration::from_secs(30))
                    .build()
                    .expect("lock")
                    .acquire()
                    .expect("acquire");
                if incr(redis, &format!("inside:{n}"), 1) != 1 {
                    violations.fetch_add(1, Ordering::Relaxed);
                }
                incr(redis, &format!("inside:{n}"), -1);
                assert!(g.release().expect("release"));
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    assert_eq!(violations.into_inner(), 0);
    assert_eq!(
        done.into_inner(),
        8 * 10 + 20,
        "no deadlock, every round done"
    );
    Ok(())
}

/// Checks for `hold` that `held()` stays true, then releases through `release` and checks
/// that the handle sends no command afterwards.
fn kept_then_quiet<G>(
    redis: &Redis,
    hold: Duration,
    guard: G,
    held: impl Fn(&G) -> bool,
    release: impl FnOnce(G) -> bool,
) -> TestResult {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        assert!(held(&guard), "lost while the watchdog renews");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(release(guard), "still held at release");
    std::thread::sleep(Duration::from_millis(150));
    let before = redis.stats().commands;
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(redis.stats().commands, before, "renewals after release");
    Ok(())
}

#[test]
fn the_watchdog_keeps_permits_and_read_write_guards_past_several_ttls() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let ttl = Duration::from_millis(300);
    let sem = Semaphore::builder(&redis, "dog", 1)
        .lease(ttl)
        .watchdog(true)
        .build()?;
    let permit = sem.try_acquire()?.expect("free");
    kept_then_quiet(
        &redis,
        ttl * 4,
        permit,
        |p| p.is_held() && sem.held().unwrap() == 1 && sem.try_acquire().unwrap().is_none(),
        |p| p.release().unwrap(),
    )?;
    let rw = ReadWriteLock::builder(&redis, "dog")
        .ttl(ttl)
        .watchdog(true)
        .build()?;
    let w = rw.try_write()?.expect("free");
    kept_then_quiet(
        &redis,
        ttl * 4,
        w,
        |w| w.is_held() && rw.try_read().unwrap().is_none(),
        |w| w.release().unwrap(),
    )?;
    let r = rw.try_read()?.expect("free");
    kept_then_quiet(
        &redis,
        ttl * 4,
        r,
        |r| r.is_held() && rw.try_write().unwrap().is_none(),
        |r| r.release().unwrap(),
    )?;
    Ok(())
}

#[test]
fn the_watchdog_keeps_a_redlock_past_several_ttls() -> TestResult {
    let servers = [server(), server(), server()];
    let nodes: Vec<Redis> = servers.iter().map(redis).collect();
    let ttl = Duration::from_millis(400);
    let lock = Redlock::builder(&nodes, "dog")
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .watchdog(true)
        .build()?;
    let other = Redlock::builder(&nodes, "dog")
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .build()?;
    let g = lock.try_acquire()?.expect("free");
    kept_then_quiet(
        &nodes[1],
        ttl * 4,
        g,
        |g| g.is_held() && g.locked_on() == 3 && other.try_acquire().unwrap().is_none(),
        |g| g.release().unwrap(),
    )?;
    Ok(())
}

#[test]
fn a_lock_taken_over_is_signalled_within_a_third_of_its_ttl() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let events = redis.events();
    let ttl = Duration::from_millis(900);
    let lock = Lock::builder(&redis, "over")
        .ttl(ttl)
        .watchdog(true)
        .build()?;
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let g = lock.try_acquire()?.expect("free");
        // Let a renewal or two happen, then someone else takes it.
        std::thread::sleep(Duration::from_millis(350));
        redis.query::<()>(redis::cmd("SET").arg(lock.key()).arg("someone:1"))?;
        let taken = Instant::now();
        let (at, name, fence) = next_lost(&events, ttl).expect("LockLost");
        assert_eq!((name.as_str(), fence), ("over", g.fencing_token()));
        assert!(!g.is_held());
        worst = worst.max(at.duration_since(taken));
        assert!(!g.release()?);
        redis.query::<()>(redis::cmd("DEL").arg(lock.key()))?;
    }
    assert!(
        worst <= ttl / 3 + Duration::from_millis(100),
        "signalled {worst:?} after the takeover"
    );
    Ok(())
}

#[test]
fn an_unreachable_server_makes_the_lease_lost_when_its_validity_ends() -> TestResult {
    let server = server();
    let proxy = FaultProxy::start_for(&server)?;
    let redis = Redis::connect(
        redkit::Config::builder()
            .host(proxy.host())
            .port(proxy.port())
            .timeouts(
                redkit::Timeouts::default()
                    .connect(Duration::from_millis(200))
                    .response(Duration::from_millis(200))
                    .checkout(Duration::from_millis(200)),
            ),
    )?;
    let events = redis.events();
    let ttl = Duration::from_millis(900);
    let lock = Lock::builder(&redis, "cut")
        .ttl(ttl)
        .watchdog(true)
        .build()?;
    let g = lock.try_acquire()?.expect("free");
    std::thread::sleep(Duration::from_millis(400));
    proxy.set_mode(ProxyMode::BlackHole);
    let cut = Instant::now();
    let (at, name, _) = next_lost(&events, ttl * 3).expect("LockLost");
    assert_eq!(name, "cut");
    let after = at.duration_since(cut);
    // The last renewal before the cut was at most a third of the TTL before it; the lease is
    // lost when its validity (TTL minus 1% + 2 ms) runs out, and said so right then.
    assert!(
        after >= ttl * 2 / 3 - Duration::from_millis(60)
            && after <= ttl + Duration::from_millis(150),
        "lost {after:?} after the cut"
    );
    assert!(!g.is_held());
    assert_eq!(g.validity(), Duration::ZERO);
    proxy.set_mode(ProxyMode::Pass);
    drop(g);
    Ok(())
}

#[test]
fn a_release_that_finds_the_lock_taken_over_says_so() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let events = redis.events();
    let lock = Lock::builder(&redis, "late")
        .ttl(Duration::from_millis(100))
        .build()?;
    let old = lock.try_acquire()?.expect("free");
    wait_until(Duration::from_secs(3), "expiry", || {
        !lock.is_locked().unwrap()
    })?;
    let new = lock.try_acquire()?.expect("free after expiry");
    let old_fence = old.fencing_token();
    assert!(!old.release()?);
    let (_, name, fence) = next_lost(&events, Duration::from_secs(1)).expect("LockLost");
    assert_eq!((name.as_str(), fence), ("late", old_fence));
    assert!(new.release()?);
    Ok(())
}

#[test]
fn read_write_lock_wakes_every_reader_a_writer_kept_out_at_once() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let rw = ReadWriteLock::builder(&redis, "wake")
        .wait(Duration::from_secs(10))
        .build()?;
    let w = rw.try_write()?.expect("free");
    let inside = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let got = Mutex::new(Vec::new());
    std::thread::scope(|s| -> TestResult {
        for _ in 0..3 {
            let (rw, inside, most, got) = (&rw, &inside, &most, &got);
            s.spawn(move || {
                let r = rw.read().expect("read");
                got.lock().unwrap().push(Instant::now());
                let n = inside.fetch_add(1, Ordering::AcqRel) + 1;
                most.fetch_max(n, Ordering::AcqRel);
                wait_until(Duration::from_secs(5), "all readers in", || {
                    inside.load(Ordering::Acquire) == 3
                })
                .expect("the readers overlap");
                assert!(r.release().expect("release"));
            });
        }
        wait_until(Duration::from_secs(10), "3 readers queued", || {
            queued(&redis, rw.queue_key()) == 3
        })?;
        let released = Instant::now();
        assert!(w.release()?);
        wait_until(Duration::from_secs(5), "readers in", || {
            got.lock().unwrap().len() == 3
        })?;
        let last = got.lock().unwrap().iter().max().copied().expect("3");
        let took = last.duration_since(released);
        assert!(
            took < Duration::from_millis(150),
            "the last reader came in after {took:?}"
        );
        Ok(())
    })?;
    assert_eq!(most.into_inner(), 3, "the readers were in together");
    Ok(())
}

#[test]
fn read_write_lock_is_safe_and_live_under_contention() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let rw = ReadWriteLock::builder(&redis, "busy")
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(30))
        .build()?;
    let violations = AtomicU64::new(0);
    let most_readers = AtomicU64::new(0);
    let counts = [AtomicU64::new(0), AtomicU64::new(0)];
    let fences = Mutex::new(HashSet::new());
    let run = Duration::from_secs(2);
    let until = Instant::now() + run;
    std::thread::scope(|s| {
        for i in 0..7 {
            let (rw, redis, violations, most_readers, counts, fences) =
                (&rw, &redis, &violations, &most_readers, &counts, &fences);
            s.spawn(move || {
                while Instant::now() < until {
                    if i < 3 {
                        let w = rw.write().expect("write");
                        if incr(redis, "writers", 1) != 1 || incr(redis, "readers", 0) != 0 {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        incr(redis, "writers", -1);
                        assert!(fences.lock().unwrap().insert(w.fencing_token()));
                        assert!(w.release().expect("release"));
                        counts[0].fetch_add(1, Ordering::Relaxed);
                    } else {
                        let r = rw.read().expect("read");
                        let n = incr(redis, "readers", 1);
                        most_readers.fetch_max(n.unsigned_abs(), Ordering::Relaxed);
                        if incr(redis, "writers", 0) != 0 {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        incr(redis, "readers", -1);
                        assert!(fences.lock().unwrap().insert(r.fencing_token()));
                        assert!(r.release().expect("release"));
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(violations.into_inner(), 0);
    let [writes, reads] = counts.map(AtomicU64::into_inner);
    // Neither side starves: each gets a fair share of the 2 s.
    assert!(
        writes >= 20 && reads >= 20,
        "{writes} writes, {reads} reads"
    );
    assert!(most_readers.into_inner() > 1, "readers shared the lock");
    assert_eq!(queued(&redis, rw.queue_key()), 0, "nobody left queued");
    Ok(())
}
