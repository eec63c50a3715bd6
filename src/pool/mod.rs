//! The connection pool: r2d2 over our own connection manager, and the checkout rules.
//!
//! While connecting fails, a caller does not wait out the checkout timeout for a connection
//! that cannot come: it tries one connection itself (within the connect timeout) and fails
//! fast with that error, or, when the server is back, clears the failing state and gets a
//! fresh connection at once.

mod link;
mod manager;
mod pooled;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use link::Link;
pub(crate) use manager::{Manager, PoolState, RawConn, Signal};
pub use pooled::PooledConnection;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::util::time;

/// How long one wait on the pool lasts before checking whether connecting fails.
const CHECKOUT_SLICE: Duration = Duration::from_millis(50);

/// The pool of one handle.
/// What [`Pool::sampler`] returns.
pub(crate) type PoolSampler = Box<dyn Fn() -> (r2d2::State, u32) + Send>;

pub(crate) struct Pool {
    r2d2: r2d2::Pool<Manager>,
    state: Arc<PoolState>,
    /// Opens connections outside the pool while connecting fails (see [`Pool::checkout`]).
    probe: Manager,
    response: Duration,
    max_size: u32,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("state", &self.r2d2.state())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool that fills in the background (none of its connections is opened here).
    pub(crate) fn new(config: &Config, manager: Manager) -> Pool {
        let state = manager.state().clone();
        let threads = Arc::new(
            scheduled_thread_pool::ScheduledThreadPool::builder()
                .num_threads(2)
                .thread_name_pattern("redkit-pool-{}")
                .on_drop_behavior(
                    scheduled_thread_pool::OnPoolDropBehavior::DiscardPendingScheduled,
                )
                .build(),
        );
        let r2d2 = r2d2::Pool::builder()
            .max_size(config.pool.max_size)
            .min_idle(Some(config.pool.min_idle))
            .idle_timeout(config.pool.idle_timeout)
            .max_lifetime(config.pool.max_lifetime)
            .connection_timeout(config.timeouts.checkout)
            // Our `is_valid` is two atomic loads, not a PING.
            .test_on_check_out(true)
            .thread_pool(threads)
            .error_handler(Box::new(manager::QuietErrors))
            .event_handler(Box::new(manager::Events(state.clone())))
            .build_unchecked(manager.clone());
        Pool {
            r2d2,
            state,
            probe: manager,
            response: config.timeouts.response,
            max_size: config.pool.max_size,
        }
    }

    pub(crate) fn state(&self) -> &Arc<PoolState> {
        &self.state
    }

    /// r2d2's counts.
    pub(crate) fn r2d2_state(&self) -> r2d2::State {
        self.r2d2.state()
    }

    pub(crate) fn max_size(&self) -> u32 {
        self.max_size
    }

    /// Reads the pool's state and size from another thread (the heartbeat, which publishes
    /// metrics), without the rest of the pool.
    pub(crate) fn sampler(&self) -> PoolSampler {
        let (r2d2, max_size) = (self.r2d2.clone(), self.max_size);
        Box::new(move || (r2d2.state(), max_size))
    }

    fn wrap(&self, conn: r2d2::PooledConnection<Manager>) -> PooledConnection {
        PooledConnection::new(conn, self.state.clone(), self.response)
    }

    /// An idle connection if one is ready; never blocks.
    pub(crate) fn try_get(&self) -> Option<PooledConnection> {
        if self.state.is_closed() {
            return None;
        }
        self.r2d2.try_get().map(|c| self.wrap(c))
    }

    /// Checks a connection out, waiting at most `timeout` (errors are not counted here: the
    /// caller counts what reaches its own caller).
    pub(crate) fn checkout(&self, timeout: Duration) -> Result<PooledConnection> {
        let c = &self.state.observed.counters;
        // Fast path: an idle connection, no clock, no waiting bookkeeping.
        if let Some(conn) = self.r2d2.try_get() {
            c.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(self.wrap(conn));
        }
        let start = Instant::now();
        let deadline = time::add(start, timeout);
        c.waiting.fetch_add(1, Ordering::Relaxed);
        let got = loop {
            if self.state.is_closed() {
                break Err(Error::Closed);
            }
            if self.state.connect_failing() {
                if let Some(conn) = self.r2d2.try_get() {
                    break Ok(conn);
                }
                if let Err(e) = self.probe.probe() {
                    self.state.demand();
                    break Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                c.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                self.state
                    .observed
                    .events
                    .emit(Event::PoolExhausted { waited: timeout });
                break Err(Error::PoolTimeout { waited: timeout });
            }
            // Wait in slices so that a connect failure seen meanwhile ends the wait early.
            if let Ok(conn) = self.r2d2.get_timeout((deadline - now).min(CHECKOUT_SLICE)) {
                break Ok(conn);
            }
        };
        c.waiting.fetch_sub(1, Ordering::Relaxed);
        let conn = got?;
        c.checkout_waited(start.elapsed());
        Ok(self.wrap(conn))
    }

    /// After [`PoolState::close`]: idle connections are closed now, busy ones when they
    /// come back. Waits at most `bound` for connections being opened right now (one that
    /// completes later is closed at once: the manager refuses it).
    pub(crate) fn drain(&self, bound: Duration) {
        // Every idle connection fails validation now, so one `try_get` closes them all;
        // connections in use are closed when they come back. A connection the pool is
        // opening right now is refused when it completes; wait for those (at most `bound`)
        // and close whatever reached the pool meanwhile.
        self.state.retire_connections();
        drop(self.r2d2.try_get());
        // A connection the pool made counts as created when `connect` returns, but reaches
        // the pool's idle list a moment later: wait until no connect is running and every
        // connection made is either in the pool (where `try_get` closes it) or closed.
        let deadline = time::after(bound);
        loop {
            drop(self.r2d2.try_get());
            let c = &self.state.observed.counters;
            let alive = c
                .conns_created
                .load(Ordering::Acquire)
                .saturating_sub(c.conns_closed.load(Ordering::Acquire));
            let in_pool = u64::from(self.r2d2.state().connections);
            let settled = self.state.connecting.load(Ordering::Acquire) == 0 && alive <= in_pool;
            let idle = self.r2d2.state().idle_connections;
            if (settled && idle == 0) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
