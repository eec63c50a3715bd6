//! A near cache: an in-process copy of what this process reads from Redis, kept coherent by
//! the server (client-side caching with `CLIENT TRACKING`, Redis 6.0 or later).
//!
//! ```no_run
//! use redkit::near::NearCache;
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! let near = NearCache::builder(&redis)
//!     .max_entries(100_000)
//!     .max_bytes(64 * 1024 * 1024)
//!     .build()?;
//!
//! // The first read goes to Redis; later ones are answered in process (well under a
//! // microsecond) until someone changes the key.
//! let name: Option<String> = near.get("user:42:name")?;
//! let profile: std::collections::HashMap<String, String> =
//!     near.query(redis::cmd("HGETALL").arg("user:42"))?;
//! println!("{name:?} {profile:?}, hit ratio {:.2}", near.stats().hit_ratio());
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! # How it stays coherent
//!
//! A thread of the near cache holds a *tracking connection* to the server. In the default
//! mode the server remembers every key read through the near cache's own *reader
//! connections* (`CLIENT TRACKING on REDIRECT <tracking connection>`) and, when one of those
//! keys changes (written, deleted, expired, evicted), sends an invalidation to the tracking
//! connection, which removes the key from the near cache. With
//! [`broadcast`](NearCacheBuilder::broadcast) the server instead sends invalidations for
//! every key under the given prefixes, whoever read it (`BCAST`); keys outside the prefixes
//! are then read from Redis every time and never kept. On RESP3 the invalidations arrive as
//! push messages; on RESP2 the tracking connection subscribes to `__redis__:invalidate`.
//! ([`protocol`](NearCacheBuilder::protocol) picks; the handle's protocol by default.)
//!
//! - **The race.** A read registers its key before it is sent. If an invalidation of that
//!   key arrives before its reply is stored (the reply may carry the old value), the reply
//!   is returned to its caller but not stored.
//! - **Flush notices.** `FLUSHALL`/`FLUSHDB` on the server clears the near cache.
//! - **Losses.** When the tracking connection or, in the default mode, a reader connection
//!   is lost (an error, a server restart, `CLIENT KILL`, a Sentinel failover, a cluster node
//!   that is no longer a master), invalidations may have been missed: the near cache is
//!   cleared before anything else is served, no read in flight is stored, and the thread
//!   reconnects with backoff. Until tracking is back, reads go to Redis and nothing is kept.
//! - **Silence.** The tracking connection `PING`s every [`heartbeat`](NearCacheBuilder::heartbeat);
//!   its answer proves every invalidation generated before it has been applied. Hits are
//!   served only while every connection the near cache depends on was confirmed within
//!   [`max_silence`](NearCacheBuilder::max_silence): a connection that goes silent (a black
//!   hole, a frozen server) stops the hits by then, without waiting for any timeout, and
//!   counts as lost.
//!
//! # What a caller can see (the consistency model)
//!
//! - A hit returns a value that was current at some moment after the last write that was
//!   acknowledged, by anyone, before the read started, **except** for writes whose
//!   invalidation had not been applied yet: in normal operation that delay is the time an
//!   invalidation takes to travel to this process (measured on loopback in the tests:
//!   well under a millisecond at the median). Once an invalidation was applied, no read
//!   returns an older value.
//! - A write made by this process on another connection is seen by a later read of this
//!   process only once its invalidation arrived (there is no read-your-writes across
//!   connections); [`NearCache::invalidate`] drops the local copy at once, and a
//!   [`Cache`](crate::cache::Cache) with a near level does so after its own writes.
//! - In a failure (lost or silent connections) a hit is never older than `max_silence`,
//!   and after the loss is noticed nothing from before it is served. With
//!   [`stale_if_error`](NearCacheBuilder::stale_if_error) (off by default), a read that
//!   fails because Redis is down (a connection error, a timeout, an open breaker) returns
//!   the last value seen instead, if it was known current at most that long ago.
//! - A key that expires on the server is invalidated when the server deletes it (at its
//!   next access, or by its expiry cycle, usually within a fraction of a second); until
//!   then a hit may return it. No entry outlives the near cache's [`ttl`](NearCacheBuilder::ttl).
//! - On a cluster each master has its own tracking connection; losing any of them clears
//!   the whole near cache.
//!
//! # What is cached
//!
//! [`NearCache::get`] and [`NearCache::mget`] (per key), and through [`NearCache::query`]
//! the read-only commands of one key whose reply depends only on that key: `GET`,
//! `GETRANGE`, `STRLEN`, `GETBIT`, `BITCOUNT`, `BITPOS`, `EXISTS` (one key), `TYPE`, `HGET`,
//! `HMGET`, `HGETALL`, `HKEYS`, `HVALS`, `HLEN`, `HEXISTS`, `HSTRLEN`, `LRANGE`, `LINDEX`,
//! `LLEN`, `LPOS`, `SMEMBERS`, `SISMEMBER`, `SMISMEMBER`, `SCARD`, `ZSCORE`, `ZMSCORE`,
//! `ZRANGE`, `ZRANGEBYSCORE`, `ZRANGEBYLEX`, `ZREVRANGE`, `ZREVRANGEBYSCORE`,
//! `ZREVRANGEBYLEX`, `ZRANK`, `ZREVRANK`, `ZCARD`, `ZCOUNT`, `ZLEXCOUNT`, `XLEN`, `GEOPOS`,
//! `GEODIST`, `GEOHASH`. Anything else is refused with [`Error::WrongConnection`]. Missing
//! keys are cached too (a nil is tracked like a value). Error replies are never cached.
//!
//! The in-process level is bounded by [`max_entries`](NearCacheBuilder::max_entries) and
//! [`max_bytes`](NearCacheBuilder::max_bytes) (keys, values and about 112 bytes of
//! bookkeeping per entry); when full it evicts with CLOCK (second chance: an entry read
//! since the hand last passed survives one more round). A reply larger than a
//! shard's share of the bytes (up to 1/64 of `max_bytes`) is not kept.
//!
//! # Connections and threads
//!
//! One tracking connection and thread (`redkit-near`) per node (one, or one per cluster
//! master), and up to [`readers`](NearCacheBuilder::readers) reader connections per node,
//! never shared with the pool (in the default mode their tracking state must stay). Misses
//! read through them without the handle's retries; when none can be had, when the breaker
//! is open, or when tracking is down, the read goes through the handle (retries, breaker)
//! and is not kept. A reader that times out fails the read with that error. Dropping the last
//! clone of the near cache (or [`NearCache::close`]) stops its threads within
//! [`CLOSE_BOUND`](crate::CLOSE_BOUND) and closes its connections.

mod commands;
mod store;
mod tracker;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, ServerErrorKind, Value};

use crate::breaker::BreakerState;
use crate::config::Protocol;
use crate::conn::Connector;
use crate::error::{Delivery, Error, Result};
use crate::telemetry::Op;
use crate::util::time;
use crate::Redis;
use store::{FlushKind, Limits, Place, Store};
use tracker::{Hooks, Mode, Node, Settings, Shared, Topo};

/// Builds a [`NearCache`]; every setting has a default.
#[must_use = "a builder does nothing until `build` is called"]
pub struct NearCacheBuilder {
    redis: Redis,
    limits: Limits,
    mode: Mode,
    protocol: Option<Protocol>,
    heartbeat: Duration,
    max_silence: Duration,
    readers: usize,
    hooks: Hooks,
}

impl std::fmt::Debug for NearCacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCacheBuilder")
            .field("limits", &self.limits)
            .field("mode", &self.mode)
            .field("protocol", &self.protocol)
            .field("heartbeat", &self.heartbeat)
            .field("max_silence", &self.max_silence)
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

impl NearCacheBuilder {
    /// The most entries kept. Defaults to 100,000.
    pub fn max_entries(mut self, n: usize) -> NearCacheBuilder {
        self.limits.max_entries = n;
        self
    }

    /// The most bytes kept: keys, values and about 112 bytes of bookkeeping per entry.
    /// Defaults to 64 MiB.
    pub fn max_bytes(mut self, n: usize) -> NearCacheBuilder {
        self.limits.max_bytes = n;
        self
    }

    /// The longest an entry is kept, whatever happens on the server. Defaults to 5 minutes.
    pub fn ttl(mut self, ttl: Duration) -> NearCacheBuilder {
        self.limits.ttl = ttl;
        self
    }

    /// Broadcasting mode (`CLIENT TRACKING on BCAST`): the server sends an invalidation for
    /// every change of a key starting with one of `prefixes` (after the handle's key prefix;
    /// an empty list means every key), and only such keys are kept. The server keeps no
    /// per-key state for this process and reader connections carry no tracking state (losing
    /// one clears nothing), at the price of invalidations for keys this process never read.
    /// Defaults to the default mode (the server remembers what was read).
    pub fn broadcast<S: AsRef<str>>(mut self, prefixes: &[S]) -> NearCacheBuilder {
        let prefixes = prefixes
            .iter()
            .map(|p| self.redis.key(p.as_ref()).into_bytes())
            .collect();
        self.mode = Mode::Broadcast(prefixes);
        self
    }

    /// The protocol of the tracking connection: RESP3 receives invalidations as push
    /// messages, RESP2 through a subscription to `__redis__:invalidate`. Defaults to the
    /// handle's protocol.
    pub fn protocol(mut self, protocol: Protocol) -> NearCacheBuilder {
        self.protocol = Some(protocol);
        self
    }

    /// How often the tracking connection (and each idle reader) is `PING`ed. Defaults to
    /// 200 ms.
    pub fn heartbeat(mut self, every: Duration) -> NearCacheBuilder {
        self.heartbeat = every;
        self
    }

    /// How long a connection the near cache depends on may stay silent before hits stop
    /// and it counts as lost (at least three heartbeats). Defaults to 1 s.
    pub fn max_silence(mut self, d: Duration) -> NearCacheBuilder {
        self.max_silence = d;
        self
    }

    /// The most reader connections per node (the default mode). Defaults to 8.
    pub fn readers(mut self, n: usize) -> NearCacheBuilder {
        self.readers = n;
        self
    }

    /// Stale-if-error: when a read fails because Redis is down (a connection error, a
    /// timeout, an open breaker), return the near cache's last value of the key if it was
    /// known current at most `max_stale` ago (entries are kept, not cleared, when the
    /// tracking connection is lost; they are never served as hits). Defaults to off.
    pub fn stale_if_error(mut self, max_stale: Duration) -> NearCacheBuilder {
        self.limits.stale_for = Some(max_stale);
        self
    }

    /// Test support: `hook(key, applied)` is called by the tracking thread with each
    /// invalidated key, before (`false`) and after (`true`) it is applied.
    #[cfg(feature = "testing")]
    pub fn on_invalidate(
        mut self,
        hook: impl Fn(&[u8], bool) + Send + Sync + 'static,
    ) -> NearCacheBuilder {
        self.hooks.invalidate = Some(Arc::new(hook));
        self
    }

    /// Test support: `hook(done)` is called before (`false`) and after (`true`) the near
    /// cache is cleared (a flush notice or a lost connection).
    #[cfg(feature = "testing")]
    pub fn on_flush(mut self, hook: impl Fn(bool) + Send + Sync + 'static) -> NearCacheBuilder {
        self.hooks.flush = Some(Arc::new(hook));
        self
    }

    /// Test support: `hook(key)` is called on the reading thread when the reply of a read
    /// that may be kept arrived, before it is kept (to force the race of a read and an
    /// invalidation).
    #[cfg(feature = "testing")]
    pub fn on_reply(mut self, hook: impl Fn(&[u8]) + Send + Sync + 'static) -> NearCacheBuilder {
        self.hooks.reply = Some(Arc::new(hook));
        self
    }

    /// Validates the settings, starts tracking and waits (at most the connect timeout) for
    /// it to be set up: a server without `CLIENT TRACKING` ([`Error::ServerTooOld`]) or a
    /// refused command fails here. A server that cannot be reached is not an error: reads
    /// go to Redis until tracking is up.
    pub fn build(self) -> Result<NearCache> {
        let l = &self.limits;
        if l.max_entries == 0 {
            return Err(Error::config("near.max_entries", "must be at least 1"));
        }
        if l.max_bytes < 4096 {
            return Err(Error::config("near.max_bytes", "must be at least 4096"));
        }
        if l.ttl.is_zero() {
            return Err(Error::config("near.ttl", "must be greater than zero"));
        }
        if self.heartbeat < Duration::from_millis(1) {
            return Err(Error::config("near.heartbeat", "must be at least 1 ms"));
        }
        if self.max_silence < self.heartbeat.saturating_mul(3) {
            return Err(Error::config(
                "near.max_silence",
                "must be at least three heartbeats",
            ));
        }
        if self.readers == 0 {
            return Err(Error::config("near.readers", "must be at least 1"));
        }
        self.redis.check_open()?;
        let config = self.redis.config();
        let mut tracking_config = config.clone();
        if let Some(p) = self.protocol {
            tracking_config.protocol = p;
        }
        let tracking = Connector::new(&tracking_config)?;
        let state = self.redis.pool_state();
        let topo = match (&state.sentinel, &state.cluster) {
            (Some(s), _) => Topo::Sentinel(s.clone()),
            (None, Some(c)) => Topo::Cluster(c.clone()),
            (None, None) => Topo::Single(config.addr.clone()),
        };
        let cluster = matches!(topo, Topo::Cluster(_));
        let shared = Arc::new(Shared::new(
            Store::new(self.limits),
            Settings {
                mode: self.mode,
                heartbeat: self.heartbeat,
                max_silence: self.max_silence,
                readers: self.readers,
            },
            topo,
            tracking,
            self.redis.connector().clone(),
            self.hooks,
            state.clone(),
        ));
        let near = NearCache {
            inner: Arc::new(Inner {
                prefix: self.redis.auto_prefix().cloned(),
                redis: self.redis.unprefixed(),
                shared,
            }),
        };
        if cluster {
            if let Topo::Cluster(topo) = &near.inner.shared.topo {
                for addr in topo.masters() {
                    near.inner.shared.node(Some(&addr));
                }
            }
        } else {
            near.inner.shared.node(None);
        }
        let wait = near.inner.redis.config().timeouts.connect;
        match near.wait_tracking(wait) {
            Ok(()) => Ok(near),
            Err(e) if e.class().is_infrastructure() => {
                log::warn!(
                    "near cache: tracking is not up yet ({e}); reading from Redis until it is"
                );
                Ok(near)
            }
            Err(e) => Err(e),
        }
    }
}

struct Inner {
    /// The handle without its key prefix (commands are prefixed here).
    redis: Redis,
    prefix: Option<Arc<[u8]>>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shut_down(crate::CLOSE_BOUND);
    }
}

/// A near cache on a [`Redis`] handle: see the [module docs](self) for what it caches and
/// its consistency model. Cheap to clone; clones share the cache, its threads and its
/// connections.
#[derive(Clone)]
pub struct NearCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("shared", &self.inner.shared)
            .field("tracking", &self.is_tracking())
            .finish_non_exhaustive()
    }
}

/// A snapshot of a near cache's counters, from [`NearCache::stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NearStats {
    /// Reads answered in process.
    pub hits: u64,
    /// Reads that went to Redis.
    pub misses: u64,
    /// Replies kept.
    pub stored: u64,
    /// Keys the server invalidated.
    pub invalidations: u64,
    /// Entries evicted to stay within the bounds.
    pub evictions: u64,
    /// Entries dropped at their TTL cap.
    pub expirations: u64,
    /// Times everything was cleared: flush notices and lost connections.
    pub flushes: u64,
    /// Of those, flush notices from the server (`FLUSHALL`, `FLUSHDB`).
    pub server_flushes: u64,
    /// Of those, lost connections (tracking or reader).
    pub losses: u64,
    /// Replies not kept because their key was invalidated (or the cache cleared) while the
    /// read was in flight.
    pub races: u64,
    /// Reads that could not be kept (tracking down, no reader connection, a key outside the
    /// broadcast prefixes, an open breaker): read through the handle.
    pub uncached: u64,
    /// Replies too large to keep.
    pub too_large: u64,
    /// Stale values served after an error (stale-if-error).
    pub stale_served: u64,
    /// Times a tracking connection was set up.
    pub connects: u64,
    /// Entries now.
    pub entries: u64,
    /// Bytes now (keys, values and bookkeeping).
    pub bytes: u64,
}

impl NearStats {
    /// `hits / (hits + misses)`, 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Whether a failure says Redis is down (what stale-if-error and degradation react to).
pub(crate) fn redis_down(e: &Error) -> bool {
    e.class().is_infrastructure() || matches!(e, Error::CircuitOpen { .. })
}

impl NearCache {
    /// A near cache with the default settings (see [`NearCacheBuilder`]).
    pub fn new(redis: &Redis) -> Result<NearCache> {
        NearCache::builder(redis).build()
    }

    /// A builder of a near cache on `redis`.
    pub fn builder(redis: &Redis) -> NearCacheBuilder {
        NearCacheBuilder {
            redis: redis.clone(),
            limits: Limits {
                max_entries: 100_000,
                max_bytes: 64 * 1024 * 1024,
                ttl: Duration::from_secs(300),
                stale_for: None,
            },
            mode: Mode::Default,
            protocol: None,
            heartbeat: Duration::from_millis(200),
            max_silence: Duration::from_secs(1),
            readers: 8,
            hooks: Hooks::default(),
        }
    }

    /// `GET key` through the near cache.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let near = redkit::near::NearCache::new(&redis)?;
    /// let v: Option<String> = near.get("greeting")?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn get<T: FromRedisValue>(&self, key: impl AsRef<[u8]>) -> Result<T> {
        let key = key.as_ref();
        let value = match &self.inner.prefix {
            Some(p) => self.get_value(&[p.as_ref(), key].concat())?,
            None => self.get_value(key)?,
        };
        crate::script::convert(value)
    }

    /// The values of `keys` (`GET` each; the misses in one round trip per node), in order.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let near = redkit::near::NearCache::new(&redis)?;
    /// let v: Vec<Option<String>> = near.mget(&["a", "b"])?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn mget<T: FromRedisValue, K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<T>> {
        let rkeys: Vec<Vec<u8>> = keys.iter().map(|k| self.full_key(k.as_ref())).collect();
        self.mget_values(&rkeys)?
            .into_iter()
            .map(crate::script::convert)
            .collect()
    }

    /// Runs a cacheable read (see the [module docs](self)) through the near cache.
    /// Anything else is refused with [`Error::WrongConnection`] before anything is sent.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let near = redkit::near::NearCache::new(&redis)?;
    /// let price: Option<f64> = near.query(redis::cmd("ZSCORE").arg("prices").arg("apple"))?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let packed = cmd.get_packed_command();
        let packed = match &self.inner.prefix {
            Some(p) => crate::conn::keys::prefixed(&packed, p).unwrap_or(packed),
            None => packed,
        };
        let (args, _) = crate::util::resp::split_command(&packed).ok_or_else(|| {
            Error::config("near.query", "the command could not be read (no name?)")
        })?;
        let name = args.first().copied().unwrap_or_default();
        let kind = commands::cacheable(name, args.len()).ok_or_else(|| Error::WrongConnection {
            command: String::from_utf8_lossy(name).to_uppercase(),
            instead: "the handle: the near cache keeps only the reads of one key listed in \
                      redkit::near",
        })?;
        let rkey = args.get(1).copied().unwrap_or_default().to_vec();
        let value = match kind {
            commands::Kind::Get => self.get_value(&rkey)?,
            commands::Kind::Other => self.read(&rkey, Place::Command(&packed), &packed)?,
        };
        crate::script::convert(value)
    }

    /// Drops the local copy of `key` (and spoils reads of it in flight): for writes this
    /// process made on another connection, so that its next read does not wait for the
    /// server's invalidation.
    pub fn invalidate(&self, key: impl AsRef<[u8]>) {
        let rkey = self.full_key(key.as_ref());
        self.inner.shared.store.invalidate(&rkey, false);
    }

    /// Drops the local copy of the full key `rkey` (no prefix added): for the cache.
    pub(crate) fn invalidate_full(&self, rkey: &[u8]) {
        self.inner.shared.store.invalidate(rkey, false);
    }

    /// Clears the whole near cache (counted in `flushes`).
    pub fn clear(&self) {
        self.inner.shared.flush(FlushKind::Server);
    }

    /// Whether every tracking connection is up (reads may be kept).
    pub fn is_tracking(&self) -> bool {
        let nodes = self.inner.shared.nodes();
        !nodes.is_empty() && nodes.iter().all(|n| n.is_up())
    }

    /// Waits at most `timeout` for every tracking connection to be up; fails with the last
    /// connection error (or a timeout).
    pub fn wait_tracking(&self, timeout: Duration) -> Result<()> {
        let deadline = time::after(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            if self.is_tracking() {
                return Ok(());
            }
            if self.inner.shared.is_closed() {
                return Err(Error::Closed);
            }
            if let Some(e) = self.inner.shared.last_error.lock().clone() {
                if !e.class().is_infrastructure() {
                    return Err(e);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::io(
                    std::io::ErrorKind::TimedOut,
                    format!("near cache: tracking was not up within {timeout:?}"),
                    Delivery::NotSent,
                ));
            }
            std::thread::sleep(pause.min(time::left(deadline)));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NearStats {
        let s = &self.inner.shared;
        let c = &s.store.counters;
        let (entries, bytes) = s.store.size();
        NearStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            stored: c.stored.load(Relaxed),
            invalidations: c.invalidations.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            expirations: c.expirations.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            server_flushes: s.counters.server_flushes.load(Relaxed),
            losses: s.counters.losses.load(Relaxed),
            races: c.races.load(Relaxed),
            uncached: s.counters.uncached.load(Relaxed),
            too_large: c.too_large.load(Relaxed),
            stale_served: c.stale_served.load(Relaxed),
            connects: s.counters.connects.load(Relaxed),
            entries: entries as u64,
            bytes: bytes as u64,
        }
    }

    /// Stops the tracking threads (within [`CLOSE_BOUND`](crate::CLOSE_BOUND)) and closes
    /// the connections, for every clone; later reads go through the handle and nothing is
    /// kept.
    pub fn close(&self) {
        self.inner.shared.shut_down(crate::CLOSE_BOUND);
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        match &self.inner.prefix {
            Some(p) => [p.as_ref(), key].concat(),
            None => key.to_vec(),
        }
    }

    /// `GET rkey` (a full key) through the near cache.
    pub(crate) fn get_value(&self, rkey: &[u8]) -> Result<Value> {
        if let Some(v) = self.inner.shared.store.get(rkey, Place::Get, true) {
            return Ok(v);
        }
        let packed = redis::cmd("GET").arg(rkey).get_packed_command();
        self.miss(rkey, Place::Get, &packed)
    }

    /// A read of `rkey` through the near cache: a hit, or the miss path.
    fn read(&self, rkey: &[u8], place: Place<'_>, packed: &[u8]) -> Result<Value> {
        if let Some(v) = self.inner.shared.store.get(rkey, place, true) {
            return Ok(v);
        }
        self.miss(rkey, place, packed)
    }

    /// The miss path, with stale-if-error.
    fn miss(&self, rkey: &[u8], place: Place<'_>, packed: &[u8]) -> Result<Value> {
        match self.fetch(rkey, place, packed) {
            Err(e) if redis_down(&e) => match self.inner.shared.store.get_stale(rkey, place) {
                Some(v) => Ok(v),
                None => Err(e),
            },
            other => other,
        }
    }

    /// Whether a key may be kept in this mode.
    fn covered(&self, rkey: &[u8]) -> bool {
        match &self.inner.shared.settings.mode {
            Mode::Default => true,
            Mode::Broadcast(prefixes) => {
                prefixes.is_empty() || prefixes.iter().any(|p| rkey.starts_with(p))
            }
        }
    }

    /// The node that serves `rkey`.
    fn node_for(&self, rkey: &[u8]) -> Option<Arc<Node>> {
        let shared = &self.inner.shared;
        match &shared.topo {
            Topo::Cluster(topo) => {
                let slot = crate::cluster::route::slot(rkey);
                let addr = topo.owner(slot).ok()?;
                shared.node(Some(&addr))
            }
            _ => shared.node(None),
        }
    }

    /// Whether reads may be kept now: the breaker lets calls through.
    fn may_keep(&self) -> bool {
        self.inner.redis.breaker_state() != BreakerState::Open && !self.inner.shared.is_closed()
    }

    /// Reads through a reader of the key's node, keeping the reply unless its key was
    /// invalidated meanwhile; through the handle (nothing kept) when that cannot be.
    fn fetch(&self, rkey: &[u8], place: Place<'_>, packed: &[u8]) -> Result<Value> {
        let shared = &self.inner.shared;
        if !self.covered(rkey) || !self.may_keep() {
            return self.uncached(packed);
        }
        let Some(node) = self.node_for(rkey) else {
            return self.uncached(packed);
        };
        let wait = self.inner.redis.config().timeouts.checkout;
        let Some(mut reader) = node.checkout(shared, wait) else {
            return self.uncached(packed);
        };
        let ticket = shared.store.begin(rkey);
        if !node.is_current(&reader) {
            drop(ticket);
            node.checkin(reader);
            return self.uncached(packed);
        }
        let sent = shared.store.now();
        match reader.con.exec(packed, None) {
            Ok(value) => {
                reader.confirm(sent);
                node.checkin(reader);
                if let Value::ServerError(e) = &value {
                    drop(ticket);
                    if matches!(
                        e.kind(),
                        Some(ServerErrorKind::Moved | ServerErrorKind::Ask)
                    ) {
                        if let Topo::Cluster(topo) = &shared.topo {
                            topo.mark_stale();
                        }
                        return self.uncached(packed);
                    }
                    return Ok(value);
                }
                if let Some(h) = &shared.hooks.reply {
                    h(rkey);
                }
                shared.store.complete(ticket, rkey, place, &value);
                Ok(value)
            }
            Err(e) => {
                drop(ticket);
                shared.reader_lost(&node, reader, &e);
                if e.is_timeout() || e.delivery() != Delivery::NotSent && !e.is_connection() {
                    return Err(e);
                }
                self.uncached(packed)
            }
        }
    }

    /// A read through the handle (its retries and breaker); nothing is kept.
    fn uncached(&self, packed: &[u8]) -> Result<Value> {
        self.inner.shared.counters.uncached.fetch_add(1, Relaxed);
        self.inner
            .redis
            .execute(Op::Command(packed), || true, |con| con.exec_packed(packed))
    }

    /// `GET` of many full keys: hits in process, the misses per node in one pipeline.
    pub(crate) fn mget_values(&self, rkeys: &[Vec<u8>]) -> Result<Vec<Value>> {
        let store = &self.inner.shared.store;
        let mut out: Vec<Option<Value>> = rkeys
            .iter()
            .map(|k| store.get(k, Place::Get, true))
            .collect();
        let missing: Vec<usize> = (0..rkeys.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().map(Option::unwrap_or_default).collect());
        }
        // Group the misses by node (one group without a cluster).
        let mut groups: Vec<(Option<Arc<Node>>, Vec<usize>)> = Vec::new();
        for i in missing {
            let node = if self.covered(&rkeys[i]) && self.may_keep() {
                self.node_for(&rkeys[i])
            } else {
                None
            };
            let same = |g: &(Option<Arc<Node>>, Vec<usize>)| match (&g.0, &node) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            match groups.iter_mut().find(|g| same(g)) {
                Some(g) => g.1.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        for (node, idx) in groups {
            let values = match node {
                Some(node) => self.fetch_many(&node, rkeys, &idx),
                None => self.mget_uncached(rkeys, &idx),
            };
            let values = match values {
                Ok(v) => v,
                Err(e) if redis_down(&e) => {
                    // Stale-if-error, key by key; without it, the error.
                    let stale: Option<Vec<Value>> = idx
                        .iter()
                        .map(|&i| store.get_stale(&rkeys[i], Place::Get))
                        .collect();
                    stale.ok_or(e)?
                }
                Err(e) => return Err(e),
            };
            for (i, v) in idx.into_iter().zip(values) {
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn mget_uncached(&self, rkeys: &[Vec<u8>], idx: &[usize]) -> Result<Vec<Value>> {
        self.inner
            .shared
            .counters
            .uncached
            .fetch_add(idx.len() as u64, Relaxed);
        let mut cmd = redis::cmd("MGET");
        for &i in idx {
            cmd.arg(rkeys[i].as_slice());
        }
        let packed = cmd.get_packed_command();
        let value = self.inner.redis.execute(
            Op::Command(&packed),
            || true,
            |con| con.exec_packed(&packed),
        )?;
        match value {
            Value::Array(values) if values.len() == idx.len() => Ok(values),
            Value::ServerError(e) => Err(Error::from_redis(e.into(), Delivery::Answered)),
            other => Err(Error::io(
                std::io::ErrorKind::InvalidData,
                format!("MGET answered {other:?}"),
                Delivery::Answered,
            )),
        }
    }

    /// The `GET`s of `idx` on one node's reader, in one pipeline.
    fn fetch_many(&self, node: &Arc<Node>, rkeys: &[Vec<u8>], idx: &[usize]) -> Result<Vec<Value>> {
        let shared = &self.inner.shared;
        let wait = self.inner.redis.config().timeouts.checkout;
        let Some(mut reader) = node.checkout(shared, wait) else {
            return self.mget_uncached(rkeys, idx);
        };
        let tickets: Vec<_> = idx.iter().map(|&i| shared.store.begin(&rkeys[i])).collect();
        if !node.is_current(&reader) {
            drop(tickets);
            node.checkin(reader);
            return self.mget_uncached(rkeys, idx);
        }
        // One MGET on a single server; on a cluster the keys of one node may sit in several
        // slots, which MGET refuses: a pipeline of GETs.
        let cluster = matches!(shared.topo, Topo::Cluster(_));
        let sent = shared.store.now();
        let replies = if cluster {
            let mut pipe = redis::pipe();
            for &i in idx {
                pipe.cmd("GET").arg(rkeys[i].as_slice());
            }
            reader
                .con
                .pipeline(&pipe.get_packed_pipeline(), 0, idx.len(), None)
        } else {
            let mut cmd = redis::cmd("MGET");
            for &i in idx {
                cmd.arg(rkeys[i].as_slice());
            }
            reader
                .con
                .exec(&cmd.get_packed_command(), None)
                .map(|v| match v {
                    Value::Array(values) if values.len() == idx.len() => values,
                    // An error reply (or a surprise) for every key.
                    other => vec![other; idx.len()],
                })
        };
        match replies {
            Ok(values) => {
                reader.confirm(sent);
                node.checkin(reader);
                let redirected = values.iter().any(|v| {
                    matches!(v, Value::ServerError(e)
                        if matches!(e.kind(), Some(ServerErrorKind::Moved | ServerErrorKind::Ask)))
                });
                if redirected {
                    drop(tickets);
                    if let Topo::Cluster(topo) = &shared.topo {
                        topo.mark_stale();
                    }
                    return self.mget_uncached(rkeys, idx);
                }
                for ((ticket, &i), v) in tickets.into_iter().zip(idx).zip(&values) {
                    if matches!(v, Value::ServerError(_)) {
                        continue;
                    }
                    if let Some(h) = &shared.hooks.reply {
                        h(&rkeys[i]);
                    }
                    shared.store.complete(ticket, &rkeys[i], Place::Get, v);
                }
                Ok(values)
            }
            Err(e) => {
                drop(tickets);
                shared.reader_lost(node, reader, &e);
                if e.is_timeout() || e.delivery() != Delivery::NotSent && !e.is_connection() {
                    return Err(e);
                }
                self.mget_uncached(rkeys, idx)
            }
        }
    }
}
