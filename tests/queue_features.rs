//! Stream queue, round 2, against a real server: dead-letter replay and purge, priorities,
//! deduplication, headers, heartbeats, idle consumers removed, a hard shutdown bound.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redkit::queue::{Produced, Settled};
use redkit::testing::wait_until;
use support::*;

#[test]
fn a_replayed_dead_letter_runs_once_with_its_headers() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "replay")
        .max_retries(0)
        .block(Duration::from_millis(20))
        .build()?;
    queue.job("a").header("tenant", "acme").send()?;
    queue.job("b").send()?;
    queue.job("c").send()?;
    // First runs: every job fails once, into the dead letters (no retries).
    let mut c = queue.consumer()?;
    for _ in 0..3 {
        let job = c.recv_timeout(Duration::from_secs(5))?.ok_or("a job")?;
        assert_eq!(c.fail(&job, "boom")?, Settled::DeadLettered);
    }
    let dead = queue.dead_letters_range("-", "+", 10)?;
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[0].payload, b"a");
    assert_eq!(dead[0].error, "boom");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].headers, [("tenant".to_owned(), "acme".to_owned())]);

    // Replayed, it runs once, headers and origin kept; a second replay finds nothing.
    let runs = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let r = runs.clone();
    let workers = queue.workers().threads(2).run(move |job| {
        *r.lock()
            .entry(job.payload_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if job.payload() == b"a" {
            assert_eq!(job.header("tenant"), Some("acme"));
            assert_eq!(job.attempt(), 0);
        }
        Ok::<(), String>(())
    })?;
    assert!(queue.replay_dead(&dead[0].id)?);
    assert!(!queue.replay_dead(&dead[0].id)?, "replayed twice");
    wait_until(Duration::from_secs(10), "the replayed job ran", || {
        runs.lock().get("a") == Some(&1)
    })?;
    // The rest: one purged, one replayed by range (with progress).
    assert!(queue.purge_dead(&dead[1].id)?);
    let mut seen = 0;
    assert_eq!(queue.replay_dead_range("-", "+", |n| seen = n)?, 1);
    assert_eq!(seen, 1);
    wait_until(Duration::from_secs(10), "the range ran", || {
        runs.lock().get("c") == Some(&1)
    })?;
    wait_until(Duration::from_secs(10), "all acknowledged", || {
        queue.stats().is_ok_and(|s| s.pending == 0)
    })?;
    workers.shutdown()?;
    let runs = runs.lock();
    assert_eq!(runs.get("a"), Some(&1));
    assert_eq!(runs.get("b"), None, "purged, never run");
    assert_eq!(queue.stats()?.dead_letters, 0);
    assert_eq!(queue.replay_all_dead(|_| {})?, 0);
    Ok(())
}

#[test]
fn strict_priorities_serve_level_zero_first_under_load() -> TestResult {
    const N: usize = 300;
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "prio")
        .priorities(3)
        .default_priority(2)
        .batch(20)
        .block(Duration::from_millis(20))
        .build()?;
    // A backlog on every level, the low ones first.
    queue.produce_batch((0..N).map(|i| format!("2:{i}")))?;
    for i in 0..N {
        queue.job(format!("1:{i}")).priority(1).send()?;
    }
    for i in 0..N {
        queue.job(format!("0:{i}")).priority(0).send()?;
    }
    assert_eq!(queue.stats()?.lengths, [N as u64; 3]);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let workers = queue.workers().threads(4).prefetch(8).run(move |job| {
        o.lock()
            .push((job.priority(), job.payload_str().unwrap_or("").to_owned()));
        std::thread::sleep(Duration::from_millis(1));
        Ok::<(), String>(())
    })?;
    // More urgent work arriving while level 2 runs goes first too.
    wait_until(Duration::from_secs(30), "level 2 started", || {
        order.lock().iter().any(|(l, _)| *l == 2)
    })?;
    let urgent = redkit::StreamQueue::builder(&redis, "prio")
        .priorities(3)
        .default_priority(0)
        .build()?;
    urgent.produce_batch((0..50).map(|i| format!("0:late{i}")))?;
    wait_until(Duration::from_secs(30), "every job ran", || {
        order.lock().len() == 3 * N + 50
    })?;
    workers.shutdown()?;
    let order = order.lock();
    let levels: Vec<u8> = order
        .iter()
        .filter(|(_, p)| !p.contains("late"))
        .map(|(l, _)| *l)
        .collect();
    let last = |level: u8| levels.iter().rposition(|&l| l == level).unwrap_or(0);
    let first = |level: u8| levels.iter().position(|&l| l == level).unwrap_or(0);
    // Reads are strict; only jobs already read ahead run out of order: up to the prefetch
    // (8, shared by the 2 readers 4 threads get by default), plus the 4 running.
    const AHEAD: usize = 8 + 4;
    assert!(
        last(0) < first(1) + AHEAD,
        "level 0 all before level 1: {levels:?}"
    );
    assert!(
        last(1) < first(2) + AHEAD,
        "level 1 all before level 2: {levels:?}"
    );
    let late_first = order
        .iter()
        .position(|(_, p)| p.contains("late"))
        .unwrap_or(0);
    let late_last = order
        .iter()
        .rposition(|(_, p)| p.contains("late"))
        .unwrap_or(0);
    let level2_between = order[late_first..=late_last]
        .iter()
        .filter(|(l, _)| *l == 2)
        .count();
    assert!(
        level2_between <= AHEAD,
        "the late urgent jobs went first: {order:?}"
    );
    Ok(())
}

#[test]
fn weighted_priorities_share_reads_by_weight() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "weighted")
        .weighted(&[3, 1])
        .batch(40)
        .build()?;
    assert_eq!(queue.priorities(), 2);
    for i in 0..200 {
        queue.job(format!("{i}")).priority(0).send()?;
        queue.job(format!("{i}")).priority(1).send()?;
    }
    let mut c = queue.consumer()?;
    let mut per_level = [0u32; 2];
    for _ in 0..80 {
        let job = c.try_recv()?.ok_or("a job")?;
        per_level[usize::from(job.priority())] += 1;
        c.ack(&job)?;
    }
    // 3:1 over the first 80: 60 and 20.
    assert_eq!(per_level, [60, 20]);
    assert!(queue.job("x").priority(2).send().is_err(), "no such level");
    assert!(redkit::StreamQueue::builder(&redis, "w")
        .weighted(&[1, 0])
        .build()
        .is_err());
    assert!(redkit::StreamQueue::builder(&redis, "w")
        .priorities(0)
        .build()
        .is_err());
    Ok(())
}

#[test]
fn a_duplicate_unique_id_within_the_window_is_dropped() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "dedup")
        .dedup_window(Duration::from_millis(400))
        .build()?;
    let first = queue.job("charge 42").unique_id("charge-42").send()?;
    assert!(matches!(first, Produced::Added(_)));
    assert_eq!(
        queue.job("charge 42 again").unique_id("charge-42").send()?,
        Produced::Duplicate
    );
    assert!(queue
        .job("other")
        .unique_id("charge-43")
        .send()?
        .id()
        .is_some());
    // Scheduled with a delay counts too.
    assert_eq!(
        queue
            .job("later")
            .unique_id("charge-43")
            .delay(Duration::from_millis(10))
            .send()?,
        Produced::Duplicate
    );
    let stats = queue.stats()?;
    assert_eq!((stats.length, stats.duplicates), (2, 2));
    let mut c = queue.consumer()?;
    let job = c.try_recv()?.ok_or("a job")?;
    assert_eq!(job.unique_id(), Some("charge-42"));
    assert_eq!(job.payload(), b"charge 42");
    // After the window the id is accepted again.
    wait_until(Duration::from_secs(5), "the window to pass", || {
        queue
            .job("charge 42, next day")
            .unique_id("charge-42")
            .send()
            .is_ok_and(|p| p != Produced::Duplicate)
    })?;
    assert!(queue.job("x").unique_id("").send().is_err());
    assert!(queue.job("x").header("", "v").send().is_err());
    Ok(())
}

#[test]
fn a_job_with_a_heartbeat_is_not_claimed_and_a_dead_one_is() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "beat")
        .claim_idle(Duration::from_millis(400))
        .claim_interval(Duration::from_millis(50))
        .block(Duration::from_millis(20))
        .build()?;
    queue.produce("long")?;
    let mut alive = queue.consumer_named("alive")?;
    let job = alive
        .recv_timeout(Duration::from_secs(5))?
        .ok_or("the job")?;
    let mut other = queue.consumer_named("other")?;
    // For three visibility timeouts the handler beats; the other consumer never gets it.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(job.heartbeat()?, "still ours");
        assert!(
            other.recv_timeout(Duration::from_millis(100))?.is_none(),
            "claimed while its handler was alive"
        );
    }
    // The handler dies (no more beats): the other consumer claims it.
    let mut claimed = None;
    wait_until(Duration::from_secs(10), "the job claimed", || {
        claimed = other
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .flatten();
        claimed.is_some()
    })?;
    let claimed = claimed.ok_or("claimed")?;
    assert_eq!(claimed.origin(), job.origin());
    // The old holder's heartbeat now says it lost the job, and changes nothing.
    assert!(!job.heartbeat()?);
    assert!(claimed.heartbeat()?);
    assert!(other.ack(&claimed)?);
    assert!(!alive.ack(&job)?);
    Ok(())
}

#[test]
fn idle_consumers_with_nothing_pending_are_removed() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "idle")
        .idle_consumers(Some(Duration::from_millis(300)))
        .block(Duration::from_millis(20))
        .build()?;
    // A consumer that did a job and went away, and one that holds a job.
    queue.produce("done")?;
    let mut ghost = queue.consumer_named("ghost")?;
    let done = ghost.try_recv()?.ok_or("a job")?;
    ghost.ack(&done)?;
    drop(ghost);
    queue.produce("held")?;
    let mut holder = queue.consumer_named("holder")?;
    let _held = holder.try_recv()?.ok_or("a job")?;
    let names = |q: &redkit::StreamQueue| -> Vec<String> {
        q.consumers()
            .map(|c| c.into_iter().map(|c| c.name).collect())
            .unwrap_or_default()
    };
    assert_eq!(names(&queue), ["ghost", "holder"]);
    // A live consumer reading (it joins the group with its first job, on Redis 7) removes
    // the ghost, never the holder (it has a pending job).
    let mut live = queue.consumer_named("live")?;
    wait_until(Duration::from_secs(10), "the ghost removed", || {
        let _ = live.recv_timeout(Duration::from_millis(50));
        !names(&queue).contains(&"ghost".to_owned())
    })?;
    let now = names(&queue);
    assert!(now.contains(&"holder".to_owned()), "{now:?}");
    assert!(queue.stats()?.consumers_removed >= 1);
    assert_eq!(queue.pending(10)?.len(), 1);
    // By hand, too: nobody else is idle and empty-handed for an hour.
    assert!(queue
        .remove_idle_consumers(Duration::from_secs(3600))?
        .is_empty());
    Ok(())
}

#[test]
fn shutdown_returns_by_its_bound_with_a_handler_that_never_ends() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "stuck")
        .block(Duration::from_millis(20))
        .build()?;
    queue.job("forever").header("k", "v").send()?;
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let (rel, st) = (release.clone(), started.clone());
    let workers = queue
        .workers()
        .threads(2)
        .shutdown_timeout(Duration::from_millis(500))
        .consumer_name("stuck-pool")
        .run(move |_job| {
            st.fetch_add(1, Relaxed);
            // Never ends while the test runs (released at the end, so the thread goes).
            while !rel.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<(), String>(())
        })?;
    wait_until(Duration::from_secs(10), "the handler to start", || {
        started.load(Relaxed) == 1
    })?;
    let slack = Duration::from_millis(700) + scheduling_delay();
    let report = workers.shutdown()?;
    assert!(
        report.took <= Duration::from_millis(500) + slack,
        "took {:?}",
        report.took
    );
    assert_eq!(report.interrupted, 1);
    // The job is back in the stream for another consumer, headers and all.
    let mut c = queue.consumer()?;
    let job = c
        .recv_timeout(Duration::from_secs(5))?
        .ok_or("the job back")?;
    assert_eq!(job.payload(), b"forever");
    assert_eq!(job.header("k"), Some("v"));
    release.store(true, Relaxed);
    assert!(c.ack(&job)?);
    // The old handler returned Ok after the hand-back: nothing of it is left pending, and
    // it was counted out of the jobs in flight once.
    wait_until(
        Duration::from_secs(5),
        "nothing pending or in flight",
        || {
            queue
                .stats()
                .is_ok_and(|s| s.pending == 0 && s.in_flight == 0)
        },
    )?;
    Ok(())
}

/// Jobs read ahead of a slow worker wait past `claim_idle`: another consumer may claim them,
/// and then the first one must not run them too; the ones it reaches first are extended
/// before they run, so another consumer does not take them while they run. Every job runs
/// exactly once.
#[test]
fn jobs_waiting_read_ahead_past_the_claim_idle_time_run_once() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "ahead")
        .claim_idle(Duration::from_millis(400))
        .claim_interval(Duration::from_millis(50))
        .build()?;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let count = |runs: &Arc<Mutex<HashMap<String, u32>>>| {
        let runs = runs.clone();
        move |job: &redkit::Job| {
            *runs
                .lock()
                .entry(job.payload_str().unwrap_or("?").to_owned())
                .or_default() += 1;
            std::thread::sleep(Duration::from_millis(150));
            Ok::<(), String>(())
        }
    };
    // One slow worker reads all ten at once: the last waits about 1.4 s, past claim_idle.
    let slow = queue
        .workers()
        .threads(1)
        .prefetch(10)
        .consumer_name("slow")
        .run(count(&runs))?;
    queue.produce_batch((0..10).map(|i| format!("job-{i}")))?;
    wait_until(
        Duration::from_secs(10),
        "the slow worker read every job",
        || queue.stats().is_ok_and(|s| s.pending == 10),
    )?;
    // Another consumer claims what waits idle there.
    let other = queue
        .workers()
        .threads(1)
        .consumer_name("other")
        .run(count(&runs))?;
    wait_until(Duration::from_secs(20), "every job ran", || {
        runs.lock().len() == 10 && queue.stats().is_ok_and(|s| s.pending == 0)
    })?;
    slow.shutdown()?;
    other.shutdown()?;
    let runs = runs.lock();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs run more than once: {twice:?}");
    assert!(
        queue.stats()?.claimed > 0,
        "the other consumer claimed some"
    );
    Ok(())
}
