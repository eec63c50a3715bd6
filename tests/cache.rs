//! The cache against a real server: values, single-flight loading in threads and across
//! processes, early refresh, negative caching, multi-get, tags and pattern invalidation.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use redis::Commands;
use redkit::cache::Cache;
use redkit::scan::ScanIter;
use redkit::testing::wait_until;
use redkit::{Error, ErrorClass, Redis};
use support::*;

#[test]
fn values_strings_bytes_counters() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "basic")?;
    assert_eq!(cache.key("a"), "redkit:cache:basic:v:{a}");
    assert_eq!(cache.get::<String>("a")?, None);
    cache.set("a", &"hello".to_owned())?;
    assert_eq!(cache.get::<String>("a")?, Some("hello".to_owned()));
    cache.set_ttl(
        "b",
        &vec![0u8, 159, 146, 150],
        Some(Duration::from_secs(30)),
    )?;
    assert_eq!(cache.get::<Vec<u8>>("b")?, Some(vec![0u8, 159, 146, 150]));
    // Bytes that are not UTF-8, read as a string: an error naming the key, not a miss.
    match cache.get::<String>("b") {
        Err(Error::Decode { key, .. }) => assert_eq!(key, cache.key("b")),
        other => panic!("{other:?}"),
    }
    // A value written by someone else is an error too.
    let mut admin = admin(&server);
    admin.set::<_, _, ()>(cache.key("foreign"), "plain")?;
    let e = cache.get::<String>("foreign").unwrap_err();
    assert_eq!(e.class(), ErrorClass::Conversion);
    assert!(e.to_string().contains(&cache.key("foreign")), "{e}");

    assert!(cache.exists("a")?);
    let ttl: i64 = admin.pttl(cache.key("a"))?;
    assert!(ttl > 299_000 && ttl <= 300_000, "default TTL: {ttl}");
    assert!(cache.expire("a", Duration::from_secs(5))?);
    let ttl: i64 = admin.pttl(cache.key("a"))?;
    assert!(ttl > 4_000 && ttl <= 5_000, "{ttl}");
    assert!(!cache.expire("missing", Duration::from_secs(5))?);
    assert!(cache.delete("a")?);
    assert!(!cache.delete("a")?);
    assert!(!cache.exists("a")?);

    assert_eq!(cache.increment("n", 5)?, 5);
    assert_eq!(cache.increment("n", -2)?, 3);
    assert_eq!(cache.counter("n")?, Some(3));
    assert_eq!(cache.counter("none")?, None);
    let ttl: i64 = admin.pttl(cache.key("n"))?;
    assert!(ttl > 0, "counters get the default TTL: {ttl}");

    // Bad settings are typed errors.
    assert!(matches!(
        Cache::builder(&redis, "x")
            .default_ttl(Duration::ZERO)
            .build(),
        Err(Error::Config { .. })
    ));
    assert!(Cache::builder(&redis, "x")
        .early_refresh(-1.0)
        .build()
        .is_err());
    assert!(Cache::new(&redis, "").is_err());
    Ok(())
}

#[test]
fn the_handles_key_prefix_comes_first() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).key_prefix("app1:"))?;
    let cache = Cache::builder(&redis, "c").prefix("k:").build()?;
    assert_eq!(cache.key("x"), "app1:k:c:v:{x}");
    cache.set("x", &1i64)?;
    assert_eq!(cache.get::<i64>("x")?, Some(1));
    Ok(())
}

#[test]
fn get_or_set_with_32_threads_on_one_cold_key_loads_once() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).pool_max_size(32))?;
    let cache = Cache::new(&redis, "flight")?;
    let loads = AtomicUsize::new(0);
    let barrier = Barrier::new(32);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    cache.get_or_set("cold", None, || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        // Long enough for every thread to miss while it runs.
                        std::thread::sleep(Duration::from_millis(300));
                        Ok::<_, Error>("loaded".to_owned())
                    })
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("thread").expect("get_or_set"), "loaded");
        }
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.hits + stats.misses, 32, "{stats:?}");
    assert_eq!(stats.misses, stats.stampedes_avoided + 1, "{stats:?}");
    // The lock is gone, the value stays.
    let mut admin = admin(&server);
    assert!(!admin.exists::<_, bool>("redkit:cache:flight:l:{cold}")?);
    assert_eq!(cache.get::<String>("cold")?, Some("loaded".to_owned()));
    Ok(())
}

#[test]
fn a_failing_loader_stores_nothing_and_the_next_caller_loads() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "fail")?;
    let r: Result<String, Error> = cache.get_or_set("k", None, || {
        Err(Error::Config {
            setting: "test",
            reason: "loader failed".into(),
        })
    });
    assert!(r.is_err());
    assert!(!cache.exists("k")?);
    let mut admin = admin(&server);
    assert!(!admin.exists::<_, bool>("redkit:cache:fail:l:{k}")?);
    let v: String = cache.get_or_set("k", None, || Ok::<_, Error>("ok".to_owned()))?;
    assert_eq!(v, "ok");
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (2, 1));
    // A user error type works too.
    #[derive(Debug)]
    enum AppError {
        Cache(#[allow(dead_code)] Error),
        NotFound,
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> Self {
            AppError::Cache(e)
        }
    }
    let r: Result<String, AppError> = cache.get_or_set("k2", None, || Err(AppError::NotFound));
    assert!(matches!(r, Err(AppError::NotFound)));
    let _ = AppError::Cache(Error::Closed);
    Ok(())
}

#[test]
fn not_found_is_cached_when_asked() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let plain = Cache::new(&redis, "neg0")?;
    let calls = AtomicUsize::new(0);
    let load = || {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<String>, Error>(None)
    };
    assert_eq!(plain.get_or_set_optional("k", None, load)?, None);
    assert_eq!(plain.get_or_set_optional("k", None, load)?, None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no negative caching by default"
    );

    let cache = Cache::builder(&redis, "neg")
        .negative_ttl(Duration::from_secs(7))
        .build()?;
    calls.store(0, Ordering::SeqCst);
    assert_eq!(cache.get_or_set_optional("k", None, load)?, None);
    assert_eq!(cache.get_or_set_optional("k", None, load)?, None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(cache.exists("k")?);
    assert_eq!(cache.get::<String>("k")?, None);
    let mut admin = admin(&server);
    let ttl: i64 = admin.pttl(cache.key("k"))?;
    assert!(ttl > 6_000 && ttl <= 7_000, "{ttl}");
    Ok(())
}

#[test]
fn early_refresh_reloads_before_expiry() -> TestResult {
    let server = server();
    let redis = redis(&server);
    // A huge beta: every read of a value with any load time refreshes it.
    let eager = Cache::builder(&redis, "xf").early_refresh(1e12).build()?;
    let slow = |v: &'static str| {
        move || {
            std::thread::sleep(Duration::from_millis(5));
            Ok::<_, Error>(v.to_owned())
        }
    };
    assert_eq!(eager.get_or_set("k", None, slow("v1"))?, "v1");
    assert_eq!(eager.get_or_set("k", None, slow("v2"))?, "v2");
    assert_eq!(eager.stats().early_refreshes, 1);
    // A tiny beta: never refreshes while the TTL is long.
    let lazy = Cache::builder(&redis, "xf").early_refresh(1e-9).build()?;
    assert_eq!(lazy.get_or_set("k", None, slow("v3"))?, "v2");
    assert_eq!(lazy.stats().early_refreshes, 0);
    // While another process holds the load lock, the current value is served.
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("redkit:cache:xf:l:{k}", "someone")?;
    assert_eq!(eager.get_or_set("k", None, slow("v4"))?, "v2");
    assert_eq!(eager.stats().early_refreshes, 1);
    // A failing early refresh serves the current value (and counts the error).
    admin.del::<_, ()>("redkit:cache:xf:l:{k}")?;
    let v: String = eager.get_or_set("k", None, || Err(Error::Closed))?;
    assert_eq!(v, "v2");
    let stats = eager.stats();
    assert_eq!((stats.early_refreshes, stats.load_errors), (2, 1));
    assert!(
        !admin.exists::<_, bool>("redkit:cache:xf:l:{k}")?,
        "lock released"
    );
    Ok(())
}

#[test]
fn multi_get_and_multi_set_count_hits_and_misses() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "multi")?;
    let items: Vec<(String, String)> = (0..10)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    cache.mset(&items, Some(Duration::from_secs(60)))?;
    let keys: Vec<String> = (0..15).map(|i| format!("k{i}")).collect();
    let got: Vec<Option<String>> = cache.mget(&keys)?;
    for (i, v) in got.iter().enumerate() {
        if i < 10 {
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
        } else {
            assert_eq!(v, &None);
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (10, 5));
    assert!((stats.hit_ratio() - 10.0 / 15.0).abs() < 1e-9);
    assert!(cache.mget::<String, &str>(&[])?.is_empty());
    Ok(())
}

#[cfg(feature = "json")]
#[test]
fn typed_values_as_json() -> TestResult {
    use redkit::cache::Json;
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        name: String,
        age: u32,
    }
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "json")?;
    let ada = User {
        name: "Ada".into(),
        age: 36,
    };
    cache.set("u1", &Json(ada))?;
    let Some(Json(user)) = cache.get::<Json<User>>("u1")? else {
        panic!("missing")
    };
    assert_eq!(user.age, 36);
    cache.set("u2", &"not json".to_owned())?;
    let e = cache.get::<Json<User>>("u2").unwrap_err();
    assert!(
        matches!(&e, Error::Decode { key, .. } if key == &cache.key("u2")),
        "{e:?}"
    );
    Ok(())
}

/// All keys under a cache's value namespace.
fn cache_keys(redis: &Redis, cache: &Cache) -> HashSet<String> {
    // `...:v:{<key>}`
    let prefix = cache.key("");
    let prefix = &prefix[..prefix.len() - 1];
    ScanIter::<String>::keys(redis)
        .pattern(&format!("{prefix}*"))
        .count(5000)
        .map(|k| {
            let k = k.expect("scan");
            k[prefix.len()..k.len() - 1].to_owned()
        })
        .collect()
}

#[test]
fn tag_and_pattern_invalidation_remove_exactly_the_right_keys() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "inv")?;
    // 100,000 keys: user:0..49999 and item:0..49999; every 10th item tagged "hot", every
    // 7th user tagged "vip".
    let mut expected = HashSet::new();
    for chunk in (0..50_000).collect::<Vec<_>>().chunks(1000) {
        let mut items = Vec::with_capacity(2000);
        for i in chunk {
            items.push((format!("user:{i}"), "u".to_owned()));
            items.push((format!("item:{i}"), "i".to_owned()));
        }
        cache.mset(&items, None)?;
        expected.extend(items.into_iter().map(|(k, _)| k));
    }
    for i in (0..50_000).step_by(10) {
        cache.set_tagged(&format!("item:{i}"), &"hot".to_owned(), None, &["hot"])?;
    }
    for i in (0..50_000).step_by(7) {
        cache.set_tagged(
            &format!("user:{i}"),
            &"vip".to_owned(),
            None,
            &["vip", "all"],
        )?;
    }
    // Keys that must survive: another cache, and plain keys looking alike.
    let other = Cache::new(&redis, "inv2")?;
    other.set_tagged("item:0", &"x".to_owned(), None, &["hot"])?;
    other.set("user:1", &"x".to_owned())?;
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("user:1", "plain")?;
    assert_eq!(cache_keys(&redis, &cache), expected);

    assert_eq!(cache.invalidate_tag("hot")?, 5_000);
    for i in (0..50_000).step_by(10) {
        expected.remove(&format!("item:{i}"));
    }
    assert_eq!(cache_keys(&redis, &cache), expected);
    assert!(!admin.exists::<_, bool>(cache.tag_key("hot"))?);
    assert_eq!(cache.invalidate_tag("hot")?, 0);

    // user:1, user:1x, user:1xx... : 1 + 10 + 100 + 1000 + 10000 keys.
    assert_eq!(cache.invalidate_pattern("user:1*")?, 11_111);
    expected.retain(|k| !k.starts_with("user:1"));
    assert_eq!(cache_keys(&redis, &cache), expected);

    // The "vip" tag still lists removed keys: only the live ones count.
    let vip_live = (0..50_000)
        .step_by(7)
        .filter(|i| !i.to_string().starts_with('1'))
        .count() as u64;
    assert_eq!(cache.invalidate_tag("vip")?, vip_live);
    expected.retain(|k| {
        let Some(n) = k.strip_prefix("user:") else {
            return true;
        };
        n.parse::<u64>().map_or(true, |n| n % 7 != 0)
    });
    assert_eq!(cache_keys(&redis, &cache), expected);

    // Nothing else was touched.
    assert_eq!(other.get::<String>("item:0")?, Some("x".to_owned()));
    assert_eq!(other.get::<String>("user:1")?, Some("x".to_owned()));
    assert_eq!(admin.get::<_, String>("user:1")?, "plain");
    Ok(())
}

#[test]
fn two_processes_on_one_cold_key_load_once() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let cache = Cache::new(&redis, "xproc")?;
    let child = spawn_child("child_get_or_set", &server.url(), &[])?;
    // Wait until the child holds the load lock, then ask for the same key.
    let lock = "redkit:cache:xproc:l:{cold}";
    let mut admin = admin(&server);
    wait_until(Duration::from_secs(20), "the child's load lock", || {
        admin.exists::<_, bool>(lock).unwrap_or(false)
    })?;
    let v: String = cache.get_or_set("cold", None, || {
        Ok::<_, Error>(format!("parent-{}", std::process::id()))
    })?;
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let child_value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VALUE="))
        .expect("child value");
    assert_eq!(v, child_value, "both got the child's value");
    assert!(v.starts_with("child-"), "{v}");
    let loads: i64 = admin.get("xproc:loads")?;
    assert_eq!(loads, 1);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.stampedes_avoided), (0, 1), "{stats:?}");
    Ok(())
}

/// The second process of `two_processes_on_one_cold_key_load_once`.
#[test]
#[ignore = "run by two_processes_on_one_cold_key_load_once"]
fn child_get_or_set() -> TestResult {
    let url = std::env::var("REDKIT_CHILD_URL")?;
    let redis = Redis::connect(url.as_str())?;
    let cache = Cache::new(&redis, "xproc")?;
    let counter = redis.clone();
    let v: String = cache.get_or_set("cold", None, || {
        let mut c = counter.clone();
        c.incr::<_, _, i64>("xproc:loads", 1).map_err(Error::from)?;
        // Slow enough for the parent to see the lock and wait.
        std::thread::sleep(Duration::from_millis(1500));
        Ok::<_, Error>(format!("child-{}", std::process::id()))
    })?;
    println!("VALUE={v}");
    Ok(())
}
