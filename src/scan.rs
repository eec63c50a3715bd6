//! Batch helpers for CLI jobs: `SCAN`-family iterators that survive connection errors, and
//! bulk writes and deletes in pipelined chunks with progress reports.
//!
//! ```no_run
//! use redkit::scan::{Bulk, ScanIter};
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//!
//! // Every key matching a pattern, 1000 per round trip; a dropped connection in the middle
//! // resumes from the last cursor instead of starting over.
//! let mut old = Vec::new();
//! for key in ScanIter::<String>::keys(&redis).pattern("session:*").count(1000) {
//!     old.push(key?);
//! }
//!
//! // Delete them in chunks of 1000 keys (UNLINK), reporting progress.
//! let removed = Bulk::new(&redis).delete(&old, |p| {
//!     eprintln!("{} of {:?}", p.done, p.total);
//! })?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! The iterators yield what `SCAN` yields: every element present for the whole iteration
//! comes at least once; an element added or removed meanwhile may or may not come, and the
//! server may return an element twice when the keyspace is resized during the scan (dedupe
//! with a set when that matters). On a cluster, [`ScanIter::keys`] walks every master in
//! turn; when a master fails over during the walk, its successor is scanned from the start
//! (its keys may come twice).
//!
//! [`ScanIter`] takes `MATCH` ([`pattern`](ScanIter::pattern)), `COUNT`
//! ([`count`](ScanIter::count)) and, for `SCAN`, `TYPE` ([`kind`](ScanIter::kind)). A
//! transient error does not end it: it waits and asks again from the same cursor (10 times
//! in a row by default), then yields the error, and the next `next()` resumes again. The
//! test suite scans 100,000 keys through a handle without retries while the fault proxy
//! cuts the connection mid-way, and sees every key exactly once.
//!
//! [`Bulk`] encodes its `SET` commands straight into one buffer per chunk and sends it as one
//! pipeline (deletes: one `UNLINK` per chunk), one round trip each, with a progress report
//! after every chunk; a chunk whose fate is unknown is sent again as a whole, which is safe
//! because `SET` and `UNLINK` are idempotent. `examples/batch.rs` in the repository is a CLI
//! job with progress bars.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use redis::{FromRedisValue, RedisWrite, ToRedisArgs, Value};

use crate::error::{Delivery, Error, Result};
use crate::Redis;

#[derive(Debug, Clone)]
enum Target {
    Keys,
    Hash(Vec<u8>),
    Set(Vec<u8>),
    SortedSet(Vec<u8>),
}

/// An iterator over `SCAN`, `HSCAN`, `SSCAN` or `ZSCAN`, one batch per round trip.
///
/// Items are `Result<T>`: `String` or `Vec<u8>` for keys and set members, `(field, value)`
/// for hashes, `(member, score)` for sorted sets. When fetching a batch fails with a
/// transient error (connection lost, timeout, server busy), the iterator waits and asks again
/// from the same cursor, up to [`max_resumes`](ScanIter::max_resumes) times in a row; then it
/// yields the error, and calling `next` again resumes once more from that same cursor. No
/// element is skipped and none is repeated because of an error.
///
/// ```no_run
/// use redkit::scan::ScanIter;
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// for pair in ScanIter::<(String, String)>::hash(&redis, "user:42").count(500) {
///     let (field, value) = pair?;
/// }
/// for member in ScanIter::<(String, f64)>::sorted_set(&redis, "leaderboard") {
///     let (name, score) = member?;
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[must_use = "an iterator does nothing until it is consumed"]
pub struct ScanIter<T> {
    redis: Redis,
    target: Target,
    pattern: Option<String>,
    count: Option<usize>,
    kind: Option<String>,
    cursor: u64,
    finished: bool,
    buffer: VecDeque<T>,
    max_resumes: u32,
    resume_delay: Duration,
    resumes: u64,
    /// On a cluster (`SCAN` only): the masters still to walk, the current one first, each
    /// with a slot it owns.
    nodes: Option<VecDeque<(crate::config::Addr, u16)>>,
    _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ScanIter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanIter")
            .field("target", &self.target)
            .field("pattern", &self.pattern)
            .field("count", &self.count)
            .field("kind", &self.kind)
            .field("cursor", &self.cursor)
            .field("finished", &self.finished)
            .field("resumes", &self.resumes)
            .finish_non_exhaustive()
    }
}

impl<T: FromRedisValue> ScanIter<T> {
    fn new(redis: &Redis, target: Target) -> ScanIter<T> {
        ScanIter {
            redis: redis.clone(),
            target,
            pattern: None,
            count: None,
            kind: None,
            cursor: 0,
            finished: false,
            buffer: VecDeque::new(),
            max_resumes: 10,
            resume_delay: Duration::from_millis(50),
            resumes: 0,
            nodes: None,
            _item: PhantomData,
        }
    }

    /// The keys of the database (`SCAN`). On a handle with a
    /// [`key_prefix`](crate::ConfigBuilder::key_prefix) only that handle's keys are scanned
    /// (the prefix goes in front of the pattern) and they come back without the prefix, so
    /// they can be passed back to the same handle.
    pub fn keys(redis: &Redis) -> ScanIter<T> {
        ScanIter::new(redis, Target::Keys)
    }

    /// The `(field, value)` pairs of a hash (`HSCAN`).
    pub fn hash<K: ToRedisArgs>(redis: &Redis, key: K) -> ScanIter<T> {
        ScanIter::new(redis, Target::Hash(one_arg(key)))
    }

    /// The members of a set (`SSCAN`).
    pub fn set<K: ToRedisArgs>(redis: &Redis, key: K) -> ScanIter<T> {
        ScanIter::new(redis, Target::Set(one_arg(key)))
    }

    /// The `(member, score)` pairs of a sorted set (`ZSCAN`).
    pub fn sorted_set<K: ToRedisArgs>(redis: &Redis, key: K) -> ScanIter<T> {
        ScanIter::new(redis, Target::SortedSet(one_arg(key)))
    }

    /// Only elements matching this glob-style pattern (`MATCH`). Defaults to every element.
    pub fn pattern(mut self, pattern: &str) -> ScanIter<T> {
        self.pattern = Some(pattern.to_owned());
        self
    }

    /// How much work the server does per round trip (`COUNT`, a hint). Defaults to the
    /// server's default (10).
    pub fn count(mut self, count: usize) -> ScanIter<T> {
        self.count = Some(count.max(1));
        self
    }

    /// Only keys of this type (`TYPE string|list|set|zset|hash|stream`); `SCAN` only, ignored
    /// by the others. Defaults to every type.
    pub fn kind(mut self, kind: &str) -> ScanIter<T> {
        self.kind = Some(kind.to_owned());
        self
    }

    /// How many times in a row a batch is asked again after a transient error before the
    /// error is yielded. Defaults to 10.
    pub fn max_resumes(mut self, n: u32) -> ScanIter<T> {
        self.max_resumes = n;
        self
    }

    /// The wait before the first resume; it doubles up to 1 s. Defaults to 50 ms.
    pub fn resume_delay(mut self, d: Duration) -> ScanIter<T> {
        self.resume_delay = d;
        self
    }

    /// The cursor of the next batch (0 before the first and after the last).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// How many times a batch was asked again after an error.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }

    fn command(&self) -> redis::Cmd {
        let mut cmd = match &self.target {
            Target::Keys => redis::cmd("SCAN"),
            Target::Hash(k) => {
                let mut c = redis::cmd("HSCAN");
                c.arg(k);
                c
            }
            Target::Set(k) => {
                let mut c = redis::cmd("SSCAN");
                c.arg(k);
                c
            }
            Target::SortedSet(k) => {
                let mut c = redis::cmd("ZSCAN");
                c.arg(k);
                c
            }
        };
        cmd.arg(self.cursor);
        match (&self.target, self.redis.auto_prefix()) {
            // A prefixed handle scans its own keys only.
            (Target::Keys, Some(prefix)) => {
                let mut pattern =
                    crate::util::glob_escape(&String::from_utf8_lossy(prefix)).into_bytes();
                match &self.pattern {
                    Some(p) => pattern.extend_from_slice(p.as_ref()),
                    None => pattern.push(b'*'),
                }
                cmd.arg("MATCH").arg(pattern);
            }
            _ => {
                if let Some(p) = &self.pattern {
                    cmd.arg("MATCH").arg(p);
                }
            }
        }
        if let Some(n) = self.count {
            cmd.arg("COUNT").arg(n);
        }
        if let (Target::Keys, Some(kind)) = (&self.target, &self.kind) {
            cmd.arg("TYPE").arg(kind);
        }
        cmd
    }

    /// Fetches the next batch, resuming from the same cursor after transient errors.
    fn fetch(&mut self) -> Result<()> {
        let cluster =
            matches!(self.target, Target::Keys) && self.redis.pool_state().cluster.is_some();
        if cluster && self.nodes.is_none() {
            let masters = self
                .redis
                .pool_state()
                .cluster
                .as_ref()
                .map(|t| t.masters_with_a_slot())
                .unwrap_or_default();
            self.nodes = Some(masters.into());
        }
        let mut delay = self.resume_delay;
        let mut tries = 0;
        loop {
            let cmd = self.command();
            let node = self.nodes.as_ref().and_then(|n| n.front().cloned());
            let reply = match &node {
                Some((addr, _)) => self.redis.query_node::<(u64, Vec<Value>)>(addr, &cmd),
                None if cluster => {
                    self.finished = true;
                    return Ok(());
                }
                None => self.redis.query::<(u64, Vec<Value>)>(&cmd),
            };
            let reply = reply.and_then(|(next, items)| Ok((next, self.unprefix(items)?)));
            match reply {
                Ok((next, items)) => {
                    self.buffer.extend(items);
                    self.cursor = next;
                    self.finished = next == 0;
                    if next == 0 {
                        if let Some(nodes) = self.nodes.as_mut() {
                            nodes.pop_front();
                            self.finished = nodes.is_empty();
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() && tries < self.max_resumes => {
                    tries += 1;
                    self.resumes += 1;
                    log::debug!(
                        "scan: {e}; resuming from cursor {} in {delay:?}",
                        self.cursor
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                    if let Some((addr, slot)) = node {
                        self.follow_failover(&addr, slot);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<T: FromRedisValue> ScanIter<T> {
    /// Converts the items of one batch; on a prefixed handle key names lose the prefix (the
    /// handle puts it back when they are used).
    fn unprefix(&self, items: Vec<Value>) -> Result<Vec<T>> {
        let prefix = match (&self.target, self.redis.auto_prefix()) {
            (Target::Keys, Some(p)) => Some(p.clone()),
            _ => None,
        };
        let items = match prefix {
            None => items,
            Some(p) => items
                .into_iter()
                .map(|v| match v {
                    Value::BulkString(b) if b.starts_with(&p) => {
                        Value::BulkString(b[p.len()..].to_vec())
                    }
                    v => v,
                })
                .collect(),
        };
        // As one array: pairs (`HSCAN`, `ZSCAN`) convert from a flat reply.
        crate::script::convert(Value::Array(items))
    }
}

impl<T> ScanIter<T> {
    /// On a cluster, when the master being scanned no longer owns its slot (it failed over),
    /// scans its successor from the start.
    fn follow_failover(&mut self, addr: &crate::config::Addr, slot: u16) {
        let Some(topology) = self.redis.pool_state().cluster.as_ref() else {
            return;
        };
        topology.mark_stale();
        let Ok(owner) = topology.owner(slot) else {
            return;
        };
        if owner != *addr {
            log::info!("scan: {addr} no longer owns its slots; scanning {owner} from the start");
            if let Some(front) = self.nodes.as_mut().and_then(|n| n.front_mut()) {
                front.0 = owner;
            }
            self.cursor = 0;
        }
    }
}

impl<T: FromRedisValue> Iterator for ScanIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.fetch() {
                return Some(Err(e));
            }
        }
    }
}

fn one_arg<K: ToRedisArgs>(key: K) -> Vec<u8> {
    key.to_redis_args().into_iter().next().unwrap_or_default()
}

/// How far a bulk operation got, passed to its progress callback after every chunk.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Items done so far.
    pub done: u64,
    /// All items, when known (from [`Bulk::total`] or an exact `size_hint`).
    pub total: Option<u64>,
}

/// Bulk writes and deletes in pipelined chunks: one round trip per chunk, with a progress
/// callback after each. Each chunk goes through the handle's breaker and retry policy; the
/// commands (`SET`, `UNLINK`) are idempotent, so a chunk whose fate is unknown after a
/// dropped connection is sent again.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::scan::Bulk;
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let items = (0..100_000).map(|i| (format!("item:{i}"), i.to_string()));
/// let written = Bulk::new(&redis)
///     .chunk_size(1000)
///     .ttl(Duration::from_secs(3600))
///     .write(items, |p| eprintln!("{}/{}", p.done, p.total.unwrap_or(0)))?;
/// assert_eq!(written, 100_000);
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Bulk {
    redis: Redis,
    chunk: usize,
    ttl: Option<Duration>,
    total: Option<u64>,
}

impl Bulk {
    /// Bulk operations through `redis`.
    pub fn new(redis: &Redis) -> Bulk {
        Bulk {
            redis: redis.clone(),
            chunk: 1000,
            ttl: None,
            total: None,
        }
    }

    /// Items per pipelined chunk. Defaults to 1000 (at least 1).
    pub fn chunk_size(mut self, n: usize) -> Bulk {
        self.chunk = n.max(1);
        self
    }

    /// A TTL for written keys (`SET .. PX`). Defaults to none (keys do not expire).
    pub fn ttl(mut self, ttl: Duration) -> Bulk {
        self.ttl = Some(ttl);
        self
    }

    /// The number of items, for progress reports, when the iterator cannot tell. Defaults
    /// to the iterator's exact `size_hint`, if any.
    pub fn total(mut self, n: u64) -> Bulk {
        self.total = Some(n);
        self
    }

    /// Writes every `(key, value)` with `SET` (each key and value must be one argument).
    /// Returns how many were written.
    pub fn write<K, V, I>(&self, items: I, mut progress: impl FnMut(Progress)) -> Result<u64>
    where
        K: ToRedisArgs,
        V: ToRedisArgs,
        I: IntoIterator<Item = (K, V)>,
    {
        let items = items.into_iter();
        let total = self.total.or_else(|| exact_len(&items));
        let ttl_ms = self
            .ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        let mut buf = Vec::with_capacity(self.chunk * 48);
        let mut args = Args::default();
        let mut in_chunk = 0;
        let mut done = 0u64;
        for (key, value) in items {
            args.clear();
            key.write_redis_args(&mut args);
            value.write_redis_args(&mut args);
            if args.argc != 2 {
                return Err(Error::config(
                    "bulk.write",
                    "each key and each value must be exactly one argument",
                ));
            }
            match ttl_ms {
                Some(ms) => {
                    buf.extend_from_slice(b"*5\r\n$3\r\nSET\r\n");
                    buf.extend_from_slice(&args.out);
                    buf.extend_from_slice(b"$2\r\nPX\r\n");
                    push_bulk(&mut buf, ms.to_string().as_bytes());
                }
                None => {
                    buf.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                    buf.extend_from_slice(&args.out);
                }
            }
            in_chunk += 1;
            if in_chunk == self.chunk {
                self.send(&buf, in_chunk)?;
                done += in_chunk as u64;
                progress(Progress { done, total });
                buf.clear();
                in_chunk = 0;
            }
        }
        if in_chunk > 0 {
            self.send(&buf, in_chunk)?;
            done += in_chunk as u64;
            progress(Progress { done, total });
        }
        Ok(done)
    }

    /// Deletes every key with `UNLINK`, one command per chunk. Returns how many existed.
    pub fn delete<K, I>(&self, keys: I, mut progress: impl FnMut(Progress)) -> Result<u64>
    where
        K: ToRedisArgs,
        I: IntoIterator<Item = K>,
    {
        let keys = keys.into_iter();
        let total = self.total.or_else(|| exact_len(&keys));
        let mut cmd = redis::cmd("UNLINK");
        let mut in_chunk = 0;
        let mut done = 0u64;
        let mut removed = 0u64;
        for key in keys {
            cmd.arg(key);
            in_chunk += 1;
            if in_chunk == self.chunk {
                removed += self.redis.query_idempotent::<u64>(&cmd)?;
                done += in_chunk as u64;
                progress(Progress { done, total });
                cmd = redis::cmd("UNLINK");
                in_chunk = 0;
            }
        }
        if in_chunk > 0 {
            removed += self.redis.query_idempotent::<u64>(&cmd)?;
            done += in_chunk as u64;
            progress(Progress { done, total });
        }
        Ok(removed)
    }

    fn send(&self, packed: &[u8], count: usize) -> Result<()> {
        let replies = self
            .redis
            .run_idempotent(|con| con.exec_pipeline(packed, 0, count))?;
        match replies
            .into_iter()
            .find(|v| matches!(v, Value::ServerError(_)))
        {
            Some(Value::ServerError(e)) => Err(Error::from_redis(e.into(), Delivery::Answered)),
            _ => Ok(()),
        }
    }
}

fn exact_len<I: Iterator>(it: &I) -> Option<u64> {
    match it.size_hint() {
        (lo, Some(hi)) if lo == hi => u64::try_from(lo).ok(),
        _ => None,
    }
}

fn push_bulk(buf: &mut Vec<u8>, arg: &[u8]) {
    buf.push(b'$');
    buf.extend_from_slice(arg.len().to_string().as_bytes());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(arg);
    buf.extend_from_slice(b"\r\n");
}

/// Encodes arguments as RESP bulk strings, counting them.
#[derive(Default)]
struct Args {
    out: Vec<u8>,
    argc: usize,
}

impl Args {
    fn clear(&mut self) {
        self.out.clear();
        self.argc = 0;
    }
}

impl RedisWrite for Args {
    fn write_arg(&mut self, arg: &[u8]) {
        self.argc += 1;
        push_bulk(&mut self.out, arg);
    }

    fn writer_for_next_arg(&mut self) -> impl io::Write + '_ {
        ArgWriter {
            args: self,
            tmp: Vec::new(),
        }
    }
}

/// Collects one argument written through `io::Write`, then encodes it on drop.
struct ArgWriter<'a> {
    args: &'a mut Args,
    tmp: Vec<u8>,
}

impl io::Write for ArgWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ArgWriter<'_> {
    fn drop(&mut self) {
        let tmp = std::mem::take(&mut self.tmp);
        self.args.write_arg(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_encode_as_resp() {
        let mut a = Args::default();
        "key".write_redis_args(&mut a);
        42i64.write_redis_args(&mut a);
        assert_eq!(a.argc, 2);
        assert_eq!(a.out, b"$3\r\nkey\r\n$2\r\n42\r\n");
        let mut w = Args::default();
        {
            use std::io::Write;
            let mut x = w.writer_for_next_arg();
            x.write_all(b"ab").unwrap();
            x.write_all(b"c").unwrap();
        }
        assert_eq!(w.out, b"$3\r\nabc\r\n");
    }

    #[test]
    fn exact_lengths_only() {
        assert_eq!(exact_len(&(0..10)), Some(10));
        assert_eq!(exact_len(&(0..10).filter(|_| true)), None);
    }
}
