//! Resilience: the heartbeat, the reconnect loop, events, health and stats, against a real
//! server that is killed and restarted, or cut off through the fault-injection proxy.

mod support;

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redkit::testing::{wait_until, FaultProxy, ProxyMode};
use redkit::{
    Backoff, BreakerConfig, BreakerState, ErrorClass, Event, Health, HeartbeatConfig, Jitter,
    Redis, RetryPolicy,
};
use support::*;

/// A quick heartbeat for tests.
fn quick_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(500))
        .reconnect_backoff(
            Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
                .jitter(Jitter::Full),
        )
}

/// Receives events until one matches `want`, returning every event seen (the match last).
fn events_until(
    rx: &Receiver<Event>,
    timeout: Duration,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} within {timeout:?}; events so far: {seen:?}"),
        }
    }
}

/// Fills the pool with `n` connections (each checked out at the same time once).
fn warm_pool(redis: &Redis, n: usize) {
    let held: Vec<_> = (0..n).map(|_| redis.conn().expect("checkout")).collect();
    drop(held);
}

#[test]
fn server_restart_recovers_without_user_action() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(
        builder(&server)
            .client_name("restart")
            .pool_max_size(4)
            .heartbeat(quick_heartbeat())
            // No retries: an error from a stale connection would reach us.
            .retry(RetryPolicy::never())
            // Only the heartbeat's recovery can close this breaker in time.
            .breaker(
                BreakerConfig::default()
                    .consecutive_failures(3)
                    .open_for(Duration::from_secs(600)),
            ),
    )?;
    let events = redis.events();
    warm_pool(&redis, 4);
    redis.query::<()>(redis::cmd("SET").arg("k").arg(1))?;
    assert_eq!(redis.health(), Health::Healthy);

    server.kill()?;
    events_until(&events, Duration::from_secs(10), "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    assert_eq!(redis.health(), Health::Down);
    // Calls during the outage fail (and open the breaker), quickly.
    let t = Instant::now();
    for _ in 0..5 {
        let e = redis
            .query::<Option<i64>>(redis::cmd("GET").arg("k"))
            .unwrap_err();
        assert!(
            matches!(
                e.class(),
                ErrorClass::Connection | ErrorClass::CircuitOpen | ErrorClass::Timeout
            ),
            "{e:?}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(redis.breaker_state(), BreakerState::Open);
    let down = redis.stats();
    assert_eq!(down.health, Health::Down);
    assert!(down.uptime.is_none() && down.last_disconnected.is_some());

    server.restart()?;
    let seen = events_until(&events, Duration::from_secs(10), "Reconnected", |e| {
        matches!(e, Event::Reconnected { .. })
    });
    // The order of a recovery: reconnect attempts, the breaker closes, then Reconnected.
    let reconnecting = seen
        .iter()
        .filter(|e| matches!(e, Event::Reconnecting { .. }))
        .count();
    assert!(reconnecting >= 1, "{seen:?}");
    assert!(
        matches!(
            seen.first(),
            Some(Event::Reconnecting { .. }) | Some(Event::HealthChanged { .. })
        ),
        "{seen:?}"
    );
    let Some(Event::Reconnected { downtime, attempts }) = seen.last() else {
        unreachable!()
    };
    assert!(*downtime > Duration::ZERO && *attempts as usize == reconnecting);
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::BreakerChanged {
                to: BreakerState::Closed,
                ..
            }
        )),
        "{seen:?}"
    );
    assert!(
        matches!(
            &seen[seen.len() - 2],
            Event::HealthChanged {
                from: Health::Down,
                to: Health::Healthy
            }
        ),
        "{seen:?}"
    );
    assert_eq!(redis.health(), Health::Healthy);

    // After recovery no call meets a connection from before the outage, even writes that
    // would not be retried.
    let before = redis.stats().errors.total();
    std::thread::scope(|s| {
        for t in 0..4 {
            let redis = redis.clone();
            s.spawn(move || {
                for i in 0..50 {
                    let n: i64 = redis
                        .query(redis::cmd("INCR").arg("after"))
                        .unwrap_or_else(|e| panic!("thread {t} call {i}: {e:?}"));
                    assert!(n >= 1);
                }
            });
        }
    });
    let stats = redis.stats();
    assert_eq!(stats.errors.total(), before, "{stats:?}");
    assert_eq!(redis.query::<i64>(redis::cmd("GET").arg("after"))?, 200);
    assert_eq!(stats.reconnections, 1);
    assert_eq!(stats.health, Health::Healthy);
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert!(stats.uptime.is_some());
    assert!(stats.last_connected >= stats.last_disconnected);
    Ok(())
}

#[test]
fn a_failing_call_wakes_the_heartbeat_and_a_reachable_server_ends_the_backoff() -> TestResult {
    let mut server = server();
    // A heartbeat that would not notice anything for a minute, with a reconnect backoff that
    // would wait 30 s: only the wake-ups from calls make this recover in time.
    let redis = Redis::connect(
        builder(&server)
            .heartbeat(
                HeartbeatConfig::default()
                    .interval(Duration::from_secs(60))
                    .reconnect_backoff(
                        Backoff::exponential(Duration::from_secs(30), Duration::from_secs(30))
                            .jitter(Jitter::None),
                    ),
            )
            .retry(RetryPolicy::never())
            .breaker(BreakerConfig::disabled()),
    )?;
    let events = redis.events();
    warm_pool(&redis, 2);
    server.kill()?;
    let start = Instant::now();
    // This call meets a dead pooled connection (or a refused connect) and wakes the heartbeat.
    assert!(redis.query::<()>(&redis::cmd("PING")).is_err());
    events_until(&events, Duration::from_secs(10), "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    events_until(
        &events,
        Duration::from_secs(10),
        "the second attempt",
        |e| matches!(e, Event::Reconnecting { attempt: 2, .. }),
    );
    server.restart()?;
    // A call reaches the server on its own connection; that wakes the reconnect loop.
    wait_until(Duration::from_secs(10), "a call succeeds", || {
        redis.query::<()>(&redis::cmd("PING")).is_ok()
    })?;
    events_until(&events, Duration::from_secs(10), "Reconnected", |e| {
        matches!(e, Event::Reconnected { .. })
    });
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(redis.health(), Health::Healthy);
    Ok(())
}

#[test]
fn black_holed_connection_is_detected_within_interval_plus_deadline() -> TestResult {
    let server = server();
    let proxy = FaultProxy::start_for(&server)?;
    let interval = Duration::from_millis(200);
    let deadline = Duration::from_millis(300);
    let redis = Redis::connect(
        builder(&server)
            .port(proxy.port())
            .heartbeat(quick_heartbeat().interval(interval).timeout(deadline))
            .timeouts(
                redkit::Timeouts::default()
                    .connect(Duration::from_millis(500))
                    .response(Duration::from_millis(500))
                    .checkout(Duration::from_millis(500)),
            ),
    )?;
    let events = redis.events();
    redis.query::<()>(&redis::cmd("PING"))?;

    proxy.set_mode(ProxyMode::BlackHole);
    let t0 = Instant::now();
    let seen = events_until(&events, Duration::from_secs(10), "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    });
    let detected = t0.elapsed();
    // interval + deadline, plus scheduling slack for a loaded machine.
    assert!(
        detected < interval + deadline + Duration::from_millis(700),
        "detected after {detected:?}"
    );
    let Some(Event::Disconnected { cause }) = seen.last() else {
        unreachable!()
    };
    assert_eq!(cause.class(), ErrorClass::Timeout, "{cause:?}");
    assert!(
        matches!(seen.first(), Some(Event::HeartbeatFailed { .. })),
        "{seen:?}"
    );
    assert_eq!(redis.health(), Health::Down);
    // A call in the black hole times out instead of hanging.
    let e = redis.query::<()>(&redis::cmd("PING")).unwrap_err();
    assert!(
        e.is_timeout() || e.class() == ErrorClass::CircuitOpen,
        "{e:?}"
    );

    proxy.set_mode(ProxyMode::Pass);
    events_until(&events, Duration::from_secs(10), "Reconnected", |e| {
        matches!(e, Event::Reconnected { .. })
    });
    redis.query::<()>(&redis::cmd("PING"))?;
    assert_eq!(redis.stats().reconnections, 1);
    Ok(())
}

#[test]
fn a_full_listener_loses_events_and_never_blocks_the_sender() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .pool_max_size(1)
            .pool_min_idle(0)
            .breaker(BreakerConfig::disabled()),
    )?;
    let small = redis.events_with_capacity(1);
    let big = redis.events_with_capacity(1000);
    let held = redis.conn()?;
    let start = Instant::now();
    for _ in 0..50 {
        let e = redis.conn_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.class(), ErrorClass::PoolTimeout);
    }
    // 50 checkouts of 5 ms: nothing waited on the full listener.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    assert_eq!(small.len(), 1);
    assert_eq!(big.len(), 50);
    assert!(big
        .try_iter()
        .all(|e| matches!(e, Event::PoolExhausted { .. })));
    let stats = redis.stats();
    assert_eq!(stats.events_dropped, 49);
    assert_eq!(stats.event_listeners, 2);
    assert_eq!(stats.pool.checkout_timeouts, 50);
    drop(small);
    drop(big);
    redis.conn_timeout(Duration::from_millis(5))?;
    assert_eq!(redis.stats().event_listeners, 2, "not yet noticed");
    Ok(())
}

#[test]
fn health_and_stats_follow_each_step() -> TestResult {
    let server = server();
    let proxy = FaultProxy::start_for(&server)?;
    let slow = Duration::from_millis(50);
    let redis = Redis::connect_lazy(
        builder(&server)
            .port(proxy.port())
            .heartbeat(quick_heartbeat().slow_ping(slow)),
    )?;
    let events = redis.events();
    // A lazy handle is Down until the first PING answers.
    let first = redis.stats();
    assert!(first.reconnections == 0 && first.command_latency.count == 0);
    events_until(&events, Duration::from_secs(10), "Connected", |e| {
        matches!(e, Event::Connected)
    });
    wait_until(Duration::from_secs(5), "healthy", || {
        redis.health() == Health::Healthy
    })?;
    let s = redis.stats();
    assert!(
        s.heartbeat_last.is_some() && s.heartbeat_latency.count >= 1,
        "{s:?}"
    );
    assert!(s.uptime.is_some() && s.last_connected.is_some() && s.last_disconnected.is_none());
    assert_eq!(
        s.reconnections, 0,
        "a first connection is not a reconnection"
    );

    for i in 0..20 {
        redis.query::<()>(redis::cmd("SET").arg("k").arg(i))?;
    }
    let s = redis.stats();
    assert_eq!(s.command_latency.count, 20);
    assert!(s.command_latency.p50 <= s.command_latency.p99);
    assert!(s.command_latency.p99 <= s.command_latency.max);
    assert!(s.command_latency.max > Duration::ZERO);

    // Slow answers: Degraded, not Down.
    proxy.set_mode(ProxyMode::Delay(slow * 3));
    events_until(&events, Duration::from_secs(10), "Degraded", |e| {
        matches!(
            e,
            Event::HealthChanged {
                to: Health::Degraded,
                ..
            }
        )
    });
    assert!(redis.stats().heartbeat_last.unwrap() >= slow * 3);
    proxy.set_mode(ProxyMode::Pass);
    events_until(&events, Duration::from_secs(10), "Healthy", |e| {
        matches!(
            e,
            Event::HealthChanged {
                from: Health::Degraded,
                to: Health::Healthy
            }
        )
    });

    // A cut: the heartbeat's connection is reset; it reconnects at once.
    assert!(proxy.cut() >= 1);
    let seen = events_until(&events, Duration::from_secs(10), "Reconnected", |e| {
        matches!(e, Event::Reconnected { .. })
    });
    let Some(Event::Disconnected { cause }) = seen
        .iter()
        .find(|e| matches!(e, Event::Disconnected { .. }))
    else {
        panic!("{seen:?}")
    };
    assert_eq!(cause.class(), ErrorClass::Connection, "{cause:?}");
    let s = redis.stats();
    assert_eq!(s.reconnections, 1);
    assert!(s.last_disconnected.is_some());
    redis.query::<()>(&redis::cmd("PING"))?;
    Ok(())
}

#[test]
fn server_errors_on_the_heartbeat_degrade_without_reconnecting() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .heartbeat(quick_heartbeat().timeout(Duration::from_secs(5)))
            .timeouts(
                redkit::Timeouts::default()
                    .response(Duration::from_secs(5))
                    .checkout(Duration::from_secs(2)),
            ),
    )?;
    let events = redis.events();
    // A long script: the server answers everyone else with BUSY.
    let mut admin = admin(&server);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("lua-time-limit") // busy-reply-threshold from 7.0 on; the old name still works
        .arg("100")
        .exec(&mut admin)?;
    let busy = std::thread::spawn(move || {
        let r: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg("local t = redis.call('TIME') while true do local n = redis.call('TIME') if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 1500000 then return end end")
            .arg(0)
            .query(&mut admin);
        r
    });
    let seen = events_until(&events, Duration::from_secs(10), "Degraded", |e| {
        matches!(
            e,
            Event::HealthChanged {
                to: Health::Degraded,
                ..
            }
        )
    });
    assert!(
        seen.iter().any(
            |e| matches!(e, Event::HeartbeatFailed { error } if error.class() == ErrorClass::Busy)
        ),
        "{seen:?}"
    );
    busy.join().expect("script thread")?;
    events_until(&events, Duration::from_secs(10), "Healthy", |e| {
        matches!(
            e,
            Event::HealthChanged {
                to: Health::Healthy,
                ..
            }
        )
    });
    assert_eq!(
        redis.stats().reconnections,
        0,
        "BUSY is not a lost connection"
    );
    Ok(())
}

#[test]
fn reconnect_limits_give_up_then_retry_each_interval() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(
        builder(&server).heartbeat(
            quick_heartbeat()
                .interval(Duration::from_millis(200))
                .max_attempts(3),
        ),
    )?;
    let events = redis.events();
    server.kill()?;
    let seen = events_until(&events, Duration::from_secs(10), "ReconnectGaveUp", |e| {
        matches!(e, Event::ReconnectGaveUp { .. })
    });
    let attempts: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1, 2, 3], "{seen:?}");
    assert!(matches!(
        seen.last(),
        Some(Event::ReconnectGaveUp { attempts: 3, .. })
    ));
    assert_eq!(redis.health(), Health::Down);
    server.restart()?;
    // One attempt per interval finds it.
    events_until(&events, Duration::from_secs(10), "Reconnected", |e| {
        matches!(e, Event::Reconnected { attempts: 1, .. })
    });
    assert_eq!(redis.health(), Health::Healthy);
    Ok(())
}

#[test]
fn close_stops_the_handle_for_every_clone() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).client_name("closing"))?;
    let events = redis.events();
    let clone = redis.clone();
    redis.query::<()>(&redis::cmd("PING"))?;
    let held = redis.conn()?;
    redis.close()?;
    redis.close()?; // twice is fine
    assert!(clone.is_closed());
    let e = clone.query::<()>(&redis::cmd("PING")).unwrap_err();
    assert!(matches!(e, redkit::Error::Closed), "{e:?}");
    assert_eq!(clone.conn().unwrap_err().class(), ErrorClass::Closed);
    assert!(clone.try_conn().is_none());
    // The listener gets Closed, then the channel ends.
    let rest: Vec<Event> = events.iter().collect();
    assert!(matches!(rest.last(), Some(Event::Closed)), "{rest:?}");
    // The connection in use closes when it comes back; then no connection of ours is left.
    drop(held);
    let mut admin = admin(&server);
    wait_until(Duration::from_secs(5), "no connection left", || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut admin)
            .expect("CLIENT LIST");
        !list.contains("name=closing")
    })?;
    assert_eq!(clone.stats().errors.get(ErrorClass::Closed), 2);
    Ok(())
}

#[test]
fn dropping_a_handle_while_it_reconnects_returns_promptly() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(
        builder(&server).heartbeat(
            quick_heartbeat().reconnect_backoff(
                Backoff::exponential(Duration::from_secs(30), Duration::from_secs(60))
                    .jitter(Jitter::None),
            ),
        ),
    )?;
    let events = redis.events();
    server.kill()?;
    events_until(
        &events,
        Duration::from_secs(10),
        "the second attempt",
        |e| matches!(e, Event::Reconnecting { attempt: 2, .. }),
    );
    let t = Instant::now();
    drop(redis);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    Ok(())
}

#[test]
fn failing_calls_keep_the_reconnect_loop_from_backing_off() -> TestResult {
    let mut server = server();
    let base = Duration::from_millis(50);
    let redis = Redis::connect(
        builder(&server)
            .pool_min_idle(0)
            .heartbeat(quick_heartbeat().reconnect_backoff(
                Backoff::exponential(base, Duration::from_secs(60)).jitter(Jitter::None),
            ))
            .retry(RetryPolicy::never()),
    )?;
    let events = redis.events();
    server.kill()?;
    // Wait until the backoff has grown well past its base: 50, 100, 200, 400, 800 ms...
    // The announcement of attempt 7 starts a wait of 1.6 s.
    events_until(&events, Duration::from_secs(20), "attempt 7", |e| {
        matches!(e, Event::Reconnecting { attempt: 7, .. })
    });
    // Calls that fail (the breaker opens and rejects them) ask for attempts every 50 ms.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = redis.query::<()>(&redis::cmd("PING"));
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        server.restart()?;
        let t0 = Instant::now();
        let result = wait_until(Duration::from_secs(10), "a call succeeds", || {
            redis.query::<()>(&redis::cmd("PING")).is_ok()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result?;
        // Without the demand the next attempt would come 1.6 s after the announcement.
        assert!(
            t0.elapsed() < Duration::from_millis(800),
            "{:?}",
            t0.elapsed()
        );
        Ok(())
    })?;
    assert_eq!(redis.health(), Health::Healthy);
    Ok(())
}
