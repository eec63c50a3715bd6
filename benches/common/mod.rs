//! What every benchmark shares: settings from the environment, medians and percentiles, a
//! description of the machine, and the report: one line per scenario on stdout and one
//! section per benchmark in `target/redkit-bench.json` (merged, so `cargo bench` fills it
//! bench by bench; `cargo bench --bench report` renders it as the README's Markdown table).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redkit::testing::RedisServer;
use redkit::{ConfigBuilder, Redis};
use serde_json::{json, Map, Value};

/// A number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The element at `len / 2` of the sorted values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A config aimed at the bench's own server, otherwise the defaults.
pub fn config(server: &RedisServer) -> ConfigBuilder {
    ConfigBuilder::default()
        .host(server.host())
        .port(server.port())
}

/// A handle to the bench's own server with the default settings.
pub fn connect(server: &RedisServer) -> Redis {
    Redis::connect(config(server)).expect("connect")
}

/// The JSON file every bench writes its section into.
pub fn json_path() -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(dir).join("redkit-bench.json")
}

/// Cores, CPU model, kernel and redis-server version.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("{} {}", std::env::consts::OS, s.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.to_string());
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    json!({ "cores": cores, "cpu": cpu, "os": kernel, "redis_server": redis })
}

/// The 1-minute load average (`/proc/loadavg`), to tell a quiet run from a loaded one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What a scenario is measured against.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// redkit / baseline must be at least this (throughput).
    RatioAtLeast(f64),
    /// redkit - baseline must stay below this (latency).
    AddedBelow(Duration),
    /// redkit's own figure must stay below this (latency, time).
    Below(Duration),
    /// A reference row (a ceiling, a comparison point): no target.
    None,
}

/// The report of one bench.
pub struct Report {
    bench: &'static str,
    started: Instant,
    load_at_start: Option<f64>,
    params: Map<String, Value>,
    rows: Vec<Value>,
}

fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

impl Report {
    /// Starts the report of `bench`, printing its title.
    pub fn new(bench: &'static str, title: &str) -> Report {
        println!("== {bench}: {title}");
        println!(
            "{:<44} {:>14} {:>14} {:>9} {:>14} {:>6}",
            "scenario", "redkit", "baseline", "ratio", "target", "met"
        );
        Report {
            bench,
            started: Instant::now(),
            load_at_start: load_average(),
            params: Map::new(),
            rows: Vec::new(),
        }
    }

    /// Records a setting of the run (operations, samples...).
    pub fn param(&mut self, name: &str, value: impl Into<Value>) {
        self.params.insert(name.to_string(), value.into());
    }

    /// A throughput scenario: operations per second on both sides; `ratio` is the bench's
    /// own robust ratio (for example a median of per-block ratios), not necessarily the
    /// ratio of the two figures.
    pub fn throughput(
        &mut self,
        scenario: &str,
        unit: &str,
        redkit: f64,
        baseline: f64,
        ratio: f64,
        target: Target,
    ) {
        let met = match target {
            Target::RatioAtLeast(t) => Some(ratio >= t),
            _ => None,
        };
        let target_s = match target {
            Target::RatioAtLeast(t) => format!(">= {t}"),
            _ => "-".into(),
        };
        println!(
            "{:<44} {:>14} {:>14} {:>9.3} {:>14} {:>6}",
            scenario,
            format!("{}{unit}", fmt_rate(redkit)),
            format!("{}{unit}", fmt_rate(baseline)),
            ratio,
            target_s,
            met.map_or("-", |m| if m { "yes" } else { "NO" })
        );
        self.rows.push(json!({
            "scenario": scenario,
            "kind": "throughput",
            "unit": unit,
            "redkit": redkit,
            "baseline": baseline,
            "ratio": ratio,
            "target": target_s,
            "met": met,
        }));
    }

    /// A latency or duration scenario.
    pub fn latency(
        &mut self,
        scenario: &str,
        redkit: Duration,
        baseline: Option<Duration>,
        target: Target,
    ) {
        let added = baseline.map(|b| redkit.as_secs_f64() - b.as_secs_f64());
        let (met, target_s) = match target {
            Target::AddedBelow(t) => (
                added.map(|a| a < t.as_secs_f64()),
                format!("+< {}", fmt_duration(t)),
            ),
            Target::Below(t) => (Some(redkit < t), format!("< {}", fmt_duration(t))),
            _ => (None, "-".into()),
        };
        let added_s = added.map_or("-".to_string(), |a| {
            let sign = if a < 0.0 { "-" } else { "+" };
            format!("{sign}{}", fmt_duration(Duration::from_secs_f64(a.abs())))
        });
        println!(
            "{:<44} {:>14} {:>14} {:>9} {:>14} {:>6}",
            scenario,
            fmt_duration(redkit),
            baseline.map_or("-".to_string(), fmt_duration),
            added_s,
            target_s,
            met.map_or("-", |m| if m { "yes" } else { "NO" })
        );
        self.rows.push(json!({
            "scenario": scenario,
            "kind": "latency",
            "redkit_us": redkit.as_secs_f64() * 1e6,
            "baseline_us": baseline.map(|b| b.as_secs_f64() * 1e6),
            "added_us": added.map(|a| a * 1e6),
            "target": target_s,
            "met": met,
        }));
    }

    /// A figure with no baseline (memory, a count), shown as is.
    pub fn figure(&mut self, scenario: &str, value: f64, unit: &str) {
        println!(
            "{:<44} {:>14} {:>14} {:>9} {:>14} {:>6}",
            scenario,
            format!("{value:.1} {unit}"),
            "-",
            "-",
            "-",
            "-"
        );
        self.rows.push(json!({
            "scenario": scenario,
            "kind": "figure",
            "value": value,
            "unit": unit,
        }));
    }

    /// For a bench that makes its report after measuring: when it started, and the load
    /// average then (for the time and load columns).
    pub fn started_at(mut self, at: Instant, load: Option<f64>) -> Report {
        self.started = at;
        self.load_at_start = load;
        self
    }

    /// Writes the bench's section into `target/redkit-bench.json`, keeping the others.
    pub fn finish(self) {
        let took = self.started.elapsed().as_secs_f64();
        println!("== {} took {took:.1} s", self.bench);
        let path = json_path();
        let mut doc: Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        doc["machine"] = machine();
        if !doc["benches"].is_object() {
            doc["benches"] = json!({});
        }
        doc["benches"][self.bench] = json!({
            "measured_at_unix": now,
            "took_s": took,
            "load_average": [self.load_at_start, load_average()],
            "params": self.params,
            "rows": self.rows,
        });
        match serde_json::to_vec_pretty(&doc) {
            Ok(body) => {
                if let Err(e) = std::fs::write(&path, body) {
                    eprintln!("could not write {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("could not encode the report: {e}"),
        }
    }
}

/// Runs `redis-benchmark` (when installed) for GET and SET with `clients` clients against
/// the server on `port`; returns (test, requests per second) pairs.
pub fn redis_benchmark(port: u16, clients: usize, requests: usize) -> Vec<(String, f64)> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "get,set"])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &clients.to_string(),
            "-q",
        ])
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(['\r', '\n'])
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let rps: f64 = rest.split_whitespace().next()?.parse().ok()?;
            rest.contains("requests per second")
                .then(|| (name.trim().to_string(), rps))
        })
        .collect()
}

/// A measured operation: called with the operation's index.
pub type Op = Box<dyn FnMut(usize)>;

/// Runs `ours` and `theirs` in alternating blocks of `block` calls (which side goes first
/// alternates too); returns (ours per second, theirs per second, the median of the
/// per-block ratios theirs-time / ours-time).
pub fn compare_blocks(
    ours: &mut Op,
    theirs: &mut Op,
    blocks: usize,
    block: usize,
) -> (f64, f64, f64) {
    let mut ratios = Vec::with_capacity(blocks);
    let (mut total_ours, mut total_theirs) = (0.0, 0.0);
    for b in 0..blocks {
        let time = |f: &mut Op| {
            let start = Instant::now();
            for i in 0..block {
                f(b * block + i);
            }
            start.elapsed().as_secs_f64()
        };
        let (o, t) = if b % 2 == 0 {
            let o = time(ours);
            (o, time(theirs))
        } else {
            let t = time(theirs);
            (time(ours), t)
        };
        total_ours += o;
        total_theirs += t;
        ratios.push(t / o);
    }
    let n = (blocks * block) as f64;
    (n / total_ours, n / total_theirs, median(ratios))
}
