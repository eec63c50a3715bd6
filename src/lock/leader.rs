//! Leader election and presence: [`Group`] and its [`Member`]s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use parking_lot::Mutex;

use super::wait::millis;
use super::watchdog::Task;
use super::{bad_reply, check_name, check_ttl, tagged, DEFAULT_PREFIX};
use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(tick_script, "leader_tick.lua");

static_script!(leave_script, "leader_leave.lua");

static_script!(members_script, "leader_members.lua");

#[derive(Debug)]
struct Keys {
    members: String,
    leader: String,
    term: String,
}

/// A change of leadership seen by a [`Member`] (on [`Member::events`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// This member became the leader.
    Elected {
        /// The leadership's term: greater than every earlier term of the group, usable as a
        /// fencing token for what the leader does.
        term: u64,
    },
    /// This member is no longer the leader (another took over after its lease ran out, its
    /// renewals failed past the lease, or it left).
    Demoted {
        /// The term that ended.
        term: u64,
    },
}

/// Configures a [`Group`]; made by [`Group::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct GroupBuilder {
    redis: Redis,
    name: String,
    prefix: String,
    leader_ttl: Duration,
    presence_ttl: Duration,
}

impl GroupBuilder {
    /// The leader's lease (at least 30 ms): renewed at a third of it by the leader's
    /// watchdog; a new leader is elected within it after the leader dies. Defaults to 10 s.
    pub fn leader_ttl(mut self, ttl: Duration) -> GroupBuilder {
        self.leader_ttl = ttl;
        self
    }

    /// A member not heard from for this long is no longer listed by [`Group::members`] (at
    /// least 30 ms). Defaults to 30 s.
    pub fn presence_ttl(mut self, ttl: Duration) -> GroupBuilder {
        self.presence_ttl = ttl;
        self
    }

    /// The key prefix, before the group's name. Defaults to `redkit:lock:`.
    pub fn prefix(mut self, prefix: &str) -> GroupBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Group> {
        check_name("group.name", &self.name)?;
        check_ttl("group.leader_ttl", self.leader_ttl, true)?;
        check_ttl("group.presence_ttl", self.presence_ttl, true)?;
        let base = self
            .redis
            .key(&format!("{}:group", tagged(&self.prefix, &self.name)));
        Ok(Group {
            keys: Arc::new(Keys {
                members: format!("{base}:members"),
                leader: format!("{base}:leader"),
                term: format!("{base}:term"),
            }),
            redis: self.redis,
            leader_ttl: self.leader_ttl,
            presence_ttl: self.presence_ttl,
        })
    }
}

/// A group of members (processes, bots, workers) that know who is present and elect at
/// most one leader at a time.
///
/// Each [`Member`] heartbeats on the handle's [watchdog thread](super#the-watchdog): it
/// records its presence (listed by [`Group::members`] while seen within the presence TTL) and
/// either renews its leadership (a lease of the leader TTL) or, when nobody leads, campaigns
/// for it. A follower asks again when the leader's lease is due to run out, so after a
/// leader dies a new one is elected within the leader TTL. A leader whose renewals fail
/// stops calling itself leader ([`Member::is_leader`]) when its lease may have run out, before
/// anyone else can be elected, and gets [`Election::Demoted`].
///
/// Each election gets a term ([`Election::Elected`]) greater than every earlier one: use it
/// as a fencing token, as with [`Lock`](super::Lock) (the same [safety
/// model](super#the-safety-model) applies: a leader paused past its lease is not told
/// until it runs again).
///
/// ```no_run
/// use redkit::lock::{Election, Group};
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let bots = Group::new(&redis, "bots")?;
/// let me = bots.join("bot-7")?;
/// for event in me.events().iter() {
///     match event {
///         Election::Elected { term } => println!("leading (term {term})"),
///         Election::Demoted { .. } => println!("following"),
///         _ => {}
///     }
///     println!("present: {:?}", bots.members()?);
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Group {
    redis: Redis,
    keys: Arc<Keys>,
    leader_ttl: Duration,
    presence_ttl: Duration,
}

impl Group {
    /// A group named `name` with the default settings (leader TTL 10 s, presence 30 s).
    pub fn new(redis: &Redis, name: &str) -> Result<Group> {
        Group::builder(redis, name).build()
    }

    /// A builder for a group named `name`.
    pub fn builder(redis: &Redis, name: &str) -> GroupBuilder {
        GroupBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            leader_ttl: Duration::from_secs(10),
            presence_ttl: Duration::from_secs(30),
        }
    }

    /// Joins as `member_id` (unique in the group; not empty) and takes part in elections.
    /// The first heartbeat runs before this returns, so [`Member::is_leader`] is already
    /// meaningful.
    pub fn join(&self, member_id: &str) -> Result<Member> {
        if member_id.is_empty() {
            return Err(Error::config("group.member_id", "must not be empty"));
        }
        let (tx, rx) = crossbeam_channel::bounded(64);
        let state = Arc::new(MemberState {
            id: member_id.to_owned(),
            token: super::new_token(),
            keys: self.keys.clone(),
            leader_ttl: self.leader_ttl,
            presence_ttl: self.presence_ttl,
            leader: AtomicBool::new(false),
            term: AtomicU64::new(0),
            valid_until: Mutex::new(Instant::now()),
            left: AtomicBool::new(false),
            events: tx,
        });
        let next = state.tick(&self.redis)?;
        let task: Arc<dyn Task> = state.clone();
        let weak: Weak<dyn Task> = Arc::downgrade(&task);
        super::handle_locks(&self.redis)?.schedule(&self.redis, weak, next)?;
        Ok(Member {
            redis: self.redis.clone(),
            state,
            events: rx,
            done: false,
        })
    }

    /// The members seen within the presence TTL, sorted by id.
    pub fn members(&self) -> Result<Vec<String>> {
        let call = members_script()
            .key(&self.keys.members)
            .arg(millis(self.presence_ttl));
        let mut members: Vec<String> = self.redis.run_idempotent(|con| call.invoke(con))?;
        members.sort();
        Ok(members)
    }

    /// The current leader's id and term, if any.
    pub fn leader(&self) -> Result<Option<(String, u64)>> {
        let v: Option<String> = self.redis.query(redis::cmd("GET").arg(&self.keys.leader))?;
        let Some(v) = v else {
            return Ok(None);
        };
        let mut parts = v.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(term), Some(_token), Some(id)) => Ok(Some((
                id.to_owned(),
                term.parse()
                    .map_err(|_| bad_reply("leader", "bad term".into()))?,
            ))),
            _ => Err(bad_reply("leader", "unexpected leader value".into())),
        }
    }
}

struct MemberState {
    id: String,
    token: String,
    keys: Arc<Keys>,
    leader_ttl: Duration,
    presence_ttl: Duration,
    leader: AtomicBool,
    term: AtomicU64,
    /// Until when our leadership surely lasts (time of the last renewal + TTL - drift).
    valid_until: Mutex<Instant>,
    left: AtomicBool,
    events: Sender<Election>,
}

impl MemberState {
    fn interval(&self) -> Duration {
        (self.leader_ttl / 3).min(self.presence_ttl / 3)
    }

    fn send(&self, event: Election) {
        if self.events.try_send(event).is_err() {
            debug!(
                "group member {}: event {event:?} dropped (queue full)",
                self.id
            );
        }
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire) && Instant::now() < *self.valid_until.lock()
    }

    fn demote(&self) {
        if self.leader.swap(false, Ordering::AcqRel) {
            let term = self.term.load(Ordering::Acquire);
            info!(
                "group member {}: no longer the leader (term {term})",
                self.id
            );
            self.send(Election::Demoted { term });
        }
    }

    /// One heartbeat; returns when to run the next.
    fn tick(&self, redis: &Redis) -> Result<Duration> {
        let sent = Instant::now();
        let call = tick_script()
            .key(&self.keys.members)
            .key(&self.keys.leader)
            .key(&self.keys.term)
            .arg(&self.id)
            .arg(&self.token)
            .arg(millis(self.leader_ttl))
            .arg(millis(self.presence_ttl))
            .arg(1);
        // Safe to resend: a second run renews what the first one set.
        let reply: Vec<i64> = redis.run_idempotent(|con| call.invoke(con))?;
        match reply[..] {
            [1, term, _] => {
                let term = term.unsigned_abs();
                *self.valid_until.lock() = super::lease::valid_until(sent, self.leader_ttl);
                self.term.store(term, Ordering::Release);
                if !self.leader.swap(true, Ordering::AcqRel) {
                    info!("group member {}: elected leader (term {term})", self.id);
                    self.send(Election::Elected { term });
                }
                Ok(self.interval())
            }
            [0, _, pttl] => {
                self.demote();
                // Ask again when the leader's lease runs out, if that is sooner.
                let until_free = Duration::from_millis(pttl.max(0).unsigned_abs() + 1);
                Ok(self.interval().min(until_free))
            }
            _ => Err(bad_reply("leader", format!("{reply:?}"))),
        }
    }
}

impl Task for MemberState {
    fn run(&self, redis: &Redis) -> Option<Duration> {
        if self.left.load(Ordering::Acquire) {
            return None;
        }
        match self.tick(redis) {
            Ok(next) => Some(next),
            Err(Error::Closed) => None,
            Err(e) => {
                let left = self
                    .valid_until
                    .lock()
                    .saturating_duration_since(Instant::now());
                if self.leader.load(Ordering::Acquire) && left.is_zero() {
                    warn!(
                        "group member {}: cannot renew the leadership ({e})",
                        self.id
                    );
                    self.demote();
                } else {
                    debug!("group member {}: heartbeat failed ({e})", self.id);
                }
                let retry =
                    (self.leader_ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
                Some(if left.is_zero() {
                    retry
                } else {
                    retry.min(left)
                })
            }
        }
    }
}

/// A member of a [`Group`]: present while it lives, leader at times. Leaving (explicitly
/// or on drop) removes its presence and hands leadership back at once.
pub struct Member {
    redis: Redis,
    state: Arc<MemberState>,
    events: Receiver<Election>,
    done: bool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.state.id)
            .field("leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// This member's id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Whether this member leads now, as far as it knows without a round trip: elected,
    /// and its lease (renewed by the watchdog) has not run out.
    pub fn is_leader(&self) -> bool {
        self.state.is_leader()
    }

    /// The term of the current or last leadership of this member (0 if never elected).
    pub fn term(&self) -> u64 {
        self.state.term.load(Ordering::Acquire)
    }

    /// The [`Election`] events of this member (a bounded queue of 64; when full, further
    /// events are dropped: [`Member::is_leader`] is always current). Cloning the receiver
    /// shares the queue.
    pub fn events(&self) -> &Receiver<Election> {
        &self.events
    }

    /// Leaves the group: removes the presence and, if leading, the leadership (another member
    /// is elected at its next heartbeat). Returns whether it was the leader.
    pub fn leave(mut self) -> Result<bool> {
        self.done = true;
        self.leave_group()
    }

    fn leave_group(&self) -> Result<bool> {
        self.state.left.store(true, Ordering::Release);
        let call = leave_script()
            .key(&self.state.keys.members)
            .key(&self.state.keys.leader)
            .arg(&self.state.id)
            .arg(&self.state.token);
        let result = self.redis.run_idempotent(|con| call.invoke::<i64>(con));
        self.state.demote();
        Ok(result? == 1)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.leave_group() {
            warn!(
                "group member {} could not leave (its presence and leadership expire): {e}",
                self.state.id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_send() {
        fn send<T: Send>() {}
        send::<Member>();
        send::<Group>();
    }
}
