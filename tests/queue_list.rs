//! List queue against a real server: BLMOVE into processing lists, ack, reaper, close.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redkit::testing::wait_until;
use support::*;

#[test]
fn items_are_taken_in_order_and_acknowledged() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "mail").build()?;
    queue.push("a")?;
    queue.push_batch(["b", "c"])?;
    let mut consumer = queue.consumer()?;
    let mut got = Vec::new();
    while let Some(job) = consumer.try_recv()? {
        got.push(job);
    }
    let texts: Vec<_> = got.iter().map(|j| j.payload_str().unwrap_or("")).collect();
    assert_eq!(texts, ["a", "b", "c"]);
    assert_eq!(consumer.in_flight()?, 3);
    for job in &got {
        assert!(consumer.ack(job)?);
    }
    assert!(!consumer.ack(&got[0])?);
    assert_eq!(consumer.in_flight()?, 0);
    assert!(consumer.recv_timeout(Duration::from_millis(50))?.is_none());
    assert!(redkit::ListQueue::builder(&redis, "").build().is_err());
    assert!(queue.consumer_named("").is_err());
    Ok(())
}

#[test]
fn the_reaper_returns_the_items_of_a_dead_consumer() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "reaped")
        .alive_ttl(Duration::from_millis(300))
        .build()?;
    queue.push_batch(["x", "y", "z"])?;
    let mut doomed = queue.consumer_named("doomed")?;
    doomed.try_recv()?.expect("x");
    doomed.try_recv()?.expect("y");
    // Dies without acknowledging (dropping does not give anything back).
    drop(doomed);
    assert_eq!(queue.reap()?, 0, "still counts as alive");
    let mut returned = 0;
    wait_until(Duration::from_secs(5), "the dead consumer reaped", || {
        returned += queue.reap().unwrap_or(0);
        returned == 2
    })?;
    let mut other = queue.consumer()?;
    let mut got = HashSet::new();
    while let Some(job) = other.try_recv()? {
        other.ack(&job)?;
        got.insert(job.into_payload());
    }
    assert_eq!(got.len(), 3);
    assert_eq!(queue.reap()?, 0);
    Ok(())
}

#[test]
fn a_reaper_thread_gives_back_items_by_itself() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "reaper")
        .alive_ttl(Duration::from_millis(200))
        .build()?;
    let reaper = queue.reaper(Duration::from_millis(50))?;
    queue.push("lost")?;
    let mut doomed = queue.consumer()?;
    doomed.try_recv()?.expect("lost");
    drop(doomed);
    wait_until(Duration::from_secs(5), "the item back", || {
        queue.len().is_ok_and(|n| n == 1)
    })?;
    assert_eq!(reaper.reaped(), 1);
    reaper.stop()?;
    assert!(queue.reaper(Duration::ZERO).is_err());
    Ok(())
}

#[test]
fn close_gives_back_unacknowledged_items() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "closing").build()?;
    queue.push_batch(["1", "2"])?;
    let mut c = queue.consumer()?;
    let one = c.try_recv()?.expect("one");
    c.try_recv()?.expect("two");
    c.ack(&one)?;
    assert_eq!(c.close()?, 1);
    assert_eq!(queue.len()?, 1);
    Ok(())
}

#[test]
fn four_consumers_take_every_item_exactly_once() -> TestResult {
    const N: usize = 2000;
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "shared")
        .wait(Duration::from_millis(200))
        .build()?;
    queue.push_batch((0..N).map(|i| i.to_string()))?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let queue = queue.clone();
            let seen = seen.clone();
            s.spawn(move || {
                let mut c = queue.consumer().expect("consumer");
                while let Some(job) = c.recv().expect("recv") {
                    c.ack(&job).expect("ack");
                    seen.lock().push(job.into_payload());
                }
            });
        }
    });
    let seen = seen.lock();
    assert_eq!(seen.len(), N);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), N);
    Ok(())
}

#[test]
fn failed_items_are_retried_with_backoff_then_dead_lettered_and_replayed() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "flaky")
        .max_retries(2)
        .retry_backoff(redkit::Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .build()?;
    let scheduler = queue.delayed().scheduler()?;
    queue.push("always fails")?;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let workers = queue.workers().threads(2).run(move |job| {
        a.lock().push(job.attempt());
        if job.payload() == b"always fails" && a.lock().len() <= 3 {
            return Err(format!("attempt {} failed", job.attempt()));
        }
        Ok(())
    })?;
    wait_until(Duration::from_secs(10), "dead-lettered", || {
        queue.dead_letter_count().is_ok_and(|n| n == 1)
    })?;
    assert_eq!(*attempts.lock(), [0, 1, 2]);
    let dead = queue.dead_letters(10)?;
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].error, "attempt 2 failed");
    assert_eq!(dead[0].payload_str(), Ok("always fails"));
    // Replayed: it runs once more, from attempt 0, and succeeds.
    assert!(queue.replay_dead(&dead[0])?);
    assert!(!queue.replay_dead(&dead[0])?, "replayed twice");
    wait_until(Duration::from_secs(10), "the replay ran", || {
        attempts.lock().len() == 4
    })?;
    assert_eq!(attempts.lock()[3], 0);
    let report = workers.shutdown()?;
    assert_eq!(report.interrupted, 0);
    scheduler.stop()?;
    assert_eq!(queue.dead_letter_count()?, 0);
    assert_eq!(queue.len()?, 0);
    Ok(())
}

#[test]
fn the_list_worker_pool_runs_every_item_once_and_shuts_down_by_its_bound() -> TestResult {
    const N: usize = 500;
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "pool").build()?;
    queue.push_batch((0..N).map(|i| i.to_string()))?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let workers = queue.workers().threads(4).run(move |job| {
        s.lock().push(job.payload().to_vec());
        Ok::<(), String>(())
    })?;
    wait_until(Duration::from_secs(20), "every item", || {
        seen.lock().len() == N
    })?;
    workers.shutdown()?;
    assert_eq!(seen.lock().iter().collect::<HashSet<_>>().len(), N);

    // A handler that never ends: the shutdown returns by its bound, the item goes back.
    queue.push("forever")?;
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rel, st) = (release.clone(), started.clone());
    let workers = queue
        .workers()
        .threads(2)
        .shutdown_timeout(Duration::from_millis(500))
        .run(move |_job| {
            st.store(true, std::sync::atomic::Ordering::Relaxed);
            while !rel.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<(), String>(())
        })?;
    wait_until(Duration::from_secs(10), "the handler started", || {
        started.load(std::sync::atomic::Ordering::Relaxed)
    })?;
    let report = workers.shutdown()?;
    let slack = Duration::from_millis(700) + scheduling_delay();
    assert!(
        report.took <= Duration::from_millis(500) + slack,
        "{report:?}"
    );
    assert_eq!(report.interrupted, 1);
    assert_eq!(queue.len()?, 1, "the item is back");
    release.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut c = queue.consumer()?;
    let job = c.try_recv()?.ok_or("the item")?;
    assert_eq!(job.payload(), b"forever");
    assert!(c.ack(&job)?);
    Ok(())
}
