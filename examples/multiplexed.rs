//! Many threads, one socket: 64 worker threads share one multiplexed connection instead of a
//! pool of 64 (or a queue for 16). Every thread's commands go out together in one write and
//! each thread gets its own reply back.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example multiplexed
//! ```

use std::time::Instant;

use redkit::prelude::*;
use redkit::testing::RedisServer;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = RedisServer::start()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    // The same handle, the same API: only the config changes (`?multiplexed=1` in a URL).
    let redis = Redis::connect(ConfigBuilder::from_url(&url)?.multiplexed(1))?;

    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..64 {
            let mut r = redis.clone();
            s.spawn(move || -> redkit::Result<()> {
                for i in 0..1_000 {
                    r.set::<_, _, ()>(format!("example:mux:{t}"), i)?;
                    let back: i64 = r.get(format!("example:mux:{t}"))?;
                    assert_eq!(back, i);
                }
                Ok(())
            });
        }
    });
    let took = start.elapsed();
    println!(
        "64 threads x 2,000 commands in {took:?} ({:.0} commands/s) over one connection",
        128_000.0 / took.as_secs_f64()
    );
    let stats = redis.stats();
    println!(
        "{} commands, {} errors",
        stats.commands,
        stats.errors.total()
    );
    redis.close()?;
    Ok(())
}
