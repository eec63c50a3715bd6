//! Rate-limit decisions per second through redkit against raw `EVALSHA` round trips of a
//! trivial script on a dedicated `redis` connection (the floor a script-based limiter can
//! reach), measured in the same run, reported as a ratio; and the memory one limited subject
//! costs at a steady 1,000 requests per window (`MEMORY USAGE`).
//!
//! Two reference rows separate the costs: a trivial script through the redkit handle (what
//! redkit adds on the client) and the GCRA script on a raw connection (what the algorithm
//! costs the server).
//!
//! `cargo bench --bench ratelimit`. `REDKIT_BENCH_OPS` sets the decisions per side (default
//! 10000). Sides alternate in blocks of 250 decisions on one thread; each ratio is the median
//! of per-block ratios against the raw block next to it. Results go to stdout and to the
//! `ratelimit` section of `target/redkit-bench.json`.

mod common;

use std::time::{Duration, Instant};

use common::{env_usize, median, Report, Target};
use redkit::ratelimit::{
    BucketLimit, ConcurrencyLimiter, FixedWindow, Gcra, GcraLimit, MultiLimit, RateLimiter,
    SlidingLog, SlidingWindow, TokenBucket, WindowLimit,
};
use redkit::testing::RedisServer;

const BLOCK: usize = 250;
/// The target from issue 6: redkit decisions / raw EVALSHA round trips.
const TARGET: f64 = 0.95;

type Decide = Box<dyn FnMut(usize)>;

/// A limiter as the bench sees it: a name, one decision, and the keys of a subject.
struct Scenario {
    name: &'static str,
    decide: Decide,
}

fn limiter_scenario<L: RateLimiter + 'static>(name: &'static str, limiter: L) -> Scenario {
    Scenario {
        name,
        decide: Box::new(move |i| {
            // Many subjects, so most decisions are allowed (the common case).
            let d = limiter.allow(&format!("s{}", i % 1000)).expect("decision");
            std::hint::black_box(d);
        }),
    }
}

fn main() {
    let mut report = Report::new(
        "ratelimit",
        "rate-limit decisions vs raw EVALSHA of a trivial script on a dedicated connection",
    );
    let ops = env_usize("REDKIT_BENCH_OPS", 10_000).max(BLOCK);
    report.param("decisions_per_side", ops);
    let blocks = ops / BLOCK;
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);

    // The baseline: EVALSHA of a script that returns a decision-shaped reply, on a raw
    // connection.
    let client = redis::Client::open(server.url()).expect("client");
    let mut raw = client.get_connection().expect("raw connection");
    let trivial = redis::Script::new("return {1, 9, 0, 100000, 10}");
    trivial
        .prepare_invoke()
        .load(&mut raw)
        .expect("SCRIPT LOAD");
    let baseline: Decide = Box::new(move |i| {
        let v: Vec<i64> = trivial
            .key(format!("s{}", i % 1000))
            .invoke(&mut raw)
            .expect("EVALSHA");
        std::hint::black_box(v);
    });

    let big = GcraLimit::new(1_000_000, Duration::from_secs(1));
    let gcra = Gcra::new(&redis, "bench-gcra", big).expect("gcra");
    let g1 = Gcra::new(&redis, "bench-m1", big).expect("gcra");
    let g2 = Gcra::new(&redis, "bench-m2", big).expect("gcra");
    let multi = MultiLimit::new(&redis);
    let mut scenarios = Vec::new();
    // A trivial script through the redkit handle: what redkit adds on the client.
    let trivial_rk = redkit::Script::new("return {1, 9, 0, 100000, 10}");
    let redis_t = redis.clone();
    scenarios.push(Scenario {
        name: "trivial script, redkit",
        decide: Box::new(move |i| {
            let v: Vec<i64> = trivial_rk
                .key(format!("s{}", i % 1000))
                .run(&redis_t)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
    });
    // The same GCRA script on a raw connection: what the algorithm costs the server, without
    // any redkit code on the client.
    let mut raw2 = client.get_connection().expect("raw connection");
    let gcra_raw = redis::Script::new(include_str!("../src/ratelimit/gcra.lua"));
    gcra_raw
        .prepare_invoke()
        .load(&mut raw2)
        .expect("SCRIPT LOAD");
    scenarios.push(Scenario {
        name: "GCRA script, raw conn",
        decide: Box::new(move |i| {
            let v: Vec<i64> = gcra_raw
                .key(format!("redkit:rl:raw:{{s{}}}", i % 1000))
                .arg(1_000_000)
                .arg(1_000_000)
                .arg(1_000_000)
                .arg(1)
                .arg("0")
                .invoke(&mut raw2)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
    });
    scenarios.push(limiter_scenario("GCRA", gcra));
    let window = WindowLimit::new(1_000_000, Duration::from_secs(1));
    scenarios.push(limiter_scenario(
        "SlidingLog",
        SlidingLog::new(&redis, "bench-log", window).expect("log"),
    ));
    scenarios.push(limiter_scenario(
        "SlidingWindow",
        SlidingWindow::new(&redis, "bench-sw", window).expect("sliding window"),
    ));
    scenarios.push(limiter_scenario(
        "FixedWindow",
        FixedWindow::new(&redis, "bench-fw", window).expect("fixed window"),
    ));
    scenarios.push(limiter_scenario(
        "TokenBucket",
        TokenBucket::new(
            &redis,
            "bench-tb",
            BucketLimit::new(1_000_000, 1_000_000, Duration::from_secs(1)),
        )
        .expect("token bucket"),
    ));
    let slots = ConcurrencyLimiter::new(&redis, "bench-cc", 1_000_000, Duration::from_secs(60))
        .expect("concurrency");
    scenarios.push(Scenario {
        name: "Concurrency (2 trips)",
        decide: Box::new(move |i| {
            let slot = slots
                .try_acquire(&format!("s{}", i % 1000))
                .expect("acquire")
                .expect("a free slot");
            slot.release().expect("release");
        }),
    });
    scenarios.push(Scenario {
        name: "MultiLimit (2 GCRA)",
        decide: Box::new(move |i| {
            let s = format!("s{}", i % 1000);
            let d = multi.allow_n(&[(&g1, &s), (&g2, &s)], 1).expect("multi");
            std::hint::black_box(d);
        }),
    });

    // Warm up every side (scripts loaded, pool filled).
    let mut baseline = baseline;
    for i in 0..BLOCK {
        baseline(i);
        for s in scenarios.iter_mut() {
            (s.decide)(i);
        }
    }

    println!(
        "({ops} decisions per side in blocks of {BLOCK}, one thread; ratio = median of per-block ratios; the first two rows are references, without a target)"
    );
    for s in scenarios.iter_mut() {
        let mut ratios = Vec::with_capacity(blocks);
        let (mut ours, mut theirs) = (0.0, 0.0);
        for b in 0..blocks {
            // Alternate which side goes first.
            let time = |f: &mut Decide| {
                let start = Instant::now();
                for i in 0..BLOCK {
                    f(b * BLOCK + i);
                }
                start.elapsed().as_secs_f64()
            };
            let (r, o) = if b % 2 == 0 {
                let r = time(&mut baseline);
                (r, time(&mut s.decide))
            } else {
                let o = time(&mut s.decide);
                (time(&mut baseline), o)
            };
            ours += o;
            theirs += r;
            ratios.push(r / o);
        }
        let ratio = median(ratios);
        let ours_rate = (blocks * BLOCK) as f64 / ours;
        let raw_rate = (blocks * BLOCK) as f64 / theirs;
        let reference = s.name.contains("script");
        report.throughput(
            s.name,
            " /s",
            ours_rate,
            raw_rate,
            ratio,
            if reference {
                Target::None
            } else {
                Target::RatioAtLeast(TARGET)
            },
        );
    }

    // Memory of one subject at a steady 1,000 requests per window.
    let mut admin = server.admin().expect("admin");
    let per_window = GcraLimit::new(1000, Duration::from_secs(60));
    let g = Gcra::new(&redis, "mem-gcra", per_window).expect("gcra");
    for _ in 0..1000 {
        g.allow("subject").expect("allow");
    }
    let window = WindowLimit::new(1000, Duration::from_secs(60));
    let log = SlidingLog::new(&redis, "mem-log", window).expect("log");
    let sw = SlidingWindow::new(&redis, "mem-sw", window).expect("sliding window");
    let fw = FixedWindow::new(&redis, "mem-fw", window).expect("fixed window");
    let tb = TokenBucket::new(
        &redis,
        "mem-tb",
        BucketLimit::new(1000, 1000, Duration::from_secs(60)),
    )
    .expect("token bucket");
    let cc = ConcurrencyLimiter::new(&redis, "mem-cc", 1000, Duration::from_secs(60))
        .expect("concurrency");
    let mut held = Vec::with_capacity(1000);
    for _ in 0..1000 {
        tb.allow("subject").expect("allow");
        held.push(cc.try_acquire("subject").expect("acquire").expect("a slot"));
        log.allow("subject").expect("allow");
        sw.allow("subject").expect("allow");
        fw.allow("subject").expect("allow");
    }
    let keys = [
        ("GCRA", vec![g.key("subject")]),
        ("SlidingLog", vec![log.key("subject")]),
        ("SlidingWindow", vec![sw.key("subject")]),
        ("FixedWindow", vec![fw.key("subject")]),
        ("TokenBucket", vec![tb.key("subject")]),
        ("Concurrency (1,000 held)", vec![cc.key("subject")]),
    ];
    for (name, keys) in keys {
        let bytes: i64 = keys
            .iter()
            .map(|k| {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(k)
                    .query::<Option<i64>>(&mut admin)
                    .expect("MEMORY USAGE")
                    .unwrap_or(0)
            })
            .sum();
        report.figure(
            &format!("memory per subject, {name} (1,000 requests)"),
            bytes as f64,
            "bytes",
        );
    }
    drop(held);

    report.finish();
}
