//! # redkit: the synchronous Redis toolkit
//!
//! For worker-thread applications, CLI batch jobs and plain `fn main()` programs that do not
//! use async: a pooled, thread-safe, blocking client built on the [`redis`] crate that
//! survives outages, with retries that never apply a command twice, a circuit breaker, TLS,
//! Lua scripts that survive `SCRIPT FLUSH`, and typed errors; a heartbeat, reconnect loop and
//! lifecycle [`events`]; [rate limiters](ratelimit) (GCRA, sliding log and window, fixed
//! window, token bucket, concurrency, several limits at once) on the server's clock; and
//! [Pub/Sub](pubsub) through a subscriber thread that never goes deaf (it pings, reconnects
//! and resubscribes by itself) and hands messages over bounded crossbeam channels. Also the
//! helpers services otherwise write by hand: a [`cache`] with stampede-proof loading,
//! tags and pattern invalidation, [sessions](session), [monitoring](monitor) with per-command
//! metrics, named connections ([`Registry`]) and [batch helpers](scan) for CLI jobs.
//!
//! A [near cache](near): reads answered in process (in well under a microsecond), kept coherent by
//! the server's invalidations (`CLIENT TRACKING`, RESP3 or RESP2, default or broadcast
//! mode), cleared whenever the connection that carries them is lost; on its own or as the
//! in-process level of a [`Cache`], which also keeps answering with its loader while Redis
//! is down.
//!
//! [Distributed locks](lock): a mutex with fencing tokens, fast hand-off and a watchdog, a
//! semaphore, a read-write lock, Redlock over several servers, and leader election.
//!
//! At-least-once [work queues](queue) for worker threads: streams with retries, dead letters
//! and claims of dead workers' jobs, plain lists, delayed jobs, and a worker pool.
//!
//! Runs on Redis 6.0 and later and on Valkey: see [`version`] for the servers tested, the
//! version each feature needs, and what redkit does on an older server.
//!
//! These docs are the guide. This page covers the client itself (connections, failures,
//! deadlines, Sentinel and Cluster); each module's page covers its topic in full:
//!
//! | topic | read |
//! |---|---|
//! | every setting, URL forms, defaults | [`config`] |
//! | what is retried, and why a command whose fate is unknown is not resent | [`retry`] |
//! | the heartbeat, health, reconnecting, lifecycle events | [`heartbeat`], [`events`] |
//! | pub/sub, keyspace events, typed topics | [`pubsub`] |
//! | locks, their safety model, fencing tokens, leader election | [`lock`] |
//! | rate limits | [`ratelimit`] |
//! | caching, in Redis and in process | [`cache`], [`near`] |
//! | sessions | [`session`] |
//! | work queues | [`queue`] |
//! | `INFO`, `SLOWLOG`, a sampler, per-command metrics, the `metrics` and `tracing` features | [`monitor`], [`metrics`] |
//! | named connections | [`registry`] |
//! | `SCAN` iterators and bulk writes for batch jobs | [`scan`] |
#![cfg_attr(
    feature = "testing",
    doc = "| real servers, Sentinel and Cluster topologies, a fault proxy, a hostile fake server for your tests | [`testing`] |"
)]
#![cfg_attr(
    not(feature = "testing"),
    doc = "| real servers, Sentinel and Cluster topologies, a fault proxy, a hostile fake server for your tests | `testing` (feature `testing`) |"
)]
//!
//! ## Quick start
//!
//! ```no_run
//! use redis::Commands;
//! use redkit::Redis;
//!
//! fn main() -> redkit::Result<()> {
//!     // A URL, a `Config`, or `Redis::from_env()` for REDIS_URL.
//!     let redis = Redis::connect("redis://127.0.0.1:6379/0?client_name=demo")?;
//!
//!     // Every `redis::Commands` method works on the handle (it is cheap to clone and share
//!     // between threads); each call checks a connection out of the pool.
//!     let mut r = redis.clone();
//!     r.set::<_, _, ()>("greeting", "hello")?;
//!     let greeting: String = r.get("greeting")?;
//!     assert_eq!(greeting, "hello");
//!
//!     // Pipelines and transactions:
//!     let mut pipe = redkit::Pipeline::new();
//!     pipe.cmd("INCR").arg("hits").cmd("EXPIRE").arg("hits").arg(60).ignore();
//!     let (hits,): (i64,) = redis.pipeline(&pipe)?;
//!
//!     let (balance,): (i64,) = redis.transaction(&["balance"], |con, pipe| {
//!         let now: i64 = con.get::<_, Option<i64>>("balance")?.unwrap_or(0);
//!         pipe.cmd("SET").arg("balance").arg(now + hits).ignore()
//!             .cmd("GET").arg("balance");
//!         Ok(())
//!     })?;
//!     println!("balance is now {balance}");
//!     Ok(())
//! }
//! ```
//!
//! ## What happens when things fail
//!
//! Every failure is an [`Error`] with an [`ErrorClass`] (connection, timeout, auth,
//! permission, busy, read-only, TLS, pool timeout, circuit open...) derived from the `redis`
//! crate's error kinds and codes, and a [`Delivery`] that says whether the command could have
//! run. Calls through the handle are retried under the [`RetryPolicy`] (attempts, overall
//! deadline, exponential backoff with jitter), but a command whose fate is unknown (a reply
//! that timed out) is never resent unless it is read-only or you say it is idempotent: an
//! `INCR` is never applied twice. See [`retry`] for the full table.
//!
//! A [circuit breaker](BreakerConfig) opens after consecutive failures (or a failure rate),
//! makes calls fail fast with [`Error::CircuitOpen`] while open, then lets probe calls
//! through. A connection that saw an unrecoverable error is closed, never handed out again.
//!
//! ## Deadlines
//!
//! Every call ends by a deadline that holds whatever the server does (nothing at all, a
//! reply dripping a byte at a time, garbage): each read waits at most the time left.
//!
//! - **Opening a connection** (resolve, connect, TLS, `HELLO`/`AUTH`, `SELECT`) takes at
//!   most the connect timeout, as a whole.
//! - **One command**: its write at most the write timeout, its reply at most the response
//!   timeout, each as a whole. **A pipeline** or transaction: the same, the replies of all
//!   its commands sharing one response timeout.
//! - **A call through the handle**, retries and backoff included, ends by its retry
//!   deadline ([`RetryPolicy::max_elapsed`](crate::RetryPolicy::max_elapsed)) plus one
//!   response timeout at most: no attempt starts after the retry deadline and no read or
//!   write of any attempt goes past it plus one response timeout.
//! - A connection that passed a deadline mid-reply (or saw a reset, a corrupt reply, a
//!   reply over [`max_reply_size`](ConfigBuilder::max_reply_size)) is closed, never reused
//!   out of sync; the error says whether the command may have run ([`Delivery`]).
//! - [`Redis::close`] and dropping the last clone return within [`CLOSE_BOUND`] (300 ms),
//!   in a black hole too; a [`Subscriber`](pubsub::Subscriber) within
//!   [`pubsub::STOP_BOUND`], a [`Sampler`](monitor::Sampler) within
//!   [`monitor::SAMPLER_STOP_BOUND`], a worker pool within its shutdown timeout. A
//!   background thread still finishing a call then ends by that call's own deadline.
//!
//! ## Connections, and state that never leaks
//!
//! | kind | get it with | for |
//! |---|---|---|
//! | pooled | `redis::Commands` on the handle, [`Redis::query`], [`Redis::pipeline`], [`Redis::transaction`], [`Redis::run`], [`Redis::conn`] | short commands, pipelines, transactions |
//! | multiplexed | the same handle with [`ConfigBuilder::multiplexed`] (`?multiplexed=1`) | many threads doing short commands over one socket: their commands go out together, each gets its own reply |
//! | dedicated | [`Redis::dedicated`] | blocking loops (`BLPOP`, `XREAD BLOCK`, `WAIT`), `MONITOR`, state across calls (`SELECT`, `CLIENT TRACKING`, `WATCH` by hand) |
//! | subscriber | [`Subscriber::new`](pubsub::Subscriber::new) | pub/sub |
//!
//! Which to pick: the pool (the default) for a few threads, transactions and per-call
//! connections; the multiplexed connection when many threads (dozens and more) share a
//! handle: one socket instead of one per thread, no queue for a pool slot, and commands of
//! all threads written together. On it, blocking commands, [`Redis::transaction`],
//! [`Redis::run`] and [`Redis::conn`] still use the pool. A command's reply waits behind the
//! replies written before it on the same connection (the head-of-line effect: a 100 MB
//! value being read delays the callers behind it by its transfer time, at most their
//! response timeout); each caller keeps its own deadline. A dedicated connection for
//! anything that blocks or keeps state.
//!
//! A pooled connection always reaches the next caller in the configured state (database,
//! protocol, client name, no subscription, no `MULTI`, no `WATCH`, no tracking, replies on).
//! Through the handle, commands that would change it (`SELECT`, `(P|S)SUBSCRIBE`,
//! `MONITOR`, lone `MULTI`/`EXEC`/`DISCARD`/`WATCH`, `CLIENT TRACKING`/`REPLY`/`SETNAME`/
//! `NO-EVICT`/`NO-TOUCH`, `READONLY`, `READWRITE`, `HELLO`, `AUTH`, `RESET`, `QUIT`) are
//! refused before anything is sent with [`Error::WrongConnection`], which says what to use
//! instead (whole transactions, atomic pipelines and `UNWATCH` go through). On a connection
//! checked out with [`Redis::conn`] anything may be sent; if it leaves the connection changed
//! (or inside `MULTI`, or with a `WATCH` in force) the connection is closed instead of
//! returned.
//!
//! ## Key prefix
//!
//! A handle with a [`key_prefix`](ConfigBuilder::key_prefix) puts it in front of every key
//! of every command it sends (commands, pipelines, transactions and their `WATCH`, script
//! and function `KEYS`, every key of multi-key commands), pooled and dedicated
//! connections alike, from a table of where each command keeps its keys. Not prefixed:
//! patterns (`SCAN MATCH`, `KEYS`, `SORT BY`/`GET`), channels, module commands redkit does
//! not know, and replies (a `KEYS` or `BLPOP` reply shows full names).
//! [`ScanIter::keys`](scan::ScanIter::keys) on a prefixed handle scans that handle's keys
//! and yields them without the prefix. Helpers (locks, limiters, caches, sessions, queues)
//! put the prefix in front of their keys once ([`Redis::key`]).
//!
//! ## Resilience
//!
//! Each handle runs one [`heartbeat`] thread that `PING`s the server on its own
//! connection with a deadline, keeps the [`Health`], and reconnects with backoff when the
//! server goes away. During an outage:
//!
//! - Calls fail fast: none waits out the checkout timeout for a connection that cannot come;
//!   it tries one connection itself and returns that error (at once when the server refuses,
//!   after the connect timeout when packets vanish), and once the breaker opens calls fail
//!   with [`Error::CircuitOpen`] without touching the network. What waits: a reply from a slow
//!   server (response timeout), a checkout while every connection is busy (checkout timeout).
//! - A black-holed connection is noticed within heartbeat interval + deadline; a call that
//!   sees the server drop a connection wakes the heartbeat at once.
//! - On recovery every pooled connection made before the outage is retired and the breaker
//!   closes *before* [`Event::Reconnected`] is sent: from then on no call meets a stale
//!   connection.
//!
//! What happened is told by [`events`] on bounded channels (a slow listener loses
//! events, it never stalls anyone) and by [`Redis::stats`]. [`Redis::close`] (or dropping the
//! last clone) stops the heartbeat and closes every connection.
//!
//! ```no_run
//! use redkit::{Event, Health, Redis};
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let events = redis.events();
//! // ... later, from a monitoring thread:
//! while let Ok(event) = events.try_recv() {
//!     if let Event::Reconnected { downtime, .. } = event {
//!         eprintln!("redis was down for {downtime:?}");
//!     }
//! }
//! let stats = redis.stats();
//! if stats.health != Health::Healthy {
//!     eprintln!("redis is {}: heartbeat p99 {:?}", stats.health, stats.heartbeat_latency.p99);
//! }
//! redis.close()?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! The `testing` feature has what you need to test your own code against outages: a real
//! `redis-server` launcher (kill, restart on the same port) and a fault-injection proxy
//! (delay, black hole, refuse, cut).
//!
//! ## Sentinel and Cluster
//!
//! **Sentinel** ([`ConfigBuilder::sentinel`]). The handle follows every sentinel (a thread
//! each, `redkit-sentinel`). When the sentinel leading a failover announces its start
//! (`+selected-slave`, [`Event::FailoverStarted`]), nothing more is sent to the old master:
//! calls through the handle wait, each within its own retry deadline, and a command about to
//! leave on a connection to the old master is refused unsent (and resent by the retry).
//! When the promoted replica answers as a master (`+promoted-slave`), every connection is
//! retired and the breaker closed, then [`Event::FailoverDetected`] is sent and the waiting
//! calls go to the new master. So on `SENTINEL FAILOVER` calls pause (until the sentinels
//! see the promotion: up to their `INFO` period during a failover, one second) instead of
//! failing, and no acknowledged write is lost unless it reached the old master just before
//! the start and had not been replicated when the replica was promoted (send `WAIT 1` after
//! such writes to close that window). When the master dies, calls fail (`Connection`, then
//! `CircuitOpen` once the breaker opens) until the sentinels agree and promote; from
//! `FailoverDetected` on they go to the new master, and none fails with `CircuitOpen`
//! because of the old one. An aborted failover ([`Event::FailoverAborted`]) lets the calls
//! go to the old master again.
//!
//! **Cluster** ([`ConfigBuilder::cluster`]). Commands go to the master owning their first
//! key's slot, following `MOVED` and `ASK` (at most
//! [`cluster_max_redirects`](ConfigBuilder::cluster_max_redirects) times); multi-key
//! commands (`MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`) are split per slot, alone or
//! inside pipelines, and put back in order; `DBSIZE` (summed), `KEYS` (united), `INFO` (each
//! master's, after a `# Node host:port` line), `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD`/`FLUSH`
//! and `FUNCTION LOAD`/`DELETE`/`FLUSH`/`RESTORE` go to every master. Reads may go to
//! replicas ([`ConfigBuilder::cluster_read_from_replicas`], with its staleness bound).
//! Every node has its own breaker ([`Event::ClusterNodeBreakerChanged`]), and at each beat
//! the heartbeat asks every node for its `ROLE`: one that does not answer within the
//! heartbeat timeout is [`Event::ClusterNodeDown`] (its breaker opens, calls to it fail
//! fast: a black hole is noticed within one interval plus the timeout), and
//! [`Event::ClusterNodeUp`] when it answers again. A change of the slot map (a failover, a
//! reshard of any number of slots) is one [`Event::ClusterTopologyChanged`], sent once the
//! map has not changed for a second. When a master dies, calls to its slots fail (connection
//! errors, then `CircuitOpen`) until its replica is promoted; with Redis' default
//! `cluster-require-full-coverage yes` the other masters answer `CLUSTERDOWN` (class
//! `Busy`, retried within the deadline) from the moment the cluster marks the node failed
//! until the promotion. A planned `CLUSTER FAILOVER` and slots moved under load are followed
//! without failed calls. The [multiplexed connection](ConfigBuilder::multiplexed) works on
//! a cluster too (one per node). [`cache`], [`session`] and the rate limiters spread their
//! keys over every slot.
//!
//! ## Logging
//!
//! redkit logs through the [`log`] facade and never installs a logger. `warn`: problems you
//! should fix (cannot connect, breaker opened, reconnect loop gave up, TLS verification off);
//! `info`: connection state changes (connected, lost, reconnected, health, closed); `debug`:
//! details (retries, reconnect attempts, new connections); `trace`: wire-level details.
//! Passwords and private keys never appear in logs, `Debug`, `Display` or errors.
//!
//! With the `metrics` feature, redkit also reports to the `metrics` facade, and with
//! `tracing` it opens one span per call (see [`metrics`] for both); the log output stays
//! the same.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls-native-tls` | yes | TLS (`rediss://`, [`ConfigBuilder::tls`]) through the platform's library (OpenSSL on Linux) |
//! | `tls-rustls` | | TLS through rustls (ring, the system's roots); wins when both TLS features are on |
//! | `json` | | typed JSON values: `cache::Json`, `pubsub::Topic`, JSON sessions |
//! | `serde` | | [`Config`] from and to TOML, JSON... (`config::settings`) |
//! | `metrics` | | counters, gauges and histograms through the `metrics` facade ([`metrics`]) |
//! | `tracing` | | one `tracing` span per call, OpenTelemetry database conventions ([`metrics`]) |
//! | `testing` | | real `redis-server` launchers, TLS material, a fault proxy, a hostile server (`redkit::testing`) |
//!
//! Without a TLS feature (`default-features = false`) redkit builds without any TLS
//! library, and a TLS setting makes [`ConfigBuilder::build`] fail with a
//! [`Config`](ErrorClass::Config) error saying TLS is not compiled in.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod breaker;
pub mod cache;
mod client;
mod cluster;
pub mod config;
mod conn;
mod error;
pub mod events;
pub mod heartbeat;

pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod near;
mod observe;
mod pool;
pub mod prelude;
pub mod pubsub;
pub mod queue;
pub mod ratelimit;
pub mod registry;
pub mod retry;
pub mod scan;
mod script;
mod sentinel;
pub mod session;
mod stats;
mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod util;
pub mod version;

pub use cache::{Cache, CacheStats};
pub use client::{DedicatedConnection, IntoConfig, Redis, CLOSE_BOUND};
pub use config::{
    Addr, ClusterConfig, Config, ConfigBuilder, MultiplexConfig, PoolConfig, Protocol,
    SentinelConfig, SentinelRole, Timeouts, TlsConfig,
};
pub use config::{BreakerConfig, BreakerState, FailureRate};
pub use error::{Delivery, Error, ErrorClass, Result};
pub use events::{Event, Health};
pub use heartbeat::HeartbeatConfig;
pub use lock::{Lock, LockGuard};
pub use pool::PooledConnection;
pub use queue::{Job, ListQueue, StreamQueue};
pub use registry::Registry;
pub use retry::{Backoff, BackoffDelays, Jitter, RetryPolicy};
pub use script::{Pipeline, Script, ScriptCall};
pub use session::{Session, SessionStore};
pub use stats::{ErrorCounts, PoolStats, Stats};
pub use util::histogram::Latency;
pub use version::{ServerFlavor, ServerVersion};

/// The `redis` crate, re-exported so that versions always match.
pub use redis;

/// The README's code blocks, compiled (and its `no_run` blocks type-checked) by the doc tests,
/// so that the quick start keeps working as shown.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
