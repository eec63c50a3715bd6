//! The builder of a [`Config`] and its validation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Addr, BreakerConfig, ClusterConfig, ClusterOptions, Config, MultiplexConfig, PoolConfig,
    Protocol, Secret, SentinelConfig, SentinelRole, Timeouts, TlsConfig, DEFAULT_MAX_REPLY_SIZE,
    DEFAULT_MAX_VALUE_SIZE,
};
use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatConfig;
use crate::retry::RetryPolicy;

#[derive(Clone, Default)]
pub(crate) struct TlsFiles {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// Builds a [`Config`]. Every setter consumes and returns the builder; [`ConfigBuilder::build`]
/// validates everything and says which setting is wrong and why.
#[derive(Clone)]
pub struct ConfigBuilder {
    pub(crate) config: Config,
    pub(crate) tls_files: TlsFiles,
    /// Cluster settings given before (or without) the seeds.
    pub(crate) cluster_options: ClusterOptions,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            config: Config {
                addr: Addr::Tcp {
                    host: "127.0.0.1".into(),
                    port: 6379,
                },
                username: None,
                password: None,
                db: 0,
                client_name: None,
                protocol: Protocol::Resp2,
                timeouts: Timeouts::default(),
                pool: PoolConfig::default(),
                key_prefix: None,
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                tls: None,
                transaction_attempts: 5,
                heartbeat: HeartbeatConfig::default(),
                tcp_keepalive: Some(Duration::from_secs(30)),
                sentinel: None,
                cluster: None,
                max_reply_size: DEFAULT_MAX_REPLY_SIZE,
                multiplex: MultiplexConfig::default(),
                max_value_size: DEFAULT_MAX_VALUE_SIZE,
            },
            tls_files: TlsFiles::default(),
            cluster_options: ClusterOptions::default(),
        }
    }
}

impl ConfigBuilder {
    /// The host name or IP address. Defaults to `127.0.0.1`.
    pub fn host(mut self, host: impl Into<String>) -> ConfigBuilder {
        let port = match &self.config.addr {
            Addr::Tcp { port, .. } => *port,
            Addr::Unix(_) => 6379,
        };
        self.config.addr = Addr::Tcp {
            host: host.into(),
            port,
        };
        self
    }

    /// The TCP port. Defaults to 6379.
    pub fn port(mut self, port: u16) -> ConfigBuilder {
        let host = match &self.config.addr {
            Addr::Tcp { host, .. } => host.clone(),
            Addr::Unix(_) => "127.0.0.1".into(),
        };
        self.config.addr = Addr::Tcp { host, port };
        self
    }

    /// Connect through a unix domain socket instead of TCP. Defaults to TCP.
    pub fn unix_socket(mut self, path: impl AsRef<Path>) -> ConfigBuilder {
        self.config.addr = Addr::Unix(path.as_ref().to_path_buf());
        self
    }

    /// The ACL user name. Defaults to none (the `default` user).
    pub fn username(mut self, username: impl Into<String>) -> ConfigBuilder {
        self.config.username = Some(username.into());
        self
    }

    /// The password. Defaults to none. It never appears in `Debug`, `Display`, logs or errors.
    pub fn password(mut self, password: impl Into<String>) -> ConfigBuilder {
        self.config.password = Some(Secret(password.into()));
        self
    }

    /// The database number (`SELECT`). Defaults to 0.
    pub fn db(mut self, db: i64) -> ConfigBuilder {
        self.config.db = db;
        self
    }

    /// A name sent with `CLIENT SETNAME` on every new connection, visible in `CLIENT LIST`.
    /// Defaults to none.
    pub fn client_name(mut self, name: impl Into<String>) -> ConfigBuilder {
        self.config.client_name = Some(name.into());
        self
    }

    /// The protocol version. Defaults to [`Protocol::Resp2`].
    pub fn protocol(mut self, protocol: Protocol) -> ConfigBuilder {
        self.config.protocol = protocol;
        self
    }

    /// All timeouts at once, replacing every one set before (by a URL, for example). To
    /// change one and keep the others, use [`ConfigBuilder::connect_timeout`] and its
    /// siblings. Defaults to [`Timeouts::default`].
    pub fn timeouts(mut self, timeouts: Timeouts) -> ConfigBuilder {
        self.config.timeouts = timeouts;
        self
    }

    /// How long opening a connection may take, as a whole: resolving, connecting, TLS and the
    /// handshake (`HELLO`, `SELECT`). Keeps the other timeouts. Defaults to 2 s. URL
    /// parameter `connect_timeout`.
    pub fn connect_timeout(mut self, d: Duration) -> ConfigBuilder {
        self.config.timeouts.connect = d;
        self
    }

    /// How long a reply may take, as a whole (a pipeline's replies share one). Keeps the
    /// other timeouts. Defaults to 3 s. URL parameter `response_timeout`.
    pub fn response_timeout(mut self, d: Duration) -> ConfigBuilder {
        self.config.timeouts.response = d;
        self
    }

    /// How long writing a command (or a pipeline) may take, as a whole. Keeps the other
    /// timeouts. Defaults to 3 s. URL parameter `write_timeout`.
    pub fn write_timeout(mut self, d: Duration) -> ConfigBuilder {
        self.config.timeouts.write = d;
        self
    }

    /// How long a call waits for a pooled connection. Keeps the other timeouts. Defaults to
    /// 3 s. URL parameter `checkout_timeout`.
    pub fn checkout_timeout(mut self, d: Duration) -> ConfigBuilder {
        self.config.timeouts.checkout = d;
        self
    }

    /// The most connections the pool opens. Defaults to 16.
    pub fn pool_max_size(mut self, n: u32) -> ConfigBuilder {
        self.config.pool.max_size = n;
        self
    }

    /// How many idle connections the pool keeps open. Defaults to 1.
    pub fn pool_min_idle(mut self, n: u32) -> ConfigBuilder {
        self.config.pool.min_idle = n;
        self
    }

    /// Close idle connections (above `min_idle`) after this long; `None` keeps them. Defaults
    /// to 5 minutes.
    pub fn pool_idle_timeout(mut self, d: Option<Duration>) -> ConfigBuilder {
        self.config.pool.idle_timeout = d;
        self
    }

    /// Replace every connection after this long; `None` keeps them. Defaults to 30 minutes.
    pub fn pool_max_lifetime(mut self, d: Option<Duration>) -> ConfigBuilder {
        self.config.pool.max_lifetime = d;
        self
    }

    /// A prefix for keys made with [`Redis::key`](crate::Redis::key) and by redkit's helpers.
    /// Defaults to none.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> ConfigBuilder {
        self.config.key_prefix = Some(prefix.into());
        self
    }

    /// The retry policy. Defaults to [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> ConfigBuilder {
        self.config.retry = retry;
        self
    }

    /// The circuit breaker. Defaults to [`BreakerConfig::default`].
    pub fn breaker(mut self, breaker: BreakerConfig) -> ConfigBuilder {
        self.config.breaker = breaker;
        self
    }

    /// How many attempts [`Redis::transaction`](crate::Redis::transaction) makes while watched
    /// keys keep changing. Defaults to 5.
    pub fn transaction_attempts(mut self, n: u32) -> ConfigBuilder {
        self.config.transaction_attempts = n;
        self
    }

    /// Turns TLS on (verifying the server against the system roots). Defaults to off.
    pub fn tls(mut self) -> ConfigBuilder {
        self.config.tls.get_or_insert_with(TlsConfig::default);
        self
    }

    /// Turns TLS on and trusts this CA (PEM) instead of the system roots.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> ConfigBuilder {
        self.config
            .tls
            .get_or_insert_with(TlsConfig::default)
            .ca_pem = Some(pem.into());
        self
    }

    /// Turns TLS on and trusts the CA in this PEM file (read by `build`).
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> ConfigBuilder {
        self.config.tls.get_or_insert_with(TlsConfig::default);
        self.tls_files.ca = Some(path.as_ref().to_path_buf());
        self
    }

    /// Turns TLS on and presents this client certificate (PEM) and PKCS#8 key (PEM): mutual TLS.
    pub fn tls_client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> ConfigBuilder {
        let tls = self.config.tls.get_or_insert_with(TlsConfig::default);
        tls.client_cert_pem = Some(cert.into());
        tls.client_key_pem = Some(key.into());
        self
    }

    /// Like [`ConfigBuilder::tls_client_identity_pem`], from files (read by `build`).
    pub fn tls_client_identity_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> ConfigBuilder {
        self.config.tls.get_or_insert_with(TlsConfig::default);
        self.tls_files.client = Some((cert.as_ref().to_path_buf(), key.as_ref().to_path_buf()));
        self
    }

    /// Turns TLS on **without verifying the server's certificate or host name**. Only for
    /// tests and trusted networks; every connection logs a warning.
    pub fn tls_insecure(mut self) -> ConfigBuilder {
        self.config
            .tls
            .get_or_insert_with(TlsConfig::default)
            .insecure = true;
        self
    }

    /// Heartbeat and reconnect settings (see [`HeartbeatConfig`]). Defaults to a `PING` every
    /// second with a 1 s deadline; [`HeartbeatConfig::disabled`] turns the thread off.
    pub fn heartbeat(mut self, heartbeat: HeartbeatConfig) -> ConfigBuilder {
        self.config.heartbeat = heartbeat;
        self
    }

    /// TCP keepalive on every connection: the first probe after this much silence, then
    /// probes every third of it, 3 of them. Defaults to 30 s; `None` turns it off. The
    /// heartbeat notices a dead server much sooner; keepalive also clears connections that
    /// sit idle in the pool behind a NAT or firewall that forgets them.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> ConfigBuilder {
        self.config.tcp_keepalive = idle;
        self
    }

    /// Finds the master through Redis Sentinel instead of connecting to a fixed address:
    /// `sentinels` are tried in turn (each with the connect and response timeouts) for the
    /// address of the master named `master_name`; the pool connects there, and a background
    /// thread follows failovers (see the [crate docs](crate#sentinel-and-cluster) and
    /// `docs/sentinel.md`). The data nodes use this config's user, password, database and
    /// TLS settings; the host and port set with [`host`](Self::host)/[`port`](Self::port)
    /// are ignored. Settings made before with
    /// [`sentinel_auth`](Self::sentinel_auth), [`sentinel_tls`](Self::sentinel_tls) and
    /// [`sentinel_role`](Self::sentinel_role) are kept. Defaults to no Sentinel.
    ///
    /// ```
    /// use redkit::{Config, SentinelRole};
    ///
    /// // One handle for writes, one for reads from a replica:
    /// let sentinels = [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)];
    /// let writes = Config::builder().sentinel("mymaster", sentinels).build()?;
    /// let reads = writes.to_builder().sentinel_role(SentinelRole::Replica).build()?;
    /// assert_eq!(reads.sentinel().map(|s| s.role()), Some(SentinelRole::Replica));
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn sentinel<H: Into<String>>(
        mut self,
        master_name: impl Into<String>,
        sentinels: impl IntoIterator<Item = (H, u16)>,
    ) -> ConfigBuilder {
        let s = self
            .config
            .sentinel
            .get_or_insert_with(SentinelConfig::empty);
        s.addrs = sentinels.into_iter().map(|(h, p)| (h.into(), p)).collect();
        s.master_name = master_name.into();
        self
    }

    /// The password (and optionally ACL user) the sentinels themselves require, when they
    /// run with `requirepass`. Use with [`sentinel`](Self::sentinel). Defaults to none.
    pub fn sentinel_auth(
        mut self,
        username: Option<String>,
        password: impl Into<String>,
    ) -> ConfigBuilder {
        let s = self
            .config
            .sentinel
            .get_or_insert_with(SentinelConfig::empty);
        s.username = username;
        s.password = Some(Secret(password.into()));
        self
    }

    /// Whether the sentinels are reached over TLS, for discovery and for the
    /// `+switch-master` listener. With TLS they are verified and authenticated with the data
    /// nodes' TLS settings: the same CA ([`tls_ca_pem`](Self::tls_ca_pem)), client identity
    /// and [`tls_insecure`](Self::tls_insecure) flag (the system roots when the data nodes
    /// have no TLS settings). Use with [`sentinel`](Self::sentinel). Defaults to the data
    /// nodes' choice: TLS to the sentinels exactly when [`tls`](Self::tls) (or `rediss://`) is
    /// on, as Redis' `tls-port` applies to sentinels too.
    pub fn sentinel_tls(mut self, tls: bool) -> ConfigBuilder {
        self.config
            .sentinel
            .get_or_insert_with(SentinelConfig::empty)
            .tls = Some(tls);
        self
    }

    /// Whether the handle talks to the master, or reads from one of its replicas (see
    /// [`SentinelRole::Replica`]: replica reads can be stale, writes fail with `READONLY`).
    /// Create one handle per role to split reads from writes. Use with
    /// [`sentinel`](Self::sentinel). Defaults to [`SentinelRole::Master`].
    pub fn sentinel_role(mut self, role: SentinelRole) -> ConfigBuilder {
        self.config
            .sentinel
            .get_or_insert_with(SentinelConfig::empty)
            .role = role;
        self
    }

    /// Talks to a Redis Cluster instead of one server: the slot map is asked of `seeds` (in
    /// turn, each with the connect and response timeouts), and every command goes to the
    /// master that owns its key's slot, following `MOVED` and `ASK` (see the
    /// [crate docs](crate#sentinel-and-cluster) and `docs/cluster.md`). Every node uses this
    /// config's user, password, TLS settings and timeouts; the host and port set with
    /// [`host`](Self::host)/[`port`](Self::port) are ignored, and
    /// the database must be 0. Defaults to no Cluster.
    ///
    /// ```
    /// let config = redkit::Config::builder()
    ///     .cluster([("10.0.0.1", 7000), ("10.0.0.2", 7000)])
    ///     .build()?;
    /// assert_eq!(config.cluster().map(|c| c.seeds().len()), Some(2));
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn cluster<H: Into<String>>(
        mut self,
        seeds: impl IntoIterator<Item = (H, u16)>,
    ) -> ConfigBuilder {
        let seeds: Vec<(String, u16)> = seeds.into_iter().map(|(h, p)| (h.into(), p)).collect();
        if let Some((host, port)) = seeds.first() {
            // Logs, the pub/sub subscriber's first try and the heartbeat's fallback.
            self.config.addr = Addr::Tcp {
                host: host.clone(),
                port: *port,
            };
        }
        self.config.cluster = Some(ClusterConfig {
            seeds,
            options: self.cluster_options,
        });
        self
    }

    /// With a [`cluster`](Self::cluster): lets replicas serve read-only commands (the
    /// commands [`is_read_only_command`](crate::retry::is_read_only_command) lists, alone,
    /// split or in pipelines, the read-only scripts `EVAL_RO`, `EVALSHA_RO` and `FCALL_RO`
    /// included; never writes, other scripts or transactions). Each read goes to a
    /// replica of the slot's master that the heartbeat found fit at its last beat, in turn,
    /// else to the master: a replica is fit while its link to the master is up and it had
    /// caught up, at that beat, with where its master was one heartbeat interval before.
    /// **Staleness:** a read from a replica may miss writes acknowledged up to about two
    /// heartbeat intervals earlier (2 s with the default 1 s interval), or more when the
    /// replica fell behind since the last beat (the next beat takes it out). A replica that
    /// fails a read, answers `LOADING`/`MASTERDOWN` or has its breaker open is replaced by
    /// the master for that read. Needs the heartbeat (without it every read goes to the
    /// master). Defaults to `false` (every command to the master).
    pub fn cluster_read_from_replicas(mut self, on: bool) -> ConfigBuilder {
        self.cluster_options.read_from_replicas = on;
        if let Some(c) = self.config.cluster.as_mut() {
            c.options.read_from_replicas = on;
        }
        self
    }

    /// With a [`cluster`](Self::cluster): how many redirections (`MOVED`, `ASK`) one command
    /// follows before its last redirection is returned as its reply (0: none followed).
    /// Defaults to 5; at most 100.
    pub fn cluster_max_redirects(mut self, n: usize) -> ConfigBuilder {
        self.cluster_options.max_redirects = n;
        if let Some(c) = self.config.cluster.as_mut() {
            c.options.max_redirects = n;
        }
        self
    }

    /// Shares `connections` multiplexed connections between every thread of the handle,
    /// instead of a pooled connection per call: commands from all threads are written
    /// together (whatever is queued goes out in one write) and replies are matched back in
    /// order. `0` turns it off. Defaults to 0 (the pool). URL parameter `multiplexed`
    /// (a number, or `true` for 1).
    ///
    /// What runs on it: `redis::Commands` on the handle, [`Redis::query`](crate::Redis::query),
    /// [`Redis::pipeline`](crate::Redis::pipeline) (atomic ones too) and script calls, from
    /// any number of threads. What still uses the pool: blocking commands (`BLPOP`,
    /// `XREAD ... BLOCK`, `WAIT`...), [`Redis::transaction`](crate::Redis::transaction),
    /// [`Redis::run`](crate::Redis::run) and [`Redis::conn`](crate::Redis::conn); commands
    /// that change a connection's state are refused as on the pool (see
    /// [`Error::WrongConnection`]). Pick it for many threads doing short commands; a pool
    /// is as fast for a few threads. On a Cluster, `connections` is ignored: the handle
    /// keeps one multiplexed connection per node it uses, with the pooled cluster path's
    /// routing (redirections, split multi-key commands and pipelines, keyless commands on
    /// every master, replica reads); transactions run on the pool.
    pub fn multiplexed(mut self, connections: u32) -> ConfigBuilder {
        self.config.multiplex.connections = connections;
        self
    }

    /// The memory bound of each multiplexed connection: at most `requests` queued or in
    /// flight and `bytes` queued (not written yet); a caller beyond either waits for room,
    /// at most until its deadline, then fails with [`Error::PoolTimeout`]. Defaults to
    /// 4,096 requests and 64 MiB.
    pub fn multiplex_limits(mut self, requests: usize, bytes: usize) -> ConfigBuilder {
        self.config.multiplex.max_requests = requests;
        self.config.multiplex.max_queued_bytes = bytes;
        self
    }

    /// The largest argument (a value, a key) one command may carry, in bytes: a command with
    /// a larger one fails at once with [`Error::TooLarge`], before anything is sent, is
    /// never resent and does not count against the circuit breaker. Defaults to 512 MiB, the
    /// server's default `proto-max-bulk-len` (which refuses larger ones by closing the
    /// connection); raise both together. URL parameter `max_value_size` (bytes).
    pub fn max_value_size(mut self, bytes: u64) -> ConfigBuilder {
        self.config.max_value_size = bytes;
        self
    }

    /// The largest reply one call may read, in bytes: a reply that grows past it fails with
    /// [`Error::TooLarge`] while it is read (the connection is closed, memory stays bounded).
    /// Defaults to 512 MiB. URL parameter `max_reply_size` (bytes).
    pub fn max_reply_size(mut self, bytes: u64) -> ConfigBuilder {
        self.config.max_reply_size = bytes;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config> {
        let ConfigBuilder {
            mut config,
            tls_files,
            cluster_options,
        } = self;
        if config.cluster.is_none() && cluster_options != ClusterOptions::default() {
            return Err(Error::config(
                "cluster",
                "cluster_read_from_replicas and cluster_max_redirects need a Cluster (ConfigBuilder::cluster)",
            ));
        }
        if let Some(tls) = config.tls.as_mut() {
            if let Some(path) = &tls_files.ca {
                tls.ca_pem = Some(read_file("tls.ca_file", path)?);
            }
            if let Some((cert, key)) = &tls_files.client {
                tls.client_cert_pem = Some(read_file("tls.client_cert_file", cert)?);
                tls.client_key_pem = Some(read_file("tls.client_key_file", key)?);
            }
        }
        validate(&config)?;
        Ok(config)
    }
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(setting, format!("cannot read {}: {e}", path.display())))
}

/// The largest pool: beyond it r2d2's bookkeeping grows for nothing (a server serves at
/// most 10,000 clients by default).
const MAX_POOL: u32 = 10_000;

fn validate(c: &Config) -> Result<()> {
    let m = &c.multiplex;
    if m.connections > 64 {
        return Err(Error::config(
            "multiplexed",
            "at most 64 multiplexed connections (2 to 4 are plenty on most machines)",
        ));
    }
    if m.connections > 0 && (m.max_requests == 0 || m.max_queued_bytes < 1024) {
        return Err(Error::config(
            "multiplex_limits",
            "needs room for at least 1 request and 1024 bytes",
        ));
    }
    if c.max_reply_size < 1024 {
        return Err(Error::config(
            "max_reply_size",
            "must be at least 1024 bytes",
        ));
    }
    if let Some(cl) = &c.cluster {
        if cl.seeds.is_empty() {
            return Err(Error::config("cluster.seeds", "needs at least one node"));
        }
        if cl.seeds.iter().any(|(h, p)| h.is_empty() || *p == 0) {
            return Err(Error::config(
                "cluster.seeds",
                "every node needs a host and a non-zero port",
            ));
        }
        if c.sentinel.is_some() {
            return Err(Error::config(
                "cluster",
                "a handle uses either Sentinel or Cluster, not both",
            ));
        }
        if c.db != 0 {
            return Err(Error::config("db", "Redis Cluster has database 0 only"));
        }
        if cl.options.max_redirects > 100 {
            return Err(Error::config(
                "cluster_max_redirects",
                "must be at most 100",
            ));
        }
    }
    if let Some(s) = &c.sentinel {
        if s.addrs.is_empty() {
            return Err(Error::config(
                "sentinel.addrs",
                "needs at least one sentinel",
            ));
        }
        if s.addrs.iter().any(|(h, p)| h.is_empty() || *p == 0) {
            return Err(Error::config(
                "sentinel.addrs",
                "every sentinel needs a host and a non-zero port",
            ));
        }
        if s.master_name.is_empty() || s.master_name.bytes().any(|b| b <= b' ') {
            return Err(Error::config(
                "sentinel.master_name",
                "must be non-empty, without spaces or control characters",
            ));
        }
    }
    match &c.addr {
        Addr::Tcp { host, .. } if host.is_empty() => {
            return Err(Error::config("host", "must not be empty"))
        }
        Addr::Tcp { host, .. } if host == "0.0.0.0" || host == "::" => {
            return Err(Error::config(
                "host",
                format!("`{host}` is a wildcard address, not one to connect to"),
            ))
        }
        Addr::Tcp { port: 0, .. } => return Err(Error::config("port", "must not be 0")),
        Addr::Unix(p) if p.as_os_str().is_empty() => {
            return Err(Error::config("unix_socket", "path must not be empty"))
        }
        Addr::Unix(_) if c.tls.is_some() => {
            return Err(Error::config(
                "tls",
                "TLS is not available over a unix socket",
            ))
        }
        _ => {}
    }
    if c.db < 0 {
        return Err(Error::config(
            "db",
            format!("must not be negative, got {}", c.db),
        ));
    }
    if c.username.is_some() && c.password.is_none() {
        return Err(Error::config("password", "a username needs a password"));
    }
    if let Some(name) = &c.client_name {
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::config(
                "client_name",
                "must be non-empty without spaces, newlines or control characters (a Redis rule)",
            ));
        }
    }
    c.timeouts.validate()?;
    if c.pool.max_size == 0 {
        return Err(Error::config("pool.max_size", "must be at least 1"));
    }
    if c.pool.max_size > MAX_POOL {
        return Err(Error::config(
            "pool.max_size",
            format!(
                "({}) must be at most {MAX_POOL} (for many threads, use the multiplexed connection)",
                c.pool.max_size
            ),
        ));
    }
    if c.max_value_size < 1024 {
        return Err(Error::config(
            "max_value_size",
            "must be at least 1024 bytes",
        ));
    }
    if c.pool.min_idle > c.pool.max_size {
        return Err(Error::config(
            "pool.min_idle",
            format!(
                "({}) must not exceed pool.max_size ({})",
                c.pool.min_idle, c.pool.max_size
            ),
        ));
    }
    for (setting, d) in [
        ("pool.idle_timeout", c.pool.idle_timeout),
        ("pool.max_lifetime", c.pool.max_lifetime),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                setting,
                "must be greater than zero (or None)",
            ));
        }
    }
    if c.transaction_attempts == 0 {
        return Err(Error::config("transaction_attempts", "must be at least 1"));
    }
    c.retry.validate()?;
    c.breaker.validate()?;
    c.heartbeat.validate()?;
    if c.tcp_keepalive.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(Error::config(
            "tcp_keepalive",
            "must be at least 1 s (or None)",
        ));
    }
    if let Some(tls) = &c.tls {
        super::tls::check(tls)?;
    }
    if !super::tls::COMPILED_IN && c.sentinel.as_ref().is_some_and(|s| s.tls == Some(true)) {
        return Err(super::tls::not_compiled_in("sentinel_tls"));
    }
    Ok(())
}
