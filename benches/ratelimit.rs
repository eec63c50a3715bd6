//! Rate-limit decisions per second, each limiter against a fair baseline measured in the same
//! run, reported as ratios; and the memory one limited subject costs at a steady 1,000
//! requests per window (`MEMORY USAGE`).
//!
//! For every limiter, two rows:
//!
//! 1. **Server cost**: our script against the anchor's script for the same algorithm, both
//!    on a raw `redis` connection (`EVALSHA`, nothing of redkit on either side). Target: at
//!    least 1.0 (our scripts are no slower on the server than the anchors'). The anchors are
//!    in `benches/anchors/` (see its README): for GCRA, go-redis/redis_rate's `allowN` (set
//!    `REDKIT_BENCH_REDIS_RATE_LUA` to the path of its own script to use that instead of our
//!    rendering of it); for the others, their published algorithms written for this bench.
//! 2. **Client overhead**: the limiter through a redkit handle against the same script with
//!    the same arguments on a raw connection. Target: at least 0.97.
//!
//! A reference row, without a target, runs a `MultiLimit` of two limits (GCRA and a token
//! bucket) through redkit against the two anchors' scripts one after the other, raw.
//!
//! `cargo bench --bench ratelimit`. `REDKIT_BENCH_OPS` sets the decisions per side (default
//! 10000). Sides alternate in blocks of 250 decisions on one thread (which side goes first
//! alternates too); each ratio is the median of per-block ratios (see `benches/common`).
//! Results go to stdout and to the `ratelimit` section of `target/redkit-bench.json`.

mod common;

use std::time::Duration;

use common::{env_usize, Op, Report, Target};
use redkit::ratelimit::{
    BucketLimit, ConcurrencyLimiter, FixedWindow, Gcra, GcraLimit, MultiLimit, MultiPart,
    RateLimiter, SlidingLog, SlidingWindow, TokenBucket, WindowLimit,
};
use redkit::testing::RedisServer;

const BLOCK: usize = 250;
/// Our scripts / the anchors' scripts, both raw.
const TARGET_SERVER: f64 = 1.0;
/// Through redkit / the same script raw.
const TARGET_CLIENT: f64 = 0.97;
/// Subjects the decisions cycle through (most decisions are allowed, the common case).
const SUBJECTS: usize = 1000;
/// Limits large enough that everything is allowed.
const BIG: u64 = 1_000_000;

/// A script on a raw connection of its own.
fn raw(client: &redis::Client, code: &str) -> (redis::Connection, redis::Script) {
    let mut con = client.get_connection().expect("raw connection");
    let script = redis::Script::new(code);
    script.prepare_invoke().load(&mut con).expect("SCRIPT LOAD");
    (con, script)
}

fn subject(i: usize) -> usize {
    i % SUBJECTS
}

/// One limiter's three sides: through redkit, our script raw, the anchor's script raw.
struct Limiter {
    name: &'static str,
    anchor: &'static str,
    redkit: Op,
    ours_raw: Op,
    anchor_raw: Op,
}

fn main() {
    let ops = env_usize("REDKIT_BENCH_OPS", 10_000).max(BLOCK);
    let blocks = ops / BLOCK;
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);
    let client = redis::Client::open(server.url()).expect("client");
    let second_us = 1_000_000i64;
    let big = BIG as i64;

    let mut limiters: Vec<Limiter> = Vec::new();

    // GCRA.
    let gcra = Gcra::new(
        &redis,
        "b-gcra",
        GcraLimit::new(BIG, Duration::from_secs(1)),
    )
    .expect("gcra");
    let (mut c1, ours) = raw(&client, include_str!("../src/ratelimit/gcra.lua"));
    let redis_rate = std::env::var("REDKIT_BENCH_REDIS_RATE_LUA")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let anchor_name = if redis_rate.is_some() {
        "redis_rate's own"
    } else {
        "redis_rate-shaped"
    };
    let (mut c2, anchor) = raw(
        &client,
        redis_rate
            .as_deref()
            .unwrap_or(include_str!("anchors/gcra.lua")),
    );
    limiters.push(Limiter {
        name: "GCRA",
        anchor: anchor_name,
        redkit: Box::new(move |i| {
            std::hint::black_box(gcra.allow(&format!("s{}", subject(i))).expect("allow"));
        }),
        ours_raw: Box::new(move |i| {
            let v: Vec<i64> = ours
                .key(format!("redkit:rl:r-gcra:{{s{}}}", subject(i)))
                .arg(big)
                .arg(big)
                .arg(second_us)
                .arg(1)
                .arg("0")
                .invoke(&mut c1)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
        anchor_raw: Box::new(move |i| {
            let v: redis::Value = anchor
                .key(format!("rate:a-gcra:{}", subject(i)))
                .arg(big)
                .arg(big)
                .arg(1.0)
                .arg(1)
                .invoke(&mut c2)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
    });

    // The window limiters: our script's arguments are limit, period (µs), n.
    let window = WindowLimit::new(BIG, Duration::from_secs(1));
    type Window = (
        &'static str,
        &'static str,
        Box<dyn RateLimiter>,
        &'static str,
        &'static str,
        &'static str,
    );
    let windows: Vec<Window> = vec![
        (
            "SlidingLog",
            "sliding-log recipe",
            Box::new(SlidingLog::new(&redis, "b-log", window).expect("log")),
            include_str!("../src/ratelimit/sliding_log.lua"),
            include_str!("anchors/sliding_log.lua"),
            "log",
        ),
        (
            "SlidingWindow",
            "Cloudflare-style",
            Box::new(SlidingWindow::new(&redis, "b-sw", window).expect("sliding window")),
            include_str!("../src/ratelimit/sliding_window.lua"),
            include_str!("anchors/sliding_window.lua"),
            "sw",
        ),
        (
            "FixedWindow",
            "INCR pattern",
            Box::new(FixedWindow::new(&redis, "b-fw", window).expect("fixed window")),
            include_str!("../src/ratelimit/fixed_window.lua"),
            include_str!("anchors/fixed_window.lua"),
            "fw",
        ),
    ];
    for (name, anchor_name, limiter, ours, anchor, tag) in windows {
        let (mut c1, ours) = raw(&client, ours);
        let (mut c2, anchor) = raw(&client, anchor);
        let mut n = 0u64;
        limiters.push(Limiter {
            name,
            anchor: anchor_name,
            redkit: Box::new(move |i| {
                std::hint::black_box(limiter.allow(&format!("s{}", subject(i))).expect("allow"));
            }),
            ours_raw: Box::new(move |i| {
                let v: Vec<i64> = ours
                    .key(format!("redkit:rl:r-{tag}:{{s{}}}", subject(i)))
                    .arg(big)
                    .arg(second_us)
                    .arg(1)
                    .invoke(&mut c1)
                    .expect("EVALSHA");
                std::hint::black_box(v);
            }),
            anchor_raw: Box::new(move |i| {
                n += 1;
                let v: Vec<i64> = anchor
                    .key(format!("a-{tag}:{}", subject(i)))
                    .arg(big)
                    .arg(1000)
                    .arg(n)
                    .invoke(&mut c2)
                    .expect("EVALSHA");
                std::hint::black_box(v);
            }),
        });
    }

    // Token bucket.
    let bucket = TokenBucket::new(
        &redis,
        "b-tb",
        BucketLimit::new(BIG, BIG, Duration::from_secs(1)),
    )
    .expect("token bucket");
    let (mut c1, ours) = raw(&client, include_str!("../src/ratelimit/token_bucket.lua"));
    let (mut c2, anchor) = raw(&client, include_str!("anchors/token_bucket.lua"));
    limiters.push(Limiter {
        name: "TokenBucket",
        anchor: "Stripe-style",
        redkit: Box::new(move |i| {
            std::hint::black_box(bucket.allow(&format!("s{}", subject(i))).expect("allow"));
        }),
        ours_raw: Box::new(move |i| {
            let v: Vec<i64> = ours
                .key(format!("redkit:rl:r-tb:{{s{}}}", subject(i)))
                .arg(big)
                .arg(big)
                .arg(second_us)
                .arg(1)
                .invoke(&mut c1)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
        anchor_raw: Box::new(move |i| {
            let v: Vec<i64> = anchor
                .key(format!("a-tb:{}", subject(i)))
                .arg(big)
                .arg(big)
                .arg(1)
                .invoke(&mut c2)
                .expect("EVALSHA");
            std::hint::black_box(v);
        }),
    });

    // Concurrency: an acquire and a release per operation.
    let slots =
        ConcurrencyLimiter::new(&redis, "b-cc", BIG, Duration::from_secs(60)).expect("concurrency");
    let (mut c1, ours_acq) = raw(
        &client,
        include_str!("../src/ratelimit/concurrency_acquire.lua"),
    );
    let ours_rel = redis::Script::new(include_str!("../src/ratelimit/concurrency_release.lua"));
    ours_rel
        .prepare_invoke()
        .load(&mut c1)
        .expect("SCRIPT LOAD");
    let (mut c2, anchor_acq) = raw(&client, include_str!("anchors/concurrency_acquire.lua"));
    let anchor_rel = redis::Script::new(include_str!("anchors/concurrency_release.lua"));
    anchor_rel
        .prepare_invoke()
        .load(&mut c2)
        .expect("SCRIPT LOAD");
    limiters.push(Limiter {
        name: "Concurrency (acquire+release)",
        anchor: "Stripe-style",
        redkit: Box::new(move |i| {
            let slot = slots
                .try_acquire(&format!("s{}", subject(i)))
                .expect("acquire")
                .expect("a free slot");
            slot.release().expect("release");
        }),
        ours_raw: Box::new(move |i| {
            let key = format!("redkit:rl:r-cc:{{s{}}}", subject(i));
            let id = format!("{i:032x}");
            let v: Vec<i64> = ours_acq
                .key(&key)
                .key(format!("{key}:waiting"))
                .arg(big)
                .arg(60 * second_us)
                .arg(&id)
                .arg(0)
                .invoke(&mut c1)
                .expect("EVALSHA");
            let r: i64 = ours_rel
                .key(&key)
                .key(format!("{key}:wake"))
                .key(format!("{key}:waiting"))
                .arg(&id)
                .arg(2000)
                .invoke(&mut c1)
                .expect("EVALSHA");
            std::hint::black_box((v, r));
        }),
        anchor_raw: Box::new(move |i| {
            let key = format!("a-cc:{}", subject(i));
            let id = format!("{i:032x}");
            let v: i64 = anchor_acq
                .key(&key)
                .arg(big)
                .arg(60_000)
                .arg(&id)
                .invoke(&mut c2)
                .expect("EVALSHA");
            let r: i64 = anchor_rel
                .key(&key)
                .arg(&id)
                .invoke(&mut c2)
                .expect("EVALSHA");
            std::hint::black_box((v, r));
        }),
    });

    // Warm up every side (scripts loaded, pool filled).
    for l in limiters.iter_mut() {
        for i in 0..BLOCK {
            (l.redkit)(i);
            (l.ours_raw)(i);
            (l.anchor_raw)(i);
        }
    }

    let mut report = Report::new(
        "ratelimit",
        "limiters: our scripts vs the anchors' (both raw), and through redkit vs our script raw",
    );
    report.param("decisions_per_side", ops);
    report.param("block", BLOCK);
    report.param("gcra_anchor", anchor_name);
    println!(
        "({ops} decisions per side in blocks of {BLOCK}, one thread; ratio = median of \
         per-block ratios, > 1 means the first side is faster)"
    );
    for l in limiters.iter_mut() {
        let (o, t, r) = common::compare_blocks(&mut l.ours_raw, &mut l.anchor_raw, blocks, BLOCK);
        report.throughput(
            &format!("{}: our script vs {} (raw)", l.name, l.anchor),
            " /s",
            o,
            t,
            r,
            Target::RatioAtLeast(TARGET_SERVER),
        );
        let (o, t, r) = common::compare_blocks(&mut l.redkit, &mut l.ours_raw, blocks, BLOCK);
        report.throughput(
            &format!("  {}: through redkit vs raw", l.name),
            " /s",
            o,
            t,
            r,
            Target::RatioAtLeast(TARGET_CLIENT),
        );
    }

    // Reference: two limits at once, all or nothing, against the two anchors one after the
    // other (which is neither atomic nor all or nothing).
    let g = Gcra::new(
        &redis,
        "m-gcra",
        GcraLimit::new(BIG, Duration::from_secs(1)),
    )
    .expect("gcra");
    let tb = TokenBucket::new(
        &redis,
        "m-tb",
        BucketLimit::new(BIG, BIG, Duration::from_secs(1)),
    )
    .expect("token bucket");
    let multi = MultiLimit::new(&redis);
    let mut multi_op: Op = Box::new(move |i| {
        let s = format!("s{}", subject(i));
        let d = multi.allow_n(&[g.part(&s), tb.part(&s)], 1).expect("multi");
        std::hint::black_box(d);
    });
    let (mut c, gcra_anchor) = raw(&client, include_str!("anchors/gcra.lua"));
    let tb_anchor = redis::Script::new(include_str!("anchors/token_bucket.lua"));
    tb_anchor
        .prepare_invoke()
        .load(&mut c)
        .expect("SCRIPT LOAD");
    let mut two_anchors: Op = Box::new(move |i| {
        let a: redis::Value = gcra_anchor
            .key(format!("rate:m-gcra:{}", subject(i)))
            .arg(big)
            .arg(big)
            .arg(1.0)
            .arg(1)
            .invoke(&mut c)
            .expect("EVALSHA");
        let b: Vec<i64> = tb_anchor
            .key(format!("m-tb:{}", subject(i)))
            .arg(big)
            .arg(big)
            .arg(1)
            .invoke(&mut c)
            .expect("EVALSHA");
        std::hint::black_box((a, b));
    });
    for i in 0..BLOCK {
        multi_op(i);
        two_anchors(i);
    }
    let (o, t, r) = common::compare_blocks(&mut multi_op, &mut two_anchors, blocks, BLOCK);
    report.throughput(
        "  reference: MultiLimit (GCRA + bucket) vs 2 anchors, raw",
        " /s",
        o,
        t,
        r,
        Target::None,
    );

    memory(&server, &redis, &mut report);
    report.finish();
}

/// Memory of one subject at a steady 1,000 requests per window.
fn memory(server: &RedisServer, redis: &redkit::Redis, report: &mut Report) {
    let mut admin = server.admin().expect("admin");
    let per_window = GcraLimit::new(1000, Duration::from_secs(60));
    let g = Gcra::new(redis, "mem-gcra", per_window).expect("gcra");
    for _ in 0..1000 {
        g.allow("subject").expect("allow");
    }
    let window = WindowLimit::new(1000, Duration::from_secs(60));
    let log = SlidingLog::new(redis, "mem-log", window).expect("log");
    let sw = SlidingWindow::new(redis, "mem-sw", window).expect("sliding window");
    let fw = FixedWindow::new(redis, "mem-fw", window).expect("fixed window");
    let tb = TokenBucket::new(
        redis,
        "mem-tb",
        BucketLimit::new(1000, 1000, Duration::from_secs(60)),
    )
    .expect("token bucket");
    let cc = ConcurrencyLimiter::new(redis, "mem-cc", 1000, Duration::from_secs(60))
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
        ("GCRA", g.key("subject")),
        ("SlidingLog", log.key("subject")),
        ("SlidingWindow", sw.key("subject")),
        ("FixedWindow", fw.key("subject")),
        ("TokenBucket", tb.key("subject")),
        ("Concurrency (1,000 held)", cc.key("subject")),
    ];
    for (name, key) in keys {
        let bytes = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query::<Option<i64>>(&mut admin)
            .expect("MEMORY USAGE")
            .unwrap_or(0);
        report.figure(
            &format!("memory per subject, {name} (1,000 requests)"),
            bytes as f64,
            "bytes",
        );
    }
    drop(held);
}
