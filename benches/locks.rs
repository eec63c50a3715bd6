//! Lock benchmarks, each next to a baseline measured in the same run.
//!
//! 1. Uncontended acquire + release cycles per second through redkit (`Lock::try_acquire` +
//!    `LockGuard::release`) against two raw `EVALSHA` round trips of the same two scripts on
//!    a dedicated `redis` connection (the floor for a script-based lock), alternating blocks
//!    of 250 cycles on one thread; the ratio is the median of per-block ratios (target: at
//!    least 0.95). A reference row runs two trivial scripts on the raw connection (what the lock
//!    scripts cost the server).
//! 2. Contended hand-off: two threads pass one lock back and forth, each waiting in
//!    `acquire` while the other holds it for 5 ms; the latency is from just before the
//!    holder's release to the waiter's `acquire` returning. p50 and p99 (target p50 < 2 ms),
//!    next to the same hand-off with a fixed 50 ms polling loop (`SET NX PX`, sleep 50 ms)
//!    as redsync and redis-py do.
//!
//! 3. Read-write lock liveness: threads loop acquire / hold 5 ms / release on one
//!    `ReadWriteLock` for a few seconds; the wait is from the call to its return. With 1 writer
//!    and 3 readers, the writer's wait p99 (target < 20 ms); with 2 writers and 2 readers, the
//!    readers' wait p99 (target < 50 ms). Acquisition counts are shown too.
//!
//! `cargo bench --bench locks`. `REDKIT_BENCH_OPS` sets the cycles per side (default 10000),
//! `REDKIT_BENCH_HANDOFFS` the hand-offs per side (default 100), `REDKIT_BENCH_RW_SECS` how
//! long each read-write scenario runs (default 6). Results go to stdout and to the `locks`
//! section of `target/redkit-bench.json` (see `benches/common`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redkit::lock::{Lock, ReadWriteLock};
use redkit::testing::RedisServer;

use common::{env_usize, percentile, Report, Target};

const BLOCK: usize = 250;
/// The targets from issue 5.
const TARGET_RATIO: f64 = 0.95;
const TARGET_P50: Duration = Duration::from_millis(2);
/// The targets from issue 20.
const TARGET_WRITER_P99: Duration = Duration::from_millis(20);
const TARGET_READER_P99: Duration = Duration::from_millis(50);
/// How long each holder keeps the lock in the hand-off scenario (the other thread is waiting
/// by then).
const HOLD: Duration = Duration::from_millis(5);

type Cycle = common::Op;

fn compare(ours: &mut Cycle, theirs: &mut Cycle, blocks: usize) -> (f64, f64, f64) {
    common::compare_blocks(ours, theirs, blocks, BLOCK)
}

/// The waits (call to return) of writers and of readers, each sorted, when `writers` and
/// `readers` threads loop acquire / hold [`HOLD`] / release on one read-write lock for `run`.
fn rw_waits(
    redis: &redkit::Redis,
    name: &str,
    writers: usize,
    readers: usize,
    run: Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let rw = ReadWriteLock::builder(redis, name)
        .wait(Duration::from_secs(60))
        .build()
        .expect("rwlock");
    let waits = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];
    let until = Instant::now() + run;
    std::thread::scope(|s| {
        for t in 0..writers + readers {
            let (rw, waits) = (&rw, &waits);
            s.spawn(move || {
                let write = t < writers;
                while Instant::now() < until {
                    let start = Instant::now();
                    let g = if write { rw.write() } else { rw.read() }.expect("acquire");
                    let waited = start.elapsed();
                    std::thread::sleep(HOLD);
                    assert!(g.release().expect("release"));
                    waits[usize::from(!write)].lock().push(waited);
                }
            });
        }
    });
    let [mut w, mut r] = waits.map(Mutex::into_inner);
    w.sort();
    r.sort();
    (w, r)
}

/// Two threads hand one lock back and forth `n` times through `acquire`/`release` closures;
/// returns the sorted hand-off latencies.
fn handoffs<G: Send>(
    n: usize,
    acquire: impl Fn() -> G + Sync,
    release: impl Fn(G) + Sync,
) -> Vec<Duration> {
    let released_at: Mutex<Option<Instant>> = Mutex::new(None);
    let done = AtomicU64::new(0);
    let latencies = Mutex::new(Vec::with_capacity(n));
    let first = acquire();
    std::thread::scope(|s| {
        let (released_at, done, latencies, acquire, release) =
            (&released_at, &done, &latencies, &acquire, &release);
        let run = move |mut held: Option<G>| {
            loop {
                if let Some(g) = held.take() {
                    std::thread::sleep(HOLD);
                    let before = done.load(Ordering::Acquire);
                    *released_at.lock() = Some(Instant::now());
                    release(g);
                    // Wait for the other thread to take it (or for the end).
                    while done.load(Ordering::Acquire) == before && (before as usize) < n {
                        std::thread::yield_now();
                    }
                }
                if done.load(Ordering::Acquire) as usize >= n {
                    return;
                }
                let g = acquire();
                let now = Instant::now();
                if let Some(t) = released_at.lock().take() {
                    latencies.lock().push(now - t);
                }
                if done.fetch_add(1, Ordering::AcqRel) as usize + 1 >= n {
                    release(g);
                    return;
                }
                held = Some(g);
            }
        };
        s.spawn(move || run(Some(first)));
        // Let the first holder start, so the second thread waits from the start.
        std::thread::sleep(Duration::from_millis(1));
        s.spawn(move || run(None));
    });
    let mut v = latencies.into_inner();
    v.sort();
    v
}

fn main() {
    let ops = env_usize("REDKIT_BENCH_OPS", 10_000).max(BLOCK);
    let blocks = ops / BLOCK;
    let n_handoffs = env_usize("REDKIT_BENCH_HANDOFFS", 100).max(10);
    let rw_run = Duration::from_secs(env_usize("REDKIT_BENCH_RW_SECS", 6).max(1) as u64);
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);
    let client = redis::Client::open(server.url()).expect("client");

    // 1. Uncontended cycles.
    let lock = Lock::new(&redis, "bench").expect("lock");
    let mut ours: Cycle = Box::new(move |_| {
        let g = lock.try_acquire().expect("acquire").expect("free");
        assert!(g.release().expect("release"));
    });
    let mut raw = client.get_connection().expect("raw connection");
    let acquire = redis::Script::new(include_str!("../src/lock/lock_acquire.lua"));
    let release = redis::Script::new(include_str!("../src/lock/lock_release.lua"));
    let mut raw_lock: Cycle = Box::new(move |i| {
        let token = format!("{:032x}", i);
        let r: Vec<i64> = acquire
            .key("raw:{bench}")
            .key("raw:{bench}:fence")
            .key("raw:{bench}:waiting")
            .arg(&token)
            .arg(30_000)
            .arg(0)
            .invoke(&mut raw)
            .expect("acquire");
        let value = format!("{token}:{}", r[1]);
        let n: i64 = release
            .key("raw:{bench}")
            .key("raw:{bench}:wake")
            .key("raw:{bench}:waiting")
            .arg(value)
            .arg(2000)
            .invoke(&mut raw)
            .expect("release");
        assert_eq!(n, 1);
    });
    let mut raw_t = client.get_connection().expect("raw connection");
    let trivial = redis::Script::new("return 1");
    let mut raw_trivial: Cycle = Box::new(move |_| {
        for _ in 0..2 {
            let n: i64 = trivial
                .key("t:{bench}")
                .invoke(&mut raw_t)
                .expect("trivial");
            std::hint::black_box(n);
        }
    });
    for i in 0..BLOCK {
        ours(i);
        raw_lock(i);
        raw_trivial(i);
    }
    let mut report = Report::new(
        "locks",
        &format!(
            "Lock acquire+release cycles vs raw EVALSHA ({ops} per side in blocks of {BLOCK}, \
             one thread, median of per-block ratios); hand-off latency vs 50 ms polling; read-write lock waits"
        ),
    );
    report.param("cycles_per_side", ops);
    report.param("handoffs_per_side", n_handoffs);
    report.param("hold_ms", HOLD.as_millis() as u64);
    report.param("rw_secs", rw_run.as_secs());
    let (o, t, r) = compare(&mut ours, &mut raw_lock, blocks);
    report.throughput(
        "uncontended acquire+release vs raw EVALSHA x2",
        "/s",
        o,
        t,
        r,
        Target::RatioAtLeast(TARGET_RATIO),
    );
    let (o, t, r) = compare(&mut ours, &mut raw_trivial, blocks);
    report.throughput(
        "  reference: vs 2 trivial scripts, raw",
        "/s",
        o,
        t,
        r,
        Target::None,
    );

    // 2. Contended hand-off.
    let handoff_lock = Lock::builder(&redis, "handoff")
        .wait(Duration::from_secs(30))
        .build()
        .expect("lock");
    let ours = handoffs(
        n_handoffs,
        || handoff_lock.acquire().expect("acquire"),
        |g| assert!(g.release().expect("release")),
    );
    let poll_con = Arc::new(client.clone());
    let tokens = AtomicU64::new(0);
    let poll = handoffs(
        n_handoffs,
        || {
            let mut con = poll_con.get_connection().expect("connection");
            let token = format!("t{}", tokens.fetch_add(1, Ordering::Relaxed));
            loop {
                let ok: Option<String> = redis::cmd("SET")
                    .arg("poll:{bench}")
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query(&mut con)
                    .expect("SET");
                if ok.is_some() {
                    return (con, token);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        },
        |(mut con, token): (redis::Connection, String)| {
            let n: i64 = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .key("poll:{bench}")
            .arg(token)
            .invoke(&mut con)
            .expect("release");
            assert_eq!(n, 1);
        },
    );
    report.latency(
        "hand-off p50 (release to next acquire) vs 50 ms poll",
        percentile(&ours, 0.5),
        Some(percentile(&poll, 0.5)),
        Target::Below(TARGET_P50),
    );
    report.latency(
        "hand-off p99 vs 50 ms poll",
        percentile(&ours, 0.99),
        Some(percentile(&poll, 0.99)),
        Target::None,
    );

    // 3. Read-write lock liveness.
    let (w, r) = rw_waits(&redis, "rw-1w3r", 1, 3, rw_run);
    report.latency(
        "rwlock 1 writer + 3 readers: writer wait p99",
        percentile(&w, 0.99),
        None,
        Target::Below(TARGET_WRITER_P99),
    );
    report.latency("  writer wait p50", percentile(&w, 0.5), None, Target::None);
    report.latency(
        "  reader wait p99",
        percentile(&r, 0.99),
        None,
        Target::None,
    );
    report.figure("  writes", w.len() as f64, "acquisitions");
    report.figure("  reads", r.len() as f64, "acquisitions");
    let (w, r) = rw_waits(&redis, "rw-2w2r", 2, 2, rw_run);
    report.latency(
        "rwlock 2 writers + 2 readers: reader wait p99",
        percentile(&r, 0.99),
        None,
        Target::Below(TARGET_READER_P99),
    );
    report.latency("  reader wait p50", percentile(&r, 0.5), None, Target::None);
    report.latency(
        "  writer wait p99",
        percentile(&w, 0.99),
        None,
        Target::None,
    );
    report.figure("  writes", w.len() as f64, "acquisitions");
    report.figure("  reads", r.len() as f64, "acquisitions");
    report.finish();
}
