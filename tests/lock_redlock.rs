//! Redlock over three real servers, with one and then two of them down.

mod support;

use std::time::Duration;

use redkit::lock::Redlock;
use redkit::{Error, Redis};
use support::*;

fn exists(redis: &Redis, key: &str) -> bool {
    redis
        .query::<i64>(redis::cmd("EXISTS").arg(key))
        .expect("EXISTS")
        == 1
}

#[test]
fn redlock_needs_a_majority() -> TestResult {
    let mut servers = [server(), server(), server()];
    let nodes: Vec<Redis> = servers.iter().map(redis).collect();
    let lock = Redlock::builder(&nodes, "job")
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(200))
        .build()?;
    assert_eq!(lock.quorum(), 2);
    let key = "redkit:redlock:{job}";

    // All up: held on 3, exclusive.
    let guard = lock.acquire()?;
    assert_eq!(guard.locked_on(), 3);
    let validity = guard.validity();
    assert!(
        validity > Duration::from_secs(9) && validity <= Duration::from_secs(10),
        "{validity:?}"
    );
    let other = Redlock::new(&nodes, "job")?;
    assert!(other.try_acquire()?.is_none());
    assert!(guard.extend(Duration::from_secs(20))?);
    assert!(guard.validity() > Duration::from_secs(19));
    assert!(guard.release()?);
    assert!(nodes.iter().all(|n| !exists(n, key)), "released everywhere");

    // Someone else holds it on two servers: we lose, and release what we took on the third.
    for n in &nodes[..2] {
        n.query::<()>(redis::cmd("SET").arg(key).arg("someone-else"))?;
    }
    assert!(lock.try_acquire()?.is_none());
    assert!(!exists(&nodes[2], key), "our partial lock was released");
    for n in &nodes[..2] {
        n.query::<()>(redis::cmd("DEL").arg(key))?;
    }

    // One server down: still a majority.
    servers[2].kill()?;
    let guard = lock.acquire_timeout(Duration::from_secs(5))?;
    assert_eq!(guard.locked_on(), 2);
    assert!(guard.is_held());
    assert!(other.try_acquire()?.is_none());
    assert!(guard.release()?);

    // Two down: never a majority; the live server keeps nothing after the failed attempts.
    servers[1].kill()?;
    match lock.acquire_timeout(Duration::from_millis(300)) {
        Err(e @ Error::LockTimeout { .. }) => {
            assert_eq!(e.class(), redkit::ErrorClass::LockTimeout)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !exists(&nodes[0], key),
        "released after the failed attempts"
    );
    Ok(())
}

#[test]
fn redlock_settings_are_checked() -> TestResult {
    let server = server();
    let node = redis(&server);
    assert!(Redlock::new(&[], "x").is_err());
    assert!(Redlock::new(std::slice::from_ref(&node), "").is_err());
    let slow = Redlock::builder(std::slice::from_ref(&node), "x")
        .ttl(Duration::from_millis(100))
        .node_timeout(Duration::from_millis(100))
        .build();
    assert!(matches!(slow, Err(Error::Config { .. })));
    // One server: a quorum of one.
    let single = Redlock::new(std::slice::from_ref(&node), "x")?;
    assert_eq!(single.quorum(), 1);
    let g = single.try_acquire()?.expect("free");
    assert!(g.release()?);
    Ok(())
}
