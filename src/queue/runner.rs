//! The worker-pool runner: one reader thread, N worker threads, limiters, graceful shutdown.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

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
/// Handlers faster than this on average get their acknowledgements batched.
const FAST: Duration = Duration::from_millis(1);
/// The most acknowledgements one `XACK` carries.
const ACK_BATCH: usize = 32;
/// The longest an acknowledgement waits for others to share its `XACK`.
const ACK_DELAY: Duration = Duration::from_millis(5);

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
/// let queue = redis.stream_queue("crawl").build()?;
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
}

impl std::fmt::Debug for WorkersBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkersBuilder")
            .field("queue", &self.queue.name())
            .field("threads", &self.threads)
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
        }
    }

    /// Worker threads running the handler. Defaults to 4.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Jobs read ahead of the workers (taken from the stream, waiting for a free thread).
    /// Defaults to 8 per thread. A job read ahead waits (pending, its idle time growing)
    /// until a thread is free: keep `prefetch × job time / threads` well under the queue's
    /// [`claim_idle`](super::StreamQueueBuilder::claim_idle), or lower it for slow jobs.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How long [`Workers::shutdown`] waits for running handlers. Defaults to 10 s.
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

    /// Starts the reader thread (`redkit-q-reader`) and the worker threads
    /// (`redkit-q-wk-N`). A job is acknowledged when `handler` returns `Ok`; an `Err`
    /// (or a panic, caught) is retried or dead-lettered per the queue's settings.
    ///
    /// While handlers are fast (under 1 ms on average) and jobs are queued, a worker sends
    /// the acknowledgements of up to 32 jobs (at most 5 ms old) in one `XACK`; when the queue
    /// runs empty, a handler is slow, or on stop they go at once. One exception: the
    /// acknowledgements gathered before a job that turns out slow wait for it. Nothing is
    /// acknowledged before its handler succeeded.
    pub fn run<F, E>(self, handler: F) -> Result<Workers>
    where
        F: Fn(&Job) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        if self.threads == 0 {
            return Err(Error::config("workers.threads", "must be at least 1"));
        }
        let prefetch = self.prefetch.unwrap_or(self.threads * 8);
        if prefetch == 0 {
            return Err(Error::config("workers.prefetch", "must be at least 1"));
        }
        let handler: Arc<HandlerFn> =
            Arc::new(move |job: &Job| handler(job).map_err(|e| e.to_string()));
        let consumer = match &self.consumer {
            Some(name) => self.queue.consumer_named(name)?,
            None => self.queue.consumer()?,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded::<Job>(prefetch);
        let mut workers = Workers {
            queue: self.queue.clone(),
            consumer: consumer.name().to_owned(),
            stop: stop.clone(),
            reader: None,
            threads: Vec::new(),
            rx: rx.clone(),
            shutdown_timeout: self.shutdown_timeout,
            done: false,
        };
        let reader = Reader {
            consumer,
            tx,
            stop: stop.clone(),
            prefetch,
        };
        workers.reader = Some(spawn("redkit-q-reader", move || reader.run())?);
        let shared = Arc::new(WorkerShared {
            queue: self.queue,
            handler,
            rx,
            stop,
            rate: self.rate,
            concurrency: self.concurrency,
        });
        for i in 0..self.threads {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("redkit-q-wk-{i}"))
                .spawn(move || shared.run())
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
}

impl Reader {
    fn run(mut self) {
        let queue = self.consumer.queue().clone();
        let batch = queue.inner.s.batch;
        let block = queue.inner.s.block;
        let mut backoff = None;
        let mut failing = false;
        'outer: while !self.stop.load(Relaxed) {
            let free = self.prefetch.saturating_sub(self.tx.len());
            if free == 0 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let jobs = match self.consumer.fetch(free.min(batch), Some(block)) {
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
                        Ok(()) => break,
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

struct WorkerShared {
    queue: StreamQueue,
    handler: Arc<HandlerFn>,
    rx: Receiver<Job>,
    stop: Arc<AtomicBool>,
    rate: Option<(SharedLimiter, String)>,
    concurrency: Option<(Arc<ConcurrencyLimiter>, String)>,
}

impl WorkerShared {
    /// Takes jobs until stopped. While handlers are fast (a moving average under
    /// [`FAST`]) and more jobs are queued, acknowledgements are gathered and sent in one
    /// `XACK` (at most [`ACK_BATCH`] jobs, at most [`ACK_DELAY`] old); a slow handler, an
    /// empty queue or a stop sends them at once.
    fn run(&self) {
        let mut acks: Vec<Job> = Vec::new();
        let mut oldest = Instant::now();
        let mut average = Duration::ZERO;
        while !self.stop.load(Relaxed) {
            let next = if acks.is_empty() {
                match self.rx.recv_timeout(TICK) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                self.rx.try_recv().ok()
            };
            let Some(job) = next else {
                self.flush(&mut acks);
                continue;
            };
            let started = Instant::now();
            if let Some(done) = self.handle(job) {
                if acks.is_empty() {
                    oldest = Instant::now();
                }
                acks.push(done);
            }
            average = (average * 7 + started.elapsed()) / 8;
            if average >= FAST || acks.len() >= ACK_BATCH || oldest.elapsed() >= ACK_DELAY {
                self.flush(&mut acks);
            }
        }
        self.flush(&mut acks);
    }

    fn flush(&self, acks: &mut Vec<Job>) {
        if acks.is_empty() {
            return;
        }
        let counters = &self.queue.inner.counters;
        if let Err(e) = self.queue.ack_all(acks) {
            log::warn!(
                "queue {}: could not acknowledge {} job(s) ({e}); they stay pending and are claimed after the idle time",
                self.queue.name(),
                acks.len()
            );
        }
        counters.in_flight.fetch_sub(acks.len() as u64, Relaxed);
        acks.clear();
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

    /// Runs one job; returns it when it succeeded (to acknowledge, still counted in flight).
    fn handle(&self, job: Job) -> Option<Job> {
        let counters = &self.queue.inner.counters;
        if !self.admitted() {
            hand_back(&self.queue, &job);
            return None;
        }
        let Ok(slot) = self.slot() else {
            hand_back(&self.queue, &job);
            return None;
        };
        counters.in_flight.fetch_add(1, Relaxed);
        let outcome = match catch_unwind(AssertUnwindSafe(|| (self.handler)(&job))) {
            Ok(r) => r,
            Err(panic) => Err(panic_text(&panic)),
        };
        drop(slot);
        let error = match outcome {
            Ok(()) => return Some(job),
            Err(error) => error,
        };
        let settled = self.queue.fail(&job, &error);
        counters.in_flight.fetch_sub(1, Relaxed);
        if let Err(e) = settled {
            log::warn!(
                "queue {}: could not settle job {} ({e}); it stays pending and is claimed after the idle time",
                self.queue.name(),
                job.origin()
            );
        }
        None
    }
}

/// What [`Workers::shutdown`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs read but not started, handed back to the stream for other consumers.
    pub handed_back: usize,
    /// Worker threads still running a handler when the shutdown timeout passed (waited for
    /// anyway: threads are never left behind).
    pub overran: usize,
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
    reader: Option<JoinHandle<()>>,
    threads: Vec<JoinHandle<()>>,
    rx: Receiver<Job>,
    shutdown_timeout: Duration,
    done: bool,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("queue", &self.queue.name())
            .field("consumer", &self.consumer)
            .field("threads", &self.threads.len())
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// The consumer name the pool reads as.
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

    /// Stops taking new jobs, hands back the ones read but not started, waits for running
    /// handlers (they finish and are acknowledged) up to the shutdown timeout, then joins
    /// every thread.
    pub fn shutdown(mut self) -> Result<ShutdownReport> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<ShutdownReport> {
        let start = Instant::now();
        let deadline = crate::util::time::add(start, self.shutdown_timeout);
        self.done = true;
        self.stop.store(true, Relaxed);
        let mut panicked = None;
        // The reader may be blocked in a read (up to the block time plus the response
        // timeout in a black hole): wait for it within the shutdown timeout; a job it reads
        // after that stays pending in the group and is claimed later (at-least-once).
        if let Some(Err(p)) = self
            .reader
            .take()
            .map(|t| crate::util::threads::join_within(t, crate::util::time::left(deadline)))
        {
            panicked = Some(("redkit-q-reader", p));
        }
        let mut handed_back = 0;
        while let Ok(job) = self.rx.try_recv() {
            hand_back(&self.queue, &job);
            handed_back += 1;
        }
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let overran = self.threads.iter().filter(|t| !t.is_finished()).count();
        if overran > 0 {
            log::warn!(
                "queue {}: {overran} handler(s) still running after {:?}; waiting for them",
                self.queue.name(),
                self.shutdown_timeout
            );
        }
        for t in self.threads.drain(..) {
            if let Err(p) = crate::util::threads::join(t) {
                panicked = Some(("redkit-q-worker", p));
            }
        }
        // A worker may have handed back a job while stopping; anything still queued too.
        while let Ok(job) = self.rx.try_recv() {
            hand_back(&self.queue, &job);
            handed_back += 1;
        }
        if let Some((thread, reason)) = panicked {
            return Err(Error::Background { thread, reason });
        }
        Ok(ShutdownReport {
            handed_back,
            overran,
            took: start.elapsed(),
        })
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
