//! Client-side metrics per command name, recorded by every pooled connection of a handle
//! ([`Redis::command_metrics`](crate::Redis::command_metrics)), and what goes to the
//! [`metrics`](https://docs.rs/metrics) facade with the `metrics` feature.
//!
//! ## The `metrics` feature
//!
//! With the feature on, every handle reports to whatever recorder the program installed
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, StatsD...). Install the recorder
//! **before** creating handles: each handle registers its series when it is created (and a
//! command's series when it first sends that command), then updates them with one atomic
//! operation each. Without the feature nothing of this is compiled.
//!
//! Every series carries `server` (`host:port`, the socket path, `sentinel/<master name>` or
//! `cluster/<first seed>`) and, when the handle has a [client
//! name](crate::ConfigBuilder::client_name), `client`.
//!
//! Recorded as they happen:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `redkit_commands_total` | counter | `command` | commands sent, by name (`GET`; `PIPELINE` for a pipeline or transaction, once per round trip); every attempt counts |
//! | `redkit_command_errors_total` | counter | `command`, `error_class` | of those, the ones that failed: an error reply or no reply, by [`ErrorClass::as_str`](crate::ErrorClass::as_str) (`timeout`, `connection`, `command`...) |
//! | `redkit_command_duration_seconds` | histogram | `command` | round trip on the connection (write to reply; no checkout, no retries) |
//! | `redkit_call_duration_seconds` | histogram | | calls through the handle as the caller saw them: checkout, attempts and backoff included |
//! | `redkit_subscriber_dropped_total` | counter | | pub/sub messages a [`Subscriber`](crate::pubsub::Subscriber) dropped under backpressure |
//! | `redkit_queue_depth` | gauge | `kind`, `queue` | a queue's depth when it was last read: `kind` `list` ([`ListQueue::len`](crate::ListQueue::len), ready items), `delayed` ([`Delayed::len`](crate::queue::Delayed::len)), `stream` (unread jobs, the group's lag, else the length), `stream_pending`, `stream_delayed`, `stream_dead` ([`StreamQueue::stats`](crate::StreamQueue::stats)); `queue` is the key |
//!
//! Published from the handle's counters every heartbeat beat (each
//! [interval](crate::HeartbeatConfig::interval)) and on every [`Redis::stats`](crate::Redis::stats)
//! call (counters as absolute values):
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `redkit_errors_total` | counter | `error_class` | errors returned to callers ([`Stats::errors`](crate::Stats::errors)) |
//! | `redkit_retries_total` | counter | | attempts that were retries |
//! | `redkit_reconnections_total` | counter | | times the heartbeat reconnected after losing the server |
//! | `redkit_breaker_state` | gauge | | the circuit breaker: 0 closed, 1 half-open, 2 open |
//! | `redkit_breaker_opened_total` | counter | | times the breaker opened |
//! | `redkit_breaker_rejected_total` | counter | | calls refused while it was open |
//! | `redkit_up` | gauge | | 1 while the heartbeat reaches the server, 0 while it is down |
//! | `redkit_pool_connections` | gauge | | open pooled connections |
//! | `redkit_pool_idle_connections` | gauge | | of those, idle |
//! | `redkit_pool_in_use_connections` | gauge | | of those, checked out |
//! | `redkit_pool_max_connections` | gauge | | the pool's maximum size |
//! | `redkit_pool_waiting` | gauge | | callers waiting for a connection |
//! | `redkit_pool_connections_created_total` | counter | | pooled connections opened |
//! | `redkit_pool_connections_closed_total` | counter | | pooled connections closed |
//! | `redkit_pool_connect_failures_total` | counter | | failed attempts to open one |
//! | `redkit_pool_checkouts_total` | counter | | successful checkouts |
//! | `redkit_pool_checkout_timeouts_total` | counter | | checkouts that timed out |
//! | `redkit_dedicated_connections` | gauge | | [dedicated connections](crate::Redis::dedicated) open |
//! | `redkit_transaction_conflicts_total` | counter | | transaction attempts aborted by a changed watched key |
//! | `redkit_events_dropped_total` | counter | | events lost by slow listeners |
//!
//! ```no_run
//! # #[cfg(feature = "metrics")] {
//! // Any recorder: here the one of metrics-exporter-prometheus, installed first.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! let redis = redkit::Redis::connect("redis://127.0.0.1/?client_name=orders")?;
//! let _: Option<String> = redis.query(&redis::cmd("GET").arg("k"))?;
//! // redkit_commands_total{server="127.0.0.1:6379",client="orders",command="GET"} 1
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The `tracing` feature
//!
//! With the `tracing` feature, every call through the handle ([`Redis::query`](crate::Redis::query),
//! `redis::Commands` on the handle, pipelines, transactions, scripts, [`Redis::run`](crate::Redis::run))
//! runs inside one span named `redis.command` at level INFO, with the fields of the
//! OpenTelemetry database conventions (what `tracing-opentelemetry` turns into a client span):
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | the operation name (`redis` for a closure) |
//! | `otel.kind` | `client` |
//! | `db.system`, `db.system.name` | `redis` |
//! | `db.operation.name` | the command name (`GET`), `PIPELINE`, `MULTI` (atomic pipelines and transactions), `EVALSHA` (scripts); absent for `Redis::run` |
//! | `db.operation.batch.size` | commands in a pipeline |
//! | `db.namespace` | the database number |
//! | `server.address`, `server.port` | where the call goes (the current Sentinel master, the first Cluster seed, the configured address; a unix socket has no port) |
//! | `redkit.call` | `command`, `pipeline`, `transaction`, `script` or `run` |
//! | `redkit.attempts` | attempts made (1 without retries) |
//! | `error.type` | on failure: the [`ErrorClass`] (`timeout`...) |
//! | `otel.status_code` | `ERROR` on failure |
//! | `redkit.delivery` | on failure: `not_sent`, `unknown` or `answered` ([`Delivery`]) |
//! | `db.response.status_code` | on an error reply: the server's code (`WRONGTYPE`, `NOSCRIPT`...) |
//!
//! Arguments and values are never recorded. The span is entered while the call runs, so
//! redkit's own `log` lines (and your own spans inside `Redis::run`) nest under it. Without
//! a subscriber that wants it, a span costs one interest check; without the feature,
//! nothing. The `log` output is the same with or without these features.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redis::Value;

use crate::error::{Delivery, Error, ErrorClass, Result};
use crate::telemetry::{CommandExport, Export};
use crate::util::histogram::{Histogram, Latency};

/// At most this many distinct names are tracked; later ones count under `OTHER`.
const MAX_NAMES: usize = 256;
/// Names are upper-cased into a buffer of this size (longer names are cut).
const NAME_LEN: usize = 32;
/// The window of the per-command latency percentiles.
const WINDOW: Duration = Duration::from_secs(60);

/// The metrics of one command name, from [`Redis::command_metrics`](crate::Redis::command_metrics).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandStats {
    /// The command name, upper case (`GET`, `EVALSHA`...); `PIPELINE` for pipelines and
    /// transactions (one per round trip); `OTHER` once 256 names are tracked.
    pub name: String,
    /// Commands sent since the handle was created (each attempt counts).
    pub count: u64,
    /// Of those, how many failed: an error reply, or no reply (connection error, timeout).
    pub errors: u64,
    /// Round-trip latency on the connection (write to reply, without checkout or retries),
    /// over the last one to two minutes.
    pub latency: Latency,
}

struct Metric {
    count: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
    /// The same, for the `metrics` facade (nothing without the feature).
    export: CommandExport,
}

impl Metric {
    fn new(export: CommandExport) -> Metric {
        Metric {
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::new(WINDOW),
            export,
        }
    }
}

/// What a command's result says for its metrics: whether it failed (an error, or an error
/// reply), and of what class (asked only when the `metrics` feature exports it).
pub(crate) trait Outcome {
    /// Whether the command failed.
    fn failed(&self) -> bool;
    /// The class of the failure, if it failed.
    fn failure(&self) -> Option<ErrorClass>;
}

fn reply_class(v: &Value) -> Option<ErrorClass> {
    match v {
        Value::ServerError(e) => {
            Some(Error::from_redis(e.clone().into(), Delivery::Answered).class())
        }
        _ => None,
    }
}

impl Outcome for Result<Value> {
    fn failed(&self) -> bool {
        !matches!(self, Ok(v) if !matches!(v, Value::ServerError(_)))
    }

    fn failure(&self) -> Option<ErrorClass> {
        match self {
            Ok(v) => reply_class(v),
            Err(e) => Some(e.class()),
        }
    }
}

impl Outcome for Result<Vec<Value>> {
    fn failed(&self) -> bool {
        !matches!(self, Ok(vs) if !vs.iter().any(|v| matches!(v, Value::ServerError(_))))
    }

    fn failure(&self) -> Option<ErrorClass> {
        match self {
            Ok(vs) => vs.iter().find_map(reply_class),
            Err(e) => Some(e.class()),
        }
    }
}

/// Per-command counters and latency histograms. Recording takes a shared read lock (no I/O
/// under it) except the first time a name is seen.
pub(crate) struct CommandMetrics {
    names: RwLock<HashMap<Box<[u8]>, Metric>>,
    export: Export,
}

impl std::fmt::Debug for CommandMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandMetrics")
            .field("names", &self.names.read().len())
            .finish_non_exhaustive()
    }
}

impl CommandMetrics {
    /// Metrics that also feed `export`.
    pub(crate) fn new(export: Export) -> CommandMetrics {
        CommandMetrics {
            names: RwLock::new(HashMap::new()),
            export,
        }
    }

    /// Records one command (or pipeline) named `name` that took `took` and ended with
    /// `outcome`.
    pub(crate) fn record(&self, name: &[u8], took: Duration, outcome: &impl Outcome) {
        let failed = outcome.failed();
        let mut buf = [0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN);
        for (b, c) in buf.iter_mut().zip(&name[..n]) {
            *b = c.to_ascii_uppercase();
        }
        let name = &buf[..n];
        let add = |m: &Metric| {
            m.count.fetch_add(1, Relaxed);
            if failed {
                m.errors.fetch_add(1, Relaxed);
            }
            m.latency.record(took);
            m.export
                .record(took, if failed { outcome.failure() } else { None });
        };
        if let Some(m) = self.names.read().get(name) {
            add(m);
            return;
        }
        let mut names = self.names.write();
        let key: &[u8] = if names.len() < MAX_NAMES || names.contains_key(name) {
            name
        } else {
            b"OTHER"
        };
        let export = &self.export;
        add(names
            .entry(key.into())
            .or_insert_with(|| Metric::new(export.command(&String::from_utf8_lossy(key)))));
    }

    /// Starts new latency windows when due.
    pub(crate) fn rotate(&self, now: Instant) {
        for m in self.names.read().values() {
            m.latency.maybe_rotate(now);
        }
    }

    /// Every name's metrics, by name.
    pub(crate) fn snapshot(&self) -> Vec<CommandStats> {
        self.rotate(Instant::now());
        let mut out: Vec<CommandStats> = self
            .names
            .read()
            .iter()
            .map(|(name, m)| CommandStats {
                name: String::from_utf8_lossy(name).into_owned(),
                count: m.count.load(Relaxed),
                errors: m.errors.load(Relaxed),
                latency: m.latency.latency(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_upper_cased_and_capped() {
        let m = CommandMetrics::new(Export::new(&crate::Config::builder().build().unwrap()));
        let ok: Result<Value> = Ok(Value::Okay);
        let failed: Result<Value> = Err(Error::Closed);
        m.record(b"get", Duration::from_micros(100), &ok);
        m.record(b"GET", Duration::from_micros(300), &failed);
        for i in 0..300 {
            m.record(format!("CMD{i}").as_bytes(), Duration::from_micros(1), &ok);
        }
        let s = m.snapshot();
        let get = s.iter().find(|c| c.name == "GET").unwrap();
        assert_eq!((get.count, get.errors, get.latency.count), (2, 1, 2));
        assert!(get.latency.max >= Duration::from_micros(300));
        assert_eq!(s.len(), MAX_NAMES + 1);
        let other = s.iter().find(|c| c.name == "OTHER").unwrap();
        assert_eq!(other.count, 300 - (MAX_NAMES as u64 - 1));
    }
}
