//! A worker service on a stream queue: 8 worker threads, retries with backoff, a dead-letter
//! stream, delayed jobs, progress every second, and a clean stop on Ctrl-C (stop taking
//! jobs, finish the running ones, hand back the rest).
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1/ cargo run --example worker
//! ```
//!
//! It produces 2,000 jobs (every 50th fails on its first run and succeeds on its retry;
//! job 999 always fails and ends as a dead letter) and 5 delayed jobs, then works until the
//! queue is drained or you press Ctrl-C.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redkit::{Backoff, Redis};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let redis = match std::env::var("REDIS_URL") {
        Ok(_) => Redis::from_env()?,
        Err(_) => Redis::connect("redis://127.0.0.1/")?,
    };
    let queue = redkit::StreamQueue::builder(&redis, "example-jobs")
        .max_len(1_000_000)
        .max_retries(2)
        .retry_backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .claim_idle(Duration::from_secs(30))
        .build()?;

    queue.produce_batch((0..2_000).map(|i| i.to_string()))?;
    for i in 0..5 {
        queue.produce_in(format!("delayed-{i}"), Duration::from_millis(500 * i))?;
    }

    let workers = queue.workers().threads(8).run(|job| {
        let text = job
            .payload_str()
            .map_err(|e| format!("payload is not UTF-8: {e}"))?;
        if let Ok(n) = text.parse::<u32>() {
            if n == 999 {
                return Err(format!("job {n} can never succeed"));
            }
            if n % 50 == 0 && job.attempt() == 0 {
                return Err(format!("job {n}: transient failure, will be retried"));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    })?;

    // Ctrl-C only raises the stop flag; the main thread does the shutdown.
    let stop = workers.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))?;

    loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = workers.stats()?;
        println!(
            "processed {} failed {} retried {} dead {} | pending {} lag {:?} delayed {} in flight {}",
            s.processed, s.failed, s.retried, s.dead_lettered, s.pending, s.lag, s.delayed, s.in_flight
        );
        if workers.is_stopping() {
            println!("Ctrl-C: stopping");
            break;
        }
        if s.pending == 0 && s.lag == Some(0) && s.delayed == 0 && s.in_flight == 0 {
            println!("queue drained");
            break;
        }
    }
    let report = workers.shutdown()?;
    println!("{report:?}");
    for dead in queue.dead_letters(5)? {
        println!(
            "dead letter {} after {} runs: {}",
            dead.origin, dead.attempts, dead.error
        );
    }
    Ok(())
}
