//! GET and SET at 1, 8, 32 and 64 threads through the multiplexed connection, against the
//! redkit pooled handle (default pool of 16, and a pool as large as the thread count), a raw
//! `redis` connection per thread, and the `redis` crate's async `MultiplexedConnection`
//! shared by as many tokio tasks (2 worker threads), all in the same run on the same server.
//!
//! `cargo bench --bench multiplexed`. Every side runs in turn in blocks (the order rotates
//! from block to block), all of a side's threads (or tasks) at once; each ratio is the median
//! of the per-block ratios against the block run next to it. `REDKIT_BENCH_OPS` sets the
//! operations per thread and side at 1 thread (default 20000; fewer per thread with more
//! threads). Also a latency row: p50/p99 at 8 threads, multiplexed vs pool. Results go to
//! stdout and to the `multiplexed` section of `target/redkit-bench.json`.

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{env_usize, median, percentile, Report, Target};
use redis::Commands;
use redkit::testing::RedisServer;
use redkit::Redis;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Set,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Set => "SET",
        }
    }

    fn cmd(self, key: &str, i: usize) -> redis::Cmd {
        match self {
            Op::Get => redis::cmd("GET").arg(key).clone(),
            Op::Set => redis::cmd("SET").arg(key).arg(i).clone(),
        }
    }

    fn run(self, con: &mut dyn redis::ConnectionLike, key: &str, i: usize) {
        match self {
            Op::Get => {
                let v: Option<Vec<u8>> = self.cmd(key, i).query(con).expect("GET");
                assert!(v.is_some());
            }
            Op::Set => self.cmd(key, i).query::<()>(con).expect("SET"),
        }
    }
}

type Side = Box<dyn redis::ConnectionLike + Send>;
type MakeSide = Arc<dyn Fn() -> Side + Send + Sync>;

/// The sides, in report order.
const SIDES: [&str; 6] = [
    "multiplexed (1 connection)",
    "multiplexed (2 connections)",
    "redkit pool (default, 16)",
    "redkit pool (= threads)",
    "raw connection per thread",
    "redis async MultiplexedConnection",
];
const ASYNC: usize = 5;

struct Bench {
    threads: usize,
    sync_sides: Vec<MakeSide>,
    runtime: tokio::runtime::Runtime,
    async_con: redis::aio::MultiplexedConnection,
}

impl Bench {
    /// Every side in turn, `blocks` times, `block_ops` operations per thread or task;
    /// returns each side's block times (seconds).
    fn run(&self, op: Op, blocks: usize, block_ops: usize) -> Vec<Vec<f64>> {
        let n = SIDES.len();
        let threads = self.threads;
        let barrier = Arc::new(Barrier::new(threads + 1));
        let order = move |b: usize, k: usize| (b + k) % n;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sides = self.sync_sides.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let mut cons: Vec<Side> = sides.iter().map(|make| make()).collect();
                    let key = format!("bench:{t}");
                    for b in 0..blocks {
                        for k in 0..n {
                            let side = order(b, k);
                            barrier.wait();
                            if side != ASYNC {
                                for i in 0..block_ops {
                                    op.run(cons[side].as_mut(), &key, i);
                                }
                            }
                            barrier.wait();
                        }
                    }
                })
            })
            .collect();
        let mut elapsed = vec![Vec::with_capacity(blocks); n];
        for b in 0..blocks {
            for k in 0..n {
                let side = order(b, k);
                barrier.wait();
                let start = Instant::now();
                if side == ASYNC {
                    self.async_block(op, block_ops);
                }
                barrier.wait();
                elapsed[side].push(start.elapsed().as_secs_f64());
            }
        }
        for h in handles {
            h.join().expect("bench thread");
        }
        elapsed
    }

    /// One block of the async side: as many tasks as threads, sharing one connection.
    fn async_block(&self, op: Op, block_ops: usize) {
        let con = self.async_con.clone();
        let threads = self.threads;
        self.runtime.block_on(async move {
            let tasks: Vec<_> = (0..threads)
                .map(|t| {
                    let mut con = con.clone();
                    tokio::spawn(async move {
                        let key = format!("bench:{t}");
                        for i in 0..block_ops {
                            match op {
                                Op::Get => {
                                    let v: Option<Vec<u8>> = op
                                        .cmd(&key, i)
                                        .query_async(&mut con)
                                        .await
                                        .expect("async GET");
                                    assert!(v.is_some());
                                }
                                Op::Set => op
                                    .cmd(&key, i)
                                    .query_async::<()>(&mut con)
                                    .await
                                    .expect("async SET"),
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("async task");
            }
        });
    }
}

fn main() {
    let mut report = Report::new(
        "multiplexed",
        "GET/SET through the multiplexed connection vs the pool, raw connections and redis' async MultiplexedConnection",
    );
    let server = RedisServer::start().expect("start redis-server");
    let ops = env_usize("REDKIT_BENCH_OPS", 20_000);
    report.param("ops_per_thread_and_side_at_1_thread", ops);
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let async_con = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("async multiplexed connection");
    let mux1 = Redis::connect(common::config(&server).multiplexed(1)).expect("connect");
    let mux2 = Redis::connect(common::config(&server).multiplexed(2)).expect("connect");
    let pool16 = Redis::connect(common::config(&server)).expect("connect");
    for t in 0..64 {
        let mut r = pool16.clone();
        r.set::<_, _, ()>(format!("bench:{t}"), "0123456789abcdef")
            .expect("seed");
    }
    println!(
        "(blocks of every side in rotating order; ratio = median of per-block ratios; {ops} ops/thread/side at 1 thread, fewer per thread with more threads)"
    );
    for threads in [1usize, 8, 32, 64] {
        let pool_n = Redis::connect(
            common::config(&server).pool_max_size(u32::try_from(threads).unwrap_or(64)),
        )
        .expect("connect");
        let sync_sides: Vec<MakeSide> = vec![
            Arc::new({
                let r = mux1.clone();
                move || Box::new(r.clone()) as Side
            }),
            Arc::new({
                let r = mux2.clone();
                move || Box::new(r.clone()) as Side
            }),
            Arc::new({
                let r = pool16.clone();
                move || Box::new(r.clone()) as Side
            }),
            Arc::new({
                let r = pool_n.clone();
                move || Box::new(r.clone()) as Side
            }),
            Arc::new({
                let client = client.clone();
                move || Box::new(client.get_connection().expect("raw connection")) as Side
            }),
            // Placeholder for the async side (run on the tokio runtime, not these threads).
            Arc::new({
                let client = client.clone();
                move || Box::new(client.get_connection().expect("raw connection")) as Side
            }),
        ];
        let bench = Bench {
            threads,
            sync_sides,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            async_con: async_con.clone(),
        };
        let per_thread = (ops / threads.max(1)).max(400);
        let block = (per_thread / 10).clamp(20, 500);
        let blocks = (per_thread / block).max(5);
        for op in [Op::Get, Op::Set] {
            bench.run(op, 1, block / 4 + 1); // warm-up
            let times = bench.run(op, blocks, block);
            let ops_per_sec =
                |side: usize| (threads * blocks * block) as f64 / times[side].iter().sum::<f64>();
            let ratio = |side: usize, against: usize| {
                median(
                    times[against]
                        .iter()
                        .zip(&times[side])
                        .map(|(base, ours)| base / ours)
                        .collect(),
                )
            };
            let scenario = |what: &str| format!("{} x{threads}: {what}", op.name());
            // Targets: at 32 and 64 threads >= 2x the pool with pool = threads and >= 1.0x
            // the async reference; at 1 thread >= 0.9x a raw connection.
            let (pool_target, async_target, raw_target) = match threads {
                1 => (Target::None, Target::None, Target::RatioAtLeast(0.9)),
                32 | 64 => (
                    Target::RatioAtLeast(2.0),
                    Target::RatioAtLeast(1.0),
                    Target::None,
                ),
                _ => (Target::None, Target::None, Target::None),
            };
            for (mux, name) in [(0usize, "multiplexed(1)"), (1, "multiplexed(2)")] {
                report.throughput(
                    &scenario(&format!("{name} vs pool = threads")),
                    " op/s",
                    ops_per_sec(mux),
                    ops_per_sec(3),
                    ratio(mux, 3),
                    pool_target,
                );
                report.throughput(
                    &scenario(&format!("{name} vs pool of 16")),
                    " op/s",
                    ops_per_sec(mux),
                    ops_per_sec(2),
                    ratio(mux, 2),
                    Target::None,
                );
                report.throughput(
                    &scenario(&format!("{name} vs async multiplexed")),
                    " op/s",
                    ops_per_sec(mux),
                    ops_per_sec(ASYNC),
                    ratio(mux, ASYNC),
                    async_target,
                );
                report.throughput(
                    &scenario(&format!("{name} vs raw per thread")),
                    " op/s",
                    ops_per_sec(mux),
                    ops_per_sec(4),
                    ratio(mux, 4),
                    raw_target,
                );
            }
            println!(
                "  {} x{threads} op/s: {}",
                op.name(),
                SIDES
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{s} {:.0}", ops_per_sec(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    latency(&mut report, &mux1, &pool16, ops);
    report.finish();
}

/// GET latency at 8 threads: p50 and p99 through the multiplexed connection and the pool,
/// in alternating blocks.
fn latency(report: &mut Report, mux: &Redis, pool: &Redis, ops: usize) {
    const THREADS: usize = 8;
    let per = (ops / 4).max(1000);
    let samples: Vec<Mutex<Vec<Duration>>> = (0..2).map(|_| Mutex::new(Vec::new())).collect();
    for round in 0..10 {
        for k in 0..2 {
            let side = (round + k) % 2;
            let redis = if side == 0 { mux } else { pool };
            thread::scope(|s| {
                for t in 0..THREADS {
                    let (redis, samples) = (redis.clone(), &samples);
                    s.spawn(move || {
                        let mut r = redis;
                        let key = format!("bench:{t}");
                        let mut mine = Vec::with_capacity(per / 10);
                        for _ in 0..per / 10 {
                            let start = Instant::now();
                            let v: Option<Vec<u8>> = r.get(&key).expect("GET");
                            mine.push(start.elapsed());
                            assert!(v.is_some());
                        }
                        samples[side].lock().expect("samples").extend(mine);
                    });
                }
            });
        }
    }
    let mut stats = samples.into_iter().map(|m| {
        let mut v = m.into_inner().expect("samples");
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    });
    let (mux_stats, pool_stats) = (
        stats.next().unwrap_or_default(),
        stats.next().unwrap_or_default(),
    );
    report.latency(
        "GET x8 p50: multiplexed(1) vs pool of 16",
        mux_stats.0,
        Some(pool_stats.0),
        Target::None,
    );
    report.latency(
        "GET x8 p99: multiplexed(1) vs pool of 16",
        mux_stats.1,
        Some(pool_stats.1),
        Target::None,
    );
}
