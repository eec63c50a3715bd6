//! Cache and batch helpers against the raw `redis` crate, measured in the same run on the same
//! server, reported as ratios.
//!
//! `cargo bench --bench cache`. Two comparisons:
//!
//! 1. **Multi-get**: `Cache::mget` of 100 keys (one `MGET` through the pool, values decoded)
//!    against 100 single `GET`s on a raw `redis::Connection` (target: at least 20x faster).
//!    A raw `MGET` of the same keys is shown for reference.
//! 2. **Bulk write**: `Bulk::write` of 1,000,000 keys in pipelined chunks of 1000 against a
//!    raw `redis::pipe()` of 1000 `SET`s per round trip on a raw connection (target: at
//!    least 0.95 of its throughput). Both sides write the same keys, block by block, taking
//!    turns at going first.
//!
//! Sides alternate in blocks; each ratio is the median of per-block ratios. `REDKIT_BENCH_KEYS`
//! sets the bulk size (default 1,000,000), `REDKIT_BENCH_BLOCKS` the multi-get blocks (30).
//! Results go to stdout and to the `cache` section of `target/redkit-bench.json`.

mod common;

use std::time::{Duration, Instant};

use common::{env_usize, median, Report, Target};

use redkit::cache::Cache;
use redkit::scan::Bulk;
use redkit::testing::RedisServer;

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn main() {
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let mut raw = client.get_connection().expect("raw connection");
    let mut report = Report::new(
        "cache",
        "Cache::mget vs single GETs, Bulk::write vs a raw pipeline (same run, interleaved blocks, median ratios)",
    );

    // 1. Multi-get of 100 keys.
    let cache = Cache::new(&redis, "bench").expect("cache");
    let items: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("k{i}"), vec![b'x'; 64]))
        .collect();
    cache
        .mset(&items, Some(Duration::from_secs(3600)))
        .expect("mset");
    let names: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
    let full: Vec<String> = names.iter().map(|k| cache.key(k)).collect();
    let iters = 20;
    let blocks = env_usize("REDKIT_BENCH_BLOCKS", 30);
    let (mut t_kit, mut t_raw, mut t_mget) = (0.0, 0.0, 0.0);
    let (mut ratios, mut mget_ratios) = (Vec::new(), Vec::new());
    for b in 0..blocks + 2 {
        let kit = timed(|| {
            for _ in 0..iters {
                let got: Vec<Option<Vec<u8>>> = cache.mget(&names).expect("mget");
                assert!(got.iter().all(Option::is_some));
            }
        });
        let singles = timed(|| {
            for _ in 0..iters {
                for k in &full {
                    let v: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut raw).expect("GET");
                    assert!(v.is_some());
                }
            }
        });
        let mget = timed(|| {
            for _ in 0..iters {
                let v: Vec<Option<Vec<u8>>> =
                    redis::cmd("MGET").arg(&full).query(&mut raw).expect("MGET");
                assert_eq!(v.len(), 100);
            }
        });
        if b < 2 {
            continue; // warm-up
        }
        t_kit += kit;
        t_raw += singles;
        t_mget += mget;
        ratios.push(singles / kit);
        mget_ratios.push(mget / kit);
    }
    let rounds = (blocks * iters) as f64;
    let per_sec = |t: f64| rounds / t;
    report.param("mget_rounds_per_side", blocks * iters);
    report.throughput(
        "Cache::mget of 100 keys vs 100 raw GETs",
        " rounds/s",
        per_sec(t_kit),
        per_sec(t_raw),
        median(ratios),
        Target::RatioAtLeast(20.0),
    );
    report.throughput(
        "Cache::mget of 100 keys vs raw MGET (reference)",
        " rounds/s",
        per_sec(t_kit),
        per_sec(t_mget),
        median(mget_ratios),
        Target::None,
    );

    // 2. Bulk write.
    let total = env_usize("REDKIT_BENCH_KEYS", 1_000_000);
    let chunk = 1000;
    let block = 50_000.min(total);
    let nblocks = total.div_ceil(block);
    let bulk = Bulk::new(&redis).chunk_size(chunk);
    let value = "0123456789abcdef";
    let (mut t_kit, mut t_raw, mut ratios) = (0.0, 0.0, Vec::new());
    for b in 0..nblocks {
        let range = b * block..((b + 1) * block).min(total);
        let kit = || {
            timed(|| {
                let n = bulk
                    .write(range.clone().map(|i| (format!("bulk:{i}"), value)), |_| {})
                    .expect("bulk write");
                assert_eq!(n as usize, range.len());
            })
        };
        let mut base = || {
            timed(|| {
                let mut pipe = redis::pipe();
                for (j, i) in range.clone().enumerate() {
                    pipe.set(format!("bulk:{i}"), value).ignore();
                    if (j + 1) % chunk == 0 {
                        pipe.exec(&mut raw).expect("raw pipeline");
                        pipe.clear();
                    }
                }
                if !pipe.is_empty() {
                    pipe.exec(&mut raw).expect("raw pipeline");
                }
            })
        };
        // Take turns at going first (the first writer creates the keys).
        let (k, r) = if b % 2 == 0 {
            let k = kit();
            (k, base())
        } else {
            let r = base();
            (kit(), r)
        };
        t_kit += k;
        t_raw += r;
        ratios.push(r / k);
    }
    let rate = |t: f64| total as f64 / t;
    report.param("bulk_keys", total);
    report.param("bulk_chunk", chunk);
    report.throughput(
        &format!("Bulk::write of {total} keys vs raw pipeline (chunks of {chunk})"),
        " keys/s",
        rate(t_kit),
        rate(t_raw),
        median(ratios),
        Target::RatioAtLeast(0.95),
    );
    report.finish();
}
