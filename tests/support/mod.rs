//! Shared helpers for the integration tests: every test starts its own `redis-server`
//! (through `redkit::testing`) on a free loopback port.
#![allow(dead_code)]

use std::time::Duration;

use std::io::Write as _;

use redkit::testing::{RedisServer, ServerBinary};
use redkit::version::Feature;
use redkit::{Config, ConfigBuilder, Redis};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Installs a logger once (set RUST_LOG=redkit=debug to see the library's logs).
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// The server binary the tests run (`REDKIT_REDIS_SERVER`, or the one in `PATH`).
pub fn binary() -> ServerBinary {
    ServerBinary::find().expect("a redis-server binary")
}

/// Prints `skipped: <test>: <why>` straight to stderr (past the test harness' capture, so it
/// shows in every run; `scripts/test-servers.sh` counts these lines).
pub fn skip(why: &str) {
    note("skipped", why);
}

fn note(what: &str, why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let _ = writeln!(std::io::stderr(), "{what}: {test}: {why}");
}

/// Why the server binary cannot run a test of `feature`, if it cannot.
fn lacks(feature: Feature) -> Option<String> {
    let binary = binary();
    (!binary.supports(feature)).then(|| {
        format!(
            "needs {feature} ({}), the server is {}",
            feature.needs(),
            binary.version()
        )
    })
}

/// Whether the server binary has `feature`; if not, prints why the test is skipped (the test
/// then returns at once: see [`require!`]).
pub fn server_has(feature: Feature) -> bool {
    lacks(feature).map(|why| skip(&why)).is_none()
}

/// For a test that runs everywhere but has a part that needs `feature`: whether the server
/// has it; if not, prints `part skipped: <test>: <why>` (not counted as a skipped test).
pub fn part_needs(feature: Feature) -> bool {
    lacks(feature)
        .map(|why| note("part skipped", &why))
        .is_none()
}

/// Whether the server binary is compatible with Redis `major.minor` (every Valkey is with
/// 7.2), for launcher settings such as `sentinel sentinel-pass` (6.2); if not, prints why the
/// test is skipped.
pub fn server_at_least(major: u16, minor: u16, what: &str) -> bool {
    let binary = binary();
    let (a, b, _) = binary.version().redis_compatible();
    if (a, b) >= (major, minor) {
        return true;
    }
    skip(&format!(
        "needs {what} (Redis {major}.{minor} or later, or Valkey), the server is {}",
        binary.version()
    ));
    false
}

/// Whether the server binary was built with TLS; if not, prints why the test is skipped.
pub fn server_has_tls() -> bool {
    let binary = binary();
    if binary.has_tls() {
        return true;
    }
    skip(&format!(
        "needs TLS, and this {} was built without it",
        binary.version()
    ));
    false
}

/// Returns `Ok(())` from the test at once, after printing why, when the server lacks what it
/// needs: `require!(tls)`, `require!(Feature::ShardedPubSub)`, `require!(6, 2, "what")`.
#[allow(unused_macros)]
macro_rules! require {
    (tls) => {
        if !$crate::support::server_has_tls() {
            return Ok(());
        }
    };
    ($major:literal, $minor:literal, $what:expr) => {
        if !$crate::support::server_at_least($major, $minor, $what) {
            return Ok(());
        }
    };
    ($feature:expr) => {
        if !$crate::support::server_has($feature) {
            return Ok(());
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require;

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
