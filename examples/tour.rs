//! A tour of redkit: connect, commands, a pipeline, a transaction, a script, an outage and
//! its recovery (with a throwaway server), stats.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server` on
//! a free loopback port (through `redkit::testing`) and stops it at the end.
//!
//! ```text
//! scripts/tour.sh                      # or: cargo run --example tour
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example tour
//! RUST_LOG=redkit=debug cargo run --example tour
//! ```

use std::thread;
use std::time::Duration;

use redis::Commands;
use redkit::testing::RedisServer;
use redkit::{Event, Pipeline, Redis, Script};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();

    // 1. Connect: REDIS_URL, or a throwaway server of our own.
    let (mut server, redis) = match std::env::var("REDIS_URL") {
        Ok(_) => (None, Redis::from_env()?),
        Err(_) => {
            let server = RedisServer::start()?;
            println!("started a throwaway redis-server at {}", server.url());
            let redis = Redis::connect(format!("{}/0?client_name=tour", server.url()))?;
            (Some(server), redis)
        }
    };
    println!("connected: {}", redis.config());
    let ns = "redkit:tour";

    // 2. Commands: every redis::Commands method works on the handle.
    let mut r = redis.clone();
    r.set::<_, _, ()>(format!("{ns}:greeting"), "hello from redkit")?;
    let greeting: String = r.get(format!("{ns}:greeting"))?;
    println!("GET greeting -> {greeting:?}");

    // The handle is cheap to clone and thread-safe: 4 threads share one pool.
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let mut r = redis.clone();
            let key = format!("{ns}:hits");
            thread::spawn(move || -> redkit::Result<()> {
                for _ in 0..250 {
                    r.incr::<_, _, ()>(&key, 1)?;
                }
                println!("worker {i} done");
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked")??;
    }
    let hits: i64 = r.get(format!("{ns}:hits"))?;
    println!("4 threads x 250 INCR -> hits = {hits}");

    // 3. A pipeline: one round trip.
    let mut pipe = Pipeline::new();
    pipe.cmd("RPUSH")
        .arg(format!("{ns}:list"))
        .arg(&["a", "b", "c"])
        .ignore()
        .cmd("LRANGE")
        .arg(format!("{ns}:list"))
        .arg(0)
        .arg(-1)
        .cmd("EXPIRE")
        .arg(format!("{ns}:list"))
        .arg(60)
        .ignore();
    let (list,): (Vec<String>,) = redis.pipeline(&pipe)?;
    println!("pipeline -> {list:?}");

    // 4. A transaction: WATCH, read, MULTI/EXEC; retried if the key changes meanwhile.
    let account = format!("{ns}:balance");
    r.set::<_, _, ()>(&account, 100)?;
    let (balance,): (i64,) = redis.transaction(&[&account], |con, pipe| {
        let now: i64 = con.get(&account)?;
        pipe.cmd("SET")
            .arg(&account)
            .arg(now - 30)
            .ignore()
            .cmd("GET")
            .arg(&account);
        Ok(())
    })?;
    println!("transaction: 100 - 30 -> balance = {balance}");

    // 5. A Lua script: EVALSHA with a NOSCRIPT fallback.
    let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let total: i64 = add.key(format!("{ns}:hits")).arg(1000).run(&redis)?;
    println!("script INCRBY 1000 -> {total}");

    // 6. Typed errors.
    let err = redis
        .query::<i64>(redis::cmd("INCR").arg(format!("{ns}:list")))
        .unwrap_err();
    println!(
        "INCR on a list -> {} error ({}), retryable: {}",
        err.class(),
        err.server_code().unwrap_or("-"),
        err.is_retryable()
    );

    // 7. An outage (only with our own throwaway server): kill it, restart it on the same
    // port, and watch the handle recover by itself.
    if let Some(server) = server.as_mut() {
        let events = redis.events();
        server.kill()?;
        println!("killed the server");
        for event in events.iter() {
            println!("  event: {event}");
            if matches!(event, Event::Disconnected { .. }) {
                break;
            }
        }
        server.restart()?;
        println!("restarted the server");
        while let Ok(event) = events.recv_timeout(Duration::from_secs(10)) {
            println!("  event: {event}");
            if matches!(event, Event::Reconnected { .. }) {
                break;
            }
        }
        r.set::<_, _, ()>(format!("{ns}:hits"), 1)?;
        println!("SET after the restart works");
    }

    // 8. Stats.
    let stats = redis.stats();
    println!(
        "stats: {} commands, {} pipelines, {} errors, pool {} connections ({} idle), breaker {:?}",
        stats.commands,
        stats.pipelines,
        stats.errors.total(),
        stats.pool.size,
        stats.pool.idle,
        stats.breaker
    );
    println!(
        "health {}, {} reconnections, up for {:?}, heartbeat p50 {:?}, command p50 {:?} p99 {:?}",
        stats.health,
        stats.reconnections,
        stats.uptime.unwrap_or_default(),
        stats.heartbeat_latency.p50,
        stats.command_latency.p50,
        stats.command_latency.p99
    );

    let _: usize = r.del(&[
        format!("{ns}:greeting"),
        format!("{ns}:hits"),
        format!("{ns}:list"),
        account,
    ])?;
    redis.close()?;
    println!("tour done");
    Ok(())
}
