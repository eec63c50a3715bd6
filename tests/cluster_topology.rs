//! Redis Cluster, round 2: reads served by replicas (and by the master when a replica
//! dies), multi-key commands split inside pipelines, keyless commands on every master, and
//! the heartbeat's check of every node noticing a black-holed one.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redkit::testing::{wait_until, RedisCluster};
use redkit::{Event, HeartbeatConfig, Pipeline, Redis};
use support::{cluster, cluster_builder, TestResult};

/// `INFO commandstats` calls of `command` on node `i` since the last `CONFIG RESETSTAT`.
fn calls(cluster: &RedisCluster, i: usize, command: &str) -> TestResult<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut cluster.node(i).admin()?)?;
    let prefix = format!("cmdstat_{command}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

fn reset_stats(cluster: &RedisCluster, nodes: &[usize]) -> TestResult {
    for &i in nodes {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .exec(&mut cluster.node(i).admin()?)?;
    }
    Ok(())
}

/// A fast heartbeat: the nodes are checked every 200 ms, each answer within 300 ms.
fn heartbeat() -> HeartbeatConfig {
    HeartbeatConfig::default()
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
}

#[test]
fn reads_go_to_replicas_and_to_the_master_when_a_replica_dies() -> TestResult {
    let mut cluster = cluster();
    let redis = Redis::connect(
        cluster_builder(&cluster)
            .heartbeat(heartbeat())
            .cluster_read_from_replicas(true),
    )?;
    let events = redis.events_with_capacity(1024);
    let keys: Vec<String> = (0..300).map(|i| format!("r:{i}")).collect();
    let mut pipe = Pipeline::new();
    for (i, k) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(k).arg(i).ignore();
    }
    redis.pipeline::<()>(&pipe)?;
    let masters = cluster.masters()?;
    let replicas: Vec<usize> = masters
        .iter()
        .map(|&m| cluster.replicas_of(m))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    assert_eq!(replicas.len(), 3);
    let all: Vec<usize> = masters.iter().chain(&replicas).copied().collect();

    // Replicas take reads once the heartbeat found them caught up (two beats).
    wait_until(
        Duration::from_secs(10),
        "every replica to serve reads",
        || {
            let _ = reset_stats(&cluster, &replicas);
            for k in &keys[..60] {
                let _ = redis.query::<Option<i64>>(redis::cmd("GET").arg(k));
            }
            replicas
                .iter()
                .all(|&r| calls(&cluster, r, "get").is_ok_and(|n| n > 0))
        },
    )?;

    reset_stats(&cluster, &all)?;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(redis.query::<i64>(redis::cmd("GET").arg(k))?, i as i64);
    }
    let values: Vec<i64> = redis.query(redis::cmd("MGET").arg(&keys))?;
    assert_eq!(values, (0..300).collect::<Vec<i64>>());
    // A write still goes to the master, and is read back.
    redis.query::<()>(redis::cmd("SET").arg("r:new").arg("x"))?;
    let on_replicas: u64 = replicas
        .iter()
        .map(|&r| calls(&cluster, r, "get"))
        .sum::<TestResult<u64>>()?;
    let mget_on_replicas: u64 = replicas
        .iter()
        .map(|&r| calls(&cluster, r, "mget"))
        .sum::<TestResult<u64>>()?;
    let on_masters: u64 = masters
        .iter()
        .map(|&m| Ok(calls(&cluster, m, "get")? + calls(&cluster, m, "mget")?))
        .sum::<TestResult<u64>>()?;
    eprintln!("GET on replicas {on_replicas}, MGET parts on replicas {mget_on_replicas}, reads on masters {on_masters}");
    assert_eq!(on_replicas, 300, "every GET served by a replica");
    assert!(mget_on_replicas >= 3, "the MGET parts went to replicas");
    assert_eq!(on_masters, 0, "no read on a master");
    let set_on_masters: u64 = masters
        .iter()
        .map(|&m| calls(&cluster, m, "set"))
        .sum::<TestResult<u64>>()?;
    assert_eq!(set_on_masters, 1);

    // A replica dies: its master serves its slots' reads, none fails.
    let victim = replicas[0];
    let its_master = masters[0];
    cluster.kill_node(victim)?;
    let killed_at = Instant::now();
    reset_stats(&cluster, &[its_master])?;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(redis.query::<i64>(redis::cmd("GET").arg(k))?, i as i64);
    }
    assert!(
        calls(&cluster, its_master, "get")? > 0,
        "the master served its dead replica's reads"
    );
    let down = events.iter().find_map(|e| match e {
        Event::ClusterNodeDown { node, .. } => Some(node),
        _ => None,
    });
    let noticed = killed_at.elapsed();
    assert_eq!(
        down.map(|a| a.to_string()),
        Some(format!("127.0.0.1:{}", cluster.node(victim).port()))
    );
    eprintln!("the killed replica's ClusterNodeDown was there {noticed:?} after the kill (read after the 300 reads)");
    Ok(())
}

/// Stops a process (SIGSTOP): a black hole (connections accepted by the kernel, nothing
/// answered); continued when dropped.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> TestResult<Frozen> {
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()?;
        assert!(status.success(), "kill -STOP");
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn pipelines_split_multi_key_commands_keyless_commands_reach_every_master_and_a_black_hole_is_noticed(
) -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).heartbeat(heartbeat()))?;
    let events = redis.events_with_capacity(1024);
    let keys: Vec<String> = (0..40).map(|i| format!("p:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for (i, k) in keys.iter().enumerate() {
        mset.arg(k).arg(i);
    }
    let mut pipe = Pipeline::new();
    pipe.add_command(mset)
        .cmd("MGET")
        .arg(&keys)
        .cmd("DEL")
        .arg(&keys[..10])
        .cmd("EXISTS")
        .arg(&keys)
        .cmd("MGET")
        .arg(&keys[5..15])
        .cmd("DBSIZE");
    let (ok, all, deleted, exists, some, size): (
        String,
        Vec<i64>,
        i64,
        i64,
        Vec<Option<i64>>,
        i64,
    ) = redis.pipeline(&pipe)?;
    assert_eq!(ok, "OK");
    assert_eq!(all, (0..40).collect::<Vec<i64>>());
    assert_eq!(deleted, 10);
    assert_eq!(exists, 30);
    let expect: Vec<Option<i64>> = (5..15).map(|i| (i >= 10).then_some(i)).collect();
    assert_eq!(some, expect);
    assert_eq!(size, 30);

    // DBSIZE is the sum over the masters; KEYS the union; INFO one part per master.
    let mut sum = 0;
    for m in cluster.masters()? {
        let n: i64 = redis::cmd("DBSIZE").query(&mut cluster.node(m).admin()?)?;
        assert!(n > 0, "master {m} holds some of the keys");
        sum += n;
    }
    assert_eq!(redis.query::<i64>(&redis::cmd("DBSIZE"))?, sum);
    let listed: HashSet<String> = redis.query(redis::cmd("KEYS").arg("p:*"))?;
    assert_eq!(listed, keys[10..].iter().cloned().collect::<HashSet<_>>());
    let info: String = redis.query(redis::cmd("INFO").arg("keyspace"))?;
    assert_eq!(info.matches("# Node ").count(), 3, "{info}");
    redis.query::<()>(&redis::cmd("FLUSHALL"))?;
    assert_eq!(redis.query::<i64>(&redis::cmd("DBSIZE"))?, 0);

    // A master stops answering: reported down within one interval plus the timeout (and
    // the time the machine takes to run the check), then up again.
    let victim = cluster.masters()?[1];
    let addr = format!("127.0.0.1:{}", cluster.node(victim).port());
    let pid = cluster.node(victim).pid().ok_or("victim pid")?;
    let frozen = Frozen::freeze(pid)?;
    let frozen_at = Instant::now();
    let deadline = frozen_at + Duration::from_secs(5);
    let mut down_after = None;
    while let Ok(e) = events.recv_deadline(deadline) {
        if let Event::ClusterNodeDown { node, .. } = &e {
            if node.to_string() == addr {
                down_after = Some(frozen_at.elapsed());
                break;
            }
        }
    }
    drop(frozen);
    let down_after = down_after.ok_or("no ClusterNodeDown for the frozen master")?;
    eprintln!(
        "black-holed master reported down after {down_after:?} (interval 200 ms + timeout 300 ms)"
    );
    assert!(
        down_after < Duration::from_secs(2),
        "noticed after {down_after:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut up = false;
    while let Ok(e) = events.recv_deadline(deadline) {
        if matches!(&e, Event::ClusterNodeUp { node, .. } if node.to_string() == addr) {
            up = true;
            break;
        }
    }
    assert!(up, "no ClusterNodeUp after the master answered again");
    Ok(())
}

/// A writer's acknowledged `INCR`s and what went wrong.
type Tally = (i64, Vec<String>);

#[test]
fn a_multiplexed_handle_follows_a_moved_slot_under_load_with_every_reply_its_own() -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(
        cluster_builder(&cluster)
            .heartbeat(heartbeat())
            .multiplexed(1),
    )?;
    let slot = cluster.key_slot("{mx}")?;
    let from = cluster.slot_owner(slot)?;
    let to = cluster
        .masters()?
        .into_iter()
        .find(|&m| m != from)
        .ok_or("another master")?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    let threads = 16;
    let (tallies, moved) = std::thread::scope(|s| -> TestResult<(Vec<Tally>, usize)> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (redis, stop, rounds) = (&redis, &stop, &rounds);
                s.spawn(move || {
                    let counter = format!("{{mx}}:counter:{t}");
                    let mut acked = 0i64;
                    let mut problems = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        // Only this thread increments its counter: the reply is the count.
                        match redis.query::<i64>(redis::cmd("INCR").arg(&counter)) {
                            Ok(n) if n == acked + 1 => acked = n,
                            Ok(n) => problems.push(format!("INCR got {n}, expected {}", acked + 1)),
                            Err(e) => problems.push(format!("INCR: {e}")),
                        }
                        // A value of its own, on the moving slot and on another one, read
                        // back in one pipeline with a cross-slot MGET.
                        let mine = format!("{{mx}}:v:{t}");
                        let other = format!("o:{t}:{}", i % 8);
                        let value = format!("{t}-{i}");
                        let mut pipe = Pipeline::new();
                        pipe.cmd("SET").arg(&mine).arg(&value).ignore();
                        pipe.cmd("SET").arg(&other).arg(&value).ignore();
                        pipe.cmd("MGET").arg(&mine).arg(&other);
                        match redis.pipeline::<(Vec<String>,)>(&pipe) {
                            Ok((got,)) if got == [value.clone(), value.clone()] => {}
                            Ok(got) => problems.push(format!("MGET got {got:?}, expected {value}")),
                            Err(e) => problems.push(format!("pipeline: {e}")),
                        }
                        rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    (acked, problems)
                })
            })
            .collect();
        let wait_rounds = |n: u64| {
            let target = rounds.load(std::sync::atomic::Ordering::Relaxed) + n;
            wait_until(Duration::from_secs(20), "the load to progress", || {
                rounds.load(std::sync::atomic::Ordering::Relaxed) >= target
            })
        };
        let moved = (|| -> TestResult<usize> {
            wait_rounds(500)?;
            let n = cluster.move_slot(slot, to)?;
            wait_rounds(500)?;
            Ok(n)
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let tallies = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        Ok((tallies, moved?))
    })?;
    assert!(moved >= threads, "{moved} keys moved");
    assert_eq!(cluster.slot_owner(slot)?, to);
    for (t, (acked, problems)) in tallies.iter().enumerate() {
        assert!(
            problems.is_empty(),
            "thread {t}: {:?}",
            &problems[..problems.len().min(5)]
        );
        // On the new owner, exactly the acknowledged increments: none lost, none twice.
        let n: i64 = redis::cmd("GET")
            .arg(format!("{{mx}}:counter:{t}"))
            .query(&mut cluster.node(to).admin()?)?;
        assert_eq!(n, *acked, "thread {t}");
    }
    let total: i64 = tallies.iter().map(|(a, _)| a).sum();
    eprintln!("multiplexed cluster handle, {threads} threads, slot moved under load: {total} INCRs, every reply its own");
    Ok(())
}

/// How many keys matching `pattern` each master holds (`SCAN` on the node itself).
fn keys_per_master(cluster: &RedisCluster, pattern: &str) -> TestResult<Vec<usize>> {
    let mut out = Vec::new();
    for m in cluster.masters()? {
        let mut con = cluster.node(m).admin()?;
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut con)?
            .collect::<Result<_, _>>()?;
        out.push(keys.len());
    }
    Ok(out)
}

#[test]
fn a_cache_sessions_and_limiter_subjects_spread_over_every_master() -> TestResult {
    use redkit::cache::Cache;
    use redkit::ratelimit::{Gcra, GcraLimit, RateLimiter};
    use redkit::session::SessionStore;

    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster))?;
    let cache = Cache::new(&redis, "spread")?;
    let n = 10_000;
    for chunk in (0..n).collect::<Vec<usize>>().chunks(1000) {
        let items: Vec<(String, i64)> = chunk
            .iter()
            .map(|&i| (format!("item:{i}"), i as i64))
            .collect();
        cache.mset(&items, None)?;
    }
    // 2,000 of them tagged: `a` (even) or `b` (odd), and all of them `all2k`.
    for i in 0..2000usize {
        let tag = if i % 2 == 0 { "a" } else { "b" };
        cache.set_tagged(&format!("item:{i}"), &(i as i64), None, &[tag, "all2k"])?;
    }
    let spread = keys_per_master(&cluster, "redkit:cache:spread:v:*")?;
    eprintln!("cache keys per master: {spread:?}");
    assert_eq!(spread.iter().sum::<usize>(), n);
    assert!(spread.iter().all(|&k| k > n / 5), "{spread:?}");
    let some: Vec<String> = (0..n).step_by(7).map(|i| format!("item:{i}")).collect();
    let got: Vec<Option<i64>> = cache.mget(&some)?;
    assert_eq!(
        got,
        (0..n)
            .step_by(7)
            .map(|i| Some(i as i64))
            .collect::<Vec<_>>()
    );

    // Tag `a`: exactly the even ones below 2,000, and the tag set is gone.
    assert_eq!(cache.invalidate_tag("a")?, 1000);
    let exists = |i: usize| -> TestResult<bool> {
        Ok(redis.query::<i64>(redis::cmd("EXISTS").arg(cache.key(&format!("item:{i}"))))? == 1)
    };
    for i in [0, 2, 1998, 1, 3, 1999, 2000, 9999] {
        assert_eq!(exists(i)?, i >= 2000 || i % 2 == 1, "item:{i}");
    }
    let still: i64 = redis.query(
        redis::cmd("EXISTS").arg(
            (0..2000)
                .map(|i| cache.key(&format!("item:{i}")))
                .collect::<Vec<_>>(),
        ),
    )?;
    assert_eq!(still, 1000);
    assert_eq!(
        redis.query::<i64>(redis::cmd("EXISTS").arg(cache.tag_key("a")))?,
        0
    );
    // `all2k` still lists the removed ones: removing it counts only what existed.
    assert_eq!(cache.invalidate_tag("all2k")?, 1000);
    assert_eq!(cache.invalidate_tag("b")?, 0);

    // Pattern: `item:1*` among what is left (1,000 to 1,999 went with the tags).
    let removed = cache.invalidate_pattern("item:1*")?;
    let expected: Vec<usize> = (2000..n)
        .filter(|i| i.to_string().starts_with('1'))
        .collect();
    assert_eq!(removed, expected.len() as u64);
    for i in [10_usize, 2000, 2999, 9999, 5123] {
        assert_eq!(
            exists(i)?,
            i >= 2000 && !i.to_string().starts_with('1'),
            "item:{i}"
        );
    }
    let left = keys_per_master(&cluster, "redkit:cache:spread:v:*")?
        .iter()
        .sum::<usize>();
    assert_eq!(left, n - 2000 - expected.len());

    // Sessions of 300 users, and limiter subjects: on every master, every operation working.
    let sessions = SessionStore::new(&redis, "spread")?;
    let mut ids = Vec::new();
    for u in 0..300 {
        ids.push(sessions.create(&format!("user:{u}"), &[("n", &u.to_string())])?);
    }
    let per_master = keys_per_master(&cluster, "redkit:session:spread:s:*")?;
    eprintln!("sessions per master: {per_master:?}");
    assert!(per_master.iter().all(|&k| k > 30), "{per_master:?}");
    for s in ids.iter().step_by(17) {
        let got = sessions.get(&s.id)?.ok_or("session")?;
        assert_eq!(got.user, s.user);
        assert!(sessions.update(&s.id, &[("cart", "1")])?);
        assert_eq!(sessions.sessions_of(&s.user)?, vec![s.id.clone()]);
    }
    assert_eq!(sessions.destroy_user("user:0")?, 1);
    assert!(sessions.get(&ids[0].id)?.is_none());
    assert!(sessions.destroy(&ids[1].id)?);
    let limiter = Gcra::new(&redis, "spread", GcraLimit::per_second(10))?;
    for u in 0..300 {
        assert!(limiter.allow(&format!("user:{u}"))?.is_allowed());
    }
    let per_master = keys_per_master(&cluster, "redkit:rl:spread:*")?;
    eprintln!("limiter subjects per master: {per_master:?}");
    assert!(per_master.iter().all(|&k| k > 30), "{per_master:?}");
    Ok(())
}

#[test]
fn a_planned_cluster_failover_under_load_loses_and_repeats_nothing() -> TestResult {
    let cluster = cluster();
    let redis = Redis::connect(cluster_builder(&cluster).heartbeat(heartbeat()))?;
    let slot = cluster.key_slot("{pf}")?;
    let master = cluster.slot_owner(slot)?;
    let replica = *cluster.replicas_of(master)?.first().ok_or("a replica")?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    let last_ok = std::sync::Mutex::new(Instant::now());
    let pause = std::sync::Mutex::new(Duration::ZERO);
    let threads = 6;
    let tallies = std::thread::scope(|s| -> TestResult<Vec<(i64, Vec<redkit::Error>)>> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (redis, stop, rounds, last_ok, pause) =
                    (&redis, &stop, &rounds, &last_ok, &pause);
                s.spawn(move || {
                    let counter = format!("{{pf}}:counter:{t}");
                    let (mut acked, mut errors) = (0i64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match redis.query::<i64>(redis::cmd("INCR").arg(&counter)) {
                            Ok(_) => {
                                acked += 1;
                                let now = Instant::now();
                                let mut last = last_ok.lock().unwrap();
                                let mut p = pause.lock().unwrap();
                                *p = (*p).max(now - *last);
                                *last = now;
                            }
                            Err(e) => errors.push(e),
                        }
                        rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    (acked, errors)
                })
            })
            .collect();
        let wait_rounds = |n: u64| {
            let target = rounds.load(std::sync::atomic::Ordering::Relaxed) + n;
            wait_until(Duration::from_secs(20), "the load to progress", || {
                rounds.load(std::sync::atomic::Ordering::Relaxed) >= target
            })
        };
        let run = (|| -> TestResult {
            wait_rounds(300)?;
            *pause.lock().unwrap() = Duration::ZERO;
            cluster.failover(replica)?;
            wait_rounds(300)?;
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let tallies = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        run?;
        Ok(tallies)
    })?;
    assert_eq!(cluster.slot_owner(slot)?, replica);
    let failed: Vec<&redkit::Error> = tallies.iter().flat_map(|(_, e)| e).collect();
    eprintln!(
        "CLUSTER FAILOVER under load: {} acknowledged INCRs, {} failed calls {:?}, longest pause {:?}",
        tallies.iter().map(|(a, _)| a).sum::<i64>(),
        failed.len(),
        failed.iter().map(|e| e.class()).collect::<HashSet<_>>(),
        pause.lock().unwrap()
    );
    for (t, (acked, errors)) in tallies.iter().enumerate() {
        for e in errors {
            assert!(e.is_retryable(), "thread {t}: {e}");
        }
        // Every acknowledged INCR is on the promoted replica, and nothing more.
        let n: i64 = redis::cmd("GET")
            .arg(format!("{{pf}}:counter:{t}"))
            .query(&mut cluster.node(replica).admin()?)?;
        assert_eq!(n, *acked, "thread {t}");
    }
    Ok(())
}
