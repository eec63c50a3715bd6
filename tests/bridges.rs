//! Bridges from code that already uses the `redis` crate, against real servers: a handle
//! from a `redis::Client`, limiters, caches and sessions on a plain `redis::Connection`, a
//! plain-value cache read with a raw `GET`; and `Config` from and to TOML (feature `serde`).

mod support;

use std::time::Duration;

use redis::Commands;
use redkit::cache::Cache;
use redkit::ratelimit::{DecideOn, Gcra, GcraLimit, RateLimiter, RetryAfter, TokenBucket};
use redkit::testing::RedisServer;
use redkit::{ErrorClass, Redis};
use support::*;

/// The `redis` crate's own client and connection to `server`.
fn plain_connection(server: &redkit::testing::RedisServer) -> TestResult<redis::Connection> {
    let client = redis::Client::open(server.url())?;
    Ok(client.get_connection()?)
}

#[test]
fn a_handle_from_a_redis_client_keeps_its_settings() -> TestResult {
    let server = RedisServer::builder().password("bridge-pw").start()?;
    let url = format!("redis://:bridge-pw@127.0.0.1:{}/5", server.port());
    let client = redis::Client::open(url.as_str())?;
    // By reference and by value, from the client and from its connection info.
    let redis = Redis::connect(&client)?;
    assert_eq!(redis.config().db(), 5);
    assert!(redis.config().has_password());
    let mut r = redis.clone();
    r.set::<_, _, ()>("from-client", "yes")?;
    // The same database through the client itself.
    let mut con = client.get_connection()?;
    let v: String = con.get("from-client")?;
    assert_eq!(v, "yes");
    let by_info = Redis::connect(client.get_connection_info().clone())?;
    let v: String = by_info.query(redis::cmd("GET").arg("from-client"))?;
    assert_eq!(v, "yes");
    let by_value = Redis::connect(client)?;
    assert_eq!(by_value.config().db(), 5);
    // A wrong password from a client is the usual typed error.
    let wrong = redis::Client::open(format!("redis://:nope@127.0.0.1:{}/", server.port()))?;
    let err = Redis::connect(&wrong).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert!(!format!("{err} {err:?}").contains("bridge-pw"));
    Ok(())
}

#[test]
fn limiters_decide_on_a_plain_connection_and_share_the_limit() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut con = plain_connection(&server)?;
    let gcra = Gcra::new(&redis, "bridge", GcraLimit::per_minute(3))?;
    // Two units on the plain connection, the third through the handle: one limit.
    assert_eq!(gcra.allow_n_on(&mut con, "user:1", 2)?.granted, 2);
    let third = gcra.allow("user:1")?;
    assert_eq!((third.granted, third.remaining), (1, 0));
    let denied = gcra.allow_on(&mut con, "user:1")?;
    assert_eq!(denied.granted, 0);
    assert!(matches!(denied.retry_after, RetryAfter::After(d) if d > Duration::ZERO));
    assert_eq!(gcra.peek_on(&mut con, "user:1")?.remaining, 0);
    // Another subject is untouched, and the state is where the handle keeps it.
    assert_eq!(gcra.allow_on(&mut con, "user:2")?.granted, 1);
    let exists: bool = con.exists(gcra.key("user:1"))?;
    assert!(exists);

    // Another kind of limiter, the same way.
    let bucket = TokenBucket::new(
        &redis,
        "bridge-bucket",
        redkit::ratelimit::BucketLimit::new(5, 5, Duration::from_secs(60)),
    )?;
    assert_eq!(bucket.allow_n_on(&mut con, "job", 5)?.granted, 5);
    assert_eq!(bucket.allow_on(&mut con, "job")?.granted, 0);
    Ok(())
}

#[test]
fn a_cache_reads_and_writes_on_a_plain_connection() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut con = plain_connection(&server)?;
    let cache = Cache::new(&redis, "bridge")?;
    cache.set_on(&mut con, "p:1", &"widget".to_owned(), None)?;
    // Written on the plain connection, read through the handle, and the reverse.
    assert_eq!(cache.get::<String>("p:1")?.as_deref(), Some("widget"));
    cache.set("p:2", &42i64)?;
    assert_eq!(cache.get_on::<i64>(&mut con, "p:2")?, Some(42));
    assert_eq!(cache.get_on::<String>(&mut con, "missing")?, None);
    let ttl: i64 = con.pttl(cache.key("p:1"))?;
    assert!(ttl > 0 && ttl <= 300_000, "the default TTL: {ttl}");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (2, 1));
    Ok(())
}

#[test]
fn a_plain_cache_stores_exactly_the_bytes_a_raw_get_returns() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut con = plain_connection(&server)?;
    let plain = Cache::builder(&redis, "shared").plain(true).build()?;
    plain.set("greeting", &"hello".to_owned())?;
    plain.set("blob", &vec![0u8, 1, 2, 255])?;
    plain.set("n", &7i64)?;
    let loaded: String = plain.get_or_set("loaded", None, || {
        Ok::<_, redkit::Error>("from the loader".to_owned())
    })?;
    assert_eq!(loaded, "from the loader");
    let raw: String = con.get(plain.key("greeting"))?;
    assert_eq!(raw, "hello");
    let raw: Vec<u8> = con.get(plain.key("blob"))?;
    assert_eq!(raw, vec![0u8, 1, 2, 255]);
    let raw: String = con.get(plain.key("n"))?;
    assert_eq!(raw, "7");
    let raw: String = con.get(plain.key("loaded"))?;
    assert_eq!(raw, "from the loader");
    // Another program writes a raw value: the plain cache reads it as it is.
    con.set::<_, _, ()>(plain.key("from-elsewhere"), "written by python")?;
    assert_eq!(
        plain.get::<String>("from-elsewhere")?.as_deref(),
        Some("written by python")
    );
    // A framed cache of the same data shows the difference.
    let framed = Cache::new(&redis, "framed")?;
    framed.set("greeting", &"hello".to_owned())?;
    let raw: Vec<u8> = con.get(framed.key("greeting"))?;
    assert_ne!(raw, b"hello".to_vec());
    // What a plain cache cannot keep is refused, naming the setting.
    for builder in [
        Cache::builder(&redis, "x")
            .plain(true)
            .negative_ttl(Duration::from_secs(1)),
        Cache::builder(&redis, "x").plain(true).early_refresh(1.0),
    ] {
        let err = builder.build().unwrap_err();
        assert_eq!(err.class(), ErrorClass::Config);
        assert!(err.to_string().contains("plain"), "{err}");
    }
    Ok(())
}

#[test]
fn sessions_read_on_a_plain_connection() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut con = plain_connection(&server)?;
    let store = redkit::SessionStore::new(&redis, "bridge")?;
    let created = store.create("ada", &[("theme", "dark")])?;
    let read = store
        .get_on(&mut con, &created.id)?
        .ok_or("the session exists")?;
    assert_eq!(read.user, "ada");
    assert_eq!(read.fields.get("theme").map(String::as_str), Some("dark"));
    assert!(store.get_on(&mut con, "no-such-session")?.is_none());
    Ok(())
}

#[cfg(feature = "serde")]
#[test]
fn a_toml_config_round_trips_with_the_password_redacted() -> TestResult {
    let server = server();
    let text = format!(
        r#"
host = "127.0.0.1"
port = {port}
password = "toml-secret-pw"
db = 1
client_name = "from-toml"
protocol = "resp3"
key_prefix = "app:"

[timeouts]
connect = "2s"
response = "250ms"
checkout = 1500

[pool]
max_size = 8
idle_timeout = "5m"
max_lifetime = "off"

[retry]
max_attempts = 4
max_elapsed = "3s"

[heartbeat]
interval = "500ms"
timeout = "400ms"
"#,
        port = server.port()
    );
    use redkit::Config;
    let config: Config = toml::from_str(&text)?;
    assert_eq!(
        config.timeouts().response_timeout(),
        Duration::from_millis(250)
    );
    assert_eq!(
        config.timeouts().checkout_timeout(),
        Duration::from_millis(1500)
    );
    assert_eq!(config.pool().max_size(), 8);
    assert_eq!(config.pool().idle_timeout(), Some(Duration::from_secs(300)));
    assert_eq!(config.pool().max_lifetime(), None);
    assert_eq!(config.retry().attempts(), 4);
    assert_eq!(
        config.heartbeat().interval_value(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(config.protocol(), redkit::Protocol::Resp3);

    // Out: every setting, the password redacted.
    let out = toml::to_string(&config)?;
    assert!(!out.contains("toml-secret-pw"), "{out}");
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(out.contains("response = \"250ms\""), "{out}");
    assert!(out.contains("max_lifetime = \"off\""), "{out}");
    // Back in: refused while the password reads "<redacted>" ...
    let err = toml::from_str::<Config>(&out).unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    // ... and with the secret given again, the same config.
    let again: Config = toml::from_str(&out.replace("<redacted>", "toml-secret-pw"))?;
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
    assert_eq!(toml::to_string(&again)?, out);
    // And it connects.
    let redis = Redis::connect(again)?;
    let pong: String = redis.query(&redis::cmd("PING"))?;
    assert_eq!(pong, "PONG");
    // Bad input: a typed message naming the setting.
    let err = toml::from_str::<Config>("[pool]\nmax_size = 0\n").unwrap_err();
    assert!(err.to_string().contains("pool.max_size"), "{err}");
    let err = toml::from_str::<Config>("[timeouts]\nconnect = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("soon"), "{err}");
    Ok(())
}
