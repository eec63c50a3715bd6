//! A lock-free latency histogram: log-linear buckets in atomics, over a sliding window.
//!
//! Recording is one relaxed atomic add (plus a relaxed load of the bank index). Buckets are
//! 8 per power of two of microseconds, so a percentile is off by at most 1/8 (12.5%) of its
//! value; the range is 1 µs to about 2.4 hours; longer values count in the last bucket.
//!
//! Two banks cover the window: values go into the current bank; every `window` the older bank
//! is cleared and becomes the current one. Percentiles are read over both banks, so they
//! describe the last one to two windows, not the whole life of the process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear part.
const OCTAVES: usize = 30;
const BUCKETS: usize = SUB as usize * (OCTAVES + 1);

/// Percentiles of a latency histogram, from [`Stats`](crate::Stats).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    /// Values in the window.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value in the window (to bucket precision).
    pub max: Duration,
}

#[derive(Debug)]
pub(crate) struct Histogram {
    banks: [Box<[AtomicU64; BUCKETS]>; 2],
    current: AtomicUsize,
    window: Duration,
    rotated: Mutex<Instant>,
}

fn bank() -> Box<[AtomicU64; BUCKETS]> {
    Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
}

/// The bucket of a value in microseconds.
fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (us >> shift) & (SUB - 1);
    let index = (shift as usize + 1) * SUB as usize + sub as usize;
    index.min(BUCKETS - 1)
}

/// The upper bound (in microseconds) of the values in a bucket.
fn bucket_high(index: usize) -> u64 {
    let sub = index as u64 % SUB;
    let group = index as u64 / SUB;
    if group == 0 {
        return sub;
    }
    let shift = group - 1;
    ((SUB + sub + 1) << shift) - 1
}

impl Histogram {
    pub(crate) fn new(window: Duration) -> Histogram {
        Histogram {
            banks: [bank(), bank()],
            current: AtomicUsize::new(0),
            window,
            rotated: Mutex::new(Instant::now()),
        }
    }

    /// Records one value.
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bank = self.current.load(Relaxed) & 1;
        self.banks[bank][bucket_of(us)].fetch_add(1, Relaxed);
    }

    /// Starts a new window when the current one is over (called from time to time by readers
    /// and by the heartbeat thread, never on the recording path).
    pub(crate) fn maybe_rotate(&self, now: Instant) {
        let Some(mut rotated) = self.rotated.try_lock() else {
            return;
        };
        if now.saturating_duration_since(*rotated) < self.window {
            return;
        }
        *rotated = now;
        let next = (self.current.load(Relaxed) + 1) & 1;
        for b in self.banks[next].iter() {
            b.store(0, Relaxed);
        }
        self.current.store(next, Relaxed);
    }

    /// Percentiles over the last one to two windows.
    pub(crate) fn latency(&self) -> Latency {
        let mut counts = [0u64; BUCKETS];
        for bank in &self.banks {
            for (c, b) in counts.iter_mut().zip(bank.iter()) {
                *c += b.load(Relaxed);
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Latency::default();
        }
        let at = |q: f64| -> Duration {
            // The rank of the q-th value, 1-based.
            let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_micros(bucket_high(i));
                }
            }
            Duration::from_micros(bucket_high(BUCKETS - 1))
        };
        Latency {
            count: total,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 20, 1 << 30, u64::MAX / 2]) {
            let b = bucket_of(us);
            assert!(b >= last || us > 100_000, "bucket order at {us}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(bucket_high(b) >= us, "{us} above its bucket's bound");
                // Precision: the bound is within 1/8 of the value.
                assert!(bucket_high(b) as f64 <= us as f64 * 1.125 + 1.0, "{us}");
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::new(Duration::from_secs(60));
        assert_eq!(h.latency(), Latency::default());
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let l = h.latency();
        assert_eq!(l.count, 1000);
        let near = |d: Duration, want: u64| {
            let got = d.as_micros() as f64;
            assert!(
                got >= want as f64 && got <= want as f64 * 1.13,
                "{got} vs {want}"
            );
        };
        near(l.p50, 500);
        near(l.p99, 990);
        near(l.max, 1000);
    }

    #[test]
    fn the_window_forgets_old_values() {
        let h = Histogram::new(Duration::from_millis(10));
        h.record(Duration::from_secs(1));
        let t0 = Instant::now();
        h.maybe_rotate(t0 + Duration::from_millis(20));
        h.record(Duration::from_micros(100));
        // Both banks are read: the old value is still there.
        assert_eq!(h.latency().count, 2);
        h.maybe_rotate(t0 + Duration::from_millis(40));
        let l = h.latency();
        assert_eq!(l.count, 1);
        assert!(l.max < Duration::from_millis(1));
    }
}
