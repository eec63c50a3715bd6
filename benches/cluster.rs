//! Redis Cluster: a redkit cluster handle against the `redis` crate's own synchronous
//! `ClusterConnection` (one dedicated connection per node, the baseline), on the same
//! 3-master cluster in the same run, reported as ratios (redkit / baseline).
//!
//! 1. `SET` then `GET` of one key per operation, keys spread over every slot, one thread;
//!    alternating blocks of 250 operations, the ratio is the median of per-block ratios.
//! 2. Pipelines of 32 `SET`s over keys on every master: `Redis::pipeline` (split by node,
//!    written to every node before reading) against `redis::cluster::cluster_pipe()`.
//! 3. `MGET` of 32 keys on different slots: redkit splits it per slot and sends the parts
//!    as one pipeline; the baseline runs 32 `GET`s one after another (what code that cannot
//!    send a cross-slot `MGET` does).
//! 4. `GET` from 8 threads on the 3 masters + 3 replicas: a handle reading from replicas
//!    (`cluster_read_from_replicas`) against one reading from the masters only, alternating
//!    blocks of 8 x 250 reads (the ratio is the median of per-block ratios).
//!
//! `cargo bench --bench cluster`. `REDKIT_BENCH_OPS` sets the operations per side (default
//! 10000; pipelines and MGETs use a tenth of it). Results go to stdout and to the `cluster`
//! section of `target/redkit-bench.json` (see `benches/common`).

mod common;

use std::time::Duration;

use common::{compare_blocks, env_usize, Op, Report, Target};
use redkit::testing::RedisCluster;
use redkit::{Config, Pipeline, Redis};

const BLOCK: usize = 250;
/// Our own goal: a cluster handle is not slower than the `redis` crate's cluster connection.
const TARGET_RATIO: f64 = 0.95;

fn main() {
    let ops = env_usize("REDKIT_BENCH_OPS", 10_000);
    let cluster = RedisCluster::start().expect("start a cluster");
    let redis = Redis::connect(
        Config::builder()
            .cluster(cluster.addrs())
            .timeouts(redkit::Timeouts::default().response(Duration::from_secs(5))),
    )
    .expect("connect");
    let urls = cluster.urls();
    let client = redis::cluster::ClusterClient::new(urls).expect("cluster client");
    let raw = std::rc::Rc::new(std::cell::RefCell::new(
        client.get_connection().expect("cluster connection"),
    ));

    let mut report = Report::new(
        "cluster",
        "cluster handle vs the redis crate's ClusterConnection",
    );
    report.param("ops", ops as u64);
    report.param("masters", 3);

    // 1. SET + GET.
    let r = redis.clone();
    let mut ours: Op = Box::new(move |i| {
        let key = format!("k:{}", i % 1000);
        r.query::<()>(redis::cmd("SET").arg(&key).arg(i))
            .expect("SET");
        let v: Option<i64> = r.query(redis::cmd("GET").arg(&key)).expect("GET");
        assert!(v.is_some());
    });
    let con = raw.clone();
    let mut theirs: Op = Box::new(move |i| {
        let key = format!("k:{}", i % 1000);
        let mut con = con.borrow_mut();
        redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query::<()>(&mut *con)
            .expect("SET");
        let v: Option<i64> = redis::cmd("GET").arg(&key).query(&mut *con).expect("GET");
        assert!(v.is_some());
    });
    let blocks = (ops / BLOCK).max(2);
    let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, BLOCK);
    report.throughput(
        "SET+GET, 1 thread, keys on every master",
        "/s",
        o,
        t,
        ratio,
        Target::RatioAtLeast(TARGET_RATIO),
    );

    // 2. Pipelines of 32 SETs over every master.
    let r = redis.clone();
    let mut ours: Op = Box::new(move |i| {
        let mut pipe = Pipeline::new();
        for j in 0..32 {
            pipe.cmd("SET")
                .arg(format!("p:{}", (i * 32 + j) % 4096))
                .arg(j)
                .ignore();
        }
        r.pipeline::<()>(&pipe).expect("pipeline");
    });
    let con = raw.clone();
    let mut theirs: Op = Box::new(move |i| {
        let mut pipe = redis::cluster::cluster_pipe();
        for j in 0..32 {
            pipe.cmd("SET")
                .arg(format!("p:{}", (i * 32 + j) % 4096))
                .arg(j)
                .ignore();
        }
        pipe.query::<()>(&mut con.borrow_mut()).expect("pipeline");
    });
    let block = BLOCK / 10;
    let blocks = (ops / 10 / block).max(2);
    let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, block);
    report.throughput(
        "pipeline of 32 SETs over every master",
        " pipelines/s",
        o,
        t,
        ratio,
        Target::RatioAtLeast(TARGET_RATIO),
    );

    // 3. A cross-slot MGET of 32 keys against 32 GETs in a row.
    let keys: Vec<String> = (0..32).map(|j| format!("p:{j}")).collect();
    let r = redis.clone();
    let ours_keys = keys.clone();
    let mut ours: Op = Box::new(move |_| {
        let v: Vec<Option<i64>> = r.query(redis::cmd("MGET").arg(&ours_keys)).expect("MGET");
        assert_eq!(v.len(), 32);
    });
    let con = raw.clone();
    let mut theirs: Op = Box::new(move |_| {
        let mut con = con.borrow_mut();
        for k in &keys {
            let _: Option<i64> = redis::cmd("GET").arg(k).query(&mut *con).expect("GET");
        }
    });
    let (o, t, ratio) = compare_blocks(&mut ours, &mut theirs, blocks, block);
    report.throughput(
        "MGET of 32 keys on 32 slots vs 32 GETs",
        " batches/s",
        o,
        t,
        ratio,
        Target::None,
    );

    // 4. Reads at 8 threads, with and without replica reads.
    let replicas = Redis::connect(
        Config::builder()
            .cluster(cluster.addrs())
            .timeouts(redkit::Timeouts::default().response(Duration::from_secs(5)))
            .cluster_read_from_replicas(true),
    )
    .expect("connect");
    let masters_only = redis.clone();
    let mut pipe = Pipeline::new();
    for j in 0..1000 {
        pipe.cmd("SET").arg(format!("r:{j}")).arg(j).ignore();
    }
    masters_only.pipeline::<()>(&pipe).expect("SET");
    wait_for_replica_reads(&cluster, &replicas);
    let threads = 8;
    let per_thread = BLOCK;
    let blocks = (ops / (threads * per_thread)).max(4);
    let mut ratios = Vec::with_capacity(blocks);
    let (mut t_replicas, mut t_masters) = (0.0, 0.0);
    for b in 0..blocks {
        let (r, m) = if b % 2 == 0 {
            let r = read_block(&replicas, threads, per_thread);
            (r, read_block(&masters_only, threads, per_thread))
        } else {
            let m = read_block(&masters_only, threads, per_thread);
            (read_block(&replicas, threads, per_thread), m)
        };
        t_replicas += r;
        t_masters += m;
        ratios.push(m / r);
    }
    let n = (blocks * threads * per_thread) as f64;
    report.throughput(
        "GET, 8 threads: replica reads vs masters only",
        "/s",
        n / t_replicas,
        n / t_masters,
        common::median(ratios),
        Target::None,
    );
    report.finish();
}

/// Reads until the replicas serve them (the heartbeat finds them fit after two beats).
fn wait_for_replica_reads(cluster: &RedisCluster, redis: &Redis) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let replicas: Vec<usize> = cluster
        .masters()
        .expect("masters")
        .into_iter()
        .flat_map(|m| cluster.replicas_of(m).expect("replicas"))
        .collect();
    loop {
        for j in 0..100 {
            let _: Option<i64> = redis
                .query(redis::cmd("GET").arg(format!("r:{j}")))
                .expect("GET");
        }
        let served = replicas.iter().all(|&r| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut cluster.node(r).admin().expect("admin"))
                .expect("INFO");
            info.contains("cmdstat_get:")
        });
        if served {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas never served reads"
        );
    }
}

/// `threads` threads doing `per_thread` GETs each; the seconds the block took.
fn read_block(redis: &Redis, threads: usize, per_thread: usize) -> f64 {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per_thread {
                    let _: Option<i64> = redis
                        .query(redis::cmd("GET").arg(format!("r:{}", (t * 131 + i) % 1000)))
                        .expect("GET");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}
