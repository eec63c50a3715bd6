//! The stream queue: a consumer group over one stream, retries through the delayed set, a
//! dead-letter stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::Value;

use super::delayed::{Delayed, Target};
use super::{check_name, consumer_name, millis, parse_autoclaim, parse_read, Dedicated, Job};
use crate::client::Redis;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::script::{Pipeline, Script};
use crate::version::Feature;

static SETTLE: &str = include_str!("settle.lua");
static CLAIM: &str = include_str!("claim.lua");

/// Settings of a [`StreamQueue`], validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) stream: String,
    pub(crate) delayed: String,
    pub(crate) dead: String,
    pub(crate) group: String,
    pub(crate) max_len: Option<u64>,
    pub(crate) batch: usize,
    pub(crate) block: Duration,
    pub(crate) wait: Duration,
    pub(crate) claim_idle: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) max_retries: u32,
    pub(crate) max_claims: u32,
    pub(crate) retry_backoff: Backoff,
}

/// Counters of one [`StreamQueue`] (shared by its consumers and workers in this process).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) produced: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) handed_back: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) vanished: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) redis: Redis,
    pub(crate) s: Settings,
    pub(crate) counters: Counters,
    settle: Script,
    claim: Script,
}

/// A reliable work queue on a Redis stream and a consumer group. See the
/// [module docs](super). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct StreamQueue {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamQueue")
            .field("name", &self.inner.s.name)
            .field("group", &self.inner.s.group)
            .finish_non_exhaustive()
    }
}

/// Builds a [`StreamQueue`]; made by [`Redis::stream_queue`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct StreamQueueBuilder {
    redis: Redis,
    name: String,
    group: String,
    max_len: Option<u64>,
    batch: usize,
    block: Duration,
    wait: Duration,
    claim_idle: Duration,
    claim_interval: Duration,
    max_retries: u32,
    max_claims: u32,
    retry_backoff: Backoff,
}

impl Redis {
    /// Starts building a [`StreamQueue`] named `name` (its keys: `{name}` for the stream,
    /// `{name}:delayed`, `{name}:dead`, after the handle's key prefix).
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let queue = redis.stream_queue("thumbnails").group("resizers").max_len(1_000_000).build()?;
    /// let id = queue.produce(b"img-42.png")?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn stream_queue(&self, name: &str) -> StreamQueueBuilder {
        StreamQueueBuilder {
            redis: self.unprefixed(),
            name: name.to_owned(),
            group: "workers".to_owned(),
            max_len: None,
            batch: 100,
            block: Duration::from_millis(100),
            wait: Duration::from_secs(5),
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(1),
            max_retries: 5,
            max_claims: 3,
            retry_backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

impl StreamQueueBuilder {
    /// The consumer group. Defaults to `"workers"`.
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_owned();
        self
    }

    /// Caps the stream with `XADD MAXLEN ~ n` (approximate trimming: Redis keeps at least
    /// `n`). Defaults to no cap. A cap smaller than the backlog drops unread jobs: size it
    /// well above the longest backlog you expect.
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = Some(n);
        self
    }

    /// How many jobs one read (and one claim) takes at most. Defaults to 100.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// How long one `XREADGROUP BLOCK` waits: how soon a consumer notices a stop request.
    /// Defaults to 100 ms.
    pub fn block(mut self, d: Duration) -> Self {
        self.block = d;
        self
    }

    /// How long [`StreamConsumer::recv`] waits for a job. Defaults to 5 s.
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }

    /// A job pending (taken, not acknowledged) for this long is claimed by another consumer:
    /// its consumer is taken for dead. Must exceed the longest run of a handler, or a slow
    /// job runs twice at the same time. Defaults to 60 s.
    pub fn claim_idle(mut self, d: Duration) -> Self {
        self.claim_idle = d;
        self
    }

    /// How often a consumer looks for idle jobs to claim (`XAUTOCLAIM`; before Redis 7.0,
    /// `XPENDING` and `XCLAIM` in a script). Defaults to 1 s.
    pub fn claim_interval(mut self, d: Duration) -> Self {
        self.claim_interval = d;
        self
    }

    /// How many times a failed job is retried before it goes to the dead-letter stream
    /// (0: never retried). Defaults to 5.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// How many times a job may be claimed from consumers that went idle (died, or never
    /// acknowledged it) before it goes to the dead-letter stream: a job that crashes every
    /// worker that takes it must not kill them one after the other forever. Defaults to 3.
    pub fn max_claims(mut self, n: u32) -> Self {
        self.max_claims = n;
        self
    }

    /// The delay before each retry (by attempt). Defaults to exponential from 1 s to 5 min
    /// with full jitter.
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Validates the settings and creates the consumer group (and the stream) if needed. A
    /// new group starts at the beginning of the stream: jobs produced before any consumer
    /// existed are not lost.
    pub fn build(self) -> Result<StreamQueue> {
        check_name("stream_queue.name", &self.name)?;
        if self.group.is_empty() {
            return Err(Error::config("stream_queue.group", "must not be empty"));
        }
        if self.batch == 0 {
            return Err(Error::config("stream_queue.batch", "must be at least 1"));
        }
        if self.max_len == Some(0) {
            return Err(Error::config("stream_queue.max_len", "must be at least 1"));
        }
        for (setting, d) in [
            ("stream_queue.block", self.block),
            ("stream_queue.claim_idle", self.claim_idle),
            ("stream_queue.claim_interval", self.claim_interval),
        ] {
            if d < Duration::from_millis(1) {
                return Err(Error::config(setting, "must be at least 1 ms"));
            }
        }
        self.retry_backoff.validate("stream_queue.retry_backoff")?;
        let stream = self.redis.key(&format!("{{{}}}", self.name));
        let s = Settings {
            delayed: format!("{stream}:delayed"),
            dead: format!("{stream}:dead"),
            stream,
            name: self.name,
            group: self.group,
            max_len: self.max_len,
            batch: self.batch,
            block: self.block,
            wait: self.wait,
            claim_idle: self.claim_idle,
            claim_interval: self.claim_interval,
            max_retries: self.max_retries,
            max_claims: self.max_claims,
            retry_backoff: self.retry_backoff,
        };
        let queue = StreamQueue {
            inner: Arc::new(Inner {
                redis: self.redis,
                s,
                counters: Counters::default(),
                settle: Script::new(SETTLE),
                claim: Script::new(CLAIM),
            }),
        };
        queue.create_group()?;
        Ok(queue)
    }
}

/// What [`StreamConsumer::fail`] did with a job.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It will run again after `after` (attempt number `attempt`).
    Retried {
        /// The attempt it will be.
        attempt: u32,
        /// The delay before it is due.
        after: Duration,
    },
    /// It went to the dead-letter stream.
    DeadLettered,
    /// This consumer no longer owned it (another consumer claimed it): nothing was done.
    NotOwned,
}

/// A job in the dead-letter stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The id it was first produced with.
    pub origin: String,
    /// How many times it ran.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A snapshot of a [`StreamQueue`]: what the server holds, and what this process did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries in the stream (read or not; trimmed only by `max_len`).
    pub length: u64,
    /// Jobs taken by a consumer and not acknowledged yet (`XPENDING`).
    pub pending: u64,
    /// Jobs not read by the group yet (`XINFO GROUPS` lag); `None` when Redis cannot tell
    /// (after deletions in the unread range).
    pub lag: Option<u64>,
    /// Jobs waiting in the delayed set (retries and scheduled jobs).
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Consumers the group knows (live or not).
    pub consumers: u64,
    /// Jobs produced by this process.
    pub produced: u64,
    /// Jobs this process handled successfully and acknowledged.
    pub processed: u64,
    /// Handler failures in this process (each retry or dead letter counts one).
    pub failed: u64,
    /// Failed jobs scheduled for a retry by this process.
    pub retried: u64,
    /// Jobs this process sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Jobs this process claimed from consumers that went idle.
    pub claimed: u64,
    /// Jobs handed back to the stream by a shutdown.
    pub handed_back: u64,
    /// Jobs being handled in this process right now.
    pub in_flight: u64,
    /// Pending jobs this process found gone from the stream when it claimed them (trimmed
    /// by [`max_len`](StreamQueueBuilder::max_len), or deleted with `XDEL`, before they ran):
    /// acknowledged and skipped, since no consumer can run them.
    pub vanished: u64,
}

impl StreamQueue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.s.name
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.inner.s.group
    }

    /// The stream's key.
    pub fn stream_key(&self) -> &str {
        &self.inner.s.stream
    }

    /// The dead-letter stream's key.
    pub fn dead_letter_key(&self) -> &str {
        &self.inner.s.dead
    }

    /// The handle this queue uses.
    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    fn create_group(&self) -> Result<()> {
        let s = &self.inner.s;
        let r = self.inner.redis.query_idempotent::<()>(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&s.stream)
                .arg(&s.group)
                .arg("0")
                .arg("MKSTREAM"),
        );
        match r {
            Err(e) if e.server_code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn xadd(&self, cmd: &mut redis::Cmd, payload: &[u8]) {
        cmd.arg(&self.inner.s.stream);
        if let Some(n) = self.inner.s.max_len {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*").arg("p").arg(payload);
    }

    /// Adds a job (`XADD`); returns its id. Not resent when its fate is unknown (that could
    /// add it twice).
    pub fn produce(&self, payload: impl AsRef<[u8]>) -> Result<String> {
        let mut cmd = redis::cmd("XADD");
        self.xadd(&mut cmd, payload.as_ref());
        let id = self.inner.redis.query(&cmd)?;
        self.inner.counters.produced.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Adds many jobs in one pipeline; returns their ids.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let queue = redis.stream_queue("jobs").build()?;
    /// let ids = queue.produce_batch((0..1000).map(|i| format!("job {i}")))?;
    /// assert_eq!(ids.len(), 1000);
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn produce_batch<I, P>(&self, payloads: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut pipe = Pipeline::new();
        let mut n = 0u64;
        for p in payloads {
            let mut cmd = redis::cmd("XADD");
            self.xadd(&mut cmd, p.as_ref());
            pipe.add_command(cmd);
            n += 1;
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self.inner.redis.pipeline(&pipe)?;
        self.inner.counters.produced.fetch_add(n, Relaxed);
        Ok(ids)
    }

    /// The queue's delayed set (scheduled jobs and retries), to schedule jobs or to run
    /// [`Scheduler`](super::Scheduler)s.
    pub fn delayed(&self) -> Delayed {
        Delayed::new(
            self.inner.redis.clone(),
            self.inner.s.delayed.clone(),
            Target::Stream {
                key: self.inner.s.stream.clone(),
                max_len: self.inner.s.max_len,
            },
        )
    }

    /// Adds a job that becomes ready after `delay` (on the server's clock). Consumers move
    /// due jobs into the stream as they read; [`Scheduler`](super::Scheduler)s do it more
    /// promptly.
    pub fn produce_in(&self, payload: impl AsRef<[u8]>, delay: Duration) -> Result<()> {
        self.delayed().schedule_in(payload, delay)
    }

    /// Adds a job that becomes ready at `at` (this machine's clock).
    pub fn produce_at(&self, payload: impl AsRef<[u8]>, at: SystemTime) -> Result<()> {
        self.delayed().schedule_at(payload, at)
    }

    /// A consumer for the calling thread, named `<host>-<pid>-<n>`, with a dedicated
    /// connection (opened on first read).
    pub fn consumer(&self) -> Result<StreamConsumer> {
        self.consumer_named(&consumer_name())
    }

    /// A consumer with a chosen name. Two live consumers must never share a name.
    pub fn consumer_named(&self, name: &str) -> Result<StreamConsumer> {
        if name.is_empty() {
            return Err(Error::config("consumer name", "must not be empty"));
        }
        Ok(StreamConsumer {
            queue: self.clone(),
            name: name.to_owned(),
            conn: Dedicated::new(&self.inner.redis, self.inner.s.block)?,
            buffer: VecDeque::new(),
            next_claim: Instant::now(),
            next_due: Instant::now(),
            claim_cursor: "0-0".to_owned(),
            delayed: self.delayed(),
        })
    }

    /// Acknowledges a job (`XACK`); `true` when it was still pending (a job acknowledged
    /// twice answers `false` the second time).
    pub fn ack(&self, job: &Job) -> Result<bool> {
        let s = &self.inner.s;
        let n: u64 = self
            .inner
            .redis
            .query_idempotent(redis::cmd("XACK").arg(&s.stream).arg(&s.group).arg(&job.id))?;
        if n > 0 {
            self.inner.counters.processed.fetch_add(1, Relaxed);
        }
        Ok(n > 0)
    }

    /// Acknowledges several jobs in one `XACK`; returns how many were still pending.
    pub fn ack_all(&self, jobs: &[Job]) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let s = &self.inner.s;
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&s.stream).arg(&s.group);
        for job in jobs {
            cmd.arg(&job.id);
        }
        let n: u64 = self.inner.redis.query_idempotent(&cmd)?;
        self.inner.counters.processed.fetch_add(n, Relaxed);
        Ok(n)
    }

    /// Records a failed run of `job`: schedules a retry after the backoff, or (after
    /// `max_retries` retries) moves it to the dead-letter stream with `error`. Atomic with
    /// its `XACK`.
    pub fn fail(&self, job: &Job, error: &str) -> Result<Settled> {
        let s = &self.inner.s;
        let c = &self.inner.counters;
        c.failed.fetch_add(1, Relaxed);
        if job.attempt < s.max_retries {
            let mut delays = s.retry_backoff.delays();
            let mut after = delays.next_delay();
            for _ in 0..job.attempt {
                after = delays.next_delay();
            }
            let attempt = job.attempt + 1;
            let owned = self.settle(
                job,
                "retry",
                &s.delayed,
                attempt,
                &millis(after).to_string(),
            )?;
            if !owned {
                return Ok(Settled::NotOwned);
            }
            c.retried.fetch_add(1, Relaxed);
            log::debug!(
                "queue {}: job {} failed ({error}), retry {attempt} in {after:?}",
                s.name,
                job.origin()
            );
            Ok(Settled::Retried { attempt, after })
        } else {
            if !self.settle(job, "dead", &s.dead, job.attempt + 1, error)? {
                return Ok(Settled::NotOwned);
            }
            c.dead_lettered.fetch_add(1, Relaxed);
            log::warn!(
                "queue {}: job {} dead-lettered after {} runs: {error}",
                s.name,
                job.origin(),
                job.attempt + 1
            );
            Ok(Settled::DeadLettered)
        }
    }

    /// Moves a job to the dead-letter stream now, atomically with its `XACK`.
    pub(crate) fn dead_letter(&self, job: &Job, error: &str) -> Result<bool> {
        let s = &self.inner.s;
        let c = &self.inner.counters;
        c.failed.fetch_add(1, Relaxed);
        if !self.settle(job, "dead", &s.dead, job.attempt + 1, error)? {
            return Ok(false);
        }
        c.dead_lettered.fetch_add(1, Relaxed);
        log::warn!(
            "queue {}: job {} dead-lettered: {error}",
            s.name,
            job.origin()
        );
        Ok(true)
    }

    /// Hands a job back to the stream at once (a new entry, same attempt), atomically with
    /// its `XACK`: for a consumer that stops before running it. `false` when this consumer
    /// no longer owned it.
    pub fn hand_back(&self, job: &Job) -> Result<bool> {
        let s = &self.inner.s;
        let owned = self.settle(job, "requeue", &s.stream, job.attempt, "")?;
        if owned {
            self.inner.counters.handed_back.fetch_add(1, Relaxed);
        }
        Ok(owned)
    }

    fn settle(&self, job: &Job, mode: &str, dest: &str, attempt: u32, extra: &str) -> Result<bool> {
        let s = &self.inner.s;
        let call = self
            .inner
            .settle
            .key(&s.stream)
            .key(dest)
            .arg(&s.group)
            .arg(&job.id)
            .arg(mode)
            .arg(job.origin())
            .arg(attempt)
            .arg(&job.payload)
            .arg(extra)
            .arg(s.max_len.unwrap_or(0));
        // Resending is safe: after a first run the XACK answers 0 and nothing happens.
        let n: i64 = self.inner.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(n == 1)
    }

    /// The newest `count` dead letters, newest first.
    pub fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>> {
        let v: Value = self.inner.redis.query(
            redis::cmd("XREVRANGE")
                .arg(&self.inner.s.dead)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count),
        )?;
        let Value::Array(entries) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let Value::Array(pair) = e else { continue };
            let (Some(id), Some(fields)) = (pair.first(), pair.get(1)) else {
                continue;
            };
            let fields: Vec<(&Value, &Value)> = match fields {
                Value::Array(f) => f
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?, c.get(1)?)))
                    .collect(),
                Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
                _ => continue,
            };
            let mut d = DeadLetter {
                id: super::string(id).unwrap_or_default(),
                origin: String::new(),
                attempts: 0,
                error: String::new(),
                payload: Vec::new(),
            };
            for (k, v) in fields {
                let text = || super::bytes(v).map(|b| String::from_utf8_lossy(b).into_owned());
                match super::bytes(k) {
                    Some(b"p") => {
                        d.payload = super::bytes(v).map(<[u8]>::to_vec).unwrap_or_default()
                    }
                    Some(b"o") => d.origin = text().unwrap_or_default(),
                    Some(b"a") => d.attempts = text().and_then(|t| t.parse().ok()).unwrap_or(0),
                    Some(b"e") => d.error = text().unwrap_or_default(),
                    _ => {}
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Counters of this process and the server's view: length, pending, lag, delayed and
    /// dead letters (one round trip).
    pub fn stats(&self) -> Result<QueueStats> {
        let s = &self.inner.s;
        let mut pipe = Pipeline::new();
        pipe.cmd("XLEN").arg(&s.stream);
        pipe.cmd("XPENDING").arg(&s.stream).arg(&s.group);
        pipe.cmd("XINFO").arg("GROUPS").arg(&s.stream);
        pipe.cmd("ZCARD").arg(&s.delayed);
        pipe.cmd("XLEN").arg(&s.dead);
        let (length, pending, groups, delayed, dead_letters): (u64, Value, Value, u64, u64) =
            self.inner.redis.pipeline(&pipe)?;
        let pending = match &pending {
            Value::Array(parts) => parts.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        let group = find_group(&groups, &s.group);
        let lag = group
            .as_ref()
            .and_then(|g| field(g, "lag"))
            .and_then(as_u64);
        let export = self.inner.redis.export();
        export.queue_depth("stream", &s.stream, lag.unwrap_or(length));
        export.queue_depth("stream_pending", &s.stream, pending);
        export.queue_depth("stream_delayed", &s.stream, delayed);
        export.queue_depth("stream_dead", &s.stream, dead_letters);
        let c = &self.inner.counters;
        Ok(QueueStats {
            length,
            pending,
            lag,
            delayed,
            dead_letters,
            consumers: group
                .as_ref()
                .and_then(|g| field(g, "consumers"))
                .and_then(as_u64)
                .unwrap_or(0),
            produced: c.produced.load(Relaxed),
            processed: c.processed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retried: c.retried.load(Relaxed),
            dead_lettered: c.dead_lettered.load(Relaxed),
            claimed: c.claimed.load(Relaxed),
            handed_back: c.handed_back.load(Relaxed),
            in_flight: c.in_flight.load(Relaxed),
            vanished: c.vanished.load(Relaxed),
        })
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => super::string(other).and_then(|s| s.parse().ok()),
    }
}

/// One group's description from `XINFO GROUPS` as (field, value) pairs.
fn find_group(groups: &Value, name: &str) -> Option<Vec<(Value, Value)>> {
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|g| {
        let pairs: Vec<(Value, Value)> = match g {
            Value::Array(f) => f
                .chunks(2)
                .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
                .collect(),
            Value::Map(m) => m.clone(),
            _ => return None,
        };
        let is_it = field(&pairs, "name").and_then(super::string).as_deref() == Some(name);
        is_it.then_some(pairs)
    })
}

fn field<'a>(pairs: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(k, _)| super::bytes(k) == Some(name.as_bytes()))
        .map(|(_, v)| v)
}

/// A consumer of a [`StreamQueue`] driven by the caller's thread, on a dedicated connection.
///
/// ```no_run
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// # let queue = redis.stream_queue("jobs").build()?;
/// let mut consumer = queue.consumer()?;
/// while let Some(job) = consumer.recv()? {
///     match std::str::from_utf8(job.payload()) {
///         Ok(text) => { println!("{text}"); consumer.ack(&job)?; }
///         Err(e) => { consumer.fail(&job, &e.to_string())?; }
///     }
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
pub struct StreamConsumer {
    queue: StreamQueue,
    name: String,
    conn: Dedicated,
    buffer: VecDeque<Job>,
    next_claim: Instant,
    next_due: Instant,
    claim_cursor: String,
    delayed: Delayed,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("queue", &self.queue.inner.s.name)
            .field("name", &self.name)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl StreamConsumer {
    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue.
    pub fn queue(&self) -> &StreamQueue {
        &self.queue
    }

    /// The next job, waiting at most the queue's [`wait`](StreamQueueBuilder::wait);
    /// `Ok(None)` when none came.
    pub fn recv(&mut self) -> Result<Option<Job>> {
        self.recv_timeout(self.queue.inner.s.wait)
    }

    /// The next job, waiting at most `timeout` (in reads of at most the queue's
    /// [`block`](StreamQueueBuilder::block)).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Job>> {
        let deadline = crate::util::time::after(timeout);
        loop {
            if let Some(job) = self.buffer.pop_front() {
                return Ok(Some(job));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let block = left.min(self.queue.inner.s.block);
            let batch = self.queue.inner.s.batch;
            let jobs = self.fetch(batch, (!block.is_zero()).then_some(block))?;
            self.buffer.extend(jobs);
            if self.buffer.is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// A job if one is ready now; never blocks on the server.
    pub fn try_recv(&mut self) -> Result<Option<Job>> {
        if self.buffer.is_empty() {
            let jobs = self.fetch(self.queue.inner.s.batch, None)?;
            self.buffer.extend(jobs);
        }
        Ok(self.buffer.pop_front())
    }

    /// Acknowledges a job that succeeded (see [`StreamQueue::ack`]).
    pub fn ack(&self, job: &Job) -> Result<bool> {
        self.queue.ack(job)
    }

    /// Records a failure: retry later or dead-letter (see [`StreamQueue::fail`]).
    pub fn fail(&self, job: &Job, error: &str) -> Result<Settled> {
        self.queue.fail(job, error)
    }

    /// Hands back every job read but not returned yet (see [`StreamQueue::hand_back`]).
    pub fn hand_back_buffered(&mut self) -> Result<usize> {
        let mut n = 0;
        while let Some(job) = self.buffer.pop_front() {
            if let Err(e) = self.queue.hand_back(&job) {
                self.buffer.push_front(job);
                return Err(e);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Reads up to `max` jobs: due delayed jobs are moved first, idle jobs of dead consumers
    /// are claimed when the claim interval passed, then `XREADGROUP` (blocking up to `block`).
    pub(crate) fn fetch(&mut self, max: usize, block: Option<Duration>) -> Result<Vec<Job>> {
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let now = Instant::now();
        if now >= self.next_due {
            self.next_due = crate::util::time::add(now, s.block);
            let call = self.delayed.due_call(s.batch);
            let (_moved, _next): (i64, i64) = self.conn.invoke(&call)?;
        }
        if now >= self.next_claim {
            self.next_claim = crate::util::time::add(now, s.claim_interval);
            let claimed = self.claim(max)?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&s.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(max.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&s.stream).arg(">");
        match self.conn.value(&cmd) {
            Ok(v) => parse_read(&v),
            Err(e) if e.server_code() == Some("NOGROUP") => {
                log::warn!(
                    "queue {}: the consumer group is gone (data lost?); creating it again",
                    s.name
                );
                self.queue.create_group()?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Claims jobs idle for `claim_idle`: `XAUTOCLAIM` on Redis 7.0 and later (and Valkey),
    /// which names the pending entries it found deleted from the stream and drops them; before
    /// 7.0 the claim script (`XPENDING`, then `XCLAIM` id by id, `XACK` of the deleted ones),
    /// which replies alike. 6.2 has `XAUTOCLAIM`, but it replies nil for a deleted entry
    /// without naming it and leaves it pending for ever.
    fn claim(&mut self, max: usize) -> Result<Vec<Job>> {
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let native = queue
            .inner
            .redis
            .server_supports(Feature::XautoclaimDeletedIds)?;
        let v = if native {
            self.conn.value(
                redis::cmd("XAUTOCLAIM")
                    .arg(&s.stream)
                    .arg(&s.group)
                    .arg(&self.name)
                    .arg(millis(s.claim_idle))
                    .arg(&self.claim_cursor)
                    .arg("COUNT")
                    .arg(max.max(1)),
            )
        } else {
            let call = queue
                .inner
                .claim
                .key(&s.stream)
                .arg(&s.group)
                .arg(&self.name)
                .arg(millis(s.claim_idle))
                .arg(&self.claim_cursor)
                .arg(max.max(1));
            self.conn.invoke::<Value>(&call)
        };
        let v = match v {
            Err(e) if e.server_code() == Some("NOGROUP") => return Ok(Vec::new()),
            other => other?,
        };
        let claimed = parse_autoclaim(&v)?;
        // More may be idle: look again soon.
        if claimed.cursor != "0-0" {
            self.next_claim = Instant::now();
        }
        self.claim_cursor = claimed.cursor;
        if !claimed.deleted.is_empty() {
            let n = claimed.deleted.len() as u64;
            queue.inner.counters.vanished.fetch_add(n, Relaxed);
            log::warn!(
                "queue {}: {n} pending job(s) were gone from the stream when claimed (trimmed \
                 by max_len or deleted with XDEL): acknowledged and skipped",
                s.name
            );
        }
        let jobs = self.drop_poison(claimed.jobs)?;
        if !jobs.is_empty() {
            queue
                .inner
                .counters
                .claimed
                .fetch_add(jobs.len() as u64, Relaxed);
            log::info!(
                "queue {}: consumer {} claimed {} idle job(s)",
                s.name,
                self.name,
                jobs.len()
            );
        }
        Ok(jobs)
    }

    /// Dead-letters the claimed jobs that were claimed more than `max_claims` times (their
    /// delivery count: one read plus one per claim).
    fn drop_poison(&mut self, jobs: Vec<Job>) -> Result<Vec<Job>> {
        let (Some(first), Some(last)) = (jobs.first(), jobs.last()) else {
            return Ok(jobs);
        };
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let v = self.conn.value(
            redis::cmd("XPENDING")
                .arg(&s.stream)
                .arg(&s.group)
                .arg(&first.id)
                .arg(&last.id)
                .arg(jobs.len().max(1000))
                .arg(&self.name),
        )?;
        let Value::Array(rows) = v else {
            return Ok(jobs);
        };
        let mut deliveries = std::collections::HashMap::new();
        for row in &rows {
            if let Value::Array(cols) = row {
                if let (Some(id), Some(n)) = (cols.first().and_then(super::string), cols.get(3)) {
                    deliveries.insert(id, as_u64(n).unwrap_or(0));
                }
            }
        }
        let mut keep = Vec::with_capacity(jobs.len());
        for job in jobs {
            let claims = deliveries.get(&job.id).map_or(0, |d| d.saturating_sub(1));
            if claims > u64::from(s.max_claims) {
                let error = format!(
                    "claimed {claims} times from consumers that died or never acknowledged it"
                );
                queue.dead_letter(&job, &error)?;
            } else {
                keep.push(job);
            }
        }
        Ok(keep)
    }

    /// Closes the dedicated connection now (it reopens on the next read).
    pub(crate) fn disconnect(&mut self) {
        self.conn.close();
    }
}
