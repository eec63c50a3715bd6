//! Write-behind: a cache write now, the store write later, coalesced per key, at-least-once.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use redis::Value;

use super::millis;
use crate::cache::{Cache, CacheValue};
use crate::client::Redis;
use crate::error::{Error, Result};
use crate::script::{static_script, Pipeline};

static_script!(write_script, "wb_write.lua");
static_script!(take_script, "wb_take.lua");
static_script!(settle_script, "wb_settle.lua");

/// One store write a [`Flusher`] hands to the store function.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The latest value written (encoded as its [`CacheValue`]).
    pub value: Vec<u8>,
    /// The write's version: increasing over every write of this write-behind, never
    /// reused. A store that keeps the highest it saw is immune to a late, older write.
    pub version: u64,
}

impl Write {
    /// The value decoded as `V`.
    pub fn decode<V: CacheValue>(&self) -> std::result::Result<V, String> {
        V::decode(&self.value)
    }
}

struct Keys {
    values: String,
    versions: String,
    due: String,
    leases: String,
    owners: String,
    counter: String,
}

struct Inner {
    redis: Redis,
    name: String,
    keys: Keys,
    cache: Option<Cache>,
    delay: Duration,
    batch: usize,
    lease: Duration,
    retry_delay: Duration,
    shutdown_timeout: Duration,
    stored: AtomicU64,
    store_calls: AtomicU64,
    store_failures: AtomicU64,
}

/// Write-behind: a cache write now, the store write later, coalesced per key,
/// at-least-once. This is the writing side (cheap to clone); [`Flusher`]s do the store
/// writes.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::cache::Cache;
/// use redkit::queue::{WriteBehind, Write};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let cache = Cache::new(&redis, "profiles")?;
/// let behind = WriteBehind::builder(&redis, "profiles")
///     .cache(&cache)
///     .delay(Duration::from_millis(500))
///     .build()?;
///
/// // In the request path: the cache has it at once; the store gets it within ~500 ms.
/// behind.write("user:42", &"Ada".to_owned())?;
///
/// // In one or more worker processes: the store writes, a batch at a time.
/// let flusher = behind.flusher(|batch: &[Write]| {
///     for w in batch {
///         // UPDATE profiles SET name = $2, version = $3 WHERE id = $1 AND version < $3
///         let _ = (&w.key, w.decode::<String>(), w.version);
///     }
///     Ok::<(), String>(())
/// })?;
/// // ... on the way out: everything written so far goes to the store first.
/// flusher.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ## How it works, and what it guarantees
///
/// Under the hash tag `{name}` (`redkit:wb:{name}:...`): a hash of the latest value of each
/// key not yet stored, a hash of their versions (a counter over every write, never reused),
/// a sorted set of when each is due (the first write since its last store write, plus the
/// delay) and the leases of keys being stored. [`WriteBehind::write`] records the value
/// (one script) and then writes the cache. A [`Flusher`] takes due keys with a lease (one
/// script), calls the store with their latest values, and on success removes each entry
/// unless a newer write came meanwhile (that one stays, due after the delay): **1,000 writes
/// of one key within the delay are one store write.**
///
/// - **At-least-once**: an entry leaves only after the store accepted a version at least as
///   new. A flusher that dies (or whose store call outlives the
///   [lease](WriteBehindBuilder::lease)) leaves its keys leased; when the lease ends they are
///   due again, for any flusher. So the store can see a version twice, or (a flusher stalled
///   past its lease and then writing) an older version after a newer one: pass
///   [`Write::version`] to the store and keep the highest (`WHERE version < $new`), as with
///   fencing tokens.
/// - One key is never in two store calls at once (while its lease holds).
/// - A write whose cache write fails after the record was queued returns the error; the
///   store still gets the value. Nothing is lost on the store side; the cache may be stale
///   until its TTL.
/// - [`Flusher::shutdown`] (and its drop) stores everything written so far, due or not,
///   within its [shutdown timeout](WriteBehindBuilder::shutdown_timeout).
#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("name", &self.inner.name)
            .field("delay", &self.inner.delay)
            .field("cache", &self.inner.cache.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`WriteBehind`]; made by [`WriteBehind::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct WriteBehindBuilder {
    redis: Redis,
    name: String,
    cache: Option<Cache>,
    delay: Duration,
    batch: usize,
    lease: Duration,
    retry_delay: Duration,
    shutdown_timeout: Duration,
}

impl WriteBehindBuilder {
    /// Writes also go to this cache, at once ([`Cache::set`], its default TTL). Defaults to
    /// none (the record for the store only).
    pub fn cache(mut self, cache: &Cache) -> Self {
        self.cache = Some(cache.clone());
        self
    }

    /// How long a key waits for more writes before its store write (counted from its first
    /// write since its last store write). Defaults to 1 s.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// The most keys in one store call. Defaults to 100.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// How long a flusher holds the keys it took: past it (the flusher died, or its store
    /// call is that slow) they are due again for any flusher. Must exceed the longest store
    /// call. Defaults to 30 s.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How long after a failed store call its keys are due again. Defaults to 1 s.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    /// The longest a [`Flusher::shutdown`] spends storing what is left. Defaults to 10 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<WriteBehind> {
        super::check_name("write_behind.name", &self.name)?;
        if self.batch == 0 {
            return Err(Error::config("write_behind.batch", "must be at least 1"));
        }
        for (setting, d) in [
            ("write_behind.delay", self.delay),
            ("write_behind.lease", self.lease),
            ("write_behind.retry_delay", self.retry_delay),
        ] {
            if d < Duration::from_millis(1) {
                return Err(Error::config(setting, "must be at least 1 ms"));
            }
        }
        let base = self.redis.key(&format!("redkit:wb:{{{}}}", self.name));
        Ok(WriteBehind {
            inner: Arc::new(Inner {
                keys: Keys {
                    values: format!("{base}:values"),
                    versions: format!("{base}:versions"),
                    due: format!("{base}:due"),
                    leases: format!("{base}:leases"),
                    owners: format!("{base}:owners"),
                    counter: format!("{base}:counter"),
                },
                redis: self.redis,
                name: self.name,
                cache: self.cache,
                delay: self.delay,
                batch: self.batch,
                lease: self.lease,
                retry_delay: self.retry_delay,
                shutdown_timeout: self.shutdown_timeout,
                stored: AtomicU64::new(0),
                store_calls: AtomicU64::new(0),
                store_failures: AtomicU64::new(0),
            }),
        })
    }
}

/// Counters of a [`WriteBehind`] in this process.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBehindStats {
    /// Keys waiting for their store write (on the server, every process's).
    pub pending: u64,
    /// Entries this process's flushers removed after the store took them.
    pub stored: u64,
    /// Store calls this process made.
    pub store_calls: u64,
    /// Store calls that failed (their keys were retried).
    pub store_failures: u64,
}

impl WriteBehind {
    /// Starts building a write-behind named `name`.
    pub fn builder(redis: &Redis, name: &str) -> WriteBehindBuilder {
        WriteBehindBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            cache: None,
            delay: Duration::from_secs(1),
            batch: 100,
            lease: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Records `value` for the store (coalesced with earlier writes of `key` not stored
    /// yet), then writes it to the cache, if one was given. Returns the write's version.
    /// Not resent when its fate is unknown (a second run would only be a newer version of
    /// the same value, but the error tells the caller).
    pub fn write<V: CacheValue>(&self, key: &str, value: &V) -> Result<u64> {
        let mut bytes = Vec::new();
        value.encode(&mut bytes).map_err(|reason| Error::Decode {
            key: key.to_owned(),
            reason: format!("could not encode: {reason}"),
        })?;
        let k = &self.inner.keys;
        let call = write_script()
            .key(&k.values)
            .key(&k.versions)
            .key(&k.due)
            .key(&k.counter)
            .arg(key)
            .arg(bytes)
            .arg(millis(self.inner.delay));
        let version: u64 = self.inner.redis.run(|con| call.invoke(con))?;
        if let Some(cache) = &self.inner.cache {
            cache.set(key, value)?;
        }
        Ok(version)
    }

    /// Keys waiting for their store write (every process's).
    pub fn pending(&self) -> Result<u64> {
        self.inner
            .redis
            .query(redis::cmd("HLEN").arg(&self.inner.keys.values))
    }

    /// The counters of this process (and the pending count from the server).
    pub fn stats(&self) -> Result<WriteBehindStats> {
        Ok(WriteBehindStats {
            pending: self.pending()?,
            stored: self.inner.stored.load(Relaxed),
            store_calls: self.inner.store_calls.load(Relaxed),
            store_failures: self.inner.store_failures.load(Relaxed),
        })
    }

    /// Takes up to a batch of keys (due ones, or all with `force`) and stores them; returns
    /// how many were taken (0: nothing to do).
    fn step<E: std::fmt::Display>(
        &self,
        token: &str,
        force: bool,
        store: &dyn Fn(&[Write]) -> std::result::Result<(), E>,
    ) -> Result<usize> {
        let i = &self.inner;
        let k = &i.keys;
        let call = take_script()
            .key(&k.values)
            .key(&k.versions)
            .key(&k.due)
            .key(&k.leases)
            .key(&k.owners)
            .arg(i.batch)
            .arg(millis(i.lease))
            .arg(if force { "1" } else { "0" })
            .arg(token);
        // Not resent: a lost reply would leave the keys leased (due again after the lease).
        let v: Value = i.redis.run(|con| call.invoke(con))?;
        let Value::Array(flat) = v else {
            return Ok(0);
        };
        let mut batch = Vec::with_capacity(flat.len() / 3);
        for w in flat.chunks(3) {
            let [key, value, version] = w else { continue };
            let key = match key {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => continue,
            };
            let value = match value {
                Value::BulkString(b) => b.clone(),
                _ => Vec::new(),
            };
            let version = match version {
                Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            batch.push(Write {
                key,
                value,
                version,
            });
        }
        if batch.is_empty() {
            return Ok(0);
        }
        i.store_calls.fetch_add(1, Relaxed);
        let outcome = catch(|| store(&batch));
        let (mode, delay) = match &outcome {
            Ok(()) => ("done", i.delay),
            Err(e) => {
                i.store_failures.fetch_add(1, Relaxed);
                log::warn!(
                    "write-behind {}: the store failed for {} key(s) ({e}); retried in {:?}",
                    i.name,
                    batch.len(),
                    i.retry_delay
                );
                ("failed", i.retry_delay)
            }
        };
        let mut call = settle_script()
            .key(&k.values)
            .key(&k.versions)
            .key(&k.due)
            .key(&k.leases)
            .key(&k.owners)
            .arg(mode)
            .arg(millis(delay))
            .arg(token);
        for w in &batch {
            call = call.arg(&w.key).arg(w.version.to_string());
        }
        // Resending is safe: settling a key twice finds it settled (not leased to us).
        let removed: u64 = i.redis.run_idempotent(|con| call.invoke(con))?;
        i.stored.fetch_add(removed, Relaxed);
        Ok(batch.len())
    }

    /// Stores everything written so far, due or not, on the calling thread, until nothing
    /// is left (keys leased by other flushers excepted) or a store call fails; returns how
    /// many store writes it made.
    pub fn flush_with<E: std::fmt::Display>(
        &self,
        store: impl Fn(&[Write]) -> std::result::Result<(), E>,
    ) -> Result<u64> {
        let token = crate::util::ids::token();
        let mut total = 0;
        let before = self.inner.store_failures.load(Relaxed);
        loop {
            let n = self.step(&token, true, &store)?;
            if self.inner.store_failures.load(Relaxed) != before {
                return Err(Error::Background {
                    thread: "write-behind flush",
                    reason: "the store failed (see the log); the keys stay queued".to_owned(),
                });
            }
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Starts a [`Flusher`] thread (`redkit-wb-flush`) that hands due keys to `store`, a
    /// batch at a time. Any number of flushers, in any number of processes, may run.
    pub fn flusher<F, E>(&self, store: F) -> Result<Flusher>
    where
        F: Fn(&[Write]) -> std::result::Result<(), E> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, stopped) = bounded::<()>(0);
        let wb = self.clone();
        let poll =
            (self.inner.delay / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let thread = std::thread::Builder::new()
            .name("redkit-wb-flush".into())
            .spawn(move || {
                let token = crate::util::ids::token();
                let mut failing = false;
                let deadline;
                loop {
                    let wait = match wb.step(&token, false, &store) {
                        Ok(n) => {
                            if failing {
                                log::info!("write-behind {}: works again", wb.inner.name);
                                failing = false;
                            }
                            if n > 0 {
                                Duration::ZERO
                            } else {
                                poll
                            }
                        }
                        Err(Error::Closed) => return,
                        Err(e) => {
                            if !failing {
                                log::warn!("write-behind {}: {e}", wb.inner.name);
                                failing = true;
                            }
                            Duration::from_millis(100)
                        }
                    };
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => {
                            deadline = crate::util::time::after(wb.inner.shutdown_timeout);
                            break;
                        }
                    }
                }
                // The final flush: everything written so far, while time is left.
                while Instant::now() < deadline {
                    let failures = wb.inner.store_failures.load(Relaxed);
                    match wb.step(&token, true, &store) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) => {
                            log::warn!(
                                "write-behind {}: final flush failed: {e}; the keys stay queued",
                                wb.inner.name
                            );
                            return;
                        }
                    }
                    if wb.inner.store_failures.load(Relaxed) != failures {
                        log::warn!(
                            "write-behind {}: the store failed in the final flush; the rest stays queued",
                            wb.inner.name
                        );
                        return;
                    }
                }
                log::warn!(
                    "write-behind {}: the final flush ran out of time; the rest stays queued",
                    wb.inner.name
                );
            })
            .map_err(|e| Error::Background {
                thread: "redkit-wb-flush",
                reason: format!("could not start: {e}"),
            })?;
        Ok(Flusher {
            wb: self.clone(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Deletes everything queued for the store (an operator's reset). Returns how many keys
    /// were waiting.
    pub fn discard_all(&self) -> Result<u64> {
        let k = &self.inner.keys;
        let (n, _): (u64, u64) = self.inner.redis.pipeline(
            Pipeline::new()
                .cmd("HLEN")
                .arg(&k.values)
                .cmd("DEL")
                .arg(&k.values)
                .arg(&k.versions)
                .arg(&k.due)
                .arg(&k.leases)
                .arg(&k.owners),
        )?;
        Ok(n)
    }
}

/// Runs the store function, a panic counted as a failure.
fn catch<E: std::fmt::Display>(
    f: impl FnOnce() -> std::result::Result<(), E>,
) -> std::result::Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(super::panic_text(&panic)),
    }
}

/// A thread storing due keys of a [`WriteBehind`]; made by [`WriteBehind::flusher`].
/// Dropping it stops it like [`Flusher::shutdown`].
#[must_use = "dropping a Flusher stops it"]
pub struct Flusher {
    wb: WriteBehind,
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("write_behind", &self.wb.inner.name)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// Stops the thread after a final flush of everything written so far (within the
    /// shutdown timeout, plus one store call and one response timeout at most).
    pub fn shutdown(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        self.stop.take();
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        crate::util::threads::join(t).map_err(|reason| Error::Background {
            thread: "redkit-wb-flush",
            reason,
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            log::warn!("write-behind {}: {e}", self.wb.inner.name);
        }
    }
}
