//! The near cache on Sentinel (it follows the master across a failover) and on a Cluster
//! (a tracking connection per master; keys of every master cached and invalidated; a
//! master's failover clears the cache and tracking moves to the new master).

mod support;

use std::time::Duration;

use redkit::near::NearCache;
use redkit::testing::{wait_until, SentinelSetup};
use redkit::{Config, Protocol, Redis, RetryPolicy, Timeouts};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn timeouts() -> Timeouts {
    Timeouts::default()
        .connect(Duration::from_secs(1))
        .response(Duration::from_secs(1))
        .checkout(Duration::from_secs(2))
}

/// Waits until `near` serves `key` from memory with the value `want`.
fn wait_cached(near: &NearCache, key: &str, want: &str) -> TestResult {
    wait_until(WAIT, "the value to be cached", || {
        let before = near.stats().hits;
        let v: Option<String> = near.get(key).ok().flatten();
        v.as_deref() == Some(want) && near.stats().hits > before
    })?;
    Ok(())
}

#[test]
fn sentinel_the_near_cache_follows_the_master() -> TestResult {
    init_logs();
    let setup = SentinelSetup::start()?;
    let redis = Redis::connect(
        Config::builder()
            .sentinel(setup.master_name(), setup.sentinel_addrs())
            .timeouts(timeouts())
            .retry(RetryPolicy::default().max_attempts(3))
            .protocol(Protocol::Resp3)
            .build()?,
    )?;
    let near = NearCache::new(&redis)?;
    let writer = redis.clone();
    let set = |k: &str, v: &str| -> redkit::Result<()> {
        writer.query::<()>(redis::cmd("SET").arg(k).arg(v))
    };
    set("k", "1")?;
    wait_cached(&near, "k", "1")?;
    let connects = near.stats().connects;
    let flushes = near.stats().flushes;
    let new_master = setup.failover()?;
    wait_until(WAIT, "the handle on the new master", || {
        redis.sentinel_master().is_some_and(|a| {
            a.to_string()
                .ends_with(&format!(":{}", setup.node(new_master).port()))
        })
    })?;
    // The old master's tracking is dropped and everything cached cleared; tracking resumes
    // on the new master.
    wait_until(WAIT, "the move to be noticed", || {
        near.stats().flushes > flushes
    })?;
    wait_until(WAIT, "tracking on the new master", || {
        near.is_tracking() && near.stats().connects > connects
    })?;
    wait_until(WAIT, "a write on the new master", || set("k", "2").is_ok())?;
    wait_until(WAIT, "the new value", || {
        near.get::<Option<String>>("k").ok().flatten().as_deref() == Some("2")
    })?;
    wait_cached(&near, "k", "2")?;
    // Invalidations come from the new master.
    let invalidations = near.stats().invalidations;
    set("k", "3")?;
    wait_until(WAIT, "the invalidation from the new master", || {
        near.stats().invalidations > invalidations
    })?;
    assert_eq!(near.get::<Option<String>>("k")?.as_deref(), Some("3"));
    Ok(())
}

#[test]
fn cluster_tracking_per_master() -> TestResult {
    let mut cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).protocol(Protocol::Resp3))?;
    let near = NearCache::new(&redis)?;
    assert!(near.is_tracking());
    // Keys on every master.
    let keys: Vec<String> = (0..30).map(|i| format!("c:{i}")).collect();
    let masters: std::collections::HashSet<usize> = keys
        .iter()
        .map(|k| {
            let slot = cluster.key_slot(k).expect("slot");
            cluster.slot_owner(slot).expect("owner")
        })
        .collect();
    assert!(masters.len() >= 3, "{masters:?}");
    for k in &keys {
        redis.query::<()>(redis::cmd("SET").arg(k).arg("a"))?;
    }
    let got: Vec<Option<String>> = near.mget(&keys)?;
    assert!(got.iter().all(|v| v.as_deref() == Some("a")));
    for k in &keys {
        wait_cached(&near, k, "a")?;
    }
    // A change on any master invalidates its key.
    for k in &keys {
        redis.query::<()>(redis::cmd("SET").arg(k).arg("b"))?;
    }
    wait_until(WAIT, "every key's invalidation", || {
        let got: Vec<Option<String>> = near.mget(&keys).expect("mget");
        got.iter().all(|v| v.as_deref() == Some("b"))
    })?;
    assert!(near.stats().invalidations >= keys.len() as u64);

    // A master killed and failed over: its tracking is lost, the cache cleared, and keys of
    // its slots are tracked on the new master.
    let key = &keys[0];
    wait_cached(&near, key, "b")?;
    let slot = cluster.key_slot(key)?;
    let owner = cluster.slot_owner(slot)?;
    let flushes = near.stats().flushes;
    cluster.kill_master_and_wait(owner, WAIT)?;
    wait_until(WAIT, "the loss to be noticed", || {
        near.stats().flushes > flushes
    })?;
    wait_until(WAIT, "a write on the new master", || {
        redis
            .query::<()>(redis::cmd("SET").arg(key).arg("c"))
            .is_ok()
    })?;
    wait_until(WAIT, "the new value", || {
        near.get::<Option<String>>(key).ok().flatten().as_deref() == Some("c")
    })?;
    wait_cached(&near, key, "c")?;
    let invalidations = near.stats().invalidations;
    redis.query::<()>(redis::cmd("SET").arg(key).arg("d"))?;
    wait_until(WAIT, "the invalidation from the new master", || {
        near.stats().invalidations > invalidations
    })?;
    assert_eq!(near.get::<Option<String>>(key)?.as_deref(), Some("d"));
    // The dead master's tracker ended; every master left is tracked.
    wait_until(WAIT, "tracking of every master", || near.is_tracking())?;
    Ok(())
}
