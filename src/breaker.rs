//! Circuit breaker: closed, open, half-open.
//!
//! Only failures of the infrastructure count (connection, timeout, busy server, pool checkout
//! timeout, protocol errors); an error reply such as `WRONGTYPE` is a success as far as the
//! breaker is concerned: the server is up and answering.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) use crate::config::{BreakerConfig, BreakerState};
use crate::error::Error;

/// A state change of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct Inner {
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Sliding window as buckets of (bucket start, calls, failures).
    window: [(Option<Instant>, u32, u32); BUCKETS],
}

/// The breaker. Cheap on the happy path: closed-state admission is one atomic load.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    inner: Mutex<Inner>,
}

/// What `admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A normal call.
    Call,
    /// A half-open probe call: its outcome must be reported.
    Probe,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: AtomicU8::new(BreakerState::Closed.as_u8()),
            consecutive: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                opened_at: None,
                probes_in_flight: 0,
                probe_successes: 0,
                window: [(None, 0, 0); BUCKETS],
            }),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to make a call. `Err` means fail fast; `Ok(Some(t))` reports a transition.
    /// Reads the clock only when the breaker is not closed.
    pub(crate) fn admit(&self) -> Result<(Admission, Option<Transition>), Error> {
        if !self.config.enabled || self.state() == BreakerState::Closed {
            return Ok((Admission::Call, None));
        }
        self.admit_at(Instant::now())
    }

    pub(crate) fn admit_at(&self, now: Instant) -> Result<(Admission, Option<Transition>), Error> {
        if !self.config.enabled || self.state() == BreakerState::Closed {
            return Ok((Admission::Call, None));
        }
        let mut inner = self.inner.lock();
        let mut transition = None;
        if self.state() == BreakerState::Open {
            let opened = inner.opened_at.unwrap_or(now);
            let elapsed = now.saturating_duration_since(opened);
            if elapsed < self.config.open_for {
                return Err(Error::CircuitOpen {
                    retry_after: self.config.open_for - elapsed,
                });
            }
            inner.probes_in_flight = 0;
            inner.probe_successes = 0;
            transition = self.set_state(BreakerState::HalfOpen);
        }
        match self.state() {
            BreakerState::HalfOpen => {
                if inner.probes_in_flight >= self.config.half_open_probes {
                    return Err(Error::CircuitOpen {
                        retry_after: Duration::ZERO,
                    });
                }
                inner.probes_in_flight += 1;
                Ok((Admission::Probe, transition))
            }
            // Closed by a concurrent probe in the meantime.
            _ => Ok((Admission::Call, transition)),
        }
    }

    /// Reports the outcome of an admitted call (`failed` = an infrastructure failure). Reads
    /// the clock only when it matters.
    pub(crate) fn record(&self, admission: Admission, failed: bool) -> Option<Transition> {
        if !self.config.enabled
            || (!failed
                && admission == Admission::Call
                && self.config.failure_rate.is_none()
                && self.consecutive.load(Ordering::Relaxed) == 0)
        {
            return None;
        }
        self.record_at(admission, failed, Instant::now())
    }

    pub(crate) fn record_at(
        &self,
        admission: Admission,
        failed: bool,
        now: Instant,
    ) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        if admission == Admission::Probe {
            let mut inner = self.inner.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if self.state() != BreakerState::HalfOpen {
                return None;
            }
            if failed {
                return self.open(&mut inner, now);
            }
            inner.probe_successes += 1;
            if inner.probe_successes >= self.config.half_open_probes {
                self.consecutive.store(0, Ordering::Relaxed);
                inner.window = [(None, 0, 0); BUCKETS];
                return self.set_state(BreakerState::Closed);
            }
            return None;
        }
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            if self.config.failure_rate.is_some() {
                self.count(now, false);
            }
            return None;
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let rate_tripped = self.config.failure_rate.is_some() && self.count(now, true);
        if (consecutive >= self.config.consecutive_failures || rate_tripped)
            && self.state() == BreakerState::Closed
        {
            let mut inner = self.inner.lock();
            if self.state() == BreakerState::Closed {
                return self.open(&mut inner, now);
            }
        }
        None
    }

    /// Closes the breaker and forgets past failures (the server is known to answer again).
    pub(crate) fn reset(&self) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock();
        inner.opened_at = None;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        inner.window = [(None, 0, 0); BUCKETS];
        self.consecutive.store(0, Ordering::Relaxed);
        self.set_state(BreakerState::Closed)
    }

    /// Opens the breaker now (a health check found the server gone): calls fail fast until
    /// its open time has passed, then probe as usual.
    pub(crate) fn trip(&self) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock();
        self.open(&mut inner, Instant::now())
    }

    fn open(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        inner.opened_at = Some(now);
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        self.set_state(BreakerState::Open)
    }

    fn set_state(&self, to: BreakerState) -> Option<Transition> {
        let from = BreakerState::from_u8(self.state.swap(to.as_u8(), Ordering::AcqRel));
        (from != to).then_some(Transition { from, to })
    }

    /// Counts a call in the sliding window; returns whether the failure rate trips.
    fn count(&self, now: Instant, failed: bool) -> bool {
        let Some(rate) = self.config.failure_rate else {
            return false;
        };
        let bucket_len = rate.window / BUCKETS as u32;
        let mut inner = self.inner.lock();
        // Find the current bucket or recycle the oldest one.
        let current = inner.window.iter().position(|(start, _, _)| {
            start.is_some_and(|s| now.saturating_duration_since(s) < bucket_len)
        });
        let idx = match current {
            Some(i) => i,
            None => {
                let oldest = inner
                    .window
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (start, _, _))| *start)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                inner.window[oldest] = (Some(now), 0, 0);
                oldest
            }
        };
        inner.window[idx].1 += 1;
        if failed {
            inner.window[idx].2 += 1;
        }
        let (calls, failures) = inner
            .window
            .iter()
            .filter(|(start, _, _)| {
                start.is_some_and(|s| now.saturating_duration_since(s) < rate.window)
            })
            .fold((0u32, 0u32), |(c, f), (_, bc, bf)| (c + bc, f + bf));
        calls >= rate.min_calls && f64::from(failures) >= rate.rate * f64::from(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_and_closes() {
        let b = Breaker::new(
            BreakerConfig::default()
                .consecutive_failures(3)
                .open_for(ms(100)),
        );
        let t0 = Instant::now();
        for i in 0..2 {
            let (a, _) = b.admit_at(t0).unwrap();
            assert_eq!(b.record_at(a, true, t0), None, "failure {i}");
        }
        let (a, _) = b.admit_at(t0).unwrap();
        let t = b.record_at(a, true, t0).unwrap();
        assert_eq!(t.to, BreakerState::Open);
        assert!(matches!(
            b.admit_at(t0 + ms(50)),
            Err(Error::CircuitOpen { .. })
        ));
        let (a, t) = b.admit_at(t0 + ms(100)).unwrap();
        assert_eq!(a, Admission::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        // A second concurrent probe is refused.
        assert!(b.admit_at(t0 + ms(101)).is_err());
        let t = b.record_at(a, false, t0 + ms(102)).unwrap();
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(b.admit_at(t0 + ms(103)).unwrap().0, Admission::Call);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(
            BreakerConfig::default()
                .consecutive_failures(1)
                .open_for(ms(10)),
        );
        let t0 = Instant::now();
        let (a, _) = b.admit_at(t0).unwrap();
        b.record_at(a, true, t0);
        let (a, _) = b.admit_at(t0 + ms(10)).unwrap();
        let t = b.record_at(a, true, t0 + ms(11)).unwrap();
        assert_eq!(t.to, BreakerState::Open);
        assert!(b.admit_at(t0 + ms(15)).is_err());
    }

    #[test]
    fn successes_reset_the_consecutive_count() {
        let b = Breaker::new(BreakerConfig::default().consecutive_failures(2));
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record_at(Admission::Call, true, t0);
            b.record_at(Admission::Call, false, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failure_rate_trips() {
        let b = Breaker::new(
            BreakerConfig::default()
                .consecutive_failures(1000)
                .failure_rate(0.5, 10, Duration::from_secs(1)),
        );
        let t0 = Instant::now();
        let mut opened = false;
        for i in 0..10 {
            b.record_at(Admission::Call, false, t0 + ms(i));
            if b.record_at(Admission::Call, true, t0 + ms(i)).is_some() {
                opened = true;
            }
        }
        assert!(opened);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(
            BreakerConfig::default()
                .consecutive_failures(1000)
                .failure_rate(0.5, 4, Duration::from_millis(100)),
        );
        let t0 = Instant::now();
        b.record_at(Admission::Call, true, t0);
        b.record_at(Admission::Call, true, t0);
        // Far later: only successes in the window.
        for i in 0..4 {
            b.record_at(Admission::Call, false, t0 + ms(500 + i));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn reset_closes_and_forgets() {
        let b = Breaker::new(BreakerConfig::default().consecutive_failures(2));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.record_at(Admission::Call, true, t0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let t = b.reset().expect("a transition");
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::Closed));
        assert!(b.admit_at(t0).is_ok());
        // One failure after the reset does not trip it again.
        b.record_at(Admission::Call, true, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.reset().is_none(), "already closed");
    }

    #[test]
    fn disabled_never_opens() {
        let b = Breaker::new(BreakerConfig::disabled().consecutive_failures(1));
        let t0 = Instant::now();
        for _ in 0..10 {
            b.record_at(Admission::Call, true, t0);
        }
        assert!(b.admit_at(t0).is_ok());
    }
}
