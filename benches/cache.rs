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
//! sets the bulk size (default 1,000,000). Results go to stdout and to
//! `target/redkit-bench-cache.json`.

use std::time::{Duration, Instant};

use redkit::cache::Cache;
use redkit::scan::Bulk;
use redkit::testing::RedisServer;
use redkit::{Config, Redis};

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

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

struct Row {
    name: &'static str,
    redkit: f64,
    raw: f64,
    ratio: f64,
    target: f64,
    unit: &'static str,
}

fn main() {
    let server = RedisServer::start().expect("start redis-server");
    let config = Config::builder()
        .host(server.host())
        .port(server.port())
        .build()
        .expect("config");
    let redis = Redis::connect(config).expect("connect");
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let mut raw = client.get_connection().expect("raw connection");
    let mut rows = Vec::new();

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
    let (mut t_kit, mut t_raw, mut t_mget, mut ratios) = (0.0, 0.0, 0.0, Vec::new());
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
    }
    let n = (blocks * iters) as f64;
    let per = |t: f64| t / n * 1e6;
    println!(
        "multi-get of 100 keys ({} rounds per side, interleaved)",
        blocks * iters
    );
    println!("  redkit Cache::mget       {:>8.1} us/round", per(t_kit));
    println!("  raw 100 single GETs      {:>8.1} us/round", per(t_raw));
    println!(
        "  raw MGET (reference)     {:>8.1} us/round   (redkit/raw MGET time: {:.2})",
        per(t_mget),
        t_kit / t_mget
    );
    let ratio = median(ratios);
    println!("  speed-up vs single GETs: {ratio:.1}x (target >= 20x)");
    rows.push(Row {
        name: "mget100_vs_100_gets",
        redkit: per(t_kit),
        raw: per(t_raw),
        ratio,
        target: 20.0,
        unit: "us_per_round",
    });

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
    let ratio = median(ratios);
    println!("bulk write of {total} keys in chunks of {chunk} ({nblocks} blocks of {block}, sides alternating)");
    println!("  redkit Bulk::write       {:>10.0} keys/s", rate(t_kit));
    println!("  raw redis pipeline       {:>10.0} keys/s", rate(t_raw));
    println!("  ratio redkit/raw: {ratio:.3} (target >= 0.95)");
    rows.push(Row {
        name: "bulk_write_vs_raw_pipeline",
        redkit: rate(t_kit),
        raw: rate(t_raw),
        ratio,
        target: 0.95,
        unit: "keys_per_s",
    });
    write_json(&rows);
}

fn write_json(rows: &[Row]) {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("redkit-bench-cache.json");
    let body: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"scenario\": \"{}\", \"redkit\": {:.1}, \"baseline\": {:.1}, \"unit\": \"{}\", \"ratio\": {:.4}, \"target\": {}}}",
                r.name, r.redkit, r.raw, r.unit, r.ratio, r.target
            )
        })
        .collect();
    let json = format!("[\n{}\n]\n", body.join(",\n"));
    if let Err(e) = std::fs::write(&path, json) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
