//! Work queues for worker threads: reliable stream queues, list queues, delayed jobs, worker
//! pools, and a write-behind helper.
//!
//! **Every queue here is at-least-once.** A job is acknowledged only after its handler
//! returned `Ok`; a job whose worker died (process killed, machine lost), whose handler
//! outlived the visibility timeout without a heartbeat, whose acknowledgement could not
//! reach the server (it stays pending and is claimed), or that a bounded shutdown handed
//! back, runs again on another worker. Short of those, a job runs once: a job acknowledged
//! is never run again, and a retry, a hand-back or a replay moves it atomically with its
//! acknowledgement (one script), so it is never in two places. Make handlers idempotent (or
//! deduplicate on [`Job::origin`]) for the cases above. Nothing is ever acknowledged that did
//! not succeed.
//!
//! | need | pick |
//! |---|---|
//! | consumer groups, retries with backoff, dead letters, stats | [`StreamQueue`] |
//! | priorities, strict or weighted | [`StreamQueueBuilder::priorities`], [`StreamQueueBuilder::weighted`] |
//! | drop a job sent twice (a unique id within a window), headers | [`StreamQueue::job`] ([`NewJob`]) |
//! | a long job that must not be taken over while it runs | [`Job::heartbeat`] |
//! | list, replay, purge dead letters | [`StreamQueue::dead_letters_range`], [`StreamQueue::replay_dead`], [`StreamQueue::replay_dead_range`], [`StreamQueue::purge_dead`] |
//! | plain Redis lists (`BLMOVE` into a processing list), retries, dead letters | [`ListQueue`] |
//! | run a job at a time or after a delay | [`StreamQueue::produce_in`], [`NewJob::delay`], [`Delayed`] |
//! | N worker threads with rate and concurrency limits, a bounded shutdown | [`StreamQueue::workers`], [`ListQueue::workers`] |
//! | write the cache now and the database later, coalesced | [`WriteBehind`] |
//!
//! An operator inspects and repairs queues with the `redkit` command line (`redkit queue
//! stats|dead|replay|purge|pending`), which reads these formats through this API.
//!
//! ## Stream queue
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::Redis;
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let queue = redkit::StreamQueue::builder(&redis, "emails").max_retries(3).build()?;
//! queue.produce(b"hello@example.com")?;
//!
//! // 8 worker threads; a job is acknowledged only when the handler returns Ok.
//! let workers = queue.workers().threads(8).run(|job| {
//!     let to = job.payload_str()?;
//!     println!("sending to {to}");
//!     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! })?;
//! // ... later: stop taking jobs, finish (or hand back) the ones in flight.
//! let report = workers.shutdown()?;
//! println!("{report:?}; {:?}", queue.stats()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it works: jobs are entries of a stream (`XADD`, optionally capped with `MAXLEN ~`) read
//! by a consumer group. Each consumer reads with `XREADGROUP ... BLOCK` on a dedicated
//! connection of its own (never a pooled one), with a short block so that it notices stop
//! requests. A handler that fails has its job retried after a backoff (the job moves, with
//! its `XACK`, atomically into the queue's delayed set and comes back when due) up to
//! [`max_retries`](StreamQueueBuilder::max_retries) times, then goes to a dead-letter stream
//! with the error. Jobs left pending by a consumer that died are claimed (`XAUTOCLAIM`; before
//! Redis 7.0 a script of `XPENDING` and `XCLAIM`) once idle for
//! [`claim_idle`](StreamQueueBuilder::claim_idle), the visibility timeout, which a running
//! handler extends with [`Job::heartbeat`] (it restarts the job's idle time, only if its
//! consumer still owns it). A pending job whose stream entry is gone (trimmed by
//! [`max_len`](StreamQueueBuilder::max_len) or deleted with `XDEL`) is acknowledged and
//! skipped when claimed, and counted in [`QueueStats::vanished`]. Consumers idle past
//! [`idle_consumers`](StreamQueueBuilder::idle_consumers) with nothing pending are removed
//! from the group (`XGROUP DELCONSUMER`, in one script with that check). All keys of one
//! queue share the hash tag `{name}`, so the scripts are Cluster-safe.
//!
//! **Priorities**: each level is a stream of its own (`{name}`, `{name}:p1`...), read by the
//! same group. A read takes, in one script, each level's share (weighted: smooth weighted
//! round robin over the weights, across reads) and then whatever is left of the batch, level
//! 0 first; strict priorities have no shares, so level 0 is drained first. When every level
//! is empty the consumer blocks on all of them at once. A job keeps its level through
//! retries, hand-backs, dead letters and replays. Within a level, order is arrival order.
//!
//! **Deduplication**: a job sent with a [unique id](NewJob::unique_id) sets
//! `{name}:u:<id>` (`SET NX PX`, the [window](StreamQueueBuilder::dedup_window)) in the same
//! script as its `XADD`; a second send within the window is dropped
//! ([`Produced::Duplicate`]), whatever became of the first.
//!
//! **Dead letters** are replayed as fresh jobs (attempt 0, every retry again; origin,
//! headers, unique id and level kept), each atomically with its removal from the dead-letter
//! stream, so replaying twice runs a job once; a range replay reads its upper end once, so a
//! job that fails again while it runs is not replayed in a loop.
//!
//! **Worker pools** ([`Workers`]): reader threads (one by default, [`WorkersBuilder::readers`])
//! feed N worker threads through a bounded channel; finished jobs go to one acknowledging
//! thread that sends whatever gathered during its previous `XACK` in one. The
//! [`shutdown_timeout`](WorkersBuilder::shutdown_timeout) is a hard bound: jobs read and not
//! started are handed back at once, running handlers are waited for until the bound, and the
//! jobs of those still running are then handed back (their threads end when their handlers
//! return; their results are dropped).
//!
//! ## List queue
//!
//! [`ListQueue`]: `LPUSH` to produce, `BLMOVE` (`BRPOPLPUSH` before Redis 6.2) into a
//! per-consumer processing list to take, `LREM` to acknowledge; [`ListQueue::reap`] returns
//! the items of consumers whose liveness key expired. [`ListConsumer::fail`] retries an item
//! after a backoff (through the delayed set) up to
//! [`max_retries`](ListQueueBuilder::max_retries) times, then moves it to the dead-letter list
//! (`{name}:dead`), listed, replayed and purged like the stream queue's. [`ListQueue::workers`]
//! runs a pool: a consumer per thread, a keeper thread that keeps the consumers whose handler
//! runs alive and reaps dead ones, the same bounded shutdown.
//!
//! ## Delayed jobs
//!
//! A sorted set by due time (ms on the server's clock); a Lua script moves due jobs to the
//! ready queue atomically, so any number of [`Scheduler`]s in any number of processes move
//! each job exactly once.
//!
//! ## Write-behind
//!
//! [`WriteBehind`]: a write goes to the cache at once and is recorded for the store,
//! coalesced per key (the latest value, a version); [`Flusher`] threads (any number, any
//! process) store due keys a batch at a time, each key leased to one flusher, and remove an
//! entry only when the store took a version at least as new: at-least-once, and no write is
//! lost when a flusher dies. A flusher's shutdown stores everything written so far.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Cmd, FromRedisValue, Value};

use crate::client::Redis;
use crate::error::{Delivery, Error, Result};

mod delayed;
mod job;
mod list;
mod list_runner;
mod runner;
mod stream;
mod write_behind;

pub use delayed::{Delayed, Scheduler};
pub use job::{decode_headers, encode_headers, Job};
pub(crate) use job::{member, Lease, Member};
pub use list::{ListConsumer, ListDeadLetter, ListJob, ListQueue, ListQueueBuilder, Reaper};
pub use list_runner::{ListWorkers, ListWorkersBuilder};
pub use runner::{ShutdownReport, Workers, WorkersBuilder};
pub use stream::{
    next_id, ConsumerInfo, DeadLetter, NewJob, PendingJob, PriorityMode, Produced, QueueStats,
    Settled, StreamConsumer, StreamQueue, StreamQueueBuilder, MAX_PRIORITIES,
};
pub use write_behind::{Flusher, Write, WriteBehind, WriteBehindBuilder, WriteBehindStats};

/// A connection owned by one queue consumer (for blocking reads), outside the pool: a
/// [`DedicatedConnection`](crate::DedicatedConnection) opened on first use, whose reads wait
/// up to the block time plus the response timeout.
pub(crate) struct Dedicated {
    redis: Redis,
    con: Option<crate::DedicatedConnection>,
    read_timeout: Duration,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedicated")
            .field("open", &self.con.is_some())
            .finish()
    }
}

impl Dedicated {
    /// A dedicated connection to `redis`'s server whose reads wait up to `block` plus the
    /// response timeout.
    pub(crate) fn new(redis: &Redis, block: Duration) -> Result<Dedicated> {
        if redis.is_closed() {
            return Err(Error::Closed);
        }
        let read_timeout = redis
            .config()
            .timeouts()
            .response_timeout()
            .saturating_add(block);
        Ok(Dedicated {
            redis: redis.unprefixed(),
            con: None,
            read_timeout,
        })
    }

    /// The connection, opened if needed; `Error::Closed` (and the connection closed) once
    /// the handle was closed.
    fn con(&mut self) -> Result<&mut crate::DedicatedConnection> {
        if self.redis.is_closed() {
            self.con = None;
            return Err(Error::Closed);
        }
        if self.con.is_none() {
            let mut con = self.redis.dedicated()?;
            con.set_response_timeout(Some(self.read_timeout))?;
            self.con = Some(con);
        }
        self.con.as_mut().ok_or(Error::Closed)
    }

    /// Sends one command and returns its raw reply (an error reply as an error).
    pub(crate) fn value(&mut self, cmd: &Cmd) -> Result<Value> {
        let result = self.con()?.exec_packed(&cmd.get_packed_command());
        match result {
            Ok(v) => v
                .extract_error()
                .map_err(|e| Error::from_redis(e, Delivery::Answered)),
            Err(e) => {
                if e.poisons_connection() {
                    self.con = None;
                }
                Err(e)
            }
        }
    }

    /// Runs a script call on this connection (`EVALSHA`, `NOSCRIPT` fallback).
    pub(crate) fn invoke<T: FromRedisValue>(&mut self, call: &crate::ScriptCall) -> Result<T> {
        let result = call.invoke(self.con()?);
        if let Err(e) = &result {
            if e.poisons_connection() {
                self.con = None;
            }
        }
        result
    }

    /// Runs a pipeline on this connection.
    pub(crate) fn pipeline<T: FromRedisValue>(&mut self, pipe: &crate::Pipeline) -> Result<T> {
        let result = pipe.query(self.con()?);
        if let Err(e) = &result {
            if e.poisons_connection() {
                self.con = None;
            }
        }
        result
    }

    /// Closes the connection now (it reopens on next use).
    pub(crate) fn close(&mut self) {
        self.con = None;
    }
}

/// A consumer name unique to this process: `<host>-<pid>-<n>`.
pub(crate) fn consumer_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redkit".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Checks a queue name: not empty, no braces (it becomes a hash tag) and no newline.
pub(crate) fn check_name(setting: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config(setting, "must not be empty"));
    }
    if name.contains(['{', '}', '\n']) {
        return Err(Error::config(
            setting,
            "must not contain '{', '}' or a newline (the name is the keys' hash tag)",
        ));
    }
    Ok(())
}

/// Milliseconds for the scripts and for `BLOCK`, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A unique token for a delayed job scheduled by the user (its identity in the delayed set).
pub(crate) fn token() -> String {
    format!("d{}", crate::util::ids::token())
}

fn bad_reply(what: &str, v: &Value) -> Error {
    let e = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected queue reply",
        format!("{what}: {v:?}"),
    ));
    Error::from_redis(e, Delivery::Answered)
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// An entry's fields as (name, value) pairs: a flat array or a RESP3 map; `None` for
/// anything else.
pub(crate) fn field_pairs(fields: &Value) -> Option<Vec<(&Value, &Value)>> {
    match fields {
        Value::Array(f) => Some(
            f.chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
        ),
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

/// Parses stream entries (`[[id, [field, value, ...]], ...]`, fields as an array or a RESP3
/// map) into jobs. Entries deleted meanwhile (nil fields) are skipped.
pub(crate) fn parse_entries(v: &Value, level: u8) -> Result<Vec<Job>> {
    let Value::Array(entries) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            other => Err(bad_reply("stream entries", other)),
        };
    };
    let mut jobs = Vec::with_capacity(entries.len());
    for entry in entries {
        let pair = match entry {
            Value::Array(pair) => pair,
            // A deleted entry (6.2's XAUTOCLAIM and 6.x's XCLAIM reply nil in its place).
            Value::Nil => continue,
            other => return Err(bad_reply("stream entry", other)),
        };
        let [id, fields] = pair.as_slice() else {
            return Err(bad_reply("stream entry", entry));
        };
        let id = string(id).ok_or_else(|| bad_reply("stream id", id))?;
        let fields = match fields {
            Value::Nil => continue,
            other => field_pairs(other).ok_or_else(|| bad_reply("stream fields", other))?,
        };
        let mut job = Job::new(id, level);
        for (k, v) in fields {
            match bytes(k) {
                Some(b"p") => job.payload = bytes(v).map(<[u8]>::to_vec).unwrap_or_default(),
                Some(b"o") => job.origin = string(v).filter(|s| !s.is_empty()),
                Some(b"a") => {
                    job.attempt = string(v).and_then(|s| s.parse().ok()).unwrap_or(0);
                }
                Some(b"h") => {
                    job.headers = bytes(v).and_then(decode_headers).unwrap_or_default();
                }
                Some(b"i") => job.unique = string(v).filter(|s| !s.is_empty()),
                _ => {}
            }
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Parses an `XREADGROUP` reply for one stream (RESP2 array or RESP3 map).
pub(crate) fn parse_read(v: &Value) -> Result<Vec<Job>> {
    parse_read_levels(v, |_| Some(0))
}

/// Parses an `XREADGROUP` reply for several streams; `level` names each stream's priority
/// level (a stream it does not know is an error).
pub(crate) fn parse_read_levels(
    v: &Value,
    level: impl Fn(&[u8]) -> Option<u8>,
) -> Result<Vec<Job>> {
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::with_capacity(streams.len());
            for s in streams {
                match s {
                    Value::Array(pair) => match pair.as_slice() {
                        [name, entries] => out.push((name, entries)),
                        _ => return Err(bad_reply("XREADGROUP", s)),
                    },
                    other => return Err(bad_reply("XREADGROUP", other)),
                }
            }
            out
        }
        Value::Map(streams) => streams.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(bad_reply("XREADGROUP", other)),
    };
    let mut jobs = Vec::new();
    for (name, entries) in streams {
        let l = bytes(name)
            .and_then(&level)
            .ok_or_else(|| bad_reply("XREADGROUP stream", name))?;
        jobs.extend(parse_entries(entries, l)?);
    }
    Ok(jobs)
}

/// What a claim returned.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Claimed {
    /// Where the next claim starts (`0-0`: from the beginning).
    pub(crate) cursor: String,
    /// The live jobs claimed.
    pub(crate) jobs: Vec<Job>,
    /// The ids of pending entries that were deleted from the stream (trimmed or `XDEL`ed),
    /// now out of the pending list.
    pub(crate) deleted: Vec<String>,
}

/// Parses an `XAUTOCLAIM` reply (or the claim script's, shaped alike): `[next cursor,
/// entries, deleted ids]`. 6.2 has no third element, and nil entries in the second: those are
/// skipped.
pub(crate) fn parse_autoclaim(v: &Value, level: u8) -> Result<Claimed> {
    let Value::Array(parts) = v else {
        return Err(bad_reply("XAUTOCLAIM", v));
    };
    let cursor = parts
        .first()
        .and_then(string)
        .ok_or_else(|| bad_reply("XAUTOCLAIM cursor", v))?;
    let jobs = match parts.get(1) {
        Some(entries) => parse_entries(entries, level)?,
        None => Vec::new(),
    };
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| string(id).ok_or_else(|| bad_reply("XAUTOCLAIM deleted id", id)))
            .collect::<Result<_>>()?,
        None | Some(Value::Nil) => Vec::new(),
        Some(other) => return Err(bad_reply("XAUTOCLAIM deleted ids", other)),
    };
    Ok(Claimed {
        cursor,
        jobs,
        deleted,
    })
}

/// Catches a panic in a handler and turns it into a message.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    format!(
        "handler panicked: {}",
        crate::util::threads::panic_message(&**panic)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_from_resp2_and_resp3() {
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![
                bulk("p"),
                bulk("hi"),
                bulk("a"),
                bulk("2"),
                bulk("o"),
                bulk("0-1"),
            ]),
        ]);
        let read2 = Value::Array(vec![Value::Array(vec![
            bulk("q"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let jobs = parse_read(&read2).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].payload(), b"hi");
        assert_eq!(jobs[0].attempt(), 2);
        assert_eq!(jobs[0].origin(), "0-1");
        let read3 = Value::Map(vec![(bulk("q"), Value::Array(vec![entry]))]);
        assert_eq!(parse_read(&read3).unwrap(), jobs);
        assert!(parse_read(&Value::Nil).unwrap().is_empty());
        let deleted = Value::Array(vec![Value::Array(vec![bulk("2-0"), Value::Nil])]);
        assert!(parse_entries(&deleted, 0).unwrap().is_empty());
    }

    #[test]
    fn claims_skip_deleted_entries_on_every_version() {
        let entry = |id: &str, p: &str| {
            Value::Array(vec![bulk(id), Value::Array(vec![bulk("p"), bulk(p)])])
        };
        // 6.2: a nil where a trimmed entry was, no third element.
        let v62 = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry("1-0", "a"), Value::Nil, entry("3-0", "c")]),
        ]);
        let c = parse_autoclaim(&v62, 0).unwrap();
        assert_eq!(c.cursor, "0-0");
        let payloads: Vec<&[u8]> = c.jobs.iter().map(Job::payload).collect();
        assert_eq!(payloads, [b"a", b"c"]);
        assert!(c.deleted.is_empty());
        // 7.x (and the claim script): deleted ids in a third element.
        let v7 = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![entry("3-0", "c")]),
            Value::Array(vec![bulk("2-0"), bulk("4-0")]),
        ]);
        let c = parse_autoclaim(&v7, 0).unwrap();
        assert_eq!((c.cursor.as_str(), c.jobs.len()), ("5-0", 1));
        assert_eq!(c.deleted, ["2-0", "4-0"]);
        assert!(parse_autoclaim(&Value::Nil, 0).is_err());
        let bad = Value::Array(vec![bulk("0-0"), Value::Array(vec![]), Value::Int(3)]);
        assert!(parse_autoclaim(&bad, 0).is_err());
    }

    #[test]
    fn names_become_hash_tags() {
        assert!(check_name("name", "jobs").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "a{b}").is_err());
    }
}
