//! After the queue's threads and consumers are dropped, no thread of ours is left and the
//! server sees no connection of ours; closing the handle stops a worker pool by itself. In
//! its own binary, so that no other test's threads blur the count.

mod support;

use std::time::Duration;

use redkit::testing::wait_until;
use support::*;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of this process whose name starts with `prefix` (names are cut at 15 bytes).
fn named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

fn ours(admin: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains("name=queue-life "))
        .count()
}

#[test]
fn queue_threads_and_connections_go_away() -> TestResult {
    let server = server();
    let mut admin = admin(&server);
    let baseline = threads();
    {
        let redis = redkit::Redis::connect(builder(&server).client_name("queue-life"))?;
        let queue = redkit::StreamQueue::builder(&redis, "life")
            .block(Duration::from_millis(20))
            .build()?;
        queue.produce_batch(["1", "2", "3"])?;
        let workers = queue.workers().threads(3).run(|_| Ok::<(), String>(()))?;
        let scheduler = queue.delayed().scheduler()?;
        let list = redkit::ListQueue::builder(&redis, "life-list").build()?;
        let reaper = list.reaper(Duration::from_millis(20))?;
        let mut consumer = list.consumer()?;
        list.push("x")?;
        consumer.recv_timeout(Duration::from_secs(1))?.expect("x");
        wait_until(Duration::from_secs(10), "jobs done", || {
            queue.stats().is_ok_and(|s| s.processed == 3)
        })?;
        assert!(threads() > baseline);
        if baseline > 0 {
            // 3 workers: 2 readers (half the workers, rounded up) and one acknowledger.
            assert_eq!(named("redkit-q-reader"), 2, "the readers");
            assert_eq!(named("redkit-q-acker"), 1, "the acknowledging thread");
            assert_eq!(named("redkit-q-reaper"), 1, "the reaper");
        }
        drop((workers, scheduler, reaper, consumer));
        // A pool stops by itself when its handle is closed.
        let workers = queue.workers().threads(2).run(|_| Ok::<(), String>(()))?;
        redis.close()?;
        if baseline > 0 {
            wait_until(Duration::from_secs(5), "the reader to stop", || {
                named("redkit-q-reader") == 0
            })?;
        }
        workers.shutdown()?;
    }
    if baseline > 0 {
        wait_until(
            Duration::from_secs(5),
            "thread count back to baseline",
            || threads() == baseline,
        )?;
    }
    wait_until(Duration::from_secs(5), "no connection of ours", || {
        ours(&mut admin) == 0
    })?;
    Ok(())
}
