//! What a handle reports to the `metrics` facade (feature `metrics`). Without the feature
//! every type here is empty and every method does nothing (and is inlined away).
//!
//! The names and labels are documented in [`crate::metrics`]. Handles to counters and
//! histograms are registered once (per handle, and per command name) and then updated with
//! one atomic operation each, so the recorder must be installed before the handles are
//! created.

#[cfg(not(feature = "metrics"))]
use std::time::Duration;

#[cfg(not(feature = "metrics"))]
use crate::{config::Config, error::ErrorClass, stats::Stats};

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{Counter, Histogram, Label};

    use crate::config::{BreakerState, Config};
    use crate::error::ErrorClass;
    use crate::stats::Stats;

    /// The labels every series of one handle carries: `server`, and `client` when the
    /// handle has a client name.
    #[derive(Clone)]
    pub(crate) struct Export {
        labels: Arc<[Label]>,
        call_duration: Histogram,
    }

    impl std::fmt::Debug for Export {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Export")
                .field("labels", &self.labels)
                .finish_non_exhaustive()
        }
    }

    /// A counter of one handle (a no-op one by default).
    #[derive(Clone)]
    pub(crate) struct Count(Counter);

    impl Default for Count {
        fn default() -> Count {
            Count(Counter::noop())
        }
    }

    impl std::fmt::Debug for Count {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Count")
        }
    }

    impl Count {
        #[inline]
        pub(crate) fn add(&self, n: u64) {
            self.0.increment(n);
        }
    }

    /// The series of one command name: its count, its latency, and its errors by class
    /// (registered on the first error of each class).
    pub(crate) struct CommandExport {
        export: Export,
        name: String,
        count: Counter,
        duration: Histogram,
    }

    impl CommandExport {
        pub(crate) fn record(&self, took: Duration, failure: Option<ErrorClass>) {
            self.count.increment(1);
            self.duration.record(took.as_secs_f64());
            if let Some(class) = failure {
                let labels = self.export.with(&[
                    ("command", self.name.clone()),
                    ("error_class", class.as_str().to_owned()),
                ]);
                metrics::counter!("redkit_command_errors_total", labels).increment(1);
            }
        }
    }

    /// The `server` label of a config: the address, the Sentinel master's name, or the
    /// first Cluster seed.
    fn server(config: &Config) -> String {
        if let Some(s) = config.sentinel() {
            return format!("sentinel/{}", s.master_name());
        }
        if let Some((host, port)) = config.cluster().and_then(|c| c.seeds().first()) {
            return format!("cluster/{host}:{port}");
        }
        config.addr().to_string()
    }

    impl Export {
        pub(crate) fn new(config: &Config) -> Export {
            let mut labels = vec![Label::new("server", server(config))];
            if let Some(name) = config.client_name() {
                labels.push(Label::new("client", name.to_owned()));
            }
            let labels: Arc<[Label]> = labels.into();
            let call_duration =
                metrics::histogram!("redkit_call_duration_seconds", labels.to_vec());
            Export {
                labels,
                call_duration,
            }
        }

        fn with(&self, extra: &[(&'static str, String)]) -> Vec<Label> {
            let mut labels = self.labels.to_vec();
            labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
            labels
        }

        /// A counter with the handle's labels.
        pub(crate) fn counter(&self, name: &'static str) -> Count {
            Count(metrics::counter!(name, self.labels.to_vec()))
        }

        /// The series of the command `name` (upper case).
        pub(crate) fn command(&self, name: &str) -> CommandExport {
            let labels = self.with(&[("command", name.to_owned())]);
            CommandExport {
                export: self.clone(),
                name: name.to_owned(),
                count: metrics::counter!("redkit_commands_total", labels.clone()),
                duration: metrics::histogram!("redkit_command_duration_seconds", labels),
            }
        }

        /// A call through the handle took `took` (checkout, attempts and backoff included).
        #[inline]
        pub(crate) fn call(&self, took: Duration) {
            self.call_duration.record(took.as_secs_f64());
        }

        /// A queue's depth, as last read.
        pub(crate) fn queue_depth(&self, kind: &'static str, queue: &str, depth: u64) {
            let labels = self.with(&[("kind", kind.to_owned()), ("queue", queue.to_owned())]);
            metrics::gauge!("redkit_queue_depth", labels).set(depth as f64);
        }

        /// Publishes a [`Stats`] snapshot: counters as absolute values, gauges as set.
        pub(crate) fn publish(&self, s: &Stats) {
            let l = || self.labels.to_vec();
            for class in ErrorClass::ALL {
                let n = s.errors.get(class);
                if n > 0 {
                    let labels = self.with(&[("error_class", class.as_str().to_owned())]);
                    metrics::counter!("redkit_errors_total", labels).absolute(n);
                }
            }
            let counters = [
                ("redkit_retries_total", s.retries),
                ("redkit_breaker_opened_total", s.breaker_opened),
                ("redkit_breaker_rejected_total", s.breaker_rejected),
                ("redkit_reconnections_total", s.reconnections),
                (
                    "redkit_transaction_conflicts_total",
                    s.transaction_conflicts,
                ),
                ("redkit_pool_connections_created_total", s.pool.created),
                ("redkit_pool_connections_closed_total", s.pool.closed),
                (
                    "redkit_pool_connect_failures_total",
                    s.pool.connect_failures,
                ),
                ("redkit_pool_checkouts_total", s.pool.checkouts),
                (
                    "redkit_pool_checkout_timeouts_total",
                    s.pool.checkout_timeouts,
                ),
                ("redkit_events_dropped_total", s.events_dropped),
            ];
            for (name, v) in counters {
                metrics::counter!(name, l()).absolute(v);
            }
            let breaker = match s.breaker {
                BreakerState::Closed => 0.0,
                BreakerState::HalfOpen => 1.0,
                BreakerState::Open => 2.0,
            };
            let up = if s.health == crate::Health::Down {
                0.0
            } else {
                1.0
            };
            let gauges = [
                ("redkit_breaker_state", breaker),
                ("redkit_up", up),
                ("redkit_pool_connections", f64::from(s.pool.size)),
                ("redkit_pool_idle_connections", f64::from(s.pool.idle)),
                ("redkit_pool_in_use_connections", f64::from(s.pool.in_use)),
                ("redkit_pool_max_connections", f64::from(s.pool.max_size)),
                ("redkit_pool_waiting", s.pool.waiting as f64),
                ("redkit_dedicated_connections", s.dedicated_open as f64),
            ];
            for (name, v) in gauges {
                metrics::gauge!(name, l()).set(v);
            }
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::{CommandExport, Count, Export};

/// Without the `metrics` feature: nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Clone)]
pub(crate) struct Export;

/// Without the `metrics` feature: nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Count;

/// Without the `metrics` feature: nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug)]
pub(crate) struct CommandExport;

#[cfg(not(feature = "metrics"))]
impl Count {
    #[inline(always)]
    pub(crate) fn add(&self, _: u64) {}
}

#[cfg(not(feature = "metrics"))]
impl CommandExport {
    #[inline(always)]
    pub(crate) fn record(&self, _: Duration, _: Option<ErrorClass>) {}
}

#[cfg(not(feature = "metrics"))]
impl Export {
    #[inline(always)]
    pub(crate) fn new(_: &Config) -> Export {
        Export
    }

    #[inline(always)]
    pub(crate) fn counter(&self, _: &'static str) -> Count {
        Count
    }

    #[inline(always)]
    pub(crate) fn command(&self, _: &str) -> CommandExport {
        CommandExport
    }

    #[inline(always)]
    pub(crate) fn call(&self, _: Duration) {}

    #[inline(always)]
    pub(crate) fn queue_depth(&self, _: &'static str, _: &str, _: u64) {}

    #[inline(always)]
    pub(crate) fn publish(&self, _: &Stats) {}
}

/// What a call through the handle runs, for its span: computed only when a subscriber
/// wants the span.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) enum Op<'a> {
    /// One packed command.
    Command(&'a [u8]),
    /// A pipeline of this many commands (atomic: a transaction).
    Pipeline { commands: usize, atomic: bool },
    /// An optimistic transaction (`WATCH`, a closure, `MULTI`/`EXEC`).
    Transaction,
    /// A script call (`EVALSHA`, `EVAL` on `NOSCRIPT`).
    Script,
    /// A closure of the caller's on a pooled connection (`Redis::run`).
    Run,
}

#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
impl Op<'_> {
    /// `db.operation.name`: the command name, `PIPELINE`, `MULTI`, `EVALSHA`; `None` for
    /// a closure.
    fn name(&self) -> Option<String> {
        match self {
            Op::Command(packed) => crate::util::resp::command_name(packed)
                .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase()),
            Op::Pipeline { atomic: false, .. } => Some("PIPELINE".to_owned()),
            Op::Pipeline { atomic: true, .. } | Op::Transaction => Some("MULTI".to_owned()),
            Op::Script => Some("EVALSHA".to_owned()),
            Op::Run => None,
        }
    }

    /// `redkit.call`: which kind of call this is.
    fn kind(&self) -> &'static str {
        match self {
            Op::Command(_) => "command",
            Op::Pipeline { .. } => "pipeline",
            Op::Transaction => "transaction",
            Op::Script => "script",
            Op::Run => "run",
        }
    }
}

#[cfg(feature = "tracing")]
mod spans {
    use tracing::field::Empty;

    use super::Op;
    use crate::config::{Addr, Config};
    use crate::error::{Delivery, Error, Result};

    /// The span of one call through the handle (`redis.command`, level INFO), entered
    /// while its attempts run.
    #[derive(Debug)]
    pub(crate) struct CallSpan(tracing::Span);

    impl CallSpan {
        /// A span for `op` on a handle with `config`; `addr` is where it goes (the current
        /// Sentinel master, or the config's address).
        pub(crate) fn start(config: &Config, addr: impl FnOnce() -> Addr, op: Op<'_>) -> CallSpan {
            let span = tracing::info_span!(
                "redis.command",
                otel.name = Empty,
                otel.kind = "client",
                otel.status_code = Empty,
                db.system = "redis",
                db.system.name = "redis",
                db.operation.name = Empty,
                db.operation.batch.size = Empty,
                db.namespace = Empty,
                db.response.status_code = Empty,
                server.address = Empty,
                server.port = Empty,
                redkit.call = op.kind(),
                redkit.attempts = Empty,
                redkit.delivery = Empty,
                error.type = Empty,
            );
            if span.is_disabled() {
                return CallSpan(span);
            }
            match op.name() {
                Some(name) => {
                    span.record("otel.name", name.as_str());
                    span.record("db.operation.name", name.as_str());
                }
                None => {
                    span.record("otel.name", "redis");
                }
            }
            if let Op::Pipeline { commands, .. } = op {
                span.record("db.operation.batch.size", commands);
            }
            span.record("db.namespace", config.db().to_string().as_str());
            match addr() {
                Addr::Tcp { host, port } => {
                    span.record("server.address", host.as_str());
                    span.record("server.port", port);
                }
                Addr::Unix(path) => {
                    span.record("server.address", path.display().to_string().as_str());
                }
            }
            CallSpan(span)
        }

        /// Enters the span (until the guard drops).
        pub(crate) fn enter(&self) -> tracing::span::Entered<'_> {
            self.0.enter()
        }

        /// Records how the call ended after `attempts` attempts.
        pub(crate) fn finish<T>(&self, attempts: u32, result: &Result<T>) {
            let span = &self.0;
            if span.is_disabled() {
                return;
            }
            span.record("redkit.attempts", attempts);
            if let Err(e) = result {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", e.class().as_str());
                let delivery = match e.delivery() {
                    Delivery::NotSent => "not_sent",
                    Delivery::Unknown => "unknown",
                    _ => "answered",
                };
                span.record("redkit.delivery", delivery);
                if let Some(code) = Error::server_code(e) {
                    span.record("db.response.status_code", code);
                }
            }
        }
    }
}

#[cfg(feature = "tracing")]
pub(crate) use spans::CallSpan;

/// Without the `tracing` feature: nothing.
#[cfg(not(feature = "tracing"))]
#[derive(Debug)]
pub(crate) struct CallSpan;

/// What [`CallSpan::enter`] returns without the `tracing` feature.
#[cfg(not(feature = "tracing"))]
pub(crate) struct NotEntered;

#[cfg(not(feature = "tracing"))]
impl CallSpan {
    #[inline(always)]
    pub(crate) fn start(
        _: &crate::config::Config,
        _: impl FnOnce() -> crate::config::Addr,
        _: Op<'_>,
    ) -> CallSpan {
        CallSpan
    }

    #[inline(always)]
    pub(crate) fn enter(&self) -> NotEntered {
        NotEntered
    }

    #[inline(always)]
    pub(crate) fn finish<T>(&self, _: u32, _: &crate::error::Result<T>) {}
}
