//! Replica acknowledgement: acquisitions confirmed by a replica while it is up, refused (and
//! released) while it is down.

mod support;

use std::time::{Duration, Instant};

use redkit::lock::{Lock, MultiLock, ReadWriteLock, ReplicaAck, Semaphore};
use redkit::testing::{wait_until, RedisServer};
use redkit::{Error, ErrorClass, Redis};
use support::*;

fn replica_of(master: &RedisServer) -> RedisServer {
    RedisServer::builder()
        .config("replicaof", format!("127.0.0.1 {}", master.port()))
        .start()
        .expect("start a replica")
}

fn info_field(server: &RedisServer, field: &str) -> Option<String> {
    let mut con = server.admin().ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
}

fn wait_linked(master: &RedisServer, replica: &RedisServer) -> TestResult {
    wait_until(Duration::from_secs(20), "the replica is in sync", || {
        info_field(replica, "master_link_status:").as_deref() == Some("up")
            && info_field(master, "connected_slaves:").as_deref() == Some("1")
    })?;
    Ok(())
}

fn get(server: &RedisServer, key: &str) -> Option<String> {
    let mut con = server.admin().expect("admin");
    redis::cmd("GET").arg(key).query(&mut con).expect("GET")
}

#[test]
fn acquisitions_are_confirmed_by_a_replica_and_refused_without_one() -> TestResult {
    let master = server();
    let mut replica = replica_of(&master);
    wait_linked(&master, &replica)?;
    let redis = redis(&master);
    let family = |ack: ReplicaAck| -> TestResult<_> {
        Ok((
            Lock::builder(&redis, "acked").replica_ack(ack).build()?,
            Semaphore::builder(&redis, "acked", 2)
                .replica_ack(ack)
                .build()?,
            ReadWriteLock::builder(&redis, "acked")
                .replica_ack(ack)
                .build()?,
            MultiLock::builder(&redis, &["acked-a", "acked-b"])
                .replica_ack(ack)
                .build()?,
        ))
    };
    // A generous timeout while the replica is up (a loaded machine may lag), a short one
    // once it is down.
    let (lock, sem, rw, multi) = family(ReplicaAck::new(1, Duration::from_secs(5)))?;

    // Up: every kind is confirmed; the replica has the lock when the guard is returned.
    let g = lock.acquire()?;
    let on_replica = get(&replica, lock.key()).expect("the replica has it");
    assert!(
        on_replica.starts_with(g.token()),
        "the replica has our token"
    );
    assert!(g.release()?);
    sem.acquire()?.release()?;
    rw.write()?.release()?;
    rw.read()?.release()?;
    multi.acquire()?.release()?;

    // Down: refused with a typed error after the ack timeout, and nothing stays held.
    replica.kill()?;
    wait_until(
        Duration::from_secs(10),
        "the master sees the replica gone",
        || info_field(&master, "connected_slaves:").as_deref() == Some("0"),
    )?;
    let (lock, sem, rw, multi) = family(ReplicaAck::new(1, Duration::from_millis(300)))?;
    let start = Instant::now();
    match lock.acquire() {
        Err(e @ Error::NotReplicated { .. }) => {
            assert_eq!(e.class(), ErrorClass::Timeout);
            let Error::NotReplicated {
                name,
                acknowledged,
                wanted,
                waited,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(
                (name.as_str(), *acknowledged, *wanted, *waited),
                ("acked", 0, 1, Duration::from_millis(300))
            );
            assert!(e.to_string().contains("replicas confirmed"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!lock.is_locked()?, "released after the failed confirmation");
    assert!(matches!(
        sem.try_acquire(),
        Err(Error::NotReplicated { .. })
    ));
    assert_eq!(sem.held()?, 0);
    assert!(matches!(rw.try_write(), Err(Error::NotReplicated { .. })));
    assert!(rw_is_free(&redis, rw.name())?);
    assert!(matches!(
        multi.try_acquire(),
        Err(Error::NotReplicated { .. })
    ));
    let plain = MultiLock::new(&redis, &["acked-a", "acked-b"])?;
    assert!(
        plain.try_acquire()?.is_some(),
        "the multi-lock took nothing"
    );
    // An ack timeout longer than the handle's whole call deadline (retry deadline plus a
    // response timeout: 250 ms here) still waits it out.
    let short = Redis::connect(
        builder(&master)
            .timeouts(redkit::Timeouts::default().response(Duration::from_millis(200)))
            .retry(redkit::RetryPolicy::default().max_elapsed(Duration::from_millis(50))),
    )?;
    let long = Lock::builder(&short, "acked-long")
        .replica_ack(ReplicaAck::new(1, Duration::from_millis(600)))
        .build()?;
    let start = Instant::now();
    assert!(matches!(
        long.try_acquire(),
        Err(Error::NotReplicated { .. })
    ));
    assert!(
        start.elapsed() >= Duration::from_millis(590),
        "{:?}",
        start.elapsed()
    );

    // Back: confirmed again.
    replica.restart()?;
    wait_linked(&master, &replica)?;
    assert!(lock.acquire()?.release()?);
    Ok(())
}

/// Whether a read-write lock without acknowledgement finds `name` free (a write that was not
/// confirmed was released).
fn rw_is_free(redis: &Redis, name: &str) -> redkit::Result<bool> {
    let plain = ReadWriteLock::new(redis, name)?;
    Ok(match plain.try_write()? {
        Some(g) => g.release()?,
        None => false,
    })
}

#[test]
fn waitaof_needs_a_newer_server_and_settings_are_checked() -> TestResult {
    let server = server();
    let redis = redis(&server);
    // redis-server 7.0 has no WAITAOF (7.2 added it): a typed error, and the lock released.
    let lock = Lock::builder(&redis, "aof")
        .replica_ack(ReplicaAck::new(1, Duration::from_millis(50)).fsync(true))
        .build()?;
    let version: String = {
        let info: String = redis.query(redis::cmd("INFO").arg("server"))?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (7, 2) {
        match lock.try_acquire() {
            Err(e @ Error::ServerTooOld { .. }) => {
                assert_eq!(e.class(), ErrorClass::Unsupported);
                assert!(e.to_string().contains("WAITAOF"), "{e}");
                assert!(e.to_string().contains(&version), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!lock.is_locked()?);
    }
    for bad in [
        ReplicaAck::new(0, Duration::from_millis(50)),
        ReplicaAck::new(1, Duration::ZERO),
        ReplicaAck::new(1, Duration::MAX),
    ] {
        match Lock::builder(&redis, "x").replica_ack(bad).build() {
            Err(Error::Config { setting, .. }) => assert_eq!(setting, "lock.replica_ack"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        Semaphore::builder(&redis, "x", 1)
            .replica_ack(ReplicaAck::new(0, Duration::from_millis(5)))
            .build(),
        Err(Error::Config {
            setting: "semaphore.replica_ack",
            ..
        })
    ));
    Ok(())
}
