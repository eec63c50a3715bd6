//! A Redis Sentinel deployment (one master, replicas, sentinels) on loopback ports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::server::{quote, wait_until};
use super::{RedisServer, TestingError, TlsMaterial};

/// How long [`SentinelBuilder::start`] waits for the sentinels to agree.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`SentinelSetup::failover`] waits for the new master.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest `down-after-milliseconds` before Redis 7.0: the sentinels' ping period stays
/// at 1 s there (no `SENTINEL DEBUG`), and after a failover a sentinel reconnects to the new
/// master at most once per ping period; with `down-after` at 1 s that often came too late and
/// the sentinels failed over a second time, to an empty restarted node.
const OLD_SENTINEL_DOWN_AFTER: Duration = Duration::from_secs(3);
/// How long one query to a sentinel or node may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Configures a [`SentinelSetup`]; made by [`SentinelSetup::builder`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug, Clone)]
pub struct SentinelBuilder {
    master_name: String,
    replicas: usize,
    sentinels: usize,
    down_after: Duration,
    failover_timeout: Duration,
    password: Option<String>,
    sentinel_password: Option<String>,
    tls: Option<TlsMaterial>,
    tls_auth_clients: bool,
}

impl Default for SentinelBuilder {
    fn default() -> Self {
        SentinelBuilder {
            master_name: "mymaster".into(),
            replicas: 1,
            sentinels: 3,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(5000),
            password: None,
            sentinel_password: None,
            tls: None,
            tls_auth_clients: true,
        }
    }
}

impl SentinelBuilder {
    /// The name the sentinels monitor the master under. Defaults to `mymaster`.
    pub fn master_name(mut self, name: impl Into<String>) -> Self {
        self.master_name = name.into();
        self
    }

    /// How many replicas follow the master. Defaults to 1 (at least 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// How many sentinels run (the quorum is a majority of them). Defaults to 3.
    pub fn sentinels(mut self, n: usize) -> Self {
        self.sentinels = n;
        self
    }

    /// `sentinel down-after-milliseconds`: how long the master may be silent before a
    /// sentinel considers it down. Defaults to 1 s (Redis' own default is 30 s). The
    /// sentinels `PING` every half of it (see [`SentinelSetup`]). Before Redis 7.0, whose
    /// sentinels cannot shorten their periods, at least 3 s (see [`SentinelSetup`]).
    pub fn down_after(mut self, d: Duration) -> Self {
        self.down_after = d;
        self
    }

    /// `sentinel failover-timeout`. Defaults to 5 s (Redis' own default is 3 minutes).
    pub fn failover_timeout(mut self, d: Duration) -> Self {
        self.failover_timeout = d;
        self
    }

    /// Protects the master and the replicas with this password (`requirepass` and
    /// `masterauth`; the sentinels get it as `auth-pass`). Defaults to none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Protects the sentinels themselves with this password (`requirepass` on each
    /// sentinel, and `sentinel sentinel-pass` so they can talk to each other: Redis 6.2 and
    /// later, Valkey; [`start`](Self::start) fails on older servers). Defaults to none.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// Runs every process TLS-only with `material` (`port 0`, `tls-port`, the server
    /// certificate and CA): the data nodes replicate over TLS (`tls-replication yes`), and the
    /// sentinels serve TLS and reach the data nodes and each other over TLS. When the nodes
    /// connect to each other they present the client certificate of `material`. Clients need
    /// its CA ([`TlsMaterial::ca_cert_pem`]) and, unless
    /// [`tls_auth_clients`](Self::tls_auth_clients) is off, its client certificate. Defaults to
    /// plain TCP.
    pub fn tls(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// With [`tls`](Self::tls): whether every process requires client certificates
    /// (`tls-auth-clients`). Defaults to `yes`, Redis' own default.
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls_auth_clients = required;
        self
    }

    /// Starts the master, waits for every replica to finish its initial sync, starts the
    /// sentinels, and waits until every sentinel names the same master, sees every replica
    /// and knows every other sentinel.
    pub fn start(mut self) -> Result<SentinelSetup, TestingError> {
        let binary = super::ServerBinary::find()?;
        if !binary.knows_redis(7, 0) && self.down_after < OLD_SENTINEL_DOWN_AFTER {
            log::debug!(
                "{}: down-after-milliseconds {OLD_SENTINEL_DOWN_AFTER:?} instead of {:?} (no \
                 SENTINEL DEBUG to shorten the ping period)",
                binary.version(),
                self.down_after
            );
            self.down_after = OLD_SENTINEL_DOWN_AFTER;
        }
        let name = &self.master_name;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b'"') {
            return Err(start_failed(format!(
                "master name `{name}` must be non-empty, without spaces or quotes"
            )));
        }
        if self.replicas == 0 || self.sentinels == 0 {
            return Err(start_failed(
                "a sentinel setup needs at least one replica and one sentinel".into(),
            ));
        }
        if self.sentinel_password.is_some() && !binary.knows_redis(6, 2) {
            return Err(start_failed(format!(
                "a sentinel password (`sentinel sentinel-pass`) needs Redis 6.2 or later, or \
                 Valkey; the server is {}",
                binary.version()
            )));
        }
        let master = self.data_node(None).start()?;
        let master_port = master.port();
        let mut nodes = vec![master];
        for _ in 0..self.replicas {
            nodes.push(self.data_node(Some(master_port)).start()?);
        }
        for replica in &nodes[1..] {
            wait_until(READY_TIMEOUT, "replicas to sync with the master", || {
                info_field(replica, "replication", "master_link_status").as_deref() == Some("up")
            })?;
        }
        let quorum = self.sentinels / 2 + 1;
        let mut sentinels = Vec::with_capacity(self.sentinels);
        for _ in 0..self.sentinels {
            let sentinel = self.sentinel_node(master_port, quorum).start()?;
            shorten_periods(&sentinel, self.down_after);
            sentinels.push(sentinel);
        }
        let setup = SentinelSetup {
            sentinels,
            nodes,
            master_name: self.master_name,
            replicas: self.replicas,
            password: self.password,
            sentinel_password: self.sentinel_password,
            tls: self.tls,
            down_after: self.down_after,
        };
        setup.wait_ready(READY_TIMEOUT)?;
        Ok(setup)
    }

    /// TLS settings for a data node or sentinel (nothing without TLS).
    fn with_tls(&self, b: super::ServerBuilder) -> super::ServerBuilder {
        let Some(tls) = &self.tls else {
            return b;
        };
        let path = |p: std::path::PathBuf| quote(&p.to_string_lossy());
        b.tls(tls.clone())
            .tls_auth_clients(self.tls_auth_clients)
            .config("tls-replication", "yes")
            .config("tls-client-cert-file", path(tls.client_cert_path()))
            .config("tls-client-key-file", path(tls.client_key_path()))
    }

    fn data_node(&self, replica_of: Option<u16>) -> super::ServerBuilder {
        let mut b = self.with_tls(RedisServer::builder().config("repl-diskless-sync-delay", "0"));
        if let Some(port) = replica_of {
            b = b.config("replicaof", format!("127.0.0.1 {port}"));
        }
        if let Some(password) = &self.password {
            b = b
                .password(password.clone())
                .config("masterauth", super::server::quote(password));
        }
        b
    }

    fn sentinel_node(&self, master_port: u16, quorum: usize) -> super::ServerBuilder {
        let name = &self.master_name;
        let mut b = self
            .with_tls(RedisServer::builder().sentinel())
            .config(
                "sentinel",
                format!("monitor {name} 127.0.0.1 {master_port} {quorum}"),
            )
            .config(
                "sentinel",
                format!(
                    "down-after-milliseconds {name} {}",
                    self.down_after.as_millis().max(1)
                ),
            )
            .config(
                "sentinel",
                format!(
                    "failover-timeout {name} {}",
                    self.failover_timeout.as_millis().max(1)
                ),
            )
            .config("sentinel", format!("parallel-syncs {name} 1"));
        if let Some(password) = &self.password {
            b = b.config(
                "sentinel",
                format!("auth-pass {name} {}", super::server::quote(password)),
            );
        }
        if let Some(password) = &self.sentinel_password {
            b = b.password(password.clone()).config(
                "sentinel",
                format!("sentinel-pass {}", super::server::quote(password)),
            );
        }
        b
    }
}

/// A Redis Sentinel deployment on `127.0.0.1`: a master, its replicas (1 by default) and
/// sentinels (3 by default, quorum 2), each a [`RedisServer`] process of its own.
///
/// Data nodes are numbered from 0 (the first master) in [`node`](Self::node); which one is
/// the master changes with failovers, so ask [`master_index`](Self::master_index). Dropping
/// the setup kills every process (sentinels first) and removes their directories, also when
/// a test panics.
///
/// The sentinels run with shorter internal periods than Redis' defaults (set with
/// `SENTINEL DEBUG` on Redis 7.0 and later): a `PING` every half `down-after-milliseconds`
/// (so that after a failover the link to the new master is back before it could be counted
/// as down, which otherwise triggered a second, spurious failover now and then), `INFO` every
/// second instead of every 10 s and hellos every 500 ms instead of 2 s (an old master that
/// comes back is turned into a replica in about 2 s rather than about 10 s), and TILT lasting
/// 5 s instead of 30 s. Restart a sentinel with [`restart_sentinel`](Self::restart_sentinel)
/// to keep them. Before 7.0 the sentinels keep their default periods, and
/// `down-after-milliseconds` is at least 3 s (see [`SentinelBuilder::down_after`]).
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::testing::{SentinelSetup, TestingError};
///
/// # fn main() -> Result<(), TestingError> {
/// let mut setup = SentinelSetup::start()?;
/// let old = setup.master_index()?;
/// // A planned failover, through a sentinel:
/// let new = setup.failover()?;
/// assert_ne!(old, new);
/// // An unplanned one: kill the master's process.
/// let killed = setup.kill_master()?;
/// let newer = setup.wait_for_new_master(killed, Duration::from_secs(20))?;
/// // Bring the killed node back: the sentinels turn it into a replica.
/// setup.restart_node(killed)?;
/// setup.wait_ready(Duration::from_secs(20))?;
/// # let _ = newer;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SentinelSetup {
    // Declared first: dropped (killed) before the data nodes, so no failover starts while
    // the data nodes go away.
    sentinels: Vec<RedisServer>,
    nodes: Vec<RedisServer>,
    master_name: String,
    replicas: usize,
    password: Option<String>,
    sentinel_password: Option<String>,
    tls: Option<TlsMaterial>,
    down_after: Duration,
}

impl SentinelSetup {
    /// Starts the default setup: master `mymaster`, 1 replica, 3 sentinels, no passwords,
    /// `down-after-milliseconds 1000`, `failover-timeout 5000`.
    pub fn start() -> Result<SentinelSetup, TestingError> {
        Self::builder().start()
    }

    /// A builder for other sizes, timings or passwords.
    pub fn builder() -> SentinelBuilder {
        SentinelBuilder::default()
    }

    /// The name the sentinels know the master by.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' addresses, as `(host, port)`.
    pub fn sentinel_addrs(&self) -> Vec<(String, u16)> {
        self.sentinels
            .iter()
            .map(|s| (s.host().to_owned(), s.port()))
            .collect()
    }

    /// The data nodes' password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The sentinels' password, if any.
    pub fn sentinel_password(&self) -> Option<&str> {
        self.sentinel_password.as_deref()
    }

    /// The TLS material every process serves with, when started with
    /// [`SentinelBuilder::tls`].
    pub fn tls_material(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// How many data nodes there are (the master and its replicas).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Data node `i` (0 is the first master). Panics if `i` is out of range.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Data node `i`, to stop, kill or restart it. Panics if `i` is out of range.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// How many sentinels there are.
    pub fn sentinel_count(&self) -> usize {
        self.sentinels.len()
    }

    /// Sentinel `i`. Panics if `i` is out of range.
    pub fn sentinel(&self, i: usize) -> &RedisServer {
        &self.sentinels[i]
    }

    /// Sentinel `i`, to stop or kill it (restart it with
    /// [`restart_sentinel`](Self::restart_sentinel)). Panics if `i` is out of range.
    pub fn sentinel_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.sentinels[i]
    }

    /// Restarts sentinel `i` (killed or stopped) on its port, with its config file (which
    /// the sentinel rewrites as it learns), and sets the launcher's shorter periods again.
    /// Panics if `i` is out of range.
    pub fn restart_sentinel(&mut self, i: usize) -> Result<(), TestingError> {
        self.sentinels[i].restart()?;
        shorten_periods(&self.sentinels[i], self.down_after);
        Ok(())
    }

    /// The master's address according to the first sentinel that answers.
    pub fn master_addr(&self) -> Result<(String, u16), TestingError> {
        let mut last = None;
        for sentinel in self.running_sentinels() {
            match self.ask_master(sentinel) {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| start_failed("no sentinel knows the master".into())))
    }

    /// The index (see [`node`](Self::node)) of the data node the sentinels name as master.
    pub fn master_index(&self) -> Result<usize, TestingError> {
        let (_, port) = self.master_addr()?;
        self.index_of_port(port)
            .ok_or_else(|| start_failed(format!("the sentinels name an unknown master :{port}")))
    }

    /// Asks a sentinel for a planned failover (`SENTINEL FAILOVER`) and waits until every
    /// running sentinel names the promoted replica, which answers as a master. Returns its
    /// index.
    pub fn failover(&self) -> Result<usize, TestingError> {
        let old = self.master_index()?;
        let mut last = None;
        let mut asked = false;
        for sentinel in self.running_sentinels() {
            let result = sentinel.admin().and_then(|mut con| {
                redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(&self.master_name)
                    .exec(&mut con)
                    .map_err(TestingError::from)
            });
            match result {
                Ok(()) => {
                    asked = true;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if !asked {
            return Err(last.unwrap_or_else(|| start_failed("no sentinel is running".into())));
        }
        self.wait_for_new_master(old, FAILOVER_TIMEOUT)
    }

    /// Kills the master's process (SIGKILL) and returns its index. The sentinels notice after
    /// `down-after-milliseconds` and promote a replica: see
    /// [`wait_for_new_master`](Self::wait_for_new_master).
    pub fn kill_master(&mut self) -> Result<usize, TestingError> {
        let i = self.master_index()?;
        self.nodes[i].kill()?;
        Ok(i)
    }

    /// Restarts data node `i` (killed or stopped) on its port, empty. A restarted former
    /// master comes back as a master until the sentinels turn it into a replica of the
    /// current one, which [`wait_ready`](Self::wait_ready) waits for.
    pub fn restart_node(&mut self, i: usize) -> Result<(), TestingError> {
        self.nodes[i].restart()
    }

    /// Waits until every running sentinel names the same master, other than data node `old`,
    /// and that node answers `role:master`. Returns its index.
    pub fn wait_for_new_master(
        &self,
        old: usize,
        timeout: Duration,
    ) -> Result<usize, TestingError> {
        let old_port = self.nodes[old].port();
        let mut found = None;
        wait_until(timeout, "the sentinels to agree on a new master", || {
            found = self
                .agreed_master()
                .filter(|&port| port != old_port)
                .and_then(|port| self.index_of_port(port))
                .filter(|&i| {
                    info_field(&self.nodes[i], "replication", "role").as_deref() == Some("master")
                });
            found.is_some()
        })?;
        found.ok_or_else(|| start_failed("no new master".into()))
    }

    /// Waits until every running sentinel names the same master (which answers
    /// `role:master`), sees as many healthy replicas as were configured and knows every other
    /// running sentinel. After a failover that killed a node, [`restart_node`] it first.
    ///
    /// [`restart_node`]: Self::restart_node
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), TestingError> {
        let started = Instant::now();
        wait_until(timeout, "the sentinels to agree on the master", || {
            self.agreed_master()
                .and_then(|port| self.index_of_port(port))
                .is_some_and(|i| {
                    info_field(&self.nodes[i], "replication", "role").as_deref() == Some("master")
                })
        })?;
        let others = self.running_sentinels().count().saturating_sub(1);
        let left = timeout.saturating_sub(started.elapsed());
        wait_until(
            left,
            "every sentinel to see the replicas and the other sentinels",
            || {
                self.running_sentinels().all(|s| {
                    let replicas = self.sentinel_list(s, "REPLICAS");
                    let peers = self.sentinel_list(s, "SENTINELS");
                    let healthy = |entries: &[HashMap<String, String>]| {
                        entries
                            .iter()
                            .filter(|e| healthy_flags(e.get("flags").map_or("", String::as_str)))
                            .count()
                    };
                    let seen = replicas.is_ok_and(|r| healthy(&r) >= self.replicas);
                    seen && peers.is_ok_and(|p| healthy(&p) >= others)
                }) && self.replicas_synced()
            },
        )
    }

    /// Whether at least as many data nodes as configured replicas say they are replicas of
    /// the master the sentinels name, with their link up. (Asked of the nodes themselves:
    /// the sentinels refresh what they know of replicas only every 10 s.)
    fn replicas_synced(&self) -> bool {
        let Some(master_port) = self.agreed_master() else {
            return false;
        };
        let master_port = master_port.to_string();
        let synced = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some() && n.port().to_string() != master_port)
            .filter(|n| {
                info_field(n, "replication", "master_port").as_deref() == Some(master_port.as_str())
                    && info_field(n, "replication", "master_link_status").as_deref() == Some("up")
            })
            .count();
        synced >= self.replicas
    }

    /// The master port every running sentinel agrees on, if they do.
    fn agreed_master(&self) -> Option<u16> {
        let mut agreed = None;
        for sentinel in self.running_sentinels() {
            let (_, port) = self.ask_master(sentinel).ok()??;
            match agreed {
                None => agreed = Some(port),
                Some(p) if p == port => {}
                Some(_) => return None,
            }
        }
        agreed
    }

    fn ask_master(&self, sentinel: &RedisServer) -> Result<Option<(String, u16)>, TestingError> {
        let mut con = quick_con(sentinel)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query(&mut con)?;
        Ok(addr)
    }

    fn sentinel_list(
        &self,
        sentinel: &RedisServer,
        what: &str,
    ) -> Result<Vec<HashMap<String, String>>, TestingError> {
        let mut con = quick_con(sentinel)?;
        Ok(redis::cmd("SENTINEL")
            .arg(what)
            .arg(&self.master_name)
            .query(&mut con)?)
    }

    fn running_sentinels(&self) -> impl Iterator<Item = &RedisServer> {
        self.sentinels.iter().filter(|s| s.pid().is_some())
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }
}

/// The sentinels' internal periods for tests (`SENTINEL DEBUG`, Redis 7.0 and later; older
/// sentinels keep their defaults).
///
/// * `ping-period`: half of `down-after-milliseconds` (at most Redis' default, 1 s). A
///   sentinel reconnects a closed link at most once per ping period, and when it switches to
///   a new master after a failover it closes the master link and counts the new master as
///   down unless a `PONG` comes back within `down-after-milliseconds`. After a *killed* master
///   the link had been retrying the dead node every second, so with a 1 s ping period and
///   `down-after-milliseconds 1000` the reconnection to the new master often came just too
///   late: every sentinel flagged the new master down, agreed (`+odown`) and started another
///   failover, promoting the killed master's empty restarted process if it was back by then
///   (the ignored launcher test caught this: 4 runs in 15 under load).
/// * `info-period` 1 s instead of 10 s and `publish-period` 500 ms instead of 2 s: a sentinel
///   turns a node that should be a replica but says it is a master (the old master after
///   `SENTINEL FAILOVER`, a killed master restarted) into a replica only when one of its
///   `INFO` polls finds it reporting `master` for more than 4 publish periods and not flagged
///   down in that time: about 10 s with the defaults (a missed chance costing 10 s more),
///   about 2 s here.
/// * `tilt-period` 5 s instead of 30 s: a TILT (the sentinel's timer late by more than 2 s,
///   as on an overloaded machine) stops every sentinel action for that long.
fn shorten_periods(sentinel: &RedisServer, down_after: Duration) {
    let ping = (down_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let ping = ping.as_millis().to_string();
    let result = quick_con(sentinel).and_then(|mut con| {
        redis::cmd("SENTINEL")
            .arg("DEBUG")
            .arg("ping-period")
            .arg(&ping)
            .arg("info-period")
            .arg("1000")
            .arg("publish-period")
            .arg("500")
            .arg("tilt-period")
            .arg("5000")
            .exec(&mut con)
            .map_err(TestingError::from)
    });
    if let Err(e) = result {
        log::debug!(
            "sentinel on port {} keeps its default periods (SENTINEL DEBUG: {e})",
            sentinel.port()
        );
    }
}

/// Whether a sentinel's `flags` of a replica or sentinel (`slave`, `s_down`,
/// `disconnected`...) say it is up. Matched flag by flag: Valkey 9 flags a replica whose
/// link to the master is down `master_down`, a state that does not make the replica itself
/// down.
fn healthy_flags(flags: &str) -> bool {
    !flags
        .split(',')
        .map(str::trim)
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
}

fn start_failed(reason: String) -> TestingError {
    TestingError::StartFailed {
        reason,
        log_tail: String::new(),
    }
}

/// An admin connection with short timeouts, for polling.
pub(crate) fn quick_con(server: &RedisServer) -> Result<redis::Connection, TestingError> {
    if server.pid().is_none() {
        return Err(start_failed(format!(
            "port {} is not running",
            server.port()
        )));
    }
    let con = server
        .client()?
        .get_connection_with_timeout(QUERY_TIMEOUT)?;
    con.set_read_timeout(Some(QUERY_TIMEOUT))?;
    con.set_write_timeout(Some(QUERY_TIMEOUT))?;
    Ok(con)
}

/// One `field:value` line of `INFO section`, or `None` when unreachable or absent.
pub(crate) fn info_field(server: &RedisServer, section: &str, field: &str) -> Option<String> {
    let mut con = quick_con(server).ok()?;
    let info: String = redis::cmd("INFO").arg(section).query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::healthy_flags;

    #[test]
    fn flags_match_whole() {
        assert!(healthy_flags("slave"));
        assert!(healthy_flags("sentinel"));
        assert!(healthy_flags("slave,master_down"));
        assert!(!healthy_flags("slave,s_down"));
        assert!(!healthy_flags("sentinel,s_down,o_down"));
        assert!(!healthy_flags("slave,disconnected"));
    }
}
