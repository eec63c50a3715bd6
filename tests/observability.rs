//! The `metrics` and `tracing` features against a real server: the series a known workload
//! leaves in a debugging recorder (names, labels, values), and the fields of the spans a
//! capturing subscriber sees.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redkit::pubsub::{Backpressure, Kind, Subscriber, SubscriptionOptions};
use redkit::testing::wait_until;
use redkit::{HeartbeatConfig, Pipeline, Redis, RetryPolicy};
use support::*;

/// The process-wide debugging recorder, for what background threads publish (only the
/// heartbeat test uses it; the others give their handles a recorder of their own with
/// `metrics::with_local_recorder`, since a snapshot takes every value out of its recorder).
fn global() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// One series: name, labels (sorted), value.
#[derive(Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

/// Every series of a snapshot whose `server` label is `server`.
fn series_of(snapshotter: &Snapshotter, server: &str) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            Series {
                name: key.name().to_owned(),
                labels,
                value,
            }
        })
        .filter(|s| s.labels.iter().any(|(k, v)| k == "server" && v == server))
        .collect()
}

/// The series `name` whose labels include all of `with`.
fn find<'a>(all: &'a [Series], name: &str, with: &[(&str, &str)]) -> Option<&'a Series> {
    all.iter().find(|s| {
        s.name == name
            && with
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
    })
}

fn counter(all: &[Series], name: &str, with: &[(&str, &str)]) -> u64 {
    match find(all, name, with).map(|s| &s.value) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {with:?}: expected a counter, got {other:?}"),
    }
}

fn gauge(all: &[Series], name: &str, with: &[(&str, &str)]) -> f64 {
    match find(all, name, with).map(|s| &s.value) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {with:?}: expected a gauge, got {other:?}"),
    }
}

fn samples(all: &[Series], name: &str, with: &[(&str, &str)]) -> Vec<f64> {
    match find(all, name, with).map(|s| &s.value) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name} {with:?}: expected a histogram, got {other:?}"),
    }
}

#[test]
fn a_known_workload_leaves_known_series() -> TestResult {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let server = server();
    let label = format!("127.0.0.1:{}", server.port());
    // Everything the handle registers (when it is created, at a command's first use) goes
    // to this recorder, whichever thread updates it later.
    let (stats, ready_key) = metrics::with_local_recorder(&recorder, || workload(&server))?;
    let all = series_of(&snapshotter, &label);
    let client = ("client", "observed");

    // Recorded as they happen, per command name (every series carries both labels).
    assert_eq!(
        counter(&all, "redkit_commands_total", &[client, ("command", "SET")]),
        3
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "GET")]),
        2
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "INCR")]),
        1
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "PIPELINE")]),
        1
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "LPUSH")]),
        1
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "LLEN")]),
        1
    );
    assert_eq!(
        counter(&all, "redkit_commands_total", &[("command", "PUBLISH")]),
        5
    );
    assert_eq!(
        counter(
            &all,
            "redkit_command_errors_total",
            &[("command", "INCR"), ("error_class", "command")]
        ),
        1
    );
    assert!(find(&all, "redkit_command_errors_total", &[("command", "GET")]).is_none());
    let gets = samples(
        &all,
        "redkit_command_duration_seconds",
        &[("command", "GET")],
    );
    assert_eq!(gets.len(), 2);
    assert!(gets.iter().all(|s| *s > 0.0 && *s < 10.0), "{gets:?}");
    // One sample per call through the handle (the workload's 7, the queue's and the 5
    // PUBLISH), as in the handle's own call latency.
    let calls = samples(&all, "redkit_call_duration_seconds", &[client]);
    assert_eq!(calls.len() as u64, stats.command_latency.count);
    assert!(calls.len() >= 7 + 5);

    assert_eq!(
        counter(&all, "redkit_subscriber_dropped_total", &[client]),
        4
    );
    assert_eq!(
        gauge(
            &all,
            "redkit_queue_depth",
            &[("kind", "list"), ("queue", ready_key.as_str())]
        ),
        3.0
    );

    // Published from the handle's counters.
    assert_eq!(
        counter(&all, "redkit_errors_total", &[("error_class", "command")]),
        1
    );
    assert_eq!(counter(&all, "redkit_retries_total", &[]), stats.retries);
    assert_eq!(counter(&all, "redkit_reconnections_total", &[]), 0);
    assert_eq!(gauge(&all, "redkit_breaker_state", &[]), 0.0);
    assert_eq!(gauge(&all, "redkit_up", &[]), 1.0);
    assert_eq!(gauge(&all, "redkit_pool_max_connections", &[]), 4.0);
    let open = gauge(&all, "redkit_pool_connections", &[]);
    let idle = gauge(&all, "redkit_pool_idle_connections", &[]);
    let in_use = gauge(&all, "redkit_pool_in_use_connections", &[]);
    assert!((1.0..=4.0).contains(&open), "{open}");
    assert_eq!(open, idle + in_use);
    assert_eq!(
        counter(&all, "redkit_pool_checkouts_total", &[]),
        stats.pool.checkouts
    );
    assert!(stats.pool.checkouts >= 7);
    Ok(())
}

/// 3 SET, 2 GET, a failing INCR, a pipeline, a list queue of 3, a subscriber that drops 4
fn workload(server: &redkit::testing::RedisServer) -> TestResult<(redkit::Stats, String)> {
    // No heartbeat: only `stats()` publishes, so the gauges read are of one snapshot.
    let redis = Redis::connect(
        builder(server)
            .client_name("observed")
            .pool_max_size(4)
            .heartbeat(HeartbeatConfig::disabled()),
    )?;

    // 3 SET, 2 GET, 1 INCR that fails (not an integer), 1 pipeline: 7 calls.
    for i in 0..3 {
        redis.query::<()>(redis::cmd("SET").arg(format!("k{i}")).arg("v"))?;
    }
    for i in 0..2 {
        let _: Option<String> = redis.query(redis::cmd("GET").arg(format!("k{i}")))?;
    }
    let err = redis
        .query::<i64>(redis::cmd("INCR").arg("k0"))
        .unwrap_err();
    assert_eq!(err.class(), redkit::ErrorClass::Command);
    let mut pipe = Pipeline::new();
    pipe.cmd("GET").arg("k1").cmd("GET").arg("k2");
    let _: (String, String) = redis.pipeline(&pipe)?;

    // A queue of 3 items, read once.
    let queue = redkit::ListQueue::builder(&redis, "observed").build()?;
    queue.push_batch(["a", "b", "c"])?;
    assert_eq!(queue.len()?, 3);

    // A subscriber that drops: a queue of 1, DropNewest, nobody reading.
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe_with(
        Kind::Channel,
        ["observed"],
        SubscriptionOptions::default()
            .capacity(1)
            .backpressure(Backpressure::DropNewest),
    )?;
    for i in 0..5 {
        redis.query::<i64>(redis::cmd("PUBLISH").arg("observed").arg(i))?;
    }
    wait_until(Duration::from_secs(10), "4 messages dropped", || {
        subscriber.stats().dropped == 4
    })?;
    drop(sub);

    let stats = redis.stats(); // publishes the counters and gauges
    Ok((stats, queue.ready_key().to_owned()))
}

#[test]
fn the_heartbeat_publishes_without_anyone_asking() -> TestResult {
    let snapshotter = global();
    let server = server();
    let label = format!("127.0.0.1:{}", server.port());
    // Created after the global recorder is installed (see `global`).
    let _redis = Redis::connect(
        builder(&server)
            .pool_max_size(3)
            .heartbeat(HeartbeatConfig::default().interval(Duration::from_millis(50))),
    )?;
    // A snapshot empties the recorder: wait for one that holds a whole beat's publication.
    wait_until(
        Duration::from_secs(10),
        "a beat publishes the gauges",
        || {
            let all = series_of(snapshotter, &label);
            let is = |name, want: f64| {
                find(&all, name, &[]).is_some_and(
                    |s| matches!(s.value, DebugValue::Gauge(v) if v.into_inner() == want),
                )
            };
            is("redkit_pool_max_connections", 3.0) && is("redkit_up", 1.0)
        },
    )?;
    Ok(())
}

/// A span's name and fields.
type Captured = (String, HashMap<String, String>);

/// A `tracing` subscriber of the test's own: keeps every span's name and fields.
#[derive(Default, Clone)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some((_, fields)) = spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(fields));
        }
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn take(&self) -> Vec<HashMap<String, String>> {
        std::mem::take(&mut *self.spans.lock().unwrap())
            .into_iter()
            .filter(|(name, _)| name == "redis.command")
            .map(|(_, fields)| fields)
            .collect()
    }
}

fn field<'a>(span: &'a HashMap<String, String>, name: &str) -> &'a str {
    span.get(name).map(String::as_str).unwrap_or("<absent>")
}

#[test]
fn every_call_is_one_span_with_the_database_conventions() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).db(3))?;
    let port = server.port().to_string();
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || -> TestResult {
        redis.query::<()>(redis::cmd("SET").arg("k").arg("v"))?;
        let _ = redis.query::<i64>(redis::cmd("INCR").arg("k"));
        let mut pipe = Pipeline::new();
        pipe.cmd("GET")
            .arg("k")
            .cmd("GET")
            .arg("k")
            .cmd("GET")
            .arg("k");
        let _: (String, String, String) = redis.pipeline(&pipe)?;
        redis.run(|con| redis::cmd("PING").query::<String>(con).map_err(Into::into))?;
        Ok(())
    })?;
    let spans = capture.take();
    assert_eq!(spans.len(), 4, "one span per call: {spans:#?}");
    for s in &spans {
        assert_eq!(field(s, "db.system"), "redis");
        assert_eq!(field(s, "db.system.name"), "redis");
        assert_eq!(field(s, "otel.kind"), "client");
        assert_eq!(field(s, "server.address"), "127.0.0.1");
        assert_eq!(field(s, "server.port"), port);
        assert_eq!(field(s, "db.namespace"), "3");
        assert_eq!(field(s, "redkit.attempts"), "1");
    }
    let (set, incr, pipe, run) = (&spans[0], &spans[1], &spans[2], &spans[3]);
    assert_eq!(field(set, "db.operation.name"), "SET");
    assert_eq!(field(set, "otel.name"), "SET");
    assert_eq!(field(set, "redkit.call"), "command");
    assert_eq!(field(set, "error.type"), "<absent>");
    assert_eq!(field(set, "otel.status_code"), "<absent>");
    // An error reply: class, delivery and the server's code.
    assert_eq!(field(incr, "db.operation.name"), "INCR");
    assert_eq!(field(incr, "error.type"), "command");
    assert_eq!(field(incr, "otel.status_code"), "ERROR");
    assert_eq!(field(incr, "redkit.delivery"), "answered");
    assert_eq!(field(incr, "db.response.status_code"), "ERR");
    assert_eq!(field(pipe, "db.operation.name"), "PIPELINE");
    assert_eq!(field(pipe, "db.operation.batch.size"), "3");
    assert_eq!(field(pipe, "redkit.call"), "pipeline");
    assert_eq!(field(run, "db.operation.name"), "<absent>");
    assert_eq!(field(run, "redkit.call"), "run");
    // Values never show.
    assert!(spans.iter().all(|s| s.values().all(|v| v != "v")));
    Ok(())
}

#[test]
fn a_retried_call_records_its_attempts_and_why_it_failed() -> TestResult {
    // A port nothing listens on: every attempt is refused, surely not sent, so retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let redis = Redis::connect_lazy(
        redkit::Config::builder()
            .host("127.0.0.1")
            .port(port)
            .retry(
                RetryPolicy::default()
                    .max_attempts(3)
                    .max_elapsed(Duration::from_secs(10))
                    .backoff(redkit::Backoff::exponential(
                        Duration::from_millis(1),
                        Duration::from_millis(5),
                    )),
            )
            .breaker(redkit::BreakerConfig::disabled())
            .heartbeat(redkit::HeartbeatConfig::disabled()),
    )?;
    let capture = Capture::default();
    let err = tracing::subscriber::with_default(capture.clone(), || {
        redis.query::<Option<String>>(redis::cmd("GET").arg("k"))
    })
    .unwrap_err();
    assert_eq!(err.class(), redkit::ErrorClass::Connection, "{err:?}");
    let spans = capture.take();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(field(s, "redkit.attempts"), "3");
    assert_eq!(field(s, "error.type"), "connection");
    assert_eq!(field(s, "redkit.delivery"), "not_sent");
    assert_eq!(field(s, "server.port"), port.to_string());
    assert_eq!(redis.stats().retries, 2);
    Ok(())
}
