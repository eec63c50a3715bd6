//! GET and SET through the redkit pool against a raw `redis` connection per thread, measured
//! in the same run on the same server, reported as a ratio (redkit / raw).
//!
//! `cargo bench --bench pool`. `REDKIT_BENCH_OPS` sets the operations per thread and side
//! (default 20000; a quarter of it per thread at 8 threads). All sides run on the same
//! threads in alternating blocks of 250 operations; each ratio is the median of the per-block
//! ratios against the raw block run next to it. Also measured, for reference: the `redis`
//! crate's own r2d2 manager (it PINGs on every checkout). Results go to stdout and to
//! `target/redkit-bench-pool.json`.

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
    ratio: f64,
    r2d2_ratio: f64,
}

fn main() {
    let server = RedisServer::start().expect("start redis-server");
    let ops = env_usize("REDKIT_BENCH_OPS", 20_000);
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
    let mut rows = Vec::new();
    println!(
        "redkit pool vs raw redis connection per thread ({ops} ops/thread/side in blocks of {BLOCK}, sides interleaved; ratio = median of per-block ratios)"
    );
    println!(
        "{:<14} {:>12} {:>12} {:>7}   {:>15} {:>7}",
        "scenario", "redkit op/s", "raw op/s", "ratio", "redis-r2d2 op/s", "ratio"
    );
    for threads in [1usize, 8] {
        for op in [Op::Get, Op::Set] {
            let per_thread = if threads == 1 { ops } else { ops / 4 };
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
            let row = Row {
                scenario: format!("{} x{threads}", op.name()),
                redkit: ops_per_sec(0),
                raw: ops_per_sec(1),
                r2d2_redis: ops_per_sec(2),
                ratio: paired(0),
                r2d2_ratio: paired(2),
            };
            println!(
                "{:<14} {:>12.0} {:>12.0} {:>7.3}   {:>15.0} {:>7.3}",
                row.scenario, row.redkit, row.raw, row.ratio, row.r2d2_redis, row.r2d2_ratio
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
    write_json(&rows, ops);
}

fn write_json(rows: &[Row], ops: usize) {
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
                r.ratio,
                r.r2d2_redis
            )
        })
        .collect();
    let json = format!(
        "{{\n  \"bench\": \"pool\",\n  \"ops_per_thread\": {ops},\n  \"block\": {BLOCK},\n  \"results\": [\n{}\n  ]\n}}\n",
        body.join(",\n")
    );
    if let Err(e) = std::fs::write(&path, json) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
