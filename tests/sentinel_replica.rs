//! Reads from a replica through Sentinel: one handle for writes (the master), one for reads
//! (`SentinelRole::Replica`).

mod support;

use std::time::{Duration, Instant};

use redkit::testing::{wait_until, SentinelSetup};
use redkit::{
    Addr, Config, ConfigBuilder, ErrorClass, Event, Redis, RetryPolicy, SentinelRole, Timeouts,
};
use support::TestResult;

fn handle(setup: &SentinelSetup, role: SentinelRole) -> TestResult<Redis> {
    let config = Config::builder()
        .sentinel(setup.master_name(), setup.sentinel_addrs())
        .sentinel_role(role)
        .timeouts(
            Timeouts::default()
                .connect(Duration::from_secs(1))
                .response(Duration::from_secs(1))
                .checkout(Duration::from_secs(2)),
        )
        // Would resend a READONLY write 5 times if the replica handle treated it as transient.
        .retry(RetryPolicy::default().max_attempts(5))
        .build()?;
    Ok(Redis::connect(config)?)
}

fn node_addr(setup: &SentinelSetup, i: usize) -> Addr {
    Addr::Tcp {
        host: "127.0.0.1".into(),
        port: setup.node(i).port(),
    }
}

/// Waits until `reader` sees `key` = `value` (replication is asynchronous).
fn wait_visible(reader: &Redis, key: &str, value: i64) -> TestResult {
    let mut last = None;
    wait_until(
        Duration::from_secs(20),
        "the write to reach the replica",
        || {
            let got = reader.query::<Option<i64>>(redis::cmd("GET").arg(key));
            let seen = matches!(got, Ok(Some(v)) if v == value);
            last = Some(got);
            seen
        },
    )
    .map_err(|e| format!("{e}; last read: {last:?}"))?;
    Ok(())
}

/// A write through the replica handle fails at once with a typed `READONLY` error, without
/// retries, and leaves the handle usable.
fn write_is_refused(reader: &Redis) -> TestResult {
    let retries = reader.stats().retries;
    let started = Instant::now();
    let err = reader
        .query::<()>(redis::cmd("SET").arg("through-the-replica").arg(1))
        .expect_err("a write through the replica handle succeeded");
    assert_eq!(err.class(), ErrorClass::ReadOnly, "{err:?}");
    assert_eq!(reader.stats().retries, retries, "READONLY was retried");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    reader.query::<Option<i64>>(redis::cmd("GET").arg("through-the-replica"))?;
    Ok(())
}

#[test]
fn replica_handle_reads_what_the_master_handle_wrote_and_refuses_writes() -> TestResult {
    support::init_logs();
    let setup = SentinelSetup::start()?;
    let writer = handle(&setup, SentinelRole::Master)?;
    // The read handle from a URL: every sentinel, the master's name, the role.
    let hosts: Vec<String> = setup
        .sentinel_addrs()
        .iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect();
    let url = format!(
        "redis+sentinel://{}/{}?sentinel_role=replica&connect_timeout=1s&response_timeout=1s&checkout_timeout=2s",
        hosts.join(","),
        setup.master_name()
    );
    let reader = Redis::connect(
        ConfigBuilder::from_url(&url)?.retry(RetryPolicy::default().max_attempts(5)),
    )?;
    assert_eq!(
        reader.config().sentinel().map(|s| s.role()),
        Some(SentinelRole::Replica)
    );
    let events = reader.events_with_capacity(256);
    assert_eq!(writer.sentinel_master(), Some(node_addr(&setup, 0)));
    assert_eq!(reader.sentinel_master(), Some(node_addr(&setup, 1)));

    writer.query::<()>(redis::cmd("SET").arg("k").arg(1))?;
    wait_visible(&reader, "k", 1)?;
    write_is_refused(&reader)?;
    let role: Vec<redis::Value> = reader.query(&redis::cmd("ROLE"))?;
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"slave".to_vec()))
    );

    // The replica is promoted: the replica handle leaves it and, once the old master has
    // become a replica and caught up, reads from that one.
    let new = setup.failover()?;
    assert_eq!(new, 1);
    setup.wait_ready(Duration::from_secs(20))?;
    writer.query::<()>(redis::cmd("SET").arg("k").arg(2))?;
    wait_until(
        Duration::from_secs(20),
        "the replica handle to move to the demoted master",
        || reader.sentinel_master() == Some(node_addr(&setup, 0)),
    )?;
    wait_visible(&reader, "k", 2)?;
    // Still on a replica: every connection to the promoted node was retired.
    write_is_refused(&reader)?;

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while let Ok(e) = events.recv_deadline(deadline) {
        if let Event::FailoverDetected { old, new, .. } = e {
            seen = Some((old, new));
            break;
        }
    }
    assert_eq!(
        seen,
        Some((node_addr(&setup, 0), node_addr(&setup, 1))),
        "no FailoverDetected event on the replica handle"
    );
    reader.close()?;
    writer.close()?;
    Ok(())
}
