//! The `redkit` binary run as a process against a real server: every subcommand, `--json`
//! parsed back, and the exit codes scripts rely on.

use std::process::{Command, Output};
use std::time::Duration;

use redkit::cache::Cache;
use redkit::ratelimit::{Gcra, GcraLimit, RateLimiter};
use redkit::session::SessionStore;
use redkit::testing::RedisServer;
use redkit::Redis;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn redkit(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redkit"))
        .args(["--url", url, "--timeout", "2s"])
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("run the redkit binary")
}

/// Runs with `--json`, expects success, parses stdout.
fn json(url: &str, args: &[&str]) -> Result<Value, Box<dyn std::error::Error>> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = redkit(url, &all);
    if !out.status.success() {
        return Err(format!(
            "redkit {args:?} failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn every_subcommand_against_a_real_server() -> TestResult {
    let server = RedisServer::start()?;
    let url = server.url();
    let redis = Redis::connect(url.as_str())?;

    // info, slowlog
    let info = json(&url, &["info"])?;
    assert!(
        info["server"].as_str().is_some_and(|s| !s.is_empty()),
        "{info}"
    );
    assert!(info["used_memory"].as_u64().is_some());
    let _: () = redis.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0),
    )?;
    redis.query::<()>(redis::cmd("SET").arg("slow").arg("1"))?;
    let slow = json(&url, &["slowlog", "--count", "5"])?;
    assert!(!slow.as_array().ok_or("an array")?.is_empty(), "{slow}");
    let table = redkit(&url, &["slowlog"]);
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("ID"));

    // queue: two dead letters, one job pending
    let queue = redkit::StreamQueue::builder(&redis, "mail")
        .max_retries(0)
        .build()?;
    queue.job("to ann").header("tenant", "acme").send()?;
    queue.produce("to bob")?;
    queue.produce("held")?;
    let mut c = queue.consumer()?;
    for _ in 0..2 {
        let job = c.try_recv()?.ok_or("a job")?;
        c.fail(&job, "smtp down")?;
    }
    let _held = c.try_recv()?.ok_or("the held job")?;
    let stats = json(&url, &["queue", "stats", "mail"])?;
    assert_eq!(stats["dead_letters"], 2, "{stats}");
    assert_eq!(stats["pending"], 1);
    let dead = json(&url, &["queue", "dead", "mail"])?;
    let letters = dead["dead_letters"].as_array().ok_or("dead letters")?;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["payload"], "to ann");
    assert_eq!(letters[0]["error"], "smtp down");
    assert_eq!(letters[0]["headers"]["tenant"], "acme");
    let first = letters[0]["id"].as_str().ok_or("an id")?.to_owned();
    let pending = json(&url, &["queue", "pending", "mail"])?;
    assert_eq!(pending.as_array().map(Vec::len), Some(1));
    let replayed = json(&url, &["queue", "replay", "mail", &first])?;
    assert_eq!(replayed["replayed"], 1);
    let again = redkit(&url, &["queue", "replay", "mail", &first]);
    assert_eq!(code(&again), 3, "a dead letter replayed twice is not found");
    let job = c.try_recv()?.ok_or("the replayed job")?;
    assert_eq!(job.payload(), b"to ann");
    assert_eq!(job.header("tenant"), Some("acme"));
    let purged = json(&url, &["queue", "purge", "mail", "--all"])?;
    assert_eq!(purged["purged"], 1);
    assert_eq!(queue.stats()?.dead_letters, 0);

    // lock show
    let lock = redkit::Lock::new(&redis, "nightly")?;
    let guard = lock.acquire()?;
    let shown = json(&url, &["lock", "show", "nightly"])?;
    assert_eq!(shown["held"], true);
    assert_eq!(shown["fence"], guard.fencing_token());
    assert!(shown["ttl_ms"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(shown["holder"].as_str().map(str::len), Some(8));
    guard.release()?;
    assert_eq!(json(&url, &["lock", "show", "nightly"])?["held"], false);

    // limit peek, reset
    let gcra = Gcra::new(&redis, "api", GcraLimit::per_second(10))?;
    for _ in 0..4 {
        gcra.allow("u1")?;
    }
    let args = [
        "limit", "peek", "gcra", "api", "u1", "--limit", "10", "--per", "1s",
    ];
    let peek = json(&url, &args)?;
    assert!(peek["remaining"].as_u64().is_some_and(|r| r < 10), "{peek}");
    json(&url, &["limit", "reset", "gcra", "api", "u1"])?;
    assert_eq!(json(&url, &args)?["remaining"], 10);

    // cache get, invalidate-tag, invalidate-pattern
    let cache = Cache::new(&redis, "products")?;
    cache.set("p:1", &"widget".to_owned())?;
    cache.set_tagged("p:2", &"gadget".to_owned(), None, &["sale"])?;
    cache.increment("views", 3)?;
    let got = json(&url, &["cache", "get", "products", "p:1"])?;
    assert_eq!(
        (got["kind"].as_str(), got["value"].as_str()),
        (Some("value"), Some("widget"))
    );
    assert_eq!(
        json(&url, &["cache", "get", "products", "views"])?["kind"],
        "counter"
    );
    assert_eq!(
        code(&redkit(&url, &["cache", "get", "products", "nope"])),
        3
    );
    let tag = json(&url, &["cache", "invalidate-tag", "products", "sale"])?;
    assert_eq!(tag["removed"], 1);
    let pattern = json(&url, &["cache", "invalidate-pattern", "products", "p:*"])?;
    assert_eq!(pattern["removed"], 1);
    assert!(cache.get::<String>("p:1")?.is_none());

    // sessions count, list, destroy-user
    let store = SessionStore::new(&redis, "web")?;
    store.create("ann", &[("theme", "dark")])?;
    store.create("ann", &[])?;
    assert_eq!(
        json(&url, &["sessions", "count", "web", "ann"])?["sessions"],
        2
    );
    let list = json(&url, &["sessions", "list", "web", "ann"])?;
    let list = list.as_array().ok_or("an array")?;
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .all(|s| s["session"].as_str().map(str::len) == Some(8)));
    assert_eq!(
        json(&url, &["sessions", "destroy-user", "web", "ann"])?["destroyed"],
        2
    );
    assert_eq!(store.count("ann")?, 0);

    // keys
    for i in 0..30 {
        redis.query::<()>(redis::cmd("SET").arg(format!("k:{i}")).arg("x"))?;
    }
    redis.query::<()>(redis::cmd("RPUSH").arg("k:list").arg("a"))?;
    let keys = json(&url, &["keys", "--pattern", "k:*", "--limit", "5"])?;
    assert_eq!(keys["count"], 31, "{keys}");
    assert_eq!(keys["by_type"]["string"]["count"], 30);
    assert_eq!(keys["by_type"]["list"]["count"], 1);
    assert!(keys["memory"].as_u64().is_some_and(|m| m > 0));
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(5));
    let only_lists = json(&url, &["keys", "--pattern", "k:*", "--type", "list"])?;
    assert_eq!(only_lists["count"], 1);
    let people = redkit(&url, &["keys", "--pattern", "k:*"]);
    assert!(String::from_utf8_lossy(&people.stdout).contains("total"));
    Ok(())
}

#[test]
fn exit_codes_scripts_can_rely_on() -> TestResult {
    let server = RedisServer::start()?;
    let url = server.url();
    // A missing queue: 3, with the error in JSON too.
    let missing = redkit(&url, &["--json", "queue", "stats", "nope"]);
    assert_eq!(code(&missing), 3);
    let v: Value = serde_json::from_slice(&missing.stdout)?;
    assert_eq!(v["exit_code"], 3);
    // A wrong URL: 5.
    assert_eq!(code(&redkit("nonsense://x", &["info"])), 5);
    // No URL at all: 5.
    let none = Command::new(env!("CARGO_BIN_EXE_redkit"))
        .arg("info")
        .env_remove("REDIS_URL")
        .output()?;
    assert_eq!(code(&none), 5);
    // An unknown connection name: 5; a known one works.
    let named = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_redkit"))
            .args(["--redis", name, "--json", "info"])
            .env_remove("REDIS_URL")
            .env("REDIS_URL_JOBS", &url)
            .output()
    };
    assert_eq!(code(&named("cache")?), 5);
    assert_eq!(code(&named("jobs")?), 0);
    // An unreachable server: 4, within the timeout.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let start = std::time::Instant::now();
    let down = redkit(&format!("redis://127.0.0.1:{port}/"), &["info"]);
    assert_eq!(code(&down), 4, "{}", String::from_utf8_lossy(&down.stderr));
    assert!(start.elapsed() < Duration::from_secs(10));
    // Bad arguments: 2.
    assert_eq!(code(&redkit(&url, &["queue", "replay", "q"])), 2);
    assert_eq!(
        code(&redkit(
            &url,
            &["limit", "peek", "gcra", "a", "b", "--limit", "1", "--per", "1y"]
        )),
        2
    );
    // Help: 0.
    assert_eq!(code(&redkit(&url, &["--help"])), 0);
    Ok(())
}
