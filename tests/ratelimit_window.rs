//! Window limiters (sliding log, sliding window counter, fixed window) against a real server.
//!
//! Exact expectations are checked against the server's clock: each sequence reads `TIME`
//! before and after, and is run again on a fresh subject when a window edge passed meanwhile.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redkit::ratelimit::{
    Decision, FixedWindow, RateLimiter, RetryAfter, SlidingLog, SlidingWindow, WindowLimit,
};
use redkit::{Error, Redis};
use support::*;

/// What the tests need from a limiter beyond [`RateLimiter`].
trait Limiter: RateLimiter + Send + Sync {
    fn set(&self, limit: WindowLimit) -> redkit::Result<()>;
    fn get(&self) -> WindowLimit;
    fn key_of(&self, subject: &str) -> String;
}

macro_rules! limiter {
    ($($t:ty),*) => {$(
        impl Limiter for $t {
            fn set(&self, limit: WindowLimit) -> redkit::Result<()> {
                self.set_limit(limit)
            }
            fn get(&self) -> WindowLimit {
                self.limit()
            }
            fn key_of(&self, subject: &str) -> String {
                self.key(subject)
            }
        }
    )*};
}
limiter!(SlidingLog, SlidingWindow, FixedWindow);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Log,
    Window,
    Fixed,
}

const KINDS: [Kind; 3] = [Kind::Log, Kind::Window, Kind::Fixed];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Window => "window",
            Kind::Fixed => "fixed",
        }
    }

    fn parse(s: &str) -> Kind {
        KINDS
            .into_iter()
            .find(|k| k.name() == s)
            .expect("a limiter kind")
    }
}

fn make(kind: Kind, redis: &Redis, name: &str, limit: WindowLimit) -> Box<dyn Limiter> {
    match kind {
        Kind::Log => Box::new(SlidingLog::new(redis, name, limit).expect("limiter")),
        Kind::Window => Box::new(SlidingWindow::new(redis, name, limit).expect("limiter")),
        Kind::Fixed => Box::new(FixedWindow::new(redis, name, limit).expect("limiter")),
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

fn micros(d: Duration) -> i64 {
    d.as_micros() as i64
}

/// The server's clock in microseconds since the Unix epoch.
fn server_us(redis: &Redis) -> i64 {
    let (s, us): (i64, i64) = redis.query(&redis::cmd("TIME")).expect("TIME");
    s * 1_000_000 + us
}

/// This machine's clock in microseconds since the Unix epoch: the same clock as the server's
/// (`CLOCK_REALTIME`, the server runs on this machine).
fn local_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

fn pttl(redis: &Redis, key: &str) -> i64 {
    redis.query(redis::cmd("PTTL").arg(key)).expect("PTTL")
}

fn exists(redis: &Redis, key: &str) -> bool {
    redis
        .query::<i64>(redis::cmd("EXISTS").arg(key))
        .expect("EXISTS")
        == 1
}

/// The key's serialized value (`DUMP`): equal dumps, equal contents.
fn dump(redis: &Redis, key: &str) -> Option<Vec<u8>> {
    redis.query(redis::cmd("DUMP").arg(key)).expect("DUMP")
}

/// A sorted set's members and scores, oldest first.
fn zrange(redis: &Redis, key: &str) -> Vec<(String, i64)> {
    let v: Vec<(String, f64)> = redis
        .query(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .expect("ZRANGE");
    v.into_iter().map(|(m, s)| (m, s as i64)).collect()
}

/// The wait of a denial.
fn wait(d: &Decision) -> i64 {
    match d.retry_after {
        RetryAfter::After(w) => micros(w),
        _ => panic!("expected a wait: {d:?}"),
    }
}

/// Asserts `lo <= v <= hi` (microseconds, 1 µs of rounding allowed).
#[track_caller]
fn within(what: &str, v: i64, lo: i64, hi: i64) {
    assert!(
        lo - 1 <= v && v <= hi + 1,
        "{what}: {v} µs not within [{lo}, {hi}]"
    );
}

/// Runs `f` on fresh subjects until one run starts and ends in one calendar window of `period`
/// by the server's clock (at most 10 tries); returns its output and the server's time before
/// and after.
fn in_one_window<T>(
    redis: &Redis,
    period: Duration,
    mut f: impl FnMut(&str) -> T,
) -> (T, i64, i64) {
    let p = micros(period);
    for attempt in 0..10 {
        let subject = format!("subject-{attempt}");
        let before = server_us(redis);
        let out = f(&subject);
        let after = server_us(redis);
        if before / p == after / p {
            return (out, before, after);
        }
    }
    panic!("no run fit in one window of {period:?}");
}

/// Sleeps, if needed, until the next edge of a calendar window of `period` is at least
/// `margin` away by the server's clock.
fn clear_of_edge(redis: &Redis, period: Duration, margin: Duration) {
    let now = server_us(redis);
    let left = window_end(now, period) - now;
    if left < micros(margin) {
        std::thread::sleep(Duration::from_micros(left as u64 + 1000));
    }
}

/// The end of the calendar window of `period` that holds `t`.
fn window_end(t: i64, period: Duration) -> i64 {
    let p = micros(period);
    (t / p + 1) * p
}

/// Five `allow`, a sixth, `allow_n(6)`, `allow_n(2)` and a peek; returns the decisions, the
/// key's TTL and contents after the admissions, and its contents at the end.
type Sequence = (
    Vec<Decision>,
    i64,
    Vec<(String, i64)>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn five_then_denials(redis: &Redis, l: &dyn Limiter, subject: &str) -> Sequence {
    let mut ds: Vec<Decision> = (0..5).map(|_| l.allow(subject).expect("allow")).collect();
    let key = l.key_of(subject);
    let ttl = pttl(redis, &key);
    let log = match redis
        .query::<String>(redis::cmd("TYPE").arg(&key))
        .expect("TYPE")
        .as_str()
    {
        "zset" => zrange(redis, &key),
        _ => Vec::new(),
    };
    let before = dump(redis, &key);
    ds.push(l.allow(subject).expect("allow"));
    ds.push(l.allow_n(subject, 6).expect("allow_n"));
    ds.push(l.allow_n(subject, 2).expect("allow_n"));
    ds.push(l.peek(subject).expect("peek"));
    let after = dump(redis, &key);
    (ds, ttl, log, before, after)
}

#[track_caller]
fn assert_five_admitted(ds: &[Decision]) {
    for (i, d) in ds[..5].iter().enumerate() {
        assert_eq!(
            (d.granted, d.remaining, d.retry_after, d.limit),
            (1, 4 - i as u64, RetryAfter::Now, 5),
            "decision {i}: {d:?}"
        );
    }
    for d in [&ds[5], &ds[7]] {
        assert_eq!((d.granted, d.remaining), (0, 0), "{d:?}");
        assert!(wait(d) > 0 && wait(d) <= 2 * micros(SECOND), "{d:?}");
    }
    // A peek never asks to wait (zero units always fit); nothing remains.
    assert_eq!(
        (ds[8].granted, ds[8].remaining, ds[8].retry_after),
        (0, 0, RetryAfter::Now),
        "{:?}",
        ds[8]
    );
    assert_eq!(
        (ds[6].granted, ds[6].remaining, ds[6].retry_after),
        (0, 0, RetryAfter::Never),
        "{:?}",
        ds[6]
    );
}

#[test]
fn sliding_log_five_per_second() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let log = SlidingLog::new(&redis, "log", WindowLimit::per_second(5))?;
    let ((ds, ttl, entries, dump_before, dump_after), _, after) =
        in_one_window(&redis, SECOND, |s| five_then_denials(&redis, &log, s));
    assert_five_admitted(&ds);
    let p = micros(SECOND);
    // Every admission's reset-after is exactly one period: it is the newest.
    for d in &ds[..5] {
        assert_eq!(d.reset_after, SECOND, "{d:?}");
    }
    // The log: five distinct members, oldest first.
    assert_eq!(entries.len(), 5, "{entries:?}");
    let names: HashSet<&String> = entries.iter().map(|(m, _)| m).collect();
    assert_eq!(names.len(), 5, "{entries:?}");
    let t: Vec<i64> = entries.iter().map(|(_, s)| *s).collect();
    let (t1, t2, t5) = (t[0], t[1], t[4]);
    // The sixth waits for the oldest to leave; the denials ran after the fifth admission.
    within("sixth", wait(&ds[5]), t1 + p - after, t1 + p - t5);
    within("reset", micros(ds[5].reset_after), t5 + p - after, p);
    // Two more fit once the second oldest has left.
    within("allow_n(2)", wait(&ds[7]), t2 + p - after, t2 + p - t5);
    // Denials and peeks wrote nothing; the key expires with the newest admission.
    assert!(dump_before.is_some());
    assert_eq!(dump_before, dump_after);
    assert!(ttl > 0 && ttl <= 1000, "PTTL {ttl}");
    Ok(())
}

#[test]
fn sliding_window_five_per_second() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let sw = SlidingWindow::new(&redis, "sw", WindowLimit::per_second(5))?;
    let ((ds, ttl, _, dump_before, dump_after), before, after) =
        in_one_window(&redis, SECOND, |s| five_then_denials(&redis, &sw, s));
    assert_five_admitted(&ds);
    let p = micros(SECOND);
    let end = window_end(before, SECOND);
    // Back to 0 when the next window ends (this window's count fades through it).
    for d in &ds[..5] {
        within(
            "reset",
            micros(d.reset_after),
            end + p - after,
            end + p - before,
        );
    }
    // One more fits when this window's 5, as the previous count, have faded to 4: 1/5 into
    // the next window; two more when they have faded to 3: 2/5 into it.
    within(
        "sixth",
        wait(&ds[5]),
        end + p / 5 - after,
        end + p / 5 - before,
    );
    within(
        "allow_n(2)",
        wait(&ds[7]),
        end + 2 * p / 5 - after,
        end + 2 * p / 5 - before,
    );
    assert!(dump_before.is_some());
    assert_eq!(dump_before, dump_after);
    // The counts matter until the next window ends: at most two periods.
    let bound = (end + p - before + 999) / 1000;
    assert!(
        ttl > 0 && ttl <= bound && ttl <= 2000,
        "PTTL {ttl}, bound {bound}"
    );
    Ok(())
}

#[test]
fn fixed_window_five_per_second() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let fixed = FixedWindow::new(&redis, "fixed", WindowLimit::per_second(5))?;
    let ((ds, ttl, _, dump_before, dump_after), before, after) =
        in_one_window(&redis, SECOND, |s| five_then_denials(&redis, &fixed, s));
    assert_five_admitted(&ds);
    let end = window_end(before, SECOND);
    for d in &ds[..6] {
        within("reset", micros(d.reset_after), end - after, end - before);
    }
    // Every denial waits for the window's end.
    for d in [&ds[5], &ds[7]] {
        within("wait", wait(d), end - after, end - before);
    }
    assert!(dump_before.is_some());
    assert_eq!(dump_before, dump_after);
    let bound = (end - before + 999) / 1000;
    assert!(
        ttl > 0 && ttl <= bound && ttl <= 1000,
        "PTTL {ttl}, bound {bound}"
    );
    Ok(())
}

#[test]
fn sliding_window_weights_the_previous_window() -> TestResult {
    // 10 per day, with 10 admitted in the previous day (written directly): the previous
    // count weighs 10 * (1 - elapsed / day), so floor(10 * elapsed / day) fit now.
    const DAY: Duration = Duration::from_secs(86_400);
    let server = server();
    let redis = redis(&server);
    let sw = SlidingWindow::new(&redis, "weights", WindowLimit::new(10, DAY))?;
    let p = micros(DAY);
    let ((peek, take, denied), before, after) = in_one_window(&redis, DAY, |s| {
        let now = server_us(&redis);
        let start = now - now % p;
        let key = sw.key(s);
        redis
            .query::<()>(
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("last")
                    .arg(start - 1)
                    .arg("cur")
                    .arg(10)
                    .arg("prev")
                    .arg(3),
            )
            .expect("HSET");
        let peek = sw.peek(s).expect("peek");
        let take = (peek.remaining > 0).then(|| sw.allow_n(s, peek.remaining).expect("allow_n"));
        let denied = sw.allow(s).expect("allow");
        (peek, take, denied)
    });
    let start = before - before % p;
    let fits = |t: i64| 10 * (t - start) / p;
    let k = peek.remaining as i64;
    assert!((fits(before)..=fits(after)).contains(&k), "{peek:?}");
    if k > 0 {
        assert_eq!(peek.retry_after, RetryAfter::Now, "{peek:?}");
    } else {
        assert!(wait(&peek) > 0, "{peek:?}");
    }
    // Only the previous window counts (the one before it, `prev` = 3, is two windows old):
    // back to 0 at the end of this window.
    within(
        "reset",
        micros(peek.reset_after),
        start + p - after,
        start + p - before,
    );
    if let Some(take) = take {
        assert_eq!((take.granted, take.remaining), (k as u64, 0), "{take:?}");
        // Now this window has admissions: back to 0 at the end of the next one.
        within(
            "reset",
            micros(take.reset_after),
            start + 2 * p - after,
            start + 2 * p - before,
        );
    }
    // One more fits when 10 * (1 - e / day) + k + 1 <= 10: at e = (k + 1) / 10 of the day.
    let at = start + (k + 1) * p / 10;
    assert_eq!((denied.granted, denied.remaining), (0, 0), "{denied:?}");
    within("wait", wait(&denied), at - after, at - before);
    Ok(())
}

#[test]
fn all_or_nothing_peeks_and_resets() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for kind in KINDS {
        let l = make(kind, &redis, kind.name(), WindowLimit::per_minute(5));
        // A peek on a fresh subject: everything fits, nothing is written.
        for d in [l.peek("fresh")?, l.allow_n("fresh", 0)?] {
            assert_eq!(
                (
                    d.granted,
                    d.remaining,
                    d.retry_after,
                    d.reset_after,
                    d.limit
                ),
                (0, 5, RetryAfter::Now, Duration::ZERO, 5),
                "{kind:?}: {d:?}"
            );
        }
        assert!(!exists(&redis, &l.key_of("fresh")), "{kind:?}");
        let ((first, denied, dumps, rest), _, _) = in_one_window(&redis, MINUTE, |s| {
            let first = l.allow_n(s, 3).expect("allow_n");
            let before = dump(&redis, &l.key_of(s));
            let denied = l.allow_n(s, 3).expect("allow_n");
            let after = dump(&redis, &l.key_of(s));
            let rest = l.allow_n(s, 2).expect("allow_n");
            (first, denied, (before, after), rest)
        });
        assert_eq!(
            (first.granted, first.remaining),
            (3, 2),
            "{kind:?}: {first:?}"
        );
        // Three do not fit: none is taken.
        assert_eq!(
            (denied.granted, denied.remaining),
            (0, 2),
            "{kind:?}: {denied:?}"
        );
        assert!(wait(&denied) > 0, "{kind:?}: {denied:?}");
        assert_eq!(dumps.0, dumps.1, "{kind:?}: a denial wrote");
        assert_eq!((rest.granted, rest.remaining), (2, 0), "{kind:?}: {rest:?}");
        // Reset forgets the subject.
        l.reset("subject-0")?;
        assert!(!exists(&redis, &l.key_of("subject-0")), "{kind:?}");
        let d = l.allow_n("subject-0", 5)?;
        assert_eq!((d.granted, d.remaining), (5, 0), "{kind:?}: {d:?}");
    }
    // Keys: prefix, name, subject as the hash tag.
    let log = SlidingLog::new(&redis, "api", WindowLimit::per_second(1))?.prefix("my:");
    assert_eq!(log.key("u1"), "my:api:{u1}");
    Ok(())
}

#[test]
fn limits_are_validated() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for bad in [
        WindowLimit::per_second(0),
        WindowLimit::new(5, Duration::ZERO),
        WindowLimit::new(5, Duration::from_micros(500)),
    ] {
        for kind in KINDS {
            let e = match kind {
                Kind::Log => SlidingLog::new(&redis, "v", bad).map(|_| ()),
                Kind::Window => SlidingWindow::new(&redis, "v", bad).map(|_| ()),
                Kind::Fixed => FixedWindow::new(&redis, "v", bad).map(|_| ()),
            };
            assert!(
                matches!(e, Err(Error::Config { .. })),
                "{kind:?} {bad:?}: {e:?}"
            );
            let l = make(kind, &redis, "v", WindowLimit::per_second(3));
            assert!(matches!(l.set(bad), Err(Error::Config { .. })), "{kind:?}");
            assert_eq!(l.get(), WindowLimit::per_second(3), "{kind:?}");
        }
    }
    Ok(())
}

#[test]
fn set_limit_changes_decisions_and_keeps_state() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for kind in KINDS {
        let l = make(kind, &redis, kind.name(), WindowLimit::per_minute(5));
        let (ds, before, after) = in_one_window(&redis, MINUTE, |s| {
            l.set(WindowLimit::per_minute(5)).expect("set_limit");
            let mut ds = vec![l.allow_n(s, 3).expect("allow_n")];
            l.set(WindowLimit::per_minute(4)).expect("set_limit");
            ds.push(l.peek(s).expect("peek"));
            ds.push(l.allow(s).expect("allow"));
            ds.push(l.allow(s).expect("allow"));
            l.set(WindowLimit::per_minute(10)).expect("set_limit");
            ds.push(l.allow(s).expect("allow"));
            // A longer period keeps the count of the window in progress.
            l.set(WindowLimit::per_hour(10)).expect("set_limit");
            ds.push(l.peek(s).expect("peek"));
            ds
        });
        let got: Vec<(u64, u64, u64)> = ds
            .iter()
            .map(|d| (d.granted, d.remaining, d.limit))
            .collect();
        assert_eq!(
            got,
            [
                (3, 2, 5),
                (0, 1, 4),
                (1, 0, 4),
                (0, 0, 4),
                (1, 5, 10),
                (0, 5, 10)
            ],
            "{kind:?}: {ds:?}"
        );
        assert!(wait(&ds[3]) > 0, "{kind:?}");
        let reset = micros(ds[5].reset_after);
        let hour = micros(Duration::from_secs(3600));
        match kind {
            // The newest admission leaves the (now one hour) window in about an hour.
            Kind::Log => within("reset", reset, hour - (after - before), hour),
            // The count fades through the next hour.
            Kind::Window => {
                let end = window_end(before, Duration::from_secs(3600));
                within("reset", reset, end + hour - after, end + hour - before)
            }
            // The window in progress is now the hour.
            Kind::Fixed => {
                let end = window_end(before, Duration::from_secs(3600));
                within("reset", reset, end - after, end - before)
            }
        }
    }
    // Clones share the limit.
    let a = FixedWindow::new(&redis, "shared", WindowLimit::per_second(3))?;
    let b = a.clone();
    b.set_limit(WindowLimit::per_minute(7))?;
    assert_eq!(a.limit(), WindowLimit::per_minute(7));
    assert_eq!((a.limit().limit(), a.limit().period()), (7, MINUTE));
    Ok(())
}

#[test]
fn windows_refill_after_the_retry_after() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for kind in KINDS {
        let l = make(
            kind,
            &redis,
            kind.name(),
            WindowLimit::new(3, Duration::from_millis(300)),
        );
        let mut admitted = 0;
        let denied = loop {
            let d = l.allow("s")?;
            if !d.is_allowed() {
                break d;
            }
            admitted += 1;
            assert!(admitted <= 10, "{kind:?}: never denied");
        };
        assert!(admitted >= 3, "{kind:?}: {admitted}");
        let w = wait(&denied);
        assert!(
            w > 0 && w <= micros(Duration::from_millis(600)),
            "{kind:?}: {denied:?}"
        );
        std::thread::sleep(Duration::from_micros(w as u64));
        let d = l.allow("s")?;
        assert_eq!(
            d.granted, 1,
            "{kind:?}: not allowed after the retry-after: {d:?}"
        );
    }
    Ok(())
}

#[test]
fn acquire_waits_times_out_and_refuses_the_impossible() -> TestResult {
    let server = server();
    let redis = redis(&server);
    for kind in KINDS {
        // Waits for the window to make room, then succeeds.
        let l = make(
            kind,
            &redis,
            kind.name(),
            WindowLimit::new(2, Duration::from_millis(200)),
        );
        while l.allow("wait")?.is_allowed() {}
        let t = Instant::now();
        let d = l.acquire("wait", 1)?;
        assert_eq!(d.granted, 1, "{kind:?}: {d:?}");
        assert!(
            t.elapsed() <= Duration::from_millis(1500),
            "{kind:?}: {:?}",
            t.elapsed()
        );

        // A deadline shorter than the wait: fails at once with the wait.
        l.set(WindowLimit::per_hour(2))?;
        clear_of_edge(&redis, Duration::from_secs(3600), SECOND);
        l.allow_n("timeout", 2)?;
        let t = Instant::now();
        match l.acquire_timeout("timeout", 1, Duration::from_millis(50)) {
            Err(Error::RateLimited {
                retry_after: Some(w),
            }) => assert!(w > Duration::from_millis(50), "{kind:?}: {w:?}"),
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(50), "{kind:?}: slept");

        // More than the limit: never, at once.
        let t = Instant::now();
        match l.acquire("never", 3) {
            Err(Error::RateLimited { retry_after: None }) => {}
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(500), "{kind:?}");
        assert!(!l.try_acquire("never", 3)?, "{kind:?}");
        assert!(l.try_acquire("never", 2)?, "{kind:?}");
    }
    Ok(())
}

// Contention: 8 threads here and a second process hammer one subject.

const HAMMER_LIMIT: u64 = 50;
const HAMMER_PERIOD: Duration = Duration::from_millis(500);
const HAMMER_RUN: Duration = Duration::from_secs(2);
const HAMMER_SUBJECT: &str = "shared";

/// One admitted call: when it was sent and when its reply came (this machine's clock, which
/// is the server's), and its decision.
#[derive(Debug, Clone, Copy)]
struct Admission {
    sent: i64,
    replied: i64,
    reset: i64,
    remaining: u64,
}

fn hammer_limiter(kind: Kind, redis: &Redis) -> Box<dyn Limiter> {
    make(
        kind,
        redis,
        &format!("hammer-{}", kind.name()),
        WindowLimit::new(HAMMER_LIMIT, HAMMER_PERIOD),
    )
}

/// Calls `allow` from `start` to `end` (microseconds since the epoch); returns the number of
/// calls and the admissions.
fn hammer(l: &dyn Limiter, start: i64, end: i64) -> (u64, Vec<Admission>) {
    let wait = start - local_us();
    if wait > 0 {
        std::thread::sleep(Duration::from_micros(wait as u64));
    }
    let mut calls = 0;
    let mut admitted = Vec::new();
    loop {
        let sent = local_us();
        if sent >= end {
            return (calls, admitted);
        }
        let d = l.allow(HAMMER_SUBJECT).expect("allow");
        let replied = local_us();
        calls += 1;
        if d.is_allowed() {
            admitted.push(Admission {
                sent,
                replied,
                reset: micros(d.reset_after),
                remaining: d.remaining,
            });
        }
    }
}

/// The second process of the contention tests (ignored on its own).
#[test]
#[ignore = "run by the contention tests as a child process"]
fn child_hammer() {
    let Ok(url) = std::env::var("REDKIT_CHILD_URL") else {
        return;
    };
    let var = |name: &str| std::env::var(name).expect(name);
    let kind = Kind::parse(&var("REDKIT_CHILD_KIND"));
    let start: i64 = var("REDKIT_CHILD_START").parse().expect("start");
    let end: i64 = var("REDKIT_CHILD_END").parse().expect("end");
    let redis = Redis::connect(url.as_str()).expect("child connect");
    let l = hammer_limiter(kind, &redis);
    let (calls, admitted) = hammer(l.as_ref(), start, end);
    println!("CALLS {calls}");
    for a in admitted {
        println!("ADMIT {} {} {} {}", a.sent, a.replied, a.reset, a.remaining);
    }
}

/// What a contention run saw: the admissions here and in the child, the child's number of
/// calls, and (for the sliding log) every member the log held while it ran.
struct Run {
    here: Vec<Admission>,
    there: Vec<Admission>,
    child_calls: u64,
    log: HashMap<String, i64>,
}

fn contention(kind: Kind) -> Run {
    let server = server();
    let redis = redis(&server);
    let l = hammer_limiter(kind, &redis);
    let key = l.key_of(HAMMER_SUBJECT);
    let start = local_us() + 500_000;
    let end = start + micros(HAMMER_RUN);
    let child = spawn_child(
        "child_hammer",
        &server.url(),
        &[
            ("REDKIT_CHILD_KIND", kind.name().to_string()),
            ("REDKIT_CHILD_START", start.to_string()),
            ("REDKIT_CHILD_END", end.to_string()),
        ],
    )
    .expect("spawn the child");
    let done = AtomicBool::new(false);
    let mut log = HashMap::new();
    let here = std::thread::scope(|s| {
        // The sliding log keeps every admission for at least a period: reading it every 20 ms
        // sees them all.
        let watcher = s.spawn(|| {
            let mut seen = HashMap::new();
            while kind == Kind::Log && !done.load(Ordering::Relaxed) {
                seen.extend(zrange(&redis, &key));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let workers: Vec<_> = (0..8)
            .map(|_| s.spawn(|| hammer(l.as_ref(), start, end).1))
            .collect();
        let here: Vec<Admission> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        done.store(true, Ordering::Relaxed);
        log = watcher.join().expect("watcher");
        here
    });
    let out = child.wait_with_output().expect("child");
    if kind == Kind::Log {
        // The last admissions (here and in the child) are still in the log.
        log.extend(zrange(&redis, &key));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {out:?}");
    let mut child_calls = None;
    let mut there = Vec::new();
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("CALLS ") {
            child_calls = n.trim().parse().ok();
        } else if let Some(a) = line.strip_prefix("ADMIT ") {
            let f: Vec<i64> = a.split(' ').map(|x| x.parse().expect("number")).collect();
            there.push(Admission {
                sent: f[0],
                replied: f[1],
                reset: f[2],
                remaining: f[3] as u64,
            });
        }
    }
    let child_calls = child_calls.unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    // Both sides really hammered, and the limiter did not just refuse everyone.
    assert!(
        child_calls > 0 && !there.is_empty(),
        "child: {child_calls} calls, {there:?}"
    );
    assert!(!here.is_empty());
    let total = (here.len() + there.len()) as u64;
    assert!(total >= 2 * HAMMER_LIMIT, "only {total} admitted");
    Run {
        here,
        there,
        child_calls,
        log,
    }
}

/// Groups admissions by the calendar window they were admitted in, from their reset-after:
/// the window's end is `server time + reset - offset`, and the server time lies between the
/// send and the reply.
fn per_window(admissions: &[Admission], offset: i64) -> BTreeMap<i64, Vec<Admission>> {
    let p = micros(HAMMER_PERIOD);
    let mut windows: BTreeMap<i64, Vec<Admission>> = BTreeMap::new();
    for a in admissions {
        let (lo, hi) = (a.sent + a.reset - offset, a.replied + a.reset - offset);
        let end = (lo + p - 1).div_euclid(p) * p;
        assert!(end <= hi, "no window end in [{lo}, {hi}]: {a:?}");
        assert!(end + p > hi, "a round trip longer than the period: {a:?}");
        windows.entry(end).or_default().push(*a);
    }
    windows
}

#[test]
fn contention_sliding_log_never_exceeds_the_limit_in_any_window() {
    let run = contention(Kind::Log);
    let all: Vec<Admission> = run.here.iter().chain(&run.there).copied().collect();
    let p = micros(HAMMER_PERIOD);
    let limit = HAMMER_LIMIT as usize;
    // The log itself: every admission seen, each at its server time; no period-long window
    // holds more than the limit.
    assert_eq!(run.log.len(), all.len(), "log entries vs admissions");
    let mut times: Vec<i64> = run.log.values().copied().collect();
    times.sort_unstable();
    for (i, w) in times.windows(limit + 1).enumerate() {
        assert!(
            w[limit] - w[0] >= p,
            "{} admissions within {} µs from #{i}",
            limit + 1,
            w[limit] - w[0]
        );
    }
    // The clients' view, independent of the log: admissions that surely ran within one
    // period (sent after a given instant, replied less than a period later) are at most the
    // limit.
    let mut by_sent = all.clone();
    by_sent.sort_by_key(|a| a.sent);
    for (i, a) in by_sent.iter().enumerate() {
        let inside = by_sent[i..]
            .iter()
            .filter(|b| b.replied < a.sent + p)
            .count();
        assert!(
            inside <= limit,
            "{inside} admissions surely within one period"
        );
    }
    eprintln!(
        "sliding log: {} admitted here, {} in the child ({} calls)",
        run.here.len(),
        run.there.len(),
        run.child_calls
    );
}

#[test]
fn contention_fixed_window_never_exceeds_the_limit_per_window() {
    let run = contention(Kind::Fixed);
    let all: Vec<Admission> = run.here.iter().chain(&run.there).copied().collect();
    // An admission's reset-after is the time to its window's end.
    for (end, admitted) in per_window(&all, 0) {
        assert!(
            admitted.len() as u64 <= HAMMER_LIMIT,
            "{} admitted in the window ending at {end}",
            admitted.len()
        );
        // Each admission saw its own count.
        let counts: HashSet<u64> = admitted.iter().map(|a| a.remaining).collect();
        assert_eq!(counts.len(), admitted.len(), "window ending at {end}");
    }
    eprintln!(
        "fixed window: {} admitted here, {} in the child ({} calls)",
        run.here.len(),
        run.there.len(),
        run.child_calls
    );
}

#[test]
fn contention_sliding_window_never_exceeds_the_limit_per_window() {
    let run = contention(Kind::Window);
    let all: Vec<Admission> = run.here.iter().chain(&run.there).copied().collect();
    // An admission's reset-after is the time to the end of the window after its own.
    for (end, admitted) in per_window(&all, micros(HAMMER_PERIOD)) {
        assert!(
            admitted.len() as u64 <= HAMMER_LIMIT,
            "{} admitted in the window ending at {end}",
            admitted.len()
        );
    }
    eprintln!(
        "sliding window: {} admitted here, {} in the child ({} calls)",
        run.here.len(),
        run.there.len(),
        run.child_calls
    );
}
