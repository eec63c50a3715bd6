//! Pub/Sub under faults: a restarted server, a killed connection, a black-holed connection,
//! subscribing while the server is down. The subscriber must never go deaf.

mod support;

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redkit::pubsub::{Kind, Subscriber, Subscription, SubscriptionOptions};
use redkit::testing::{wait_until, FaultProxy, ProxyMode};
use redkit::{Backoff, ErrorClass, Event, HeartbeatConfig, Jitter, Redis};
use support::*;

const INTERVAL: Duration = Duration::from_millis(100);
const PING_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_millis(200);

fn quick_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .interval(INTERVAL)
        .timeout(PING_TIMEOUT)
        .reconnect_backoff(
            Backoff::exponential(Duration::from_millis(20), BACKOFF_CAP).jitter(Jitter::Full),
        )
}

/// Waits for a subscriber event matching `want`; returns it.
fn wait_event(rx: &Receiver<Event>, timeout: Duration, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) if want(&e) => return e,
            Ok(e) => seen.push(e),
            Err(_) => panic!("no matching event within {timeout:?}; saw {seen:?}"),
        }
    }
}

fn is_resubscribed(e: &Event) -> bool {
    matches!(e, Event::Resubscribed { .. })
}

/// Publishes 100 numbered messages on `channel` (through `redis`) and checks each arrives,
/// in order.
fn every_message_arrives(redis: &Redis, sub: &Subscription, channel: &str) {
    for i in 0..100 {
        redis.publish(channel, i).expect("publish");
    }
    for i in 0..100i64 {
        let m = sub
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("message {i} after resubscribing: {e}"));
        assert_eq!(m.payload_as::<i64>().expect("number"), i);
    }
}

fn drain(sub: &Subscription) {
    while sub.try_recv().is_ok() {}
}

#[test]
fn server_restart_resubscribes_everything_within_the_bound() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(builder(&server).heartbeat(quick_heartbeat()))?;
    let events = redis.events();
    let subscriber = Subscriber::new(&redis)?;
    let channel = subscriber.subscribe(["ch"])?;
    let pattern = subscriber.psubscribe(["pat.*"])?;
    // Shard channels came with 7.0; before, classic channels and patterns only.
    let shards = part_needs(redkit::version::Feature::ShardedPubSub);
    let shard = match shards {
        true => Some(subscriber.ssubscribe(["{s}.x"])?),
        false => None,
    };

    server.restart()?;
    let back = Instant::now();
    // The subscriber's resubscription, and the handle's own reconnection (its heartbeat
    // retires the pooled connections of the old process): until then a PUBLISH through the
    // handle may meet a connection the restart closed, and it is not resent (its fate is
    // unknown). They come in either order.
    let deadline = back + Duration::from_secs(10);
    let (mut resubscribed, mut reconnected, mut took) = (None, false, Duration::ZERO);
    while resubscribed.is_none() || !reconnected {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) if is_resubscribed(&e) => {
                took = back.elapsed();
                resubscribed = Some(e);
            }
            Ok(Event::Reconnected { .. }) => reconnected = true,
            Ok(_) => {}
            Err(_) => panic!("resubscribed: {resubscribed:?}, reconnected: {reconnected}"),
        }
    }
    let e = resubscribed.ok_or("no Resubscribed event")?;
    // The server was back at `back`; the next attempt comes within one backoff delay.
    let bound = INTERVAL + BACKOFF_CAP + Duration::from_millis(700);
    assert!(
        took <= bound,
        "resubscribed {took:?} after the server came back (bound {bound:?})"
    );
    match e {
        Event::Resubscribed {
            channels,
            patterns,
            shard_channels,
            downtime,
        } => {
            assert_eq!(
                (channels, patterns, shard_channels),
                (1, 1, u8::from(shards).into())
            );
            assert!(downtime > Duration::ZERO);
        }
        other => panic!("{other:?}"),
    }
    let stats = subscriber.stats();
    assert_eq!((stats.disconnections, stats.resubscriptions), (1, 1));
    assert!(stats.last_downtime.is_some());

    every_message_arrives(&redis, &channel, "ch");
    every_message_arrives(&redis, &pattern, "pat.1");
    let Some(shard) = shard else {
        return Ok(());
    };
    for i in 0..10 {
        redis.spublish("{s}.x", i)?;
    }
    for _ in 0..10 {
        assert_eq!(
            shard.recv_timeout(Duration::from_secs(5))?.kind(),
            Kind::Shard
        );
    }
    Ok(())
}

#[test]
fn client_kill_of_the_subscriber_connection_recovers() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).heartbeat(quick_heartbeat()))?;
    let events = redis.events();
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe(["killed"])?;
    let mut admin = admin(&server);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut admin)?;
    assert_eq!(killed, 1);
    let killed_at = Instant::now();
    wait_event(&events, Duration::from_secs(5), |e| {
        matches!(e, Event::SubscriberDisconnected { .. })
    });
    wait_event(&events, Duration::from_secs(5), is_resubscribed);
    assert!(
        killed_at.elapsed() < INTERVAL + BACKOFF_CAP + Duration::from_millis(700),
        "took {:?}",
        killed_at.elapsed()
    );
    drain(&sub);
    every_message_arrives(&redis, &sub, "killed");
    Ok(())
}

#[test]
fn a_black_holed_connection_is_detected_and_recovered() -> TestResult {
    let server = server();
    let proxy = FaultProxy::start_for(&server)?;
    // The handle's own traffic goes straight to the server; the subscriber's through the
    // proxy (same settings, other port).
    let direct = Redis::connect(builder(&server).heartbeat(quick_heartbeat()))?;
    let through = Redis::connect(
        builder(&server)
            .port(proxy.port())
            .heartbeat(quick_heartbeat()),
    )?;
    let events = through.events();
    let subscriber = Subscriber::new(&through)?;
    let sub = subscriber.subscribe(["bh"])?;
    direct.publish("bh", "before")?;
    assert_eq!(
        sub.recv_timeout(Duration::from_secs(5))?.payload(),
        b"before"
    );

    proxy.set_mode(ProxyMode::BlackHole);
    let cut_at = Instant::now();
    wait_event(&events, Duration::from_secs(5), |e| {
        matches!(e, Event::SubscriberDisconnected { .. })
    });
    let detected = cut_at.elapsed();
    // Idle for an interval, then a PING that is not answered within the timeout.
    let bound = INTERVAL + PING_TIMEOUT + Duration::from_millis(700);
    assert!(
        detected <= bound,
        "detected after {detected:?} (bound {bound:?})"
    );
    assert!(!subscriber.is_connected() || subscriber.stats().disconnections >= 1);

    proxy.set_mode(ProxyMode::Pass);
    wait_event(&events, Duration::from_secs(10), is_resubscribed);
    drain(&sub);
    every_message_arrives(&direct, &sub, "bh");
    Ok(())
}

#[test]
fn subscribing_while_the_server_is_down_completes_when_it_is_back() -> TestResult {
    let mut server = server();
    let redis = Redis::connect(builder(&server).heartbeat(quick_heartbeat()))?;
    let events = redis.events();
    let subscriber = Subscriber::new(&redis)?;
    let _keep = subscriber.subscribe(["kept"])?;
    server.kill()?;
    wait_event(&events, Duration::from_secs(5), |e| {
        matches!(e, Event::SubscriberDisconnected { .. })
    });

    // A short confirmation timeout fails with a typed timeout and leaves nothing behind.
    let err = subscriber
        .subscribe_with(
            Kind::Channel,
            ["late"],
            SubscriptionOptions::default().timeout(Duration::from_millis(200)),
        )
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout, "{err:?}");
    wait_until(
        Duration::from_secs(5),
        "the withdrawn subscription is gone",
        || subscriber.stats().subscriptions == 1,
    )?;

    // A longer one waits for the server to come back.
    std::thread::scope(|s| -> TestResult {
        let pending = s.spawn(|| {
            subscriber.subscribe_with(
                Kind::Channel,
                ["late"],
                SubscriptionOptions::default().timeout(Duration::from_secs(20)),
            )
        });
        wait_until(Duration::from_secs(5), "the request is registered", || {
            subscriber.stats().subscriptions == 2
        })?;
        server.restart()?;
        let late = pending.join().map_err(|_| "subscribe panicked")??;
        every_message_arrives(&redis, &late, "late");
        Ok(())
    })?;
    Ok(())
}
