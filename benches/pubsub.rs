//! Pub/Sub: messages per second from `PUBLISH` to a reader, and the latency of one message,
//! through a redkit `Subscription` against a raw `redis` crate `PubSub::get_message` loop on
//! one dedicated connection, measured in the same run and reported as ratios.
//!
//! - Throughput: one publisher thread sends pipelines of 100 `PUBLISH` on a raw connection
//!   (the same publisher for both sides); the clock runs from the first publish to the last
//!   message read. Sides alternate in blocks; the ratio is the median of per-block ratios.
//!   Target (issue 4): >= 0.9.
//! - Latency: one message at a time, publish to receipt, many samples per side, alternating;
//!   p50 and p99 per side and the difference ("added"). Target: p99 added < 100 µs.
//!
//! `cargo bench --bench pubsub`. `REDKIT_BENCH_MESSAGES` sets messages per throughput block
//! (default 20000), `REDKIT_BENCH_SAMPLES` latency samples per side (default 2000). Results
//! go to stdout and to the `pubsub` section of `target/redkit-bench.json`.

mod common;

use redkit::pubsub::Subscriber;
use std::time::{Duration, Instant};

use common::{env_usize, median, percentile, Report, Target};
use crossbeam_channel::{bounded, Receiver, Sender};
use redkit::pubsub::{Backpressure, Kind, SubscriptionOptions};
use redkit::testing::RedisServer;

const BLOCKS: usize = 5;
const THROUGHPUT_TARGET: f64 = 0.9;
const ADDED_P99_TARGET: Duration = Duration::from_micros(100);

/// A reader on one side: told how many messages to read, it answers when it read them.
struct Reader {
    go: Sender<usize>,
    done: Receiver<Instant>,
}

/// The raw side: a thread looping on `get_message` on its own connection.
fn raw_reader(
    server: &RedisServer,
    channel: &'static str,
) -> (Reader, std::thread::JoinHandle<()>) {
    let client = redis::Client::open(server.url()).expect("client");
    let mut con = client.get_connection().expect("raw subscriber connection");
    let (go_tx, go_rx) = bounded::<usize>(1);
    let (done_tx, done_rx) = bounded::<Instant>(1);
    let (ready_tx, ready_rx) = bounded::<()>(1);
    let handle = std::thread::spawn(move || {
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(channel).expect("SUBSCRIBE");
        ready_tx.send(()).expect("ready");
        for n in go_rx {
            for _ in 0..n {
                let msg = pubsub.get_message().expect("get_message");
                std::hint::black_box(msg.get_payload_bytes());
            }
            done_tx.send(Instant::now()).expect("done");
        }
    });
    ready_rx.recv().expect("raw reader ready");
    (
        Reader {
            go: go_tx,
            done: done_rx,
        },
        handle,
    )
}

/// The redkit side: a thread reading a `Subscription`.
fn redkit_reader(
    subscriber: &redkit::pubsub::Subscriber,
    channel: &'static str,
) -> (Reader, std::thread::JoinHandle<()>) {
    let sub = subscriber
        .subscribe_with(
            Kind::Channel,
            [channel],
            SubscriptionOptions::default()
                .capacity(100_000)
                .backpressure(Backpressure::Block),
        )
        .expect("subscribe");
    let (go_tx, go_rx) = bounded::<usize>(1);
    let (done_tx, done_rx) = bounded::<Instant>(1);
    let handle = std::thread::spawn(move || {
        for n in go_rx {
            for _ in 0..n {
                let msg = sub.recv().expect("recv");
                std::hint::black_box(msg.payload());
            }
            done_tx.send(Instant::now()).expect("done");
        }
    });
    (
        Reader {
            go: go_tx,
            done: done_rx,
        },
        handle,
    )
}

/// Publishes `n` messages in pipelines of 100 and returns messages per second until the
/// reader has read them all.
fn throughput(publisher: &mut redis::Connection, channel: &str, reader: &Reader, n: usize) -> f64 {
    reader.go.send(n).expect("go");
    let payload = vec![b'x'; 64];
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(100);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&payload).ignore();
        }
        pipe.query::<()>(publisher).expect("publish");
        sent += batch;
    }
    let end = reader.done.recv().expect("reader finished");
    n as f64 / end.duration_since(start).as_secs_f64()
}

/// Publish-to-receipt latency of single messages.
fn latency(publisher: &mut redis::Connection, channel: &str, reader: &Reader) -> Duration {
    reader.go.send(1).expect("go");
    let start = Instant::now();
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg("ping")
        .query::<()>(publisher)
        .expect("publish");
    let end = reader.done.recv().expect("received");
    end.duration_since(start)
}

fn main() {
    let per_block = env_usize("REDKIT_BENCH_MESSAGES", 20_000);
    let samples = env_usize("REDKIT_BENCH_SAMPLES", 2_000);
    let mut report = Report::new(
        "pubsub",
        "publish -> reader through a Subscription vs a raw get_message loop",
    );
    report.param("messages_per_block", per_block);
    report.param("blocks", BLOCKS);
    report.param("latency_samples", samples);
    let server = RedisServer::start().expect("start redis-server");
    let redis = common::connect(&server);
    let subscriber = Subscriber::new(&redis).expect("subscriber");
    let client = redis::Client::open(server.url()).expect("client");
    let mut publisher = client.get_connection().expect("publisher connection");

    let (raw, raw_thread) = raw_reader(&server, "bench.raw");
    let (ours, our_thread) = redkit_reader(&subscriber, "bench.redkit");

    // Warm-up.
    throughput(&mut publisher, "bench.raw", &raw, per_block / 4);
    throughput(&mut publisher, "bench.redkit", &ours, per_block / 4);

    let mut ratios = Vec::new();
    let (mut raw_rates, mut our_rates) = (Vec::new(), Vec::new());
    for _ in 0..BLOCKS {
        let r = throughput(&mut publisher, "bench.raw", &raw, per_block);
        let o = throughput(&mut publisher, "bench.redkit", &ours, per_block);
        ratios.push(o / r);
        raw_rates.push(r);
        our_rates.push(o);
    }
    let (raw_rate, our_rate, ratio) = (median(raw_rates), median(our_rates), median(ratios));

    let (mut raw_lat, mut our_lat) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        raw_lat.push(latency(&mut publisher, "bench.raw", &raw));
        our_lat.push(latency(&mut publisher, "bench.redkit", &ours));
    }
    raw_lat.sort();
    our_lat.sort();
    let (raw50, raw99) = (percentile(&raw_lat, 0.5), percentile(&raw_lat, 0.99));
    let (our50, our99) = (percentile(&our_lat, 0.5), percentile(&our_lat, 0.99));

    report.throughput(
        "throughput publish -> reader",
        " msg/s",
        our_rate,
        raw_rate,
        ratio,
        Target::RatioAtLeast(THROUGHPUT_TARGET),
    );
    report.latency("latency p50", our50, Some(raw50), Target::None);
    report.latency(
        "latency p99",
        our99,
        Some(raw99),
        Target::AddedBelow(ADDED_P99_TARGET),
    );
    report.finish();

    drop(raw);
    drop(ours);
    let _ = raw_thread.join();
    let _ = our_thread.join();
}
