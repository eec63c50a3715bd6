//! Random ids and tokens, from the operating system's generator (`getrandom`).
//!
//! Lock tokens, lease ids, job ids and session ids all come from here: 128 random bits, never
//! a clock, a process id or a counter that another process could repeat.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Fills `buf` with random bytes. Should the operating system's generator fail (it does not
/// on any supported platform), falls back to SipHash with random keys over a counter and
/// the clock, which still never repeats within a process.
pub(crate) fn fill(buf: &mut [u8]) {
    if getrandom::fill(buf).is_ok() {
        return;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(nanos);
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A random 64-bit number.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

/// A random number in (0, 1].
pub(crate) fn unit_random() -> f64 {
    // 53 random bits, shifted into (0, 1].
    ((random_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// `n` random bytes as `2n` lower-case hex digits.
pub(crate) fn hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill(&mut bytes);
    let mut out = String::with_capacity(n * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// A random 128-bit token as 32 hex digits (lock tokens, lease ids, job ids).
pub(crate) fn token() -> String {
    hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = token();
        let b = token();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn unit_randoms_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(xs.iter().all(|x| *x > 0.0 && *x <= 1.0));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
