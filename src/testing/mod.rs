//! Test support: a real `redis-server` launcher, run-time generated TLS material and a
//! fault-injection proxy.
//!
//! Enabled by the `testing` feature, usually as a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! redkit = { version = "0.2", features = ["testing"] }
//! ```
//!
//! Everything here is meant for test suites (ours and yours): every server listens on
//! `127.0.0.1` only, on a fresh port, out of a private temporary directory, persists nothing,
//! and is killed when its [`RedisServer`] handle is dropped, even if the test panics. Every
//! thread of the fault proxy and of the fake server is named and joined when its owner is
//! dropped.
//!
//! The `redis-server` binary is taken from the `REDKIT_REDIS_SERVER` environment variable, or
//! else looked up (as `redis-server`, then `valkey-server`) in `PATH`, `/usr/bin` and
//! `/usr/local/bin`. When none is found, [`TestingError::ServerNotFound`] says how to install
//! one. The launchers follow the binary's version ([`ServerBinary`], asked once per binary):
//! settings that came with Redis 7.0 (`enable-debug-command`, `cluster-port`) or 6.2
//! (`cluster-allow-replica-migration`) are written only where the server knows them, so Redis
//! 6.0 and later and every Valkey run; [`ServerBinary::has_tls`] tells whether the binary was
//! built with TLS, and [`ServerBinary::supports`] whether it has a feature, for tests to skip
//! what it cannot run.
//!
//! # Fault injection
//!
//! A [`FaultProxy`] sits between a client and a server (`FaultProxy::start_for(&server)`,
//! then connect to [`FaultProxy::url`]) and simulates outages on demand with
//! [`FaultProxy::set_mode`]: added latency ([`ProxyMode::Delay`]), a silent, half-open
//! server ([`ProxyMode::BlackHole`]) or refused connections ([`ProxyMode::Refuse`]);
//! [`FaultProxy::cut`] resets every current connection on both sides. A mode applies to
//! existing and new connections alike. Unlike killing the server, the server's state
//! survives, and the fault ends the moment you switch back to [`ProxyMode::Pass`].
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::testing::{FaultProxy, ProxyMode, RedisServer};
//!
//! let server = RedisServer::start()?;
//! let proxy = FaultProxy::start_for(&server)?;
//! let redis = redkit::Redis::connect(proxy.url())?;             // your code under test
//! proxy.set_mode(ProxyMode::Delay(Duration::from_millis(200)));  // a slow network
//! proxy.set_mode(ProxyMode::BlackHole);  // accepted, nothing forwarded: a half-open server
//! proxy.set_mode(ProxyMode::Refuse);     // new connections are reset at once
//! proxy.set_mode(ProxyMode::Pass);
//! proxy.cut();                           // reset every current connection, both sides
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For what a real server never does, a [`FakeServer`] answers each command as the test
//! says ([`Action`]): slowly, a byte at a time, never, with garbage, or with a reply that
//! never ends.
//!
//! # Topologies
//!
//! [`SentinelSetup`] runs a Redis Sentinel deployment (a master, a replica and 3 sentinels
//! by default, `redis-server --sentinel`, so no separate `redis-sentinel` binary is needed),
//! with helpers for a planned failover ([`SentinelSetup::failover`]), killing the master and
//! waiting for the sentinels to agree on the new one. [`RedisCluster`] runs a Redis Cluster
//! (3 masters and 3 replicas by default) created with `redis-cli --cluster create`, with
//! helpers to kill a node, fail over, and move a slot through its `MIGRATING`/`IMPORTING`
//! states ([`RedisCluster::start_slot_migration`]); [`ClusterBuilder::tls`] runs every node
//! TLS-only, with TLS on the cluster bus and replication too. `redis-cli` (or `valkey-cli`) comes from
//! the [`REDIS_CLI_ENV`] variable, or next to the server binary, or `PATH` (on Debian it is in the
//! `redis-tools` package, which `redis-server` depends on). Dropping either kills all its
//! processes.
//!
//! # Example
//!
//! ```no_run
//! use redkit::testing::{RedisServer, TestingError, TlsMaterial};
//!
//! # fn main() -> Result<(), TestingError> {
//! // A plain server.
//! let server = RedisServer::start()?;
//! let client = redis::Client::open(server.url())?;
//! let mut con = client.get_connection()?;
//! let pong: String = redis::cmd("PING").query(&mut con)?;
//! assert_eq!(pong, "PONG");
//!
//! // A password-protected, TLS-only server that requires client certificates.
//! let tls = TlsMaterial::generate()?;
//! let mut secure = RedisServer::builder()
//!     .password("s3cret")
//!     .acl_user("user reader on >reader-pw ~* +get")
//!     .tls(tls.clone())
//!     .tls_auth_clients(true)
//!     .start()?;
//! // `admin()` is authenticated as the default user, with the client certificate.
//! let mut admin = secure.admin()?;
//! redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("10mb").exec(&mut admin)?;
//!
//! // Kill it (SIGKILL), then bring it back on the same port; `restart` returns once it
//! // answers again (with no data: nothing is persisted).
//! secure.kill()?;
//! secure.restart()?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod binary;
mod cluster;
mod fake;
mod proxy;
mod sentinel;
mod server;
mod tls;

pub use binary::ServerBinary;
pub use cluster::{ClusterBuilder, RedisCluster, SlotMigration, REDIS_CLI_ENV};
pub use fake::{Action, FakeServer};
pub use proxy::{FaultProxy, ProxyMode};
pub use sentinel::{SentinelBuilder, SentinelSetup};
pub use server::{wait_until, RedisServer, ServerBuilder};
pub use tls::TlsMaterial;

/// Name of the environment variable that points at the `redis-server` binary to use.
pub const REDIS_SERVER_ENV: &str = "REDKIT_REDIS_SERVER";

/// Errors of the test-support helpers.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestingError {
    /// No usable `redis-server` binary was found.
    ServerNotFound {
        /// Where it was looked for.
        searched: String,
    },
    /// The server did not come up (it exited, or did not answer `PING` in time).
    StartFailed {
        /// What went wrong.
        reason: String,
        /// The last lines of the server's log file.
        log_tail: String,
    },
    /// A condition awaited with [`wait_until`] (or a server shutdown) did not happen in time.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// A file-system or process operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A Redis command or connection failed.
    Redis(redis::RedisError),
    /// Generating TLS keys or certificates failed.
    Tls(openssl::error::ErrorStack),
}

impl fmt::Display for TestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerNotFound { searched } => write!(
                f,
                "redis-server not found (searched {searched}); install it with \
                 `apt-get install -y redis-server` on Debian/Ubuntu, or set \
                 {REDIS_SERVER_ENV} to its path"
            ),
            Self::StartFailed { reason, log_tail } => {
                write!(f, "redis-server failed to start: {reason}")?;
                if log_tail.is_empty() {
                    write!(f, " (log is empty)")
                } else {
                    write!(f, "\n--- redis-server log tail ---\n{log_tail}")
                }
            }
            Self::Timeout { what, timeout } => {
                write!(f, "timed out after {timeout:?} waiting for {what}")
            }
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Redis(e) => write!(f, "redis error: {e}"),
            Self::Tls(e) => write!(f, "TLS material generation failed: {e}"),
        }
    }
}

impl std::error::Error for TestingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Redis(e) => Some(e),
            Self::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for TestingError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<openssl::error::ErrorStack> for TestingError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Self::Tls(e)
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestingError {
    let context = context.into();
    move |source| TestingError::Io { context, source }
}

/// A freshly created directory under [`std::env::temp_dir`], removed (recursively) on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/redkit-<label>-<pid>-<counter>-<nanos>`.
    pub(crate) fn new(label: &str) -> Result<Self, TestingError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last_err = None;
        for _ in 0..8 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                "redkit-{label}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            // `create_dir` (not `_all`) fails on an existing path, so the directory is ours.
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(io_err("creating a unique temporary directory")(e))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}
