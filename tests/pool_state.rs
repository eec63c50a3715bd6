//! State never leaks through the pool: with a pool of one connection, whatever a caller sends
//! (through the handle or on a checked-out connection), the next caller gets a connection in
//! the configured state: database, name, protocol, no subscription, no MULTI, no WATCH, no
//! tracking, replies on.

mod support;

use std::time::Duration;

use redis::{Commands, Value};
use redkit::testing::RedisServer;
use redkit::{Error, ErrorClass, Redis, Timeouts};
use support::TestResult;

const DB: i64 = 2;
const NAME: &str = "pooltest";

fn pool_of_one(server: &RedisServer) -> Redis {
    Redis::connect(
        support::builder(server)
            .db(DB)
            .client_name(NAME)
            .pool_max_size(1)
            .pool_min_idle(0)
            .timeouts(
                Timeouts::default()
                    .response(Duration::from_millis(500))
                    .checkout(Duration::from_secs(5)),
            ),
    )
    .expect("connect")
}

/// The id of the connection the next caller gets.
fn client_id(redis: &Redis) -> i64 {
    let mut con = redis.conn().expect("checkout");
    redis::cmd("CLIENT")
        .arg("ID")
        .query(&mut con)
        .expect("CLIENT ID")
}

/// The next caller sees the configured state.
fn assert_configured(redis: &Redis, admin: &mut redis::Connection, what: &str) {
    let mut con = redis.conn().expect("checkout");
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut con)
        .expect("CLIENT GETNAME");
    assert_eq!(name.as_deref(), Some(NAME), "after {what}: the client name");
    // Not subscribed, not in MULTI (a PING would be QUEUED), replies on.
    let pong: String = redis::cmd("PING").query(&mut con).expect("PING");
    assert_eq!(pong, "PONG", "after {what}");
    // The configured database.
    let key = format!("probe:{what}");
    let _: () = con.set(&key, "here").expect("SET");
    let _: () = redis::cmd("SELECT").arg(DB).query(admin).expect("SELECT");
    let found: Option<String> = admin.get(&key).expect("GET");
    assert_eq!(found.as_deref(), Some("here"), "after {what}: the database");
    // RESP2, as configured: a HGETALL reply is a flat array, not a map.
    let _: () = con.hset("h", "f", "v").expect("HSET");
    let raw: Value = redis::cmd("HGETALL")
        .arg("h")
        .query(&mut con)
        .expect("HGETALL");
    assert!(
        matches!(raw, Value::Array(_)),
        "after {what}: RESP2 ({raw:?})"
    );
    // No tracking (CLIENT TRACKINGINFO needs 6.2).
    if let Ok(info) = redis::cmd("CLIENT")
        .arg("TRACKINGINFO")
        .query::<Value>(&mut con)
    {
        let text = format!("{info:?}");
        assert!(
            text.contains("off"),
            "after {what}: tracking is off ({text})"
        );
    }
}

fn refused(e: Error, command: &str) {
    assert_eq!(e.class(), ErrorClass::Unsupported, "{command}: {e}");
    assert!(
        matches!(&e, Error::WrongConnection { command: c, .. } if c.starts_with(command)),
        "{command}: {e:?}"
    );
}

/// Commands that would change the connection, as (name, arguments, minimum Redis major.minor).
fn stateful() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("SELECT", vec!["5"]),
        ("SUBSCRIBE", vec!["ch"]),
        ("PSUBSCRIBE", vec!["c*"]),
        ("MONITOR", vec![]),
        ("CLIENT", vec!["TRACKING", "on"]),
        ("CLIENT", vec!["SETNAME", "other"]),
        ("READONLY", vec![]),
        ("READWRITE", vec![]),
        ("HELLO", vec!["3"]),
        ("AUTH", vec!["nopass"]),
        ("QUIT", vec![]),
    ]
}

fn cmd(name: &str, args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(name);
    for a in args {
        c.arg(*a);
    }
    c
}

#[test]
fn the_handle_refuses_what_would_change_a_pooled_connection() -> TestResult {
    let server = support::server();
    let redis = pool_of_one(&server);
    let mut admin = support::admin(&server);
    let id = client_id(&redis);
    let mut all = stateful();
    all.extend([
        ("MULTI", vec![]),
        ("EXEC", vec![]),
        ("DISCARD", vec![]),
        ("WATCH", vec!["k"]),
        ("CLIENT", vec!["REPLY", "OFF"]),
        ("CLIENT", vec!["NO-EVICT", "on"]),
        ("RESET", vec![]),
        ("SSUBSCRIBE", vec!["s"]),
    ]);
    for (name, args) in &all {
        let c = cmd(name, args);
        // A typed call.
        refused(redis.query::<Value>(&c).expect_err(name), name);
        // redis::Commands / ConnectionLike on the handle.
        let mut r = redis.clone();
        let e: Error = c.query::<Value>(&mut r).expect_err(name).into();
        refused(e, name);
        // Inside a pipeline.
        let mut pipe = redkit::Pipeline::new();
        pipe.cmd("PING").add_command(c.clone());
        refused(redis.pipeline::<Value>(&pipe).expect_err(name), name);
    }
    // Nothing was sent: the same connection, in the configured state.
    assert_eq!(client_id(&redis), id, "the connection was kept");
    assert_configured(&redis, &mut admin, "refusals");
    // What stays possible: whole transactions, UNWATCH, and Redis::transaction.
    let mut atomic = redkit::Pipeline::new();
    atomic.atomic().cmd("INCR").arg("n").cmd("INCR").arg("n");
    let (a, b): (i64, i64) = redis.pipeline(&atomic)?;
    assert_eq!((a, b), (1, 2));
    let _: () = redis.query(&redis::cmd("UNWATCH"))?;
    let (n,): (i64,) = redis.transaction(&["n"], |con, pipe| {
        let n: i64 = con.get("n")?;
        pipe.cmd("SET")
            .arg("n")
            .arg(n + 1)
            .ignore()
            .cmd("GET")
            .arg("n");
        Ok(())
    })?;
    assert_eq!(n, 3);
    assert_eq!(client_id(&redis), id, "still the same connection");
    Ok(())
}

#[test]
fn a_checked_out_connection_left_changed_is_not_reused() -> TestResult {
    let server = support::server();
    let redis = pool_of_one(&server);
    let mut admin = support::admin(&server);
    let mut cases = stateful();
    // These leave a transaction or a WATCH open on the connection.
    cases.extend([
        ("MULTI", vec![]),
        ("WATCH", vec!["k"]),
        ("CLIENT", vec!["REPLY", "OFF"]),
    ]);
    let version: String = {
        let info: String = redis::cmd("INFO").arg("server").query(&mut admin)?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("0")
            .to_owned()
    };
    let at_least = |major: u32, minor: u32| {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (ma, mi) >= (major, minor)
    };
    if at_least(6, 2) {
        cases.push(("RESET", vec![]));
    } else {
        println!("skipped RESET: needs Redis 6.2 (server {version})");
    }
    if at_least(7, 0) {
        cases.push(("SSUBSCRIBE", vec!["s"]));
        cases.push(("CLIENT", vec!["NO-EVICT", "on"]));
    } else {
        println!("skipped SSUBSCRIBE, CLIENT NO-EVICT: need Redis 7.0 (server {version})");
    }
    for (name, args) in &cases {
        let what = format!("{name} {}", args.join(" "));
        let before = client_id(&redis);
        {
            let mut con = redis.conn()?;
            // The command's own reply does not matter (AUTH fails without ACL users,
            // CLIENT REPLY OFF sends none and times out): what follows does.
            let _ = cmd(name, args).query::<Value>(&mut con);
        }
        let after = client_id(&redis);
        assert_ne!(before, after, "after {what}: a fresh connection");
        assert_configured(&redis, &mut admin, &what);
    }
    // A transaction opened and closed by hand leaves the connection clean: it is kept.
    let before = client_id(&redis);
    {
        let mut con = redis.conn()?;
        let _: () = redis::cmd("WATCH").arg("k").query(&mut con)?;
        let _: () = redis::cmd("MULTI").query(&mut con)?;
        let _: Value = redis::cmd("INCR").arg("k").query(&mut con)?;
        let _: Value = redis::cmd("EXEC").query(&mut con)?;
    }
    assert_eq!(
        client_id(&redis),
        before,
        "a finished transaction keeps the connection"
    );
    Ok(())
}

#[test]
fn a_dedicated_connection_keeps_its_state_and_leaves_the_pool_alone() -> TestResult {
    let server = support::server();
    let redis = pool_of_one(&server);
    let mut admin = support::admin(&server);
    let mut own = redis.dedicated()?;
    let _: () = redis::cmd("SELECT").arg(5).query(&mut own)?;
    let _: () = own.set("in-five", 1)?;
    let again: Option<i64> = own.get("in-five")?;
    assert_eq!(again, Some(1), "the state spans calls");
    assert_eq!(redis.stats().dedicated_open, 1);
    let _: () = redis::cmd("SELECT").arg(5).query(&mut admin)?;
    assert_eq!(admin.get::<_, Option<i64>>("in-five")?, Some(1));
    assert_configured(&redis, &mut admin, "a dedicated SELECT");
    drop(own);
    assert_eq!(redis.stats().dedicated_open, 0, "closed on drop");
    Ok(())
}
