//! The pooled client against a real server: commands, pipelines, transactions, scripts,
//! pool exhaustion and stats.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::{Error, ErrorClass, Pipeline, Redis, Script};
use support::*;

#[test]
fn commands_and_pipelines_from_many_threads() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .pool_max_size(4)
            .client_name("many-threads"),
    )?;
    let threads = 8;
    let per_thread: usize = 200;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut r = redis.clone();
            let barrier = barrier.clone();
            thread::spawn(move || -> redkit::Result<()> {
                barrier.wait();
                for i in 0..per_thread as i64 {
                    let key = format!("k:{t}:{i}");
                    r.set::<_, _, ()>(&key, i)?;
                    let v: i64 = r.get(&key)?;
                    assert_eq!(v, i);
                    r.incr::<_, _, ()>("total", 1)?;
                    if i % 20 == 0 {
                        // A redis::Pipeline through the handle, and our own Pipeline.
                        let (a, b): (i64, i64) = redis::pipe()
                            .cmd("GET")
                            .arg(&key)
                            .cmd("EXISTS")
                            .arg(&key)
                            .query(&mut r)?;
                        assert_eq!((a, b), (i, 1));
                        let mut p = Pipeline::new();
                        p.cmd("INCR").arg("pipelined").cmd("GET").arg(&key);
                        let (_, got): (i64, i64) = r.pipeline(&p)?;
                        assert_eq!(got, i);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    let total: i64 = redis.query(redis::cmd("GET").arg("total"))?;
    assert_eq!(total, (threads * per_thread) as i64);
    let pipelined: i64 = redis.query(redis::cmd("GET").arg("pipelined"))?;
    assert_eq!(pipelined, (threads * per_thread / 20) as i64);

    let stats = redis.stats();
    assert!(stats.pool.size <= 4, "{stats:?}");
    assert!(
        stats.pool.created >= 1 && stats.pool.created <= 4,
        "{stats:?}"
    );
    assert_eq!(stats.errors.total(), 0, "{stats:?}");
    assert!(stats.commands >= (threads * per_thread * 3) as u64);
    assert!(stats.pipelines >= (threads * per_thread / 20 * 2) as u64);

    // CLIENT SETNAME was applied to every connection (one may still be in set-up
    // right now: wait for a stable picture).
    let mut admin = admin(&server);
    let admin_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut admin)?;
    let admin_line = format!("id={admin_id} ");
    redkit::testing::wait_until(Duration::from_secs(5), "every connection named", || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut admin)
            .expect("CLIENT LIST");
        let ours: Vec<&str> = list
            .lines()
            .filter(|l| !l.starts_with(&admin_line))
            .collect();
        // The pool's connections plus the heartbeat's own.
        ours.iter().all(|l| l.contains("name=many-threads"))
            && ours.len() as u32 == redis.stats().pool.size + 1
    })?;
    Ok(())
}

#[test]
fn binary_and_large_values_round_trip() -> TestResult {
    let server = server();
    let mut r = redis(&server);
    let binary: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    r.set::<_, _, ()>(b"bin\x00key".as_slice(), &binary)?;
    let back: Vec<u8> = r.get(b"bin\x00key".as_slice())?;
    assert_eq!(back, binary);
    let big = vec![b'x'; 8 * 1024 * 1024];
    r.set::<_, _, ()>("big", &big)?;
    let len: usize = r.strlen("big")?;
    assert_eq!(len, big.len());
    let back: Vec<u8> = r.get("big")?;
    assert_eq!(back.len(), big.len());
    Ok(())
}

#[test]
fn typed_errors_for_command_and_conversion_failures() -> TestResult {
    let server = server();
    let redis = redis(&server);
    redis.query::<()>(redis::cmd("LPUSH").arg("list").arg("a"))?;
    let e = redis
        .query::<i64>(redis::cmd("INCR").arg("list"))
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Command);
    assert_eq!(e.server_code(), Some("WRONGTYPE"));
    assert!(!e.is_retryable());
    let e = redis
        .query::<i64>(redis::cmd("LRANGE").arg("list").arg(0).arg(-1))
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Conversion, "{e:?}");
    // Neither error poisons a connection: none was discarded or closed.
    let n: i64 = redis.query(redis::cmd("LLEN").arg("list"))?;
    assert_eq!(n, 1);
    assert_eq!(redis.stats().pool.discarded_broken, 0);
    assert_eq!(redis.stats().pool.closed, 0);
    // Errors through the redis::Commands surface convert back with `?`.
    let mut r = redis.clone();
    let raw = r.incr::<_, _, i64>("list", 1).unwrap_err();
    let e = Error::from(raw);
    assert_eq!(e.class(), ErrorClass::Command);
    let stats = redis.stats();
    assert_eq!(stats.errors.get(ErrorClass::Command), 2, "{stats:?}");
    assert_eq!(stats.errors.get(ErrorClass::Conversion), 1, "{stats:?}");
    Ok(())
}

#[test]
fn transaction_commits_and_retries_on_conflict() -> TestResult {
    let server = server();
    let redis = redis(&server);
    redis.query::<()>(redis::cmd("SET").arg("balance").arg(100))?;
    let mut calls = 0;
    let (balance,): (i64,) = redis.transaction(&["balance"], |con, pipe| {
        calls += 1;
        let now: i64 = con.get("balance")?;
        if calls == 1 {
            // Another client changes the watched key between WATCH and EXEC.
            redis::cmd("INCRBY")
                .arg("balance")
                .arg(1000)
                .exec(&mut admin(&server))?;
        }
        pipe.cmd("SET").arg("balance").arg(now + 10).ignore();
        pipe.cmd("GET").arg("balance");
        Ok(())
    })?;
    assert_eq!(calls, 2, "the first attempt must have conflicted");
    assert_eq!(balance, 1110);
    assert_eq!(redis.stats().transaction_conflicts, 1);
    Ok(())
}

#[test]
fn transaction_retry_cap_gives_a_typed_error() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).transaction_attempts(3))?;
    let mut admin = admin(&server);
    let mut calls = 0;
    let err = redis
        .transaction(&["hot"], |_con, pipe| {
            calls += 1;
            redis::cmd("INCR").arg("hot").exec(&mut admin)?;
            pipe.cmd("SET").arg("hot").arg("mine");
            Ok(())
        })
        .map(|(): ()| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::TransactionConflict { attempts: 3 }),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::TransactionConflict);
    assert_eq!(calls, 3);
    let hot: i64 = redis.query(redis::cmd("GET").arg("hot"))?;
    assert_eq!(hot, 3, "no attempt may have committed");
    Ok(())
}

#[test]
fn failing_transaction_closure_unwatches() -> TestResult {
    let server = server();
    // One connection only, so the next user gets the very same connection.
    let redis = Redis::connect(builder(&server).pool_max_size(1))?;
    let err = redis
        .transaction(&["watched"], |_con, _pipe| -> redkit::Result<()> {
            Err(Error::from(redis::RedisError::from((
                redis::ErrorKind::Client,
                "business rule says no",
            ))))
        })
        .map(|(): ()| ())
        .unwrap_err();
    assert!(err.to_string().contains("business rule says no"));
    // If the WATCH were still in place, this change by another client would make the next
    // MULTI/EXEC on the same connection fail.
    redis::cmd("SET")
        .arg("watched")
        .arg("changed")
        .exec(&mut admin(&server))?;
    let mut con = redis.conn()?;
    let (v,): (String,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("watched")
        .arg("ours")
        .ignore()
        .cmd("GET")
        .arg("watched")
        .query(&mut con)?;
    assert_eq!(v, "ours");
    assert_eq!(redis.stats().pool.created, 1);
    Ok(())
}

fn flush_scripts(server: &redkit::testing::RedisServer) -> TestResult {
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut admin(server))?;
    Ok(())
}

#[test]
fn script_survives_script_flush_alone() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let a: i64 = script.key("n").arg(5).run(&redis)?;
    assert_eq!(a, 5);
    flush_scripts(&server)?;
    let b: i64 = script.key("n").arg(5).run(&redis)?;
    assert_eq!(
        b, 10,
        "after SCRIPT FLUSH the script is loaded again and runs once"
    );
    // On a checked-out connection too.
    flush_scripts(&server)?;
    let mut con = redis.conn()?;
    let c: i64 = script.key("n").arg(1).invoke(&mut con)?;
    assert_eq!(c, 11);
    Ok(())
}

#[test]
fn script_survives_script_flush_in_pipelines() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let incr = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let echo = Script::new("return ARGV[1]");
    flush_scripts(&server)?;
    // Plain pipeline: the plain commands run once, the scripts are loaded and resent.
    let mut p = Pipeline::new();
    p.cmd("INCR").arg("plain");
    p.invoke(&incr.key("s").arg(2));
    p.invoke(&echo.arg("hi"));
    p.cmd("INCR").arg("plain");
    let (x, y, z, w): (i64, i64, String, i64) = redis.pipeline(&p)?;
    assert_eq!((x, y, z.as_str(), w), (1, 2, "hi", 2));
    // Atomic pipeline after another flush: nothing runs twice, nothing is lost.
    flush_scripts(&server)?;
    let mut p = Pipeline::new();
    p.atomic();
    p.cmd("INCR").arg("plain");
    p.invoke(&incr.key("s").arg(3));
    p.cmd("GET").arg("s").ignore();
    let (plain, s): (i64, i64) = redis.pipeline(&p)?;
    assert_eq!((plain, s), (3, 5));
    // Scripts inside a transaction().
    flush_scripts(&server)?;
    let (t,): (i64,) = redis.transaction(&["s"], |_con, pipe| {
        pipe.invoke(&incr.key("s").arg(10));
        Ok(())
    })?;
    assert_eq!(t, 15);
    Ok(())
}

#[test]
fn pool_exhaustion_gives_a_typed_checkout_timeout() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).pool_max_size(2))?;
    let a = redis.conn()?;
    let b = redis.conn()?;
    assert!(redis.try_conn().is_none());
    let start = Instant::now();
    let err = redis.conn_timeout(Duration::from_millis(200)).unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(err, Error::PoolTimeout { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::PoolTimeout);
    assert!(err.is_timeout() && err.is_retryable());
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    let stats = redis.stats();
    assert_eq!(stats.pool.in_use, 2);
    assert_eq!(stats.pool.checkout_timeouts, 1);
    assert_eq!(stats.errors.get(ErrorClass::PoolTimeout), 1);
    // A waiter is served as soon as a connection comes back.
    let waiter = {
        let redis = redis.clone();
        thread::spawn(move || redis.conn_timeout(Duration::from_secs(5)).map(|_| ()))
    };
    redkit::testing::wait_until(Duration::from_secs(5), "a waiter", || {
        redis.stats().pool.waiting == 1
    })?;
    drop(a);
    waiter.join().expect("waiter panicked")?;
    drop(b);
    assert!(redis.try_conn().is_some());
    Ok(())
}

#[test]
fn blocking_commands_can_extend_the_response_timeout() -> TestResult {
    let server = server();
    let redis = Redis::connect(
        builder(&server)
            .pool_max_size(1)
            .timeouts(redkit::Timeouts::default().response(Duration::from_millis(300))),
    )?;
    {
        let mut con = redis.conn()?;
        con.set_response_timeout(Some(Duration::from_secs(5)))?;
        let got: Option<(String, String)> = con.blpop("nothing", 0.5)?;
        assert_eq!(got, None);
    }
    // Back in the pool the default applies again: a 1 s block times out at 300 ms.
    let mut con = redis.conn()?;
    let start = Instant::now();
    let e = Error::from(
        con.blpop::<_, Option<(String, String)>>("nothing", 1.0)
            .unwrap_err(),
    );
    assert_eq!(e.class(), ErrorClass::Timeout, "{e:?}");
    assert!(start.elapsed() < Duration::from_millis(900));
    assert!(con.is_broken(), "a timed-out connection is never reused");
    Ok(())
}

#[test]
fn key_prefix() -> TestResult {
    let server = server();
    let redis = Redis::connect(builder(&server).key_prefix("app:"))?;
    assert_eq!(redis.key("user:1"), "app:user:1");
    Ok(())
}

#[test]
fn resp3_and_database_selection() -> TestResult {
    let server = server();
    let url = format!("{}/3?protocol=3", server.url());
    let mut r = Redis::connect(url.as_str())?;
    r.set::<_, _, ()>("in-db-3", 1)?;
    let mut admin = admin(&server);
    redis::cmd("SELECT").arg(3).exec(&mut admin)?;
    let v: i64 = redis::cmd("GET").arg("in-db-3").query(&mut admin)?;
    assert_eq!(v, 1);
    // RESP3 replies: a hash comes back as a map.
    r.hset::<_, _, _, ()>("h", "f", "v")?;
    let hash: redis::Value = r.query(redis::cmd("HGETALL").arg("h"))?;
    assert!(matches!(hash, redis::Value::Map(_)), "{hash:?}");
    // CLIENT INFO came with 6.2, its resp= field with 7.0.
    if binary().version().redis_compatible() >= (7, 0, 0) {
        let info: String = r.query(redis::cmd("CLIENT").arg("INFO"))?;
        assert!(info.contains("resp=3"), "{info}");
    }
    Ok(())
}

#[test]
fn unix_socket_connection() -> TestResult {
    init_logs();
    let dir = std::env::temp_dir().join(format!("redkit-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("redis.sock");
    let server = redkit::testing::RedisServer::builder()
        .config("unixsocket", socket.display().to_string())
        .config("unixsocketperm", "700")
        .start()?;
    let url = format!("unix://{}?db=1", socket.display());
    let mut r = Redis::connect(url.as_str())?;
    r.set::<_, _, ()>("via-socket", 7)?;
    let mut admin = admin(&server);
    redis::cmd("SELECT").arg(1).exec(&mut admin)?;
    let v: i64 = redis::cmd("GET").arg("via-socket").query(&mut admin)?;
    assert_eq!(v, 7);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
