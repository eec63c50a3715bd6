//! The monitor against a real server, and INFO parsing of a recorded text.

mod support;

use std::time::Duration;

use redis::Commands;
use redkit::monitor::{Info, Monitor};
use support::*;

#[test]
fn info_from_the_live_server() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut admin = admin(&server);
    for i in 0..5 {
        admin.set::<_, _, ()>(format!("k{i}"), i)?;
    }
    admin.set_ex::<_, _, ()>("temp", 1, 100)?;
    let monitor = Monitor::new(&redis);
    let info = monitor.info()?;
    assert!(info.server.redis_version.is_some(), "{info:?}");
    assert_eq!(info.server.tcp_port, Some(server.port()));
    assert!(info.server.uptime.is_some());
    assert!(info.clients.connected_clients.unwrap_or(0) >= 2);
    assert!(info.memory.used_memory.unwrap_or(0) > 0);
    assert!(info.stats.total_commands_processed.unwrap_or(0) >= 6);
    assert_eq!(info.replication.role.as_deref(), Some("master"));
    assert_eq!(info.keyspace.len(), 1);
    assert_eq!(
        (
            info.keyspace[0].db,
            info.keyspace[0].keys,
            info.keyspace[0].expires
        ),
        (0, 6, 1)
    );
    // Untyped fields are there too.
    assert!(info
        .get("Persistence", "rdb_changes_since_last_save")
        .is_some());
    assert_eq!(monitor.keyspace()?, info.keyspace);
    assert_eq!(monitor.dbsize()?, 6);
    let all = monitor.info_section("everything")?;
    assert!(all.sections.contains_key("commandstats"));
    Ok(())
}

/// A recorded INFO reply with the lines parsers trip on.
const RECORDED: &str = "# Server\r\n\
redis_version:7.4.1\r\n\
redis_mode:standalone\r\n\
executable:/usr/local/bin/redis-server\r\n\
config_file:\r\n\
process_id:4242\r\n\
tcp_port:6380\r\n\
uptime_in_seconds:86400\r\n\
\r\n\
# Clients\r\n\
connected_clients:12\r\n\
maxclients:10000\r\n\
\r\n\
# Memory\r\n\
used_memory:1048576\r\n\
maxmemory_policy:allkeys-lru\r\n\
mem_fragmentation_ratio:1.23\r\n\
\r\n\
# Stats\r\n\
total_commands_processed:1000\r\n\
instantaneous_ops_per_sec:12\r\n\
\r\n\
# Replication\r\n\
role:master\r\n\
connected_slaves:2\r\n\
slave0:ip=::1,port=6381,state=online,offset=1234,lag=0\r\n\
slave1:ip=10.0.0.2,port=6382,state=wait_bgsave,offset=0,lag=1\r\n\
slave_read_repl_offset:1234\r\n\
master_repl_offset:1234\r\n\
\r\n\
# Errorstats\r\n\
errorstat_ERR:count=3\r\n\
errorstat_WRONGTYPE:count=1\r\n\
\r\n\
# Vendor Extras\r\n\
some_future_field:yes:with:colons\r\n\
a line without a colon\r\n\
\r\n\
# Keyspace\r\n\
db0:keys=10,expires=2,avg_ttl=5000,subexpiry=0\r\n\
db15:keys=1,expires=0,avg_ttl=0\r\n";

#[test]
fn info_from_a_recorded_text_with_unusual_lines() {
    let info = Info::parse(RECORDED);
    assert_eq!(info.server.redis_version.as_deref(), Some("7.4.1"));
    assert_eq!(info.server.process_id, Some(4242));
    assert_eq!(info.server.tcp_port, Some(6380));
    assert_eq!(info.server.uptime, Some(Duration::from_secs(86400)));
    assert_eq!(
        info.get("server", "executable"),
        Some("/usr/local/bin/redis-server")
    );
    assert_eq!(info.get("server", "config_file"), Some(""));
    assert_eq!(info.clients.connected_clients, Some(12));
    assert_eq!(info.memory.used_memory, Some(1_048_576));
    assert_eq!(info.memory.maxmemory_policy.as_deref(), Some("allkeys-lru"));
    assert_eq!(info.memory.mem_fragmentation_ratio, Some(1.23));
    assert_eq!(info.memory.maxmemory, None, "absent, not zero");
    assert_eq!(info.stats.instantaneous_ops_per_sec, Some(12));
    let r = &info.replication;
    assert_eq!(r.role.as_deref(), Some("master"));
    assert_eq!(r.connected_slaves, Some(2));
    assert_eq!(
        r.replicas.len(),
        2,
        "slave_read_repl_offset is not a replica"
    );
    assert_eq!(r.replicas[0].ip, "::1");
    assert_eq!(r.replicas[0].port, Some(6381));
    assert_eq!(r.replicas[0].offset, Some(1234));
    assert_eq!(r.replicas[1].state.as_deref(), Some("wait_bgsave"));
    assert_eq!(r.master_repl_offset, Some(1234));
    // Unknown sections and fields are kept.
    assert_eq!(info.get("errorstats", "errorstat_ERR"), Some("count=3"));
    assert_eq!(
        info.get("vendor extras", "some_future_field"),
        Some("yes:with:colons")
    );
    assert_eq!(
        info.get("Vendor Extras", "a line without a colon"),
        Some("")
    );
    assert_eq!(info.keyspace.len(), 2);
    assert_eq!(info.keyspace[0].keys, 10);
    assert_eq!(info.keyspace[0].avg_ttl, Duration::from_secs(5));
    assert_eq!((info.keyspace[1].db, info.keyspace[1].keys), (15, 1));
    // LF-only text and garbage parse too.
    let lf = Info::parse(&RECORDED.replace("\r\n", "\n"));
    assert_eq!(lf, info);
    let junk = Info::parse("no sections at all\n:::\n#\n");
    assert_eq!(junk.server.redis_version, None);
    assert!(junk.sections.contains_key(""));
    // Ops per second from two samples.
    let later = Info::parse(&RECORDED.replace(
        "total_commands_processed:1000",
        "total_commands_processed:3000",
    ));
    assert_eq!(
        later.ops_per_sec_since(&info, Duration::from_secs(2)),
        Some(1000.0)
    );
    assert_eq!(info.ops_per_sec_since(&later, Duration::from_secs(2)), None);
}

#[test]
fn slowlog_memory_usage_and_ops_per_second() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let monitor = Monitor::new(&redis);
    let mut admin = admin(&server);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .exec(&mut admin)?;
    admin.set::<_, _, ()>("slow:key", "value")?;
    let entries = monitor.slowlog_get(20)?;
    let set = entries
        .iter()
        .find(|e| e.args.first().map(String::as_str) == Some("SET"))
        .expect("the SET was logged");
    assert_eq!(set.args, ["SET", "slow:key", "value"]);
    assert!(set.client_addr.is_some());
    assert!(monitor.slowlog_len()? >= 2);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(1_000_000)
        .exec(&mut admin)?;
    monitor.slowlog_reset()?;
    assert_eq!(monitor.slowlog_len()?, 0);

    assert!(monitor.memory_usage("slow:key")?.unwrap_or(0) > 0);
    assert_eq!(monitor.memory_usage("missing")?, None);

    // Ops per second, with traffic from another thread meanwhile.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ops = std::thread::scope(|s| {
        s.spawn(|| {
            let mut con = server.admin().expect("admin");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                redis::cmd("PING").exec(&mut con).expect("PING");
            }
        });
        let ops = monitor.ops_per_sec(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ops
    })?;
    assert!(ops > 10.0, "{ops}");
    Ok(())
}

#[test]
fn the_handle_records_command_metrics() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let mut r = redis.clone();
    for i in 0..100 {
        let _: Option<String> = r.get(format!("m{i}"))?;
    }
    r.set::<_, _, ()>("s", "text")?;
    for _ in 0..3 {
        assert!(r.incr::<_, _, i64>("s", 1).is_err(), "WRONGTYPE");
    }
    let mut pipe = redkit::Pipeline::new();
    pipe.cmd("GET").arg("s").cmd("GET").arg("t");
    let _: (Option<String>, Option<String>) = redis.pipeline(&pipe)?;
    let metrics = redis.command_metrics();
    let by = |name: &str| {
        metrics
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} in {metrics:?}"))
    };
    let get = by("GET");
    assert_eq!((get.count, get.errors), (100, 0));
    assert_eq!(get.latency.count, 100);
    assert!(get.latency.p50 > Duration::ZERO && get.latency.p99 >= get.latency.p50);
    assert_eq!((by("INCRBY").count, by("INCRBY").errors), (3, 3));
    assert_eq!(by("PIPELINE").count, 1);
    assert_eq!(
        Monitor::new(&redis).command_metrics(),
        redis.command_metrics()
    );
    Ok(())
}

#[test]
fn the_sampling_thread_sends_snapshots_and_stops_on_drop() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let monitor = Monitor::new(&redis);
    assert!(monitor.sample_every(Duration::ZERO).is_err());
    let sampler = monitor.sample_every(Duration::from_millis(50))?;
    let rx = sampler.snapshots().clone();
    let first = rx.recv_timeout(Duration::from_secs(10))??;
    assert!(first.ops_per_sec.is_none());
    assert!(first.info.server.redis_version.is_some());
    let second = rx.recv_timeout(Duration::from_secs(10))??;
    assert!(
        second.ops_per_sec.is_some_and(|o| o > 0.0),
        "{:?}",
        second.ops_per_sec
    );
    assert!(second.commands.iter().any(|c| c.name == "INFO"));
    assert!(second.client.commands >= 2);
    let started = std::time::Instant::now();
    drop(sampler);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped promptly"
    );
    // The thread is gone: the channel disconnects once drained.
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => continue,
            Err(e) => {
                assert!(e.is_disconnected(), "{e}");
                break;
            }
        }
    }
    let sampler = monitor.sample_every(Duration::from_secs(3600))?;
    sampler
        .snapshots()
        .recv_timeout(Duration::from_secs(10))??;
    sampler.stop()?;
    Ok(())
}
