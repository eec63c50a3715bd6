//! How a call through the handle runs: breaker, checkout, attempt, classification, retry,
//! all within one deadline.
//!
//! A call ends by its retry deadline ([`RetryPolicy::max_elapsed`] after it started) plus
//! one response timeout, attempts, checkouts and backoff sleeps included: no attempt starts
//! after the retry deadline, and no read or write of any attempt goes past the retry
//! deadline plus one response timeout (the *cap* every pooled connection is given).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;

use super::Redis;
use crate::breaker::Breaker;
use crate::error::{Delivery, Error, ErrorClass, Result};
use crate::pool::PooledConnection;
use crate::retry::RetryPolicy;
use crate::util::time;

impl Redis {
    /// The heart of every call: breaker, checkout, attempt, classification, retry.
    ///
    /// `idempotent` is asked only when a failure's fate is unknown, so working it out costs
    /// nothing on the happy path.
    pub(crate) fn execute<T>(
        &self,
        idempotent: impl Fn() -> bool,
        op: impl FnMut(&mut PooledConnection) -> Result<T>,
    ) -> Result<T> {
        let policy: &RetryPolicy = &self.inner.config.retry;
        let start = Instant::now();
        let result = self.execute_from(start, idempotent, op, policy);
        self.inner.observed.command_latency.record(start.elapsed());
        result
    }

    fn execute_from<T>(
        &self,
        start: Instant,
        idempotent: impl Fn() -> bool,
        mut op: impl FnMut(&mut PooledConnection) -> Result<T>,
        policy: &RetryPolicy,
    ) -> Result<T> {
        let deadline = time::add(start, policy.max_elapsed);
        let cap = time::add(deadline, self.inner.config.timeouts.response);
        let mut delays = None;
        let mut attempt = 1;
        loop {
            match self.attempt(&mut op, deadline, cap) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // A replica handle's READONLY is final: the write went to a replica
                    // on purpose.
                    let final_read_only = e.class() == ErrorClass::ReadOnly
                        && self.inner.pool.state().read_only_expected();
                    if attempt < policy.max_attempts
                        && !final_read_only
                        && RetryPolicy::is_retry_safe_with(&e, &idempotent)
                    {
                        let delay = delays
                            .get_or_insert_with(|| policy.backoff.delays())
                            .next_delay();
                        if time::after(delay) < deadline {
                            log::debug!("retrying after {e} in {delay:?} (attempt {attempt})");
                            std::thread::sleep(delay);
                            attempt += 1;
                            self.inner
                                .observed
                                .counters
                                .retries
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    self.inner.observed.counters.error(e.class());
                    return Err(e);
                }
            }
        }
    }

    fn attempt<T>(
        &self,
        op: &mut impl FnMut(&mut PooledConnection) -> Result<T>,
        deadline: Instant,
        cap: Instant,
    ) -> Result<T> {
        self.check_open()?;
        let checkout = self
            .inner
            .config
            .timeouts
            .checkout
            .min(time::left(deadline))
            .max(Duration::from_millis(1));
        let mut run = |con: &mut PooledConnection| {
            con.set_cap(Some(cap));
            op(con)
        };
        if self.inner.pool.state().cluster.is_some() {
            // Each cluster node has a breaker of its own (a dead master must not fail the
            // others): see `crate::cluster`.
            return self
                .inner
                .pool
                .checkout(checkout)
                .and_then(|mut con| run(&mut con));
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
        let result = self
            .inner
            .pool
            .checkout(checkout)
            .and_then(|mut con| run(&mut con));
        let failed = matches!(&result, Err(e) if counts_against_breaker(e));
        if let Some(admission) = guard.admission.take() {
            self.inner
                .observed
                .breaker_changed(breaker.record(admission, failed));
        }
        result
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

/// Whether a failure says the server (or the path to it) is unwell: a value or reply over a
/// size limit says nothing about the server.
fn counts_against_breaker(e: &Error) -> bool {
    e.class().is_infrastructure()
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
