//! The key prefix of a handle applies to every command sent through it (commands, pipelines,
//! transactions, script KEYS, multi-key commands, dedicated connections), and helpers never
//! apply it twice.

mod support;

use redis::Commands;
use redkit::scan::ScanIter;
use redkit::{Cache, Lock, Pipeline, Redis, Script};
use support::TestResult;

fn prefixed(server: &redkit::testing::RedisServer) -> Redis {
    Redis::connect(support::builder(server).key_prefix("app:")).expect("connect")
}

fn keys(admin: &mut redis::Connection) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg("*").query(admin).expect("KEYS");
    k.sort();
    k
}

#[test]
fn every_command_through_a_prefixed_handle_is_prefixed() -> TestResult {
    let server = support::server();
    let redis = prefixed(&server);
    let mut admin = support::admin(&server);

    let mut r = redis.clone();
    r.set::<_, _, ()>("a", 1)?;
    assert_eq!(r.get::<_, i64>("a")?, 1);
    let _: () = redis.query(redis::cmd("MSET").arg("b").arg(2).arg("c").arg(3))?;
    let got: Vec<i64> = redis.query(redis::cmd("MGET").arg("a").arg("b").arg("c"))?;
    assert_eq!(got, [1, 2, 3]);

    let mut pipe = Pipeline::new();
    pipe.cmd("INCR")
        .arg("n")
        .cmd("RPUSH")
        .arg("list")
        .arg("x")
        .ignore();
    let (n,): (i64,) = redis.pipeline(&pipe)?;
    assert_eq!(n, 1);
    let (n,): (i64,) = redis.transaction(&["n"], |con, pipe| {
        let n: i64 = con.get("n")?;
        pipe.cmd("SET")
            .arg("n")
            .arg(n + 10)
            .ignore()
            .cmd("GET")
            .arg("n");
        Ok(())
    })?;
    assert_eq!(n, 11);
    let script =
        Script::new("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])");
    let v: String = script.key("s").arg("from-lua").run(&redis)?;
    assert_eq!(v, "from-lua");
    let popped: Option<(String, String)> = r.blpop("list", 1.0)?;
    assert_eq!(
        popped,
        Some(("app:list".to_owned(), "x".to_owned())),
        "replies keep full names"
    );
    let mut own = redis.dedicated()?;
    own.set::<_, _, ()>("d", 4)?;
    assert_eq!(
        keys(&mut admin),
        ["app:a", "app:b", "app:c", "app:d", "app:n", "app:s"],
        "every key under the prefix, none without"
    );
    // Deleting several keys at once, and EXISTS over several.
    let n: i64 = r.exists(&["a", "b", "zz"])?;
    assert_eq!(n, 2);
    let n: i64 = r.del(&["a", "b"])?;
    assert_eq!(n, 2);
    Ok(())
}

#[test]
fn scans_see_the_handles_own_keys_without_the_prefix() -> TestResult {
    let server = support::server();
    let redis = prefixed(&server);
    let mut admin = support::admin(&server);
    let _: () = redis::cmd("MSET")
        .arg("other:1")
        .arg(1)
        .arg("app:user:1")
        .arg(1)
        .arg("app:user:2")
        .arg(1)
        .query(&mut admin)?;
    let mut found: Vec<String> = ScanIter::keys(&redis)
        .pattern("user:*")
        .collect::<Result<_, _>>()?;
    found.sort();
    assert_eq!(found, ["user:1", "user:2"]);
    // Names from the scan go back through the same handle.
    let mut r = redis.clone();
    let n: i64 = r.del(&found)?;
    assert_eq!(n, 2);
    assert_eq!(keys(&mut admin), ["other:1"]);
    Ok(())
}

#[test]
fn helpers_never_prefix_twice() -> TestResult {
    let server = support::server();
    let redis = prefixed(&server);
    let mut admin = support::admin(&server);
    let lock = Lock::new(&redis, "job")?;
    assert!(lock.key().starts_with("app:") && !lock.key().starts_with("app:app:"));
    let guard = lock.acquire()?;
    let cache = Cache::new(&redis, "users")?;
    cache.set("u1", &"alice".to_owned())?;
    assert_eq!(cache.get::<String>("u1")?.as_deref(), Some("alice"));
    let all = keys(&mut admin);
    assert!(
        all.iter()
            .all(|k| k.starts_with("app:") && !k.starts_with("app:app:")),
        "{all:?}"
    );
    assert!(all.iter().any(|k| k.contains("lock")), "{all:?}");
    assert!(all.iter().any(|k| k.contains("users")), "{all:?}");
    guard.release()?;
    Ok(())
}
