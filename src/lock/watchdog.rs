//! The watchdog: one background thread per [`Redis`] handle that runs every lock renewal and
//! every leader-election tick of that handle.
//!
//! It is started by the first task that needs it and stopped (and joined) when the handle is
//! closed or its last clone dropped. It holds the handle weakly and each task weakly, so
//! neither a guard nor the handle is kept alive by it: a task whose owner is gone is simply
//! forgotten at its next due time.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{debug, warn};
use parking_lot::Mutex;

use crate::client::WeakRedis;
use crate::error::{Error, Result};
use crate::Redis;

/// The watchdog thread's name.
/// (At most 15 characters: Linux cuts longer thread names.)
pub(crate) const THREAD_NAME: &str = "redkit-lockdog";

/// Work the watchdog runs from time to time.
pub(crate) trait Task: Send + Sync {
    /// Runs once; returns how long to wait before the next run, `None` when done.
    fn run(&self, redis: &Redis) -> Option<Duration>;
}

struct Entry {
    due: Instant,
    task: Weak<dyn Task>,
}

/// The lock bookkeeping of one handle: the watchdog thread and how many waiters block on a
/// pooled connection right now.
#[derive(Default)]
pub(crate) struct HandleLocks {
    watchdog: Mutex<Option<Watchdog>>,
    closed: AtomicBool,
    /// Waiters blocked in `BLPOP` right now, each on a dedicated connection (see `wait.rs`).
    pub(crate) blocking_waiters: AtomicUsize,
    /// Dedicated connections of finished waits, kept for the next waiters.
    pub(crate) idle_waiters: Mutex<Vec<crate::DedicatedConnection>>,
    /// Whether the server knows `WAITAOF`: 0 not asked yet, 1 no, 2 yes (see `ack.rs`).
    waitaof: AtomicU8,
}

impl std::fmt::Debug for HandleLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleLocks")
            .field("watchdog", &self.watchdog.lock().is_some())
            .field(
                "blocking_waiters",
                &self.blocking_waiters.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl HandleLocks {
    /// Runs `task` on the watchdog thread after `after` (starting the thread if needed).
    pub(crate) fn schedule(
        &self,
        redis: &Redis,
        task: Weak<dyn Task>,
        after: Duration,
    ) -> Result<()> {
        let mut slot = self.watchdog.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let watchdog = match slot.as_mut() {
            Some(w) => w,
            None => slot.insert(Watchdog::spawn(redis.downgrade())?),
        };
        watchdog
            .tasks
            .send(Entry {
                due: crate::util::time::add(Instant::now(), after),
                task,
            })
            .map_err(|_| Error::Background {
                thread: THREAD_NAME,
                reason: "the watchdog thread has stopped".into(),
            })
    }

    /// Whether the server knows `WAITAOF`, if asked already.
    pub(crate) fn waitaof(&self) -> Option<bool> {
        match self.waitaof.load(Ordering::Acquire) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    pub(crate) fn set_waitaof(&self, known: bool) {
        self.waitaof
            .store(if known { 2 } else { 1 }, Ordering::Release);
    }

    /// Whether the watchdog thread is running.
    pub(crate) fn watchdog_running(&self) -> bool {
        self.watchdog.lock().is_some()
    }

    /// Stops the watchdog thread and waits for it (unless called on that very thread).
    pub(crate) fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle_waiters.lock().clear();
        let watchdog = self.watchdog.lock().take();
        if let Some(mut w) = watchdog {
            if let Err(panic) = w.stop() {
                warn!("the lock watchdog thread had panicked: {panic}");
            }
        }
    }
}

struct Watchdog {
    tasks: Sender<Entry>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn spawn(redis: WeakRedis) -> Result<Watchdog> {
        let (tasks_tx, tasks_rx) = crossbeam_channel::unbounded();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(redis, tasks_rx, stop_rx))
            .map_err(|e| Error::Background {
                thread: THREAD_NAME,
                reason: format!("cannot start: {e}"),
            })?;
        Ok(Watchdog {
            tasks: tasks_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) -> std::result::Result<(), String> {
        drop(self.stop.take());
        // When the watchdog dropped the last clone of the handle itself, this returns at
        // once and the thread sees the stop signal afterwards.
        self.thread
            .take()
            .map_or(Ok(()), crate::util::threads::join)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Err(panic) = self.stop() {
            warn!("the lock watchdog thread had panicked: {panic}");
        }
    }
}

/// How long the thread sleeps when it has nothing to do (a new task wakes it at once).
const IDLE: Duration = Duration::from_secs(3600);

fn run(redis: WeakRedis, tasks: Receiver<Entry>, stop: Receiver<()>) {
    debug!("lock watchdog started");
    let mut entries: Vec<Entry> = Vec::new();
    let stopped = |stop: &Receiver<()>| matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
    loop {
        let now = Instant::now();
        let wait = entries
            .iter()
            .map(|e| e.due.saturating_duration_since(now))
            .min()
            .unwrap_or(IDLE);
        crossbeam_channel::select! {
            recv(stop) -> _ => break,
            recv(tasks) -> entry => match entry {
                Ok(entry) => entries.push(entry),
                Err(_) => break,
            },
            default(wait) => {}
        }
        let now = Instant::now();
        if !entries.iter().any(|e| e.due <= now) {
            continue;
        }
        let Some(handle) = redis.upgrade() else {
            break;
        };
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries.drain(..) {
            if entry.due > now {
                kept.push(entry);
                continue;
            }
            // An owner that is gone (a dropped guard or member) is forgotten here.
            let Some(task) = entry.task.upgrade() else {
                continue;
            };
            if stopped(&stop) {
                kept.clear();
                break;
            }
            if let Some(after) = task.run(&handle) {
                kept.push(Entry {
                    due: crate::util::time::add(Instant::now(), after),
                    task: entry.task,
                });
            }
        }
        entries = kept;
        // This may drop the last clone of the handle, which stops this thread (see `stop`).
        drop(handle);
        if stopped(&stop) {
            break;
        }
    }
    debug!("lock watchdog stopped");
}
