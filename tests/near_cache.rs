//! The cache with a near level, and the cache when Redis is down: `get_or_set` returns the
//! loader's value (counted, not stored), an open breaker included; stale-if-error serves the
//! near level's last value within its bound and never beyond.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::cache::Cache;
use redkit::near::NearCache;
use redkit::testing::wait_until;
use redkit::{BreakerConfig, Error, Redis, RetryPolicy};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// A handle that gives up quickly while the server is down.
fn quick(server: &redkit::testing::RedisServer) -> Redis {
    Redis::connect(
        builder(server)
            .retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .max_elapsed(Duration::from_millis(200)),
            )
            .breaker(BreakerConfig::disabled()),
    )
    .expect("connect")
}

#[test]
fn a_near_level_in_front_of_the_cache() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let near = NearCache::new(&redis)?;
    let cache = Cache::builder(&redis, "products").near(&near).build()?;
    let loads = AtomicUsize::new(0);
    let load = || {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>("widget".to_owned())
    };
    assert_eq!(cache.get_or_set("p:1", None, load)?, "widget");
    // Later reads are answered in process.
    wait_until(WAIT, "near hits", || {
        let before = near.stats().hits;
        let v: String = cache.get_or_set("p:1", None, load).expect("get_or_set");
        v == "widget" && near.stats().hits > before
    })?;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let hits = near.stats().hits;
    assert_eq!(cache.get::<String>("p:1")?.as_deref(), Some("widget"));
    let got: Vec<Option<String>> = cache.mget(&["p:1", "p:2"])?;
    assert_eq!(got, [Some("widget".to_owned()), None]);
    assert!(near.stats().hits >= hits + 2);

    // This process reads its own writes at once, whatever the invalidation's delay.
    for i in 0..50 {
        let v = format!("v{i}");
        cache.set("p:1", &v)?;
        assert_eq!(cache.get::<String>("p:1")?, Some(v));
    }
    cache.delete("p:1")?;
    assert_eq!(cache.get::<String>("p:1")?, None);

    // Another writer's change arrives through the server's invalidation.
    cache.set("p:3", &"mine".to_owned())?;
    wait_until(WAIT, "p:3 cached", || {
        let before = near.stats().hits;
        cache.get::<String>("p:3").expect("get").is_some() && near.stats().hits > before
    })?;
    let other = Cache::new(&redis, "products")?;
    other.set("p:3", &"theirs".to_owned())?;
    wait_until(WAIT, "the other writer's value", || {
        cache.get::<String>("p:3").expect("get").as_deref() == Some("theirs")
    })?;
    Ok(())
}

#[test]
fn get_or_set_returns_the_loaders_value_while_redis_is_down() -> TestResult {
    let mut server = server();
    let redis = quick(&server);
    let cache = Cache::new(&redis, "down")?;
    cache.set("a", &"stored".to_owned())?;
    server.kill()?;
    let started = Instant::now();
    let v: String = cache.get_or_set("a", None, || Ok::<_, Error>("loaded".to_owned()))?;
    assert_eq!(v, "loaded");
    let v: Option<String> =
        cache.get_or_set_optional("b", None, || Ok::<_, Error>(Some("also".to_owned())))?;
    assert_eq!(v.as_deref(), Some("also"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let s = cache.stats();
    assert_eq!((s.degraded_loads, s.loads), (2, 2), "{s:?}");
    // A loader's error is still its caller's.
    let e = cache
        .get_or_set::<String, Error, _>("c", None, || Err(Error::Closed))
        .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e:?}");
    assert_eq!(cache.stats().load_errors, 1);
    // Plain reads have no loader: they fail.
    assert!(cache.get::<String>("a").unwrap_err().is_connection());

    // Without degradation, the error.
    let strict = Cache::builder(&redis, "down").degrade(false).build()?;
    let e = strict
        .get_or_set("a", None, || Ok::<_, Error>("loaded".to_owned()))
        .unwrap_err();
    assert!(e.is_connection(), "{e:?}");

    // Nothing was stored while Redis was down (the restarted server is empty anyway: what
    // matters is that the next read loads again rather than erroring).
    server.restart()?;
    wait_until(WAIT, "the server back", || cache.get::<String>("a").is_ok())?;
    let v: String = cache.get_or_set("a", None, || Ok::<_, Error>("fresh".to_owned()))?;
    assert_eq!(v, "fresh");
    assert_eq!(cache.get::<String>("a")?.as_deref(), Some("fresh"));
    Ok(())
}

#[test]
fn an_open_breaker_degrades_too() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(
        builder(&server).retry(RetryPolicy::never()).breaker(
            BreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(30)),
        ),
    )?;
    let cache = Cache::new(&redis, "breaker")?;
    server.kill()?;
    // Failures open the breaker; from then on calls fail fast without the network.
    wait_until(WAIT, "the breaker to open", || {
        let _ = cache.get::<String>("x");
        redis.breaker_state() == redkit::BreakerState::Open
    })?;
    assert!(matches!(
        cache.get::<String>("x"),
        Err(Error::CircuitOpen { .. })
    ));
    let started = Instant::now();
    let v: String = cache.get_or_set("x", None, || Ok::<_, Error>("loaded".to_owned()))?;
    assert_eq!(v, "loaded");
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(cache.stats().degraded_loads >= 1);
    Ok(())
}

/// Stale-if-error: after the server is killed, the near level's last value is served while
/// it was known current at most the bound ago, never later; then the loader's value.
#[test]
fn stale_if_error_serves_within_the_bound_and_never_beyond() -> TestResult {
    const BOUND: Duration = Duration::from_millis(1500);
    let mut server = server();
    let redis = quick(&server);
    let near = NearCache::builder(&redis)
        .heartbeat(Duration::from_millis(50))
        .max_silence(Duration::from_millis(500))
        .stale_if_error(BOUND)
        .build()?;
    let cache = Cache::builder(&redis, "stale").near(&near).build()?;
    cache.set("k", &"old".to_owned())?;
    wait_until(WAIT, "k cached", || {
        let before = near.stats().hits;
        cache.get::<String>("k").expect("get").is_some() && near.stats().hits > before
    })?;
    // Plain reads of the near cache serve stale values too.
    {
        let mut admin = admin(&server);
        admin.set::<_, _, ()>("plain", "p")?;
    }
    assert_eq!(near.get::<Option<String>>("plain")?.as_deref(), Some("p"));
    wait_until(WAIT, "plain cached", || {
        let before = near.stats().hits;
        near.get::<Option<String>>("plain").expect("get").is_some() && near.stats().hits > before
    })?;

    // Every confirmation of the cache's contents happened before the kill.
    let killed = Instant::now();
    server.kill()?;
    let (mut stale, mut loaded, mut stale_late) = (0, 0, 0);
    let end = killed + BOUND + Duration::from_millis(700);
    while Instant::now() < end {
        let asked = Instant::now();
        let v: String = cache.get_or_set("k", None, || Ok::<_, Error>("loader".to_owned()))?;
        match v.as_str() {
            "old" => {
                stale += 1;
                if asked > killed + BOUND {
                    stale_late += 1;
                }
            }
            "loader" => {
                loaded += 1;
                // Once refused, never served again: the bound only grows older.
                assert!(asked > killed, "the loader ran before the kill");
            }
            other => panic!("{other}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stale > 0, "no stale value served within the bound");
    assert_eq!(stale_late, 0, "a stale value served beyond the bound");
    assert!(loaded > 0, "the loader never ran after the bound");
    // Right after the kill some were plain hits (within max_silence); then stale values.
    assert!(near.stats().stale_served > 0, "{:?}", near.stats());
    // Beyond the bound plain reads fail.
    assert!(near.get::<Option<String>>("plain").is_err());
    eprintln!(
        "stale-if-error: {stale} stale, {loaded} loaded; {:?}",
        near.stats()
    );
    Ok(())
}
