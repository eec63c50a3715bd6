//! Circuit breaker settings (the breaker itself lives in `crate::breaker`).

use std::time::Duration;

use crate::error::{Error, Result};

/// The state of a circuit breaker.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast with [`Error::CircuitOpen`] without touching the network.
    Open,
    /// A limited number of probe calls go through; their outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    pub(crate) fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Trip on a failure rate: at least `min_calls` calls in the last `window`, of which at least
/// `rate` (0.0 to 1.0) failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Fraction of failed calls that trips the breaker.
    pub rate: f64,
    /// Fewest calls in the window before the rate is judged.
    pub min_calls: u32,
    /// The sliding window.
    pub window: Duration,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub(crate) enabled: bool,
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_rate: Option<FailureRate>,
    pub(crate) open_for: Duration,
    pub(crate) half_open_probes: u32,
}

impl Default for BreakerConfig {
    /// Enabled; trips after 5 consecutive failures; open for 5 s; 1 probe call.
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: None,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// A breaker that never opens.
    pub fn disabled() -> BreakerConfig {
        BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        }
    }

    /// Trip after this many consecutive failures. Defaults to 5. Must be at least 1.
    pub fn consecutive_failures(mut self, n: u32) -> BreakerConfig {
        self.consecutive_failures = n;
        self
    }

    /// Also trip on a failure rate over a sliding window. Defaults to off.
    pub fn failure_rate(mut self, rate: f64, min_calls: u32, window: Duration) -> BreakerConfig {
        self.failure_rate = Some(FailureRate {
            rate,
            min_calls,
            window,
        });
        self
    }

    /// How long the breaker stays open before letting probes through. Defaults to 5 s.
    pub fn open_for(mut self, d: Duration) -> BreakerConfig {
        self.open_for = d;
        self
    }

    /// How many successful probe calls in the half-open state close the breaker (and how many
    /// may run at once). Defaults to 1.
    pub fn half_open_probes(mut self, n: u32) -> BreakerConfig {
        self.half_open_probes = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.consecutive_failures == 0 {
            return Err(Error::config(
                "breaker.consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(Error::config(
                "breaker.half_open_probes",
                "must be at least 1",
            ));
        }
        if self.open_for.is_zero() {
            return Err(Error::config(
                "breaker.open_for",
                "must be greater than zero",
            ));
        }
        if let Some(r) = self.failure_rate {
            if !(r.rate > 0.0 && r.rate <= 1.0) {
                return Err(Error::config(
                    "breaker.failure_rate",
                    format!("rate must be in (0, 1], got {}", r.rate),
                ));
            }
            if r.window.is_zero() || r.min_calls == 0 {
                return Err(Error::config(
                    "breaker.failure_rate",
                    "window and min_calls must be greater than zero",
                ));
            }
        }
        Ok(())
    }
}
