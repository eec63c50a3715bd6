//! Pub/Sub on Redis Cluster: classic channels and patterns through one node, shard channels
//! on the master owning their slot, a slot moving under a shard channel, a master killed
//! under both (its replica promoted). Each test starts its own cluster (a few seconds).

mod support;

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redkit::pubsub::{Subscriber, Subscription};
use redkit::testing::RedisCluster;
use redkit::{Backoff, ErrorClass, Event, HeartbeatConfig, Jitter, Protocol, Redis};
use support::{cluster, cluster_builder, TestResult};

const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits for the subscriber to follow a slot move or a failover.
const RECOVERY: Duration = Duration::from_secs(20);

/// Quick retries; a lenient `PING` timeout (two clusters share two cores while the tests
/// run, and no test here wants a connection lost to a slow answer).
fn quick_heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .interval(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .reconnect_backoff(
            Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
                .jitter(Jitter::Full),
        )
}

/// A shard channel name (with `tag` in it) for each of `masters`, hashing to a slot that
/// master owns.
fn channel_per_master(
    cluster: &RedisCluster,
    masters: &[usize],
    tag: &str,
) -> TestResult<Vec<(String, u16)>> {
    let mut out: Vec<Option<(String, u16)>> = vec![None; masters.len()];
    for i in 0..10_000 {
        if out.iter().all(Option::is_some) {
            break;
        }
        let name = format!("{tag}:{i}");
        let slot = cluster.key_slot(&name)?;
        let owner = cluster.slot_owner(slot)?;
        if let Some(k) = masters.iter().position(|&m| m == owner) {
            if out[k].is_none() {
                out[k] = Some((name, slot));
            }
        }
    }
    out.into_iter()
        .map(|c| c.ok_or_else(|| "no channel name for some master".into()))
        .collect()
}

/// Publishes `payload` with `publish` every 100 ms until `sub` receives it (messages
/// published while the subscriber resubscribes are lost: that is Redis pub/sub). Other
/// payloads received meanwhile are skipped. Fails after `within`.
fn publish_until_received(
    sub: &Subscription,
    payload: &str,
    within: Duration,
    mut publish: impl FnMut() -> redkit::Result<usize>,
) -> TestResult {
    let deadline = Instant::now() + within;
    let mut errors = Vec::new();
    loop {
        if let Err(e) = publish() {
            // The handle itself may be following the same move or failover.
            errors.push(e.to_string());
        }
        let until = (Instant::now() + Duration::from_millis(100)).min(deadline);
        while let Ok(m) = sub.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if m.payload() == payload.as_bytes() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{payload:?} never arrived within {within:?} (publish errors: {errors:?})"
            )
            .into());
        }
    }
}

/// Numbered messages on each shard channel arrive complete and in order at every
/// subscription to it (a leftover non-numbered message from [`publish_until_received`] is
/// skipped).
fn every_message_arrives(redis: &Redis, subs: &[(&Subscription, &str)], n: usize) -> TestResult {
    let mut channels: Vec<&str> = subs.iter().map(|(_, c)| *c).collect();
    channels.sort_unstable();
    channels.dedup();
    for i in 0..n {
        for channel in &channels {
            let want = subs.iter().filter(|(_, c)| c == channel).count();
            assert_eq!(
                redis.spublish(*channel, i)?,
                want,
                "subscribers of {channel}"
            );
        }
    }
    for (sub, channel) in subs {
        let mut i = 0;
        while i < n {
            let m = sub
                .recv_timeout(WAIT)
                .map_err(|e| format!("message {i} on {channel}: {e}"))?;
            assert_eq!(m.channel(), channel.as_bytes());
            let Ok(got) = m.payload_as::<usize>() else {
                continue;
            };
            assert_eq!(got, i, "order on {channel}");
            i += 1;
        }
    }
    Ok(())
}

/// `PUBSUB SHARDNUMSUB channel` asked of node `i` directly.
fn shard_numsub(cluster: &RedisCluster, i: usize, channel: &str) -> TestResult<i64> {
    let mut con = cluster.node(i).admin()?;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query(&mut con)?;
    Ok(n)
}

/// The node holding the subscriber's classic subscriptions (a pub/sub client with `sub=1`).
fn classic_node(cluster: &RedisCluster) -> TestResult<usize> {
    for i in cluster.masters()? {
        let mut con = cluster.node(i).admin()?;
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut con)?;
        if clients.lines().any(|l| l.contains(" sub=1 ")) {
            return Ok(i);
        }
    }
    Err("no master holds the classic subscriptions".into())
}

fn wait_event(rx: &Receiver<Event>, within: Duration, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) if want(&e) => return e,
            Ok(e) => seen.push(e),
            Err(_) => panic!("no matching event within {within:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn classic_and_shard_channels_on_every_master_survive_a_slot_move() -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).heartbeat(quick_heartbeat()))?;
    let subscriber = Subscriber::new(&redis)?;

    // Classic channels and patterns: PUBLISH reaches every node, wherever it ran.
    let news = subscriber.subscribe(["news"])?;
    let alerts = subscriber.psubscribe(["alerts.*"])?;
    for i in 0..20 {
        redis.publish("news", i)?;
        redis.publish(format!("alerts.{i}"), i)?;
    }
    for i in 0..20 {
        assert_eq!(news.recv_timeout(WAIT)?.payload_as::<i32>()?, i);
        let m = alerts.recv_timeout(WAIT)?;
        assert_eq!(m.channel_str(), format!("alerts.{i}"));
    }
    // The rest is shard channels (Redis 7.0).
    support::require!(redkit::version::Feature::ShardedPubSub);

    // One shard channel on each master: each subscribed on its owner, by a RESP2 and a
    // RESP3 subscriber.
    let masters = cluster.masters()?;
    assert_eq!(masters.len(), 3);
    let channels = channel_per_master(&cluster, &masters, "orders")?;
    let subs: Vec<Subscription> = channels
        .iter()
        .map(|(name, _)| subscriber.ssubscribe([name]))
        .collect::<redkit::Result<_>>()?;
    let resp3 = Redis::connect(cluster_builder(&cluster).protocol(Protocol::Resp3))?;
    let subscriber3 = Subscriber::new(&resp3)?;
    let subs3: Vec<Subscription> = channels
        .iter()
        .map(|(name, _)| subscriber3.ssubscribe([name]))
        .collect::<redkit::Result<_>>()?;
    for ((name, _), &m) in channels.iter().zip(&masters) {
        assert_eq!(shard_numsub(&cluster, m, name)?, 2, "{name} on its owner");
    }
    let pairs: Vec<(&Subscription, &str)> = subs
        .iter()
        .chain(&subs3)
        .zip(channels.iter().chain(&channels))
        .map(|(s, (n, _))| (s, n.as_str()))
        .collect();
    every_message_arrives(&redis, &pairs, 50)?;
    let stats = subscriber.stats();
    assert_eq!(
        (stats.channels, stats.patterns, stats.shard_channels),
        (1, 1, 3)
    );

    // Shard channels of one call must share a slot (as Redis itself requires).
    let e = subscriber
        .ssubscribe([channels[0].0.as_str(), channels[1].0.as_str()])
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");

    // Move the first channel's slot to the second master: the old owner drops the
    // subscription, the subscriber resubscribes on the new owner.
    let (moved, slot) = &channels[0];
    let (from, to) = (masters[0], masters[1]);
    cluster.move_slot(*slot, to)?;
    assert_eq!(cluster.slot_owner(*slot)?, to);
    for sub in [&subs[0], &subs3[0]] {
        publish_until_received(sub, "after the move", RECOVERY, || {
            redis.spublish(moved, "after the move")
        })?;
    }
    assert_eq!(
        shard_numsub(&cluster, to, moved)?,
        2,
        "{moved} on its new owner"
    );
    assert_eq!(
        shard_numsub(&cluster, from, moved)?,
        0,
        "{moved} left its old owner"
    );
    // Every subscription kept working, in order, the moved one included.
    every_message_arrives(&redis, &pairs, 20)?;
    redis.publish("news", "still here")?;
    assert_eq!(news.recv_timeout(WAIT)?.payload(), b"still here");
    assert!(subscriber.is_connected());

    assert!(subscriber3.is_connected());

    // A slot moved before anything refreshed the handle's slot map: the subscription goes
    // to the old owner first, which answers MOVED; it lands on the new owner all the same.
    let fresh = channel_per_master(&cluster, &masters[2..], "fresh")?;
    let (fresh, fresh_slot) = &fresh[0];
    cluster.move_slot(*fresh_slot, masters[0])?;
    let fresh_sub = subscriber.ssubscribe([fresh])?;
    let fresh_sub3 = subscriber3.ssubscribe([fresh])?;
    assert_eq!(shard_numsub(&cluster, masters[0], fresh)?, 2);
    every_message_arrives(&redis, &[(&fresh_sub, fresh), (&fresh_sub3, fresh)], 5)?;

    // Unsubscribing a shard channel removes it from its owner.
    drop(pairs);
    let (mut subs, mut subs3) = (subs, subs3);
    for subs in [&mut subs, &mut subs3] {
        let last = subs.pop().ok_or("no subscription")?;
        last.unsubscribe()?;
    }
    assert_eq!(shard_numsub(&cluster, masters[2], &channels[2].0)?, 0);
    for s in [&subscriber, &subscriber3] {
        let stats = s.stats();
        assert_eq!(stats.shard_channels, 3);
        assert_eq!(stats.disconnections, 0, "a slot move loses no connection");
    }
    every_message_arrives(
        &redis,
        &[(&subs[1], &channels[1].0), (&subs3[1], &channels[1].0)],
        5,
    )?;
    Ok(())
}

#[test]
fn a_killed_master_s_subscriptions_come_back_on_its_promoted_replica() -> TestResult {
    support::require!(redkit::version::Feature::ShardedPubSub);
    let mut cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).heartbeat(quick_heartbeat()))?;
    let events = redis.events();
    let subscriber = Subscriber::new(&redis)?;
    let news = subscriber.subscribe(["news"])?;
    let alerts = subscriber.psubscribe(["alerts.*"])?;

    // A shard channel on the master holding the classic subscriptions (so that one kill
    // takes both), and one on another master.
    let victim = classic_node(&cluster)?;
    let other = cluster
        .masters()?
        .into_iter()
        .find(|&m| m != victim)
        .ok_or("no other master")?;
    let channels = channel_per_master(&cluster, &[victim, other], "jobs")?;
    let on_victim = subscriber.ssubscribe([&channels[0].0])?;
    let on_other = subscriber.ssubscribe([&channels[1].0])?;
    let pairs = [
        (&on_victim, channels[0].0.as_str()),
        (&on_other, channels[1].0.as_str()),
    ];
    every_message_arrives(&redis, &pairs, 10)?;

    let promoted = cluster.kill_master_and_wait(victim, RECOVERY)?;
    wait_event(&events, RECOVERY, |e| {
        matches!(e, Event::SubscriberDisconnected { .. })
    });
    let e = wait_event(&events, RECOVERY, |e| {
        matches!(e, Event::Resubscribed { .. })
    });
    let Event::Resubscribed {
        channels: c,
        patterns: p,
        shard_channels: s,
        ..
    } = e
    else {
        unreachable!()
    };
    assert_eq!((c, p, s), (1, 1, 2));
    assert_eq!(cluster.slot_owner(channels[0].1)?, promoted);

    // Everything arrives again: the classic link on another node, the shard channel on the
    // promoted replica, the other shard channel untouched.
    publish_until_received(&news, "back", RECOVERY, || redis.publish("news", "back"))?;
    publish_until_received(&alerts, "back", RECOVERY, || {
        redis.publish("alerts.x", "back")
    })?;
    publish_until_received(&on_victim, "back", RECOVERY, || {
        redis.spublish(&channels[0].0, "back")
    })?;
    every_message_arrives(&redis, &pairs, 20)?;
    assert_eq!(shard_numsub(&cluster, promoted, &channels[0].0)?, 1);
    assert!(subscriber.is_connected());
    assert!(subscriber.stats().resubscriptions >= 1);

    // A new subscriber starts even when the first seed may be the dead node.
    let late = Subscriber::new(&redis)?;
    let late_sub = late.ssubscribe([&channels[0].0])?;
    assert_eq!(redis.spublish(&channels[0].0, "late")?, 2);
    assert_eq!(late_sub.recv_timeout(WAIT)?.payload(), b"late");
    Ok(())
}
