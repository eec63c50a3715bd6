//! Redis Cluster over TLS: every node TLS-only, with TLS on the cluster bus and replication
//! too (`redkit::testing::ClusterBuilder::tls`). A handle trusting the test CA (and
//! presenting the client certificate where the nodes require one) routes commands and
//! pipelines to every master, follows a moved slot and a failover; a handle trusting another
//! CA fails with a TLS error.

mod support;

use std::time::Duration;

use redis::Commands;
use redkit::config::Addr;
use redkit::testing::{RedisCluster, TlsMaterial};
use redkit::{ErrorClass, Pipeline, Redis};
use support::{cluster_builder, init_logs, TestResult};

/// A TLS cluster (3 masters, 3 replicas) whose nodes require client certificates or not.
fn tls_cluster(material: &TlsMaterial, auth_clients: bool) -> RedisCluster {
    init_logs();
    RedisCluster::builder()
        .tls(material.clone())
        .tls_auth_clients(auth_clients)
        .start()
        .expect("start a TLS cluster")
}

fn port_of(addr: &Addr) -> Option<u16> {
    match addr {
        Addr::Tcp { port, .. } => Some(*port),
        _ => None,
    }
}

/// The ports of the masters the handle routes to, sorted.
fn handle_master_ports(redis: &Redis) -> Vec<u16> {
    let mut ports: Vec<u16> = redis.cluster_masters().iter().filter_map(port_of).collect();
    ports.sort_unstable();
    ports
}

/// The TLS ports of the cluster's masters, in the launcher's view, sorted.
fn cluster_master_ports(cluster: &RedisCluster) -> TestResult<Vec<u16>> {
    let mut ports: Vec<u16> = cluster
        .masters()?
        .into_iter()
        .map(|m| cluster.node(m).port())
        .collect();
    ports.sort_unstable();
    Ok(ports)
}

#[test]
fn mutual_tls_cluster_with_a_custom_ca_routes_to_every_master() -> TestResult {
    support::require!(tls);
    let material = TlsMaterial::generate()?;
    let cluster = tls_cluster(&material, true);
    assert_eq!(
        cluster.tls_material().map(|m| m.ca_cert_pem()),
        Some(material.ca_cert_pem())
    );
    assert!(cluster.urls().iter().all(|u| u.starts_with("rediss://")));

    let redis = Redis::connect(
        cluster_builder(&cluster)
            .tls()
            .tls_ca_pem(material.ca_cert_pem())
            .tls_client_identity_pem(material.client_cert_pem(), material.client_key_pem()),
    )?;
    // The slot map names the nodes' TLS ports (`tls-cluster yes`).
    assert_eq!(handle_master_ports(&redis), cluster_master_ports(&cluster)?);
    assert_eq!(redis.cluster_masters().len(), 3);

    // Keys on every master.
    let mut r = redis.clone();
    for i in 0..300 {
        r.set::<_, _, ()>(format!("k:{i}"), i)?;
    }
    for i in (0..300).step_by(23) {
        assert_eq!(r.get::<_, i64>(format!("k:{i}"))?, i);
    }
    let mut total = 0;
    for m in cluster.masters()? {
        let n: i64 = redis::cmd("DBSIZE").query(&mut cluster.node(m).admin()?)?;
        assert!(n > 50, "master {m} holds {n} keys");
        total += n;
    }
    assert_eq!(total, 300);

    // A pipeline over every node keeps its order.
    let mut pipe = Pipeline::new();
    for i in 0..300 {
        pipe.cmd("INCR").arg(format!("k:{i}"));
    }
    let after: Vec<i64> = redis.pipeline(&pipe)?;
    assert_eq!(after, (1..=300).collect::<Vec<i64>>());
    let keys: Vec<String> = (0..300).map(|i| format!("k:{i}")).collect();
    let values: Vec<i64> = redis.query(redis::cmd("MGET").arg(&keys))?;
    assert_eq!(values, (1..=300).collect::<Vec<i64>>());

    // Move a slot with its keys (MIGRATE between nodes runs over TLS): the handle follows.
    let slot = cluster.key_slot("{moving}")?;
    let owner = cluster.slot_owner(slot)?;
    for i in 0..20 {
        r.set::<_, _, ()>(format!("{{moving}}:{i}"), i)?;
    }
    let target = cluster
        .masters()?
        .into_iter()
        .find(|&m| m != owner)
        .ok_or("no other master")?;
    assert_eq!(cluster.move_slot(slot, target)?, 20);
    assert_eq!(cluster.slot_owner(slot)?, target);
    for i in 0..20 {
        assert_eq!(r.get::<_, i64>(format!("{{moving}}:{i}"))?, i);
    }
    let moved_keys: Vec<String> = (0..20).map(|i| format!("{{moving}}:{i}")).collect();
    let mut pipe = Pipeline::new();
    for k in &moved_keys {
        pipe.cmd("INCR").arg(k);
    }
    let after: Vec<i64> = redis.pipeline(&pipe)?;
    assert_eq!(after, (1..=20).collect::<Vec<i64>>());

    // The same handle from files.
    let from_files = Redis::connect(
        cluster_builder(&cluster)
            .tls_ca_file(material.ca_cert_path())
            .tls_client_identity_files(material.client_cert_path(), material.client_key_path()),
    )?;
    assert_eq!(from_files.query::<i64>(redis::cmd("GET").arg("k:7"))?, 8);

    // Trusting another CA: a TLS error, on every node.
    let err = Redis::connect(
        cluster_builder(&cluster)
            .tls_ca_pem(material.other_ca_cert_pem())
            .tls_client_identity_pem(material.client_cert_pem(), material.client_key_pem()),
    )
    .expect_err("a cluster signed by another CA must be rejected");
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");
    // Trusting only the system roots: the same.
    let err = Redis::connect(cluster_builder(&cluster).tls())
        .expect_err("the test CA is not a system root");
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");
    // Without the client certificate the nodes close the handshake (seen as TLS or as a
    // dropped connection, as with a single server).
    let err = Redis::connect(cluster_builder(&cluster).tls_ca_pem(material.ca_cert_pem()))
        .expect_err("the nodes require a client certificate");
    assert!(
        matches!(err.class(), ErrorClass::Tls | ErrorClass::Connection),
        "{err:?}"
    );
    // Plain TCP against TLS ports fails too, without hanging.
    let err = Redis::connect(cluster_builder(&cluster)).expect_err("the nodes speak TLS only");
    assert!(
        matches!(
            err.class(),
            ErrorClass::Connection | ErrorClass::Timeout | ErrorClass::Conversion
        ),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn tls_cluster_fails_over_over_tls_replication() -> TestResult {
    support::require!(tls);
    let material = TlsMaterial::generate()?;
    let mut cluster = tls_cluster(&material, false);
    // Server authentication only: the CA is enough.
    let redis = Redis::connect(cluster_builder(&cluster).tls_ca_pem(material.ca_cert_pem()))?;
    let mut r = redis.clone();
    // Without verification (tests only) it connects as well; with another CA it does not.
    let insecure = Redis::connect(cluster_builder(&cluster).tls_insecure())?;
    insecure.query::<()>(redis::cmd("SET").arg("{failover}:insecure").arg(1))?;
    let err = Redis::connect(cluster_builder(&cluster).tls_ca_pem(material.other_ca_cert_pem()))
        .expect_err("a cluster signed by another CA must be rejected");
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");
    let slot = cluster.key_slot("{failover}")?;
    let owner = cluster.slot_owner(slot)?;
    for i in 0..50 {
        r.set::<_, _, ()>(format!("{{failover}}:{i}"), i)?;
    }
    drop(insecure);
    // Replication runs over TLS: the replica has every key before its master dies.
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut cluster.node(owner).admin()?)?;
    assert_eq!(synced, 1);

    let promoted = cluster.kill_master_and_wait(owner, Duration::from_secs(30))?;
    assert_eq!(cluster.slot_owner(slot)?, promoted);
    // The handle finds the promoted replica (a TLS port in the new slot map).
    let mut read = None;
    redkit::testing::wait_until(Duration::from_secs(20), "the handle to follow", || {
        read = r.get::<_, i64>("{failover}:49").ok();
        read.is_some()
    })?;
    assert_eq!(read, Some(49));
    assert!(handle_master_ports(&redis).contains(&cluster.node(promoted).port()));

    // The killed master comes back as a replica and takes its slots back.
    cluster.restart_node(owner)?;
    assert_eq!(cluster.replicas_of(promoted)?, vec![owner]);
    cluster.failover(owner)?;
    assert_eq!(cluster.slot_owner(slot)?, owner);
    redkit::testing::wait_until(Duration::from_secs(20), "the handle to follow back", || {
        (0..50).all(|i| {
            r.get::<_, i64>(format!("{{failover}}:{i}"))
                .is_ok_and(|v| v == i)
        })
    })?;
    assert_eq!(cluster_master_ports(&cluster)?.len(), 3);
    Ok(())
}
