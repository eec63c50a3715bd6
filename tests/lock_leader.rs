//! Leader election and presence against a real server, with a leader in another process that
//! gets killed.

mod support;

use std::time::{Duration, Instant};

use redkit::lock::{Election, Group, Member};
use redkit::testing::wait_until;
use redkit::Redis;
use support::*;

const LEADER_TTL: Duration = Duration::from_millis(900);

fn group(redis: &Redis) -> Group {
    Group::builder(redis, "bots")
        .leader_ttl(LEADER_TTL)
        .presence_ttl(Duration::from_millis(1500))
        .build()
        .expect("group")
}

fn leaders(members: &[Member]) -> usize {
    members.iter().filter(|m| m.is_leader()).count()
}

#[test]
fn exactly_one_leader_and_presence() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let bots = group(&redis);
    let members: Vec<Member> = ["a", "b", "c"]
        .iter()
        .map(|id| bots.join(id))
        .collect::<redkit::Result<_>>()?;
    assert_eq!(leaders(&members), 1);
    // Terms are fencing tokens: never below the server's clock in microseconds (so they keep
    // increasing even if the server loses the counter).
    let Election::Elected { term: first } = members[0].events().try_recv()? else {
        panic!("not elected")
    };
    assert!(first > 1_600_000_000_000_000, "{first}");
    assert!(members[0].is_leader(), "the first to join leads");
    assert_eq!(bots.leader()?, Some(("a".to_owned(), first)));
    assert_eq!(bots.members()?, ["a", "b", "c"]);
    // Over several leases, still exactly one leader, always the same.
    let until = Instant::now() + LEADER_TTL * 3;
    while Instant::now() < until {
        assert_eq!(leaders(&members), 1);
        assert!(members[0].is_leader());
        std::thread::sleep(Duration::from_millis(30));
    }
    // The leader leaves: another is elected at its next heartbeat, with a higher term.
    let mut members = members.into_iter();
    let a = members.next().expect("a");
    let events = a.events().clone();
    assert!(a.leave()?);
    assert_eq!(events.try_recv()?, Election::Demoted { term: first });
    let rest: Vec<Member> = members.collect();
    wait_until(LEADER_TTL * 2, "a new leader", || leaders(&rest) == 1)?;
    let (id, term) = bots.leader()?.expect("leader");
    assert!(id == "b" || id == "c");
    assert!(term > first, "{term} after {first}");
    assert_eq!(bots.members()?, ["b", "c"]);
    drop(rest);
    assert_eq!(bots.leader()?, None);
    assert!(bots.members()?.is_empty());
    Ok(())
}

/// The leader process of `a_new_leader_within_the_ttl_after_the_leader_is_killed`.
#[test]
#[ignore = "run by a_new_leader_within_the_ttl_after_the_leader_is_killed as a child process"]
fn child_leader() {
    let Ok(url) = std::env::var("REDKIT_CHILD_URL") else {
        return;
    };
    let redis = Redis::connect(url.as_str()).expect("child connect");
    let me = group(&redis).join("child").expect("join");
    assert!(me.is_leader(), "the child joins first");
    // Lead until killed.
    std::thread::sleep(Duration::from_secs(60));
}

/// Kills the child when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_leader_within_the_ttl_after_the_leader_is_killed() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let bots = group(&redis);
    let mut child = Killed(spawn_child("child_leader", &server.url(), &[])?);
    wait_until(Duration::from_secs(20), "the child leads", || {
        bots.leader().unwrap().is_some_and(|(id, _)| id == "child")
    })?;
    let (_, first_term) = bots.leader()?.expect("the child");
    let members: Vec<Member> = ["x", "y"]
        .iter()
        .map(|id| bots.join(id))
        .collect::<redkit::Result<_>>()?;
    assert_eq!(leaders(&members), 0);
    assert_eq!(bots.members()?, ["child", "x", "y"]);
    // Still the child after a few of its renewals.
    std::thread::sleep(LEADER_TTL);
    assert_eq!(leaders(&members), 0);
    child.0.kill()?;
    child.0.wait()?;
    let killed = Instant::now();
    wait_until(LEADER_TTL * 3, "a new leader", || leaders(&members) == 1)?;
    let took = killed.elapsed();
    assert!(
        took <= LEADER_TTL + Duration::from_millis(400),
        "new leader after {took:?}"
    );
    let (id, term) = bots.leader()?.expect("leader");
    assert!(id == "x" || id == "y", "{id}");
    assert!(term > first_term, "{term} after {first_term}");
    // Exactly one, for a while.
    let until = Instant::now() + LEADER_TTL;
    while Instant::now() < until {
        assert_eq!(leaders(&members), 1);
        std::thread::sleep(Duration::from_millis(30));
    }
    // The dead child drops out of the presence list.
    wait_until(Duration::from_secs(3), "child gone", || {
        bots.members().unwrap() == ["x", "y"]
    })?;
    Ok(())
}

#[test]
fn a_deposed_leader_is_demoted() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let bots = group(&redis);
    let me = bots.join("solo")?;
    assert!(me.is_leader());
    // Someone takes the leadership behind its back.
    let key = "redkit:lock:{bots}:group:leader";
    redis.query::<()>(redis::cmd("SET").arg(key).arg("99:other-token:intruder"))?;
    wait_until(LEADER_TTL, "demoted", || !me.is_leader())?;
    let Election::Elected { term } = me.events().recv_timeout(LEADER_TTL)? else {
        panic!("not elected")
    };
    assert_eq!(
        me.events().recv_timeout(LEADER_TTL)?,
        Election::Demoted { term }
    );
    assert!(!me.leave()?);
    assert!(bots.join("").is_err());
    Ok(())
}
