//! The near cache's coherence under load, against a real server: 8 reader threads read
//! 1,000 hot keys through the near cache while writers on other connections (a thread here
//! and a second process) update them; then the same across a server restart, a `CLIENT
//! KILL` of the tracking connection and a black hole between the near cache and the server.
//!
//! Every write goes through one script that gives each key increasing versions (across
//! processes). The near cache's test hooks say when each invalidation (and each flush) was
//! applied. For every read the test knows, at the moment the read starts:
//! - `acked[k]`: the newest version of `k` acknowledged to this process's writer;
//! - `must[k]`: the newest version acknowledged *before an invalidation (or flush) that has
//!   been applied*.
//!
//! A read that returns less than `must[k]` is a stale read after an invalidation was
//! delivered: there must be none. A read that returns less than `acked[k]` is stale only by
//! the invalidation delivery delay (allowed, counted). The delay itself is measured from
//! each acknowledged write to the application of the next invalidation of its key.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redkit::near::NearCache;
use redkit::testing::{wait_until, FaultProxy, ProxyMode, RedisServer};
use redkit::{Protocol, Redis};
use support::*;

const KEYS: usize = 1000;
const READERS: usize = 8;
const WAIT: Duration = Duration::from_secs(15);
/// Versions are `era << 40 | counter`: a restart starts a new era.
const ERA_SHIFT: u32 = 40;

const WRITE: &str = "local n = redis.call('INCR', KEYS[2]) \
    local v = tonumber(ARGV[1]) * 1099511627776 + n \
    redis.call('SET', KEYS[1], string.format('%.0f', v)) return n";

fn key(k: usize) -> String {
    format!("hot:{k}")
}

fn index_of(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key.strip_prefix(b"hot:")?)
        .ok()?
        .parse()
        .ok()
        .filter(|&k| k < KEYS)
}

/// What the hooks, the writer and the readers share.
struct Truth {
    acked: Vec<AtomicU64>,
    must: Vec<AtomicU64>,
    /// `acked` as the hook saw it before applying an invalidation (one tracking thread).
    snap: Vec<AtomicU64>,
    /// `acked` before a flush, and the era it was taken in.
    flush_snap: Mutex<(u64, Vec<u64>)>,
    /// When the invalidation of each probe key was applied.
    probes: Mutex<std::collections::HashMap<Vec<u8>, Instant>>,
    /// Bumped when the truth is reset (a restart loses the data).
    era: AtomicU64,
    flushes_seen: AtomicU64,
    /// Set while a fault is on (stale reads then are counted apart).
    fault: AtomicBool,
}

impl Truth {
    fn new() -> Arc<Truth> {
        let v = || (0..KEYS).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Truth {
            acked: v(),
            must: v(),
            snap: v(),
            flush_snap: Mutex::new((0, vec![0; KEYS])),
            probes: Mutex::default(),
            era: AtomicU64::new(0),
            flushes_seen: AtomicU64::new(0),
            fault: AtomicBool::new(false),
        })
    }

    fn reset(&self) {
        // Not while a flush hook is between its two halves.
        let _snap = self.flush_snap.lock().expect("snap");
        for k in 0..KEYS {
            self.acked[k].store(0, SeqCst);
            self.must[k].store(0, SeqCst);
        }
        self.era.fetch_add(1, SeqCst);
    }
}

#[derive(Debug, Default)]
struct Counts {
    reads: u64,
    errors: u64,
    stale_after_delivery: u64,
    stale_within_delay: u64,
    /// Stale reads during a fault, before the loss was noticed (the silence bound).
    stale_before_notice: u64,
}

struct Scenario {
    protocol: Protocol,
    /// The handle's timeouts: short in the fault scenarios (reads into a black hole fail
    /// fast), roomy otherwise (a loaded machine).
    timeout: Duration,
    through_proxy: bool,
    child: bool,
    run: Duration,
}

fn near_cache(redis: &Redis, truth: &Arc<Truth>, protocol: Protocol) -> NearCache {
    let (t1, t2) = (truth.clone(), truth.clone());
    NearCache::builder(redis)
        .protocol(protocol)
        .max_entries(10_000)
        .heartbeat(Duration::from_millis(50))
        .max_silence(Duration::from_millis(400))
        .on_invalidate(move |key, applied| {
            if key.starts_with(b"probe:") {
                if applied {
                    t1.probes
                        .lock()
                        .expect("probes")
                        .insert(key.to_vec(), Instant::now());
                }
                return;
            }
            let Some(k) = index_of(key) else { return };
            if applied {
                t1.must[k].fetch_max(t1.snap[k].load(SeqCst), SeqCst);
            } else {
                t1.snap[k].store(t1.acked[k].load(SeqCst), SeqCst);
            }
        })
        .on_flush(move |done| {
            let mut snap = t2.flush_snap.lock().expect("snap");
            let era = t2.era.load(SeqCst);
            if done {
                if snap.0 == era {
                    for (k, v) in snap.1.iter().enumerate() {
                        t2.must[k].fetch_max(*v, SeqCst);
                    }
                }
                t2.flushes_seen.fetch_add(1, SeqCst);
            } else {
                snap.0 = era;
                for (k, v) in snap.1.iter_mut().enumerate() {
                    *v = t2.acked[k].load(SeqCst);
                }
            }
        })
        .build()
        .expect("near cache")
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

/// Runs readers and writers for `s.run`, with `fault` called on the main thread midway;
/// returns the counts and the delivery delays.
fn run(
    server: &mut RedisServer,
    s: Scenario,
    fault: impl FnOnce(&mut RedisServer, &Truth, &FaultProxy, &NearCache),
) -> TestResult<(Counts, Vec<Duration>, u64)> {
    let proxy = FaultProxy::start_for(server)?;
    let mut b = builder(server).protocol(s.protocol).timeouts(
        redkit::Timeouts::default()
            .connect(s.timeout)
            .response(s.timeout)
            .checkout(s.timeout),
    );
    if s.through_proxy {
        b = b.host(proxy.host()).port(proxy.port());
    }
    let redis = Redis::connect(b)?;
    let truth = Truth::new();
    let near = near_cache(&redis, &truth, s.protocol);
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));

    let child = if s.child {
        Some(spawn_child(
            "coherence_child_writer",
            &url,
            &[("REDKIT_CHILD_SECS", format!("{}", s.run.as_secs_f64()))],
        )?)
    } else {
        None
    };

    let (counts, delays, child_writes) = std::thread::scope(|scope| -> TestResult<_> {
        let prober = {
            let (truth, stop, near, url) = (&truth, &stop, &near, url.clone());
            scope.spawn(move || probe(truth, stop, near, &url))
        };
        let writer = {
            let (truth, stop, url) = (&truth, &stop, url.clone());
            scope.spawn(move || {
                let script = redis::Script::new(WRITE);
                let mut next = rng(7);
                let mut con: Option<redis::Connection> = None;
                while !stop.load(SeqCst) {
                    let c = match con.as_mut() {
                        Some(c) => c,
                        None => match redis::Client::open(url.as_str())
                            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                        {
                            Ok(c) => con.insert(c),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        },
                    };
                    let k = (next() % KEYS as u64) as usize;
                    let era = truth.era.load(SeqCst);
                    let r: redis::RedisResult<u64> = script
                        .key(key(k))
                        .key(format!("ver:{k}"))
                        .arg(era)
                        .invoke(c);
                    match r {
                        Ok(n) => {
                            if truth.era.load(SeqCst) == era {
                                truth.acked[k].fetch_max(era << ERA_SHIFT | n, SeqCst);
                            }
                        }
                        Err(_) => con = None,
                    }
                    // About 2,000 writes a second.
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (truth, stop, near) = (&truth, &stop, &near);
                scope.spawn(move || {
                    let mut next = rng(1000 + i as u64);
                    let mut c = Counts::default();
                    while !stop.load(SeqCst) {
                        let k = (next() % KEYS as u64) as usize;
                        let era = truth.era.load(SeqCst);
                        let must = truth.must[k].load(SeqCst);
                        let acked = truth.acked[k].load(SeqCst);
                        let flushes = truth.flushes_seen.load(SeqCst);
                        let got: redkit::Result<Option<String>> = near.get(key(k));
                        c.reads += 1;
                        let v = match got {
                            Ok(v) => v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
                            Err(_) => {
                                c.errors += 1;
                                continue;
                            }
                        };
                        if truth.era.load(SeqCst) != era {
                            continue;
                        }
                        if v < must {
                            c.stale_after_delivery += 1;
                        } else if v < acked {
                            if truth.flushes_seen.load(SeqCst) == flushes && faulty(truth) {
                                c.stale_before_notice += 1;
                            } else {
                                c.stale_within_delay += 1;
                            }
                        }
                    }
                    c
                })
            })
            .collect();

        std::thread::sleep(s.run / 3);
        fault(server, &truth, &proxy, &near);
        std::thread::sleep(s.run / 3);
        stop.store(true, SeqCst);
        writer.join().map_err(|_| "writer panicked")?;
        let mut delays = prober.join().map_err(|_| "prober panicked")?;
        delays.sort();
        let mut total = Counts::default();
        for r in readers {
            let c = r.join().map_err(|_| "reader panicked")?;
            total.reads += c.reads;
            total.errors += c.errors;
            total.stale_after_delivery += c.stale_after_delivery;
            total.stale_within_delay += c.stale_within_delay;
            total.stale_before_notice += c.stale_before_notice;
        }
        let child_writes = match child {
            Some(child) => child_admitted(child)?,
            None => 0,
        };
        Ok((total, delays, child_writes))
    })?;

    let stats = near.stats();
    eprintln!("near stats: {stats:?}");
    assert!(stats.hits > 0 && stats.invalidations > 0, "{stats:?}");
    Ok((counts, delays, child_writes))
}

/// Measures the invalidation delivery delay: reads a fresh key through the near cache (the
/// server now tracks it), writes it on another connection, and times the acknowledgement to
/// the application of its invalidation. Every 5 ms while the test runs.
fn probe(truth: &Truth, stop: &AtomicBool, near: &NearCache, url: &str) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut con: Option<redis::Connection> = None;
    let mut n = 0u64;
    while !stop.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
        let c = match con.as_mut() {
            Some(c) => c,
            None => match redis::Client::open(url)
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            {
                Ok(c) => con.insert(c),
                Err(_) => continue,
            },
        };
        n += 1;
        let key = format!("probe:{n}");
        if near.get::<Option<String>>(&key).is_err() {
            continue;
        }
        let set: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(1).query(c);
        if set.is_err() {
            con = None;
            continue;
        }
        let acked = Instant::now();
        // A read that fell back to the handle is not tracked: no invalidation comes.
        let until = acked + Duration::from_millis(300);
        while Instant::now() < until {
            if let Some(t) = truth.probes.lock().expect("probes").remove(key.as_bytes()) {
                delays.push(t.saturating_duration_since(acked));
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    delays
}

fn faulty(truth: &Truth) -> bool {
    truth.fault.load(SeqCst)
}

fn report(name: &str, counts: &Counts, delays: &[Duration], child: u64) {
    let pct = |p: f64| {
        if delays.is_empty() {
            Duration::ZERO
        } else {
            delays[((delays.len() - 1) as f64 * p).round() as usize]
        }
    };
    eprintln!(
        "{name}: {counts:?}; child writes {child}; invalidation delivery delay over {} probes: \
         p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        pct(0.5),
        pct(0.99),
        delays.last().copied().unwrap_or_default()
    );
}

fn check(counts: &Counts, delays: &[Duration]) {
    assert_eq!(counts.stale_after_delivery, 0, "{counts:?}");
    assert!(counts.reads > 10_000, "{counts:?}");
    assert!(!delays.is_empty());
}

#[test]
fn coherence_under_load_resp3() -> TestResult {
    let mut server = server();
    let s = Scenario {
        protocol: Protocol::Resp3,
        timeout: Duration::from_secs(2),
        through_proxy: false,
        child: true,
        run: Duration::from_secs(3),
    };
    let (counts, delays, child) = run(&mut server, s, |_, _, _, _| {})?;
    report("steady, RESP3", &counts, &delays, child);
    check(&counts, &delays);
    assert!(child > 0, "the second process wrote nothing");
    assert_eq!(counts.errors, 0);
    Ok(())
}

#[test]
fn coherence_under_load_resp2() -> TestResult {
    let mut server = server();
    let s = Scenario {
        protocol: Protocol::Resp2,
        timeout: Duration::from_secs(2),
        through_proxy: false,
        child: true,
        run: Duration::from_secs(2),
    };
    let (counts, delays, child) = run(&mut server, s, |_, _, _, _| {})?;
    report("steady, RESP2", &counts, &delays, child);
    check(&counts, &delays);
    assert_eq!(counts.errors, 0);
    Ok(())
}

#[test]
fn coherence_across_a_server_restart() -> TestResult {
    let mut server = server();
    let s = Scenario {
        protocol: Protocol::Resp3,
        timeout: Duration::from_millis(500),
        through_proxy: false,
        child: false,
        run: Duration::from_secs(3),
    };
    let (counts, delays, _) = run(&mut server, s, |server, truth, _, near| {
        let flushes = near.stats().flushes;
        server.kill().expect("kill");
        wait_until(WAIT, "the loss to be noticed", || {
            near.stats().flushes > flushes
        })
        .expect("noticed");
        // The restarted server has lost every key: a new era of versions.
        truth.reset();
        server.restart().expect("restart");
        wait_until(WAIT, "tracking after the restart", || near.is_tracking()).expect("tracking");
    })?;
    report("server restart", &counts, &delays, 0);
    check(&counts, &delays);
    Ok(())
}

#[test]
fn coherence_across_a_kill_of_the_tracking_connection() -> TestResult {
    // Finds the tracking connection by the readers' `redir=` in CLIENT LIST (6.2 on).
    support::require!(6, 2, "CLIENT LIST redir=");
    let mut server = server();
    let mut admin = admin(&server);
    let s = Scenario {
        protocol: Protocol::Resp2,
        timeout: Duration::from_millis(500),
        through_proxy: false,
        child: true,
        run: Duration::from_secs(3),
    };
    let (counts, delays, child) = run(&mut server, s, |_, _, _, near| {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut admin)
            .expect("client list");
        let tracker = clients
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("redir="))
                    .filter(|r| *r != "-1")
                    .map(str::to_owned)
            })
            .expect("a reader with a redirect");
        let (flushes, connects) = (near.stats().flushes, near.stats().connects);
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&tracker)
            .exec(&mut admin)
            .expect("kill");
        wait_until(WAIT, "the loss to be noticed", || {
            near.stats().flushes > flushes
        })
        .expect("noticed");
        wait_until(WAIT, "tracking again", || {
            near.is_tracking() && near.stats().connects > connects
        })
        .expect("tracking");
    })?;
    report(
        "CLIENT KILL of the tracking connection",
        &counts,
        &delays,
        child,
    );
    check(&counts, &delays);
    Ok(())
}

#[test]
fn coherence_across_a_black_hole() -> TestResult {
    let mut server = server();
    let s = Scenario {
        protocol: Protocol::Resp3,
        timeout: Duration::from_millis(500),
        through_proxy: true,
        child: false,
        run: Duration::from_secs(3),
    };
    let (counts, delays, _) = run(&mut server, s, |_, truth, proxy, near| {
        let before = truth.flushes_seen.load(SeqCst);
        truth.fault.store(true, SeqCst);
        let started = Instant::now();
        proxy.set_mode(ProxyMode::BlackHole);
        wait_until(WAIT, "the silence to be noticed", || {
            truth.flushes_seen.load(SeqCst) > before
        })
        .expect("noticed");
        let noticed = started.elapsed();
        eprintln!("black hole noticed after {noticed:?}");
        // Hits stop within max_silence of the last confirmation, the loss is noticed then.
        assert!(noticed < Duration::from_secs(2), "{noticed:?}");
        std::thread::sleep(Duration::from_millis(300));
        proxy.set_mode(ProxyMode::Pass);
        truth.fault.store(false, SeqCst);
        wait_until(WAIT, "tracking after the black hole", || near.is_tracking()).expect("tracking");
    })?;
    report("black hole", &counts, &delays, 0);
    check(&counts, &delays);
    Ok(())
}

/// The second process of the coherence tests: writes random hot keys (era 0) for
/// `REDKIT_CHILD_SECS` seconds and prints how many as `ADMITTED=n`.
#[test]
#[ignore = "run by the coherence tests as their second process"]
fn coherence_child_writer() -> TestResult {
    let url = std::env::var("REDKIT_CHILD_URL")?;
    let secs: f64 = std::env::var("REDKIT_CHILD_SECS")?.parse()?;
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_connection()?;
    let script = redis::Script::new(WRITE);
    let mut next = rng(99);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        let k = (next() % KEYS as u64) as usize;
        let _: u64 = script
            .key(key(k))
            .key(format!("ver:{k}"))
            .arg(0)
            .invoke(&mut con)?;
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("ADMITTED={n}");
    Ok(())
}
