//! Shared helpers for the integration tests: every test starts its own `redis-server`
//! (through `redkit::testing`) on a free loopback port.
#![allow(dead_code)]

use std::time::Duration;

use redkit::testing::RedisServer;
use redkit::{Config, ConfigBuilder, Redis};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Installs a logger once (set RUST_LOG=redkit=debug to see the library's logs).
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A fresh server.
pub fn server() -> RedisServer {
    init_logs();
    RedisServer::start().expect("start redis-server")
}

/// A builder aimed at `server`, with short timeouts suited to tests.
pub fn builder(server: &RedisServer) -> ConfigBuilder {
    Config::builder()
        .host(server.host())
        .port(server.port())
        .timeouts(
            redkit::Timeouts::default()
                .connect(Duration::from_secs(2))
                .response(Duration::from_secs(2))
                .checkout(Duration::from_secs(2)),
        )
}

/// A connected handle to `server` with default settings.
pub fn redis(server: &RedisServer) -> Redis {
    Redis::connect(builder(server)).expect("connect")
}

/// A direct admin connection (for CONFIG SET, DEBUG SLEEP, SCRIPT FLUSH, CLIENT LIST...).
pub fn admin(server: &RedisServer) -> redis::Connection {
    server.admin().expect("admin connection")
}

/// Runs the ignored test `name` of the current test binary in a child process (a second
/// client process for contention tests), with `REDKIT_CHILD_URL=url` and the other variables
/// given, its stdout piped.
pub fn spawn_child(
    name: &str,
    url: &str,
    vars: &[(&str, String)],
) -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--ignored", "--exact", name, "--nocapture"])
        .env("REDKIT_CHILD_URL", url)
        .stdout(std::process::Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn()
}

/// Waits for a child from [`spawn_child`] and returns the number it printed as `ADMITTED=n`.
pub fn child_admitted(child: std::process::Child) -> TestResult<u64> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("child failed: {out:?}").into());
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("ADMITTED="))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no count from the child: {stdout}").into())
}

/// Calls `limiter.allow(subject)` from `threads` threads for `run`; returns how many were
/// admitted (the contention tests, in this process and in their child process).
pub fn hammer<L: redkit::ratelimit::RateLimiter + Sync>(
    limiter: &L,
    subject: &str,
    threads: usize,
    run: Duration,
) -> u64 {
    let admitted = std::sync::atomic::AtomicU64::new(0);
    let until = std::time::Instant::now() + run;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while std::time::Instant::now() < until {
                    if limiter.allow(subject).expect("allow").is_allowed() {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

/// A builder aimed at `cluster` (every node a seed), with short timeouts suited to tests.
pub fn cluster_builder(cluster: &redkit::testing::RedisCluster) -> ConfigBuilder {
    init_logs();
    let b = Config::builder().cluster(cluster.addrs()).timeouts(
        redkit::Timeouts::default()
            .connect(Duration::from_secs(2))
            .response(Duration::from_secs(2))
            .checkout(Duration::from_secs(2)),
    );
    match cluster.password() {
        Some(p) => b.password(p),
        None => b,
    }
}

/// A fresh cluster: 3 masters, 3 replicas.
pub fn cluster() -> redkit::testing::RedisCluster {
    init_logs();
    redkit::testing::RedisCluster::start().expect("start a cluster")
}

/// How late this machine wakes a sleeping thread right now (the worst of a few 1 ms sleeps),
/// for tests that check a deadline: on a loaded 2-core machine a thread can wait tens of
/// milliseconds for a core, and a deadline that held is then seen late by the test. Added
/// to the slack a timing assertion allows.
pub fn scheduling_delay() -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        worst = worst.max(start.elapsed().saturating_sub(Duration::from_millis(1)));
    }
    worst
}
