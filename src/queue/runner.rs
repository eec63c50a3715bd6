//! The worker-pool runner: one reader thread, N worker threads, limiters, graceful shutdown.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use parking_lot::Mutex;

use super::stream::{QueueStats, StreamConsumer, StreamQueue};
use super::{panic_text, Job};
use crate::error::{Error, Result};
use crate::ratelimit::{ConcurrencyLimiter, RateLimiter};

impl StreamQueue {
    /// Starts configuring a pool of worker threads for this queue.
    pub fn workers(&self) -> WorkersBuilder {
        WorkersBuilder::new(self.clone())
    }
}
use crate::retry::Backoff;

/// How often idle threads look at the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// The most acknowledgements one round trip carries.
const ACK_BATCH: usize = 1000;

type HandlerFn = dyn Fn(&Job) -> std::result::Result<(), String> + Send + Sync;
type SharedLimiter = Arc<dyn RateLimiter + Send + Sync>;

/// Configures a pool of worker threads over a [`StreamQueue`]; made by
/// [`StreamQueue::workers`].
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use redkit::ratelimit::{ConcurrencyLimiter, Gcra, GcraLimit};
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let queue = redkit::StreamQueue::builder(&redis, "crawl").build()?;
/// let per_second = Gcra::new(&redis, "crawl", GcraLimit::per_second(50))?;
/// let workers = queue
///     .workers()
///     .threads(8)
///     .rate_limit(Arc::new(per_second), "example.com")
///     .shutdown_timeout(Duration::from_secs(30))
///     .run(|job| {
///         // fetch job.payload() ...
///         Ok::<(), String>(())
///     })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `run` is called"]
pub struct WorkersBuilder {
    queue: StreamQueue,
    threads: usize,
    prefetch: Option<usize>,
    shutdown_timeout: Duration,
    rate: Option<(SharedLimiter, String)>,
    concurrency: Option<(Arc<ConcurrencyLimiter>, String)>,
    consumer: Option<String>,
    readers: usize,
}

impl std::fmt::Debug for WorkersBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkersBuilder")
            .field("queue", &self.queue.name())
            .field("threads", &self.threads)
            .field("readers", &self.readers)
            .field("prefetch", &self.prefetch)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("rate_limited", &self.rate.is_some())
            .field("concurrency_limited", &self.concurrency.is_some())
            .finish()
    }
}

impl WorkersBuilder {
    pub(crate) fn new(queue: StreamQueue) -> WorkersBuilder {
        WorkersBuilder {
            queue,
            threads: 4,
            prefetch: None,
            shutdown_timeout: Duration::from_secs(10),
            rate: None,
            concurrency: None,
            consumer: None,
            readers: 0,
        }
    }

    /// Worker threads running the handler. Defaults to 4.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Jobs read ahead of the workers (taken from the stream, waiting for a free thread),
    /// over every reader (each reads at most its share at a time). Defaults to 32 per
    /// thread: large reads are what lets a pool drain a backlog of fast jobs as quickly as
    /// hand-written loops (8 workers: 1.06 of 8 raw loops with 256, 0.44 with 64, on 2
    /// cores). A job that waited read ahead for half the queue's
    /// [`claim_idle`](super::StreamQueueBuilder::claim_idle) is extended (or, when another
    /// consumer claimed it meanwhile, left to that one) before it runs, so a large prefetch
    /// does not make slow jobs run twice; it does delay more urgent work that arrives
    /// behind it (see [`priorities`](super::StreamQueueBuilder::priorities)).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// The longest [`Workers::shutdown`] (or a drop) takes: it waits this long for running
    /// handlers, then hands their jobs back to the stream (for other consumers) and returns
    /// without them. Defaults to 10 s. See [`Workers::shutdown`].
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Takes one unit of `limiter` for `subject` before each job (waiting for it). Defaults
    /// to none.
    pub fn rate_limit(
        mut self,
        limiter: Arc<dyn RateLimiter + Send + Sync>,
        subject: &str,
    ) -> Self {
        self.rate = Some((limiter, subject.to_owned()));
        self
    }

    /// Holds a slot of `limiter` for `subject` while each job runs (shared by every process
    /// using the same limiter). Defaults to none.
    pub fn concurrency_limit(mut self, limiter: Arc<ConcurrencyLimiter>, subject: &str) -> Self {
        self.concurrency = Some((limiter, subject.to_owned()));
        self
    }

    /// The consumer name in the group. Defaults to `<host>-<pid>-<n>`.
    pub fn consumer_name(mut self, name: &str) -> Self {
        self.consumer = Some(name.to_owned());
        self
    }

    /// Reader threads, each a consumer of its own in the group (named like
    /// [`consumer_name`](Self::consumer_name), with `-r1`, `-r2`... after it for the second
    /// and later) feeding the same workers: more than one helps when handlers are very fast
    /// and the reads become the limit. Defaults to half the worker threads, at least 1 and
    /// at most 4 (with 8 workers, 4 readers drained a backlog about twice as fast as one on
    /// 2 cores); 0 means that default. Each reader holds a dedicated connection.
    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n;
        self
    }

    /// Starts the reader thread(s) (`redkit-q-reader`), the worker threads
    /// (`redkit-q-wk-N`) and the acknowledging thread (`redkit-q-acker`). A job is
    /// acknowledged when `handler` returns `Ok`; an `Err` (or a panic, caught) is retried or
    /// dead-lettered per the queue's settings.
    ///
    /// A worker hands each job that succeeded to the acknowledging thread, which sends
    /// every acknowledgement gathered while its previous `XACK` was on the wire in one
    /// `XACK` (at once when it was idle): under load many jobs share one round trip, and a
    /// slow handler never holds back the acknowledgements of others. Nothing is
    /// acknowledged before its handler succeeded.
    pub fn run<F, E>(self, handler: F) -> Result<Workers>
    where
        F: Fn(&Job) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        if self.threads == 0 {
            return Err(Error::config("workers.threads", "must be at least 1"));
        }
        let readers = if self.readers == 0 {
            self.threads.div_ceil(2).clamp(1, 4)
        } else {
            self.readers
        };
        let prefetch = self
            .prefetch
            .unwrap_or_else(|| self.threads.saturating_mul(32));
        if prefetch == 0 {
            return Err(Error::config("workers.prefetch", "must be at least 1"));
        }
        let handler: Arc<HandlerFn> =
            Arc::new(move |job: &Job| handler(job).map_err(|e| e.to_string()));
        let base = self.consumer.clone().unwrap_or_else(super::consumer_name);
        let mut consumers = Vec::with_capacity(readers);
        for i in 0..readers {
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-r{i}")
            };
            consumers.push(self.queue.consumer_named(&name)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded::<Job>(prefetch);
        let (ack_tx, ack_rx) = unbounded::<Option<(u8, String)>>();
        let slots: Arc<[Mutex<Option<Arc<Job>>>]> =
            (0..self.threads).map(|_| Mutex::new(None)).collect();
        let mut workers = Workers {
            queue: self.queue.clone(),
            consumer: base,
            stop: stop.clone(),
            readers: Vec::new(),
            threads: Vec::new(),
            acker: None,
            acks: ack_tx.clone(),
            slots: slots.clone(),
            rx: rx.clone(),
            shutdown_timeout: self.shutdown_timeout,
            done: false,
        };
        let acker = Acker {
            queue: self.queue.clone(),
            rx: ack_rx,
        };
        workers.acker = Some(spawn("redkit-q-acker", move || acker.run())?);
        // Jobs read but not yet in the channel, over every reader: with the channel's length,
        // never more than `prefetch` (each reader reads at most its share at a time), so
        // that a reader holding urgent jobs cannot be overtaken by more than that.
        let in_hand = Arc::new(AtomicUsize::new(0));
        let share = prefetch.div_ceil(readers).max(1);
        for consumer in consumers {
            let reader = Reader {
                consumer,
                tx: tx.clone(),
                stop: stop.clone(),
                prefetch,
                share,
                in_hand: in_hand.clone(),
            };
            workers
                .readers
                .push(spawn("redkit-q-reader", move || reader.run())?);
        }
        drop(tx);
        let shared = Arc::new(WorkerShared {
            queue: self.queue,
            handler,
            rx,
            stop,
            rate: self.rate,
            concurrency: self.concurrency,
            acks: ack_tx,
            slots,
        });
        for i in 0..self.threads {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("redkit-q-wk-{i}"))
                .spawn(move || shared.run(i))
                .map_err(|e| Error::Background {
                    thread: "redkit-q-worker",
                    reason: format!("could not start: {e}"),
                })?;
            workers.threads.push(t);
        }
        Ok(workers)
    }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Background {
            thread: name,
            reason: format!("could not start: {e}"),
        })
}

/// Sleeps up to `d` in ticks; `true` when a stop was requested meanwhile.
fn nap(stop: &AtomicBool, d: Duration) -> bool {
    let until = crate::util::time::after(d);
    loop {
        if stop.load(Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(TICK));
    }
}

struct Reader {
    consumer: StreamConsumer,
    tx: Sender<Job>,
    stop: Arc<AtomicBool>,
    prefetch: usize,
    /// The most this reader reads at a time: its share of `prefetch`.
    share: usize,
    /// Jobs the readers have read and not yet sent into the channel (shared).
    in_hand: Arc<AtomicUsize>,
}

impl Reader {
    /// Reserves up to this reader's share (and `batch`) of what the channel and every
    /// reader's hands leave free of `prefetch`; 0 when nothing is.
    fn reserve(&self, batch: usize) -> usize {
        let mut held = self.in_hand.load(Relaxed);
        loop {
            let free = self
                .prefetch
                .saturating_sub(self.tx.len())
                .saturating_sub(held)
                .min(self.share)
                .min(batch);
            if free == 0 {
                return 0;
            }
            match self
                .in_hand
                .compare_exchange_weak(held, held + free, Relaxed, Relaxed)
            {
                Ok(_) => return free,
                Err(now) => held = now,
            }
        }
    }

    fn run(mut self) {
        let queue = self.consumer.queue().clone();
        let batch = queue.inner.s.batch;
        let block = queue.inner.s.block;
        let mut backoff = None;
        let mut failing = false;
        'outer: while !self.stop.load(Relaxed) {
            let free = self.reserve(batch);
            if free == 0 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let fetched = self.consumer.fetch(free, Some(block));
            let read = fetched.as_ref().map_or(0, Vec::len);
            // The count holds what was read (a job leaves it once in the channel): give back
            // what this read did not use (or count what a claim brought beyond it).
            if read < free {
                self.in_hand.fetch_sub(free - read, Relaxed);
            } else {
                self.in_hand.fetch_add(read - free, Relaxed);
            }
            let jobs = match fetched {
                Ok(jobs) => {
                    if failing {
                        log::info!("queue {}: reading works again", queue.name());
                        failing = false;
                    }
                    backoff = None;
                    jobs
                }
                Err(Error::Closed) => break,
                Err(e) => {
                    if !failing {
                        log::warn!("queue {}: read failed: {e}", queue.name());
                        failing = true;
                    } else {
                        log::debug!("queue {}: read failed again: {e}", queue.name());
                    }
                    let delay = backoff
                        .get_or_insert_with(|| {
                            Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1))
                                .delays()
                        })
                        .next_delay();
                    nap(&self.stop, delay);
                    continue;
                }
            };
            let mut jobs = jobs.into_iter();
            while let Some(mut job) = jobs.next() {
                loop {
                    match self.tx.send_timeout(job, TICK) {
                        Ok(()) => {
                            self.in_hand.fetch_sub(1, Relaxed);
                            break;
                        }
                        Err(SendTimeoutError::Timeout(j)) if !self.stop.load(Relaxed) => job = j,
                        Err(SendTimeoutError::Timeout(j))
                        | Err(SendTimeoutError::Disconnected(j)) => {
                            // Stopping: hand back what no worker took.
                            for j in std::iter::once(j).chain(jobs) {
                                hand_back(&queue, &j);
                            }
                            break 'outer;
                        }
                    }
                }
            }
        }
        self.consumer.disconnect();
    }
}

fn hand_back(queue: &StreamQueue, job: &Job) {
    if let Err(e) = queue.hand_back(job) {
        log::warn!(
            "queue {}: could not hand back job {} ({e}); it is claimed after the idle time",
            queue.name(),
            job.origin()
        );
    }
}

/// The acknowledging thread: sends the acknowledgements workers hand it, as many per `XACK`
/// as arrived during the previous one. `None` on the channel: drain, then stop.
struct Acker {
    queue: StreamQueue,
    rx: Receiver<Option<(u8, String)>>,
}

impl Acker {
    fn run(self) {
        let mut batch: Vec<(u8, String)> = Vec::new();
        let mut last = false;
        while !last {
            match self.rx.recv() {
                Ok(Some(ack)) => batch.push(ack),
                Ok(None) | Err(_) => last = true,
            }
            while batch.len() < ACK_BATCH {
                match self.rx.try_recv() {
                    Ok(Some(ack)) => batch.push(ack),
                    Ok(None) => last = true,
                    Err(_) => break,
                }
            }
            self.flush(&mut batch);
        }
        // Whatever came after the stop marker (a worker finishing as the pool stopped).
        while let Ok(Some(ack)) = self.rx.try_recv() {
            batch.push(ack);
        }
        self.flush(&mut batch);
    }

    fn flush(&self, batch: &mut Vec<(u8, String)>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self
            .queue
            .ack_ids(batch.iter().map(|(level, id)| (*level, id.as_str())))
        {
            log::warn!(
                "queue {}: could not acknowledge {} job(s) ({e}); they stay pending and are claimed after the idle time",
                self.queue.name(),
                batch.len()
            );
        }
        self.queue
            .inner
            .counters
            .in_flight
            .fetch_sub(batch.len() as u64, Relaxed);
        batch.clear();
    }
}

struct WorkerShared {
    queue: StreamQueue,
    handler: Arc<HandlerFn>,
    rx: Receiver<Job>,
    stop: Arc<AtomicBool>,
    rate: Option<(SharedLimiter, String)>,
    concurrency: Option<(Arc<ConcurrencyLimiter>, String)>,
    acks: Sender<Option<(u8, String)>>,
    /// The job each worker is running: taken by a shutdown past its timeout (and handed
    /// back), or by the worker when its handler returns; whoever takes it settles it.
    slots: Arc<[Mutex<Option<Arc<Job>>>]>,
}

impl WorkerShared {
    /// Takes jobs until stopped.
    fn run(&self, index: usize) {
        while !self.stop.load(Relaxed) {
            match self.rx.recv_timeout(TICK) {
                Ok(job) => self.handle(index, job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Waits for the rate limiter; `false` when a stop came first.
    fn admitted(&self) -> bool {
        let Some((limiter, subject)) = &self.rate else {
            return true;
        };
        loop {
            match limiter.acquire_timeout(subject, 1, TICK) {
                Ok(_) => return true,
                Err(Error::RateLimited { .. }) => {}
                Err(e) => {
                    log::warn!("queue {}: rate limiter failed: {e}", self.queue.name());
                    if nap(&self.stop, Duration::from_millis(200)) {
                        return false;
                    }
                }
            }
            if self.stop.load(Relaxed) {
                return false;
            }
        }
    }

    /// Waits for a concurrency slot; `Err(())` when a stop came first.
    fn slot(&self) -> std::result::Result<Option<crate::ratelimit::Slot>, ()> {
        let Some((limiter, subject)) = &self.concurrency else {
            return Ok(None);
        };
        loop {
            match limiter.acquire_timeout(subject, TICK) {
                Ok(slot) => return Ok(Some(slot)),
                Err(Error::RateLimited { .. }) => {}
                Err(e) => {
                    log::warn!(
                        "queue {}: concurrency limiter failed: {e}",
                        self.queue.name()
                    );
                    if nap(&self.stop, Duration::from_millis(200)) {
                        return Err(());
                    }
                }
            }
            if self.stop.load(Relaxed) {
                return Err(());
            }
        }
    }

    /// A job that waited read ahead for half the queue's `claim_idle` gets its idle time
    /// restarted before it runs (one `heartbeat`), so that a large prefetch never lets
    /// another consumer claim a job still waiting here; `false` when another consumer took
    /// it meanwhile (it runs there, not here). A failed heartbeat runs the job anyway (at
    /// least once).
    fn still_ours(&self, job: &Job) -> bool {
        let half = self.queue.inner.s.claim_idle / 2;
        if job.read_at.is_none_or(|at| at.elapsed() < half) {
            return true;
        }
        match job.heartbeat() {
            Ok(true) => true,
            Ok(false) => {
                log::debug!(
                    "queue {}: job {} waited past the claim idle time and another consumer took it",
                    self.queue.name(),
                    job.origin()
                );
                false
            }
            Err(e) => {
                log::debug!(
                    "queue {}: could not extend job {} before running it: {e}",
                    self.queue.name(),
                    job.origin()
                );
                true
            }
        }
    }

    /// Runs one job, then acknowledges it (through the acknowledging thread) or settles
    /// its failure; nothing when a shutdown took it meanwhile (handed back).
    fn handle(&self, index: usize, job: Job) {
        let counters = &self.queue.inner.counters;
        if !self.admitted() {
            hand_back(&self.queue, &job);
            return;
        }
        let Ok(limit_slot) = self.slot() else {
            hand_back(&self.queue, &job);
            return;
        };
        let Some(running) = self.slots.get(index) else {
            hand_back(&self.queue, &job);
            return;
        };
        if !self.still_ours(&job) {
            return;
        }
        let job = Arc::new(job);
        *running.lock() = Some(job.clone());
        counters.in_flight.fetch_add(1, Relaxed);
        let outcome = match catch_unwind(AssertUnwindSafe(|| (self.handler)(&job))) {
            Ok(r) => r,
            Err(panic) => Err(panic_text(&panic)),
        };
        drop(limit_slot);
        let mut mine = running.lock();
        if mine.take().is_none() {
            // A shutdown past its timeout handed it back: another run has it.
            counters.in_flight.fetch_sub(1, Relaxed);
            log::debug!(
                "queue {}: job {} finished after the shutdown handed it back; result dropped",
                self.queue.name(),
                job.origin()
            );
            return;
        }
        let error = match outcome {
            Ok(()) => {
                // Sent while the slot is held, so that a shutdown that found the slot empty
                // knows the acknowledgement is already queued.
                if self.acks.send(Some((job.level, job.id.clone()))).is_err() {
                    counters.in_flight.fetch_sub(1, Relaxed);
                }
                return;
            }
            Err(error) => error,
        };
        drop(mine);
        let settled = self.queue.fail(&job, &error);
        counters.in_flight.fetch_sub(1, Relaxed);
        if let Err(e) = settled {
            log::warn!(
                "queue {}: could not settle job {} ({e}); it stays pending and is claimed after the idle time",
                self.queue.name(),
                job.origin()
            );
        }
    }
}

/// What [`Workers::shutdown`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs read but not started, handed back to the stream for other consumers.
    pub handed_back: usize,
    /// Jobs whose handler was still running when the shutdown timeout passed: handed back
    /// to the stream (another consumer runs them; whatever the handler does later is
    /// dropped). Their threads end when their handlers return.
    pub interrupted: usize,
    /// How long the shutdown took.
    pub took: Duration,
}

/// A running pool of worker threads; made by [`WorkersBuilder::run`]. Dropping it shuts
/// it down like [`Workers::shutdown`] (logging errors).
#[must_use = "dropping Workers stops them"]
pub struct Workers {
    queue: StreamQueue,
    consumer: String,
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    threads: Vec<JoinHandle<()>>,
    acker: Option<JoinHandle<()>>,
    acks: Sender<Option<(u8, String)>>,
    slots: Arc<[Mutex<Option<Arc<Job>>>]>,
    rx: Receiver<Job>,
    shutdown_timeout: Duration,
    done: bool,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("queue", &self.queue.name())
            .field("consumer", &self.consumer)
            .field("readers", &self.readers.len())
            .field("threads", &self.threads.len())
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// The consumer name the pool reads as (its first reader's).
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// The queue's stats (progress: processed, failed, retried, in flight...).
    pub fn stats(&self) -> Result<QueueStats> {
        self.queue.stats()
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Asks the threads to stop without waiting (for a signal handler); then call
    /// [`Workers::shutdown`] or drop.
    pub fn request_stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// A flag that stops the pool when set (to share with a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops taking new jobs and hands back the ones read but not started; waits for
    /// running handlers up to the [shutdown timeout](WorkersBuilder::shutdown_timeout)
    /// (they finish and are acknowledged); then hands back the jobs of handlers still
    /// running (another consumer runs them again: at-least-once) and returns. The timeout
    /// is a hard bound: handlers are waited for until a tenth of it (at most 200 ms) is
    /// left, kept for the hand-backs (one round trip per running job); a thread still in a
    /// handler is not waited for: it ends when its handler returns, whose result is then
    /// dropped. With a server slow to answer, each hand-back waits at most the response
    /// timeout.
    pub fn shutdown(mut self) -> Result<ShutdownReport> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<ShutdownReport> {
        let start = Instant::now();
        let deadline = crate::util::time::add(start, self.shutdown_timeout);
        self.done = true;
        self.stop.store(true, Relaxed);
        let mut panicked = None;
        // A reader may be blocked in a read (up to the block time plus the response timeout
        // in a black hole): wait for it within the shutdown timeout; jobs it reads after
        // that it hands back itself, or they stay pending and are claimed (at-least-once).
        for t in self.readers.drain(..) {
            if let Err(p) = crate::util::threads::join_within(t, crate::util::time::left(deadline))
            {
                panicked = Some(("redkit-q-reader", p));
            }
        }
        let mut handed_back = self.hand_back_queued(deadline);
        // Time kept for handing back the jobs of handlers still running then.
        let reserve = (self.shutdown_timeout / 10).min(Duration::from_millis(200));
        let interrupt_at = deadline.checked_sub(reserve).unwrap_or(deadline);
        while Instant::now() < interrupt_at && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Past the timeout: take the jobs of handlers still running and hand them back.
        let mut interrupted = 0;
        for slot in self.slots.iter() {
            let Some(job) = slot.lock().take() else {
                continue;
            };
            interrupted += 1;
            // Its worker counts it out of `in_flight` when its handler returns.
            hand_back(&self.queue, &job);
        }
        if interrupted > 0 {
            log::warn!(
                "queue {}: {interrupted} handler(s) still running after {:?}: their jobs were handed back; their threads end when the handlers return",
                self.queue.name(),
                self.shutdown_timeout
            );
        }
        let (finished, running): (Vec<_>, Vec<_>) =
            self.threads.drain(..).partition(|t| t.is_finished());
        for t in finished {
            if let Err(p) = crate::util::threads::join(t) {
                panicked = Some(("redkit-q-worker", p));
            }
        }
        // Dropped, not joined: each ends when its handler returns (it sees the stop flag).
        drop(running);
        // Every acknowledgement of a finished handler is queued by now: send them, stop.
        let _ = self.acks.send(None);
        if let Some(t) = self.acker.take() {
            let left = crate::util::time::left(deadline).max(Duration::from_millis(100));
            if let Err(p) = crate::util::threads::join_within(t, left) {
                panicked = Some(("redkit-q-acker", p));
            }
        }
        handed_back += self.hand_back_queued(deadline);
        if let Some((thread, reason)) = panicked {
            return Err(Error::Background { thread, reason });
        }
        Ok(ShutdownReport {
            handed_back,
            interrupted,
            took: start.elapsed(),
        })
    }

    /// Hands back what the readers queued and no worker took, while time is left.
    fn hand_back_queued(&self, deadline: Instant) -> usize {
        let mut n = 0;
        while let Ok(job) = self.rx.try_recv() {
            if Instant::now() >= deadline {
                log::warn!(
                    "queue {}: no time left to hand back job {}; it is claimed after the idle time",
                    self.queue.name(),
                    job.origin()
                );
                continue;
            }
            hand_back(&self.queue, &job);
            n += 1;
        }
        n
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.shut_down() {
                log::warn!("queue {}: {e}", self.queue.name());
            }
        }
    }
}
