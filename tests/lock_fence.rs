//! Fencing tokens after data loss: they strictly increase across a `kill -9` restart without
//! persistence and across a Sentinel failover to a replica that had an older counter.

mod support;

use std::time::{Duration, Instant};

use redkit::lock::{Lock, ReadWriteLock, Redlock, Semaphore};
use redkit::testing::{wait_until, SentinelSetup};
use redkit::{Config, Redis, RetryPolicy, Timeouts};
use support::*;

/// Runs `f` until it succeeds (the handle reconnects after a restart or a failover), for at
/// most `within`.
fn eventually<T>(within: Duration, mut f: impl FnMut() -> redkit::Result<T>) -> TestResult<T> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                log::debug!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One fence from each kind of lock on `redis`: a lock, a semaphore permit, a read lease, a
/// write lock (each acquired and released).
fn fences(redis: &Redis) -> redkit::Result<[u64; 4]> {
    let lock = Lock::new(redis, "fenced")?.try_acquire()?.expect("free");
    let permit = Semaphore::new(redis, "fenced", 2)?
        .try_acquire()?
        .expect("free");
    let rw = ReadWriteLock::new(redis, "fenced")?;
    let read = rw.try_read()?.expect("free");
    let r = read.fencing_token();
    read.release()?;
    let write = rw.try_write()?.expect("free");
    let out = [
        lock.fencing_token(),
        permit.fencing_token(),
        r,
        write.fencing_token(),
    ];
    lock.release()?;
    permit.release()?;
    write.release()?;
    Ok(out)
}

#[test]
fn fences_keep_increasing_across_a_kill_9_restart_without_persistence() -> TestResult {
    let mut server = server();
    let redis = redis(&server);
    let lock = Lock::new(&redis, "fenced")?;
    let mut before = Vec::new();
    for _ in 0..5 {
        before.push(fences(&redis)?);
    }
    for w in before.windows(2) {
        assert!(w[1].iter().zip(&w[0]).all(|(b, a)| b > a), "{before:?}");
    }
    let highest = before[4];
    // SIGKILL, and back on the same port with nothing (the launcher persists nothing).
    server.kill()?;
    server.restart()?;
    let counter: Option<u64> = eventually(Duration::from_secs(10), || {
        redis.query(redis::cmd("GET").arg(lock.fence_key()))
    })?;
    assert_eq!(counter, None, "the server lost the counter");
    let after = eventually(Duration::from_secs(10), || fences(&redis))?;
    for (k, (a, h)) in after.iter().zip(&highest).enumerate() {
        assert!(a > h, "kind {k}: {a} after {h} (before the restart)");
    }
    // And they keep increasing from there.
    let next = fences(&redis)?;
    assert!(
        next.iter().zip(&after).all(|(n, a)| n > a),
        "{next:?} {after:?}"
    );
    Ok(())
}

#[test]
fn redlock_fences_keep_increasing_when_a_server_loses_its_counter() -> TestResult {
    let mut servers = [server(), server(), server()];
    let nodes: Vec<Redis> = servers.iter().map(redis).collect();
    let lock = Redlock::builder(&nodes, "fenced")
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .build()?;
    let mut last = 0;
    for _ in 0..3 {
        let g = lock.try_acquire()?.expect("free");
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        assert!(g.release()?);
    }
    // Every server's counter holds the last fence (the second round wrote it back).
    for n in &nodes {
        let c: u64 = n.query(redis::cmd("GET").arg("redkit:redlock:{fenced}:fence"))?;
        assert_eq!(c, last);
    }
    // Two of the three lose everything.
    for s in &mut servers[..2] {
        s.kill()?;
        s.restart()?;
    }
    let g = eventually(Duration::from_secs(10), || {
        lock.try_acquire()?.ok_or(redkit::Error::LockTimeout {
            waited: Duration::ZERO,
        })
    })?;
    assert!(
        g.fencing_token() > last,
        "{} after {last}",
        g.fencing_token()
    );
    assert!(g.release()?);
    Ok(())
}

fn sentinel_handle(setup: &SentinelSetup) -> TestResult<Redis> {
    init_logs();
    let config = Config::builder()
        .sentinel(setup.master_name(), setup.sentinel_addrs())
        .timeouts(
            Timeouts::default()
                .connect(Duration::from_secs(1))
                .response(Duration::from_secs(1))
                .checkout(Duration::from_secs(2)),
        )
        .retry(RetryPolicy::default().max_attempts(3))
        .build()?;
    Ok(Redis::connect(config)?)
}

#[test]
fn fences_keep_increasing_across_a_failover_to_a_replica_with_an_older_counter() -> TestResult {
    let setup = SentinelSetup::start()?;
    let redis = sentinel_handle(&setup)?;
    let lock = Lock::new(&redis, "fenced")?;
    let sem = Semaphore::new(&redis, "fenced", 1)?;
    let mut highest = [0u64; 2];
    for _ in 0..5 {
        let g = lock.try_acquire()?.expect("free");
        let p = sem.try_acquire()?.expect("free");
        assert!(g.fencing_token() > highest[0] && p.fencing_token() > highest[1]);
        highest = [g.fencing_token(), p.fencing_token()];
        g.release()?;
        p.release()?;
    }
    let master = setup.master_index()?;
    let replica = 1 - master;
    // The replica has everything so far; make it look as if the last acquisitions had not
    // reached it: an old counter for the lock, none for the semaphore.
    let mut con = setup.node(replica).admin()?;
    wait_until(Duration::from_secs(10), "the replica caught up", || {
        redis::cmd("GET")
            .arg(lock.fence_key())
            .query::<Option<u64>>(&mut con)
            .ok()
            .flatten()
            == Some(highest[0])
    })?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .exec(&mut con)?;
    redis::cmd("SET")
        .arg(lock.fence_key())
        .arg(7)
        .exec(&mut con)?;
    redis::cmd("DEL")
        .arg(format!("{}:fence", sem.key()))
        .exec(&mut con)?;
    let promoted = setup.failover()?;
    assert_eq!(promoted, replica);
    // The new master serves the older counter.
    let mut con = setup.node(replica).admin()?;
    let counter: Option<u64> = redis::cmd("GET").arg(lock.fence_key()).query(&mut con)?;
    assert_eq!(counter, Some(7));
    let g = eventually(Duration::from_secs(15), || {
        lock.try_acquire()?.ok_or(redkit::Error::LockTimeout {
            waited: Duration::ZERO,
        })
    })?;
    let p = eventually(Duration::from_secs(15), || {
        sem.try_acquire()?.ok_or(redkit::Error::LockTimeout {
            waited: Duration::ZERO,
        })
    })?;
    let at = redis.sentinel_master();
    let port = setup.node(replica).port();
    assert!(
        matches!(&at, Some(redkit::Addr::Tcp { port: p, .. }) if *p == port),
        "{at:?}"
    );
    assert!(
        g.fencing_token() > highest[0],
        "lock: {} after {}",
        g.fencing_token(),
        highest[0]
    );
    assert!(
        p.fencing_token() > highest[1],
        "permit: {} after {}",
        p.fencing_token(),
        highest[1]
    );
    g.release()?;
    p.release()?;
    Ok(())
}
