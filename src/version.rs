//! The server's flavor and version, and the features redkit needs from it.
//!
//! [`Redis::server_version`](crate::Redis::server_version) tells which server a handle talks
//! to: [Redis](ServerFlavor::Redis) or [Valkey](ServerFlavor::Valkey), its own version, and
//! the Redis version it is compatible with (every Valkey release so far reports
//! `redis_version:7.2.4` in `INFO`, next to its own `valkey_version`). Feature checks use the
//! Redis-compatible version.
//!
//! ```no_run
//! use redkit::version::Feature;
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! let server = redis.server_version()?;
//! println!("{server}"); // "Redis 7.0.15", "Valkey 8.1.8"
//! if !server.supports(Feature::ShardedPubSub) {
//!     eprintln!("no shard channels on {server}");
//! }
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! # Supported servers
//!
//! redkit runs on Redis 6.0 and later and on every Valkey release (7.2 and later). Its test
//! suite runs against Redis 6.0.9, 6.2.14, 7.0.15 and 7.4.1 and Valkey 8.1.8 and 9.1.2
//! (`scripts/test-servers.sh`).
//!
//! | feature of redkit | Redis | Valkey | on an older server |
//! |---|---|---|---|
//! | everything not listed below | 6.0 | 7.2 | - |
//! | [`ListQueue`](crate::ListQueue) | 6.0 | 7.2 | before 6.2: `BRPOPLPUSH`/`RPOPLPUSH` instead of `BLMOVE`/`LMOVE` (the same moves) |
//! | [`StreamQueue`](crate::StreamQueue) claims of dead consumers' jobs | 6.0 | 7.2 | before 7.0: `XPENDING` + `XCLAIM` in one script instead of `XAUTOCLAIM` (6.2's `XAUTOCLAIM` does not name the deleted entries it claims) |
//! | [`Subscriber::ssubscribe`](crate::pubsub::Subscriber::ssubscribe), [`Redis::spublish`](crate::Redis::spublish) (shard channels) | 7.0 | 7.2 | [`Error::ServerTooOld`], nothing sent |
//! | [`StreamQueue`](crate::StreamQueue) `lag` in [`QueueStats`](crate::queue::QueueStats) | 7.0 | 7.2 | `None` |
//! | TLS | 6.0 built with TLS | 7.2 built with TLS | - |
//!
//! [`Error::ServerTooOld`]: crate::Error::ServerTooOld
//!
//! [`Feature`] lists the commands that came after 6.0 with the version that brought each.
//! Jobs of a [`StreamQueue`](crate::StreamQueue) whose stream entries were trimmed
//! (`max_len`) or deleted (`XDEL`) while pending are acknowledged and skipped when claimed,
//! on every version, and counted in [`QueueStats::vanished`](crate::queue::QueueStats::vanished).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use redis::Value;

use crate::error::{Delivery, Error, Result};

mod handle;

/// The Redis version every Valkey release so far reports as `redis_version`.
const VALKEY_REDIS_COMPAT: (u16, u16, u16) = (7, 2, 4);

/// Which server: Redis or Valkey.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerFlavor {
    /// Redis (Redis Ltd.'s server, Redis Stack).
    Redis,
    /// Valkey (the Linux Foundation's fork of Redis 7.2.4).
    Valkey,
}

impl ServerFlavor {
    /// `"Redis"` or `"Valkey"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerFlavor::Redis => "Redis",
            ServerFlavor::Valkey => "Valkey",
        }
    }
}

impl fmt::Display for ServerFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server's flavor, version and Redis-compatible version.
///
/// Displays as `Redis 6.0.9` or `Valkey 8.1.8`, and parses back from that. Versions of one
/// flavor compare by number; a Redis and a Valkey version do not compare (`partial_cmp` is
/// `None`): use [`supports`](Self::supports) for what a server can do.
///
/// ```
/// use redkit::{ServerFlavor, ServerVersion};
/// use redkit::version::Feature;
///
/// let old = ServerVersion::new(ServerFlavor::Redis, 6, 0, 9);
/// let valkey: ServerVersion = "Valkey 8.1.8".parse()?;
/// assert_eq!(old.to_string(), "Redis 6.0.9");
/// assert!(old < ServerVersion::new(ServerFlavor::Redis, 6, 2, 0));
/// assert!(!old.supports(Feature::Lmove));
/// assert!(valkey.supports(Feature::ShardedPubSub));
/// assert_eq!(valkey.redis_compatible(), (7, 2, 4));
/// # Ok::<(), redkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerVersion {
    flavor: ServerFlavor,
    version: (u16, u16, u16),
    compat: (u16, u16, u16),
}

impl ServerVersion {
    /// A version of `flavor`. The Redis-compatible version is the version itself for Redis,
    /// and 7.2.4 for Valkey (what every Valkey release so far reports).
    pub fn new(flavor: ServerFlavor, major: u16, minor: u16, patch: u16) -> ServerVersion {
        let version = (major, minor, patch);
        let compat = match flavor {
            ServerFlavor::Redis => version,
            ServerFlavor::Valkey => VALKEY_REDIS_COMPAT,
        };
        ServerVersion {
            flavor,
            version,
            compat,
        }
    }

    /// Redis or Valkey.
    pub fn flavor(&self) -> ServerFlavor {
        self.flavor
    }

    /// The server's own version, as `(major, minor, patch)`.
    pub fn version(&self) -> (u16, u16, u16) {
        self.version
    }

    /// The major version.
    pub fn major(&self) -> u16 {
        self.version.0
    }

    /// The minor version.
    pub fn minor(&self) -> u16 {
        self.version.1
    }

    /// The patch level.
    pub fn patch(&self) -> u16 {
        self.version.2
    }

    /// The Redis version the server is compatible with, as `(major, minor, patch)`: its
    /// `redis_version` (7.2.4 on Valkey 7.2 to 9.x).
    pub fn redis_compatible(&self) -> (u16, u16, u16) {
        self.compat
    }

    /// Whether the server's own version is at least `major.minor`.
    pub fn at_least(&self, major: u16, minor: u16) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }

    /// Whether the server has `feature`.
    pub fn supports(&self, feature: Feature) -> bool {
        (self.compat.0, self.compat.1) >= feature.since()
    }

    /// `Ok` when the server has `feature`, else [`Error::ServerTooOld`] naming it, the
    /// versions that have it and this server.
    pub fn require(&self, feature: Feature) -> Result<()> {
        if self.supports(feature) {
            return Ok(());
        }
        Err(Error::ServerTooOld {
            feature: feature.name(),
            needs: feature.needs(),
            server: self.to_string(),
        })
    }

    /// Parses the `server` section of `INFO` (other sections may be there too): the flavor
    /// from `valkey_version` or `server_name:valkey`, the version from `valkey_version`
    /// (Valkey) or `redis_version`, the Redis-compatible version from `redis_version`.
    pub(crate) fn from_info(text: &str) -> Result<ServerVersion> {
        let mut redis_version = None;
        let mut valkey_version = None;
        let mut server_name = None;
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            match key {
                "redis_version" => redis_version = Some(value.trim()),
                "valkey_version" => valkey_version = Some(value.trim()),
                "server_name" => server_name = Some(value.trim()),
                _ => {}
            }
        }
        let compat = match redis_version {
            Some(v) => parse_number(v).ok_or_else(|| bad_version("INFO redis_version", v))?,
            None => return Err(bad_version("INFO server", "no redis_version field")),
        };
        let valkey = valkey_version.is_some() || server_name == Some("valkey");
        let (flavor, version) = match (valkey, valkey_version) {
            (true, Some(v)) => (
                ServerFlavor::Valkey,
                parse_number(v).ok_or_else(|| bad_version("INFO valkey_version", v))?,
            ),
            (true, None) => (ServerFlavor::Valkey, compat),
            (false, _) => (ServerFlavor::Redis, compat),
        };
        Ok(ServerVersion {
            flavor,
            version,
            compat,
        })
    }

    /// Parses the reply of `HELLO` (a RESP3 map, or a RESP2 array of name, value, ...):
    /// `server` (`redis` or `valkey`) and `version`. HELLO does not tell Valkey's
    /// Redis-compatible version: it is taken as 7.2.4.
    #[allow(dead_code)] // for the connection handshake
    pub(crate) fn from_hello(reply: &Value) -> Result<ServerVersion> {
        let pairs: Vec<(&Value, &Value)> = match reply {
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(a) => a
                .chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
            _ => return Err(bad_version("HELLO", "not a map")),
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).is_some_and(|k| k.eq_ignore_ascii_case(name)))
                .and_then(|(_, v)| text(v))
        };
        let version = field("version").ok_or_else(|| bad_version("HELLO", "no version"))?;
        ServerVersion::from_hello_fields(field("server").as_deref().unwrap_or(""), &version)
    }

    /// From `HELLO`'s `server` (`redis`, `valkey`; empty: Redis) and `version` fields.
    #[allow(dead_code)] // for the connection handshake
    pub(crate) fn from_hello_fields(server: &str, version: &str) -> Result<ServerVersion> {
        let number = parse_number(version).ok_or_else(|| bad_version("HELLO version", version))?;
        let flavor = match server {
            s if s.eq_ignore_ascii_case("valkey") => ServerFlavor::Valkey,
            _ => ServerFlavor::Redis,
        };
        Ok(ServerVersion::new(flavor, number.0, number.1, number.2))
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor, patch) = self.version;
        write!(f, "{} {major}.{minor}.{patch}", self.flavor)
    }
}

impl PartialOrd for ServerVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.flavor == other.flavor)
            .then(|| (self.version, self.compat).cmp(&(other.version, other.compat)))
    }
}

impl FromStr for ServerVersion {
    type Err = Error;

    /// Parses `Redis 6.0.9` or `Valkey 8.1.8` (the flavor case-insensitive; minor and patch
    /// may be left out).
    fn from_str(s: &str) -> Result<ServerVersion> {
        let bad = || Error::config("server version", format!("`{s}` is not like `Redis 7.2.4`"));
        let (flavor, number) = s.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
        let flavor = if flavor.eq_ignore_ascii_case("redis") {
            ServerFlavor::Redis
        } else if flavor.eq_ignore_ascii_case("valkey") {
            ServerFlavor::Valkey
        } else {
            return Err(bad());
        };
        let (major, minor, patch) = parse_number(number.trim()).ok_or_else(bad)?;
        Ok(ServerVersion::new(flavor, major, minor, patch))
    }
}

/// A feature redkit uses (or that users ask about) that not every supported server has,
/// with the Redis version that brought it. Every Valkey release has all of them.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `HELLO` and RESP3 (Redis 6.0).
    Resp3,
    /// ACL users (Redis 6.0).
    Acl,
    /// `CLIENT TRACKING` (Redis 6.0).
    ClientTracking,
    /// `SCAN ... TYPE` (Redis 6.0).
    ScanType,
    /// `LMOVE` and `BLMOVE` (Redis 6.2).
    Lmove,
    /// `XAUTOCLAIM` (Redis 6.2).
    Xautoclaim,
    /// `CLIENT INFO` (Redis 6.2).
    ClientInfo,
    /// `GETDEL` (Redis 6.2).
    GetDel,
    /// `GETEX` (Redis 6.2).
    GetEx,
    /// `XADD ... NOMKSTREAM` and `MINID` trimming (Redis 6.2).
    XaddNomkstream,
    /// ACL rules on Pub/Sub channels (`&pattern`, `resetchannels`; Redis 6.2).
    AclChannels,
    /// Shard channels: `SSUBSCRIBE`, `SPUBLISH` (Redis 7.0).
    ShardedPubSub,
    /// `XAUTOCLAIM` naming the deleted entries it dropped (Redis 7.0; 6.2 replies nil in
    /// their place and keeps them pending).
    XautoclaimDeletedIds,
    /// `lag` in `XINFO GROUPS` (Redis 7.0).
    StreamGroupLag,
    /// `WAITAOF` (Redis 7.2).
    Waitaof,
}

impl Feature {
    /// Every feature, oldest first.
    pub const ALL: [Feature; 15] = [
        Feature::Resp3,
        Feature::Acl,
        Feature::ClientTracking,
        Feature::ScanType,
        Feature::Lmove,
        Feature::Xautoclaim,
        Feature::ClientInfo,
        Feature::GetDel,
        Feature::GetEx,
        Feature::XaddNomkstream,
        Feature::AclChannels,
        Feature::ShardedPubSub,
        Feature::XautoclaimDeletedIds,
        Feature::StreamGroupLag,
        Feature::Waitaof,
    ];

    /// The command or option, as the server knows it (`"LMOVE"`, `"SSUBSCRIBE"`).
    pub fn name(self) -> &'static str {
        match self {
            Feature::Resp3 => "HELLO",
            Feature::Acl => "ACL",
            Feature::ClientTracking => "CLIENT TRACKING",
            Feature::ScanType => "SCAN TYPE",
            Feature::Lmove => "LMOVE",
            Feature::Xautoclaim => "XAUTOCLAIM",
            Feature::ClientInfo => "CLIENT INFO",
            Feature::GetDel => "GETDEL",
            Feature::GetEx => "GETEX",
            Feature::XaddNomkstream => "XADD NOMKSTREAM",
            Feature::AclChannels => "ACL channel rules",
            Feature::ShardedPubSub => "SSUBSCRIBE",
            Feature::XautoclaimDeletedIds => "XAUTOCLAIM deleted ids",
            Feature::StreamGroupLag => "XINFO GROUPS lag",
            Feature::Waitaof => "WAITAOF",
        }
    }

    /// The Redis version that brought it, as `(major, minor)`.
    pub fn since(self) -> (u16, u16) {
        match self {
            Feature::Resp3 | Feature::Acl | Feature::ClientTracking | Feature::ScanType => (6, 0),
            Feature::Lmove
            | Feature::Xautoclaim
            | Feature::ClientInfo
            | Feature::GetDel
            | Feature::GetEx
            | Feature::XaddNomkstream
            | Feature::AclChannels => (6, 2),
            Feature::ShardedPubSub | Feature::XautoclaimDeletedIds | Feature::StreamGroupLag => {
                (7, 0)
            }
            Feature::Waitaof => (7, 2),
        }
    }

    /// The servers that have it, in words (`"Redis 6.2 or later, or Valkey"`).
    pub fn needs(self) -> &'static str {
        match self.since() {
            (6, 0) => "Redis 6.0 or later, or Valkey",
            (6, 2) => "Redis 6.2 or later, or Valkey",
            (7, 0) => "Redis 7.0 or later, or Valkey",
            _ => "Redis 7.2 or later, or Valkey",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `7.2.4`, `8.1`, `255.255.255`, `8.1.1-rc1` (a suffix after the numbers is ignored).
fn parse_number(s: &str) -> Option<(u16, u16, u16)> {
    let mut parts = s.trim().split('.');
    let num = |p: Option<&str>| -> Option<u16> {
        let p = p?;
        let digits: &str = &p[..p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len())];
        digits.parse().ok()
    };
    let major = num(parts.next())?;
    let minor = num(parts.next()).unwrap_or(0);
    let patch = num(parts.next()).unwrap_or(0);
    Some((major, minor, patch))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn bad_version(what: &str, detail: &str) -> Error {
    let e = redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "cannot tell the server version",
        format!("{what}: {detail}"),
    ));
    Error::from_redis(e, Delivery::Answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_redis_and_valkey_info() {
        let redis = "# Server\r\nredis_version:6.0.9\r\nredis_mode:standalone\r\n";
        let v = ServerVersion::from_info(redis).unwrap();
        assert_eq!(v.flavor(), ServerFlavor::Redis);
        assert_eq!(v.version(), (6, 0, 9));
        assert_eq!(v.redis_compatible(), (6, 0, 9));
        assert_eq!(v.to_string(), "Redis 6.0.9");

        let valkey = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\n\
                      valkey_version:8.1.8\r\n";
        let v = ServerVersion::from_info(valkey).unwrap();
        assert_eq!(v.flavor(), ServerFlavor::Valkey);
        assert_eq!(v.version(), (8, 1, 8));
        assert_eq!(v.redis_compatible(), (7, 2, 4));
        assert_eq!(v.to_string(), "Valkey 8.1.8");

        // Valkey 7.2 has server_name but no valkey_version.
        let v = ServerVersion::from_info("redis_version:7.2.5\nserver_name:valkey\n").unwrap();
        assert_eq!(v.to_string(), "Valkey 7.2.5");

        let odd = ServerVersion::from_info("redis_version:255.255.255\n").unwrap();
        assert_eq!(odd.version(), (255, 255, 255));
        let rc = ServerVersion::from_info("redis_version:7.4-rc2\n").unwrap();
        assert_eq!(rc.version(), (7, 4, 0));
    }

    #[test]
    fn bad_info_is_a_typed_error() {
        let e = ServerVersion::from_info("# Server\r\nuptime:3\r\n").unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Conversion, "{e}");
        assert!(ServerVersion::from_info("redis_version:x.y\n").is_err());
        assert!(ServerVersion::from_info("").is_err());
    }

    #[test]
    fn parses_hello_in_resp2_and_resp3() {
        let resp3 = Value::Map(vec![
            (bulk("server"), bulk("valkey")),
            (bulk("version"), bulk("9.1.2")),
            (bulk("proto"), Value::Int(3)),
        ]);
        let v = ServerVersion::from_hello(&resp3).unwrap();
        assert_eq!(v.to_string(), "Valkey 9.1.2");
        assert_eq!(v.redis_compatible(), (7, 2, 4));
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("6.2.14"),
        ]);
        let v = ServerVersion::from_hello(&resp2).unwrap();
        assert_eq!(v, ServerVersion::new(ServerFlavor::Redis, 6, 2, 14));
        assert!(ServerVersion::from_hello(&Value::Nil).is_err());
        assert!(ServerVersion::from_hello(&Value::Map(vec![])).is_err());
        let v = ServerVersion::from_hello_fields("valkey", "8.1.8").unwrap();
        assert_eq!(v.to_string(), "Valkey 8.1.8");
        assert!(ServerVersion::from_hello_fields("redis", "").is_err());
    }

    #[test]
    fn compares_within_a_flavor_only() {
        let r60 = ServerVersion::new(ServerFlavor::Redis, 6, 0, 9);
        let r62 = ServerVersion::new(ServerFlavor::Redis, 6, 2, 14);
        let v8 = ServerVersion::new(ServerFlavor::Valkey, 8, 1, 8);
        let v9 = ServerVersion::new(ServerFlavor::Valkey, 9, 1, 2);
        assert!(r60 < r62 && v8 < v9);
        assert_eq!(r60.partial_cmp(&v8), None);
        assert!(r62.at_least(6, 2) && !r62.at_least(7, 0));
        assert!(v8.at_least(8, 1));
    }

    #[test]
    fn features_by_version() {
        let r60 = ServerVersion::new(ServerFlavor::Redis, 6, 0, 9);
        let r62 = ServerVersion::new(ServerFlavor::Redis, 6, 2, 0);
        let r70 = ServerVersion::new(ServerFlavor::Redis, 7, 0, 15);
        let v8 = ServerVersion::new(ServerFlavor::Valkey, 8, 1, 8);
        assert!(r60.supports(Feature::ScanType) && !r60.supports(Feature::Lmove));
        assert!(r62.supports(Feature::Lmove) && !r62.supports(Feature::ShardedPubSub));
        assert!(r70.supports(Feature::ShardedPubSub) && !r70.supports(Feature::Waitaof));
        for f in Feature::ALL {
            assert!(v8.supports(f), "{f}");
            assert!(f
                .needs()
                .contains(&format!("{}.{}", f.since().0, f.since().1)));
        }
        let e = r60.require(Feature::ShardedPubSub).unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Unsupported);
        assert_eq!(
            e.to_string(),
            "`SSUBSCRIBE` needs Redis 7.0 or later, or Valkey; the server is Redis 6.0.9"
        );
        assert!(r70.require(Feature::ShardedPubSub).is_ok());
    }

    #[test]
    fn parses_its_display() {
        for s in ["Redis 6.0.9", "Valkey 8.1.8", "Redis 7.4.1"] {
            assert_eq!(s.parse::<ServerVersion>().unwrap().to_string(), s);
        }
        assert_eq!(
            "valkey 9".parse::<ServerVersion>().unwrap().to_string(),
            "Valkey 9.0.0"
        );
        for bad in ["", "Redis", "KeyDB 6.3.4", "Redis x"] {
            let e = bad.parse::<ServerVersion>().unwrap_err();
            assert_eq!(e.class(), crate::ErrorClass::Config, "{bad}");
        }
    }
}
