//! How a call through the handle runs: breaker, connection (pooled or multiplexed), attempt,
//! classification, retry, all within one deadline.
//!
//! A call ends by its retry deadline ([`RetryPolicy::max_elapsed`] after it started) plus
//! one response timeout, attempts, checkouts and backoff sleeps included: no attempt starts
//! after the retry deadline, and no read or write of any attempt goes past the retry
//! deadline plus one response timeout (the *cap* every connection is given).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;

use super::calls::Calls;
use super::mux::MuxCall;
use super::Redis;
use crate::breaker::Breaker;
use crate::error::{Delivery, Error, ErrorClass, Result};
use crate::pool::PooledConnection;
use crate::retry::RetryPolicy;
use crate::telemetry::{CallSpan, Op};
use crate::util::time;

impl Redis {
    /// The heart of every call on a pooled connection: breaker, checkout, attempt,
    /// classification, retry.
    ///
    /// `idempotent` is asked only when a failure's fate is unknown, so working it out costs
    /// nothing on the happy path.
    pub(crate) fn execute<T>(
        &self,
        what: Op<'_>,
        idempotent: impl Fn() -> bool,
        mut op: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        self.execute_with(what, idempotent, |deadline, cap| {
            self.on_pool(&mut op, deadline, cap)
        })
    }

    /// A call whose commands may share the multiplexed connection (when the handle has one
    /// and `muxable` says the commands can share a connection); otherwise like
    /// [`Redis::execute`].
    pub(crate) fn execute_call<T>(
        &self,
        what: Op<'_>,
        idempotent: impl Fn() -> bool,
        muxable: bool,
        mut op: impl FnMut(&mut dyn Calls) -> Result<T>,
    ) -> Result<T> {
        match (&self.inner.mux, muxable) {
            (Some(mux), true) => self.execute_with(what, idempotent, |_, cap| {
                let mut call = MuxCall::new(self, mux, cap)?;
                op(&mut call)
            }),
            _ => self.execute_with(what, idempotent, |deadline, cap| {
                self.on_pool(&mut |con: &mut PooledConnection| op(con), deadline, cap)
            }),
        }
    }

    /// `what` names the call for its `tracing` span (feature `tracing`; nothing otherwise).
    fn execute_with<T>(
        &self,
        what: Op<'_>,
        idempotent: impl Fn() -> bool,
        mut attempt: impl FnMut(Instant, Instant) -> Result<T>,
    ) -> Result<T> {
        let policy: &RetryPolicy = &self.inner.config.retry;
        let start = Instant::now();
        let span = CallSpan::start(&self.inner.config, || self.target(), what);
        let _entered = span.enter();
        let deadline = time::add(start, policy.max_elapsed);
        let cap = time::add(deadline, self.inner.config.timeouts.response);
        let mut delays = None;
        let mut n = 1;
        let state = self.inner.pool.state();
        let result = loop {
            // While a Sentinel failover is underway, wait for the new master (see
            // `crate::sentinel`): nothing goes to the old one.
            let held = match &state.sentinel {
                Some(s) => s.wait_for_failover(deadline),
                None => Ok(()),
            };
            match held.and_then(|()| self.guarded(|| attempt(deadline, cap))) {
                Ok(v) => break Ok(v),
                Err(e) => {
                    // A replica handle's READONLY is final: the write went to a replica
                    // on purpose.
                    let final_read_only = e.class() == ErrorClass::ReadOnly
                        && self.inner.pool.state().read_only_expected();
                    if n < policy.max_attempts
                        && !final_read_only
                        && RetryPolicy::is_retry_safe_with(&e, &idempotent)
                    {
                        let delay = delays
                            .get_or_insert_with(|| policy.backoff.delays())
                            .next_delay();
                        if time::after(delay) < deadline {
                            log::debug!("retrying after {e} in {delay:?} (attempt {n})");
                            std::thread::sleep(delay);
                            n += 1;
                            self.inner
                                .observed
                                .counters
                                .retries
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    self.inner.observed.counters.error(e.class());
                    break Err(e);
                }
            }
        };
        let took = start.elapsed();
        self.inner.observed.command_latency.record(took);
        self.inner.observed.export.call(took);
        span.finish(n, &result);
        result
    }

    /// Where the handle's commands go: the current Sentinel master (or replica), the first
    /// Cluster seed, or the configured address.
    fn target(&self) -> crate::config::Addr {
        let config = &self.inner.config;
        if let Some(addr) = self.sentinel_master() {
            return addr;
        }
        if let Some((host, port)) = config.cluster().and_then(|c| c.seeds().first()) {
            return crate::config::Addr::Tcp {
                host: host.clone(),
                port: *port,
            };
        }
        config.addr.clone()
    }

    /// One attempt through the circuit breaker (a cluster's nodes have breakers of their
    /// own: a dead master must not fail the others, see `crate::cluster`).
    fn guarded<T>(&self, attempt: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_open()?;
        if self.inner.pool.state().cluster.is_some() {
            return attempt();
        }
        let breaker = &*self.inner.breaker;
        let (admission, transition) = match breaker.admit() {
            Ok(a) => a,
            Err(e) => {
                self.inner
                    .observed
                    .counters
                    .breaker_rejected
                    .fetch_add(1, Ordering::Relaxed);
                self.inner.pool.state().demand();
                return Err(e);
            }
        };
        self.inner.observed.breaker_changed(transition);
        // A half-open probe whose closure panics must still be accounted for, or the breaker
        // would wait for it forever.
        let mut guard = ProbeGuard {
            breaker,
            admission: Some(admission),
        };
        let generation = &self.inner.pool.state().generation;
        let stamp = generation.current();
        let result = attempt();
        // A failure on connections retired meanwhile (a failover, an outage the heartbeat
        // saw end) is the old server's: it does not count against the new one.
        let failed = matches!(&result, Err(e) if e.class().is_infrastructure())
            && !generation.is_retired(stamp);
        if let Some(admission) = guard.admission.take() {
            self.inner
                .observed
                .breaker_changed(breaker.record(admission, failed));
        }
        result
    }

    /// Runs `op` on a pooled connection, capped at `cap` (a multiplexed call that needs the
    /// pool: a transaction on a cluster).
    pub(super) fn on_pool_by<T>(
        &self,
        cap: Instant,
        mut op: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        self.on_pool(&mut op, cap, cap)
    }

    /// Runs `op` on a pooled connection checked out by `deadline`, capped at `cap`.
    fn on_pool<T>(
        &self,
        op: &mut impl FnMut(&mut PooledConnection) -> Result<T>,
        deadline: Instant,
        cap: Instant,
    ) -> Result<T> {
        let checkout = self
            .inner
            .config
            .timeouts
            .checkout
            .min(time::left(deadline))
            .max(Duration::from_millis(1));
        let mut con = self.inner.pool.checkout(checkout)?;
        con.set_cap(Some(cap));
        con.set_prefix(self.auto_prefix().cloned());
        op(&mut con)
    }

    /// On the `ConnectionLike` surface error replies reach the caller as values (the `redis`
    /// crate turns them into errors later): count them here.
    pub(crate) fn count_error_replies(&self, values: &[Value]) {
        for v in values {
            if let Value::ServerError(e) = v {
                let e = Error::from_redis(e.clone().into(), Delivery::Answered);
                self.inner.observed.counters.error(e.class());
            }
        }
    }
}

struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    admission: Option<crate::breaker::Admission>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.breaker.record(admission, true);
        }
    }
}
