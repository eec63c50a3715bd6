//! Configuration: a consuming builder validated into an immutable [`Config`], also parsed from
//! a URL or from the `REDIS_URL` environment variable.
//!
//! [`Redis::connect`](crate::Redis::connect) takes any of them: a [`Config`], a
//! [`ConfigBuilder`] (built on the way), or a URL. To start from a URL and change a few
//! settings in code, use [`ConfigBuilder::from_url`] (or [`ConfigBuilder::from_env`]) and go on
//! with the builder. With the `serde` feature a [`Config`] also reads from and writes to TOML,
//! JSON or any other serde format (the `settings` module).
//!
//! ```
//! use std::time::Duration;
//! use redkit::{Config, Timeouts};
//!
//! // From a URL, with redkit's own query parameters:
//! let config: Config = "redis://app:s3cret@127.0.0.1:6379/2?client_name=worker&response_timeout=250ms"
//!     .parse()?;
//! assert_eq!(config.db(), 2);
//! // The password never shows:
//! assert!(!format!("{config:?} {config}").contains("s3cret"));
//!
//! // With the builder:
//! let config = Config::builder()
//!     .host("127.0.0.1")
//!     .port(6379)
//!     .client_name("worker")
//!     .timeouts(Timeouts::default().response(Duration::from_millis(250)))
//!     .pool_max_size(32)
//!     .build()?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! ## Every setting, at once
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::{Backoff, BreakerConfig, Config, HeartbeatConfig, Jitter, RetryPolicy, Timeouts};
//!
//! let config = Config::builder()
//!     .host("redis.internal").port(6380)
//!     .username("app").password("s3cret")          // ACL user; never shown in Debug/Display
//!     .db(2)
//!     .client_name("billing-worker")                // CLIENT SETNAME on every connection
//!     .timeouts(Timeouts::default()
//!         .connect(Duration::from_secs(2))
//!         .response(Duration::from_millis(500))
//!         .write(Duration::from_millis(500))
//!         .checkout(Duration::from_secs(1)))
//!     .pool_max_size(32).pool_min_idle(2)
//!     .retry(RetryPolicy::default()
//!         .max_attempts(4)
//!         .max_elapsed(Duration::from_secs(3))
//!         .backoff(Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1))
//!             .jitter(Jitter::Decorrelated)))
//!     .breaker(BreakerConfig::default().consecutive_failures(5).open_for(Duration::from_secs(5)))
//!     .heartbeat(HeartbeatConfig::default()
//!         .interval(Duration::from_secs(1))         // PING on the heartbeat's own connection
//!         .timeout(Duration::from_millis(500))      // no answer within this: connection lost
//!         .reconnect_backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)))
//!         .max_elapsed(Duration::from_secs(300)))   // then one attempt per interval
//!     .tcp_keepalive(Some(Duration::from_secs(30)))
//!     .tls_ca_file("/etc/redis/ca.pem")             // files are read by build()
//!     .tls_client_identity_files("/etc/redis/client.pem", "/etc/redis/client.key")
//!     .build()?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! [`timeouts`](ConfigBuilder::timeouts) replaces all four timeouts (also those a URL set);
//! [`connect_timeout`](ConfigBuilder::connect_timeout),
//! [`response_timeout`](ConfigBuilder::response_timeout) and their siblings change one and
//! keep the others. What the retry
//! policy, the breaker and the heartbeat do with their settings is told in
//! [`retry`](crate::retry), [`BreakerConfig`] and [`heartbeat`](crate::heartbeat).
//!
//! ## Defaults
//!
//! - **Timeouts**: connect 2 s, response 3 s, write 3 s, pool checkout 3 s.
//! - **Pool**: at most 16 connections, 1 kept idle, idle ones closed after 5 minutes, every
//!   connection replaced after 30 minutes.
//! - **Retries**: 3 attempts within 5 s, backoff from 10 ms doubling to 1 s with full jitter;
//!   [`Redis::transaction`](crate::Redis::transaction) tries 5 times while watched keys keep
//!   changing.
//! - **Breaker**: opens after 5 consecutive failures, for 5 s, then lets 1 probe call through.
//! - **Heartbeat**: a `PING` every second with a 1 s deadline, health `Degraded` above 250 ms,
//!   reconnect backoff from 100 ms doubling to 5 s with full jitter and no limit.
//! - **TCP keepalive**: first probe after 30 s of silence.
//! - Database 0, RESP2, no TLS, no client name, no key prefix, no multiplexed connection.
//!
//! ## URL forms
//! `redis://[user[:password]@]host[:port][/db][?params]`, `rediss://...` (TLS with the system
//! roots; `rediss://...#insecure` skips verification) and `unix:///path/to/socket[?db=N]`.
//! `valkey://` and `valkeys://` are the same as `redis://` and `rediss://`, `redis+unix://`
//! the same as `unix://`; any other scheme is an error naming it.
//! redkit reads these query parameters: `protocol` (`2`/`resp2`, `3`/`resp3`), `client_name`,
//! `connect_timeout`, `response_timeout`, `write_timeout`, `checkout_timeout` (durations such as
//! `250ms`, `2s`, or plain milliseconds), `pool_max_size` (1 to 10,000), `pool_min_idle`,
//! `key_prefix`, `heartbeat_interval` (a duration, or `off`), `heartbeat_timeout`,
//! `multiplexed` (a number of connections, or `true`), `max_value_size` and `max_reply_size`
//! (bytes), for `redis+cluster://` URLs `cluster_read_from_replicas` (`true`/`false`) and
//! `cluster_max_redirects`, and for unix sockets `db`, `user`, `pass`. Any other parameter is
//! an error, never silently ignored. An error names the part at fault (the scheme, the port,
//! the database, the parameter and its value), never the password.
//!
//! ## Limits
//! Durations may be as large as `Duration::MAX` (they saturate: "never" is about thirty
//! years). Sizes and counts are checked by `build()` and refused with the setting's name when
//! out of range: `pool_max_size` 1 to 10,000, `pool_min_idle` at most `pool_max_size`,
//! `max_value_size` and `max_reply_size` at least 1 KiB, at most 64 multiplexed connections.
//!
//! ## Sentinel and Cluster URLs
//! Redis Sentinel: `redis+sentinel://[user[:password]@]host1[:port1],host2[:port2]/master_name[/db][?params]`
//! (`rediss+sentinel://` for TLS). Each host is a sentinel (port 26379 when left out); the
//! user, password, database, TLS and other parameters are the data nodes', as above. The
//! sentinels' own settings come as parameters: `sentinel_username` and `sentinel_password`
//! (see [`ConfigBuilder::sentinel_auth`]), `sentinel_tls` (`true`/`false`, see
//! [`ConfigBuilder::sentinel_tls`]) and `sentinel_role` (`master`/`replica`, see
//! [`ConfigBuilder::sentinel_role`]). Redis Cluster:
//! `redis+cluster://[user[:password]@]host1[:port1],host2[:port2][/][?params]`
//! (`rediss+cluster://` for TLS): every host is a seed ([`ConfigBuilder::cluster`]), and the
//! parameters are those of a plain URL.
//!
//! ```
//! let config: redkit::Config =
//!     "redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:5000/mymaster/2?sentinel_role=replica".parse()?;
//! let sentinel = config.sentinel().expect("sentinel settings");
//! assert_eq!(sentinel.master_name(), "mymaster");
//! assert_eq!(sentinel.addrs()[0], ("10.0.0.1".to_owned(), 26379));
//! assert_eq!(sentinel.role(), redkit::SentinelRole::Replica);
//! assert_eq!(config.db(), 2);
//! assert!(!format!("{config:?} {config}").contains("s3cret"));
//!
//! let cluster: redkit::Config = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001".parse()?;
//! assert_eq!(cluster.cluster().expect("cluster settings").seeds().len(), 2);
//! # Ok::<(), redkit::Error>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

mod breaker;
mod bridge;
mod builder;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod settings;
pub(crate) mod tls;
mod url;

pub use breaker::{BreakerConfig, BreakerState, FailureRate};
pub use builder::ConfigBuilder;
use builder::TlsFiles;

use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatConfig;
use crate::retry::RetryPolicy;

/// A string that never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Where the server is.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// A TCP address.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "{host}:{port}"),
            Addr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The RESP protocol version.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2 (every Redis version).
    #[default]
    Resp2,
    /// RESP3 (Redis 6 and later; negotiated with `HELLO 3`).
    Resp3,
}

/// Every timeout, in one place. Each is a [`Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) write: Duration,
    pub(crate) checkout: Duration,
}

impl Default for Timeouts {
    /// Connect 2 s, response 3 s, write 3 s, pool checkout 3 s.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(3),
            write: Duration::from_secs(3),
            checkout: Duration::from_secs(3),
        }
    }
}

impl Timeouts {
    /// TCP connect plus TLS handshake plus connection set-up (AUTH, SELECT, CLIENT SETNAME).
    /// Defaults to 2 s.
    pub fn connect(mut self, d: Duration) -> Timeouts {
        self.connect = d;
        self
    }

    /// How long to wait for a reply (the socket read timeout). Defaults to 3 s. Blocking
    /// commands (`BLPOP`, `XREAD BLOCK`...) need a longer one: see
    /// [`PooledConnection::set_response_timeout`](crate::PooledConnection::set_response_timeout).
    pub fn response(mut self, d: Duration) -> Timeouts {
        self.response = d;
        self
    }

    /// How long writing a command may block (the socket write timeout). Defaults to 3 s.
    pub fn write(mut self, d: Duration) -> Timeouts {
        self.write = d;
        self
    }

    /// How long to wait for a pooled connection. Defaults to 3 s.
    pub fn checkout(mut self, d: Duration) -> Timeouts {
        self.checkout = d;
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect
    }

    /// The response (read) timeout.
    pub fn response_timeout(&self) -> Duration {
        self.response
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Duration {
        self.write
    }

    /// The pool checkout timeout.
    pub fn checkout_timeout(&self) -> Duration {
        self.checkout
    }

    fn validate(&self) -> Result<()> {
        for (setting, d) in [
            ("timeouts.connect", self.connect),
            ("timeouts.response", self.response),
            ("timeouts.write", self.write),
            ("timeouts.checkout", self.checkout),
        ] {
            if d.is_zero() {
                return Err(Error::config(setting, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// Multiplexed connections (see [`ConfigBuilder::multiplexed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiplexConfig {
    pub(crate) connections: u32,
    pub(crate) max_requests: usize,
    pub(crate) max_queued_bytes: usize,
}

impl Default for MultiplexConfig {
    /// Off (0 connections); when on, at most 4,096 requests queued or in flight and 64 MiB
    /// queued per connection.
    fn default() -> Self {
        MultiplexConfig {
            connections: 0,
            max_requests: 4096,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

impl MultiplexConfig {
    /// How many multiplexed connections the handle shares between its threads (0: none,
    /// every call uses the pool).
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// Requests queued or in flight on one connection at most.
    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    /// Bytes queued (not written yet) on one connection at most.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }
}

/// Connection pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub(crate) max_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
}

impl Default for PoolConfig {
    /// At most 16 connections, 1 kept idle, idle ones closed after 5 minutes, every connection
    /// replaced after 30 minutes.
    fn default() -> Self {
        PoolConfig {
            max_size: 16,
            min_idle: 1,
            idle_timeout: Some(Duration::from_secs(300)),
            max_lifetime: Some(Duration::from_secs(1800)),
        }
    }
}

impl PoolConfig {
    /// The most connections the pool opens.
    pub fn max_size(&self) -> u32 {
        self.max_size
    }

    /// How many idle connections the pool keeps ready.
    pub fn min_idle(&self) -> u32 {
        self.min_idle
    }

    /// After how long idle connections (above `min_idle`) are closed.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// After how long any connection is replaced.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }
}

/// TLS settings, for the TLS backend compiled in (the `tls-native-tls` feature, on by
/// default, or `tls-rustls`; rustls when both are on). In a build with neither, any TLS
/// setting (`rediss://`, [`ConfigBuilder::tls`]) makes `build()` fail with a
/// [`Config`](crate::ErrorClass::Config) error saying TLS is not compiled in.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    pub(crate) insecure: bool,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) client_cert_pem: Option<Vec<u8>>,
    pub(crate) client_key_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("insecure", &self.insecure)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_cert_pem.is_some())
            .field(
                "client_key",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Whether certificate verification is off.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Whether a custom CA replaces the system roots.
    pub fn has_custom_ca(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// Whether a client certificate is presented (mutual TLS).
    pub fn has_client_certificate(&self) -> bool {
        self.client_cert_pem.is_some()
    }
}

/// Which node of a Sentinel-monitored group a handle talks to. Set with
/// [`ConfigBuilder::sentinel_role`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SentinelRole {
    /// The master (`SENTINEL GET-MASTER-ADDR-BY-NAME`): reads and writes. Every new
    /// connection checks that `ROLE` says `master`.
    #[default]
    Master,
    /// One replica of the master (`SENTINEL REPLICAS`), for reads. Replicas that the sentinels
    /// flag down or disconnected are skipped, and those whose link to the master is `ok` are
    /// preferred (the sentinels refresh that status only every 10 s, so when none is `ok`
    /// the others are tried); every new connection checks that `ROLE` says `slave` with its
    /// link `connected`. The handle picks one replica (round robin from a random start),
    /// stays on it while it works, and moves when it is lost or promoted; with no replica
    /// available, commands fail (they never fall back to the master). Writes fail with
    /// [`ErrorClass::ReadOnly`](crate::ErrorClass::ReadOnly), at once (not retried).
    /// Replication is asynchronous: a replica may not have the latest writes yet, and right
    /// after a failover a connection may briefly reach the promoted node before the
    /// `+switch-master` message retires it.
    Replica,
}

impl SentinelRole {
    /// `master` or `replica` (as in the `sentinel_role` URL parameter).
    pub fn as_str(self) -> &'static str {
        match self {
            SentinelRole::Master => "master",
            SentinelRole::Replica => "replica",
        }
    }
}

impl fmt::Display for SentinelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SentinelRole {
    type Err = Error;
    fn from_str(s: &str) -> Result<SentinelRole> {
        match s {
            "master" => Ok(SentinelRole::Master),
            "replica" | "slave" => Ok(SentinelRole::Replica),
            _ => Err(Error::config(
                "sentinel.role",
                "must be `master` or `replica`",
            )),
        }
    }
}

/// Where to find a master through Redis Sentinel: the sentinels' addresses, the master's
/// name, the credentials and TLS setting for the sentinels themselves (the data nodes use
/// the config's own user, password, TLS and database), and whether the handle talks to the
/// master or to a replica. Set with [`ConfigBuilder::sentinel`].
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    pub(crate) addrs: Vec<(String, u16)>,
    pub(crate) master_name: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    /// `None`: like the data nodes.
    pub(crate) tls: Option<bool>,
    pub(crate) role: SentinelRole,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("addrs", &self.addrs)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("role", &self.role)
            .finish()
    }
}

impl SentinelConfig {
    fn empty() -> SentinelConfig {
        SentinelConfig {
            addrs: Vec::new(),
            master_name: String::new(),
            username: None,
            password: None,
            tls: None,
            role: SentinelRole::Master,
        }
    }

    /// The sentinels, tried in this order.
    pub fn addrs(&self) -> &[(String, u16)] {
        &self.addrs
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The ACL user the sentinels are reached as, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether the sentinels are reached with a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether the sentinels are reached over TLS when the data nodes use `data_tls`: as set
    /// with [`ConfigBuilder::sentinel_tls`], else like the data nodes.
    pub fn uses_tls(&self, data_tls: bool) -> bool {
        self.tls.unwrap_or(data_tls)
    }

    /// Whether the handle talks to the master or to a replica.
    pub fn role(&self) -> SentinelRole {
        self.role
    }
}

/// A Redis Cluster topology: the seed nodes the slot map is first asked of. Every node uses
/// the config's user, password and TLS settings. Set with [`ConfigBuilder::cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub(crate) seeds: Vec<(String, u16)>,
    pub(crate) options: ClusterOptions,
}

/// The Cluster settings besides the seeds (kept by the builder until the seeds are given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClusterOptions {
    pub(crate) read_from_replicas: bool,
    pub(crate) max_redirects: usize,
}

/// How many redirections (`MOVED`, `ASK`) one command follows by default.
pub(crate) const DEFAULT_MAX_REDIRECTS: usize = 5;

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            read_from_replicas: false,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

impl ClusterConfig {
    /// The seed nodes, tried in this order (after the masters already known).
    pub fn seeds(&self) -> &[(String, u16)] {
        &self.seeds
    }

    /// Whether read-only commands may be served by replicas (see
    /// [`ConfigBuilder::cluster_read_from_replicas`]).
    pub fn reads_from_replicas(&self) -> bool {
        self.options.read_from_replicas
    }

    /// How many redirections one command follows (see
    /// [`ConfigBuilder::cluster_max_redirects`]).
    pub fn max_redirects(&self) -> usize {
        self.options.max_redirects
    }
}

/// The immutable, validated configuration of a [`Redis`](crate::Redis) handle.
///
/// Build one with [`Config::builder`], parse one from a URL (`"redis://...".parse()`), or read
/// `REDIS_URL` with [`Config::from_env`]. `Debug` and `Display` never show the password or the
/// TLS private key.
#[derive(Clone)]
pub struct Config {
    pub(crate) addr: Addr,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) db: i64,
    pub(crate) client_name: Option<String>,
    pub(crate) protocol: Protocol,
    pub(crate) timeouts: Timeouts,
    pub(crate) pool: PoolConfig,
    pub(crate) key_prefix: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerConfig,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) transaction_attempts: u32,
    pub(crate) heartbeat: HeartbeatConfig,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) sentinel: Option<SentinelConfig>,
    pub(crate) cluster: Option<ClusterConfig>,
    /// The largest reply one call may read, in bytes.
    pub(crate) max_reply_size: u64,
    /// Multiplexed connections.
    pub(crate) multiplex: MultiplexConfig,
    /// The largest argument one command may carry, in bytes.
    pub(crate) max_value_size: u64,
}

/// The default cap on one reply: 512 MiB, the largest value a server accepts by default.
pub(crate) const DEFAULT_MAX_REPLY_SIZE: u64 = 512 * 1024 * 1024;
/// The default cap on one argument: 512 MiB, the server's default `proto-max-bulk-len`.
pub(crate) const DEFAULT_MAX_VALUE_SIZE: u64 = 512 * 1024 * 1024;

impl Config {
    /// A builder with every default: `127.0.0.1:6379`, db 0, RESP2, no TLS.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Parses a URL (see the [module docs](crate::config) for the forms and parameters).
    pub fn from_url(url: &str) -> Result<Config> {
        ConfigBuilder::from_url(url)?.build()
    }

    /// Reads the `REDIS_URL` environment variable.
    pub fn from_env() -> Result<Config> {
        ConfigBuilder::from_env()?.build()
    }

    /// A builder that starts from this configuration.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            config: self.clone(),
            tls_files: TlsFiles::default(),
            cluster_options: self.cluster.as_ref().map(|c| c.options).unwrap_or_default(),
        }
    }

    /// Where the server is.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The ACL user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether a password is set (the password itself is not readable back).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The database number.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// The client name sent with `CLIENT SETNAME` on every new connection.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// The protocol version.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The multiplexed connection settings.
    pub fn multiplex(&self) -> &MultiplexConfig {
        &self.multiplex
    }

    /// The largest argument one command may carry, in bytes.
    pub fn max_value_size(&self) -> u64 {
        self.max_value_size
    }

    /// The largest reply one call may read, in bytes.
    pub fn max_reply_size(&self) -> u64 {
        self.max_reply_size
    }

    /// The pool settings.
    pub fn pool(&self) -> &PoolConfig {
        &self.pool
    }

    /// The key prefix used by [`Redis::key`](crate::Redis::key) and redkit's helpers.
    pub fn key_prefix(&self) -> Option<&str> {
        self.key_prefix.as_deref()
    }

    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The circuit breaker settings.
    pub fn breaker(&self) -> &BreakerConfig {
        &self.breaker
    }

    /// The TLS settings, when TLS is on.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// How many times [`Redis::transaction`](crate::Redis::transaction) runs its closure when
    /// watched keys keep changing.
    pub fn transaction_attempts(&self) -> u32 {
        self.transaction_attempts
    }

    /// Heartbeat and reconnect settings.
    pub fn heartbeat(&self) -> &HeartbeatConfig {
        &self.heartbeat
    }

    /// The TCP keepalive idle time, `None` when keepalive is off.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        self.tcp_keepalive
    }

    /// The Sentinel settings, when the master is found through Sentinel.
    pub fn sentinel(&self) -> Option<&SentinelConfig> {
        self.sentinel.as_ref()
    }

    /// The Cluster settings, when the handle talks to a Redis Cluster.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.cluster.as_ref()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("client_name", &self.client_name)
            .field("protocol", &self.protocol)
            .field("timeouts", &self.timeouts)
            .field("pool", &self.pool)
            .field("key_prefix", &self.key_prefix)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("tls", &self.tls)
            .field("transaction_attempts", &self.transaction_attempts)
            .field("heartbeat", &self.heartbeat)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl fmt::Display for Config {
    /// A URL-like summary with the password redacted, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (&self.addr, &self.tls) {
            (Addr::Unix(_), _) => "unix",
            (_, Some(_)) => "rediss",
            _ => "redis",
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        if let Some(s) = &self.sentinel {
            write!(f, "sentinel[")?;
            for (i, (host, port)) in s.addrs.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                write!(
                    f,
                    "{sep}{}",
                    Addr::Tcp {
                        host: host.clone(),
                        port: *port
                    }
                )?;
            }
            write!(f, "]/{}/{}", s.master_name, self.db)?;
            if s.role != SentinelRole::Master {
                write!(f, "?sentinel_role={}", s.role)?;
            }
            return Ok(());
        }
        if let Some(c) = &self.cluster {
            write!(f, "cluster[")?;
            for (i, (host, port)) in c.seeds.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let addr = Addr::Tcp {
                    host: host.clone(),
                    port: *port,
                };
                write!(f, "{sep}{addr}")?;
            }
            return f.write_str("]");
        }
        match &self.addr {
            Addr::Unix(p) => write!(f, "{}?db={}", p.display(), self.db),
            addr => write!(f, "{addr}/{}", self.db),
        }
    }
}

impl FromStr for Config {
    type Err = Error;
    fn from_str(s: &str) -> Result<Config> {
        Config::from_url(s)
    }
}

#[cfg(test)]
mod tests {
    use super::url::parse_duration;
    use super::*;
    use std::time::Duration;

    #[test]
    fn cluster_options_need_a_cluster_and_sane_values() {
        let c = Config::builder()
            .cluster_read_from_replicas(true)
            .cluster_max_redirects(3)
            .cluster([("h", 1)])
            .build()
            .unwrap();
        let cl = c.cluster().unwrap();
        assert!(cl.reads_from_replicas());
        assert_eq!(cl.max_redirects(), 3);
        assert_eq!(c.to_builder().build().unwrap().cluster(), c.cluster());
        let e = Config::builder()
            .cluster_read_from_replicas(true)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    setting: "cluster",
                    ..
                }
            ),
            "{e}"
        );
        let e = Config::builder()
            .cluster([("h", 1)])
            .cluster_max_redirects(101)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    setting: "cluster_max_redirects",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            Config::builder()
                .cluster([("h", 1)])
                .build()
                .unwrap()
                .cluster()
                .unwrap()
                .max_redirects(),
            DEFAULT_MAX_REDIRECTS
        );
    }

    #[test]
    fn cluster_urls_name_every_seed() {
        let c: Config =
            "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,h4/?client_name=x"
                .parse()
                .unwrap();
        let seeds = c.cluster().unwrap().seeds();
        assert_eq!(
            seeds,
            &[
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.2".to_owned(), 7001),
                ("::1".to_owned(), 7002),
                ("h4".to_owned(), 6379)
            ]
        );
        assert!(c.has_password());
        assert_eq!(c.client_name(), Some("x"));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("cluster[10.0.0.1:7000,"), "{shown}");
        let tls: Config = "rediss+cluster://h1:1,h2:2".parse().unwrap();
        assert!(tls.tls().is_some());
        assert_eq!(tls.cluster().unwrap().seeds().len(), 2);
        let bad = "redis+cluster://:secret@h1:x,h2:2"
            .parse::<Config>()
            .unwrap_err();
        // The error names the part at fault, never the password.
        assert!(bad.to_string().contains("`h1:x`"), "{bad}");
        assert!(!bad.to_string().contains("secret"), "{bad}");
        assert!(
            "redis+cluster://h1:1/3".parse::<Config>().is_err(),
            "db 3 on a cluster"
        );
        assert!(Config::builder()
            .cluster(Vec::<(String, u16)>::new())
            .build()
            .is_err());
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_master() {
        let c: Config = "redis+sentinel://app:pw@10.0.0.1:5000,[::1]:5001,h3/mymaster/2?client_name=x&sentinel_password=s%40pw&sentinel_username=watcher&sentinel_role=replica"
            .parse()
            .unwrap();
        let s = c.sentinel().unwrap();
        assert_eq!(
            s.addrs(),
            &[
                ("10.0.0.1".to_owned(), 5000),
                ("::1".to_owned(), 5001),
                ("h3".to_owned(), 26379)
            ]
        );
        assert_eq!(s.master_name(), "mymaster");
        assert_eq!(s.role(), SentinelRole::Replica);
        assert_eq!(s.username(), Some("watcher"));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("s@pw"));
        assert_eq!(c.username(), Some("app"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(c.db(), 2);
        assert_eq!(c.client_name(), Some("x"));
        assert!(c.tls().is_none());
        assert!(!s.uses_tls(false));
        assert_eq!(c.addr(), Config::builder().build().unwrap().addr());
        let shown = format!("{c} {c:?} {:?}", c.to_builder());
        assert!(!shown.contains("pw"), "{shown}");
        assert!(
            shown.contains(
                "sentinel[10.0.0.1:5000,[::1]:5001,h3:26379]/mymaster/2?sentinel_role=replica"
            ),
            "{shown}"
        );

        // No database, no parameters; TLS from the scheme, for the sentinels too.
        let c: Config = "rediss+sentinel://h1:1,h2:2/orders".parse().unwrap();
        let s = c.sentinel().unwrap();
        assert_eq!(s.master_name(), "orders");
        assert_eq!(s.role(), SentinelRole::Master);
        assert_eq!(c.db(), 0);
        assert!(c.tls().is_some_and(|t| !t.is_insecure()));
        assert!(s.uses_tls(c.tls().is_some()));
        let c: Config = "rediss+sentinel://h1/orders/?sentinel_tls=false#insecure"
            .parse()
            .unwrap();
        assert!(c.tls().is_some_and(|t| t.is_insecure()));
        assert!(!c.sentinel().unwrap().uses_tls(true));
        let c: Config = "redis+sentinel://h1/orders?sentinel_tls=yes"
            .parse()
            .unwrap();
        assert!(c.tls().is_none());
        assert!(c.sentinel().unwrap().uses_tls(false));
    }

    #[test]
    fn bad_sentinel_urls_say_why_without_leaking() {
        for (bad, setting) in [
            ("redis+sentinel://u:hunter2@h1:1,h2:x/m", "url"),
            ("redis+sentinel://u:hunter2@h1:1,,h2/m", "url"),
            ("redis+sentinel://u:hunter2@h1:0/m", "url"),
            ("redis+sentinel://u:hunter2@h1:1", "url"),
            ("redis+sentinel://u:hunter2@h1:1/", "url"),
            ("redis+sentinel://u:hunter2@h1:1/m/1/2", "url"),
            ("redis+sentinel://u:hunter2@h1:1/m/x", "url"),
            ("redis+sentinel://u:hunter2@h1:1/m?sentinel_bogus=1", "url"),
            ("redis+sentinel://u:hunter2@h1:1/m?bogus=1", "url"),
            (
                "redis+sentinel://h1:1/m?sentinel_role=boss",
                "sentinel.role",
            ),
            ("redis+sentinel://h1:1/m?sentinel_tls=maybe", "sentinel.tls"),
            (
                "redis+sentinel://h1:1/m?sentinel_username=u",
                "sentinel.password",
            ),
            ("redis+sentinel://h1:1/has%20space", "sentinel.master_name"),
        ] {
            let e = bad.parse::<Config>().unwrap_err();
            match &e {
                Error::Config { setting: s, .. } => assert_eq!(*s, setting, "{bad}: {e}"),
                other => panic!("{bad}: expected a config error, got {other:?}"),
            }
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "{bad} leaked: {shown}");
        }
        // A sentinel password in the query never shows either.
        let e = "redis+sentinel://h1:1/m?sentinel_password=hunter2&connect_timeout=soon"
            .parse::<Config>()
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
    }

    #[test]
    fn sentinel_builder_settings_keep_each_other() {
        let c = Config::builder()
            .sentinel_tls(false)
            .sentinel_auth(Some("w".into()), "hunter2")
            .sentinel_role(SentinelRole::Replica)
            .sentinel("m", [("h", 26379)])
            .tls()
            .build()
            .unwrap();
        let s = c.sentinel().unwrap();
        assert_eq!(
            (s.role(), s.username(), s.has_password()),
            (SentinelRole::Replica, Some("w"), true)
        );
        assert!(!s.uses_tls(c.tls().is_some()));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let defaults = Config::builder().sentinel("m", [("h", 1)]).build().unwrap();
        let s = defaults.sentinel().unwrap();
        assert_eq!(s.role(), SentinelRole::Master);
        assert!(s.uses_tls(true) && !s.uses_tls(false));
        // Sentinel settings without sentinels.
        let e = Config::builder().sentinel_tls(true).build().unwrap_err();
        assert!(e.to_string().contains("sentinel.addrs"), "{e}");
        assert_eq!(
            "slave".parse::<SentinelRole>().unwrap(),
            SentinelRole::Replica
        );
    }

    #[test]
    fn heartbeat_settings_from_url_and_builder() {
        let c: Config = "redis://h/?heartbeat_interval=250ms&heartbeat_timeout=2s"
            .parse()
            .unwrap();
        assert_eq!(
            c.heartbeat().interval_value(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(c.heartbeat().timeout_value(), Duration::from_secs(2));
        let off: Config = "redis://h/?heartbeat_interval=off".parse().unwrap();
        assert_eq!(off.heartbeat().interval_value(), None);
        let e = "redis://h/?heartbeat_interval=0"
            .parse::<Config>()
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat.interval"), "{e}");
        let e = Config::builder()
            .heartbeat(HeartbeatConfig::default().max_attempts(0))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat.max_attempts"), "{e}");
        let e = Config::builder()
            .tcp_keepalive(Some(Duration::from_millis(10)))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("tcp_keepalive"), "{e}");
        assert_eq!(
            Config::builder().build().unwrap().tcp_keepalive(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn parses_full_url() {
        let c: Config = "redis://alice:p%40ss@example.com:6380/3?protocol=3&client_name=w1&connect_timeout=250ms&response_timeout=2s&pool_max_size=8&pool_min_idle=2&key_prefix=app:"
            .parse()
            .unwrap();
        assert_eq!(
            c.addr(),
            &Addr::Tcp {
                host: "example.com".into(),
                port: 6380
            }
        );
        assert_eq!(c.username(), Some("alice"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(c.db(), 3);
        assert_eq!(c.protocol(), Protocol::Resp3);
        assert_eq!(c.client_name(), Some("w1"));
        assert_eq!(c.timeouts().connect_timeout(), Duration::from_millis(250));
        assert_eq!(c.timeouts().response_timeout(), Duration::from_secs(2));
        assert_eq!(c.pool().max_size(), 8);
        assert_eq!(c.pool().min_idle(), 2);
        assert_eq!(c.key_prefix(), Some("app:"));
        assert!(c.tls().is_none());
    }

    #[test]
    fn parses_tls_and_unix() {
        let c: Config = "rediss://h:1/0".parse().unwrap();
        assert!(c.tls().is_some_and(|t| !t.is_insecure()));
        let c: Config = "rediss://h:1/0#insecure".parse().unwrap();
        assert!(c.tls().is_some_and(|t| t.is_insecure()));
        let c: Config = "unix:///tmp/redis.sock?db=2".parse().unwrap();
        assert_eq!(c.addr(), &Addr::Unix("/tmp/redis.sock".into()));
        assert_eq!(c.db(), 2);
    }

    #[test]
    fn rejects_bad_urls_without_leaking() {
        for bad in [
            "http://u:hunter2@h/0",
            "redis://u:hunter2@h/notanumber",
            "redis://u:hunter2@h/0?bogus=1",
            "redis://u:hunter2@h/0?connect_timeout=soon",
            "redis://u:hunter2@0.0.0.0/0",
            "not a url hunter2",
        ] {
            let e = bad.parse::<Config>().unwrap_err();
            assert_eq!(e.class(), crate::ErrorClass::Config, "{bad}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "{bad} leaked: {shown}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        let cases = [
            (Config::builder().pool_max_size(0), "pool.max_size"),
            (
                Config::builder().pool_max_size(2).pool_min_idle(3),
                "pool.min_idle",
            ),
            (
                Config::builder().timeouts(Timeouts::default().connect(Duration::ZERO)),
                "timeouts.connect",
            ),
            (Config::builder().port(0), "port"),
            (Config::builder().db(-1), "db"),
            (Config::builder().client_name("has space"), "client_name"),
            (Config::builder().username("u"), "password"),
            (
                Config::builder().retry(RetryPolicy::default().max_attempts(0)),
                "retry.max_attempts",
            ),
            (
                Config::builder().breaker(BreakerConfig::default().consecutive_failures(0)),
                "breaker.consecutive_failures",
            ),
            (Config::builder().tls_ca_pem(b"junk".to_vec()), "tls.ca"),
            (
                Config::builder().tls_ca_file("/nonexistent/ca.pem"),
                "tls.ca_file",
            ),
            (Config::builder().unix_socket("/tmp/s").tls(), "tls"),
        ];
        for (builder, setting) in cases {
            match builder.build() {
                Err(Error::Config { setting: s, .. }) => assert_eq!(s, setting),
                other => panic!("{setting}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::builder()
            .username("bob")
            .password("hunter2")
            .build()
            .unwrap();
        let shown = format!("{c:?} {c} {:?}", c.to_builder());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("***"));
        let tls = TlsConfig {
            client_key_pem: Some(b"PRIVATE KEY".to_vec()),
            ..TlsConfig::default()
        };
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("100"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5h"), None);
    }

    #[test]
    fn env_missing_is_a_config_error() {
        // Only checks the error shape when the variable is absent in this process.
        if std::env::var_os("REDIS_URL").is_none() {
            let e = Config::from_env().unwrap_err();
            assert!(matches!(
                e,
                Error::Config {
                    setting: "REDIS_URL",
                    ..
                }
            ));
        }
    }

    mod properties {
        use super::super::url::parse_duration;
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::util::property_cases()))]

            #[test]
            fn durations_parse_or_refuse(n in any::<u64>(), unit in prop_oneof![Just(""), Just("ms"), Just("s"), Just("m"), Just("us"), Just("h"), Just("x")]) {
                let text = format!("{n}{unit}");
                let parsed = parse_duration(&text);
                match unit {
                    "" | "ms" => prop_assert_eq!(parsed, Some(std::time::Duration::from_millis(n))),
                    "s" => prop_assert_eq!(parsed, Some(std::time::Duration::from_secs(n))),
                    _ => {}
                }
            }

            #[test]
            fn any_text_is_a_url_or_a_config_error(url in "\\PC{0,60}") {
                if let Err(e) = Config::from_url(&url) {
                    prop_assert_eq!(e.class(), crate::ErrorClass::Config);
                }
            }

            #[test]
            fn urls_of_every_scheme_read_back(
                scheme in prop_oneof![Just("redis"), Just("rediss"), Just("valkey"), Just("valkeys")],
                host in "[a-z][a-z0-9]{0,10}",
                port in 1u16..,
                db in 0i64..16,
                name in "[a-z]{1,8}",
                response_ms in 1u64..100_000,
            ) {
                let url = format!("{scheme}://:secret@{host}:{port}/{db}?client_name={name}&response_timeout={response_ms}ms");
                let c = Config::from_url(&url).expect("valid");
                prop_assert_eq!(c.addr(), &Addr::Tcp { host: host.clone(), port });
                prop_assert_eq!(c.db(), db);
                prop_assert_eq!(c.client_name(), Some(name.as_str()));
                prop_assert_eq!(c.timeouts().response_timeout(), std::time::Duration::from_millis(response_ms));
                prop_assert_eq!(c.tls().is_some(), scheme == "rediss" || scheme == "valkeys");
                let shown = format!("{c} {c:?}");
                prop_assert!(!shown.contains("secret"));
            }

            #[test]
            fn sentinel_and_cluster_urls_read_back(
                hosts in proptest::collection::vec(("[a-z]{1,6}", proptest::option::of(1u16..)), 1..5),
                cluster in any::<bool>(),
            ) {
                let list: Vec<String> = hosts.iter().map(|(h, p)| match p {
                    Some(p) => format!("{h}:{p}"),
                    None => h.clone(),
                }).collect();
                let url = if cluster {
                    format!("redis+cluster://{}", list.join(","))
                } else {
                    format!("redis+sentinel://{}/mymaster", list.join(","))
                };
                let c = Config::from_url(&url).expect("valid");
                let got: Vec<(String, u16)> = if cluster {
                    c.cluster().expect("cluster").seeds().to_vec()
                } else {
                    c.sentinel().expect("sentinel").addrs().to_vec()
                };
                let default = if cluster { 6379 } else { 26379 };
                let want: Vec<(String, u16)> = hosts.iter().map(|(h, p)| (h.clone(), p.unwrap_or(default))).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
