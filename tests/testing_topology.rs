//! Tests of the Sentinel and Cluster launchers of `redkit::testing`.

mod support;

use std::path::Path;
use std::time::Duration;

use redkit::testing::{RedisCluster, SentinelSetup};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn role(server: &redkit::testing::RedisServer) -> Result<String> {
    let mut con = server.admin()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("role:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}

#[test]
fn sentinel_setup_fails_over_and_replaces_a_killed_master() -> Result {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut setup = SentinelSetup::builder().password("data-pw").start()?;
    assert_eq!(setup.node_count(), 2);
    assert_eq!(setup.sentinel_count(), 3);
    assert_eq!(setup.master_index()?, 0);
    assert_eq!(role(setup.node(0))?, "master");
    assert_eq!(role(setup.node(1))?, "slave");
    let (host, port) = setup.master_addr()?;
    assert_eq!((host.as_str(), port), ("127.0.0.1", setup.node(0).port()));
    let mut pids: Vec<u32> = (0..2).filter_map(|i| setup.node(i).pid()).collect();
    pids.extend((0..3).filter_map(|i| setup.sentinel(i).pid()));
    assert_eq!(pids.len(), 5);

    // Planned failover: the replica becomes the master, the old master its replica.
    let new = setup.failover()?;
    assert_eq!(new, 1);
    assert_eq!(role(setup.node(1))?, "master");
    redkit::testing::wait_until(Duration::from_secs(15), "the old master to follow", || {
        role(setup.node(0)).is_ok_and(|r| r == "slave")
    })?;
    setup.wait_ready(Duration::from_secs(20))?;

    // Unplanned: kill the master's process; the sentinels promote the other node.
    let killed = setup.kill_master()?;
    assert_eq!(killed, 1);
    let newer = setup.wait_for_new_master(killed, Duration::from_secs(20))?;
    assert_eq!(newer, 0);
    // The killed node comes back as a replica of the new master. (It used to come back as
    // the master now and then: the sentinels' link to the new master reconnected just after
    // `down-after`, so they failed over a second time, to the empty restarted node. The
    // launcher's sentinels now ping every half `down-after`: see `SentinelSetup`.)
    setup.restart_node(killed)?;
    setup.wait_ready(Duration::from_secs(20))?;
    let roles = (role(setup.node(0))?, role(setup.node(1))?);
    assert_eq!(
        roles,
        ("master".to_owned(), "slave".to_owned()),
        "sentinels name node {:?}; logs: {}\n{}",
        setup.master_index(),
        setup.node(1).log_tail(40),
        setup.sentinel(0).log_tail(40)
    );

    drop(setup);
    for pid in pids {
        assert!(!process_exists(pid), "process {pid} survived the drop");
    }
    Ok(())
}

#[test]
fn sentinel_setup_with_a_sentinel_password() -> Result {
    support::require!(6, 2, "sentinel sentinel-pass");
    let setup = SentinelSetup::builder()
        .master_name("orders")
        .sentinel_password("sentinel-pw")
        .start()?;
    assert_eq!(setup.master_name(), "orders");
    // Without the password a sentinel refuses.
    let (host, port) = setup.sentinel_addrs()[0].clone();
    let mut con = redis::Client::open(format!("redis://{host}:{port}"))?.get_connection()?;
    let err = redis::cmd("SENTINEL")
        .arg("MASTERS")
        .exec(&mut con)
        .expect_err("no auth");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    assert_eq!(setup.master_index()?, 0);
    Ok(())
}

#[test]
fn cluster_moves_a_slot_and_replaces_a_killed_master() -> Result {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cluster = RedisCluster::start()?;
    assert_eq!(cluster.node_count(), 6);
    let masters = cluster.masters()?;
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        assert_eq!(cluster.replicas_of(m)?.len(), 1);
    }
    let pids: Vec<u32> = (0..6).filter_map(|i| cluster.node(i).pid()).collect();
    assert_eq!(pids.len(), 6);

    // Write a few keys into one slot (a hash tag), through its owner.
    let slot = cluster.key_slot("{moving}")?;
    let owner = cluster.slot_owner(slot)?;
    let mut con = cluster.node(owner).admin()?;
    for i in 0..250 {
        redis::cmd("SET")
            .arg(format!("{{moving}}:{i}"))
            .arg(i)
            .exec(&mut con)?;
    }

    // Half-way: keys already moved answer ASK on the source.
    let target = masters
        .iter()
        .copied()
        .find(|&m| m != owner)
        .ok_or("master")?;
    let migration = cluster.start_slot_migration(slot, target)?;
    assert_eq!((migration.from(), migration.to()), (owner, target));
    assert_eq!(migration.migrate_keys(10)?, 10);
    let mut asked = 0;
    for i in 0..250 {
        let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(format!("{{moving}}:{i}"))
            .query(&mut con);
        if let Err(e) = r {
            assert_eq!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::Ask),
                "{e}"
            );
            asked += 1;
        }
    }
    assert_eq!(asked, 10);
    migration.finish()?;
    assert_eq!(cluster.slot_owner(slot)?, target);
    let err = redis::cmd("GET")
        .arg("{moving}:1")
        .query::<Option<String>>(&mut con)
        .expect_err("moved");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved)
    );
    let mut target_con = cluster.node(target).admin()?;
    let n: usize = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut target_con)?;
    assert_eq!(n, 250);
    // And back, in one call.
    assert_eq!(cluster.move_slot(slot, owner)?, 250);
    assert_eq!(cluster.slot_owner(slot)?, owner);

    // A killed master is replaced by its replica, which keeps the data it had received
    // (replication is asynchronous: WAIT for it first).
    let replica = cluster.replicas_of(owner)?[0];
    let mut replica_con = cluster.node(replica).admin()?;
    redis::cmd("READONLY").exec(&mut replica_con)?;
    redkit::testing::wait_until(
        Duration::from_secs(10),
        "the replica to have the keys",
        || {
            redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query::<usize>(&mut replica_con)
                .is_ok_and(|n| n == 250)
        },
    )?;
    let promoted = cluster.kill_master_and_wait(owner, Duration::from_secs(30))?;
    assert_eq!(promoted, replica);
    assert_eq!(cluster.slot_owner(slot)?, promoted);
    let mut con = cluster.node(promoted).admin()?;
    let v: Option<u32> = redis::cmd("GET").arg("{moving}:7").query(&mut con)?;
    let n: usize = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut con)?;
    assert_eq!(
        (v, n),
        (Some(7), 250),
        "promoted node {promoted} (replica {replica}, killed {owner}): {}",
        cluster.node(promoted).log_tail(30)
    );

    // A planned failover hands it back to the restarted node.
    cluster.restart_node(owner)?;
    assert_eq!(cluster.replicas_of(promoted)?, vec![owner]);
    cluster.failover(owner)?;
    assert_eq!(cluster.slot_owner(slot)?, owner);

    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "process {pid} survived the drop");
    }
    Ok(())
}
