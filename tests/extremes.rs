//! Every setting, size and input at its extreme: no panic, no runaway, a clear error.

mod support;

use redkit::pubsub::Subscriber;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::pubsub::SubscriptionOptions;
use redkit::{BreakerConfig, Config, ErrorClass, HeartbeatConfig, Redis, RetryPolicy, Timeouts};
use support::TestResult;

const MAX: Duration = Duration::MAX;

#[test]
fn huge_durations_never_panic() -> TestResult {
    let server = support::server();
    // Every timeout at its largest, from the builder.
    let redis = Redis::connect(
        support::builder(&server)
            .timeouts(
                Timeouts::default()
                    .connect(MAX)
                    .response(MAX)
                    .write(MAX)
                    .checkout(MAX),
            )
            .retry(RetryPolicy::default().max_elapsed(MAX))
            .heartbeat(HeartbeatConfig::default().interval(MAX).timeout(MAX))
            .breaker(BreakerConfig::default().open_for(MAX)),
    )?;
    let mut r = redis.clone();
    r.set::<_, _, ()>("k", 1)?;
    assert_eq!(r.get::<_, i64>("k")?, 1);
    drop(redis.conn_timeout(MAX)?);
    let subscriber = Subscriber::new(&redis)?;
    let e = subscriber
        .subscribe_with(
            redkit::pubsub::Kind::Channel,
            ["news"],
            SubscriptionOptions::default().capacity(usize::MAX),
        )
        .expect_err("capacity too large");
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("capacity"), "{e}");
    drop(subscriber);

    let queue = redkit::StreamQueue::builder(&redis, "extreme").build()?;
    let mut consumer = queue.consumer()?;
    queue.produce(b"job")?;
    let job = consumer.recv_timeout(MAX)?.expect("a job");
    consumer.ack(&job)?;
    let workers = queue
        .workers()
        .shutdown_timeout(MAX)
        .run(|_| Ok::<(), String>(()))?;
    workers.shutdown()?;
    let list = redkit::ListQueue::builder(&redis, "extreme-list").build()?;
    let mut lc = list.consumer()?;
    list.push("x")?;
    assert!(lc.recv_timeout(MAX)?.is_some());
    let e = redkit::Cache::builder(&redis, "extreme")
        .default_ttl(MAX)
        .build()
        .expect_err("a TTL beyond what the server takes");
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    let cache = redkit::Cache::builder(&redis, "extreme")
        .lock_wait(MAX)
        .build()?;
    let e = cache
        .get_or_set("k", Some(MAX), || Ok::<_, redkit::Error>("v".to_owned()))
        .expect_err("a TTL beyond what the server takes");
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    let v: String = cache.get_or_set("k", None, || Ok::<_, redkit::Error>("v".to_owned()))?;
    assert_eq!(v, "v");
    redis.close()?;

    // The same from a URL with the largest values it can hold.
    let url = format!(
        "{}?connect_timeout=18446744073709551615s&response_timeout=18446744073709551615s&checkout_timeout=18446744073709551615s&heartbeat_interval=18446744073709551615s",
        server.url()
    );
    let redis = Redis::connect(url.as_str())?;
    let mut r = redis.clone();
    assert_eq!(r.get::<_, i64>("k")?, 1);
    let start = Instant::now();
    drop(redis);
    drop(r);
    assert!(start.elapsed() < Duration::from_secs(2), "drop is bounded");
    Ok(())
}

#[test]
fn sizes_and_counts_out_of_range_are_refused_at_build() {
    for url in [
        "redis://127.0.0.1/?pool_max_size=4294967295",
        "redis://127.0.0.1/?pool_max_size=0",
        "redis://127.0.0.1/?max_reply_size=1",
        "redis://127.0.0.1/?multiplexed=100000",
    ] {
        let e = Config::from_url(url).expect_err(url);
        assert_eq!(e.class(), ErrorClass::Config, "{url}: {e}");
    }
    let e = Config::builder()
        .pool_max_size(u32::MAX)
        .build()
        .expect_err("pool");
    assert!(e.to_string().contains("pool"), "names the setting: {e}");
    let e = Config::builder()
        .pool_min_idle(20)
        .pool_max_size(10)
        .build()
        .expect_err("min idle above max");
    assert!(e.to_string().contains("min_idle"), "{e}");
}

#[test]
fn a_value_over_the_server_limit_fails_fast_and_never_opens_the_breaker() -> TestResult {
    let server = support::server();
    let limit = 1024 * 1024;
    let redis = Redis::connect(
        support::builder(&server)
            .max_value_size(limit)
            .breaker(BreakerConfig::default().consecutive_failures(2)),
    )?;
    let big = vec![b'x'; limit as usize + 1];
    for _ in 0..5 {
        let start = Instant::now();
        let e = redis
            .query::<()>(redis::cmd("SET").arg("big").arg(&big))
            .expect_err("too large");
        assert_eq!(e.class(), ErrorClass::TooLarge, "{e}");
        assert_eq!(e.delivery(), redkit::Delivery::NotSent);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(redis.stats().retries, 0, "never resent");
    assert_eq!(redis.breaker_state(), redkit::BreakerState::Closed);
    // The same through a pipeline and a checked-out connection.
    let mut pipe = redkit::Pipeline::new();
    pipe.cmd("SET").arg("big").arg(&big);
    assert_eq!(
        redis.pipeline::<()>(&pipe).expect_err("too large").class(),
        ErrorClass::TooLarge
    );
    let mut con = redis.conn()?;
    let e: redkit::Error = con
        .set::<_, _, ()>("big", &big)
        .expect_err("too large")
        .into();
    assert_eq!(e.class(), ErrorClass::TooLarge);
    // A value at the limit goes through.
    let ok = vec![b'y'; limit as usize - 64];
    redis.query::<()>(redis::cmd("SET").arg("ok").arg(&ok))?;
    Ok(())
}

#[test]
fn a_reply_over_the_cap_fails_typed_and_memory_stays_bounded() -> TestResult {
    let server = support::server();
    let redis = Redis::connect(support::builder(&server).max_reply_size(64 * 1024))?;
    let mut admin = support::admin(&server);
    let _: () = admin.set("big", vec![b'z'; 1024 * 1024])?;
    let e = redis
        .query::<Vec<u8>>(redis::cmd("GET").arg("big"))
        .expect_err("over the cap");
    assert_eq!(e.class(), ErrorClass::TooLarge, "{e}");
    // The handle goes on working.
    let _: () = redis.query(redis::cmd("SET").arg("small").arg(1))?;
    Ok(())
}

#[test]
fn urls_get_errors_that_say_what_is_wrong() {
    for (url, part) in [
        ("redis://127.0.0.1:99999/", "port"),
        ("redis://127.0.0.1/abc", "database"),
        ("redis://127.0.0.1/?pool_max_size=lots", "pool_max_size"),
        ("redis://127.0.0.1/?connect_timeout=soon", "connect_timeout"),
        ("redis://127.0.0.1/?nope=1", "nope"),
        ("ftp://127.0.0.1/", "scheme"),
        ("", "url"),
    ] {
        let e = Config::from_url(url).expect_err(url);
        let text = e.to_string();
        assert!(
            text.contains(part) && !text.ends_with("invalid client config"),
            "{url}: {text}"
        );
    }
    // Aliases that are documented, not silently odd.
    let v = Config::from_url("valkey://127.0.0.1:6380/1").expect("valkey://");
    assert_eq!(v.db(), 1);
    assert!(Config::from_url("valkeys://127.0.0.1/")
        .expect("valkeys://")
        .tls()
        .is_some());
    let u = Config::from_url("redis+unix:///tmp/redis.sock").expect("redis+unix://");
    assert!(matches!(u.addr(), redkit::Addr::Unix(_)));
}

#[test]
fn after_an_idle_outage_the_first_call_is_not_refused_by_the_breaker() -> TestResult {
    let mut server = support::server();
    let redis = Redis::connect(
        support::builder(&server)
            .breaker(
                BreakerConfig::default()
                    .consecutive_failures(1)
                    .open_for(Duration::from_secs(30)),
            )
            .heartbeat(
                HeartbeatConfig::default()
                    .interval(Duration::from_millis(200))
                    .timeout(Duration::from_millis(500)),
            ),
    )?;
    server.stop()?;
    // One failed call opens the breaker (then nobody calls).
    assert!(redis.query::<()>(&redis::cmd("PING")).is_err());
    redkit::testing::wait_until(Duration::from_secs(5), "the breaker to open", || {
        redis.breaker_state() == redkit::BreakerState::Open
    })?;
    // An idle outage of several seconds: the reconnect backoff has grown meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    server.restart()?;
    // Within the heartbeat interval (and one reconnect attempt) the breaker is closed.
    redkit::testing::wait_until(Duration::from_secs(2), "the breaker to close", || {
        redis.breaker_state() == redkit::BreakerState::Closed
    })?;
    redis.query::<()>(&redis::cmd("PING"))?;
    Ok(())
}

#[test]
fn a_corrupt_reply_during_set_up_is_a_protocol_error() -> TestResult {
    support::init_logs();
    let fake = redkit::testing::FakeServer::start(|_| {
        redkit::testing::Action::Reply(b"*2\r\n$5\r\nhello\r\n@@garbage@@\r\n".to_vec())
    })?;
    let e = Redis::connect(
        Config::builder()
            .host(fake.host())
            .port(fake.port())
            .heartbeat(HeartbeatConfig::disabled()),
    )
    .expect_err("corrupt");
    assert_eq!(e.class(), ErrorClass::Protocol, "{e}");
    Ok(())
}
