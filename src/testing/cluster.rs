//! A Redis Cluster (masters and replicas) on loopback ports, created with
//! `redis-cli --cluster create`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::binary::{find_redis_server, is_executable};
use super::sentinel::{info_field, quick_con};
use super::server::{quote, tail, wait_until};
use super::{io_err, RedisServer, ServerBinary, TempDir, TestingError, TlsMaterial};

/// Name of the environment variable that points at the `redis-cli` binary to use.
pub const REDIS_CLI_ENV: &str = "REDKIT_REDIS_CLI";

/// How long [`ClusterBuilder::start`] waits for the cluster to settle.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `redis-cli --cluster create` may run (it waits forever for nodes that cannot
/// meet).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long failovers and slot moves wait for every node to agree.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The number of hash slots.
const SLOTS: u32 = 16384;

/// Configures a [`RedisCluster`]; made by [`RedisCluster::builder`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    password: Option<String>,
    tls: Option<TlsMaterial>,
    tls_auth_clients: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(1000),
            password: None,
            tls: None,
            tls_auth_clients: true,
        }
    }
}

impl ClusterBuilder {
    /// How many masters share the slots. Defaults to 3 (the minimum Redis accepts).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// How many replicas follow each master (`--cluster-replicas`). Defaults to 1.
    pub fn replicas_per_master(mut self, n: usize) -> Self {
        self.replicas_per_master = n;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it is failed over.
    /// Defaults to 1 s (Redis' own default is 15 s).
    pub fn node_timeout(mut self, d: Duration) -> Self {
        self.node_timeout = d;
        self
    }

    /// Protects every node with this password (`requirepass` and `masterauth`). Defaults to
    /// none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Runs every node TLS-only (see [`ServerBuilder::tls`](super::ServerBuilder::tls)) with
    /// the certificates of `material`, and TLS inside the cluster too: `tls-cluster yes`
    /// (the cluster bus, `MIGRATE`, and the TLS ports in `CLUSTER SLOTS`/`NODES`) and
    /// `tls-replication yes`. Nodes present the material's client certificate when they
    /// connect to each other (`tls-client-cert-file`), and `redis-cli --cluster create` runs
    /// with `--tls`, the CA and the client certificate. Every helper of [`RedisCluster`]
    /// (and [`RedisServer::admin`] on its nodes) connects with the CA and the client
    /// certificate. Defaults to plain TCP.
    pub fn tls(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// Whether TLS nodes require client certificates (`tls-auth-clients yes|no`), from
    /// clients and from each other alike. Defaults to `yes` (Redis' own default). Ignored
    /// without [`tls`](Self::tls).
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls_auth_clients = required;
        self
    }

    /// Starts the nodes, joins them with `redis-cli --cluster create ... --cluster-yes`, and
    /// waits until every node reports `cluster_state:ok` with the same slot map and every
    /// replica has synced.
    pub fn start(self) -> Result<RedisCluster, TestingError> {
        if self.masters < 3 {
            return Err(failed(
                "a cluster needs at least 3 masters".into(),
                String::new(),
            ));
        }
        let cli = find_redis_cli()?;
        let binary = ServerBinary::find()?;
        let count = self.masters * (1 + self.replicas_per_master);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            // The bus port defaults to port + 10000, which may be taken (or above 65535).
            let mut b = RedisServer::builder()
                .cluster_node()
                .config("cluster-enabled", "yes")
                .config("cluster-config-file", "nodes.conf")
                .config(
                    "cluster-node-timeout",
                    self.node_timeout.as_millis().max(1).to_string(),
                )
                .config("cluster-replica-validity-factor", "0")
                .config("repl-diskless-sync-delay", "0");
            // No replica moves to a master left without replicas (6.2 brought the switch;
            // before, a barrier no master reaches does the same).
            b = if binary.knows_redis(6, 2) {
                b.config("cluster-allow-replica-migration", "no")
            } else {
                b.config("cluster-migration-barrier", "999")
            };
            if let Some(password) = &self.password {
                b = b
                    .password(password.clone())
                    .config("masterauth", quote(password));
            }
            if let Some(tls) = &self.tls {
                // Without a client certificate of its own a node presents its server
                // certificate (extendedKeyUsage serverAuth only) to its peers, and with
                // `tls-auth-clients yes` the nodes never meet (`--cluster create` hangs).
                b = b
                    .tls(tls.clone())
                    .tls_auth_clients(self.tls_auth_clients)
                    .config("tls-cluster", "yes")
                    .config("tls-replication", "yes")
                    .config(
                        "tls-client-cert-file",
                        quote(&tls.client_cert_path().to_string_lossy()),
                    )
                    .config(
                        "tls-client-key-file",
                        quote(&tls.client_key_path().to_string_lossy()),
                    );
            }
            nodes.push(b.start()?);
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("{}:{}", node.host(), node.port()));
        }
        create
            .arg("--cluster-replicas")
            .arg(self.replicas_per_master.to_string())
            .arg("--cluster-yes");
        if let Some(password) = &self.password {
            create
                .arg("--no-auth-warning")
                .env("REDISCLI_AUTH", password);
        }
        if let Some(tls) = &self.tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(tls.ca_cert_path())
                .arg("--cert")
                .arg(tls.client_cert_path())
                .arg("--key")
                .arg(tls.client_key_path());
        }
        let status = run_bounded(&mut create, &cli, CREATE_TIMEOUT)?;
        if !status.0.success() {
            return Err(failed(
                format!("redis-cli --cluster create exited with {}", status.0),
                tail(&status.1, 30),
            ));
        }
        let cluster = RedisCluster {
            nodes,
            password: self.password,
            tls: self.tls,
        };
        cluster.wait_stable(READY_TIMEOUT)?;
        Ok(cluster)
    }
}

/// A Redis Cluster on `127.0.0.1`: 3 masters and 3 replicas by default, each a
/// [`RedisServer`] process of its own, joined with `redis-cli --cluster create`.
///
/// Nodes are numbered from 0 in [`node`](Self::node); roles change with failovers, so ask
/// [`masters`](Self::masters), [`slot_owner`](Self::slot_owner) or
/// [`replicas_of`](Self::replicas_of). Dropping the cluster kills every process and removes
/// their directories, also when a test panics.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::testing::{RedisCluster, TestingError};
///
/// # fn main() -> Result<(), TestingError> {
/// let mut cluster = RedisCluster::start()?;
/// let slot = cluster.key_slot("user:42")?;
/// let owner = cluster.slot_owner(slot)?;
/// // Move the slot (and its keys) to another master.
/// let other = cluster.masters()?.into_iter().find(|&m| m != owner).expect("3 masters");
/// cluster.move_slot(slot, other)?;
/// // Kill a master: its replica takes over its slots.
/// let promoted = cluster.kill_master_and_wait(other, Duration::from_secs(20))?;
/// # let _ = promoted;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    password: Option<String>,
    tls: Option<TlsMaterial>,
}

/// Which master port owns which slot ranges, sorted by port.
type SlotMap = Vec<(u16, Vec<(u16, u16)>)>;
/// Each running node's port, whether it is a master, and the id of its master if not.
type Roles = Vec<(u16, bool, Option<String>)>;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the default cluster: 3 masters, 1 replica each, `cluster-node-timeout 1000`.
    pub fn start() -> Result<RedisCluster, TestingError> {
        Self::builder().start()
    }

    /// A builder for other sizes, timings, a password or TLS.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// How many nodes there are (masters and replicas).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`. Panics if `i` is out of range.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, to stop, kill or restart it. Panics if `i` is out of range.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The password of every node, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The TLS material every node was started with ([`ClusterBuilder::tls`]), if any: its
    /// CA (and client certificate) is what a client needs to connect.
    pub fn tls_material(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// Every node's address as `(host, port)` (the TLS port with TLS): seeds for a cluster
    /// client.
    pub fn addrs(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .map(|n| (n.host().to_owned(), n.port()))
            .collect()
    }

    /// Every node's `redis://127.0.0.1:PORT` URL (`rediss://` with TLS; without the
    /// password).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The cluster node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> Result<String, TestingError> {
        let mut con = quick_con(&self.nodes[i])?;
        Ok(redis::cmd("CLUSTER").arg("MYID").query(&mut con)?)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn key_slot(&self, key: &str) -> Result<u16, TestingError> {
        let mut con = self.any_con()?;
        Ok(redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)?)
    }

    /// The running nodes that are masters, by index, in the view of a running node.
    pub fn masters(&self) -> Result<Vec<usize>, TestingError> {
        let view = self.view()?;
        Ok(self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.pid().is_some())
            .filter(|(_, n)| {
                view.iter()
                    .any(|l| l.port == n.port() && l.master && !l.failed)
            })
            .map(|(i, _)| i)
            .collect())
    }

    /// The nodes replicating node `master`, by index.
    pub fn replicas_of(&self, master: usize) -> Result<Vec<usize>, TestingError> {
        let view = self.view()?;
        let port = self.nodes[master].port();
        let Some(id) = view.iter().find(|l| l.port == port).map(|l| l.id.clone()) else {
            return Ok(Vec::new());
        };
        Ok(view
            .iter()
            .filter(|l| l.master_id.as_deref() == Some(id.as_str()))
            .filter_map(|l| self.index_of_port(l.port))
            .collect())
    }

    /// The index of the master that owns `slot`.
    pub fn slot_owner(&self, slot: u16) -> Result<usize, TestingError> {
        let view = self.view()?;
        view.iter()
            .filter(|l| l.master && !l.failed)
            .find(|l| l.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .and_then(|l| self.index_of_port(l.port))
            .ok_or_else(|| failed(format!("no running master owns slot {slot}"), String::new()))
    }

    /// Kills node `i` (SIGKILL). With a master, the cluster fails until its replica is
    /// promoted, `cluster-node-timeout` and an election later: see
    /// [`wait_for_promotion`](Self::wait_for_promotion).
    pub fn kill_node(&mut self, i: usize) -> Result<(), TestingError> {
        self.nodes[i].kill()
    }

    /// Kills master `i` and waits until one of its replicas took over its slots and every
    /// running node agrees again. Returns the promoted node's index. As in production, writes
    /// the replica had not received yet are lost: send `WAIT` to the master first if the
    /// test needs them.
    pub fn kill_master_and_wait(
        &mut self,
        master: usize,
        timeout: Duration,
    ) -> Result<usize, TestingError> {
        let replicas = self.replicas_of(master)?;
        if replicas.is_empty() {
            return Err(failed(
                format!("node {master} has no replica to promote"),
                String::new(),
            ));
        }
        let slots = self.slots_of(master)?;
        self.kill_node(master)?;
        self.wait_for_promotion(&replicas, &slots, timeout)
    }

    /// Restarts node `i` (killed or stopped) on its port, with its `nodes.conf` but no data:
    /// it rejoins the cluster (a replaced master comes back as a replica) and resyncs.
    /// Waits until the cluster is stable again.
    pub fn restart_node(&mut self, i: usize) -> Result<(), TestingError> {
        self.nodes[i].restart()?;
        self.wait_stable(SETTLE_TIMEOUT)
    }

    /// A planned failover: `CLUSTER FAILOVER` on replica `replica`, then waits until it is a
    /// master with its former master's slots and every running node agrees.
    pub fn failover(&self, replica: usize) -> Result<(), TestingError> {
        let view = self.view()?;
        let port = self.nodes[replica].port();
        let master_id = view
            .iter()
            .find(|l| l.port == port && !l.master)
            .and_then(|l| l.master_id.clone())
            .ok_or_else(|| failed(format!("node {replica} is not a replica"), String::new()))?;
        let slots = view
            .iter()
            .find(|l| l.id == master_id)
            .map(|l| l.slots.clone())
            .unwrap_or_default();
        let mut con = quick_con(&self.nodes[replica])?;
        redis::cmd("CLUSTER").arg("FAILOVER").exec(&mut con)?;
        self.wait_for_promotion(&[replica], &slots, SETTLE_TIMEOUT)
            .map(drop)
    }

    /// Waits until one of `candidates` is a master owning every range in `slots` in the view
    /// of every running node, and the cluster is stable. Returns the candidate's index.
    pub fn wait_for_promotion(
        &self,
        candidates: &[usize],
        slots: &[(u16, u16)],
        timeout: Duration,
    ) -> Result<usize, TestingError> {
        let started = Instant::now();
        let mut promoted = None;
        wait_until(timeout, "a replica to take over the slots", || {
            promoted = candidates.iter().copied().find(|&c| {
                let port = self.nodes[c].port();

                self.running().all(|n| {
                    node_view(n).is_ok_and(|view| {
                        view.iter().any(|l| {
                            l.port == port
                                && l.master
                                && slots
                                    .iter()
                                    .all(|&(a, b)| l.slots.iter().any(|&(x, y)| x <= a && b <= y))
                        })
                    })
                })
            });
            promoted.is_some()
        })?;
        self.wait_stable(timeout.saturating_sub(started.elapsed()))?;
        promoted.ok_or_else(|| failed("no promotion".into(), String::new()))
    }

    /// Waits until every running node reports `cluster_state:ok`, every running node has the
    /// same view of which running master owns which slots (all 16384 of them), and every
    /// running replica's link to its master is up.
    pub fn wait_stable(&self, timeout: Duration) -> Result<(), TestingError> {
        wait_until(timeout, "the cluster to be stable", || self.is_stable())
    }

    fn is_stable(&self) -> bool {
        let running_ports: Vec<u16> = self.running().map(RedisServer::port).collect();
        let mut agreed: Option<(SlotMap, Roles)> = None;
        for node in self.running() {
            if cluster_state(node).as_deref() != Some("ok") {
                log::debug!("cluster: node :{} is not ok yet", node.port());
                return false;
            }
            let Ok(view) = node_view(node) else {
                return false;
            };
            let mut map: SlotMap = view
                .iter()
                .filter(|l| l.master && !l.slots.is_empty())
                .map(|l| (l.port, l.slots.clone()))
                .collect();
            map.sort();
            let covered: u32 = map
                .iter()
                .flat_map(|(_, s)| s.iter())
                .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
                .sum();
            if covered != SLOTS || map.iter().any(|(p, _)| !running_ports.contains(p)) {
                log::debug!(
                    "cluster: node :{} sees {covered} slots in {map:?}",
                    node.port()
                );
                return false;
            }
            // Every running node must be known and not failed.
            if running_ports
                .iter()
                .any(|p| !view.iter().any(|l| l.port == *p && !l.failed))
            {
                log::debug!("cluster: node :{} does not see every node yet", node.port());
                return false;
            }
            let me = view.iter().find(|l| l.port == node.port());
            if me.is_some_and(|l| !l.master)
                && info_field(node, "replication", "master_link_status").as_deref() != Some("up")
            {
                log::debug!("cluster: replica :{} has not synced yet", node.port());
                return false;
            }
            let mut roles: Roles = view
                .iter()
                .filter(|l| running_ports.contains(&l.port))
                .map(|l| (l.port, l.master, l.master_id.clone()))
                .collect();
            roles.sort();
            let seen = (map, roles);
            match &agreed {
                None => agreed = Some(seen),
                Some(a) if *a == seen => {}
                Some(_) => {
                    log::debug!("cluster: node :{} has another slot map", node.port());
                    return false;
                }
            }
        }
        agreed.is_some()
    }

    /// Moves `slot` and its keys to master `to`: `CLUSTER SETSLOT IMPORTING/MIGRATING`,
    /// `MIGRATE` in batches of 100 keys, then `CLUSTER SETSLOT NODE` on every master. Returns
    /// how many keys moved.
    pub fn move_slot(&self, slot: u16, to: usize) -> Result<usize, TestingError> {
        let migration = self.start_slot_migration(slot, to)?;
        let mut moved = 0;
        loop {
            let n = migration.migrate_keys(100)?;
            if n == 0 {
                break;
            }
            moved += n;
        }
        migration.finish()?;
        Ok(moved)
    }

    /// Starts moving `slot` to master `to`, and stops half-way, with the slot `MIGRATING` on
    /// its owner and `IMPORTING` on `to`: clients get `ASK` redirections for keys already
    /// moved. Continue with [`SlotMigration::migrate_keys`] and [`SlotMigration::finish`].
    pub fn start_slot_migration(
        &self,
        slot: u16,
        to: usize,
    ) -> Result<SlotMigration<'_>, TestingError> {
        let from = self.slot_owner(slot)?;
        if from == to {
            return Err(failed(
                format!("node {to} already owns slot {slot}"),
                String::new(),
            ));
        }
        let from_id = self.node_id(from)?;
        let to_id = self.node_id(to)?;
        let mut target = quick_con(&self.nodes[to])?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .exec(&mut target)?;
        let mut source = quick_con(&self.nodes[from])?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .exec(&mut source)?;
        Ok(SlotMigration {
            cluster: self,
            slot,
            from,
            to,
            to_id,
        })
    }

    /// Owner slot ranges of node `i`.
    fn slots_of(&self, i: usize) -> Result<Vec<(u16, u16)>, TestingError> {
        let port = self.nodes[i].port();
        Ok(self
            .view()?
            .into_iter()
            .find(|l| l.port == port)
            .map(|l| l.slots)
            .unwrap_or_default())
    }

    /// `CLUSTER NODES` of the first running node that answers.
    fn view(&self) -> Result<Vec<NodeLine>, TestingError> {
        let mut last = None;
        for node in self.running() {
            match node_view(node) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| failed("no node is running".into(), String::new())))
    }

    fn any_con(&self) -> Result<redis::Connection, TestingError> {
        let mut last = None;
        for node in self.running() {
            match quick_con(node) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| failed("no node is running".into(), String::new())))
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.pid().is_some())
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }
}

/// A slot half-way between two masters; made by [`RedisCluster::start_slot_migration`].
#[derive(Debug)]
#[must_use = "the slot stays in MIGRATING/IMPORTING state until `finish` is called"]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
    to_id: String,
}

impl SlotMigration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The index of the node it moves from.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The index of the node it moves to.
    pub fn to(&self) -> usize {
        self.to
    }

    /// Moves up to `batch` keys of the slot with `MIGRATE`; returns how many moved (0 when
    /// none are left on the source).
    pub fn migrate_keys(&self, batch: usize) -> Result<usize, TestingError> {
        let source_node = &self.cluster.nodes[self.from];
        let target_node = &self.cluster.nodes[self.to];
        let mut source = quick_con(source_node)?;
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.slot)
            .arg(batch.max(1))
            .query(&mut source)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg(target_node.host())
            .arg(target_node.port())
            .arg("")
            .arg(0)
            .arg(5000);
        if let Some(password) = &self.cluster.password {
            migrate.arg("AUTH").arg(password);
        }
        migrate.arg("KEYS").arg(&keys);
        migrate.exec(&mut source)?;
        Ok(keys.len())
    }

    /// Migrates whatever keys are left, then assigns the slot to the target on the target,
    /// the source and every other running master (`CLUSTER SETSLOT slot NODE id`), and waits
    /// until every running node agrees.
    pub fn finish(self) -> Result<(), TestingError> {
        while self.migrate_keys(100)? > 0 {}
        let cluster = self.cluster;
        let mut order = vec![self.to, self.from];
        order.extend(
            cluster
                .masters()?
                .into_iter()
                .filter(|&m| m != self.to && m != self.from),
        );
        for i in order {
            let mut con = quick_con(&cluster.nodes[i])?;
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.to_id)
                .exec(&mut con)?;
        }
        let to_port = cluster.nodes[self.to].port();
        let slot = self.slot;
        let started = Instant::now();
        wait_until(SETTLE_TIMEOUT, "every node to see the moved slot", || {
            cluster.running().all(|n| {
                node_view(n).is_ok_and(|view| {
                    view.iter().any(|l| {
                        l.port == to_port && l.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
                    })
                })
            })
        })?;
        cluster.wait_stable(SETTLE_TIMEOUT.saturating_sub(started.elapsed()))
    }
}

/// `cluster_state` of `CLUSTER INFO` (`INFO cluster` does not have it).
fn cluster_state(node: &RedisServer) -> Option<String> {
    let mut con = quick_con(node).ok()?;
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("cluster_state:"))
        .map(|v| v.trim().to_owned())
}

/// Parses `CLUSTER NODES` of `node`.
fn node_view(node: &RedisServer) -> Result<Vec<NodeLine>, TestingError> {
    let mut con = quick_con(node)?;
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con)?;
    Ok(text.lines().filter_map(parse_node_line).collect())
}

/// `<id> <ip:port@cport[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let mut parts = line.split_whitespace();
    let id = parts.next()?.to_owned();
    let addr = parts.next()?;
    let port = addr
        .split(['@', ','])
        .next()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()?;
    let flags = parts.next()?;
    let master_id = parts.next().filter(|m| *m != "-").map(str::to_owned);
    let slots = parts
        .skip(4)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    let flag = |f: &str| flags.split(',').any(|x| x == f);
    Some(NodeLine {
        id,
        port,
        master: flag("master"),
        failed: flag("fail") || flag("noaddr") || flag("handshake"),
        master_id,
        slots,
    })
}

/// Runs `command` (its output into a temporary file, so that it never blocks on a full
/// pipe), killing it if it has not exited within `timeout`: `redis-cli --cluster create`
/// waits forever for nodes that cannot reach each other (a TLS misconfiguration, say).
/// Returns its exit status and output.
fn run_bounded(
    command: &mut Command,
    binary: &Path,
    timeout: Duration,
) -> Result<(ExitStatus, String), TestingError> {
    let dir = TempDir::new("cli")?;
    let out_path = dir.path().join("output");
    let out = std::fs::File::create(&out_path)
        .map_err(io_err(format!("creating {}", out_path.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err("duplicating the output file handle"))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err(format!("running {}", binary.display())))?;
    let output =
        || String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()).into_owned();
    let mut status = None;
    let what = format!("{} to exit", binary.display());
    let waited = wait_until(timeout, &what, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    match (waited, status) {
        (Ok(()), Some(status)) => Ok((status, output())),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(failed(
                format!("{} did not exit within {timeout:?}", binary.display()),
                tail(&output(), 30),
            ))
        }
    }
}

fn failed(reason: String, log_tail: String) -> TestingError {
    TestingError::StartFailed { reason, log_tail }
}

/// `REDKIT_REDIS_CLI`, else `redis-cli` (or `valkey-cli`) next to the server binary in use,
/// else in `PATH`, `/usr/bin` or `/usr/local/bin`.
fn find_redis_cli() -> Result<PathBuf, TestingError> {
    if let Some(path) = std::env::var_os(REDIS_CLI_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(TestingError::ServerNotFound {
                searched: format!("{REDIS_CLI_ENV}={} (redis-cli)", path.display()),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = find_redis_server()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        dirs.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(["/usr/bin".into(), "/usr/local/bin".into()]);
    dirs.iter()
        .flat_map(|dir| [dir.join("redis-cli"), dir.join("valkey-cli")])
        .find(|path| is_executable(path))
        .ok_or_else(|| TestingError::ServerNotFound {
            searched: format!(
                "redis-cli or valkey-cli: {REDIS_CLI_ENV} (unset), next to the server, PATH, \
                 /usr/bin and /usr/local/bin (Debian: `apt-get install -y redis-tools`)"
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn bounded_runs_return_output_or_kill_on_timeout() {
        let sh = Path::new("/bin/sh");
        let mut quick = Command::new(sh);
        quick.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, text) = run_bounded(&mut quick, sh, Duration::from_secs(10)).expect("run");
        assert_eq!(status.code(), Some(3));
        assert!(text.contains("out") && text.contains("err"), "{text}");

        let mut slow = Command::new(sh);
        slow.args(["-c", "echo waiting; exec sleep 30"]);
        let started = Instant::now();
        let e = run_bounded(&mut slow, sh, Duration::from_millis(300)).expect_err("timeout");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(e.to_string().contains("did not exit"), "{e}");
    }

    #[test]
    fn parses_cluster_nodes_lines() {
        let l = parse_node_line(
            "07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460 5500 [5501->-abc]",
        )
        .expect("line");
        assert_eq!(l.port, 30004);
        assert!(l.master && !l.failed);
        assert_eq!(l.master_id, None);
        assert_eq!(l.slots, vec![(0, 5460), (5500, 5500)]);
        let r = parse_node_line("e7d1 127.0.0.1:30005@40005,host slave,fail 07c3 0 0 1 connected")
            .expect("line");
        assert_eq!(r.port, 30005);
        assert!(!r.master && r.failed);
        assert_eq!(r.master_id.as_deref(), Some("07c3"));
        assert!(r.slots.is_empty());
    }
}
