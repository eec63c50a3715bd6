//! After every handle is dropped, no thread of ours is left and the server sees no connection
//! of ours. One test in its own binary, so that no other test's threads blur the count.

mod support;

use redkit::pubsub::Subscriber;
use std::time::Duration;

use redkit::testing::{wait_until, FaultProxy};
use redkit::Redis;
use support::*;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until the process has `baseline` threads again (when /proc tells).
fn back_to(baseline: usize) -> TestResult {
    if baseline > 0 {
        wait_until(
            Duration::from_secs(5),
            "thread count back to baseline",
            || threads() == baseline,
        )?;
    }
    Ok(())
}

fn ours(admin: &mut redis::Connection, name: &str) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains(&format!("name={name} ")))
        .count()
}

#[test]
fn dropping_every_handle_leaves_no_thread_and_no_connection() -> TestResult {
    let server = server();
    let mut admin = admin(&server);
    let baseline = threads();
    if baseline == 0 {
        eprintln!("no /proc/self/task here: skipping the thread count");
    }

    for round in ["dropped", "closed"] {
        let redis = Redis::connect(builder(&server).client_name(round).pool_max_size(8))?;
        let events = redis.events();
        // Work from several threads, so the pool grows and its threads run.
        std::thread::scope(|s| {
            for t in 0..4 {
                let redis = redis.clone();
                s.spawn(move || {
                    for i in 0..100 {
                        redis
                            .query::<()>(redis::cmd("SET").arg(format!("{t}:{i}")).arg(i))
                            .expect("SET");
                    }
                });
            }
        });
        let clones: Vec<Redis> = (0..3).map(|_| redis.clone()).collect();
        // A subscriber with a plain subscription and a callback handler (two more threads).
        let subscriber = Subscriber::new(&redis)?;
        let handler = subscriber.subscribe(["life"])?.handle(|_| {})?;
        let sub = subscriber.psubscribe(["life.*"])?;
        redis.publish("life", "x")?;
        redis.publish("life.1", "y")?;
        wait_until(Duration::from_secs(5), "the handler ran", || {
            handler.handled() == 1
        })?;
        assert_eq!(sub.recv_timeout(Duration::from_secs(5))?.payload(), b"y");
        // A watchdog-renewed lock and a group member (one more thread: the lock watchdog).
        let guard = redkit::lock::Lock::builder(&redis, "life")
            .ttl(Duration::from_secs(1))
            .watchdog(true)
            .build()?
            .acquire()?;
        let member = redkit::lock::Group::new(&redis, "life")?.join(round)?;
        assert!(redis.lock_watchdog_running() && member.is_leader());
        assert!(threads() > baseline, "the heartbeat and pool threads run");
        wait_until(Duration::from_secs(5), "connections open", || {
            ours(&mut admin, round) >= 2
        })?;

        if round == "closed" {
            // Closing the handle stops the subscriber too (its subscriptions end).
            redis.close()?;
            assert!(sub.recv_timeout(Duration::from_secs(5)).is_err());
        }
        drop(guard);
        drop(member);
        drop(handler);
        drop(sub);
        drop(subscriber);
        drop(clones);
        drop(redis);
        // Listeners see Closed, then the end of the channel.
        let rest: Vec<redkit::Event> = events.iter().collect();
        assert!(
            matches!(rest.last(), Some(redkit::Event::Closed)),
            "{rest:?}"
        );

        back_to(baseline)?;
        wait_until(Duration::from_secs(5), "no connection of ours", || {
            ours(&mut admin, round) == 0
        })?;
    }

    // A handle through a proxy that goes silent also shuts down cleanly.
    let proxy = FaultProxy::start_for(&server)?;
    let redis = Redis::connect(
        builder(&server)
            .port(proxy.port())
            .client_name("silenced")
            .timeouts(redkit::Timeouts::default().connect(Duration::from_millis(500))),
    )?;
    redis.query::<()>(&redis::cmd("PING"))?;
    let subscriber = Subscriber::new(&redis)?;
    let sub = subscriber.subscribe(["silenced"])?;
    proxy.set_mode(redkit::testing::ProxyMode::BlackHole);
    let t = std::time::Instant::now();
    drop(sub);
    drop(subscriber);
    drop(redis);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(proxy);
    back_to(baseline)?;
    Ok(())
}
