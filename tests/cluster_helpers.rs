//! Locks, rate limiters, the cache, sessions and the stream queue on Redis Cluster: each
//! script runs on one slot (a lock's keys share the lock's hash tag; a cache key and its
//! load lock share the key's; a session shares its user's), and instances on different
//! masters work side by side through one handle (tests/cluster_topology.rs shows a cache,
//! sessions and limiter subjects spread over every master).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redkit::cache::Cache;
use redkit::lock::Lock;
use redkit::ratelimit::BucketLimit;
use redkit::ratelimit::{Gcra, GcraLimit, RateLimiter, TokenBucket};
use redkit::session::SessionStore;
use redkit::testing::RedisCluster;
use redkit::Redis;
use support::{cluster, cluster_builder, TestResult};

/// `count` names (`prefix` + n) whose hash tags land on `count` different masters.
fn names_on_distinct_masters(
    cluster: &RedisCluster,
    prefix: &str,
    tag: impl Fn(&str) -> String,
    count: usize,
) -> TestResult<Vec<String>> {
    let mut owners = HashSet::new();
    let mut names = Vec::new();
    for n in 0..1000 {
        let name = format!("{prefix}{n}");
        let owner = cluster.slot_owner(cluster.key_slot(&tag(&name))?)?;
        if owners.insert(owner) {
            names.push(name);
            if names.len() == count {
                return Ok(names);
            }
        }
    }
    Err("no names on distinct masters".into())
}

#[test]
fn locks_limiters_cache_sessions_and_queues_work_across_slots() -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).pool_max_size(16))?;

    // Locks on three masters: mutual exclusion from 4 threads each, with the BLPOP hand-off.
    let lock_names = names_on_distinct_masters(&cluster, "lock", |n| format!("{{{n}}}"), 3)?;
    let in_section = Arc::new(AtomicU64::new(0));
    let entries = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for name in &lock_names {
            for _ in 0..4 {
                let (redis, name, in_section, entries) =
                    (&redis, name.clone(), in_section.clone(), entries.clone());
                s.spawn(move || -> redkit::Result<()> {
                    let lock = Lock::builder(redis, &name)
                        .wait(Duration::from_secs(20))
                        .build()?;
                    for _ in 0..10 {
                        let guard = lock.acquire()?;
                        let key = format!("{{{name}}}:holders");
                        let holders: i64 = redis.query(redis::cmd("INCR").arg(&key))?;
                        assert_eq!(holders, 1, "two holders of {name}");
                        in_section.fetch_add(1, Ordering::Relaxed);
                        let _: i64 = redis.query(redis::cmd("DECR").arg(&key))?;
                        entries.fetch_add(1, Ordering::Relaxed);
                        guard.release()?;
                    }
                    Ok(())
                });
            }
        }
    });
    assert_eq!(entries.load(Ordering::Relaxed), 3 * 4 * 10);
    // Fencing tokens keep increasing on their own slot.
    let lock = Lock::new(&redis, &lock_names[0])?;
    let a = lock.acquire()?.fencing_token();
    let b = lock.acquire()?.fencing_token();
    assert!(b > a);

    // Rate limiters: subjects on different masters each get exactly their limit.
    let gcra = Gcra::new(&redis, "api", GcraLimit::new(5, Duration::from_secs(60)))?;
    let bucket = TokenBucket::new(
        &redis,
        "upload",
        BucketLimit::new(3, 1, Duration::from_secs(60)),
    )?;
    let subjects = names_on_distinct_masters(&cluster, "user", |s| gcra.key(s), 3)?;
    for subject in &subjects {
        let allowed = (0..8)
            .filter(|_| gcra.allow(subject).map(|d| d.granted > 0).unwrap_or(false))
            .count();
        assert_eq!(allowed, 5, "gcra for {subject}");
        let taken = (0..5)
            .filter(|_| bucket.try_acquire(subject, 1).unwrap_or(false))
            .count();
        assert_eq!(taken, 3, "bucket for {subject}");
    }

    // Several caches side by side: get_or_set, mget across slots, tags across slots.
    let cache_names = names_on_distinct_masters(&cluster, "cache", |n| format!("{{{n}}}"), 3)?;
    for name in &cache_names {
        let cache = Cache::builder(&redis, name).build()?;
        let loads = AtomicU64::new(0);
        for _ in 0..3 {
            let v: String = cache.get_or_set("k", None, || {
                loads.fetch_add(1, Ordering::Relaxed);
                Ok::<_, redkit::Error>(format!("value of {name}"))
            })?;
            assert_eq!(v, format!("value of {name}"));
        }
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        cache.set_tagged("t1", &"x".to_owned(), None, &["tag"])?;
        cache.set_tagged("t2", &"y".to_owned(), None, &["tag"])?;
        let many: Vec<Option<String>> = cache.mget(&["t1", "t2", "k", "missing"])?;
        assert_eq!(many.iter().filter(|v| v.is_some()).count(), 3);
        assert_eq!(cache.invalidate_tag("tag")?, 2);
        assert_eq!(cache.get::<String>("t1")?, None);
    }

    // Sessions: several stores side by side.
    let store_names = names_on_distinct_masters(&cluster, "web", |n| format!("{{{n}}}"), 2)?;
    for name in &store_names {
        let sessions = SessionStore::new(&redis, name)?;
        let s1 = sessions.create("user:1", &[("theme", "dark")])?;
        sessions.create("user:1", &[])?;
        assert!(sessions.update(&s1.id, &[("cart", "3")])?);
        let got = sessions.get(&s1.id)?.ok_or("session")?;
        assert_eq!(got.fields.get("cart").map(String::as_str), Some("3"));
        assert_eq!(sessions.count("user:1")?, 2);
        assert_eq!(sessions.destroy_user("user:1")?, 2);
    }

    // A stream queue: produced jobs are all processed by workers (XREADGROUP BLOCK on the
    // stream's slot owner, XACK, the delayed set on the same slot).
    let queue = redkit::StreamQueue::builder(&redis, "mail")
        .block(Duration::from_millis(50))
        .build()?;
    for i in 0..50 {
        queue.produce(format!("job {i}"))?;
    }
    queue.produce_in("later", Duration::from_millis(200))?;
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let workers = queue.workers().threads(2).run(move |_job| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok::<(), std::io::Error>(())
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(Ordering::Relaxed) < 51 {
        assert!(
            Instant::now() < deadline,
            "{} of 51 jobs ran",
            done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    workers.shutdown()?;
    Ok(())
}
