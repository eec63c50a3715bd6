//! SCAN-family iterators and bulk writes against a real server, including a connection cut
//! in the middle of a scan.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use redis::Commands;
use redkit::scan::{Bulk, Progress, ScanIter};
use redkit::testing::FaultProxy;
use redkit::{Redis, RetryPolicy};
use support::*;

#[test]
fn scan_over_100k_keys_survives_a_connection_cut() -> TestResult {
    let server = server();
    let direct = redis(&server);
    let written = Bulk::new(&direct)
        .chunk_size(5000)
        .write((0..100_000).map(|i| (format!("k:{i}"), i)), |_| {})?;
    assert_eq!(written, 100_000);
    // Through a proxy, with no retries in the handle: the iterator itself must resume.
    let proxy = FaultProxy::start_for(&server)?;
    let redis = Redis::connect(
        redkit::Config::builder()
            .host(proxy.host())
            .port(proxy.port())
            .retry(RetryPolicy::never()),
    )?;
    let mut it = ScanIter::<String>::keys(&redis)
        .pattern("k:*")
        .count(500)
        .resume_delay(Duration::from_millis(10));
    let mut seen = HashSet::new();
    let mut yielded = 0;
    let mut cut = false;
    let mut errors = 0;
    while let Some(key) = it.next() {
        match key {
            Ok(k) => {
                yielded += 1;
                seen.insert(k);
            }
            Err(e) => {
                errors += 1;
                assert!(errors < 3, "{e}");
            }
        }
        if !cut && yielded == 40_000 {
            assert_ne!(it.cursor(), 0, "mid-way");
            assert!(proxy.cut() > 0, "a connection was cut");
            cut = true;
        }
    }
    assert!(cut);
    assert_eq!(yielded, 100_000, "each key once");
    assert_eq!(seen.len(), 100_000);
    assert!(
        it.resumes() >= 1,
        "the cut was noticed and resumed from the cursor"
    );
    assert!(proxy.accepted() >= 2);
    Ok(())
}

#[test]
fn hash_set_and_sorted_set_scans_with_match_count_and_type() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    for i in 0..300 {
        admin.hset::<_, _, _, ()>("h", format!("f{i}"), i)?;
        admin.sadd::<_, _, ()>("s", format!("m{i}"))?;
        admin.zadd::<_, _, _, ()>("z", format!("z{i}"), i)?;
    }
    admin.set::<_, _, ()>("str", "x")?;
    let pairs: Vec<(String, i64)> = ScanIter::hash(&redis, "h")
        .count(50)
        .collect::<redkit::Result<_>>()?;
    assert_eq!(pairs.len(), 300);
    assert!(pairs.iter().all(|(f, v)| f == &format!("f{v}")));
    let members: HashSet<String> = ScanIter::set(&redis, "s")
        .pattern("m1*")
        .collect::<redkit::Result<_>>()?;
    // m1, m10..m19, m100..m199
    assert_eq!(members.len(), 1 + 10 + 100);
    let scored: Vec<(String, f64)> = ScanIter::sorted_set(&redis, "z")
        .pattern("z29*")
        .collect::<redkit::Result<_>>()?;
    let mut names: Vec<_> = scored.iter().map(|(m, _)| m.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["z29", "z290", "z291", "z292", "z293", "z294", "z295", "z296", "z297", "z298", "z299"]
    );
    assert!(scored
        .iter()
        .all(|(m, s)| m[1..].parse::<f64>().ok() == Some(*s)));
    let strings: Vec<String> = ScanIter::keys(&redis)
        .kind("string")
        .collect::<redkit::Result<_>>()?;
    assert_eq!(strings, ["str"]);
    Ok(())
}

#[test]
fn bulk_write_and_delete_report_progress() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut reports = Vec::new();
    let n = Bulk::new(&redis)
        .chunk_size(300)
        .ttl(Duration::from_secs(60))
        .write(
            (0..1000).map(|i| (format!("b:{i}"), format!("v{i}"))),
            |p| reports.push(p),
        )?;
    assert_eq!(n, 1000);
    let dones: Vec<u64> = reports.iter().map(|p| p.done).collect();
    assert_eq!(dones, [300, 600, 900, 1000]);
    assert!(reports.iter().all(|p| p.total == Some(1000)));
    let mut admin = admin(&server);
    assert_eq!(admin.get::<_, String>("b:999")?, "v999");
    let ttl: i64 = admin.pttl("b:0")?;
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");

    // Unknown total from a filtered iterator, unless given.
    let mut last = None;
    let keys = (0..1000).map(|i| format!("b:{i}")).filter(|_| true);
    let removed = Bulk::new(&redis)
        .chunk_size(400)
        .delete(keys.chain(["b:missing".to_owned()]), |p| last = Some(p))?;
    assert_eq!(removed, 1000);
    assert_eq!(
        last.map(|p: Progress| (p.done, p.total)),
        Some((1001, None))
    );
    let left: i64 = redis.query(&redis::cmd("DBSIZE"))?;
    assert_eq!(left, 0);

    // A key or value that is not one argument is a typed error, not a panic.
    let bad = Bulk::new(&redis).write([(("a", "b"), 1)], |_| {});
    assert!(matches!(bad, Err(redkit::Error::Config { .. })));
    Ok(())
}
