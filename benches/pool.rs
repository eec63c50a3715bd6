//! GET and SET through the redkit pool against a raw `redis` connection per thread, measured
//! in the same run on the same server, reported as a ratio (redkit / raw).
//!
//! `cargo bench --bench pool`. `REDKIT_BENCH_OPS` sets the operations per thread and side
//! (default 20000; a quarter of it per thread at 8 threads, a sixteenth at 32). All sides run
//! on the same threads in alternating blocks of 250 operations; each ratio is the median of
//! the per-block ratios against the raw block run next to it. Also measured: pipelines of 32
//! `GET`s through `Redis::pipeline` against a raw `redis::pipe()` on one connection; for
//! reference, the `redis` crate's own r2d2 manager (it PINGs on every checkout) and
//! `redis-benchmark` itself (GET/SET, 1 and 8 clients: the server's ceiling) when installed.
//! Results go to stdout and to the `pool` section of `target/redkit-bench.json`.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use common::{env_usize, median, Report, Target};
use redis::Commands;
use redkit::testing::RedisServer;
use redkit::Redis;

#[derive(Clone, Copy, PartialEq, Eq)]
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

    fn run(self, con: &mut dyn redis::ConnectionLike, key: &str, i: usize) {
        match self {
            Op::Get => {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(con).expect("GET");
                assert!(v.is_some());
            }
            Op::Set => redis::cmd("SET")
                .arg(key)
                .arg(i)
                .query::<()>(con)
                .expect("SET"),
        }
    }
}

/// The `redis` crate's own r2d2 manager, checking a connection out for every command (as a
/// pool is used).
struct R2d2PerCommand(r2d2::Pool<redis::Client>);

impl redis::ConnectionLike for R2d2PerCommand {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        let mut con = self.0.get().expect("r2d2 checkout");
        con.req_packed_command(cmd)
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let mut con = self.0.get().expect("r2d2 checkout");
        con.req_packed_commands(cmd, offset, count)
    }
    fn get_db(&self) -> i64 {
        0
    }
    fn check_connection(&mut self) -> bool {
        true
    }
    fn is_open(&self) -> bool {
        true
    }
}

type Side = Box<dyn redis::ConnectionLike + Send>;
type MakeSide = Arc<dyn Fn() -> Side + Send + Sync>;

/// Runs every side on the same `threads` threads, alternating sides in blocks of
/// `block_ops` operations per thread, all threads on the same side at the same time. Returns
/// each side's operations per second. Fine interleaving makes drift on a shared machine hit
/// every side alike. Returns, per side, the time each block took.
fn compare(
    threads: usize,
    blocks: usize,
    block_ops: usize,
    op: Op,
    sides: &[MakeSide],
) -> Vec<Vec<f64>> {
    let n = sides.len();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let sides = sides.to_vec();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut cons: Vec<Side> = sides.iter().map(|make| make()).collect();
                let key = format!("bench:{t}");
                for b in 0..blocks {
                    for k in 0..n {
                        let side = (b + k) % n;
                        barrier.wait();
                        for i in 0..block_ops {
                            op.run(cons[side].as_mut(), &key, i);
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
            let side = (b + k) % n;
            barrier.wait();
            let start = Instant::now();
            barrier.wait();
            elapsed[side].push(start.elapsed().as_secs_f64());
        }
    }
    for h in handles {
        h.join().expect("bench thread");
    }
    elapsed
}

/// Operations per thread and side in one block.
const BLOCK: usize = 250;

fn main() {
    let mut report = Report::new(
        "pool",
        "GET/SET through the redkit pool vs a raw redis connection per thread",
    );
    let server = RedisServer::start().expect("start redis-server");
    let ops = env_usize("REDKIT_BENCH_OPS", 20_000);
    report.param("ops_per_thread_and_side", ops);
    let url = server.url();
    let redis = Redis::connect(common::config(&server).pool_max_size(32)).expect("connect");
    let client = redis::Client::open(url.as_str()).expect("client");
    let r2d2_pool = r2d2::Pool::builder()
        .max_size(32)
        .build(client.clone())
        .expect("r2d2 pool of the redis crate");

    // Keys the GETs read.
    for t in 0..32 {
        let mut r = redis.clone();
        r.set::<_, _, ()>(format!("bench:{t}"), "0123456789abcdef")
            .expect("seed");
    }

    let sides: Vec<MakeSide> = vec![
        Arc::new({
            let redis = redis.clone();
            move || Box::new(redis.clone()) as Side
        }),
        Arc::new({
            let client = client.clone();
            move || Box::new(client.get_connection().expect("raw connection")) as Side
        }),
        Arc::new({
            let pool = r2d2_pool.clone();
            move || Box::new(R2d2PerCommand(pool.clone())) as Side
        }),
    ];
    println!(
        "({ops} ops/thread/side in blocks of {BLOCK}, sides interleaved; ratio = median of per-block ratios; the redis-r2d2 rows are the redis crate's own r2d2 manager, for reference)"
    );
    for threads in [1usize, 8, 32] {
        for op in [Op::Get, Op::Set] {
            let per_thread = match threads {
                1 => ops,
                8 => ops / 4,
                _ => ops / 16,
            };
            let blocks = (per_thread / BLOCK).max(3);
            compare(threads, 2, BLOCK / 5, op, &sides); // warm-up
            let times = compare(threads, blocks, BLOCK, op, &sides);
            let ops_per_sec =
                |side: usize| (threads * blocks * BLOCK) as f64 / times[side].iter().sum::<f64>();
            // The ratio is the median of per-block ratios against the raw block run right
            // next to it: robust to drift and to a stalled block.
            let paired = |side: usize| {
                median(
                    times[1]
                        .iter()
                        .zip(&times[side])
                        .map(|(raw, other)| raw / other)
                        .collect(),
                )
            };
            let scenario = format!("{} x{threads} threads", op.name());
            report.throughput(
                &scenario,
                " op/s",
                ops_per_sec(0),
                ops_per_sec(1),
                paired(0),
                Target::RatioAtLeast(TARGET),
            );
            report.throughput(
                &format!("{scenario} (redis-r2d2, reference)"),
                " op/s",
                ops_per_sec(2),
                ops_per_sec(1),
                paired(2),
                Target::None,
            );
        }
    }
    pipelines(&mut report, &redis, &client, ops);
    ceiling(&mut report, server.port());
    let stats = redis.stats();
    println!(
        "redkit pool after the run: {} connections, {} errors, checkout wait avg {:?}",
        stats.pool.size,
        stats.errors.total(),
        stats.pool.checkout_wait_avg
    );
    report.finish();
}

/// The target from the core issue: redkit / raw.
const TARGET: f64 = 0.97;

/// Pipelines of 32 GETs: `Redis::pipeline` against `redis::pipe()` on a raw connection, one
/// thread, alternating blocks of 50 pipelines.
fn pipelines(report: &mut Report, redis: &Redis, client: &redis::Client, ops: usize) {
    const DEPTH: usize = 32;
    const PIPES: usize = 50;
    let mut raw = client.get_connection().expect("raw connection");
    let mut ours = redkit::Pipeline::new();
    let mut theirs = redis::pipe();
    for k in 0..DEPTH {
        ours.cmd("GET").arg(format!("bench:{k}"));
        theirs.cmd("GET").arg(format!("bench:{k}"));
    }
    let blocks = (2 * ops / (PIPES * DEPTH)).max(9);
    let (mut t_ours, mut t_raw, mut ratios) = (0.0, 0.0, Vec::new());
    for b in 0..blocks + 1 {
        let run_ours = || {
            let start = Instant::now();
            for _ in 0..PIPES {
                let v: Vec<Option<Vec<u8>>> = redis.pipeline(&ours).expect("pipeline");
                assert_eq!(v.len(), DEPTH);
            }
            start.elapsed().as_secs_f64()
        };
        let mut run_raw = || {
            let start = Instant::now();
            for _ in 0..PIPES {
                let v: Vec<Option<Vec<u8>>> = theirs.query(&mut raw).expect("raw pipeline");
                assert_eq!(v.len(), DEPTH);
            }
            start.elapsed().as_secs_f64()
        };
        let (o, r) = if b % 2 == 0 {
            let o = run_ours();
            (o, run_raw())
        } else {
            let r = run_raw();
            (run_ours(), r)
        };
        if b == 0 {
            continue; // warm-up
        }
        t_ours += o;
        t_raw += r;
        ratios.push(r / o);
    }
    let n = (blocks * PIPES * DEPTH) as f64;
    report.throughput(
        "pipeline of 32 GETs, 1 thread",
        " cmd/s",
        n / t_ours,
        n / t_raw,
        median(ratios),
        Target::RatioAtLeast(TARGET),
    );
}

/// `redis-benchmark` itself, where installed: the server's own ceiling on this machine.
fn ceiling(report: &mut Report, port: u16) {
    for clients in [1usize, 8] {
        let results = common::redis_benchmark(port, clients, 50_000);
        if results.is_empty() {
            println!("redis-benchmark not found: no ceiling rows");
            return;
        }
        for (test, rps) in results {
            report.figure(
                &format!("redis-benchmark {test}, {clients} client(s) (ceiling)"),
                rps,
                "op/s",
            );
        }
    }
}
