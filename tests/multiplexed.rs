//! The multiplexed connection: many threads, one socket, every caller gets its own reply,
//! deadlines per caller, failures typed with the right delivery.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use redkit::{Delivery, Error, ErrorClass, HeartbeatConfig, Pipeline, Redis, Timeouts};
use support::TestResult;

fn mux(server: &redkit::testing::RedisServer) -> Redis {
    Redis::connect(support::builder(server).multiplexed(1)).expect("connect")
}

/// Clients of the server right now (CLIENT LIST lines).
fn clients(admin: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("CLIENT LIST");
    list.lines().count()
}

fn value_for(thread: usize, seq: usize) -> Vec<u8> {
    // 0 bytes to 1 MiB, derived from the thread and sequence number.
    let len = match seq % 10 {
        0 => 0,
        1..=6 => 16 + thread,
        7 | 8 => 4096 + seq,
        _ => 1024 * 1024,
    };
    let mut v = format!("{thread}:{seq}:").into_bytes();
    v.resize(v.len() + len, b'a' + (seq % 26) as u8);
    v
}

#[test]
fn sixty_four_threads_each_get_their_own_replies() -> TestResult {
    let server = support::server();
    let redis = mux(&server);
    let mut admin = support::admin(&server);
    let before = clients(&mut admin);
    std::thread::scope(|s| {
        for t in 0..64 {
            let mut r = redis.clone();
            s.spawn(move || {
                for seq in 0..40 {
                    let key = format!("k:{t}");
                    let value = value_for(t, seq);
                    r.set::<_, _, ()>(&key, &value).expect("SET");
                    let got: Vec<u8> = r.get(&key).expect("GET");
                    assert_eq!(got, value, "thread {t} seq {seq}: its own value");
                    let n: i64 = r.incr(format!("n:{t}"), 1).expect("INCR");
                    assert_eq!(n, seq as i64 + 1, "thread {t}: its own counter");
                    let len: i64 = r.lpush(format!("l:{t}"), seq).expect("LPUSH");
                    assert_eq!(len, seq as i64 + 1);
                    let _: () = r.hset(format!("h:{t}"), "seq", seq).expect("HSET");
                    let h: std::collections::HashMap<String, usize> =
                        r.hgetall(format!("h:{t}")).expect("HGETALL");
                    assert_eq!(h.get("seq"), Some(&seq));
                    if seq % 5 == 0 {
                        let mut pipe = Pipeline::new();
                        pipe.cmd("SET").arg(format!("p:{t}")).arg(seq).ignore();
                        pipe.cmd("GET").arg(format!("p:{t}"));
                        pipe.cmd("INCRBY").arg(format!("pn:{t}")).arg(t);
                        let (got, n): (usize, i64) = r.pipeline(&pipe).expect("pipeline");
                        assert_eq!(got, seq);
                        assert_eq!(n, (t * (seq / 5 + 1)) as i64);
                    }
                }
            });
        }
    });
    // One shared connection (plus the heartbeat's and the pool's idle one), not 64.
    let during = clients(&mut admin);
    assert!(
        during <= before + 3,
        "{before} clients before, {during} with 64 threads"
    );
    Ok(())
}
