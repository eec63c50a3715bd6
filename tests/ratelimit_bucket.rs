//! Token bucket and concurrency limiter against a real server. Expectations that depend on
//! time are computed from the server's own clock (`TIME`, and the timestamps the scripts
//! store), never from sleeps alone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::ratelimit::{BucketLimit, ConcurrencyLimiter, RateLimiter, RetryAfter, TokenBucket};
use redkit::testing::wait_until;
use redkit::{Error, ErrorClass};
use support::*;

const SEC_US: i64 = 1_000_000;

/// The server's clock in microseconds since the Unix epoch.
fn server_us(con: &mut redis::Connection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query(con).expect("TIME");
    s * SEC_US + us
}

/// A token bucket's stored state: (tokens, ts in server microseconds).
fn bucket_state(con: &mut redis::Connection, key: &str) -> (f64, i64) {
    let (tokens, ts): (Option<f64>, Option<i64>) = redis::cmd("HMGET")
        .arg(key)
        .arg("tokens")
        .arg("ts")
        .query(con)
        .expect("HMGET");
    (tokens.expect("tokens"), ts.expect("ts"))
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap()
}

fn after_us(r: RetryAfter) -> i64 {
    match r {
        RetryAfter::After(d) => us(d),
        other => panic!("expected a retry-after, got {other:?}"),
    }
}

fn per_second(capacity: u64, refill: u64) -> BucketLimit {
    BucketLimit::new(capacity, refill, Duration::from_secs(1))
}

#[test]
fn token_bucket_exact_sequence() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let tb = TokenBucket::new(&redis, "tb", per_second(10, 1))?;
    assert_eq!(tb.key("u"), "redkit:rl:tb:{u}");
    // The sequence expects no token back (less than a second on the server's clock) between
    // the take and the checks that follow it. A longer stall of this machine voids that, as
    // the server's clock shows: then the sequence starts over on a fresh subject.
    for attempt in 0..5 {
        if exact_sequence(&tb, &mut admin, &format!("u{attempt}"))? {
            return Ok(());
        }
        eprintln!("attempt {attempt}: a second passed on the server mid-sequence; again");
    }
    panic!("the machine stalled for a second in every attempt");
}

/// The scripted sequence on a fresh subject; `Ok(false)` when the server's clock shows a
/// stall that voids its premise.
fn exact_sequence(
    tb: &TokenBucket,
    admin: &mut redis::Connection,
    subject: &str,
) -> TestResult<bool> {
    let key = tb.key(subject);

    // A fresh subject is a full bucket; looking writes nothing.
    let d = tb.peek(subject)?;
    assert_eq!(
        (
            d.granted,
            d.remaining,
            d.retry_after,
            d.reset_after,
            d.limit
        ),
        (0, 10, RetryAfter::Now, Duration::ZERO, 10)
    );
    assert!(!admin.exists::<_, bool>(&key)?);

    // Take all ten.
    let d = tb.allow_n(subject, 10)?;
    assert_eq!(
        (
            d.granted,
            d.remaining,
            d.retry_after,
            d.reset_after,
            d.limit
        ),
        (10, 0, RetryAfter::Now, Duration::from_secs(10), 10)
    );
    let (tokens, ts) = bucket_state(admin, &key);
    assert_eq!(tokens, 0.0);

    // The next one is denied: one token comes back one second after the take, less the few
    // microseconds that passed on the server since (at most until `t1`).
    let d = tb.allow(subject)?;
    let t1 = server_us(admin);
    if t1 - ts >= SEC_US {
        return Ok(false);
    }
    assert_eq!((d.granted, d.remaining, d.limit), (0, 0, 10));
    let retry = after_us(d.retry_after);
    assert!(
        retry <= SEC_US + 1 && retry >= SEC_US - (t1 - ts) - 1,
        "retry {retry} us, {} us after the take",
        t1 - ts
    );
    // Full ten seconds after the take: nine seconds after that token.
    assert!((us(d.reset_after) - (retry + 9 * SEC_US)).abs() <= 2);

    // More than the capacity can never be granted.
    let d = tb.allow_n(subject, 11)?;
    assert_eq!(
        (d.granted, d.retry_after, d.limit),
        (0, RetryAfter::Never, 10)
    );

    // A peek never asks to wait (zero tokens always fit), says none is left, writes nothing.
    let before: Vec<(String, String)> = admin.hgetall(&key)?;
    let ttl_before: i64 = admin.pttl(&key)?;
    let d = tb.peek(subject)?;
    let t2 = server_us(admin);
    if t2 - ts >= SEC_US {
        return Ok(false);
    }
    assert_eq!(
        (d.granted, d.remaining, d.retry_after),
        (0, 0, RetryAfter::Now)
    );
    let after: Vec<(String, String)> = admin.hgetall(&key)?;
    assert_eq!(before, after);
    assert!(admin.pttl::<_, i64>(&key)? <= ttl_before);

    // After a wait, the refill is elapsed server time times the rate. The peek's own server
    // time follows from its reset-after (full at ts + 10 s), and must lie between two
    // readings of TIME taken around it.
    std::thread::sleep(Duration::from_millis(1200));
    let lo = server_us(admin);
    let d = tb.peek(subject)?;
    let hi = server_us(admin);
    let t_peek = ts + 10 * SEC_US - us(d.reset_after);
    assert!(
        t_peek >= lo - 1 && t_peek <= hi + 1,
        "peek at {t_peek}, between {lo} and {hi}"
    );
    let whole = |t: i64| ((t - ts) / SEC_US) as u64;
    assert!(
        d.remaining == whole(t_peek - 1) || d.remaining == whole(t_peek + 1),
        "{} remaining {} us after the take",
        d.remaining,
        t_peek - ts
    );
    assert!(d.remaining >= 1);
    assert_eq!(d.retry_after, RetryAfter::Now);

    // Taking one stores the refilled count less one, at the take's server time.
    let d = tb.allow(subject)?;
    assert_eq!(d.granted, 1);
    let (tokens, ts2) = bucket_state(admin, &key);
    let expected = (ts2 - ts) as f64 / SEC_US as f64 - 1.0;
    assert!(
        (tokens - expected).abs() < 1e-6,
        "{tokens} tokens, expected {expected}"
    );
    assert_eq!(d.remaining, (tokens + 1e-6).floor() as u64);
    Ok(true)
}

#[test]
fn token_bucket_keys_have_ttls() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let tb = TokenBucket::new(&redis, "ttl", per_second(10, 1))?;
    let key = tb.key("u");

    // The TTL is the time until the bucket is full again (at 1 token per second, 1 ms for
    // each thousandth of a token missing), less the time since the take.
    for n in [3, 7] {
        let start = Instant::now();
        assert_eq!(tb.allow_n("u", n)?.granted, n);
        let pttl: i64 = admin.pttl(&key)?;
        let waited = start.elapsed().as_millis() as i64;
        let (tokens, _) = bucket_state(&mut admin, &key);
        let full_in = ((10.0 - tokens) * 1000.0).ceil() as i64;
        assert!(
            pttl <= full_in && pttl >= full_in - waited - 1,
            "pttl {pttl}, full in {full_in} ms"
        );
    }

    // A fast bucket is full again within 20 ms: its key vanishes, and an absent key reads
    // as a full bucket.
    let fast = TokenBucket::new(
        &redis,
        "fast",
        BucketLimit::new(3, 3, Duration::from_millis(60)),
    )?;
    let d = fast.allow("u")?;
    assert_eq!((d.granted, d.remaining), (1, 2));
    assert!(d.reset_after <= Duration::from_millis(20));
    let pttl: i64 = admin.pttl(fast.key("u"))?;
    assert!(pttl <= 20 && pttl != -1, "pttl {pttl}");
    wait_until(Duration::from_secs(2), "the idle key to expire", || {
        !admin.exists::<_, bool>(fast.key("u")).unwrap()
    })?;
    assert_eq!(fast.peek("u")?.remaining, 3);

    // The TTL is at least 1 ms, even when the bucket is full again within microseconds.
    let instant = TokenBucket::new(
        &redis,
        "instant",
        BucketLimit::new(1000, 1000, Duration::from_millis(1)),
    )?;
    instant.allow("u")?;
    let pttl: i64 = admin.pttl(instant.key("u"))?;
    assert!(pttl <= 1 && pttl != -1, "pttl {pttl}");
    Ok(())
}

#[test]
fn token_bucket_set_limit_keeps_state() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let tb = TokenBucket::new(&redis, "change", per_second(10, 1))?;
    let other = tb.clone();
    assert_eq!(tb.allow_n("u", 7)?.remaining, 3);
    let (_, ts) = bucket_state(&mut admin, &tb.key("u"));

    // A larger capacity: the three tokens are kept (plus what flowed in since), not
    // refilled to the new capacity.
    tb.set_limit(per_second(20, 1))?;
    assert_eq!(other.limit(), per_second(20, 1));
    let d = other.peek("u")?;
    let since = server_us(&mut admin) - ts;
    assert_eq!(d.limit, 20);
    assert!(d.remaining >= 3 && d.remaining <= 3 + (since / SEC_US) as u64);
    let reset = us(d.reset_after);
    assert!(
        reset <= 17 * SEC_US && reset >= 17 * SEC_US - since - 1,
        "{reset}"
    );

    // A smaller capacity clamps the count.
    tb.set_limit(per_second(2, 1))?;
    let d = tb.peek("u")?;
    assert_eq!((d.remaining, d.limit), (2, 2));
    assert_eq!(tb.allow_n("u", 3)?.retry_after, RetryAfter::Never);
    let d = tb.allow_n("u", 2)?;
    assert_eq!((d.granted, d.remaining), (2, 0));

    // A faster refill applies to the stored state: 1000 per second refills two tokens in
    // 2 ms (at the old rate of 1 per second it would take 2 s).
    tb.set_limit(per_second(2, 1000))?;
    std::thread::sleep(Duration::from_millis(50));
    let d = tb.peek("u")?;
    assert_eq!((d.remaining, d.reset_after), (2, Duration::ZERO));

    // An invalid limit is refused and changes nothing.
    let e = tb.set_limit(per_second(0, 1)).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config);
    assert_eq!(tb.limit(), per_second(2, 1000));
    assert!(TokenBucket::new(&redis, "bad", per_second(1, 0)).is_err());
    assert!(TokenBucket::new(&redis, "bad", BucketLimit::new(1, 1, Duration::ZERO)).is_err());

    // Reset forgets the subject: a full bucket.
    tb.set_limit(BucketLimit::new(5, 1, Duration::from_secs(60)))?;
    assert_eq!(tb.allow_n("r", 5)?.remaining, 0);
    assert!(!tb.try_acquire("r", 1)?);
    tb.reset("r")?;
    assert!(!admin.exists::<_, bool>(tb.key("r"))?);
    assert_eq!(tb.peek("r")?.remaining, 5);
    Ok(())
}

#[test]
fn token_bucket_blocking_helpers() -> TestResult {
    let server = server();
    let redis = redis(&server);
    // One token every 10 s.
    let tb = TokenBucket::new(
        &redis,
        "block",
        BucketLimit::new(2, 1, Duration::from_secs(10)),
    )?
    .prefix("app:");
    assert_eq!(tb.key("u"), "app:block:{u}");

    assert!(tb.try_acquire("u", 2)?);
    assert!(!tb.try_acquire("u", 1)?);
    match tb.acquire_timeout("u", 1, Duration::from_millis(50)) {
        Err(Error::RateLimited {
            retry_after: Some(d),
        }) => assert!(d > Duration::from_secs(5) && d <= Duration::from_secs(10)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    match tb.acquire_timeout("u", 3, Duration::from_secs(5)) {
        Err(Error::RateLimited { retry_after: None }) => {}
        other => panic!("expected RateLimited for never, got {other:?}"),
    }

    // A worker that waits for its token: one every 100 ms.
    let fast = TokenBucket::new(
        &redis,
        "paced",
        BucketLimit::new(1, 1, Duration::from_millis(100)),
    )?
    .max_wait(Duration::from_secs(2));
    let start = Instant::now();
    fast.acquire("u", 1)?;
    let d = fast.acquire("u", 1)?;
    assert_eq!(d.granted, 1);
    assert!(start.elapsed() >= Duration::from_millis(99));
    Ok(())
}

#[test]
fn concurrency_never_more_than_the_maximum() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "jobs", 3, Duration::from_secs(10))?
        .max_wait(Duration::from_secs(4));
    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (limiter, held, most, done, start) = (
                limiter.clone(),
                held.clone(),
                most.clone(),
                done.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let slot = limiter.acquire("tenant").expect("acquire");
                // Counted only while the lease is surely held.
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                held.fetch_sub(1, Ordering::SeqCst);
                assert!(slot.release().expect("release"));
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread");
    }
    assert_eq!(done.load(Ordering::SeqCst), 8);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} held at once");
    assert_eq!(limiter.in_flight("tenant")?, 0);
    Ok(())
}

#[test]
fn concurrency_try_acquire_and_set_max() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "conns", 3, Duration::from_secs(10))?;
    let key = limiter.key("t");
    assert_eq!(key, "redkit:rl:conns:{t}");

    let a = limiter.try_acquire("t")?.expect("first");
    let b = limiter.try_acquire("t")?.expect("second");
    let c = limiter.try_acquire("t")?.expect("third");
    assert!(limiter.try_acquire("t")?.is_none());
    assert_eq!(limiter.in_flight("t")?, 3);
    // Another subject has its own slots.
    let other = limiter.try_acquire("other")?.expect("other subject");
    drop(other);
    assert_eq!(limiter.in_flight("other")?, 0);

    // The key lives as long as its longest lease.
    let pttl: i64 = admin.pttl(&key)?;
    assert!(pttl > 5_000 && pttl <= 10_000, "pttl {pttl}");
    let start = Instant::now();
    assert!(a.extend(Duration::from_secs(20))?);
    let pttl: i64 = admin.pttl(&key)?;
    let waited = start.elapsed().as_millis() as i64;
    assert!(pttl <= 20_000 && pttl >= 20_000 - waited - 1, "pttl {pttl}");

    // A lower maximum: the three leases stay valid, new ones wait until fewer than one.
    limiter.set_max_in_flight(1)?;
    assert!(limiter.set_max_in_flight(0).is_err());
    assert_eq!(limiter.max_in_flight(), 1);
    // A slot comes back by expiry only once all three have expired: when `a`, the longest,
    // expires.
    let a_expiry: i64 = admin.zscore(&key, a.lease_id())?;
    let before = server_us(&mut admin);
    let refused = limiter.acquire_timeout("t", Duration::from_millis(20));
    let after = server_us(&mut admin);
    match refused {
        Err(Error::RateLimited {
            retry_after: Some(d),
        }) => assert!(
            us(d) <= a_expiry - before && us(d) >= a_expiry - after,
            "{d:?}"
        ),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(a.release()?);
    assert!(limiter.try_acquire("t")?.is_none());
    drop(b); // a guard gives its slot back when dropped
    assert_eq!(limiter.in_flight("t")?, 1);
    assert!(limiter.try_acquire("t")?.is_none());
    assert!(c.release()?);
    let d = limiter.try_acquire("t")?.expect("under the new maximum");
    assert!(d.release()?);
    // No lease left: the key is gone.
    assert!(!admin.exists::<_, bool>(&key)?);

    assert!(ConcurrencyLimiter::new(&redis, "bad", 0, Duration::from_secs(1)).is_err());
    assert!(ConcurrencyLimiter::new(&redis, "bad", 1, Duration::ZERO).is_err());
    Ok(())
}

#[test]
fn concurrency_leaked_slot_comes_back_after_its_ttl() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "leak", 1, Duration::from_millis(300))?;
    // The same limit (same name, same keys) with long leases, for the slots we keep.
    let patient = ConcurrencyLimiter::new(&redis, "leak", 1, Duration::from_secs(10))?;
    let key = limiter.key("t");

    let leaked = limiter.try_acquire("t")?.expect("slot");
    let id = leaked.lease_id().to_owned();
    let expiry: i64 = admin.zscore(&key, &id)?;
    std::mem::forget(leaked);
    // Refused while the leaked lease lasts (granted only if this machine stalled past it).
    if let Some(early) = patient.try_acquire("t")? {
        assert!(server_us(&mut admin) >= expiry, "granted during the lease");
        drop(early);
    }

    let slot = patient.acquire_timeout("t", Duration::from_secs(3))?;
    // It was granted only once the leaked lease had expired on the server's clock.
    assert!(server_us(&mut admin) >= expiry);
    assert_eq!(admin.zscore::<_, _, Option<i64>>(&key, &id)?, None);
    assert_eq!(limiter.in_flight("t")?, 1);
    assert!(slot.release()?);
    Ok(())
}

#[test]
fn concurrency_release_reports_an_expired_lease() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "expire", 3, Duration::from_millis(300))?;
    // The same limit (same name, same keys) with long leases.
    let patient = ConcurrencyLimiter::new(&redis, "expire", 3, Duration::from_secs(10))?;

    let live = patient.try_acquire("t")?.expect("slot");
    assert!(live.release()?);
    // A long lease keeps the key alive after the short ones expire.
    let long = patient.try_acquire("t")?.expect("slot");

    let first = limiter.try_acquire("t")?.expect("slot");
    let second = limiter.try_acquire("t")?.expect("slot");
    let expiry: i64 = admin.zscore(limiter.key("t"), second.lease_id())?;
    wait_until(Duration::from_secs(3), "the leases to expire", || {
        server_us(&mut admin) > expiry
    })?;
    assert_eq!(limiter.in_flight("t")?, 1);
    // Not yet swept (no acquire since), but expired: not held any more.
    assert!(!first.release()?);
    assert!(!second.extend(Duration::from_secs(1))?);
    assert!(!second.release()?);
    assert!(long.release()?);
    Ok(())
}

#[test]
fn concurrency_extend_keeps_a_lease_alive() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "extend", 1, Duration::from_millis(500))?;
    let key = limiter.key("t");

    // Extending works only while the lease lasts: should this machine stall past the
    // 500 ms lease before `extend` (the server's clock tells), it must say so, and we try
    // again.
    let (slot, first_expiry) = (|| {
        for _ in 0..5 {
            let slot = limiter.try_acquire("t")?.expect("slot");
            let first_expiry: i64 = admin.zscore(&key, slot.lease_id())?;
            if slot.extend(Duration::from_secs(3))? {
                return Ok::<_, Box<dyn std::error::Error>>((slot, first_expiry));
            }
            assert!(
                server_us(&mut admin) > first_expiry,
                "extend refused a live lease"
            );
            assert!(!slot.release()?);
        }
        panic!("stalled past the lease in every attempt");
    })()?;
    let new_expiry: i64 = admin.zscore(&key, slot.lease_id())?;
    assert!(new_expiry >= first_expiry + 2 * SEC_US);
    wait_until(Duration::from_secs(3), "the first expiry to pass", || {
        server_us(&mut admin) > first_expiry
    })?;
    // Past its original TTL, the lease still holds the only slot.
    assert!(limiter.try_acquire("t")?.is_none());
    assert_eq!(limiter.in_flight("t")?, 1);
    assert!(slot.release()?);
    assert!(limiter.try_acquire("t")?.is_some());
    Ok(())
}

#[test]
fn concurrency_acquire_timeout_on_a_full_limiter() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let limiter = ConcurrencyLimiter::new(&redis, "full", 1, Duration::from_secs(10))?
        .max_wait(Duration::from_millis(100));
    let held = limiter.acquire("t")?;

    let start = Instant::now();
    let e = limiter
        .acquire_timeout("t", Duration::from_millis(200))
        .unwrap_err();
    let waited = start.elapsed();
    match e {
        Error::RateLimited {
            retry_after: Some(d),
        } => assert!(
            d > Duration::from_secs(9) && d <= Duration::from_secs(10),
            "{d:?}"
        ),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // `acquire` waits `max_wait`.
    let start = Instant::now();
    assert!(matches!(
        limiter.acquire("t"),
        Err(Error::RateLimited { .. })
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));

    // A release wakes a waiter before the lease would expire.
    let waiter = {
        let limiter = limiter.clone();
        std::thread::spawn(move || limiter.acquire_timeout("t", Duration::from_secs(3)))
    };
    std::thread::sleep(Duration::from_millis(50));
    drop(held);
    let slot = waiter.join().expect("waiter")?;
    assert!(slot.release()?);
    Ok(())
}

/// Hammers one token bucket (capacity 10, 50 tokens per second) for `run`.
fn hammer_bucket(redis: &redkit::Redis, threads: usize, run: Duration) -> u64 {
    let bucket = TokenBucket::new(redis, "hammer", per_second(10, 50)).expect("bucket");
    hammer(&bucket, "shared", threads, run)
}

/// The second process of `token_bucket_contention_from_threads_and_another_process`.
#[test]
#[ignore = "run by token_bucket_contention_from_threads_and_another_process as a child"]
fn child_hammer_bucket() {
    let Ok(url) = std::env::var("REDKIT_CHILD_URL") else {
        return;
    };
    let redis = redkit::Redis::connect(url.as_str()).expect("child connect");
    let n = hammer_bucket(&redis, 2, Duration::from_millis(1500));
    println!("ADMITTED={n}");
}

#[test]
fn token_bucket_contention_from_threads_and_another_process() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let start = Instant::now();
    let child = spawn_child("child_hammer_bucket", &server.url(), &[])?;
    let here = hammer_bucket(&redis, 8, Duration::from_millis(1500));
    let there = child_admitted(child)?;
    let elapsed = start.elapsed();
    let total = here + there;
    // A full bucket of 10, plus 50 per second over the whole time both ran.
    let ceiling = 10 + (50.0 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        total <= ceiling,
        "{here} + {there} admitted, at most {ceiling}"
    );
    assert!(here > 0 && there > 0, "{here} {there}");
    assert!(total >= 30, "the bucket did not refuse everyone: {total}");
    Ok(())
}
