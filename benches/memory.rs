//! Memory: the resident memory of a process holding a 32-connection pool, a subscriber with
//! 1,000 channels and 100 lock guards renewed by the watchdog, read from `/proc/self/status`
//! (`VmRSS` after each step, `VmHWM` for the peak). Linux only; elsewhere it prints nothing.
//!
//! `cargo bench --bench memory`. Results go to stdout and to the `memory` section of
//! `target/redkit-bench.json`.

mod common;

use redkit::pubsub::Subscriber;
use std::time::Duration;

use common::Report;
use redkit::lock::Lock;
use redkit::testing::{wait_until, RedisServer};
use redkit::Redis;

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn main() {
    let Some(start) = status_kib("VmRSS:") else {
        println!("memory: no /proc/self/status on this system; skipped");
        return;
    };
    let mut report = Report::new(
        "memory",
        "resident memory of the process (the redis-server is another process)",
    );
    let server = RedisServer::start().expect("start redis-server");
    let redis = Redis::connect(common::config(&server).pool_max_size(32)).expect("connect");
    // Fill the pool: 32 connections checked out at once, then returned.
    let held: Vec<_> = (0..32).map(|_| redis.conn().expect("checkout")).collect();
    drop(held);
    let pool = status_kib("VmRSS:").unwrap_or(start);

    let subscriber = Subscriber::new(&redis).expect("subscriber");
    let channels: Vec<String> = (0..1000).map(|i| format!("memory.channel.{i}")).collect();
    let subscription = subscriber.subscribe(&channels).expect("subscribe");
    assert_eq!(subscriber.stats().channels, 1000);
    let subscribed = status_kib("VmRSS:").unwrap_or(pool);

    let ttl = Duration::from_millis(600);
    let guards: Vec<_> = (0..100)
        .map(|i| {
            Lock::builder(&redis, &format!("memory-lock-{i}"))
                .ttl(ttl)
                .watchdog(true)
                .build()
                .expect("lock")
                .try_acquire()
                .expect("acquire")
                .expect("free lock")
        })
        .collect();
    // Let the watchdog renew every guard a few times.
    std::thread::sleep(ttl * 2);
    wait_until(Duration::from_secs(5), "every guard still held", || {
        guards.iter().all(|g| g.is_held())
    })
    .expect("the watchdog keeps the guards");
    let locked = status_kib("VmRSS:").unwrap_or(subscribed);
    let peak = status_kib("VmHWM:").unwrap_or(locked);

    report.figure(
        "RSS at start (runtime, before connecting)",
        mib(start),
        "MiB",
    );
    report.figure(
        "+ handle with 32 pooled connections",
        mib(pool - start),
        "MiB",
    );
    report.figure(
        "+ subscriber with 1,000 channels",
        mib(subscribed - pool),
        "MiB",
    );
    report.figure(
        "+ 100 lock guards under the watchdog",
        mib(locked - subscribed),
        "MiB",
    );
    report.figure("peak RSS of the whole process", mib(peak), "MiB");
    report.finish();

    for g in guards {
        g.release().expect("release");
    }
    drop(subscription);
}
