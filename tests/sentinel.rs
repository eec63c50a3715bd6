//! A Sentinel topology under load: failovers while 8 threads write.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redkit::testing::SentinelSetup;
use redkit::{Addr, Config, Event, Redis, RetryPolicy, Timeouts};
use support::TestResult;

/// Writes resume on the new master within this bound after the failover is started.
const RESUME_BOUND: Duration = Duration::from_secs(10);

fn handle(setup: &SentinelSetup) -> TestResult<Redis> {
    let config = Config::builder()
        .sentinel(setup.master_name(), setup.sentinel_addrs())
        .timeouts(
            Timeouts::default()
                .connect(Duration::from_secs(1))
                .response(Duration::from_secs(1))
                .checkout(Duration::from_secs(2)),
        )
        .retry(RetryPolicy::default().max_attempts(3))
        .build()?;
    Ok(Redis::connect(config)?)
}

/// Acknowledged writes (key, value), the longest pause without one, the new master's index.
type Outcome = (Vec<(String, u64)>, Duration, usize);

/// Runs 8 writers while `disrupt` runs; returns every write acknowledged by the master
/// *and* one replica (`SET` then `WAIT 1`), and the longest time without any acknowledged
/// write after the disruption started.
fn under_load(redis: &Redis, disrupt: impl FnOnce() -> TestResult<usize>) -> TestResult<Outcome> {
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let last_ok = Mutex::new(Instant::now());
    let longest_gap = Mutex::new(Duration::ZERO);
    let new_master = std::thread::scope(|s| -> TestResult<usize> {
        for t in 0..8 {
            let (stop, acked, last_ok, longest_gap) = (&stop, &acked, &last_ok, &longest_gap);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("w:{t}:{i}");
                    let r = redis.run(|con| {
                        Ok(redis::pipe()
                            .set(&key, i)
                            .ignore()
                            .cmd("WAIT")
                            .arg(1)
                            .arg(500)
                            .query::<(i64,)>(con)?)
                    });
                    if let Ok((replicas,)) = r {
                        let now = Instant::now();
                        let mut last = last_ok.lock().unwrap();
                        let gap = now - *last;
                        let mut longest = longest_gap.lock().unwrap();
                        *longest = (*longest).max(gap);
                        *last = now;
                        if replicas >= 1 {
                            acked.lock().unwrap().push((key, i));
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        *longest_gap.lock().unwrap() = Duration::ZERO;
        let new_master = disrupt();
        // Keep writing until writes have been acknowledged again for a while.
        let resumed = redkit::testing::wait_until(RESUME_BOUND, "writes to resume", || {
            last_ok.lock().unwrap().elapsed() < Duration::from_millis(50)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        resumed?;
        new_master
    })?;
    let gap = *longest_gap.lock().unwrap();
    Ok((acked.into_inner().unwrap(), gap, new_master))
}

fn check_on(setup: &SentinelSetup, node: usize, acked: &[(String, u64)]) -> TestResult {
    let mut con = setup.node(node).admin()?;
    let mut missing = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut con)?;
        for ((k, v), got) in chunk.iter().zip(values) {
            if got != Some(*v) {
                missing.push(k.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}

fn failover_event(events: &crossbeam_channel::Receiver<Event>) -> Option<(Addr, Addr)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(e) = events.recv_deadline(deadline) {
        if let Event::FailoverDetected { old, new, .. } = e {
            return Some((old, new));
        }
    }
    None
}

#[test]
fn sentinel_failover_under_load_loses_no_acknowledged_write() -> TestResult {
    support::init_logs();
    let mut setup = SentinelSetup::start()?;
    let redis = handle(&setup)?;
    let events = redis.events_with_capacity(1024);
    let first = setup.node(0).port();
    assert_eq!(
        redis.sentinel_master(),
        Some(Addr::Tcp {
            host: "127.0.0.1".into(),
            port: first
        })
    );

    // Planned: SENTINEL FAILOVER.
    let (acked, gap, new) = under_load(&redis, || Ok(setup.failover()?))?;
    eprintln!(
        "SENTINEL FAILOVER: {} acknowledged writes, longest pause {gap:?}",
        acked.len()
    );
    assert!(gap < RESUME_BOUND, "writes paused for {gap:?}");
    assert!(!acked.is_empty());
    let (old, now) = failover_event(&events).ok_or("no FailoverDetected event")?;
    assert_eq!(
        old,
        Addr::Tcp {
            host: "127.0.0.1".into(),
            port: first
        }
    );
    assert_eq!(
        now,
        Addr::Tcp {
            host: "127.0.0.1".into(),
            port: setup.node(new).port()
        }
    );
    check_on(&setup, new, &acked)?;
    setup.wait_ready(Duration::from_secs(20))?;

    // Unplanned: kill the master's process.
    let (acked, gap, new) = under_load(&redis, || {
        let killed = setup.kill_master()?;
        Ok(setup.wait_for_new_master(killed, Duration::from_secs(20))?)
    })?;
    eprintln!(
        "master killed: {} acknowledged writes, longest pause {gap:?}",
        acked.len()
    );
    assert!(gap < RESUME_BOUND, "writes paused for {gap:?}");
    assert!(
        failover_event(&events).is_some(),
        "no FailoverDetected event"
    );
    check_on(&setup, new, &acked)?;
    redis.close()?;
    Ok(())
}

#[test]
fn the_subscriber_follows_the_master_through_a_failover() -> TestResult {
    support::init_logs();
    let setup = SentinelSetup::start()?;
    let redis = handle(&setup)?;
    let subscriber = redis.subscriber()?;
    let sub = subscriber.subscribe(["news"])?;
    let events = redis.events();
    // Published through the handle (on the master), received through the subscriber (also
    // on the master, not on the config's fixed address).
    redis.publish("news", "before")?;
    let m = sub.recv_timeout(Duration::from_secs(5))?;
    assert_eq!(m.payload(), b"before");

    let new = setup.failover()?;
    // After the switch, a message published on the new master must arrive: publish until
    // one does (the subscriber moves within moments of FailoverDetected).
    let deadline = Instant::now() + RESUME_BOUND;
    let mut got = None;
    while Instant::now() < deadline && got.is_none() {
        if redis.sentinel_master().as_ref().map(|a| a.to_string())
            == Some(format!("127.0.0.1:{}", setup.node(new).port()))
        {
            let _ = redis.publish("news", "after");
        }
        if let Ok(m) = sub.recv_timeout(Duration::from_millis(100)) {
            got = Some(m);
        }
    }
    let m = got.ok_or("no message after the failover")?;
    assert_eq!(m.payload(), b"after");
    // A demoted master still receives what is published (replication carries PUBLISH), so
    // check where the subscription lives: on the new master, no longer on the old one.
    let numsub = |node: usize| -> TestResult<i64> {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .query(&mut setup.node(node).admin()?)?;
        Ok(n)
    };
    let old = (0..setup.node_count())
        .find(|&i| i != new)
        .ok_or("old master")?;
    let deadline = Instant::now() + RESUME_BOUND;
    while numsub(new)? != 1 || numsub(old)? != 0 {
        assert!(
            Instant::now() < deadline,
            "the subscription did not move to the new master"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        failover_event(&events).is_some(),
        "no FailoverDetected event"
    );
    assert!(subscriber.is_connected());
    Ok(())
}
