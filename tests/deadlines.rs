//! Deadlines that hold whatever the server does: a hostile fake server that drips its replies
//! a byte at a time or never answers, and a real server behind a black-holing proxy. Every
//! call fails by its deadline (+ 50 ms), every drop and close returns within its bound.

mod support;

use redkit::pubsub::Subscriber;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::testing::{Action, FakeServer, FaultProxy, ProxyMode};
use redkit::{Config, ErrorClass, HeartbeatConfig, Redis, RetryPolicy, Timeouts};
use support::TestResult;

/// The slack every deadline is allowed on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(50);

fn drip(bytes: &[u8]) -> Action {
    Action::Drip {
        bytes: bytes.to_vec(),
        every: Duration::from_millis(5),
    }
}

/// A reply of about 2 s when dripped at 5 ms a byte.
fn long_bulk() -> Vec<u8> {
    let mut v = b"$400\r\n".to_vec();
    v.extend(std::iter::repeat_n(b'x', 400));
    v.extend_from_slice(b"\r\n");
    v
}

fn config(fake: &FakeServer, timeouts: Timeouts) -> redkit::ConfigBuilder {
    Config::builder()
        .host(fake.host())
        .port(fake.port())
        .timeouts(timeouts)
        .heartbeat(HeartbeatConfig::disabled())
        .retry(RetryPolicy::default().max_attempts(1))
}

/// `start` was at most `bound` ago, plus the slack, plus how late the machine wakes threads
/// right now (measured after the fact, so a loaded machine does not fail a deadline that held).
fn assert_within(start: Instant, bound: Duration, what: &str) {
    let took = start.elapsed();
    let late = support::scheduling_delay();
    assert!(
        took <= bound + SLACK + 2 * late,
        "{what} took {took:?}, more than {bound:?} + {SLACK:?} (+ {:?} scheduling delay)",
        2 * late
    );
}

#[test]
fn connect_to_a_dripping_server_fails_by_the_connect_timeout() -> TestResult {
    support::init_logs();
    // The handshake's reply drips: set-up must end by the connect timeout as a whole.
    let fake = FakeServer::start(|_| drip(&long_bulk()))?;
    let connect = Duration::from_millis(300);
    let start = Instant::now();
    let e = Redis::connect(config(&fake, Timeouts::default().connect(connect)))
        .expect_err("must not connect");
    assert_within(start, connect, "connect");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    Ok(())
}

#[test]
fn connect_to_a_silent_server_fails_by_the_connect_timeout() -> TestResult {
    support::init_logs();
    let fake = FakeServer::start(|_| Action::Silent)?;
    let connect = Duration::from_millis(300);
    let start = Instant::now();
    let e = Redis::connect(
        config(&fake, Timeouts::default().connect(connect))
            .password("pw")
            .db(3)
            .client_name("x"),
    )
    .expect_err("must not connect");
    assert_within(start, connect, "connect with a password and a db");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    assert!(
        e.to_string().contains(&fake.port().to_string()),
        "the error names the address: {e}"
    );
    Ok(())
}

#[test]
fn a_command_whose_reply_drips_fails_by_the_response_timeout() -> TestResult {
    support::init_logs();
    let fake =
        FakeServer::start(|cmd| Action::handshake(cmd).unwrap_or_else(|| drip(&long_bulk())))?;
    let response = Duration::from_millis(200);
    let redis = Redis::connect(config(&fake, Timeouts::default().response(response)))?;
    let start = Instant::now();
    let e = redis
        .query::<String>(redis::cmd("GET").arg("k"))
        .expect_err("the reply never completes in time");
    assert_within(start, response, "GET");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    assert_eq!(e.delivery(), redkit::Delivery::Unknown);
    // Through redis::Commands too.
    let mut r = redis.clone();
    let start = Instant::now();
    let e: redkit::Error = r.get::<_, String>("k").expect_err("times out").into();
    assert_within(start, response, "GET through redis::Commands");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    Ok(())
}

#[test]
fn retries_end_by_the_retry_deadline_plus_one_response_timeout() -> TestResult {
    support::init_logs();
    let fake =
        FakeServer::start(|cmd| Action::handshake(cmd).unwrap_or_else(|| drip(&long_bulk())))?;
    let response = Duration::from_millis(150);
    let max_elapsed = Duration::from_millis(400);
    let redis = Redis::connect(
        config(&fake, Timeouts::default().response(response)).retry(
            RetryPolicy::default()
                .max_attempts(100)
                .max_elapsed(max_elapsed)
                .backoff(redkit::Backoff::exponential(
                    Duration::from_millis(10),
                    Duration::from_millis(10),
                )),
        ),
    )?;
    // GET is read-only: retried after each timeout, until the retry deadline.
    let start = Instant::now();
    let e = redis
        .query::<String>(redis::cmd("GET").arg("k"))
        .expect_err("never answers in time");
    assert_within(start, max_elapsed + response, "GET with retries");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    assert!(redis.stats().retries >= 1, "it was retried");
    Ok(())
}

#[test]
fn a_pipeline_gets_one_response_timeout_as_a_whole() -> TestResult {
    support::init_logs();
    // Each reply takes 25 ms to drip: 20 of them take 500 ms, over the 100 ms allowed.
    let fake = FakeServer::start(|cmd| Action::handshake(cmd).unwrap_or_else(|| drip(b"+OK\r\n")))?;
    let response = Duration::from_millis(100);
    let redis = Redis::connect(config(&fake, Timeouts::default().response(response)))?;
    let mut pipe = redkit::Pipeline::new();
    for i in 0..20 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    let start = Instant::now();
    let e = redis.pipeline::<()>(&pipe).expect_err("too slow");
    assert_within(start, response, "a pipeline of 20");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    Ok(())
}

#[test]
fn a_transaction_fails_by_its_deadline() -> TestResult {
    support::init_logs();
    let fake =
        FakeServer::start(|cmd| Action::handshake(cmd).unwrap_or_else(|| drip(&long_bulk())))?;
    let response = Duration::from_millis(200);
    let redis = Redis::connect(config(&fake, Timeouts::default().response(response)))?;
    let start = Instant::now();
    let e = redis
        .transaction::<_, (), _>(&["k"], |_, pipe| {
            pipe.cmd("SET").arg("k").arg(1).ignore();
            Ok(())
        })
        .expect_err("WATCH never answers in time");
    assert_within(start, response, "transaction");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    Ok(())
}

#[test]
fn a_subscriber_cannot_be_held_by_a_dripping_server() -> TestResult {
    support::init_logs();
    let fake = FakeServer::start(|_| drip(&long_bulk()))?;
    let connect = Duration::from_millis(300);
    let redis = Redis::connect_lazy(config(&fake, Timeouts::default().connect(connect)))?;
    let start = Instant::now();
    let e = Subscriber::new(&redis).expect_err("must not connect");
    assert_within(start, connect, "Subscriber::new");
    assert_eq!(e.class(), ErrorClass::Timeout, "{e}");
    Ok(())
}

#[test]
fn drops_and_close_return_within_their_bounds_in_a_black_hole() -> TestResult {
    let server = support::server();
    let proxy = FaultProxy::start_for(&server)?;
    let config = || {
        Config::builder()
            .host(proxy.host())
            .port(proxy.port())
            .timeouts(
                Timeouts::default()
                    .connect(Duration::from_secs(2))
                    .response(Duration::from_secs(2)),
            )
            .heartbeat(
                HeartbeatConfig::default()
                    .interval(Duration::from_millis(50))
                    .timeout(Duration::from_secs(1)),
            )
    };
    let redis = Redis::connect(config())?;
    let subscriber = Subscriber::new(&redis)?;
    let _sub = subscriber.subscribe(["news"])?;
    let sampler = redkit::monitor::Monitor::new(&redis).sample_every(Duration::from_millis(20))?;
    let queue = redkit::StreamQueue::builder(&redis, "bh").build()?;
    let workers = queue
        .workers()
        .threads(2)
        .shutdown_timeout(Duration::from_millis(200))
        .run(|_| Ok::<(), String>(()))?;
    // Everything is busy on the network when the packets start to vanish.
    std::thread::sleep(Duration::from_millis(100));
    proxy.set_mode(ProxyMode::BlackHole);
    std::thread::sleep(Duration::from_millis(150));

    let start = Instant::now();
    drop(sampler);
    assert_within(
        start,
        redkit::monitor::SAMPLER_STOP_BOUND,
        "dropping a sampler",
    );

    let start = Instant::now();
    drop(subscriber);
    assert_within(start, redkit::pubsub::STOP_BOUND, "dropping a subscriber");

    let start = Instant::now();
    drop(workers);
    assert_within(start, Duration::from_millis(200), "dropping a worker pool");

    let start = Instant::now();
    redis.close()?;
    assert_within(start, redkit::CLOSE_BOUND, "closing the handle");
    drop(redis);
    Ok(())
}

#[test]
fn dropping_the_last_clone_in_a_black_hole_is_bounded() -> TestResult {
    let server = support::server();
    let proxy = FaultProxy::start_for(&server)?;
    let redis = Redis::connect(
        Config::builder()
            .host(proxy.host())
            .port(proxy.port())
            .heartbeat(HeartbeatConfig::default().interval(Duration::from_millis(20))),
    )?;
    let r = redis.clone();
    let busy = std::thread::spawn(move || r.query::<()>(redis::cmd("SET").arg("a").arg(1)));
    proxy.set_mode(ProxyMode::BlackHole);
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    drop(redis);
    assert_within(start, redkit::CLOSE_BOUND, "dropping the handle");
    // The call in flight still ends, by its own deadline.
    let _ = busy.join();
    Ok(())
}

#[test]
fn a_subscriber_under_a_message_flood_answers_within_milliseconds() -> TestResult {
    let server = support::server();
    let redis = support::redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let flood = subscriber.subscribe(["flood"])?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (redis, stop) = (redis.clone(), stop.clone());
        std::thread::spawn(move || -> redkit::Result<u64> {
            // About 1,000 messages a second, in bursts of 10 every 10 ms.
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pipe = redkit::Pipeline::new();
                for _ in 0..10 {
                    pipe.cmd("PUBLISH").arg("flood").arg("x").ignore();
                }
                redis.pipeline::<()>(&pipe)?;
                sent += 10;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(sent)
        })
    };
    // Let the flood start.
    flood.recv_timeout(Duration::from_secs(5))?;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let start = Instant::now();
        let sub = subscriber.subscribe([format!("other-{i}")])?;
        worst = worst.max(start.elapsed());
        drop(sub);
        while flood.try_recv().is_ok() {}
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.join().expect("publisher")?;
    assert!(sent > 100, "the flood ran ({sent} messages)");
    // A subscribe round trip plus a burst of reads: well under 20 ms.
    assert!(
        worst < Duration::from_millis(20),
        "subscribe() took {worst:?} under the flood"
    );
    Ok(())
}
