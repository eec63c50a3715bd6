//! The commands, each through redkit's public API.

use std::collections::BTreeMap;
use std::time::Duration;

use redkit::cache::{Cache, EntryKind};
use redkit::monitor::Monitor;
use redkit::queue::StreamQueue;
use redkit::ratelimit::{
    BucketLimit, FixedWindow, Gcra, GcraLimit, RateLimiter, SlidingLog, SlidingWindow, TokenBucket,
    WindowLimit,
};
use redkit::scan::ScanIter;
use redkit::session::SessionStore;
use redkit::{Pipeline, Redis};
use serde_json::{json, Value};

use crate::out::{self, Out, Table};
use crate::{
    CacheArgs, CacheCmd, Command, DeadSelect, Failure, LimitArgs, LimitCmd, LimitKind, LockCmd,
    QueueArgs, QueueCmd, SessionArgs, SessionCmd,
};

type Done = Result<(), Failure>;

pub fn run(redis: &Redis, out: &Out, command: Command) -> Done {
    match command {
        Command::Info => info(redis, out),
        Command::Slowlog { count } => slowlog(redis, out, count),
        Command::Queue(q) => queue(redis, out, q),
        Command::Lock(LockCmd::Show { name, prefix }) => lock_show(redis, out, &name, &prefix),
        Command::Limit(l) => limit(redis, out, l),
        Command::Cache(c) => cache(redis, out, c),
        Command::Sessions(s) => sessions(redis, out, s),
        Command::Keys {
            pattern,
            kind,
            limit,
            no_memory,
        } => keys(redis, out, &pattern, kind.as_deref(), limit, !no_memory),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

fn info(redis: &Redis, out: &Out) -> Done {
    let info = Monitor::new(redis).info()?;
    let s = &info.server;
    let m = &info.memory;
    let st = &info.stats;
    let hits = st.keyspace_hits.unwrap_or(0);
    let misses = st.keyspace_misses.unwrap_or(0);
    let hit_ratio = if hits + misses > 0 {
        Some(hits as f64 / (hits + misses) as f64)
    } else {
        None
    };
    let keys: u64 = info.keyspace.iter().map(|k| k.keys).sum();
    let rows = vec![
        ("server", opt(&s.version)),
        ("mode", opt(&s.redis_mode)),
        ("uptime", out::opt_duration(s.uptime)),
        ("clients", opt(&info.clients.connected_clients)),
        ("blocked clients", opt(&info.clients.blocked_clients)),
        ("memory used", m.used_memory.map_or("-".into(), out::bytes)),
        (
            "memory peak",
            m.used_memory_peak.map_or("-".into(), out::bytes),
        ),
        (
            "maxmemory",
            m.maxmemory.map_or("-".into(), |n| {
                if n == 0 {
                    "none".into()
                } else {
                    out::bytes(n)
                }
            }),
        ),
        ("eviction policy", opt(&m.maxmemory_policy)),
        ("fragmentation", opt(&m.mem_fragmentation_ratio)),
        ("ops/s", opt(&st.instantaneous_ops_per_sec)),
        ("commands", opt(&st.total_commands_processed)),
        (
            "hit ratio",
            hit_ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        ),
        ("evicted keys", opt(&st.evicted_keys)),
        ("expired keys", opt(&st.expired_keys)),
        ("role", opt(&info.replication.role)),
        ("replicas", opt(&info.replication.connected_slaves)),
        ("keys", keys.to_string()),
    ];
    let json = json!({
        "server": s.version.as_ref().map(|v| v.to_string()),
        "redis_version": s.redis_version,
        "mode": s.redis_mode,
        "uptime_ms": out::ms(s.uptime),
        "clients": info.clients.connected_clients,
        "blocked_clients": info.clients.blocked_clients,
        "used_memory": m.used_memory,
        "used_memory_peak": m.used_memory_peak,
        "maxmemory": m.maxmemory,
        "maxmemory_policy": m.maxmemory_policy,
        "fragmentation": m.mem_fragmentation_ratio,
        "ops_per_sec": st.instantaneous_ops_per_sec,
        "commands": st.total_commands_processed,
        "keyspace_hits": st.keyspace_hits,
        "keyspace_misses": st.keyspace_misses,
        "evicted_keys": st.evicted_keys,
        "expired_keys": st.expired_keys,
        "role": info.replication.role,
        "replicas": info.replication.connected_slaves,
        "keyspace": info.keyspace.iter().map(|k| json!({
            "db": k.db, "keys": k.keys, "expires": k.expires,
            "avg_ttl_ms": out::ms(Some(k.avg_ttl)),
        })).collect::<Vec<_>>(),
    });
    out.fields(rows, json);
    Ok(())
}

fn slowlog(redis: &Redis, out: &Out, count: usize) -> Done {
    let entries = Monitor::new(redis).slowlog_get(count)?;
    let mut t = Table::new(vec!["id", "when", "took", "client", "command"]);
    let mut j = Vec::new();
    for e in &entries {
        let command = e.args.join(" ");
        t.row(vec![
            e.id.to_string(),
            out::ago(e.at),
            out::duration(e.duration),
            opt(&e.client_addr),
            out::preview(command.as_bytes(), 80),
        ]);
        j.push(json!({
            "id": e.id,
            "at_ms": out::epoch_ms(e.at),
            "duration_us": u64::try_from(e.duration.as_micros()).unwrap_or(u64::MAX),
            "client_addr": e.client_addr,
            "client_name": e.client_name,
            "args": e.args,
        }));
    }
    out.table(t, Value::from(j));
    Ok(())
}

fn open_queue(redis: &Redis, q: &QueueArgs) -> Result<StreamQueue, Failure> {
    Ok(redkit::StreamQueue::builder(redis, &q.queue)
        .group(&q.group)
        .open()?)
}

fn queue(redis: &Redis, out: &Out, cmd: QueueCmd) -> Done {
    match cmd {
        QueueCmd::Stats(q) => {
            let queue = open_queue(redis, &q)?;
            let s = queue.stats()?;
            let consumers = queue.consumers()?;
            let mut rows = vec![
                ("queue", queue.name().to_owned()),
                ("group", queue.group().to_owned()),
                ("priorities", queue.priorities().to_string()),
                ("length", s.length.to_string()),
                ("pending", s.pending.to_string()),
                ("lag", opt(&s.lag)),
                ("delayed", s.delayed.to_string()),
                ("dead letters", s.dead_letters.to_string()),
                ("consumers", s.consumers.to_string()),
            ];
            if s.lengths.len() > 1 {
                let per: Vec<String> = s.lengths.iter().map(u64::to_string).collect();
                rows.push(("length by priority", per.join(" / ")));
            }
            let json = json!({
                "queue": queue.name(),
                "group": queue.group(),
                "priorities": queue.priorities(),
                "length": s.length,
                "lengths": s.lengths,
                "pending": s.pending,
                "lag": s.lag,
                "delayed": s.delayed,
                "dead_letters": s.dead_letters,
                "consumers": consumers.iter().map(|c| json!({
                    "name": c.name, "pending": c.pending, "idle_ms": out::ms(Some(c.idle)),
                })).collect::<Vec<_>>(),
            });
            out.fields(rows, json);
            Ok(())
        }
        QueueCmd::Dead { q, count, from } => {
            let queue = open_queue(redis, &q)?;
            let dead = queue.dead_letters_range(&from, "+", count)?;
            let mut t = Table::new(vec![
                "id", "failed", "runs", "priority", "error", "headers", "payload",
            ]);
            let mut j = Vec::new();
            for d in &dead {
                let headers: Vec<String> =
                    d.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.row(vec![
                    d.id.clone(),
                    out::ago(d.failed_at),
                    d.attempts.to_string(),
                    d.priority.to_string(),
                    out::preview(d.error.as_bytes(), 40),
                    headers.join(","),
                    out::preview(&d.payload, 40),
                ]);
                j.push(json!({
                    "id": d.id,
                    "origin": d.origin,
                    "failed_at_ms": out::epoch_ms(d.failed_at),
                    "attempts": d.attempts,
                    "priority": d.priority,
                    "unique_id": d.unique_id,
                    "error": d.error,
                    "headers": d.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "payload": out::bytes_json(&d.payload),
                }));
            }
            let next = dead.last().and_then(|d| redkit::queue::next_id(&d.id));
            out.table(t, json!({ "dead_letters": j, "next": next }));
            Ok(())
        }
        QueueCmd::Replay(sel) => dead_op(redis, out, sel, true),
        QueueCmd::Purge(sel) => dead_op(redis, out, sel, false),
        QueueCmd::Pending { q, count } => {
            let queue = open_queue(redis, &q)?;
            let pending = queue.pending(count)?;
            let mut t = Table::new(vec!["id", "priority", "consumer", "idle", "deliveries"]);
            let mut j = Vec::new();
            for p in &pending {
                t.row(vec![
                    p.id.clone(),
                    p.priority.to_string(),
                    p.consumer.clone(),
                    out::duration(p.idle),
                    p.deliveries.to_string(),
                ]);
                j.push(json!({
                    "id": p.id, "priority": p.priority, "consumer": p.consumer,
                    "idle_ms": out::ms(Some(p.idle)), "deliveries": p.deliveries,
                }));
            }
            out.table(t, Value::from(j));
            Ok(())
        }
    }
}

fn dead_op(redis: &Redis, out: &Out, sel: DeadSelect, replay: bool) -> Done {
    let queue = open_queue(redis, &sel.q)?;
    let verb = if replay { "replayed" } else { "purged" };
    let n = if let Some(id) = &sel.id {
        let done = if replay {
            queue.replay_dead(id)?
        } else {
            queue.purge_dead(id)?
        };
        if !done {
            return Err(Failure::not_found(format!(
                "no dead letter {id} in queue {}",
                queue.name()
            )));
        }
        1
    } else {
        let (from, to) = match (&sel.from, &sel.to, sel.all) {
            (Some(f), Some(t), _) => (f.as_str(), t.as_str()),
            (_, _, true) => ("-", "+"),
            _ => {
                return Err(Failure::usage(
                    "give an id, --all, or --from and --to".into(),
                ))
            }
        };
        let total = queue.stats()?.dead_letters;
        let bar = out.progress(verb, Some(total));
        let n = if replay {
            queue.replay_dead_range(from, to, |n| bar.set_position(n))?
        } else if (from, to) == ("-", "+") {
            queue.purge_all_dead()?
        } else {
            queue.purge_dead_range(from, to, |n| bar.set_position(n))?
        };
        bar.finish_and_clear();
        n
    };
    out.line(
        &format!("{verb} {n} dead letter(s) of queue {}", queue.name()),
        json!({ verb: n, "queue": queue.name() }),
    );
    Ok(())
}

fn lock_show(redis: &Redis, out: &Out, name: &str, prefix: &str) -> Done {
    let lock = redkit::Lock::builder(redis, name).prefix(prefix).build()?;
    let info = lock.inspect()?;
    let rows = vec![
        ("lock", info.name.clone()),
        ("key", info.key.clone()),
        (
            "held",
            if info.holder.is_some() { "yes" } else { "no" }.to_owned(),
        ),
        ("holder", opt(&info.holder)),
        ("ttl", out::opt_duration(info.ttl)),
        ("fence", opt(&info.fence)),
        ("last fence", opt(&info.last_fence)),
        ("queued", info.queued.to_string()),
    ];
    let json = json!({
        "lock": info.name, "key": info.key, "held": info.holder.is_some(),
        "holder": info.holder, "ttl_ms": out::ms(info.ttl), "fence": info.fence,
        "last_fence": info.last_fence, "queued": info.queued,
    });
    out.fields(rows, json);
    Ok(())
}

fn limiter(
    redis: &Redis,
    l: &LimitArgs,
    limit: u64,
    per: Duration,
    burst: Option<u64>,
) -> Result<Box<dyn RateLimiter>, Failure> {
    let p = l.prefix.as_str();
    let n = l.name.as_str();
    Ok(match l.kind {
        LimitKind::Gcra => {
            let mut g = GcraLimit::new(limit, per);
            if let Some(b) = burst {
                g = g.burst(b);
            }
            Box::new(Gcra::new(redis, n, g)?.prefix(p))
        }
        LimitKind::FixedWindow => {
            Box::new(FixedWindow::new(redis, n, WindowLimit::new(limit, per))?.prefix(p))
        }
        LimitKind::SlidingWindow => {
            Box::new(SlidingWindow::new(redis, n, WindowLimit::new(limit, per))?.prefix(p))
        }
        LimitKind::SlidingLog => {
            Box::new(SlidingLog::new(redis, n, WindowLimit::new(limit, per))?.prefix(p))
        }
        LimitKind::TokenBucket => {
            Box::new(TokenBucket::new(redis, n, BucketLimit::new(limit, 1, per))?.prefix(p))
        }
    })
}

fn limit(redis: &Redis, out: &Out, cmd: LimitCmd) -> Done {
    match cmd {
        LimitCmd::Peek {
            l,
            limit,
            per,
            burst,
        } => {
            let limiter = limiter(redis, &l, limit, per, burst)?;
            let d = limiter.peek(&l.subject)?;
            let rows = vec![
                ("subject", l.subject.clone()),
                ("remaining", d.remaining.to_string()),
                ("limit", d.limit.to_string()),
                ("full again in", out::duration(d.reset_after)),
            ];
            let json = json!({
                "subject": l.subject, "remaining": d.remaining, "limit": d.limit,
                "reset_after_ms": out::ms(Some(d.reset_after)),
            });
            out.fields(rows, json);
            Ok(())
        }
        LimitCmd::Reset(l) => {
            // Reset only deletes the subject's state: any valid limit builds the limiter.
            let limiter = limiter(redis, &l, 1, Duration::from_secs(1), None)?;
            limiter.reset(&l.subject)?;
            out.line(
                &format!("reset {} for {}", l.name, l.subject),
                json!({ "reset": true, "limiter": l.name, "subject": l.subject }),
            );
            Ok(())
        }
    }
}

fn open_cache(redis: &Redis, c: &CacheArgs) -> Result<Cache, Failure> {
    Ok(Cache::builder(redis, &c.cache).prefix(&c.prefix).build()?)
}

fn cache(redis: &Redis, out: &Out, cmd: CacheCmd) -> Done {
    match cmd {
        CacheCmd::Get { c, key } => {
            let cache = open_cache(redis, &c)?;
            let Some(e) = cache.inspect(&key)? else {
                return Err(Failure::not_found(format!(
                    "no entry `{key}` in cache {}",
                    c.cache
                )));
            };
            let kind = match e.kind {
                EntryKind::Value => "value",
                EntryKind::NotFound => "cached not-found",
                EntryKind::Counter => "counter",
                _ => "not written by a redkit cache",
            };
            let rows = vec![
                ("key", e.key.clone()),
                ("kind", kind.to_owned()),
                ("ttl", out::opt_duration(e.ttl)),
                ("load time", out::opt_duration(e.load_time)),
                ("size", out::bytes(e.value.len() as u64)),
                ("value", out::preview(&e.value, 2000)),
            ];
            let json = json!({
                "key": e.key, "kind": kind, "ttl_ms": out::ms(e.ttl),
                "load_time_ms": out::ms(e.load_time), "value": out::bytes_json(&e.value),
            });
            out.fields(rows, json);
            Ok(())
        }
        CacheCmd::InvalidateTag { c, tag } => {
            let n = open_cache(redis, &c)?.invalidate_tag(&tag)?;
            out.line(
                &format!("removed {n} key(s) tagged {tag}"),
                json!({ "removed": n, "tag": tag }),
            );
            Ok(())
        }
        CacheCmd::InvalidatePattern { c, pattern } => {
            let bar = out.progress("scanning and deleting", None);
            bar.enable_steady_tick(Duration::from_millis(100));
            let n = open_cache(redis, &c)?.invalidate_pattern(&pattern)?;
            bar.finish_and_clear();
            out.line(
                &format!("removed {n} key(s) matching {pattern}"),
                json!({ "removed": n, "pattern": pattern }),
            );
            Ok(())
        }
    }
}

fn open_store(redis: &Redis, s: &SessionArgs) -> Result<SessionStore, Failure> {
    let mut b = SessionStore::builder(redis, &s.store);
    if let Some(p) = &s.prefix {
        b = b.prefix(p);
    }
    Ok(b.build()?)
}

fn sessions(redis: &Redis, out: &Out, cmd: SessionCmd) -> Done {
    match cmd {
        SessionCmd::Count(s) => {
            let n = open_store(redis, &s)?.count(&s.user)?;
            out.line(
                &format!("{n} live session(s) for {}", s.user),
                json!({ "user": s.user, "sessions": n }),
            );
            Ok(())
        }
        SessionCmd::List(s) => {
            let store = open_store(redis, &s)?;
            let ids = store.sessions_of(&s.user)?;
            let mut t = Table::new(vec!["session", "created", "ttl", "fields"]);
            let mut j = Vec::new();
            for id in ids {
                let Some(session) = store.get(&id)? else {
                    continue;
                };
                let pttl: i64 = redis.query(redis::cmd("PTTL").arg(store.key(&id)))?;
                let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
                // A session id is a bearer secret: shown shortened.
                let short: String = id.chars().take(8).collect();
                let fields: Vec<&str> = session.fields.keys().map(String::as_str).collect();
                t.row(vec![
                    format!("{short}…"),
                    out::ago(session.created),
                    out::opt_duration(ttl),
                    fields.join(","),
                ]);
                j.push(json!({
                    "session": short, "created_ms": out::epoch_ms(session.created),
                    "ttl_ms": out::ms(ttl), "fields": fields,
                }));
            }
            out.table(t, Value::from(j));
            Ok(())
        }
        SessionCmd::DestroyUser(s) => {
            let n = open_store(redis, &s)?.destroy_user(&s.user)?;
            out.line(
                &format!("destroyed {n} session(s) of {}", s.user),
                json!({ "user": s.user, "destroyed": n }),
            );
            Ok(())
        }
    }
}

fn keys(
    redis: &Redis,
    out: &Out,
    pattern: &str,
    kind: Option<&str>,
    limit: usize,
    memory: bool,
) -> Done {
    let total = Monitor::new(redis).dbsize()?;
    let bar = out.progress("scanning", Some(total));
    let mut scan = ScanIter::<String>::keys(redis).pattern(pattern).count(500);
    if let Some(k) = kind {
        scan = scan.kind(k);
    }
    let mut by_type: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut listed = Vec::new();
    let mut seen = 0u64;
    let mut chunk = Vec::with_capacity(200);
    let mut flush =
        |chunk: &mut Vec<String>, listed: &mut Vec<(String, String, u64, i64)>| -> Done {
            if chunk.is_empty() {
                return Ok(());
            }
            let mut pipe = Pipeline::new();
            for k in chunk.iter() {
                pipe.cmd("TYPE").arg(k);
                pipe.cmd("PTTL").arg(k);
                if memory {
                    pipe.cmd("MEMORY").arg("USAGE").arg(k);
                }
            }
            let replies: Vec<redis::Value> = redis.pipeline(&pipe)?;
            let per = if memory { 3 } else { 2 };
            for (k, r) in chunk.drain(..).zip(replies.chunks(per)) {
                let t = match r.first() {
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => "?".to_owned(),
                };
                if t == "none" {
                    continue; // deleted meanwhile
                }
                let ttl = match r.get(1) {
                    Some(redis::Value::Int(n)) => *n,
                    _ => -1,
                };
                let mem = match r.get(2) {
                    Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                let e = by_type.entry(t.clone()).or_default();
                e.0 += 1;
                e.1 += mem;
                if listed.len() < limit {
                    listed.push((k, t, mem, ttl));
                }
            }
            Ok(())
        };
    for key in scan {
        chunk.push(key?);
        seen += 1;
        if chunk.len() == 200 {
            flush(&mut chunk, &mut listed)?;
            bar.set_position(seen);
        }
    }
    flush(&mut chunk, &mut listed)?;
    bar.finish_and_clear();
    if out.json {
        out.json(json!({
            "pattern": pattern,
            "type": kind,
            "count": by_type.values().map(|v| v.0).sum::<u64>(),
            "memory": memory.then(|| by_type.values().map(|v| v.1).sum::<u64>()),
            "by_type": by_type.iter().map(|(t, (n, m))| (t.clone(), json!({
                "count": n, "memory": memory.then_some(*m),
            }))).collect::<serde_json::Map<_, _>>(),
            "keys": listed.iter().map(|(k, t, m, ttl)| json!({
                "key": k, "type": t, "memory": memory.then_some(*m),
                "ttl_ms": u64::try_from(*ttl).ok(),
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut t = Table::new(vec!["key", "type", "ttl", "memory"]);
    for (k, ty, m, ttl) in &listed {
        let ttl = u64::try_from(*ttl).ok().map(Duration::from_millis);
        t.row(vec![
            out::preview(k.as_bytes(), 60),
            ty.clone(),
            out::opt_duration(ttl),
            if memory { out::bytes(*m) } else { "-".into() },
        ]);
    }
    t.print_to_stdout();
    let mut s = Table::new(vec!["type", "keys", "memory"]);
    for (ty, (n, m)) in &by_type {
        s.row(vec![
            ty.clone(),
            n.to_string(),
            if memory { out::bytes(*m) } else { "-".into() },
        ]);
    }
    let count: u64 = by_type.values().map(|v| v.0).sum();
    let mem: u64 = by_type.values().map(|v| v.1).sum();
    s.row(vec![
        "total".into(),
        count.to_string(),
        if memory { out::bytes(mem) } else { "-".into() },
    ]);
    println!();
    s.print_to_stdout();
    Ok(())
}
