//! The near cache against network reads through the handle, measured in the same run on the
//! same server.
//!
//! `cargo bench --bench nearcache`. Four scenarios:
//!
//! 1. **Hit vs network `GET`**: `NearCache::get` of a cached key against `GET` of the same
//!    key through the handle (`Redis::query`, a pooled connection), one thread, alternating
//!    blocks; the ratio is the median of per-block speedups (target: at least 50x).
//! 2. **Miss path vs no near cache**: `NearCache::get` of keys that are never cached when read
//!    (a near cache of 1,000 entries reading 200,000 keys in turn: every read is a miss that
//!    is tracked, stored and later evicted) against `GET` of the same keys through the handle
//!    (target: at least 0.95 of its throughput, i.e. at most 5% overhead).
//! 3. **Zipf workload**: 100,000 keys read with Zipf(0.99) popularity through a near cache of
//!    10,000 entries: the hit ratio, and the throughput against the handle alone.
//! 4. **Memory per entry**: resident memory of the process per entry with 200,000 entries of
//!    16-byte keys and 32-byte values, and the bytes the near cache counts per entry.
//!
//! `REDKIT_BENCH_BLOCKS` sets the blocks per comparison (default 20), `REDKIT_BENCH_OPS` the
//! operations per block (default 2000 network operations; hits run 100 times as many).
//! Results go to stdout and to the `nearcache` section of `target/redkit-bench.json`.

mod common;

use std::time::{Duration, Instant};

use common::{compare_blocks, env_usize, Op, Report, Target};
use redkit::near::NearCache;
use redkit::testing::RedisServer;
use redkit::Redis;

fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A Zipf(s) sampler over `n` ranks (inverse CDF by binary search).
fn zipf(n: usize, s: f64, seed: u64) -> impl FnMut() -> usize {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / (k as f64).powf(s);
        cdf.push(total);
    }
    let mut next = rng(seed);
    move || {
        let u = (next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        cdf.partition_point(|&c| c < u).min(n - 1)
    }
}

fn get(redis: &Redis, key: &str) -> Option<Vec<u8>> {
    redis.query(redis::cmd("GET").arg(key)).expect("GET")
}

fn main() {
    let server = RedisServer::builder()
        .config("enable-debug-command", "yes")
        .start()
        .expect("start redis-server");
    let redis = common::connect(&server);
    let mut admin = server.admin().expect("admin");
    // key:0 .. key:199999 with 32-byte values.
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(200_000)
        .arg("key")
        .arg(32)
        .exec(&mut admin)
        .expect("populate");
    let blocks = env_usize("REDKIT_BENCH_BLOCKS", 20);
    let ops = env_usize("REDKIT_BENCH_OPS", 2000);
    let mut report = Report::new(
        "nearcache",
        "near cache hits and misses vs GET through the handle (same run, interleaved blocks, median ratios)",
    );
    report.param("blocks", blocks);
    report.param("ops_per_block", ops);

    // 1. A hit against a network GET.
    {
        let near = NearCache::new(&redis).expect("near cache");
        let _: Option<Vec<u8>> = near.get("key:1").expect("get");
        let start = Instant::now();
        while near.stats().hits == 0 && start.elapsed() < Duration::from_secs(5) {
            let _: Option<Vec<u8>> = near.get("key:1").expect("get");
        }
        // Hits are ~100x cheaper: time 100 of them per network GET so that blocks are of a
        // similar length; the ratio is per operation.
        let per = 100;
        let n2 = near.clone();
        let mut ours: Op = Box::new(move |_| {
            for _ in 0..per {
                let v: Option<Vec<u8>> = n2.get("key:1").expect("get");
                assert!(v.is_some());
            }
        });
        let r2 = redis.clone();
        let mut theirs: Op = Box::new(move |_| {
            for _ in 0..per {
                assert!(get(&r2, "key:1").is_some());
            }
        });
        let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, ops / per);
        let s = near.stats();
        assert!(s.misses <= 2 + s.flushes, "hits only: {s:?}");
        report.throughput(
            "near-cache hit vs GET through the handle",
            "/s",
            o * per as f64,
            t * per as f64,
            ratio,
            Target::RatioAtLeast(50.0),
        );
    }

    // 2. The miss path against no near cache.
    {
        let near = NearCache::builder(&redis)
            .max_entries(1000)
            .build()
            .expect("near cache");
        let keys: Vec<String> = (0..200_000).map(|i| format!("key:{i}")).collect();
        let (k1, k2) = (keys.clone(), keys);
        let n2 = near.clone();
        let mut ours: Op = Box::new(move |i| {
            let v: Option<Vec<u8>> = n2.get(&k1[i % k1.len()]).expect("get");
            assert!(v.is_some());
        });
        let r2 = redis.clone();
        let mut theirs: Op = Box::new(move |i| {
            assert!(get(&r2, &k2[(i + 100_000) % k2.len()]).is_some());
        });
        let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, ops);
        let s = near.stats();
        report.throughput(
            "near-cache miss path vs GET through the handle",
            "/s",
            o,
            t,
            ratio,
            Target::RatioAtLeast(0.95),
        );
        report.figure(
            "miss path: share of reads that were hits",
            s.hit_ratio() * 100.0,
            "%",
        );
    }

    // 3. A Zipf workload.
    {
        let near = NearCache::builder(&redis)
            .max_entries(10_000)
            .build()
            .expect("near cache");
        let mut pick = zipf(100_000, 0.99, 42);
        let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i}")).collect();
        // Warm up, then measure.
        for _ in 0..50_000 {
            let _: Option<Vec<u8>> = near.get(&keys[pick()]).expect("get");
        }
        let before = near.stats();
        let mut pick2 = zipf(100_000, 0.99, 43);
        let (k1, k2) = (keys.clone(), keys);
        let n2 = near.clone();
        let mut ours: Op = Box::new(move |_| {
            let _: Option<Vec<u8>> = n2.get(&k1[pick()]).expect("get");
        });
        let r2 = redis.clone();
        let mut theirs: Op = Box::new(move |_| {
            let _ = get(&r2, &k2[pick2()]);
        });
        let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, ops);
        let after = near.stats();
        let hits = after.hits - before.hits;
        let misses = after.misses - before.misses;
        report.figure(
            "Zipf(0.99), 100k keys, 10k entries: hit ratio",
            hits as f64 / (hits + misses).max(1) as f64 * 100.0,
            "%",
        );
        report.throughput(
            "Zipf(0.99) through the near cache vs the handle",
            "/s",
            o,
            t,
            ratio,
            Target::None,
        );
    }

    // 4. Memory per entry.
    {
        let before = rss();
        let near = NearCache::builder(&redis)
            .max_entries(200_000)
            .max_bytes(1 << 30)
            .build()
            .expect("near cache");
        for batch in 0..200 {
            let keys: Vec<String> = (batch * 1000..(batch + 1) * 1000)
                .map(|i| format!("key:{i:012}"))
                .collect();
            // 16-byte keys ("key:" and 12 digits): written first, 32-byte values.
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("SET").arg(k).arg(&[b'v'; 32][..]).ignore();
            }
            pipe.query::<()>(&mut admin).expect("SET");
            let _: Vec<Option<Vec<u8>>> = near.mget(&keys).expect("mget");
        }
        let s = near.stats();
        let after = rss();
        if let (Some(b), Some(a)) = (before, after) {
            report.figure(
                "memory per entry (resident, 16 B key, 32 B value)",
                a.saturating_sub(b) as f64 / s.entries.max(1) as f64,
                "B",
            );
        }
        report.figure(
            "memory per entry (counted by the near cache)",
            s.bytes as f64 / s.entries.max(1) as f64,
            "B",
        );
    }
    report.finish();
}
