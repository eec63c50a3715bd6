//! The stream queue: a consumer group over one stream per priority level, retries through
//! the delayed set, a dead-letter stream, deduplication, heartbeats, idle consumers removed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::delayed::{Delayed, Target};
use super::{
    check_name, consumer_name, encode_headers, millis, parse_autoclaim, parse_entries, parse_read,
    parse_read_levels, Dedicated, Job, Lease, Member,
};
use crate::client::Redis;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::script::{static_script, Pipeline};
use crate::version::Feature;

static_script!(settle_script, "settle.lua");
static_script!(claim_script, "claim.lua");
static_script!(produce_script, "produce.lua");
static_script!(read_script, "read.lua");
static_script!(extend_script, "extend.lua");
static_script!(prune_script, "prune.lua");
static_script!(dead_script, "dead.lua");

/// The most priority levels a queue can have.
pub const MAX_PRIORITIES: u8 = 16;
/// Dead letters one replay or purge script handles at once.
const DEAD_PAGE: usize = 100;

/// How a queue with several priority levels chooses among them. See
/// [`StreamQueueBuilder::priorities`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityMode {
    /// A level is served only when every level before it is empty (level 0 first). Low
    /// levels can starve while high ones have work.
    Strict,
    /// Each read shares its jobs among the levels that have work in proportion to their
    /// weights (smooth weighted round robin across reads; a level with no work gives its
    /// share to the others, the first level first). No level starves.
    Weighted(Vec<u32>),
}

/// Settings of a [`StreamQueue`], validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    /// The stream of each priority level (level 0 is `{name}`).
    pub(crate) streams: Arc<[String]>,
    pub(crate) delayed: String,
    pub(crate) dead: String,
    pub(crate) meta: String,
    pub(crate) unique_prefix: String,
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
    pub(crate) mode: PriorityMode,
    pub(crate) default_level: u8,
    pub(crate) dedup_window: Duration,
    pub(crate) idle_consumers: Option<Duration>,
}

impl Settings {
    fn stream(&self, level: u8) -> &str {
        self.streams
            .get(usize::from(level))
            .or_else(|| self.streams.first())
            .map_or("", String::as_str)
    }

    fn level_of(&self, key: &[u8]) -> Option<u8> {
        self.streams
            .iter()
            .position(|s| s.as_bytes() == key)
            .and_then(|i| u8::try_from(i).ok())
    }
}

/// Counters of one [`StreamQueue`] (shared by its consumers and workers in this process).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) produced: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) handed_back: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) vanished: AtomicU64,
    pub(crate) consumers_removed: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) redis: Redis,
    pub(crate) s: Settings,
    pub(crate) counters: Counters,
}

/// A reliable work queue on Redis streams and a consumer group. See the
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
            .field("priorities", &self.inner.s.streams.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`StreamQueue`]; made by [`StreamQueue::builder`].
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
    priorities: u8,
    mode: PriorityMode,
    default_level: u8,
    dedup_window: Duration,
    idle_consumers: Option<Duration>,
}

impl StreamQueue {
    /// Starts building a [`StreamQueue`] named `name` (its keys: `{name}` for the stream,
    /// `{name}:p<N>` for priority level N above 0, `{name}:delayed`, `{name}:dead`,
    /// `{name}:meta`, `{name}:u:<id>` for unique ids, after the handle's key prefix).
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let queue = redkit::StreamQueue::builder(&redis, "thumbnails").group("resizers").max_len(1_000_000).build()?;
    /// let id = queue.produce(b"img-42.png")?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn builder(redis: &Redis, name: &str) -> StreamQueueBuilder {
        StreamQueueBuilder {
            redis: redis.unprefixed(),
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
            priorities: 1,
            mode: PriorityMode::Strict,
            default_level: 0,
            dedup_window: Duration::from_secs(24 * 3600),
            idle_consumers: Some(Duration::from_secs(3600)),
        }
    }
}

impl StreamQueueBuilder {
    /// The consumer group. Defaults to `"workers"`.
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_owned();
        self
    }

    /// Caps each stream with `XADD MAXLEN ~ n` (approximate trimming: Redis keeps at least
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

    /// The visibility timeout: a job pending (taken, not acknowledged) this long since it
    /// was taken, or since its handler's last [`Job::heartbeat`], is claimed by another
    /// consumer (its consumer is taken for dead). Must exceed the longest run of a handler
    /// that does not heartbeat, or a slow job runs twice at the same time. Defaults to 60 s.
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

    /// Priority levels, 1 to [`MAX_PRIORITIES`]: level 0 is served first, then 1, and so
    /// on ([`PriorityMode::Strict`]); each level is a stream of its own (`{name}` for level
    /// 0, `{name}:p1`...) read by the same group. The number is recorded on the server
    /// (`{name}:meta`) so that [`StreamQueueBuilder::open`] (and the `redkit` tool) find
    /// every level. Defaults to 1.
    ///
    /// Strict applies to reads: a worker pool runs out of order only the jobs already read
    /// when more urgent work arrived, at most its
    /// [`prefetch`](super::WorkersBuilder::prefetch) (shared by its readers) plus one per
    /// worker thread.
    pub fn priorities(mut self, levels: u8) -> Self {
        self.priorities = levels;
        self
    }

    /// Weighted priorities: one level per weight (level 0 first), each read sharing its
    /// jobs among the levels with work in proportion to the weights
    /// ([`PriorityMode::Weighted`]). `weighted(&[6, 3, 1])`: under a backlog on every
    /// level, 60% of the jobs come from level 0, 30% from 1, 10% from 2. Defaults to strict
    /// priorities.
    pub fn weighted(mut self, weights: &[u32]) -> Self {
        self.priorities = u8::try_from(weights.len()).unwrap_or(u8::MAX);
        self.mode = PriorityMode::Weighted(weights.to_vec());
        self
    }

    /// The level of jobs produced without one ([`StreamQueue::produce`]). Defaults to 0.
    pub fn default_priority(mut self, level: u8) -> Self {
        self.default_level = level;
        self
    }

    /// How long a unique id ([`NewJob::unique_id`]) is remembered: a job sent with an id
    /// seen within this window is dropped. Defaults to 24 h.
    pub fn dedup_window(mut self, d: Duration) -> Self {
        self.dedup_window = d;
        self
    }

    /// Consumers idle this long with nothing pending are removed from the group
    /// (`XGROUP DELCONSUMER`, checked atomically with their pending count), by the queue's
    /// consumers as they read, so that consumers of processes that are gone do not pile up.
    /// `None` keeps them. Defaults to 1 h.
    pub fn idle_consumers(mut self, after: Option<Duration>) -> Self {
        self.idle_consumers = after;
        self
    }

    fn settings(self) -> Result<(Redis, Settings)> {
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
        if self.priorities == 0 || self.priorities > MAX_PRIORITIES {
            return Err(Error::config(
                "stream_queue.priorities",
                format!("must be from 1 to {MAX_PRIORITIES}"),
            ));
        }
        if self.default_level >= self.priorities {
            return Err(Error::config(
                "stream_queue.default_priority",
                "must be below the number of priorities",
            ));
        }
        if let PriorityMode::Weighted(w) = &self.mode {
            if w.contains(&0) {
                return Err(Error::config(
                    "stream_queue.weighted",
                    "weights must be at least 1",
                ));
            }
        }
        let mut durations = vec![
            ("stream_queue.block", self.block),
            ("stream_queue.claim_idle", self.claim_idle),
            ("stream_queue.claim_interval", self.claim_interval),
            ("stream_queue.dedup_window", self.dedup_window),
        ];
        if let Some(d) = self.idle_consumers {
            durations.push(("stream_queue.idle_consumers", d));
        }
        for (setting, d) in durations {
            if d < Duration::from_millis(1) {
                return Err(Error::config(setting, "must be at least 1 ms"));
            }
        }
        self.retry_backoff.validate("stream_queue.retry_backoff")?;
        let stream = self.redis.key(&format!("{{{}}}", self.name));
        let streams: Vec<String> = (0..self.priorities)
            .map(|l| {
                if l == 0 {
                    stream.clone()
                } else {
                    format!("{stream}:p{l}")
                }
            })
            .collect();
        let s = Settings {
            delayed: format!("{stream}:delayed"),
            dead: format!("{stream}:dead"),
            meta: format!("{stream}:meta"),
            unique_prefix: format!("{stream}:u:"),
            streams: streams.into(),
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
            mode: self.mode,
            default_level: self.default_level,
            dedup_window: self.dedup_window,
            idle_consumers: self.idle_consumers,
        };
        Ok((self.redis, s))
    }

    /// Validates the settings and creates the consumer group (and the streams) if needed. A
    /// new group starts at the beginning of the stream: jobs produced before any consumer
    /// existed are not lost.
    pub fn build(self) -> Result<StreamQueue> {
        let (redis, s) = self.settings()?;
        let queue = StreamQueue {
            inner: Arc::new(Inner {
                redis,
                s,
                counters: Counters::default(),
            }),
        };
        queue.create_group()?;
        if queue.inner.s.streams.len() > 1 {
            let s = &queue.inner.s;
            queue.inner.redis.query_idempotent::<()>(
                redis::cmd("HSET")
                    .arg(&s.meta)
                    .arg("priorities")
                    .arg(s.streams.len()),
            )?;
        }
        Ok(queue)
    }

    /// Opens a queue that exists, changing nothing on the server (for tools and dashboards):
    /// [`Error::NotFound`] when its stream does not exist. The number of priority levels is
    /// read from the server (what the producers' [`priorities`](Self::priorities) recorded);
    /// this builder's own is used only when none was recorded.
    pub fn open(mut self) -> Result<StreamQueue> {
        let base = self.redis.key(&format!("{{{}}}", self.name));
        check_name("stream_queue.name", &self.name)?;
        let (exists, levels): (u64, Option<u8>) = self.redis.pipeline(
            Pipeline::new()
                .cmd("EXISTS")
                .arg(&base)
                .cmd("HGET")
                .arg(format!("{base}:meta"))
                .arg("priorities"),
        )?;
        if exists == 0 {
            return Err(Error::NotFound {
                what: "stream queue",
                name: self.name,
            });
        }
        if let Some(levels) = levels {
            if levels != self.priorities {
                self.priorities = levels;
                if !matches!(&self.mode, PriorityMode::Weighted(w) if w.len() == usize::from(levels))
                {
                    self.mode = PriorityMode::Strict;
                }
                self.default_level = self.default_level.min(levels.saturating_sub(1));
            }
        }
        let (redis, s) = self.settings()?;
        Ok(StreamQueue {
            inner: Arc::new(Inner {
                redis,
                s,
                counters: Counters::default(),
            }),
        })
    }
}

/// A job to add to a [`StreamQueue`] with options: a priority, headers,
/// a unique id (deduplication), a delay. Made by
/// [`StreamQueue::job`](StreamQueue::job); [`send`](NewJob::send) adds it.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::queue::Produced;
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let queue = redkit::StreamQueue::builder(&redis, "orders")
///     .priorities(3)
///     .dedup_window(Duration::from_secs(3600))
///     .build()?;
/// let sent = queue
///     .job(b"charge order 42")
///     .priority(0)
///     .header("tenant", "acme")
///     .unique_id("charge-42")
///     .send()?;
/// if sent == Produced::Duplicate {
///     // a job with the id "charge-42" was added less than an hour ago: dropped
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[must_use = "a job is added only by `send`"]
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub(crate) queue: &'a StreamQueue,
    pub(crate) payload: Vec<u8>,
    pub(crate) level: Option<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) unique: Option<String>,
    pub(crate) delay: Option<std::time::Duration>,
}

impl NewJob<'_> {
    /// Its priority level: 0 is served first, up to the queue's
    /// [`priorities`](StreamQueueBuilder::priorities) minus one. Defaults to the
    /// queue's [`default_priority`](StreamQueueBuilder::default_priority).
    pub fn priority(mut self, level: u8) -> Self {
        self.level = Some(level);
        self
    }

    /// Adds a header (metadata the handler reads with [`Job::header`]; kept across retries,
    /// hand-backs and dead letters). Names must not be empty.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A unique id: a second job with the same id sent within the queue's
    /// [`dedup_window`](StreamQueueBuilder::dedup_window) is dropped
    /// ([`Produced::Duplicate`]). Sending with an id is safe to resend when its fate is
    /// unknown (redkit does, on a connection lost mid-call).
    pub fn unique_id(mut self, id: &str) -> Self {
        self.unique = Some(id.to_owned());
        self
    }

    /// Makes it ready only after `delay` (on the server's clock), through the queue's
    /// delayed set.
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What [`NewJob::send`] did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced {
    /// Added to the stream, with this entry id.
    Added(String),
    /// Added to the delayed set; it enters the stream when due.
    Scheduled,
    /// Dropped: a job with the same unique id was sent within the deduplication window.
    Duplicate,
}

impl Produced {
    /// The stream entry id, when it was added to the stream.
    pub fn id(&self) -> Option<&str> {
        match self {
            Produced::Added(id) => Some(id),
            _ => None,
        }
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
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its priority level.
    pub priority: u8,
    /// The unique id it was produced with, if any.
    pub unique_id: Option<String>,
    /// When it was dead-lettered (the server's clock, from its id).
    pub failed_at: SystemTime,
}

impl DeadLetter {
    /// The payload as UTF-8, or the error saying where it is not.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }
}

/// A snapshot of a [`StreamQueue`]: what the server holds, and what this process did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries in the streams (read or not; trimmed only by `max_len`).
    pub length: u64,
    /// Jobs taken by a consumer and not acknowledged yet (`XPENDING`).
    pub pending: u64,
    /// Jobs not read by the group yet (`XINFO GROUPS` lag); `None` when Redis cannot tell
    /// (after deletions in the unread range, or before Redis 7.0).
    pub lag: Option<u64>,
    /// Per priority level (level 0 first): entries in its stream.
    pub lengths: Vec<u64>,
    /// Jobs waiting in the delayed set (retries and scheduled jobs).
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Consumers the group knows (live or not; the most over the levels).
    pub consumers: u64,
    /// Jobs produced by this process.
    pub produced: u64,
    /// Jobs this process dropped as duplicates of a unique id.
    pub duplicates: u64,
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
    /// Idle consumers this process removed from the group.
    pub consumers_removed: u64,
}

/// A pending job, as [`StreamQueue::pending`] lists it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJob {
    /// Its stream entry id.
    pub id: String,
    /// Its priority level.
    pub priority: u8,
    /// The consumer holding it.
    pub consumer: String,
    /// How long since it was taken, claimed or heartbeat.
    pub idle: Duration,
    /// How many times it was delivered (one read plus one per claim).
    pub deliveries: u64,
}

/// A consumer of the group, as [`StreamQueue::consumers`] lists it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Jobs it holds (every level).
    pub pending: u64,
    /// How long since it last read or was given a job (the least over the levels).
    pub idle: Duration,
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

    /// The stream's key (priority level 0's).
    pub fn stream_key(&self) -> &str {
        self.inner.s.stream(0)
    }

    /// The stream of each priority level, level 0 first.
    pub fn stream_keys(&self) -> &[String] {
        &self.inner.s.streams
    }

    /// How many priority levels it has.
    pub fn priorities(&self) -> u8 {
        u8::try_from(self.inner.s.streams.len()).unwrap_or(u8::MAX)
    }

    /// The dead-letter stream's key.
    pub fn dead_letter_key(&self) -> &str {
        &self.inner.s.dead
    }

    /// The handle this queue uses.
    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    pub(crate) fn create_group(&self) -> Result<()> {
        let s = &self.inner.s;
        for stream in s.streams.iter() {
            let r = self.inner.redis.query_idempotent::<()>(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(&s.group)
                    .arg("0")
                    .arg("MKSTREAM"),
            );
            match r {
                Err(e) if e.server_code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn xadd(&self, cmd: &mut redis::Cmd, level: u8, payload: &[u8]) {
        cmd.arg(self.inner.s.stream(level));
        if let Some(n) = self.inner.s.max_len {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*").arg("p").arg(payload);
    }

    /// Adds a job (`XADD`) at the default priority; returns its id. Not resent when its
    /// fate is unknown (that could add it twice; give it a [`NewJob::unique_id`] to make
    /// resending safe).
    pub fn produce(&self, payload: impl AsRef<[u8]>) -> Result<String> {
        let mut cmd = redis::cmd("XADD");
        self.xadd(&mut cmd, self.inner.s.default_level, payload.as_ref());
        let id = self.inner.redis.query(&cmd)?;
        self.inner.counters.produced.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Adds many jobs in one pipeline at the default priority; returns their ids.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let queue = redkit::StreamQueue::builder(&redis, "jobs").build()?;
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
            self.xadd(&mut cmd, self.inner.s.default_level, p.as_ref());
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

    /// A job to send with options (priority, headers, unique id, delay); see [`NewJob`].
    pub fn job(&self, payload: impl AsRef<[u8]>) -> NewJob<'_> {
        NewJob {
            queue: self,
            payload: payload.as_ref().to_vec(),
            level: None,
            headers: Vec::new(),
            unique: None,
            delay: None,
        }
    }

    /// The queue's delayed set (scheduled jobs and retries), to schedule jobs or to run
    /// [`Scheduler`](super::Scheduler)s.
    pub fn delayed(&self) -> Delayed {
        Delayed::new(
            self.inner.redis.clone(),
            self.inner.s.delayed.clone(),
            Target::Stream {
                keys: self.inner.s.streams.to_vec(),
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
        let s = &self.inner.s;
        let levels = s.streams.len();
        Ok(StreamConsumer {
            queue: self.clone(),
            name: name.to_owned(),
            conn: Dedicated::new(&self.inner.redis, s.block)?,
            buffer: VecDeque::new(),
            next_claim: Instant::now(),
            next_due: Instant::now(),
            next_prune: Instant::now(),
            claim_cursors: vec!["0-0".to_owned(); levels],
            credit: vec![0; levels],
            delayed: self.delayed(),
            lease: Arc::new(Lease {
                redis: self.inner.redis.clone(),
                streams: s.streams.clone(),
                group: s.group.clone(),
                consumer: name.to_owned(),
                script: extend_script().clone(),
            }),
        })
    }

    /// Acknowledges a job (`XACK`); `true` when it was still pending (a job acknowledged
    /// twice answers `false` the second time).
    pub fn ack(&self, job: &Job) -> Result<bool> {
        let s = &self.inner.s;
        let n: u64 = self.inner.redis.query_idempotent(
            redis::cmd("XACK")
                .arg(s.stream(job.level))
                .arg(&s.group)
                .arg(&job.id),
        )?;
        if n > 0 {
            self.inner.counters.processed.fetch_add(1, Relaxed);
        }
        Ok(n > 0)
    }

    /// Acknowledges several jobs (one `XACK` per priority level among them); returns how
    /// many were still pending.
    pub fn ack_all(&self, jobs: &[Job]) -> Result<u64> {
        self.ack_ids(jobs.iter().map(|j| (j.level, j.id.as_str())))
    }

    pub(crate) fn ack_ids<'a>(&self, ids: impl IntoIterator<Item = (u8, &'a str)>) -> Result<u64> {
        let s = &self.inner.s;
        let mut cmds: Vec<Option<redis::Cmd>> = vec![None; s.streams.len()];
        for (level, id) in ids {
            let Some(slot) = cmds.get_mut(usize::from(level)) else {
                continue;
            };
            slot.get_or_insert_with(|| {
                let mut c = redis::cmd("XACK");
                c.arg(s.stream(level)).arg(&s.group);
                c
            })
            .arg(id);
        }
        let cmds: Vec<redis::Cmd> = cmds.into_iter().flatten().collect();
        let n: u64 = match cmds.as_slice() {
            [] => return Ok(0),
            [one] => self.inner.redis.query_idempotent(one)?,
            many => {
                let mut pipe = Pipeline::new();
                for c in many {
                    pipe.add_command(c.clone());
                }
                let counts: Vec<u64> = self.inner.redis.run_idempotent(|con| pipe.query(con))?;
                counts.iter().sum()
            }
        };
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
            let headers = encode_headers(&job.headers);
            let member = Member {
                origin: job.origin(),
                attempt,
                level: job.level,
                headers: &headers,
                unique: job.unique.as_deref().unwrap_or(""),
                payload: &job.payload,
            }
            .encode();
            let owned = self.settle(
                job,
                "retry",
                &s.delayed,
                attempt,
                &member,
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
            if !self.settle(job, "dead", &s.dead, job.attempt + 1, &job.payload, error)? {
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
        if !self.settle(job, "dead", &s.dead, job.attempt + 1, &job.payload, error)? {
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
        let stream = s.stream(job.level).to_owned();
        let owned = self.settle(job, "requeue", &stream, job.attempt, &job.payload, "")?;
        if owned {
            self.inner.counters.handed_back.fetch_add(1, Relaxed);
        }
        Ok(owned)
    }

    fn settle(
        &self,
        job: &Job,
        mode: &str,
        dest: &str,
        attempt: u32,
        payload: &[u8],
        extra: &str,
    ) -> Result<bool> {
        let s = &self.inner.s;
        let call = settle_script()
            .key(s.stream(job.level))
            .key(dest)
            .arg(&s.group)
            .arg(&job.id)
            .arg(mode)
            .arg(job.origin())
            .arg(attempt)
            .arg(payload)
            .arg(extra)
            .arg(s.max_len.unwrap_or(0))
            .arg(encode_headers(&job.headers))
            .arg(job.unique.as_deref().unwrap_or(""))
            .arg(job.level);
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
        Ok(parse_dead(&v))
    }

    /// The dead letters with ids from `from` to `to` (inclusive; `"-"` and `"+"` for the
    /// ends), oldest first, at most `count`. Page through them by starting the next page
    /// after the last id ([`next_id`]).
    pub fn dead_letters_range(
        &self,
        from: &str,
        to: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>> {
        let v: Value = self.inner.redis.query(
            redis::cmd("XRANGE")
                .arg(&self.inner.s.dead)
                .arg(from)
                .arg(to)
                .arg("COUNT")
                .arg(count),
        )?;
        Ok(parse_dead(&v))
    }

    /// One dead letter by its id.
    pub fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        Ok(self.dead_letters_range(id, id, 1)?.into_iter().next())
    }

    fn dead_op(&self, mode: &str, from: &str, to: &str, count: usize) -> Result<(u64, String)> {
        let s = &self.inner.s;
        let call = dead_script()
            .key(&s.dead)
            .key(&*s.streams)
            .arg(mode)
            .arg(from)
            .arg(to)
            .arg(count)
            .arg(s.max_len.unwrap_or(0));
        // Not resent: a lost reply would be ambiguous only for the count (each entry moves
        // once, atomically), but a replay run again after a timeout would take later entries.
        let (n, last): (u64, String) = self.inner.redis.run(|con| call.invoke(con))?;
        Ok((n, last))
    }

    /// Puts one dead letter back into its priority's stream as a fresh job (attempt 0, so
    /// every retry again; its origin, headers and unique id kept), atomically with its
    /// removal from the dead-letter stream: replaying it twice runs it once. `false` when no
    /// dead letter has that id (already replayed or purged).
    pub fn replay_dead(&self, id: &str) -> Result<bool> {
        Ok(self.dead_op("replay", id, id, 1)?.0 == 1)
    }

    /// Replays the dead letters with ids from `from` to `to` (inclusive; `"-"`, `"+"` for the
    /// ends), in pages of 100 (each page one atomic script), calling `progress` with the
    /// count so far after each page; returns how many. Dead letters that arrive while it
    /// runs (`to` is read once, at the start) are left for later, so a job that keeps
    /// failing is not replayed in a loop.
    pub fn replay_dead_range(
        &self,
        from: &str,
        to: &str,
        progress: impl FnMut(u64),
    ) -> Result<u64> {
        self.dead_pages("replay", from, to, progress)
    }

    /// Replays every dead letter there is now (see [`StreamQueue::replay_dead_range`]).
    pub fn replay_all_dead(&self, progress: impl FnMut(u64)) -> Result<u64> {
        self.dead_pages("replay", "-", "+", progress)
    }

    /// Deletes one dead letter; `false` when no dead letter has that id.
    pub fn purge_dead(&self, id: &str) -> Result<bool> {
        Ok(self.dead_op("purge", id, id, 1)?.0 == 1)
    }

    /// Deletes the dead letters with ids from `from` to `to` (inclusive), in pages; returns
    /// how many.
    pub fn purge_dead_range(&self, from: &str, to: &str, progress: impl FnMut(u64)) -> Result<u64> {
        self.dead_pages("purge", from, to, progress)
    }

    /// Deletes every dead letter; returns how many there were.
    pub fn purge_all_dead(&self) -> Result<u64> {
        let s = &self.inner.s;
        let (n, _): (u64, u64) = self.inner.redis.pipeline(
            Pipeline::new()
                .cmd("XLEN")
                .arg(&s.dead)
                .cmd("DEL")
                .arg(&s.dead),
        )?;
        Ok(n)
    }

    fn dead_pages(
        &self,
        mode: &str,
        from: &str,
        to: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let to = if to == "+" {
            match self.dead_letters(1)?.into_iter().next() {
                Some(newest) => newest.id,
                None => return Ok(0),
            }
        } else {
            to.to_owned()
        };
        let mut total = 0;
        loop {
            let (n, _) = self.dead_op(mode, from, &to, DEAD_PAGE)?;
            total += n;
            progress(total);
            if n < DEAD_PAGE as u64 {
                return Ok(total);
            }
        }
    }

    /// Removes from the group the consumers idle for at least `idle` that hold no job
    /// (`XGROUP DELCONSUMER`, atomically with that check); returns their names. Consumers do
    /// this by themselves with [`idle_consumers`](StreamQueueBuilder::idle_consumers).
    pub fn remove_idle_consumers(&self, idle: Duration) -> Result<Vec<String>> {
        let s = &self.inner.s;
        let call = prune_script()
            .key(&*s.streams)
            .arg(&s.group)
            .arg(millis(idle));
        let mut names: Vec<String> = self.inner.redis.run_idempotent(|con| call.invoke(con))?;
        names.sort();
        names.dedup();
        self.inner
            .counters
            .consumers_removed
            .fetch_add(names.len() as u64, Relaxed);
        Ok(names)
    }

    /// The group's consumers (`XINFO CONSUMERS`, over every level).
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        let s = &self.inner.s;
        let mut by_name: std::collections::BTreeMap<String, ConsumerInfo> = Default::default();
        for stream in s.streams.iter() {
            let v: Value = match self.inner.redis.query(
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(stream)
                    .arg(&s.group),
            ) {
                Ok(v) => v,
                Err(e) if e.server_code() == Some("NOGROUP") => continue,
                Err(e) => return Err(e),
            };
            let Value::Array(rows) = v else { continue };
            for row in &rows {
                let pairs = pairs(row);
                let Some(name) = field(&pairs, "name").and_then(super::string) else {
                    continue;
                };
                let pending = field(&pairs, "pending").and_then(as_u64).unwrap_or(0);
                let idle =
                    Duration::from_millis(field(&pairs, "idle").and_then(as_u64).unwrap_or(0));
                let e = by_name.entry(name.clone()).or_insert(ConsumerInfo {
                    name,
                    pending: 0,
                    idle,
                });
                e.pending += pending;
                e.idle = e.idle.min(idle);
            }
        }
        Ok(by_name.into_values().collect())
    }

    /// Up to `count` pending jobs per level (taken, not acknowledged), oldest first: who
    /// holds each, for how long, how many deliveries.
    pub fn pending(&self, count: usize) -> Result<Vec<PendingJob>> {
        let s = &self.inner.s;
        let mut out = Vec::new();
        for (level, stream) in s.streams.iter().enumerate() {
            let v: Value = match self.inner.redis.query(
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&s.group)
                    .arg("-")
                    .arg("+")
                    .arg(count),
            ) {
                Ok(v) => v,
                Err(e) if e.server_code() == Some("NOGROUP") => continue,
                Err(e) => return Err(e),
            };
            let Value::Array(rows) = v else { continue };
            for row in &rows {
                let Value::Array(cols) = row else { continue };
                let (Some(id), Some(consumer)) = (
                    cols.first().and_then(super::string),
                    cols.get(1).and_then(super::string),
                ) else {
                    continue;
                };
                out.push(PendingJob {
                    id,
                    priority: u8::try_from(level).unwrap_or(u8::MAX),
                    consumer,
                    idle: Duration::from_millis(cols.get(2).and_then(as_u64).unwrap_or(0)),
                    deliveries: cols.get(3).and_then(as_u64).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    /// Counters of this process and the server's view: length, pending, lag, delayed and
    /// dead letters (one round trip).
    pub fn stats(&self) -> Result<QueueStats> {
        let s = &self.inner.s;
        let mut pipe = Pipeline::new();
        for stream in s.streams.iter() {
            pipe.cmd("XLEN").arg(stream);
            pipe.cmd("XPENDING").arg(stream).arg(&s.group);
            pipe.cmd("XINFO").arg("GROUPS").arg(stream);
        }
        pipe.cmd("ZCARD").arg(&s.delayed);
        pipe.cmd("XLEN").arg(&s.dead);
        let replies: Vec<Value> = self.inner.redis.pipeline(&pipe)?;
        let levels = s.streams.len();
        let mut stats = QueueStats::default();
        let mut lag = Some(0u64);
        for level in 0..levels {
            let (Some(len), Some(pending), Some(groups)) = (
                replies.get(level * 3),
                replies.get(level * 3 + 1),
                replies.get(level * 3 + 2),
            ) else {
                continue;
            };
            let len = as_u64(len).unwrap_or(0);
            stats.length += len;
            stats.lengths.push(len);
            if let Value::Array(parts) = pending {
                stats.pending += parts.first().and_then(as_u64).unwrap_or(0);
            }
            let group = find_group(groups, &s.group);
            let level_lag = group
                .as_ref()
                .and_then(|g| field(g, "lag"))
                .and_then(as_u64);
            lag = lag.zip(level_lag).map(|(a, b)| a + b);
            let consumers = group
                .as_ref()
                .and_then(|g| field(g, "consumers"))
                .and_then(as_u64)
                .unwrap_or(0);
            stats.consumers = stats.consumers.max(consumers);
        }
        stats.lag = lag;
        stats.delayed = replies.get(levels * 3).and_then(as_u64).unwrap_or(0);
        stats.dead_letters = replies.get(levels * 3 + 1).and_then(as_u64).unwrap_or(0);
        let export = self.inner.redis.export();
        let key = s.stream(0);
        export.queue_depth("stream", key, stats.lag.unwrap_or(stats.length));
        export.queue_depth("stream_pending", key, stats.pending);
        export.queue_depth("stream_delayed", key, stats.delayed);
        export.queue_depth("stream_dead", key, stats.dead_letters);
        let c = &self.inner.counters;
        stats.produced = c.produced.load(Relaxed);
        stats.duplicates = c.duplicates.load(Relaxed);
        stats.processed = c.processed.load(Relaxed);
        stats.failed = c.failed.load(Relaxed);
        stats.retried = c.retried.load(Relaxed);
        stats.dead_lettered = c.dead_lettered.load(Relaxed);
        stats.claimed = c.claimed.load(Relaxed);
        stats.handed_back = c.handed_back.load(Relaxed);
        stats.in_flight = c.in_flight.load(Relaxed);
        stats.vanished = c.vanished.load(Relaxed);
        stats.consumers_removed = c.consumers_removed.load(Relaxed);
        Ok(stats)
    }
}

impl NewJob<'_> {
    /// Adds the job: to its level's stream, or to the delayed set with a delay; with a
    /// unique id, only if that id was not sent within the deduplication window (one atomic
    /// script). [`Error::Config`] for a priority level the queue does not have or an empty
    /// header name.
    pub fn send(self) -> Result<Produced> {
        let q = &self.queue.inner;
        let s = &q.s;
        let level = self.level.unwrap_or(s.default_level);
        if usize::from(level) >= s.streams.len() {
            return Err(Error::config(
                "job.priority",
                format!("the queue has {} priority level(s)", s.streams.len()),
            ));
        }
        if self.headers.iter().any(|(k, _)| k.is_empty()) {
            return Err(Error::config(
                "job.header",
                "a header name must not be empty",
            ));
        }
        if self.unique.as_deref() == Some("") {
            return Err(Error::config("job.unique_id", "must not be empty"));
        }
        let plain = self.headers.is_empty() && self.unique.is_none();
        if plain && self.delay.is_none() {
            let mut cmd = redis::cmd("XADD");
            self.queue.xadd(&mut cmd, level, &self.payload);
            let id: String = q.redis.query(&cmd)?;
            q.counters.produced.fetch_add(1, Relaxed);
            return Ok(Produced::Added(id));
        }
        let headers = encode_headers(&self.headers);
        let unique = self.unique.as_deref().unwrap_or("");
        let delay = self
            .delay
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let member = if self.delay.is_some() {
            Member {
                origin: &super::token(),
                attempt: 0,
                level,
                headers: &headers,
                unique,
                payload: &self.payload,
            }
            .encode()
        } else {
            Vec::new()
        };
        let call = produce_script()
            .key(s.stream(level))
            .key(&s.delayed)
            .key(format!("{}{unique}", s.unique_prefix))
            .arg(millis(s.dedup_window))
            .arg(delay)
            .arg(s.max_len.unwrap_or(0))
            .arg(&self.payload)
            .arg(&headers)
            .arg(unique)
            .arg(member);
        // With a unique id, sending twice adds it once: safe to resend. Without, not.
        let v: Option<String> = if unique.is_empty() {
            q.redis.run(|con| call.invoke(con))?
        } else {
            q.redis.run_idempotent(|con| call.invoke(con))?
        };
        Ok(match v {
            None => {
                q.counters.duplicates.fetch_add(1, Relaxed);
                log::debug!(
                    "queue {}: job with unique id {unique} dropped (a duplicate)",
                    s.name
                );
                Produced::Duplicate
            }
            Some(id) if id.is_empty() => {
                q.counters.produced.fetch_add(1, Relaxed);
                Produced::Scheduled
            }
            Some(id) => {
                q.counters.produced.fetch_add(1, Relaxed);
                Produced::Added(id)
            }
        })
    }
}

/// The stream id right after `id` (for paging with an inclusive range: `ms-seq` becomes
/// `ms-(seq+1)`); `None` when `id` is not a stream id.
///
/// ```
/// assert_eq!(redkit::queue::next_id("1700000000000-7").as_deref(), Some("1700000000000-8"));
/// assert_eq!(redkit::queue::next_id("nope"), None);
/// ```
pub fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

/// Parses dead-letter entries (`XRANGE`/`XREVRANGE` of the dead-letter stream).
fn parse_dead(v: &Value) -> Vec<DeadLetter> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(pair) = e else { continue };
        let (Some(id), Some(fields)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        let Some(fields) = super::field_pairs(fields) else {
            continue;
        };
        let id = super::string(id).unwrap_or_default();
        let ms = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse::<u64>().ok())
            .unwrap_or(0);
        let mut d = DeadLetter {
            origin: String::new(),
            attempts: 0,
            error: String::new(),
            payload: Vec::new(),
            headers: Vec::new(),
            priority: 0,
            unique_id: None,
            failed_at: UNIX_EPOCH + Duration::from_millis(ms),
            id,
        };
        for (k, v) in fields {
            let text = || super::bytes(v).map(|b| String::from_utf8_lossy(b).into_owned());
            match super::bytes(k) {
                Some(b"p") => d.payload = super::bytes(v).map(<[u8]>::to_vec).unwrap_or_default(),
                Some(b"o") => d.origin = text().unwrap_or_default(),
                Some(b"a") => d.attempts = text().and_then(|t| t.parse().ok()).unwrap_or(0),
                Some(b"e") => d.error = text().unwrap_or_default(),
                Some(b"l") => d.priority = text().and_then(|t| t.parse().ok()).unwrap_or(0),
                Some(b"i") => d.unique_id = text().filter(|t| !t.is_empty()),
                Some(b"h") => {
                    d.headers = super::bytes(v)
                        .and_then(super::decode_headers)
                        .unwrap_or_default();
                }
                _ => {}
            }
        }
        if d.origin.is_empty() {
            d.origin = d.id.clone();
        }
        out.push(d);
    }
    out
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => super::string(other).and_then(|s| s.parse().ok()),
    }
}

/// A description (`XINFO` row) as (field, value) pairs, from a flat array or a RESP3 map.
fn pairs(v: &Value) -> Vec<(Value, Value)> {
    match v {
        Value::Array(f) => f
            .chunks(2)
            .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
            .collect(),
        Value::Map(m) => m.clone(),
        _ => Vec::new(),
    }
}

/// One group's description from `XINFO GROUPS` as (field, value) pairs.
fn find_group(groups: &Value, name: &str) -> Option<Vec<(Value, Value)>> {
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|g| {
        let pairs = pairs(g);
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
/// # let queue = redkit::StreamQueue::builder(&redis, "jobs").build()?;
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
    next_prune: Instant,
    claim_cursors: Vec<String>,
    /// Smooth weighted round robin state (weighted priorities).
    credit: Vec<i64>,
    delayed: Delayed,
    lease: Arc<Lease>,
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

    /// Reads up to `max` jobs: due delayed jobs are moved first, idle consumers removed and
    /// idle jobs of dead consumers claimed when their intervals passed, then `XREADGROUP`
    /// (blocking up to `block`).
    pub(crate) fn fetch(&mut self, max: usize, block: Option<Duration>) -> Result<Vec<Job>> {
        let mut jobs = self.fetch_unleased(max, block)?;
        let now = Instant::now();
        for job in &mut jobs {
            job.lease = Some(self.lease.clone());
            job.read_at = Some(now);
        }
        Ok(jobs)
    }

    fn fetch_unleased(&mut self, max: usize, block: Option<Duration>) -> Result<Vec<Job>> {
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let now = Instant::now();
        if now >= self.next_due {
            self.next_due = crate::util::time::add(now, s.block);
            let call = self.delayed.due_call(s.batch);
            let (_moved, _next): (i64, i64) = self.conn.invoke(&call)?;
        }
        if let Some(idle) = s.idle_consumers {
            if now >= self.next_prune {
                self.next_prune =
                    crate::util::time::add(now, (idle / 2).min(Duration::from_secs(60)));
                self.prune(idle)?;
            }
        }
        if now >= self.next_claim {
            self.next_claim = crate::util::time::add(now, s.claim_interval);
            let claimed = self.claim(max)?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let max = max.max(1);
        if s.streams.len() > 1 {
            let jobs = self.read_levels(max)?;
            if !jobs.is_empty() || block.is_none() {
                return Ok(jobs);
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&s.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS");
        for stream in s.streams.iter() {
            cmd.arg(stream);
        }
        for _ in s.streams.iter() {
            cmd.arg(">");
        }
        match self.conn.value(&cmd) {
            Ok(v) if s.streams.len() == 1 => parse_read(&v),
            Ok(v) => parse_read_levels(&v, |key| s.level_of(key)),
            Err(e) if e.server_code() == Some("NOGROUP") => {
                self.group_gone()?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    fn group_gone(&self) -> Result<()> {
        log::warn!(
            "queue {}: the consumer group is gone (data lost?); creating it again",
            self.queue.inner.s.name
        );
        self.queue.create_group()
    }

    /// One non-blocking read over every priority level (the read script): each level's
    /// quota first (weighted), then the rest level by level.
    fn read_levels(&mut self, max: usize) -> Result<Vec<Job>> {
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let quotas = match &s.mode {
            PriorityMode::Strict => vec![0u64; s.streams.len()],
            PriorityMode::Weighted(weights) => swrr(&mut self.credit, weights, max),
        };
        let call = read_script()
            .key(&*s.streams)
            .arg(&s.group)
            .arg(&self.name)
            .arg(max)
            .arg(quotas);
        let v = match self.conn.invoke::<Value>(&call) {
            Err(e) if e.server_code() == Some("NOGROUP") => {
                self.group_gone()?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let Value::Array(flat) = v else {
            return Ok(Vec::new());
        };
        let mut jobs = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [level, entry] = pair else { continue };
            let level = as_u64(level)
                .and_then(|l| u8::try_from(l).ok())
                .unwrap_or(0);
            jobs.extend(parse_entries(&Value::Array(vec![entry.clone()]), level)?);
        }
        Ok(jobs)
    }

    fn prune(&mut self, idle: Duration) -> Result<()> {
        let s = &self.queue.inner.s;
        let call = prune_script()
            .key(&*s.streams)
            .arg(&s.group)
            .arg(millis(idle));
        let mut names: Vec<String> = self.conn.invoke(&call)?;
        names.sort();
        names.dedup();
        if !names.is_empty() {
            self.queue
                .inner
                .counters
                .consumers_removed
                .fetch_add(names.len() as u64, Relaxed);
            log::info!(
                "queue {}: removed {} consumer(s) idle for {idle:?} with nothing pending: {}",
                s.name,
                names.len(),
                names.join(", ")
            );
        }
        Ok(())
    }

    /// Claims jobs idle for `claim_idle`, level by level: `XAUTOCLAIM` on Redis 7.0 and later
    /// (and Valkey), which names the pending entries it found deleted from the stream and
    /// drops them; before 7.0 the claim script (`XPENDING`, then `XCLAIM` id by id, `XACK` of
    /// the deleted ones), which replies alike. 6.2 has `XAUTOCLAIM`, but it replies nil for a
    /// deleted entry without naming it and leaves it pending for ever.
    fn claim(&mut self, max: usize) -> Result<Vec<Job>> {
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let native = queue
            .inner
            .redis
            .server_supports(Feature::XautoclaimDeletedIds)?;
        let mut all = Vec::new();
        for (i, stream) in s.streams.iter().enumerate() {
            let level = u8::try_from(i).unwrap_or(u8::MAX);
            let cursor = self
                .claim_cursors
                .get(i)
                .cloned()
                .unwrap_or_else(|| "0-0".to_owned());
            let v = if native {
                self.conn.value(
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(&s.group)
                        .arg(&self.name)
                        .arg(millis(s.claim_idle))
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(max.max(1)),
                )
            } else {
                let call = claim_script()
                    .key(stream)
                    .arg(&s.group)
                    .arg(&self.name)
                    .arg(millis(s.claim_idle))
                    .arg(&cursor)
                    .arg(max.max(1));
                self.conn.invoke::<Value>(&call)
            };
            let v = match v {
                Err(e) if e.server_code() == Some("NOGROUP") => continue,
                other => other?,
            };
            let claimed = parse_autoclaim(&v, level)?;
            // More may be idle: look again soon.
            if claimed.cursor != "0-0" {
                self.next_claim = Instant::now();
            }
            if let Some(c) = self.claim_cursors.get_mut(i) {
                *c = claimed.cursor;
            }
            if !claimed.deleted.is_empty() {
                let n = claimed.deleted.len() as u64;
                queue.inner.counters.vanished.fetch_add(n, Relaxed);
                log::warn!(
                    "queue {}: {n} pending job(s) were gone from the stream when claimed \
                     (trimmed by max_len or deleted with XDEL): acknowledged and skipped",
                    s.name
                );
            }
            let jobs = self.drop_poison(stream, claimed.jobs)?;
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
            all.extend(jobs);
        }
        Ok(all)
    }

    /// Dead-letters the claimed jobs (all of one level's `stream`) that were claimed more
    /// than `max_claims` times (their delivery count: one read plus one per claim).
    fn drop_poison(&mut self, stream: &str, jobs: Vec<Job>) -> Result<Vec<Job>> {
        let (Some(first), Some(last)) = (jobs.first(), jobs.last()) else {
            return Ok(jobs);
        };
        let queue = self.queue.clone();
        let s = &queue.inner.s;
        let v = self.conn.value(
            redis::cmd("XPENDING")
                .arg(stream)
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

/// This read's quota per level: `count` slots given one by one by smooth weighted round
/// robin (the state in `credit` carries over between reads).
fn swrr(credit: &mut [i64], weights: &[u32], count: usize) -> Vec<u64> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut quotas = vec![0u64; weights.len()];
    if total == 0 || credit.len() != weights.len() {
        return quotas;
    }
    for _ in 0..count {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            credit[i] += i64::from(*w);
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        quotas[best] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_quotas_follow_the_weights_across_reads() {
        let mut credit = vec![0; 3];
        let q = swrr(&mut credit, &[6, 3, 1], 10);
        assert_eq!(q, [6, 3, 1]);
        // One slot per read: over 10 reads, the same shares.
        let mut sums = [0u64; 3];
        for _ in 0..10 {
            for (s, q) in sums.iter_mut().zip(swrr(&mut credit, &[6, 3, 1], 1)) {
                *s += q;
            }
        }
        assert_eq!(sums, [6, 3, 1]);
    }

    #[test]
    fn ids_page_forward() {
        assert_eq!(next_id("5-0").as_deref(), Some("5-1"));
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id("-"), None);
    }
}
