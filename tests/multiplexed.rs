//! The multiplexed connection: many threads, one socket, every caller gets its own reply,
//! deadlines per caller, failures typed with the right delivery.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::{Delivery, Error, ErrorClass, HeartbeatConfig, Pipeline, Redis, Timeouts};
use support::TestResult;

fn mux(server: &redkit::testing::RedisServer) -> Redis {
    Redis::connect(support::builder(server).multiplexed(1)).expect("connect")
}

/// Clients of the server right now (CLIENT LIST lines).
fn clients(admin: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("CLIENT LIST");
    list.lines().count()
}

fn value_for(thread: usize, seq: usize) -> Vec<u8> {
    // 0 bytes to 1 MiB, derived from the thread and sequence number.
    let len = match seq % 10 {
        0 => 0,
        1..=6 => 16 + thread,
        7 | 8 => 4096 + seq,
        _ => 1024 * 1024,
    };
    let mut v = format!("{thread}:{seq}:").into_bytes();
    v.resize(v.len() + len, b'a' + (seq % 26) as u8);
    v
}

#[test]
fn sixty_four_threads_each_get_their_own_replies() -> TestResult {
    let server = support::server();
    let redis = mux(&server);
    let mut admin = support::admin(&server);
    let before = clients(&mut admin);
    std::thread::scope(|s| {
        for t in 0..64 {
            let mut r = redis.clone();
            s.spawn(move || {
                for seq in 0..40 {
                    let key = format!("k:{t}");
                    let value = value_for(t, seq);
                    r.set::<_, _, ()>(&key, &value).expect("SET");
                    let got: Vec<u8> = r.get(&key).expect("GET");
                    assert_eq!(got, value, "thread {t} seq {seq}: its own value");
                    let n: i64 = r.incr(format!("n:{t}"), 1).expect("INCR");
                    assert_eq!(n, seq as i64 + 1, "thread {t}: its own counter");
                    let len: i64 = r.lpush(format!("l:{t}"), seq).expect("LPUSH");
                    assert_eq!(len, seq as i64 + 1);
                    let _: () = r.hset(format!("h:{t}"), "seq", seq).expect("HSET");
                    let h: std::collections::HashMap<String, usize> =
                        r.hgetall(format!("h:{t}")).expect("HGETALL");
                    assert_eq!(h.get("seq"), Some(&seq));
                    if seq % 5 == 0 {
                        let mut pipe = Pipeline::new();
                        pipe.cmd("SET").arg(format!("p:{t}")).arg(seq).ignore();
                        pipe.cmd("GET").arg(format!("p:{t}"));
                        pipe.cmd("INCRBY").arg(format!("pn:{t}")).arg(t);
                        let (got, n): (usize, i64) = r.pipeline(&pipe).expect("pipeline");
                        assert_eq!(got, seq);
                        assert_eq!(n, (t * (seq / 5 + 1)) as i64);
                    }
                }
            });
        }
    });
    // One shared connection (plus the heartbeat's and the pool's idle one), not 64.
    let during = clients(&mut admin);
    assert!(
        during <= before + 3,
        "{before} clients before, {during} with 64 threads"
    );
    Ok(())
}

fn short(server: &redkit::testing::RedisServer, response: Duration) -> redkit::ConfigBuilder {
    support::builder(server)
        .multiplexed(1)
        .response_timeout(response)
        .retry(redkit::RetryPolicy::default().max_attempts(1))
}

#[test]
fn a_server_stall_times_out_the_callers_in_flight_and_then_every_caller_gets_its_own_reply(
) -> TestResult {
    let server = support::server();
    let redis = Redis::connect(short(&server, Duration::from_millis(300)))?;
    let mut admin = support::admin(&server);
    let timeouts = AtomicU64::new(0);
    let stall_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        for t in 0..16 {
            let (redis, timeouts, stall_done) = (&redis, &timeouts, &stall_done);
            s.spawn(move || {
                let mut r = redis.clone();
                let mut after = 0;
                let mut seq = 0u64;
                // Until 50 calls succeeded after the stall.
                while after < 50 {
                    seq += 1;
                    let key = format!("s:{t}");
                    let value = format!("{t}:{seq}");
                    match r
                        .set::<_, _, ()>(&key, &value)
                        .and_then(|()| r.get::<_, String>(&key))
                    {
                        Ok(got) => {
                            assert_eq!(got, value, "thread {t}: its own reply");
                            if stall_done.load(Ordering::Relaxed) {
                                after += 1;
                            }
                        }
                        Err(e) => {
                            let e = Error::from(e);
                            // Timeouts, then the breaker they opened (closed again by the
                            // heartbeat once the server answers).
                            match e.class() {
                                ErrorClass::Timeout => {
                                    assert_ne!(e.delivery(), Delivery::Answered, "{e}");
                                    timeouts.fetch_add(1, Ordering::Relaxed);
                                }
                                ErrorClass::CircuitOpen => {
                                    assert_eq!(e.delivery(), Delivery::NotSent, "{e}");
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                                _ => panic!("untyped failure: {e}"),
                            }
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1")
            .query(&mut admin)?;
        stall_done.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    assert!(
        timeouts.load(Ordering::Relaxed) >= 1,
        "callers in flight during the 1 s stall timed out after 300 ms"
    );
    Ok(())
}

#[test]
fn connections_killed_under_load_never_apply_an_incr_twice_and_recover() -> TestResult {
    let server = support::server();
    let redis = Redis::connect(support::builder(&server).multiplexed(2))?;
    let mut admin = support::admin(&server);
    let ok = AtomicU64::new(0);
    let unknown = AtomicU64::new(0);
    let not_sent = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        for _ in 0..16 {
            let (redis, ok, unknown, not_sent, stop) = (&redis, &ok, &unknown, &not_sent, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match redis.query::<i64>(redis::cmd("INCR").arg("counter")) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            assert!(
                                matches!(
                                    e.class(),
                                    ErrorClass::Connection
                                        | ErrorClass::Timeout
                                        | ErrorClass::CircuitOpen
                                ),
                                "typed: {e}"
                            );
                            match e.delivery() {
                                Delivery::Unknown => unknown.fetch_add(1, Ordering::Relaxed),
                                Delivery::NotSent => not_sent.fetch_add(1, Ordering::Relaxed),
                                Delivery::Answered => {
                                    panic!("a connection loss is not an answer: {e}")
                                }
                                _ => 0,
                            }
                        }
                    };
                }
            });
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(150));
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query(&mut admin)?;
        }
        // Recovery without user action: calls succeed again.
        let before = ok.load(Ordering::Relaxed);
        redkit::testing::wait_until(Duration::from_secs(10), "calls to succeed again", || {
            ok.load(Ordering::Relaxed) > before + 100
        })?;
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let counter: u64 = redis::cmd("GET").arg("counter").query(&mut admin)?;
    let (ok, unknown) = (ok.load(Ordering::Relaxed), unknown.load(Ordering::Relaxed));
    assert!(
        counter >= ok,
        "every acknowledged INCR applied: {counter} < {ok}"
    );
    assert!(
        counter <= ok + unknown,
        "no INCR applied twice: {counter} > {ok} acknowledged + {unknown} unknown"
    );
    Ok(())
}

#[test]
fn a_restarted_server_is_reached_again_without_user_action() -> TestResult {
    let mut server = support::server();
    let redis = Redis::connect(
        support::builder(&server)
            .multiplexed(1)
            .heartbeat(HeartbeatConfig::default().interval(Duration::from_millis(100))),
    )?;
    let _: () = redis.query(redis::cmd("SET").arg("a").arg(1))?;
    server.restart()?;
    redkit::testing::wait_until(Duration::from_secs(10), "a call to succeed", || {
        redis.query::<()>(redis::cmd("SET").arg("a").arg(2)).is_ok()
    })?;
    assert_eq!(redis.query::<i64>(redis::cmd("GET").arg("a"))?, 2);
    Ok(())
}

#[test]
fn a_black_hole_fails_the_calls_in_flight_within_heartbeat_interval_plus_deadline() -> TestResult {
    let server = support::server();
    let proxy = redkit::testing::FaultProxy::start_for(&server)?;
    let interval = Duration::from_millis(200);
    let deadline = Duration::from_millis(300);
    let redis = Redis::connect(
        redkit::Config::builder()
            .host(proxy.host())
            .port(proxy.port())
            .multiplexed(1)
            .timeouts(Timeouts::default().response(Duration::from_secs(20)))
            .retry(redkit::RetryPolicy::default().max_attempts(1))
            .heartbeat(
                HeartbeatConfig::default()
                    .interval(interval)
                    .timeout(deadline),
            ),
    )?;
    let _: () = redis.query(redis::cmd("SET").arg("a").arg(1))?;
    proxy.set_mode(redkit::testing::ProxyMode::BlackHole);
    let start = Instant::now();
    let results: Vec<(Duration, Error)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let e = redis
                        .query::<i64>(redis::cmd("INCR").arg("n"))
                        .expect_err("black hole");
                    (start.elapsed(), e)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller"))
            .collect()
    });
    for (took, e) in &results {
        assert!(
            *took < interval + deadline + Duration::from_millis(300),
            "failed after {took:?}: {e}"
        );
        assert_ne!(e.delivery(), Delivery::Answered, "{e}");
    }
    Ok(())
}

#[test]
fn close_closes_the_shared_connections() -> TestResult {
    let server = support::server();
    let mut admin = support::admin(&server);
    let baseline = clients(&mut admin);
    let redis = Redis::connect(support::builder(&server).multiplexed(2))?;
    std::thread::scope(|s| {
        for _ in 0..8 {
            let r = &redis;
            s.spawn(move || {
                for _ in 0..100 {
                    r.query::<()>(&redis::cmd("PING")).expect("PING");
                }
            });
        }
    });
    assert!(clients(&mut admin) > baseline);
    redis.close()?;
    let e = redis.query::<()>(&redis::cmd("PING")).expect_err("closed");
    assert_eq!(e.class(), ErrorClass::Closed);
    redkit::testing::wait_until(Duration::from_secs(5), "every connection closed", || {
        clients(&mut admin) == baseline
    })?;
    Ok(())
}

#[test]
fn what_cannot_share_a_connection_goes_elsewhere_or_is_refused() -> TestResult {
    let server = support::server();
    let redis = mux(&server);
    let mut r = redis.clone();
    // A blocking command runs on a pooled connection: the shared one keeps serving others.
    let blocker = {
        let r = redis.clone();
        std::thread::spawn(move || {
            r.query::<Option<(String, String)>>(redis::cmd("BLPOP").arg("q").arg("1"))
        })
    };
    let start = Instant::now();
    for i in 0..50 {
        r.set::<_, _, ()>("x", i)?;
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "not stuck behind BLPOP"
    );
    assert_eq!(blocker.join().expect("blocker")?, None);
    // Transactions still work; state changes are refused as on the pool.
    let (n,): (i64,) = redis.transaction(&["t"], |con, pipe| {
        let n: Option<i64> = con.get("t")?;
        pipe.cmd("SET")
            .arg("t")
            .arg(n.unwrap_or(0) + 1)
            .ignore()
            .cmd("GET")
            .arg("t");
        Ok(())
    })?;
    assert_eq!(n, 1);
    let e = redis
        .query::<()>(redis::cmd("SELECT").arg(1))
        .expect_err("refused");
    assert_eq!(e.class(), ErrorClass::Unsupported);
    // An atomic pipeline shares the connection (MULTI..EXEC go out together).
    let mut pipe = Pipeline::new();
    pipe.atomic().cmd("INCR").arg("a").cmd("INCR").arg("a");
    let (a, b): (i64, i64) = redis.pipeline(&pipe)?;
    assert_eq!((a, b), (1, 2));
    Ok(())
}

#[test]
fn tls_connections_multiplex_too() -> TestResult {
    support::require!(tls);
    let tls = redkit::testing::TlsMaterial::generate()?;
    let server = redkit::testing::RedisServer::builder()
        .tls(tls.clone())
        .tls_auth_clients(false)
        .start()?;
    let redis = Arc::new(Redis::connect(
        support::builder(&server)
            .tls_ca_pem(tls.ca_cert_pem())
            .multiplexed(1),
    )?);
    std::thread::scope(|s| {
        for t in 0..16 {
            let redis = redis.clone();
            s.spawn(move || {
                let mut r = (*redis).clone();
                for seq in 0..50 {
                    let v = format!("{t}:{seq}");
                    r.set::<_, _, ()>(format!("tls:{t}"), &v).expect("SET");
                    assert_eq!(r.get::<_, String>(format!("tls:{t}")).expect("GET"), v);
                }
            });
        }
    });
    Ok(())
}

#[test]
fn a_multiplexed_sentinel_handle_follows_a_failover() -> TestResult {
    let setup = redkit::testing::SentinelSetup::start()?;
    let redis = Redis::connect(
        redkit::Config::builder()
            .sentinel(setup.master_name(), setup.sentinel_addrs())
            .multiplexed(1)
            .connect_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1)),
    )?;
    let events = redis.events();
    let old = redis.sentinel_master().ok_or("no master")?;
    let mut r = redis.clone();
    r.set::<_, _, ()>("before", 1)?;
    let new_master = setup.failover()?;
    // Writes reach the new master without user action.
    redkit::testing::wait_until(Duration::from_secs(20), "a write on the new master", || {
        r.set::<_, _, ()>("after", 2).is_ok() && redis.sentinel_master().is_some_and(|m| m != old)
    })?;
    let mut admin = setup.node(new_master).admin()?;
    let v: Option<i64> = admin.get("after")?;
    assert_eq!(v, Some(2), "the write landed on the new master");
    let saw_failover = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, redkit::Event::FailoverDetected { .. }));
    assert!(saw_failover, "FailoverDetected was sent");
    Ok(())
}
