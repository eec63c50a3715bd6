//! Pub/Sub against real servers: delivery, ordering, patterns, shard channels, fan-out,
//! backpressure, handlers, keyspace events, typed topics, errors.
//! (Outages and reconnects are in `tests/pubsub_faults.rs`.)

mod support;

use redkit::pubsub::Subscriber;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redkit::pubsub::{Backpressure, Kind, SubscriptionOptions};
use redkit::testing::{wait_until, RedisServer, TlsMaterial};
use redkit::{ErrorClass, Protocol, Redis};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

fn numsub(redis: &Redis, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
        .expect("PUBSUB NUMSUB");
    n
}

fn recv_payloads(sub: &redkit::pubsub::Subscription, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            sub.recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("message {i} of {n}: {e}"))
                .into_payload()
        })
        .collect()
}

#[test]
fn messages_arrive_in_order_with_binary_and_huge_payloads() -> TestResult {
    let server = server();
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let redis = Redis::connect(builder(&server).protocol(protocol))?;
        let subscriber = Subscriber::new(&redis)?;
        let sub = subscriber.subscribe(["ordered"])?;
        assert_eq!(sub.kind(), Kind::Channel);
        assert_eq!(numsub(&redis, "ordered"), 1, "confirmed means subscribed");
        for i in 0..1000 {
            assert_eq!(redis.publish("ordered", i)?, 1);
        }
        let got = recv_payloads(&sub, 1000);
        let want: Vec<Vec<u8>> = (0..1000).map(|i: i32| i.to_string().into_bytes()).collect();
        assert_eq!(got, want, "{protocol:?}: per-channel order");

        // Any bytes, and a large payload, arrive intact.
        let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let huge: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        redis.publish("ordered", &binary)?;
        redis.publish("ordered", &huge)?;
        let m = sub.recv_timeout(WAIT)?;
        assert_eq!(m.payload(), &binary[..]);
        assert!(m.payload_str().is_err());
        let m = sub.recv_timeout(WAIT)?;
        assert_eq!(m.payload().len(), huge.len());
        assert!(m.payload() == &huge[..]);
        redis.publish("ordered", 42)?;
        let n: i64 = sub.recv_timeout(WAIT)?.payload_as()?;
        assert_eq!(n, 42);
    }
    Ok(())
}

#[test]
fn patterns_and_shard_channels() -> TestResult {
    let server = server();
    // Shard channels came with 7.0; before, the patterns only.
    let shards = part_needs(redkit::version::Feature::ShardedPubSub);
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let redis = Redis::connect(builder(&server).protocol(protocol))?;
        let subscriber = Subscriber::new(&redis)?;
        let pattern = subscriber.psubscribe(["news.*"])?;
        let shard = match shards {
            true => Some(subscriber.ssubscribe(["{user:1}.events"])?),
            false => None,
        };
        assert_eq!(redis.publish("news.sport", "goal")?, 1);
        assert_eq!(redis.publish("weather", "rain")?, 0);
        let m = pattern.recv_timeout(WAIT)?;
        assert_eq!(m.kind(), Kind::Pattern);
        assert_eq!(m.pattern(), Some(&b"news.*"[..]));
        assert_eq!(m.channel_str(), "news.sport");
        assert_eq!(m.payload(), b"goal");

        if let Some(shard) = &shard {
            assert_eq!(redis.spublish("{user:1}.events", "login")?, 1);
            let m = shard.recv_timeout(WAIT)?;
            assert_eq!(m.kind(), Kind::Shard, "{protocol:?}");
            assert_eq!(m.channel(), b"{user:1}.events");
            assert_eq!(m.payload(), b"login");
        }

        let stats = subscriber.stats();
        let n = u8::from(shards).into();
        assert_eq!(
            (stats.channels, stats.patterns, stats.shard_channels),
            (0, 1, n)
        );
        assert!(stats.connected);
        assert_eq!(stats.subscriptions, 1 + n);
    }
    Ok(())
}

#[test]
fn each_subscription_gets_every_message_and_the_last_drop_unsubscribes() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let a = subscriber.subscribe(["fan"])?;
    let b = subscriber.subscribe(["fan", "other"])?;
    // One connection, so the server counts one subscriber.
    assert_eq!(redis.publish("fan", "1")?, 1);
    assert_eq!(recv_payloads(&a, 1), vec![b"1".to_vec()]);
    assert_eq!(recv_payloads(&b, 1), vec![b"1".to_vec()]);

    drop(a);
    redis.publish("fan", "2")?;
    assert_eq!(recv_payloads(&b, 1), vec![b"2".to_vec()]);
    assert_eq!(numsub(&redis, "fan"), 1, "b still wants it");

    // Explicit unsubscribe waits for the confirmation: delivery stops at once.
    b.unsubscribe()?;
    assert_eq!(numsub(&redis, "fan"), 0);
    assert_eq!(numsub(&redis, "other"), 0);
    assert_eq!(redis.publish("fan", "3")?, 0);

    // Dropping without waiting unsubscribes too, shortly.
    let c = subscriber.subscribe(["dropped"])?;
    assert_eq!(numsub(&redis, "dropped"), 1);
    drop(c);
    wait_until(WAIT, "channel unsubscribed", || {
        numsub(&redis, "dropped") == 0
    })?;
    assert_eq!(subscriber.stats().subscriptions, 0);
    Ok(())
}

#[test]
fn two_hundred_thousand_messages_from_four_publishers_arrive_complete() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe_with(
        Kind::Channel,
        ["firehose"],
        SubscriptionOptions::default()
            .capacity(10_000)
            .backpressure(Backpressure::Block),
    )?;
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 50_000;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let redis = redis.clone();
            std::thread::spawn(move || -> redkit::Result<()> {
                for batch in 0..EACH / 100 {
                    let mut pipe = redkit::Pipeline::new();
                    for i in batch * 100..(batch + 1) * 100 {
                        pipe.cmd("PUBLISH")
                            .arg("firehose")
                            .arg(format!("{p}:{i}"))
                            .ignore();
                    }
                    redis.pipeline::<()>(&pipe)?;
                }
                Ok(())
            })
        })
        .collect();
    let mut next: HashMap<u64, u64> = HashMap::new();
    for n in 0..PUBLISHERS * EACH {
        let m = sub
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("after {n} messages: {e}"));
        let text = m.payload_str()?;
        let (p, i) = text.split_once(':').ok_or("payload")?;
        let (p, i): (u64, u64) = (p.parse()?, i.parse()?);
        let expected = next.entry(p).or_insert(0);
        assert_eq!(
            i, *expected,
            "publisher {p}'s messages in order, none missing"
        );
        *expected += 1;
    }
    for p in publishers {
        p.join().map_err(|_| "publisher panicked")??;
    }
    assert!(next.values().all(|&n| n == EACH));
    assert_eq!(sub.dropped(), 0);
    let stats = subscriber.stats();
    assert_eq!(stats.received, PUBLISHERS * EACH);
    assert_eq!(stats.dropped, 0);
    Ok(())
}

/// Publishes `n` numbered messages and waits until the subscriber thread has read them all.
fn publish_and_wait(redis: &Redis, subscriber: &redkit::pubsub::Subscriber, channel: &str, n: u32) {
    let before = subscriber.stats().received;
    for i in 0..n {
        redis.publish(channel, i).expect("publish");
    }
    wait_until(WAIT, "every message read", || {
        subscriber.stats().received >= before + u64::from(n)
    })
    .expect("the subscriber read every message");
}

#[test]
fn backpressure_policies_do_what_they_say_with_bounded_memory() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let opts = |p| SubscriptionOptions::default().capacity(10).backpressure(p);

    // A reader that stopped: the queue never holds more than its capacity.
    let newest =
        subscriber.subscribe_with(Kind::Channel, ["bp.newest"], opts(Backpressure::DropNewest))?;
    publish_and_wait(&redis, &subscriber, "bp.newest", 100);
    assert_eq!(newest.len(), 10);
    assert_eq!(newest.dropped(), 90);
    let got: Vec<i64> = newest.try_iter_payloads();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "the first ten are kept");

    let oldest =
        subscriber.subscribe_with(Kind::Channel, ["bp.oldest"], opts(Backpressure::DropOldest))?;
    publish_and_wait(&redis, &subscriber, "bp.oldest", 100);
    assert_eq!(oldest.len(), 10);
    assert_eq!(oldest.dropped(), 90);
    let got: Vec<i64> = oldest.try_iter_payloads();
    assert_eq!(got, (90..100).collect::<Vec<_>>(), "the last ten are kept");
    assert_eq!(subscriber.stats().dropped, 180);

    // Block: nothing is lost, the subscriber waits for the reader.
    let block =
        subscriber.subscribe_with(Kind::Channel, ["bp.block"], opts(Backpressure::Block))?;
    for i in 0..100 {
        redis.publish("bp.block", i)?;
    }
    wait_until(WAIT, "a full queue", || block.len() == 10)?;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(block.recv_timeout(WAIT)?.payload_as::<i64>()?);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(block.dropped(), 0);
    Ok(())
}

trait Drain {
    fn try_iter_payloads(&self) -> Vec<i64>;
}

impl Drain for redkit::pubsub::Subscription {
    fn try_iter_payloads(&self) -> Vec<i64> {
        std::iter::from_fn(|| self.try_recv().ok())
            .map(|m| m.payload_as::<i64>().expect("a number"))
            .collect()
    }
}

#[test]
fn a_panicking_handler_does_not_stop_delivery() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let handler = subscriber.subscribe(["jobs"])?.handle(move |msg| {
        if msg.payload() == b"boom" {
            panic!("handler failure (expected by the test)");
        }
        s.fetch_add(1, Ordering::SeqCst);
    })?;
    redis.publish("jobs", "a")?;
    redis.publish("jobs", "boom")?;
    redis.publish("jobs", "b")?;
    redis.publish("jobs", "boom")?;
    redis.publish("jobs", "c")?;
    wait_until(WAIT, "every message handled", || handler.handled() == 5)?;
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(handler.panics(), 2);
    assert_eq!(subscriber.stats().handler_panics, 2);
    // Dropping the handler unsubscribes.
    drop(handler);
    wait_until(WAIT, "jobs unsubscribed", || numsub(&redis, "jobs") == 0)?;
    Ok(())
}

#[test]
fn keyspace_notifications() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let flags = redis.enable_keyspace_events("A")?;
    assert!(flags.contains('K'), "{flags}");
    let subscriber = Subscriber::new(&redis)?;
    let events = subscriber.keyspace("user:*")?;
    redis.query::<()>(redis::cmd("SET").arg("user:1").arg("x"))?;
    redis.query::<()>(redis::cmd("SET").arg("order:1").arg("x"))?;
    redis.query::<()>(redis::cmd("DEL").arg("user:1"))?;
    let e = events.recv_timeout(WAIT)?;
    assert_eq!((e.key_str().as_ref(), e.event.as_str()), ("user:1", "set"));
    let e = events.recv_timeout(WAIT)?;
    assert_eq!((e.key_str().as_ref(), e.event.as_str()), ("user:1", "del"));
    assert!(events.try_recv().is_err(), "order:1 does not match");
    Ok(())
}

#[test]
fn typed_topic_reports_undecodable_payloads_with_the_raw_bytes() -> TestResult {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
        item: String,
    }
    let server = server();
    let redis = redis(&server);
    let subscriber = Subscriber::new(&redis)?;
    let topic: redkit::pubsub::Topic<Order> = redkit::pubsub::Topic::new("orders");
    let orders = topic.subscribe(&subscriber)?;
    let order = Order {
        id: 7,
        item: "book".into(),
    };
    assert_eq!(topic.publish(&redis, &order)?, 1);
    redis.publish("orders", "not json")?;
    assert_eq!(
        orders.recv_timeout(WAIT)?.map_err(|e| e.to_string())?,
        order
    );
    let bad = orders.recv_timeout(WAIT)?.expect_err("undecodable");
    assert_eq!(bad.message().payload(), b"not json");
    assert!(bad.to_string().contains("orders"), "{bad}");
    Ok(())
}

#[test]
fn bad_input_gets_typed_errors() -> TestResult {
    // ACL rules on channels came with 6.2.
    let channel_rules = part_needs(redkit::version::Feature::AclChannels);
    let mut server = RedisServer::builder().password("sub-secret-pw");
    if channel_rules {
        server = server.acl_user("user narrow on >narrow-pw ~* resetchannels &allowed.* +@all");
    }
    let server = server.start()?;
    init_logs();
    let err =
        Subscriber::new(&Redis::connect_lazy(builder(&server).password("wrong-pw"))?).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-pw"));

    // A channel the ACL forbids: a permission error; the subscriber goes on working.
    let subscriber = if channel_rules {
        let narrow = Redis::connect(builder(&server).username("narrow").password("narrow-pw"))?;
        let subscriber = Subscriber::new(&narrow)?;
        let err = subscriber.subscribe(["forbidden"]).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permission, "{err:?}");
        let ok = subscriber.subscribe(["allowed.1"])?;
        narrow.publish("allowed.1", "hi")?;
        assert_eq!(ok.recv_timeout(WAIT)?.payload(), b"hi");
        assert_eq!(subscriber.stats().subscriptions, 1);
        subscriber
    } else {
        Subscriber::new(&Redis::connect(builder(&server).password("sub-secret-pw"))?)?
    };

    // No names, or a zero capacity: configuration errors, nothing sent.
    let none: [&str; 0] = [];
    assert_eq!(
        subscriber.subscribe(none).unwrap_err().class(),
        ErrorClass::Config
    );
    let err = subscriber
        .subscribe_with(
            Kind::Channel,
            ["x"],
            SubscriptionOptions::default().capacity(0),
        )
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config);
    Ok(())
}

#[test]
fn subscriber_over_tls() -> TestResult {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    init_logs();
    let server = RedisServer::builder()
        .tls(tls.clone())
        .tls_auth_clients(true)
        .start()?;
    let redis = Redis::connect(
        builder(&server)
            .tls_ca_pem(tls.ca_cert_pem())
            .tls_client_identity_pem(tls.client_cert_pem(), tls.client_key_pem()),
    )?;
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe(["secure"])?;
    redis.publish("secure", "over tls")?;
    assert_eq!(sub.recv_timeout(WAIT)?.payload(), b"over tls");

    // A wrong CA fails with a TLS error, not a hang.
    let wrong = Redis::connect_lazy(
        builder(&server)
            .tls_ca_pem(tls.other_ca_cert_pem())
            .tls_client_identity_pem(tls.client_cert_pem(), tls.client_key_pem()),
    )?;
    let err = Subscriber::new(&wrong).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");
    Ok(())
}

#[test]
fn dropping_the_subscriber_ends_its_subscriptions_and_closes_its_connection() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).client_name("sub-drop-test"))?;
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe(["x"])?;
    let pubsub_clients = || -> usize {
        let list: String = redis
            .query(redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"))
            .expect("CLIENT LIST");
        list.lines().count()
    };
    assert_eq!(pubsub_clients(), 1);
    drop(subscriber);
    assert!(sub.recv_timeout(WAIT).is_err(), "the subscription ended");
    wait_until(WAIT, "no pub/sub client left", || pubsub_clients() == 0)?;
    // Closing the handle stops a subscriber too.
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe(["y"])?;
    redis.close()?;
    assert!(sub.recv_timeout(WAIT).is_err());
    assert!(!subscriber.is_connected());
    assert!(matches!(
        subscriber.subscribe(["z"]),
        Err(redkit::Error::Closed)
    ));
    Ok(())
}
