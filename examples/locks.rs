//! Distributed locks and coordination, end to end:
//!
//! 1. Four worker threads update a shared "ledger" under one `Lock`; each write carries the
//!    lock's fencing token, and the ledger refuses tokens older than the last it accepted.
//! 2. A holder that stalls past its TTL comes back with a stale token: its late write is
//!    refused instead of overwriting the newer holder's work (why fencing matters).
//! 3. A watchdog-renewed lock outlives its TTL; deleting it behind its back emits `LockLost`.
//! 4. A semaphore lets at most two of six jobs run at once.
//! 5. Three members of a group elect one leader; when it leaves, another takes over.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example locks
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redkit::lock::{Election, Group, Lock, Semaphore};
use redkit::testing::RedisServer;
use redkit::{Event, Redis};

/// The protected resource: it remembers the highest fencing token it has accepted and
/// refuses writes with an older one (atomically, in one script).
const FENCED_WRITE: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
"#;

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
    let write = redkit::Script::new(FENCED_WRITE);
    redis.query::<()>(redis::cmd("DEL").arg("example:ledger"))?;

    // 1. Mutual exclusion with fenced writes.
    let lock = Lock::new(&redis, "example-ledger")?;
    std::thread::scope(|s| {
        for worker in 0..4 {
            let (lock, redis, write) = (&lock, &redis, &write);
            s.spawn(move || -> redkit::Result<()> {
                for _ in 0..5 {
                    let guard = lock.acquire()?;
                    let total: i64 = redis
                        .query::<Option<i64>>(
                            redis::cmd("HGET").arg("example:ledger").arg("value"),
                        )?
                        .unwrap_or(0);
                    let ok: i64 = write
                        .key("example:ledger")
                        .arg(guard.fencing_token())
                        .arg(total + 1)
                        .run(redis)?;
                    assert_eq!(ok, 1, "a fresh token is accepted");
                    guard.release()?;
                }
                println!("worker {worker} done");
                Ok(())
            });
        }
    });
    let total: i64 = redis.query(redis::cmd("HGET").arg("example:ledger").arg("value"))?;
    println!("ledger total: {total} (4 workers x 5 increments)");

    // 2. A stalled holder's late write is refused.
    let short = Lock::builder(&redis, "example-short")
        .ttl(Duration::from_millis(200))
        .build()?;
    let stalled = short.acquire()?;
    std::thread::sleep(Duration::from_millis(300)); // a "GC pause" past the TTL
    let newer = short.acquire()?;
    let ok: i64 = write
        .key("example:ledger")
        .arg(newer.fencing_token() + 1_000)
        .arg("newer")
        .run(&redis)?;
    let late: i64 = write
        .key("example:ledger")
        .arg(stalled.fencing_token())
        .arg("stale")
        .run(&redis)?;
    println!(
        "stalled holder still held? {}; newer write accepted: {}; stale write accepted: {}",
        stalled.is_held(),
        ok == 1,
        late == 1
    );
    println!("stale release says still held: {}", stalled.release()?);
    newer.release()?;

    // 3. The watchdog, and a lock lost behind our back.
    let events = redis.events();
    let renewed = Lock::builder(&redis, "example-dog")
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()?;
    let guard = renewed.acquire()?;
    std::thread::sleep(Duration::from_millis(1000));
    println!(
        "after 3 TTLs: held = {}, {:?} left",
        guard.is_held(),
        guard.remaining()?
    );
    redis.query::<()>(redis::cmd("DEL").arg(renewed.key()))?;
    if let Some(lost) = events.iter().find(|e| matches!(e, Event::LockLost { .. })) {
        println!("event: {lost}; held = {}", guard.is_held());
    }
    drop(guard);

    // 4. A semaphore: at most 2 of 6 jobs at once.
    let sem = Semaphore::new(&redis, "example-jobs", 2)?;
    let running = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| -> redkit::Result<()> {
                let permit = sem.acquire()?;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                running.fetch_sub(1, Ordering::SeqCst);
                permit.release()?;
                Ok(())
            });
        }
    });
    println!("semaphore: at most {} jobs ran at once", most.into_inner());

    // 5. Leader election.
    let group = Group::builder(&redis, "example-bots")
        .leader_ttl(Duration::from_millis(600))
        .build()?;
    let members = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|id| group.join(id))
        .collect::<redkit::Result<Vec<_>>>()?;
    println!(
        "members {:?}, leader {:?}",
        group.members()?,
        group.leader()?
    );
    let mut members = members.into_iter();
    if let Some(first) = members.next() {
        first.leave()?;
    }
    let rest: Vec<_> = members.collect();
    // Another member is elected at its next heartbeat (within a third of the TTL).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Some(m) = rest.iter().find(|m| m.is_leader()) {
            if let Ok(Election::Elected { term }) = m.events().try_recv() {
                println!("{} took over (term {term})", m.id());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
