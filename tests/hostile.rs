//! A hostile server: garbage, a truncated bulk, an absurd length, 100,000 levels of nesting,
//! a reply that never ends. On pooled, dedicated, multiplexed and subscriber connections:
//! a typed error within the deadline, never a panic, memory bounded by the reply cap.

mod support;

use redkit::pubsub::Subscriber;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::testing::{Action, FakeServer};
use redkit::{Config, ErrorClass, HeartbeatConfig, Redis, RetryPolicy};
use support::TestResult;

const RESPONSE: Duration = Duration::from_millis(400);
const SLACK: Duration = Duration::from_millis(300);

/// What the server answers to every command after the set-up.
fn hostile(kind: &str) -> Action {
    match kind {
        "garbage" => Action::Reply(b"\x00\xff\xfe garbage that is not RESP\r\n".to_vec()),
        "truncated" => Action::Endless {
            prefix: b"$100\r\nonly-part-of-it".to_vec(),
            chunk: Vec::new(),
            every: Duration::from_secs(3600),
        },
        "absurd" => Action::Endless {
            prefix: b"$999999999999\r\n".to_vec(),
            chunk: vec![b'x'; 64 * 1024],
            every: Duration::from_millis(1),
        },
        "nested" => Action::Reply(b"*1\r\n".repeat(100_000)),
        "endless" => Action::Endless {
            prefix: b"*1000000\r\n".to_vec(),
            chunk: b":1\r\n".repeat(64),
            every: Duration::from_millis(5),
        },
        "close" => Action::Close,
        _ => Action::Silent,
    }
}

const KINDS: [&str; 6] = [
    "garbage",
    "truncated",
    "absurd",
    "nested",
    "endless",
    "close",
];

fn server(kind: &'static str) -> FakeServer {
    support::init_logs();
    FakeServer::start(move |cmd| Action::handshake(cmd).unwrap_or_else(|| hostile(kind)))
        .expect("fake server")
}

fn config(fake: &FakeServer) -> redkit::ConfigBuilder {
    Config::builder()
        .host(fake.host())
        .port(fake.port())
        .response_timeout(RESPONSE)
        .max_reply_size(1024 * 1024)
        .retry(RetryPolicy::default().max_attempts(1))
        .heartbeat(HeartbeatConfig::disabled())
}

fn assert_typed(kind: &str, what: &str, start: Instant, e: &redkit::Error) {
    let took = start.elapsed();
    assert!(took < RESPONSE + SLACK, "{what} on {kind}: {took:?}");
    assert!(
        matches!(
            e.class(),
            ErrorClass::Protocol
                | ErrorClass::Connection
                | ErrorClass::Timeout
                | ErrorClass::TooLarge
        ),
        "{what} on {kind}: {e} ({:?})",
        e.class()
    );
}

#[test]
fn pooled_connections_fail_typed_within_the_deadline() -> TestResult {
    for kind in KINDS {
        let fake = server(kind);
        let redis = Redis::connect(config(&fake))?;
        for _ in 0..2 {
            let start = Instant::now();
            let e = redis
                .query::<redis::Value>(redis::cmd("GET").arg("k"))
                .expect_err("hostile");
            assert_typed(kind, "a pooled GET", start, &e);
        }
        let mut pipe = redkit::Pipeline::new();
        pipe.cmd("GET").arg("a").cmd("GET").arg("b");
        let start = Instant::now();
        let e = redis.pipeline::<redis::Value>(&pipe).expect_err("hostile");
        assert_typed(kind, "a pipeline", start, &e);
    }
    Ok(())
}

#[test]
fn dedicated_connections_fail_typed_within_the_deadline() -> TestResult {
    for kind in KINDS {
        let fake = server(kind);
        let redis = Redis::connect(config(&fake))?;
        let mut own = redis.dedicated()?;
        let start = Instant::now();
        let e: redkit::Error = own.get::<_, redis::Value>("k").expect_err("hostile").into();
        assert_typed(kind, "a dedicated GET", start, &e);
    }
    Ok(())
}

#[test]
fn multiplexed_connections_fail_typed_within_the_deadline() -> TestResult {
    for kind in KINDS {
        let fake = server(kind);
        let redis = Redis::connect(config(&fake).multiplexed(1))?;
        std::thread::scope(|s| {
            for _ in 0..4 {
                let redis = &redis;
                s.spawn(move || {
                    let start = Instant::now();
                    let e = redis
                        .query::<redis::Value>(redis::cmd("GET").arg("k"))
                        .expect_err("hostile");
                    assert_typed(kind, "a multiplexed GET", start, &e);
                });
            }
        });
    }
    Ok(())
}

#[test]
fn subscribers_fail_typed_within_the_deadline_and_stay_responsive() -> TestResult {
    for kind in KINDS {
        let fake = server(kind);
        let redis = Redis::connect(config(&fake))?;
        let subscriber = Subscriber::new(&redis)?;
        let start = Instant::now();
        // The confirmation never comes in a form it can read: the subscribe call ends by
        // its deadline with a typed error, and the subscriber is still there to close.
        let result = subscriber.subscribe(["ch"]);
        let took = start.elapsed();
        assert!(
            took < RESPONSE + Duration::from_secs(1),
            "subscribe on {kind}: {took:?}"
        );
        if let Err(e) = &result {
            assert!(
                !matches!(e.class(), ErrorClass::Other),
                "subscribe on {kind}: {e}"
            );
        }
        drop(result);
        let start = Instant::now();
        drop(subscriber);
        assert!(
            start.elapsed() < redkit::pubsub::STOP_BOUND + SLACK,
            "drop on {kind}"
        );
    }
    Ok(())
}
