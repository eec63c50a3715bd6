//! A namespaced cache: typed values with a default TTL, stampede-proof loading, multi-get,
//! tags and pattern invalidation, and hit/miss statistics.
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::cache::Cache;
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! # fn find_product(id: u32) -> Result<Option<String>, redkit::Error> { Ok(None) }
//! let cache = Cache::builder(&redis, "products")
//!     .default_ttl(Duration::from_secs(600))
//!     .negative_ttl(Duration::from_secs(30))       // cache "not found" too
//!     .early_refresh(1.0)                          // XFetch
//!     .build()?;
//!
//! // Many threads (and processes) asking for one cold key run the loader once.
//! let name: String = cache.get_or_set("p:1", None, || {
//!     Ok::<_, redkit::Error>("expensive".to_owned()) // e.g. a database query
//! })?;
//! // A loader that may find nothing; with `negative_ttl` the miss is cached as well.
//! let p7: Option<String> = cache.get_or_set_optional("p:7", None, || find_product(7))?;
//!
//! // One round trip for many keys.
//! let names: Vec<Option<String>> = cache.mget(&["p:1", "p:2"])?;
//!
//! // Tags, and invalidating everything under one.
//! cache.set_tagged("p:3", &"widget".to_owned(), None, &["catalog"])?;
//! let removed = cache.invalidate_tag("catalog")?;
//! let gone = cache.invalidate_pattern("p:1*")?;     // SCAN in batches + UNLINK, never KEYS
//! let stats = cache.stats();
//! println!("hit ratio {:.2}, stampedes avoided {}", stats.hit_ratio(), stats.stampedes_avoided);
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! Values are any [`CacheValue`]: bytes, strings and integers, and with the `json` feature
//! any `Serialize + DeserializeOwned` type wrapped in `Json`.
//! `examples/cache.rs` in the repository puts a cache in front of a slow database.
//!
//! ## Loading once: single flight
//!
//! [`Cache::get_or_set`] (and [`Cache::get_or_set_optional`]) load a missing value once,
//! however many callers miss it at the same time:
//!
//! - **In one process**, concurrent misses for one key wait for one loader call (a map of
//!   loads in flight, behind a mutex that is never held across Redis I/O).
//! - **Across processes**, the loading caller takes a lock key (`SET NX PX`, for
//!   [`lock_ttl`](CacheBuilder::lock_ttl), 10 s by default) in the same script that reads
//!   the value; the others poll for the value (every 2 ms, doubling to 50 ms) up to
//!   [`lock_wait`](CacheBuilder::lock_wait) (5 s by default), then load themselves.
//! - **A failing loader** stores nothing, returns its error to its own caller only and
//!   releases the lock; the callers that waited for it try again.
//!
//! The test suite checks both: 32 threads on one cold key call the loader once, and two
//! processes on one cold key load once and both get the value. Callers that got a value
//! another caller loaded are counted in [`CacheStats::stampedes_avoided`].
//!
//! **Early refresh** ([`early_refresh(beta)`](CacheBuilder::early_refresh), XFetch): stored
//! values carry the time their load took, and a hit reads the value's TTL in the same round
//! trip; a caller refreshes early when `load_time * beta * -ln(rand)` reaches the remaining
//! TTL, which grows likelier as expiry nears and for values that are slow to load. Only one
//! caller refreshes (the in-process flight plus the lock); the others keep getting the
//! current value. **When Redis is down** the loader's value is returned without being
//! stored ([`degrade`](CacheBuilder::degrade)).
//!
//! ## Keys, values and clusters
//!
//! A cache named `products` keeps the value of `<key>` at `redkit:cache:products:v:{<key>}`
//! (after the handle's own [`key_prefix`](crate::ConfigBuilder::key_prefix)), its load lock
//! at `...:l:{<key>}` and the set of tag `<tag>` at `...:t:{<tag>}`. Each key is its own
//! hash tag: on Redis Cluster the keys of one cache spread over every slot (and so over
//! every master), while a value and its load lock share a slot (the loading scripts need
//! both). Keys that start with the same `{...}` share a slot too. Do not put a hash tag in
//! the cache's name or prefix (it would pin the whole cache to one slot again).
//!
//! What is atomic, and across what:
//!
//! - `get`, `set`, `delete`, `increment` and each step of `get_or_set`: one key (and its
//!   lock), atomic everywhere. `mget` and `mset` are one round trip (one `MGET` or one
//!   pipeline; on a cluster split per slot and sent to every master at once): each key is
//!   read or written atomically, the set of keys is not.
//! - Without Redis Cluster (one server, Sentinel), [`Cache::set_tagged`] (the value and
//!   every tag) and [`Cache::invalidate_tag`] (the tag and every key in it) are one script
//!   each: atomic.
//! - On Redis Cluster the tags live in other slots than the values. `set_tagged` writes the
//!   value, then adds it to each tag (one script per tag, all in one pipeline);
//!   `invalidate_tag` takes the tag set away atomically (one script on the tag's slot), then
//!   removes its keys (`UNLINK`, split per slot). A value written concurrently with an
//!   invalidation is either removed or stays tagged (never left untagged by it); a reader
//!   may see some of a tag's keys gone and others not yet, for the length of one request.
//!   If `set_tagged` fails after the value was written, the value may be untagged (call it
//!   again); if `invalidate_tag` fails while removing the keys, they go back into the tag
//!   set (best effort) so that calling it again removes them.
//! - [`Cache::invalidate_pattern`] is never atomic (`SCAN` over every master, then
//!   `UNLINK`): a key written meanwhile may survive.
//!
//! Values are stored in a small frame (one byte of kind, and for loaded values the time the
//! load took, for early refresh): read them through the cache, or make the cache
//! [plain](CacheBuilder::plain) to share it with programs that read the values raw (at the
//! cost of negative caching and early refresh).
//! [`Cache::get_on`] and [`Cache::set_on`] read and write on a connection of your own. A value that does not decode
//! is an [`Error::Decode`] naming the key, never a silent miss. Counters
//! ([`Cache::increment`]) are plain integers, read with [`Cache::counter`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::Value;

use crate::error::{Error, Result};
use crate::near::{redis_down, NearCache};
use crate::scan::ScanIter;
use crate::script::static_script;
use crate::util::{glob_escape, ids};
use crate::{Pipeline, Redis};

mod value;

pub use value::CacheValue;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use value::Json;
use value::{absent_frame, frame, unframe, Frame};

static_script!(get_or_lock_script, "get_or_lock.lua");
static_script!(store_script, "store.lua");
static_script!(unlock_script, "unlock.lua");
static_script!(set_tagged_script, "set_tagged.lua");
static_script!(invalidate_tag_script, "invalidate_tag.lua");
static_script!(tag_add_script, "tag_add.lua");
static_script!(tag_pop_script, "tag_pop.lua");
static_script!(incr_script, "incr.lua");

/// The settings of a [`Cache`], made by [`CacheBuilder`].
#[derive(Debug, Clone)]
struct Settings {
    default_ttl: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    early_refresh: Option<f64>,
    negative_ttl: Option<Duration>,
    degrade: bool,
    plain: bool,
}

/// Builds a [`Cache`]; every setting has a default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    redis: Redis,
    name: String,
    prefix: String,
    settings: Settings,
    near: Option<NearCache>,
}

impl CacheBuilder {
    /// The prefix in front of the cache's name in every key. Defaults to `redkit:cache:`
    /// (after the handle's own key prefix, if any).
    pub fn prefix(mut self, prefix: &str) -> CacheBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// The TTL of values stored without one. Defaults to 5 minutes.
    pub fn default_ttl(mut self, ttl: Duration) -> CacheBuilder {
        self.settings.default_ttl = ttl;
        self
    }

    /// How long the cross-process load lock of [`Cache::get_or_set`] lives at most (a loader
    /// that crashes holds it this long). Defaults to 10 s.
    pub fn lock_ttl(mut self, ttl: Duration) -> CacheBuilder {
        self.settings.lock_ttl = ttl;
        self
    }

    /// How long [`Cache::get_or_set`] waits for another thread's or process's load before
    /// loading itself. Defaults to 5 s.
    pub fn lock_wait(mut self, wait: Duration) -> CacheBuilder {
        self.settings.lock_wait = wait;
        self
    }

    /// Probabilistic early refresh (XFetch) in [`Cache::get_or_set`]: a read refreshes a
    /// value before it expires with a probability that grows as expiry nears and with the
    /// time its load took; `beta` scales it (1.0 is the usual choice, above 1 refreshes
    /// earlier). One caller refreshes; the others keep getting the current value. Defaults
    /// to off.
    pub fn early_refresh(mut self, beta: f64) -> CacheBuilder {
        self.settings.early_refresh = Some(beta);
        self
    }

    /// Negative caching in [`Cache::get_or_set_optional`]: a loader's "not found" is cached
    /// for `ttl`, so that a missing row is not looked up again on every request. Defaults to
    /// off.
    pub fn negative_ttl(mut self, ttl: Duration) -> CacheBuilder {
        self.settings.negative_ttl = Some(ttl);
        self
    }

    /// An in-process level in front of Redis: reads go through `near` (a
    /// [`NearCache`] of the same handle, shared with other caches if you like), which keeps
    /// what it reads coherent through the server's invalidations (see
    /// [`crate::near`] for what a reader can see). Writes through this cache drop the local
    /// copy as soon as Redis acknowledged them (this process reads its own writes); keys
    /// removed by [`Cache::invalidate_tag`] and [`Cache::invalidate_pattern`] leave the near
    /// level when the server's invalidations arrive. Early refresh does not apply (a near
    /// hit has no time to live to look at). Defaults to none.
    ///
    /// ```no_run
    /// use redkit::{cache::Cache, near::NearCache};
    ///
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let near = NearCache::builder(&redis).max_entries(50_000).build()?;
    /// let cache = Cache::builder(&redis, "products").near(&near).build()?;
    /// let name: String = cache.get_or_set("p:1", None, || Ok::<_, redkit::Error>("widget".into()))?;
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn near(mut self, near: &NearCache) -> CacheBuilder {
        self.near = Some(near.clone());
        self
    }

    /// Whether [`Cache::get_or_set`] (and [`Cache::get_or_set_optional`]) call the loader
    /// and return its value, without storing it, when Redis is down (a connection error, a
    /// timeout, an open breaker), rather than fail. Defaults to `true`.
    pub fn degrade(mut self, on: bool) -> CacheBuilder {
        self.settings.degrade = on;
        self
    }

    /// Stores values as they are, without redkit's frame: what [`CacheValue::encode`] makes
    /// (the bytes, the string, the number as text, the JSON) is exactly what a raw `GET`
    /// returns, so programs in other languages (or `redis-cli`) share the cache. Defaults to
    /// `false` (framed).
    ///
    /// What the frame carried is lost, so these two settings are refused with a plain cache
    /// (a [`Config`](crate::ErrorClass::Config) error from `build`): negative caching
    /// ([`negative_ttl`](Self::negative_ttl): a stored "not found" could not be told from a
    /// value) and early refresh ([`early_refresh`](Self::early_refresh): the time each load
    /// took lives in the frame). Everything else works the same: single flight, the load
    /// lock, tags, counters, the near level. Values a plain cache reads are decoded as they
    /// are (a framed value read by a plain cache, or the reverse, does not decode as the
    /// same value: give the two kinds different names).
    ///
    /// ```no_run
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let shared = redkit::cache::Cache::builder(&redis, "shared").plain(true).build()?;
    /// shared.set("greeting", &"hello".to_owned())?;
    /// let raw: String = redis.query(redis::cmd("GET").arg(shared.key("greeting")))?;
    /// assert_eq!(raw, "hello");
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn plain(mut self, plain: bool) -> CacheBuilder {
        self.settings.plain = plain;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Cache> {
        let s = &self.settings;
        if s.plain && s.negative_ttl.is_some() {
            return Err(Error::config(
                "cache.negative_ttl",
                "not available with plain values (a stored \"not found\" would read as a value)",
            ));
        }
        if s.plain && s.early_refresh.is_some() {
            return Err(Error::config(
                "cache.early_refresh",
                "not available with plain values (the load time it needs lives in the frame)",
            ));
        }
        ttl_ms("cache.default_ttl", s.default_ttl)?;
        ttl_ms("cache.lock_ttl", s.lock_ttl)?;
        if let Some(t) = s.negative_ttl {
            ttl_ms("cache.negative_ttl", t)?;
        }
        if let Some(beta) = s.early_refresh {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(Error::config(
                    "cache.early_refresh",
                    "beta must be a positive number",
                ));
            }
        }
        if self.name.is_empty() {
            return Err(Error::config("cache.name", "must not be empty"));
        }
        let namespace = self.redis.key(&format!("{}{}:", self.prefix, self.name));
        Ok(Cache {
            redis: self.redis,
            inner: Arc::new(Inner {
                namespace,
                settings: self.settings,
                counters: Counters::default(),
                flights: Mutex::new(HashMap::new()),
                near: self.near,
            }),
        })
    }
}

/// The longest TTL a cache entry may have (the server would refuse an expiry far beyond).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

fn ttl_ms(setting: &'static str, d: Duration) -> Result<u64> {
    if d < Duration::from_millis(1) {
        return Err(Error::config(setting, "must be at least 1 ms"));
    }
    if d > MAX_TTL {
        return Err(Error::config(setting, "must be at most 10 years"));
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    stampedes_avoided: AtomicU64,
    early_refreshes: AtomicU64,
    degraded_loads: AtomicU64,
}

/// A snapshot of a cache's counters, from [`Cache::stats`] (shared by every clone).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Reads that found a value (a cached "not found" counts as a hit).
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Callers of `get_or_set` that missed but got another caller's load instead of loading
    /// themselves (in this process or another).
    pub stampedes_avoided: u64,
    /// Values refreshed early (XFetch).
    pub early_refreshes: u64,
    /// Loader calls whose value was returned without being stored because Redis was down
    /// (see [`Cache::get_or_set`]).
    pub degraded_loads: u64,
}

impl CacheStats {
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

/// What a load published to the callers waiting for it in this process.
enum Outcome {
    /// The stored frame.
    Stored(Vec<u8>),
    /// The load failed: waiters try again themselves.
    Failed,
}

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

struct Inner {
    namespace: String,
    settings: Settings,
    counters: Counters,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    near: Option<NearCache>,
}

/// What kind of entry [`Cache::inspect`] found.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A value (its bytes as the [`CacheValue`] encoded them).
    Value,
    /// A cached "not found" (negative caching).
    NotFound,
    /// A counter ([`Cache::increment`]): a plain integer.
    Counter,
    /// Bytes no cache wrote (another program's).
    Foreign,
}

/// An entry as the server holds it: [`Cache::inspect`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The Redis key.
    pub key: String,
    /// What it is.
    pub kind: EntryKind,
    /// The value's bytes (out of the frame; empty for a cached "not found").
    pub value: Vec<u8>,
    /// How long it still lives; `None` without an expiry.
    pub ttl: Option<Duration>,
    /// How long loading it took, when the loader was timed (for early refresh).
    pub load_time: Option<Duration>,
}

/// A namespaced cache on a [`Redis`] handle. Cheap to clone; clones share statistics and
/// in-process single-flight. See the [module docs](self) for the key layout.
#[derive(Clone)]
pub struct Cache {
    redis: Redis,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The leader of an in-process load: publishes the outcome and leaves the flight map, also
/// when the loader panics.
struct Leader<'a> {
    cache: &'a Cache,
    key: String,
    flight: Arc<Flight>,
    outcome: Option<Outcome>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.cache.inner.flights.lock().remove(&self.key);
        *self.flight.outcome.lock() = Some(self.outcome.take().unwrap_or(Outcome::Failed));
        self.flight.done.notify_all();
    }
}

/// What the in-process single-flight said.
enum Joined<'a> {
    Leader(Leader<'a>),
    Follower(Arc<Flight>),
}

impl Cache {
    /// A cache named `name` (part of its keys) with default settings.
    pub fn new(redis: &Redis, name: &str) -> Result<Cache> {
        Cache::builder(redis, name).build()
    }

    /// A builder for a cache named `name`.
    pub fn builder(redis: &Redis, name: &str) -> CacheBuilder {
        CacheBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: "redkit:cache:".to_owned(),
            settings: Settings {
                default_ttl: Duration::from_secs(300),
                lock_ttl: Duration::from_secs(10),
                lock_wait: Duration::from_secs(5),
                early_refresh: None,
                negative_ttl: None,
                degrade: true,
                plain: false,
            },
            near: None,
        }
    }

    /// The Redis key that holds `key`'s value.
    pub fn key(&self, key: &str) -> String {
        format!("{}v:{{{key}}}", self.inner.namespace)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{{{key}}}", self.inner.namespace)
    }

    /// The Redis key of a tag's set of keys.
    pub fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{{{tag}}}", self.inner.namespace)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            loads: c.loads.load(Relaxed),
            load_errors: c.load_errors.load(Relaxed),
            stampedes_avoided: c.stampedes_avoided.load(Relaxed),
            early_refreshes: c.early_refreshes.load(Relaxed),
            degraded_loads: c.degraded_loads.load(Relaxed),
        }
    }

    fn ttl_or_default(&self, ttl: Option<Duration>) -> Result<u64> {
        ttl_ms("cache.ttl", ttl.unwrap_or(self.inner.settings.default_ttl))
    }

    fn count(&self, hit: bool) {
        let c = &self.inner.counters;
        if hit {
            c.hits.fetch_add(1, Relaxed);
        } else {
            c.misses.fetch_add(1, Relaxed);
        }
    }

    /// Decodes a stored frame: `None` for a cached "not found".
    fn decode<V: CacheValue>(&self, key: &str, bytes: &[u8]) -> Result<Option<V>> {
        let decode_err = |reason: String| Error::Decode {
            key: self.key(key),
            reason,
        };
        if self.inner.settings.plain {
            return V::decode(bytes).map(Some).map_err(decode_err);
        }
        match unframe(bytes).map_err(decode_err)? {
            Frame::Absent => Ok(None),
            Frame::Value(payload, _) => V::decode(payload).map(Some).map_err(decode_err),
        }
    }

    fn encode<V: CacheValue>(
        &self,
        key: &str,
        value: &V,
        load: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let encoded = if self.inner.settings.plain {
            let mut out = Vec::with_capacity(64);
            value.encode(&mut out).map(|()| out)
        } else {
            frame(value, load)
        };
        encoded.map_err(|reason| Error::Decode {
            key: self.key(key),
            reason: format!("could not encode: {reason}"),
        })
    }

    /// What the server holds for `key`, decoded from the cache's frame, for operators (the
    /// `redkit cache get` command): the value's bytes, a cached "not found", a counter, or
    /// bytes not written by a cache; its TTL and load time. Reads the server (never the
    /// near cache); counts neither hit nor miss.
    pub fn inspect(&self, key: &str) -> Result<Option<CacheEntry>> {
        let full = self.key(key);
        let (bytes, pttl): (Option<Vec<u8>>, i64) = self
            .redis
            .pipeline(Pipeline::new().cmd("GET").arg(&full).cmd("PTTL").arg(&full))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
        let (kind, value, load_time) = match unframe(&bytes) {
            Ok(Frame::Value(v, load)) => (EntryKind::Value, v.to_vec(), load),
            Ok(Frame::Absent) => (EntryKind::NotFound, Vec::new(), None),
            Err(_) if std::str::from_utf8(&bytes).is_ok_and(|t| t.parse::<i64>().is_ok()) => {
                (EntryKind::Counter, bytes, None)
            }
            Err(_) => (EntryKind::Foreign, bytes, None),
        };
        Ok(Some(CacheEntry {
            key: full,
            kind,
            value,
            ttl,
            load_time,
        }))
    }

    /// The value of `key`, `None` when there is none (or a cached "not found").
    pub fn get<V: CacheValue>(&self, key: &str) -> Result<Option<V>> {
        let bytes = self.read_raw(&self.key(key))?;
        self.count(bytes.is_some());
        match bytes {
            Some(b) => self.decode(key, &b),
            None => Ok(None),
        }
    }

    /// Like [`Cache::get`], on a connection of your own (any [`redis::ConnectionLike`]: a
    /// plain `redis::Connection`, a pooled or dedicated connection), with the same keys and
    /// encoding: one `GET`, no retry, no breaker, no near level. Counts a hit or a miss.
    ///
    /// ```no_run
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let cache = redkit::cache::Cache::new(&redis, "products")?;
    /// let mut con = redis::Client::open("redis://127.0.0.1/")?.get_connection()?;
    /// cache.set_on(&mut con, "p:1", &"widget".to_owned(), None)?;
    /// let name: Option<String> = cache.get_on(&mut con, "p:1")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_on<V: CacheValue>(
        &self,
        con: &mut dyn redis::ConnectionLike,
        key: &str,
    ) -> Result<Option<V>> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(self.key(key)).query(con)?;
        self.count(bytes.is_some());
        match bytes {
            Some(b) => self.decode(key, &b),
            None => Ok(None),
        }
    }

    /// Like [`Cache::set_ttl`], on a connection of your own: one `SET .. PX`. A near level
    /// of this process learns of it through the server's invalidation, as of any other
    /// writer's.
    pub fn set_on<V: CacheValue>(
        &self,
        con: &mut dyn redis::ConnectionLike,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ms = self.ttl_or_default(ttl)?;
        let bytes = self.encode(key, value, None)?;
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(bytes)
            .arg("PX")
            .arg(ms)
            .query::<()>(con)?;
        Ok(())
    }

    /// Stores `value` with the default TTL.
    pub fn set<V: CacheValue>(&self, key: &str, value: &V) -> Result<()> {
        self.set_ttl(key, value, None)
    }

    /// Stores `value` for `ttl` (the default TTL when `None`).
    pub fn set_ttl<V: CacheValue>(
        &self,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ms = self.ttl_or_default(ttl)?;
        let bytes = self.encode(key, value, None)?;
        let full = self.key(key);
        self.redis
            .query_idempotent::<()>(redis::cmd("SET").arg(&full).arg(bytes).arg("PX").arg(ms))?;
        self.written(&full);
        Ok(())
    }

    /// Stores `value` for `ttl` (the default TTL when `None`) and adds the key to every tag
    /// in `tags`: in one script, or on Redis Cluster the value first and then one script per
    /// tag in one pipeline (see the [module docs](self) for what stays atomic). A key keeps
    /// its tags until it is deleted or invalidated (storing it again without tags does not
    /// untag it).
    pub fn set_tagged<V: CacheValue>(
        &self,
        key: &str,
        value: &V,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<()> {
        let ms = self.ttl_or_default(ttl)?;
        let bytes = self.encode(key, value, None)?;
        let full = self.key(key);
        if !self.on_cluster() {
            let mut call = set_tagged_script().key(&full);
            for tag in tags {
                call = call.key(self.tag_key(tag));
            }
            call.arg(bytes).arg(ms).run::<()>(&self.redis)?;
            self.written(&full);
            return Ok(());
        }
        // The value first: an invalidation running meanwhile either removes it or finds
        // it tagged afterwards.
        let stored = self
            .redis
            .query_idempotent::<()>(redis::cmd("SET").arg(&full).arg(bytes).arg("PX").arg(ms));
        self.written(&full);
        stored?;
        if tags.is_empty() {
            return Ok(());
        }
        let mut pipe = Pipeline::new();
        for tag in tags {
            pipe.invoke(&tag_add_script().key(self.tag_key(tag)).arg(&full).arg(ms))
                .ignore();
        }
        // Adding a member again changes nothing: safe to resend.
        self.redis.run_idempotent(|con| pipe.query::<()>(con))
    }

    /// Whether the handle talks to a Redis Cluster (tags live in other slots than values).
    fn on_cluster(&self) -> bool {
        self.redis.pool_state().cluster.is_some()
    }

    /// Removes every key tagged `tag` (and the tag). Returns how many keys existed. Atomic
    /// without Redis Cluster; on a cluster the tag is taken away atomically, then its keys
    /// removed (see the [module docs](self)).
    pub fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        if !self.on_cluster() {
            return invalidate_tag_script()
                .key(self.tag_key(tag))
                .run(&self.redis);
        }
        let tag_key = self.tag_key(tag);
        // Taken away at once: whatever is tagged after this belongs to a later invalidation.
        let members: Vec<Vec<u8>> = tag_pop_script().key(&tag_key).run(&self.redis)?;
        let mut removed = 0;
        for (i, chunk) in members.chunks(1000).enumerate() {
            match self.unlink(chunk) {
                Ok(n) => removed += n,
                Err(e) => {
                    // Put back what was not removed, so that calling again removes it.
                    let rest = &members[i * 1000..];
                    let mut add = redis::cmd("SADD");
                    add.arg(&tag_key).arg(rest);
                    if let Err(back) = self.redis.query_idempotent::<i64>(&add) {
                        log::warn!(
                            "cache: {} keys of tag {tag} could not be put back after a failed invalidation: {back}",
                            rest.len()
                        );
                    }
                    return Err(e);
                }
            }
        }
        Ok(removed)
    }

    /// Removes every key of this cache matching the glob-style `pattern` (`user:*`), with
    /// `SCAN` (over every master on a cluster) in batches of 1000 and `UNLINK`, never
    /// `KEYS`. Not atomic: a key written meanwhile may survive. Returns how many keys were
    /// removed.
    pub fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let full = format!(
            "{}{pattern}{}",
            glob_escape(&format!("{}v:{{", self.inner.namespace)),
            glob_escape("}")
        );
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(1000);
        let mut removed = 0;
        for key in ScanIter::<Vec<u8>>::keys(&self.redis)
            .pattern(&full)
            .count(1000)
        {
            batch.push(key?);
            if batch.len() >= 1000 {
                removed += self.unlink(&batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            removed += self.unlink(&batch)?;
        }
        Ok(removed)
    }

    fn unlink(&self, keys: &[Vec<u8>]) -> Result<u64> {
        self.redis.query_idempotent(redis::cmd("UNLINK").arg(keys))
    }

    /// Removes `key`. Returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let full = self.key(key);
        let n: u64 = self
            .redis
            .query_idempotent(redis::cmd("UNLINK").arg(&full))?;
        self.written(&full);
        Ok(n > 0)
    }

    /// Whether `key` holds a value (or a cached "not found").
    pub fn exists(&self, key: &str) -> Result<bool> {
        let n: u64 = self.redis.query(redis::cmd("EXISTS").arg(self.key(key)))?;
        Ok(n > 0)
    }

    /// Sets `key`'s TTL. Returns whether the key exists.
    pub fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let ms = ttl_ms("cache.ttl", ttl)?;
        let n: u64 = self
            .redis
            .query_idempotent(redis::cmd("PEXPIRE").arg(self.key(key)).arg(ms))?;
        Ok(n > 0)
    }

    /// Adds `by` to the counter at `key` (created at 0 with the default TTL; an existing
    /// counter keeps its TTL). Returns the new value. Never resent after an unknown fate.
    pub fn increment(&self, key: &str, by: i64) -> Result<i64> {
        let ms = self.ttl_or_default(None)?;
        let n = incr_script()
            .key(self.key(key))
            .arg(by)
            .arg(ms)
            .run(&self.redis)?;
        self.written(&self.key(key));
        Ok(n)
    }

    /// The counter at `key`.
    pub fn counter(&self, key: &str) -> Result<Option<i64>> {
        let v = self.read_raw(&self.key(key))?;
        self.count(v.is_some());
        v.map(|b| {
            i64::decode(&b).map_err(|reason| Error::Decode {
                key: self.key(key),
                reason,
            })
        })
        .transpose()
    }

    /// The values of many keys in one round trip (`MGET`), in order; counts a hit or a miss
    /// per key.
    pub fn mget<V: CacheValue, K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = match &self.inner.near {
            Some(near) => {
                let full: Vec<Vec<u8>> = keys
                    .iter()
                    .map(|k| self.key(k.as_ref()).into_bytes())
                    .collect();
                near.mget_values(&full)?
                    .into_iter()
                    .map(crate::script::convert)
                    .collect::<Result<_>>()?
            }
            None => {
                let mut cmd = redis::cmd("MGET");
                for k in keys {
                    cmd.arg(self.key(k.as_ref()));
                }
                self.redis.query(&cmd)?
            }
        };
        let (mut hits, mut misses) = (0, 0);
        let mut out = Vec::with_capacity(values.len());
        for (k, v) in keys.iter().zip(values) {
            match v {
                Some(b) => {
                    hits += 1;
                    out.push(self.decode(k.as_ref(), &b)?);
                }
                None => {
                    misses += 1;
                    out.push(None);
                }
            }
        }
        let c = &self.inner.counters;
        c.hits.fetch_add(hits, Relaxed);
        c.misses.fetch_add(misses, Relaxed);
        Ok(out)
    }

    /// Stores many values in one round trip (a pipeline of `SET .. PX`), each for `ttl`
    /// (the default TTL when `None`).
    pub fn mset<V: CacheValue, K: AsRef<str>>(
        &self,
        items: &[(K, V)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let ms = self.ttl_or_default(ttl)?;
        let mut pipe = Pipeline::new();
        for (k, v) in items {
            let bytes = self.encode(k.as_ref(), v, None)?;
            pipe.cmd("SET")
                .arg(self.key(k.as_ref()))
                .arg(bytes)
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        self.redis.run_idempotent(|con| pipe.query::<()>(con))?;
        for (k, _) in items {
            self.written(&self.key(k.as_ref()));
        }
        Ok(())
    }

    /// The value of `key`, or the loader's, stored for `ttl` (the default TTL when `None`).
    ///
    /// - **Single flight in this process**: concurrent misses for one key call the loader
    ///   once; the other callers wait for its value.
    /// - **Across processes**: the loading caller holds a short lock in Redis
    ///   ([`lock_ttl`](CacheBuilder::lock_ttl)); callers in other processes wait for its
    ///   value, at most [`lock_wait`](CacheBuilder::lock_wait), then load themselves.
    /// - **Early refresh** ([`early_refresh`](CacheBuilder::early_refresh)): a hot value is
    ///   reloaded by one caller shortly before it expires.
    /// - **When Redis is down** (a connection error, a timeout, an open breaker) the loader
    ///   is called and its value returned, not stored (counted in
    ///   [`CacheStats::degraded_loads`]); with a [near level](CacheBuilder::near) that has
    ///   [stale-if-error](crate::near::NearCacheBuilder::stale_if_error), its last value
    ///   within the staleness bound is returned first. [`degrade(false)`](CacheBuilder::degrade)
    ///   returns the error instead.
    ///
    /// When the loader fails, its error is returned to its caller, nothing is stored, and the
    /// callers that waited for it try again themselves. A failed early refresh is the
    /// exception: the value it meant to replace is still valid, so that is returned.
    pub fn get_or_set<V, E, F>(&self, key: &str, ttl: Option<Duration>, loader: F) -> Result<V, E>
    where
        V: CacheValue,
        E: From<Error>,
        F: FnOnce() -> Result<V, E>,
    {
        let got = self.load_through(key, ttl, || loader().map(Some), false)?;
        got.ok_or_else(|| {
            E::from(Error::Decode {
                key: self.key(key),
                reason: "a cached \"not found\" where a value was expected".to_owned(),
            })
        })
    }

    /// Like [`Cache::get_or_set`] for a loader that may find nothing (`Ok(None)`). With
    /// [`negative_ttl`](CacheBuilder::negative_ttl), "not found" is cached too.
    pub fn get_or_set_optional<V, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Option<V>, E>
    where
        V: CacheValue,
        E: From<Error>,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        self.load_through(key, ttl, loader, true)
    }

    fn load_through<V, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
        optional: bool,
    ) -> Result<Option<V>, E>
    where
        V: CacheValue,
        E: From<Error>,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let mut loader = Some(loader);
        match self.load_inner(key, ttl, &mut loader, optional) {
            Ok(v) => Ok(v),
            Err(Fail::Loader(e)) => Err(e),
            Err(Fail::Redis(e)) => match loader.take() {
                Some(loader) if self.inner.settings.degrade && redis_down(&e) => {
                    log::debug!("cache: Redis is down ({e}); loading {key} without storing it");
                    let c = &self.inner.counters;
                    c.degraded_loads.fetch_add(1, Relaxed);
                    c.loads.fetch_add(1, Relaxed);
                    loader().inspect_err(|_| {
                        c.load_errors.fetch_add(1, Relaxed);
                    })
                }
                _ => Err(E::from(e)),
            },
        }
    }

    fn load_inner<V, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: &mut Option<F>,
        optional: bool,
    ) -> Result<Option<V>, Fail<E>>
    where
        V: CacheValue,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let ms = self.ttl_or_default(ttl)?;
        let full = self.key(key);
        let deadline = crate::util::time::after(self.inner.settings.lock_wait);
        // 1. A read; with early refresh, also the time to live.
        if let Some((bytes, pttl)) = self.read(&full)? {
            self.count(true);
            if let Some(pttl) = pttl {
                if self.should_refresh(&bytes, pttl) {
                    return self.refresh(key, ms, bytes, loader, optional);
                }
            }
            return Ok(self.decode(key, &bytes)?);
        }
        self.count(false);
        // 2. Single flight in this process.
        loop {
            match self.join(&full) {
                Joined::Leader(leader) => {
                    return self.lead(key, ms, leader, loader, optional, deadline)
                }
                Joined::Follower(flight) => {
                    if let Some(bytes) = self.follow(&flight, deadline) {
                        self.inner.counters.stampedes_avoided.fetch_add(1, Relaxed);
                        return Ok(self.decode(key, &bytes)?);
                    }
                    if Instant::now() >= deadline {
                        // Waited long enough: load without the others.
                        return self.load_and_store(key, ms, None, None, loader, optional);
                    }
                    // The leader failed: read again, then maybe lead.
                    if let Some((bytes, _)) = self.read(&full)? {
                        self.inner.counters.stampedes_avoided.fetch_add(1, Relaxed);
                        return Ok(self.decode(key, &bytes)?);
                    }
                }
            }
        }
    }

    /// The stored frame of the full key `full`: through the near level when there is one.
    fn read_raw(&self, full: &str) -> Result<Option<Vec<u8>>> {
        match &self.inner.near {
            Some(near) => crate::script::convert(near.get_value(full.as_bytes())?),
            None => self.redis.query(redis::cmd("GET").arg(full)),
        }
    }

    /// After a write of `full` through this cache: the near level drops its copy (and
    /// spoils reads of it in flight), so that this process reads its own write.
    fn written(&self, full: &str) {
        if let Some(near) = &self.inner.near {
            near.invalidate_full(full.as_bytes());
        }
    }

    /// `GET`, or `GET` and `PTTL` in one round trip when early refresh is on (without a
    /// near level: a near hit has no time to live to look at).
    fn read(&self, full: &str) -> Result<Option<(Vec<u8>, Option<i64>)>> {
        if self.inner.settings.early_refresh.is_none() || self.inner.near.is_some() {
            return Ok(self.read_raw(full)?.map(|b| (b, None)));
        }
        let mut pipe = Pipeline::new();
        pipe.cmd("GET").arg(full).cmd("PTTL").arg(full);
        let (v, pttl): (Option<Vec<u8>>, i64) = self.redis.pipeline(&pipe)?;
        Ok(v.map(|b| (b, Some(pttl))))
    }

    /// XFetch: refresh when `-delta * beta * ln(rand) >= time to live`.
    fn should_refresh(&self, bytes: &[u8], pttl_ms: i64) -> bool {
        let (Some(beta), Ok(Frame::Value(_, Some(delta)))) =
            (self.inner.settings.early_refresh, unframe(bytes))
        else {
            return false;
        };
        if pttl_ms < 0 {
            return false;
        }
        let gap = -(delta.as_secs_f64() * 1000.0) * beta * ids::unit_random().ln();
        gap >= pttl_ms as f64
    }

    /// An early refresh: one caller (in this process, and across processes through the
    /// lock) reloads; everyone else, and this caller when someone else is at it, gets the
    /// current value.
    fn refresh<V, E, F>(
        &self,
        key: &str,
        ms: u64,
        current: Vec<u8>,
        loader: &mut Option<F>,
        optional: bool,
    ) -> Result<Option<V>, Fail<E>>
    where
        V: CacheValue,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let full = self.key(key);
        let Joined::Leader(mut leader) = self.join(&full) else {
            return Ok(self.decode(key, &current)?);
        };
        let token = ids::token();
        let locked: Result<Option<String>> = self.redis.query(
            redis::cmd("SET")
                .arg(self.lock_key(key))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms("cache.lock_ttl", self.inner.settings.lock_ttl)?),
        );
        if !matches!(locked, Ok(Some(_))) {
            // Someone else refreshes (or Redis just failed): the current value is valid.
            leader.outcome = Some(Outcome::Stored(current.clone()));
            drop(leader);
            return Ok(self.decode(key, &current)?);
        }
        self.inner.counters.early_refreshes.fetch_add(1, Relaxed);
        match self.load_and_store(key, ms, Some(&mut leader), Some(token), loader, optional) {
            Ok(v) => Ok(v),
            // The current value is still valid: a failed early refresh is not the reader's
            // problem (the failure is counted in `load_errors`).
            Err(_) => {
                log::debug!("cache: early refresh of {key} failed; serving the current value");
                leader.outcome = Some(Outcome::Stored(current.clone()));
                Ok(self.decode(key, &current)?)
            }
        }
    }

    fn join(&self, full: &str) -> Joined<'_> {
        let mut flights = self.inner.flights.lock();
        if let Some(f) = flights.get(full) {
            return Joined::Follower(f.clone());
        }
        let flight = Arc::new(Flight::default());
        flights.insert(full.to_owned(), flight.clone());
        Joined::Leader(Leader {
            cache: self,
            key: full.to_owned(),
            flight,
            outcome: None,
        })
    }

    /// Waits for the leader's outcome until `deadline`: the stored frame, or `None` when it
    /// failed or took too long.
    fn follow(&self, flight: &Flight, deadline: Instant) -> Option<Vec<u8>> {
        let mut outcome = flight.outcome.lock();
        while outcome.is_none() {
            if flight.done.wait_until(&mut outcome, deadline).timed_out() {
                break;
            }
        }
        match &*outcome {
            Some(Outcome::Stored(bytes)) => Some(bytes.clone()),
            _ => None,
        }
    }

    /// The in-process leader: takes the cross-process lock (or waits for the process that
    /// holds it), loads and stores.
    fn lead<V, E, F>(
        &self,
        key: &str,
        ms: u64,
        mut leader: Leader<'_>,
        loader: &mut Option<F>,
        optional: bool,
        deadline: Instant,
    ) -> Result<Option<V>, Fail<E>>
    where
        V: CacheValue,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let full = self.key(key);
        let lock = self.lock_key(key);
        let lock_ms = ttl_ms("cache.lock_ttl", self.inner.settings.lock_ttl)?;
        let mut pause = Duration::from_millis(2);
        let mut waited = false;
        loop {
            let token = ids::token();
            let reply: Vec<Value> = get_or_lock_script()
                .key(&full)
                .key(&lock)
                .arg(&token)
                .arg(lock_ms)
                .run(&self.redis)?;
            match reply.first() {
                Some(Value::Int(1)) => {
                    let bytes = match reply.get(1) {
                        Some(Value::BulkString(b)) => b.clone(),
                        _ => Vec::new(),
                    };
                    if waited {
                        self.inner.counters.stampedes_avoided.fetch_add(1, Relaxed);
                    }
                    leader.outcome = Some(Outcome::Stored(bytes.clone()));
                    drop(leader);
                    return Ok(self.decode(key, &bytes)?);
                }
                Some(Value::Int(2)) => {
                    return self.load_and_store(
                        key,
                        ms,
                        Some(&mut leader),
                        Some(token),
                        loader,
                        optional,
                    );
                }
                _ => {
                    // Another process is loading: wait for its value.
                    let now = Instant::now();
                    if now >= deadline {
                        return self.load_and_store(
                            key,
                            ms,
                            Some(&mut leader),
                            None,
                            loader,
                            optional,
                        );
                    }
                    waited = true;
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Calls the loader, stores its value (and releases the lock when `token` is ours), and
    /// publishes the outcome to the in-process waiters of `leader`. When storing fails
    /// because Redis is down, the loaded value is returned all the same (degraded).
    fn load_and_store<V, E, F>(
        &self,
        key: &str,
        ms: u64,
        leader: Option<&mut Leader<'_>>,
        token: Option<String>,
        loader: &mut Option<F>,
        optional: bool,
    ) -> Result<Option<V>, Fail<E>>
    where
        V: CacheValue,
        F: FnOnce() -> Result<Option<V>, E>,
    {
        let c = &self.inner.counters;
        let Some(loader) = loader.take() else {
            return Err(Fail::Redis(Error::config(
                "cache.loader",
                "the loader was already called",
            )));
        };
        c.loads.fetch_add(1, Relaxed);
        let started = Instant::now();
        let loaded = loader();
        let took = started.elapsed();
        let value = match loaded {
            Ok(v) => v,
            Err(e) => {
                c.load_errors.fetch_add(1, Relaxed);
                if let Some(token) = token {
                    let unlocked = unlock_script()
                        .key(self.lock_key(key))
                        .arg(token)
                        .run::<i64>(&self.redis);
                    if let Err(u) = unlocked {
                        log::debug!("cache: releasing the load lock of {key} failed: {u}");
                    }
                }
                return Err(Fail::Loader(e));
            }
        };
        match self.store_loaded(key, ms, leader, token, &value, took, optional) {
            Ok(()) => Ok(value),
            Err(e) if self.inner.settings.degrade && redis_down(&e) => {
                log::debug!("cache: storing {key} failed ({e}); returning the loaded value");
                c.degraded_loads.fetch_add(1, Relaxed);
                Ok(value)
            }
            Err(e) => Err(Fail::Redis(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store_loaded<V: CacheValue>(
        &self,
        key: &str,
        ms: u64,
        leader: Option<&mut Leader<'_>>,
        token: Option<String>,
        value: &Option<V>,
        took: Duration,
        optional: bool,
    ) -> Result<()> {
        let (bytes, ttl) = match value {
            Some(v) => (self.encode(key, v, Some(took))?, ms),
            None => match (optional, self.inner.settings.negative_ttl) {
                (true, Some(neg)) => (absent_frame(), ttl_ms("cache.negative_ttl", neg)?),
                _ => {
                    // Nothing to store: release the lock, tell the waiters to load themselves.
                    if let Some(token) = token {
                        unlock_script()
                            .key(self.lock_key(key))
                            .arg(token)
                            .run::<i64>(&self.redis)?;
                    }
                    return Ok(());
                }
            },
        };
        match token {
            Some(token) => store_script()
                .key(self.key(key))
                .key(self.lock_key(key))
                .arg(bytes.as_slice())
                .arg(ttl)
                .arg(token)
                .run::<()>(&self.redis)?,
            None => self.redis.query_idempotent::<()>(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(bytes.as_slice())
                    .arg("PX")
                    .arg(ttl),
            )?,
        }
        self.written(&self.key(key));
        if let Some(leader) = leader {
            leader.outcome = Some(Outcome::Stored(bytes));
        }
        Ok(())
    }
}

/// Why a load failed: Redis (maybe down: then the loader is called anyway) or the loader.
enum Fail<E> {
    Redis(Error),
    Loader(E),
}

impl<E> From<Error> for Fail<E> {
    fn from(e: Error) -> Fail<E> {
        Fail::Redis(e)
    }
}
