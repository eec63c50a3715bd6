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
//! go to stdout and to `target/redkit-bench-pubsub.json`.

use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use redkit::pubsub::{Backpressure, Kind, SubscriptionOptions};
use redkit::testing::RedisServer;
use redkit::{Config, Redis};

const BLOCKS: usize = 5;
const THROUGHPUT_TARGET: f64 = 0.9;
const ADDED_P99_TARGET: Duration = Duration::from_micros(100);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

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
    let server = RedisServer::start().expect("start redis-server");
    let redis = Redis::connect(
        Config::builder()
            .host(server.host())
            .port(server.port())
            .build()
            .expect("config"),
    )
    .expect("connect");
    let subscriber = redis.subscriber().expect("subscriber");
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
    let added50 = our50.saturating_sub(raw50);
    let added99 = our99.saturating_sub(raw99);

    println!("pub/sub, {per_block} messages x {BLOCKS} blocks per side; {samples} latency samples per side");
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>8}",
        "scenario", "redkit", "raw", "ratio", "target"
    );
    println!(
        "{:<34} {:>10.0}/s {:>10.0}/s {:>8.3} {:>8}",
        "throughput publish -> reader",
        our_rate,
        raw_rate,
        ratio,
        format!(">= {THROUGHPUT_TARGET}")
    );
    println!(
        "{:<34} {:>12?} {:>12?} {:>8} {:>8}",
        "latency p50",
        our50,
        raw50,
        format!("+{added50:?}"),
        ""
    );
    println!(
        "{:<34} {:>12?} {:>12?} {:>8} {:>8}",
        "latency p99",
        our99,
        raw99,
        format!("+{added99:?}"),
        format!("< +{ADDED_P99_TARGET:?}")
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: throughput ratio {}, p99 added {}",
        met(ratio >= THROUGHPUT_TARGET),
        met(added99 < ADDED_P99_TARGET)
    );

    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("redkit-bench-pubsub.json");
    let json = format!(
        "{{\n  \"bench\": \"pubsub\",\n  \"messages_per_block\": {per_block},\n  \"blocks\": {BLOCKS},\n  \"latency_samples\": {samples},\n  \"results\": [\n    {{\"scenario\": \"throughput\", \"redkit_msgs\": {our_rate:.0}, \"baseline_msgs\": {raw_rate:.0}, \"ratio\": {ratio:.4}, \"target\": {THROUGHPUT_TARGET}}},\n    {{\"scenario\": \"latency\", \"redkit_p50_us\": {}, \"baseline_p50_us\": {}, \"redkit_p99_us\": {}, \"baseline_p99_us\": {}, \"added_p99_us\": {}, \"target_added_p99_us\": {}}}\n  ]\n}}\n",
        our50.as_micros(),
        raw50.as_micros(),
        our99.as_micros(),
        raw99.as_micros(),
        added99.as_micros(),
        ADDED_P99_TARGET.as_micros()
    );
    if let Err(e) = std::fs::write(&path, json) {
        eprintln!("could not write {}: {e}", path.display());
    }

    drop(raw);
    drop(ours);
    let _ = raw_thread.join();
    let _ = our_thread.join();
}
