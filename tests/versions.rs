//! The server's version, and what redkit does on each: the fallbacks for servers before 6.2
//! and 7.0 (checked in the server's own command counts), the claim of pending jobs trimmed
//! from the stream, and the typed error of a feature the server lacks. Run against every
//! supported server by `scripts/test-servers.sh`.

mod support;

use redkit::pubsub::Subscriber;
use std::collections::BTreeSet;
use std::time::Duration;

use redkit::testing::{wait_until, RedisServer, ServerBinary};
use redkit::version::Feature;
use redkit::{Error, ErrorClass, ServerFlavor};
use support::*;

/// How many times the server ran `command` (`INFO commandstats`; 0 when never).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut admin(server))
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_handle_and_the_launcher_agree_on_the_version() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let version = redis.server_version()?;
    let binary = ServerBinary::find()?;
    assert_eq!(version, binary.version(), "INFO against --version");
    // Asked once: the second answer comes from the handle, not from the server.
    let before = calls(&server, "info");
    assert_eq!(redis.server_version()?, version);
    // (+1: the INFO commandstats of `calls` itself.)
    assert_eq!(calls(&server, "info"), before + 1);
    let info = redkit::monitor::Monitor::new(&redis).info()?;
    assert_eq!(info.server.version, Some(version));
    match version.flavor() {
        ServerFlavor::Valkey => {
            let own = format!(
                "{}.{}.{}",
                version.major(),
                version.minor(),
                version.patch()
            );
            assert_eq!(info.server.valkey_version.as_deref(), Some(own.as_str()));
            assert!(version.at_least(7, 2), "{version}");
        }
        _ => assert_eq!(info.server.valkey_version, None),
    }
    eprintln!("server: {version} ({})", binary.path().display());
    Ok(())
}

#[test]
fn list_queue_moves_with_lmove_or_with_brpoplpush_before_6_2() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let version = redis.server_version()?;
    let queue = redkit::ListQueue::builder(&redis, "moves").build()?;
    queue.push_batch(["1", "2", "3", "4"])?;
    let mut c = queue.consumer()?;
    let first = c.try_recv()?.expect("one ready");
    let second = c.recv_timeout(Duration::from_secs(2))?.expect("one more");
    assert_eq!((first.payload(), second.payload()), (&b"1"[..], &b"2"[..]));
    assert_eq!(c.in_flight()?, 2);
    // The reaper script gives both back to the end consumers take from, in order.
    assert_eq!(c.close()?, 2);
    let mut again = queue.consumer()?;
    let mut order = Vec::new();
    while let Some(job) = again.try_recv()? {
        assert!(again.ack(&job)?);
        order.push(job.into_payload());
    }
    assert_eq!(order, [b"1", b"2", b"3", b"4"].map(|b| b.to_vec()));
    let (lmove, blmove) = (calls(&server, "lmove"), calls(&server, "blmove"));
    let (rpoplpush, brpoplpush) = (calls(&server, "rpoplpush"), calls(&server, "brpoplpush"));
    if version.supports(Feature::Lmove) {
        assert!(
            lmove >= 1 && blmove >= 1,
            "{version}: LMOVE {lmove}, BLMOVE {blmove}"
        );
        assert_eq!(rpoplpush + brpoplpush, 0, "{version}");
    } else {
        assert!(
            rpoplpush >= 1 && brpoplpush >= 1,
            "{version}: RPOPLPUSH {rpoplpush}, BRPOPLPUSH {brpoplpush}"
        );
    }
    Ok(())
}

/// A consumer reads 4 jobs and dies; two of its entries are trimmed away by `max_len` and
/// one is deleted with `XDEL`; a new consumer claims the one left, reads the 2 new jobs, and
/// the 3 gone ones are acknowledged, skipped and counted.
#[test]
fn claimed_jobs_trimmed_or_deleted_from_the_stream_are_skipped_and_the_live_ones_run() -> TestResult
{
    let server = server();
    // One entry per stream node: `MAXLEN ~` then trims to exactly max_len.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(1)
        .exec(&mut admin(&server))?;
    let redis = redis(&server);
    let version = redis.server_version()?;
    let queue = redkit::StreamQueue::builder(&redis, "trimmed")
        .max_len(4)
        .claim_idle(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(20))
        .build()?;
    let old = queue.produce_batch(["a0", "a1", "a2", "a3"])?;
    let mut doomed = queue.consumer_named("doomed")?;
    assert_eq!(
        doomed.try_recv()?.map(|j| j.into_payload()),
        Some(b"a0".to_vec())
    );
    drop(doomed); // dies with a0..a3 pending
    queue.produce_batch(["b0", "b1"])?; // trims a0 and a1
    let n: u64 = redis.query(redis::cmd("XDEL").arg(queue.stream_key()).arg(&old[3]))?;
    assert_eq!(n, 1);
    assert_eq!(queue.stats()?.length, 3, "a2, b0, b1 left");
    assert_eq!(queue.stats()?.pending, 4);

    let mut rescuer = queue.consumer_named("rescuer")?;
    let mut ran = BTreeSet::new();
    wait_until(
        Duration::from_secs(20),
        "the live jobs run, the gone ones skipped",
        || {
            while let Some(job) = rescuer.try_recv().expect("recv") {
                assert!(rescuer.ack(&job).expect("ack"));
                ran.insert(String::from_utf8_lossy(job.payload()).into_owned());
            }
            ran.len() >= 3
                && queue
                    .stats()
                    .is_ok_and(|s| s.vanished == 3 && s.pending == 0)
        },
    )?;
    assert_eq!(ran, ["a2", "b0", "b1"].map(String::from).into());
    let stats = queue.stats()?;
    assert_eq!(
        (stats.claimed, stats.vanished, stats.pending),
        (1, 3, 0),
        "{stats:?}"
    );
    assert_eq!(stats.processed, 3);
    // Before 7.0 the claim script ran (XPENDING + XCLAIM), from 7.0 on XAUTOCLAIM.
    let (xautoclaim, xclaim) = (calls(&server, "xautoclaim"), calls(&server, "xclaim"));
    if version.supports(Feature::XautoclaimDeletedIds) {
        assert!(
            xautoclaim >= 1 && xclaim == 0,
            "{version}: {xautoclaim} {xclaim}"
        );
    } else {
        assert!(
            xautoclaim == 0 && xclaim >= 4,
            "{version}: {xautoclaim} {xclaim}"
        );
    }
    Ok(())
}

/// A worker pool (the runner's claim path) on a stream whose pending jobs were trimmed.
#[test]
fn workers_claim_orphans_and_skip_trimmed_entries() -> TestResult {
    let server = server();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(1)
        .exec(&mut admin(&server))?;
    let redis = redis(&server);
    let queue = redkit::StreamQueue::builder(&redis, "pool")
        .max_len(10)
        .claim_idle(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(20))
        .build()?;
    queue.produce_batch((0..10).map(|i| format!("old{i}")))?;
    let mut doomed = queue.consumer_named("doomed")?;
    assert!(doomed.try_recv()?.is_some());
    drop(doomed); // 10 pending
    queue.produce_batch((0..5).map(|i| format!("new{i}")))?; // trims old0..old4
    let ran = std::sync::Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    let record = ran.clone();
    let workers = queue.workers().threads(2).run(move |job| {
        record
            .lock()
            .insert(job.payload_str().unwrap_or("?").to_owned());
        Ok::<(), String>(())
    })?;
    wait_until(Duration::from_secs(20), "10 jobs run and 5 skipped", || {
        queue
            .stats()
            .is_ok_and(|s| s.processed == 10 && s.vanished == 5 && s.pending == 0)
    })?;
    workers.shutdown()?;
    let expected: BTreeSet<String> = (5..10)
        .map(|i| format!("old{i}"))
        .chain((0..5).map(|i| format!("new{i}")))
        .collect();
    assert_eq!(*ran.lock(), expected);
    Ok(())
}

#[test]
fn shard_channels_fail_typed_before_7_0_and_nothing_is_sent() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let version = redis.server_version()?;
    let subscriber = Subscriber::new(&redis)?;
    let published = redis.spublish("news", "hi");
    let subscribed = subscriber.ssubscribe(["news"]);
    if version.supports(Feature::ShardedPubSub) {
        assert_eq!(published?, 0);
        assert!(subscribed.is_ok());
        return Ok(());
    }
    for e in [published.err(), subscribed.err()] {
        let e = e.expect("an error before 7.0");
        assert_eq!(e.class(), ErrorClass::Unsupported, "{e}");
        match &e {
            Error::ServerTooOld {
                feature,
                needs,
                server,
            } => {
                assert_eq!(*feature, "SSUBSCRIBE");
                assert!(needs.contains("7.0"), "{needs}");
                assert_eq!(*server, version.to_string());
            }
            other => panic!("not ServerTooOld: {other:?}"),
        }
    }
    assert_eq!(calls(&server, "spublish") + calls(&server, "ssubscribe"), 0);
    Ok(())
}
