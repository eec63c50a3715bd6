//! The list queue: `BLMOVE` (`BRPOPLPUSH` before Redis 6.2) into a per-consumer processing
//! list, `LREM` to acknowledge, a reaper for dead consumers, retries through the delayed set,
//! a dead-letter list, a worker pool.
//!
//! ## Item formats
//!
//! A fresh item is its payload, as pushed (any producer's `LPUSH` works). A retried item is
//! framed `\0rk1\n<attempt>\n<payload>`; a dead letter (in `{name}:dead`) is
//! `\0rkd1\n<attempts>\n<error length>\n<error><payload>`. A payload that itself starts with
//! `\0rk1\n` would be read as a retried item: redkit's own producers never write one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::delayed::{Delayed, Periodic, Target};
use super::{check_name, consumer_name, member, millis, token, Dedicated};
use crate::client::Redis;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::script::{static_script, Pipeline, Script};
use crate::version::Feature;

static REAP: &str = include_str!("reap.lua");
static_script!(list_settle_script, "list_settle.lua");
static_script!(list_dead_script, "list_dead.lua");
static_script!(list_replay_script, "list_replay.lua");

/// The frame of a retried item.
const RETRY_MAGIC: &[u8] = b"\0rk1\n";
/// The frame of a dead letter.
const DEAD_MAGIC: &[u8] = b"\0rkd1\n";

/// The longest single `BLMOVE` (`BRPOPLPUSH`): a consumer waiting longer reads again.
const SLICE: Duration = Duration::from_secs(1);

struct Inner {
    redis: Redis,
    name: String,
    ready: String,
    consumers: String,
    base: String,
    alive_ttl: Duration,
    wait: Duration,
    max_retries: u32,
    retry_backoff: Backoff,
    dead: String,
    delayed: String,
    reap: Script,
}

/// A reliable queue on plain Redis lists. See the [module docs](super).
///
/// Producers `LPUSH` to `{name}:ready`; a consumer `BLMOVE`s (before Redis 6.2:
/// `BRPOPLPUSH`s, the same move) an item into its own
/// `{name}:processing:<consumer>` list and refreshes its liveness key
/// `{name}:alive:<consumer>` (a TTL of [`alive_ttl`](ListQueueBuilder::alive_ttl)) on every
/// take and acknowledgement; [`ListConsumer::ack`] removes the item. [`ListQueue::reap`]
/// (call it periodically, from any process) moves the items of consumers whose liveness key
/// expired back to the ready list. At-least-once: a reaped item runs again.
///
/// ```no_run
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let queue = redkit::ListQueue::builder(&redis, "mail").build()?;
/// queue.push(b"to: ann")?;
/// let mut consumer = queue.consumer()?;
/// if let Some(job) = consumer.recv()? {
///     // ... send it
///     consumer.ack(&job)?;
/// }
/// queue.reap()?; // from time to time: give back the items of dead consumers
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Clone)]
pub struct ListQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ListQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListQueue")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ListQueue`]; made by [`ListQueue::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct ListQueueBuilder {
    redis: Redis,
    name: String,
    alive_ttl: Duration,
    wait: Duration,
    max_retries: u32,
    retry_backoff: Backoff,
}

impl ListQueue {
    /// Starts building a [`ListQueue`] named `name`.
    pub fn builder(redis: &Redis, name: &str) -> ListQueueBuilder {
        ListQueueBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            alive_ttl: Duration::from_secs(30),
            wait: Duration::from_secs(5),
            max_retries: 5,
            retry_backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }
}

impl ListQueueBuilder {
    /// How long a consumer counts as alive after its last take, acknowledgement or
    /// [`keep_alive`](ListConsumer::keep_alive); after that the reaper gives its items to
    /// others. Must exceed the longest job (or call `keep_alive` during long ones). Defaults
    /// to 30 s.
    pub fn alive_ttl(mut self, d: Duration) -> Self {
        self.alive_ttl = d;
        self
    }

    /// How long [`ListConsumer::recv`] waits for an item. Defaults to 5 s.
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }

    /// How many times a failed item ([`ListConsumer::fail`]) is retried before it goes to
    /// the dead-letter list (0: never retried). Defaults to 5.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The delay before each retry (by attempt). Defaults to exponential from 1 s to 5 min
    /// with full jitter.
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<ListQueue> {
        self.retry_backoff.validate("list_queue.retry_backoff")?;
        check_name("list_queue.name", &self.name)?;
        if self.alive_ttl < Duration::from_millis(1) {
            return Err(Error::config(
                "list_queue.alive_ttl",
                "must be at least 1 ms",
            ));
        }
        let base = self.redis.key(&format!("{{{}}}", self.name));
        Ok(ListQueue {
            inner: Arc::new(Inner {
                ready: format!("{base}:ready"),
                consumers: format!("{base}:consumers"),
                dead: format!("{base}:dead"),
                delayed: format!("{base}:delayed"),
                max_retries: self.max_retries,
                retry_backoff: self.retry_backoff,
                base,
                redis: self.redis,
                name: self.name,
                alive_ttl: self.alive_ttl,
                wait: self.wait,
                reap: Script::new(REAP),
            }),
        })
    }
}

/// An item taken from a [`ListQueue`].
#[derive(Clone, PartialEq, Eq)]
pub struct ListJob {
    payload: Vec<u8>,
    attempt: u32,
    /// The item exactly as taken (what `LREM` removes).
    raw: Option<Vec<u8>>,
}

impl std::fmt::Debug for ListJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListJob")
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl ListJob {
    /// Reads an item as taken from the list (a fresh payload, or a retried item's frame).
    fn from_item(item: Vec<u8>) -> ListJob {
        if let Some(rest) = item.strip_prefix(RETRY_MAGIC) {
            if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let attempt = std::str::from_utf8(&rest[..nl])
                    .ok()
                    .and_then(|a| a.parse().ok());
                if let Some(attempt) = attempt {
                    return ListJob {
                        payload: rest[nl + 1..].to_vec(),
                        attempt,
                        raw: Some(item),
                    };
                }
            }
        }
        ListJob {
            payload: item,
            attempt: 0,
            raw: None,
        }
    }

    /// The item as it sits in the list.
    fn item(&self) -> &[u8] {
        self.raw.as_deref().unwrap_or(&self.payload)
    }

    /// How many times this item failed before (0 on its first run).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as UTF-8, or the error saying where it is not.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// Takes the payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

impl ListQueue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How long a consumer counts as alive after its last sign of life.
    pub fn alive_ttl(&self) -> Duration {
        self.inner.alive_ttl
    }

    pub(crate) fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    /// The ready list's key.
    pub fn ready_key(&self) -> &str {
        &self.inner.ready
    }

    /// The processing list of consumer `name`.
    pub fn processing_key(&self, consumer: &str) -> String {
        format!("{}:processing:{consumer}", self.inner.base)
    }

    pub(crate) fn alive_key(&self, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.inner.base)
    }

    /// Adds an item (`LPUSH`); returns the ready list's length. Not resent when its fate is
    /// unknown.
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<u64> {
        self.inner.redis.query(
            redis::cmd("LPUSH")
                .arg(&self.inner.ready)
                .arg(payload.as_ref()),
        )
    }

    /// Adds many items in one `LPUSH`.
    pub fn push_batch<I, P>(&self, payloads: I) -> Result<u64>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&self.inner.ready);
        let mut n = 0;
        for p in payloads {
            cmd.arg(p.as_ref());
            n += 1;
        }
        if n == 0 {
            return self.len();
        }
        self.inner.redis.query(&cmd)
    }

    /// Items waiting in the ready list.
    pub fn len(&self) -> Result<u64> {
        let n = self
            .inner
            .redis
            .query(redis::cmd("LLEN").arg(&self.inner.ready))?;
        let export = self.inner.redis.export();
        export.queue_depth("list", &self.inner.ready, n);
        Ok(n)
    }

    /// Whether the ready list is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The dead-letter list's key.
    pub fn dead_letter_key(&self) -> &str {
        &self.inner.dead
    }

    /// The newest `count` dead letters, newest first.
    pub fn dead_letters(&self, count: usize) -> Result<Vec<ListDeadLetter>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let items: Vec<Vec<u8>> = self.inner.redis.query(
            redis::cmd("LRANGE")
                .arg(&self.inner.dead)
                .arg(0)
                .arg(count - 1),
        )?;
        Ok(items.into_iter().map(ListDeadLetter::from_record).collect())
    }

    /// How many dead letters there are.
    pub fn dead_letter_count(&self) -> Result<u64> {
        self.inner
            .redis
            .query(redis::cmd("LLEN").arg(&self.inner.dead))
    }

    /// Puts one dead letter's payload back into the ready list as a fresh item, atomically
    /// with its removal from the dead-letter list; `false` when it was no longer there.
    pub fn replay_dead(&self, dead: &ListDeadLetter) -> Result<bool> {
        let q = &self.inner;
        let call = list_replay_script()
            .key(&q.dead)
            .key(&q.ready)
            .arg(&dead.raw)
            .arg(&dead.payload);
        let n: i64 = q.redis.run(|con| call.invoke(con))?;
        Ok(n == 1)
    }

    /// Replays every dead letter (oldest first, 100 per atomic script), calling `progress`
    /// with the count so far; returns how many.
    pub fn replay_all_dead(&self, mut progress: impl FnMut(u64)) -> Result<u64> {
        let q = &self.inner;
        let call = list_dead_script().key(&q.dead).key(&q.ready).arg(100);
        let mut total = 0;
        loop {
            let n: u64 = q.redis.run(|con| call.invoke(con))?;
            total += n;
            progress(total);
            if n < 100 {
                return Ok(total);
            }
        }
    }

    /// Deletes every dead letter; returns how many there were.
    pub fn purge_dead(&self) -> Result<u64> {
        let q = &self.inner;
        let (n, _): (u64, u64) = q.redis.pipeline(
            Pipeline::new()
                .cmd("LLEN")
                .arg(&q.dead)
                .cmd("DEL")
                .arg(&q.dead),
        )?;
        Ok(n)
    }

    /// The queue's delayed set: jobs pushed to the ready list when due (retries too).
    pub fn delayed(&self) -> Delayed {
        Delayed::new(
            self.inner.redis.clone(),
            self.inner.delayed.clone(),
            Target::List {
                key: self.inner.ready.clone(),
            },
        )
    }

    /// A consumer named `<host>-<pid>-<n>` with a dedicated connection.
    pub fn consumer(&self) -> Result<ListConsumer> {
        self.consumer_named(&consumer_name())
    }

    /// A consumer with a chosen name (two live consumers must never share one).
    pub fn consumer_named(&self, name: &str) -> Result<ListConsumer> {
        if name.is_empty() || name.contains(['{', '}']) {
            return Err(Error::config(
                "consumer name",
                "must not be empty or hold braces",
            ));
        }
        Ok(ListConsumer {
            queue: self.clone(),
            processing: self.processing_key(name),
            alive: self.alive_key(name),
            name: name.to_owned(),
            conn: Dedicated::new(&self.inner.redis, SLICE)?,
        })
    }

    pub(crate) fn reap_call(&self, consumer: &str, force: bool) -> crate::ScriptCall {
        self.inner
            .reap
            .key(self.alive_key(consumer))
            .key(self.processing_key(consumer))
            .key(&self.inner.ready)
            .key(&self.inner.consumers)
            .arg(consumer)
            .arg(if force { "1" } else { "0" })
    }

    /// Returns the items of every consumer whose liveness key expired to the ready list, and
    /// forgets those consumers; returns how many items went back. Safe to run from several
    /// processes at once (each consumer is reaped atomically, once).
    pub fn reap(&self) -> Result<usize> {
        let consumers: Vec<String> = self
            .inner
            .redis
            .query(redis::cmd("SMEMBERS").arg(&self.inner.consumers))?;
        let mut total = 0;
        for c in consumers {
            let call = self.reap_call(&c, false);
            let n: i64 = self.inner.redis.run(|con| call.invoke(con))?;
            if n > 0 {
                log::info!(
                    "list queue {}: gave back {n} item(s) of dead consumer {c}",
                    self.inner.name
                );
                total += usize::try_from(n).unwrap_or(0);
            }
        }
        Ok(total)
    }
}

impl ListQueue {
    /// Starts a [`Reaper`] thread (`redkit-q-reaper`) that runs [`ListQueue::reap`]
    /// every `every`. Several reapers (in several processes) are safe.
    pub fn reaper(&self, every: Duration) -> Result<Reaper> {
        if every < Duration::from_millis(1) {
            return Err(Error::config("reaper.every", "must be at least 1 ms"));
        }
        let queue = self.clone();
        let periodic = Periodic::spawn(
            "redkit-q-reaper",
            format!("reaper of list queue {}", self.inner.name),
            every,
            move || Ok((queue.reap()? as u64, every)),
        )?;
        Ok(Reaper { periodic })
    }
}

/// A thread returning the items of dead consumers to the ready list; made by
/// [`ListQueue::reaper`]. Dropping it stops the thread and waits for it.
#[must_use = "dropping a Reaper stops it"]
pub struct Reaper {
    periodic: Periodic,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("reaped", &self.reaped())
            .finish_non_exhaustive()
    }
}

impl Reaper {
    /// Items this reaper returned so far.
    pub fn reaped(&self) -> u64 {
        self.periodic.count()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.periodic.shut_down()
    }
}

/// A dead letter of a [`ListQueue`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDeadLetter {
    /// How many times it ran.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The record as stored (what [`ListQueue::replay_dead`] removes).
    raw: Vec<u8>,
}

impl ListDeadLetter {
    fn from_record(raw: Vec<u8>) -> ListDeadLetter {
        let parsed = raw.strip_prefix(DEAD_MAGIC).and_then(|rest| {
            let a = rest.iter().position(|&b| b == b'\n')?;
            let attempts: u32 = std::str::from_utf8(&rest[..a]).ok()?.parse().ok()?;
            let rest = &rest[a + 1..];
            let b = rest.iter().position(|&b| b == b'\n')?;
            let len: usize = std::str::from_utf8(&rest[..b]).ok()?.parse().ok()?;
            let rest = &rest[b + 1..];
            let error = String::from_utf8_lossy(rest.get(..len)?).into_owned();
            Some((attempts, error, rest.get(len..)?.to_vec()))
        });
        let (attempts, error, payload) = parsed.unwrap_or_else(|| (0, String::new(), raw.clone()));
        ListDeadLetter {
            attempts,
            error,
            payload,
            raw,
        }
    }

    /// The payload as UTF-8, or the error saying where it is not.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }
}

/// A consumer of a [`ListQueue`], on a dedicated connection.
pub struct ListConsumer {
    queue: ListQueue,
    name: String,
    processing: String,
    alive: String,
    conn: Dedicated,
}

impl std::fmt::Debug for ListConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListConsumer")
            .field("queue", &self.queue.inner.name)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ListConsumer {
    /// This consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next item, waiting at most the queue's [`wait`](ListQueueBuilder::wait).
    pub fn recv(&mut self) -> Result<Option<ListJob>> {
        self.recv_timeout(self.queue.inner.wait)
    }

    /// The next item, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ListJob>> {
        let deadline = crate::util::time::after(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(job) = self.take(left.min(SLICE))? {
                return Ok(Some(job));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// An item if one is ready now; never blocks.
    pub fn try_recv(&mut self) -> Result<Option<ListJob>> {
        self.take(Duration::ZERO)
    }

    fn take(&mut self, block: Duration) -> Result<Option<ListJob>> {
        let q = &self.queue.inner;
        let lmove = q.redis.server_supports(Feature::Lmove)?;
        let mut pipe = Pipeline::new();
        pipe.cmd("SET")
            .arg(&self.alive)
            .arg(1)
            .arg("PX")
            .arg(millis(q.alive_ttl))
            .ignore();
        pipe.cmd("SADD").arg(&q.consumers).arg(&self.name).ignore();
        // From the ready list's right (oldest) end to the processing list's left end:
        // `RPOPLPUSH` is the same move as `LMOVE ... RIGHT LEFT`.
        match (lmove, block.is_zero()) {
            (true, true) => pipe.cmd("LMOVE"),
            (true, false) => pipe.cmd("BLMOVE"),
            (false, true) => pipe.cmd("RPOPLPUSH"),
            (false, false) => pipe.cmd("BRPOPLPUSH"),
        };
        pipe.arg(&q.ready).arg(&self.processing);
        if lmove {
            pipe.arg("RIGHT").arg("LEFT");
        }
        if !block.is_zero() {
            pipe.arg(format!("{:.3}", millis(block) as f64 / 1000.0));
        }
        let (v,): (Value,) = self.conn.pipeline(&pipe)?;
        Ok(match v {
            Value::BulkString(item) => Some(ListJob::from_item(item)),
            _ => None,
        })
    }

    /// Acknowledges an item: removes it from this consumer's processing list. `false` when
    /// it was not there (reaped meanwhile).
    pub fn ack(&self, job: &ListJob) -> Result<bool> {
        let q = &self.queue.inner;
        let mut pipe = Pipeline::new();
        pipe.cmd("LREM")
            .arg(&self.processing)
            .arg(1)
            .arg(job.item());
        pipe.cmd("SET")
            .arg(&self.alive)
            .arg(1)
            .arg("PX")
            .arg(millis(q.alive_ttl))
            .ignore();
        // LREM of one copy and SET are safe to resend.
        let (n,): (u64,) = q.redis.run_idempotent(|con| pipe.query(con))?;
        Ok(n > 0)
    }

    /// Records a failed run of `job`: back to the ready list after the backoff (through the
    /// delayed set), or after [`max_retries`](ListQueueBuilder::max_retries) retries into the
    /// dead-letter list with `error`; atomic with its removal from this consumer's
    /// processing list. [`Settled::NotOwned`](super::Settled::NotOwned) when it was not there
    /// (reaped meanwhile: another consumer has it).
    pub fn fail(&self, job: &ListJob, error: &str) -> Result<super::Settled> {
        let q = &self.queue.inner;
        let (mode, dest, delay, add, settled) = if job.attempt < q.max_retries {
            let mut delays = q.retry_backoff.delays();
            let mut after = delays.next_delay();
            for _ in 0..job.attempt {
                after = delays.next_delay();
            }
            let attempt = job.attempt + 1;
            let mut framed = RETRY_MAGIC.to_vec();
            framed.extend_from_slice(format!("{attempt}\n").as_bytes());
            framed.extend_from_slice(&job.payload);
            (
                "retry",
                &q.delayed,
                millis(after),
                member(&token(), 0, &framed),
                super::Settled::Retried { attempt, after },
            )
        } else {
            let mut record = DEAD_MAGIC.to_vec();
            record.extend_from_slice(format!("{}\n{}\n", job.attempt + 1, error.len()).as_bytes());
            record.extend_from_slice(error.as_bytes());
            record.extend_from_slice(&job.payload);
            ("dead", &q.dead, 0, record, super::Settled::DeadLettered)
        };
        let call = list_settle_script()
            .key(&self.processing)
            .key(dest)
            .arg(job.item())
            .arg(mode)
            .arg(delay)
            .arg(add);
        // Not resent: a retry's member is unique, so a second run could add it twice.
        let n: i64 = q.redis.run(|con| call.invoke(con))?;
        if n == 0 {
            return Ok(super::Settled::NotOwned);
        }
        if settled == super::Settled::DeadLettered {
            log::warn!(
                "list queue {}: an item was dead-lettered after {} runs: {error}",
                q.name,
                job.attempt + 1
            );
        }
        Ok(settled)
    }

    /// Refreshes this consumer's liveness key (during a long job).
    pub fn keep_alive(&self) -> Result<()> {
        let q = &self.queue.inner;
        q.redis.query_idempotent(
            redis::cmd("SET")
                .arg(&self.alive)
                .arg(1)
                .arg("PX")
                .arg(millis(q.alive_ttl)),
        )
    }

    /// Items taken and not acknowledged.
    pub fn in_flight(&self) -> Result<u64> {
        self.queue
            .inner
            .redis
            .query(redis::cmd("LLEN").arg(&self.processing))
    }

    /// Gives every unacknowledged item back to the ready list and unregisters; returns how
    /// many went back.
    pub fn close(self) -> Result<usize> {
        let call = self.queue.reap_call(&self.name, true);
        let n: i64 = self.queue.inner.redis.run(|con| call.invoke(con))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}
