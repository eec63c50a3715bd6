//! Sentinel over TLS: master, replica and sentinels all serve TLS only (mutual TLS), and a
//! handle with the custom CA and client certificate finds the master through the sentinels
//! and follows a `SENTINEL FAILOVER`.

mod support;

use std::time::{Duration, Instant};

use redkit::testing::{wait_until, SentinelSetup, TlsMaterial};
use redkit::{Addr, Config, ConfigBuilder, Event, Redis, Timeouts};
use support::TestResult;

fn builder(setup: &SentinelSetup, tls: &TlsMaterial) -> ConfigBuilder {
    Config::builder()
        .sentinel(setup.master_name(), setup.sentinel_addrs())
        .tls_ca_pem(tls.ca_cert_pem())
        .tls_client_identity_pem(tls.client_cert_pem(), tls.client_key_pem())
        .timeouts(
            Timeouts::default()
                .connect(Duration::from_secs(2))
                .response(Duration::from_secs(2))
                .checkout(Duration::from_secs(2)),
        )
}

fn node_addr(setup: &SentinelSetup, i: usize) -> Addr {
    Addr::Tcp {
        host: "127.0.0.1".into(),
        port: setup.node(i).port(),
    }
}

#[test]
fn tls_sentinels_lead_to_a_tls_master_and_follow_a_failover() -> TestResult {
    support::require!(tls);
    support::init_logs();
    let tls = TlsMaterial::generate()?;
    let setup = SentinelSetup::builder().tls(tls.clone()).start()?;
    assert!(setup.tls_material().is_some());

    // The sentinels serve TLS only: plain TCP to them cannot discover anything.
    let plain = builder(&setup, &tls)
        .sentinel_tls(false)
        .heartbeat(redkit::HeartbeatConfig::disabled())
        .build()?;
    assert!(
        Redis::connect(plain).is_err(),
        "plain TCP to TLS-only sentinels worked"
    );

    // By default the sentinels use the data nodes' TLS settings (CA and client identity).
    let redis = Redis::connect(builder(&setup, &tls).build()?)?;
    let events = redis.events_with_capacity(256);
    assert_eq!(redis.sentinel_master(), Some(node_addr(&setup, 0)));
    redis.query::<()>(redis::cmd("SET").arg("before").arg(1))?;
    let v: i64 = redis.query(redis::cmd("GET").arg("before"))?;
    assert_eq!(v, 1);

    let new = setup.failover()?;
    assert_ne!(new, 0);
    // The listener (over TLS) sees +switch-master; writes go to the new master.
    let mut after = Err::<(), redkit::Error>(redkit::Error::Closed);
    wait_until(Duration::from_secs(15), "writes on the new master", || {
        after = redis.query::<()>(redis::cmd("SET").arg("after").arg(2));
        after.is_ok() && redis.sentinel_master() == Some(node_addr(&setup, new))
    })
    .map_err(|e| format!("{e}; last write: {after:?}"))?;
    let got: (i64, i64) = redis.query(redis::cmd("MGET").arg("before").arg("after"))?;
    assert_eq!(got, (1, 2));
    let mut con = setup.node(new).admin()?;
    let direct: i64 = redis::cmd("GET").arg("after").query(&mut con)?;
    assert_eq!(direct, 2, "the write went to the new master");

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
        Some((node_addr(&setup, 0), node_addr(&setup, new))),
        "no FailoverDetected event"
    );
    redis.close()?;
    Ok(())
}
