//! Delayed jobs: a sorted set by due time, moved to the ready queue by a Lua script.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::{member, token};
use crate::client::Redis;
use crate::error::{Error, Result};
use crate::script::{Script, ScriptCall};

static DUE: &str = include_str!("due.lua");
static SCHEDULE: &str = include_str!("schedule.lua");

/// Where due jobs go.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A stream queue's streams, one per priority level (`XADD`).
    Stream {
        keys: Vec<String>,
        max_len: Option<u64>,
    },
    /// A list queue's ready list (`LPUSH`).
    List { key: String },
}

/// The delayed set of a queue: jobs that become ready at a time. Made by
/// [`StreamQueue::delayed`](super::StreamQueue::delayed) or
/// [`ListQueue::delayed`](super::ListQueue::delayed); cheap to clone.
///
/// A job is due by the server's clock; moving it to the ready queue is one atomic script
/// (`ZRANGEBYSCORE`, `XADD`/`LPUSH`, `ZREM`), so however many [`Scheduler`]s run, in however
/// many processes, each job is moved exactly once.
///
/// ```no_run
/// use std::time::Duration;
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let queue = redkit::ListQueue::builder(&redis, "reminders").build()?;
/// let delayed = queue.delayed();
/// delayed.schedule_in(b"call back", Duration::from_secs(60))?;
/// let scheduler = delayed.scheduler()?; // moves due jobs every 10 ms until dropped
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Clone)]
pub struct Delayed {
    redis: Redis,
    key: String,
    target: Target,
    due: Script,
    schedule: Script,
}

impl std::fmt::Debug for Delayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayed")
            .field("key", &self.key)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Delayed {
    pub(crate) fn new(redis: Redis, key: String, target: Target) -> Delayed {
        Delayed {
            redis,
            key,
            target,
            due: Script::new(DUE),
            schedule: Script::new(SCHEDULE),
        }
    }

    /// The sorted set's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Schedules a job due `delay` from now on the server's clock.
    pub fn schedule_in(&self, payload: impl AsRef<[u8]>, delay: Duration) -> Result<()> {
        let call = self
            .schedule
            .key(&self.key)
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .arg(member(&token(), 0, payload.as_ref()));
        // A unique member: adding it twice changes nothing, so resending is safe.
        let _: i64 = self.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(())
    }

    /// Schedules a job due at `at` (this machine's clock; a time in the past is due now).
    pub fn schedule_at(&self, payload: impl AsRef<[u8]>, at: SystemTime) -> Result<()> {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::config("schedule_at", "the time is before 1970"))?
            .as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        let m = member(&token(), 0, payload.as_ref());
        self.redis
            .query_idempotent::<()>(redis::cmd("ZADD").arg(&self.key).arg(ms).arg(m))
    }

    /// Jobs waiting (not due yet, or due and not moved yet).
    pub fn len(&self) -> Result<u64> {
        let n = self.redis.query(redis::cmd("ZCARD").arg(&self.key))?;
        self.redis.export().queue_depth("delayed", &self.key, n);
        Ok(n)
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    pub(crate) fn due_call(&self, limit: usize) -> ScriptCall {
        let (kind, keys, max_len) = match &self.target {
            Target::Stream { keys, max_len } => ("stream", keys.as_slice(), max_len.unwrap_or(0)),
            Target::List { key } => ("list", std::slice::from_ref(key), 0),
        };
        self.due
            .key(&self.key)
            .key(keys)
            .arg(kind)
            .arg(limit)
            .arg(max_len)
    }

    /// Moves due jobs (at most 1000) to the ready queue now; returns how many moved and how
    /// long until the next one is due (`None`: nothing waits).
    pub fn move_due(&self) -> Result<(usize, Option<Duration>)> {
        let call = self.due_call(1000);
        let (moved, next): (i64, i64) = self.redis.run(|con| call.invoke(con))?;
        let next = u64::try_from(next).ok().map(Duration::from_millis);
        Ok((usize::try_from(moved).unwrap_or(0), next))
    }

    /// Starts a [`Scheduler`] thread that moves due jobs, looking every 10 ms.
    pub fn scheduler(&self) -> Result<Scheduler> {
        self.scheduler_every(Duration::from_millis(10))
    }

    /// Starts a [`Scheduler`] thread that looks for due jobs every `poll` (sooner when it
    /// knows the next job is due sooner).
    pub fn scheduler_every(&self, poll: Duration) -> Result<Scheduler> {
        if poll < Duration::from_millis(1) {
            return Err(Error::config("scheduler.poll", "must be at least 1 ms"));
        }
        let delayed = self.clone();
        let periodic = Periodic::spawn(
            "redkit-q-sched",
            format!("scheduler for {}", self.key),
            poll,
            move || {
                let (n, next) = delayed.move_due()?;
                let wait = if n >= 1000 {
                    Duration::ZERO
                } else {
                    next.map_or(poll, |d| d.min(poll))
                };
                Ok((n as u64, wait))
            },
        )?;
        Ok(Scheduler { periodic })
    }
}

/// A thread (`redkit-q-sched`) moving due jobs to the ready queue; made by
/// [`Delayed::scheduler`]. Dropping it stops the thread and waits for it.
#[must_use = "dropping a Scheduler stops it"]
pub struct Scheduler {
    periodic: Periodic,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("moved", &self.moved())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Jobs this scheduler moved so far.
    pub fn moved(&self) -> u64 {
        self.periodic.count()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.periodic.shut_down()
    }
}

/// A named thread that runs `step` again and again (it returns a count and how long to wait
/// before the next run) until stopped; joined on drop.
pub(crate) struct Periodic {
    name: &'static str,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    count: Arc<AtomicU64>,
}

impl Periodic {
    pub(crate) fn spawn(
        name: &'static str,
        what: String,
        error_wait: Duration,
        mut step: impl FnMut() -> Result<(u64, Duration)> + Send + 'static,
    ) -> Result<Periodic> {
        let (stop, stopped) = bounded::<()>(0);
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let wait = match step() {
                        Ok((n, wait)) => {
                            if failing {
                                log::info!("{what}: works again");
                                failing = false;
                            }
                            counter.fetch_add(n, Relaxed);
                            wait
                        }
                        Err(Error::Closed) => return,
                        Err(e) => {
                            if !failing {
                                log::warn!("{what}: {e}");
                                failing = true;
                            }
                            error_wait.max(Duration::from_millis(100))
                        }
                    };
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .map_err(|e| Error::Background {
                thread: name,
                reason: format!("could not start: {e}"),
            })?;
        Ok(Periodic {
            name,
            stop: Some(stop),
            thread: Some(thread),
            count,
        })
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub(crate) fn shut_down(&mut self) -> Result<()> {
        self.stop.take();
        let joined = self
            .thread
            .take()
            .map_or(Ok(()), crate::util::threads::join);
        joined.map_err(|reason| Error::Background {
            thread: self.name,
            reason,
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            log::warn!("{e}");
        }
    }
}
