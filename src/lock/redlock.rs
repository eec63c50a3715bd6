//! [`Redlock`]: a lock held on a majority of independent Redis servers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::wait::millis;
use super::{check_name, check_ttl, drift, tagged};
use crate::error::{Error, Result};
use crate::retry::SplitMix64;
use crate::script::static_script;
use crate::Redis;

static_script!(acquire_script, "redlock_acquire.lua");

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
}

impl RedlockBuilder {
    /// How long the lock is held on each server unless extended. Defaults to 30 s.
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

    /// The largest random delay between two attempts of a waiting acquire. Defaults to
    /// 50 ms.
    pub fn retry_delay(mut self, d: Duration) -> RedlockBuilder {
        self.retry_delay = d;
        self
    }

    /// The key prefix, before the lock's name. Defaults to `redkit:redlock:`.
    pub fn prefix(mut self, prefix: &str) -> RedlockBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Redlock> {
        check_name("redlock.name", &self.name)?;
        check_ttl("redlock.ttl", self.ttl, false)?;
        if self.nodes.is_empty() {
            return Err(Error::config("redlock.nodes", "needs at least one server"));
        }
        if self.node_timeout.is_zero() || self.node_timeout >= self.ttl {
            return Err(Error::config(
                "redlock.node_timeout",
                "must be greater than zero and smaller than the TTL",
            ));
        }
        if self.retry_delay.is_zero() {
            return Err(Error::config(
                "redlock.retry_delay",
                "must be greater than zero",
            ));
        }
        let keys = self
            .nodes
            .iter()
            .map(|n| n.key(&tagged(&self.prefix, &self.name)))
            .collect();
        Ok(Redlock {
            inner: Arc::new(Inner {
                nodes: self.nodes,
                keys,
                ttl: self.ttl,
                wait: self.wait,
                node_timeout: self.node_timeout,
                retry_delay: self.retry_delay,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Redis>,
    /// The lock's key on each node (each handle may have its own key prefix).
    keys: Vec<String>,
    ttl: Duration,
    wait: Duration,
    node_timeout: Duration,
    retry_delay: Duration,
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
/// It has no fencing token (there is no single counter to take one from): pair it with a
/// resource that checks its own versions, or use [`Lock`](super::Lock)'s fencing where one
/// server is enough.
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
        Ok(self.attempt(&token))
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
            if let Some(guard) = self.attempt(&token) {
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

    fn attempt(&self, token: &str) -> Option<RedlockGuard> {
        let inner = &*self.inner;
        let start = Instant::now();
        let mut locked = 0;
        for (node, key) in inner.nodes.iter().zip(&inner.keys) {
            let call = acquire_script().key(key).arg(token).arg(millis(inner.ttl));
            match on_node(node, inner.node_timeout, |con| call.invoke::<i64>(con)) {
                Ok(1) => locked += 1,
                Ok(_) => {}
                Err(e) => debug!("redlock {key}: a server failed: {e}"),
            }
        }
        let elapsed = start.elapsed();
        let validity = inner
            .ttl
            .saturating_sub(elapsed)
            .saturating_sub(drift(inner.ttl));
        if locked >= self.quorum() && !validity.is_zero() {
            return Some(RedlockGuard {
                lock: self.clone(),
                token: token.to_owned(),
                valid_until: start + inner.ttl - drift(inner.ttl),
                locked_on: locked,
                done: false,
            });
        }
        // Lost: release everywhere, also where the reply may have been lost.
        release_all(inner, token);
        None
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
    valid_until: Instant,
    locked_on: usize,
    done: bool,
}

impl std::fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("locked_on", &self.locked_on)
            .field("validity", &self.validity())
            .finish_non_exhaustive()
    }
}

impl RedlockGuard {
    /// How long the lock is surely still held (TTL minus the time the acquisition or the last
    /// extension took minus the drift allowance, counted from then); zero once passed.
    pub fn validity(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Whether the validity has not run out yet.
    pub fn is_held(&self) -> bool {
        !self.validity().is_zero()
    }

    /// On how many servers the acquisition (or the last extension) succeeded.
    pub fn locked_on(&self) -> usize {
        self.locked_on
    }

    /// Extends the lock to `ttl` from now on every server where it is still ours. `true`
    /// when a majority renewed it within the new validity (which [`RedlockGuard::validity`]
    /// then reports).
    pub fn extend(&mut self, ttl: Duration) -> Result<bool> {
        check_ttl("redlock.ttl", ttl, false)?;
        let inner = &*self.lock.inner;
        let start = Instant::now();
        let mut renewed = 0;
        for (node, key) in inner.nodes.iter().zip(&inner.keys) {
            let call = extend_script().key(key).arg(&self.token).arg(millis(ttl));
            if let Ok(1) = on_node(node, inner.node_timeout, |con| call.invoke::<i64>(con)) {
                renewed += 1;
            }
        }
        let until = start + ttl - drift(ttl);
        if renewed >= self.lock.quorum() && Instant::now() < until {
            self.valid_until = until;
            self.locked_on = renewed;
            return Ok(true);
        }
        Ok(false)
    }

    /// Releases the lock on every server. Returns whether it was still held on a majority.
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        let released = release_all(&self.lock.inner, &self.token);
        Ok(released >= self.lock.quorum())
    }
}

impl Drop for RedlockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let released = release_all(&self.lock.inner, &self.token);
        if released < self.lock.quorum() {
            warn!(
                "redlock {}: released on only {released} server(s); the rest expire with the TTL",
                self.lock
                    .inner
                    .keys
                    .first()
                    .map(String::as_str)
                    .unwrap_or("")
            );
        }
    }
}
