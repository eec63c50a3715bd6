//! The near cache's memory stays within its bounds with 1,000,000 distinct keys read
//! through it (in a test binary of its own, so that the process's resident memory is the
//! near cache's).

mod support;

use std::time::{Duration, Instant};

use redkit::near::NearCache;
use redkit::testing::RedisServer;
use support::*;

const KEYS: usize = 1_000_000;
const BATCH: usize = 1000;
const MAX_BYTES: usize = 32 * 1024 * 1024;
const MAX_ENTRIES: usize = 500_000;

/// Resident memory of this process, in bytes (Linux).
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn a_million_distinct_keys_stay_within_the_bounds() -> TestResult {
    init_logs();
    // DEBUG POPULATE: the launcher enables DEBUG where the server has the setting (7.0 on;
    // before, DEBUG is always allowed).
    let server = RedisServer::start()?;
    let mut admin = admin(&server);
    // key:0 .. key:999999, 32-byte values.
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(KEYS)
        .arg("key")
        .arg(32)
        .exec(&mut admin)?;
    let redis = redis(&server);
    // The bytes bound binds with a million keys; the entries bound with a quarter of them.
    for (keys, max_entries, max_bytes) in
        [(KEYS, MAX_ENTRIES, MAX_BYTES), (KEYS / 10, 20_000, 1 << 30)]
    {
        let near = NearCache::builder(&redis)
            .max_entries(max_entries)
            .max_bytes(max_bytes)
            .build()?;
        let before = rss();
        let started = Instant::now();
        let mut peak_bytes = 0;
        let mut peak_entries = 0;
        for batch in 0..keys / BATCH {
            let keys: Vec<String> = (batch * BATCH..(batch + 1) * BATCH)
                .map(|i| format!("key:{i}"))
                .collect();
            let values: Vec<Option<Vec<u8>>> = near.mget(&keys)?;
            assert!(values.iter().all(Option::is_some));
            let s = near.stats();
            peak_bytes = peak_bytes.max(s.bytes);
            peak_entries = peak_entries.max(s.entries);
            assert!(s.bytes <= max_bytes as u64, "{s:?}");
            assert!(s.entries <= max_entries as u64, "{s:?}");
        }
        let took = started.elapsed();
        let s = near.stats();
        let after = rss();
        eprintln!(
            "{keys} keys in {took:?}: {s:?}; peak {peak_entries} entries, {peak_bytes} bytes \
             (bound {max_entries} entries, {max_bytes} bytes); resident {before:?} -> {after:?}"
        );
        assert_eq!(s.stored as usize, keys, "{s:?}");
        assert!(s.evictions as usize >= keys - max_entries, "{s:?}");
        // The bound that binds is nearly reached.
        let full =
            (peak_bytes as f64 / max_bytes as f64).max(peak_entries as f64 / max_entries as f64);
        assert!(full > 0.9, "{full}");
        // The accounting is honest: what the process holds grew by about the bytes counted
        // (the allocator's fragmentation on top, from a million entries evicted).
        if let (Some(before), Some(after)) = (before, after) {
            let grown = after.saturating_sub(before);
            eprintln!(
                "resident memory grew {:.2}x the bytes counted ({} per entry)",
                grown as f64 / peak_bytes as f64,
                grown as u64 / peak_entries.max(1)
            );
            assert!(
                grown as f64
                    <= max_bytes.min(peak_bytes as usize) as f64 * 1.25 + 8.0 * 1024.0 * 1024.0,
                "resident memory grew by {grown} bytes for {peak_bytes} counted"
            );
        }
        drop(near);
        assert!(took < Duration::from_secs(60), "{took:?}");
    }
    Ok(())
}
