//! The near cache against a real server: hits and invalidations in both protocols and both
//! tracking modes, flush notices, the read/invalidation race forced, lost tracking
//! connections (CLIENT KILL of the tracker and of a reader, a restart), the cacheable
//! commands, and the bounds.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Commands;
use redkit::near::NearCache;
use redkit::testing::wait_until;
use redkit::{Error, Protocol, Redis};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn handle(server: &redkit::testing::RedisServer, protocol: Protocol) -> Redis {
    Redis::connect(builder(server).protocol(protocol)).expect("connect")
}

/// Waits until `near` serves `key` from memory with the value `want`.
fn wait_cached(near: &NearCache, key: &str, want: &str) -> TestResult {
    wait_until(WAIT, "the value to be cached", || {
        let before = near.stats().hits;
        let v: Option<String> = near.get(key).expect("get");
        v.as_deref() == Some(want) && near.stats().hits > before
    })?;
    Ok(())
}

fn hits_then_invalidation(protocol: Protocol, tracking: Protocol, bcast: bool) -> TestResult {
    let server = server();
    let redis = handle(&server, protocol);
    let mut b = NearCache::builder(&redis).protocol(tracking);
    if bcast {
        b = b.broadcast(&["user:"]);
    }
    let near = b.build()?;
    assert!(near.is_tracking());
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("user:1", "a")?;

    let v: Option<String> = near.get("user:1")?;
    assert_eq!(v.as_deref(), Some("a"));
    wait_cached(&near, "user:1", "a")?;
    let s = near.stats();
    assert!(
        s.hits >= 1 && s.misses >= 1 && s.stored >= 1 && s.entries == 1,
        "{s:?}"
    );
    assert!(s.bytes > 0);

    // A write on another connection invalidates it.
    let invalidations = near.stats().invalidations;
    admin.set::<_, _, ()>("user:1", "b")?;
    wait_until(WAIT, "the invalidation", || {
        near.stats().invalidations > invalidations
    })?;
    let v: Option<String> = near.get("user:1")?;
    assert_eq!(v.as_deref(), Some("b"));
    wait_cached(&near, "user:1", "b")?;

    // A missing key is cached too, and invalidated when it appears.
    let v: Option<String> = near.get("user:none")?;
    assert_eq!(v, None);
    wait_until(WAIT, "the nil to be cached", || {
        let before = near.stats().hits;
        let v: Option<String> = near.get("user:none").expect("get");
        v.is_none() && near.stats().hits > before
    })?;
    admin.set::<_, _, ()>("user:none", "now")?;
    wait_until(WAIT, "the new key to be seen", || {
        near.get::<Option<String>>("user:none")
            .expect("get")
            .as_deref()
            == Some("now")
    })?;

    if bcast {
        // Keys outside the prefixes are never kept.
        admin.set::<_, _, ()>("other", "x")?;
        for _ in 0..3 {
            let v: Option<String> = near.get("other")?;
            assert_eq!(v.as_deref(), Some("x"));
        }
        assert!(near.stats().uncached >= 3);
    }

    // A flush notice clears everything.
    wait_cached(&near, "user:1", "b")?;
    let flushes = near.stats().flushes;
    redis::cmd("FLUSHALL").exec(&mut admin)?;
    wait_until(WAIT, "the flush notice", || near.stats().flushes > flushes)?;
    assert_eq!(near.stats().entries, 0);
    assert_eq!(near.get::<Option<String>>("user:1")?, None);
    assert_eq!(near.stats().server_flushes, 1);
    Ok(())
}

#[test]
fn resp3_default_mode() -> TestResult {
    hits_then_invalidation(Protocol::Resp3, Protocol::Resp3, false)
}

#[test]
fn resp2_default_mode() -> TestResult {
    hits_then_invalidation(Protocol::Resp2, Protocol::Resp2, false)
}

#[test]
fn resp2_handle_with_a_resp3_tracking_connection() -> TestResult {
    hits_then_invalidation(Protocol::Resp2, Protocol::Resp3, false)
}

#[test]
fn broadcast_mode_in_both_protocols() -> TestResult {
    hits_then_invalidation(Protocol::Resp3, Protocol::Resp3, true)?;
    hits_then_invalidation(Protocol::Resp2, Protocol::Resp2, true)
}

#[test]
fn cacheable_commands_and_refusals() -> TestResult {
    let server = server();
    let redis = handle(&server, Protocol::Resp3);
    let near = NearCache::new(&redis)?;
    let mut admin = admin(&server);
    admin.hset_multiple::<_, _, _, ()>("h", &[("a", "1"), ("b", "2")])?;
    admin.rpush::<_, _, ()>("l", &["x", "y", "z"])?;
    let all: std::collections::HashMap<String, String> =
        near.query(redis::cmd("HGETALL").arg("h"))?;
    assert_eq!(all.len(), 2);
    let a: Option<String> = near.query(redis::cmd("HGET").arg("h").arg("a"))?;
    assert_eq!(a.as_deref(), Some("1"));
    let l: Vec<String> = near.query(redis::cmd("LRANGE").arg("l").arg(0).arg(-1))?;
    assert_eq!(l, ["x", "y", "z"]);
    wait_until(WAIT, "the hash to be cached", || {
        let before = near.stats().hits;
        let _: Option<String> = near
            .query(redis::cmd("HGET").arg("h").arg("a"))
            .expect("hget");
        near.stats().hits > before
    })?;
    // A change of the hash invalidates every command cached for it.
    admin.hset::<_, _, _, ()>("h", "a", "9")?;
    wait_until(WAIT, "the hash's invalidation", || {
        let a: Option<String> = near
            .query(redis::cmd("HGET").arg("h").arg("a"))
            .expect("hget");
        let all: std::collections::HashMap<String, String> =
            near.query(redis::cmd("HGETALL").arg("h")).expect("hgetall");
        a.as_deref() == Some("9") && all.get("a").map(String::as_str) == Some("9")
    })?;
    // Error replies are returned, never cached.
    admin.set::<_, _, ()>("s", "v")?;
    for _ in 0..2 {
        let e = near
            .query::<Option<String>>(redis::cmd("HGET").arg("s").arg("a"))
            .unwrap_err();
        assert_eq!(e.server_code(), Some("WRONGTYPE"));
    }
    // Writes and commands whose reply depends on more than one key's value are refused.
    for cmd in [
        redis::cmd("SET").arg("k").arg("v").clone(),
        redis::cmd("TTL").arg("k").clone(),
        redis::cmd("EXISTS").arg("a").arg("b").clone(),
        redis::cmd("CLIENT").arg("TRACKING").arg("off").clone(),
    ] {
        match near.query::<redis::Value>(&cmd) {
            Err(Error::WrongConnection { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    // mget: hits and misses together, in order.
    admin.set::<_, _, ()>("m1", "1")?;
    admin.set::<_, _, ()>("m3", "3")?;
    let first: Vec<Option<String>> = near.mget(&["m1", "m2", "m3"])?;
    assert_eq!(first, [Some("1".into()), None, Some("3".into())]);
    let hits = near.stats().hits;
    let again: Vec<Option<String>> = near.mget(&["m1", "m2", "m3", "m4"])?;
    assert_eq!(again, [Some("1".into()), None, Some("3".into()), None]);
    assert!(near.stats().hits >= hits + 3, "{:?}", near.stats());
    Ok(())
}

#[test]
fn a_key_prefix_applies_to_the_near_cache() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).key_prefix("app:"))?;
    let near = NearCache::builder(&redis).broadcast(&["u:"]).build()?;
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("app:u:1", "x")?;
    assert_eq!(near.get::<Option<String>>("u:1")?.as_deref(), Some("x"));
    wait_cached(&near, "u:1", "x")?;
    admin.set::<_, _, ()>("app:u:1", "y")?;
    wait_until(WAIT, "the prefixed key's invalidation", || {
        near.get::<Option<String>>("u:1").expect("get").as_deref() == Some("y")
    })?;
    Ok(())
}

/// The classic race, forced: a read whose reply carries the old value is held between the
/// reply and the store while the key is written elsewhere and the invalidation applied;
/// the held reply must not be kept.
#[test]
fn the_race_of_a_read_and_an_invalidation_is_forced_and_lost_by_the_stale_reply() -> TestResult {
    for protocol in [Protocol::Resp3, Protocol::Resp2] {
        let server = server();
        let redis = handle(&server, protocol);
        let hold = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let (h, d, r) = (hold.clone(), held.clone(), release.clone());
        let near = NearCache::builder(&redis)
            .on_reply(move |key| {
                if key == b"race" && h.load(Ordering::SeqCst) {
                    d.store(true, Ordering::SeqCst);
                    let _ = wait_until(WAIT, "the release", || r.load(Ordering::SeqCst));
                }
            })
            .build()?;
        let mut admin = admin(&server);
        admin.set::<_, _, ()>("race", "old")?;
        hold.store(true, Ordering::SeqCst);
        let reader = {
            let near = near.clone();
            std::thread::spawn(move || near.get::<Option<String>>("race"))
        };
        wait_until(WAIT, "the read to hold its reply", || {
            held.load(Ordering::SeqCst)
        })?;
        let invalidations = near.stats().invalidations;
        admin.set::<_, _, ()>("race", "new")?;
        wait_until(WAIT, "the invalidation to be applied", || {
            near.stats().invalidations > invalidations
        })?;
        hold.store(false, Ordering::SeqCst);
        release.store(true, Ordering::SeqCst);
        let got = reader.join().map_err(|_| "reader panicked")??;
        // The reader itself gets what it read (the value of a moment after its read began).
        assert_eq!(got.as_deref(), Some("old"));
        assert_eq!(near.stats().races, 1, "{:?}", near.stats());
        // Nobody ever sees the old value again.
        for _ in 0..100 {
            assert_eq!(near.get::<Option<String>>("race")?.as_deref(), Some("new"));
        }
        assert!(near.stats().hits > 0);
    }
    Ok(())
}

/// CLIENT KILL of the tracking connection, then of a reader connection: each clears the
/// near cache, and tracking comes back.
#[test]
fn killing_the_tracking_or_a_reader_connection_clears_the_cache() -> TestResult {
    // Finds the tracking connection by the readers' `redir=` in CLIENT LIST (6.2 on).
    support::require!(6, 2, "CLIENT LIST redir=");
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .protocol(Protocol::Resp3)
            .client_name("app"),
    )?;
    let near = NearCache::new(&redis)?;
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("k", "v")?;
    wait_cached(&near, "k", "v")?;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin)?;
    // The tracking connection is the one the readers (flag `t`) redirect to.
    let tracker_id: i64 = clients
        .lines()
        .filter(|l| l.contains("flags=t"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("redir="))
                .and_then(|r| r.parse().ok())
        })
        .ok_or("no reader with a redirect")?;
    let (flushes, connects) = (near.stats().flushes, near.stats().connects);
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracker_id)
        .exec(&mut admin)?;
    wait_until(WAIT, "the loss to be noticed", || {
        near.stats().flushes > flushes
    })?;
    assert_eq!(near.stats().entries, 0);
    wait_until(WAIT, "tracking to come back", || {
        near.is_tracking() && near.stats().connects > connects
    })?;
    // A write while tracking was being set up again is seen.
    admin.set::<_, _, ()>("k", "w")?;
    wait_cached(&near, "k", "w")?;
    admin.set::<_, _, ()>("k", "x")?;
    wait_until(
        WAIT,
        "the invalidation on the new tracking connection",
        || near.get::<Option<String>>("k").expect("get").as_deref() == Some("x"),
    )?;

    // A reader killed: the keys it read are no longer tracked, so the cache is cleared
    // (noticed by the tracking thread's ping of idle readers, or by the next read).
    wait_cached(&near, "k", "x")?;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin)?;
    let flushes = near.stats().flushes;
    for id in clients
        .lines()
        .filter(|l| l.contains("flags=t"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .and_then(|r| r.parse::<i64>().ok())
        })
    {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .exec(&mut admin)?;
    }
    wait_until(WAIT, "the reader's loss to be noticed", || {
        near.stats().flushes > flushes
    })?;
    admin.set::<_, _, ()>("k", "y")?;
    wait_until(WAIT, "the value after the reader's loss", || {
        near.get::<Option<String>>("k").expect("get").as_deref() == Some("y")
    })?;
    Ok(())
}

/// A restart: the cache is cleared when the connection drops, reads work meanwhile (from
/// the handle, with its errors while the server is down), tracking comes back.
#[test]
fn a_server_restart_clears_the_cache_and_tracking_comes_back() -> TestResult {
    let mut server = server();
    let redis = handle(&server, Protocol::Resp2);
    let near = NearCache::new(&redis)?;
    {
        let mut admin = admin(&server);
        admin.set::<_, _, ()>("k", "v")?;
    }
    wait_cached(&near, "k", "v")?;
    let flushes = near.stats().flushes;
    server.kill()?;
    wait_until(WAIT, "the loss", || near.stats().flushes > flushes)?;
    assert!(near.get::<Option<String>>("k").is_err());
    server.restart()?;
    wait_until(WAIT, "tracking after the restart", || near.is_tracking())?;
    // The restarted server has no data: the old value must not come back.
    assert_eq!(near.get::<Option<String>>("k")?, None);
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("k", "after")?;
    wait_until(WAIT, "the new value", || {
        near.get::<Option<String>>("k").expect("get").as_deref() == Some("after")
    })?;
    Ok(())
}

#[test]
fn bad_settings_are_refused() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for b in [
        NearCache::builder(&redis).max_entries(0),
        NearCache::builder(&redis).max_bytes(10),
        NearCache::builder(&redis).ttl(Duration::ZERO),
        NearCache::builder(&redis).readers(0),
        NearCache::builder(&redis)
            .heartbeat(Duration::from_millis(500))
            .max_silence(Duration::from_millis(600)),
    ] {
        match b.build() {
            Err(Error::Config { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    Ok(())
}

/// Dropping the last clone stops the tracking thread and closes its connections.
#[test]
fn dropping_the_near_cache_closes_its_connections() -> TestResult {
    let server = server();
    // Only the near cache opens connections while the test counts them: no heartbeat
    // connection appearing on its own, one pooled connection, opened before counting.
    let redis = Redis::connect(
        builder(&server)
            .heartbeat(redkit::HeartbeatConfig::disabled())
            .pool_max_size(1)
            .pool_min_idle(0),
    )?;
    let _: Option<String> = redis.query(redis::cmd("GET").arg("warm-up"))?;
    let mut admin = admin(&server);
    let count = |admin: &mut redis::Connection| -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(admin)
            .expect("client list");
        list.lines().count()
    };
    let before = count(&mut admin);
    let near = NearCache::new(&redis)?;
    admin.set::<_, _, ()>("k", "v")?;
    let _: Option<String> = near.get("k")?;
    assert!(count(&mut admin) >= before + 2);
    let started = std::time::Instant::now();
    drop(near);
    assert!(started.elapsed() < redkit::CLOSE_BOUND + Duration::from_millis(100));
    wait_until(WAIT, "the connections to close", || {
        count(&mut admin) == before
    })?;
    Ok(())
}

/// Closing the handle stops the near cache too: its threads end, reads fail with `Closed`.
#[test]
fn closing_the_handle_stops_tracking() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let near = NearCache::new(&redis)?;
    let mut admin = admin(&server);
    admin.set::<_, _, ()>("k", "v")?;
    wait_cached(&near, "k", "v")?;
    redis.close()?;
    wait_until(WAIT, "tracking to stop", || !near.is_tracking())?;
    assert!(matches!(
        near.get::<Option<String>>("k"),
        Err(Error::Closed)
    ));
    // Closing the near cache itself (twice) is fine.
    near.close();
    near.close();
    Ok(())
}

/// A server without `CLIENT TRACKING` is refused at build with a typed error.
#[test]
fn a_server_without_tracking_is_refused() -> TestResult {
    use redkit::testing::{Action, FakeServer};
    init_logs();
    let fake = FakeServer::start(|cmd| {
        let name = cmd
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        let sub = cmd
            .get(1)
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        match (name.as_slice(), sub.as_slice()) {
            (b"HELLO", _) => Action::Reply(b"-ERR unknown command 'HELLO'\r\n".to_vec()),
            (b"CLIENT", b"ID") => Action::Reply(b":7\r\n".to_vec()),
            (b"CLIENT", b"TRACKING") => Action::Reply(
                b"-ERR Unknown subcommand or wrong number of arguments for 'TRACKING'. Try CLIENT HELP\r\n"
                    .to_vec(),
            ),
            _ => Action::handshake(cmd).unwrap_or(Action::Reply(b"$-1\r\n".to_vec())),
        }
    })?;
    let redis = Redis::connect(
        redkit::Config::builder()
            .host(fake.host())
            .port(fake.port())
            .timeouts(redkit::Timeouts::default().connect(Duration::from_secs(1))),
    )?;
    match NearCache::new(&redis) {
        Err(Error::ServerTooOld { .. }) => Ok(()),
        other => Err(format!("{other:?}").into()),
    }
}

/// A server that never answers the tracking set-up: build returns within the connect
/// timeout, reads go to Redis through the handle (nothing kept), drop is prompt.
#[test]
fn a_silent_tracking_set_up_bounds_build_and_reads_still_work() -> TestResult {
    use redkit::testing::{Action, FakeServer};
    init_logs();
    let fake = FakeServer::start(|cmd| {
        let name = cmd
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"CLIENT" => Action::Silent,
            b"GET" => Action::Reply(b"$1\r\nx\r\n".to_vec()),
            _ => Action::handshake(cmd).unwrap_or(Action::Reply(b"$-1\r\n".to_vec())),
        }
    })?;
    let connect = Duration::from_millis(500);
    let redis = Redis::connect(
        redkit::Config::builder()
            .host(fake.host())
            .port(fake.port())
            .timeouts(redkit::Timeouts::default().connect(connect)),
    )?;
    let started = std::time::Instant::now();
    let near = NearCache::new(&redis)?;
    let took = started.elapsed();
    assert!(took < connect * 2 + Duration::from_millis(300), "{took:?}");
    assert!(!near.is_tracking());
    for _ in 0..3 {
        assert_eq!(near.get::<Option<String>>("k")?.as_deref(), Some("x"));
    }
    let s = near.stats();
    assert_eq!((s.hits, s.stored), (0, 0), "{s:?}");
    assert!(s.uncached >= 3);
    let started = std::time::Instant::now();
    drop(near);
    assert!(started.elapsed() < redkit::CLOSE_BOUND + Duration::from_millis(200));
    Ok(())
}
