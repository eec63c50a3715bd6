//! Faults against a real server: killed and restarted, response timeouts, the breaker.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::testing::{wait_until, RedisServer};
use redkit::{BreakerConfig, BreakerState, Delivery, Error, ErrorClass, Redis, RetryPolicy};
use support::*;

/// A handle without a breaker whose pool holds 4 open, idle connections.
fn full_pool_of_four(server: &RedisServer) -> TestResult<Redis> {
    let redis = Redis::connect(
        builder(server)
            .pool_max_size(4)
            .breaker(BreakerConfig::disabled()),
    )?;
    // Several connections in use at once, then all idle.
    let conns: Vec<_> = (0..4).map(|_| redis.conn()).collect::<Result<_, _>>()?;
    drop(conns);
    assert_eq!(redis.stats().pool.size, 4);
    Ok(redis)
}

#[test]
fn killed_server_gives_typed_errors_and_the_pool_recovers_after_restart() -> TestResult {
    let mut server = server();
    let redis = full_pool_of_four(&server)?;

    server.kill()?;

    // A write on a dead connection: a typed connection error, not resent.
    let err = redis.query::<i64>(redis::cmd("INCR").arg("n")).unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Connection);
    // A read is retried under the policy, then fails with a connection error too, fast.
    let start = Instant::now();
    let err = redis
        .query::<Option<i64>>(redis::cmd("GET").arg("n"))
        .unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Through the redis::Commands surface as well.
    let mut r = redis.clone();
    let err = Error::from(r.set::<_, _, ()>("k", 1).unwrap_err());
    assert!(err.is_connection(), "{err:?}");

    // Broken connections were discarded, not kept.
    wait_until(
        Duration::from_secs(5),
        "dead connections to be discarded",
        || redis.stats().pool.size == 0,
    )?;
    let stats = redis.stats();
    assert!(
        stats.pool.discarded_broken + stats.pool.closed >= 4,
        "{stats:?}"
    );
    assert!(stats.errors.get(ErrorClass::Connection) >= 3, "{stats:?}");

    server.restart()?;

    // The first command after the restart succeeds: no caller gets a stale connection.
    let n: i64 = redis.query(redis::cmd("INCR").arg("n"))?;
    assert_eq!(n, 1);
    for i in 0..50 {
        r.set::<_, _, ()>("k", i)?;
        let v: i64 = r.get("k")?;
        assert_eq!(v, i);
    }
    let errors_after = redis.stats().errors.total();
    assert_eq!(
        errors_after,
        stats.errors.total(),
        "no error after recovery"
    );
    Ok(())
}

#[test]
fn restart_without_traffic_in_between_costs_at_most_one_error() -> TestResult {
    // Idle connections die silently when the server restarts. The first command on one of
    // them finds out; every other idle connection is then checked before use.
    let mut server = server();
    let redis = full_pool_of_four(&server)?;
    server.kill()?;
    server.restart()?;
    let mut failures = 0;
    for i in 0..20 {
        match redis.query::<()>(redis::cmd("SET").arg("k").arg(i)) {
            Ok(()) => {}
            Err(e) => {
                assert!(e.is_connection(), "{e:?}");
                failures += 1;
            }
        }
    }
    assert!(failures <= 1, "{failures} failures");
    // Reads are retried, so they never fail here.
    server.kill()?;
    server.restart()?;
    for _ in 0..20 {
        let _: Option<i64> = redis.query(redis::cmd("GET").arg("k"))?;
    }
    Ok(())
}

/// Blocks the server with DEBUG SLEEP from another connection, and returns once a PING on
/// an already established connection times out: proof that the server is asleep.
fn block_server(server: &RedisServer, seconds: f64) -> TestResult<thread::JoinHandle<()>> {
    let mut admin = admin(server);
    admin.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut probe = server.admin()?;
    probe.set_read_timeout(Some(Duration::from_millis(500)))?;
    let _: String = redis::cmd("PING").query(&mut probe)?;
    let sleeper = thread::spawn(move || {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query(&mut admin);
    });
    wait_until(
        Duration::from_secs(10),
        "the server to be asleep",
        || matches!(redis::cmd("PING").query::<String>(&mut probe), Err(e) if e.is_timeout()),
    )?;
    Ok(sleeper)
}

#[test]
fn incr_is_not_applied_twice_when_its_response_times_out() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .timeouts(redkit::Timeouts::default().response(Duration::from_millis(300)))
            .retry(RetryPolicy::default().max_attempts(5)),
    )?;
    // An idle pooled connection must exist before the server sleeps: a connection opened
    // during the sleep would wait in its set-up (within the connect timeout) and the INCR
    // would then simply succeed.
    redis.query::<()>(redis::cmd("SET").arg("counter").arg(0))?;
    let sleeper = block_server(&server, 2.0)?;
    let err = redis
        .query::<i64>(redis::cmd("INCR").arg("counter"))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout, "{err:?}");
    assert_eq!(err.delivery(), Delivery::Unknown);
    assert!(err.is_timeout() && err.is_retryable());
    assert_eq!(
        redis.stats().retries,
        0,
        "an INCR with unknown fate is never resent"
    );
    sleeper.join().expect("sleeper");
    // The server ran the INCR it had received exactly once.
    let mut admin = admin(&server);
    wait_until(Duration::from_secs(5), "the INCR to run", || {
        redis::cmd("GET")
            .arg("counter")
            .query::<Option<i64>>(&mut admin)
            .ok()
            .flatten()
            == Some(1)
    })?;
    let _: String = redis::cmd("PING").query(&mut admin)?;
    let v: i64 = redis::cmd("GET").arg("counter").query(&mut admin)?;
    assert_eq!(v, 1);
    // The timed-out connection was discarded; the handle works normally.
    assert!(redis.stats().pool.discarded_broken >= 1);
    let v: i64 = redis.query(redis::cmd("INCR").arg("counter"))?;
    assert_eq!(v, 2);
    Ok(())
}

/// Retries for as long as a blocked server may take in these tests.
fn patient_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(50)
        .max_elapsed(Duration::from_secs(10))
        .backoff(redkit::Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
}

#[test]
fn read_only_command_is_retried_after_a_timeout() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .timeouts(redkit::Timeouts::default().response(Duration::from_millis(300)))
            .retry(patient_retry())
            .breaker(BreakerConfig::disabled()),
    )?;
    redis.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;
    let sleeper = block_server(&server, 1.5)?;
    let v: String = redis.query(redis::cmd("GET").arg("k"))?;
    assert_eq!(v, "v");
    assert!(redis.stats().retries >= 1);
    // A caller-declared idempotent write is retried too.
    sleeper.join().expect("sleeper");
    let sleeper = block_server(&server, 1.5)?;
    redis.query_idempotent::<()>(redis::cmd("SET").arg("k").arg("w"))?;
    sleeper.join().expect("sleeper");
    let v: String = redis.query(redis::cmd("GET").arg("k"))?;
    assert_eq!(v, "w");
    Ok(())
}

#[test]
fn breaker_opens_fails_fast_half_opens_and_closes() -> TestResult {
    let mut server = server();
    let open_for = Duration::from_millis(400);
    // No idle connections for the pool to refill in the background: its refill attempts
    // count as connect failures while the server is down, whatever the breaker does.
    let redis = Redis::connect(
        builder(&server)
            .retry(RetryPolicy::never())
            .pool_min_idle(0)
            .breaker(
                BreakerConfig::default()
                    .consecutive_failures(3)
                    .open_for(open_for),
            ),
    )?;
    redis.query::<()>(redis::cmd("SET").arg("k").arg(1))?;
    server.kill()?;
    for _ in 0..3 {
        let e = redis
            .query::<()>(redis::cmd("SET").arg("k").arg(2))
            .unwrap_err();
        assert!(e.is_connection(), "{e:?}");
    }
    assert_eq!(redis.breaker_state(), BreakerState::Open);
    // Open: fails fast, without touching the network.
    let failures_before = redis.stats().pool.connect_failures;
    let start = Instant::now();
    let e = redis
        .query::<()>(redis::cmd("SET").arg("k").arg(3))
        .unwrap_err();
    assert!(matches!(e, Error::CircuitOpen { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::CircuitOpen);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(!redkit::RetryPolicy::is_retry_safe(&e, true));
    let stats = redis.stats();
    assert_eq!(stats.breaker, BreakerState::Open);
    assert_eq!(stats.breaker_opened, 1);
    assert_eq!(stats.breaker_rejected, 1);
    assert_eq!(stats.errors.get(ErrorClass::CircuitOpen), 1);
    assert_eq!(
        stats.pool.connect_failures, failures_before,
        "no network while open"
    );

    // After open_for, one probe goes through; the server is still down: open again.
    wait_until(
        open_for * 5,
        "the breaker to let a probe through",
        || match redis.query::<()>(&redis::cmd("PING")) {
            Err(Error::CircuitOpen { .. }) => false,
            Err(e) => {
                assert!(e.is_connection(), "{e:?}");
                true
            }
            Ok(()) => panic!("the server is down"),
        },
    )?;
    assert_eq!(redis.breaker_state(), BreakerState::Open);
    assert_eq!(redis.stats().breaker_opened, 2);

    // Server back: the next probe succeeds and closes the breaker.
    server.restart()?;
    wait_until(open_for * 5, "the breaker to close", || {
        match redis.query::<()>(redis::cmd("SET").arg("k").arg(4)) {
            Err(Error::CircuitOpen { .. }) => false,
            Err(e) => panic!("probe failed with the server up: {e:?}"),
            Ok(()) => true,
        }
    })?;
    assert_eq!(redis.breaker_state(), BreakerState::Closed);
    let v: i64 = redis.query(redis::cmd("GET").arg("k"))?;
    assert_eq!(v, 4);
    Ok(())
}

#[test]
fn breaker_ignores_command_errors() -> TestResult {
    let server = server();
    let redis =
        Redis::connect(builder(&server).breaker(BreakerConfig::default().consecutive_failures(2)))?;
    redis.query::<()>(redis::cmd("LPUSH").arg("l").arg(1))?;
    for _ in 0..10 {
        let e = redis.query::<()>(redis::cmd("INCR").arg("l")).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Command);
    }
    assert_eq!(redis.breaker_state(), BreakerState::Closed);
    Ok(())
}

#[test]
fn unreachable_server_fails_fast_with_a_connection_error() -> TestResult {
    // A port nobody listens on (a server we started and stopped).
    let mut server = server();
    let cfg = builder(&server).retry(RetryPolicy::never()).build()?;
    server.kill()?;
    let start = Instant::now();
    let err = Redis::connect(cfg.clone()).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection, "{err:?}");
    assert_eq!(err.delivery(), Delivery::NotSent);
    let lazy = Redis::connect_lazy(cfg)?;
    let err = lazy.query::<String>(&redis::cmd("PING")).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection, "{err:?}");
    let err = lazy.query::<String>(&redis::cmd("PING")).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection, "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[test]
fn busy_server_replies_are_retried_on_every_surface() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .retry(patient_retry())
            .breaker(BreakerConfig::disabled()),
    )?;
    redis.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;
    let mut admin = admin(&server);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("lua-time-limit") // busy-reply-threshold from 7.0 on; the old name still works
        .arg(50)
        .exec(&mut admin)?;
    // A script that keeps the server busy for 800 ms: everyone else gets -BUSY meanwhile.
    let busy = thread::spawn(move || {
        let script = "local t = redis.call('TIME') \
            local start = t[1] * 1000000 + t[2] \
            while true do \
              local n = redis.call('TIME') \
              if n[1] * 1000000 + n[2] - start > 800000 then break end \
            end return 1";
        let _: redis::RedisResult<i64> = redis::cmd("EVAL").arg(script).arg(0).query(&mut admin);
    });
    wait_until(Duration::from_secs(5), "the server to answer BUSY", || {
        let client = redis::Client::open(server.url()).expect("client");
        let Ok(mut probe) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        matches!(
            redis::cmd("PING").query::<String>(&mut probe),
            Err(e) if e.code() == Some("BUSY")
        )
    })?;
    // A write through the typed API and a write through redis::Commands: both retried until
    // the script ends (the server refused them, so they surely did not run).
    let mut r = redis.clone();
    r.set::<_, _, ()>("k", "w1")?;
    redis.query::<()>(redis::cmd("INCR").arg("n"))?;
    busy.join().expect("busy thread");
    assert!(redis.stats().retries >= 1, "{:?}", redis.stats());
    let n: i64 = redis.query(redis::cmd("GET").arg("n"))?;
    assert_eq!(n, 1);
    Ok(())
}
