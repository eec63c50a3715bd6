//! Redis Cluster through a `Redis` handle: routing by slot, redirections, pipelines across
//! nodes, multi-key commands across slots, SCAN over every master, and recovery when a slot
//! moves or a master dies under load.

mod support;

use std::collections::HashSet;

use redis::Commands;
use redkit::scan::ScanIter;
use redkit::{Pipeline, Redis};
use support::{cluster, cluster_builder, TestResult};

#[test]
fn commands_pipelines_and_multi_key_commands_reach_every_master() -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster))?;
    assert_eq!(redis.cluster_masters().len(), 3);

    // Single commands on keys spread over every slot range.
    let mut r = redis.clone();
    for i in 0..300 {
        r.set::<_, _, ()>(format!("k:{i}"), i)?;
    }
    for i in (0..300).step_by(37) {
        assert_eq!(r.get::<_, i64>(format!("k:{i}"))?, i);
    }
    // Every master holds some of them.
    for m in cluster.masters()? {
        let n: i64 = redis::cmd("DBSIZE").query(&mut cluster.node(m).admin()?)?;
        assert!(n > 50, "master {m} holds {n} keys");
    }

    // A pipeline over every node keeps its order.
    let mut pipe = Pipeline::new();
    for i in 0..300 {
        pipe.cmd("INCR").arg(format!("k:{i}"));
    }
    let after: Vec<i64> = redis.pipeline(&pipe)?;
    assert_eq!(after, (1..=300).collect::<Vec<i64>>());

    // Multi-key commands across slots are split and put back in order.
    let keys: Vec<String> = (0..300).map(|i| format!("k:{i}")).collect();
    let values: Vec<i64> = redis.query(redis::cmd("MGET").arg(&keys))?;
    assert_eq!(values, (1..=300).collect::<Vec<i64>>());
    let exists: i64 = redis.query(redis::cmd("EXISTS").arg(&keys).arg("missing"))?;
    assert_eq!(exists, 300);

    // SCAN walks every master.
    let scanned: HashSet<String> = ScanIter::<String>::keys(&redis)
        .pattern("k:*")
        .count(50)
        .collect::<redkit::Result<_>>()?;
    assert_eq!(scanned.len(), 300);

    // Bulk delete across slots.
    let removed = redkit::scan::Bulk::new(&redis)
        .chunk_size(64)
        .delete(keys.iter(), |_| {})?;
    assert_eq!(removed, 300);
    let exists: i64 = redis.query(redis::cmd("EXISTS").arg(&keys))?;
    assert_eq!(exists, 0);

    // A transaction on one hash tag.
    let (n,): (i64,) = redis.transaction(&["{acct}:a"], |con, pipe| {
        let a: i64 = con.get::<_, Option<i64>>("{acct}:a")?.unwrap_or(0);
        pipe.cmd("SET").arg("{acct}:a").arg(a + 5).ignore();
        pipe.cmd("INCRBY").arg("{acct}:b").arg(5);
        Ok(())
    })?;
    assert_eq!(n, 5);
    Ok(())
}
