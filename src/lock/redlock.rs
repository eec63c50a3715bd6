//! [`Redlock`]: a lock held on a majority of independent Redis servers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;

use super::lease::{Lease, Renew};
use super::wait::millis;
use super::{check_name, check_ttl, drift, tagged};
use crate::error::{Error, Result};
use crate::retry::SplitMix64;
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "redlock_acquire.lua");

static_script!(confirm_script, "redlock_confirm.lua");

static_script!(release_script, "redlock_release.lua");

static_script!(extend_script, "lock_extend.lua");

/// The key prefix of Redlock keys unless told otherwise.
const REDLOCK_PREFIX: &str = "redkit:redlock:";

/// Configures a [`Redlock`]; made by [`Redlock::builder`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct RedlockBuilder {
    nodes: Vec<Redis>,
    name: String,
    prefix: String,
    ttl: Duration,
    wait: Duration,
    node_timeout: Duration,
    retry_delay: Duration,
    watchdog: bool,
}

impl RedlockBuilder {
    /// How long the lock is held on each server unless extended (at least 1 ms, at most a
    /// year; at least 30 ms with the watchdog). Defaults to 30 s.
    pub fn ttl(mut self, ttl: Duration) -> RedlockBuilder {
        self.ttl = ttl;
        self
    }

    /// How long [`Redlock::acquire`] keeps trying. Defaults to 10 s.
    pub fn wait(mut self, wait: Duration) -> RedlockBuilder {
        self.wait = wait;
        self
    }

    /// How long one server may take to answer (checkout and reply) before it counts as
    /// failed for this attempt; small next to the TTL, so that a dead server does not eat
    /// the validity. Defaults to 50 ms. (Opening a new connection to a server whose packets
    /// vanish is bounded by that handle's connect timeout.)
    pub fn node_timeout(mut self, d: Duration) -> RedlockBuilder {
        self.node_timeout = d;
        self
    }

    /// The largest random delay between two attempts of a waiting acquire (at most an hour).
    /// Defaults to 50 ms.
    pub fn retry_delay(mut self, d: Duration) -> RedlockBuilder {
        self.retry_delay = d;
        self
    }

    /// The key prefix, before the lock's name. Defaults to `redkit:redlock:`.
    pub fn prefix(mut self, prefix: &str) -> RedlockBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Whether the [watchdog](super#the-watchdog) of the first server's handle renews
    /// every guard on all servers at a third of its TTL until it is released; the guard is
    /// marked lost when a renewal no longer reaches a majority in time. Defaults to `false`.
    pub fn watchdog(mut self, on: bool) -> RedlockBuilder {
        self.watchdog = on;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Redlock> {
        check_name("redlock.name", &self.name)?;
        check_ttl("redlock.ttl", self.ttl, self.watchdog)?;
        if self.nodes.is_empty() {
            return Err(Error::config("redlock.nodes", "needs at least one server"));
        }
        if self.node_timeout.is_zero() || self.node_timeout >= self.ttl {
            return Err(Error::config(
                "redlock.node_timeout",
                "must be greater than zero and smaller than the TTL",
            ));
        }
        if self.retry_delay.is_zero() || self.retry_delay > Duration::from_secs(3600) {
            return Err(Error::config(
                "redlock.retry_delay",
                "must be greater than zero and at most an hour",
            ));
        }
        let keys: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.key(&tagged(&self.prefix, &self.name)))
            .collect();
        let fences = keys.iter().map(|k| format!("{k}:fence")).collect();
        Ok(Redlock {
            inner: Arc::new(Inner {
                name: self.name.into(),
                nodes: self.nodes,
                keys,
                fences,
                ttl: self.ttl,
                wait: self.wait,
                node_timeout: self.node_timeout,
                retry_delay: self.retry_delay,
                watchdog: self.watchdog,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    nodes: Vec<Redis>,
    /// The lock's key on each node (each handle may have its own key prefix).
    keys: Vec<String>,
    /// The fencing counter on each node.
    fences: Vec<String>,
    ttl: Duration,
    wait: Duration,
    node_timeout: Duration,
    retry_delay: Duration,
    watchdog: bool,
}

/// The Redlock algorithm over several **independent** Redis servers (not replicas of each
/// other): the lock is held when a majority (N/2 + 1) of them accepted it within its
/// validity time. It survives the loss of a minority of servers, which a single-instance
/// [`Lock`](super::Lock) cannot (see the [safety model](super#the-safety-model)).
///
/// One attempt sets the key (`SET NX PX`, with a random token) on every server in turn,
/// each within the [node timeout](RedlockBuilder::node_timeout); the lock is won when a
/// majority said yes and the time left (TTL minus the time the attempt took minus a
/// clock-drift allowance of 1% + 2 ms) is positive. A failed attempt releases the key on
/// every server (also those that did not answer in time) before trying again after a
/// random delay.
///
/// **Fencing tokens**: every server keeps its own counter, and an acquisition takes the next
/// fence of each server of its majority (as a [`Lock`](super::Lock) does: never below the
/// server's clock in microseconds). The guard's token is the highest of them, and a second
/// round writes it back to the servers of the majority (the acquisition counts only when a
/// majority confirmed it within the validity). Any later holder's majority overlaps ours on
/// a server whose counter holds our token by then, so its token is greater: tokens strictly
/// increase across holders, as long as the servers' clocks do not go back (a server that
/// lost its counter restarts from its clock). The second round costs one more round trip
/// per server.
///
/// ```no_run
/// use redkit::{lock::Redlock, Redis};
///
/// let nodes = ["redis://10.0.0.1/", "redis://10.0.0.2/", "redis://10.0.0.3/"]
///     .into_iter()
///     .map(Redis::connect_lazy)
///     .collect::<redkit::Result<Vec<_>>>()?;
/// let lock = Redlock::new(&nodes, "billing-run")?;
/// let guard = lock.acquire()?;
/// println!("held on {} of 3 for at least {:?}", guard.locked_on(), guard.validity());
/// // ... work that must finish within the validity ...
/// guard.release()?;
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Redlock {
    inner: Arc<Inner>,
}

impl Redlock {
    /// A Redlock named `name` over `nodes` with the default settings (TTL 30 s, wait 10 s,
    /// node timeout 50 ms).
    pub fn new(nodes: &[Redis], name: &str) -> Result<Redlock> {
        Redlock::builder(nodes, name).build()
    }

    /// A builder for a Redlock named `name` over `nodes` (one handle per independent server).
    pub fn builder(nodes: &[Redis], name: &str) -> RedlockBuilder {
        RedlockBuilder {
            nodes: nodes.iter().map(Redis::unprefixed).collect(),
            name: name.to_owned(),
            prefix: REDLOCK_PREFIX.to_owned(),
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            node_timeout: Duration::from_millis(50),
            retry_delay: Duration::from_millis(50),
            watchdog: false,
        }
    }

    /// How many servers must accept the lock: N/2 + 1.
    pub fn quorum(&self) -> usize {
        self.inner.nodes.len() / 2 + 1
    }

    /// One attempt; never waits. `None` when no majority accepted it in time (what it took
    /// is released again).
    pub fn try_acquire(&self) -> Result<Option<RedlockGuard>> {
        let token = super::new_token();
        self.attempt(&token)
    }

    /// Tries until it wins or the configured [wait](RedlockBuilder::wait) has passed.
    pub fn acquire(&self) -> Result<RedlockGuard> {
        self.acquire_timeout(self.inner.wait)
    }

    /// Tries until it wins or `timeout` has passed ([`Error::LockTimeout`]).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RedlockGuard> {
        let start = Instant::now();
        let token = super::new_token();
        let mut rng = SplitMix64(RandomState::new().hash_one(&token));
        loop {
            if let Some(guard) = self.attempt(&token)? {
                return Ok(guard);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::LockTimeout { waited: timeout });
            }
            let delay = self.inner.retry_delay.mul_f64(rng.next_f64());
            std::thread::sleep(delay.max(Duration::from_millis(1)).min(left));
        }
    }

    fn attempt(&self, token: &str) -> Result<Option<RedlockGuard>> {
        let inner = &*self.inner;
        let start = Instant::now();
        let mut locked = Vec::with_capacity(inner.nodes.len());
        let mut fence = 0u64;
        for (i, (node, key)) in inner.nodes.iter().zip(&inner.keys).enumerate() {
            let call = acquire_script()
                .key(key)
                .key(&inner.fences[i])
                .arg(token)
                .arg(millis(inner.ttl));
            match on_node(node, inner.node_timeout, |con| call.invoke::<Vec<i64>>(con)) {
                Ok(r) => {
                    if let [1, f] = r[..] {
                        locked.push(i);
                        fence = fence.max(f.unsigned_abs());
                    }
                }
                Err(e) => debug!("redlock {key}: a server failed: {e}"),
            }
        }
        if locked.len() >= self.quorum() {
            // The second round: the fence goes to every server of the majority.
            let mut confirmed = 0;
            for &i in &locked {
                let call = confirm_script()
                    .key(&inner.keys[i])
                    .key(&inner.fences[i])
                    .arg(token)
                    .arg(fence);
                match on_node(&inner.nodes[i], inner.node_timeout, |con| {
                    call.invoke::<i64>(con)
                }) {
                    Ok(1) => confirmed += 1,
                    Ok(_) => {}
                    Err(e) => debug!("redlock {}: a server failed: {e}", inner.keys[i]),
                }
            }
            let validity = inner
                .ttl
                .saturating_sub(start.elapsed())
                .saturating_sub(drift(inner.ttl));
            if confirmed >= self.quorum() && !validity.is_zero() {
                return self.guard(token, fence, confirmed, start).map(Some);
            }
        }
        // Lost: release everywhere, also where the reply may have been lost.
        release_all(inner, token);
        Ok(None)
    }

    fn guard(
        &self,
        token: &str,
        fence: u64,
        locked_on: usize,
        start: Instant,
    ) -> Result<RedlockGuard> {
        let locked_on = Arc::new(AtomicUsize::new(locked_on));
        let renew = RedlockRenew {
            lock: self.clone(),
            token: token.to_owned(),
            locked_on: locked_on.clone(),
        };
        let lease = Arc::new(Lease::new(
            self.inner.name.clone(),
            "redlock",
            fence,
            self.inner.ttl,
            start,
            Box::new(renew),
        ));
        let guard = RedlockGuard {
            lock: self.clone(),
            token: token.to_owned(),
            lease,
            locked_on,
            done: false,
        };
        if self.inner.watchdog {
            if let Some(first) = self.inner.nodes.first() {
                super::lease::watch(first, &guard.lease)?;
            }
        }
        Ok(guard)
    }

    /// Extends `token`'s lock to `ttl` from now on every server (each within `bound`, or the
    /// node timeout); returns on how many it was still ours, or `None` when a majority did
    /// not renew it within the new validity.
    fn extend_all(&self, token: &str, ttl: Duration, bound: Option<Duration>) -> Option<usize> {
        let inner = &*self.inner;
        let start = Instant::now();
        let timeout = bound.map_or(inner.node_timeout, |b| b.min(inner.node_timeout));
        let mut renewed = 0;
        for (node, key) in inner.nodes.iter().zip(&inner.keys) {
            let call = extend_script().key(key).arg(token).arg(millis(ttl));
            if let Ok(1) = on_node(node, timeout, |con| call.invoke::<i64>(con)) {
                renewed += 1;
            }
        }
        let until = super::lease::valid_until(start, ttl);
        (renewed >= self.quorum() && Instant::now() < until).then_some(renewed)
    }
}

/// Renews a Redlock on every server (the watchdog's and `extend`'s way).
struct RedlockRenew {
    lock: Redlock,
    token: String,
    locked_on: Arc<AtomicUsize>,
}

impl Renew for RedlockRenew {
    fn renew(&self, _: &Redis, ttl: Duration, bound: Option<Duration>) -> Result<bool> {
        match self.lock.extend_all(&self.token, ttl, bound) {
            Some(n) => {
                self.locked_on.store(n, Ordering::Release);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Runs `f` on a connection of `node`, all within `timeout`.
fn on_node<T>(
    node: &Redis,
    timeout: Duration,
    f: impl FnOnce(&mut crate::PooledConnection) -> Result<T>,
) -> Result<T> {
    let mut con = node.conn_timeout(timeout)?;
    con.set_response_timeout(Some(timeout))?;
    f(&mut con)
}

/// Releases `token`'s key on every node; returns on how many it was still held.
fn release_all(inner: &Inner, token: &str) -> usize {
    let mut released = 0;
    for (node, key) in inner.nodes.iter().zip(&inner.keys) {
        let call = release_script().key(key).arg(token);
        match on_node(node, inner.node_timeout, |con| call.invoke::<i64>(con)) {
            Ok(1) => released += 1,
            Ok(_) => {}
            Err(e) => debug!("redlock {key}: release failed on a server: {e}"),
        }
    }
    released
}

/// A held [`Redlock`]. Released on every server by [`RedlockGuard::release`] or, best-effort,
/// on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RedlockGuard {
    lock: Redlock,
    token: String,
    lease: Arc<Lease>,
    locked_on: Arc<AtomicUsize>,
    done: bool,
}

impl std::fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("locked_on", &self.locked_on())
            .field("fencing_token", &self.lease.fence)
            .field("validity", &self.validity())
            .finish_non_exhaustive()
    }
}

impl RedlockGuard {
    /// How long the lock is surely still held (TTL minus the time the acquisition or the last
    /// extension took minus the drift allowance, counted from then); zero once passed, or
    /// once the watchdog found it lost.
    pub fn validity(&self) -> Duration {
        self.lease.validity()
    }

    /// Whether the validity has not run out yet (and the lock was not found lost).
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// The fencing token: greater than that of every earlier holder of this Redlock (see
    /// the type's docs).
    pub fn fencing_token(&self) -> u64 {
        self.lease.fence
    }

    /// On how many servers the acquisition (or the last extension) succeeded.
    pub fn locked_on(&self) -> usize {
        self.locked_on.load(Ordering::Acquire)
    }

    /// Extends the lock to `ttl` from now on every server where it is still ours (at least
    /// 1 ms, at most a year); later watchdog renewals use `ttl` too. `true` when a majority
    /// renewed it within the new validity (which [`RedlockGuard::validity`] then reports);
    /// otherwise the guard is marked lost.
    pub fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("redlock.ttl", ttl, false)?;
        self.lease.set_ttl(ttl);
        let first = self.lock.inner.nodes.first().cloned();
        match first {
            Some(node) => self.lease.extend(&node, ttl),
            None => Ok(false),
        }
    }

    /// Releases the lock on every server. Returns whether it was still held on a majority.
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        Ok(self.release_everywhere())
    }

    fn release_everywhere(&self) -> bool {
        let was_held = self.lease.mark_released();
        let released = release_all(&self.lock.inner, &self.token);
        let majority = released >= self.lock.quorum();
        if !majority && was_held {
            if let Some(node) = self.lock.inner.nodes.first() {
                self.lease.signal_lost(
                    node,
                    &format!("found on only {released} server(s) at release"),
                );
            }
        }
        majority
    }
}

impl Drop for RedlockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.release_everywhere();
    }
}
