//! GET and SET through the redkit pool against a raw `redis` connection per thread, measured
//! in the same run on the same server, reported as a ratio (redkit / raw).
//!
//! `cargo bench --bench pool`. `REDKIT_BENCH_OPS` sets the operations per thread and round
//! (default 20000); `REDKIT_BENCH_ROUNDS` the rounds (default 5, the median is reported).
//! Also measured, for reference: the `redis` crate's own r2d2 manager (it PINGs on every
//! checkout). Results go to stdout and to `target/redkit-bench.json`.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use redis::Commands;
use redkit::testing::RedisServer;
use redkit::{Config, Redis};

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

    fn run(self, con: &mut impl redis::ConnectionLike, key: &str, i: usize) {
        match self {
            Op::Get => {
                let v: Option<Vec<u8>> = con.get(key).expect("GET");
                assert!(v.is_some());
            }
            Op::Set => con.set::<_, _, ()>(key, i).expect("SET"),
        }
    }
}

/// Runs `threads` threads doing `ops` operations each on a connection-like made by `make`;
/// returns operations per second.
fn measure<C, F>(threads: usize, ops: usize, op: Op, make: F) -> f64
where
    C: redis::ConnectionLike + Send + 'static,
    F: Fn() -> C,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut con = make();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let key = format!("bench:{t}");
                barrier.wait();
                for i in 0..ops {
                    op.run(&mut con, &key, i);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    (threads * ops) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    scenario: String,
    redkit: f64,
    raw: f64,
    r2d2_redis: f64,
}

fn main() {
    let server = RedisServer::start().expect("start redis-server");
    let ops = env_usize("REDKIT_BENCH_OPS", 20_000);
    let rounds = env_usize("REDKIT_BENCH_ROUNDS", 5).max(1);
    let url = server.url();
    let config = Config::builder()
        .host(server.host())
        .port(server.port())
        .pool_max_size(16)
        .build()
        .expect("config");
    let redis = Redis::connect(config).expect("connect");
    let client = redis::Client::open(url.as_str()).expect("client");
    let r2d2_pool = r2d2::Pool::builder()
        .max_size(16)
        .build(client.clone())
        .expect("r2d2 pool of the redis crate");

    // Keys the GETs read.
    for t in 0..32 {
        let mut r = redis.clone();
        r.set::<_, _, ()>(format!("bench:{t}"), "0123456789abcdef")
            .expect("seed");
    }

    let mut rows = Vec::new();
    println!(
        "redkit pool vs raw redis connection per thread ({} ops/thread, median of {rounds} rounds)",
        ops
    );
    println!(
        "{:<14} {:>12} {:>12} {:>7}   {:>14} {:>7}",
        "scenario", "redkit op/s", "raw op/s", "ratio", "redis-r2d2 op/s", "ratio"
    );
    for threads in [1usize, 8] {
        for op in [Op::Get, Op::Set] {
            let per_thread = if threads == 1 { ops } else { ops / 2 };
            // Warm up every path once.
            measure(threads, per_thread / 10 + 1, op, || redis.clone());
            measure(threads, per_thread / 10 + 1, op, || {
                client.get_connection().expect("raw connection")
            });
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            // Interleave so that drift on a shared machine hits both sides alike.
            for _ in 0..rounds {
                b.push(measure(threads, per_thread, op, || {
                    client.get_connection().expect("raw connection")
                }));
                a.push(measure(threads, per_thread, op, || redis.clone()));
                c.push(measure(threads, per_thread / 4 + 1, op, || {
                    r2d2_pool.clone().get().expect("r2d2 checkout")
                }));
            }
            let row = Row {
                scenario: format!("{} x{threads}", op.name()),
                redkit: median(a),
                raw: median(b),
                r2d2_redis: median(c),
            };
            println!(
                "{:<14} {:>12.0} {:>12.0} {:>7.3}   {:>14.0} {:>7.3}",
                row.scenario,
                row.redkit,
                row.raw,
                row.redkit / row.raw,
                row.r2d2_redis,
                row.r2d2_redis / row.raw
            );
            rows.push(row);
        }
    }
    println!("target: redkit/raw >= 0.97 in every row");
    let stats = redis.stats();
    println!(
        "redkit pool after the run: {} connections, {} errors, checkout wait avg {:?}",
        stats.pool.size,
        stats.errors.total(),
        stats.pool.checkout_wait_avg
    );
    write_json(&rows, ops, rounds);
}

fn write_json(rows: &[Row], ops: usize, rounds: usize) {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("redkit-bench-pool.json");
    let body: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "    {{\"scenario\": \"{}\", \"redkit_ops\": {:.0}, \"baseline_ops\": {:.0}, \"ratio\": {:.4}, \"redis_r2d2_ops\": {:.0}, \"target\": 0.97}}",
                r.scenario,
                r.redkit,
                r.raw,
                r.redkit / r.raw,
                r.r2d2_redis
            )
        })
        .collect();
    let json = format!(
        "{{\n  \"bench\": \"pool\",\n  \"ops_per_thread\": {ops},\n  \"rounds\": {rounds},\n  \"results\": [\n{}\n  ]\n}}\n",
        body.join(",\n")
    );
    if let Err(e) = std::fs::write(&path, json) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
