//! The list queue's worker pool: N threads, each a consumer of its own, a keeper thread that
//! keeps the running ones alive and reaps dead consumers, a shutdown with a hard bound.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::delayed::Periodic;
use super::list::{ListJob, ListQueue};
use super::runner::ShutdownReport;
use super::{millis, panic_text};
use crate::error::{Error, Result};

/// How long one take waits: how soon an idle worker notices a stop.
const TICK: Duration = Duration::from_millis(100);

type HandlerFn = dyn Fn(&ListJob) -> std::result::Result<(), String> + Send + Sync;

impl ListQueue {
    /// Starts configuring a pool of worker threads for this queue.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let queue = redkit::ListQueue::builder(&redis, "mail").max_retries(3).build()?;
    /// let workers = queue.workers().threads(4).run(|job| {
    ///     let to = job.payload_str()?;
    ///     println!("mail to {to}");
    ///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// })?;
    /// workers.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn workers(&self) -> ListWorkersBuilder {
        ListWorkersBuilder {
            queue: self.clone(),
            threads: 4,
            shutdown_timeout: Duration::from_secs(10),
            consumer: None,
        }
    }
}

/// Configures a pool of worker threads over a [`ListQueue`]; made by
/// [`ListQueue::workers`].
#[must_use = "a builder does nothing until `run` is called"]
#[derive(Debug)]
pub struct ListWorkersBuilder {
    queue: ListQueue,
    threads: usize,
    shutdown_timeout: Duration,
    consumer: Option<String>,
}

impl ListWorkersBuilder {
    /// Worker threads, each a consumer with a processing list of its own. Defaults to 4.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// The longest [`ListWorkers::shutdown`] takes (see there). Defaults to 10 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// The consumers' names: `<name>-0`, `<name>-1`... Defaults to `<host>-<pid>-<n>`.
    pub fn consumer_name(mut self, name: &str) -> Self {
        self.consumer = Some(name.to_owned());
        self
    }

    /// Starts the worker threads (`redkit-q-wk-N`) and the keeper (`redkit-q-reaper`), which
    /// every half [`alive_ttl`](super::ListQueueBuilder::alive_ttl) keeps the consumers
    /// whose handler is running alive (a long job is not reaped while this process lives)
    /// and gives back the items of consumers that died ([`ListQueue::reap`]). An item is
    /// acknowledged when `handler` returns `Ok`; an `Err` (or a panic, caught) is retried
    /// after the backoff or dead-lettered ([`ListConsumer::fail`](super::ListConsumer::fail)).
    pub fn run<F, E>(self, handler: F) -> Result<ListWorkers>
    where
        F: Fn(&ListJob) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        if self.threads == 0 {
            return Err(Error::config("list_workers.threads", "must be at least 1"));
        }
        let handler: Arc<HandlerFn> =
            Arc::new(move |job: &ListJob| handler(job).map_err(|e| e.to_string()));
        let base = self.consumer.unwrap_or_else(super::consumer_name);
        let names: Vec<String> = (0..self.threads).map(|i| format!("{base}-{i}")).collect();
        let mut consumers = Vec::with_capacity(self.threads);
        for name in &names {
            consumers.push(self.queue.consumer_named(name)?);
        }
        let shared = Arc::new(Shared {
            queue: self.queue.clone(),
            handler,
            stop: AtomicBool::new(false),
            states: (0..self.threads).map(|_| Mutex::new(State::Idle)).collect(),
            names,
        });
        let keeper_shared = Arc::downgrade(&shared);
        let every = (self.queue.alive_ttl() / 2).max(Duration::from_millis(10));
        let keeper = Periodic::spawn(
            "redkit-q-reaper",
            format!("keeper of list queue {}", self.queue.name()),
            every,
            move || {
                let Some(shared) = keeper_shared.upgrade() else {
                    return Err(Error::Closed);
                };
                shared.keep_running_alive()?;
                Ok((shared.queue.reap()? as u64, every))
            },
        )?;
        let mut workers = ListWorkers {
            shared: shared.clone(),
            threads: Vec::new(),
            keeper: Some(keeper),
            shutdown_timeout: self.shutdown_timeout,
            done: false,
        };
        for (i, consumer) in consumers.into_iter().enumerate() {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("redkit-q-wk-{i}"))
                .spawn(move || shared.run(i, consumer))
                .map_err(|e| Error::Background {
                    thread: "redkit-q-worker",
                    reason: format!("could not start: {e}"),
                })?;
            workers.threads.push(t);
        }
        Ok(workers)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Running,
    /// A shutdown past its timeout gave the item back: the handler's result is dropped.
    Interrupted,
}

struct Shared {
    queue: ListQueue,
    handler: Arc<HandlerFn>,
    stop: AtomicBool,
    states: Vec<Mutex<State>>,
    names: Vec<String>,
}

impl Shared {
    fn run(&self, index: usize, mut consumer: super::ListConsumer) {
        let Some(state) = self.states.get(index) else {
            return;
        };
        let mut failing = false;
        while !self.stop.load(Relaxed) {
            let job = match consumer.recv_timeout(TICK) {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(Error::Closed) => break,
                Err(e) => {
                    if !failing {
                        log::warn!("list queue {}: take failed: {e}", self.queue.name());
                        failing = true;
                    }
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            failing = false;
            if self.stop.load(Relaxed) {
                break;
            }
            *state.lock() = State::Running;
            let outcome = match catch_unwind(AssertUnwindSafe(|| (self.handler)(&job))) {
                Ok(r) => r,
                Err(panic) => Err(panic_text(&panic)),
            };
            {
                let mut s = state.lock();
                let interrupted = *s == State::Interrupted;
                *s = State::Idle;
                if interrupted {
                    log::debug!(
                        "list queue {}: an item finished after the shutdown gave it back; result dropped",
                        self.queue.name()
                    );
                    return;
                }
            }
            let settled = match outcome {
                Ok(()) => consumer.ack(&job).map(drop),
                Err(error) => consumer.fail(&job, &error).map(drop),
            };
            if let Err(e) = settled {
                log::warn!(
                    "list queue {}: could not settle an item ({e}); it is given back when this consumer is reaped",
                    self.queue.name()
                );
            }
        }
        // Gives back an item taken as the stop came, and unregisters.
        if let Err(e) = consumer.close() {
            log::warn!(
                "list queue {}: could not close a consumer: {e}",
                self.queue.name()
            );
        }
    }

    /// Refreshes the liveness key of every consumer whose handler is running.
    fn keep_running_alive(&self) -> Result<()> {
        let ttl = millis(self.queue.alive_ttl());
        for (state, name) in self.states.iter().zip(&self.names) {
            if *state.lock() == State::Running {
                self.queue.redis().query_idempotent::<()>(
                    redis::cmd("SET")
                        .arg(self.queue.alive_key(name))
                        .arg(1)
                        .arg("PX")
                        .arg(ttl),
                )?;
            }
        }
        Ok(())
    }
}

/// A running pool of list-queue workers; made by [`ListWorkersBuilder::run`]. Dropping it
/// shuts it down like [`ListWorkers::shutdown`] (logging errors).
#[must_use = "dropping ListWorkers stops them"]
pub struct ListWorkers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    keeper: Option<Periodic>,
    shutdown_timeout: Duration,
    done: bool,
}

impl std::fmt::Debug for ListWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListWorkers")
            .field("queue", &self.shared.queue.name())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl ListWorkers {
    /// The consumers' names, one per thread.
    pub fn consumer_names(&self) -> &[String] {
        &self.shared.names
    }

    /// Asks the threads to stop without waiting; then call [`ListWorkers::shutdown`].
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Relaxed);
    }

    /// Stops taking items; waits for running handlers up to the shutdown timeout (less a
    /// tenth of it, at most 200 ms, kept for the hand-backs); then gives the items of
    /// handlers still running back to the ready list (another consumer runs them:
    /// at-least-once) and returns without those threads, which end when their handlers
    /// return (their results dropped).
    pub fn shutdown(mut self) -> Result<ShutdownReport> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<ShutdownReport> {
        let start = Instant::now();
        self.done = true;
        self.shared.stop.store(true, Relaxed);
        let deadline = crate::util::time::add(start, self.shutdown_timeout);
        let reserve = (self.shutdown_timeout / 10).min(Duration::from_millis(200));
        let interrupt_at = deadline.checked_sub(reserve).unwrap_or(deadline);
        while Instant::now() < interrupt_at && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut interrupted = 0;
        let mut handed_back = 0;
        for (state, name) in self.shared.states.iter().zip(&self.shared.names) {
            {
                let mut s = state.lock();
                if *s != State::Running {
                    continue;
                }
                *s = State::Interrupted;
            }
            interrupted += 1;
            let call = self.shared.queue.reap_call(name, true);
            match self
                .shared
                .queue
                .redis()
                .run(|con| call.invoke::<i64>(con))
            {
                Ok(n) => handed_back += usize::try_from(n).unwrap_or(0),
                Err(e) => log::warn!(
                    "list queue {}: could not give back the item of {name} ({e}); the reaper gives it back once the consumer's liveness expires",
                    self.shared.queue.name()
                ),
            }
        }
        let mut panicked = None;
        if let Some(mut keeper) = self.keeper.take() {
            if let Err(e) = keeper.shut_down() {
                panicked = Some(e);
            }
        }
        let (finished, running): (Vec<_>, Vec<_>) =
            self.threads.drain(..).partition(|t| t.is_finished());
        for t in finished {
            if let Err(reason) = crate::util::threads::join(t) {
                panicked = Some(Error::Background {
                    thread: "redkit-q-worker",
                    reason,
                });
            }
        }
        // Not joined: each ends when its handler returns.
        drop(running);
        if let Some(e) = panicked {
            return Err(e);
        }
        if interrupted > 0 {
            log::warn!(
                "list queue {}: {interrupted} handler(s) still running after {:?}: their items were given back",
                self.shared.queue.name(),
                self.shutdown_timeout
            );
        }
        Ok(ShutdownReport {
            handed_back: handed_back.saturating_sub(interrupted),
            interrupted,
            took: start.elapsed(),
        })
    }
}

impl Drop for ListWorkers {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.shut_down() {
                log::warn!("list queue {}: {e}", self.shared.queue.name());
            }
        }
    }
}
