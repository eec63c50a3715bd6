//! A Sentinel topology under load: failovers while 8 threads write.

mod support;

use redkit::pubsub::Subscriber;
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
    let subscriber = Subscriber::new(&redis)?;
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

/// What 8 writers saw around one failover, without `WAIT`.
struct Unwaited {
    /// Acknowledged `SET`s: (key, value).
    acked: Vec<(String, u64)>,
    /// Failed calls: when, and the error.
    errors: Vec<(Instant, redkit::Error)>,
    /// Every event, with when it came.
    events: Vec<(Instant, Event)>,
    /// The longest time without an acknowledged write after the failover was asked for.
    pause: Duration,
    /// The new master's index.
    new_master: usize,
}

/// 8 threads `SET` keys of their own (no `WAIT`) while `disrupt` runs, until writes have
/// been acknowledged again for a while after the `FailoverDetected` event.
fn writes_without_wait(
    redis: &Redis,
    disrupt: impl FnOnce() -> TestResult<usize>,
) -> TestResult<Unwaited> {
    let events_rx = redis.events_with_capacity(4096);
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let events = Mutex::new(Vec::new());
    let last_ok = Mutex::new(Instant::now());
    let pause = Mutex::new(Duration::ZERO);
    let total = std::sync::atomic::AtomicU64::new(0);
    let new_master = std::thread::scope(|s| -> TestResult<usize> {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(e) = events_rx.recv_timeout(Duration::from_millis(20)) {
                    events.lock().unwrap().push((Instant::now(), e));
                }
            }
        });
        for t in 0..8 {
            let (stop, acked, errors, last_ok, pause, total) =
                (&stop, &acked, &errors, &last_ok, &pause, &total);
            s.spawn(move || {
                let mut mine = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("nw:{t}:{i}");
                    match redis.query::<()>(redis::cmd("SET").arg(&key).arg(i)) {
                        Ok(()) => {
                            let now = Instant::now();
                            {
                                let mut last = last_ok.lock().unwrap();
                                let mut p = pause.lock().unwrap();
                                *p = (*p).max(now - *last);
                                *last = now;
                            }
                            mine.push((key, i));
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push((Instant::now(), e)),
                    }
                }
                acked.lock().unwrap().extend(mine);
            });
        }
        redkit::testing::wait_until(RESUME_BOUND, "writes to start", || {
            total.load(Ordering::Relaxed) >= 2000
        })?;
        *pause.lock().unwrap() = Duration::ZERO;
        let new_master = disrupt();
        // Writes go on until the handle reported the move and 2000 more were acknowledged.
        let detected = redkit::testing::wait_until(RESUME_BOUND, "FailoverDetected", || {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|(_, e)| matches!(e, Event::FailoverDetected { .. }))
        });
        let after = total.load(Ordering::Relaxed) + 2000;
        let resumed = detected.and_then(|()| {
            redkit::testing::wait_until(RESUME_BOUND, "writes to resume", || {
                total.load(Ordering::Relaxed) >= after
            })
        });
        stop.store(true, Ordering::Relaxed);
        resumed?;
        new_master
    })?;
    Ok(Unwaited {
        acked: acked.into_inner().unwrap(),
        errors: errors.into_inner().unwrap(),
        events: events.into_inner().unwrap(),
        pause: pause.into_inner().unwrap(),
        new_master,
    })
}

/// Waits until the master streams writes to its replicas: a key set on the master shows on
/// every replica. A replica that just finished its initial sync says its link is up (and the
/// master lists it `online`), but after a diskless sync the master starts sending it writes
/// only at its next `REPLCONF ACK`, up to a second later: a failover before that promotes a
/// replica with none of the writes made meanwhile.
fn replicas_streaming(setup: &SentinelSetup) -> TestResult {
    let master = setup.master_index()?;
    redis::cmd("SET")
        .arg("probe:streaming")
        .arg(1)
        .exec(&mut setup.node(master).admin()?)?;
    for n in (0..setup.node_count()).filter(|&n| n != master) {
        redkit::testing::wait_until(Duration::from_secs(10), "replication to stream", || {
            setup.node(n).admin().ok().is_some_and(|mut con| {
                redis::cmd("EXISTS")
                    .arg("probe:streaming")
                    .query::<i64>(&mut con)
                    .is_ok_and(|n| n == 1)
            })
        })?;
    }
    Ok(())
}

/// The acknowledged writes that `node` does not have.
fn lost_on(setup: &SentinelSetup, node: usize, acked: &[(String, u64)]) -> TestResult<Vec<String>> {
    let mut con = setup.node(node).admin()?;
    let mut lost = Vec::new();
    for chunk in acked.chunks(1000) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut con)?;
        lost.extend(
            chunk
                .iter()
                .zip(values)
                .filter(|((_, v), got)| *got != Some(*v))
                .map(|((k, _), _)| k.clone()),
        );
    }
    Ok(lost)
}

/// When the handle reported the move, how many calls failed with `CircuitOpen` after it,
/// and the failed calls per class.
type Summary = (Instant, usize, Vec<(String, usize)>);

fn summarize(run: &Unwaited) -> TestResult<Summary> {
    let detected = run
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::FailoverDetected { .. }))
        .map(|(t, _)| *t)
        .ok_or("no FailoverDetected")?;
    let circuit_open_after = run
        .errors
        .iter()
        .filter(|(t, e)| *t > detected && e.class() == redkit::ErrorClass::CircuitOpen)
        .count();
    let mut classes: Vec<(String, usize)> = Vec::new();
    for (_, e) in &run.errors {
        let class = e.class().to_string();
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => classes.push((class, 1)),
        }
    }
    Ok((detected, circuit_open_after, classes))
}

#[test]
fn failovers_without_wait_lose_almost_nothing_and_never_leave_the_breaker_open() -> TestResult {
    support::init_logs();
    let mut setup = SentinelSetup::start()?;
    replicas_streaming(&setup)?;
    let redis = handle(&setup)?;

    // Planned: SENTINEL FAILOVER.
    let run = writes_without_wait(&redis, || Ok(setup.failover()?))?;
    let lost_keys = lost_on(&setup, run.new_master, &run.acked)?;
    let lost = lost_keys.len();
    let started = run
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::FailoverStarted { .. }))
        .map(|(t, _)| *t);
    let (detected, circuit_open_after, classes) = summarize(&run)?;
    eprintln!(
        "SENTINEL FAILOVER, 8 writers, no WAIT: {} acknowledged writes, {lost} lost, longest pause \
         {:?}, calls held {:?} (FailoverStarted to FailoverDetected), {} failed calls {classes:?}",
        run.acked.len(),
        run.pause,
        started.map(|s| detected.saturating_duration_since(s)),
        run.errors.len(),
    );
    assert!(
        started.is_some_and(|s| s <= detected),
        "no FailoverStarted before FailoverDetected"
    );
    if lost >= 100 {
        for n in 0..setup.node_count() {
            eprintln!("node {n}:\n{}", setup.node(n).log_tail(12));
        }
        for n in 0..setup.sentinel_count() {
            eprintln!("sentinel {n}:\n{}", setup.sentinel(n).log_tail(30));
        }
    }
    assert!(
        lost < 100,
        "{lost} acknowledged writes lost: {:?} ... {:?}",
        &lost_keys[..lost.min(5)],
        &lost_keys[lost.saturating_sub(5)..]
    );
    assert_eq!(circuit_open_after, 0, "CircuitOpen after FailoverDetected");
    assert!(
        run.pause < RESUME_BOUND,
        "writes paused for {:?}",
        run.pause
    );

    // Unplanned: the master's process killed. Calls fail until the sentinels agree it is
    // down and promote; whatever the replica had not received when it died is lost (the
    // figure is printed, not bounded: asynchronous replication).
    setup.wait_ready(Duration::from_secs(20))?;
    replicas_streaming(&setup)?;
    let run = writes_without_wait(&redis, || {
        let killed = setup.kill_master()?;
        Ok(setup.wait_for_new_master(killed, Duration::from_secs(20))?)
    })?;
    let lost = lost_on(&setup, run.new_master, &run.acked)?.len();
    let (detected, circuit_open_after, classes) = summarize(&run)?;
    let first_error = run.errors.iter().map(|(t, _)| *t).min();
    eprintln!(
        "master killed, 8 writers, no WAIT: {} acknowledged writes, {lost} lost, longest pause \
         {:?}, failing from the first error to FailoverDetected {:?}, {} failed calls {classes:?}",
        run.acked.len(),
        run.pause,
        first_error.map(|f| detected.saturating_duration_since(f)),
        run.errors.len(),
    );
    assert_eq!(circuit_open_after, 0, "CircuitOpen after FailoverDetected");
    for (_, e) in &run.errors {
        assert!(e.is_retryable(), "{e}");
    }
    redis.close()?;
    Ok(())
}
