//! Monitoring: typed `INFO`, operations per second, `SLOWLOG`, `MEMORY USAGE`, keyspace
//! counts, client-side command metrics, and a sampling thread that sends snapshots on a
//! channel.
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::monitor::Monitor;
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! let monitor = Monitor::new(&redis);
//! let info = monitor.info()?;
//! println!(
//!     "{} up {:?}, {} clients, {} bytes used",
//!     // "Redis 7.0.15", "Valkey 8.1.8"
//!     info.server.version.map_or("?".to_owned(), |v| v.to_string()),
//!     info.server.uptime,
//!     info.clients.connected_clients.unwrap_or(0),
//!     info.memory.used_memory.unwrap_or(0),
//! );
//! // Any field, typed or not, by section and name:
//! let aof = info.get("persistence", "aof_enabled");
//!
//! for entry in monitor.slowlog_get(10)? {
//!     println!("{:?} took {:?}", entry.args, entry.duration);
//! }
//!
//! // A snapshot every 10 s on a channel; dropping the sampler stops its thread.
//! let sampler = monitor.sample_every(Duration::from_secs(10))?;
//! if let Ok(Ok(snapshot)) = sampler.snapshots().recv() {
//!     println!("{:?} ops/s", snapshot.ops_per_sec);
//! }
//!
//! // What this process sent, per command name: count, errors, round-trip percentiles.
//! for c in monitor.command_metrics() {
//!     println!("{}: {} calls, {} errors, p99 {:?}", c.name, c.count, c.errors, c.latency.p99);
//! }
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! [`Info::parse`] never fails: every line is kept by section (lines without a colon too) and
//! can be read with [`Info::get`], and the common fields are typed as `Option`s (absent is not
//! zero).
//!
//! The sampler ([`Monitor::sample_every`], thread `redkit-monitor`) sends a
//! `Result<`[`Snapshot`]`>` at once and then every interval: the `INFO`, operations per
//! second since the previous sample, the handle's [`Stats`] and its per-command metrics. The
//! channel is bounded: a reader that falls behind loses samples ([`Sampler::dropped`] counts
//! them) and never stalls the thread. Dropping the [`Sampler`] stops the thread.
//!
//! Per-command metrics ([`Monitor::command_metrics`], the same as
//! [`Redis::command_metrics`]) time each round trip on the connection, from the write to the
//! reply (`PIPELINE` for a pipeline or a transaction), without checkout or retries; the
//! percentiles cover the last one to two minutes. See [`metrics`](crate::metrics) for them
//! and for what the `metrics` feature exports.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Value;

use crate::error::{Error, Result};
use crate::metrics::CommandStats;
use crate::version::ServerVersion;
use crate::{Redis, Stats};

/// `INFO server`, typed.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerInfo {
    /// The server's flavor and real version: Redis, or Valkey with its `valkey_version`
    /// (`None` without a readable `redis_version`).
    pub version: Option<ServerVersion>,
    /// `redis_version`: on Valkey, the Redis version it is compatible with (7.2.4), not its
    /// own (see [`version`](Self::version) and [`valkey_version`](Self::valkey_version)).
    pub redis_version: Option<String>,
    /// `valkey_version` (Valkey 8 and later).
    pub valkey_version: Option<String>,
    /// `redis_mode`: `standalone`, `sentinel` or `cluster`.
    pub redis_mode: Option<String>,
    /// `os`.
    pub os: Option<String>,
    /// `process_id`.
    pub process_id: Option<u64>,
    /// `tcp_port`.
    pub tcp_port: Option<u16>,
    /// `uptime_in_seconds`.
    pub uptime: Option<Duration>,
}

/// `INFO clients`, typed.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientsInfo {
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
    /// `blocked_clients`.
    pub blocked_clients: Option<u64>,
    /// `maxclients`.
    pub maxclients: Option<u64>,
}

/// `INFO memory`, typed.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryInfo {
    /// `used_memory`, bytes.
    pub used_memory: Option<u64>,
    /// `used_memory_rss`, bytes.
    pub used_memory_rss: Option<u64>,
    /// `used_memory_peak`, bytes.
    pub used_memory_peak: Option<u64>,
    /// `maxmemory`, bytes (0: no limit).
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy`.
    pub maxmemory_policy: Option<String>,
    /// `mem_fragmentation_ratio`.
    pub mem_fragmentation_ratio: Option<f64>,
}

/// `INFO stats`, typed.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsInfo {
    /// `total_connections_received`.
    pub total_connections_received: Option<u64>,
    /// `total_commands_processed`.
    pub total_commands_processed: Option<u64>,
    /// `instantaneous_ops_per_sec` (the server's own estimate).
    pub instantaneous_ops_per_sec: Option<u64>,
    /// `rejected_connections`.
    pub rejected_connections: Option<u64>,
    /// `expired_keys`.
    pub expired_keys: Option<u64>,
    /// `evicted_keys`.
    pub evicted_keys: Option<u64>,
    /// `keyspace_hits`.
    pub keyspace_hits: Option<u64>,
    /// `keyspace_misses`.
    pub keyspace_misses: Option<u64>,
}

/// A connected replica, from `INFO replication` (`slave0:ip=...,port=...`).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaInfo {
    /// The replica's address.
    pub ip: String,
    /// The replica's port.
    pub port: Option<u16>,
    /// `state` (`online`, `wait_bgsave`...).
    pub state: Option<String>,
    /// The replication offset the replica acknowledged.
    pub offset: Option<i64>,
    /// Seconds since the replica's last acknowledgement.
    pub lag: Option<u64>,
}

/// `INFO replication`, typed.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicationInfo {
    /// `role`: `master` or `slave`.
    pub role: Option<String>,
    /// `connected_slaves`.
    pub connected_slaves: Option<u64>,
    /// `master_host` (on a replica).
    pub master_host: Option<String>,
    /// `master_port` (on a replica).
    pub master_port: Option<u16>,
    /// `master_link_status` (on a replica): `up` or `down`.
    pub master_link_status: Option<String>,
    /// `master_repl_offset`.
    pub master_repl_offset: Option<i64>,
    /// The connected replicas (on a primary).
    pub replicas: Vec<ReplicaInfo>,
}

/// One database of `INFO keyspace` (`db0:keys=10,expires=2,avg_ttl=5000`).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyspaceInfo {
    /// The database number.
    pub db: u32,
    /// Keys.
    pub keys: u64,
    /// Keys with a TTL.
    pub expires: u64,
    /// Average TTL of the keys with one (an estimate).
    pub avg_ttl: Duration,
}

/// The parsed reply of `INFO`: the common fields typed, and every field (known or not) as
/// text by section.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    /// The `server` section.
    pub server: ServerInfo,
    /// The `clients` section.
    pub clients: ClientsInfo,
    /// The `memory` section.
    pub memory: MemoryInfo,
    /// The `stats` section.
    pub stats: StatsInfo,
    /// The `replication` section.
    pub replication: ReplicationInfo,
    /// The `keyspace` section, by database.
    pub keyspace: Vec<KeyspaceInfo>,
    /// Every field, by lower-case section name (`""` for lines before any section header),
    /// then field name. A line without a colon is kept as a field with an empty value.
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Info {
    /// Parses `INFO` text. Never fails: what is not understood is kept in
    /// [`Info::sections`] and left out of the typed fields.
    ///
    /// ```
    /// let text = [
    ///     "# Server",
    ///     "redis_version:7.2.4",
    ///     "uptime_in_seconds:42",
    ///     "",
    ///     "# Keyspace",
    ///     "db0:keys=3,expires=1,avg_ttl=100",
    /// ]
    /// .join("\r\n");
    /// let info = redkit::monitor::Info::parse(&text);
    /// assert_eq!(info.server.redis_version.as_deref(), Some("7.2.4"));
    /// assert_eq!(info.server.version.unwrap().to_string(), "Redis 7.2.4");
    /// assert_eq!(info.keyspace[0].keys, 3);
    /// assert_eq!(info.get("server", "uptime_in_seconds"), Some("42"));
    /// ```
    pub fn parse(text: &str) -> Info {
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('#') {
                section = name.trim().to_ascii_lowercase();
                sections.entry(section.clone()).or_default();
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            sections
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let field = |s: &str, f: &str| sections.get(s).and_then(|m| m.get(f)).cloned();
        let num = |s: &str, f: &str| field(s, f).and_then(|v| v.parse::<u64>().ok());
        let server = ServerInfo {
            version: ServerVersion::from_info(text).ok(),
            redis_version: field("server", "redis_version"),
            valkey_version: field("server", "valkey_version"),
            redis_mode: field("server", "redis_mode"),
            os: field("server", "os"),
            process_id: num("server", "process_id"),
            tcp_port: field("server", "tcp_port").and_then(|v| v.parse().ok()),
            uptime: num("server", "uptime_in_seconds").map(Duration::from_secs),
        };
        let clients = ClientsInfo {
            connected_clients: num("clients", "connected_clients"),
            blocked_clients: num("clients", "blocked_clients"),
            maxclients: num("clients", "maxclients"),
        };
        let memory = MemoryInfo {
            used_memory: num("memory", "used_memory"),
            used_memory_rss: num("memory", "used_memory_rss"),
            used_memory_peak: num("memory", "used_memory_peak"),
            maxmemory: num("memory", "maxmemory"),
            maxmemory_policy: field("memory", "maxmemory_policy"),
            mem_fragmentation_ratio: field("memory", "mem_fragmentation_ratio")
                .and_then(|v| v.parse().ok()),
        };
        let stats = StatsInfo {
            total_connections_received: num("stats", "total_connections_received"),
            total_commands_processed: num("stats", "total_commands_processed"),
            instantaneous_ops_per_sec: num("stats", "instantaneous_ops_per_sec"),
            rejected_connections: num("stats", "rejected_connections"),
            expired_keys: num("stats", "expired_keys"),
            evicted_keys: num("stats", "evicted_keys"),
            keyspace_hits: num("stats", "keyspace_hits"),
            keyspace_misses: num("stats", "keyspace_misses"),
        };
        let replicas = sections
            .get("replication")
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        k.strip_prefix("slave")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .map(|(_, v)| {
                        let kv = pairs(v);
                        ReplicaInfo {
                            ip: kv.get("ip").cloned().unwrap_or_default(),
                            port: kv.get("port").and_then(|p| p.parse().ok()),
                            state: kv.get("state").cloned(),
                            offset: kv.get("offset").and_then(|p| p.parse().ok()),
                            lag: kv.get("lag").and_then(|p| p.parse().ok()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let replication = ReplicationInfo {
            role: field("replication", "role"),
            connected_slaves: num("replication", "connected_slaves"),
            master_host: field("replication", "master_host"),
            master_port: field("replication", "master_port").and_then(|v| v.parse().ok()),
            master_link_status: field("replication", "master_link_status"),
            master_repl_offset: field("replication", "master_repl_offset")
                .and_then(|v| v.parse().ok()),
            replicas,
        };
        let keyspace = sections
            .get("keyspace")
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let db = k.strip_prefix("db")?.parse().ok()?;
                        let kv = pairs(v);
                        let n = |f: &str| kv.get(f).and_then(|x| x.parse::<u64>().ok());
                        Some(KeyspaceInfo {
                            db,
                            keys: n("keys").unwrap_or(0),
                            expires: n("expires").unwrap_or(0),
                            avg_ttl: Duration::from_millis(n("avg_ttl").unwrap_or(0)),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Info {
            server,
            clients,
            memory,
            stats,
            replication,
            keyspace,
            sections,
        }
    }

    /// Any field as text, by section (case-insensitive) and name.
    pub fn get(&self, section: &str, field: &str) -> Option<&str> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .and_then(|m| m.get(field))
            .map(String::as_str)
    }

    /// Commands per second between an `earlier` sample and this one, taken `elapsed` apart
    /// (from `total_commands_processed`). `None` when a count is missing, went backwards (a
    /// restart) or `elapsed` is zero.
    pub fn ops_per_sec_since(&self, earlier: &Info, elapsed: Duration) -> Option<f64> {
        let now = self.stats.total_commands_processed?;
        let then = earlier.stats.total_commands_processed?;
        if now < then || elapsed.is_zero() {
            return None;
        }
        Some((now - then) as f64 / elapsed.as_secs_f64())
    }
}

impl FromStr for Info {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Info, Self::Err> {
        Ok(Info::parse(s))
    }
}

/// `a=1,b=2` into a map.
fn pairs(v: &str) -> BTreeMap<String, String> {
    v.split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// One `SLOWLOG GET` entry.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowlogEntry {
    /// The entry's unique id.
    pub id: u64,
    /// When the command ran (the server's clock).
    pub at: SystemTime,
    /// How long it ran on the server.
    pub duration: Duration,
    /// The command and its arguments (the server may shorten long ones).
    pub args: Vec<String>,
    /// The client's address, when the server says.
    pub client_addr: Option<String>,
    /// The client's name, when it has one.
    pub client_name: Option<String>,
}

impl SlowlogEntry {
    fn from_value(v: &Value) -> Option<SlowlogEntry> {
        let Value::Array(items) = v else {
            return None;
        };
        let int = |i: usize| match items.get(i) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            Value::VerbatimString { text, .. } => Some(text.clone()),
            _ => None,
        };
        let args = match items.get(3) {
            Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let opt_text = |i: usize| items.get(i).and_then(text).filter(|s| !s.is_empty());
        Some(SlowlogEntry {
            id: int(0)?,
            at: UNIX_EPOCH + Duration::from_secs(int(1)?),
            duration: Duration::from_micros(int(2)?),
            args,
            client_addr: opt_text(4),
            client_name: opt_text(5),
        })
    }
}

/// One sample of the [sampling thread](Monitor::sample_every), or of [`Monitor::snapshot`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the sample was taken.
    pub at: SystemTime,
    /// The server's `INFO`.
    pub info: Info,
    /// Commands per second on the server since the previous sample (`None` for the first).
    pub ops_per_sec: Option<f64>,
    /// The handle's own counters.
    pub client: Stats,
    /// The handle's per-command metrics.
    pub commands: Vec<CommandStats>,
}

/// Monitoring on a [`Redis`] handle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    redis: Redis,
}

impl Monitor {
    /// A monitor of the server `redis` talks to.
    pub fn new(redis: &Redis) -> Monitor {
        Monitor {
            redis: redis.unprefixed(),
        }
    }

    /// `INFO` (the default sections), parsed.
    pub fn info(&self) -> Result<Info> {
        let text: String = self.redis.query(&redis::cmd("INFO"))?;
        Ok(Info::parse(&text))
    }

    /// `INFO <section>` (`all`, `everything`, `commandstats`...), parsed.
    pub fn info_section(&self, section: &str) -> Result<Info> {
        let text: String = self.redis.query(redis::cmd("INFO").arg(section))?;
        Ok(Info::parse(&text))
    }

    /// Commands per second on the server, from two `INFO stats` samples `interval` apart
    /// (blocks for `interval`).
    pub fn ops_per_sec(&self, interval: Duration) -> Result<f64> {
        let first = self.info_section("stats")?;
        let start = Instant::now();
        std::thread::sleep(interval);
        let second = self.info_section("stats")?;
        second
            .ops_per_sec_since(&first, start.elapsed())
            .ok_or_else(|| Error::Decode {
                key: "INFO stats".to_owned(),
                reason: "total_commands_processed missing or went backwards".to_owned(),
            })
    }

    /// The `count` most recent slow commands (`SLOWLOG GET`).
    pub fn slowlog_get(&self, count: usize) -> Result<Vec<SlowlogEntry>> {
        let v: Value = self
            .redis
            .query(redis::cmd("SLOWLOG").arg("GET").arg(count))?;
        match v {
            Value::Array(entries) => Ok(entries
                .iter()
                .filter_map(SlowlogEntry::from_value)
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// How many entries the slow log holds (`SLOWLOG LEN`).
    pub fn slowlog_len(&self) -> Result<u64> {
        self.redis.query(redis::cmd("SLOWLOG").arg("LEN"))
    }

    /// Empties the slow log (`SLOWLOG RESET`).
    pub fn slowlog_reset(&self) -> Result<()> {
        self.redis
            .query_idempotent(redis::cmd("SLOWLOG").arg("RESET"))
    }

    /// The bytes a key and its value take in memory (`MEMORY USAGE`), `None` when it does not
    /// exist.
    pub fn memory_usage(&self, key: &str) -> Result<Option<u64>> {
        self.redis.query(redis::cmd("MEMORY").arg("USAGE").arg(key))
    }

    /// Keys per database (`INFO keyspace`).
    pub fn keyspace(&self) -> Result<Vec<KeyspaceInfo>> {
        Ok(self.info_section("keyspace")?.keyspace)
    }

    /// Keys in the handle's database (`DBSIZE`).
    pub fn dbsize(&self) -> Result<u64> {
        self.redis.query(&redis::cmd("DBSIZE"))
    }

    /// The handle's per-command metrics (see [`Redis::command_metrics`]).
    pub fn command_metrics(&self) -> Vec<CommandStats> {
        self.redis.command_metrics()
    }

    /// One snapshot now (without `ops_per_sec`: that needs a previous sample).
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            at: SystemTime::now(),
            info: self.info()?,
            ops_per_sec: None,
            client: self.redis.stats(),
            commands: self.redis.command_metrics(),
        })
    }

    /// Starts a thread (`redkit-monitor`) that takes a [`Snapshot`] at once and then every
    /// `interval`, and sends it (or the error of a failed sample) on a bounded channel: a
    /// listener that falls behind loses samples (counted by [`Sampler::dropped`]), it never
    /// blocks the thread. Dropping the [`Sampler`] stops the thread and joins it. The thread
    /// holds a clone of the handle: the handle stays open while a sampler runs.
    pub fn sample_every(&self, interval: Duration) -> Result<Sampler> {
        if interval.is_zero() {
            return Err(Error::config("monitor.interval", "must not be zero"));
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (tx, rx) = crossbeam_channel::bounded(16);
        let dropped = Arc::new(AtomicU64::new(0));
        let monitor = self.clone();
        let lost = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("redkit-monitor".to_owned())
            .spawn(move || sample_loop(&monitor, interval, &stop_rx, &tx, &lost))
            .map_err(|e| Error::Background {
                thread: "redkit-monitor",
                reason: format!("could not start: {e}"),
            })?;
        Ok(Sampler {
            rx,
            stop: Some(stop_tx),
            thread: Some(thread),
            dropped,
        })
    }
}

fn sample_loop(
    monitor: &Monitor,
    interval: Duration,
    stop: &Receiver<()>,
    tx: &Sender<Result<Snapshot>>,
    dropped: &AtomicU64,
) {
    let mut previous: Option<(Instant, Info)> = None;
    let mut next = Instant::now();
    loop {
        let taken = Instant::now();
        let sample = monitor.snapshot().map(|mut s| {
            if let Some((at, before)) = &previous {
                s.ops_per_sec = s.info.ops_per_sec_since(before, taken - *at);
            }
            previous = Some((taken, s.info.clone()));
            s
        });
        if let Err(e) = tx.try_send(sample) {
            if e.is_disconnected() {
                return;
            }
            dropped.fetch_add(1, Relaxed);
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        match stop.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The sampling thread of [`Monitor::sample_every`]: receive snapshots from
/// [`Sampler::snapshots`]; drop it (or call [`Sampler::stop`]) to stop the thread.
#[derive(Debug)]
pub struct Sampler {
    rx: Receiver<Result<Snapshot>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl Sampler {
    /// The channel of snapshots (or sampling errors). It disconnects when the thread stops.
    pub fn snapshots(&self) -> &Receiver<Result<Snapshot>> {
        &self.rx
    }

    /// Snapshots lost because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Stops the thread and waits for it (at most one sample in progress, bounded by the
    /// handle's response timeout). Fails when the thread panicked.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.stop.take());
        let joined = self.thread.take().map_or(Ok(()), |t| {
            crate::util::threads::join_within(t, SAMPLER_STOP_BOUND)
        });
        joined.map_err(|reason| Error::Background {
            thread: "redkit-monitor",
            reason,
        })
    }
}

/// How long dropping a [`Sampler`] waits for its thread at most; a sample in flight then
/// ends by itself within the handle's call deadline.
pub const SAMPLER_STOP_BOUND: Duration = Duration::from_millis(100);

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowlog_entries_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Int(7),
            Value::Int(1_700_000_000),
            Value::Int(1500),
            Value::Array(vec![bulk("SET"), bulk("k"), bulk("v")]),
            bulk("127.0.0.1:5000"),
            bulk(""),
        ]);
        let e = SlowlogEntry::from_value(&v).unwrap();
        assert_eq!(e.id, 7);
        assert_eq!(e.duration, Duration::from_micros(1500));
        assert_eq!(e.args, ["SET", "k", "v"]);
        assert_eq!(e.client_addr.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(e.client_name, None);
        assert!(SlowlogEntry::from_value(&Value::Nil).is_none());
    }
}
