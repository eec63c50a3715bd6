//! Which commands the near cache keeps: read-only commands of one key whose reply depends
//! on nothing but that key's value (no clock, no randomness, no other key).

/// The commands [`NearCache::query`](super::NearCache::query) caches, upper-case. Each takes
/// its key as the first argument.
pub(crate) const CACHEABLE: &[&str] = &[
    "BITCOUNT",
    "BITPOS",
    "EXISTS",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HSTRLEN",
    "HVALS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "SCARD",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "STRLEN",
    "TYPE",
    "XLEN",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCORE",
];

/// How a cacheable command is kept.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET key`: under the key itself.
    Get,
    /// Another cacheable read: under the whole packed command.
    Other,
}

/// The upper-case name of `name` when it is cacheable with `argc` arguments (name
/// included), and how it is kept.
pub(crate) fn cacheable(name: &[u8], argc: usize) -> Option<Kind> {
    let mut buf = [0u8; 20];
    let upper = buf.get_mut(..name.len())?;
    for (d, s) in upper.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    let upper: &[u8] = upper;
    if argc < 2 || !CACHEABLE.iter().any(|c| c.as_bytes() == upper) {
        return None;
    }
    match upper {
        b"GET" if argc == 2 => Some(Kind::Get),
        b"GET" => None,
        // One key only: with several, the reply depends on several keys.
        b"EXISTS" if argc != 2 => None,
        _ => Some(Kind::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_commands_are_cached() {
        assert_eq!(cacheable(b"get", 2), Some(Kind::Get));
        assert_eq!(cacheable(b"GET", 3), None);
        assert_eq!(cacheable(b"HGETALL", 2), Some(Kind::Other));
        assert_eq!(cacheable(b"exists", 2), Some(Kind::Other));
        assert_eq!(cacheable(b"EXISTS", 3), None);
        assert_eq!(cacheable(b"SET", 3), None);
        assert_eq!(cacheable(b"TTL", 2), None);
        assert_eq!(cacheable(b"SRANDMEMBER", 2), None);
        assert_eq!(cacheable(b"GET", 1), None);
        assert_eq!(cacheable(b"AVERYLONGCOMMANDNAMEINDEED", 2), None);
        let mut sorted = CACHEABLE.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, CACHEABLE, "kept sorted");
    }
}
