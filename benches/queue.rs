//! Work queue: jobs per second end to end (produce -> handler -> XACK) through a redkit
//! `StreamQueue` with 8 worker threads, against a raw `XREADGROUP` / `XACK` loop on 8
//! dedicated `redis` crate connections, measured in the same run and reported as a ratio.
//!
//! Both sides get the same producer: one thread sending pipelines of 100 `XADD` on a raw
//! connection, onto a fresh stream per block. Two scenarios: jobs produced while they are
//! consumed (the clock runs from the first `XADD` to the last acknowledged job: both sides
//! can be held to the producer's pace), and a backlog produced first and then drained (the
//! clock runs from the consumers' start to the last acknowledgement: consumption alone). Sides alternate in blocks; each ratio is the median of per-block
//! ratios. Two baselines: raw loops sending one `XACK` per read batch of up to 100 (the
//! cheapest a hand-written loop can be: the target row, issue 24: at least 0.9), and raw
//! loops sending one `XACK` per job (for reference). redkit's workers hand finished jobs to
//! one acknowledging thread, which sends what gathered during its previous `XACK` in one.
//! `REDKIT_BENCH_READERS` sets redkit's reader threads (default: the library's default).
//!
//! `cargo bench --bench queue`. `REDKIT_BENCH_JOBS` sets jobs per block (default 20000).
//! Results go to stdout and to the `queue` section of `target/redkit-bench.json`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_usize, median, Report, Target};
use redkit::testing::RedisServer;
use redkit::Redis;

const BLOCKS: usize = 5;
const WORKERS: usize = 8;
const TARGET: f64 = 0.9;

/// Sends `n` jobs in pipelines of 100 `XADD` on `con`.
fn produce(con: &mut redis::Connection, stream: &str, n: usize) {
    let payload = vec![b'x'; 64];
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(100);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("p")
                .arg(&payload)
                .ignore();
        }
        pipe.query::<()>(con).expect("XADD");
        sent += batch;
    }
}

fn wait_for(done: &AtomicU64, n: usize) -> Instant {
    while done.load(Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}

/// Waits until no job of `queue` is pending any more (every job read was acknowledged).
fn wait_acked(queue: &redkit::StreamQueue) -> Instant {
    loop {
        if queue.stats().is_ok_and(|s| s.pending == 0) {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// One block through redkit: jobs per second. With `backlog`, the jobs are produced first
/// and the clock runs from the workers' start (consumption alone).
fn redkit_block(
    redis: &Redis,
    producer: &mut redis::Connection,
    block: usize,
    n: usize,
    backlog: bool,
) -> f64 {
    let queue = redkit::StreamQueue::builder(redis, &format!("bench-redkit-{block}-{backlog}"))
        .build()
        .expect("queue");
    if backlog {
        produce(producer, queue.stream_key(), n);
    }
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    let mut builder = queue.workers().threads(WORKERS);
    if let Some(r) = std::env::var("REDKIT_BENCH_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.readers(r);
    }
    if let Some(p) = std::env::var("REDKIT_BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.prefetch(p);
    }
    let start = Instant::now();
    let workers = builder
        .run(move |job| {
            std::hint::black_box(job.payload());
            d.fetch_add(1, Relaxed);
            Ok::<(), String>(())
        })
        .expect("workers");
    if !backlog {
        produce(producer, queue.stream_key(), n);
    }
    wait_for(&done, n);
    let end = wait_acked(&queue);
    workers.shutdown().expect("shutdown");
    n as f64 / end.duration_since(start).as_secs_f64()
}

/// One block through 8 raw XREADGROUP / XACK loops: jobs per second.
fn raw_block(
    server: &RedisServer,
    producer: &mut redis::Connection,
    block: usize,
    n: usize,
    batched: bool,
    backlog: bool,
) -> f64 {
    let stream = format!("bench-raw-{block}-{batched}-{backlog}");
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(producer)
        .expect("XGROUP CREATE");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = redis::Client::open(server.url()).expect("client");
    if backlog {
        produce(producer, &stream, n);
    }
    let start = Instant::now();
    let threads: Vec<_> = (0..WORKERS)
        .map(|i| {
            let mut con = client.get_connection().expect("raw connection");
            let (done, stop, stream) = (done.clone(), stop.clone(), stream.clone());
            std::thread::spawn(move || {
                let consumer = format!("c{i}");
                while !stop.load(Relaxed) {
                    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("g")
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(100)
                        .arg("BLOCK")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(&stream)
                        .arg(">")
                        .query(&mut con)
                        .expect("XREADGROUP");
                    for key in reply.keys {
                        if batched {
                            let mut ack = redis::cmd("XACK");
                            ack.arg(&stream).arg("g");
                            for entry in &key.ids {
                                std::hint::black_box(entry.map.get("p"));
                                ack.arg(&entry.id);
                            }
                            ack.query::<u64>(&mut con).expect("XACK");
                            done.fetch_add(key.ids.len() as u64, Relaxed);
                            continue;
                        }
                        for entry in key.ids {
                            std::hint::black_box(entry.map.get("p"));
                            redis::cmd("XACK")
                                .arg(&stream)
                                .arg("g")
                                .arg(&entry.id)
                                .query::<u64>(&mut con)
                                .expect("XACK");
                            done.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    if !backlog {
        produce(producer, &stream, n);
    }
    let end = wait_for(&done, n);
    stop.store(true, Relaxed);
    for t in threads {
        t.join().expect("raw worker");
    }
    n as f64 / end.duration_since(start).as_secs_f64()
}

fn main() {
    let n = env_usize("REDKIT_BENCH_JOBS", 20_000);
    let mut report = Report::new(
        "queue",
        "jobs/s produce -> 8 workers -> XACK through StreamQueue vs raw XREADGROUP/XACK loops",
    );
    report.param("jobs_per_block", n);
    report.param("blocks", BLOCKS);
    report.param("workers", WORKERS);
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);
    let client = redis::Client::open(server.url()).expect("client");
    let mut producer = client.get_connection().expect("producer connection");

    // Warm-up.
    raw_block(&server, &mut producer, 100, n / 4, true, false);
    redkit_block(&redis, &mut producer, 100, n / 4, false);

    for backlog in [false, true] {
        let mut ours = Vec::new();
        let (mut raws, mut ratios) = (Vec::new(), Vec::new());
        let (mut batched, mut batched_ratios) = (Vec::new(), Vec::new());
        for block in 0..BLOCKS {
            let b = raw_block(&server, &mut producer, block, n, true, backlog);
            let o = redkit_block(&redis, &mut producer, block, n, backlog);
            let r = raw_block(&server, &mut producer, block, n, false, backlog);
            ratios.push(o / r);
            batched_ratios.push(o / b);
            raws.push(r);
            batched.push(b);
            ours.push(o);
        }
        let ours = median(ours);
        let how = if backlog {
            "draining a backlog"
        } else {
            "produced while consumed"
        };
        report.throughput(
            &format!("stream queue vs raw, one XACK per read batch, {how}"),
            " jobs/s",
            ours,
            median(batched),
            median(batched_ratios),
            Target::RatioAtLeast(TARGET),
        );
        report.throughput(
            &format!("stream queue vs raw, one XACK per job, {how}"),
            " jobs/s",
            ours,
            median(raws),
            median(ratios),
            Target::None,
        );
    }
    report.finish();
}
