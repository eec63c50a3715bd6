//! A worker pool that throttles itself: 4 threads share one limit of 20 jobs per second
//! (burst 5) through a GCRA limiter, so the limit holds across every thread and every process
//! that uses the same Redis.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example throttle
//! ```

use std::time::{Duration, Instant};

use redkit::ratelimit::{Gcra, GcraLimit, RateLimiter};
use redkit::testing::RedisServer;
use redkit::Redis;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (_server, redis) = match std::env::var("REDIS_URL") {
        Ok(_) => (None, Redis::from_env()?),
        Err(_) => {
            let server = RedisServer::start()?;
            let redis = Redis::connect(server.url())?;
            (Some(server), redis)
        }
    };

    let limiter = Gcra::new(&redis, "example-api", GcraLimit::per_second(20).burst(5))?
        .max_wait(Duration::from_secs(30));
    limiter.reset("partner-api")?;

    let (jobs, queue) = crossbeam_channel::bounded::<u32>(100);
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let queue = queue.clone();
            let limiter = limiter.clone();
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || -> redkit::Result<u32> {
                    let mut done = 0;
                    for job in queue {
                        // Sleeps for the retry-after until the shared limit lets this one go.
                        let d = limiter.acquire("partner-api", 1)?;
                        done += 1;
                        if job % 10 == 0 {
                            println!(
                                "worker {w}: job {job} at {:>5.0} ms ({} left in the burst)",
                                start.elapsed().as_secs_f64() * 1000.0,
                                d.remaining
                            );
                        }
                    }
                    Ok(done)
                })
        })
        .collect::<Result<_, _>>()?;
    for job in 0..60 {
        jobs.send(job)?;
    }
    drop(jobs);
    let mut total = 0;
    for w in workers {
        total += w.join().map_err(|_| "worker panicked")??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{total} jobs in {secs:.2} s: {:.1} per second (limit 20 per second after a burst of 5)",
        total as f64 / secs
    );
    Ok(())
}
